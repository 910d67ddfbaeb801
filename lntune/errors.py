"""The one exception type for mistakes a user can make and fix.

The CLI prints these as a single line (no traceback unless --debug); everything else is a bug
and keeps its traceback.
"""


class LntuneError(Exception):
    """A problem with the user's input: the message says what, where, and what to do."""


def unknown_key_error(kind: str, key: str, valid) -> LntuneError:
    """The error every registry lookup raises: name the bad key and list the valid ones."""
    return LntuneError(f"unknown {kind} {key!r}; valid: {', '.join(sorted(valid))}")
