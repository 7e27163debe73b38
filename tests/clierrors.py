"""How a command that refuses says so: the exit code, no traceback, one `loadtape: error:` line."""

from __future__ import annotations

import subprocess


def one_line(p: subprocess.CompletedProcess[str], code: int) -> str:
    """The command exited with `code` and said why in one `loadtape: error:` line (returned)."""
    assert p.returncode == code, (p.returncode, p.stdout[-2000:], p.stderr[-2000:])
    assert "Traceback" not in p.stderr, p.stderr
    lines = [ln for ln in p.stderr.splitlines() if ln.startswith("loadtape: error:")]
    assert len(lines) == 1, p.stderr
    return lines[0]
