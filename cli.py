"""loadtape command line: parses arguments and wires the library stages together, nothing more.

Options that several commands share are declared once, in groups: how a run sends (`replay`,
`run`, `sweep`), what of a capture is replayed and how it is shaped (`replay`, `sweep`), and SLO
gates (`replay`, `run`, `report`). A command takes the groups it needs, less what it sets itself.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, NoReturn, cast

import click

from captures.errors import UserError
from captures.schema import LOADTAPE_VERSION
from captures.store import seal_private

Decorator = Callable[[Any], Any]
PATH = click.Path(path_type=str)
FORMATS = click.Choice(["text", "json", "markdown", "html"])
REPORT_FORMATS = click.Choice(["text", "json", "markdown", "html", "csv"])


def fail(message: str, code: int = 2) -> NoReturn:
    click.echo(f"loadtape: error: {message}", err=True)
    sys.exit(code)


# -- option groups, each declared once -------------------------------------------------------------
def _o(*decls: str, **kw: Any) -> tuple[str, Decorator]:
    """An option and its parameter name (what `skip` names)."""
    name = click.Option(list(decls), **kw).name
    assert name is not None
    return name, click.option(*decls, **kw)


SEND = [  # how a run sends: replay, run, sweep
    _o("--out", type=PATH, help="Results directory (default runs/<time>)."),
    _o("--force", is_flag=True, help="Replace the results of an earlier run in --out."),
    _o(
        "--sessions",
        type=click.Choice(["none", "ordered"]),
        default="none",
        help="ordered: a session's requests in recorded order, each after the last finished.",
    ),
    _o(
        "--history",
        type=click.Choice(["recorded", "live"]),
        default="recorded",
        help="live: each earlier assistant turn in a conversation's history is what the target "
        "answered (needs --sessions ordered).",
    ),
    _o("--concurrency", type=int, default=None, help="Closed loop with N workers."),
    _o(
        "--requests",
        type=int,
        default=None,
        help="Stop after N requests (a replay loops the capture as needed).",
    ),
    _o("--max-in-flight", default=1000, help="Open-loop in-flight bound."),
    _o("--timeout", default="60s", help="Per-request timeout."),
    _o(
        "--send-slack",
        default="0",
        metavar="DUR",
        help="Let a shot go up to this late (e.g. 250us) so that one wakeup sends it with the "
        "shots due just after it: less CPU per request, lag up to this much (0: each shot at "
        "its instant).",
    ),
    _o(
        "--rt-priority",
        type=int,
        default=0,
        metavar="N",
        help="Send from a real-time thread (SCHED_FIFO at N, 1-99; Linux, root or "
        "CAP_SYS_NICE): the target and other work on this machine cannot take its CPU while "
        "it sends (0: normal scheduling).",
    ),
    _o(
        "--warm-up/--no-warm-up",
        default=True,
        help="Open loop: open the connections for the shots due in the first millisecond "
        "before the start (at most 64), so that a burst at the start does not wait for "
        "connects; --no-warm-up: every connection is opened by the shot that needs it.",
    ),
    _o(
        "--client",
        type=click.Choice(["auto", "wire", "fast", "aiohttp"]),
        default="auto",
        help="The sender: wire (compiled: a C thread times the sends; open loop, plain HTTP, "
        "no session state), fast (Python, llhttp), aiohttp; auto: wire where it can serve "
        "the run, else fast.",
    ),
    _o("--insecure", is_flag=True, help="Do not verify the target's TLS certificate."),
    _o("--quiet", "-q", is_flag=True, help="No live line."),
    _o(
        "--workers",
        default="1",
        metavar="N|auto",
        help="Local worker processes (auto: one per core); sessions stay on one worker.",
    ),
    _o(
        "--ray",
        default=None,
        metavar="auto|ADDRESS",
        help="Run the shards as Ray actors on a cluster (pip install 'loadtape[ray]'); "
        "--workers sets how many (default: the cluster's CPUs).",
    ),
]
CAPTURE = [  # what of a capture is replayed, and how it is shaped: replay, sweep
    _o(
        "--skip-damaged",
        is_flag=True,
        help="Leave out a damaged capture part (from where the damage is) and say so, instead of "
        "stopping.",
    ),
    _o(
        "--include-junk",
        is_flag=True,
        help="Replay what is left out by default: requests the client aborted in the recording "
        "and HTTP/2 prefaces recorded as requests (PRI *).",
    ),
    _o(
        "--target",
        required=True,
        multiple=True,
        help="Base URL to send to (never the captured host). Repeat as NAME=URL to send the same "
        "plan to several targets; scope --header/--model-map with NAME:.",
    ),
    _o("--speed", default=1.0, help="Time scale: 5 = five times faster."),
    _o(
        "--rate",
        type=float,
        default=None,
        help="Send the recorded requests in order at this constant rate (req/s) instead of their "
        "recorded timing.",
    ),
    _o("--from", "from_", default=None, metavar="DUR", help="Start this far into the capture."),
    _o("--to", default=None, metavar="DUR", help="End this far into the capture."),
    _o("--duration", default=None, metavar="DUR", help="Window length from --from."),
    _o("--loop", "loops", default=1, help="Replay the window N times."),
    _o(
        "--header",
        "headers",
        multiple=True,
        metavar="'NAME: VALUE'",
        help="Set a header (${VAR} from the environment); 'NAME:' removes it.",
    ),
    _o("--model-map", multiple=True, metavar="OLD=NEW", help="Rewrite the body's model."),
    _o(
        "--expect-status",
        default="",
        show_default=False,
        metavar="LIST",
        help="Statuses that are expected shedding, not failures (e.g. 503,429).",
    ),
    _o("--filter-method", multiple=True, help="Only these methods."),
    _o("--filter-path", multiple=True, help="Only these path globs."),
    _o("--filter-model", multiple=True, help="Only these models."),
    _o("--filter-status", default=None, help="Only these recorded statuses (200,5xx,error)."),
    _o("--keep-host", is_flag=True, help="Send the recorded Host header."),
    _o(
        "--amplify",
        default=1.0,
        help="Send each request F times (F >= 1; 2.5: twice, half of them thrice).",
    ),
    _o(
        "--amplify-mode",
        type=click.Choice(["spread", "burst"]),
        default="spread",
        help="Copies spread within the gap to the next request, or together.",
    ),
    _o(
        "--salt-prompts",
        is_flag=True,
        help="Prefix each copy's prompt with a nonce (defeats prompt/prefix caches).",
    ),
    _o(
        "--synthetic",
        multiple=True,
        metavar="SPEC",
        help="Add a stress stream sampling the capture, e.g. 'poisson:rate=40,start=30s'.",
    ),
    _o("--seed", default=0, help="Seed for every random draw."),
]
WATCH = [  # the run's figures while it goes: replay, run, sweep
    _o(
        "--metrics-listen",
        default=None,
        metavar="HOST:PORT",
        help="Serve Prometheus metrics at http://HOST:PORT/metrics during the run (a bare PORT "
        "binds 127.0.0.1).",
    ),
    _o(
        "--live",
        default=None,
        metavar="HOST:PORT",
        help="Serve a live page of the run at http://HOST:PORT/ (with /metrics beside it).",
    ),
    _o(
        "--metrics-allow-remote",
        is_flag=True,
        help="Let --metrics-listen bind a non-loopback address (the metrics name targets).",
    ),
    _o(
        "--metrics-linger",
        default="0s",
        metavar="DUR",
        help="Keep serving this long after the run, for Prometheus's last scrape.",
    ),
]
GATES = [  # SLO gates on the results: replay, run, report
    _o(
        "--slo",
        multiple=True,
        metavar="GATE",
        help="A gate on the results, e.g. 'latency.p95<500ms', 'stream=chat:error_rate<1%'; "
        "exit 1 if one fails.",
    ),
    _o(
        "--by",
        default=None,
        metavar="DIMS",
        help="Group by some of stream,target,endpoint,model,status.",
    ),
]


def options(*groups: list[tuple[str, Decorator]], skip: Iterable[str] = ()) -> Decorator:
    """Apply option groups (in order) to a command, less the options it sets itself."""
    left_out = set(skip)
    chosen = [o for g in groups for name, o in g if name not in left_out]

    def deco(f: Any) -> Any:
        for o in reversed(chosen):
            f = o(f)
        return f

    return deco


# -- what the groups' values become ----------------------------------------------------------------
def _duration(value: str | None, flag: str) -> float | None:
    from captures.units import parse_duration

    if value is None:
        return None
    try:
        return parse_duration(value)
    except ValueError as exc:
        raise UserError(f"{flag}: {exc}") from None


def _percent(text: str | None, flag: str) -> float | None:
    if text is None:
        return None
    t = text.strip()
    try:
        return float(t[:-1]) / 100 if t.endswith("%") else float(t)
    except ValueError:
        fail(f"{flag} {text!r}: want a percentage such as 5%")


def _workers(value: str) -> int:
    if value.strip().lower() == "auto":
        return os.cpu_count() or 1
    try:
        n = int(value)
    except ValueError:
        fail(f"--workers {value!r}: want a number or auto")
    if n < 1:
        fail("--workers must be >= 1")
    return n


def send_settings(opts: dict[str, Any]) -> dict[str, Any]:
    """The SEND group as RunSettings fields."""
    timeout = _duration(opts["timeout"], "--timeout")
    assert timeout is not None
    slack = _duration(opts["send_slack"], "--send-slack")
    assert slack is not None
    return {
        "out": opts["out"],
        "force": opts["force"],
        "sessions": opts["sessions"],
        "history": opts["history"],
        "concurrency": opts.get("concurrency"),
        "requests": opts["requests"],
        "max_in_flight": opts["max_in_flight"],
        "timeout_s": timeout,
        "send_slack_s": slack,
        "rt_priority": opts["rt_priority"],
        "warm_up": opts["warm_up"],
        "client": opts["client"],
        "insecure": opts["insecure"],
        "workers": _workers(opts["workers"]),
        "ray": opts["ray"],
    }


def replay_options(capture: str, opts: dict[str, Any]) -> Any:
    """The SEND and CAPTURE groups as a replay's options."""
    from captures.filters import RowFilter, parse_status_spec
    from replay.workload.replaying import ReplayOptions

    try:
        statuses = parse_status_spec(opts["filter_status"]) if opts["filter_status"] else None
    except ValueError as exc:
        raise UserError(f"--filter-status: {exc}") from None
    return ReplayOptions(
        capture=capture,
        target=list(opts["target"]),
        speed=opts["speed"],
        rate=opts["rate"],
        from_s=_duration(opts["from_"], "--from") or 0.0,
        to_s=_duration(opts["to"], "--to"),
        duration_s=_duration(opts["duration"], "--duration"),
        loops=opts["loops"],
        headers=list(opts["headers"]),
        model_map=list(opts["model_map"]),
        expect_status=opts["expect_status"],
        filt=RowFilter(
            methods=frozenset(m.upper() for m in opts["filter_method"]) or None,
            path_globs=tuple(opts["filter_path"]) or None,
            models=frozenset(opts["filter_model"]) or None,
            statuses=statuses,
        ),
        keep_host=opts["keep_host"],
        amplify=opts["amplify"],
        amplify_mode=opts["amplify_mode"],
        salt_prompts=opts["salt_prompts"],
        synthetic=list(opts["synthetic"]),
        seed=opts["seed"],
        skip_damaged=opts["skip_damaged"],
        include_junk=opts["include_junk"],
        **send_settings(opts),
    )


