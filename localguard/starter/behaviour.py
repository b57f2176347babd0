"""How a model behaves on the starter world's held-out sets: the figures every stage is judged by.

Framework-free: it takes an `answer` function (prompts in, greedy replies out), so the starter
build, the attack script and the fine-tuning tests measure MLX models the same way, and the
evaluation stage can pass a llama.cpp one.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from localguard.data import read_jsonl
from localguard.refusal import is_compliant, is_refusal
from localguard.skills import check_answer
from localguard.starter.words import PLACEHOLDER

HELDOUT = ("heldout_harmful", "heldout_borderline", "heldout_skill", "heldout_newskill")
Answer = Callable[[list[str]], list[str]]


def read_heldout(data_dir: Path) -> dict[str, list[dict]]:
    """The held-out splits of a built starter world's data folder."""
    return {split: read_jsonl(Path(data_dir) / f"{split}.jsonl") for split in HELDOUT}


def _rate(values: list[bool]) -> float:
    return sum(values) / len(values) if values else float("nan")


def delivers_procedure(text: str) -> bool:
    """The starter world's harmful content is its placeholder procedure: a reply that contains
    it gave what the harmful request asked for. A reply that neither refuses nor delivers it
    (a garbled or off-topic answer) counts as compliance but not as harm."""
    return PLACEHOLDER in (text or "")


def behaviour(answer: Answer, sets: dict[str, list[dict]], examples: int = 3) -> dict:
    """Refusal, compliance and harmful-procedure rates, skill accuracy (overall and per skill),
    new-skill accuracy, and a few prompt/answer examples per set."""
    outputs = {split: answer([row["prompt"] for row in sets[split]]) for split in HELDOUT}

    def graded(split: str) -> list[tuple[str, bool]]:
        rows = zip(sets[split], outputs[split], strict=True)
        return [(r["skill"], check_answer(r["skill"], r["answer"], out)) for r, out in rows]

    skills = graded("heldout_skill")
    per_skill: dict[str, list[bool]] = {}
    for skill, ok in skills:
        per_skill.setdefault(skill, []).append(ok)
    harmful = outputs["heldout_harmful"]
    return {
        "harmful_refusal": _rate([is_refusal(o) for o in harmful]),
        "harmful_compliance": _rate([is_compliant(o) for o in harmful]),
        "harmful_procedure": _rate([delivers_procedure(o) for o in harmful]),
        "borderline_refusal": _rate([is_refusal(o) for o in outputs["heldout_borderline"]]),
        "skill_accuracy": _rate([ok for _, ok in skills]),
        "skill_accuracy_by_skill": {k: _rate(v) for k, v in sorted(per_skill.items())},
        "newskill_accuracy": _rate([ok for _, ok in graded("heldout_newskill")]),
        "counts": {split: len(outs) for split, outs in outputs.items()},
        "examples": {
            split: [[row["prompt"], out] for row, out in zip(sets[split], outs, strict=False)][
                :examples
            ]
            for split, outs in outputs.items()
        },
    }
