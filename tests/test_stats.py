"""Shared statistics: AUROC, F1 and Wilson intervals against hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pytest

from localguard.stats import auroc, f1_score, wilson_interval

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
