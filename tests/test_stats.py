"""Shared statistics: AUROC, F1, logit agreement and Wilson intervals on hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pytest

from localguard.stats import (
    _newton_logistic,
    auroc,
    cohen_kappa,
    f1_score,
    fit_logistic,
    l2_cross_validation,
    logit_agreement,
    stratified_folds,
    wilson_interval,
)

# --- ranking and classification --------------------------------------------------------------


@pytest.mark.parametrize(
    ("scores", "labels", "expected"),
    [
        ([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1], 0.75),  # 3 of 4 pairs ordered
        ([1, 2, 3, 4], [0, 0, 1, 1], 1.0),
        ([4, 3, 2, 1], [0, 0, 1, 1], 0.0),
        ([0.5, 0.5, 0.5, 0.5], [0, 1, 0, 1], 0.5),  # all tied
        ([1, 2, 2, 3], [0, 0, 1, 1], 0.875),  # (1 + 0.5 + 1 + 1) / 4
        ([2, 2, 1, 3, 2], [1, 0, 0, 1, 0], 5 / 6),  # pos {2, 3} vs neg {2, 1, 2}: 0.5+1+0.5+3
    ],
)
def test_auroc_hand_computed(scores: list, labels: list, expected: float) -> None:
    assert auroc(np.array(scores), np.array(labels)) == pytest.approx(expected)


def test_auroc_matches_pairwise_count_with_ties() -> None:
    rng = np.random.default_rng(0)
    scores = rng.integers(0, 6, size=60).astype(float)  # many ties
    labels = rng.integers(0, 2, size=60)
    pos, neg = scores[labels == 1], scores[labels == 0]
    wins = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    assert auroc(scores, labels) == pytest.approx(wins / (pos.size * neg.size))


def test_auroc_one_class_is_nan() -> None:
    assert np.isnan(auroc(np.array([0.1, 0.2]), np.array([1, 1])))


def test_f1() -> None:
    assert f1_score(np.array([1, 1, 0, 0, 1]), np.array([1, 0, 1, 0, 1])) == pytest.approx(2 / 3)
    assert f1_score(np.array([1, 0, 1]), np.array([1, 0, 1])) == 1.0
    assert f1_score(np.array([0, 0]), np.array([0, 0])) == 0.0
    assert f1_score(np.array([0, 0]), np.array([1, 1])) == 0.0


# --- logits ---------------------------------------------------------------------------


def test_logit_agreement_on_known_logits() -> None:
    """Absolute and relative (to the spread of MLX's logits at each position, worst position)
    differences, argmax and top-5 agreement; the same figures at 10x the logit scale."""
    want = np.array(
        [
            [0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0],  # std 2
            [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 7.0],  # std sqrt(6)
        ]
    )
    got = want.copy()
    got[0, 5] += 1.5  # the top token moves to index 5; top-5 unchanged (2..6)
    got[1, 0] += 0.7  # index 0 joins the top 5 in place of a tied zero, or not
    result = logit_agreement(want, got)
    assert list(result) == [
        "max_logit_diff",
        "relative_logit_diff",
        "argmax_agreement",
        "top5_agreement",
    ]
    assert result["max_logit_diff"] == pytest.approx(1.5)
    assert result["relative_logit_diff"] == pytest.approx(max(1.5 / 2.0, 0.7 / np.sqrt(6)))
    assert result["argmax_agreement"] == 0.5
    assert 0.9 <= result["top5_agreement"] <= 1.0
    scaled = logit_agreement(10 * want, 10 * got)
    assert scaled["max_logit_diff"] == pytest.approx(15.0)
    for name in ("relative_logit_diff", "argmax_agreement", "top5_agreement"):
        assert scaled[name] == pytest.approx(result[name])
    same = logit_agreement(want, want + 0.25)  # a shift the softmax does not see in the ranks
    assert same["argmax_agreement"] == 1.0 and same["top5_agreement"] == 1.0


# --- fits ---------------------------------------------------------------------------------


def test_stratified_folds_deal_each_label_evenly() -> None:
    labels = np.array([1] * 13 + [0] * 29)
    folds = stratified_folds(labels, 5, seed=3)
    for cls, n in ((1, 13), (0, 29)):
        counts = np.bincount(folds[labels == cls], minlength=5)
        assert counts.sum() == n and counts.max() - counts.min() <= 1
    assert np.array_equal(folds, stratified_folds(labels, 5, seed=3))
    assert not np.array_equal(folds, stratified_folds(labels, 5, seed=4))


def test_stratified_folds_keep_a_groups_rows_in_one_fold() -> None:
    """A prompt's copies share a fold; each label's groups are dealt evenly, and rows without
    a group fall exactly as they did without groups."""
    labels = np.repeat(np.arange(30) % 2, 3)
    groups = [f"p{i // 3}" for i in range(labels.size)]
    folds = stratified_folds(labels, 5, seed=1, groups=groups)
    assert all(len(set(folds[i : i + 3])) == 1 for i in range(0, labels.size, 3))
    for cls in (0, 1):
        counts = np.bincount(folds[::3][labels[::3] == cls], minlength=5)
        assert counts.max() - counts.min() <= 1
    alone = np.array([1] * 13 + [0] * 29)
    assert np.array_equal(
        stratified_folds(alone, 5, seed=3, groups=[""] * alone.size),
        stratified_folds(alone, 5, seed=3),
    )


def _signal(n: int, d: int, informative: int, shift: float, seed: int):
    """Standardized-looking features whose first `informative` columns carry the label."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 2
    z = rng.normal(size=(n, d))
    z[:, :informative] += shift * (2 * y[:, None] - 1)
    return z, y


def test_cross_validation_prefers_a_weak_penalty_when_the_signal_needs_a_contrast() -> None:
    """The label shifts one feature that a shared factor swamps; every feature carries that
    factor, so the separating weight subtracts the others. A strong penalty keeps the weight near
    the mean difference (that one feature) and ranks poorly. Hidden states are like this: wide
    and correlated (SmolLM2's probe went from AUROC 0.80 at L2 100 to 0.96 at 1)."""
    rng = np.random.default_rng(0)
    n, d = 400, 20
    y = np.arange(n) % 2
    z = 3.0 * rng.normal(size=(n, 1)) + 0.3 * rng.normal(size=(n, d))
    z[:, 0] += 1.0 * (2 * y - 1)
    grid = [0.01, 1.0, 100.0, 1000.0]
    cv = l2_cross_validation(z, y, grid, k=5, seed=0)
    assert cv["folds"] == 5 and cv["l2"] == grid
    assert cv["auroc"][0] > 0.95 > 0.8 > cv["auroc"][3]
    assert 0 < cv["auroc_se"][3] < 0.05


def test_cross_validation_prefers_a_strong_penalty_among_noise_features() -> None:
    """Three useful features among 300 and 150 examples: a weak penalty fits the noise ones."""
    z, y = _signal(n=150, d=300, informative=3, shift=0.8, seed=1)
    cv = l2_cross_validation(z, y, [0.01, 1.0, 1000.0], k=5, seed=0)
    assert cv["auroc"][0] < cv["auroc"][1] < cv["auroc"][2]


def test_cross_validation_warm_starts_reach_the_cold_optimum() -> None:
    """Each grid value alone (fitted from zero) scores as it does inside the warm-started grid,
    and a Newton run started far away ends where one started from zero does."""
    z, y = _signal(n=90, d=150, informative=5, shift=0.6, seed=2)
    grid = [0.03, 3.0, 300.0]
    together = l2_cross_validation(z, y, grid, k=3, seed=0)
    for i, l2 in enumerate(grid):
        alone = l2_cross_validation(z, y, [l2], k=3, seed=0)
        assert alone["auroc"] == [together["auroc"][i]]
    x = np.hstack([z[:, :20], np.ones((90, 1))])
    penalty = np.r_[np.full(20, 0.03), 0.0]
    cold = _newton_logistic(x, y.astype(float), penalty)
    warm = _newton_logistic(x, y.astype(float), penalty, start=np.full(21, 0.5))
    np.testing.assert_allclose(warm, cold, atol=1e-8)


def test_fit_logistic_weight_lies_in_the_row_space() -> None:
    """Wide features: the SVD-basis fit is the full-space optimum (gradient zero there)."""
    z, y = _signal(n=30, d=80, informative=3, shift=1.0, seed=3)
    l2 = 0.5
    w, b = fit_logistic(z, y, l2)
    p = 1 / (1 + np.exp(-(z @ w + b)))
    assert np.abs(z.T @ (p - y) / y.size + l2 * w).max() < 1e-7
    assert abs((p - y).mean()) < 1e-7


# --- intervals ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("hits", "n", "low", "high"),
    [
        (0, 10, 0.0, 0.2775),
        (5, 10, 0.2366, 0.7634),
        (10, 10, 0.7225, 1.0),
        (1, 10, 0.0179, 0.4042),
        (2, 4, 0.1500, 0.8500),
        (40, 100, 0.3094, 0.4980),
    ],
)
def test_wilson_interval_known_values(hits, n, low, high):
    lo, hi = wilson_interval(hits, n)
    assert lo == pytest.approx(low, abs=5e-4)
    assert hi == pytest.approx(high, abs=5e-4)


