"""What batching a CLS re-check with the next token's decode would save on llama.cpp.

The CLS guard (backends/llamacpp/guarded.py) decodes each re-check on its own: the token's
decode, then the CLS token's in a second sequence that shares the query's and the window's KV
cells. Batching both into one llama_decode is what an accelerator rewards (two rows cost about
one); on a CPU each row of a batch costs nearly a decode of its own. This times, on one GGUF and
one sequence of --steps decode steps:

    plain     one token per decode (guard off, or a step between re-checks)
    separate  the token's decode, then the CLS token's decode (what the guard does)
    batched   one decode of both: the token in sequence 0, the CLS token in sequence 1 reading
              the query and the window up to the token before (no coupled sequences)

and prints each against plain, and batched against separate: the saving batching could bring.

    python scripts/bench_cls_batch.py --gguf ~/.cache/localguard/models/smollm2-135m/*.gguf
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

from localguard.backends.llamacpp.gguf_runtime import _init_backend, default_threads

QUERY = (8, 40)  # [first, end) positions the CLS token reads as its query
WINDOW = 15  # the last r2 tokens it reads


def open_context(path: Path, threads: int, n_ctx: int):
    """A llama.cpp context with two sequences in a unified KV cache, and a two-row batch."""
    import llama_cpp as lib

    _init_backend()
    model = lib.llama_model_load_from_file(str(path).encode(), lib.llama_model_default_params())
    if not model:
        raise SystemExit(f"llama.cpp cannot load {path}")
    params = lib.llama_context_default_params()
    params.n_ctx, params.n_seq_max, params.kv_unified = n_ctx, 2, True
    params.n_batch = params.n_ubatch = 512
    params.n_threads = params.n_threads_batch = threads
    params.no_perf = True
    return lib, model, lib.llama_init_from_model(model, params), lib.llama_batch_init(512, 0, 1)


def decode(lib, ctx, batch, rows: list[tuple[int, int, int]]) -> None:
    """One llama_decode of (token, position, sequence) rows, logits for each."""
    batch.n_tokens = len(rows)
    for i, (token, pos, seq) in enumerate(rows):
        batch.token[i], batch.pos[i], batch.n_seq_id[i] = token, pos, 1
        batch.seq_id[i][0], batch.logits[i] = seq, True
    if lib.llama_decode(ctx, batch) != 0:
        raise SystemExit("llama_decode failed")


def timed_steps(lib, ctx, batch, mode: str, prompt: int, steps: int, cls: int) -> float:
    """Seconds per step of `steps` steps after a prompt of `prompt` cells, in this mode."""
    mem = lib.llama_get_memory(ctx)
    lib.llama_memory_seq_rm(mem, 0, prompt, -1)
    lib.llama_memory_seq_rm(mem, 1, -1, -1)
    start = time.perf_counter()
    for step in range(steps):
        pos = prompt + step
        token = 100 + step % 1000
        if mode == "plain":
            decode(lib, ctx, batch, [(token, pos, 0)])
            continue
        lib.llama_memory_seq_cp(mem, 0, 1, *QUERY)
        if mode == "separate":
            decode(lib, ctx, batch, [(token, pos, 0)])
            lib.llama_memory_seq_cp(mem, 0, 1, pos + 1 - WINDOW, pos + 1)
            decode(lib, ctx, batch, [(cls, pos + 1, 1)])
        else:  # the window ends at the token before: the CLS row sits where the token does
            lib.llama_memory_seq_cp(mem, 0, 1, pos - WINDOW, pos)
            decode(lib, ctx, batch, [(token, pos, 0), (cls, pos, 1)])
        lib.llama_memory_seq_rm(mem, 1, -1, -1)
    return (time.perf_counter() - start) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--gguf", type=Path, required=True)
    parser.add_argument("--threads", type=int, help="llama.cpp threads (default: as the guard)")
    parser.add_argument("--prompt", type=int, default=64, help="cells before the first step")
    parser.add_argument("--steps", type=int, default=128, help="decode steps per timing")
    parser.add_argument("--repeats", type=int, default=5, help="rounds over the three modes")
    args = parser.parse_args()
    threads = args.threads or default_threads(args.gguf)
    lib, model, ctx, batch = open_context(args.gguf, threads, args.prompt + args.steps + 8)
    try:
        decode(lib, ctx, batch, [(100 + i, i, 0) for i in range(args.prompt)])
        cls = int(lib.llama_vocab_bos(lib.llama_model_get_vocab(model)))  # any token will do
        modes = ("plain", "separate", "batched")
        times: dict[str, list[float]] = {m: [] for m in modes}
        for _ in range(args.repeats + 1):  # the first round warms up
            for m in modes:
                times[m].append(timed_steps(lib, ctx, batch, m, args.prompt, args.steps, cls))
        ms = {m: statistics.median(t[1:]) * 1e3 for m, t in times.items()}
    finally:
        lib.llama_batch_free(batch)
        lib.llama_free(ctx)
        lib.llama_model_free(model)
    print(f"{args.gguf.name}, {threads} threads, {args.steps} steps after {args.prompt} cells")
    for m in modes:
        print(f"{m:9} {ms[m]:7.2f} ms/step  {ms[m] / ms['plain']:5.2f} x plain")
    saving = 1 - ms["batched"] / ms["separate"]
    print(f"batched / separate {ms['batched'] / ms['separate']:.3f}: batching saves {saving:.1%}")


if __name__ == "__main__":
    main()
