"""`HOST:PORT` for a server loadtape opens (metrics, the live page): loopback unless the user
asks, since what is served names targets, endpoints and models."""

from __future__ import annotations

import ipaddress

from .errors import UserError

LOOPBACK_NAMES = {"localhost"}


def parse_listen(text: str, flag: str, *, allow_remote: bool = False) -> tuple[str, int]:
    """`HOST:PORT` (`[::1]:PORT` for IPv6); a bare `PORT` or `:PORT` is 127.0.0.1's;
    loopback unless allow_remote."""
    text = text.strip()
    host, sep, port_s = text.rpartition(":")
    if not sep or not host:  # "9464" or ":9464": loopback by default
        host, port_s = "127.0.0.1", text.lstrip(":")
    host = host.strip("[]")
    if not host or not port_s.isdigit() or not 0 <= int(port_s) < 65536:
        raise UserError(f"{flag} {text!r}: want HOST:PORT, e.g. 127.0.0.1:9464")
    if not allow_remote and not is_loopback(host):
        raise UserError(
            f"{flag} {text!r}: not a loopback address; what is served names your targets "
            "and models, so serving it beyond this machine needs --metrics-allow-remote"
        )
    return host, int(port_s)


def is_loopback(host: str) -> bool:
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
