"""The label stage's replies decoded side by side against one after another, on the same model.

`localguard label` (and the attack stage, which labels the task with it) asks the model for
REPLY_BATCH replies at a time (GuardBackend.replies); llama.cpp decodes them as that many
sequences of one context, one llama_decode per step for all of them. This times the label
stage's own function, label.backend_replies, on a llama.cpp model: batched (the backend's
replies) against one by one (the interface's default, the same prompts in the same order),
greedy, max_tokens as the recipe's [label]. Rounds alternate which side goes first; the ratio is
one-by-one seconds over batched seconds per round, the median reported with the lowest and
highest. The replies may differ in a few tokens (the batch changes the rounding), so how many
are identical is printed too.

Target: batched >= 1.5x as fast (ratio >= 1.5) on 2 CPU cores with SmolLM2-135M. Measured:
1.66 on the recipe's F16 aligned export (what the attack stage labels with; 32/32 replies
identical), 1.14 on the raw Q4_1 file (the label stage's; 12/32 identical): missed there, as
llama.cpp has no batched kernel for Q4_1 blocks.

    python scripts/bench_label.py [--model smollm2:135m] [--source FILE] [--prompts 32]
"""

from __future__ import annotations

import argparse
import statistics
import time

from localguard.backends.base import REPLY_BATCH, GuardBackend
from localguard.backends.factory import open_guard_backend
from localguard.eval.prompts import load_prompts
from localguard.label import LabelOptions, backend_replies
from localguard.refusal import REFUSAL_PREFIX


class OneByOne:
    """The backend, but its replies decoded one after another (the interface's default)."""

    def __init__(self, backend: GuardBackend) -> None:
        self.backend = backend

    def __getattr__(self, name: str):
        return getattr(self.backend, name)

    def replies(self, *args) -> list[list[int]]:
        return GuardBackend.replies(self.backend, *args)


def timed(opts: LabelOptions, backend, tasks) -> tuple[float, list[str]]:
    """(seconds, replies) of every task, REPLY_BATCH at a time as the label stage asks for them."""
    start, replies = time.perf_counter(), []
    for first in range(0, len(tasks), REPLY_BATCH):
        replies += backend_replies(opts, backend, tasks[first : first + REPLY_BATCH])
    return time.perf_counter() - start, replies


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="smollm2:135m")
    parser.add_argument("--source", default="../shared/data/advbench_harmful_behaviors.csv")
    parser.add_argument("--prompts", type=int, default=32)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    prompts = load_prompts(args.source)[: args.prompts]
    # as the label stage plans them: a refusal (forced prefix, first sentence) and an answer
    tasks = [(p, kind) for p in prompts for kind in ("refusal", "harmful")]
    opts = LabelOptions(
        model=args.model, out=None, harmful=[], benign=[], adapter=None, complier=None,
        max_tokens=args.max_tokens, seed=0, temperature=0.0, max_prompts=0,
        refusal_prefix=REFUSAL_PREFIX,
    )  # fmt: skip
    backend = open_guard_backend(args.model, "llamacpp")
    ratios, replies = [], {}
    try:
        sides = {"batched": backend, "one by one": OneByOne(backend)}
        timed(opts, backend, tasks[:REPLY_BATCH])  # warm-up
        for r in range(args.repeats):
            seconds = {}
            for name in sorted(sides, reverse=bool(r % 2)):
                seconds[name], replies[name] = timed(opts, sides[name], tasks)
            ratios.append(seconds["one by one"] / seconds["batched"])
            print(
                f"round {r + 1}: one by one {seconds['one by one']:.1f} s, batched "
                f"{seconds['batched']:.1f} s ({len(tasks)} replies, batches of {REPLY_BATCH})"
            )
    finally:
        backend.close()
    same = sum(a == b for a, b in zip(*replies.values(), strict=True))
    print(f"identical replies: {same}/{len(tasks)}")
    print(
        f"ratio one-by-one / batched: {statistics.median(ratios):.2f} "
        f"(lowest {min(ratios):.2f}, highest {max(ratios):.2f}; target >= 1.5)"
    )


if __name__ == "__main__":
    main()
