"""Checkpoints: the trained tensors, optimizer, schedule, step and every process's RNG, written atomically.

Only trainable tensors are saved (kilobytes for LayerNorm tuning of a 7B model, not 14 GB). A
checkpoint directory appears under its final name only when complete: it is written as
`.step-N.tmp` and renamed, so a run killed mid-save resumes from the previous one.
"""

from __future__ import annotations

import json
import random
import re
import shutil
from pathlib import Path

import numpy as np
import torch

from lntune.train.distributed import gather_trainable, load_optimizer_state, load_trainable, optimizer_state

_NAME = re.compile(r"^step-(\d{8})$")


def checkpoint_dirs(run_dir: Path) -> list[Path]:
    """Complete checkpoints, oldest first."""
    root = run_dir / "checkpoints"
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), path) for path in root.iterdir() if (m := _NAME.match(path.name)) and path.is_dir()]
    return [path for _, path in sorted(found)]


def _rng_state() -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(accelerator, run_dir: Path, step: int, model, optimizer, scheduler, state: dict, keep: int,
                    sharded: bool = False, engine=None) -> Path:
    """Collective: every process calls it. `model` is the unwrapped (but possibly sharded) model; under DeepSpeed
    (`engine`) the optimizer and schedule are the engine's partitioned checkpoint, in `deepspeed/`."""
    from safetensors.torch import save_file

    root = run_dir / "checkpoints"
    final = root / f"step-{step:08d}"
    staging = root / f".step-{step:08d}.tmp"
    if accelerator.is_main_process:
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
    accelerator.wait_for_everyone()
    torch.save(_rng_state(), staging / f"rng-{accelerator.process_index}.pt")
    if engine is not None:
        from lntune.train import zero

        tensors = zero.gather_trainable(engine)  # collective
        zero.save_engine_state(engine, staging)  # collective: each process writes its partition
    else:
        gathered = sharded or accelerator.is_main_process  # under FSDP2 every process joins the gathers
        tensors = gather_trainable(model) if gathered else None
        optimizer_state_dict = optimizer_state(model, optimizer, sharded) if gathered else None
    if accelerator.is_main_process:
        save_file(tensors, str(staging / "trainable.safetensors"))
        if engine is None:
            torch.save(optimizer_state_dict, staging / "optimizer.pt")
            torch.save(scheduler.state_dict(), staging / "scheduler.pt")
        (staging / "state.json").write_text(json.dumps(dict(state, step=step, world_size=accelerator.num_processes), indent=2))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        staging.rename(final)
        for old in checkpoint_dirs(run_dir)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def load_checkpoint(accelerator, path: Path, model, optimizer, scheduler, sharded: bool = False, engine=None) -> dict:
    from safetensors.torch import load_file

    from lntune.errors import LntuneError

    state = json.loads((path / "state.json").read_text())
    if state["world_size"] != accelerator.num_processes:
        raise LntuneError(
            f"{path} was written by {state['world_size']} processes; resume with the same number "
            f"(got {accelerator.num_processes}) so that every step sees the same data"
        )
    if engine is not None:
        from lntune.train import zero

        zero.load_engine_state(engine, path)  # trained weights, optimizer partitions and the schedule
    else:
        load_trainable(model, load_file(str(path / "trainable.safetensors")))
        load_optimizer_state(model, optimizer, torch.load(path / "optimizer.pt", weights_only=False), sharded)
        scheduler.load_state_dict(torch.load(path / "scheduler.pt", weights_only=False))
    _set_rng_state(torch.load(path / f"rng-{accelerator.process_index}.pt", weights_only=False))
    return state
