"""The report's plots: SVG drawn by matplotlib (text kept as text, stable ids), shared by the
report, compare and sweep pages: percentile spectra on HdrHistogram's log axis, distributions,
lines over time; a palette and line styles that tell thirty series apart; legends below the
axes, never over a curve."""

from __future__ import annotations

import io
import math
from collections.abc import Iterable, Sequence
from typing import Any

from hdrh.histogram import HdrHistogram

from captures import hdr

SPECTRUM_TICKS = (0.0, 90.0, 99.0, 99.9, 99.99, 99.999)

# Ten colours (matplotlib's tab10, distinct for most colour vision) and, past ten series, the
# same colours dashed and then dotted: thirty series stay told apart.
PALETTE = (
    "#1f77b4",
    "#d62728",
    "#2ca02c",
    "#ff7f0e",
    "#9467bd",
    "#8c564b",
    "#e377c2",
    "#17becf",
    "#7f7f7f",
    "#bcbd22",
)
DASHES = ("-", "--", ":")


def style(i: int) -> tuple[str, str]:
    """(colour, line style) of the i-th series."""
    return PALETTE[i % len(PALETTE)], DASHES[i // len(PALETTE) % len(DASHES)]


def legend(ax: Any, n: int) -> None:
    """The legend below the axes, never over the curves; as many columns as fit the
    figure's width (long group labels get fewer), so the axes keep their size."""
    _, labels = ax.get_legend_handles_labels()
    longest = max((len(str(x)) for x in labels), default=0)
    fit = 3 if longest <= 26 else 2 if longest <= 40 else 1
    leg = ax.legend(
        fontsize=7,
        loc="upper center",
        bbox_to_anchor=(0.5, -0.22),
        ncol=max(1, min(n, fit)),
        frameon=False,
    )
    # ... out of tight_layout (which would shrink the axes to make room for it), into the
    # saved figure as an extra artist (svg(): the figure grows below the axes instead)
    leg.set_in_layout(False)


def plain_log_ticks(axis: Any) -> None:
    """Log-axis ticks as plain numbers (0.5, 1, 10, 100), not 10^x."""
    from matplotlib.ticker import FuncFormatter, LogLocator

    axis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0), numticks=12))
    axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    axis.set_minor_formatter(FuncFormatter(lambda v, _: ""))


SPECTRUM_TICKS = (0.0, 90.0, 99.0, 99.9, 99.99, 99.999)


# -- figures -------------------------------------------------------------------------------------
def _figure(w: float = 6.4, h: float = 3.4) -> Any:
    import matplotlib

    matplotlib.rcParams["svg.fonttype"] = "none"  # text stays text
    matplotlib.rcParams["svg.hashsalt"] = "loadtape"  # stable ids: same input, same file
    from matplotlib.figure import Figure

    fig = Figure(figsize=(w, h), dpi=100)
    return fig


def svg(fig: Any) -> str:
    buf = io.StringIO()
    fig.tight_layout()
    fig.savefig(
        buf,
        format="svg",
        metadata={"Date": None, "Creator": "loadtape"},
        bbox_inches="tight",  # the legend below the axes is part of the figure ...
        bbox_extra_artists=[ax.get_legend() for ax in fig.axes if ax.get_legend()],
    )
    text = buf.getvalue()
    return text[text.index("<svg") :]  # drop the XML prolog and doctype: inline SVG


def _finish(fig: Any, ax: Any, title: str, labels: tuple[str, str], n: int) -> str:
    """Axis labels, title, grid, the legend when several series share the axes; the SVG."""
    ax.set_xlabel(labels[0])
    ax.set_ylabel(labels[1])
    ax.set_title(title, fontsize=11)
    ax.grid(True, alpha=0.3)
    if n > 1:
        legend(ax, n)
    return svg(fig)


def spectrum_points(h: HdrHistogram) -> tuple[list[float], list[float]]:
    """(x = 1/(1-p), value ms) along HdrHistogram's percentile iterator."""
    xs, ys = [], []
    for it in h.get_percentile_iterator(5):
        p = it.percentile_level_iterated_to / 100
        if p >= 1.0:
            p = 1 - 1 / (10 * max(h.total_count, 1))  # the max: one step past the last quantile
        xs.append(1 / (1 - p))
        ys.append(it.value_iterated_to / 1000)
    return xs, ys


def spectrum_plot(series: Sequence[tuple[str, HdrHistogram]], title: str) -> str | None:
    series = [(label, h) for label, h in series if h.total_count]
    if not series:
        return None
    fig = _figure()
    ax = fig.add_subplot()
    top = 1.0
    for i, (label, h) in enumerate(series):
        xs, ys = spectrum_points(h)
        color, ls = style(i)
        ax.plot(xs, ys, label=label, color=color, ls=ls, lw=1.4)
        top = max(top, max(xs))
    ax.set_xscale("log")
    ticks = [t for t in SPECTRUM_TICKS if 1 / (1 - t / 100) <= top * 1.01]
    ax.set_xticks([1 / (1 - t / 100) for t in ticks])
    ax.set_xticklabels([f"{t:g}%" for t in ticks])
    ax.minorticks_off()
    ax.set_xlim(1, max(top, 10))
    ax.set_ylim(bottom=0)
    return _finish(fig, ax, title, ("percentile", "ms"), len(series))


