"""Run mitmdump with the capture addon as a child process (`loadtape capture`, the demo, tests)."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from captures.errors import CaptureError, RunFailed, UserError

ADDON = Path(__file__).with_name("capture.py")
STATUS_FILE = "capture-status.json"
PROXY_LOG = "proxy.log"
# the last line of a traceback in the proxy's log: "mitmproxy.exceptions.OptionsError: capture: ..."
_RAISED = re.compile(r"^(?:\w+\.)*\w*(?:Error|Exception): (?P<why>.+)$")


@dataclass
class CaptureConfig:
    out: Path
    upstream: str | None = None
    mode: str = "reverse"  # reverse | regular
    listen_host: str = "127.0.0.1"
    listen_port: int = 8080
    confdir: Path | None = None  # mitmproxy's CA lives here (default ~/.mitmproxy)
    options: dict[str, str] = field(default_factory=dict)  # extra --set capture_*=...
    extra_args: list[str] = field(default_factory=list)  # passed to mitmdump as they are
    # several proxies writing one directory each need a name: their status and log files
    instance: str = ""

    @property
    def status_file(self) -> Path:
        return self.out / (f"capture-status-{self.instance}.json" if self.instance else STATUS_FILE)

    @property
    def log_file(self) -> Path:
        return self.out / (f"proxy-{self.instance}.log" if self.instance else PROXY_LOG)

    def argv(self, mitmdump: str) -> list[str]:
        if self.mode == "reverse":
            if not self.upstream:
                raise UserError("--upstream is required in reverse mode")
            mode = f"reverse:{self.upstream}"
        elif self.mode == "regular":
            mode = "regular"
        else:
            raise UserError(f"--mode {self.mode!r}: want reverse or regular")
        args = [
            mitmdump,
            "-s",
            str(ADDON),
            "--mode",
            mode,
            "--listen-host",
            self.listen_host,
            "--listen-port",
            str(self.listen_port),
            "--set",
            f"capture_dir={self.out}",
            "--set",
            f"capture_status_file={self.status_file}",
            "--set",
            "flow_detail=0",  # mitmdump would print every URL, query secrets included
            "--set",
            "termlog_verbosity=warn",
            # Connect upstream per request, not per client connection: a refused upstream then
            # becomes a recorded flow (502 to the client) instead of a silently dropped client.
            "--set",
            "connection_strategy=lazy",
        ]
        if self.confdir is not None:
            args += ["--set", f"confdir={self.confdir}"]
        for k, v in self.options.items():
            args += ["--set", f"{k}={v}"]
        return args + self.extra_args


def find_mitmdump() -> str:
    beside = Path(sys.executable).with_name("mitmdump")
    if beside.exists():
        return str(beside)
    found = shutil.which("mitmdump")
    if not found:
        raise UserError(
            "mitmdump not found: install loadtape's dependencies (pip install loadtape)"
        )
    return found


class CaptureProcess:
    """A running capture proxy. `start()` returns once it accepts connections."""

    def __init__(self, config: CaptureConfig) -> None:
        self.config = config
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = config.listen_port
        self.log_path = config.log_file
        self.status_path = config.status_file

    def start(self, timeout: float = 30.0) -> CaptureProcess:
        cfg = self.config
        try:
            cfg.out.mkdir(mode=0o700, parents=True, exist_ok=True)
            os.chmod(cfg.out, 0o700)
        except OSError as exc:
            raise CaptureError(
                f"{cfg.out}: cannot create the capture directory ({exc.strerror or exc})"
            ) from None
        self.status_path.unlink(missing_ok=True)
        if cfg.listen_port:
            _check_free(cfg.listen_host, cfg.listen_port)
        argv = cfg.argv(find_mitmdump())
        fd = os.open(self.log_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            self.proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=fd,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # signals come from us, so shutdown is always clean
                preexec_fn=_die_with_parent,
            )
        finally:
            os.close(fd)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise UserError(f"the capture proxy exited at start: {self.last_log_line()}")
            status = self.status()
            if status and status.get("fatal"):
                self.kill(group=True)
                raise UserError(f"the capture could not start: {status['fatal']}")
            port = self._listening_port()
            if port and self._accepts(port):
                self.port = port
                return self
            time.sleep(0.05)
        self.kill()
        raise UserError(
            f"the capture proxy did not start within {timeout:.0f} s: {self.last_log_line()}"
        )

    def _listening_port(self) -> int | None:
        """The port the proxy listens on, once its addon says it does (a connection alone
        could reach another process holding the port)."""
        status = self.status()
        if status and status.get("listen"):
            return int(status["listen"][0][1])
        return None

    def _accepts(self, port: int) -> bool:
        try:
            with socket.create_connection((self.config.listen_host, port), timeout=0.2):
                return True
        except OSError:
            return False

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def last_log_line(self) -> str:
        """The log line that says why the proxy failed: the first specific error, not
        mitmproxy's closing "Error logged during startup, exiting..."."""
        lines = [ln.strip() for ln in self.log_text().splitlines() if ln.strip()]
        for ln in lines:  # an addon's traceback: its last line has the cause, not "error in script"
            m = _RAISED.match(ln)
            if m:
                return m["why"][:300]
        generic = ("error logged during startup", "exiting...")
        errors = [
            ln
            for ln in lines
            if ("error" in ln.lower() or "errno" in ln.lower() or "failed" in ln.lower())
            and not any(g in ln.lower() for g in generic)
        ]
        if errors:
            return errors[0][:300]
        return (lines or ["(no output)"])[-1][:300]

    @property
    def url(self) -> str:
        return f"http://{self.config.listen_host}:{self.port}"

    def ca_cert(self) -> Path:
        return (self.config.confdir or Path("~/.mitmproxy")).expanduser() / "mitmproxy-ca-cert.pem"

    def status(self) -> dict[str, Any] | None:
        try:
            data = json.loads(self.status_path.read_text())
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) else None

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout: float = 120.0) -> dict[str, Any] | None:
        """Graceful stop (SIGINT: the addon flushes and compacts); returns the final status."""
        if self.proc is None:
            return self.status()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        return self.status()

    def kill(self, *, group: bool = False) -> None:
        """kill -9 of the proxy, or with group=True of the proxy and its capture worker."""
        if self.proc is None:
            return
        if group:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)  # its own session: pgid == pid
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()

    def __enter__(self) -> CaptureProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _die_with_parent() -> None:
    """In the child, before exec: SIGTERM when `loadtape capture` dies, even by kill -9, so no
    proxy keeps forwarding unrecorded traffic as an orphan (its worker then finishes, on EOF).
    Linux only; elsewhere the proxy outlives a killed parent."""
    if sys.platform != "linux":
        return
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    if os.getppid() == 1:  # the parent died before prctl took hold
        os.kill(os.getpid(), signal.SIGTERM)


