"""`lntune serve`: the flags and start-up live beside the server (lntune/serve/cli.py); this registers the command."""

from __future__ import annotations

from lntune.cli.command import Command
from lntune.serve import cli as serve_cli

SERVE = Command(serve_cli.add_arguments, serve_cli.run,
                "an OpenAI-compatible server and chat page for a model and its adapters (mixed in one batch)")
