"""Adapters for the serving tests: a method's trainable tensors moved by seeded noise, saved as a real adapter."""

from __future__ import annotations

import torch


def write_adapter(model_dir, out, method: str = "layernorm-simple", seed: int = 0, dtype: str = "auto",
                  image_aspect_ratio: str | None = None, prompt: dict | None = None):
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
    return save_adapter(model, out, model_dir, {"name": method}, "finetune", image_aspect_ratio=image_aspect_ratio,
                        prompt=prompt)


def data_url(image, format: str = "PNG") -> str:
    import base64
    import io

    buffer = io.BytesIO()
    image.save(buffer, format=format)
    return f"data:image/{format.lower()};base64," + base64.b64encode(buffer.getvalue()).decode()


def model_alone(model_dir, adapter_dir=None, dtype: str = "auto"):
    """The base model, or the base with one adapter put in by lntune.adapter.load_adapter: the reference."""
    from lntune.adapter import load_adapter
    from lntune.model.load import load_model

    model = load_model(model_dir, dtype=dtype)
    if adapter_dir is not None:
        model = load_adapter(model, adapter_dir, model_dir)
    return model.eval()


def evaluation_answer(model_dir, adapter_dir, question: str, image, max_new_tokens: int) -> str:
    """What `lntune eval`'s generator answers (greedy), with the adapter alone and the image padded as evaluated."""
    from lntune.data.images import apply_aspect_ratio
    from lntune.eval.generate import AnswerGenerator
    from lntune.model.load import load_processor

    processor = load_processor(model_dir)
    generator = AnswerGenerator(model_alone(model_dir, adapter_dir), processor)
    picture = None if image is None else apply_aspect_ratio(processor, image, "pad")
    return generator.answer([question], [picture], max_new_tokens)[0]


def serve_threads():
    import threading

    return [thread.name for thread in threading.enumerate() if thread.name.startswith("lntune-serve")]
