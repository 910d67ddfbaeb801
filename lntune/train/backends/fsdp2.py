"""FSDP2 (torch's fully_shard) on several processes: parameters, gradients and optimizer state sharded, so reading
a whole tensor (trained weights, optimizer state, the gradient norm) is a collective that every process joins.
The sharding itself is in lntune.train.distributed."""

from __future__ import annotations

import torch

from lntune.adapter import TRAINABLE_FILE
from lntune.errors import LntuneError
from lntune.train.backends.base import OPTIMIZER_FILE, SCHEDULER_FILE, Backend, step_torch_optimizer
from lntune.train.distributed import (full_optimizer_state, gather_trainable, gradient_sync, load_full_optimizer_state,
                                      load_trainable, shard_with_fsdp2)
from lntune.train.state_file import load_state, save_state


class Fsdp2Backend(Backend):
    label = " with FSDP2"
    # The shards' policy casts for compute (autocast_precision stays "no").

    def __init__(self, train_config, precision: str, processes: int):
        super().__init__(train_config, precision, processes)
        if precision == "fp16":
            raise LntuneError("fp16 with fsdp2 has no loss scaling here; use precision bf16 (or fp32) with fsdp2")

    def model_dtype(self) -> str:
        return "float32"  # one dtype per shard unit: see shard_with_fsdp2

    def prepare_model(self, model):
        return shard_with_fsdp2(model, torch.bfloat16 if self.precision == "bf16" else None)

    def prepare(self, model, optimizer, scheduler) -> None:
        self._prepared(model, model, optimizer, scheduler)

    def no_sync(self, last: bool):
        # FSDP2 reads this flag in the backward, which the loop runs after this scope: the micro-steps before the
        # last still reduce their gradients (the sums are the same; only the communication is not saved).
        return gradient_sync(self.model, enabled=last)

    def step(self, record_gradients: bool) -> tuple[float | None, dict]:
        return step_torch_optimizer(self, record_gradients)

    def gather_trainable(self):
        return gather_trainable(self.module)  # collective: every process gathers, the main one writes

    def save_state(self, directory) -> None:
        from safetensors.torch import save_file

        tensors = gather_trainable(self.module)  # collective
        optimizer_state = full_optimizer_state(self.module, self.optimizer)  # collective
        if self.is_main:
            save_file(tensors, str(directory / TRAINABLE_FILE))
            save_state(optimizer_state, directory / OPTIMIZER_FILE)
            save_state(self.scheduler.state_dict(), directory / SCHEDULER_FILE)

    def load_state(self, directory) -> None:
        from safetensors.torch import load_file

        load_trainable(self.module, load_file(str(directory / TRAINABLE_FILE)))
        load_full_optimizer_state(self.module, self.optimizer, load_state(directory / OPTIMIZER_FILE))
        self.scheduler.load_state_dict(load_state(directory / SCHEDULER_FILE))
