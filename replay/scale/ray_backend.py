"""`--ray auto|ADDRESS`: the same shards as `--workers`, as Ray actors spread over a cluster.

- The driver fixes a start instant in wall-clock time a few seconds ahead. Before the run it
  asks each actor for its wall clock a few times and estimates the actor's offset from the
  driver's (the reply that came back fastest bounds the error by half its round trip); each
  actor gets the start instant in its own clock and maps it onto its monotonic clock. The run
  warns when an offset's uncertainty could matter at the run's rate.
- Actors read the capture at the same path when their node has it (the same capture id), and
  otherwise from a copy the driver ships through Ray's object store (capture parts are
  compact: about 6 MB per 50,000 requests), so no shared filesystem is needed. Scenario runs
  need their captures at the same paths on every node.
- Each actor writes its result parts in a scratch directory and returns them (Parquet and
  encoded histograms); the driver writes them into the results directory, merges exactly
  (`Metrics.add`) and writes run.json: the report is the same whichever backend ran.

Install with `pip install 'loadtape[ray]'`.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from captures.errors import UserError
from captures.reader import Capture
from replay.measure.results import ShardedObserver
from replay.runner import run_streams
from replay.settings import Progress, RunSettings, RunSummary

from .shards import Job, clean_out_dir, merge, shard_settings, sum_progress

START_LEAD_S = 5.0
CLOCK_PROBES = 5


def _ray(loopback: bool) -> Any:
    if loopback:
        # Ray resolves 127.0.0.1 to the machine's network address unless clustering is off
        # (read when ray is imported): a loopback run must stay on loopback.
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    try:
        import ray
    except ImportError:
        raise UserError(
            "--ray needs Ray: pip install 'loadtape[ray]' (or run on local --workers)"
        ) from None
    return ray


def _capture_files(path: str) -> dict[str, bytes]:
    root = Path(path)
    return {
        str(f.relative_to(root)): f.read_bytes()
        for f in sorted(root.rglob("*"))
        if f.is_file() and not f.name.startswith(".lock")
    }


class ShardRunner:
    """The actor's body (a plain class: `ray.remote` wraps it on the driver)."""

    def __init__(self) -> None:
        self._stop = threading.Event()
        self._progress: Progress | None = None
        self._observer: ShardedObserver | None = None

    def clock(self) -> int:
        return time.time_ns()

    def progress(self) -> tuple[Progress | None, Any]:
        """The latest progress, and the observer's state when the driver watches the run."""
        obs = self._observer
        return self._progress, obs.shard_state() if obs is not None else None

    def stop(self) -> None:
        self._stop.set()

    def run(
        self,
        job: Job,
        settings: RunSettings,
        index: int,
        count: int,
        capture_id: str | None,
        capture_files: dict[str, bytes] | None,
        observer_type: Callable[[], ShardedObserver] | None = None,
    ) -> tuple[dict[str, Any] | None, dict[str, Any] | None, str | None, dict[str, bytes]]:
        self._observer = observer_type() if observer_type is not None else None
        scratch = Path(tempfile.mkdtemp(prefix=f"loadtape-ray-{index}-"))
        try:
            if job.kind == "replay" and capture_files is not None:
                job = Job("replay", replace(job.spec, capture=self._capture(job.spec.capture,
                                                                            capture_id,
                                                                            capture_files,
                                                                            scratch)))  # fmt: skip
            streams, info = job.build()
            mine = shard_settings(settings, index, count, out=str(scratch / "out"))

            def note(p: Progress) -> None:
                self._progress = p

            r = run_streams(
                streams,
                mine,
                run_info=info,
                on_progress=note,
                install_signals=False,
                should_stop=self._stop.is_set,
                observer=self._observer,
            )
            files = {f.name: f.read_bytes() for f in (scratch / "out").iterdir() if f.is_file()}
            return r.run, asdict(r.dispatch), None, files
        except UserError as exc:
            return None, None, str(exc), {}
        except Exception as exc:
            return None, None, f"{type(exc).__name__}: {exc}", {}
        finally:
            shutil.rmtree(scratch, ignore_errors=True)

    @staticmethod
    def _capture(path: str, capture_id: str | None, files: dict[str, bytes], scratch: Path) -> str:
        with contextlib.suppress(Exception):
            if Path(path).is_dir() and Capture(path).capture_id == capture_id:
                return path  # this node has it
        local = scratch / "capture"
        for rel, data in files.items():
            f = local / rel
            f.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            f.write_bytes(data)
            f.chmod(0o600)
        return str(local)


def clock_offsets(actors: list[Any], ray: Any) -> list[tuple[float, float]]:
    """Per actor: (offset of its wall clock from the driver's, uncertainty), in ms."""
    out = []
    for a in actors:
        best: tuple[float, float] | None = None
        for _ in range(CLOCK_PROBES):
            t0 = time.time_ns()
            remote = ray.get(a.clock.remote())
            t1 = time.time_ns()
            est = (remote - (t0 + t1) / 2) / 1e6, (t1 - t0) / 2e6
            if best is None or est[1] < best[1]:
                best = est
        assert best is not None
        out.append(best)
    return out


