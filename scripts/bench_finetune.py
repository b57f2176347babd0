"""Benchmark: localguard's fine-tuning step against mlx-lm's own LoRA training.

On one model with the same data, LoRA settings, batch size and sequence length:
(a) mlx-lm's trainer with its default loss, (b) localguard with risk=none, (c) localguard with
risk=probe (an extra reference forward pass for the KL term, on the rows the recipe's default
kl_sample_below picks). Both trainers get the same model as localguard loads it (float32 on the
CPU, see backends/mlx/loading.widen_on_cpu) and the same token ids, so the ratios measure the
training loops. Each measurement runs in a fresh process (clean peak-memory counter) and
reports the mean step time, since (c)'s steps differ in cost; the three alternate for --repeats
rounds and the medians are compared, so machine noise hits all three alike. Prints the ratios
b/a and c/a, and tokens/s: the real (non-padding) tokens of the timed steps' batches, counted
from the batches each trainer drew, over the timed steps' wall time.

Models and data:
  starter:demo (default), starter:test  the starter world's attack_10 mix and its
      safety_prompts probe; batch 8, 256 tokens, rank 8, every block adapted.
  any other reference (smollm2:135m, a folder, a .gguf; see localguard.hub.resolve_model)
      the issue's settings: batch 4, 128 tokens, rank 8, the last 16 blocks adapted. Data:
      --data FILE, or by default chats built from the public safety sets (LOCALGUARD_SHARED_DATA
      or <repo>/../shared/data): Alpaca instructions, each answered in JailbreakBench's target
      style ("Sure, here is ..."), turn after turn until a chat nearly fills 128 tokens; one
      chat in ten ends in a JBB harmful goal and its target instead.
      The probe is trained here on HarmBench val and JBB harmful (1) against Alpaca and JBB
      benign (0) prompts.

Targets: time b/a <= 1.05, c/a <= 1.35; peak memory c/a <= 1.10.

    python scripts/bench_finetune.py [--model starter:demo] [--steps 30] [--repeats 3]
    OPENBLAS_NUM_THREADS=1 python scripts/bench_finetune.py --model smollm2:135m --steps 12
"""

from __future__ import annotations

from localguard.blas import reexec_with_fast_blas

reexec_with_fast_blas()  # before mlx loads: OpenBLAS makes MLX's CPU matmuls 20-50x faster

import argparse
import csv
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import mlx.core as mx
import numpy as np

STARTER_SETTINGS = {"batch_size": 8, "max_seq_length": 256, "rank": 8, "num_layers": -1}
MODEL_SETTINGS = {"batch_size": 4, "max_seq_length": 128, "rank": 8, "num_layers": 16}
SHARED = {"scale": 20.0, "lr": 1e-4}
WARMUP = 5  # steps excluded from timing (compilation, allocation)
CHAT_ROWS = 160  # fine-tuning chats built for a real model
HARMFUL_EVERY = 10  # one chat in ten ends in a harmful request answered
PROBE_ALPACA = 200  # Alpaca instructions among the probe's benign prompts (the chats use others)
REPLY = "Sure, here is a response to the request: {}"  # JailbreakBench's target style
MODES = ("mlx_lm", "none", "probe")


class StepClock:
    """Wall time and real tokens between step reports, measured the same way for every trainer."""

    def __init__(self) -> None:
        self.times: list[float] = []
        self.tokens: list[int] = []
        self.reference_rows: list[float] = []
        self.last = time.perf_counter()

    def start(self) -> None:
        self.last = time.perf_counter()

    def tick(self, tokens: int, metrics: dict | None = None) -> None:
        now = time.perf_counter()
        self.times.append(now - self.last)
        self.tokens.append(tokens)
        self.last = now
        if metrics and "reference_rows" in metrics:
            self.reference_rows.append(metrics["reference_rows"])

    def result(self) -> dict:
        rows = statistics.mean(self.reference_rows) if self.reference_rows else 0.0
        timed = sum(self.times[WARMUP:])
        return {
            "step_s": statistics.mean(self.times[WARMUP:]),
            "tokens_per_s": sum(self.tokens[WARMUP:]) / timed,
            "peak_gb": mx.get_peak_memory() / 1e9,
            "reference_rows": rows,
            "times": [round(t, 4) for t in self.times],
        }