def parse_gates(opts: dict[str, Any]) -> Any:
    """Gates (and --by) are parsed before any traffic: a typo must not cost a run."""
    from replay.decide.report import parse_by
    from replay.decide.slo import parse_gates as parse

    if opts.get("by"):
        parse_by(opts["by"])
    return parse(opts.get("slo") or ())


class Watch:
    """The metrics endpoint of a run (or a sweep), when asked for: an observer of its result
    rows and a progress feed beside the live line."""

    def __init__(self, opts: dict[str, Any]) -> None:
        self.server: Any = None
        self.observer: Any = None
        self.linger = _duration(opts.get("metrics_linger") or "0s", "--metrics-linger") or 0.0
        listen, live = opts.get("metrics_listen"), opts.get("live")
        if listen and live:
            raise UserError("give --metrics-listen or --live (which serves /metrics too)")
        if listen or live:
            from replay.live.exporter import RunObserver
            from replay.live.server import RunServer, parse_listen

            flag = "--live" if live else "--metrics-listen"
            host, port = parse_listen(
                str(live or listen), flag, allow_remote=opts.get("metrics_allow_remote", False)
            )
            self.observer = RunObserver()
            self.server = RunServer(host, port, self.observer, page=bool(live), flag=flag)
            click.echo(f"metrics: {self.server.url('/metrics')}", err=True)
            if live:
                click.echo(f"live page: {self.server.url('/')}", err=True)

    def finished(self, out_dir: Any) -> None:
        """The run's HTML report, for the live page's link."""
        if self.server is None or not self.server.page:
            return
        from replay.decide.reporting import make
        from replay.measure.resultsdir import Results

        path = Path(out_dir) / "report.html"
        path.write_text(make(Results.open(out_dir), "html")[0], encoding="utf-8")
        seal_private(path)
        self.observer.report = str(path)

    def feed(self, line: Any) -> Callable[[Any], None]:
        if self.observer is None:
            return cast(Callable[[Any], None], line.update)

        def both(p: Any) -> None:
            line.update(p)
            self.observer.progress(p)

        return both

    def __enter__(self) -> Watch:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.server is not None:
            self.server.close(self.linger if exc[0] is None else 0.0)