def _check_free(host: str, port: int) -> None:
    """Bad input, said at once, when another process listens on --listen already."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as exc:
            raise UserError(
                f"--listen {host}:{port}: cannot listen there ({exc.strerror or exc}); "
                "another process has the port, or pick another one"
            ) from None


def describe_status(s: dict[str, Any] | None) -> str:
    if not s:
        return "starting..."
    line = (
        f"{s['records']} records ({s['streamed']} streamed, {s['errors']} errors), "
        f"{s['dropped']} dropped, {s['lost']} lost, {s['inflight']} in flight, "
        f"{s['bytes'] / 1e6:.1f} MB"
    )
    if s.get("write_error"):
        line += f"  CANNOT WRITE: {s['write_error']}"
    return line


def run_until_signal(
    proc: CaptureProcess, *, live: bool = True, duration: float | None = None
) -> dict[str, Any] | None:
    """Show a live count until Ctrl-C, SIGTERM, `duration` or the proxy's exit; then stop it
    cleanly and return its final status."""
    from rich.console import Console
    from rich.live import Live

    stop = {"now": False}

    def handler(signum: int, frame: object) -> None:
        stop["now"] = True

    old = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    view = (
        Live(console=Console(stderr=True), refresh_per_second=4, transient=True) if live else None
    )
    t0 = time.monotonic()
    try:
        if view is not None:
            view.start()
        while not stop["now"] and proc.alive():
            if duration is not None and time.monotonic() - t0 >= duration:
                break
            if view is not None:
                view.update(f"capturing  {describe_status(proc.status())}")
            time.sleep(0.25)
    finally:
        if view is not None:
            view.stop()
        for sig, h in old.items():
            signal.signal(sig, h)
    exited_early = not proc.alive()
    final = proc.stop()
    if final and final.get("fatal"):
        raise RunFailed(f"the capture stopped recording: {final['fatal']}")
    if exited_early and not (final and final.get("done")):
        raise RunFailed(f"the capture proxy stopped: {proc.last_log_line()}")
    return final
