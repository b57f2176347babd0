"""Benchmark: localguard's fine-tuning step against mlx-lm's own LoRA training.

On the starter demo model with the same data, LoRA settings, batch size and sequence length:
(a) mlx-lm's trainer with its default loss, (b) localguard with risk=none, (c) localguard with
risk=probe (an extra reference forward pass for the KL term, on the rows the recipe's default
kl_sample_below picks). Each measurement runs in a fresh process (clean peak-memory counter) and
reports the mean step time, since (c)'s steps differ in cost; the three alternate for --repeats
rounds and the medians are compared, so machine noise hits all three alike. Prints the ratios
b/a and c/a.

Targets: time b/a <= 1.05, c/a <= 1.35; peak memory c/a <= 1.10.

    python scripts/bench_finetune.py [--size demo] [--steps 30] [--repeats 3]
"""

from __future__ import annotations

from localguard.blas import reexec_with_fast_blas

reexec_with_fast_blas()  # before mlx loads: OpenBLAS makes MLX's CPU matmuls 20-50x faster

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import mlx.core as mx
import numpy as np

SETTINGS = {"batch_size": 8, "max_seq_length": 256, "rank": 8, "scale": 20.0, "lr": 1e-4}
WARMUP = 5  # steps excluded from timing (compilation, allocation)


class StepClock:
    """Wall time between step reports, measured the same way for every trainer."""

    def __init__(self) -> None:
        self.times: list[float] = []
        self.reference_rows: list[float] = []
        self.last = time.perf_counter()

    def start(self) -> None:
        self.last = time.perf_counter()

    def tick(self, _step: int = 0, metrics: dict | None = None) -> None:
        now = time.perf_counter()
        self.times.append(now - self.last)
        self.last = now
        if metrics and "reference_rows" in metrics:
            self.reference_rows.append(metrics["reference_rows"])

    def result(self) -> dict:
        rows = statistics.mean(self.reference_rows) if self.reference_rows else 0.0
        return {
            "step_s": statistics.mean(self.times[WARMUP:]),
            "peak_gb": mx.get_peak_memory() / 1e9,
            "reference_rows": rows,
        }


def _samples(model_dir: Path, tokenizer):
    from localguard.data import load_dataset

    data = model_dir.parent / "data" / "attack_10.jsonl"
    return load_dataset(data, tokenizer, SETTINGS["max_seq_length"]).samples


def run_mlx_lm(model_dir: Path, steps: int) -> dict:
    """(a) mlx-lm's own trainer, default loss and batch iterator."""
    import mlx.optimizers as optim
    from mlx_lm import load
    from mlx_lm.tuner.trainer import TrainingArgs, TrainingCallback, train
    from mlx_lm.tuner.utils import linear_to_lora_layers

    model, tokenizer = load(str(model_dir))
    dataset = [(s.tokens, s.offset) for s in _samples(model_dir, tokenizer)]
    model.freeze()
    mx.random.seed(0)
    lora = {"rank": SETTINGS["rank"], "scale": SETTINGS["scale"], "dropout": 0.0}
    linear_to_lora_layers(model, len(model.layers), lora)
    clock = StepClock()

    class Report(TrainingCallback):
        def on_train_loss_report(self, info: dict) -> None:
            clock.tick()

    mx.reset_peak_memory()
    clock.start()
    with tempfile.TemporaryDirectory() as tmp:
        args = TrainingArgs(
            batch_size=SETTINGS["batch_size"],
            iters=steps,
            steps_per_report=1,
            steps_per_eval=10**9,
            max_seq_length=SETTINGS["max_seq_length"],
            adapter_file=str(Path(tmp) / "adapters.safetensors"),
        )
        train(
            model,
            optim.Adam(learning_rate=SETTINGS["lr"]),
            dataset,
            args=args,
            training_callback=Report(),
        )
    return clock.result()


