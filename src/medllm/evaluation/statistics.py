"""Whether two models' accuracies on the same items really differ: a paired bootstrap interval and McNemar's test.

Both models answered the same items, so each item gives a pair (right or wrong, right or wrong). The difference in
accuracy is the mean of the per-item differences; its 95% interval is a bootstrap over items (scipy's
``stats.bootstrap`` with ``paired=True``, percentile), which keeps each item's pair together. McNemar's exact test looks
only at the items the models disagree on: under "no difference" each disagreement goes either way with
probability 1/2, so the p-value is a two-sided binomial test (scipy's ``stats.binomtest``) of one model's wins
among them. An interval that holds 0 (or p >= 0.05) means the data can't tell the two apart.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

CONFIDENCE = 0.95
RESAMPLES = 2000
ALPHA = 0.05


def paired_difference(a: Sequence[bool], b: Sequence[bool], seed: int = 0) -> dict[str, Any]:
    """``a``'s accuracy minus ``b``'s on the same items (index i is one item for both): the difference, its 95%
    paired bootstrap interval, McNemar's exact p-value, and the items only ``a`` / only ``b`` got right."""
    from scipy import stats  # here: a training run imports evaluation without comparing models

    if len(a) != len(b):
        raise ValueError(f"paired scores need the same items: {len(a)} and {len(b)}")
    if not a:
        raise ValueError("no items to compare")
    x, y = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    difference = float(x.mean() - y.mean())
    only_a, only_b = int(((x == 1) & (y == 0)).sum()), int(((x == 0) & (y == 1)).sum())
    if only_a == only_b == 0 or len(a) < 2:  # every item scored alike: no spread to resample
        low = high = difference
    else:
        interval = stats.bootstrap(
            (x, y),
            lambda u, v, axis=-1: u.mean(axis=axis) - v.mean(axis=axis),
            paired=True,
            vectorized=True,
            n_resamples=RESAMPLES,
            confidence_level=CONFIDENCE,
            method="percentile",  # BCa adds a jackknife over items: 6 s at 7,000 items, for the same interval
            rng=np.random.default_rng(seed),
        ).confidence_interval
        low, high = float(interval.low), float(interval.high)
    disagreements = only_a + only_b
    p_value = 1.0 if disagreements == 0 else float(stats.binomtest(only_a, disagreements, 0.5).pvalue)
    return {
        "n": len(a),
        "difference": difference,
        "ci_low": low,
        "ci_high": high,
        "p_mcnemar": p_value,
        "only_first_right": only_a,
        "only_second_right": only_b,
        "distinguishable": p_value < ALPHA,
    }
