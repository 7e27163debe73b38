"""Fail loudly, lose nothing: each failure a user or an adversarial tester met, through the real
commands (a real mitmdump, real Parquet files, real servers on loopback), with its exit code and
its one-line cause."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import psutil
import pyarrow.parquet as pq
import pytest
from clierrors import one_line

from captures import journal
from captures.reader import Capture
from captures.schema import COLUMNS, FORMAT_VERSION
from captures.testing import T0_NS, chat_record, write_capture
from replay.mock.config import Faults
from replay.mock.threaded import running_gateway

CLI = [sys.executable, "-c", "import cli; cli.main()"]
URL_RE = re.compile(r"http://127\.0\.0\.1:\d+")


def _env(tmp: Path) -> dict[str, str]:
    """A private HOME: the redaction key and mitmproxy's CA go there, not to the user's."""
    return {**os.environ, "HOME": str(tmp / "home")}


def _run(tmp: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, *args], capture_output=True, text=True, timeout=timeout, env=_env(tmp)
    )


def _capture(tmp: Path, n: int = 20, **kw: object) -> Path:
    recs = [chat_record(start_ns=T0_NS + i * 10_000_000, **kw) for i in range(n)]  # type: ignore[arg-type]
    return write_capture(tmp / "cap", recs)


# -- capture ---------------------------------------------------------------------------------------
class LiveCapture:
    """`loadtape capture` as a user runs it, in its own process."""

    def __init__(self, tmp: Path, upstream: str, out: Path, listen: str = "127.0.0.1:0") -> None:
        self.proc = subprocess.Popen(
            [*CLI, "capture", "--upstream", upstream, "--listen", listen, "--out", str(out)],
            stderr=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=_env(tmp),
        )
        assert self.proc.stderr is not None
        first = self.proc.stderr.readline()
        m = URL_RE.search(first)
        if m is None:
            self.proc.kill()
            _, rest = self.proc.communicate(timeout=30)
            raise AssertionError(f"no listening line: {first!r} {rest}")
        self.url = m.group(0)

    def get(self, n: int) -> None:
        for i in range(n):
            with urllib.request.urlopen(f"{self.url}/echo/x?size=50&i={i}", timeout=10) as r:
                r.read()

    def stop(self, sig: int = signal.SIGINT) -> tuple[int, str]:
        self.proc.send_signal(sig)
        return self.wait()

    def wait(self) -> tuple[int, str]:
        _, err = self.proc.communicate(timeout=60)
        return self.proc.returncode, err


@pytest.fixture()
def gateway() -> Iterator[str]:
    with running_gateway() as gw:
        yield gw.url


def test_capture_on_a_port_in_use_exits_2_with_the_cause_at_once(
    tmp_path: Path, gateway: str
) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        t0 = time.monotonic()
        p = _run(
            tmp_path,
            *("capture", "--upstream", gateway, "--listen", f"127.0.0.1:{port}"),
            *("--out", str(tmp_path / "cap")),
            timeout=60,
        )
        took = time.monotonic() - t0
    line = one_line(p, 2)
    assert str(port) in line and "in use" in line, line
    assert "listening" not in p.stderr, p.stderr  # it never claimed to be up
    assert took < 20, took  # within seconds (a bound against hanging, not a speed figure)


def test_capture_with_a_bad_addon_option_exits_2_with_the_option_s_own_message(
    tmp_path: Path, gateway: str
) -> None:
    """Not mitmproxy's "error in script ...": the addon's message, which names the value."""
    p = _run(
        tmp_path,
        *("capture", "--upstream", gateway, "--listen", "127.0.0.1:0"),
        *("--out", str(tmp_path / "cap"), "--", "--set", "capture_hold_headers=soon"),
        timeout=60,
    )
    line = one_line(p, 2)
    assert "bad duration 'soon'" in line, line


def _seed_damaged_journal(cap: Path) -> list[Path]:
    """What kills at the wrong moment leave: a zero-byte segment, one cut inside its header
    frame, and a temporary part of a compaction cut short."""
    (cap / "journal").mkdir(parents=True, mode=0o700)
    (cap / "parts").mkdir(mode=0o700)
    empty = cap / "journal" / "wdead0000001-000000.seg"
    empty.write_bytes(b"")
    header = journal.encode_frame(
        journal.segment_header(
            format_version=FORMAT_VERSION,
            writer_id="wcut00000001",
            capture_id="c",
            segment=0,
            columns=COLUMNS,
            redaction={},
        )
    )
    cut = cap / "journal" / "wcut00000001-000000.seg"
    cut.write_bytes(header[: len(header) // 2])
    stale = cap / "parts" / ".part-wdead0000001-000000.parquet.0a1b2c.tmp"
    stale.write_bytes(b"PAR1 half a part")
    return [empty, cut, stale]


def test_capture_recovers_empty_and_header_cut_segments_and_stale_parts(
    tmp_path: Path, gateway: str
) -> None:
    cap = tmp_path / "cap"
    left = _seed_damaged_journal(cap)
    live = LiveCapture(tmp_path, gateway, cap)
    live.get(12)
    time.sleep(0.5)
    code, err = live.stop()
    assert code == 0, err
    assert "12 records" in err, err
    assert err.count("recovered as empty") == 2, err
    assert "removed a temporary part" in err, err
    assert not any(p.exists() for p in left)
    assert len(Capture(cap).records()) == 12
    p = _run(tmp_path, "inspect", str(cap))
    assert p.returncode == 0, p.stderr


def test_inspect_reads_a_directory_with_an_empty_segment(tmp_path: Path) -> None:
    cap = write_capture(tmp_path / "cap", [chat_record(start_ns=T0_NS + i) for i in range(3)])
    (cap / "journal").mkdir(exist_ok=True)
    (cap / "journal" / "wdead0000002-000000.seg").write_bytes(b"")
    p = _run(tmp_path, "inspect", str(cap), "--json")
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)["rows"] == 3


def test_kill_9_of_capture_takes_the_proxy_down_and_keeps_the_records(
    tmp_path: Path, gateway: str
) -> None:
    cap = tmp_path / "cap"
    live = LiveCapture(tmp_path, gateway, cap)
    live.get(10)
    time.sleep(0.5)  # past the flush interval: the records are in the journal
    kids = psutil.Process(live.proc.pid).children(recursive=True)
    assert kids, "no mitmdump under loadtape capture"
    live.proc.kill()
    live.wait()
    _gone, alive = psutil.wait_procs(kids, timeout=15)
    for k in alive:
        k.kill()
    assert not alive, [k.cmdline()[:3] for k in alive]
    with pytest.raises(OSError):
        urllib.request.urlopen(f"{live.url}/echo/x", timeout=2)
    assert len(Capture(cap).records()) == 10


def test_a_worker_that_dies_and_cannot_be_replaced_stops_the_capture_with_the_cause(
    tmp_path: Path, gateway: str
) -> None:
    cap = tmp_path / "cap"
    live = LiveCapture(tmp_path, gateway, cap)
    live.get(5)
    time.sleep(0.5)
    kids = psutil.Process(live.proc.pid).children(recursive=True)
    worker = [k for k in kids if "proxy_addons.worker" in " ".join(k.cmdline())]
    assert len(worker) == 1, [k.cmdline()[:3] for k in kids]
    # the proxy comes first for the CPU (capture_worker_nice)
    assert worker[0].nice() - psutil.Process(live.proc.pid).nice() == 10
    # the journal directory turns into a file: the in-proxy fallback cannot open a writer
    (cap / "journal").rename(tmp_path / "journal-moved")
    (cap / "journal").write_text("not a directory")
    worker[0].kill()
    for _ in range(20):  # the proxy notices on its next write to the worker
        try:
            live.get(1)
        except OSError:
            break
        time.sleep(0.1)
    code, err = live.wait()
    assert code == 1, err
    line = [ln for ln in err.splitlines() if ln.startswith("loadtape: error:")]
    assert len(line) == 1 and "worker exited" in line[0] and "could not start" in line[0], err
    # what was recorded before is still there
    (cap / "journal").unlink()
    (tmp_path / "journal-moved").rename(cap / "journal")
    assert len(Capture(cap).records()) == 5


# -- damaged Parquet -------------------------------------------------------------------------------
def _flip(path: Path, at: int, n: int) -> None:
    data = bytearray(path.read_bytes())
    data[at : at + n] = bytes(b ^ 0xFF for b in data[at : at + n])
    path.write_bytes(bytes(data))


def _flip_middle(path: Path, n: int = 64) -> None:
    _flip(path, path.stat().st_size // 2, n)


def _flip_column(path: Path, column: str, n: int = 8) -> None:
    """Flip bytes at the end of one column's chunk, as a bad disk does: that is page data (a
    page header's statistics, which no checksum covers and no read uses, come before it)."""
    rg = pq.ParquetFile(path).metadata.row_group(0)
    chunk = next(
        rg.column(j) for j in range(rg.num_columns) if rg.column(j).path_in_schema == column
    )
    start = chunk.dictionary_page_offset or chunk.data_page_offset
    _flip(path, start + chunk.total_compressed_size - n - 4, n)