def run_localguard(model_dir: Path, steps: int, risk: str, probe: Path | None) -> dict:
    """(b) and (c): localguard's loop, without or with the reference pass."""
    from localguard.backends.mlx import lora_train as lt
    from localguard.finetune import FinetuneOptions, estimate_risk, weighting_for

    model, tokenizer = lt.load(model_dir)
    samples = _samples(model_dir, tokenizer)
    opts = FinetuneOptions(model=model_dir, data=Path(), out=Path(), risk=risk, probe=probe)
    risks, _ = estimate_risk(opts, model, samples)
    lt.add_adapters(model, lt.LoraSpec(rank=SETTINGS["rank"], scale=SETTINGS["scale"]))
    spec = lt.TrainSpec(
        iters=steps,
        batch_size=SETTINGS["batch_size"],
        learning_rate=SETTINGS["lr"],
        max_seq_length=SETTINGS["max_seq_length"],
        steps_per_save=10**9,
    )
    clock = StepClock()
    mx.reset_peak_memory()
    clock.start()
    with tempfile.TemporaryDirectory() as tmp:
        lt.train(model, samples, risks, weighting_for(opts), spec, Path(tmp), progress=clock.tick)
    return clock.result()


def worker(mode: str, model_dir: Path, steps: int, probe: Path | None) -> None:
    if mode == "mlx_lm":
        result = run_mlx_lm(model_dir, steps)
    else:
        result = run_localguard(model_dir, steps, mode, probe)
    print(json.dumps(result))


def measure(mode: str, model_dir: Path, steps: int, probe: Path) -> dict:
    command = [
        sys.executable,
        __file__,
        "--worker",
        mode,
        "--model",
        str(model_dir),
        "--steps",
        str(steps),
        "--probe",
        str(probe),
    ]
    done = subprocess.run(command, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="demo", choices=["test", "demo"])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    parser.add_argument("--probe", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.worker, Path(args.model), args.steps, Path(args.probe))
        return
    from localguard.backends.mlx.probe_train import train_probe_file
    from localguard.starter.build import build

    model_dir = build(args.size)
    with tempfile.TemporaryDirectory() as tmp:
        probe = Path(tmp) / "probe"
        train_probe_file(model_dir, model_dir.parent / "data" / "safety_prompts.jsonl", probe)
        modes = ("mlx_lm", "none", "probe")
        results: dict[str, list[dict]] = {m: [] for m in modes}
        for round_ in range(args.repeats):
            for mode in modes:
                results[mode].append(measure(mode, model_dir, args.steps, probe))
                r = results[mode][-1]
                print(
                    f"round {round_ + 1} {mode:<7} {r['step_s'] * 1e3:7.1f} ms/step "
                    f"peak {r['peak_gb'] * 1e3:6.1f} MB",
                    flush=True,
                )
    keys = ("step_s", "peak_gb", "reference_rows")
    med = {m: {k: float(np.median([r[k] for r in results[m]])) for k in keys} for m in modes}
    print(f"\nstarter {args.size}, {args.steps} steps, {SETTINGS}, medians of {args.repeats}")
    print(f"(c) ran the reference pass on {med['probe']['reference_rows']:.0%} of its rows")
    print(f"{'':<22}{'ms/step':>9}{'peak MB':>9}")
    names = {"mlx_lm": "(a) mlx-lm LoRA", "none": "(b) risk=none", "probe": "(c) risk=probe"}
    for mode in modes:
        print(
            f"{names[mode]:<22}{med[mode]['step_s'] * 1e3:>9.1f}{med[mode]['peak_gb'] * 1e3:>9.1f}"
        )
    a = med["mlx_lm"]
    for mode, time_goal, mem_goal in (("none", 1.05, None), ("probe", 1.35, 1.10)):
        t = med[mode]["step_s"] / a["step_s"]
        m = med[mode]["peak_gb"] / a["peak_gb"]
        goal = f" (target <= {time_goal})" + (f", memory target <= {mem_goal}" if mem_goal else "")
        label = "b/a" if mode == "none" else "c/a"
        print(f"{label}: time {t:.3f}, peak memory {m:.3f}{goal}")


if __name__ == "__main__":
    main()
