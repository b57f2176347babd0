"""The explicit safety head: K linear outputs on the final normalized hidden state.

The state is the vector the LM head reads, so each output is exactly one extra row of the output
matrix: logit_k = w_k . h + b_k. Calibration is folded into w and b (Platt scaling), so a logit
is a calibrated log-odds wherever it is read: from this file, from MLX, or from the extra rows
of a GGUF. numpy only; backends/mlx/head_train.py computes hidden states and trains.

Outputs: "query" (is the request malicious?), read at the last prompt token, and "response"
(is what has been generated so far harmful?), read at every generated token.

A CLS head (localguard/cls_token.py) reads a dedicated token's state instead and keeps that
token's input vector with its rows.

A head folder holds head.safetensors (weight K x D, bias K, and a CLS head's cls D) and head.json
(output names, thresholds, calibration, metrics, hidden size and the base model's fingerprint).
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
from localguard.stats import auroc, f1_score, sigmoid

HEAD_KIND = "safety_head"
HEAD_FORMAT = 1
WEIGHTS_FILE = "head.safetensors"
MANIFEST_FILE = "head.json"
OUTPUTS = ("query", "response")


@dataclass(eq=False)
class SafetyHead:
    """Rows on the final hidden state; a unit is flagged when its logit >= threshold."""

    names: list[str]
    weight: np.ndarray  # (K, D) float32
    bias: np.ndarray  # (K,) float32
    thresholds: np.ndarray  # (K,) in logit units
    metadata: dict = field(default_factory=dict)
    cls: np.ndarray | None = None  # (D,) a CLS head's input vector (localguard/cls_token.py)

    @property
    def hidden_size(self) -> int:
        return int(self.weight.shape[1])

    def index(self, name: str) -> int:
        if name not in self.names:
            raise InputError(f"the head has no output {name!r}; it has {', '.join(self.names)}")
        return self.names.index(name)

    def logits(self, hidden: np.ndarray) -> np.ndarray:
        """(..., K) calibrated log-odds for hidden states of shape (..., D)."""
        h = np.asarray(hidden, dtype=np.float64)
        if h.shape[-1:] != (self.hidden_size,):
            raise InputError(
                f"the head expects hidden states of size {self.hidden_size}, got shape {h.shape}"
            )
        return h @ self.weight.T.astype(np.float64) + self.bias

    def probabilities(self, hidden: np.ndarray) -> np.ndarray:
        return sigmoid(self.logits(hidden))

    def fold_platt(self, k: int, a: float, c: float) -> None:
        """sigmoid(a * logit + c) becomes sigmoid(logit): scale and shift row k in place."""
        self.weight[k] = (a * self.weight[k]).astype(np.float32)
        self.bias[k] = np.float32(a * self.bias[k] + c)


# --- thresholds and metrics ----------------------------------------------------------------


def gap_threshold(negatives: np.ndarray, positives: np.ndarray, target_fpr: float) -> float:
    """The threshold (flag when score >= t) for a target false-positive rate, with margin.

    Among thresholds whose FPR on these scores is at most target_fpr, the lowest one has the
    highest TPR; every threshold up to the next positive score above it has that same TPR and
    fewer false positives, so the threshold is placed midway in that gap. When the classes
    separate, it sits between them instead of cutting into the negatives.
    """
    neg = np.sort(np.asarray(negatives, dtype=np.float64))
    pos = np.sort(np.asarray(positives, dtype=np.float64))
    if neg.size == 0 or pos.size == 0:
        raise InputError("calibration needs both benign and harmful examples")
    allowed = int(np.floor(target_fpr * neg.size))  # negatives that may sit at or above t
    lowest = neg[neg.size - allowed - 1] if allowed < neg.size else -np.inf
    above = pos[pos > lowest]
    if above.size == 0:
        return float(np.nextafter(lowest, np.inf))
    top = above[0]
    below = np.concatenate([neg[neg < top], pos[pos < top]])
    floor = max(below.max(initial=-np.inf), lowest)
    return float((floor + top) / 2) if np.isfinite(floor) else float(top - 1.0)


def rates(scores: np.ndarray, labels: np.ndarray, threshold: float) -> dict:
    """AUROC, F1, FPR and TPR of scores against 0/1 labels at a threshold."""
    scores = np.asarray(scores, dtype=np.float64)
    y = np.asarray(labels).astype(np.int64)
    pred = (scores >= threshold).astype(np.int64)
    neg, pos = y == 0, y == 1
    return {
        "auroc": auroc(scores, y),
        "f1": f1_score(pred, y),
        "fpr": float(pred[neg].mean()) if neg.any() else float("nan"),
        "tpr": float(pred[pos].mean()) if pos.any() else float("nan"),
        "n": int(y.size),
        "positives": int(pos.sum()),
    }


def reliability_bins(probs: np.ndarray, labels: np.ndarray, bins: int = 10) -> list[dict]:
    """Mean predicted probability against observed frequency in equal-width bins."""
    probs = np.asarray(probs, dtype=np.float64)
    y = np.asarray(labels, dtype=np.float64)
    edges = np.linspace(0, 1, bins + 1)
    which = np.clip(np.digitize(probs, edges[1:-1]), 0, bins - 1)
    out = []
    for b in range(bins):
        sel = which == b
        if sel.any():
            out.append(
                {
                    "low": float(edges[b]),
                    "high": float(edges[b + 1]),
                    "predicted": float(probs[sel].mean()),
                    "observed": float(y[sel].mean()),
                    "count": int(sel.sum()),
                }
            )
    return out


def expected_calibration_error(bins: list[dict]) -> float:
    total = sum(b["count"] for b in bins)
    return float(sum(b["count"] * abs(b["predicted"] - b["observed"]) for b in bins) / total)


def reliability_png(path: Path, curves: dict[str, list[dict]]) -> None:
    """The reliability diagram of each output (bins from reliability_bins) as one PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(curves), figsize=(4.2 * len(curves), 4), squeeze=False)
    for ax, (name, bins) in zip(axes[0], curves.items(), strict=True):
        ax.plot([0, 1], [0, 1], color="0.7", linestyle="--", linewidth=1)
        ax.plot([b["predicted"] for b in bins], [b["observed"] for b in bins], marker="o")
        ece = expected_calibration_error(bins) if bins else float("nan")
        ax.set(title=f"{name} (ECE {ece:.3f})", xlim=(0, 1), ylim=(0, 1))
        ax.set(xlabel="predicted probability", ylabel="observed frequency")
    fig.tight_layout()
    tmp = Path(path).with_name(f".{Path(path).name}.tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(path)


# --- files ----------------------------------------------------------------------------------


def write_head(head: SafetyHead, folder: Path, manifest: dict) -> None:
    """head.safetensors and head.json into an existing (staging) folder."""
    from safetensors.numpy import save_file

    tensors = {"weight": head.weight.astype(np.float32), "bias": head.bias.astype(np.float32)}
    if head.cls is not None:
        tensors["cls"] = np.asarray(head.cls, np.float32)
    save_file(tensors, str(folder / WEIGHTS_FILE), metadata={"kind": HEAD_KIND})
    info = {
        "kind": HEAD_KIND,
        "format": HEAD_FORMAT,
        "names": list(head.names),
        "hidden_size": head.hidden_size,
        "thresholds": [float(t) for t in head.thresholds],
        "threshold_probabilities": [float(p) for p in sigmoid(head.thresholds)],
        **{k: v for k, v in head.metadata.items() if k not in ("path", "manifest")},
        "manifest": manifest,
    }
    text = json.dumps(clean_json(info), indent=2, allow_nan=False)
    (folder / MANIFEST_FILE).write_text(text + "\n", encoding="utf-8")


def save_head(head: SafetyHead, out_dir: Path, manifest: dict) -> Path:
    """Write a head folder, all or nothing."""
    with staged_folder(out_dir) as tmp:
        write_head(head, tmp, manifest)
    return Path(out_dir)


def load_head(path: Path) -> SafetyHead:
    """Read a head folder (or its head.json); any defect is a one-line InputError."""
    from safetensors.numpy import load_file

    path = Path(path)
    folder = path.parent if path.name == MANIFEST_FILE else path
    info = read_kind_json(folder / MANIFEST_FILE, HEAD_KIND, HEAD_FORMAT, "safety head")
    try:
        names = [str(n) for n in info["names"]]
        hidden = int(info["hidden_size"])
        thresholds = np.array([float(t) for t in info["thresholds"]])
    except (KeyError, TypeError, ValueError) as exc:
        raise InputError(f"{folder / MANIFEST_FILE}: missing or malformed key {exc}") from None
    weights = folder / WEIGHTS_FILE
    try:
        tensors = load_file(str(weights))
    except FileNotFoundError:
        raise InputError(f"{weights}: missing; not a safety head folder") from None
    except Exception as exc:  # safetensors raises its own error types for damaged files
        raise InputError(f"{weights}: unreadable ({exc})") from None
    k = len(names)
    for name, shape in (("weight", (k, hidden)), ("bias", (k,))):
        if name not in tensors or tensors[name].shape != shape:
            raise InputError(f"{weights}: tensor {name!r} missing or not of shape {shape}")
    if "cls" in tensors and tensors["cls"].shape != (hidden,):
        raise InputError(f"{weights}: tensor 'cls' is not of shape {(hidden,)}")
    if thresholds.shape != (k,):
        raise InputError(f"{folder / MANIFEST_FILE}: {k} outputs but {len(thresholds)} thresholds")
    meta = {key: v for key, v in info.items() if key not in ("kind", "format", "names")}
    meta["path"] = str(folder)
    cls = tensors.get("cls")
    return SafetyHead(names, tensors["weight"], tensors["bias"], thresholds, meta, cls)


def config_hidden_size(model_dir: Path) -> int:
    """hidden_size from a model folder's config.json (text_config for multimodal wrappers)."""
    path = Path(model_dir) / "config.json"
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
        return int(config.get("text_config", config)["hidden_size"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise InputError(f"{path}: no readable hidden_size ({exc})") from None


def check_head_matches(head: SafetyHead, model_dir: Path, hidden_size: int | None = None) -> None:
    """Refuse a head made for another model: hidden size first, then the fingerprint."""
    where = head.metadata.get("path", "(unsaved)")
    if hidden_size is None:
        hidden_size = config_hidden_size(model_dir)
    if head.hidden_size != hidden_size:
        raise InputError(
            f"head {where} reads hidden states of size {head.hidden_size}, but {model_dir} "
            f"has hidden size {hidden_size}"
        )
    check_fingerprint("head", head.metadata, model_dir)


# --- streams: per-conversation traces --------------------------------------------------------
# A trace is the (n, K) array of head logits at positions start - 1 .. len - 1 of one
# conversation (see localguard/conversations.py): row 0 is the last prompt token.


def query_units(traces: list[np.ndarray], convs: list, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Query logit at the last prompt token and the query label, per conversation."""
    return np.array([t[0, k] for t in traces]), np.array([c.query for c in convs])


DETECTION_WINDOW = 3  # tokens from the onset within which a flag counts as caught in time


def response_units(traces: list[np.ndarray], convs: list, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Negatives and positives for the response threshold, one score per stretch of reply.

    A benign reply, and the part of a harmful reply before its onset, is a negative scored by
    its highest logit (one flag anywhere interrupts it). A harmful continuation is a positive
    scored by its highest logit over the first DETECTION_WINDOW tokens from the onset, so the
    threshold is set for catching it early, not just somewhere.
    """
    neg, pos = [], []
    for trace, conv in zip(traces, convs, strict=True):
        reply = trace[1:, k]
        cut = conv.onset - conv.start if conv.onset >= 0 else len(reply)
        if cut > 0:
            neg.append(reply[:cut].max())
        if cut < len(reply):
            pos.append(reply[cut : cut + DETECTION_WINDOW].max())
    return np.array(neg), np.array(pos)


def token_units(traces: list[np.ndarray], convs: list, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Response logits and labels at every reply token, pooled over conversations."""
    scores = [t[1:, k] for t in traces]
    labels = [c.response_labels for c in convs]
    return np.concatenate(scores), np.concatenate(labels)


def _quantile(values: np.ndarray, q: float) -> float:
    """A quantile that is one of the values (inf for never-flagged continuations stays inf)."""
    return float(np.quantile(values, q, method="higher")) if values.size else float("nan")


def stream_metrics(head: SafetyHead, traces: list[np.ndarray], convs: list) -> dict:
    """What a guard reading the head would see on these conversations.

    query AUROC at the last prompt token; response AUROC over reply tokens; for harmful
    continuations the delay in tokens from the onset to the first flag (median, 90th
    percentile, and the share never flagged); the share of benign replies flagged anywhere.
    """
    q, r = head.index("query"), head.index("response")
    q_scores, q_labels = query_units(traces, convs, q)
    t_scores, t_labels = token_units(traces, convs, r)
    threshold = head.thresholds[r]
    delays, benign_flagged = [], []
    for trace, conv in zip(traces, convs, strict=True):
        flags = np.flatnonzero(trace[1:, r] >= threshold) + conv.start
        if conv.onset >= 0:
            late = flags[flags >= conv.onset]
            delays.append(late[0] - conv.onset if late.size else np.inf)
        else:
            benign_flagged.append(flags.size > 0)
    delays = np.array(delays, dtype=np.float64)
    caught = delays[np.isfinite(delays)]
    return {
        "query_auroc": auroc(q_scores, q_labels),
        "query": rates(q_scores, q_labels, head.thresholds[q]),
        "response_token_auroc": auroc(t_scores, t_labels),
        "delay_median": _quantile(delays, 0.5),
        "delay_p90": _quantile(delays, 0.9),
        "delay_caught_median": _quantile(caught, 0.5),
        "missed": float(np.mean(~np.isfinite(delays))) if delays.size else float("nan"),
        "benign_flagged": float(np.mean(benign_flagged)) if benign_flagged else float("nan"),
        "harmful_continuations": int(delays.size),
        "benign_replies": len(benign_flagged),
    }


def query_threshold(
    negatives: np.ndarray, positives: np.ndarray, task: np.ndarray, target_fpr: float
) -> tuple[float, float]:
    """(threshold, the safety data's own threshold). Held-out task prompts are negatives too:
    the threshold keeps the FPR within target_fpr on the safety negatives and on the task
    prompts each, so a task unlike the safety data is not refused however few its prompts."""
    own = gap_threshold(negatives, positives, target_fpr)
    if task.size == 0:
        return own, own
    return max(own, gap_threshold(task, positives, target_fpr)), own


def task_metrics(traces: list[np.ndarray], q: int, r: int, thresholds: np.ndarray, own: float):
    """Over-refusal on held-out task conversations (calibrated traces): the share of prompts
    the query output flags at the threshold and at the safety data's own one, and the share of
    replies the response output flags anywhere."""
    scores = np.array([t[0, q] for t in traces])
    return {
        "n": len(traces),
        "query_flagged": float(np.mean(scores >= thresholds[q])),
        "query_flagged_safety_only": float(np.mean(scores >= own)),
        "replies_flagged": float(np.mean([(t[1:, r] >= thresholds[r]).any() for t in traces])),
    }


def calibrate(
    head: SafetyHead,
    traces: list[np.ndarray],
    convs: list,
    target_fpr: float,
    task: Sequence[np.ndarray] = (),
) -> dict:
    """Fold Platt scaling into each row and set its threshold for target_fpr; returns the
    validation metrics and reliability bins. traces are the uncalibrated logits; task, those of
    held-out benign task conversations, which the query threshold counts as negatives (the
    Platt fit stays on the safety data, so a probability keeps its meaning there)."""
    from localguard.stats import platt_scaling

    q, r = head.index("query"), head.index("response")
    fits = {q: query_units(traces, convs, q), r: token_units(traces, convs, r)}
    report: dict = {"target_fpr": target_fpr}
    scale, shift = np.ones(len(head.names)), np.zeros(len(head.names))
    for k, (scores, labels) in fits.items():
        scale[k], shift[k] = platt_scaling(scores, labels)
        head.fold_platt(k, scale[k], shift[k])
        report[f"{head.names[k]}_platt"] = [scale[k], shift[k]]
    traces = [t * scale + shift for t in traces]
    task = [t * scale + shift for t in task]
    q_scores, q_labels = query_units(traces, convs, q)
    neg, pos = response_units(traces, convs, r)
    head.thresholds = np.array(head.thresholds, dtype=np.float64)
    task_scores = np.array([t[0, q] for t in task])
    head.thresholds[q], own = query_threshold(
        q_scores[q_labels == 0], q_scores[q_labels == 1], task_scores, target_fpr
    )
    head.thresholds[r] = gap_threshold(neg, pos, target_fpr)
    if task:
        report["task"] = task_metrics(task, q, r, head.thresholds, own)
    report["query"] = rates(q_scores, q_labels, head.thresholds[q])
    labels = np.r_[np.zeros(neg.size), np.ones(pos.size)]
    report["response"] = rates(np.r_[neg, pos], labels, head.thresholds[r])
    t_scores, t_labels = token_units(traces, convs, r)
    report["reliability"] = {
        "query": reliability_bins(sigmoid(q_scores), q_labels),
        "response": reliability_bins(sigmoid(t_scores), t_labels),
    }
    report["stream"] = stream_metrics(head, traces, convs)
    return report