def skew_warnings(offsets: list[tuple[float, float]], rate: float | None) -> list[str]:
    """Warn when the start instant's uncertainty on a node is a real share of the gap between
    requests at the run's rate (or over 5 ms at any rate)."""
    warnings = []
    gap_ms = 1000 / rate if rate else None
    for k, (offset, err) in enumerate(offsets):
        if err > 5 or (gap_ms is not None and err > 0.5 * gap_ms):
            warnings.append(
                f"actor {k}: clock offset {offset:+.2f} ms known to +/-{err:.2f} ms"
                + (f", against {gap_ms:.2f} ms between requests" if gap_ms else "")
                + "; its schedule may be off by that much"
            )
    return warnings


def run_on_ray(
    job: Job,
    settings: RunSettings,
    address: str,
    *,
    on_progress: Callable[[Progress], None] | None = None,
    install_signals: bool = True,
    rate_hint: float | None = None,
    observer: ShardedObserver | None = None,
) -> RunSummary:
    """observer: the driver's, showing the whole run (each actor feeds one of its type)."""
    loopback = address == "local" or address.split(":")[0] in ("127.0.0.1", "localhost")
    ray = _ray(loopback)
    if not ray.is_initialized():
        kw: dict[str, Any] = {}
        if loopback:
            kw["_node_ip_address"] = "127.0.0.1"
        ray.init(address=None if address == "local" else address, log_to_driver=False,
                 include_dashboard=False, **kw)  # fmt: skip
    n = settings.workers
    if n <= 1:
        n = max(1, int(ray.cluster_resources().get("CPU", 1)))
    if settings.concurrency is not None:
        n = min(n, settings.concurrency)
    out_dir = clean_out_dir(settings)
    actor_cls = ray.remote(num_cpus=1, max_concurrency=3)(ShardRunner)
    actors = [actor_cls.remote() for _ in range(n)]
    offsets = clock_offsets(actors, ray)
    warnings = skew_warnings(offsets, rate_hint)
    capture_id = files_ref = None
    if job.kind == "replay":
        capture_id = Capture(job.spec.capture).capture_id
        files_ref = ray.put(_capture_files(job.spec.capture))
    start_wall = time.time_ns() + int(START_LEAD_S * 1e9)
    shared = replace(settings, out=str(out_dir))
    refs = [
        a.run.remote(
            job,
            replace(shared, start_wall_ns=start_wall + int(offsets[k][0] * 1e6)),
            k,
            n,
            capture_id,
            files_ref,
            type(observer) if observer is not None else None,
        )
        for k, a in enumerate(actors)
    ]
    interrupted = {"flag": False}
    old: dict[int, Any] = {}

    def on_signal(signum: int, _frame: Any) -> None:
        interrupted["flag"] = True
        for a in actors:
            a.stop.remote()

    if install_signals:
        for sig in (signal.SIGINT, signal.SIGTERM):
            old[sig] = signal.signal(sig, on_signal)
    latest: dict[int, Progress] = {}
    states: dict[int, Any] = {}  # each actor's latest observer state
    results: dict[int, tuple[dict[str, Any] | None, dict[str, Any] | None, str | None]] = {}
    exits: list[int | None] = [None] * n
    t0 = time.monotonic()

    def poll(k: int, timeout: float) -> None:
        with contextlib.suppress(Exception):
            p, state = ray.get(actors[k].progress.remote(), timeout=timeout)
            if p is not None:
                latest[k] = p
            if state is not None:
                states[k] = state

    try:
        pending = dict(enumerate(refs))
        while pending:
            done, _ = ray.wait(list(pending.values()), timeout=0.5, num_returns=len(pending))
            for k, ref in list(pending.items()):
                if ref in done:
                    del pending[k]
                    if on_progress is not None or observer is not None:
                        poll(k, 5.0)  # its last words: every request counted
                    try:
                        run, disp, err, files = ray.get(ref)
                    except Exception as exc:  # the actor died (node lost, killed)
                        run, disp, err, files = None, None, f"{type(exc).__name__}: {exc}", {}
                    for name, data in files.items():
                        (out_dir / name).write_bytes(data)
                    results[k] = (run, disp, err)
                    exits[k] = 0 if run is not None else 1
            if on_progress is not None or observer is not None:
                for k in pending:
                    poll(k, 0.2)
                if observer is not None and states:
                    observer.absorb(list(states.values()))
                if on_progress is not None and latest:
                    on_progress(sum_progress(latest, t0))
    finally:
        for signum, h in old.items():
            signal.signal(signum, h)
        for a in actors:
            with contextlib.suppress(Exception):
                ray.kill(a)
    errors = [e for _, _, e in results.values() if e]
    if errors and not any(r[0] for r in results.values()):
        raise UserError(errors[0])
    extra = {
        "ray": {
            "address": address,
            "clock_offsets_ms": [{"offset": o, "uncertainty": e} for o, e in offsets],
        },
        "warnings": warnings,
    }
    return merge(
        out_dir,
        replace(shared, start_wall_ns=start_wall),
        exits,
        results,
        latest,
        interrupted["flag"],
        "ray",
        extra,
    )
