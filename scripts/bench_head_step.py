"""Benchmark: the head stage's training step, SFT logits at the targets only against everywhere.

Stream mode (the recipe's align and head stages) trains LoRA + the safety head on SFT + gamma *
BCE. The SFT term needs the vocabulary-wide output layer only at its targets, the reply tokens
of refusal and benign rows (head_train.sft_targets); it used to run at every position of the
batch, prompts, harmful replies and padding included. On localguard label's rows the targets
are about a quarter of a batch's positions. This trains the same model on the same batches
through the real loop (lora_train.run_training, compiled step), once with the loss as it is
(targets) and once with the SFT term computed at every position and masked (everywhere, the
old loss), alternating for --repeats rounds, each round in a fresh model. It prints the median
step time of each (the first --warmup steps of a run, which compile, left out), their ratio,
and the two losses of the first step, which must agree.

Target: time targets/everywhere <= 0.90 on SmolLM2-135M with a label file.

    python scripts/bench_head_step.py --data runs/NAME/label.jsonl [--model smollm2:135m]
        [--steps 12] [--repeats 3]

--data is a labeled conversations file: `localguard label`'s output, or a recipe run's
label.jsonl.
"""

from __future__ import annotations

from localguard.blas import reexec_with_fast_blas

reexec_with_fast_blas()  # before mlx loads: OpenBLAS makes MLX's CPU matmuls 20-50x faster

import argparse
import statistics
import tempfile
from pathlib import Path

import mlx.core as mx
import numpy as np

from localguard.backends.mlx import head_train as ht
from localguard.backends.mlx import lora_train as lt
from localguard.backends.mlx.hidden import hidden_size, output_logits
from localguard.backends.mlx.loading import load_model
from localguard.conversations import load_conversations
from localguard.hub import resolve_model
from localguard.safety_head import OUTPUTS, SafetyHead

TARGETS_ONLY = ht._sft


def sft_everywhere(
    model, hidden: mx.array, batch: ht.HeadBatch, ref: None
) -> tuple[mx.array, mx.array, mx.array]:
    """The old SFT term: the output layer at every position, then masked to the targets (no KL
    term: the benchmark trains at beta 0)."""
    rows, width = batch.tokens.shape
    flat = mx.zeros(rows * (width - 1)).at[batch.sft_states].add(batch.sft_weights)
    mask = flat.reshape(rows, width - 1)
    logits = output_logits(model, hidden[:, :-1]).astype(mx.float32)
    targets = batch.tokens[:, 1:]
    nll = mx.logsumexp(logits, axis=-1)
    nll = nll - mx.take_along_axis(logits, targets[..., None], axis=-1).squeeze(-1)
    tokens = mask.sum()
    return tokens, (nll * mask).sum() / mx.maximum(tokens, 1.0), mx.array(0.0)


def run(model_dir: Path, convs, steps: int, variant: str) -> tuple[list[float], float]:
    """(step seconds, first step's loss) of `steps` steps in a fresh model."""
    ht._sft = TARGETS_ONLY if variant == "targets" else sft_everywhere
    model, _ = load_model(model_dir)
    lt.add_adapters(model, lt.LoraSpec(rank=8, scale=20.0, num_layers=-1), seed=0)
    zeros = np.zeros((len(OUTPUTS), hidden_size(model)), np.float32)
    ht.attach_head(model, SafetyHead(list(OUTPUTS), zeros, zeros[:, 0], zeros[:, 0]))
    spec = lt.TrainSpec(iters=steps, batch_size=4, learning_rate=2e-4, max_seq_length=512)
    seen: list[dict] = []
    with tempfile.TemporaryDirectory() as work:
        objective = ht.HeadObjective(convs, spec, ht.Weights(gamma=0.1))
        lt.run_training(model, objective, spec, Path(work), on_metrics=seen.append)
    return [m["step_seconds"] for m in seen], seen[0]["loss"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="labeled conversations JSONL")
    parser.add_argument("--model", default="smollm2:135m")
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--warmup", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    model_dir = resolve_model(args.model)
    _, tokenizer = load_model(model_dir)
    convs = load_conversations(args.data, tokenizer, 512)
    times: dict[str, list[float]] = {"everywhere": [], "targets": []}
    losses: dict[str, float] = {}
    for r in range(args.repeats):
        for variant in times:
            seconds, losses[variant] = run(model_dir, convs, args.steps, variant)
            times[variant] += seconds[args.warmup :]
            print(f"round {r + 1} {variant:10s} {statistics.median(seconds[args.warmup :]):.3f} s")
    median = {k: statistics.median(v) for k, v in times.items()}
    print("first-step loss: " + ", ".join(f"{k} {v:.6f}" for k, v in losses.items()))
    print("median step: " + ", ".join(f"{k} {v:.3f} s" for k, v in median.items()))
    ratio = median["targets"] / median["everywhere"]
    print(f"ratio targets/everywhere: {ratio:.3f} (target <= 0.90)")


if __name__ == "__main__":
    main()
