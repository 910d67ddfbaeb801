"""The vision-language connector: maps vision features [B, N, D_vision] to LLM embeddings [B, N, D_text].

`mlp2x_gelu` is stock transformers' LlavaMultiModalProjector (Linear -> GELU -> Linear, LLaVA-1.5),
so such models load anywhere Llava loads. `linear` is the paper's single linear layer; stock Llava
cannot express it, so lntune records the choice in config.json (`lntune_connector`) and swaps the
module in when it loads the model (lntune.model.load).
"""

from __future__ import annotations

import torch
from torch import nn

from lntune.config import CONNECTOR_NAMES
from lntune.errors import unknown_key_error

CONFIG_KEY = "lntune_connector"


class LinearConnector(nn.Module):
    """One linear layer from the vision hidden size to the LLM hidden size."""

    def __init__(self, vision_hidden_size: int, text_hidden_size: int, bias: bool = True):
        super().__init__()
        self.linear = nn.Linear(vision_hidden_size, text_hidden_size, bias=bias)

    def forward(self, image_features: torch.Tensor) -> torch.Tensor:
        return self.linear(image_features)  # [B, N, D_vision] -> [B, N, D_text]


def _vision_feature_width(config) -> int:
    # Several vision feature layers are concatenated along the hidden dimension.
    layers = config.vision_feature_layer
    return config.vision_config.hidden_size * (1 if isinstance(layers, int) else len(layers))


def _build_linear(config) -> nn.Module:
    return LinearConnector(_vision_feature_width(config), config.text_config.hidden_size, config.multimodal_projector_bias)


def _build_mlp2x_gelu(config) -> nn.Module:
    from transformers.models.llava.modeling_llava import LlavaMultiModalProjector

    return LlavaMultiModalProjector(config)


def connector_name(config) -> str:
    """The connector a Llava config describes (one of lntune.config.CONNECTOR_NAMES, the one list of them); configs
    without lntune's key are stock Llava."""
    name = getattr(config, CONFIG_KEY, None)
    if name is None:
        return f"mlp2x_{config.projector_hidden_act}"
    if name not in CONNECTOR_NAMES:
        raise unknown_key_error("connector", name, CONNECTOR_NAMES)
    return name


def make_connector(config) -> nn.Module:
    # Every connector but `linear` is the stock projector: mlp2x_gelu, and a stock checkpoint's other activations
    # (it handles any ACT2FN name).
    return _build_linear(config) if connector_name(config) == "linear" else _build_mlp2x_gelu(config)


def is_stock(config) -> bool:
    """Whether stock transformers' Llava class builds this connector itself."""
    return connector_name(config) != "linear"
