"""A quantized frozen base (QLN / QLoRA): the LLM's block linear layers in NF4 (4-bit) or int8 via bitsandbytes.

What is quantized: exactly the linear layers inside the LLM's decoder blocks (attention and MLP projections), and
the vision tower's when asked. Never the norms, the word embeddings, the output head or the connector: those are
what the layernorm methods train (and the norms are tiny), so they stay in full precision. Because the trained
tensors never touch a quantized weight, an adapter from a quantized run loads unchanged onto the full-precision
base: merging it is exact.

Why transformers' own loader (BitsAndBytesConfig / quantization_config in from_pretrained) rather than swapping
nn.Linear modules after loading: it quantizes tensor by tensor while reading the checkpoint, so a 7B base never sits
in memory at full precision first; on CUDA it places the model on the current device (Accelerate's own check of
quantized models expects that); and it marks the model `is_loaded_in_4bit` / `is_loaded_in_8bit`, which is how PEFT
puts its bitsandbytes LoRA layers (QLoRA) on the quantized weights. The same call works on CPU with bitsandbytes
>= 0.49 (compute there in fp32). What transformers does not know is which modules lntune keeps in full precision:
that is given as the exact names of every other linear layer (`llm_int8_skip_modules`), and checked after loading.
"""

from __future__ import annotations

import re

import torch
from torch import nn

from lntune.errors import LntuneError

MODES = ("4bit", "8bit")
INSTALL = "pip install 'lntune[quantize]' (bitsandbytes)"
# Module classes that hold quantized weights: bitsandbytes' own and PEFT's LoRA layers on top of them.
_QUANTIZED_CLASSES = ("Linear4bit", "Linear8bitLt")


def require_bitsandbytes() -> None:
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        raise LntuneError(f"a quantized base (--quantize, train.quantize) needs bitsandbytes, which is not "
                          f"installed: {INSTALL}") from None


def check_request(mode: str | None, include_vision: bool) -> None:
    """The --quantize / --quantize-vision pair of a command that loads a model (eval, chat), checked before anything
    loads; training checks the same through TrainConfig."""
    if mode is not None and mode not in MODES:
        raise LntuneError(f"unknown --quantize {mode!r}; valid: {', '.join(MODES)}")
    if include_vision and mode is None:
        raise LntuneError("--quantize-vision needs --quantize (4bit or 8bit)")


def evaluation_note(adapter_dir, manifest: dict, mode: str | None) -> str | None:
    """The one line that says an adapter trained on a quantized base is being evaluated on the full-precision one
    (the default: what a merged model computes), and how to evaluate it on the base as trained. None otherwise."""
    trained = manifest.get("base_quantization")
    if trained is None or mode is not None:
        return None
    vision = " --quantize-vision" if trained.get("vision_tower") else ""
    return (f"note: adapter {adapter_dir} was trained on a {trained['mode']} quantized base ({trained['format']}); "
            f"evaluating it on the full-precision base (as merged); add --quantize {trained['mode']}{vision} to "
            f"evaluate it on the base as trained")


def modules_to_quantize(model: nn.Module, include_vision: bool = False) -> set[str]:
    """Full names of the linear layers a quantized load stores in 4 / 8 bits (see the module docstring)."""
    from lntune.model.parts import locate_parts

    parts = locate_parts(model)
    chosen = {id(module) for block in parts.blocks for module in block.module.modules()
              if isinstance(module, nn.Linear)}
    if include_vision:
        chosen |= {id(module) for module in parts.vision_encoder.modules() if isinstance(module, nn.Linear)}
    return {name for name, module in model.named_modules() if id(module) in chosen}


