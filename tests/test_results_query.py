"""Results a query away: a real replay against the mock gateway, its results.parquet read by
DuckDB (the queries docs/reporting.md shows), and `report --format csv`."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
from pathlib import Path

import duckdb
import pytest

from captures.testing import T0_NS, chat_record, write_capture
from replay.mock.threaded import running_gateway

CLI = [sys.executable, "-c", "import cli; cli.main()"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("q")
    recs = [
        chat_record(
            start_ns=T0_NS + i * 20_000_000,
            model=("small", "large")[i % 2],
            stream=bool(i % 3),
            completion_tokens=6,
        )
        for i in range(120)
    ]
    cap = write_capture(tmp / "cap", recs)
    out = tmp / "run"
    with running_gateway() as gw:
        p = subprocess.run(
            [*CLI, "replay", str(cap), "--target", gw.url, "--speed", "4", "--out", str(out)],
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert p.returncode == 0, p.stderr
    return out


def _report(run_dir: Path, fmt: str, by: str = "model") -> str:
    p = subprocess.run(
        [*CLI, "report", str(run_dir), "--format", fmt, "--by", by],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert p.returncode == 0, p.stderr
    return p.stdout


def test_duckdb_reads_milliseconds_and_timestamps(run_dir: Path) -> None:
    db = duckdb.connect()
    path = str(run_dir / "results.parquet")
    cols = {r[0]: r[1] for r in db.execute(f"DESCRIBE SELECT * FROM '{path}'").fetchall()}
    assert cols["latency_ms"] == "DOUBLE" and cols["ttft_ms"] == "DOUBLE"
    tz = cols["sent_at"]  # TIMESTAMPTZ_NS (DuckDB 2), TIMESTAMP WITH TIME ZONE (1.x)
    assert tz.startswith("TIMESTAMP") and ("TZ" in tz or "TIME ZONE" in tz), tz
    # each ms column is its ns integers' difference, and the instants are the ns integers
    bad = db.execute(
        f"""SELECT count(*) FROM '{path}' WHERE
            abs(latency_ms - (end_ns - intended_ns) / 1e6) > 1e-6
            OR abs(service_ms - (end_ns - sent_ns) / 1e6) > 1e-6
            OR (ttft_ms IS NULL) <> (first_token_ns IS NULL)
            OR epoch_us(sent_at) <> sent_ns // 1000"""
    ).fetchone()
    assert bad == (0,)
    # a common question: latency and TTFT by model, matching the report within histogram
    # precision (the median and the max: ranks of other percentiles differ between the two)
    rows = db.execute(
        f"""SELECT model, count(*) AS n,
                   max(latency_ms) AS top,
                   quantile_disc(ttft_ms, 0.5) AS ttft_p50
            FROM '{path}' GROUP BY model ORDER BY model"""
    ).fetchall()
    report = json.loads(_report(run_dir, "json"))
    by_model = {g["key"]["model"]: g for g in report["groups"]}
    assert [r[0] for r in rows] == sorted(by_model)
    for model, n, top, ttft_p50 in rows:
        g = by_model[model]
        assert n == g["count"]
        assert top == pytest.approx(g["metrics"]["latency"]["max"], rel=0.01, abs=0.01)
        assert ttft_p50 == pytest.approx(g["metrics"]["ttft"]["p50"], rel=0.01, abs=0.01)


def test_duckdb_answers_the_questions_in_the_docs(run_dir: Path) -> None:
    """Every ```sql block of docs/reporting.md runs on a real results file."""
    doc = (Path(__file__).parent.parent / "docs" / "reporting.md").read_text()
    blocks = [b.split("```", 1)[0] for b in doc.split("```sql\n")[1:]]
    assert len(blocks) >= 4
    db = duckdb.connect()
    for sql in blocks:
        q = sql.replace("'runs/monday-5x/results.parquet'", f"'{run_dir / 'results.parquet'}'")
        assert db.execute(q).fetchall() is not None, sql


