"""`lntune <command>`: COMMANDS maps each command name to its Command (define its arguments, run it, one line of help).

One module per command group (model, train, data, evaluate, analysis, demo, study); each only turns flags into typed
arguments or configs and calls the library. The train flags are derived from the config dataclasses
(config_flags.py), so a new config field is a new flag, with its doc as the help.

Errors a user can cause (LntuneError) print as one line and exit 1, and so does the OS refusing a write (disk full,
read-only file system, permission denied); `--debug` shows the traceback.
Nothing is ever downloaded: HF_HUB_OFFLINE is set before transformers is imported.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import warnings

from lntune import __version__
from lntune.cli import analysis, data, demo, evaluate, model, serve, study, train
from lntune.cli.command import Command, add_debug_flag

COMMANDS: dict[str, Command] = {
    "build": model.BUILD,
    "import": model.IMPORT,
    "params": model.PARAMS,
    "train": train.TRAIN,
    "merge": model.MERGE,
    "data": data.DATA,
    "eval": evaluate.EVAL,
    "score": evaluate.SCORE,
    "report": evaluate.REPORT,
    "chat": evaluate.CHAT,
    # A new command group: a module here defining NAME = Command(arguments, run, help), and one line below.
    "serve": serve.SERVE,
    "analyze": analysis.ANALYZE,
    "demo": demo.DEMO,
    "compare": study.COMPARE,
}


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lntune",
        description="Turn a text LLM into a multimodal LLM by tuning its LayerNorms (LLaVA-style), with full, LoRA "
                    "and partial tuning beside it; evaluate on MME, VQAv2, COCO, Flickr30k and POPE.",
        epilog="Start with `lntune demo`. Every command has --help.",
    )
    parser.add_argument("--version", action="version", version=f"lntune {__version__}")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, command in COMMANDS.items():
        sub = commands.add_parser(name, help=command.help, description=command.help)
        add_debug_flag(sub)
        command.arguments(sub)
    return parser


def _library_progress_bars_only_on_a_terminal() -> None:
    """transformers' and the hub's progress bars ("Loading weights", "Writing model shards") are for a person
    watching; written into a pipe or a log file they are noise in front of the one line an error gets."""
    if sys.stderr.isatty():
        return
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # read when transformers is imported
    if "transformers" in sys.modules:  # imported already (the Python API, tests): switch it off directly
        from transformers.utils import logging as transformers_logging

        transformers_logging.disable_progress_bar()


class _DeepSpeedToStderr(logging.Filter):
    def filter(self, record):
        message = record.getMessage()
        if not message.startswith("Setting accelerator to CPU"):
            sys.stderr.write(f"[DeepSpeed {record.levelname}] {message}\n")
        return False


_DEEPSPEED_TO_STDERR = _DeepSpeedToStderr()


def deepspeed_logs_to_stderr() -> None:
    """DeepSpeed logs to stdout, and Accelerate imports it whenever it is installed (transformers' save_pretrained
    does, through Accelerate). The CLI's stdout carries results (`lntune report`, `eval` tables), so DeepSpeed's
    records are written to stderr instead. Called by `main` before anything imports DeepSpeed (a filter on its
    logger, set before DeepSpeed creates the logger's handler, survives that creation); the Python API leaves
    logging alone. Calling it again changes nothing (the same filter object is added once).

    One record is dropped: on import DeepSpeed warns "Setting accelerator to CPU" whenever torch sees no GPU. That is
    DeepSpeed describing the machine, not something lntune's user can act on (lntune places its work by what torch
    sees, as DeepSpeed then does), and it turned every one-line error on a CPU machine into three lines."""
    logging.getLogger("DeepSpeed").addFilter(_DEEPSPEED_TO_STDERR)


def main(argv: list[str] | None = None) -> int:
    deepspeed_logs_to_stderr()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # before transformers / huggingface_hub are imported
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    _library_progress_bars_only_on_a_terminal()
    # PEFT still calls a transformers API that v5 deprecated; the warning is not the user's to act on.
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
    args = make_parser().parse_args(argv)
    from lntune.errors import LntuneError

    try:
        return COMMANDS[args.command].run(args)
    except LntuneError as error:
        if args.debug:
            raise
        print(f"lntune {args.command}: error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as error:
        # The OS refusing a write (disk full, read-only, permission denied) can surface from any library a command
        # calls, wrapped or not; it is the user's to fix, so it gets one line too. Anything else is a bug.
        from lntune.files import os_error_message

        message = os_error_message(error, getattr(args, "out", None))
        if message is None or args.debug:
            raise
        print(f"lntune {args.command}: error: {message}", file=sys.stderr)
        return 1
