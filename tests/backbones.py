"""Tiny random backbones in standard HF architectures, written as ordinary local model directories.

The tests (tests/conftest.py's `backbone_dir`) and bench/eval_throughput.py use them exactly as a user's real
checkpoints are used (`lntune build --llm DIR --vision DIR`), so every code path they exercise is the real one.
Sizes are the smallest that keep each family's structure (grouped-query attention, Qwen3's q/k norms, Gemma2's
four block norms). The demo's backbones are pretrained instead: lntune/demo/pretrain.py.
"""

from __future__ import annotations

from pathlib import Path

from lntune.demo.tokenizer import build_tokenizer
from lntune.errors import unknown_key_error

DEFAULT_CORPUS = (
    "a red circle is left of a blue square. the green triangle is small. how many objects are there? two.",
    "describe the image. there is a large yellow star on a gray background.",
    "is there a cat in the image? no. what color is the square? blue.",
)


def _common(tokenizer, hidden_size: int, layers: int) -> dict:
    return dict(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )


def _llama(tokenizer, hidden_size, layers):
    from transformers import LlamaConfig

    return LlamaConfig(**_common(tokenizer, hidden_size, layers))


def _mistral(tokenizer, hidden_size, layers):
    from transformers import MistralConfig

    return MistralConfig(**_common(tokenizer, hidden_size, layers), sliding_window=None)


def _qwen2(tokenizer, hidden_size, layers):
    from transformers import Qwen2Config

    return Qwen2Config(**_common(tokenizer, hidden_size, layers), tie_word_embeddings=False)


def _qwen3(tokenizer, hidden_size, layers):
    from transformers import Qwen3Config

    return Qwen3Config(**_common(tokenizer, hidden_size, layers), head_dim=hidden_size // 4, tie_word_embeddings=True)


def _gemma2(tokenizer, hidden_size, layers):
    from transformers import Gemma2Config

    return Gemma2Config(
        **_common(tokenizer, hidden_size, layers),
        head_dim=hidden_size // 4,
        query_pre_attn_scalar=hidden_size // 4,
        sliding_window=64,
        pad_token_id=tokenizer.unk_token_id,
    )


LLM_FAMILIES = {"llama": _llama, "mistral": _mistral, "qwen2": _qwen2, "qwen3": _qwen3, "gemma2": _gemma2}


def write_tiny_llm(out: str | Path, family: str = "llama", hidden_size: int = 32, layers: int = 2, seed: int = 0, tokenizer=None) -> Path:
    """Save a randomly initialised causal LM of `family` with a tokenizer to `out`."""
    import torch
    from transformers import AutoModelForCausalLM

    if family not in LLM_FAMILIES:
        raise unknown_key_error("LLM family", family, LLM_FAMILIES)
    tokenizer = tokenizer or build_tokenizer(DEFAULT_CORPUS, vocab_size=320)
    config = LLM_FAMILIES[family](tokenizer, hidden_size, layers)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config)
    out = Path(out)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def _clip_vision(hidden_size, layers, image_size, patch_size):
    from transformers import CLIPVisionConfig, CLIPVisionModel

    config = CLIPVisionConfig(
        hidden_size=hidden_size, intermediate_size=2 * hidden_size, num_hidden_layers=layers,
        num_attention_heads=4, image_size=image_size, patch_size=patch_size, projection_dim=hidden_size,
    )
    return CLIPVisionModel(config)


def _clip_full(hidden_size, layers, image_size, patch_size):
    # A two-tower CLIP checkpoint, as openai/clip-vit-large-patch14 is shipped: lntune uses its vision half.
    from transformers import CLIPConfig, CLIPModel

    config = CLIPConfig(
        text_config=dict(hidden_size=hidden_size, intermediate_size=2 * hidden_size, num_hidden_layers=layers,
                         num_attention_heads=4, vocab_size=64, max_position_embeddings=16),
        vision_config=dict(hidden_size=hidden_size, intermediate_size=2 * hidden_size, num_hidden_layers=layers,
                           num_attention_heads=4, image_size=image_size, patch_size=patch_size),
        projection_dim=hidden_size,
    )
    return CLIPModel(config)


def _siglip_vision(hidden_size, layers, image_size, patch_size):
    from transformers import SiglipVisionConfig, SiglipVisionModel

    config = SiglipVisionConfig(
        hidden_size=hidden_size, intermediate_size=2 * hidden_size, num_hidden_layers=layers,
        num_attention_heads=4, image_size=image_size, patch_size=patch_size,
    )
    return SiglipVisionModel(config)


VISION_FAMILIES = {"clip": _clip_vision, "clip-full": _clip_full, "siglip": _siglip_vision}


def _image_processor(family: str, image_size: int):
    if family.startswith("clip"):
        from transformers import CLIPImageProcessor

        return CLIPImageProcessor(size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size})
    from transformers import SiglipImageProcessor

    return SiglipImageProcessor(size={"height": image_size, "width": image_size})


def write_tiny_vision(out: str | Path, family: str = "clip", hidden_size: int = 32, layers: int = 2,
                      image_size: int = 32, patch_size: int = 8, seed: int = 0) -> Path:
    """Save a randomly initialised CLIP / SigLIP vision encoder with its image processor to `out`."""
    import torch

    if family not in VISION_FAMILIES:
        raise unknown_key_error("vision family", family, VISION_FAMILIES)
    torch.manual_seed(seed)
    model = VISION_FAMILIES[family](hidden_size, layers, image_size, patch_size)
    out = Path(out)
    model.save_pretrained(out)
    _image_processor(family, image_size).save_pretrained(out)
    return out
