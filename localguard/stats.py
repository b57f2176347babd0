"""Statistics shared by the probe, the safety head, the critic and the evaluation: the logistic
function, ranking and classification metrics, logistic and Platt fits (with cross-validation of
the logistic fit's penalty), and binomial intervals.

numpy only, deterministic, and defined once here so every figure localguard prints is computed
the same way.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence

import numpy as np

from localguard.errors import InputError

NEWTON_STEPS = 50
TOP_K = 5  # logit_agreement's top-k overlap
BOOTSTRAP_BATCHES = 10  # bootstrap_mean_interval: 10 x 1000 resamples, drawn a batch at a time
BOOTSTRAP_BATCH = 1000


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


def binary_labels(labels: np.ndarray, name: str) -> np.ndarray:
    """Labels as int64 0/1; anything else is an InputError naming `name`."""
    arr = np.asarray(labels).reshape(-1)
    if arr.size and not np.isin(arr, (0, 1)).all():
        raise InputError(f"{name}: values must be 0 or 1")
    return arr.astype(np.int64)


def auroc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Area under the ROC curve from ranks (Mann-Whitney U); tied scores share their mean rank.

    NaN when one class is absent (the area is undefined).
    """
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    y = binary_labels(labels, "labels")
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
    p = binary_labels(pred, "pred")
    y = binary_labels(labels, "labels")
    tp = int(((p == 1) & (y == 1)).sum())
    fp = int(((p == 1) & (y == 0)).sum())
    fn = int(((p == 0) & (y == 1)).sum())
    return 0.0 if tp == 0 else 2.0 * tp / (2.0 * tp + fp + fn)


def binary_metrics(risk: np.ndarray, labels: np.ndarray, threshold: float = 0.5) -> dict:
    """AUROC, F1, accuracy and positive rate of scores in [0, 1] against 0/1 labels."""
    y = binary_labels(labels, "labels")
    pred = (np.asarray(risk) >= threshold).astype(np.int64)
    return {
        "auroc": auroc(risk, y),
        "f1": f1_score(pred, y),
        "accuracy": float((pred == y).mean()) if y.size else float("nan"),
        "positive_rate": float(y.mean()) if y.size else float("nan"),
        "predicted_positive_rate": float(pred.mean()) if y.size else float("nan"),
    }


def cohen_kappa(first: Sequence, second: Sequence) -> float:
    """Cohen's kappa of two raters' labels on the same items: their agreement beyond what
    their own label rates would give by chance, so two judges that both call nearly every
    reply safe do not look reliable for agreeing on it. NaN without items, or when chance
    agreement is already certain (both raters give one and the same label throughout)."""
    if len(first) != len(second):
        raise ValueError(f"{len(first)} and {len(second)} labels: the raters must share items")
    n = len(first)
    if not n:
        return math.nan
    agreed = sum(a == b for a, b in zip(first, second, strict=True))
    counts_first, counts_second = Counter(first), Counter(second)
    by_chance = sum(k * counts_second[label] for label, k in counts_first.items())
    if by_chance == n * n:
        return math.nan
    return (agreed * n - by_chance) / (n * n - by_chance)  # (p_o - p_e) / (1 - p_e), times n²


# --- logits ---------------------------------------------------------------------------


def logit_agreement(want: np.ndarray, got: np.ndarray) -> dict:
    """Logits of a converted model (got) against the reference's (want), one row per position:
    max_logit_diff (absolute), relative_logit_diff (each position's largest difference over the
    standard deviation of want's logits there, worst position), argmax_agreement and
    top5_agreement (mean overlap of the two top-5 sets)."""
    want, got = np.asarray(want, np.float64), np.asarray(got, np.float64)
    diff = np.abs(got - want).max(axis=1)
    spread = np.maximum(want.std(axis=1), np.finfo(np.float64).tiny)
    k = min(TOP_K, want.shape[1])
    top_want = np.argpartition(-want, k - 1, axis=1)[:, :k]
    top_got = np.argpartition(-got, k - 1, axis=1)[:, :k]
    overlap = [np.intersect1d(a, b).size / k for a, b in zip(top_want, top_got, strict=True)]
    return {
        "max_logit_diff": float(diff.max()),
        "relative_logit_diff": float((diff / spread).max()),
        "argmax_agreement": float(np.mean(want.argmax(axis=1) == got.argmax(axis=1))),
        "top5_agreement": float(np.mean(overlap)),
    }


