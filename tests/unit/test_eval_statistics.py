"""Paired differences between two models on the same items, against scipy and values known by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from medllm.evaluation.statistics import RESAMPLES, paired_difference


def constructed_pair() -> tuple[list[bool], list[bool]]:
    """200 items: both right on 100, both wrong on 60, only the first right on 30, only the second on 10."""
    first = [True] * 100 + [False] * 60 + [True] * 30 + [False] * 10
    second = [True] * 100 + [False] * 60 + [False] * 30 + [True] * 10
    return first, second


def test_the_difference_and_mcnemar_match_values_known_by_hand():
    first, second = constructed_pair()
    result = paired_difference(first, second)
    assert result["difference"] == pytest.approx((130 - 110) / 200)
    assert (result["only_first_right"], result["only_second_right"], result["n"]) == (30, 10, 200)
    # exact McNemar: two-sided binomial of 10 (or fewer) of 40 disagreements going one way, p = 1/2
    exact = 2 * sum(math.comb(40, k) for k in range(11)) / 2**40
    assert result["p_mcnemar"] == pytest.approx(exact, rel=1e-12)
    assert result["p_mcnemar"] == pytest.approx(stats.binomtest(30, 40, 0.5).pvalue)
    assert result["distinguishable"]
    small = paired_difference([True] * 9 + [False], [False] * 9 + [True])  # 9 against 1 disagreement
    assert small["p_mcnemar"] == pytest.approx(22 / 1024)  # 2 * (C(10,0) + C(10,1)) / 2^10


def test_the_interval_is_scipys_paired_bootstrap():
    first, second = constructed_pair()
    result = paired_difference(first, second, seed=3)
    expected = stats.bootstrap(
        (np.array(first, float), np.array(second, float)),
        lambda u, v, axis=-1: u.mean(axis=axis) - v.mean(axis=axis),
        paired=True,
        vectorized=True,
        n_resamples=RESAMPLES,
        method="percentile",
        rng=np.random.default_rng(3),
    ).confidence_interval
    assert (result["ci_low"], result["ci_high"]) == pytest.approx((expected.low, expected.high))
    assert result["ci_low"] < result["difference"] < result["ci_high"]
    # the paired interval is narrower than one that ignores the pairing (the models agree on 160 of 200 items)
    unpaired = 1.96 * math.sqrt(0.65 * 0.35 / 200 + 0.55 * 0.45 / 200)
    assert result["ci_high"] - result["ci_low"] < 2 * unpaired
    # and about as wide as the normal approximation of the paired differences' spread
    diffs = np.array(first, float) - np.array(second, float)
    paired_normal = 2 * 1.96 * diffs.std() / math.sqrt(len(diffs))
    assert result["ci_high"] - result["ci_low"] == pytest.approx(paired_normal, rel=0.15)


def test_models_that_answer_alike_are_indistinguishable():
    same = [True, False] * 50
    result = paired_difference(same, same)
    assert (result["difference"], result["ci_low"], result["ci_high"], result["p_mcnemar"]) == (0, 0, 0, 1)
    assert not result["distinguishable"]
    # 100 items, 2 points apart: 6 won by the first, 4 by the second
    both = [True] * 45 + [False] * 45
    close = paired_difference([True] * 6 + [False] * 4 + both, [False] * 6 + [True] * 4 + both)
    assert close["difference"] == pytest.approx(0.02) and close["p_mcnemar"] == pytest.approx(0.75390625)
    assert close["ci_low"] < 0 < close["ci_high"] and not close["distinguishable"]


def test_unpaired_inputs_are_refused():
    with pytest.raises(ValueError, match="same items"):
        paired_difference([True, False], [True])
    with pytest.raises(ValueError, match="no items"):
        paired_difference([], [])
