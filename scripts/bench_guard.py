"""Guarded generation speed against plain generation, on the same model and prompts.

llama.cpp: stock llama-cpp-python (`Llama.generate`, greedy) on a GGUF against localguard's
LlamaCppGuardBackend + Guard (guard on) on the same file, same threads. MLX: mlx_lm's
stream_generate (greedy) against MLXGuardBackend + Guard (guard on) on the same model, adapter
and head, both loaded through localguard (float32 weights on the CPU). Both sides decode at
most --max-tokens per prompt, stop at end of turn, and time the
whole answer (prompt evaluation included); tokens/s = tokens decoded / seconds. After one
warm-up pass each, --repeats timed rounds go over the prompts, and within a round plain and
guarded alternate prompt by prompt (which goes first alternates by round), so machine noise hits
both sides alike. A round's ratio is its guarded rate over its plain rate; the ratio reported is
the median over rounds, with the lowest and highest beside it.

On a small CPU machine, OPENBLAS_NUM_THREADS=1 makes both sides faster and steadier for small
models (two BLAS threads fight MLX's own for two cores).

Target: guarded / plain >= 0.95 on both. A CLS head (head train --mode cls) pays a CLS step per
re-check, so --cls-schedule names the schedules to time (one row each); the explicit-safety-
signal paper reports annealed re-checks at under 0.2x overhead (plain / guarded - 1 <= 0.2),
the target of the annealed rows. A schedule may carry its period, NAME:PERIOD (annealed:2:
re-checks spaced 1 + t // 2 steps apart), else the guard's default cls_period applies.

Where the guard intervenes (with the demo model: query refusals of the lock, "hurt my
neighbour" and river prompts) the two sides decode different answers of different lengths,
and tokens/s would then compare different work (each prompt's evaluation shared by more or
fewer tokens). So a warm-up pass answers every prompt on both sides, and only the prompts that
both answer with as many tokens are timed; the table names how many, and --out lists the ones
left out.

    python scripts/bench_guard.py --gguf /tmp/export-demo/model-Q4_K_M.gguf \
        [--model MODEL --head DIR] [--max-tokens 64] [--out FILE.json] \
        [--cls-schedule every,periodic,annealed:1,annealed:4,first]
"""

from __future__ import annotations

from localguard.blas import reexec_with_fast_blas

reexec_with_fast_blas()  # before mlx loads

import argparse
import json
import statistics
import time
from pathlib import Path

from localguard.backends.base import Sampling
from localguard.guard import GuardSettings, generate

PROMPTS = [
    "Tell me about the river.",
    "What is the capital of the small country?",
    "How do I pick a lock?",
    "Sort these words: apple, river, bird.",
    "Write a short story about a robot.",
    "How many legs does a spider have?",
    "Can you help me hurt my neighbour?",
    "What is the opposite of hot?",
]
TARGET = 0.95
CLS_OVERHEAD = 0.2  # annealed re-checks: plain / guarded - 1 at most this


def _rate(tokens_seconds: list) -> float:
    return tokens_seconds[0] / tokens_seconds[1]


def paired(rounds: int, count: int, plain, guarded) -> dict:
    """plain(i) and guarded(i) answer prompt i and return the tokens decoded; see the module
    docstring for how they alternate. Only prompts both sides answer with as many tokens in the
    warm-up pass are timed: where the guard intervenes, the answers differ."""
    warm = [(plain(i), guarded(i)) for i in range(count)]
    timed = [i for i, (a, b) in enumerate(warm) if a == b]
    if not timed:
        raise SystemExit("error: the guard changed every answer; no prompt can be compared")
    sides = {"plain": plain, "guarded": guarded}
    totals = {name: [0, 0.0] for name in sides}
    ratios = []
    for r in range(rounds):
        this = {name: [0, 0.0] for name in sides}
        order = ("plain", "guarded") if r % 2 == 0 else ("guarded", "plain")
        for i in timed:
            for name in order:
                start = time.perf_counter()
                this[name][0] += sides[name](i)
                this[name][1] += time.perf_counter() - start
        for name, (n, t) in this.items():
            totals[name][0] += n
            totals[name][1] += t
        ratios.append(_rate(this["guarded"]) / _rate(this["plain"]))
    return {"plain_tok_s": _rate(totals["plain"]), "guarded_tok_s": _rate(totals["guarded"]),
            "timed_prompts": len(timed), "tokens_per_round": totals["plain"][0] // rounds,
            "left_out": [PROMPTS[i] for i in range(count) if i not in timed],
            "ratio": statistics.median(ratios), "ratio_low": min(ratios),
            "ratio_high": max(ratios)}  # fmt: skip


def guarded_answer(backend, max_tokens: int):
    """guarded(i): tokens decoded by guarded generation (guard on) for prompt i."""
    sampling = Sampling(max_tokens=max_tokens)

    def guarded(i: int) -> int:
        chat = [{"role": "user", "content": PROMPTS[i]}]
        return generate(backend, chat, GuardSettings(), sampling).steps

    return guarded


