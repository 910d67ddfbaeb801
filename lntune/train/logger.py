"""Training logs: metrics.jsonl (one JSON object per logged step), TensorBoard, and gradient statistics.

metrics.jsonl is appended and flushed line by line, so a killed run keeps every step it logged (and at most a cut-off
last line); a resumed run first drops lines past its checkpoint, so the file never holds a step twice.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from lntune.errors import LntuneError
from lntune.files import write_text_atomic
from lntune.model.parts import locate_parts


def truncate_jsonl(path: Path, last_step: int, say=None) -> None:
    """Keep only records with step <= last_step (after resuming from that step), rewriting the file atomically.

    A last line that is not a JSON record is what a kill in the middle of a write leaves: it is dropped, with a note.
    Anywhere else such a line is damage that a kill cannot cause: an error naming the line."""
    if not path.is_file():
        return
    lines = path.read_text(errors="replace").splitlines()
    numbered = [(number, line) for number, line in enumerate(lines, 1) if line.strip()]
    kept = []
    for index, (number, line) in enumerate(numbered):
        try:
            record = json.loads(line)
        except ValueError:
            record = None
        if not isinstance(record, dict):
            if index == len(numbered) - 1:
                if say is not None:
                    say(f"note: {path} line {number} dropped: cut off when the run stopped ({line[:40]!r})")
                break
            raise LntuneError(f"{path} line {number}: not a JSON record ({line[:40]!r}); only a cut-off last line "
                              "is dropped on resume: repair or delete this line, then resume again")
        if record.get("step", 0) <= last_step:
            kept.append(line)
    write_text_atomic(path, "".join(line + "\n" for line in kept))  # a kill mid-rewrite leaves the old file


class MetricsLogger:
    def __init__(self, run_dir: Path, enabled: bool):
        self.enabled = enabled
        self.metrics = (run_dir / "metrics.jsonl").open("a") if enabled else None
        self.grads = (run_dir / "grad_stats.jsonl").open("a") if enabled else None
        self.tensorboard = None
        if enabled:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tensorboard = SummaryWriter(str(run_dir / "tensorboard"))
            except ImportError:  # tensorboard is a dependency, but a broken install must not stop training
                self.tensorboard = None

    def log(self, record: dict) -> None:
        if not self.enabled:
            return
        self.metrics.write(json.dumps(record) + "\n")
        self.metrics.flush()
        if self.tensorboard is not None:
            for key, value in record.items():
                if key != "step" and isinstance(value, (int, float)) and math.isfinite(value):
                    self.tensorboard.add_scalar(f"train/{key}", value, record["step"])

    def log_gradients(self, record: dict) -> None:
        if self.enabled and record:
            self.grads.write(json.dumps(record) + "\n")
            self.grads.flush()

    def close(self) -> None:
        if self.enabled:
            self.metrics.close()
            self.grads.close()
            if self.tensorboard is not None:
                self.tensorboard.close()


def _local_grad(parameter):
    grad = parameter.grad
    if grad is None:
        return None
    return grad.full_tensor() if hasattr(grad, "full_tensor") else grad  # FSDP2 shard -> whole


def norm_gradient_norms(model, grad_of=_local_grad) -> dict:
    """L2 norm of the norm parameters' gradients per block (and overall); {} if no norm has a gradient.
    `grad_of(parameter)` reads a full gradient (DeepSpeed passes its own reader)."""
    parts = locate_parts(model)
    per_block, total = [], 0.0
    for block in parts.blocks:
        squared = 0.0
        found = False
        for norm in block.norms.values():
            for parameter in norm.parameters():
                grad = grad_of(parameter) if parameter.requires_grad else None
                if grad is not None:
                    squared += float(grad.detach().float().pow(2).sum())
                    found = True
        per_block.append(math.sqrt(squared) if found else None)
        total += squared
    if all(value is None for value in per_block):
        return {}
    return {"norm_grad_norm": math.sqrt(total), "block_norm_grad_norms": per_block}
