"""The vectorized HdrHistogram helpers give what hdrh's own Python loops give."""

from __future__ import annotations

import numpy as np
import pytest

from captures import hdr


@pytest.mark.parametrize(
    "values",
    [
        [7] * 10,
        list(range(1, 40)),
        np.random.default_rng(1).lognormal(6, 2, 20_000).astype(np.int64) + 1,
        np.random.default_rng(2).integers(1, 3_600_000_000, 3_000),
    ],
    ids=["one-value", "small", "lognormal", "uniform-to-1h"],
)
def test_vectorized_record_percentiles_and_mean_match_hdrh(values: list[int]) -> None:
    mine, theirs = hdr.new_latency_hist(), hdr.new_latency_hist()
    assert hdr.record_many(mine, np.asarray(values)) == 0
    for v in np.asarray(values).tolist():
        theirs.record_value(v)
    assert mine.total_count == theirs.total_count
    for p in (0, 50, 90, 99, 99.9, 100):
        assert hdr.value_at_percentile(mine, p) == theirs.get_value_at_percentile(p)
    assert hdr.mean(mine) == theirs.get_mean_value()


def test_the_mean_of_an_empty_histogram_is_zero() -> None:
    assert hdr.mean(hdr.new_latency_hist()) == 0.0