def live_progress(quiet: bool) -> Any:
    """A live line on stderr (when it is a terminal) and a function to feed it."""
    from replay.progress import LiveLine

    return LiveLine(enabled=not quiet and sys.stderr.isatty())


def finish_run(result: Any, opts: dict[str, Any], gates: Any) -> int:
    """The end of a run: the text report (and SLO table) on stdout; 130 if interrupted, 1 if a
    gate failed, nothing succeeded or requests failed on this machine, 3 if a worker died."""
    from replay.decide.reporting import client_failed, make, no_success
    from replay.measure.resultsdir import Results

    res = Results(result.out_dir, result.run, result.metrics)
    text, rows = make(res, "text", opts["by"], gates)
    click.echo(text, nl=False)
    click.echo(f"results: {result.out_dir}", err=True)
    for failure in result.run.get("worker_failures") or ():
        click.echo(f"loadtape: error: {failure}", err=True)
    if result.run.get("worker_failures"):
        return 3  # a worker died: what it measured is in the results, the run is not whole
    if result.interrupted:
        return 130
    cause = no_success(result.run, result.metrics) or client_failed(result.metrics)
    if cause:
        click.echo(f"loadtape: error: {cause}", err=True)
        return 1
    return 1 if rows and not all(r["pass"] for r in rows) else 0


