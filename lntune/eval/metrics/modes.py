"""The one check of a scoring mode, shared by every metric module (each names its own valid modes)."""

from __future__ import annotations

from lntune.errors import unknown_key_error


def check_mode(mode: str, modes: tuple[str, ...], kind: str) -> str:
    """mode if it is one of `modes`, else the house error naming it (`kind`, e.g. "POPE mode") and the valid ones."""
    if mode not in modes:
        raise unknown_key_error(kind, mode, modes)
    return mode