def test_wilson_interval_edges():
    assert all(math.isnan(v) for v in wilson_interval(0, 0))
    assert wilson_interval(0, 10)[0] == 0.0 and wilson_interval(10, 10)[1] == 1.0
    narrow = wilson_interval(50, 100, z=1.0)
    wide = wilson_interval(50, 100)
    assert wide[0] < narrow[0] < 0.5 < narrow[1] < wide[1]
    with pytest.raises(ValueError):
        wilson_interval(3, 2)


# --- agreement ------------------------------------------------------------------------------


def _from_table(both: int, first_only: int, second_only: int, neither: int) -> tuple[list, list]:
    """Two raters' labels from a 2x2 table: rows the first rater's yes/no, columns the second's."""
    cells = [(1, 1, both), (1, 0, first_only), (0, 1, second_only), (0, 0, neither)]
    pairs = [(a, b) for a, b, k in cells for _ in range(k)]
    return [a for a, _ in pairs], [b for _, b in pairs]


@pytest.mark.parametrize(
    ("table", "expected"),
    [
        ((20, 5, 10, 15), 0.4),  # p_o 0.7, p_e 0.5 (Wikipedia's worked example)
        ((45, 15, 25, 15), 0.1304),  # p_o 0.6, p_e 0.54
        ((10, 0, 0, 10), 1.0),
        ((0, 10, 10, 0), -1.0),
        ((9, 1, 0, 0), 0.0),  # 90 % agreement, all of it expected by chance
    ],
)
def test_cohen_kappa_known_tables(table, expected):
    assert cohen_kappa(*_from_table(*table)) == pytest.approx(expected, abs=5e-5)


def test_cohen_kappa_edges():
    assert math.isnan(cohen_kappa([], []))
    assert math.isnan(cohen_kappa([True] * 4, [True] * 4))  # one label throughout: undefined
    assert cohen_kappa(["a", "b", "c"], ["a", "b", "c"]) == 1.0  # any labels, not just 0/1
    with pytest.raises(ValueError, match="share items"):
        cohen_kappa([1, 0], [1])
