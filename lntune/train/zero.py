"""DeepSpeed ZeRO stage 2 and 3 (train.distributed=zero2|zero3): the internals that lntune.train.backends.deepspeed_zero
drives, through `deepspeed.initialize` directly.

Why not Accelerate's DeepSpeed plugin: Accelerate refuses it on a CPU-only machine (it silently falls back to DDP
with `cpu=True`, and without it every process believes it is rank 0 of 1), so that path could not be tested where
lntune's tests run. Here Accelerate still sets up the processes (NCCL on GPUs, gloo on CPUs) and DeepSpeed joins the
existing process group, so the same code runs in CI (2 CPU processes) and on a GPU cluster.

The engine owns gradient accumulation, gradient averaging over processes, clipping (`gradient_clipping`), the
optimizer step and the schedule; bf16 is DeepSpeed's own (fp32 master weights in the optimizer). Under ZeRO-3 the
parameters are partitioned, so reading a full tensor or gradient is a collective that every process must join.
"""

from __future__ import annotations

import contextlib
import json
import os

import torch

from lntune.errors import LntuneError
from lntune.train import manifest

STAGES = {"zero2": 2, "zero3": 3}
CHECKPOINT_TAG = "deepspeed"


def require_deepspeed():
    try:
        import deepspeed
    except ImportError:
        raise LntuneError("train.distributed=zero2/zero3 needs DeepSpeed: pip install 'lntune[deepspeed]' "
                          "(or pip install deepspeed)") from None
    return deepspeed


# Keys of a user's DeepSpeed JSON that lntune sets from its own settings, and where to set them instead.
LNTUNE_OWNED = {
    "train_batch_size": "--batch-size and --grad-accum", "train_micro_batch_size_per_gpu": "--batch-size",
    "gradient_accumulation_steps": "--grad-accum", "gradient_clipping": "--max-grad-norm",
    "bf16": "--precision", "fp16": "--precision (bf16 or fp32)", "optimizer": "--lr, --norm-lr, --weight-decay, ...",
    "scheduler": "--scheduler and --warmup-ratio", "zero_optimization.stage": "--distributed zero2|zero3",
}


def read_user_config(path: str | None) -> dict:
    """The user's DeepSpeed JSON (train.deepspeed_config), checked before any work. A key lntune owns is refused,
    unless its value is "auto" (as in configs written for the HF Trainer), which is dropped."""
    if path is None:
        return {}
    from lntune.files import read_text

    try:
        data = json.loads(read_text(path, "fix the path (train.deepspeed_config)"))
    except json.JSONDecodeError as error:
        raise LntuneError(f"deepspeed_config {path}: not valid JSON (line {error.lineno}, column {error.colno}: "
                          f"{error.msg})") from None
    if not isinstance(data, dict):
        raise LntuneError(f"deepspeed_config {path}: expected a JSON object, got {type(data).__name__}")
    for key, instead in LNTUNE_OWNED.items():
        head, _, sub = key.partition(".")
        holder = data.get(head) if sub else data
        name = sub or head
        if isinstance(holder, dict) and name in holder:
            if holder[name] == "auto":
                del holder[name]
            else:
                raise LntuneError(f"deepspeed_config {path}: `{key}` is set by lntune from its own settings "
                                  f"({instead}); remove it from the file")
    return data


def _merged(base: dict, extra: dict) -> dict:
    merged = dict(base)
    for key, value in extra.items():
        merged[key] = _merged(base[key], value) if isinstance(value, dict) and isinstance(base.get(key), dict) else value
    return merged


def deepspeed_config(stage: int, batch_size: int, grad_accum: int, world: int, max_grad_norm: float,
                     precision: str, extra: dict | None = None) -> dict:
    return _merged({
        "train_micro_batch_size_per_gpu": batch_size,
        "gradient_accumulation_steps": grad_accum,
        "train_batch_size": batch_size * grad_accum * world,
        "gradient_clipping": max_grad_norm,  # 0: off
        "zero_optimization": {"stage": stage},
        "bf16": {"enabled": precision == "bf16"},
        # lntune's AdamW parameter groups (own learning rates, no decay on norms) are a plain torch optimizer.
        "zero_allow_untested_optimizer": True,
        # Offloading (from a user's deepspeed_config) keeps lntune's torch AdamW rather than demanding DeepSpeedCPUAdam.
        "zero_force_ds_cpu_optimizer": False,
        "steps_per_print": 2**31 - 1,  # lntune logs its own metrics
        "wall_clock_breakdown": False,
    }, extra or {})


def free_local_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _process_group_of_one() -> None:
    """DeepSpeed needs a process group even for one process (plain `lntune train` without torchrun)."""
    port = free_local_port()
    # A tcp:// address rather than environment variables, which would make later runs in this process (lntune
    # compare) look like torchrun workers.
    torch.distributed.init_process_group("nccl" if torch.cuda.is_available() else "gloo", rank=0, world_size=1,
                                         init_method=f"tcp://127.0.0.1:{port}")


