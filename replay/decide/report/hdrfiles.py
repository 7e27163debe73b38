"""HdrHistogram's own file formats, for its tools (HistogramLogProcessor, HdrHistogram's online
plotter, hdr-plot):

- `.hgrm` percentile distributions, one per metric and group (values in milliseconds);
- the interval log (`.hlog`): one line per second of the run and series, tagged
  `Tag=<metric>/<series>`, values in microseconds (HistogramLogProcessor: use
  `-outputValueUnitRatio 1000` for milliseconds).
"""

from __future__ import annotations

import io
import re
import time
from pathlib import Path

from captures import hdr
from captures.store import mkdir_private, seal_private
from replay.measure.metrics import INTERVAL_METRICS, METRICS, Metrics

from .model import groups

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def _slug(parts: list[str]) -> str:
    s = "_".join(_UNSAFE.sub("-", p).strip("-") for p in parts if p)
    return s or "all"


def write_hgrm(metrics: Metrics, by: tuple[str, ...], out_dir: Path) -> list[Path]:
    """One percentile-distribution file per metric and group that has values."""
    mkdir_private(out_dir)
    written = []
    for proj, keys in groups(metrics, by).items():
        hs, _ = metrics.merged(keys)
        name = _slug([f"{d}-{v}" for d, v in zip(by, proj, strict=True) if v])
        for m in METRICS:
            h = hs[m]
            if not h.total_count:
                continue
            buf = io.BytesIO()
            h.output_percentile_distribution(buf, 1000)  # us -> ms
            path = out_dir / f"{m}.{name}.hgrm"
            path.write_bytes(buf.getvalue())
            written.append(path)
    seal_private(out_dir)
    return written


def write_hlog(metrics: Metrics, path: Path) -> Path:
    """The interval log: a histogram per second and series, for latency, TTFT and inter-token
    latency."""
    metrics.seal_intervals()
    start_s = metrics.run_start_ns / 1e9
    lines = [
        "#[Histogram log format version 1.3]",
        "#[loadtape interval log: values in microseconds; Tag=<metric>/<series>]",
        f"#[StartTime: {start_s:.3f} (seconds since epoch), "
        f"{time.strftime('%a %b %d %H:%M:%S %Z %Y', time.gmtime(start_s))}]",
        f"#[BaseTime: {start_s:.3f} (seconds since epoch)]",
        '"StartTimestamp","Interval_Length","Interval_Max","Interval_Compressed_Histogram"',
    ]
    rows = []
    for series, secs in metrics.intervals.items():
        for sec, blobs in secs.items():
            for m in INTERVAL_METRICS:
                blob = blobs.get(m)
                if blob is None:
                    continue
                h = hdr.decode(blob)
                if not h.total_count:
                    continue
                payload = blob.decode() if isinstance(blob, bytes) else blob
                rows.append(
                    (
                        sec,
                        m,
                        f"Tag={m}/{_tag(series)},{sec:.3f},1.000,"
                        f"{h.get_max_value() / 1000:.3f},{payload}",
                    )
                )
    lines += [r[2] for r in sorted(rows)]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    seal_private(path)
    return path


def _tag(series: str) -> str:
    """Tags may not hold commas or spaces."""
    return re.sub(r"[,\s]+", "_", series)
