"""Which capture rows to read: `RowFilter` (methods, path globs, models, statuses, a time window),
applied to Arrow batches with compute kernels, and the path glob and status spec grammars the
command line and scenario files share."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc


@dataclass(frozen=True)
class RowFilter:
    """Which records to read. Every set field must match (AND); None means any."""

    methods: frozenset[str] | None = None
    path_globs: tuple[str, ...] | None = None
    models: frozenset[str] | None = None
    statuses: frozenset[str] | None = None  # "200", "2xx", "error" (no response)
    start_ns: int | None = None  # request start >= this
    end_ns: int | None = None  # request start < this

    def columns(self) -> set[str]:
        cols = {"req_start_ns"} if self.start_ns is not None or self.end_ns is not None else set()
        if self.methods is not None:
            cols.add("method")
        if self.path_globs is not None:
            cols.add("path")
        if self.models is not None:
            cols.add("model")
        if self.statuses is not None:
            cols.add("status")
        return cols

    def is_empty(self) -> bool:
        return not self.columns()

    def describe(self) -> str:
        """The filters as the command line spells them."""
        parts = []
        for flag, values in (
            ("--filter-method", self.methods),
            ("--filter-path", self.path_globs),
            ("--filter-model", self.models),
            ("--filter-status", self.statuses),
        ):
            if values is not None:
                parts.append(f"{flag} {','.join(sorted(values))}")
        return " ".join(parts) or "(none)"

    def mask(self, batch: pa.RecordBatch | pa.Table) -> pa.Array | None:
        """A boolean mask for the batch, or None if everything passes."""
        conds: list[Any] = []
        start, end = self.start_ns, self.end_ns
        if (start is not None or end is not None) and not batch["req_start_ns"].null_count:
            # A batch wholly inside the window needs no time mask (a replay's window is most
            # often the whole capture, and masking and filtering a batch costs more than
            # reading it).
            span = pc.min_max(batch["req_start_ns"])
            lo, hi = span["min"].as_py(), span["max"].as_py()
            if lo is not None and (start is None or lo >= start):
                start = None
            if hi is not None and (end is None or hi < end):
                end = None
        if start is not None:
            conds.append(pc.greater_equal(batch["req_start_ns"], start))
        if end is not None:
            conds.append(pc.less(batch["req_start_ns"], end))
        if self.methods is not None:
            conds.append(pc.is_in(pc.utf8_upper(batch["method"]), pa.array(sorted(self.methods))))
        if self.path_globs is not None:
            regex = "|".join(f"(?:{_glob_regex(g)})" for g in self.path_globs)
            conds.append(pc.match_substring_regex(batch["path"], f"(?s)^(?:{regex})$"))
        if self.models is not None:
            conds.append(pc.is_in(batch["model"], pa.array(sorted(self.models), pa.string())))
        if self.statuses is not None:
            conds.append(_status_mask(batch["status"], self.statuses))
        if not conds:
            return None
        out = conds[0]
        for c in conds[1:]:
            out = pc.and_kleene(out, c)
        return pc.fill_null(out, False)


def _glob_regex(glob: str) -> str:
    """A path glob as an RE2 regex: `*` any run of characters (slashes too), `?` one character,
    `[...]` a class. (fnmatch.translate emits lookaheads RE2 does not support.)"""
    out = []
    i = 0
    while i < len(glob):
        ch = glob[i]
        if ch == "*":
            out.append(".*")
        elif ch == "?":
            out.append(".")
        elif ch == "[":
            j = glob.find("]", i + 2 if glob[i + 1 : i + 2] in ("!", "]") else i + 1)
            if j < 0:
                out.append(re.escape(ch))
            else:
                cls = glob[i + 1 : j].replace("\\", "\\\\")
                if cls.startswith("!"):
                    cls = "^" + cls[1:]
                out.append(f"[{cls}]")
                i = j
        else:
            out.append(re.escape(ch))
        i += 1
    return "".join(out)


def glob_match(glob: str, text: str) -> bool:
    """The same matching in Python (for code paths that filter single records)."""
    return re.fullmatch(_glob_regex(glob), text, re.S) is not None


def _status_mask(status: pa.Array, specs: frozenset[str]) -> pa.Array:
    conds: list[Any] = []
    for spec in specs:
        if spec == "error":
            conds.append(pc.is_null(status))
        elif re.fullmatch(r"[1-5]xx", spec):
            lo = int(spec[0]) * 100
            conds.append(pc.and_(pc.greater_equal(status, lo), pc.less(status, lo + 100)))
        else:
            conds.append(pc.equal(status, int(spec)))
    out = conds[0]
    for c in conds[1:]:
        out = pc.or_kleene(out, c)
    return out


def parse_status_spec(text: str) -> frozenset[str]:
    """'200,5xx,error' -> frozenset; raises ValueError naming the bad part."""
    out = set()
    for part in (p.strip().lower() for p in text.split(",")):
        if part == "error" or re.fullmatch(r"[1-5]xx", part) or re.fullmatch(r"[1-5]\d\d", part):
            out.add(part)
        else:
            raise ValueError(f"bad status {part!r} (want e.g. 200, 5xx or error)")
    return frozenset(out)
