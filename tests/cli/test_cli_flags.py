"""The train flags come from the config dataclasses: every field is reachable from the command line, lands on its
dotted config key, and its flag's help is the field's doc."""

import dataclasses
import typing

import pytest

from lntune.cli import make_parser
from lntune.cli.config_flags import train_flags
from lntune.cli.train import run_config_data
from lntune.config import DataConfig, MethodConfig, TrainConfig, field_docs

SECTIONS = ((TrainConfig, "train"), (DataConfig, "data"), (MethodConfig, "method"))

# Fields reachable only as a dotted KEY=VALUE override (none today: every field has a flag).
OVERRIDE_ONLY: set[str] = set()

# Fields whose docstring is still to be written in lntune/config.py (their flags have only a default as help).
# A new field comes with its one-line doc: it is the flag's help.
UNDOCUMENTED: set[str] = set()

# Every flag `lntune train` had before its flags were derived from the configs.
OLD_TRAIN_FLAGS = """--config --model --out --stage --method --data --image-folder --types --template --system
    --image-placement --image-aspect-ratio --max-length --overlong --skip-invalid --num-workers --max-image-pixels
    --epochs --max-steps --batch-size --grad-accum --global-batch-size --group-by-modality-length
    --no-group-by-modality-length --lr --norm-lr --connector-lr --embedding-lr --weight-decay --warmup-ratio
    --scheduler --precision --gradient-checkpointing --max-grad-norm --distributed --deepspeed-config --seed
    --save-every --keep-checkpoints --log-every --save-merged --no-save-merged --grad-stats --no-grad-stats --resume
    --train-connector --no-train-connector --train-embeddings --no-train-embeddings --train-output-head
    --no-train-output-head --train-final-norm --no-train-final-norm --lora-rank --lora-alpha --lora-dropout
    --lora-targets""".split()


def _command_parser(name):
    commands = next(action for action in make_parser()._actions if action.dest == "command")
    return commands.choices[name]


def _actions_by_dest(name):
    return {action.dest: action for action in _command_parser(name)._actions}


def _fields():
    for cls, section in SECTIONS:
        docs = field_docs(cls)
        for field in dataclasses.fields(cls):
            yield f"{section}.{field.name}", docs.get(field.name, "")


@pytest.mark.parametrize("key,doc", list(_fields()))
def test_every_config_field_is_a_train_flag_whose_help_is_its_doc(key, doc):
    actions = _actions_by_dest("train")
    if key in OVERRIDE_ONLY:
        assert key not in actions
        return
    assert key in actions, f"{key} has no flag in `lntune train`"
    help_text = (actions[key].help or "").replace("%%", "%")
    assert (doc != "") == (key not in UNDOCUMENTED), f"{key}: write its doc in config.py / update UNDOCUMENTED"
    if doc:
        assert help_text.startswith(doc), (key, help_text)
    else:
        assert help_text.startswith("default:") or help_text == ""


def test_help_is_the_doc_plus_the_default():
    actions = _actions_by_dest("train")
    assert actions["train.batch_size"].help == "Samples per device per micro-step. (default: 4)"
    assert actions["train.lr"].help == "Learning rate; None: the method's default (lntune.methods.METHODS)."
    assert actions["data.skip_invalid"].help.endswith("instead of stopping with an error. (default: off)")
    assert actions["method.lora_target_modules"].help.endswith("(comma-separated)")
    assert actions["train.seed"].help.endswith("the same seed and data give the same run. (default: 0)")


def _sample(flag) -> tuple[list[str], object]:
    """Arguments that set `flag` to a value no default has, and the value that should land in the config mapping."""
    if flag.key == "data.sources":
        return [flag.option, "conversation=a.json:3"], [{"path": "a.json", "type": "conversation", "count": 3}]
    arguments = dict(flag.arguments)
    if "action" in arguments:  # --[no-]switch
        return ["--no-" + flag.option[2:]], False
    kind = arguments.get("type")
    if kind is int:
        return [flag.option, "7"], 7
    if kind is float:
        return [flag.option, "0.5"], 0.5
    if kind is str:
        return [flag.option, "x y"], "x y"
    return [flag.option, "a,b"], "a,b"  # a comma list, split by config_from_dict


@pytest.mark.parametrize("flag", train_flags(), ids=lambda flag: flag.option)
def test_each_flag_lands_on_its_config_key(flag):
    arguments, expected = _sample(flag)
    args = make_parser().parse_args(["train", *arguments])
    node = run_config_data(args)
    for part in flag.key.split("."):
        node = node[part]
    assert node == expected


def test_switches_set_true_too_and_overrides_win_over_flags():
    args = make_parser().parse_args(["train", "--gradient-checkpointing", "--lr", "1e-3", "train.lr=0.0005"])
    data = run_config_data(args)
    assert data["train"] == {"gradient_checkpointing": True, "lr": 0.0005}


def test_flags_not_given_leave_the_config_alone(tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text("model: m\nout: o\ntrain: {lr: 0.002}\n")
    assert run_config_data(make_parser().parse_args(["train", "--config", str(config)])) == {
        "model": "m", "out": "o", "train": {"lr": 0.002}}


def test_no_flag_of_the_old_train_command_is_lost():
    options = {option for action in _command_parser("train")._actions for option in action.option_strings}
    assert set(OLD_TRAIN_FLAGS) - options == set()


def test_params_takes_the_method_flags_but_names_methods_its_own_way():
    actions = _actions_by_dest("params")
    docs = field_docs(MethodConfig)
    for name in docs:
        if name != "name":
            assert actions[f"method.{name}"].help.startswith(docs[name])
    assert actions["method"].option_strings == ["--method"] and actions["method"].nargs is None


def test_field_docs_reads_the_string_below_each_field():
    @dataclasses.dataclass(frozen=True)
    class Example:
        plain: int = 1
        """One line."""
        undocumented: str = "x"
        several: typing.Optional[float] = None
        """First line,
        second line."""

    assert field_docs(Example) == {"plain": "One line.", "several": "First line,\nsecond line."}
