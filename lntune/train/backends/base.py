"""What every distributed mode offers the training loop, and the process set-up and teardown they share.

One backend object per mode (plain/DDP, FSDP2, DeepSpeed ZeRO), used as a context manager around the whole run, so
that what a mode changes in the process (Accelerate's process-wide settings, DeepSpeed's patches of torch) is undone
on every exit, including a failure anywhere in the run. Entering starts Accelerate, which sets up the processes for
every mode (NCCL on GPUs, gloo on CPUs); the mode then decides how the model is wrapped, how gradients are
accumulated, reduced and applied, and how its part of a checkpoint is written and read.

The loop calls, in order: prepare_model (before the optimizer exists: FSDP2 replaces the parameters), prepare (model,
optimizer, schedule), then per micro-step no_sync + backward, per optimizer step `step`, and at the end
gather_trainable. Checkpoints call save_state / load_state.
"""

from __future__ import annotations

import contextlib
import gc

import torch

from lntune.train.logger import norm_gradient_norms

# The files a backend writes into a checkpoint directory (beside checkpoint.py's state.json and rng-N files):
# lntune.adapter's TRAINABLE_FILE (named as in an adapter: the trained tensors by their Llava names), and these.
OPTIMIZER_FILE = "optimizer.safetensors"
SCHEDULER_FILE = "scheduler.safetensors"


class Backend:
    label = ""  # how the start line names the mode ("" for the plain loop)
    autocast_precision = "no"  # Accelerate's mixed precision (autocast); "no" where the mode casts by itself

    def __init__(self, train_config, precision: str, processes: int):
        """Runs before any work (no model, no process group): a mode refuses here what it cannot do."""
        self.train_config = train_config
        self.precision = precision  # "bf16", "fp16" or "no"
        self.multi_process = processes > 1
        self.accelerator = None
        # Set by prepare: what the loop calls (DDP wrapper, sharded model or DeepSpeed engine), the model without
        # any wrapper, the optimizer and schedule, and the parameters being trained.
        self.model = self.module = self.optimizer = self.scheduler = None
        self.trainable: list = []

    # --- lifecycle -------------------------------------------------------------------------------------------

    def __enter__(self):
        from accelerate import Accelerator

        self.accelerator = Accelerator(
            # Accelerate only sets up multi-process CPU training (gloo) when told the run is on the CPU.
            cpu=self.multi_process and not torch.cuda.is_available(),
            mixed_precision=self.autocast_precision,
        )
        return self

    def __exit__(self, kind, error, traceback) -> bool:
        try:
            if error is None:
                self._close()
        finally:
            # After a failure (in the run, or in _close's collectives) only local undoing: the other processes may
            # have failed too, so no collective may run here. After _close this finds nothing left to undo.
            try:
                self._release()
            finally:
                # Accelerate keeps its settings in a process-wide singleton; clear them so that a later run in the
                # same process (lntune compare, notebooks) can choose another precision.
                from accelerate.state import AcceleratorState, GradientState

                AcceleratorState._reset_state()
                GradientState._reset_state()
        return False

    def _close(self) -> None:
        """After a successful run, on every process."""
        accelerator = self.accelerator
        accelerator.wait_for_everyone()
        # Release the DDP wrapper (and Accelerate's references to it) while every process is still alive: left for
        # interpreter teardown, its gloo resources could wait on a peer that has already exited (seen: a rare hang).
        accelerator.free_memory()
        self._release()
        self.model = self.module = self.optimizer = self.scheduler = None
        self.trainable = []
        gc.collect()
        accelerator.wait_for_everyone()
        if self.multi_process:
            # Not with one process: then a process group is only the one lntune.train.zero keeps for later DeepSpeed
            # runs in this process, or the caller's own.
            accelerator.end_training()

    def _release(self) -> None:
        """Undo what the mode changed in the process. Local, and a no-op when called again: it runs after a failure
        too, wherever the run stopped."""

    # --- what the loop calls ---------------------------------------------------------------------------------

    @property
    def is_main(self) -> bool:
        return self.accelerator.is_main_process

    @property
    def world(self) -> int:
        return self.accelerator.num_processes

    def model_dtype(self) -> str:
        """The dtype to load the model in (trainable parameters are made fp32 after that)."""
        return "bfloat16" if self.precision == "bf16" else "float32"

    def prepare_model(self, model):
        """Before the optimizer is made from the model's parameters."""
        return model

    def prepare(self, model, optimizer, scheduler) -> None:
        raise NotImplementedError

    def _prepared(self, model, module, optimizer, scheduler) -> None:
        self.model, self.module, self.optimizer, self.scheduler = model, module, optimizer, scheduler
        self.trainable = [p for p in model.parameters() if p.requires_grad]

    def trainable_numel(self) -> int:
        return sum(p.numel() for p in self.trainable)

    def no_sync(self, last: bool):
        """Around a micro-step's forward: no gradient reduction unless it is the last of the accumulation."""
        return contextlib.nullcontext()

    def backward(self, loss: torch.Tensor, last: bool) -> None:
        """`loss` is normalised by the global batch's supervised tokens and scaled by the process count."""
        self.accelerator.backward(loss)

    def step(self, record_gradients: bool) -> tuple[float | None, dict]:
        """Apply the accumulated gradients: (gradient norm before clipping, or None without clipping; the norm
        parameters' gradient norms per block, {} unless record_gradients)."""
        raise NotImplementedError

    def gather_trainable(self) -> dict[str, torch.Tensor] | None:
        """Full CPU copies of the trained tensors on the main process (None where not gathered). Collective."""
        raise NotImplementedError

    def save_state(self, directory) -> None:
        """The trained tensors, optimizer and schedule into a checkpoint directory. Collective."""
        raise NotImplementedError

    def load_state(self, directory) -> None:
        """The trained tensors, optimizer and schedule from a checkpoint directory that save_state wrote."""
        raise NotImplementedError


def step_torch_optimizer(backend: Backend, record_gradients: bool) -> tuple[float | None, dict]:
    """The step of the modes whose gradients are plain tensors (DDP, already reduced) or sharded DTensors (FSDP2,
    whose norm is a DTensor too), so that torch's clipping applies directly."""
    from lntune.train.distributed import is_sharded

    config = backend.train_config
    gradient_record = norm_gradient_norms(backend.module) if record_gradients else {}
    grad_norm = None
    if config.max_grad_norm > 0:
        total_norm = torch.nn.utils.clip_grad_norm_(backend.trainable, config.max_grad_norm)
        grad_norm = float(total_norm.full_tensor() if is_sharded(total_norm) else total_norm)
    for parameter in backend.trainable:
        # A global batch without images (grouping by modality makes them common) leaves the connector without a
        # gradient in one process, but with an exact zero from the vision placeholder row in several: give it that
        # zero here too, so AdamW (momentum, weight decay, step count) moves it the same on any process count, as
        # LLaVA's blank image for text-only samples does.
        if parameter.grad is None:
            parameter.grad = torch.zeros_like(parameter)
    backend.optimizer.step()
    backend.scheduler.step()
    backend.optimizer.zero_grad(set_to_none=True)
    return grad_norm, gradient_record
