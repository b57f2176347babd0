"""The activation-based risk predictor: a calibrated logistic probe on pooled hidden states.

numpy only, so it fits, scores and tests without an ML framework; backends/mlx/probe_train.py
computes the features. The fit is deterministic: standardization from the training split, an
L2-regularized logistic regression solved by Newton's method (its penalty given, or chosen by
cross-validation on the training split), then Platt scaling on the validation split. A probe
folder holds head.safetensors and head.json, the latter with the model's fingerprint so a probe
trained for another model is refused.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from localguard.errors import InputError
from localguard.files import clean_json, read_kind_json, staged_folder
from localguard.fingerprint import check_fingerprint
from localguard.recipe import default
from localguard.stats import (
    binary_labels,
    binary_metrics,
    fit_logistic,
    group_keys,
    grouped_split,
    l2_cross_validation,
    platt_scaling,
    sigmoid,
)

PROBE_KIND = "risk_probe"
PROBE_FORMAT = 1
WEIGHTS_FILE = "head.safetensors"
MANIFEST_FILE = "head.json"
STD_FLOOR = 1e-6  # features that never vary are left unscaled instead of divided by ~0
L2_AUTO = "auto"
L2_GRID = tuple(float(10.0 ** (e / 2)) for e in range(-4, 7))  # "auto" tries 0.01 .. 1000
CV_FOLDS = 5
# How much cross-validated AUROC "auto" gives up for a stronger penalty (more when the folds
# disagree by more). Cross-validation sees only prompts like the training set; a probe must also
# stay calm on benign prompts unlike them. On the starter world the best CV AUROC (0.999 at
# 0.01) gave a probe that put 2.5 % of held-out new-skill prompts above 0.5 risk, 1 (CV AUROC
# 0.990) put 0.5 % there and fine-tuned to 84.5 % new-skill accuracy against 81.2 % (means over
# 3 seeds; 82.5 % with the former fixed 100, which underfit: validation AUROC 0.937).
CV_AUROC_SLACK = 0.01


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


# --- fitting ------------------------------------------------------------------------------


def stratified_split(
    labels: np.ndarray, valid_fraction: float, seed: int, groups: Sequence[str] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Train and validation indices with each class split in the same proportion, the rows of
    one group (a prompt's copies: its refusal and harmful rows, its wrapped forms) on one side.

    Every class keeps at least one group on each side.
    """
    train, valid = grouped_split(np.asarray(labels).tolist(), groups, valid_fraction, seed)
    return np.asarray(train, dtype=np.int64), np.asarray(valid, dtype=np.int64)


def _groups_per_label(labels: np.ndarray, groups: Sequence[str] | None) -> list[int]:
    """How many groups (prompts) carry label 0 and label 1."""
    keys = group_keys(groups, labels.size)
    return [len({k for k, y in zip(keys, labels, strict=True) if y == cls}) for cls in (0, 1)]


def _check_training_data(
    features: np.ndarray, labels: np.ndarray, groups: Sequence[str] | None
) -> None:
    if features.ndim != 2 or labels.ndim != 1 or features.shape[0] != labels.shape[0]:
        raise InputError(
            f"features {features.shape} and labels {labels.shape} do not match: need (n, d), (n,)"
        )
    if not np.isfinite(features).all():
        raise InputError("features contain NaN or infinite values")
    counts = _groups_per_label(labels, groups)
    if min(counts) < 2:
        raise InputError(
            f"labels: need at least 2 examples of each label (the rows of one prompt count "
            f"once), got {counts[0]} of label 0 and {counts[1]} of label 1"
        )


def choose_l2(cv: dict) -> float:
    """The strongest penalty whose cross-validated AUROC is within CV_AUROC_SLACK, or one
    standard error if that is larger, of the best: of the penalties that rank about as well,
    the one that stays calmest on prompts unlike its training data."""
    areas = np.asarray(cv["auroc"])
    best = int(np.argmax(areas))
    floor = areas[best] - max(CV_AUROC_SLACK, cv["auroc_se"][best])
    return max(v for v, area in zip(cv["l2"], areas, strict=True) if area >= floor)


def select_l2(
    z: np.ndarray, y: np.ndarray, l2: float | str, seed: int, groups: Sequence[str] | None = None
) -> tuple[float, dict]:
    """The penalty to fit with, and what to record about it.

    A number is used as given; "auto" cross-validates L2_GRID on (z, y), the standardized
    training split (the standardization uses no labels, so sharing it across folds leaks
    nothing a fold could fit to), a group's rows in one fold. With too few groups of a label
    for two folds, "auto" takes the strongest penalty of the grid.
    """
    if isinstance(l2, str):
        if l2 != L2_AUTO:
            raise InputError(f"l2 must be a non-negative number or {L2_AUTO!r}, got {l2!r}")
        k = min(CV_FOLDS, *_groups_per_label(y, groups))
        if k < 2:
            return max(L2_GRID), {"l2_auto": True, "l2_cv": None}
        cv = l2_cross_validation(z, y, L2_GRID, k, seed, groups)
        cv["rule"] = f"strongest within max({CV_AUROC_SLACK}, 1 SE) of the best AUROC"
        return choose_l2(cv), {"l2_auto": True, "l2_cv": cv}
    if isinstance(l2, bool) or not isinstance(l2, (int, float)) or not 0 <= l2 < float("inf"):
        raise InputError(f"l2 must be a non-negative number or {L2_AUTO!r}, got {l2!r}")
    return float(l2), {"l2_auto": False}


def fit_probe(
    features: np.ndarray,
    labels: np.ndarray,
    seed: int = 0,
    valid_fraction: float = default("probe", "valid_fraction"),
    l2: float | str = default("probe", "l2"),
    layers: list[int] | None = None,
    groups: Sequence[str] | None = None,
) -> tuple[Probe, dict]:
    """Fit, calibrate and evaluate a probe; metrics are on the held-out validation split,
    which neither the fit nor the choice of its penalty (l2 = "auto") has seen. groups (one
    per row, "" for none) keep the rows of one prompt on one side of that split."""
    x = np.asarray(features, dtype=np.float64)
    y = binary_labels(labels, "labels")
    _check_training_data(x, y, groups)
    if not 0 < valid_fraction < 1:
        raise InputError(f"valid_fraction must be between 0 and 1, got {valid_fraction}")
    train, valid = stratified_split(y, valid_fraction, seed, groups)
    mean = x[train].mean(axis=0)
    std = x[train].std(axis=0)
    std = np.where(std > STD_FLOOR, std, 1.0)
    mean32, std32 = mean.astype(np.float32), std.astype(np.float32)
    z = (x[train] - mean32) / std32
    train_groups = [groups[i] for i in train] if groups is not None else None
    l2, l2_record = select_l2(z, y[train], l2, seed, train_groups)
    weight, bias = fit_logistic(z, y[train], l2)
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
    metrics.update(l2_record)
    probe.metadata["metrics"] = metrics
    return probe, metrics


# --- files --------------------------------------------------------------------------------


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


def check_probe_matches(probe: Probe, model_dir: Path) -> None:
    check_fingerprint("probe", probe.metadata, model_dir)
