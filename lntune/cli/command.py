"""What a command is to the CLI: a function that defines its arguments, one that runs it, and a line of help."""

from __future__ import annotations

import argparse
import sys
from typing import Callable, NamedTuple


class Command(NamedTuple):
    arguments: Callable[[argparse.ArgumentParser], None]
    """Adds the command's flags to its subparser."""
    run: Callable[[argparse.Namespace], int]
    """Turns the parsed flags into typed arguments, calls the library, prints; returns the exit code."""
    help: str
    """One line for `lntune --help` and the command's own description."""


def say(message: str) -> None:
    """Progress for a person: stderr, so stdout stays the command's result (a table, JSON)."""
    print(message, file=sys.stderr)


def add_debug_flag(parser: argparse.ArgumentParser) -> None:
    # SUPPRESS: a --debug given before the command (lntune --debug train ...) is not reset by the subparser
    parser.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show full tracebacks")


def named_adapters(specs: list[str]) -> dict[str, str]:
    """`--adapter NAME=DIR` flags (repeatable) -> {name: folder}, names unique."""
    from lntune.errors import LntuneError

    adapters = {}
    for spec in specs:
        name, separator, folder = spec.partition("=")
        if not separator or not name or not folder:
            raise LntuneError(f"--adapter {spec!r}: give NAME=DIR (e.g. --adapter ln=runs/ln/adapter)")
        if name in adapters:
            raise LntuneError(f"--adapter {name} is given twice; each adapter needs its own name")
        adapters[name] = folder
    return adapters


def one_or_named_adapters(specs: list[str] | None) -> tuple[str | None, dict[str, str] | None]:
    """`lntune eval` / `chat`'s --adapter flags: none -> (None, None); one `--adapter DIR` -> (DIR, None), the single
    adapter as ever; `--adapter NAME=DIR` flags -> (None, {name: folder}), several adapters decoded together. A flag
    is NAME=DIR when the text before its first `=` is a name (no path separator) and the flag is not itself a folder."""
    from pathlib import Path

    from lntune.errors import LntuneError

    specs = specs or []

    def is_named(spec: str) -> bool:
        name, separator, _ = spec.partition("=")
        return bool(separator) and "/" not in name and "\\" not in name and not Path(spec).is_dir()

    named = [spec for spec in specs if is_named(spec)]
    if not named:
        if len(specs) > 1:
            raise LntuneError(f"{len(specs)} --adapter folders given; to evaluate several adapters together name "
                              "each: --adapter NAME=DIR (repeatable)")
        return (specs[0] if specs else None), None
    if len(named) != len(specs):
        plain = next(spec for spec in specs if not is_named(spec))
        raise LntuneError(f"--adapter {plain!r} has no name while other --adapter flags do; give every adapter as "
                          "NAME=DIR")
    return None, named_adapters(specs)
