"""Scenarios: streams merged on one timeline (pure, no clock), TOML mistakes pointing at
file:line:key, and a replay stream plus a Poisson stream against the real mock gateway."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from captures.errors import UserError
from captures.testing import T0_NS, chat_record, write_capture
from replay.api import run_scenario
from replay.mock.threaded import running_gateway
from replay.plan import Shot
from replay.planrows import Request
from replay.rewrite import Rewriter
from replay.settings import RunSettings, StreamPlan
from replay.targets import parse_target
from replay.timeline import merged
from replay.workload.scenario import ScenarioError, load

S = 1_000_000_000
LOADTAPE = [sys.executable, "-c", "import cli; cli.main()"]
REQ = Request("GET", "/", None, (), b"")


def stream(name: str, offsets_ms: list[int]) -> StreamPlan:
    shots = [
        Shot(offset_ns=o * 1_000_000, seq=i, request=REQ, stream=name)
        for i, o in enumerate(offsets_ms)
    ]
    return StreamPlan(name, shots, Rewriter(parse_target("http://127.0.0.1:9")))


def test_merge_orders_by_offset_keeps_stream_order_on_ties_and_renumbers() -> None:
    a = stream("a", [0, 10, 10, 30])
    b = stream("b", [5, 10, 40])
    c = stream("c", [])
    out = list(merged([a, b, c]))
    assert [(s.stream, s.offset_ns // 1_000_000) for s in out] == [
        ("a", 0),
        ("b", 5),
        ("a", 10),
        ("a", 10),
        ("b", 10),
        ("a", 30),
        ("b", 40),
    ]
    assert [s.seq for s in out] == list(range(7))


def spaced(n: int, rate: float, **kw: object) -> list[dict[str, object]]:
    return [chat_record(start_ns=T0_NS + round(i * S / rate), **kw) for i in range(n)]  # type: ignore[arg-type]


def write(path: Path, text: str) -> Path:
    path.write_text(textwrap.dedent(text).lstrip())
    return path


def test_load_builds_each_stream_with_its_start_speed_and_tags(tmp_path: Path) -> None:
    write_capture(tmp_path / "cap", spaced(20, 10.0, model="small", max_tokens=2))  # 0 .. 1.9 s
    sc = write(
        tmp_path / "s.toml",
        """
        target = "http://127.0.0.1:9"
        seed = 7

        [[stream]]
        name = "prod"
        kind = "replay"
        capture = "cap"
        speed = 2
        amplify = 2
        amplify_mode = "burst"

        [[stream]]
        name = "steady"
        kind = "synthetic"
        arrival = { process = "constant", rate = 20 }
        request = { maker = "sample", capture = "cap", filter = { model = "small" } }
        start = "0.5s"
        duration = "1s"
        """,
    )
    streams = load(sc)
    assert [s.name for s in streams] == ["prod", "steady"]
    out = list(merged(streams))
    prod = [s for s in out if s.stream == "prod"]
    steady = [s for s in out if s.stream == "steady"]
    assert len(prod) == 40 and sorted({s.copy for s in prod}) == [0, 1]
    assert [s.offset_ns for s in prod if s.copy == 0] == [round(i * S / 10 / 2) for i in range(20)]
    assert len(steady) == 20
    assert [s.offset_ns for s in steady] == [S // 2 + i * S // 20 for i in range(20)]
    offs = [s.offset_ns for s in out]
    assert offs == sorted(offs) and [s.seq for s in out] == list(range(60))


def test_replay_and_poisson_streams_against_the_mock_gateway_are_separable(tmp_path: Path) -> None:
    write_capture(tmp_path / "cap", spaced(40, 20.0, model="small", max_tokens=3, stream=True))
    sc = write(
        tmp_path / "mix.toml",
        """
        [[stream]]
        name = "prod"
        kind = "replay"
        capture = "cap"

        [[stream]]
        name = "stress"
        kind = "synthetic"
        arrival = { process = "poisson", rate = 40 }
        request = { maker = "template", models = "small:0.5,large:0.5", prompt_tokens = "uniform:5:20", output_tokens = "fixed:4" }
        start = "0.5s"
        duration = "1.5s"
        expect_status = "503"
        """,
    )
    with running_gateway(default_profile="instant") as gw:
        r = run_scenario(
            sc, RunSettings(out=str(tmp_path / "run")), target=gw.url, install_signals=False
        )
    t = pq.read_table(tmp_path / "run" / "results.parquet").to_pydict()
    streams = np.array(t["stream"])
    assert (streams == "prod").sum() == 40
    n_stress = int((streams == "stress").sum())
    assert 30 <= n_stress <= 95, n_stress  # Poisson(60): far outside 30..95 is a bug
    intended = np.array(t["intended_ns"], dtype=np.int64)
    run0 = intended.min()
    stress_off = (intended[streams == "stress"] - run0) / S
    assert stress_off.min() >= 0.5 and stress_off.max() < 2.0
    assert set(np.array(t["model"])[streams == "stress"]) == {"small", "large"}
    assert all(o == "ok" for o in t["outcome"]), set(t["outcome"])
    run = json.loads((tmp_path / "run" / "run.json").read_text())
    assert set(run["streams"]) == {"prod", "stress"}
    groups = {k[0] for k in r.metrics.hists}
    assert groups == {"prod", "stress"}


BAD = [
    (
        '[[stream]]\nkind = "replay"\nspeed = 2\n',
        1,
        "stream[0].capture: a replay stream needs capture",
    ),
    (
        '[[stream]]\nkind = "replay"\ncapture = "cap"\nsped = 2\n',
        4,
        "stream[0].sped: unknown key for a replay stream",
    ),
    (
        '[[stream]]\nkind = "replay"\ncapture = "cap"\n\n[[stream]]\nname = "s"\nkind = "synthetic"\n'
        'duration = "1s"\narrival = { process = "poisson", rate = -4 }\n',
        9,
        "stream[1].arrival.rate: must be > 0",
    ),
    (
        '[[stream]]\nkind = "synthetic"\narrival = { process = "gamma", rate = 3 }\n'
        'start = "soon"\nduration = "1s"\n',
        4,
        "stream[0].start:",
    ),
    (
        '[[stream]]\nkind = "synthetic"\narrival = { process = "wave" }\nduration = "1s"\n',
        3,
        "unknown process 'wave'",
    ),
    (
        '[[stream]]\nkind = "synthetic"\narrival = { process = "poisson", rate = 1 }\n',
        1,
        "stream[0].duration: a synthetic stream needs duration",
    ),
    ('[[stream]]\nkind = "batch"\n', 2, 'stream[0].kind: want "replay" or "synthetic"'),
    (
        '[[stream]]\nname = "a"\nkind = "replay"\ncapture = "cap"\n[[stream]]\nname = "a"\nkind = "replay"\ncapture = "cap"\n',
        6,
        "duplicate stream name",
    ),
    (
        'targt = "x"\n[[stream]]\nkind = "replay"\ncapture = "cap"\n',
        1,
        "scenario.targt: unknown key",
    ),
    (
        '[[stream]]\nkind = "synthetic"\nduration = "1s"\narrival = { process = "poisson", rate = 1 }\n'
        'request = { maker = "template", models = "small:x" }\n',
        5,
        "stream[0].request.models",
    ),
]


@pytest.mark.parametrize(("text", "line", "needle"), BAD)
def test_scenario_mistakes_name_the_file_line_and_key(
    tmp_path: Path, text: str, line: int, needle: str
) -> None:
    write_capture(tmp_path / "cap", spaced(3, 1.0))
    sc = tmp_path / "bad.toml"
    sc.write_text(text)
    with pytest.raises(ScenarioError) as ei:
        load(sc, target="http://127.0.0.1:9")
    msg = str(ei.value)
    assert msg.startswith(f"{sc}:{line}: "), msg
    assert needle in msg, msg


def test_invalid_toml_and_missing_file(tmp_path: Path) -> None:
    sc = tmp_path / "broken.toml"
    sc.write_text('[[stream]]\nkind = "replay\nx=1\n')
    with pytest.raises(ScenarioError, match=r"broken\.toml: not valid TOML: .*line 2"):
        load(sc)
    with pytest.raises(UserError, match="no such scenario file"):
        load(tmp_path / "nope.toml")


def test_cli_run_and_replay_synthetic_flag(tmp_path: Path) -> None:
    write_capture(tmp_path / "cap", spaced(10, 10.0, model="small", max_tokens=2))
    sc = write(
        tmp_path / "s.toml",
        """
        [[stream]]
        name = "r"
        kind = "replay"
        capture = "cap"
        speed = 4
        """,
    )
    with running_gateway(default_profile="instant") as gw:
        p = subprocess.run(
            [*LOADTAPE, "run", str(sc), "--target", gw.url, "--out", str(tmp_path / "run"), "-q"],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert p.returncode == 0, p.stderr
        q = subprocess.run(
            [
                *LOADTAPE,
                "replay",
                str(tmp_path / "cap"),
                "--target",
                gw.url,
                "--out",
                str(tmp_path / "run2"),
                "-q",
                "--synthetic",
                "constant:rate=20,duration=0.5s,name=extra",
            ],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert q.returncode == 0, q.stderr
    assert set(pq.read_table(tmp_path / "run" / "results.parquet")["stream"].to_pylist()) == {"r"}
    s2 = pq.read_table(tmp_path / "run2" / "results.parquet")["stream"].to_pylist()
    assert s2.count("extra") == 10 and len(s2) == 20
    bad = subprocess.run(
        [*LOADTAPE, "run", str(tmp_path / "missing.toml"), "--target", "http://127.0.0.1:9"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1, bad.stderr
    assert "no such scenario file" in bad.stderr and "Traceback" not in bad.stderr
