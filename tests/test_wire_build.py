"""The compiled sender built two ways from its sources, with the flags pyproject.toml gives and
warnings as errors: as pip builds it, and as it builds against kernel headers without io_uring
(or older than 5.4: LOADTAPE_NO_URING stands in for them). Each build then runs a whole replay
(16 GETs due at one instant, then one alone) in a process of its own: the one without io_uring
writes every head by send(), and says so in run.json (`batched` 0)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import tomllib
from pathlib import Path

import pytest
from wired import needs_wire

from captures.testing import T0_NS, http_record, write_capture
from replay.mock.threaded import running_gateway

ROOT = Path(__file__).resolve().parents[1]
MS = 1_000_000

# Loads the build given first as replay.send._wire (before anything imports the one installed),
# then runs the CLI with the rest of the arguments.
RUN_WITH = """
import importlib.util, sys
spec = importlib.util.spec_from_file_location("replay.send._wire", sys.argv[1])
mod = importlib.util.module_from_spec(spec)
spec.loader.exec_module(mod)
sys.modules["replay.send._wire"] = mod
import replay.send
replay.send._wire = mod
import cli
sys.argv = ["loadtape", *sys.argv[2:]]
cli.main()
"""


def build(out: Path, *defines: str) -> Path:
    """The extension compiled as pyproject.toml says, plus `defines` and -Werror."""
    ext = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["ext-modules"][
        0
    ]
    cc = (sysconfig.get_config_var("CC") or "cc").split()
    if shutil.which(cc[0]) is None:
        pytest.skip(f"no C compiler ({cc[0]})")
    so = out / f"_wire{sysconfig.get_config_var('EXT_SUFFIX')}"
    argv = [
        *cc,
        "-shared",
        "-fPIC",
        *ext["extra-compile-args"],
        "-Werror",
        *(f"-D{d}" for d in defines),
        f"-I{sysconfig.get_paths()['include']}",
        *(str(ROOT / s) for s in ext["sources"]),
        "-o",
        str(so),
        "-lpthread",
    ]
    p = subprocess.run(argv, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    return so


@pytest.mark.parametrize("headers", ["with io_uring", "without io_uring"])
def test_the_sender_builds_without_warnings_and_replays_a_burst(
    headers: str, tmp_path: Path
) -> None:
    needs_wire()  # where pip could not build it, this machine has no compiler for it either
    so = build(tmp_path, *(["LOADTAPE_NO_URING"] if headers == "without io_uring" else []))
    records = [http_record(start_ns=T0_NS, path=f"/echo/{i}") for i in range(16)]
    records.append(http_record(start_ns=T0_NS + 50 * MS, path="/echo/last"))
    cap = write_capture(tmp_path / "cap", records)
    out = tmp_path / "run"
    env = {k: v for k, v in os.environ.items() if k != "LOADTAPE_WIRE_URING"}
    argv = [sys.executable, "-c", RUN_WITH, str(so), "replay", str(cap), "--out", str(out), "-q"]
    with running_gateway(default_profile="instant") as gw:
        p = subprocess.run(
            [*argv, "--target", gw.url],
            capture_output=True,
            text=True,
            timeout=120,
            env=env,
            cwd=ROOT,
        )
    assert p.returncode == 0, p.stderr[-2000:]
    doc = json.loads((out / "run.json").read_text())
    assert doc["client"] == "wire" and doc["counts"]["ok"] == 17
    batched = doc["connections"]["batched"]
    if headers == "without io_uring":
        assert batched == 0
    elif os.environ.get("LOADTAPE_REQUIRE_WIRE"):  # CI's kernel has io_uring
        assert batched == 16
    else:
        assert batched in (0, 16)  # 0 where this kernel refuses io_uring
