"""FSDP2's internals (lntune.train.backends.fsdp2 drives them), and the gathers of trained tensors every mode uses.

DDP goes through Accelerate. FSDP2 is applied here directly: one shard unit per decoder block and
the root (which holds the vision encoder, connector, embeddings and head); Accelerate's FSDP path is GPU-only, while fully_shard runs
anywhere a process group does (gloo on CPU included, which is how it is tested). Parameters become
DTensors, so gathering trained tensors is a collective that every process must join.
"""

from __future__ import annotations

import contextlib

import torch

from lntune.model.parts import locate_parts


def is_sharded(tensor) -> bool:
    return hasattr(tensor, "full_tensor")


def shard_with_fsdp2(model, compute_dtype: torch.dtype | None):
    """Apply fully_shard to every decoder block, then to the whole model."""
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    # FSDP2 needs one dtype per shard unit: trainable norms (fp32) and frozen weights share a block, so all
    # parameters stay fp32 (sharded, so 1/N each) and the compute dtype comes from the policy.
    model.float()
    policy = MixedPrecisionPolicy(param_dtype=compute_dtype, reduce_dtype=torch.float32) if compute_dtype else MixedPrecisionPolicy()
    parts = locate_parts(model)
    # The vision encoder stays in the root unit: sharding it as its own unit breaks transformers' capture of its
    # hidden states (Llava reads the second-to-last layer). It is frozen, so only its parameters are sharded.
    for block in parts.blocks:
        fully_shard(block.module, mp_policy=policy)
    fully_shard(model, mp_policy=policy)
    return model


def gradient_sync(model, enabled: bool):
    """No gradient reduction on the micro-steps before the last of an accumulation (DDP no_sync equivalent)."""
    setter = getattr(model, "set_requires_gradient_sync", None)
    if setter is None:
        return contextlib.nullcontext()

    @contextlib.contextmanager
    def scope():
        setter(enabled)
        try:
            yield
        finally:
            setter(True)

    return scope()


def gather_trainable(model) -> dict[str, torch.Tensor]:
    """Full copies of the trainable tensors on the CPU (collective under FSDP2: call on every process)."""
    tensors = {}
    for name, parameter in model.named_parameters():
        if parameter.requires_grad:
            full = parameter.full_tensor() if is_sharded(parameter) else parameter
            tensors[name] = full.detach().to("cpu").clone()
    return tensors


def load_trainable(model, tensors: dict[str, torch.Tensor]) -> None:
    """Copy full tensors into the model's (possibly sharded) parameters."""
    parameters = dict(model.named_parameters())
    with torch.no_grad():
        for name, tensor in tensors.items():
            parameter = parameters[name]
            if is_sharded(parameter):
                from torch.distributed.tensor import distribute_tensor

                tensor = distribute_tensor(tensor.to(parameter.dtype), parameter.device_mesh, parameter.placements)
                parameter.to_local().copy_(tensor.to_local())
            else:
                parameter.copy_(tensor)


def full_optimizer_state(model, optimizer):
    """The optimizer's state as one full dict on the CPU, gathered from the shards. Collective."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    return get_optimizer_state_dict(model, optimizer, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def load_full_optimizer_state(model, optimizer, state) -> None:
    """The reverse of full_optimizer_state: each process keeps its shard of the full dict."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    set_optimizer_state_dict(model, optimizer, optim_state_dict=state, options=StateDictOptions(full_state_dict=True))
