"""Reading what the LLaVA codebase (haotian-liu/LLaVA) writes: config keys, projector files, checkpoints.

Everything here reads, checks and renames; lntune.model.llava_import turns the result into model directories.
Pickled files are opened with torch.load(weights_only=True): tensors only, never code from the file.
"""

from __future__ import annotations

import pickle
import re
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from lntune.errors import LntuneError
from lntune.model.compose import has_cls_token, select_strategy
from lntune.model.connector import connector_name, make_connector

PROJECTOR_PREFIX = "model.mm_projector."
# The LLaVA classes lntune converts -> the transformers model_type of their language model.
LLAVA_ARCHITECTURES = {"LlavaLlamaForCausalLM": "llama", "LlavaMistralForCausalLM": "mistral"}
LLAVA_MODEL_TYPES = {"llava_llama": "llama", "llava_mistral": "mistral"}
# LLaVA checkpoint key prefix -> the key prefix in lntune's Llava model (transformers 5 module layout).
LANGUAGE_PREFIXES = {
    "model.embed_tokens.": "model.language_model.embed_tokens.",
    "model.layers.": "model.language_model.layers.",
    "model.norm.": "model.language_model.norm.",
    "lm_head.": "lm_head.",
}
VISION_PREFIX = "model.vision_tower.vision_tower."  # LLaVA's CLIPVisionTower wraps a CLIPVisionModel
LEGACY_VISION_PREFIX = "vision_model."  # transformers 4 named CLIPVisionModel's weights vision_model.*
# LLaVA's own training keys in config.json: they describe the run, not the language model.
LLAVA_ONLY_KEYS = {
    "image_aspect_ratio", "image_grid_pinpoints", "tokenizer_model_max_length", "tokenizer_padding_side",
    "tune_mm_mlp_adapter", "tune_mm_vision_tower", "freeze_mm_mlp_adapter", "freeze_mm_vision_tower",
    "unfreeze_mm_vision_tower", "use_mm_proj", "architectures", "model_type", "_name_or_path", "transformers_version",
}
# LLaVA's projector keys (after PROJECTOR_PREFIX) -> lntune's connector keys, per projector type.
# linear: LLaVA's nn.Linear -> lntune's LinearConnector.linear; mlp2x_gelu: nn.Sequential(Linear, GELU, Linear)
# -> transformers' LlavaMultiModalProjector (linear_1, act, linear_2).
PROJECTOR_KEYS = {
    "linear": {"weight": "linear.weight", "bias": "linear.bias"},
    "mlp2x_gelu": {"0.weight": "linear_1.weight", "0.bias": "linear_1.bias",
                   "2.weight": "linear_2.weight", "2.bias": "linear_2.bias"},
}
# The weights whose input / output widths meet the vision encoder / the LLM.
PROJECTOR_ENDS = {"linear": ("linear.weight", "linear.weight"), "mlp2x_gelu": ("linear_1.weight", "linear_2.weight")}
# LLaVA's image_aspect_ratio -> lntune's data.image_aspect_ratio words. Anything but `pad` (LLaVA's default
# `square`, or the key missing) is the image processor's own resize and centre crop.
ASPECT_RATIOS = {"pad": "pad", "square": "crop", None: "crop"}
# A vision tower name such as openai/clip-vit-large-patch14-336: patch size 14, image size 336.
_TOWER_NAME = re.compile(r"patch(\d+)(?:-(\d+))?$")
_OPENAI_CLIP_IMAGE_SIZE = 224  # openai's CLIP names without a size suffix are 224 px models


