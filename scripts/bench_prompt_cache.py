"""Benchmark: the llama.cpp backend keeping the prompt chunks it shares with the last prompt.

An evaluation asks one model hundreds of prompts that open alike: the chat template's system
turn, then often the same jailbreak wrapper or control-token injection. The backend decodes a
prompt in PROMPT_CHUNK chunks from position 0, and reset() keeps the KV cells, so the next
prompt decodes only the chunks it does not share with the one before. This runs the
evaluation's attack cases (direct, jailbreak, control tokens) on the first --prompts harmful
prompts of a source, greedy, guard off, three ways, one after another for --repeats rounds:

- whole: the old way, every prompt decoded in one piece into an empty cache;
- chunked: PROMPT_CHUNK chunks into an empty cache (nothing kept);
- kept: PROMPT_CHUNK chunks, shared chunks kept (the backend as it is).

It prints each way's median round time, the ratio kept/whole, and how many replies kept and
chunked share (all must: what is kept is what would be decoded).

Target: time kept/whole <= 0.85 on SmolLM2-135M.

    python scripts/bench_prompt_cache.py [--model smollm2:135m]
        [--source ../shared/data/advbench_harmful_behaviors.csv] [--prompts 10] [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import time

from localguard.backends.base import Sampling
from localguard.backends.factory import open_guard_backend
from localguard.backends.llamacpp import guarded
from localguard.eval.prompts import load_prompts
from localguard.eval.suites import CONTROL_INJECTIONS, JAILBREAKS
from localguard.guard import GuardSettings, generate, prompt_messages

CHUNK = guarded.PROMPT_CHUNK
WAYS = {"whole": (10**9, False), "chunked": (CHUNK, False), "kept": (CHUNK, True)}


def run(backend, texts: list[str], chunk: int, keep: bool) -> tuple[float, list[str]]:
    """(seconds, replies) of every text in order, prompts decoded in `chunk` token pieces,
    the cache emptied before each unless keep."""
    guarded.PROMPT_CHUNK = chunk
    off, sampling = GuardSettings(mode="off"), Sampling(temperature=0.0, max_tokens=48)
    replies = []
    start = time.perf_counter()
    for text in texts:
        if not keep:
            backend.model.reset()
        replies.append(generate(backend, prompt_messages(text), off, sampling).text)
    return time.perf_counter() - start, replies


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="smollm2:135m")
    parser.add_argument("--source", default="../shared/data/advbench_harmful_behaviors.csv")
    parser.add_argument("--prompts", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    prompts = [p.prompt for p in load_prompts(args.source) if p.harmful][: args.prompts]
    wrappers = ["{prompt}", *JAILBREAKS.values(), *CONTROL_INJECTIONS.values()]
    texts = [w.format(prompt=p) for w in wrappers for p in prompts]
    backend = open_guard_backend(args.model, "llamacpp")
    times: dict[str, list[float]] = {way: [] for way in WAYS}
    replies: dict[str, list[str]] = {}
    try:
        for r in range(args.repeats):
            for way, (chunk, keep) in WAYS.items():
                seconds, replies[way] = run(backend, texts, chunk, keep)
                times[way].append(seconds)
                print(f"round {r + 1} {way:8s} {seconds:.1f} s ({len(texts)} replies)")
    finally:
        backend.close()
    median = {way: statistics.median(t) for way, t in times.items()}
    print("median: " + ", ".join(f"{way} {t:.1f} s" for way, t in median.items()))
    same = sum(a == b for a, b in zip(replies["kept"], replies["chunked"], strict=True))
    print(f"replies kept = chunked: {same}/{len(texts)}")
    print(f"ratio kept/whole: {median['kept'] / median['whole']:.3f} (target <= 0.85)")


if __name__ == "__main__":
    main()
