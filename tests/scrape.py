"""Reading a loadtape metrics endpoint in tests, with prometheus_client's own parser."""

from __future__ import annotations

import socket
import urllib.request

from prometheus_client.parser import text_string_to_metric_families

Samples = dict[str, list[tuple[dict[str, str], float]]]  # name -> (labels, value) per sample


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def scrape(url: str) -> Samples:
    with urllib.request.urlopen(url, timeout=5) as r:
        text = r.read().decode()
    out: Samples = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out.setdefault(s.name, []).append((dict(s.labels), s.value))
    return out


def total(m: Samples, name: str, **want: str) -> float:
    """The sum of a metric's samples whose labels have the values asked for."""
    return sum(
        v for labels, v in m.get(name, []) if all(labels.get(k) == x for k, x in want.items())
    )