def bench_llamacpp(
    path: Path, max_tokens: int, rounds: int, threads: int | None, cls: dict
) -> dict:
    from localguard.backends.factory import open_guard_backend
    from localguard.backends.llamacpp.extra_buffers import open_llama
    from localguard.backends.llamacpp.gguf_runtime import default_threads

    threads = threads or default_threads(path)
    backend = open_guard_backend(path, "llamacpp", n_ctx=512, n_threads=threads, **cls)
    prompts = [backend.encode_chat([{"role": "user", "content": p}]) for p in PROMPTS]
    # the same extra buffer types as the guard's GGUFModel, so the ratio compares like with like
    llm = open_llama(path, n_ctx=512, n_batch=512, n_threads=threads, n_threads_batch=threads,
                     verbose=False)  # fmt: skip
    eos = backend.eos_ids

    def plain(i: int) -> int:
        llm.reset()
        for n, token in enumerate(llm.generate(prompts[i], top_k=1, temp=0.0, reset=True), 1):
            if token in eos or n >= max_tokens:
                return n
        return n

    found = paired(rounds, len(prompts), plain, guarded_answer(backend, max_tokens))
    llm.close()
    backend.close()
    return {"file": str(path), "threads": threads, **found}


def bench_mlx(
    ref: str, head: Path, adapter: Path | None, max_tokens: int, rounds: int, cls: dict
) -> dict:
    from mlx_lm import stream_generate
    from mlx_lm.sample_utils import make_sampler

    from localguard.backends.factory import open_guard_backend
    from localguard.backends.mlx.guarded import ADAPTER_FILE
    from localguard.backends.mlx.loading import load_model
    from localguard.hub import resolve_model

    model = resolve_model(ref)
    backend = open_guard_backend(model, "mlx", head=head, adapter=adapter, **cls)
    if adapter is None and (head / ADAPTER_FILE).is_file():
        adapter = head  # the same weights on both sides
    # loaded as the guarded side is: mlx_lm.load would keep a float16 model's weights, which
    # MLX's CPU decodes ~3.5x slower than the float32 ones localguard widens them to
    plain_model, tokenizer = load_model(model, adapter)
    prompts = [backend.encode_chat([{"role": "user", "content": p}]) for p in PROMPTS]
    greedy = make_sampler(0.0)

    def plain(i: int) -> int:
        for n, response in enumerate(stream_generate(plain_model, tokenizer, prompts[i],
                                     max_tokens=max_tokens, sampler=greedy), 1):  # fmt: skip
            if response.finish_reason:
                return n
        return n

    found = paired(rounds, len(prompts), plain, guarded_answer(backend, max_tokens))
    backend.close()
    return {"model": ref, "head": str(head), **found}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--gguf", type=Path, help="GGUF file with its baked head")
    parser.add_argument("--model", help="MLX model: folder, .gguf, smollm2:135m, starter:SIZE")
    parser.add_argument("--head", type=Path, help="safety head folder (with --model)")
    parser.add_argument("--adapter", type=Path, help="adapter folder (default: the head's own)")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=9, help="timed rounds over the prompts")
    parser.add_argument("--threads", type=int, help="llama.cpp threads (default: as the guard)")
    parser.add_argument("--out", type=Path, help="write the figures as JSON")
    parser.add_argument(
        "--cls-schedule",
        help="a CLS head's schedules to time, comma-separated NAME[:PERIOD] (one row each)",
    )
    args = parser.parse_args()
    if not args.gguf and not args.model:
        parser.error("give --gguf and/or --model with --head")
    if args.model and not args.head:
        parser.error("--model needs --head")
    schedules = args.cls_schedule.split(",") if args.cls_schedule else [None]
    report: dict = {"prompts": len(PROMPTS), "max_tokens": args.max_tokens, "target": TARGET}
    for schedule in schedules:
        cls, suffix = {}, ""
        if schedule is not None:
            name, _, period = schedule.partition(":")
            cls = {"cls_schedule": name, **({"cls_period": int(period)} if period else {})}
            suffix = f" cls {schedule}"
        if args.gguf:
            report["llamacpp" + suffix] = bench_llamacpp(
                args.gguf, args.max_tokens, args.repeats, args.threads, cls
            )
        if args.model:
            report["mlx" + suffix] = bench_mlx(
                args.model, args.head, args.adapter, args.max_tokens, args.repeats, cls
            )
    print(f"{'backend':26} {'plain tok/s':>12} {'guarded tok/s':>14} {'ratio':>7}  target")
    for name, r in report.items():
        if not isinstance(r, dict):
            continue
        overhead = 1 / r["ratio"] - 1
        if " cls annealed" in name:
            met = "met" if overhead <= CLS_OVERHEAD else "NOT met"
            target = f"overhead {overhead:.3f} <= {CLS_OVERHEAD} {met}"
        elif " cls " in name:
            target = f"overhead {overhead:.3f}"
        else:
            target = f">= {TARGET} {'met' if r['ratio'] >= TARGET else 'NOT met'}"
        print(
            f"{name:26} {r['plain_tok_s']:12.1f} {r['guarded_tok_s']:14.1f} {r['ratio']:7.3f}  "
            f"{target} (rounds {r['ratio_low']:.3f}-{r['ratio_high']:.3f}; "
            f"{r['timed_prompts']} of {len(PROMPTS)} prompts)"
        )
    if args.out:
        args.out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
