"""`lntune demo`: the paper in miniature on the built-in tiny world."""

from __future__ import annotations

from lntune.cli.command import Command


def _demo_arguments(parser):
    parser.add_argument("--out", default="demo-out", help="working directory for the demo")
    parser.add_argument("--methods", default="layernorm", help="comma-separated stage-2 methods (default: layernorm)")
    parser.add_argument("--rebuild", action="store_true", help="rebuild the cached tiny world and backbones")
    parser.add_argument("--budget", default="default", choices=["default", "smoke"],
                        help="smoke: a seconds-long run through every step (numbers are not meaningful)")
    parser.add_argument("--backbones", default="default", choices=["default", "deep"],
                        help="the tiny world's backbones: default (a 4-block LLM) or deep (8 blocks, for the "
                             "layer-similarity analysis); each is cached on its own")


def _demo_run(args) -> int:
    from lntune.demo.run import run_demo
    from lntune.errors import unknown_key_error
    from lntune.methods import METHODS

    methods = tuple(name.strip() for name in args.methods.split(",") if name.strip())
    for name in methods:
        if name not in METHODS:
            raise unknown_key_error("method", name, METHODS)
    return run_demo(args.out, methods, args.rebuild, args.budget, backbones=args.backbones)


DEMO = Command(_demo_arguments, _demo_run, "the paper in miniature on the built-in tiny world (CPU, minutes)")
