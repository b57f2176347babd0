"""Shared statistics: AUROC, F1, logit agreement and Wilson intervals on hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pytest

from localguard.stats import auroc, f1_score, logit_agreement, wilson_interval

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