@dataclass(frozen=True)
class LlavaSettings:
    """What a LLaVA config.json says about the image path (LLaVA's key in each comment)."""

    source: str
    """The config.json these settings were read from (for a bare projector file: the file itself)."""
    vision_layer: int | None  # mm_vision_select_layer (LLaVA requires it; a bare projector file lacks it)
    vision_select: str | None  # mm_vision_select_feature: patch (CLS dropped) or cls_patch
    projector_type: str  # mm_projector_type (LLaVA's default: linear)
    vision_tower: str | None  # mm_vision_tower: a hub name or a path
    vision_hidden_size: int | None  # mm_hidden_size
    image_aspect_ratio: str  # image_aspect_ratio, in lntune's words: pad or crop

    def tower_geometry(self) -> tuple[int | None, int | None]:
        """(patch size, image size) read from the vision tower's name, or None where the name does not say."""
        if not self.vision_tower:
            return None, None
        match = _TOWER_NAME.search(self.vision_tower.rstrip("/").rsplit("/", 1)[-1])
        if not match:
            return None, None
        if match.group(2):
            return int(match.group(1)), int(match.group(2))
        return int(match.group(1)), _OPENAI_CLIP_IMAGE_SIZE if self.vision_tower.startswith("openai/") else None

    def to_dict(self) -> dict:
        return asdict(self)


def projector_only_settings(source: Path, projector_type: str) -> LlavaSettings:
    """What a bare projector file tells without its config.json: only its type (the rest is not compared)."""
    return LlavaSettings(str(source), None, None, projector_type, None, None, "crop")


def read_llava_settings(data: dict, source: Path) -> LlavaSettings:
    """The image-path settings of a LLaVA config dict, refusing what lntune cannot reproduce."""
    if data.get("mm_use_im_start_end"):
        raise LntuneError(
            f"{source}: mm_use_im_start_end is true: that model wraps each image in extra <im_start>/<im_end> "
            "tokens, which lntune does not support (LLaVA-1.5 sets it false)"
        )
    aspect = data.get("image_aspect_ratio")
    if aspect == "anyres" or str(data.get("mm_patch_merge_type", "flat")).startswith("spatial"):
        raise LntuneError(f"{source}: a LLaVA-NeXT (anyres) model; lntune supports LLaVA-1.5-style models only")
    if aspect not in ASPECT_RATIOS:
        raise LntuneError(f"{source}: unknown image_aspect_ratio {aspect!r}; lntune knows pad and square")
    select = data.get("mm_vision_select_feature", "patch")
    if select not in ("patch", "cls_patch"):
        raise LntuneError(f"{source}: unknown mm_vision_select_feature {select!r}; valid: patch, cls_patch")
    projector_type = data.get("mm_projector_type", "linear")
    if projector_type not in PROJECTOR_KEYS:
        raise LntuneError(
            f"{source}: mm_projector_type {projector_type!r} is not supported; valid: {', '.join(PROJECTOR_KEYS)}"
        )
    return LlavaSettings(
        source=str(source),
        vision_layer=data.get("mm_vision_select_layer"),
        vision_select=select,
        projector_type=projector_type,
        vision_tower=data.get("mm_vision_tower") or data.get("vision_tower"),
        vision_hidden_size=data.get("mm_hidden_size"),
        image_aspect_ratio=ASPECT_RATIOS[aspect],
    )


def _model_vision_select(llava_config) -> str:
    strategy = llava_config.vision_feature_select_strategy
    return "cls_patch" if strategy == "full" and has_cls_token(llava_config.vision_config) else "patch"


def setting_differences(settings: LlavaSettings, llava_config, other: str = "model") -> list[str]:
    """Each setting where a LLaVA config and a Llava model config disagree, as `name: LLaVA x, <other> y`."""
    vision = llava_config.vision_config
    if not has_cls_token(vision):
        # LLaVA's vision tower is always CLIP; its `patch` drops the first token, which SigLIP does not have.
        return [f"vision encoder: LLaVA CLIP, {other} {vision.model_type}"]
    differences = []
    if settings.vision_layer is not None and settings.vision_layer != llava_config.vision_feature_layer:
        differences.append(f"vision layer: LLaVA {settings.vision_layer}, {other} {llava_config.vision_feature_layer}")
    if settings.vision_select is not None and (
            select_strategy(vision, settings.vision_select) != llava_config.vision_feature_select_strategy):
        differences.append(f"vision select: LLaVA {settings.vision_select}, {other} {_model_vision_select(llava_config)}")
    if settings.projector_type != connector_name(llava_config):
        differences.append(f"connector: LLaVA {settings.projector_type}, {other} {connector_name(llava_config)}")
    if settings.vision_hidden_size is not None and settings.vision_hidden_size != vision.hidden_size:
        differences.append(f"vision hidden size: LLaVA {settings.vision_hidden_size}, {other} {vision.hidden_size}")
    patch_size, image_size = settings.tower_geometry()
    if patch_size is not None and patch_size != vision.patch_size:
        differences.append(f"patch size: LLaVA {patch_size} ({settings.vision_tower}), {other} {vision.patch_size}")
    if image_size is not None and image_size != vision.image_size:
        differences.append(f"image size: LLaVA {image_size} ({settings.vision_tower}), {other} {vision.image_size}")
    return differences


