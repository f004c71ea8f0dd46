"""One exception type for bad input, so the CLI can print it without a traceback."""

from __future__ import annotations


class JestkitError(ValueError):
    """Bad input or state that the user can fix; the message names the argument/file and value."""


def check(condition: bool, message: str) -> None:
    """Raise :class:`JestkitError` with ``message`` unless ``condition`` holds."""
    if not condition:
        raise JestkitError(message)
