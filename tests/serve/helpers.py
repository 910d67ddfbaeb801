"""Adapters for the serving tests: a method's trainable tensors moved by seeded noise, saved as a real adapter."""

from __future__ import annotations

import torch


def write_adapter(model_dir, out, method: str = "layernorm-simple", seed: int = 0, dtype: str = "auto"):
    """An adapter of `method` on `model_dir` whose tensors differ clearly from the base (norm gains scaled by
    1 + 0.5 noise, other tensors shifted by a tenth of their spread), saved with lntune.adapter.save_adapter."""
    from lntune.adapter import save_adapter
    from lntune.methods import apply_method
    from lntune.model.load import load_model

    model = apply_method(load_model(model_dir, dtype=dtype), method)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if not parameter.requires_grad:
                continue
            noise = torch.randn(parameter.shape, generator=generator).to(parameter.dtype)
            if "norm" in name:
                parameter.mul_(1 + 0.5 * noise)
                if name.endswith("bias"):
                    parameter.add_(0.1 * noise)
            else:
                parameter.add_(0.1 * parameter.float().std().clamp(min=1e-3).to(parameter.dtype) * noise)
    return save_adapter(model, out, model_dir, {"name": method}, "finetune")
