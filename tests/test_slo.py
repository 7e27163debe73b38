"""SLO gates: the expression parser (good and bad input, by table) and their verdicts."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from captures.errors import UserError
from replay.decide.slo import Gate, evaluate, parse_gate
from replay.measure.resultsdir import Results
from replay.mock.testing import Shape, make_results
from replay.mock.threaded import running_gateway


@pytest.mark.parametrize(
    ("expr", "scope", "metric", "stat", "op", "threshold"),
    [
        ("latency.p95<500ms", (), "latency", "p95", "<", 500.0),
        ("ttft.p99<2s", (), "ttft", "p99", "<", 2000.0),
        ("itl.p99.9 <= 250us", (), "itl", "p99.9", "<=", 0.25),
        ("latency.max<3", (), "latency", "max", "<", 3.0),  # no unit: ms
        ("tpot.mean<40ms", (), "tpot", "mean", "<", 40.0),
        ("error_rate<1%", (), "error_rate", None, "<", 0.01),
        ("error_rate<0.01", (), "error_rate", None, "<", 0.01),
        ("success_rate>=99.5%", (), "success_rate", None, ">=", 0.995),
        ("goodput>=50/s", (), "goodput", None, ">=", 50.0),
        ("throughput > 10", (), "throughput", None, ">", 10.0),
        ("tokens_per_s>=1000/s", (), "tokens_per_s", None, ">=", 1000.0),
        ("stream=chat:latency.p99<1s", (("stream", "chat"),), "latency", "p99", "<", 1000.0),
        (
            "stream=chat,model=llama3:8b:ttft.p99<2s",
            (("stream", "chat"), ("model", "llama3:8b")),
            "ttft",
            "p99",
            "<",
            2000.0,
        ),
        ("target=local:count>=100", (("target", "local"),), "count", None, ">=", 100.0),
    ],
)
def test_parse(
    expr: str,
    scope: tuple[tuple[str, str], ...],
    metric: str,
    stat: str | None,
    op: str,
    threshold: float,
) -> None:
    g = parse_gate(expr)
    assert (g.scope, g.metric, g.stat, g.op) == (scope, metric, stat, op)
    assert g.threshold == pytest.approx(threshold)


@pytest.mark.parametrize(
    ("expr", "message"),
    [
        ("", "want e.g."),
        ("latency.p95", "missing comparison (<, <=, >, >=) (at column 12)"),
        ("latency.p95<", "missing number after the operator (at column 13)"),
        ("latency.p95=500ms", "operator '=' not allowed"),
        ("latency.p95==500ms", "operator '==' not allowed"),
        ("latency<500ms", "latency needs a statistic, e.g. latency.p99"),
        ("latency.p95<500xs", "unknown time unit 'xs' (want us, ms, s) (at column 16)"),
        ("latency.q95<500ms", "unknown statistic 'q95' (want pN, max, mean, min) (at column 9)"),
        ("latency.p0<5ms", "unknown statistic 'p0'"),
        ("latency.p101<5ms", "unknown statistic 'p101'"),
        ("latncy.p95<500ms", "unknown metric 'latncy' (want one of latency,"),
        ("error_rate<1ms", "unknown unit 'ms' for error_rate"),
        ("error_rate.p99<1%", "error_rate takes no statistic"),
        ("goodput>=50/m", "unknown unit '/m' for goodput"),
        ("count>=5/s", "unknown unit '/s' for count"),
        (
            "colour=red:latency.p99<1s",
            "unknown scope 'colour' (want stream, target, api, endpoint, model, status) (at column 1)",
        ),
        ("stream:latency.p99<1s", "scope 'stream' is not dim=value"),
        ("stream=a,=b:latency.p99<1s", "scope '=b' is not dim=value (at column 10)"),
    ],
)
def test_bad_expressions_point_at_the_bad_part(expr: str, message: str) -> None:
    with pytest.raises(UserError) as e:
        parse_gate(expr)
    text = str(e.value)
    assert text.startswith(f"--slo {expr!r}: ") and message in text, text
    assert "\n" not in text


@given(st.text(max_size=40))
def test_any_text_parses_or_gives_a_user_error(expr: str) -> None:
    try:
        g = parse_gate(expr)
    except UserError as e:
        assert str(e).startswith("--slo ") and "\n" not in str(e).replace(expr, "")
    else:
        assert isinstance(g, Gate)


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> Results:
    d = make_results(
        tmp_path_factory.mktemp("slo") / "r",
        n=200,
        shapes=(Shape(stream="chat", error_share=0.05), Shape(stream="batch", rate=10.0)),
        seed=3,
    )
    return Results.open(d)


def test_verdicts_use_the_measured_values(results: Results) -> None:
    from replay.decide.report import build

    rep = build(results, "stream")
    chat = next(g for g in rep["groups"] if g["key"]["stream"] == "chat")
    p99 = chat["metrics"]["latency"]["p99"]
    gates = [
        parse_gate(f"stream=chat:latency.p99<{p99 + 0.01}ms"),  # just above: pass
        parse_gate(f"stream=chat:latency.p99<{p99 - 0.01}ms"),  # just below: fail
        parse_gate(f"stream=chat:latency.p99<={p99}ms"),
        parse_gate(f"stream=chat:error_rate<={chat['error_rate'] * 100}%"),
        parse_gate("stream=batch:error_rate<0.1%"),
        parse_gate("stream=nosuch:latency.p99<1h"[:-2] + "1s"),
        parse_gate("stream=batch,endpoint=/v1/embeddings:count>=0"),
        parse_gate("count>=400"),
        parse_gate("count>400"),
    ]
    rows = evaluate(gates, results.metrics)
    assert [r["pass"] for r in rows] == [True, False, True, True, True, False, False, True, False]
    assert rows[0]["measured"] == p99
    assert rows[5]["measured_text"] == "no requests" and rows[6]["measured_text"] == "no requests"


def test_replay_exit_codes_follow_the_gates(tmp_path: Path) -> None:
    from captures.testing import T0_NS, chat_record, write_capture

    cap = write_capture(
        tmp_path / "cap",
        [chat_record(start_ns=T0_NS + i * 20_000_000, max_tokens=2, model="x") for i in range(10)],
    )
    cli = [sys.executable, "-c", "import cli; cli.main()"]
    with running_gateway(default_profile="instant") as gw:
        base = ["replay", str(cap), "--target", gw.url, "--speed", "5", "-q"]
        ok = subprocess.run(
            [
                *cli,
                *base,
                "--out",
                str(tmp_path / "a"),
                "--slo",
                "latency.p99<30s",
                "--slo",
                "error_rate<1%",
            ],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert ok.returncode == 0, ok.stderr
        assert "PASS  latency.p99<30s" in ok.stdout and "2 passed, 0 failed" in ok.stdout
        bad = subprocess.run(
            [*cli, *base, "--out", str(tmp_path / "b"), "--slo", "latency.p99<1us"],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert bad.returncode == 1 and "FAIL  latency.p99<1us" in bad.stdout
        assert (tmp_path / "b" / "results.parquet").exists()  # a failed gate keeps the results
        typo = subprocess.run(
            [*cli, *base, "--out", str(tmp_path / "c"), "--slo", "latency.p99<1sec"],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert typo.returncode == 2 and "unknown time unit 'sec'" in typo.stderr
        assert not (tmp_path / "c").exists()  # parsed before any traffic
        assert gw.stats.requests == 20
