"""`lntune compare`: studies of stage-2 runs side by side on the same data, seed and budget, in one report."""

from __future__ import annotations

from lntune.cli.command import Command


def _compare_arguments(parser):
    parser.add_argument("--config", default="configs/demo-compare.yaml", help="the studies to run (YAML)")
    parser.add_argument("--out", help="output directory (default: the config's `out`)")
    parser.add_argument("--rebuild", action="store_true", help="rebuild the cached tiny world and backbones")


def _compare_run(args) -> int:
    from lntune.study.runner import run_compare

    return run_compare(args.config, args.out, args.rebuild)


COMPARE = Command(_compare_arguments, _compare_run,
                  "several methods / data types / ablations side by side, one report")