def test_a_part_with_flipped_bytes_is_an_error_naming_it_or_skipped_when_asked(
    tmp_path: Path,
) -> None:
    cap = write_capture(
        tmp_path / "cap", [chat_record(start_ns=T0_NS + i, prompt="x" * 200) for i in range(200)]
    )
    part = next(cap.glob("parts/part-*.parquet"))
    good = write_capture(tmp_path / "other", [chat_record(start_ns=T0_NS + 10**9)])
    other = next(good.glob("parts/part-*.parquet"))
    os.link(other, cap / "parts" / other.name)
    _flip_middle(part)
    line = one_line(_run(tmp_path, "inspect", str(cap), "--verify"), 2)
    assert part.name in line, line
    out = tmp_path / "o"
    rp = _run(tmp_path, "replay", str(cap), "--target", "http://127.0.0.1:1", "--out", str(out))
    assert part.name in one_line(rp, 2)
    p = _run(tmp_path, "inspect", str(cap), "--verify", "--skip-damaged", "--json")
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)["rows"] == 1
    assert part.name in p.stdout + p.stderr, p.stderr  # skipped, and said so
    assert part.exists()  # never deleted


def test_damaged_results_are_an_error_naming_the_file(tmp_path: Path, gateway: str) -> None:
    cap = _capture(tmp_path, 50, prompt="y" * 300)
    out = tmp_path / "o"
    p = _run(tmp_path, "replay", str(cap), "--target", gateway, "--speed", "50", "--out", str(out))
    assert p.returncode == 0, p.stderr
    _flip_column(out / "results.parquet", "end_ns")
    line = one_line(_run(tmp_path, "compare", str(out), str(out)), 2)
    assert "results.parquet" in line, line


