"""Flags derived from the config dataclasses: one flag per field, its help the field's one-line doc.

A field `name` of a config section (`train`, `data`, `method`; "" for RunConfig's top-level keys) becomes the flag
`--name-with-dashes`, whose argparse dest is the dotted config key (`train.batch_size`). The field's annotation
decides the form: bool -> `--name` / `--no-name`, int / float / str -> a value, tuple[str, ...] -> a
comma-separated list. A flag not given stays None, which leaves the value to the --config file or the dataclass
default. FLAG_SPECS holds the few fields whose flag is not the derived one; nothing else is written twice.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import types
import typing
from dataclasses import dataclass

from lntune.config import DataConfig, MethodConfig, RunConfig, TrainConfig, config_from_dict, field_docs


@dataclass(frozen=True)
class FlagSpec:
    """How a field appears on the command line where that is not simply derived from its name and type."""

    option: str | None = None
    """The flag, when not --field-name (a shorter or historical name)."""
    metavar: str | None = None
    """The value's placeholder in --help; default: the flag's name in capitals."""
    default_note: str | None = None
    """The default as --help states it, when the field's own default is not the whole story."""
    repeatable: bool = False
    """Each use adds one value (a list), e.g. --data a.json --data b.json."""


FLAG_SPECS = {
    "method.name": FlagSpec("--method", default_note="layernorm; connector in stage pretrain"),
    "method.lora_target_modules": FlagSpec("--lora-targets"),
    "data.sources": FlagSpec("--data", metavar="[TYPE=]PATH[:COUNT]", repeatable=True),
    "train.global_batch_size": FlagSpec(metavar="N"),
    "train.deepspeed_config": FlagSpec(metavar="JSON"),
}


@dataclass(frozen=True)
class ConfigFlag:
    """One config field as a flag."""

    key: str
    """The dotted config key (as in YAML files and KEY=VALUE overrides); also the flag's argparse dest."""
    option: str
    """The flag, e.g. --batch-size."""
    arguments: tuple[tuple[str, object], ...]
    """argparse.add_argument keyword arguments (action / type / metavar / help)."""


def config_flags(cls, section: str, *, only: tuple[str, ...] | None = None,
                 skip: tuple[str, ...] = ()) -> list[ConfigFlag]:
    """The flags of `cls`'s fields (all, or `only` these, less `skip`), in the dataclass's field order."""
    return [flag for flag in _all_flags(cls, section)
            if (only is None or flag.key.rpartition(".")[2] in only) and flag.key.rpartition(".")[2] not in skip]


@functools.lru_cache(maxsize=None)
def _all_flags(cls, section: str) -> tuple[ConfigFlag, ...]:
    docs, hints = field_docs(cls), typing.get_type_hints(cls)
    flags = []
    for field in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[field.name]):
            continue  # a nested section (RunConfig.train): its own fields get the flags
        key = f"{section}.{field.name}" if section else field.name
        flags.append(_flag(key, field, hints[field.name], docs.get(field.name, ""), FLAG_SPECS.get(key, FlagSpec())))
    return tuple(flags)


def _flag(key: str, field: dataclasses.Field, hint, doc: str, spec: FlagSpec) -> ConfigFlag:
    option = spec.option or "--" + field.name.replace("_", "-")
    hint = _without_none(hint)
    notes = []
    arguments: dict[str, object] = {"dest": key, "default": None}
    if hint is bool:
        arguments["action"] = argparse.BooleanOptionalAction
    elif hint in (int, float, str):
        arguments["type"] = hint
    elif typing.get_origin(hint) is tuple and spec.repeatable:
        arguments["action"] = "append"
    elif typing.get_origin(hint) is tuple and typing.get_args(hint)[0] is str:
        notes.append("comma-separated")  # the string is split by config_from_dict, as in a YAML file
    else:
        raise TypeError(f"config field {key} ({hint}) has no command-line form yet: give its type one here")
    if "action" not in arguments or arguments["action"] == "append":
        arguments["metavar"] = spec.metavar or option.lstrip("-").replace("-", "_").upper()
    default = spec.default_note or _default_text(field)
    if default:
        notes.append(f"default: {default}")
    text = f"{doc} ({'; '.join(notes)})" if doc and notes else doc or "; ".join(notes)
    arguments["help"] = text.replace("%", "%%") or None  # argparse formats help with %
    return ConfigFlag(key, option, tuple(arguments.items()))


def _without_none(hint):
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        options = [option for option in typing.get_args(hint) if option is not type(None)]
        if len(options) == 1:
            return options[0]
    return hint


def _default_text(field: dataclasses.Field) -> str | None:
    value = field.default
    if value is dataclasses.MISSING or value is None or value == ():
        return None
    if isinstance(value, bool):
        return "on" if value else "off"
    return str(value)


def add_config_flags(parser, flags: list[ConfigFlag]) -> None:
    """Add `flags` to a parser or an argument group."""
    for flag in flags:
        parser.add_argument(flag.option, **dict(flag.arguments))


def given_values(args: argparse.Namespace, flags: list[ConfigFlag]) -> dict[str, object]:
    """{dotted key: value} of the flags given on the command line."""
    values = {flag.key: getattr(args, flag.key) for flag in flags}
    return {key: value for key, value in values.items() if value is not None}


# ---- the sets of flags commands share ---------------------------------------------------------------

def method_flags(with_name: bool = True) -> list[ConfigFlag]:
    """MethodConfig's flags; `lntune params` names its methods its own way (repeatable --method)."""
    return config_flags(MethodConfig, "method", skip=() if with_name else ("name",))


def train_flags() -> list[ConfigFlag]:
    """Every RunConfig field as a flag: --model, --out and the data, train and method sections."""
    return [*config_flags(RunConfig, "", only=("model", "out")), *config_flags(DataConfig, "data"),
            *config_flags(TrainConfig, "train"), *method_flags()]


def add_method_flags(parser: argparse.ArgumentParser, title: str, with_name: bool = True) -> None:
    add_config_flags(parser.add_argument_group(title), method_flags(with_name))


def method_configs(args: argparse.Namespace, names: list[str]) -> list[MethodConfig]:
    """One MethodConfig per name, with the method flags given on the command line."""
    fields = {key.partition(".")[2]: value for key, value in given_values(args, method_flags(False)).items()}
    return [config_from_dict(MethodConfig, dict(fields, name=name), "command line") for name in names]


def data_sources(specs: list[str]) -> list[dict]:
    """[TYPE=]PATH[:COUNT] specs -> the `data.sources` entries of a config mapping."""
    from lntune.data.mixture import parse_data_spec

    return [{key: value for key, value in vars(parse_data_spec(spec)).items() if value is not None} for spec in specs]
