"""Norm drift: how far each block's norm weights moved from the base model, per layer and norm kind."""

from __future__ import annotations

from pathlib import Path

import torch


@torch.no_grad()
def norm_drift(base_model, trained_tensors: dict[str, torch.Tensor]) -> dict[str, list[float | None]]:
    """{norm kind: [relative L2 change per block]} (None where the run did not train that norm)."""
    from lntune.model.parts import locate_parts

    parts = locate_parts(base_model)
    names = {id(p): n for n, p in base_model.named_parameters()}
    drift: dict[str, list[float | None]] = {}
    for index, block in enumerate(parts.blocks):
        for kind, norm in block.norms.items():
            values = drift.setdefault(kind, [None] * len(parts.blocks))
            changes, bases = [], []
            for parameter in norm.parameters():
                trained = trained_tensors.get(names[id(parameter)])
                if trained is not None:
                    changes.append((trained.float() - parameter.float()).pow(2).sum())
                    bases.append(parameter.float().pow(2).sum())
            if changes:
                values[index] = float(torch.stack(changes).sum().sqrt() / torch.stack(bases).sum().sqrt().clamp(min=1e-12))
    return drift


def adapter_tensors(adapter_dir: Path) -> dict[str, torch.Tensor]:
    from lntune.adapter import TRAINABLE_FILE
    from lntune.files import RETRAIN, load_safetensors

    return load_safetensors(Path(adapter_dir) / TRAINABLE_FILE, RETRAIN)
