"""LoRA through PEFT, restricted to the LLM: never the vision encoder, connector or output head.

PEFT's "all-linear" shortcut would also adapt the vision tower's and the connector's linear layers
of a Llava model, so the targets are listed explicitly as full module names inside the LLM's blocks.
"""

from __future__ import annotations

from torch import nn

from lntune.errors import LntuneError
from lntune.model.parts import locate_parts


def lora_target_names(model: nn.Module, wanted: tuple[str, ...] | None) -> list[str]:
    """Full module names of the linear layers in the LLM's blocks (filtered by their last name part)."""
    parts = locate_parts(model)
    block_ids = {id(block.module) for block in parts.blocks}
    names, available = [], set()
    current_block = None
    for name, module in parts.model.named_modules():
        if id(module) in block_ids:
            current_block = name
        if current_block is None or not name.startswith(current_block + ".") or not isinstance(module, nn.Linear):
            continue
        short = name.rsplit(".", 1)[-1]
        available.add(short)
        if wanted is None or short in wanted:
            names.append(name)
    missing = sorted(set(wanted or ()) - available)
    if missing:
        raise LntuneError(
            f"LoRA target module(s) {', '.join(missing)} not found in the LLM's blocks; "
            f"available linear layers: {', '.join(sorted(available))}"
        )
    return names


def wrap_with_lora(model: nn.Module, rank: int, alpha: float, dropout: float, targets: tuple[str, ...] | None):
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(
        r=rank,
        lora_alpha=alpha,
        lora_dropout=dropout,
        target_modules=lora_target_names(model, targets),
        bias="none",
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, config)


def lora_parameters(model: nn.Module):
    """The adapter weights PEFT added (found through PEFT's own tuner-layer type).

    Without PEFT imported no model can hold its layers, so nothing is imported then: importing PEFT imports
    bitsandbytes when it is installed (peft.helpers), seconds of start-up (torch._inductor) that every run which
    merely counts or saves its trained tensors would otherwise pay (bench/bnb_import_cost.py)."""
    import sys

    if "peft" not in sys.modules:
        return
    from peft.tuners.tuners_utils import BaseTunerLayer

    for module in model.modules():
        if isinstance(module, BaseTunerLayer):
            for attribute in module.adapter_layer_names:
                yield from getattr(module, attribute).parameters()
