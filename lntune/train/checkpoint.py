"""Checkpoints: the trained tensors, optimizer, schedule, step and every process's RNG, written atomically.

Only trainable tensors are saved (kilobytes for LayerNorm tuning of a 7B model, not 14 GB). A
checkpoint directory appears under its final name only when complete: it is written as
`.step-N.tmp`, sealed with a manifest (lntune.train.manifest: every file's size and sha256, written last) and
renamed, so a run killed mid-save resumes from the previous one. Resuming verifies the newest checkpoint against its
manifest and falls back to the newest intact one. Loading runs no code from a checkpoint: lntune's own files are
safetensors + JSON (lntune.train.state_file), no pickle; DeepSpeed's files (pickles) are read with
torch.load(weights_only=True), allowing only the few DeepSpeed classes they hold (lntune.train.zero.tensors_only_loads).
"""

from __future__ import annotations

import json
import random
import re
import shutil
from pathlib import Path

import numpy as np
import torch

from lntune.errors import LntuneError
from lntune.train import manifest
from lntune.train.state_file import load_state, save_state

_NAME = re.compile(r"^step-(\d{8})$")


def _step_of(path: Path) -> int:
    return int(_NAME.match(path.name).group(1))


def checkpoint_dirs(run_dir: Path) -> list[Path]:
    """Checkpoint directories (renamed into place, not yet verified), oldest first."""
    root = run_dir / "checkpoints"
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), path) for path in root.iterdir() if (m := _NAME.match(path.name)) and path.is_dir()]
    return [path for _, path in sorted(found)]


def _rng_state() -> dict:
    kind, keys, position, has_gauss, cached_gaussian = np.random.get_state()
    state = {
        "python": random.getstate(),  # (version, 625 ints, gauss_next)
        "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), int(position), int(has_gauss), float(cached_gaussian)),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    kind, keys, position, has_gauss, cached_gaussian = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), position, has_gauss, cached_gaussian))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(backend, run_dir: Path, step: int, state: dict, keep: int) -> Path:
    """Collective: every process calls it. The backend writes the trained tensors, optimizer and schedule (each mode
    in its own files: lntune.train.backends); this adds every process's RNG and the step, then seals and renames."""
    accelerator = backend.accelerator
    root = run_dir / "checkpoints"
    final = root / f"step-{step:08d}"
    # Not lntune.files.staged_directory: every process writes into this one folder (a per-process staging name would
    # split it), it is sealed by a manifest and fsync'ed before the rename, and a damaged step-N it replaces is
    # deleted rather than kept aside.
    staging = root / f".step-{step:08d}.tmp"
    if accelerator.is_main_process:
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
    accelerator.wait_for_everyone()
    save_state(_rng_state(), staging / f"rng-{accelerator.process_index}.safetensors")
    backend.save_state(staging)
    if accelerator.is_main_process:
        (staging / "state.json").write_text(json.dumps(dict(state, step=step, world_size=accelerator.num_processes), indent=2))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        manifest.write_manifest(staging)  # last: it vouches for every file above, every process's
        if final.exists():
            shutil.rmtree(final)  # a checkpoint that the resume of this run skipped as damaged
        staging.rename(final)
        manifest.fsync_directory(root)
        existing = checkpoint_dirs(run_dir)
        older = [path for path in existing if _step_of(path) < step]
        # Newer ones are from before the resume (damaged, or they would have been resumed from): this run replaces them.
        newer = [path for path in existing if _step_of(path) > step]
        for old in older[:max(0, len(older) - (keep - 1))] + newer:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def _newest_intact(run_dir: Path, say) -> Path | None:
    found = checkpoint_dirs(run_dir)
    skipped = []
    for path in reversed(found):
        reason = manifest.problem(path)
        if reason is None:
            for name, why in skipped:
                say(f"warning: checkpoint {run_dir / 'checkpoints' / name} skipped: {why}")
            return path
        skipped.append((path.name, reason))
    if not found:
        return None
    root = run_dir / "checkpoints"
    raise LntuneError(f"--resume: no intact checkpoint in {root} ({'; '.join(f'{name}: {why}' for name, why in skipped)}); "
                      f"delete {root} to run again from step 0, or {run_dir} to start afresh")


def select_checkpoint(accelerator, run_dir: Path, say) -> Path | None:
    """The checkpoint to resume from: the newest one that matches its manifest (None: there is none, start at step
    0). Process 0 verifies and sends its choice (or its error) to the others, so that every process resumes from
    the same checkpoint and verification reads the files once. Collective."""
    verdict = None
    if accelerator.is_main_process:
        try:
            path = _newest_intact(run_dir, say)
            verdict = ("path", None if path is None else str(path))
        except LntuneError as error:
            verdict = ("error", str(error))
    if accelerator.num_processes > 1:
        from accelerate.utils import broadcast_object_list

        verdict = broadcast_object_list([verdict])[0]
    kind, value = verdict
    if kind == "error":
        raise LntuneError(value)
    return None if value is None else Path(value)


def load_checkpoint(backend, path: Path) -> dict:
    """Every process: the backend's state and this process's RNG, from a checkpoint that select_checkpoint chose."""
    accelerator = backend.accelerator
    state = json.loads((path / "state.json").read_text())
    if state["world_size"] != accelerator.num_processes:
        raise LntuneError(
            f"{path} was written by {state['world_size']} processes; resume with the same number "
            f"(got {accelerator.num_processes}) so that every step sees the same data"
        )
    backend.load_state(path)
    _set_rng_state(load_state(path / f"rng-{accelerator.process_index}.safetensors"))
    return state
