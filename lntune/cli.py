"""`lntune <command>`: COMMANDS maps each command name to (define its arguments, run it).

Errors a user can cause (LntuneError) print as one line and exit 1; `--debug` shows the traceback.
Nothing is ever downloaded: HF_HUB_OFFLINE is set before transformers is imported.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import warnings

from lntune import __version__


def _add_method_switches(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("method switches (default: the method's own)")
    for switch in ("connector", "embeddings", "output-head", "final-norm"):
        group.add_argument(f"--train-{switch}", action=argparse.BooleanOptionalAction, default=None,
                           help=f"train the {switch.replace('-', ' ')} or not")
    group.add_argument("--lora-rank", type=int, default=32)
    group.add_argument("--lora-alpha", type=float, default=64.0)
    group.add_argument("--lora-dropout", type=float, default=0.05)
    group.add_argument("--lora-targets", default=None,
                       help="comma-separated linear layer names in the LLM's blocks (default: all of them)")


def method_configs_from_args(args, names):
    from lntune.config import MethodConfig

    return [
        MethodConfig(
            name=name,
            train_connector=args.train_connector,
            train_embeddings=args.train_embeddings,
            train_output_head=args.train_output_head,
            train_final_norm=args.train_final_norm,
            lora_rank=args.lora_rank,
            lora_alpha=args.lora_alpha,
            lora_dropout=args.lora_dropout,
            lora_target_modules=tuple(t.strip() for t in args.lora_targets.split(",")) if args.lora_targets else None,
        )
        for name in names
    ]


# ---- build ----------------------------------------------------------------------------------------

def _build_arguments(parser):
    parser.add_argument("--llm", required=True, help="local Hugging Face causal LM directory")
    parser.add_argument("--vision", required=True, help="local CLIP or SigLIP model directory")
    parser.add_argument("--out", required=True, help="output directory for the Llava-format MLLM")
    parser.add_argument("--connector", default="mlp2x_gelu", help="mlp2x_gelu (stock Llava) or linear (the paper's)")
    parser.add_argument("--vision-layer", type=int, default=-2, help="vision hidden state to use (default -2)")
    parser.add_argument("--vision-select", default="patch", help="patch (default) or cls_patch (CLIP only)")
    parser.add_argument("--dtype", default="auto", help="auto (the LLM's stored dtype), float32, bfloat16, float16")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty output directory")
    parser.add_argument("--trust-remote-code", action="store_true")


def _build_run(args) -> int:
    from lntune.config import BuildConfig
    from lntune.model.build import build_mllm

    config = BuildConfig(
        llm=args.llm, vision=args.vision, out=args.out, connector=args.connector, vision_layer=args.vision_layer,
        vision_select=args.vision_select, dtype=args.dtype, trust_remote_code=args.trust_remote_code,
        seed=args.seed, overwrite=args.overwrite,
    )
    build_mllm(config, say=lambda message: print(message, file=sys.stderr))
    return 0


# ---- params ---------------------------------------------------------------------------------------

def _params_arguments(parser):
    parser.add_argument("--model", help="a built MLLM directory (or any HF Llava checkpoint)")
    parser.add_argument("--llm", help="LLM directory or config.json (instead of --model)")
    parser.add_argument("--vision", help="vision model directory or config.json (with --llm)")
    parser.add_argument("--connector", default="mlp2x_gelu", help="with --llm/--vision: mlp2x_gelu or linear")
    parser.add_argument("--vision-layer", type=int, default=-2)
    parser.add_argument("--vision-select", default="patch")
    parser.add_argument("--method", action="append", help="a tuning method (repeatable; default: all of them)")
    parser.add_argument("--json", action="store_true", help="print JSON (an object for one method, a list for several)")
    parser.add_argument("--trust-remote-code", action="store_true")
    _add_method_switches(parser)


def _params_run(args) -> int:
    from lntune.methods import METHODS
    from lntune.params import config_for_counting, format_table, method_reports

    llava_config = config_for_counting(
        args.model, args.llm, args.vision, args.connector, args.vision_layer, args.vision_select, args.trust_remote_code
    )
    reports = method_reports(llava_config, method_configs_from_args(args, args.method or list(METHODS)))
    if args.json:
        payload = reports[0].to_dict() if len(reports) == 1 else [report.to_dict() for report in reports]
        print(json.dumps(payload, indent=2))
    else:
        print(format_table(reports))
    return 0


# ---- demo -----------------------------------------------------------------------------------------

def _demo_arguments(parser):
    parser.add_argument("--out", default="demo-out", help="working directory for the demo")


def _demo_run(args) -> int:
    from lntune.demo.run import run_demo

    return run_demo(args.out)


COMMANDS = {
    "build": (_build_arguments, _build_run, "assemble an MLLM from a local LLM and vision encoder"),
    "params": (_params_arguments, _params_run, "count total and trainable parameters per component and method"),
    "demo": (_demo_arguments, _demo_run, "run the built-in tiny end-to-end demo on CPU"),
}


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lntune", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"lntune {__version__}")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (add_arguments, _, help_text) in COMMANDS.items():
        sub = commands.add_parser(name, help=help_text, description=help_text)
        sub.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show full tracebacks")
        add_arguments(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # before transformers / huggingface_hub are imported
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    # PEFT still calls a transformers API that v5 deprecated; the warning is not the user's to act on.
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
    args = make_parser().parse_args(argv)
    from lntune.errors import LntuneError

    try:
        return COMMANDS[args.command][1](args)
    except LntuneError as error:
        if args.debug:
            raise
        print(f"lntune {args.command}: error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
