"""The redaction key: markers are keyed hashes, so equal secrets get equal markers and none can be
reversed or brute-forced without it. It lives outside any capture (`~/.config/loadtape/
redaction.key`, 0600 in a 0700 directory, or where $LOADTAPE_REDACTION_KEY_FILE says)."""

from __future__ import annotations

import hashlib
import os
import secrets
import stat
from pathlib import Path

from .errors import UserError

DEFAULT_KEY_FILE = Path("~/.config/loadtape/redaction.key")


def key_path(path: str | os.PathLike[str] | None = None) -> Path:
    """Where the redaction key lives: the given path, $LOADTAPE_REDACTION_KEY_FILE, or
    ~/.config/loadtape/redaction.key."""
    chosen = path or os.environ.get("LOADTAPE_REDACTION_KEY_FILE") or DEFAULT_KEY_FILE
    return Path(chosen).expanduser().resolve()


def load_or_create_key(path: str | os.PathLike[str] | None = None) -> bytes:
    """The redaction key: created (32 random bytes, 0600, in a 0700 directory) if missing."""
    p = key_path(path)
    try:
        p.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        try:
            fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        except FileExistsError:
            pass
        else:
            try:
                os.write(fd, secrets.token_hex(32).encode())
                os.fsync(fd)
            finally:
                os.close(fd)
        mode = stat.S_IMODE(p.stat().st_mode)
        if mode & 0o077:
            raise UserError(
                f"{p}: redaction key must not be readable by others (mode {mode:o}; chmod 600)"
            )
        key = p.read_bytes().strip()
    except OSError as exc:
        raise UserError(f"{p}: cannot create or read the redaction key ({exc.strerror})") from None
    if len(key) < 32:
        raise UserError(f"{p}: redaction key is too short")
    return key


def key_fingerprint(key: bytes) -> str:
    return hashlib.sha256(b"loadtape-redaction-key-id\0" + key).hexdigest()[:12]
