"""Arrival processes, distributions, request makers, amplification: statistical checks over many
seeded draws (Kolmogorov-Smirnov against the intended distribution, not one sample)."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from scipy import stats

from captures.arrivals import Arrival, offsets, parse_arrival, parse_dist, parse_mix
from captures.errors import UserError
from captures.filler import filler
from captures.testing import T0_NS, chat_record, write_capture
from replay.plan import Shot
from replay.planrows import Request
from replay.workload.makers import PromptsMaker, SampleMaker, TemplateMaker, load_sharegpt_prompts
from replay.workload.synthetic import amplify, plan_synthetic

S = 1_000_000_000


def gaps(arrival: Arrival, seconds: float, seed: int) -> np.ndarray:
    offs = np.fromiter(offsets(arrival, seconds, seed), dtype=np.int64)
    return np.diff(offs) / S


@pytest.mark.parametrize("seed", range(5))
def test_poisson_gaps_are_exponential(seed: int) -> None:
    g = gaps(parse_arrival("poisson:rate=50"), 60, seed)
    assert stats.kstest(g, "expon", args=(0, 1 / 50)).pvalue > 0.01
    assert len(g) == pytest.approx(3000, rel=0.1)


def ks_above(samples: np.ndarray, cdf: Any, floor: float = 1e-6) -> float:
    """The KS distance between samples and a CDF, over points >= floor. Offsets are integer
    nanoseconds, so gaps under a nanosecond collapse to 0 (simultaneous arrivals: with cv=4 that
    is a large share); a plain continuous KS test would flag that quantization, not the process."""
    x = np.sort(samples)
    n = len(x)
    ecdf_hi = np.arange(1, n + 1) / n
    ecdf_lo = np.arange(0, n) / n
    keep = x >= floor
    f = cdf(x[keep])
    return float(max(np.max(np.abs(ecdf_hi[keep] - f)), np.max(np.abs(ecdf_lo[keep] - f))))


@pytest.mark.parametrize("cv", [0.5, 1.0, 2.0, 4.0])
def test_gamma_gaps_have_the_rate_and_burstiness_asked(cv: float) -> None:
    rate = 40.0
    all_gaps = np.concatenate(
        [gaps(parse_arrival(f"gamma:rate={rate},cv={cv}"), 60, s) for s in range(3)]
    )
    shape = 1 / cv**2
    dist = stats.gamma(shape, 0, 1 / (rate * shape))
    assert ks_above(all_gaps, dist.cdf) < 1.63 / np.sqrt(len(all_gaps))  # KS at p = 0.01
    assert all_gaps.mean() == pytest.approx(1 / rate, rel=0.1)
    assert all_gaps.std() / all_gaps.mean() == pytest.approx(cv, rel=0.15)


def test_ks_rejects_the_wrong_distribution() -> None:
    """The checks have teeth: bursty gamma gaps are not exponential."""
    g = gaps(parse_arrival("gamma:rate=40,cv=3"), 60, 1)
    assert stats.kstest(g, "expon", args=(0, 1 / 40)).pvalue < 1e-6
    assert ks_above(g, stats.expon(0, 1 / 40).cdf) > 1.63 / np.sqrt(len(g))


def test_constant_rate_is_exact() -> None:
    offs = list(offsets(parse_arrival("constant:rate=4"), 2.0, 0))
    assert offs == [0, 250_000_000, 500_000_000, 750_000_000, 1_000_000_000, 1_250_000_000,
                    1_500_000_000, 1_750_000_000]  # fmt: skip


def test_ramp_rate_rises_linearly() -> None:
    # 10 -> 100 req/s over 60 s: per-second counts follow the line; arrival times follow the
    # ramp's distribution (CDF of t is Lambda(t) / Lambda(T)).
    a = parse_arrival("ramp:from=10,to=100,over=60s")
    t = np.concatenate([np.fromiter(offsets(a, 60, s), dtype=np.int64) / S for s in range(3)])
    lam_T = 10 * 60 + 90 / 120 * 60**2

    def cdf(x: np.ndarray) -> np.ndarray:
        return (10 * x + 90 / 120 * x**2) / lam_T

    assert stats.kstest(t, cdf).pvalue > 0.01
    per_s = np.bincount(t.astype(int), minlength=60)[:60] / 3
    slope, intercept = np.polyfit(np.arange(60) + 0.5, per_s, 1)
    assert slope == pytest.approx(1.5, rel=0.15) and intercept == pytest.approx(10, abs=4)


def test_steps() -> None:
    arr = Arrival("steps", steps=((10.0, 10.0), (50.0, 10.0)))
    assert parse_arrival("steps:steps=10@10s,50@10s") == arr
    assert parse_arrival("steps:steps=10@10s;50@10s") == arr
    with pytest.raises(UserError, match="steps"):
        parse_arrival("steps:rate=3")
    t = np.concatenate([np.fromiter(offsets(arr, 20, s), dtype=np.int64) / S for s in range(5)])
    first, second = (t < 10).sum() / 5, (t >= 10).sum() / 5
    assert first == pytest.approx(100, rel=0.2) and second == pytest.approx(500, rel=0.1)
    assert t.max() < 20


def test_same_seed_same_offsets_other_seed_other_offsets() -> None:
    a = parse_arrival("poisson:rate=30")
    assert list(offsets(a, 5, 3)) == list(offsets(a, 5, 3))
    assert list(offsets(a, 5, 3)) != list(offsets(a, 5, 4))


@pytest.mark.parametrize(
    "spec",
    ["poisson", "poisson:rate=-1", "poisson:rate=abc", "gamma:rate=5,cv=0", "zipf:rate=3",
     "ramp:from=1,to=2", "ramp:from=1,to=2,over=soon", "poisson:rate=5,burst=2", "poisson:rate"],
)  # fmt: skip
def test_bad_arrival_specs_are_clear_errors(spec: str) -> None:
    with pytest.raises(UserError):
        parse_arrival(spec)


def test_distributions() -> None:
    rng = random.Random(1)
    assert {parse_dist("fixed:128", "x").draw(rng) for _ in range(10)} == {128}
    u = [parse_dist("uniform:10:20", "x").draw(rng) for _ in range(5000)]
    assert min(u) >= 10 and max(u) <= 20
    ln = np.array([parse_dist("lognormal:200:0.5", "x").draw(rng) for _ in range(5000)])
    assert stats.kstest(ln, "lognorm", args=(0.5, 0, 200)).pvalue > 0.001
    assert np.median(ln) == pytest.approx(200, rel=0.05)
    emp = parse_dist("empirical", "x", [5, 5, 7])
    assert {emp.draw(rng) for _ in range(100)} == {5, 7}
    for bad in ("fixed", "uniform:5:1", "normal:1", "weird:1", "lognormal:-3:1"):
        with pytest.raises(UserError):
            parse_dist(bad, "x")
    assert parse_mix("small:0.7,large:0.3") == (("small", 0.7), ("large", 0.3))
    with pytest.raises(UserError):
        parse_mix("small:-1")


def test_filler_is_about_n_tokens() -> None:
    rng = random.Random(0)
    text = filler(300, rng)
    assert len(text.split()) == 300
    assert filler(300, random.Random(5)) == filler(300, random.Random(5))


def test_template_maker_fills_slots_and_mixes_models() -> None:
    m = TemplateMaker(prompt_tokens=parse_dist("fixed:50", "p"), output_tokens=parse_dist("fixed:7", "o"),
                      models=(("small", 0.7), ("large", 0.3)), stream_share=0.5)  # fmt: skip
    rng = random.Random(2)
    made = [m.make(rng) for _ in range(2000)]
    bodies = [json.loads(x.request.body or b"") for x in made]
    assert all(
        b["max_tokens"] == 7 and len(b["messages"][0]["content"].split()) == 50 for b in bodies
    )
    share_small = sum(b["model"] == "small" for b in bodies) / len(bodies)
    assert share_small == pytest.approx(0.7, abs=0.04)
    assert sum(b["stream"] for b in bodies) / len(bodies) == pytest.approx(0.5, abs=0.05)
    assert all(("stream_options" in b) == b["stream"] for b in bodies)


def test_sample_maker_bootstraps_the_capture(tmp_path: Path) -> None:
    recs = [chat_record(start_ns=T0_NS + i, model="m1" if i % 4 else "m2") for i in range(400)]
    cap = write_capture(tmp_path / "cap", recs)
    m = SampleMaker(str(cap), seed=1)
    rng = random.Random(3)
    models = [m.make(rng).request.model for _ in range(4000)]
    assert models.count("m2") / 4000 == pytest.approx(0.25, abs=0.03)


def test_prompts_maker_reads_sharegpt(tmp_path: Path) -> None:
    f = tmp_path / "sg.json"
    f.write_text(json.dumps([
        {"id": "a", "conversations": [{"from": "human", "value": "first question"}, {"from": "gpt", "value": "x y"}]},
        {"id": "b", "conversations": [{"from": "gpt", "value": "no human first"}, {"from": "human", "value": "second"}]},
        {"id": "c", "conversations": []},
    ]))  # fmt: skip
    prompts = load_sharegpt_prompts(f)
    assert prompts == ["first question", "second"]
    m = PromptsMaker(prompts, output_tokens=parse_dist("fixed:9", "o"))
    body = json.loads(m.make(random.Random(0)).request.body or b"")
    assert body["messages"][0]["content"] in prompts and body["max_tokens"] == 9
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(UserError, match="not a ShareGPT file"):
        load_sharegpt_prompts(tmp_path / "bad.json")


def test_plan_synthetic_tags_and_offsets() -> None:
    m = TemplateMaker(
        prompt_tokens=parse_dist("fixed:5", "p"), output_tokens=parse_dist("fixed:1", "o")
    )
    shots = list(plan_synthetic(parse_arrival("constant:rate=10"), 1.0, m, stream="s", start_s=2.0))
    assert [s.offset_ns for s in shots] == [2 * S + i * S // 10 for i in range(10)]
    assert {s.stream for s in shots} == {"s"}
    assert len(list(plan_synthetic(parse_arrival("constant:rate=10"), 100.0, m, count=7))) == 7


# -- amplification -----------------------------------------------------------------------------
def base_shots(offsets_s: list[float], sessions: bool = True) -> list[Shot]:
    return [
        Shot(offset_ns=round(t * S), seq=i, request=Request("POST", "/", None, [], b"{}"),
             session=f"s{i % 3}" if sessions else None)
        for i, t in enumerate(offsets_s)
    ]  # fmt: skip


@pytest.mark.parametrize("factor", [1.0, 2.0, 2.5, 3.0, 1.3])
def test_amplify_counts(factor: float) -> None:
    n = 4000
    out = list(amplify(base_shots([i * 0.01 for i in range(n)]), factor, seed=1))
    assert len(out) == pytest.approx(n * factor, rel=0.03 if factor % 1 else 0)
    copies = [s.copy for s in out]
    assert copies.count(0) == n  # every original is there once
    if factor == int(factor):
        assert len(out) == n * int(factor)


def test_amplified_copies_keep_order_tags_and_separate_sessions() -> None:
    base = base_shots([0, 1, 2, 3])
    out = list(amplify(base, 3, seed=2))
    offs = [s.offset_ns for s in out]
    assert offs == sorted(offs)
    assert [s.seq for s in out] == list(range(len(out)))
    for s in out:
        if s.copy:
            assert (
                s.session is not None
                and s.session.endswith(f"~c{s.copy}")
                and s.extra["copy"] == s.copy
            )
    # spread: copies fall inside their request's gap, not on the same instant
    for s in out:
        if s.copy:
            orig = next(b for b in base if b.request is s.request)
            assert orig.offset_ns <= s.offset_ns <= orig.offset_ns + S
    assert len({s.offset_ns for s in out}) > 4


def test_burst_mode_stacks_copies_and_salt_gives_each_copy_a_nonce() -> None:
    out = list(amplify(base_shots([0, 1]), 3, mode="burst", salt=True, seed=0))
    assert [s.offset_ns for s in out] == [0, 0, 0, S, S, S]
    salts = [s.extra.get("salt") for s in out if s.copy]
    assert all(salts) and len(set(salts)) == len(salts)


def test_amplified_arrival_curve_keeps_the_recordings_shape() -> None:
    """Per-second counts of the amplified plan correlate with the original's."""
    rng = random.Random(4)
    # A bursty recording: rate goes 5 -> 50 -> 10 -> 80 -> 5 req/s in 10 s blocks.
    t, offs = 0.0, []
    for rate in [5, 50, 10, 80, 5, 40, 5]:
        end = t + 10
        while True:
            t += rng.expovariate(rate)
            if t >= end:
                t = end
                break
            offs.append(t)
    base = base_shots(offs, sessions=False)
    amp = list(amplify(base, 2.5, seed=5))
    orig_counts = np.bincount([int(s.offset_ns // S) for s in base], minlength=70)
    amp_counts = np.bincount([int(s.offset_ns // S) for s in amp], minlength=70)[:70]
    r = np.corrcoef(orig_counts[:70], amp_counts)[0, 1]
    assert r > 0.95, r
    assert amp_counts.sum() / orig_counts.sum() == pytest.approx(2.5, rel=0.05)


def test_rewriter_applies_per_copy_user_and_salt() -> None:
    from replay.rewrite import Rewriter
    from replay.targets import parse_target

    body = json.dumps(
        {
            "model": "m",
            "user": "alice",
            "messages": [
                {"role": "system", "content": "sys"},
                {"role": "user", "content": "hello"},
            ],
        }
    ).encode()
    rw = Rewriter(parse_target("http://127.0.0.1:1"))
    p = rw.prepare(
        Request("POST", "/v1/chat/completions", None, [], body), {"copy": 2, "salt": "beef0001"}
    )
    obj: Any = json.loads(p.body)
    assert obj["user"] == "alice~c2"
    assert (
        obj["messages"][1]["content"] == "[beef0001] hello"
        and obj["messages"][0]["content"] == "sys"
    )
