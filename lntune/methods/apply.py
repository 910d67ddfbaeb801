"""apply_method: set exactly the intended parameters trainable, in place (no copies).

Order: freeze everything, enable the method's selection inside the LLM, then set the four switch
components (connector, embeddings, output head, final norm) to their values explicitly, and last
force the vision encoder frozen. Setting the switches last is what lets `full` with
train_embeddings=false really freeze the embeddings.
"""

from __future__ import annotations

from collections.abc import Iterator

from torch import nn

from lntune.config import MethodConfig
from lntune.errors import LntuneError
from lntune.methods.lora import lora_parameters, wrap_with_lora
from lntune.methods.registry import METHODS, refuse_quantized
from lntune.model.quantize import quantization_of
from lntune.model.parts import ModelParts, locate_parts


def _all_llm(parts: ModelParts) -> Iterator[nn.Parameter]:
    yield from parts.language_model.parameters()
    yield from parts.output_head.parameters()


def _block_norms(parts: ModelParts) -> Iterator[nn.Parameter]:
    for block in parts.blocks:
        for norm in block.norms.values():
            yield from norm.parameters()


def _attention_qv(parts: ModelParts) -> Iterator[nn.Parameter]:
    for block in parts.blocks:
        attention = block.attention
        if attention is None or not (hasattr(attention, "q_proj") and hasattr(attention, "v_proj")):
            raise LntuneError(
                f"method attn-qv needs separate q_proj and v_proj in every attention block; block {block.index} of "
                f"{type(parts.language_model).__name__} has none (fused projections?): use lora with target modules"
            )
        yield from attention.q_proj.parameters()
        yield from attention.v_proj.parameters()


def _mlp(parts: ModelParts) -> Iterator[nn.Parameter]:
    for block in parts.blocks:
        if block.mlp is None:
            raise LntuneError(f"method attn-mlp: cannot find the MLP of block {block.index} (no single *MLP child)")
        yield from block.mlp.parameters()


def _lora(parts: ModelParts) -> Iterator[nn.Parameter]:
    yield from lora_parameters(parts.model)


def _nothing(parts: ModelParts) -> Iterator[nn.Parameter]:
    return iter(())


SELECTIONS = {
    "all": _all_llm,
    "block_norms": _block_norms,
    "attn_qv": _attention_qv,
    "mlp": _mlp,
    "lora": _lora,
    "none": _nothing,
}


def resolved_switches(config: MethodConfig) -> dict[str, bool]:
    """The four switch components' final values: the user's choice, else the method's default."""
    method = METHODS[config.name]
    pick = lambda chosen, default: default if chosen is None else chosen  # noqa: E731
    return {
        "connector": pick(config.train_connector, method.connector),
        "embeddings": pick(config.train_embeddings, method.embeddings),
        "output_head": pick(config.train_output_head, method.output_head),
        "final_norm": pick(config.train_final_norm, method.final_norm),
    }


def apply_method(model: nn.Module, config: MethodConfig | str) -> nn.Module:
    """Make `model` train what `config` says. Returns the model (PEFT-wrapped for lora)."""
    if isinstance(config, str):
        config = MethodConfig(name=config)
    method = METHODS[config.name]
    switches = resolved_switches(config)
    quantization = quantization_of(model)
    if quantization is not None:
        refuse_quantized(config.name, quantization["mode"])
    if method.llm_selection == "lora":
        model = wrap_with_lora(model, config.lora_rank, config.lora_alpha, config.lora_dropout, config.lora_target_modules)
    parts = locate_parts(model)
    if parts.tied_embeddings and switches["embeddings"] != switches["output_head"]:
        raise LntuneError(
            "this LLM ties its word embeddings and output head (one tensor): "
            "set train_embeddings and train_output_head to the same value"
        )
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    for parameter in SELECTIONS[method.llm_selection](parts):
        parameter.requires_grad_(True)
    switch_modules = {
        "connector": [parts.connector],
        "embeddings": [parts.embeddings],
        "output_head": [parts.output_head],
        "final_norm": list(parts.final_norms.values()),
    }
    for name, modules in switch_modules.items():
        for module in modules:
            for parameter in module.parameters():
                parameter.requires_grad_(switches[name])
    for parameter in parts.vision_encoder.parameters():
        parameter.requires_grad_(False)
    return model