# -- replay ----------------------------------------------------------------------------------------
def test_a_replay_where_every_request_failed_exits_1_with_the_cause(tmp_path: Path) -> None:
    cap = _capture(tmp_path)
    out = tmp_path / "o"
    p = _run(
        tmp_path, "replay", str(cap), "--target", "http://127.0.0.1:1", "--speed", "20",
        "--out", str(out),
    )  # fmt: skip
    line = one_line(p, 1)
    assert "every request failed" in line and "connect" in line and "x20" in line, line
    assert "is the target up" in line, line
    assert (out / "results.parquet").exists()  # the evidence is kept


BUGGY_PUMP = """
import itertools, replay.dispatchstats as D
calls, count = itertools.count(), D.DispatchStats.count
def buggy(self, *a):
    if next(calls) == 5:
        raise RuntimeError("injected bug")
    return count(self, *a)
D.DispatchStats.count = buggy
import cli; cli.main()
"""


def test_a_bug_in_the_runs_loop_ends_it_with_exit_3_and_keeps_what_was_recorded(
    tmp_path: Path, gateway: str
) -> None:
    """An exception in one of the run's callbacks broke the pump's chain, and the run waited
    forever. It ends the run: exit 3, one line, the results so far on disk."""
    cap = _capture(tmp_path, 40)
    out = tmp_path / "o"
    p = subprocess.run(
        [sys.executable, "-c", BUGGY_PUMP, "replay", str(cap), "--target", gateway,
         "--out", str(out)],
        capture_output=True, text=True, timeout=60, env=_env(tmp_path),
    )  # fmt: skip
    line = one_line(p, 3)
    assert "internal error: RuntimeError: injected bug" in line, line
    t = pq.read_table(out / "results.parquet", columns=["error_kind"])
    # the run stopped (the plan's rest never went); what had been sent is kept, answered or
    # abandoned in flight (the compiled sender counts a send when its result comes back: by
    # the 6th, the next ~200 ms of shots had gone)
    assert 0 < t.num_rows < 40, t.num_rows
    assert set(t["error_kind"].to_pylist()) <= {None, "interrupted"}


