"""A results directory: `results.parquet` (or `results-<part>.parquet` parts from several
workers), `histograms.msgpack` (encoded HdrHistograms per group, see metrics.py) and `run.json`.
The writers of the histogram and run files, and `Results`, which reads a directory back for
reports, gates and comparisons without sending traffic."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from captures.errors import UserError

from .metrics import Metrics
from .results import COLUMNS, SCHEMA

RESULTS_FORMAT = 1


RUN_FILES = ("run.json", "results*.parquet", "histograms*.msgpack", "*.tmp")


def claim_out_dir(out: Path, force: bool) -> Path:
    """The directory a run will write, refused (bad input) when it is a file, or holds an
    earlier run and `force` is not given; with `force`, the earlier run's files are removed."""
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out}: is a file, not a results directory")
    old = [f for pattern in RUN_FILES for f in out.glob(pattern)] if out.is_dir() else []
    if old and not force:
        raise UserError(
            f"--out {out}: holds an earlier run ({old[0].name}); give another --out, or "
            "--force to replace it"
        )
    for f in old:
        f.unlink()
    return out


def write_histograms(out_dir: Path, metrics: Metrics, part: str | None = None) -> Path:
    path = out_dir / (f"histograms-{part}.msgpack" if part else "histograms.msgpack")
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(metrics.encode())
    os.replace(tmp, path)
    return path


def write_run_json(out_dir: Path, doc: dict[str, Any]) -> None:
    doc = {"format": "loadtape-results", "format_version": RESULTS_FORMAT, **doc}
    tmp = out_dir / "run.json.tmp"
    tmp.write_text(json.dumps(doc, indent=2, sort_keys=True, default=str))
    os.replace(tmp, out_dir / "run.json")


@dataclass
class Results:
    """A results directory read back (for reports, comparisons, sweeps)."""

    path: Path
    run: dict[str, Any]
    metrics: Metrics

    @classmethod
    def open(cls, path: str | Path) -> Results:
        p = Path(path)
        run_path = p / "run.json"
        if not p.is_dir():
            raise UserError(f"{p}: no such results directory")
        try:
            run = json.loads(run_path.read_text())
        except FileNotFoundError:
            raise UserError(f"{p}: not a results directory (no run.json)") from None
        except (OSError, ValueError) as exc:
            raise UserError(f"{run_path}: unreadable ({exc})") from None
        if not isinstance(run, dict) or run.get("format") != "loadtape-results":
            raise UserError(f"{run_path}: not a loadtape run.json")
        if int(run.get("format_version", 0)) > RESULTS_FORMAT:
            raise UserError(
                f"{run_path}: results format v{run['format_version']} is newer than this "
                "loadtape reads"
            )
        hist_files = sorted(p.glob("histograms*.msgpack"))
        if not hist_files:
            raise UserError(f"{p}: no histograms*.msgpack")
        metrics: Metrics | None = None
        for f in hist_files:
            try:
                m = Metrics.decode(f.read_bytes())
            except Exception as exc:  # corrupt or foreign file: one clear line
                raise UserError(
                    f"{f}: unreadable histograms ({type(exc).__name__}: {exc})"
                ) from None
            if metrics is None:
                metrics = m
            else:
                metrics.add(m)
        assert metrics is not None
        return cls(p, run, metrics)

    def result_files(self) -> list[Path]:
        return sorted(self.path.glob("results*.parquet"))

    def batches(self, columns: Iterable[str], batch_size: int = 16_384) -> Iterator[pa.RecordBatch]:
        """The results, a batch at a time (bounded memory on runs of millions of rows); columns
        a file does not have (written by an older loadtape) read as nulls."""
        want = list(columns)
        for f in self.result_files():
            try:
                pf = pq.ParquetFile(f, page_checksum_verification=True)
                have = set(pf.schema_arrow.names)
                for batch in pf.iter_batches(
                    batch_size=batch_size, columns=[c for c in want if c in have], use_threads=False
                ):
                    arrays = [
                        batch.column(c)
                        if c in have
                        else pa.nulls(batch.num_rows, SCHEMA.field(c).type)
                        for c in want
                    ]
                    yield pa.RecordBatch.from_arrays(arrays, names=want)
            except (OSError, pa.ArrowException, KeyError) as exc:
                raise UserError(
                    f"{f}: unreadable results ({str(exc).splitlines()[0][:200]})"
                ) from None

    def table(self, columns: Iterable[str] | None = None) -> pa.Table:
        cols = list(columns) if columns is not None else None
        tables = []
        for f in self.result_files():
            try:
                have = set(pq.read_schema(f).names)
                want = cols if cols is not None else [c for c in COLUMNS if c in have]
                t = pq.read_table(
                    f, columns=[c for c in want if c in have], page_checksum_verification=True
                )
                for c in want:  # columns added since the file was written read as nulls
                    if c not in have and c in COLUMNS:
                        t = t.append_column(
                            SCHEMA.field(c), pa.nulls(t.num_rows, SCHEMA.field(c).type)
                        )
                tables.append(t.select(want))
            except (OSError, pa.ArrowException, KeyError) as exc:
                raise UserError(
                    f"{f}: unreadable results ({str(exc).splitlines()[0][:200]})"
                ) from None
        if not tables:
            return SCHEMA.empty_table() if cols is None else SCHEMA.empty_table().select(cols)
        return pa.concat_tables(tables)
