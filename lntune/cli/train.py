"""`lntune train`: a RunConfig from a --config file, flags derived from the config fields, and KEY=VALUE overrides."""

from __future__ import annotations

import json

from lntune.cli.command import Command
from lntune.cli.config_flags import (add_config_flags, add_method_flags, config_flags, data_sources, given_values,
                                     train_flags)


def _train_arguments(parser):
    from lntune.config import DataConfig, RunConfig, TrainConfig

    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="dotted overrides, e.g. train.lr=1e-3")
    parser.add_argument("--config", help="YAML run config (flags and overrides win over it)")
    add_config_flags(parser, config_flags(RunConfig, "", only=("model", "out")))
    parser.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    add_config_flags(parser.add_argument_group("data (data.* in a --config file)"), config_flags(DataConfig, "data"))
    add_config_flags(parser.add_argument_group("training loop (train.* in a --config file)"),
                     config_flags(TrainConfig, "train"))
    add_method_flags(parser, "method (method.* in a --config file; switches default to the method's own)")


def run_config_data(args) -> dict:
    """The run config as a mapping: the --config file, then the flags given, then KEY=VALUE overrides (each wins
    over the one before), then --data; pretrain's method defaults to connector."""
    from lntune.config import apply_overrides, load_yaml

    data = load_yaml(args.config) if args.config else {}
    values = given_values(args, train_flags())
    sources = values.pop("data.sources", None)
    flat = [f"{key}={json.dumps(value)}" for key, value in values.items()]
    data = apply_overrides(data, flat + list(args.overrides))
    if sources:
        data.setdefault("data", {})["sources"] = data_sources(sources)
    if data.get("train", {}).get("stage") == "pretrain":
        data.setdefault("method", {}).setdefault("name", "connector")
    return data


def run_config_from_args(args):
    from lntune.config import RunConfig, config_from_dict
    from lntune.errors import LntuneError

    data = run_config_data(args)
    for key in ("model", "out"):
        if key not in data:
            raise LntuneError(f"--{key} is required (or set {key}: in the --config file)")
    return config_from_dict(RunConfig, data, args.config or "command line")


def _train_run(args) -> int:
    from lntune.train.trainer import train

    train(run_config_from_args(args), resume=args.resume)
    return 0


TRAIN = Command(_train_arguments, _train_run, "train a stage (pretrain / finetune) with a tuning method")
