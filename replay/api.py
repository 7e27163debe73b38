"""The library's front door for a run: `run_replay` (the `replay` command) and `run_scenario`
(`run`) build their streams and run them in this process, or, with `--workers N` or `--ray`, as
shards on local worker processes or Ray actors. Sweeps and the demo come through here too."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from replay.scale.ray_backend import run_on_ray
from replay.scale.shards import Job
from replay.scale.workers import run_workers
from replay.workload.replaying import ReplayOptions, build_replay
from replay.workload.scenario import load

from .measure.results import ResultObserver, ShardedObserver
from .measure.resultsdir import claim_out_dir
from .runner import run_streams
from .settings import Progress, RunSettings, RunSummary, default_out_dir


def run_replay(
    opts: ReplayOptions,
    *,
    on_progress: Callable[[Progress], None] | None = None,
    install_signals: bool = True,
    observer: ResultObserver | None = None,
) -> RunSummary:
    """`loadtape replay`: a one-stream scenario (plus `--synthetic` stress streams), sent to
    one target or, the same plan, to each of several; on `--workers N` processes."""
    settings = opts.settings()
    _claim(settings)
    if settings.sharded:
        build_replay(opts)  # bad options fail here, once, before any worker starts
        return run_sharded(
            Job("replay", opts),
            settings,
            on_progress=on_progress,
            install_signals=install_signals,
            rate_hint=opts.rate,
            observer=observer,
        )
    streams, info = build_replay(opts)
    return run_streams(
        streams,
        settings,
        run_info=info,
        on_progress=on_progress,
        install_signals=install_signals,
        observer=observer,
    )


def run_scenario(
    path: str | Path, settings: RunSettings, *, target: str | None = None, **kw: Any
) -> RunSummary:
    streams = load(path, target=target)  # checks the file before any worker starts
    _claim(settings)
    if settings.sharded:
        return run_sharded(Job("scenario", (str(path), target)), settings, **kw)
    return run_streams(streams, settings, run_info={"scenario": str(Path(path).resolve())}, **kw)


def _claim(settings: RunSettings) -> None:
    """The results directory, checked before anything is sent (and fixed in the settings, so
    every shard writes the same one)."""
    out = Path(settings.out) if settings.out else default_out_dir()
    settings.out = str(claim_out_dir(out, settings.force))


def run_sharded(
    job: Job,
    settings: RunSettings,
    *,
    on_progress: Callable[[Progress], None] | None = None,
    install_signals: bool = True,
    rate_hint: float | None = None,
    observer: ResultObserver | None = None,
) -> RunSummary:
    """A run split into shards: Ray actors with --ray, else local worker processes. An
    observer that can absorb the workers' states (ShardedObserver) shows the whole run."""
    settings.validate()
    sharded = observer if isinstance(observer, ShardedObserver) else None
    if settings.ray:
        return run_on_ray(
            job,
            settings,
            settings.ray,
            on_progress=on_progress,
            install_signals=install_signals,
            rate_hint=rate_hint,
            observer=sharded,
        )
    return run_workers(
        job, settings, on_progress=on_progress, install_signals=install_signals, observer=sharded
    )
