"""Benchmark targets on loopback: nginx (C, so the target is not what saturates), and the paced
GET captures the open-loop benches replay against it (the project root on sys.path first)."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from captures.testing import T0_NS, http_record, write_capture

NGINX_CONF = """
worker_processes {workers};
daemon off;
error_log {prefix}/error.log warn;
pid {prefix}/nginx.pid;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    keepalive_requests 1000000;
    keepalive_timeout 120s;
    client_body_temp_path {prefix}/tmp;
    server {{
        listen 127.0.0.1:{port};
        location /files/ {{
            root {prefix};
        }}
        location / {{
            default_type application/json;
            return 200 '{{"ok":true,"usage":{{"prompt_tokens":3,"completion_tokens":4}}}}';
        }}
    }}
}}
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"port {port} did not open")


def pinned(cpus: set[int] | None) -> Callable[[], None] | None:
    """A preexec_fn that pins the child to `cpus` (None: not pinned)."""
    return None if cpus is None else lambda: os.sched_setaffinity(0, cpus)


class Nginx:
    """nginx on loopback. `cpus`: the CPUs it may run on (None: any). On loopback a write wakes
    the target with a sync wakeup, and Linux then places it on the writer's CPU when the writer
    runs alone there, so the two take turns on one CPU (see docs/performance.md, bursts)."""

    def __init__(self, workers: int = 1, cpus: set[int] | None = None) -> None:
        if not shutil.which("nginx") and not Path("/usr/sbin/nginx").exists():
            raise SystemExit("benchmark: needs nginx (apt-get install nginx-light)")
        self.prefix = Path(tempfile.mkdtemp(prefix="loadtape-nginx-"))
        (self.prefix / "tmp").mkdir()
        self.port = free_port()
        conf = self.prefix / "nginx.conf"
        conf.write_text(NGINX_CONF.format(workers=workers, prefix=self.prefix, port=self.port))
        binary = shutil.which("nginx") or "/usr/sbin/nginx"
        self.proc = subprocess.Popen(
            [binary, "-c", str(conf), "-p", str(self.prefix)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            preexec_fn=pinned(cpus),
        )
        wait_port(self.port)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def put(self, name: str, size: int) -> str:
        """A file of `size` bytes that nginx serves; its path."""
        files = self.prefix / "files"
        files.mkdir(exist_ok=True)
        with open(files / name, "wb") as f:
            f.truncate(size)  # sparse: zeros, written to the socket from the page cache
        for p in (self.prefix, files, files / name):  # nginx's workers run as nobody under root
            p.chmod(0o755)
        return f"/files/{name}"

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGQUIT)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        shutil.rmtree(self.prefix, ignore_errors=True)

    def __enter__(self) -> Nginx:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def paced_gets(directory: Path, rate: int, n: int, path: str) -> Path:
    """A capture of `n` GETs of `path`, evenly spaced at `rate` a second."""
    return write_capture(
        directory,
        [http_record(start_ns=T0_NS + round(i * 1e9 / rate), path=path) for i in range(n)],
    )