def load_pickled_tensors(path: Path) -> dict[str, torch.Tensor]:
    """A torch pickle of named tensors, read with weights_only=True; anything else is refused."""
    if not path.is_file():
        raise LntuneError(f"file not found: {path}")
    try:
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError) as error:
        lines = [line.strip() for line in str(error).splitlines() if line.strip()]
        # weights_only names the first object it refused: "WeightsUnpickler error: Unsupported global: GLOBAL ...".
        refused = [line.split("error: ", 1)[-1] for line in lines if "Unsupported global" in line]
        if refused:
            raise LntuneError(
                f"{path} holds more than tensors and was refused (read with torch.load(weights_only=True), which "
                f"never runs code from a file; {refused[0].split('. ')[0]}); save only a state dict of tensors"
            ) from None
        reason = next((line for line in lines if "Unsupported" in line), lines[0] if lines else type(error).__name__)
        raise LntuneError(f"{path} is not a readable torch file ({reason})") from None
    if not isinstance(state, dict) or not all(
        isinstance(name, str) and isinstance(tensor, torch.Tensor) for name, tensor in state.items()
    ):
        raise LntuneError(f"{path} is not a state dict (a mapping of names to tensors)")
    return state


def connector_tensors(state: dict[str, torch.Tensor], source: Path) -> tuple[str, dict[str, torch.Tensor]]:
    """(projector type, tensors by lntune's connector names) from LLaVA's `model.mm_projector.*` tensors."""
    others = sorted(name for name in state if not name.startswith(PROJECTOR_PREFIX))
    if others:
        hint = (" (embedding rows are saved beside the projector when LLaVA trains with mm_use_im_start_end, "
                "which lntune does not support)" if any("embed_tokens" in name for name in others) else "")
        raise LntuneError(f"{source} holds tensors other than the projector's: {others[:5]}{hint}")
    suffixes = {name[len(PROJECTOR_PREFIX):]: tensor for name, tensor in state.items()}
    for projector_type, names in PROJECTOR_KEYS.items():
        if set(suffixes) == set(names):
            return projector_type, {names[suffix]: tensor for suffix, tensor in suffixes.items()}
    raise LntuneError(
        f"{source}: projector keys {sorted(suffixes) or 'none'} are neither LLaVA's linear (weight, bias) nor its "
        "mlp2x_gelu (0.weight, 0.bias, 2.weight, 2.bias); lntune supports those two"
    )


def check_connector_shapes(tensors: dict[str, torch.Tensor], projector_type: str, llava_config, source) -> None:
    """Refuse a projector whose widths do not meet the model's vision encoder and LLM."""
    with torch.device("meta"):
        expected = {name: tuple(tensor.shape) for name, tensor in make_connector(llava_config).state_dict().items()}
    first, last = PROJECTOR_ENDS[projector_type]
    problems = []
    width_in, width_out = tensors[first].shape[1], tensors[last].shape[0]
    if width_in != expected[first][1]:
        problems.append(f"input width {width_in}, but the model's vision features are {expected[first][1]} wide "
                        f"(vision hidden size {llava_config.vision_config.hidden_size})")
    if width_out != expected[last][0]:
        problems.append(f"output width {width_out}, but the model's LLM hidden size is {expected[last][0]}")
    if not problems:
        problems = [f"{name} has shape {list(tensor.shape)}, the model's has {list(expected[name])}"
                    for name, tensor in tensors.items() if tuple(tensor.shape) != expected[name]]
    if problems:
        raise LntuneError(f"{source}: the {projector_type} projector does not fit the model: {'; '.join(problems)}")