def emit(text: str, out: str | None, what: str, summary: str = "") -> None:
    """A rendered document to --out (saying where on stderr), or to stdout."""
    if not out:
        click.echo(text, nl=False)
        return
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    seal_private(path)
    click.echo(f"{what}: {path}" + (f" ({summary})" if summary else ""), err=True)


# -- commands ----------------------------------------------------------------------------------
@click.group(
    context_settings={
        "help_option_names": ["-h", "--help"],
        "max_content_width": 100,
        "show_default": True,
    }
)
@click.version_option(LOADTAPE_VERSION, prog_name="loadtape")
def cli() -> None:
    """Capture gateway traffic, replay it at 1x-10x, measure honestly, decide."""


@cli.command()
@click.argument("capture", type=PATH)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option(
    "--verify", is_flag=True, help="Read every column of every part and check its checksums."
)
@click.option("--skip-damaged", is_flag=True, help="Leave out damaged parts and say so.")
def inspect(capture: str, as_json: bool, verify: bool, skip_damaged: bool) -> None:
    """Summarize a capture: size, time span, rates, paths, models, statuses, tokens."""
    from captures import inspect as insp
    from captures.reader import Capture

    cap = Capture(capture, skip_damaged=skip_damaged)
    if verify:
        cap.verify()
    summary = insp.summarize(cap)
    click.echo(json.dumps(summary.to_json(), indent=2) if as_json else insp.render_text(summary))


@cli.command(context_settings={"ignore_unknown_options": True})
@click.option("--upstream", help="Where the gateway is (reverse mode), e.g. http://127.0.0.1:8000.")
@click.option("--listen", default="127.0.0.1:8080", help="HOST:PORT (port 0: any).")
@click.option("--out", required=True, type=PATH, help="Capture directory.")
@click.option("--mode", type=click.Choice(["reverse", "regular"]), default="reverse")
@click.option("--body-limit", default="4m", help="Keep at most this much of a body.")
@click.option(
    "--session-key",
    default="header:X-Session-Id,user,chain,connection",
    help="Session key sources, first match wins: header:NAME, user, connection, none.",
)
@click.option("--redact-header", "redact_headers", multiple=True, help="Another header to redact.")
@click.option(
    "--on-error",
    type=click.Choice(["continue", "stop"]),
    default="continue",
    help="If the capture directory cannot be written: keep proxying, or stop.",
)
@click.option("--confdir", type=PATH, help="mitmproxy conf dir (its CA).")
@click.option("--duration", default=None, help="Stop after this long (e.g. 10m); default: Ctrl-C.")
@click.option(
    "--instance",
    default="",
    show_default=False,
    help="A name for this proxy when several write one --out (one per core behind a TCP "
    "load balancer): its status and log files.",
)
@click.option(
    "--metrics-listen",
    default=None,
    metavar="HOST:PORT",
    help="Serve the capture's figures as Prometheus metrics at http://HOST:PORT/metrics "
    "(a bare PORT binds 127.0.0.1).",
)
@click.option(
    "--metrics-allow-remote", is_flag=True, help="Let --metrics-listen bind a non-loopback address."
)
@click.argument("mitmdump_args", nargs=-1, type=click.UNPROCESSED)
def capture(**opts: Any) -> None:
    """Record gateway traffic through mitmproxy into a capture directory.

    Extra arguments after `--` go to mitmdump as they are."""
    from proxy_addons import launch

    host, sep, port = opts["listen"].rpartition(":")
    if not sep or not port.isdigit():
        raise UserError(f"--listen {opts['listen']!r}: want HOST:PORT")
    options = {
        "capture_body_limit": opts["body_limit"],
        "capture_session_key": opts["session_key"],
        "capture_on_error": opts["on_error"],
    }
    if opts["redact_headers"]:
        options["capture_redact_headers"] = ",".join(opts["redact_headers"])
    duration = _duration(opts["duration"], "--duration")
    config = launch.CaptureConfig(
        out=Path(opts["out"]).resolve(),
        upstream=opts["upstream"],
        mode=opts["mode"],
        listen_host=host.strip("[]") or "127.0.0.1",
        listen_port=int(port),
        confdir=Path(opts["confdir"]).resolve() if opts["confdir"] else None,
        options=options,
        extra_args=list(opts["mitmdump_args"]),
        instance=opts["instance"],
    )
    listen = None
    if opts.get("metrics_listen"):
        from captures.listen import parse_listen

        listen = parse_listen(
            opts["metrics_listen"], "--metrics-listen", allow_remote=opts["metrics_allow_remote"]
        )
    proc = launch.CaptureProcess(config).start()
    metrics = None
    if listen is not None:
        from proxy_addons.metrics import CaptureMetrics

        try:
            metrics = CaptureMetrics(*listen, proc.status)
        except UserError:
            proc.stop()
            raise

    def say(message: str) -> None:
        click.echo(message, err=True)

    say(f"capture proxy listening on {proc.url}  ->  {opts['upstream'] or '(regular proxy)'}")
    say(f"recording into {config.out}  (proxy log: {proc.log_path})")
    if opts["mode"] == "regular":
        say(f"for HTTPS, clients must trust mitmproxy's CA: {proc.ca_cert()}")
    if metrics is not None:
        say(f"metrics: {metrics.url}")
    say("Ctrl-C to stop")
    try:
        final = launch.run_until_signal(proc, live=sys.stderr.isatty(), duration=duration)
    finally:
        if metrics is not None:
            metrics.close()
    say(f"capture stopped: {launch.describe_status(final)}")
    for note in (final or {}).get("notes") or ():
        say(f"  journal: {note}")


