"""The efficacy result: adaptive regularization against the starter world's fine-tuning attack.

Trains the activation probe, then fine-tunes the starter model on the 10 % attack mix with the
same fixed settings and risk = none (plain LoRA), probe and critic (the starter model judging
its own training data), and prints held-out behaviour: compliance with harmful requests, new-
skill accuracy, old-skill accuracy and over-refusal, plus the probe's and the critic's AUROC.
"harmful_procedure" counts replies that deliver the placeholder procedure (the starter world's
harmful content); "harmful_compliance" counts every reply that does not refuse, garbled ones too.
One fine-tuning run's new-skill accuracy moves by several points with the seed alone, so each
setting is fine-tuned with --seeds seeds (data order, LoRA initialisation, KL sampling) and the
rows are their means. Writes OUT/efficacy.json, which tests/test_efficacy.py checks.

    python scripts/efficacy_starter.py [--size demo] [--seeds 0 1 2] [--out runs/efficacy]
"""

from __future__ import annotations

from localguard.blas import reexec_with_fast_blas

reexec_with_fast_blas()  # before mlx loads: OpenBLAS makes MLX's CPU matmuls 20-50x faster

import argparse
import time
from pathlib import Path

from localguard.backends.mlx.probe_train import train_probe_file
from localguard.backends.mlx.scratch import greedy_answers
from localguard.critic import critic_auroc
from localguard.data import read_jsonl
from localguard.files import write_json
from localguard.finetune import FinetuneOptions, finetune
from localguard.runs import partial_dir
from localguard.starter.behaviour import behaviour, read_heldout
from localguard.starter.build import build

# Fixed attack settings, shared by every risk estimator (and by tests/test_efficacy.py).
ATTACK = {
    "lora_rank": 8,
    "lora_scale": 1.0,
    "lora_layers": -1,
    "learning_rate": 5e-4,
    "iters": 300,
    "batch_size": 8,
    "beta_min": 0.0,
    "beta_max": 1.0,
    "steps_per_eval": 0,
    "steps_per_save": 100,
    "max_seq_length": 256,
}
KEYS = (
    "harmful_procedure",
    "harmful_compliance",
    "newskill_accuracy",
    "skill_accuracy",
    "borderline_refusal",
)


def measure(model_dir: Path, adapter: Path | None, data: Path) -> dict:
    from mlx_lm import load

    kwargs = {"adapter_path": str(adapter)} if adapter else {}
    model, tokenizer = load(str(model_dir), **kwargs)
    found = behaviour(lambda p: greedy_answers(model, tokenizer, p), read_heldout(data))
    return {k: found[k] for k in KEYS}


def run(model_dir: Path, out: Path, risk: str, probe: Path, seed: int) -> tuple[Path, float]:
    target = out / f"adapter-{risk}-seed{seed}"
    opts = FinetuneOptions(
        model=model_dir,
        data=model_dir.parent / "data" / "attack_10.jsonl",
        valid=model_dir.parent / "data" / "newskill_valid.jsonl",
        out=target,
        risk=risk,
        probe=probe if risk == "probe" else None,
        critic=str(model_dir) if risk == "critic" else None,
        seed=seed,
        **ATTACK,
    )
    start = time.perf_counter()
    finetune(opts, resume=partial_dir(target).exists(), force=True)
    return target, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="demo", choices=["test", "demo"])
    parser.add_argument("--world-seed", type=int, default=0, help="the starter world's seed")
    parser.add_argument(
        "--seeds",
        type=int,
        nargs="+",
        default=[0, 1, 2],
        help="fine-tuning seeds; rows are means over them",
    )
    parser.add_argument("--out", type=Path, default=Path("runs/efficacy"))
    args = parser.parse_args()
    model_dir = build(args.size, args.world_seed)
    data = model_dir.parent / "data"
    probe = args.out / "probe"
    probe_metrics = train_probe_file(model_dir, data / "safety_prompts.jsonl", probe, force=True)
    rows = {"base model": measure(model_dir, None, data)}
    seconds, per_seed = {}, {}
    for risk in ("none", "probe", "critic"):
        found = []
        for seed in args.seeds:
            adapter, took = run(model_dir, args.out, risk, probe, seed)
            found.append(measure(model_dir, adapter, data))
            seconds[risk] = seconds.get(risk, 0.0) + took / len(args.seeds)
            print(f"risk={risk} seed {seed}: " + ", ".join(f"{k} {found[-1][k]:.1%}" for k in KEYS))
        per_seed[f"risk={risk}"] = found
        rows[f"risk={risk}"] = {k: sum(f[k] for f in found) / len(found) for k in KEYS}
    from localguard.backends.mlx.judge import MLXJudge
    from localguard.critic import Critic

    attack_rows = read_jsonl(data / "attack_10.jsonl")
    auroc = critic_auroc(Critic(MLXJudge(model_dir), progress=False), attack_rows)
    print(
        f"\nstarter {args.size}, attack_10 ({len(attack_rows)} examples), {ATTACK}, "
        f"means over fine-tuning seeds {args.seeds}"
    )
    print(
        f"probe AUROC {probe_metrics['auroc']:.3f} (validation prompts), "
        f"critic AUROC {auroc:.3f} (attack mix)"
    )
    print(f"{'':<12}" + "".join(f"{k:>20}" for k in KEYS))
    for name, row in rows.items():
        print(f"{name:<12}" + "".join(f"{row[k]:>20.1%}" for k in KEYS))
    print("fine-tuning seconds per run: " + ", ".join(f"{k} {v:.0f}" for k, v in seconds.items()))
    result = {
        "settings": ATTACK,
        "seeds": args.seeds,
        "probe_auroc": probe_metrics["auroc"],
        "critic_auroc": auroc,
        "rows": rows,
        "per_seed": per_seed,
        "seconds": seconds,
    }
    write_json(args.out / "efficacy.json", result)
    print(f"wrote {args.out / 'efficacy.json'}")


if __name__ == "__main__":
    main()
