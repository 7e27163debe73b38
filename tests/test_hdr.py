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


@pytest.mark.parametrize(
    "values",
    [
        [0, 1, 2, 3, 7, 1000, 2047, 2048, 2049, 10**6, 3_600_000_000, 2**40, 10**15, -5],
        np.random.default_rng(3).lognormal(6, 2, 31).astype(np.int64).tolist(),
    ],
    ids=["edges-and-out-of-range", "lognormal-31"],
)
def test_a_few_values_land_in_the_buckets_hdrh_puts_them_in(values: list[int]) -> None:
    """Under 32 values record_many computes each bucket in Python (not numpy, not hdrh)."""
    mine, theirs = hdr.new_latency_hist(), hdr.new_latency_hist()
    bad = hdr.record_many(mine, np.asarray(values))
    assert bad == sum(1 for v in values if v < 0 or not theirs.record_value(v))
    assert list(mine.counts) == list(theirs.counts)
    assert (mine.total_count, mine.min_value, mine.max_value) == (
        theirs.total_count,
        theirs.min_value,
        theirs.max_value,
    )


@pytest.mark.parametrize(
    "values",
    [
        np.random.default_rng(4).lognormal(6, 2, 5_000).astype(np.int64),  # all in range
        np.r_[np.random.default_rng(5).integers(0, 3_600_000_000, 700), [0, 3_600_000_000]],
        np.r_[np.random.default_rng(6).lognormal(6, 2, 500).astype(np.int64), [-5, 10**15]],
        np.full(64, 2048),  # one bucket
    ],
    ids=["in-range", "to-the-edges", "some-out-of-range", "one-bucket"],
)
def test_many_values_land_in_the_buckets_hdrh_puts_them_in(values: np.ndarray) -> None:
    """From 32 values on, record_many bins with numpy: one bincount over the buckets the
    values span when all are in range, masks when some are not."""
    mine, theirs = hdr.new_latency_hist(), hdr.new_latency_hist()
    hdr.record_many(mine, np.asarray([3, 5_000_000] * 20))  # something there already
    for v in [3, 5_000_000] * 20:
        theirs.record_value(v)
    bad = hdr.record_many(mine, values)
    assert bad == sum(1 for v in values.tolist() if v < 0 or not theirs.record_value(v))
    assert list(mine.counts) == list(theirs.counts)
    assert (mine.total_count, mine.min_value, mine.max_value) == (
        theirs.total_count,
        theirs.min_value,
        theirs.max_value,
    )


def test_a_dropped_histogram_is_freed_without_the_cyclic_collector() -> None:
    """A run holds off full collections (replay/runner.py quiet_gc): a histogram must go when
    its last reference does. hdrh's histogram and encoder refer to each other; with that cycle
    each second's interval histograms (~190 KB each) stayed until the run ended."""
    import gc
    import weakref

    from replay.measure.metrics import Metrics

    h = hdr.new_latency_hist()
    hdr.record_many(h, np.arange(1, 100))
    blob = hdr.encode(h)
    back = hdr.decode(blob)
    assert (back.total_count, back.get_value_at_percentile(50)) == (
        99,
        h.get_value_at_percentile(50),
    )
    hdr.add(back, h)
    assert back.total_count == 198
    refs = [weakref.ref(x) for x in (h, back, hdr.new_hist(1 << 31))]
    gc.disable()
    try:
        del h, back
        assert [r() for r in refs] == [None, None, None]
        # the run's own: the interval histograms of 30 seconds, each sealed 2 s behind
        m = Metrics()
        gc.collect()
        before = sum(type(o).__name__ == "HdrHistogram" for o in gc.get_objects())
        for sec in range(30):
            m._live[("s", sec)] = {k: hdr.new_latency_hist() for k in ("latency", "ttft", "itl")}
            m.seal_intervals(before_sec=sec - 2)
        live = sum(type(o).__name__ == "HdrHistogram" for o in gc.get_objects())
        assert live - before <= 3 * 3, live - before  # the last seconds' only
    finally:
        gc.enable()
