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