def distribution_plot(series: Sequence[tuple[str, HdrHistogram]], title: str) -> str | None:
    """Share of values per log-spaced bucket (ms), one step line per series."""
    series = [(label, h) for label, h in series if h.total_count]
    if not series:
        return None
    lo = min(max(hdr.value_at_percentile(h, 0), 1) for _, h in series)
    hi = max(hdr.value_at_percentile(h, 100) for _, h in series)
    edges_n = 40
    a, b = math.log10(lo), math.log10(max(hi, lo * 1.01))
    edges = [10 ** (a + (b - a) * i / edges_n) for i in range(edges_n + 1)]
    fig = _figure()
    ax = fig.add_subplot()
    for i, (label, h) in enumerate(series):
        counts = [0] * edges_n
        for it in h.get_recorded_iterator():
            v = it.value_iterated_to
            j = min(max(int((math.log10(max(v, lo)) - a) / (b - a or 1) * edges_n), 0), edges_n - 1)
            counts[j] += it.count_at_value_iterated_to
        total = sum(counts) or 1
        color, ls = style(i)
        ax.stairs(
            [c / total for c in counts],
            [e / 1000 for e in edges],
            label=label,
            color=color,
            ls=ls,
            lw=1.4,
        )
    ax.set_xscale("log")
    plain_log_ticks(ax.xaxis)
    return _finish(fig, ax, title, ("ms", "share of values"), len(series))


def line_plot(
    lines: Sequence[tuple[str, Sequence[float], Sequence[float | None]]],
    title: str,
    xlabel: str,
    ylabel: str,
    *,
    logx: bool = False,
    hline: float | None = None,
    marker: str | None = None,
    styles: Sequence[tuple[int, str]] | None = None,
) -> str | None:
    """styles: per line (series index, line style), e.g. p50 solid and p99 dashed alike;
    without them each line gets its own style()."""
    if not any(len(x) for _, x, _ in lines):
        return None
    fig = _figure()
    ax = fig.add_subplot()
    for i, (label, xs, ys) in enumerate(lines):
        if styles:
            color, ls = PALETTE[styles[i][0] % len(PALETTE)], styles[i][1]
        else:
            color, ls = style(i)
        ax.plot(
            list(xs),
            [math.nan if y is None else y for y in ys],
            label=label,
            color=color,
            ls=ls,
            lw=1.4,
            marker=marker,
            ms=4,
        )
    if hline is not None:
        ax.axhline(hline, color="#b3261e", ls="--", lw=1, label="limit")
    if logx:
        ax.set_xscale("log")
        plain_log_ticks(ax.xaxis)
    ax.set_ylim(bottom=0)
    return _finish(fig, ax, title, (xlabel, ylabel), len(lines) + (hline is not None))


def plots_div(svgs: Iterable[str | None]) -> str:
    items = [f'<div class="plot">{s}</div>' for s in svgs if s]
    return f'<div class="plots">{"".join(items)}</div>' if items else ""


def over_time_plots(over: dict[str, list[dict[str, Any]]]) -> list[str | None]:
    """Latency, TTFT and inter-token p50 (solid) and p99 (dashed); completions; sent against
    scheduled; in flight; errors: per second, per series."""
    pct: dict[str, list[tuple[str, list[float], list[float | None]]]] = {
        "latency": [],
        "ttft": [],
        "itl": [],
    }
    thr, rate, inflight, err = [], [], [], []
    styles: list[tuple[int, str]] = []
    rate_styles: list[tuple[int, str]] = []
    for i, (series, rows) in enumerate(over.items()):
        styles += [(i, "-"), (i, "--")]
        rate_styles += [(i, "-"), (i, ":")]
        ts = [float(r["t"]) for r in rows]
        for m, lines in pct.items():
            lines.append((f"{series} p50", ts, [r.get(f"{m}_p50") for r in rows]))
            lines.append((f"{series} p99", ts, [r.get(f"{m}_p99") for r in rows]))
        thr.append((series, ts, [float(r["ok"] + r["expected"] + r["failed"]) for r in rows]))
        rate.append((f"{series} sent", ts, [float(r.get("sent", 0)) for r in rows]))
        rate.append((f"{series} scheduled", ts, [float(r.get("scheduled", 0)) for r in rows]))
        inflight.append((series, ts, [float(r.get("in_flight", 0)) for r in rows]))
        err.append(
            (
                series,
                ts,
                [
                    100 * r["failed"] / n if (n := r["ok"] + r["expected"] + r["failed"]) else None
                    for r in rows
                ],
            )
        )
    done = "s (by completion)"

    def has(lines: list[tuple[str, list[float], list[float | None]]]) -> bool:
        return any(v is not None for _, _, ys in lines for v in ys)

    return [
        line_plot(pct["latency"], "latency over time", done, "ms", styles=styles),
        line_plot(pct["ttft"], "TTFT over time", done, "ms", styles=styles)
        if has(pct["ttft"])
        else None,
        line_plot(pct["itl"], "inter-token latency over time", done, "ms", styles=styles)
        if has(pct["itl"])
        else None,
        line_plot(thr, "throughput over time", done, "responses/s"),
        line_plot(rate, "sent vs scheduled", "s (by send time)", "requests/s", styles=rate_styles),
        line_plot(inflight, "in flight", "s (at each second's end)", "requests"),
        line_plot(err, "error rate over time", done, "% failed"),
    ]
