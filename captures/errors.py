"""Errors shown to users as one line (the CLI prints them and exits with `exit_code`)."""


class UserError(Exception):
    """Bad input or usage: the message names what is wrong (and the file, where there is one)."""

    exit_code = 2


class CaptureError(UserError):
    """A capture cannot be read or written as asked."""