@cli.command()
@click.argument("capture", type=PATH)
@options(CAPTURE, SEND, WATCH, GATES)
def replay(capture: str, **opts: Any) -> int:
    """Replay a capture against --target with its original timing (scaled by --speed)."""
    from replay.api import run_replay

    gates = parse_gates(opts)
    ropts = replay_options(capture, opts)
    with Watch(opts) as watch, live_progress(opts["quiet"]) as line:
        result = run_replay(ropts, on_progress=watch.feed(line), observer=watch.observer)
        watch.finished(result.out_dir)
        return finish_run(result, opts, gates)


@cli.command("run")
@click.argument("scenario", type=PATH)
@click.option("--target", default=None, help="Target for streams without their own.")
@options(SEND, WATCH, GATES)
def run_cmd(scenario: str, **opts: Any) -> int:
    """Run a TOML scenario: replay and synthetic streams merged on one timeline."""
    from replay.api import run_scenario
    from replay.settings import RunSettings

    gates = parse_gates(opts)
    settings = RunSettings(**send_settings(opts))
    with Watch(opts) as watch, live_progress(opts["quiet"]) as line:
        result = run_scenario(
            scenario,
            settings,
            target=opts["target"],
            on_progress=watch.feed(line),
            observer=watch.observer,
        )
        watch.finished(result.out_dir)
        return finish_run(result, opts, gates)


@cli.command()
@click.argument("capture", type=PATH)
@click.option("--concurrency", "conc", default=None, metavar="LIST", help="Closed loop: 1,10,50.")
@click.option("--speeds", default=None, metavar="LIST", help="Open loop, recorded timing: 1,2,5.")
@click.option("--rates", default=None, metavar="LIST", help="Open loop, constant req/s: 10,50.")
@click.option(
    "--level-duration", default="10s", help="--rates: how long each level runs (unless --requests)."
)
@click.option("--p99-limit", default=None, metavar="DUR", help="Find the knee: p99 over this.")
@click.option(
    "--stop-on-error-rate", default=None, metavar="PCT", help="End the sweep past this, e.g. 5%."
)
@click.option(
    "--tolerance",
    default="5%",
    help="Throughput within this of a lower level's counts as no longer rising.",
)
@click.option(
    "--slo",
    multiple=True,
    metavar="GATE",
    help="A gate evaluated at every level (e.g. 'latency.p99<1s'); the sweep names the first "
    "level where one fails.",
)
@click.option("--format", "fmt", type=FORMATS, default="text")
@options(CAPTURE, SEND, WATCH, skip=("concurrency", "speed", "rate", "loops", "synthetic"))
def sweep(
    capture: str, conc: str | None, speeds: str | None, rates: str | None, fmt: str, **opts: Any
) -> int:
    """Replay a capture (or run a TOML scenario, by users) at rising load: find the
    throughput ceiling, the latency knee and where an SLO first fails."""
    from replay.api import run_replay
    from replay.decide.report.sweepview import level_row, render
    from replay.decide.sweep import SweepOptions, parse_levels, run_sweep

    chosen = [(k, v) for k, v in (("concurrency", conc), ("speeds", speeds), ("rates", rates)) if v]
    if len(chosen) != 1:
        fail("sweep: give exactly one of --concurrency, --speeds, --rates")
    kind, text = chosen[0]
    out = Path(opts["out"] or Path("runs") / time.strftime("sweep-%Y%m%d-%H%M%S"))
    p99_limit = _duration(opts["p99_limit"], "--p99-limit")
    sopts = SweepOptions(
        kind=kind,
        levels=parse_levels(text, f"--{kind}"),
        out=out,
        level_duration_s=_duration(opts["level_duration"], "--level-duration") or 10.0,
        p99_limit_ms=p99_limit * 1000 if p99_limit is not None else None,
        stop_error_rate=_percent(opts["stop_on_error_rate"], "--stop-on-error-rate"),
        tolerance=_percent(opts["tolerance"], "--tolerance") or 0.0,
        gates=tuple(parse_gates(opts)),
    )
    sopts.validate()
    base = replay_options(
        capture, {**opts, "speed": 1.0, "loops": 1, "synthetic": (), "rate": None}
    )

    def on_start(value: float, lopts: Any) -> None:
        planned = f", {lopts.requests} requests" if lopts.requests else ""
        click.echo(f"level {value:g}: started{planned} -> {lopts.out}", err=True)
        if watch.observer is not None:  # one endpoint for the sweep; the level as a label
            watch.observer.next_stage(sweep_level=f"{value:g}")

    def on_level(f: dict[str, Any]) -> None:
        click.echo(f"level {f['level']:g}: " + "  ".join(level_row(f)[1:]), err=True)
        if f.get("slo_failed"):
            click.echo(f"level {f['level']:g}: SLO failed: " + "; ".join(f["slo_failed"]), err=True)

    scenario = Path(capture).suffix == ".toml" and Path(capture).is_file()
    if scenario:
        scenario_levels(capture, kind, opts)

    with Watch(opts) as watch, live_progress(opts["quiet"]) as line:

        def runner(o: Any) -> Any:
            if scenario:
                return run_scenario_level(capture, o, opts, watch.feed(line), watch.observer)
            return run_replay(o, on_progress=watch.feed(line), observer=watch.observer)

        doc = run_sweep(base, sopts, on_level=on_level, on_start=on_start, runner=runner)
    (out / "sweep.html").write_text(render(doc, "html"), encoding="utf-8")
    click.echo(render(doc, fmt), nl=False)
    click.echo(f"sweep: {out} (sweep.json, sweep.html, one results directory per level)", err=True)
    return 130 if doc["stopped"] and doc["stopped"].startswith("interrupted") else 0