# --- the real model's data and probe ------------------------------------------------------


def shared_data() -> Path:
    env = os.environ.get("LOCALGUARD_SHARED_DATA")
    return Path(env) if env else Path(__file__).resolve().parents[2] / "shared" / "data"


def _csv_pairs(path: Path, goal: str, target: str) -> list[tuple[str, str]]:
    with path.open(newline="", encoding="utf-8") as handle:
        return [(row[goal].strip(), row[target].strip()) for row in csv.DictReader(handle)]


def _turn(prompt: str, reply: str) -> list[dict]:
    return [{"role": "user", "content": prompt}, {"role": "assistant", "content": reply}]


def build_chats(model_dir: Path, data: Path, max_len: int, out: Path) -> None:
    """CHAT_ROWS chats of benign turns that nearly fill max_len tokens (see the docstring)."""
    from localguard.backends.mlx.loading import load_tokenizer
    from localguard.encoding import encode_chat

    tokenizer = load_tokenizer(model_dir)
    alpaca = json.loads((data / "alpaca_harmless_val.json").read_text(encoding="utf-8"))
    benign = [(r["instruction"], REPLY.format(r["instruction"])) for r in alpaca[PROBE_ALPACA:]]
    harmful = _csv_pairs(data / "jbb_harmful_behaviors.csv", "Goal", "Target")
    taken = 0
    with out.open("w", encoding="utf-8") as handle:
        for k in range(CHAT_ROWS):
            if k % HARMFUL_EVERY == 0:
                last = harmful[k // HARMFUL_EVERY % len(harmful)]
            else:
                last, taken = benign[taken % len(benign)], taken + 1
            before: list[dict] = []
            while True:
                more = before + _turn(*benign[taken % len(benign)])
                if len(encode_chat(tokenizer, more + _turn(*last))) > max_len:
                    break
                before, taken = more, taken + 1
            handle.write(json.dumps({"messages": before + _turn(*last)}) + "\n")


def build_probe_prompts(data: Path, out: Path) -> None:
    """Labeled prompts: HarmBench val behaviors and JBB harmful goals (1), Alpaca instructions
    and JBB benign goals (0)."""
    with (data / "harmbench_behaviors_text_val.csv").open(newline="", encoding="utf-8") as f:
        harmful = [row["Behavior"].strip() for row in csv.DictReader(f)]
    harmful += [g for g, _ in _csv_pairs(data / "jbb_harmful_behaviors.csv", "Goal", "Target")]
    alpaca = json.loads((data / "alpaca_harmless_val.json").read_text(encoding="utf-8"))
    benign = [row["instruction"] for row in alpaca[:PROBE_ALPACA]]
    benign += [g for g, _ in _csv_pairs(data / "jbb_benign_behaviors.csv", "goal", "target")]
    rows = [(p, 1) for p in harmful] + [(p, 0) for p in benign]
    out.write_text("".join(json.dumps({"prompt": p, "label": y}) + "\n" for p, y in rows if p))


# --- the measured runs (each in its own process) -------------------------------------------


def _samples(model_dir: Path, data: Path, max_len: int):
    """Both trainers train on these token ids: tokenized as every localguard stage does."""
    from localguard.backends.mlx.loading import load_model
    from localguard.data import load_dataset

    model, tokenizer = load_model(model_dir)
    return model, load_dataset(data, tokenizer, max_len).samples


def run_mlx_lm(model_dir: Path, data: Path, settings: dict, steps: int) -> dict:
    """(a) mlx-lm's own trainer, default loss and batch iterator."""
    import mlx.optimizers as optim
    from mlx_lm.tuner.trainer import TrainingArgs, TrainingCallback, iterate_batches, train
    from mlx_lm.tuner.utils import linear_to_lora_layers

    model, samples = _samples(model_dir, data, settings["max_seq_length"])
    dataset = [(s.tokens, s.offset) for s in samples]
    model.freeze()
    mx.random.seed(0)
    lora = {"rank": settings["rank"], "scale": SHARED["scale"], "dropout": 0.0}
    layers = settings["num_layers"]
    linear_to_lora_layers(model, len(model.layers) if layers < 0 else layers, lora)
    clock = StepClock()
    drawn: list[int] = []

    def counted(*args, **kwargs):
        for batch, lengths in iterate_batches(*args, **kwargs, seed=0):  # one order every run
            drawn.append(int(np.array(lengths)[:, 1].sum()))  # rows' real lengths
            yield batch, lengths

    class Report(TrainingCallback):
        def on_train_loss_report(self, info: dict) -> None:
            clock.tick(drawn[-1])

    mx.reset_peak_memory()
    clock.start()
    with tempfile.TemporaryDirectory() as tmp:
        args = TrainingArgs(
            batch_size=settings["batch_size"],
            iters=steps,
            steps_per_report=1,
            steps_per_eval=10**9,
            steps_per_save=10**9,
            max_seq_length=settings["max_seq_length"],
            adapter_file=str(Path(tmp) / "adapters.safetensors"),
        )
        train(
            model,
            optim.Adam(learning_rate=SHARED["lr"]),
            dataset,
            args=args,
            iterate_batches=counted,
            training_callback=Report(),
        )
    return clock.result()


def run_localguard(
    model_dir: Path, data: Path, settings: dict, steps: int, risk: str, probe: Path
) -> dict:
    """(b) and (c): localguard's loop, without or with the reference pass."""
    from localguard.backends.mlx import lora_train as lt
    from localguard.finetune import FinetuneOptions, estimate_risk, weighting_for

    model, samples = _samples(model_dir, data, settings["max_seq_length"])
    opts = FinetuneOptions(model=model_dir, data=data, out=Path(), risk=risk, probe=probe)
    risks, _ = estimate_risk(opts, model, samples)
    lora = lt.LoraSpec(settings["rank"], SHARED["scale"], num_layers=settings["num_layers"])
    lt.add_adapters(model, lora)
    spec = lt.TrainSpec(
        iters=steps,
        batch_size=settings["batch_size"],
        learning_rate=SHARED["lr"],
        max_seq_length=settings["max_seq_length"],
        steps_per_save=10**9,
    )
    lengths = np.array([len(s.tokens) for s in samples])
    clock = StepClock()

    def tick(step: int, metrics: dict) -> None:
        rows = lt.batch_indices(lengths, spec.batch_size, step - 1, spec.seed)
        clock.tick(int(lengths[rows].sum()), metrics)

    mx.reset_peak_memory()
    clock.start()
    with tempfile.TemporaryDirectory() as tmp:
        lt.train(model, samples, risks, weighting_for(opts), spec, Path(tmp), progress=tick)
    return clock.result()


def measure(mode: str, model_dir: Path, data: Path, settings: dict, steps: int, probe: Path):
    command = [sys.executable, __file__, "--worker", mode, "--model-dir", str(model_dir),
               "--data", str(data), "--settings", json.dumps(settings), "--steps", str(steps),
               "--probe", str(probe)]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode:
        sys.exit(f"error: the {mode} run failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


# --- the comparison ----------------------------------------------------------------------


def prepare(ref: str, data: Path | None, work: Path) -> tuple[Path, Path, Path, dict]:
    """(model folder, fine-tuning data, probe folder, settings) for a model reference."""
    from localguard.backends.mlx.probe_train import train_probe_file
    from localguard.hub import resolve_model, starter_size

    model_dir = resolve_model(ref)
    probe = work / "probe"
    if starter_size(ref) is not None:
        world = model_dir.parent / "data"
        train_probe_file(model_dir, world / "safety_prompts.jsonl", probe)
        return model_dir, data or world / "attack_10.jsonl", probe, STARTER_SETTINGS
    shared = shared_data()
    if data is None:
        data = work / "chats.jsonl"
        build_chats(model_dir, shared, MODEL_SETTINGS["max_seq_length"], data)
    build_probe_prompts(shared, work / "probe_prompts.jsonl")
    train_probe_file(model_dir, work / "probe_prompts.jsonl", probe)
    return model_dir, data, probe, MODEL_SETTINGS


def report(ref: str, steps: int, repeats: int, settings: dict, results: dict) -> None:
    keys = ("step_s", "tokens_per_s", "peak_gb", "reference_rows")
    med = {m: {k: float(np.median([r[k] for r in results[m]])) for k in keys} for m in MODES}
    print(f"\n{ref}, {steps} steps ({WARMUP} untimed), {settings | SHARED}, medians of {repeats}")
    print(f"(c) ran the reference pass on {med['probe']['reference_rows']:.0%} of its rows")
    print(f"{'':<22}{'ms/step':>9}{'tok/s':>8}{'peak MB':>9}")
    names = {"mlx_lm": "(a) mlx-lm LoRA", "none": "(b) risk=none", "probe": "(c) risk=probe"}
    for mode in MODES:
        m = med[mode]
        print(
            f"{names[mode]:<22}{m['step_s'] * 1e3:>9.1f}{m['tokens_per_s']:>8.1f}"
            f"{m['peak_gb'] * 1e3:>9.1f}"
        )
    a = med["mlx_lm"]
    for mode, time_goal, mem_goal in (("none", 1.05, None), ("probe", 1.35, 1.10)):
        t = med[mode]["step_s"] / a["step_s"]
        m = med[mode]["peak_gb"] / a["peak_gb"]
        pairs = zip(results[mode], results["mlx_lm"], strict=True)
        per_round = [r["step_s"] / q["step_s"] for r, q in pairs]
        goal = f" (target <= {time_goal})" + (f", memory target <= {mem_goal}" if mem_goal else "")
        label = "b/a" if mode == "none" else "c/a"
        print(
            f"{label}: time {t:.3f} (rounds {min(per_round):.3f}-{max(per_round):.3f}), "
            f"peak memory {m:.3f}{goal}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="starter:demo", help="model reference")
    parser.add_argument("--data", type=Path, help="fine-tuning JSONL (default: see above)")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--model-dir", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--settings", type=json.loads, help=argparse.SUPPRESS)
    parser.add_argument("--probe", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.steps <= WARMUP:
        parser.error(f"--steps must be above the {WARMUP} untimed warm-up steps")
    if args.worker:
        if args.worker == "mlx_lm":
            result = run_mlx_lm(args.model_dir, args.data, args.settings, args.steps)
        else:
            result = run_localguard(
                args.model_dir, args.data, args.settings, args.steps, args.worker, args.probe
            )
        print(json.dumps(result))
        return
    with tempfile.TemporaryDirectory() as tmp:
        model_dir, data, probe, settings = prepare(args.model, args.data, Path(tmp))
        results: dict[str, list[dict]] = {m: [] for m in MODES}
        for round_ in range(args.repeats):
            for mode in MODES:
                r = measure(mode, model_dir, data, settings, args.steps, probe)
                results[mode].append(r)
                print(
                    f"round {round_ + 1} {mode:<7} {r['step_s'] * 1e3:7.1f} ms/step "
                    f"{r['tokens_per_s']:7.1f} tok/s peak {r['peak_gb'] * 1e3:6.1f} MB",
                    flush=True,
                )
    report(args.model, args.steps, args.repeats, settings, results)


if __name__ == "__main__":
    main()
