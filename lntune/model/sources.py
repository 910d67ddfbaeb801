"""Reading and checking the user's local model directories before anything heavy is loaded.

Every check here turns a confusing failure deep inside transformers into one line that says which
path was wrong and what to do. Nothing is ever fetched: a path that does not exist locally is an
error, even if it looks like a hub id.
"""

from __future__ import annotations

from pathlib import Path

from lntune.errors import LntuneError
from lntune.files import RECOPY, read_json

CLIP_TYPES = ("clip", "clip_vision_model")
SIGLIP_TYPES = ("siglip", "siglip_vision_model")
VISION_TYPES = CLIP_TYPES + SIGLIP_TYPES


def config_json_path(path: str | Path, role: str) -> Path:
    """The config.json of a model directory (or the path itself when it is a config.json)."""
    path = Path(path).expanduser()
    if not path.exists():
        hint = " (lntune never downloads: give a local directory)" if "/" in str(path) and not path.is_absolute() else ""
        raise LntuneError(f"{role} path does not exist: {path}{hint}")
    if path.is_file():
        if path.suffix != ".json":
            raise LntuneError(f"{role} path {path} is a file but not a config.json")
        return path
    config_file = path / "config.json"
    if not config_file.is_file():
        raise LntuneError(f"{role} directory {path} has no config.json: is it a Hugging Face model directory?")
    return config_file


def read_config_dict(path: str | Path, role: str, remedy: str = RECOPY) -> dict:
    config_file = config_json_path(path, role)
    data = read_json(config_file, remedy)
    if not isinstance(data, dict) or "model_type" not in data:
        raise LntuneError(f"{config_file} has no model_type: is it a Hugging Face model config?")
    return data


def check_remote_code(data: dict, where: Path, trust_remote_code: bool) -> None:
    """Refuse configs that need code from the checkpoint unless the user opted in."""
    if data.get("auto_map") and not trust_remote_code:
        raise LntuneError(
            f"{where} asks to run code shipped with the checkpoint (auto_map in config.json); "
            "review that code, then pass --trust-remote-code to allow it"
        )


def _model_type_known(model_type: str) -> bool:
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES

    return model_type in CONFIG_MAPPING_NAMES


def load_llm_config(path: str | Path, trust_remote_code: bool = False):
    """The transformers config of a local causal LM, after checking it is one."""
    from transformers import AutoConfig
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    data = read_config_dict(path, "LLM")
    where = config_json_path(path, "LLM")
    check_remote_code(data, where, trust_remote_code)
    model_type = data["model_type"]
    if model_type == "llava":
        raise LntuneError(f"{where} is already a Llava MLLM: use it directly (e.g. --model), not as --llm")
    if model_type in VISION_TYPES:
        raise LntuneError(f"{where} is a vision model ({model_type}); --llm needs a causal language model")
    if not data.get("auto_map"):
        if not _model_type_known(model_type):
            raise LntuneError(
                f"{where}: model_type {model_type!r} is unknown to this transformers; upgrade transformers"
            )
        if model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
            raise LntuneError(f"{where}: model_type {model_type!r} is not a causal language model")
    return AutoConfig.from_pretrained(str(where), trust_remote_code=trust_remote_code, local_files_only=True)


def load_vision_config(path: str | Path):
    """The vision half of a local CLIP or SigLIP config (CLIPVisionConfig / SiglipVisionConfig)."""
    from transformers import CLIPVisionConfig, SiglipVisionConfig

    data = read_config_dict(path, "vision")
    where = config_json_path(path, "vision")
    model_type = data["model_type"]
    if model_type not in VISION_TYPES:
        raise LntuneError(
            f"{where}: model_type {model_type!r} is not a supported vision encoder; valid: {', '.join(VISION_TYPES)}"
        )
    config_class = CLIPVisionConfig if model_type in CLIP_TYPES else SiglipVisionConfig
    if model_type in ("clip", "siglip"):
        # A full two-tower checkpoint: keep only the vision half.
        return config_class(**data.get("vision_config", {}))
    return config_class.from_pretrained(str(where), local_files_only=True)


def require_weights(path: str | Path, role: str) -> Path:
    """A directory with weights in it (for building, a bare config.json is not enough)."""
    path = Path(path).expanduser()
    config_json_path(path, role)
    if path.is_file():
        raise LntuneError(f"{role} {path} is a config file; give the model directory, with its weights")
    weights = list(path.glob("*.safetensors")) + list(path.glob("*.bin")) + list(path.glob("*.safetensors.index.json"))
    if not weights:
        raise LntuneError(f"{role} directory {path} has no weights (*.safetensors or *.bin)")
    return path