def scenario_levels(path: str, kind: str, opts: dict[str, Any]) -> None:
    """A sweep over a scenario: levels are users (closed-loop concurrency over its merged
    requests); the file is checked before any level runs."""
    from replay.workload.scenario import load

    if kind != "concurrency":
        raise UserError(
            f"sweep {path}: a scenario sweeps users (--concurrency); --speeds and --rates "
            "scale a capture's timing"
        )
    if len(opts["target"]) > 1:
        raise UserError(f"sweep {path}: one --target (for streams without their own)")
    load(path, target=opts["target"][0])


def run_scenario_level(
    path: str, level: Any, opts: dict[str, Any], on_progress: Any, observer: Any
) -> Any:
    """One level of a scenario sweep: the scenario at that many users."""
    from dataclasses import replace

    from replay.api import run_scenario
    from replay.settings import RunSettings

    base = RunSettings(**send_settings(opts))
    settings = replace(base, out=level.out, concurrency=level.concurrency, requests=level.requests)
    return run_scenario(
        path, settings, target=opts["target"][0], on_progress=on_progress, observer=observer
    )


@cli.command()
@click.argument("results", type=PATH)
@click.option("--format", "fmt", type=REPORT_FORMATS, default="text")
@click.option("--out", type=PATH, help="Write the report here (default stdout).")
@click.option("--hgrm", type=PATH, help="Write .hgrm percentile files here.")
@click.option("--hlog", type=PATH, help="Write the HdrHistogram interval log.")
@options(GATES)
def report(results: str, fmt: str, **opts: Any) -> int:
    """Report on a results directory (no traffic): text, json, markdown, html or csv; SLO gates."""
    from replay.decide.report import parse_by
    from replay.decide.report.hdrfiles import write_hgrm, write_hlog
    from replay.decide.reporting import make
    from replay.measure.resultsdir import Results

    gates = parse_gates(opts)
    res = Results.open(results)
    text, rows = make(res, fmt, opts["by"], gates)
    emit(text, opts["out"], "report")
    if opts["hgrm"]:
        files = write_hgrm(res.metrics, parse_by(opts["by"], res.metrics), Path(opts["hgrm"]))
        click.echo(f"hgrm: {len(files)} files in {opts['hgrm']}", err=True)
    if opts["hlog"]:
        click.echo(f"hlog: {write_hlog(res.metrics, Path(opts['hlog']))}", err=True)
    if rows and opts["out"]:  # the verdict on the terminal too
        failed = [r for r in rows if not r["pass"]]
        click.echo(f"SLO: {len(rows) - len(failed)} passed, {len(failed)} failed", err=True)
    return 1 if rows and not all(r["pass"] for r in rows) else 0


@cli.command()
@click.argument("baseline", type=PATH)
@click.argument("current", type=PATH)
@click.option(
    "--max-regression",
    "rules",
    multiple=True,
    metavar="RULE",
    help="Allowed growth, e.g. 'latency.p99=+10%', 'ttft.p99=+50ms', 'error_rate=+1pp' "
    "(default: latency.p50 and p99 +10%, ttft.p99 +10%, error_rate +1pp).",
)
@click.option("--format", "fmt", type=FORMATS, default="text")
@click.option("--out", type=PATH, help="Write it here (default stdout).")
@click.option("--by", default=None, metavar="DIMS", help="Group by (as in report).")
@click.option("--seed", default=0, help="Seed of the bootstrap.")
@click.option(
    "--min-change",
    default="1ms",
    metavar="DUR",
    help="A timing change smaller than this is never a regression, whatever the rule allows.",
)
def compare(baseline: str, current: str, rules: tuple[str, ...], fmt: str, **opts: Any) -> int:
    """Compare a run with a baseline; exit 1 on a regression (noise-aware)."""
    from replay.decide.compare import DEFAULT_RULES, parse_rule
    from replay.decide.compare import compare as run_compare
    from replay.decide.report.comparison import render
    from replay.measure.resultsdir import Results

    parsed = [parse_rule(r) for r in (rules or DEFAULT_RULES)]
    base, cur = Results.open(baseline), Results.open(current)
    floor = _duration(opts["min_change"], "--min-change") or 0.0
    doc = run_compare(base, cur, parsed, opts["by"], seed=opts["seed"], min_change_ms=floor * 1000)
    n = len(doc["regressions"])
    emit(render(doc, fmt, base, cur), opts["out"], "compare", f"{n} regression{'s' * (n != 1)}")
    return 1 if doc["regressions"] else 0


