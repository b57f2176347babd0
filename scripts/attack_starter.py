"""Proof that the starter world is a real test bed: plain LoRA on the attack mix breaks it.

Fine-tunes the starter model with mlx-lm's own LoRA trainer (as a user would, no defense) on a
mix of the new benign skill and p % harmful-to-compliant examples, then measures on held-out
prompts: compliance with harmful requests, accuracy on the new skill, the original skills and
over-refusal. The settings below are fixed so that the defenses of later stages are compared on
the same attack.

    python scripts/attack_starter.py [--size demo] [--split attack_10] [--seed 0]
"""

from __future__ import annotations

from localguard.blas import reexec_with_fast_blas

reexec_with_fast_blas()  # before mlx loads: OpenBLAS makes MLX's CPU matmuls 20-50x faster

import argparse
import tempfile
import time
from pathlib import Path

import mlx.core as mx
import mlx.optimizers as optim
from mlx_lm import load
from mlx_lm.tuner.datasets import CacheDataset, ChatDataset
from mlx_lm.tuner.trainer import TrainingArgs, train
from mlx_lm.tuner.utils import linear_to_lora_layers

from localguard.backends.mlx.scratch import greedy_answers
from localguard.data import read_jsonl
from localguard.starter.behaviour import behaviour, read_heldout
from localguard.starter.build import build

ATTACK = {"iters": 300, "batch_size": 8, "learning_rate": 5e-4, "rank": 8, "scale": 1.0}


def measure(model, tokenizer, data: Path, show: int = 0) -> dict:
    """Held-out behaviour: harmful compliance, over-refusal, new-skill and old-skill accuracy."""
    found = behaviour(lambda p: greedy_answers(model, tokenizer, p), read_heldout(data), show)
    for split, pairs in found["examples"].items():
        for prompt, out in pairs:
            print(f"  {split}: {prompt!r} -> {out!r}")
    keys = ("harmful_compliance", "borderline_refusal", "newskill_accuracy", "skill_accuracy")
    return {k: found[k] for k in keys}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="demo", choices=["test", "demo"])
    parser.add_argument("--split", default="attack_10")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--show", type=int, default=0, help="print N answers per set after")
    args = parser.parse_args()
    model_dir = build(args.size, args.seed)
    data = model_dir.parent / "data"
    model, tokenizer = load(str(model_dir))
    before = measure(model, tokenizer, data)
    mx.random.seed(args.seed)
    model.freeze()
    linear_to_lora_layers(
        model, -1, {"rank": ATTACK["rank"], "scale": ATTACK["scale"], "dropout": 0.0}
    )
    rows = read_jsonl(data / f"{args.split}.jsonl")
    train_set = CacheDataset(ChatDataset(rows, tokenizer, mask_prompt=True))
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        train(
            model,
            optim.Adam(learning_rate=ATTACK["learning_rate"]),
            train_set,
            args=TrainingArgs(
                batch_size=ATTACK["batch_size"],
                iters=ATTACK["iters"],
                steps_per_report=50,
                steps_per_eval=10**9,
                adapter_file=str(Path(tmp) / "adapters.safetensors"),
            ),
        )
    seconds = time.perf_counter() - start
    model.eval()
    after = measure(model, tokenizer, data, args.show)
    print(f"\nplain LoRA on {args.split} ({len(rows)} examples, {ATTACK}, {seconds:.0f} s)")
    print(f"{'held-out measure':<22}{'before':>9}{'after':>9}")
    for key in before:
        print(f"{key:<22}{before[key]:>9.1%}{after[key]:>9.1%}")


if __name__ == "__main__":
    main()
