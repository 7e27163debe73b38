"""The redaction marker's form, `[REDACTED:<kind>:<hmac>]`, on its own: replay looks for it in
every request it prepares and should not load the redaction policy (detect-secrets' plugins
cost a replay ~0.3 s of start-up) to do so. captures/redact/policy.py makes the markers."""

from __future__ import annotations

import re

MARKER_RE = re.compile(r"\[REDACTED:[a-z_\-]+:[0-9a-f]{8}\]")