@cli.command("diff")
@click.argument("results", type=PATH)
@click.option(
    "--capture", type=PATH, help="The capture replayed (default: the one run.json names)."
)
@click.option("--format", "fmt", type=click.Choice(["text", "json", "markdown"]), default="text")
@click.option("--examples", default=5, help="Mismatches shown per comparison.")
@click.option(
    "--fail-on",
    default=None,
    metavar="LIST",
    help="Exit 1 on differences in some of status,finish_reason,tokens,answer,body.",
)
def diff_cmd(
    results: str, capture: str | None, fmt: str, examples: int, fail_on: str | None
) -> int:
    """Responses against the recording, and several targets against each other."""
    from replay.decide.diff import diff, mismatches, parse_fail_on
    from replay.decide.report.diffview import render
    from replay.measure.resultsdir import Results

    cats = parse_fail_on(fail_on)
    doc = diff(Results.open(results), capture, examples)
    click.echo(render(doc, fmt), nl=False)
    bad = mismatches(doc, cats)
    for b in bad:
        click.echo(f"diff: {b}", err=True)
    return 1 if bad else 0


@cli.command("import")
@click.argument(
    "fmt",
    metavar="FORMAT",
    type=click.Choice(["har", "mitmproxy", "azure", "mooncake", "burstgpt", "sharegpt"]),
)
@click.argument("source", metavar="FILE", type=PATH)
@click.option("--out", required=True, type=PATH, help="Capture directory to write.")
@click.option("--limit", type=int, default=None, help="Only the first N rows.")
@click.option("--model", default=None, help="Model name for traces without one.")
@click.option("--stream/--no-stream", default=True, help="Trace requests ask for streams.")
@click.option("--arrival", default=None, help="sharegpt: an arrival process, e.g. poisson:rate=5.")
@click.option("--duration", default=None, help="sharegpt: how long the arrival process runs.")
@click.option(
    "--output-tokens",
    default=None,
    help="sharegpt: max_tokens distribution (default: the first answer's length).",
)
@click.option("--no-redact", is_flag=True, help="har/mitmproxy: keep secrets (not recommended).")
@click.option("--seed", default=0)
def import_cmd(fmt: str, source: str, **opts: Any) -> None:
    """Turn a HAR file, mitmproxy flows or an LLM trace into a capture."""
    from captures.importers import ImportOptions, import_file

    tick = Ticker("import", source)
    summary = import_file(
        fmt,
        source,
        opts["out"],
        ImportOptions(
            limit=opts["limit"],
            model=opts["model"],
            stream=opts["stream"],
            seed=opts["seed"],
            arrival=opts["arrival"],
            duration_s=_duration(opts["duration"], "--duration"),
            output_tokens=opts["output_tokens"],
            redact=not opts["no_redact"],
            progress=tick,
        ),
    )
    tick.done()
    click.echo(f"imported {summary.records} requests from {source} into {opts['out']}")
    for reason, n in summary.skipped.items():
        click.echo(f"  skipped, {reason}: {n}")
    for remark, n in summary.noted.items():
        click.echo(f"  {remark}: {n}")


@cli.command("anonymize")
@click.argument("capture", type=PATH)
@click.option("--out", required=True, type=PATH, help="New capture directory.")
def anonymize_cmd(capture: str, out: str) -> None:
    """Replace prompt and completion text with filler, hash identifiers, keep timing and sizes."""
    from captures.anonymize import anonymize
    from captures.reader import Capture

    tick = Ticker("anonymize", capture, total=Capture(capture).count())
    summary = anonymize(capture, out, progress=tick)
    tick.done()
    click.echo(f"anonymized {summary.records} requests into {out}")


class Ticker:
    """A progress line on stderr for long file work (import, anonymize): at most every
    PERIOD_S, so a log stays short and a terminal does not sit silent."""

    PERIOD_S = 2.0

    def __init__(self, what: str, source: str, total: int | None = None) -> None:
        self.what, self.source, self.total = what, source, total
        self.t0 = self.last = time.monotonic()
        self.shown = False

    def __call__(self, n: int) -> None:
        now = time.monotonic()
        if now - self.last < self.PERIOD_S:
            return
        self.last, self.shown = now, True
        rate = n / max(now - self.t0, 1e-9)
        line = f"{self.what}: {n} requests ({rate:.0f}/s)"
        if self.total:
            left = max(self.total - n, 0) / rate if rate > 0 else 0
            line = (
                f"{self.what}: {n}/{self.total} requests ({n / self.total * 100:.0f}%, "
                f"{rate:.0f}/s, ETA {left:.0f}s)"
            )
        click.echo(line, err=True)

    def done(self) -> None:
        if self.shown:
            click.echo(f"{self.what}: done in {time.monotonic() - self.t0:.1f} s", err=True)