def test_a_target_answering_401_to_everything_names_the_redacted_key(tmp_path: Path) -> None:
    cap = _capture(tmp_path)
    with running_gateway(faults=Faults(error_rate=1.0, error_status=401)) as gw:
        p = _run(tmp_path, "replay", str(cap), "--target", gw.url, "--speed", "20",
                 "--out", str(tmp_path / "o"))  # fmt: skip
    line = one_line(p, 1)
    assert "http_401" in line and "redacted" in line and "--header" in line, line


def test_some_successes_are_not_a_failed_run(tmp_path: Path) -> None:
    cap = _capture(tmp_path, 40)
    with running_gateway(faults=Faults(error_rate=0.5, error_status=500)) as gw:
        p = _run(tmp_path, "replay", str(cap), "--target", gw.url, "--speed", "20",
                 "--out", str(tmp_path / "o"))  # fmt: skip
    assert p.returncode == 0, p.stderr
    assert "every request failed" not in p.stderr


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--from", "10h"], ["window", "36000s", "spans"]),
        (["--filter-model", "nosuch"], ["nosuch"]),
    ],
)
def test_a_plan_that_matches_nothing_exits_2_naming_why(
    tmp_path: Path, args: list[str], words: list[str]
) -> None:
    cap = _capture(tmp_path)
    p = _run(tmp_path, "replay", str(cap), "--target", "http://127.0.0.1:1", *args,
             "--out", str(tmp_path / "o"))  # fmt: skip
    line = one_line(p, 2)
    assert all(w in line for w in words), line


def test_out_into_an_earlier_run_refuses_unless_forced(tmp_path: Path, gateway: str) -> None:
    cap = _capture(tmp_path, 5)
    out = tmp_path / "o"
    base = ["replay", str(cap), "--target", gateway, "--speed", "50", "--out", str(out)]
    assert _run(tmp_path, *base).returncode == 0
    first = (out / "run.json").read_bytes()
    line = one_line(_run(tmp_path, *base), 2)
    assert "--force" in line and str(out) in line, line
    assert (out / "run.json").read_bytes() == first  # untouched
    p = _run(tmp_path, *base, "--force")
    assert p.returncode == 0, p.stderr
    assert (out / "run.json").read_bytes() != first
    afile = tmp_path / "afile"
    afile.write_text("keep me")
    line = one_line(_run(tmp_path, "replay", str(cap), "--target", gateway, "--out", str(afile)), 2)
    assert str(afile) in line and afile.read_text() == "keep me", line


# -- input that is not what it claims ------------------------------------------------------------
def _write(path: Path, data: bytes | str) -> Path:
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    return path


