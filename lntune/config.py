"""Configuration: frozen dataclasses with defaults and one-line docs, validated once.

One path from the outside world to a config: `config_from_dict(Cls, mapping, source)` checks every
key and type and names the source (a YAML file, the command line) in its errors. YAML files and
dotted `key.sub=value` overrides both end in that call, so the CLI and the Python API agree.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from lntune.errors import LntuneError

CONNECTOR_NAMES = ("linear", "mlp2x_gelu")
VISION_SELECT_NAMES = ("patch", "cls_patch")
DTYPE_NAMES = ("auto", "float32", "bfloat16", "float16")


@dataclass(frozen=True)
class BuildConfig:
    """How to assemble an MLLM from a local causal LM and a local vision encoder."""

    llm: str
    """Directory of a Hugging Face causal LM (weights + tokenizer)."""
    vision: str
    """Directory of a CLIP or SigLIP model (a full CLIP checkpoint's vision half is used)."""
    out: str
    """Where the Llava-format model is written."""
    connector: str = "mlp2x_gelu"
    """`mlp2x_gelu` (LLaVA-1.5, loads in stock transformers) or `linear` (the paper's; lntune loads it)."""
    vision_layer: int = -2
    """Which vision encoder hidden state feeds the connector (-2: second to last, as LLaVA)."""
    vision_select: str = "patch"
    """`patch`: patch tokens only; `cls_patch`: the CLS token too (CLIP only)."""
    dtype: str = "auto"
    """Weights' dtype in the output: `auto` keeps the LLM's stored dtype."""
    trust_remote_code: bool = False
    """Allow models whose config asks to run code shipped with the checkpoint."""
    seed: int = 0
    """Seeds the connector's initialisation and the new token embeddings."""
    overwrite: bool = False
    """Replace an existing, non-empty output directory."""

    def __post_init__(self):
        _check_choice("connector", self.connector, CONNECTOR_NAMES)
        _check_choice("vision_select", self.vision_select, VISION_SELECT_NAMES)
        _check_choice("dtype", self.dtype, DTYPE_NAMES)


@dataclass(frozen=True)
class MethodConfig:
    """Which parameters a tuning method trains. `None` switches take the method's default."""

    name: str = "layernorm"
    """One of lntune.methods.METHODS: full, lora, attn-qv, attn-mlp, layernorm, layernorm-simple, connector."""
    train_connector: bool | None = None
    """Train the vision-language connector (default: per method; paper: on for all but layernorm-simple)."""
    train_embeddings: bool | None = None
    """Train the LLM's input word embeddings."""
    train_output_head: bool | None = None
    """Train the LLM's output head (tied with the embeddings on some families: then both or neither)."""
    train_final_norm: bool | None = None
    """Train the LLM's final norm after the last block (default on for the layernorm methods)."""
    lora_rank: int = 32
    """LoRA rank r (the paper compares with 32 and 64)."""
    lora_alpha: float = 64.0
    """LoRA scaling numerator: the update is scaled by alpha / r."""
    lora_dropout: float = 0.05
    """Dropout on the LoRA input."""
    lora_target_modules: tuple[str, ...] | None = None
    """Names of the LLM's linear layers to adapt (e.g. q_proj, v_proj); None: every linear layer in its blocks."""

    def __post_init__(self):
        from lntune.methods.registry import METHODS  # local: the registry imports this module's names

        _check_choice("method", self.name, METHODS)
        _check_at_least("method.lora_rank", self.lora_rank, 1)
        _check_positive("method.lora_alpha", self.lora_alpha)
        _check_fraction("method.lora_dropout", self.lora_dropout)
        if self.lora_target_modules is not None and not self.lora_target_modules:
            raise LntuneError("lora_target_modules is empty: give at least one module name, or leave it unset")


OVERLONG_POLICIES = ("truncate", "skip")
IMAGE_PLACEMENTS = ("front", "keep")
IMAGE_ASPECT_RATIOS = ("auto", "pad", "crop")
STAGES = ("pretrain", "finetune")
PRECISIONS = ("auto", "bf16", "fp16", "fp32")
SCHEDULERS = ("cosine", "linear", "constant")
DISTRIBUTED = ("ddp", "fsdp2", "zero2", "zero3")
QUANTIZE_MODES = ("4bit", "8bit")


@dataclass(frozen=True)
class DataSource:
    """One data file, optionally tagged with a type and cut to a sample count."""

    path: str
    """LLaVA-format JSON list or JSON Lines file."""
    type: str | None = None
    """Type tag for samples that carry no `type` field of their own (e.g. conversation, detail)."""
    count: int | None = None
    """Use this many samples, drawn deterministically (seeded) from the file; None: all."""

    def __post_init__(self):
        if self.count is not None and self.count < 1:
            raise LntuneError(f"data source {self.path}: count must be >= 1, got {self.count}")


@dataclass(frozen=True)
class DataConfig:
    """What to train on and how samples become tokens."""

    sources: tuple[DataSource, ...] = ()
    """Data files; CLI form: --data [TYPE=]PATH[:COUNT] (repeatable)."""
    image_folder: str | None = None
    """Folder that the samples' relative image paths start from."""
    types: tuple[str, ...] | None = None
    """Keep only samples whose type is one of these (the paper's data-type study)."""
    template: str = "auto"
    """Chat template: auto (the model's own; plain in stage pretrain), vicuna_v1, llama_2, plain, tokenizer."""
    system: str | None = None
    """System prompt for templates that have one (vicuna_v1, llama_2); None: the template's own (LLaVA's). A sample's
    own system turn still wins."""
    image_placement: str = "front"
    """front: as LLaVA's preprocess_multimodal, `<image>` moves to the front of its turn (`<image>\\n` + stripped
    text) in training, evaluation and chat alike; keep: leave it where the data puts it."""
    image_aspect_ratio: str = "auto"
    """pad: pad to a square with the processor's mean colour, then resize (LLaVA-1.5 finetuning and evaluation);
    crop: the processor's own resize and centre crop; auto: crop in stage pretrain, pad in finetune (LLaVA-1.5)."""
    max_length: int = 2048
    """Longest sequence in tokens, image tokens included."""
    overlong: str = "truncate"
    """Longer samples: truncate (text after the image) or skip (and count)."""
    skip_invalid: bool = False
    """Skip and count invalid records and unreadable images instead of stopping with an error."""
    max_image_pixels: int = 64_000_000
    """Decompression-bomb guard: images with more pixels are refused."""
    num_workers: int = 0
    """DataLoader worker processes (image decoding in parallel)."""

    def __post_init__(self):
        _check_choice("overlong policy", self.overlong, OVERLONG_POLICIES)
        _check_choice("image_placement", self.image_placement, IMAGE_PLACEMENTS)
        _check_choice("image_aspect_ratio", self.image_aspect_ratio, IMAGE_ASPECT_RATIOS)
        _check_at_least("data.max_length", self.max_length, 8)
        _check_at_least("data.max_image_pixels", self.max_image_pixels, 1)
        _check_at_least("data.num_workers", self.num_workers, 0)


@dataclass(frozen=True)
class TrainConfig:
    """The optimisation loop."""

    stage: str = "finetune"
    """pretrain (connector on captions) or finetune (instruction data with a method)."""
    epochs: float = 1.0
    """Passes over the data (fractions allowed); ignored when max_steps is set."""
    max_steps: int | None = None
    """Optimizer steps to run; None: from epochs."""
    batch_size: int = 4
    """Samples per device per micro-step."""
    global_batch_size: int | None = None
    """Samples per optimizer step over all processes; grad_accum is then derived as
    global_batch_size / (batch_size x processes), so the same run config trains the same way on any GPU count."""
    grad_accum: int | None = None
    """Micro-steps per optimizer step (None: 1, or derived from global_batch_size). Global batch = batch_size x
    grad_accum x processes."""
    group_by_modality_length: bool = False
    """LLaVA's option: image and text-only samples in separate global batches, each sorted by length (longest first)
    so that a micro-batch holds samples of similar length (docs/training.md, Batching)."""
    lr: float | None = None
    """Learning rate; None: the method's default (lntune.methods.METHODS)."""
    norm_lr: float | None = None
    """Learning rate for norm parameters; None: lr."""
    connector_lr: float | None = None
    """Learning rate for the connector; None: lr."""
    embedding_lr: float | None = None
    """Learning rate for word embeddings and output head; None: lr."""
    weight_decay: float = 0.0
    """AdamW weight decay on matrices (never on norms, biases or embeddings)."""
    warmup_ratio: float = 0.03
    """Fraction of the steps over which the learning rate rises linearly from 0 (LLaVA: 0.03)."""
    scheduler: str = "cosine"
    """Learning-rate schedule after warmup: cosine, linear, constant."""
    max_grad_norm: float = 1.0
    """Gradient clipping; 0 turns it off."""
    precision: str = "auto"
    """auto (bf16 on GPUs that have it, else fp32), bf16, fp16, fp32."""
    gradient_checkpointing: bool = False
    """Recompute activations in the backward (non-reentrant, so norm tuning still gets its gradients): less memory,
    about a third more compute."""
    seed: int = 0
    """Seeds the data order, sampling and initialisations; the same seed and data give the same run."""
    log_every: int = 1
    """Write metrics.jsonl / TensorBoard every N optimizer steps."""
    save_every: int = 500
    """Checkpoint every N optimizer steps (0: only at the end)."""
    keep_checkpoints: int = 2
    """How many of the newest checkpoints to keep."""
    distributed: str = "ddp"
    """How several processes (torchrun) share the work: ddp (replicas), fsdp2 (sharded parameters), or DeepSpeed
    zero2 (sharded optimizer state and gradients) / zero3 (and sharded parameters); the last two need deepspeed."""
    deepspeed_config: str | None = None
    """zero2/zero3 only: a DeepSpeed JSON merged into the config lntune writes, e.g. for
    zero_optimization.offload_optimizer. Batch sizes, precision, clipping, stage, optimizer and scheduler stay lntune's."""
    save_merged: bool | None = None
    """Also write a full merged model/ (None: yes for pretrain, whose output the finetune stage starts from)."""
    grad_stats: bool = True
    """Log per-block gradient norms of the norm parameters (gradient-variance analysis)."""
    quantize: str | None = None
    """4bit (NF4) or 8bit (int8): hold the LLM blocks' frozen linear layers quantized through bitsandbytes (QLN /
    QLoRA); norms, embeddings, output head and connector stay in full precision. layernorm, layernorm-simple, lora
    and connector only; one process or ddp. None: full precision."""
    quantize_vision: bool = False
    """With quantize: the vision tower's linear layers too (it is always frozen)."""

    def __post_init__(self):
        _check_choice("stage", self.stage, STAGES)
        _check_choice("precision", self.precision, PRECISIONS)
        _check_choice("scheduler", self.scheduler, SCHEDULERS)
        _check_choice("distributed mode", self.distributed, DISTRIBUTED)
        if self.quantize is not None:
            _check_choice("train.quantize", self.quantize, QUANTIZE_MODES)
            if self.distributed != "ddp":
                # FSDP2 and ZeRO-3 would shard (and DeepSpeed re-cast) the weights bitsandbytes holds packed
                raise LntuneError(f"train.quantize works on one process or with distributed ddp, not "
                                  f"{self.distributed}; drop --quantize or use --distributed ddp")
        elif self.quantize_vision:
            raise LntuneError("train.quantize_vision needs train.quantize (4bit or 8bit)")
        if self.deepspeed_config and self.distributed not in ("zero2", "zero3"):
            raise LntuneError(f"deepspeed_config {self.deepspeed_config} needs distributed zero2 or zero3 "
                              f"(got {self.distributed})")
        for name in ("batch_size", "grad_accum", "global_batch_size", "log_every", "keep_checkpoints"):
            if getattr(self, name) is not None:  # grad_accum / global_batch_size: None = derived / unset
                _check_at_least(f"train.{name}", getattr(self, name), 1)
        if self.max_steps is not None:
            _check_at_least("train.max_steps", self.max_steps, 1)
        if self.max_steps is None:
            _check_positive("train.epochs", self.epochs)
        for name in ("lr", "norm_lr", "connector_lr", "embedding_lr"):
            if getattr(self, name) is not None:
                # a negative rate would climb the loss (gradient ascent), zero would train nothing
                _check_positive(f"train.{name}", getattr(self, name))
        _check_not_negative("train.weight_decay", self.weight_decay)
        _check_not_negative("train.max_grad_norm", self.max_grad_norm)
        _check_fraction("train.warmup_ratio", self.warmup_ratio)
        _check_at_least("train.save_every", self.save_every, 0)
        if not 0 <= self.seed < 2**32:  # numpy's seed range
            raise LntuneError(f"train.seed must be in [0, 2**32), got {self.seed}")


@dataclass(frozen=True)
class RunConfig:
    """A whole training run: model in, data, method, loop, run directory out."""

    model: str
    """Built MLLM directory (lntune build, a stage-1 run's model/, or an HF Llava checkpoint)."""
    out: str
    """Run directory: config.yaml, metrics.jsonl, checkpoints/, adapter/, model/."""
    method: MethodConfig = field(default_factory=MethodConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def __post_init__(self):
        if self.train.stage == "pretrain" and self.method.name != "connector":
            raise LntuneError(
                f"stage pretrain trains the connector only, but method is {self.method.name!r}; "
                "use --method connector (the default for pretrain) or --stage finetune"
            )
        if not self.data.sources:
            raise LntuneError("no training data: give --data [TYPE=]PATH[:COUNT] (repeatable)")
        if self.train.quantize is not None:
            from lntune.methods.registry import refuse_quantized  # local: the registry imports this module's names

            refuse_quantized(self.method.name, self.train.quantize)  # before anything is loaded


def _check_choice(what: str, value, valid) -> None:
    if value not in valid:
        raise LntuneError(f"unknown {what} {value!r}; valid: {', '.join(valid)}")


# Value checks name the dotted key (as in YAML files and KEY=VALUE overrides) and the value given.

def _check_at_least(key: str, value: int, lowest: int) -> None:
    if value < lowest:
        raise LntuneError(f"{key} must be >= {lowest}, got {value}")


def _check_positive(key: str, value: float) -> None:
    if not (math.isfinite(value) and value > 0):
        raise LntuneError(f"{key} must be a number > 0, got {value}")


def _check_not_negative(key: str, value: float) -> None:
    if not (math.isfinite(value) and value >= 0):
        raise LntuneError(f"{key} must be a number >= 0, got {value}")


def _check_fraction(key: str, value: float) -> None:
    if not 0 <= value < 1:
        raise LntuneError(f"{key} must be in [0, 1), got {value}")


# ---- field docs: the one-line docstring under each field, for the command line's --help ----------

def field_docs(cls) -> dict[str, str]:
    """{field name: its docstring} for the fields of `cls` that have one (the string right below the field).

    Python keeps no attribute docstrings at run time, so they are read from the class's source; without the
    source (a frozen install) the result is empty and flags simply go without help text.
    """
    import ast
    import inspect
    import sys
    import textwrap

    try:
        if cls.__qualname__ == cls.__name__:  # a module-level class: one parse of its module serves them all
            node = _module_classes(sys.modules[cls.__module__])[cls.__name__]
        else:
            node = ast.parse(textwrap.dedent(inspect.getsource(cls))).body[0]
    except (OSError, TypeError, KeyError):
        return {}
    docs = {}
    for statement, following in zip(node.body, node.body[1:]):
        if (isinstance(statement, ast.AnnAssign) and isinstance(statement.target, ast.Name)
                and isinstance(following, ast.Expr) and isinstance(following.value, ast.Constant)
                and isinstance(following.value.value, str)):
            docs[statement.target.id] = inspect.cleandoc(following.value.value)
    return docs


@functools.lru_cache(maxsize=None)
def _module_classes(module) -> dict:
    """{class name: its ast.ClassDef} of a module's top level."""
    import ast
    import inspect

    return {node.name: node for node in ast.parse(inspect.getsource(module)).body if isinstance(node, ast.ClassDef)}


# ---- generic loading: mapping / YAML / dotted overrides -> frozen dataclass --------------------

T = typing.TypeVar("T")


def config_from_dict(cls: type[T], data: dict, source: str = "config") -> T:
    """Build `cls` from a plain mapping, recursing into nested dataclasses.

    Unknown keys and wrong types raise LntuneError naming `source` and the dotted key.
    """
    return _build(cls, data, source, prefix="")


def load_yaml(path: str | Path) -> dict:
    from lntune.files import read_yaml

    path = Path(path)
    if not path.is_file():
        raise LntuneError(f"config file not found: {path}")
    data = read_yaml(path, "check the --config file")
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise LntuneError(f"{path}: the top level must be a mapping of keys to values")
    return data


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """Apply `a.b.c=value` overrides to a nested dict (values parsed as YAML scalars/lists)."""
    result = _deep_copy(data)
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise LntuneError(f"override {item!r} must look like key.sub=value")
        node = result
        parts = key.split(".")
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise LntuneError(f"override {item!r}: {part!r} is a value, not a section")
            node = child
        try:
            node[parts[-1]] = yaml.safe_load(raw) if raw != "" else ""
        except yaml.YAMLError:
            node[parts[-1]] = raw
    return result


def config_to_dict(config) -> dict:
    """Plain, YAML-safe dict of a config (tuples become lists)."""
    return _plain(dataclasses.asdict(config))


def _plain(value):
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    return value


def _deep_copy(data):
    if isinstance(data, dict):
        return {key: _deep_copy(value) for key, value in data.items()}
    return data


def _build(cls, data, source, prefix):
    if not isinstance(data, dict):
        raise LntuneError(f"{source}: {prefix.rstrip('.') or 'top level'} must be a mapping")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise LntuneError(
            f"{source}: unknown key {prefix}{unknown[0]!r}; valid keys here: {', '.join(sorted(fields))}"
        )
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for name, value in data.items():
        kwargs[name] = _coerce(hints[name], value, source, f"{prefix}{name}")
    missing = [
        name
        for name, f in fields.items()
        if name not in kwargs and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    ]
    if missing:
        raise LntuneError(f"{source}: missing required key {prefix}{missing[0]}")
    return cls(**kwargs)


def _coerce(hint, value, source, key):
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(hint)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _coerce(option, value, source, key)
            except LntuneError as error:
                errors.append(error)
        raise errors[0]
    if dataclasses.is_dataclass(hint):
        return _build(hint, value, source, prefix=f"{key}.")
    if origin is tuple:
        if isinstance(value, str):
            value = [part.strip() for part in value.split(",") if part.strip()]
        if not isinstance(value, (list, tuple)):
            raise LntuneError(f"{source}: {key} must be a list, got {value!r}")
        item_type = typing.get_args(hint)[0]
        return tuple(_coerce(item_type, item, source, key) for item in value)
    if hint is bool:
        if isinstance(value, bool):
            return value
    elif hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # PyYAML (YAML 1.1) reads 1e-3 as a string: it wants 1.0e-3
            try:
                return float(value)
            except ValueError:
                pass
    elif hint is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
    else:
        return value
    raise LntuneError(f"{source}: {key} must be {hint.__name__}, got {value!r}")


__all__ = [
    "BuildConfig",
    "MethodConfig",
    "DataSource",
    "DataConfig",
    "TrainConfig",
    "RunConfig",
    "config_from_dict",
    "config_to_dict",
    "load_yaml",
    "field_docs",
    "apply_overrides",
    "CONNECTOR_NAMES",
]
