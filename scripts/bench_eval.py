"""The eval stage on a target without a head: its replies decoded side by side against one after
another through the guard, on the same model and cases.

`localguard eval` asks llama.cpp for REPLY_BATCH replies at a time (GuardBackend.replies) on a
target without a safety head (the three-act recipe's raw, aligned and plain LoRA rows); a
target with one keeps the guard's path, so that its guard-off and guard-on rows decode alike.
This times the stage's own function, eval.stage.run_target, with batching on and off (the
backend's batches_replies), on the recipe's default attack cases (direct, prefill k=5/10/20,
jailbreak, decoding sweep, control tokens) of one source. Rounds alternate which side goes first;
the ratio is one-by-one seconds over batched seconds per round, the median reported with the
lowest and highest, and how many replies are identical (the batch changes the rounding).

Target: batched >= 1.5x as fast (ratio >= 1.5) on 2 CPU cores with a SmolLM2-135M Q4_K_M export.
Measured: 1.70 (1.58-1.70; 13/72 replies identical) on run r44's raw export
(`--model runs/r44/export-raw/model-Q4_K_M.gguf --prompts 4`).

    python scripts/bench_eval.py --model runs/NAME/export-aligned/model-Q4_K_M.gguf
        [--source FILE] [--prompts 10] [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from localguard.backends.base import REPLY_BATCH, Sampling
from localguard.backends.llamacpp.guarded import LlamaCppGuardBackend
from localguard.eval.judges import make_judges
from localguard.eval.options import EvalOptions, Target
from localguard.eval.stage import run_target
from localguard.eval.suites import build_cases, prompt_sets

SUITES = ["direct", "prefill", "jailbreak", "decoding", "control_tokens"]


def timed(opts: EvalOptions, cases, batched: bool) -> tuple[float, list[str]]:
    """(seconds, replies) of run_target over cases, batching on or off."""
    LlamaCppGuardBackend.batches_replies = batched
    records: list[dict] = []
    start = time.perf_counter()
    run_target(opts.targets[0], cases, opts, make_judges(opts), {}, records.append)
    return time.perf_counter() - start, [r["output"] for r in records]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", required=True, help="a GGUF without a safety head")
    parser.add_argument("--source", default="../shared/data/advbench_harmful_behaviors.csv")
    parser.add_argument("--prompts", type=int, default=10)
    parser.add_argument("--max-tokens", type=int, default=48)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    probe = LlamaCppGuardBackend.load(args.model)
    has_head = bool(probe.head.names)
    probe.close()
    if has_head:  # the stage decodes it through the guard either way: nothing to compare
        raise SystemExit(f"{args.model} has a safety head: give a GGUF without one")
    with tempfile.TemporaryDirectory() as tmp:
        opts = EvalOptions(
            targets=[Target("bench", "llamacpp", str(Path(args.model).resolve()))],
            out=Path(tmp) / "eval", suites=SUITES, sources=[args.source], apart=[],
            max_prompts=args.prompts, judge=["refusal"],
            sampling=Sampling(max_tokens=args.max_tokens, seed=0),
        )  # fmt: skip
        sets = prompt_sets(opts)
        cases = [c for s in SUITES for c in build_cases(opts, s, sets)]
        timed(opts, cases[:REPLY_BATCH], True)  # warm-up
        ratios, replies = [], {}
        for r in range(args.repeats):
            seconds = {}
            for batched in sorted((True, False), reverse=bool(r % 2)):
                seconds[batched], replies[batched] = timed(opts, cases, batched)
            ratios.append(seconds[False] / seconds[True])
            print(
                f"round {r + 1}: one by one {seconds[False]:.1f} s, batched {seconds[True]:.1f} s "
                f"({len(cases)} replies, batches of {REPLY_BATCH})"
            )
    same = sum(a == b for a, b in zip(replies[True], replies[False], strict=True))
    print(f"identical replies: {same}/{len(cases)}")
    print(
        f"ratio one-by-one / batched: {statistics.median(ratios):.2f} "
        f"(lowest {min(ratios):.2f}, highest {max(ratios):.2f}; target >= 1.5)"
    )


if __name__ == "__main__":
    main()
