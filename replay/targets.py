"""Targets and the command line's request edits: `--target` URLs (never the host found in a
capture), `NAME=` scoping, `--header` with ${VAR} from the environment, `--model-map`, and
URLs masked for run.json."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

from captures.errors import UserError

_ENV = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


@dataclass(frozen=True)
class Target:
    url: str
    scheme: str
    host: str
    port: int
    base_path: str  # prefix for every request path ("" or "/gateway")
    name: str = ""  # with several targets (--target NAME=URL): the name results carry

    @property
    def host_header(self) -> str:
        default = 443 if self.scheme == "https" else 80
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.port == default else f"{host}:{self.port}"


def parse_target(url: str, name: str = "") -> Target:
    """`--target URL`: http or https, a host, an optional port and base path."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise UserError(f"--target {url!r}: {exc}") from None
    if parts.scheme not in ("http", "https"):
        raise UserError(f"--target {url!r}: want an http:// or https:// URL")
    if not parts.hostname:
        raise UserError(f"--target {url!r}: no host")
    if parts.query or parts.fragment:
        raise UserError(f"--target {url!r}: a base URL takes no query or fragment")
    return Target(
        url=url,
        scheme=parts.scheme,
        host=parts.hostname,
        port=port or (443 if parts.scheme == "https" else 80),
        base_path=parts.path.rstrip("/"),
        name=name,
    )


_NAMED = re.compile(r"([A-Za-z0-9_.-]+)=(\S+)")


def parse_targets(args: Sequence[str]) -> list[Target]:
    """`--target URL`, or `--target NAME=URL` repeated: the same plan goes to each target."""
    if not args:
        raise UserError("--target is required (a replay never goes to the host in the capture)")
    named = [_NAMED.fullmatch(a.strip()) for a in args]
    if len(args) == 1 and named[0] is None:
        return [parse_target(args[0].strip())]
    out: list[Target] = []
    for a, m in zip(args, named, strict=True):
        if m is None:
            raise UserError(f"--target {a!r}: with several targets, name each: --target NAME=URL")
        if any(t.name == m.group(1) for t in out):
            raise UserError(f"--target {a!r}: the name {m.group(1)!r} is used twice")
        out.append(parse_target(m.group(2), m.group(1)))
    return out


def scoped(args: Sequence[str], names: Sequence[str]) -> tuple[list[str], dict[str, list[str]]]:
    """Split `--header`/`--model-map` values into those for every target and those for one:
    `NAME:...` where NAME is a target's name (`openai:Authorization: Bearer ${KEY}`,
    `local:small=llama3:8b`)."""
    common: list[str] = []
    per: dict[str, list[str]] = {n: [] for n in names}
    for a in args:
        head, sep, rest = a.partition(":")
        if sep and head.strip() in per:
            per[head.strip()].append(rest.strip())
        else:
            common.append(a)
    return common, per


def expand_env(template: str, env: Mapping[str, str], what: str) -> str:
    def sub(m: re.Match[str]) -> str:
        name = m.group(1)
        if name not in env:
            raise UserError(f"{what}: environment variable {name} is not set")
        return env[name]

    return _ENV.sub(sub, template)


def parse_header_args(
    args: Sequence[str], env: Mapping[str, str] | None = None
) -> tuple[list[tuple[str, str]], set[str]]:
    """`--header 'Name: value'` (set, ${VAR} expanded) and `--header 'Name:'` (remove)."""
    env = os.environ if env is None else env
    sets: list[tuple[str, str]] = []
    removes: set[str] = set()
    for arg in args:
        name, sep, value = arg.partition(":")
        name = name.strip()
        if not sep or not name or not re.fullmatch(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+", name):
            raise UserError(f"--header {arg!r}: want 'Name: value' (or 'Name:' to remove it)")
        value = value.strip()
        if not value:
            removes.add(name.lower())
            continue
        if "\r" in value or "\n" in value:
            raise UserError(f"--header {name}: a value cannot contain a line break")
        sets.append((name, expand_env(value, env, f"--header {name}")))
    return sets, removes


def parse_model_map(args: Sequence[str]) -> dict[str, str]:
    out = {}
    for arg in args:
        old, sep, new = arg.partition("=")
        if not sep or not old.strip() or not new.strip():
            raise UserError(f"--model-map {arg!r}: want OLD=NEW")
        out[old.strip()] = new.strip()
    return out


def mask_url(url: str) -> str:
    """A URL with any user:password@ part replaced (run.json never holds credentials)."""
    parts = urlsplit(url)
    if parts.username or parts.password:
        host = parts.hostname or ""
        if parts.port:
            host += f":{parts.port}"
        return urlunsplit(parts._replace(netloc=f"***@{host}"))
    return url
