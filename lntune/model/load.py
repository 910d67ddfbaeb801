"""Loading an MLLM directory (built by lntune, or any existing HF Llava checkpoint).

Loading never freezes anything and never applies a method (see lntune.methods).
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import LlavaForConditionalGeneration

from lntune.config import DTYPE_NAMES
from lntune.errors import LntuneError
from lntune.files import REBUILD, loading
from lntune.model.connector import is_stock, make_connector
from lntune.model.sources import check_remote_code, read_config_dict

# The names are config.DTYPE_NAMES (what --dtype accepts); each is the torch dtype of that name.
DTYPES = {name: getattr(torch, name) for name in DTYPE_NAMES if name != "auto"}


class LntuneLlavaForConditionalGeneration(LlavaForConditionalGeneration):
    """Stock Llava with the connector chosen by `config.lntune_connector` (the paper's `linear`)."""

    def __init__(self, config):
        super().__init__(config)
        self.model.multi_modal_projector = make_connector(config)


def model_class_for(config) -> type[LlavaForConditionalGeneration]:
    return LlavaForConditionalGeneration if is_stock(config) else LntuneLlavaForConditionalGeneration


def torch_dtype(name: str):
    """`auto` -> "auto" (the stored dtype), otherwise the torch dtype."""
    if name == "auto":
        return "auto"
    if name not in DTYPES:
        raise LntuneError(f"unknown dtype {name!r}; valid: {', '.join(DTYPE_NAMES)}")
    return DTYPES[name]


def load_llava_config(path: str | Path, trust_remote_code: bool = False):
    """The LlavaConfig of a model directory, with a clear error for anything else."""
    from transformers import LlavaConfig

    data = read_config_dict(path, "model", REBUILD)
    check_remote_code(data, Path(path) / "config.json", trust_remote_code)
    if data["model_type"] != "llava":
        raise LntuneError(
            f"{path} is a {data['model_type']!r} model, not a Llava MLLM; "
            "build one first with `lntune build --llm ... --vision ... --out ...`"
        )
    config_dir = Path(path).expanduser()
    config_dir = config_dir if config_dir.is_dir() else config_dir.parent
    try:
        return LlavaConfig.from_pretrained(str(config_dir), local_files_only=True)
    except (ValueError, TypeError, KeyError) as error:
        # config.json parsed, but its content is not a Llava configuration (a sub-config missing or of a wrong type)
        raise LntuneError(f"{config_dir / 'config.json'} is not a valid Llava configuration ({error}); {REBUILD}") from None


def check_model_dir(path: str | Path, trust_remote_code: bool = False):
    """Everything about a model directory that can be checked without loading it (before a command writes
    anything): a Llava config.json, a directory with weights, and sound weight and JSON files. Returns the config."""
    from lntune.files import check_model_files
    from lntune.model.sources import require_weights

    path = Path(path).expanduser()
    if path.is_file():
        raise LntuneError(f"model {path} is a file; give the model directory (config.json and weights)")
    config = load_llava_config(path, trust_remote_code)
    check_model_files(require_weights(path, "model"), REBUILD)
    return config


def load_model(
    path: str | Path,
    dtype: str = "auto",
    device: str | torch.device | None = None,
    trust_remote_code: bool = False,
    quantize: str | None = None,
    quantize_vision: bool = False,
):
    """Load a Llava MLLM from a local directory with its real weights (eval mode off: train() as stored).

    quantize: `4bit` (NF4) or `8bit` (int8) stores the LLM blocks' linear layers (and the vision tower's with
    quantize_vision) quantized through bitsandbytes, computing in `dtype` (lntune.model.quantize). On CUDA the model
    then loads onto the current device; `device` is ignored."""
    path = Path(path).expanduser()
    config = load_llava_config(path, trust_remote_code)
    model_class = model_class_for(config)
    extra = {}
    if quantize is not None:
        from lntune.model import quantize as quantization

        quantization.require_bitsandbytes()
        compute_dtype = DTYPES.get(dtype, torch.bfloat16 if torch.cuda.is_available() else torch.float32)
        if not torch.cuda.is_available():
            quantization.check_cpu_shapes(meta_model(config), quantize, quantize_vision)  # before the slow load
        extra["quantization_config"] = quantization.quantization_config(config, quantize, compute_dtype,
                                                                        quantize_vision)
        dtype = dtype if dtype in DTYPES else {torch.bfloat16: "bfloat16", torch.float32: "float32"}[compute_dtype]
    with loading(path, "the model", REBUILD):
        model = model_class.from_pretrained(
            str(path),
            config=config,
            dtype=torch_dtype(dtype),
            local_files_only=True,
            trust_remote_code=trust_remote_code,
            **extra,
        )
    if quantize is not None:
        quantization.check_quantized(model, quantize, quantize_vision)
        quantization.compute_like_training(model)  # evaluation computes what training computed
        model.lntune_quantization = quantization.describe(quantize, quantize_vision)
    elif device is not None:
        model.to(device)
    return model


def load_processor(path: str | Path):
    from transformers import AutoProcessor

    path = Path(path).expanduser()
    with loading(path, "the processor (tokenizer and image processor)", REBUILD):
        return AutoProcessor.from_pretrained(str(path), local_files_only=True)


def meta_model(config):
    """The model for `config` on the meta device: every shape, no memory (for parameter accounting)."""
    model_class = model_class_for(config)
    with torch.device("meta"):
        return model_class(config)