def quantization_config(llava_config, mode: str, compute_dtype: torch.dtype, include_vision: bool = False):
    """The BitsAndBytesConfig for `mode` that quantizes exactly `modules_to_quantize` of this model."""
    from transformers import BitsAndBytesConfig

    from lntune.model.load import meta_model

    if mode not in MODES:
        raise LntuneError(f"unknown quantize mode {mode!r}; valid: {', '.join(MODES)}")
    model = meta_model(llava_config)
    quantized = modules_to_quantize(model, include_vision)
    # Exact names, escaped: transformers reads each entry as a regular expression anchored at a module boundary.
    keep = sorted(re.escape(name) for name, module in model.named_modules()
                  if isinstance(module, nn.Linear) and name not in quantized)
    if mode == "4bit":
        # QLoRA's recipe: NormalFloat4 with the quantization constants quantized again (double quantization).
        return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                  bnb_4bit_compute_dtype=compute_dtype, llm_int8_skip_modules=keep)
    return BitsAndBytesConfig(load_in_8bit=True, llm_int8_skip_modules=keep)


# bitsandbytes' 4-bit blocks: 64 consecutive weights of the row-major matrix share one scale.
NF4_BLOCK = 64


def check_cpu_shapes(model: nn.Module, mode: str, include_vision: bool = False) -> None:
    """4-bit on the CPU: every quantized layer's rows a whole number of blocks. bitsandbytes 0.50's CPU kernels
    dequantize row by row while quantization runs over the flattened matrix, so a row length that is not a multiple
    of 64 gives wrong weights, silently (seen with in_features 32; real LLM widths are multiples of 64). CUDA is not
    affected."""
    if mode != "4bit":
        return
    quantized = modules_to_quantize(model, include_vision)
    for name, module in model.named_modules():
        if name in quantized and module.in_features % NF4_BLOCK:
            raise LntuneError(f"--quantize 4bit on the CPU needs linear layers whose input width is a multiple of "
                              f"{NF4_BLOCK} (bitsandbytes' CPU kernels get other widths wrong); {name} has "
                              f"{module.in_features}. Use --quantize 8bit, or a GPU")


def check_quantized(model: nn.Module, mode: str, include_vision: bool = False) -> None:
    """After loading: the quantized layers are exactly the intended ones (a guard against a transformers change in
    how it matches module names) and every norm is still a full-precision floating tensor."""
    intended = modules_to_quantize(model, include_vision)
    actual = {name for name, module in model.named_modules() if type(module).__name__ in _QUANTIZED_CLASSES}
    if actual != intended:
        extra, missing = sorted(actual - intended), sorted(intended - actual)
        raise RuntimeError(f"quantized {mode} load: unexpected layers quantized {extra[:3]} / left unquantized "
                           f"{missing[:3]} (transformers' module matching changed?)")
    from lntune.model.parts import is_norm

    for name, module in model.named_modules():
        if is_norm(module) and any(not p.is_floating_point() for p in module.parameters()):
            raise RuntimeError(f"norm {name} was quantized")


def compute_like_training(model: nn.Module) -> None:
    """Make 4-bit layers compute in inference as they do in training. On CPUs with AVX512-BF16, bitsandbytes
    (0.50) repacks a Linear4bit's weights for a bf16 kernel the first time it runs in eval mode without gradients:
    faster, but it rounds activations to bf16, so an evaluation would no longer measure the model that was trained
    (fp32 compute on the CPU). Turning that switch off keeps dequantize-then-matmul in the compute dtype. CUDA
    never takes that path."""
    for module in model.modules():
        if type(module).__name__ == "Linear4bit" and hasattr(module, "support_avx512bf16_for_cpu"):
            module.support_avx512bf16_for_cpu = False


def describe(mode: str, include_vision: bool) -> dict:
    """What a run records about its quantized base (the adapter manifest's `base_quantization`)."""
    return {"mode": mode, "format": "nf4 (double quantization)" if mode == "4bit" else "int8 (LLM.int8)",
            "library": "bitsandbytes", "vision_tower": include_vision}


def quantization_of(model: nn.Module) -> dict | None:
    """The quantization `load_model(..., quantize=...)` gave this model (a PEFT wrapper is looked through), or None."""
    from lntune.model.parts import unwrap

    return getattr(unwrap(model), "lntune_quantization", None)