def test_a_manifest_that_is_not_utf8_is_bad_input(tmp_path: Path) -> None:
    cap = _capture(tmp_path, 3)
    _write(cap / "capture.json", b'{"format_version": 1, "name": "\xff\xfe"}')
    assert "capture.json" in one_line(_run(tmp_path, "inspect", str(cap)), 2)


@pytest.mark.parametrize(
    ("fmt", "name", "data"),
    [
        ("har", "deep.har", "[" * 100_000),
        ("mooncake", "mc.jsonl", '{"timestamp": 1e309, "input_length": 5, "output_length": 5}\n'),
        ("mooncake", "mc.jsonl", '{"timestamp": 1, "input_length": 1000000000, "output_length": 5}\n'),
        ("mooncake", "mc.jsonl", '{"timestamp": 1, "input_length": -5, "output_length": 5}\n'),
        ("azure", "az.csv", "TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:17:03.97,2000000000,5\n"),
        ("azure", "az.csv", "TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:17:03.97,20,-5\n"),
        ("burstgpt", "b.csv", "Timestamp,Model,Request tokens,Response tokens,Total tokens,Log Type\n"
                              "inf,ChatGPT,10,10,20,Conversation log\n"),
    ],
)  # fmt: skip
def test_imports_of_absurd_values_are_bad_input(
    tmp_path: Path, fmt: str, name: str, data: str
) -> None:
    src = _write(tmp_path / name, data)
    p = _run(tmp_path, "import", fmt, str(src), "--out", str(tmp_path / "imp"))
    line = one_line(p, 2)
    assert name in line, line
    assert not (tmp_path / "imp" / "parts").exists() or not any(
        (tmp_path / "imp" / "parts").glob("*.parquet")
    )


@pytest.mark.parametrize(
    "toml",
    [
        "a = " + "[" * 5000 + "]" * 5000 + "\n",
        'target = "http://127.0.0.1:1"\n[[stream]]\nname = "a"\nkind = "replay"\n'
        'capture = "cap"\nspeed = inf\n',
        'target = "http://127.0.0.1:1"\n[[stream]]\nname = "a"\nkind = "replay"\n'
        'capture = "cap"\nspeed = -2\n',
    ],
)
def test_scenarios_that_cannot_run_are_bad_input(tmp_path: Path, toml: str) -> None:
    _capture(tmp_path, 3)
    sc = _write(tmp_path / "s.toml", toml)
    one_line(_run(tmp_path, "run", str(sc), "--out", str(tmp_path / "o")), 2)
    assert not (tmp_path / "o" / "results.parquet").exists()


@pytest.mark.parametrize(
    "gate",
    ["p99<١٠٠ms", "p99<infms", "p99<-5ms", "error_rate<150%", "p99<1e400ms", "p99<<5ms"],
)
def test_slo_gates_that_mean_nothing_are_bad_input(tmp_path: Path, gate: str) -> None:
    cap = _capture(tmp_path, 3)
    p = _run(tmp_path, "replay", str(cap), "--target", "http://127.0.0.1:1", "--slo", gate,
             "--out", str(tmp_path / "o"))  # fmt: skip
    one_line(p, 2)
    assert not (tmp_path / "o").exists()  # refused before any traffic


