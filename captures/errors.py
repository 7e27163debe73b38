"""Errors shown to users as one line (the CLI prints them and exits with `exit_code`)."""


class UserError(Exception):
    """Bad input or usage: the message names what is wrong (and the file, where there is one)."""

    exit_code = 2


class CaptureError(UserError):
    """A capture cannot be read or written as asked."""


class RunFailed(UserError):
    """The command ran and failed (a proxy that stopped recording, a run in which nothing
    succeeded): exit 1, like a failed gate, not 2 (the input was fine)."""

    exit_code = 1
