"""Where each part of a Llava MLLM lives, found by module type rather than by name lists.

Methods (what to train) and parameter accounting (what is where) both read this one map, so they
cannot disagree. Norms are any LayerNorm / RMSNorm class (torch's or a family's own `*RMSNorm`);
decoder blocks are the classes the model declares in `_no_split_modules`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import nn

from lntune.errors import LntuneError

NORM_CLASS_SUFFIXES = ("LayerNorm", "RMSNorm")


def is_norm(module: nn.Module) -> bool:
    return isinstance(module, (nn.LayerNorm, nn.RMSNorm)) or type(module).__name__.endswith(NORM_CLASS_SUFFIXES)


@dataclass
class BlockParts:
    """One decoder block of the LLM."""

    index: int
    module: nn.Module
    norms: dict[str, nn.Module]
    """Norm modules inside the block by their name relative to it (input_layernorm, self_attn.q_norm, ...)."""
    attention: nn.Module | None
    mlp: nn.Module | None


@dataclass
class ModelParts:
    model: nn.Module
    """The Llava model itself (a PEFT wrapper is looked through)."""
    vision_encoder: nn.Module
    connector: nn.Module
    language_model: nn.Module
    """The LLM's decoder stack (embeddings, blocks, final norm), without the output head."""
    embeddings: nn.Module
    output_head: nn.Module
    blocks: list[BlockParts]
    final_norms: dict[str, nn.Module] = field(default_factory=dict)

    @property
    def tied_embeddings(self) -> bool:
        return self.output_head.weight is self.embeddings.weight


def unwrap(model: nn.Module) -> nn.Module:
    """The Llava model inside a PEFT wrapper (or the model itself)."""
    get_base_model = getattr(model, "get_base_model", None)
    return get_base_model() if callable(get_base_model) else model


def _child_by_class_suffix(block: nn.Module, suffix: str) -> nn.Module | None:
    matches = [child for child in block.children() if type(child).__name__.endswith(suffix)]
    return matches[0] if len(matches) == 1 else None


def _decoder_blocks(language_model: nn.Module) -> list[nn.Module]:
    block_classes = set(getattr(language_model, "_no_split_modules", None) or [])
    blocks = [module for module in language_model.modules() if type(module).__name__ in block_classes]
    if not blocks:
        layers = getattr(language_model, "layers", None)
        if isinstance(layers, nn.ModuleList):
            blocks = list(layers)
    if not blocks:
        raise LntuneError(
            f"cannot find the decoder blocks of {type(language_model).__name__}: "
            "it declares no _no_split_modules and has no `layers` list"
        )
    return blocks


def locate_parts(model: nn.Module) -> ModelParts:
    llava = unwrap(model)
    inner = getattr(llava, "model", None)
    if inner is None or not all(hasattr(inner, name) for name in ("vision_tower", "multi_modal_projector", "language_model")):
        raise LntuneError(f"{type(llava).__name__} is not a Llava model (transformers 5 layout expected)")
    language_model = inner.language_model
    blocks = []
    in_blocks = set()
    for index, block in enumerate(_decoder_blocks(language_model)):
        norms = {name: module for name, module in block.named_modules() if name and is_norm(module)}
        blocks.append(
            BlockParts(
                index=index,
                module=block,
                norms=norms,
                attention=_child_by_class_suffix(block, "Attention"),
                mlp=_child_by_class_suffix(block, "MLP"),
            )
        )
        in_blocks.update(id(module) for module in block.modules())
    final_norms = {
        name: module
        for name, module in language_model.named_modules()
        if is_norm(module) and id(module) not in in_blocks
    }
    return ModelParts(
        model=llava,
        vision_encoder=inner.vision_tower,
        connector=inner.multi_modal_projector,
        language_model=language_model,
        embeddings=language_model.get_input_embeddings(),
        output_head=llava.get_output_embeddings(),
        blocks=blocks,
        final_norms=final_norms,
    )
