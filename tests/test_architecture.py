"""The import contracts (pyproject.toml, checked by lint-imports in scripts/test) catch what they
are there for: a copy of the tree with a deliberate violation fails them, the tree as it is does
not."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LINT = Path(sys.executable).with_name("lint-imports")


def _copy_tree(dest: Path) -> Path:
    for pkg in ("replay", "captures", "proxy_addons"):
        shutil.copytree(ROOT / pkg, dest / pkg, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", dest / "pyproject.toml")
    shutil.copy(ROOT / "cli.py", dest / "cli.py")
    return dest


def _lint(where: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(where)}
    return subprocess.run(
        [str(LINT), "--config", str(where / "pyproject.toml"), "--no-cache"],
        cwd=where,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.skipif(not LINT.exists(), reason="import-linter not installed (pip install -e .[dev])")
def test_a_copy_of_the_tree_keeps_the_contracts(tmp_path: Path) -> None:
    r = _lint(_copy_tree(tmp_path))
    assert r.returncode == 0, r.stdout[-2000:]
    assert "0 broken" in r.stdout


@pytest.mark.skipif(not LINT.exists(), reason="import-linter not installed (pip install -e .[dev])")
@pytest.mark.parametrize(
    ("module", "line", "contract"),
    [
        # the capture format reaching up into the engine
        ("captures/reader.py", "from replay.plan import Shot", "over the capture format"),
        # one backend leaning on the other
        ("replay/scale/workers.py", "from replay.scale import ray_backend", "replay.scale"),
        # the runner reaching up to the backends that run it
        ("replay/runner.py", "from replay.scale import shards", "replay: decisions"),
        # the mock gateway borrowing the engine's parsing
        ("replay/mock/gateway.py", "from replay.send import outcome", "shares no code"),
        # a library module importing the command line
        ("replay/api.py", "import cli", "Nothing below the command line"),
    ],
)
def test_a_deliberate_violation_breaks_a_contract(
    tmp_path: Path, module: str, line: str, contract: str
) -> None:
    tree = _copy_tree(tmp_path)
    with (tree / module).open("a") as fh:
        fh.write(f"\n{line}  # deliberate violation\n")
    r = _lint(tree)
    assert r.returncode == 1, r.stdout[-2000:]
    broken = " ".join(r.stdout.partition("Broken contracts")[2].split())
    assert contract in broken, r.stdout[-2000:]
    assert f"{module[:-3].replace('/', '.')} ->" in broken  # the offending import is named