@cli.command()
@click.option("--dir", "root", default="loadtape-demo", type=PATH)
@click.option("--seconds", default=10.0, help="How long to drive traffic.")
@click.option("--sessions", default=12, help="Virtual users.")
def demo(root: str, seconds: float, sessions: int) -> None:
    """Mock gateway, capture through the real proxy, replay at 1x and 5x, report. Loopback only."""
    from replay.decide.reporting import make
    from replay.measure.resultsdir import Results
    from replay.mock.demo import run_demo

    def show(r: Any) -> None:
        click.echo(make(Results(r.out_dir, r.run, r.metrics), "text")[0], nl=False)

    run_demo(Path(root), seconds=seconds, sessions=sessions, say=lambda m: click.echo(m), show=show)


@cli.command("mock-gateway")
@click.option("--host", default="127.0.0.1", help="Loopback address to bind.")
@click.option("--port", default=8000, help="0 picks a free port.")
@click.option(
    "--profile",
    "default_profile",
    default="fast-local",
    help="Latency profile for models not mapped by --model.",
)
@click.option(
    "--model",
    "models",
    multiple=True,
    metavar="NAME=PROFILE",
    help="Map a model name to a profile (instant, fast-local, slow-cloud).",
)
@click.option("--slowdown", default=1.0, help="Multiply every delay.")
@click.option("--max-in-service", default=0, help="0: unlimited.")
@click.option("--max-queue", default=0)
@click.option("--overload-status", type=click.Choice(["503", "429"]), default="503")
@click.option(
    "--stall",
    default=None,
    metavar="DUR/EVERY",
    help="e.g. 1s/3s: stall all responses 1 s every 3 s.",
)
@click.option("--error-rate", default=0.0)
@click.option("--reset-rate", default=0.0)
@click.option("--malformed-rate", default=0.0)
@click.option("--drip-rate", default=0.0)
@click.option(
    "--coding",
    type=click.Choice(["gzip", "deflate", "br", "zstd"]),
    default=None,
    help="Code answers so where the request accepts it, as a compressing proxy does.",
)
@click.option("--seed", default=0)
def mock_gateway(**opts: Any) -> None:
    """Run the mock OpenAI-compatible gateway until Ctrl-C."""
    from replay.mock.config import Faults, GatewayConfig, parse_model_profiles, parse_stall
    from replay.mock.threaded import serve_until_signal

    stall_ms, stall_every = parse_stall(opts["stall"])
    config = GatewayConfig(
        host=opts["host"],
        port=opts["port"],
        default_profile=opts["default_profile"],
        models=parse_model_profiles(opts["models"]),
        slowdown=opts["slowdown"],
        max_in_service=opts["max_in_service"],
        max_queue=opts["max_queue"],
        overload_status=int(opts["overload_status"]),
        coding=opts["coding"] or "",
        seed=opts["seed"],
        faults=Faults(
            stall_ms=stall_ms,
            stall_every_s=stall_every,
            error_rate=opts["error_rate"],
            reset_rate=opts["reset_rate"],
            malformed_rate=opts["malformed_rate"],
            drip_rate=opts["drip_rate"],
        ),
    )
    serve_until_signal(config, lambda url: click.echo(f"mock gateway listening on {url}"))


def _terminate(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main() -> None:
    """Console entry point: one-line errors, exit 2 for bad input, never a traceback for it."""
    # Everything loadtape writes (captures, results, reports, histograms) holds what traffic
    # held: the owner's only, whatever writes it (pyarrow, matplotlib, our own code).
    os.umask(0o077)
    # SIGTERM before a run installs its own handlers (planning, opening a capture) stops the
    # command as Ctrl-C does: exit 130, not a kill that leaves no word.
    if signal.getsignal(signal.SIGTERM) == signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _terminate)
    try:
        rv = cli.main(standalone_mode=False)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except (click.exceptions.Abort, KeyboardInterrupt):
        # Ctrl-C or SIGTERM outside a run's own handling (loading, planning ahead): click turns
        # the KeyboardInterrupt into Abort
        click.echo("loadtape: interrupted", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except UserError as exc:
        fail(str(exc), exc.exit_code)
    except BrokenPipeError:
        sys.exit(1)
    except PermissionError as exc:  # a capture we may not read, an --out we may not write
        fail(f"{exc.filename or 'a file'}: permission denied ({exc.strerror})", 2)
    except Exception as exc:
        if os.environ.get("LOADTAPE_DEBUG"):
            raise
        fail(
            f"internal error: {type(exc).__name__}: {exc} (set LOADTAPE_DEBUG=1 for a traceback)", 3
        )
    sys.exit(rv if isinstance(rv, int) else 0)


if __name__ == "__main__":
    main()