# ---- full LLaVA checkpoints ----------------------------------------------------------------------------------

def text_model_type(data: dict, where: Path) -> str:
    """The transformers model_type of a LLaVA checkpoint's language model (llama, mistral)."""
    for architecture in data.get("architectures") or []:
        if architecture in LLAVA_ARCHITECTURES:
            return LLAVA_ARCHITECTURES[architecture]
    if data["model_type"] in LLAVA_MODEL_TYPES:
        return LLAVA_MODEL_TYPES[data["model_type"]]
    if data["model_type"] == "llava" and "text_config" in data:
        raise LntuneError(f"{where} is already a Hugging Face Llava model: use it directly (e.g. --model), no import")
    raise LntuneError(f"{where} is not a LLaVA-codebase checkpoint (architectures {data.get('architectures')}, "
                      f"model_type {data['model_type']!r}); supported: {', '.join(LLAVA_ARCHITECTURES)}")


def text_config_from_llava(data: dict, model_type: str):
    """The language model's config: LLaVA's config.json is the LLM's own plus LLaVA's keys."""
    from transformers import AutoConfig
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    kept = {key: value for key, value in data.items() if not key.startswith("mm_") and key not in LLAVA_ONLY_KEYS}
    if kept.get("rope_scaling", 0) is None:
        del kept["rope_scaling"]  # transformers 4's "no scaling"; today's configs say it in rope_parameters
    config = AutoConfig.for_model(model_type, **kept)
    config.architectures = [MODEL_FOR_CAUSAL_LM_MAPPING_NAMES[model_type]]
    return config


def read_checkpoint_tensors(directory: Path) -> dict[str, torch.Tensor]:
    """All tensors of a checkpoint directory: safetensors files, else pytorch_model*.bin (weights_only)."""
    from safetensors.torch import load_file

    files = sorted(directory.glob("*.safetensors"))
    read = lambda path: load_file(str(path))  # noqa: E731
    if not files:
        # Only the model shards: LLaVA's training_args.bin beside them is a pickle of arguments, not weights.
        files = sorted(directory.glob("pytorch_model*.bin"))
        read = load_pickled_tensors
    if not files:
        raise LntuneError(f"{directory} has no weights (*.safetensors or pytorch_model*.bin)")
    tensors: dict[str, torch.Tensor] = {}
    for path in files:
        shard = read(path)
        repeated = sorted(set(shard) & set(tensors))
        if repeated:
            raise LntuneError(f"{path} repeats tensors of another shard: {repeated[:3]}")
        tensors.update(shard)
    return tensors


def renamed_checkpoint_tensors(tensors: dict[str, torch.Tensor], vision_names: set[str], source: Path):
    """LLaVA's names -> lntune's Llava names (LLM and vision tower; the projector is handled apart)."""
    renamed, dropped, unknown = {}, [], []
    for name, tensor in tensors.items():
        if name.startswith(PROJECTOR_PREFIX):
            continue
        if name.endswith(".rotary_emb.inv_freq"):
            dropped.append(name)  # older transformers saved this computed buffer; today's recompute it
            continue
        if name.startswith(VISION_PREFIX):
            tower_name = name[len(VISION_PREFIX):]
            if tower_name not in vision_names and tower_name.removeprefix(LEGACY_VISION_PREFIX) in vision_names:
                tower_name = tower_name.removeprefix(LEGACY_VISION_PREFIX)
            renamed[f"model.vision_tower.{tower_name}"] = tensor
            continue
        prefix = next((prefix for prefix in LANGUAGE_PREFIXES if name.startswith(prefix)), None)
        if prefix is None:
            unknown.append(name)
            continue
        renamed[LANGUAGE_PREFIXES[prefix] + name[len(prefix):]] = tensor
    if unknown:
        raise LntuneError(f"{source} holds tensors lntune does not know where to put: {sorted(unknown)[:5]}")
    return renamed, dropped
