"""The activation-based risk predictor: a calibrated logistic probe on pooled hidden states.

numpy only, so it fits, scores and tests without an ML framework; backends/mlx/probe_train.py
computes the features. The fit is deterministic: standardization from the training split, an
L2-regularized logistic regression solved by Newton's method, then Platt scaling on the
validation split. A probe folder holds head.safetensors and head.json, the latter with the
model's fingerprint so a probe trained for another model is refused.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from localguard.errors import InputError
from localguard.files import clean_json, read_kind_json, staged_folder

PROBE_KIND = "risk_probe"
PROBE_FORMAT = 1
WEIGHTS_FILE = "head.safetensors"
MANIFEST_FILE = "head.json"
STD_FLOOR = 1e-6  # features that never vary are left unscaled instead of divided by ~0
NEWTON_STEPS = 50


DEFAULT_L2 = 100.0
"""L2 penalty on the standardized features. Strong on purpose: a probe must not call prompts
unlike its training data risky. On the starter world the new skill's prompts (a made-up
language the probe never saw) got a mean risk of 0.19 with 1e-3, 0.041 with 10 (3 % above
0.5, enough to hold back the new skill by about 10 points) and 0.013 with 100 (0.3 % above
0.5), while validation AUROC went from 0.997 to 0.989."""


@dataclass(eq=False)
class Probe:
    """Standardize, score linearly, calibrate: risk = sigmoid(a * (w . z + b) + c)."""

    weight: np.ndarray
    bias: float
    mean: np.ndarray
    std: np.ndarray
    platt_a: float
    platt_b: float
    layers: list[int]
    metadata: dict = field(default_factory=dict)

    @property
    def hidden_size(self) -> int:
        return int(self.weight.shape[0])

    def raw_scores(self, features: np.ndarray) -> np.ndarray:
        """Uncalibrated logits, one per row of `features` (or a scalar array for one vector)."""
        x = np.asarray(features, dtype=np.float64)
        if x.shape[-1:] != (self.hidden_size,):
            raise InputError(
                f"probe expects features of size {self.hidden_size}, got shape {x.shape}"
            )
        return ((x - self.mean) / self.std) @ self.weight.astype(np.float64) + self.bias

    def predict(self, features: np.ndarray) -> np.ndarray:
        """Calibrated risk in [0, 1]."""
        return sigmoid(self.platt_a * self.raw_scores(features) + self.platt_b)


def sigmoid(z: np.ndarray) -> np.ndarray:
    """Logistic function without overflow warnings for large |z|."""
    z = np.asarray(z, dtype=np.float64)
    out = np.empty_like(z)
    pos = z >= 0
    out[pos] = 1.0 / (1.0 + np.exp(-z[pos]))
    ez = np.exp(z[~pos])
    out[~pos] = ez / (1.0 + ez)
    return out


def _log1pexp(z: np.ndarray) -> np.ndarray:
    """log(1 + exp(z)), stable for large |z|."""
    return np.logaddexp(0.0, z)


# --- metrics ------------------------------------------------------------------------------


def _binary(labels: np.ndarray, name: str) -> np.ndarray:
    arr = np.asarray(labels).reshape(-1)
    if arr.size and not np.isin(arr, (0, 1)).all():
        raise InputError(f"{name}: values must be 0 or 1")
    return arr.astype(np.int64)


def auroc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Area under the ROC curve from ranks (Mann-Whitney U); tied scores share their mean rank.

    NaN when one class is absent (the area is undefined).
    """
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    y = _binary(labels, "labels")
    if s.shape != y.shape:
        raise ValueError(f"scores {s.shape} and labels {y.shape} differ in length")
    n_pos = int(y.sum())
    n_neg = int(y.size - n_pos)
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(s, kind="mergesort")
    sorted_s = s[order]
    ranks = np.empty(s.size, dtype=np.float64)
    starts = np.flatnonzero(np.r_[True, sorted_s[1:] != sorted_s[:-1]])
    ends = np.r_[starts[1:], s.size]
    for a, b in zip(starts, ends, strict=True):
        ranks[order[a:b]] = (a + b + 1) / 2.0  # mean of the 1-based ranks a+1 .. b
    u = ranks[y == 1].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