# --- fits ---------------------------------------------------------------------------------


def _newton_logistic(
    x: np.ndarray,
    y: np.ndarray,
    penalty: np.ndarray,
    targets: np.ndarray | None = None,
    start: np.ndarray | None = None,
) -> np.ndarray:
    """Minimize mean log-loss + 0.5 * sum(penalty * theta**2); x carries a ones column.

    Newton steps with backtracking: exact, deterministic, and a handful of iterations.
    `targets` (soft labels) replaces y in the loss when given; `start` (default zeros) is where
    the steps begin, which only changes how many they take.
    """
    t = y if targets is None else targets
    n = x.shape[0]

    def loss(theta: np.ndarray) -> float:
        z = x @ theta
        return float((_log1pexp(z) - t * z).mean() + 0.5 * (penalty * theta**2).sum())

    theta = np.zeros(x.shape[1]) if start is None else np.asarray(start, dtype=np.float64)
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


def _row_space(z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(x, basis): z's coordinates in its SVD row-space basis plus a ones column, and that
    basis, so a weight theta over x is the weight basis.T @ theta[:-1] over z."""
    u, s, vt = np.linalg.svd(z, full_matrices=False)
    keep = s > s.max(initial=0.0) * 1e-10
    x = np.hstack([u[:, keep] * s[keep], np.ones((z.shape[0], 1))])
    return x, vt[keep]


def _l2_penalty(x: np.ndarray, l2: float) -> np.ndarray:
    return np.r_[np.full(x.shape[1] - 1, l2), 0.0]  # the intercept is never penalized


def fit_logistic(z: np.ndarray, y: np.ndarray, l2: float) -> tuple[np.ndarray, float]:
    """L2 logistic regression on standardized features, intercept unpenalized.

    The optimal weight lies in the row space of z, so the fit runs in the SVD basis of z:
    min(n, d) unknowns instead of d, which keeps wide hidden states (4096+) cheap.
    """
    x, basis = _row_space(z)
    theta = _newton_logistic(x, y.astype(np.float64), _l2_penalty(x, l2))
    return basis.T @ theta[:-1], float(theta[-1])


def group_keys(groups: Sequence[str] | None, n: int) -> list[str]:
    """One key per row of n: its group, or for a row without one ("", or no groups at all) a
    key of its own."""
    if groups is None:
        groups = [""] * n
    if len(groups) != n:
        raise InputError(f"{len(groups)} groups for {n} rows")
    return [group or f"\0{i}" for i, group in enumerate(groups)]


def group_rows(groups: Sequence[str] | None, n: int) -> list[list[int]]:
    """The row indices of each group (group_keys), groups in order of their first row."""
    members: dict[str, list[int]] = {}
    for i, key in enumerate(group_keys(groups, n)):
        members.setdefault(key, []).append(i)
    return list(members.values())


def grouped_split(
    keys: Sequence, groups: Sequence[str] | None, fraction: float, seed: int
) -> tuple[list[int], list[int]]:
    """Train and validation indices, each stratum (key) split in the same proportion.

    Rows that share a non-empty group (the copies of one prompt) go to one side together,
    stratified by the key of the group's first row; a row without a group is a group of its
    own. A stratum of two or more groups keeps at least one on each side, so a model is always
    measured on groups it never trained on.
    """
    rng = np.random.default_rng(seed)
    rows = group_rows(groups, len(keys))
    strata: dict = {}
    for g, idx in enumerate(rows):
        strata.setdefault(keys[idx[0]], []).append(g)
    train, valid = [], []
    for gs in strata.values():
        gs = list(rng.permutation(gs))
        n_valid = min(max(1, round(fraction * len(gs))), len(gs) - 1) if len(gs) > 1 else 0
        valid += [i for g in gs[:n_valid] for i in rows[g]]
        train += [i for g in gs[n_valid:] for i in rows[g]]
    return sorted(train), sorted(valid)


def stratified_folds(
    labels: np.ndarray, k: int, seed: int, groups: Sequence[str] | None = None
) -> np.ndarray:
    """A fold number in 0..k-1 per row, each label dealt round-robin after a seeded shuffle, so
    every fold holds floor or ceil of 1/k of each label. With groups, the rows of one group
    share a fold (dealt by the label of its first row)."""
    y = binary_labels(labels, "labels")
    rows = group_rows(groups, y.size)
    heads = np.array([r[0] for r in rows], dtype=np.int64)
    rng = np.random.default_rng(seed)
    group_fold = np.empty(heads.size, dtype=np.int64)
    for cls in (0, 1):
        idx = rng.permutation(np.flatnonzero(y[heads] == cls))
        group_fold[idx] = np.arange(idx.size) % k
    folds = np.empty(y.size, dtype=np.int64)
    for g, members in enumerate(rows):
        folds[members] = group_fold[g]
    return folds


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


def l2_cross_validation(
    z: np.ndarray,
    y: np.ndarray,
    grid: Sequence[float],
    k: int,
    seed: int,
    groups: Sequence[str] | None = None,
) -> dict:
    """Stratified k-fold cross-validation of fit_logistic for every L2 in grid: the held-out
    AUROC, its mean over the folds and that mean's standard error. The rows of one group (a
    prompt's copies) share a fold, so no fold is scored on a prompt its fit has seen.

    AUROC because the fit only has to rank: the probe is Platt-calibrated afterwards, so a
    strong penalty's scores, squeezed toward 0.5, lose nothing by their scale. Each fold's SVD
    serves the whole grid, which runs from the strongest penalty down, each fit starting where
    the previous one ended (the same optimum in fewer steps).
    """
    y = binary_labels(y, "labels")
    folds = stratified_folds(y, k, seed, groups)
    order = np.argsort(grid)[::-1]
    areas = np.empty((len(grid), k))
    for fold in range(k):
        fit, held = folds != fold, folds == fold
        x, basis = _row_space(z[fit])
        held_x = z[held] @ basis.T
        theta = None
        for i in order:
            penalty = _l2_penalty(x, grid[i])
            theta = _newton_logistic(x, y[fit].astype(np.float64), penalty, None, theta)
            areas[i, fold] = auroc(held_x @ theta[:-1] + theta[-1], y[held])
    return {
        "folds": k,
        "l2": [float(v) for v in grid],
        "auroc": areas.mean(axis=1).tolist(),
        "auroc_se": (areas.std(axis=1, ddof=1) / math.sqrt(k)).tolist(),
    }


# --- intervals ----------------------------------------------------------------------------


def wilson_interval(hits: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """The Wilson score interval of hits / n: unlike the normal approximation it stays inside
    [0, 1] and is not empty at 0 or n hits, which is where small evaluations live."""
    if n < 0 or hits < 0 or hits > n:
        raise ValueError(f"need 0 <= hits <= n, got hits={hits}, n={n}")
    if n == 0:
        return (math.nan, math.nan)
    p = hits / n
    denom = 1 + z * z / n
    center = (p + z * z / (2 * n)) / denom
    half = z / denom * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    low = 0.0 if hits == 0 else max(0.0, center - half)
    high = 1.0 if hits == n else min(1.0, center + half)
    return (low, high)


def bootstrap_mean_interval(values: Sequence[float], level: float = 0.95) -> tuple[float, float]:
    """The percentile bootstrap interval of a mean. Resampling the units (conversations, say)
    weighs each one equally and assumes no normality, so a mean of values in [0, 1] keeps its
    interval in [0, 1]; a fixed seed gives a summary rebuilt from the same values the same
    interval. With a handful of units it is too narrow (one unit: a single point)."""
    x = np.asarray(values, dtype=np.float64).reshape(-1)
    if x.size == 0:
        return (math.nan, math.nan)
    rng = np.random.default_rng(0)
    means = np.concatenate(
        [
            x[rng.integers(0, x.size, size=(BOOTSTRAP_BATCH, x.size))].mean(axis=1)
            for _ in range(BOOTSTRAP_BATCHES)
        ]
    )
    tail = (1.0 - level) / 2.0
    low, high = np.quantile(means, [tail, 1.0 - tail])
    return (float(low), float(high))
