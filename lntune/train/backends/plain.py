"""The plain loop: one process, or replicas under DDP, both through Accelerate (device placement, DDP, autocast)."""

from __future__ import annotations

from lntune.adapter import TRAINABLE_FILE
from lntune.train.backends.base import OPTIMIZER_FILE, SCHEDULER_FILE, Backend, step_torch_optimizer
from lntune.train.distributed import gather_trainable, load_trainable
from lntune.train.state_file import load_state, save_state


class PlainBackend(Backend):
    def __init__(self, train_config, precision: str, processes: int):
        super().__init__(train_config, precision, processes)
        self.autocast_precision = precision  # Accelerate's autocast (and loss scaling for fp16)

    def prepare(self, model, optimizer, scheduler) -> None:
        model, optimizer = self.accelerator.prepare(model, optimizer)
        self._prepared(model, self.accelerator.unwrap_model(model), optimizer, scheduler)

    def no_sync(self, last: bool):
        # DDP decides in the forward whether the following backward reduces the gradients.
        return super().no_sync(last) if last else self.accelerator.no_sync(self.model)

    def step(self, record_gradients: bool) -> tuple[float | None, dict]:
        self.accelerator.unscale_gradients()  # fp16: statistics and clipping on the true gradients
        return step_torch_optimizer(self, record_gradients)

    def gather_trainable(self):
        # Every process holds the whole model: only the main one copies it out.
        return gather_trainable(self.module) if self.is_main else None

    def save_state(self, directory) -> None:
        from safetensors.torch import save_file

        if self.is_main:
            save_file(gather_trainable(self.module), str(directory / TRAINABLE_FILE))
            save_state(self.optimizer.state_dict(), directory / OPTIMIZER_FILE)
            save_state(self.scheduler.state_dict(), directory / SCHEDULER_FILE)

    def load_state(self, directory) -> None:
        from safetensors.torch import load_file

        load_trainable(self.module, load_file(str(directory / TRAINABLE_FILE)))
        self.optimizer.load_state_dict(load_state(directory / OPTIMIZER_FILE))
        self.scheduler.load_state_dict(load_state(directory / SCHEDULER_FILE))
