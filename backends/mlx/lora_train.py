"""LoRA fine-tuning in MLX with a per-example KL pull towards the model without its adapters.

loss_i = alpha_i * NLL_i + beta_i * KL(pi_ref || pi_theta)_i, averaged over the batch. The
reference policy is the same network with every LoRA layer swapped back to its base layer for
one extra forward pass, so no second copy of the weights is held. That pass may run on a sample
of the low-beta rows only (`kl_weights`), weighted so the expected loss stays the same.

Reuses mlx-lm's LoRA layers, schedules and gradient checkpointing. The loop is our own, for
four reasons: mlx-lm's trainer reports one loss value (we log NLL, KL, beta and risk), cannot
checkpoint optimizer or random state for an exact resume, sorts batches by length, and its
default loss counts one padding token per row as a target.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import NamedTuple, Protocol

import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim
import numpy as np
from mlx.nn.utils import average_gradients
from mlx.utils import tree_flatten, tree_map, tree_unflatten
from mlx_lm.tuner.trainer import grad_checkpoint
from mlx_lm.tuner.utils import build_schedule, linear_to_lora_layers

from localguard.backends.mlx.hidden import final_hidden, output_logits
from localguard.files import staged_folder

CHECKPOINT = "checkpoint"
PAD_MULTIPLE = 32  # batch widths are rounded up so the compiled step sees few shapes
TARGET_PAD = 128  # a batch's count of target tokens is rounded up, for the same reason


@dataclass
class LoraSpec:
    """Which layers get adapters and how (mlx-lm's adapter_config.json fields)."""

    rank: int = 8
    scale: float = 20.0
    dropout: float = 0.0
    num_layers: int = -1
    keys: list[str] = field(default_factory=list)
    dora: bool = False

    def adapter_config(self, num_layers: int) -> dict:
        params = {"rank": self.rank, "scale": self.scale, "dropout": self.dropout}
        if self.keys:
            params["keys"] = list(self.keys)
        return {
            "fine_tune_type": "dora" if self.dora else "lora",
            "num_layers": num_layers,
            "lora_parameters": params,
        }


@dataclass
class TrainSpec:
    """Optimizer, schedule and loop settings."""

    iters: int
    batch_size: int = 4
    grad_accumulation: int = 1
    learning_rate: float = 1e-4
    lr_schedule: str = "constant"
    warmup_steps: int = 0
    optimizer: str = "adam"
    max_seq_length: int = 2048
    seed: int = 0
    steps_per_eval: int = 0
    steps_per_save: int = 100
    grad_checkpoint: bool = False


@dataclass
class Weighting:
    """How risk becomes the loss weights: beta = beta_min + (beta_max - beta_min) * risk.

    alpha is 1 - beta (the paper's soft trust region) or 1 when alpha_one. With ema > 0 each
    example's risk is blended with the running mean m of the batch risks seen so far:
    risk' = ema * m + (1 - ema) * risk, where m <- ema * m + (1 - ema) * batch mean.
    """

    beta_min: float = 0.0
    beta_max: float = 0.0
    alpha_one: bool = False
    ema: float = 0.0
    sample_below: float = 0.0  # see kl_weights

    def weights(self, risk: np.ndarray, running: float | None) -> tuple[np.ndarray, np.ndarray]:
        if self.ema and running is not None:
            risk = self.ema * running + (1 - self.ema) * risk
        beta = self.beta_min + (self.beta_max - self.beta_min) * risk
        alpha = np.ones_like(beta) if self.alpha_one else 1.0 - beta
        return alpha.astype(np.float32), beta.astype(np.float32)

    def update(self, running: float | None, risk: np.ndarray) -> float | None:
        if not self.ema:
            return None
        mean = float(risk.mean())
        return mean if running is None else self.ema * running + (1 - self.ema) * mean

    def kl_weights(self, beta: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """The KL weight each row gets this step; 0 means no reference pass for that row.

        Without sampling it is beta itself. With sample_below = c > 0, a row with beta < c is
        kept with probability beta / c and then weighted c, so its expected weight is still
        beta (a Horvitz-Thompson estimate: unbiased, a little noisier). Rows at or above c,
        the risky ones, always count. On data where most rows look safe, the reference pass,
        about a third of a step, runs on a small share of the rows.
        """
        draw = rng.random(len(beta))  # drawn even when unused, so the stream never shifts
        if not self.sample_below:
            return beta.astype(np.float32)
        keep = draw * self.sample_below < beta
        weight = np.where(beta >= self.sample_below, beta, self.sample_below)
        return np.where(keep & (beta > 0), weight, 0.0).astype(np.float32)


class Batch(NamedTuple):
    """One (micro-)batch; a tuple, so mx.compile can take it apart."""

    tokens: mx.array  # (B, L) right-padded
    offsets: mx.array  # first target index whose loss counts
    lengths: mx.array  # real length of each row
    alpha: mx.array  # task weight per example
    ref_rows: mx.array  # rows that get the reference pass (see reference_rows)
    ref_weight: mx.array  # their KL weights; 0 for the repeats that pad the count
    targets: mx.array  # the states whose next token is a target (see target_states)
    target_weights: mx.array


Metrics = dict[str, float]
Progress = Callable[[int, Metrics], None]


def load(path: Path) -> tuple[nn.Module, object]:
    """Model and tokenizer from a local folder (full precision or quantized, for QLoRA)."""
    from localguard.backends.mlx.loading import load_model

    return load_model(path)


def rank() -> int:
    return mx.distributed.init().rank()


# --- adapters ---------------------------------------------------------------------------


def add_adapters(model: nn.Module, lora: LoraSpec, seed: int = 0) -> int:
    """Freeze the model and add LoRA (or DoRA) layers, initialized from seed; returns how many
    blocks got them."""
    mx.random.seed(seed)
    total = len(model.layers)
    num_layers = total if lora.num_layers < 0 else min(lora.num_layers, total)
    model.freeze()
    config = lora.adapter_config(num_layers)
    linear_to_lora_layers(model, num_layers, config["lora_parameters"], use_dora=lora.dora)
    return num_layers


def adapter_modules(model: nn.Module) -> list[tuple[str, nn.Module, nn.Module]]:
    """(path, adapter module, its base module) for every LoRA/DoRA layer."""
    out = []
    for name, module in model.named_modules():
        if "lora_a" in module:
            base = module.get("linear", None) or module.get("embedding", None)
            out.append((name, module, base))
    return out


@contextmanager
def adapters_off(model: nn.Module) -> Iterator[None]:
    """Swap every adapter layer for its base layer: the model becomes the reference policy."""
    swapped = adapter_modules(model)
    model.update_modules(tree_unflatten([(name, base) for name, _, base in swapped]))
    try:
        yield
    finally:
        model.update_modules(tree_unflatten([(name, ada) for name, ada, _ in swapped]))


@contextmanager
def adapters_at(model: nn.Module, weights: dict[str, mx.array]) -> Iterator[None]:
    """Give the adapters the tensors `weights` (adapter_weights of an earlier moment, such as
    the adapter a stage started from) for the block: the model becomes that policy."""
    current = adapter_weights(model)
    model.update(tree_unflatten(list(weights.items())), strict=False)
    try:
        yield
    finally:
        model.update(tree_unflatten(list(current.items())), strict=False)


HEAD_MODULE = "safety_head"  # a trainable head attached to the model (head_train.py)


def trainable_weights(model: nn.Module) -> dict[str, mx.array]:
    return dict(tree_flatten(model.trainable_parameters()))


def adapter_weights(model: nn.Module) -> dict[str, mx.array]:
    """The LoRA/DoRA tensors only: mlx_lm.load refuses anything else in an adapter file."""
    weights = trainable_weights(model)
    return {k: v for k, v in weights.items() if not k.startswith(HEAD_MODULE + ".")}


def save_adapters(model: nn.Module, adapter_config: dict, folder: Path) -> None:
    """adapters.safetensors and adapter_config.json, as mlx_lm.load(adapter_path=) reads them."""
    mx.save_safetensors(str(folder / "adapters.safetensors"), adapter_weights(model))
    (folder / "adapter_config.json").write_text(json.dumps(adapter_config, indent=2) + "\n")


# --- loss -------------------------------------------------------------------------------


def target_states(spans: Sequence[tuple[int, int]], stride: int) -> tuple[np.ndarray, np.ndarray]:
    """(flat indices, weights) of the states whose next token is a target: tokens first .. end
    - 1 of each row's span, state j - 1 predicting token j, at row * stride + j - 1 of the
    flattened (rows, stride) states. The count is padded to a multiple of TARGET_PAD with
    weight-0 copies of index 0. Only these states need the vocabulary-wide output layer: on a
    chat a good half of a batch's positions are prompt and padding."""
    flat = [
        row * stride + j - 1 for row, (first, end) in enumerate(spans) for j in range(first, end)
    ]
    size = -(-max(len(flat), 1) // TARGET_PAD) * TARGET_PAD
    states, weights = np.zeros(size, np.int32), np.zeros(size, np.float32)
    states[: len(flat)], weights[: len(flat)] = flat, 1.0
    return states, weights


def target_logits(
    model: nn.Module, hidden: mx.array, next_tokens: mx.array, states: mx.array
) -> tuple[mx.array, mx.array]:
    """(logsumexp, target logit) at the flat states (target_states) of hidden (B, L, D), where
    next_tokens (B, L) holds the token each state predicts: the output layer on those alone."""
    chosen = hidden.reshape(-1, hidden.shape[-1])[states]
    logits = output_logits(model, chosen).astype(mx.float32)
    targets = next_tokens.reshape(-1)[states]
    target = mx.take_along_axis(logits, targets[:, None], axis=-1).squeeze(-1)
    return mx.logsumexp(logits, axis=-1), target


class Reference(NamedTuple):
    """What the KL term needs of pi_ref on batch.ref_rows, per position (see reference)."""

    neg_entropy: mx.array  # sum_v p log p, (R, L)
    linear: mx.array | None  # sum_v p_v w_v, the head's rows averaged by p: (R, L, D)
    constant: mx.array | None  # sum_v p_v b_v, the head's bias averaged by p: (R, L)
    probs: mx.array | None  # p itself (R, L, V), only where the head has adapters


def head_is_frozen(model: nn.Module) -> bool:
    """Whether the LM head (or the input embedding it may be tied to) has no adapter, so the
    policy's head is the reference's: then the KL needs no second pass through the head."""
    names = {name.rsplit(".", 1)[-1] for name, _, _ in adapter_modules(model)}
    return not names & {"lm_head", "embed_tokens"}


def reference(
    model: nn.Module,
    batch: Batch,
    policy: Callable[[], AbstractContextManager] | None = None,
    states: mx.array | None = None,
) -> Reference | None:
    """pi_ref for batch.ref_rows at every position, or None when there are none.

    pi_ref is the model inside `policy()`, by default adapters_off (the model without its
    adapters). With `states` (flat indices into every row's positions, target_states' layout)
    it is computed for every row of the batch at those states alone, each output then (S, ...)
    instead of (R, L, ...); batch then needs only .tokens.

    Evaluated before the training step, so the reference pass's activations are freed before
    the policy's forward and backward pass begins. The head is affine, z = W h + b, so
    sum_v p_v z_v = h . (sum_v p_v w_v) + sum_v p_v b_v: with a frozen head the step needs only
    those two averages (the vector-Jacobian product of the head at p, and p . b) besides
    sum_v p log p, never p itself nor a second pass of the policy's states through the head.
    That keeps the KL step's time and peak memory near plain LoRA's; the vocabulary-sized
    tensors live only here. With an adapted head, p itself is handed over. The rows that only
    pad the count (see reference_rows) are copies, so the pass costs the sampled rows alone.
    """
    if states is None and batch.ref_rows.size == 0:
        return None
    # the rows that repeat the first to pad the count (weight 0) are copied, not computed
    n = None if states is not None else int((batch.ref_weight > 0).sum().item())
    tokens = batch.tokens[:, :-1] if n is None else batch.tokens[batch.ref_rows[:n], :-1]
    with (policy or partial(adapters_off, model))():
        hidden = final_hidden(model, tokens).astype(mx.float32)
        if states is not None:
            hidden = hidden.reshape(-1, hidden.shape[-1])[states]
        logits = output_logits(model, hidden).astype(mx.float32)
        logp = logits - mx.logsumexp(logits, axis=-1, keepdims=True)
        probs = mx.exp(logp)
        neg_entropy = (probs * logp).sum(axis=-1)
        if not head_is_frozen(model):
            ref = Reference(neg_entropy, None, None, probs)
        else:
            head = partial(output_logits, model)
            _, (linear,) = mx.vjp(lambda h: head(h).astype(mx.float32), [hidden], [probs])
            bias = head(mx.zeros((1, hidden.shape[-1]), mx.float32)).astype(mx.float32)[0]
            constant = (probs * bias).sum(axis=-1) if mx.any(bias).item() else None
            ref = Reference(neg_entropy, linear, constant, None)
    if n is not None and n < batch.ref_rows.size:
        repeat = mx.concatenate([mx.arange(n), mx.zeros(batch.ref_rows.size - n, mx.int32)])
        ref = Reference(*(None if x is None else x[repeat] for x in ref))
    mx.eval(ref)
    return ref


def policy_kl(model: nn.Module, ref: Reference, hidden: mx.array, lse: mx.array) -> mx.array:
    """KL(ref || model) at each of the policy's states `hidden` (..., D), where lse is the
    policy's logsumexp there: sum_v p_ref (log p_ref - logit_v) + logsumexp, the middle term
    h . linear + constant for a frozen head (see reference), else from the head's logits."""
    if ref.probs is None:
        expected = (hidden.astype(mx.float32) * ref.linear).sum(axis=-1)
        if ref.constant is not None:
            expected = expected + ref.constant
        return ref.neg_entropy - expected + lse
    chosen = output_logits(model, hidden).astype(mx.float32)  # the head itself trains
    expected = (ref.probs * chosen).sum(axis=-1)
    return ref.neg_entropy - expected + mx.logsumexp(chosen, axis=-1)


def adaptive_loss(
    model: nn.Module, batch: Batch, ref: Reference | None
) -> tuple[mx.array, mx.array, mx.array, mx.array]:
    """(loss, target tokens, mean NLL, summed KL): the per-example weighted objective.

    A target at position j counts when offset <= j < length, so no padding is ever trained
    (mlx-lm's default loss uses <= and trains one padding token per row), and the output layer
    runs at those targets' states alone (target_states). Neither term builds the policy's full
    log-softmax: NLL = logsumexp - target logit, and
    KL(ref || model) = sum_v p_ref (log p_ref - logit_v) + logsumexp, whose middle term is
    h . linear + constant for a frozen head (see reference). ref is the reference policy on
    batch.ref_rows; the KL returned is the sum of those rows' mean KL.
    """
    inputs, targets = batch.tokens[:, :-1], batch.tokens[:, 1:]
    positions = mx.arange(1, targets.shape[1] + 1)[None, :]
    mask = (positions >= batch.offsets[:, None]) & (positions < batch.lengths[:, None])
    mask = mask.astype(mx.float32)
    count = mx.maximum(mask.sum(axis=1), 1.0)
    hidden = final_hidden(model, inputs)
    lse, target = target_logits(model, hidden, targets, batch.targets)
    grid = mx.zeros(mask.size)  # lse and NLL back on (B, L - 1), 0 where nothing is a target
    lse = grid.at[batch.targets].add(lse * batch.target_weights).reshape(mask.shape)
    nll = lse - grid.at[batch.targets].add(target * batch.target_weights).reshape(mask.shape)
    nll_i = (nll * mask).sum(axis=1) / count
    loss = (batch.alpha * nll_i).sum()
    kl_sum = mx.array(0.0)
    if ref is not None:
        rows = batch.ref_rows
        kl = policy_kl(model, ref, hidden[rows], lse[rows])
        kl_i = (kl * mask[rows]).sum(axis=1) / count[rows]
        loss = loss + (batch.ref_weight * kl_i).sum()
        kl_sum = (kl_i * (batch.ref_weight > 0)).sum()
    return loss / len(nll_i), mask.sum(), nll_i.mean(), kl_sum


# --- data order -------------------------------------------------------------------------


POOL = 16  # batches per pool whose examples are grouped by length


def epoch_order(lengths: np.ndarray, batch_size: int, epoch: int, seed: int) -> np.ndarray:
    """Every sample once: shuffled, then grouped by length within pools of POOL batches.

    Batches of similar lengths waste little on padding (mlx-lm sorts the whole data set, which
    makes batches of one kind of example); pools keep the order random, and the batches of a
    pool are shuffled too.
    """
    rng = np.random.default_rng([seed, epoch])
    perm = rng.permutation(len(lengths))
    order = []
    size = batch_size * POOL
    for start in range(0, len(perm), size):
        pool = perm[start : start + size]
        pool = pool[np.argsort(lengths[pool], kind="stable")]
        groups = [pool[i : i + batch_size] for i in range(0, len(pool), batch_size)]
        order += [groups[k] for k in rng.permutation(len(groups))]
    return np.concatenate(order)


def batch_indices(lengths: np.ndarray, batch_size: int, index: int, seed: int) -> np.ndarray:
    """Sample indices of global batch `index`, in the order of epoch_order, epoch after epoch.

    A pure function of its arguments, so a resumed run sees the same order.
    """
    n = len(lengths)
    positions = np.arange(index * batch_size, (index + 1) * batch_size)
    out = np.empty(batch_size, np.int64)
    for epoch in np.unique(positions // n):
        sel = positions // n == epoch
        out[sel] = epoch_order(lengths, batch_size, int(epoch), seed)[positions[sel] % n]
    return out


def make_batch(
    samples: Sequence, indices: np.ndarray, max_len: int, alpha: np.ndarray, kl_weight: np.ndarray
) -> Batch:
    """Right-padded arrays for the chosen samples (objects with .tokens and .offset)."""
    rows = [samples[i].tokens[:max_len] for i in indices]
    width = max(len(r) for r in rows)
    width = min(max_len, -(-width // PAD_MULTIPLE) * PAD_MULTIPLE)
    tokens = np.zeros((len(rows), max(width, 2)), np.int32)
    for k, row in enumerate(rows):
        tokens[k, : len(row)] = row
    ref_rows, ref_weight = reference_rows(kl_weight)
    offsets = [max(samples[i].offset, 1) for i in indices]
    targets, target_weights = target_states(
        [(first, len(r)) for first, r in zip(offsets, rows, strict=True)], tokens.shape[1] - 1
    )
    return Batch(
        tokens=mx.array(tokens),
        offsets=mx.array(offsets),
        lengths=mx.array([len(r) for r in rows]),
        alpha=mx.array(alpha),
        ref_rows=mx.array(ref_rows),
        ref_weight=mx.array(ref_weight),
        targets=mx.array(targets),
        target_weights=mx.array(target_weights),
    )


def reference_rows(kl_weight: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The rows with a KL weight and those weights, their count padded to a power of two.

    The padding repeats a row with weight 0 (copied by reference, not computed again), so the
    compiled step meets a handful of shapes instead of one per count (each new shape costs a
    compilation).
    """
    rows = np.flatnonzero(kl_weight).astype(np.int32)
    if len(rows) == 0:
        return rows, np.zeros(0, np.float32)
    size = min(1 << (len(rows) - 1).bit_length(), len(kl_weight))
    padded = np.concatenate([rows, np.full(size - len(rows), rows[0], np.int32)])
    weights = np.concatenate([kl_weight[rows], np.zeros(size - len(rows))]).astype(np.float32)
    return padded, weights


# --- optimizer and checkpoints ------------------------------------------------------------


def make_optimizer(spec: TrainSpec) -> optim.Optimizer:
    lr = spec.learning_rate
    decay_steps = max(spec.iters - spec.warmup_steps, 1)
    schedules = {
        "constant": None,
        "cosine": {"name": "cosine_decay", "arguments": [lr, decay_steps, lr / 10]},
        "linear": {"name": "linear_schedule", "arguments": [lr, lr / 10, decay_steps]},
    }
    if spec.lr_schedule not in schedules:
        raise ValueError(f"unknown learning-rate schedule {spec.lr_schedule!r}")
    config = schedules[spec.lr_schedule]
    if config is None and spec.warmup_steps:
        config = {"name": "linear_schedule", "arguments": [lr, lr, 1]}
    if config is not None:
        config["warmup"] = spec.warmup_steps
        lr = build_schedule(config)
    makers = {
        "adam": lambda: optim.Adam(learning_rate=lr),
        "adamw": lambda: optim.AdamW(learning_rate=lr),
        "sgd": lambda: optim.SGD(learning_rate=lr),
        "adafactor": lambda: optim.Adafactor(learning_rate=lr, relative_step=False),
    }
    return makers[spec.optimizer]()


def save_checkpoint(
    folder: Path, model: nn.Module, optimizer: optim.Optimizer, state: dict
) -> None:
    """Adapters, optimizer state and loop state, replaced atomically."""
    with staged_folder(folder) as tmp:
        mx.save_safetensors(str(tmp / "adapters.safetensors"), trainable_weights(model))
        opt_state = dict(tree_flatten(optimizer.state))
        mx.save_safetensors(str(tmp / "optimizer.safetensors"), opt_state)
        (tmp / "state.json").write_text(json.dumps(state) + "\n")


def load_checkpoint(folder: Path, model: nn.Module, optimizer: optim.Optimizer) -> dict:
    """Restore a checkpoint written by save_checkpoint; returns its loop state."""
    model.load_weights(str(folder / "adapters.safetensors"), strict=False)
    optimizer.state = tree_unflatten(list(mx.load(str(folder / "optimizer.safetensors")).items()))
    return json.loads((folder / "state.json").read_text())


# --- the loop ---------------------------------------------------------------------------


def resume_step(run_dir: Path) -> int:
    """The step a run in run_dir would resume from (0 when it has no checkpoint)."""
    state = run_dir / CHECKPOINT / "state.json"
    return json.loads(state.read_text())["step"] if state.is_file() else 0


def validation_nll(model: nn.Module, samples: Sequence, max_len: int, batch_size: int) -> float:
    """Mean task loss (NLL) over the validation samples, on this rank's share."""
    if not samples:
        return float("nan")
    model.eval()
    total = weight = 0.0
    for start in range(0, len(samples), batch_size):
        idx = np.arange(start, min(start + batch_size, len(samples)))
        ones = np.ones(len(idx), np.float32)
        batch = make_batch(samples, idx, max_len, ones, ones * 0)
        _, tokens, nll, _ = adaptive_loss(model, batch, None)
        total += nll.item() * len(idx)
        weight += len(idx)
    model.train()
    return total / weight


class Objective(Protocol):
    """What the generic loop needs from a training objective.

    loss(model, *inputs) returns (loss, target tokens, *sums); inputs(...) builds one
    micro-batch for this rank and host-side values; metrics(...) turns the accumulated sums
    into named metrics. state is saved with every checkpoint, so a resumed run continues it.
    """

    lengths: np.ndarray
    state: dict

    def loss(self, model: nn.Module, *inputs) -> tuple[mx.array, ...]: ...

    def inputs(
        self, model: nn.Module, index: int, rows: np.ndarray, mine: slice
    ) -> tuple[tuple, np.ndarray]: ...

    def metrics(self, sums: np.ndarray, host: np.ndarray, micro: int, size: int) -> Metrics: ...

    def validate(self, model: nn.Module) -> Metrics: ...


def run_training(
    model: nn.Module,
    objective: Objective,
    spec: TrainSpec,
    run_dir: Path,
    progress: Progress | None = None,
    on_metrics: Callable[[Metrics], None] | None = None,
) -> int:
    """Train the model's trainable parameters in place, data-parallel over MLX's distributed
    group. Checkpoints go to run_dir/checkpoint, and a run resumes from there when one exists.
    Returns the step it started from (0 for a fresh run)."""
    world = mx.distributed.init()
    size, rank = world.size(), world.rank()
    if spec.batch_size % size:
        raise ValueError(f"batch size {spec.batch_size} is not divisible by {size} workers")
    if spec.grad_checkpoint:
        grad_checkpoint(model.layers[0])
    optimizer = make_optimizer(spec)
    loop = {"step": 0, "objective": objective.state}
    if (run_dir / CHECKPOINT / "state.json").is_file():
        loop = load_checkpoint(run_dir / CHECKPOINT, model, optimizer)
        objective.state = loop["objective"]
    start = loop["step"]
    state = [model.state, optimizer.state, mx.random.state]
    accumulate = spec.grad_accumulation
    loss_and_grad = nn.value_and_grad(model, objective.loss)

    @partial(mx.compile, inputs=state, outputs=state)
    def step(inputs: tuple, previous, update: bool):
        values, grads = loss_and_grad(model, *inputs)
        if previous is not None:
            grads = tree_map(lambda x, y: x + y, grads, previous)
        if update:
            grads = average_gradients(grads)
            if accumulate > 1:
                grads = tree_map(lambda x: x / accumulate, grads)
            optimizer.update(model, grads)
            grads = None
        return values, grads

    model.train()
    pending = None
    for it in range(start + 1, spec.iters + 1):
        tic = time.perf_counter()
        mx.random.seed(spec.seed * 1_000_003 + it)  # dropout masks depend on the step only
        sums, host = None, None
        for micro in range(accumulate):
            index = (it - 1) * accumulate + micro
            rows = batch_indices(objective.lengths, spec.batch_size, index, spec.seed)
            inputs, values_host = objective.inputs(model, index, rows, slice(rank, None, size))
            values, pending = step(inputs, pending, micro == accumulate - 1)
            mx.eval(state, values, pending)
            values = np.array([v.item() for v in values])
            sums = values if sums is None else sums + values
            host = values_host if host is None else host + values_host
        if size > 1:  # the loss is a mean over ranks; tokens and the other sums add up
            sums = np.array(mx.distributed.all_sum(mx.array(sums), stream=mx.cpu))
            sums[0] /= size
        seconds = time.perf_counter() - tic
        metrics = {
            "step": it,
            "loss": sums[0] / accumulate,
            **objective.metrics(sums[2:], host, accumulate, size),
            "tokens": sums[1],  # trained tokens: the targets whose loss counts, on all ranks
            "step_seconds": seconds,
            "tokens_per_second": sums[1] / seconds,
            "learning_rate": optimizer.learning_rate.item(),
            "peak_memory_gb": mx.get_peak_memory() / 1e9,
        }
        if spec.steps_per_eval and (it % spec.steps_per_eval == 0 or it == spec.iters):
            metrics.update(objective.validate(model))
        metrics = {k: (v if k == "step" else float(v)) for k, v in metrics.items()}
        loop["step"] = it
        if rank == 0:
            if on_metrics is not None:
                on_metrics(metrics)
            if it % spec.steps_per_save == 0 and it < spec.iters:
                save_checkpoint(run_dir / CHECKPOINT, model, optimizer, loop)
        if progress is not None:
            progress(it, metrics)
    model.eval()
    return start


@dataclass
class AdaptiveObjective:
    """The adaptive-KL fine-tuning objective (adaptive_loss) over risk-scored samples."""

    samples: Sequence
    risks: np.ndarray
    weighting: Weighting
    spec: TrainSpec
    valid: Sequence = ()
    state: dict = field(default_factory=lambda: {"running_risk": None})

    def __post_init__(self) -> None:
        limit = self.spec.max_seq_length
        self.lengths = np.array([min(len(s.tokens), limit) for s in self.samples])

    def loss(self, model: nn.Module, batch: Batch, ref: Reference | None):
        return adaptive_loss(model, batch, ref)

    def inputs(self, model: nn.Module, index: int, rows: np.ndarray, mine: slice):
        risk = self.risks[rows]
        alpha, beta = self.weighting.weights(risk, self.state["running_risk"])
        self.state["running_risk"] = self.weighting.update(self.state["running_risk"], risk)
        kl_weight = self.weighting.kl_weights(beta, np.random.default_rng([self.spec.seed, index]))
        batch = make_batch(
            self.samples, rows[mine], self.spec.max_seq_length, alpha[mine], kl_weight[mine]
        )
        return (batch, reference(model, batch)), np.array(
            [beta.mean(), risk.mean(), (kl_weight > 0).sum()]
        )

    def metrics(self, sums: np.ndarray, host: np.ndarray, micro: int, size: int) -> Metrics:
        nll, kl_sum = sums
        beta, risk, ref_rows = host
        return {
            "nll": nll / (micro * size),
            "kl": kl_sum / max(ref_rows, 1),
            "beta": beta / micro,
            "risk": risk / micro,
            "reference_rows": ref_rows / (micro * self.spec.batch_size),
        }

    def validate(self, model: nn.Module) -> Metrics:
        if not self.valid:
            return {}
        spec = self.spec
        return {"val_nll": validation_nll(model, self.valid, spec.max_seq_length, spec.batch_size)}


def train(
    model: nn.Module,
    samples: Sequence,
    risks: np.ndarray,
    weighting: Weighting,
    spec: TrainSpec,
    run_dir: Path,
    valid: Sequence = (),
    progress: Progress | None = None,
    on_metrics: Callable[[Metrics], None] | None = None,
) -> int:
    """Adaptive-KL LoRA training of the model's adapters in place (see run_training)."""
    objective = AdaptiveObjective(samples, risks, weighting, spec, valid)
    return run_training(model, objective, spec, run_dir, progress, on_metrics)
