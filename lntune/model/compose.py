"""The Llava config of LLM config + vision config + connector choice (no weights involved).

Shared by `lntune build` (with real weights) and `lntune params` (on the meta device), so both
describe exactly the same model.
"""

from __future__ import annotations

from lntune.config import CONNECTOR_NAMES
from lntune.errors import LntuneError, unknown_key_error
from lntune.model.connector import CONFIG_KEY


def has_cls_token(vision_config) -> bool:
    # CLIP prepends a CLS token to the patch tokens; SigLIP has patch tokens only.
    return vision_config.model_type.startswith("clip")


def select_strategy(vision_config, vision_select: str) -> str:
    """Map lntune's `patch` / `cls_patch` to Llava's `vision_feature_select_strategy`."""
    if vision_select == "patch":
        return "default" if has_cls_token(vision_config) else "full"
    if vision_select == "cls_patch":
        if not has_cls_token(vision_config):
            raise LntuneError(
                f"vision_select 'cls_patch' needs a CLS token, but {vision_config.model_type} has none; use 'patch'"
            )
        return "full"
    raise unknown_key_error("vision_select", vision_select, ("patch", "cls_patch"))


def image_token_count(vision_config, strategy: str) -> int:
    """How many embeddings one image becomes in the LLM's sequence."""
    patches = (vision_config.image_size // vision_config.patch_size) ** 2
    return patches + (1 if strategy == "full" and has_cls_token(vision_config) else 0)


def compose_llava_config(
    text_config,
    vision_config,
    connector: str = "mlp2x_gelu",
    vision_layer: int = -2,
    vision_select: str = "patch",
    image_token_id: int | None = None,
):
    from transformers import LlavaConfig

    if connector not in CONNECTOR_NAMES:
        raise unknown_key_error("connector", connector, CONNECTOR_NAMES)
    layers = vision_config.num_hidden_layers
    # hidden_states holds the embeddings plus one entry per layer: valid indices are -(L+1)..L.
    if not -(layers + 1) <= vision_layer <= layers:
        raise LntuneError(
            f"vision_layer {vision_layer} is out of range for a {layers}-layer vision encoder "
            f"(valid: {-(layers + 1)}..{layers}; LLaVA uses -2)"
        )
    strategy = select_strategy(vision_config, vision_select)
    return LlavaConfig(
        text_config=text_config,
        vision_config=vision_config,
        # Llava's default token id is a LLaMA-vocab placeholder; without a tokenizer use the first id past the vocab.
        image_token_index=image_token_id if image_token_id is not None else text_config.vocab_size,
        image_seq_length=image_token_count(vision_config, strategy),
        projector_hidden_act="gelu",
        vision_feature_select_strategy=strategy,
        vision_feature_layer=vision_layer,
        multimodal_projector_bias=True,
        tie_word_embeddings=bool(getattr(text_config, "tie_word_embeddings", False)),
        **{CONFIG_KEY: connector},
    )
