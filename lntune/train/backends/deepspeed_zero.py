"""DeepSpeed ZeRO stage 2 or 3, on one process or several: the engine accumulates, averages over processes, clips,
and steps the optimizer and the schedule; under ZeRO-3 reading a whole tensor or gradient is a collective.
The engine's set-up, checkpoint files and process-wide changes are in lntune.train.zero."""

from __future__ import annotations

from lntune.adapter import TRAINABLE_FILE
from lntune.errors import LntuneError
from lntune.train import zero
from lntune.train.backends.base import Backend


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return f"{type(error).__name__}: {text.splitlines()[0]}" if text else type(error).__name__


class DeepSpeedBackend(Backend):
    # DeepSpeed's own bf16 mode (fp32 master weights in the optimizer); Accelerate's autocast stays off.

    def __init__(self, train_config, precision: str, processes: int):
        super().__init__(train_config, precision, processes)
        self.stage = zero.STAGES[train_config.distributed]
        self.label = f" with DeepSpeed ZeRO-{self.stage}"
        zero.require_deepspeed()  # before any work: clear errors if it is not installed or the config is wrong
        self.extra_config = zero.read_user_config(train_config.deepspeed_config)
        if precision == "fp16":
            raise LntuneError(f"fp16 with {train_config.distributed} has no loss scaling here; use precision bf16 (or "
                              f"fp32) with {train_config.distributed}")
        self.engine = None

    def prepare(self, model, optimizer, scheduler) -> None:
        # From here until _release, DeepSpeed's process-wide changes are in effect (see zero.initialize).
        self.engine, optimizer, scheduler = zero.initialize(model, optimizer, scheduler, self.stage, self.train_config,
                                                            self.world, self.precision, self.extra_config)
        self._prepared(self.engine, self.engine.module, optimizer, scheduler)

    def _release(self) -> None:
        if self.engine is not None:
            engine, self.engine = self.engine, None
            zero.shutdown(engine)

    def trainable_numel(self) -> int:
        return sum(zero.numel(p) for p in self.trainable)  # a ZeRO-3 parameter holds only its partition

    def backward(self, loss, last: bool) -> None:
        # The engine divides the loss by the accumulation steps; this one is already normalised by the global
        # batch's supervised tokens. It also accumulates and reduces by itself (no no_sync needed).
        self.engine.backward(loss * self.train_config.grad_accum)
        if not last:
            self.engine.step()  # only counts the micro-step: the optimizer steps at the boundary

    def step(self, record_gradients: bool) -> tuple[float | None, dict]:
        gradient_record = zero.norm_gradient_norms(self.engine) if record_gradients else {}
        self.engine.step()  # clips (gradient_clipping), steps the optimizer and the schedule, zeroes gradients
        grad_norm = None
        if self.train_config.max_grad_norm > 0 and self.engine.get_global_grad_norm() is not None:
            grad_norm = float(self.engine.get_global_grad_norm())
        return grad_norm, gradient_record

    def gather_trainable(self):
        return zero.gather_trainable(self.engine)  # collective; the optimizer's fp32 weights

    def save_state(self, directory) -> None:
        """trainable.safetensors, and every process's partition of the optimizer (and the engine's copy of the
        schedule) under deepspeed/."""
        from safetensors.torch import save_file

        tensors = zero.gather_trainable(self.engine)  # collective
        zero.save_engine_state(self.engine, directory)  # collective: each process writes its partition
        if self.is_main:
            save_file(tensors, str(directory / TRAINABLE_FILE))

    def load_state(self, directory) -> None:
        try:
            with zero.tensors_only_loads(self.engine):
                zero.load_engine_state(self.engine, directory)  # trained weights, optimizer partitions, schedule
        except LntuneError:
            raise
        except Exception as error:
            raise LntuneError(f"{directory}: DeepSpeed could not load its state ({_first_line(error)}); delete "
                              f"{directory} to resume from the checkpoint before it") from error
