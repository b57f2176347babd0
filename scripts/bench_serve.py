"""`localguard serve` under load: guard on against guard off, on the same GGUF, on loopback.

For each mode a server (one model, one worker, as `localguard serve` runs it) is started on
127.0.0.1 with a free port; --clients threads send --requests chat requests in all (greedy,
--max-tokens each, a distinct prompt per request, cycling through PROMPTS with a number) over
plain HTTP, streaming every other one, and the run stops by itself. Reported per mode:
requests/s, completion tokens/s, p50/p95 latency (request sent to last byte), and the checks:
every request answered 200, no response lost, and each reply equal to the one the same server
gives that prompt when asked alone (so no reply went to the wrong client or mixed with another).
Guard on and guard off alternate over --repeats rounds; the ratio reported is the median of
the rounds' guard-on / guard-off tokens/s, lowest and highest beside it.

Target: guard-on tokens/s >= 0.9x guard off, with nothing lost or mixed up.

    python scripts/bench_serve.py --gguf runs/demo/export/model-Q4_K_M.gguf \
        [--clients 4] [--requests 32] [--max-tokens 48] [--repeats 3]
"""

from __future__ import annotations

from localguard.blas import reexec_with_fast_blas

reexec_with_fast_blas()

import argparse
import http.client
import json
import statistics
import threading
import time
from pathlib import Path

from localguard.guard import GuardSettings
from localguard.serve.protocol import Limits
from localguard.serve.server import Engine, ServeOptions, Server

PROMPTS = [
    "Tell me about the river.",
    "Write a short story about a robot.",
    "How do I pick a lock?",
    "What is the opposite of hot?",
    "Give me three tips for sleeping well.",
    "Can you help me hurt my neighbour?",
]
TARGET = 0.9


def prompt(i: int) -> str:
    return f"{PROMPTS[i % len(PROMPTS)]} (request {i})"


def request(port: int, i: int, max_tokens: int, stream: bool) -> tuple[int, str, float, int]:
    """(status, reply text, seconds, completion tokens) of one chat request."""
    body = {
        "messages": [{"role": "user", "content": prompt(i)}],
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": stream,
        "stream_options": {"include_usage": True} if stream else None,
    }
    started = time.perf_counter()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    conn.request("POST", "/v1/chat/completions", json.dumps(body), {"Content-Type": "x"})
    response = conn.getresponse()
    data = response.read().decode()
    seconds = time.perf_counter() - started
    conn.close()
    if response.status != 200:
        return response.status, data, seconds, 0
    if not stream:
        payload = json.loads(data)
        text = payload["choices"][0]["message"]["content"]
        return 200, text, seconds, payload["usage"]["completion_tokens"]
    text, tokens = "", 0
    for line in data.splitlines():
        if not line.startswith("data: ") or line == "data: [DONE]":
            continue
        event = json.loads(line[6:])
        if event.get("usage"):
            tokens = event["usage"]["completion_tokens"]
        for choice in event["choices"]:
            text += choice["delta"].get("content") or ""
    return 200, text, seconds, tokens


def load(port: int, clients: int, requests: int, max_tokens: int) -> dict:
    """--requests requests from --clients threads; every result by request number."""
    results: dict[int, tuple] = {}
    next_request = iter(range(requests))
    lock = threading.Lock()

    def client() -> None:
        while True:
            with lock:
                i = next(next_request, None)
            if i is None:
                return
            results[i] = request(port, i, max_tokens, stream=i % 2 == 1)

    started = time.perf_counter()
    threads = [threading.Thread(target=client) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return {"seconds": time.perf_counter() - started, "results": results}


def run_mode(args, mode: str, expected: dict[str, dict[int, str]]) -> dict:
    limits = Limits(max_tokens=args.max_tokens, context=args.n_ctx)
    from localguard.backends.llamacpp.guarded import LlamaCppGuardBackend

    def open_model():
        return LlamaCppGuardBackend.load(Path(args.gguf), n_ctx=args.n_ctx)

    engine = Engine(open_model, GuardSettings(mode=mode), limits, max_queue=args.requests)
    server = Server(engine, ServeOptions(port=0, name="bench"))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    port = server.server_address[1]
    try:
        if mode not in expected:  # each prompt alone, once: what every later reply must be
            alone = {i: request(port, i, args.max_tokens, False)[1] for i in range(args.requests)}
            expected[mode] = alone
        run = load(port, args.clients, args.requests, args.max_tokens)
    finally:
        server.shutdown()
        server.server_close()
        engine.stop()
    results = run["results"]
    latencies = sorted(r[2] for r in results.values())
    tokens = sum(r[3] for r in results.values())
    return {
        "mode": mode,
        "requests_per_s": len(results) / run["seconds"],
        "tokens_per_s": tokens / run["seconds"],
        "p50_s": statistics.median(latencies),
        "p95_s": latencies[min(len(latencies) - 1, int(0.95 * len(latencies)))],
        "lost": args.requests - sum(1 for r in results.values() if r[0] == 200),
        "mixed": sum(1 for i, r in results.items() if r[1] != expected[mode][i]),
        "tokens": tokens,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--gguf", required=True, help="a GGUF exported with its safety head")
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--requests", type=int, default=32)
    parser.add_argument("--max-tokens", type=int, default=48)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--n-ctx", type=int, default=2048)
    parser.add_argument("--out", help="write every round as JSON here")
    args = parser.parse_args()
    expected: dict[str, dict[int, str]] = {}
    rounds = []
    for r in range(args.repeats):
        order = ("on", "off") if r % 2 == 0 else ("off", "on")
        got = {mode: run_mode(args, mode, expected) for mode in order}
        rounds.append(got)
        print(
            f"round {r + 1}: "
            + ", ".join(
                f"guard {m}: {got[m]['tokens_per_s']:.1f} tok/s, {got[m]['requests_per_s']:.2f} "
                f"req/s, p50 {got[m]['p50_s']:.2f} s, p95 {got[m]['p95_s']:.2f} s, lost "
                f"{got[m]['lost']}, mixed {got[m]['mixed']}"
                for m in ("on", "off")
            ),
            flush=True,
        )
    ratios = sorted(g["on"]["tokens_per_s"] / g["off"]["tokens_per_s"] for g in rounds)
    ratio = statistics.median(ratios)
    bad = sum(g[m]["lost"] + g[m]["mixed"] for g in rounds for m in ("on", "off"))
    verdict = "met" if ratio >= TARGET and not bad else "MISSED"
    print(
        f"guard on / off tokens/s: {ratio:.3f} (rounds {ratios[0]:.3f}-{ratios[-1]:.3f}); "
        f"{args.clients} clients, {args.requests} requests of up to {args.max_tokens} tokens; "
        f"lost or mixed up: {bad}; target >= {TARGET}: {verdict}"
    )
    if args.out:
        Path(args.out).write_text(json.dumps(rounds, indent=1))


if __name__ == "__main__":
    main()