def initialize(model, optimizer, scheduler, stage: int, train_config, world: int, precision: str, extra: dict):
    """Wrap `model` in a DeepSpeed engine. Returns (engine, optimizer, scheduler); the engine steps both.
    With one process it makes a process group of one and keeps it for later runs in the process (DeepSpeed caches
    its groups: a new group would not replace them)."""
    deepspeed = require_deepspeed()
    if not torch.distributed.is_initialized():
        _process_group_of_one()
    config = deepspeed_config(stage, train_config.batch_size, train_config.grad_accum, world,
                              train_config.max_grad_norm, precision, extra)
    # What DeepSpeed changes in the process, to undo in shutdown() so that later runs in it (lntune compare,
    # notebooks) compute exactly as they would alone. ZeRO-3 swaps torch.nn.functional.linear for its own, "which
    # will persist unless manually reset" (seen on a GPU: a later plain run's bf16 weights differed in the last bit).
    # LOCAL_RANK is lent: DeepSpeed reads it (its device; ZeRO-3 in every step), but only launchers set it, and left
    # set it would make a later run look like a torchrun worker to Accelerate.
    saved = (torch.nn.functional.linear, "LOCAL_RANK" in os.environ)
    os.environ.setdefault("LOCAL_RANK", "0")
    try:
        engine, optimizer, _, scheduler = deepspeed.initialize(model=model, optimizer=optimizer, lr_scheduler=scheduler,
                                                               config=config, dist_init_required=False)
    except BaseException:
        _undo(saved)
        raise
    # Undone by shutdown(engine), which the DeepSpeed backend calls on leaving the run, however it ends.
    engine.lntune_saved_process_state = saved
    return engine, optimizer, scheduler


def _undo(saved) -> None:
    functional_linear, had_local_rank = saved
    torch.nn.functional.linear = functional_linear
    if not had_local_rank:
        os.environ.pop("LOCAL_RANK", None)


def shutdown(engine) -> None:
    """Release the engine and undo DeepSpeed's process-wide changes (see initialize). Local: no collective."""
    try:
        if hasattr(engine, "destroy"):
            engine.destroy()
    finally:
        _undo(engine.lntune_saved_process_state)


def numel(parameter) -> int:
    """Elements of the whole tensor (a ZeRO-3 parameter holds only its partition; ds_numel is the full size)."""
    return getattr(parameter, "ds_numel", parameter.numel())


def gather_trainable(engine) -> dict[str, torch.Tensor]:
    """Full fp32 copies of the trained tensors on the CPU (the optimizer's master weights). Collective."""
    from deepspeed.utils import safe_get_full_fp32_param

    return {name: safe_get_full_fp32_param(parameter).detach().to("cpu").clone()
            for name, parameter in engine.module.named_parameters() if parameter.requires_grad}


def norm_gradient_norms(engine) -> dict:
    """`lntune.train.logger.norm_gradient_norms` for an engine: read between the last backward of a step and
    `engine.step()`, when the gradients are accumulated and averaged over processes. Collective under ZeRO-3."""
    from deepspeed.utils import safe_get_full_grad

    from lntune.train.logger import norm_gradient_norms as gradient_norms

    return gradient_norms(engine.module, grad_of=safe_get_full_grad)


def save_engine_state(engine, directory) -> None:
    """Every process writes its partition of the optimizer state (and DeepSpeed's copy of the schedule) under
    `directory/deepspeed`; frozen weights are left out, so a LayerNorm-tuning checkpoint stays small. Collective."""
    engine.save_checkpoint(str(directory), tag=CHECKPOINT_TAG, exclude_frozen_parameters=True)


@contextlib.contextmanager
def tensors_only_loads(engine):
    """DeepSpeed reads its files with torch.load(weights_only=False), which runs whatever code a planted pickle names;
    here its checkpoint engine reads them with weights_only=True, allowing only the classes its files hold."""
    classes = manifest.deepspeed_classes()
    checkpoint_engine = engine.checkpoint_engine
    original = checkpoint_engine.load

    def load(path, map_location=None):
        with torch.serialization.safe_globals(classes):
            return torch.load(path, map_location=map_location, weights_only=True)

    checkpoint_engine.load = load
    try:
        yield
    finally:
        checkpoint_engine.load = original


def load_engine_state(engine, directory) -> None:
    """The engine's weights, optimizer partitions and schedule from what save_engine_state wrote (run inside
    tensors_only_loads)."""
    path, _ = engine.load_checkpoint(str(directory), tag=CHECKPOINT_TAG, load_module_strict=False,
                                     load_optimizer_states=True, load_lr_scheduler_states=True)
    if path is None:
        raise LntuneError(f"{directory} holds no DeepSpeed state ({CHECKPOINT_TAG}/); it was not written by a "
                          "zero2/zero3 run: resume with the train.distributed it was written with")
