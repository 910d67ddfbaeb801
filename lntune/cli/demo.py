"""`lntune demo`: the paper in miniature on the built-in tiny world."""

from __future__ import annotations

from lntune.cli.command import Command


def _demo_arguments(parser):
    parser.add_argument("--out", default="demo-out", help="working directory for the demo")
    parser.add_argument("--methods", default="layernorm", help="comma-separated stage-2 methods (default: layernorm)")
    parser.add_argument("--rebuild", action="store_true", help="rebuild the cached tiny world and backbones")
    parser.add_argument("--budget", default="default", choices=["default", "smoke"],
                        help="smoke: a seconds-long run through every step (numbers are not meaningful)")


def _demo_run(args) -> int:
    from lntune.demo.run import run_demo
    from lntune.errors import unknown_key_error
    from lntune.methods import METHODS

    methods = tuple(name.strip() for name in args.methods.split(",") if name.strip())
    for name in methods:
        if name not in METHODS:
            raise unknown_key_error("method", name, METHODS)
    return run_demo(args.out, methods, args.rebuild, args.budget)


DEMO = Command(_demo_arguments, _demo_run, "the paper in miniature on the built-in tiny world (CPU, minutes)")