def f1_score(pred: np.ndarray, labels: np.ndarray) -> float:
    """F1 of the positive class; 0.0 when there are no true and no predicted positives."""
    p = _binary(pred, "pred")
    y = _binary(labels, "labels")
    tp = int(((p == 1) & (y == 1)).sum())
    fp = int(((p == 1) & (y == 0)).sum())
    fn = int(((p == 0) & (y == 1)).sum())
    return 0.0 if tp == 0 else 2.0 * tp / (2.0 * tp + fp + fn)


def binary_metrics(risk: np.ndarray, labels: np.ndarray, threshold: float = 0.5) -> dict:
    """AUROC, F1, accuracy and positive rate of scores in [0, 1] against 0/1 labels."""
    y = _binary(labels, "labels")
    pred = (np.asarray(risk) >= threshold).astype(np.int64)
    return {
        "auroc": auroc(risk, y),
        "f1": f1_score(pred, y),
        "accuracy": float((pred == y).mean()) if y.size else float("nan"),
        "positive_rate": float(y.mean()) if y.size else float("nan"),
        "predicted_positive_rate": float(pred.mean()) if y.size else float("nan"),
    }


# --- fitting ------------------------------------------------------------------------------


def stratified_split(
    labels: np.ndarray, valid_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Train and validation indices with each class split in the same proportion.

    Every class keeps at least one example on each side.
    """
    rng = np.random.default_rng(seed)
    train, valid = [], []
    for cls in (0, 1):
        idx = rng.permutation(np.flatnonzero(labels == cls))
        n_valid = min(max(1, round(valid_fraction * idx.size)), idx.size - 1)
        valid.append(idx[:n_valid])
        train.append(idx[n_valid:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(valid))


def _newton_logistic(
    x: np.ndarray, y: np.ndarray, penalty: np.ndarray, targets: np.ndarray | None = None
) -> np.ndarray:
    """Minimize mean log-loss + 0.5 * sum(penalty * theta**2); x carries a ones column.

    Newton steps with backtracking: exact, deterministic, and a handful of iterations.
    `targets` (soft labels) replaces y in the loss when given.
    """
    t = y if targets is None else targets
    n = x.shape[0]

    def loss(theta: np.ndarray) -> float:
        z = x @ theta
        return float((_log1pexp(z) - t * z).mean() + 0.5 * (penalty * theta**2).sum())

    theta = np.zeros(x.shape[1])
    current = loss(theta)
    for _ in range(NEWTON_STEPS):
        p = sigmoid(x @ theta)
        grad = x.T @ (p - t) / n + penalty * theta
        hess = (x * (p * (1 - p))[:, None]).T @ x / n + np.diag(penalty + 1e-10)
        step = np.linalg.solve(hess, grad)
        size = 1.0
        while size > 1e-6:
            candidate = theta - size * step
            value = loss(candidate)
            if value <= current:
                break
            size /= 2
        else:
            break
        theta, improvement, current = candidate, current - value, value
        if improvement < 1e-12 or float(np.abs(size * step).max()) < 1e-9:
            break
    return theta


def fit_logistic(z: np.ndarray, y: np.ndarray, l2: float) -> tuple[np.ndarray, float]:
    """L2 logistic regression on standardized features, intercept unpenalized.

    The optimal weight lies in the row space of z, so the fit runs in the SVD basis of z:
    min(n, d) unknowns instead of d, which keeps wide hidden states (4096+) cheap.
    """
    u, s, vt = np.linalg.svd(z, full_matrices=False)
    keep = s > s.max(initial=0.0) * 1e-10
    reduced = u[:, keep] * s[keep]
    x = np.hstack([reduced, np.ones((z.shape[0], 1))])
    penalty = np.r_[np.full(reduced.shape[1], l2), 0.0]
    theta = _newton_logistic(x, y.astype(np.float64), penalty)
    return vt[keep].T @ theta[:-1], float(theta[-1])


def platt_scaling(scores: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    """(a, b) for p = sigmoid(a * score + b), with Platt's smoothed targets.

    The smoothing keeps a finite when the scores separate the classes. A negative slope (the
    probe ranks worse than chance on validation) is clamped to 0: the calibrated risk is then
    the base rate instead of an inverted ranking.
    """
    y = labels.astype(np.float64)
    n_pos, n_neg = y.sum(), y.size - y.sum()
    targets = np.where(y == 1, (n_pos + 1) / (n_pos + 2), 1 / (n_neg + 2))
    x = np.stack([np.asarray(scores, dtype=np.float64), np.ones(y.size)], axis=1)
    a, b = _newton_logistic(x, y, np.zeros(2), targets=targets)
    if a < 0:
        rate = targets.mean()
        a, b = 0.0, float(np.log(rate / (1 - rate)))
    return float(a), float(b)


def _check_training_data(features: np.ndarray, labels: np.ndarray) -> None:
    if features.ndim != 2 or labels.ndim != 1 or features.shape[0] != labels.shape[0]:
        raise InputError(
            f"features {features.shape} and labels {labels.shape} do not match: need (n, d), (n,)"
        )
    if not np.isfinite(features).all():
        raise InputError("features contain NaN or infinite values")
    counts = [int((labels == cls).sum()) for cls in (0, 1)]
    if min(counts) < 2:
        raise InputError(
            f"labels: need at least 2 examples of each label, got {counts[0]} of label 0 "
            f"and {counts[1]} of label 1"
        )


def fit_probe(
    features: np.ndarray,
    labels: np.ndarray,
    seed: int = 0,
    valid_fraction: float = 0.2,
    l2: float = DEFAULT_L2,
    layers: list[int] | None = None,
) -> tuple[Probe, dict]:
    """Fit, calibrate and evaluate a probe; metrics are on the held-out validation split."""
    x = np.asarray(features, dtype=np.float64)
    y = _binary(labels, "labels")
    _check_training_data(x, y)
    if not 0 < valid_fraction < 1:
        raise InputError(f"valid_fraction must be between 0 and 1, got {valid_fraction}")
    train, valid = stratified_split(y, valid_fraction, seed)
    mean = x[train].mean(axis=0)
    std = x[train].std(axis=0)
    std = np.where(std > STD_FLOOR, std, 1.0)
    mean32, std32 = mean.astype(np.float32), std.astype(np.float32)
    weight, bias = fit_logistic((x[train] - mean32) / std32, y[train], l2)
    probe = Probe(
        weight=weight.astype(np.float32),
        bias=float(np.float32(bias)),  # stored as float32, so keep exactly that value
        mean=mean32,
        std=std32,
        platt_a=1.0,
        platt_b=0.0,
        layers=list(layers or []),
    )
    probe.platt_a, probe.platt_b = platt_scaling(probe.raw_scores(x[valid]), y[valid])
    metrics = binary_metrics(probe.predict(x[valid]), y[valid])
    metrics.update(n_train=int(train.size), n_valid=int(valid.size), l2=l2, seed=seed)
    probe.metadata["metrics"] = metrics
    return probe, metrics


# --- files --------------------------------------------------------------------------------


def model_fingerprint(model_dir: Path) -> str:
    """sha256 of config.json, the sorted names and shapes of the weight tensors, and each
    weight file's size and first and last MiB.

    Reads a few MiB per file, so it stays fast on multi-gigabyte models, yet two models that
    differ only in their weights (another seed, a fused fine-tune) get different prints.
    """
    from safetensors import safe_open

    model_dir = Path(model_dir)
    config = model_dir / "config.json"
    if not config.is_file():
        raise InputError(f"{config}: missing; not a model folder")
    files = sorted(model_dir.glob("model*.safetensors"))
    if not files:
        raise InputError(f"{model_dir}: no model*.safetensors weight files")
    digest = hashlib.sha256(config.read_bytes())
    shapes = []
    for path in files:
        with safe_open(str(path), framework="numpy") as handle:
            names = handle.keys()
            shapes += [(name, handle.get_slice(name).get_shape()) for name in names]
        digest.update(_weight_sample(path))
    for name, shape in sorted(shapes):
        digest.update(f"\n{name}:{list(shape)}".encode())
    return digest.hexdigest()


def _weight_sample(path: Path, span: int = 1 << 20) -> bytes:
    size = path.stat().st_size
    with open(path, "rb") as fh:
        head = fh.read(span)
        fh.seek(max(size - span, 0))
        return f"{size}:".encode() + head + fh.read(span)


def _head_json(probe: Probe, manifest: dict) -> dict:
    return {
        "kind": PROBE_KIND,
        "format": PROBE_FORMAT,
        "hidden_size": probe.hidden_size,
        "layers": [int(i) for i in probe.layers],
        "platt_a": probe.platt_a,
        "platt_b": probe.platt_b,
        "metrics": probe.metadata.get("metrics", {}),
        "manifest": manifest,
    }


def save_probe(probe: Probe, out_dir: Path, manifest: dict) -> Path:
    """Write out_dir/head.safetensors and out_dir/head.json, all or nothing."""
    from safetensors.numpy import save_file

    out_dir = Path(out_dir)
    if out_dir.exists() and (
        not out_dir.is_dir() or (any(out_dir.iterdir()) and not (out_dir / MANIFEST_FILE).exists())
    ):
        raise InputError(f"{out_dir}: exists and is not a probe folder; choose another output")
    with staged_folder(out_dir) as tmp:
        tensors = {
            "weight": probe.weight.astype(np.float32),
            "bias": np.array([probe.bias], dtype=np.float32),
            "mean": probe.mean.astype(np.float32),
            "std": probe.std.astype(np.float32),
        }
        save_file(tensors, str(tmp / WEIGHTS_FILE), metadata={"kind": PROBE_KIND})
        text = json.dumps(clean_json(_head_json(probe, manifest)), indent=2, allow_nan=False)
        (tmp / MANIFEST_FILE).write_text(text + "\n", encoding="utf-8")
    return out_dir


def _read_tensors(path: Path, hidden_size: int) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    if not path.is_file():
        raise InputError(f"{path}: missing; not a probe folder")
    try:
        tensors = load_file(str(path))
    except Exception as exc:  # safetensors raises its own error types for damaged files
        raise InputError(f"{path}: unreadable ({exc})") from None
    expected = {"weight": (hidden_size,), "mean": (hidden_size,), "std": (hidden_size,)}
    expected["bias"] = (1,)
    for name, shape in expected.items():
        if name not in tensors or tensors[name].shape != shape:
            raise InputError(f"{path}: tensor {name!r} missing or not of shape {shape}")
    return tensors


def load_probe(path: Path) -> Probe:
    """Read a probe folder (or its head.json); any defect is a one-line InputError."""
    path = Path(path)
    folder = path.parent if path.name == MANIFEST_FILE else path
    head = read_kind_json(folder / MANIFEST_FILE, PROBE_KIND, PROBE_FORMAT, "risk probe")
    try:
        hidden_size = int(head["hidden_size"])
        layers = [int(i) for i in head["layers"]]
        platt_a, platt_b = float(head["platt_a"]), float(head["platt_b"])
    except (KeyError, TypeError, ValueError) as exc:
        raise InputError(f"{folder / MANIFEST_FILE}: missing or malformed key {exc}") from None
    tensors = _read_tensors(folder / WEIGHTS_FILE, hidden_size)
    metadata = {
        "metrics": head.get("metrics") or {},
        "manifest": head.get("manifest") or {},
        "path": str(folder),
    }
    return Probe(
        weight=tensors["weight"],
        bias=float(tensors["bias"][0]),
        mean=tensors["mean"],
        std=tensors["std"],
        platt_a=platt_a,
        platt_b=platt_b,
        layers=layers,
        metadata=metadata,
    )


def check_fingerprint(what: str, metadata: dict, model_dir: Path) -> None:
    """Refuse a file (a probe, a head) whose recorded model fingerprint is not this model's."""
    where = f"{what} {metadata.get('path', '(unsaved)')}"
    manifest = metadata.get("manifest") or {}
    expected = manifest.get("model_fingerprint")
    if not expected:
        raise InputError(f"{where} records no model fingerprint; retrain it")
    actual = model_fingerprint(model_dir)
    if actual != expected:
        trained_for = manifest.get("model_path", "an unknown model")
        raise InputError(
            f"{where} was trained for another model ({trained_for}, fingerprint "
            f"{expected[:12]}), not {model_dir} (fingerprint {actual[:12]})"
        )


def check_probe_matches(probe: Probe, model_dir: Path) -> None:
    check_fingerprint("probe", probe.metadata, model_dir)
