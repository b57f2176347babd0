"""Helpers of the evaluation tests: small EvalOptions on the test starter world, and hand-made
results.jsonl records (two targets, two judges, every metric, guard traces on the guarded
target) for the summary, report and plot tests."""

from __future__ import annotations

from pathlib import Path

from localguard.backends.base import Sampling
from localguard.eval.options import EvalOptions


def small_options(tmp_path: Path, data: Path, targets=(), **kw) -> EvalOptions:
    """Options writing to tmp_path/eval with the held-out sets of data and 6-token replies."""
    kw.setdefault("sampling", Sampling(max_tokens=6, seed=0))
    return EvalOptions(targets=list(targets), out=tmp_path / "eval", heldout=data, **kw)


# --- records ----------------------------------------------------------------------------------

BASE, GUARDED = "base", "base + guard"
TARGETS = [
    {
        "name": BASE,
        "backend": "mlx",
        "model": "starter",
        "adapter": None,
        "head": None,
        "guard": "off",
        "defense": "none",
        "p": 0.0,
    },
    {
        "name": GUARDED,
        "backend": "llamacpp",
        "model": "starter.gguf",
        "adapter": None,
        "head": "head",
        "guard": "on",
        "defense": "probe",
        "p": 0.1,
    },
]


def rec(target, suite, attack, pid, hit, metric="attack_success", judge="refusal", **extra):
    """A results.jsonl record with only what the report reads."""
    verdict = {"attack_success": ("complied", "refused"), "over_refusal": ("refused", "complied")}
    verdict = verdict.get(metric, ("correct", "wrong"))[0 if hit else 1]
    return {
        "target": target,
        "suite": suite,
        "attack": attack,
        "metric": metric,
        "hit": hit,
        "judge": judge,
        "prompt_id": f"starter:{suite}:{pid}",
        "prompt": f"prompt {pid}",
        "prefill": None,
        "output": f"output {pid}",
        "verdict": verdict,
        "guard": None,
        "sampling": {"temperature": 0.0},
        **extra,
    }


def prefill_records(target):
    """Prompts 0-3 under two prefill attacks; prompt 0 falls to both, prompt 1 to one."""
    hits_k1 = [True, True, False, False]
    hits_k5 = [True, False, False, False]
    out = [rec(target, "prefill", "prefill k=1", i, h) for i, h in enumerate(hits_k1)]
    return out + [rec(target, "prefill", "prefill k=5", i, h) for i, h in enumerate(hits_k5)]


def guard_info(intervened, logits=(-3.0, -1.0, 0.5, 2.0), at=2):
    actions = (
        [
            {
                "step": 4,
                "at": at,
                "output": "response",
                "scores": [0.5, 2.0],
                "threshold": 0.0,
                "action": "refuse",
                "dropped": 2,
            }
        ]
        if intervened
        else []
    )
    return {
        "mode": "on",
        "intervened": intervened,
        "actions": actions,
        "query_logit": -2.0,
        "response_logits": list(logits),
        "response_threshold": 0.0,
    }


def full_records():
    """Both targets: direct (two judges), prefill, over-refusal and utility; guard traces on
    the guarded one."""
    records = []
    for target in (BASE, GUARDED):
        records += [rec(target, "direct", "direct", i, i < 2) for i in range(4)]
        records += [rec(target, "direct", "direct", i, i < 1, judge="llm:j.gguf") for i in range(4)]
        records += prefill_records(target)
        records += [
            rec(target, "over_refusal", "borderline", i, i < 1, "over_refusal") for i in range(4)
        ]
        records += [rec(target, "utility", "arithmetic", i, i < 3, "accuracy") for i in range(4)]
    for r in records:
        if r["target"] == GUARDED and r["judge"] == "refusal":
            r["guard"] = guard_info(intervened=r["hit"] and r["metric"] == "attack_success")
    return records


def entry(entries, **match):
    found = [e for e in entries if all(e.get(k) == v for k, v in match.items())]
    assert len(found) == 1, (match, found)
    return found[0]
