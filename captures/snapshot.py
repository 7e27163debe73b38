"""What the capture addon hands over for each flow, and where session keys come from: light
(no pyarrow, no redaction policy), so the proxy side of the addon imports only this.
captures/exchange.py builds a record from it."""

from __future__ import annotations

from dataclasses import dataclass

HeaderFields = tuple[tuple[bytes, bytes], ...]


@dataclass(slots=True)
class Snapshot:
    """What the event loop hands over: no decoding, no copying."""

    conn_id: str
    inflight: int
    req_start: float
    req_end: float | None
    method: bytes
    scheme: bytes
    host: str
    port: int
    path: bytes
    http_version: bytes
    req_headers: HeaderFields
    req_body: bytes | None
    status: int | None = None
    reason: bytes | None = None
    resp_headers: HeaderFields | None = None
    resp_start: float | None = None
    resp_end: float | None = None
    chunk_times: list[float] | None = None
    chunk_sizes: list[int] | None = None
    resp_parts: list[bytes] | None = None
    resp_total: int = 0
    resp_body: bytes | None = None  # not streamed (rare: no body, or set by another addon)
    error: str | None = None
    websocket: bool = False

    def nbytes(self) -> int:
        return (
            (len(self.req_body) if self.req_body else 0)
            + sum(len(p) for p in self.resp_parts or ())
            + (len(self.resp_body) if self.resp_body else 0)
        )


SESSION_SOURCES = "header:X-Session-Id,user,chain,connection"


def parse_session_sources(spec: str) -> list[tuple[str, str]]:
    """'header:X-Session-Id,user,chain,connection' -> [('header', 'X-Session-Id'), ('user', ''),
    ...]. chain: the conversation found from content (captures/conversations.py)."""
    out = []
    for item in (p.strip() for p in spec.split(",")):
        if not item:
            continue
        kind, _, arg = item.partition(":")
        kind = kind.lower()
        if kind == "header" and arg:
            out.append(("header", arg))
        elif kind in ("user", "chain", "connection", "none") and not arg:
            out.append((kind, ""))
        else:
            raise ValueError(
                f"bad session key source {item!r} (want header:NAME, user, chain, connection)"
            )
    return out