def test_csv_report_has_every_group_and_figure(run_dir: Path) -> None:
    report = json.loads(_report(run_dir, "json"))
    rows = list(csv.DictReader(io.StringIO(_report(run_dir, "csv"))))
    assert [r["group"] for r in rows] == [*(g["label"] for g in report["groups"]), "all"]
    for r, g in zip(rows, [*report["groups"], report["total"]], strict=True):
        assert int(r["count"]) == g["count"]
        assert float(r["latency_p99_ms"]) == g["metrics"]["latency"]["p99"]
        assert float(r["latency_p999_ms"]) == g["metrics"]["latency"]["p99.9"]
        assert int(r["ttft_count"]) == g["metrics"]["ttft"]["count"]


def test_a_scenario_run_keeps_each_streams_target(tmp_path: Path) -> None:
    """The target column was empty for a scenario and `report --by target` showed only all."""
    with running_gateway() as a, running_gateway() as b:
        sc = tmp_path / "s.toml"
        sc.write_text(
            f'target = "{a.url}"\n'
            '[[stream]]\nname = "one"\nkind = "synthetic"\n'
            'arrival = { process = "constant", rate = 20 }\nrequest = { maker = "template" }\n'
            'duration = "1s"\n'
            '[[stream]]\nname = "two"\nkind = "synthetic"\n'
            f'target = "{b.url}"\n'
            'arrival = { process = "constant", rate = 20 }\nrequest = { maker = "template" }\n'
            'duration = "1s"\n'
        )
        out = tmp_path / "o"
        p = subprocess.run(
            [*CLI, "run", str(sc), "--out", str(out)], capture_output=True, text=True, timeout=120
        )
    assert p.returncode == 0, p.stderr
    got = duckdb.sql(
        f"SELECT stream, target, count(*) FROM '{out / 'results.parquet'}' GROUP BY ALL ORDER BY 1"
    ).fetchall()
    assert got == [("one", a.url, 20), ("two", b.url, 20)], got
    by_target = json.loads(_report(out, "json", "target"))
    assert sorted(g["key"]["target"] for g in by_target["groups"]) == sorted([a.url, b.url])
    # over-time series stay named by stream (a URL is not a series name)
    assert sorted(by_target["over_time"]) == ["one", "two"]


def test_junk_in_a_capture_is_not_replayed_unless_asked(tmp_path: Path) -> None:
    """An HTTP/2 preface recorded as `PRI *` and client aborts were replayed as traffic."""
    from captures.testing import http_record

    recs = [http_record(start_ns=T0_NS + i * 1_000_000, path=f"/echo/{i}") for i in range(6)]
    recs.append(http_record(start_ns=T0_NS + 7_000_000, method="PRI", path="*", status=None,
                            error_kind="protocol"))  # fmt: skip
    recs += [
        http_record(start_ns=T0_NS + (8 + i) * 1_000_000, status=None, error_kind="client_abort")
        for i in range(2)
    ]
    cap = write_capture(tmp_path / "cap", recs)
    with running_gateway() as gw:
        for extra, sent in (([], 6), (["--include-junk"], 9)):
            out = tmp_path / f"o{len(extra)}"
            p = subprocess.run(
                [*CLI, "replay", str(cap), "--target", gw.url, "--speed", "10", "--out",
                 str(out), *extra],
                capture_output=True, text=True, timeout=120,
            )  # fmt: skip
            assert p.returncode == 0, p.stderr
            counts = json.loads((out / "run.json").read_text())["counts"]
            assert counts["sent"] == sent, counts
            if not extra:
                assert counts["skipped"] == {
                    "HTTP/2 connection preface (PRI *)": 1,
                    "client aborted it in the recording (--include-junk replays it)": 2,
                }, counts
                assert "skipped: HTTP/2 connection preface" in p.stdout, p.stdout