# -- signals ---------------------------------------------------------------------------------------
def _synthetic_run(
    tmp: Path, target: str, process: str, rate: int, duration: str, out: Path
) -> subprocess.Popen[str]:
    """`loadtape run` of one template stream, in its own process."""
    sc = _write(
        tmp / "s.toml",
        f'target = "{target}"\n[[stream]]\nname = "t"\nkind = "synthetic"\n'
        f'arrival = {{ process = "{process}", rate = {rate} }}\n'
        f'request = {{ maker = "template" }}\nduration = "{duration}"\n',
    )
    return subprocess.Popen(
        [*CLI, "run", str(sc), "--out", str(out)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_env(tmp),
    )


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_long_run_stops_promptly_on_a_signal_and_keeps_its_results(
    tmp_path: Path, sig: int
) -> None:
    out = tmp_path / "o"
    with running_gateway() as gw:
        proc = _synthetic_run(tmp_path, gw.url, "poisson", 1000, "100000h", out)
        # the run plans ahead before it sends, and a clean CI machine starts slowly: stop it
        # once it is sending (a stop before that is test_a_stop_outside_a_run_...)
        deadline = time.monotonic() + 30
        while gw.gateway.stats.requests < 50 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert proc.poll() is None, proc.communicate()
        assert gw.gateway.stats.requests >= 50, "the run never sent"
        t0 = time.monotonic()
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=60)
    took = time.monotonic() - t0
    assert proc.returncode == 130, err
    assert "Traceback" not in err, err
    assert took < 15, took  # promptly: a bound against hanging, not a speed figure
    run = json.loads((out / "run.json").read_text())
    assert run["counts"]["sent"] > 0 and run["counts"]["unsent"]["stopped"] > 0
    assert (out / "results.parquet").exists()


def test_a_stop_outside_a_run_says_so_inone_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Ctrl-C while the plan is planned ahead (or a capture opened): before the run installs
    its own handlers. Exit 130 and one line, as a stop during the run exits."""
    import cli
    from replay import api

    def interrupted(*a: object, **k: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(api, "run_scenario", interrupted)
    sc = _write(
        tmp_path / "s.toml",
        'target = "http://127.0.0.1:9"\n[[stream]]\nname = "t"\nkind = "synthetic"\n'
        'arrival = { process = "constant", rate = 5 }\nrequest = { maker = "template" }\n'
        'duration = "1s"\n',
    )
    monkeypatch.setattr("sys.argv", ["loadtape", "run", str(sc), "--out", str(tmp_path / "o")])
    with pytest.raises(SystemExit) as exc:
        cli.main()
    assert exc.value.code == 130
    assert capsys.readouterr().err.strip().splitlines() == ["loadtape: interrupted"]


def test_requests_abandoned_at_a_stop_are_interrupted_not_the_targets_fault(
    tmp_path: Path,
) -> None:
    with running_gateway(slowdown=40) as gw:  # answers take seconds: some are in flight
        out = tmp_path / "o"
        proc = _synthetic_run(tmp_path, gw.url, "constant", 50, "1h", out)
        deadline = time.monotonic() + 30  # the run plans ahead before it starts: wait for it
        while gw.gateway.stats.in_service < 5 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert gw.gateway.stats.in_service >= 5, "the run never had requests in flight"
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    kinds = pq.read_table(out / "results.parquet", columns=["error_kind"]).column(0).to_pylist()
    assert kinds.count("interrupted") > 0, kinds
    assert "reset" not in kinds, kinds


@pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("setpriv") is None, reason="needs root and setpriv"
)
@pytest.mark.parametrize("command", ["inspect", "replay"])
def test_a_path_the_user_may_not_use_is_bad_input_not_a_bug(command: str) -> None:
    """Someone else's capture (its files 0600), or an --out in someone else's directory (0700):
    one line naming what may not be used, exit 2, not exit 3."""
    shared = Path(tempfile.mkdtemp(prefix="loadtape-perm-"))
    try:
        cap = write_capture(shared / "cap", [chat_record(start_ns=T0_NS)])
        for f in [shared, *shared.rglob("*")]:
            f.chmod(0o755 if f.is_dir() else 0o600)
        if command == "replay":
            shared.chmod(0o700)  # the directory it is in: it cannot even be looked at
        extra = ["--target", "http://127.0.0.1:9", "--out", str(shared / "run")]
        p = subprocess.run(
            ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", *CLI, command,
             str(cap), *(extra if command == "replay" else [])],
            capture_output=True, text=True, timeout=60, cwd=Path(__file__).resolve().parents[1],
        )  # fmt: skip
    finally:
        shutil.rmtree(shared, ignore_errors=True)
    assert "permission denied" in one_line(p, 2).lower()
    assert "internal error" not in p.stderr
