"""Import weights trained with the LLaVA codebase into lntune's HF Llava layout (always a new directory).

- `import_projector`: a stage-1 `mm_projector.bin` into a model lntune built (only the connector changes).
- `import_llava_checkpoint`: a full `LlavaLlamaForCausalLM` checkpoint (LLM + projector, sometimes the vision
  tower) -> a Llava model directory with its processor, made the way `lntune build` makes one.
Every setting that decides what the connector sees (vision layer, CLS token, projector type, widths, image
size) is compared first: a projector trained on other features is refused, not imported to fail quietly.
The output is written to a staging directory beside --out and renamed at the end; on any failure the
staging directory is removed and nothing is left behind. The input model is never modified.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import shutil
import warnings
from pathlib import Path

import torch

from lntune import __version__
from lntune.adapter import PEFT_CONFIG
from lntune.errors import LntuneError
from lntune.files import staged_directory
from lntune.model.build import (
    BUILD_INFO_FILE, add_special_tokens, load_image_processor, load_llm_tokenizer, load_vision_model,
    check_output, make_processor,
)
from lntune.model.compose import compose_llava_config
from lntune.model.llava_format import (
    PROJECTOR_PREFIX, VISION_PREFIX, LlavaSettings, check_connector_shapes, connector_tensors, load_pickled_tensors,
    projector_only_settings, read_checkpoint_tensors, read_llava_settings, renamed_checkpoint_tensors,
    setting_differences, text_config_from_llava, text_model_type,
)
from lntune.model.load import load_llava_config, load_model, load_processor, model_class_for, torch_dtype
from lntune.model.sources import config_json_path, load_vision_config, read_config_dict, require_weights
from lntune.prompt import IMAGE_TOKEN

IMPORT_INFO_FILE = "lntune_import.json"


@contextlib.contextmanager
def staged_output(out: Path, overwrite: bool):
    """A staging directory that becomes `out` when the block succeeds and vanishes when it fails (lntune.files)."""
    check_output(out, overwrite, {})
    with staged_directory(out) as staging:
        yield staging


def _require_new_output(out: Path, *inputs: Path) -> None:
    if any(out.resolve() == path.resolve() for path in inputs):
        raise LntuneError(f"--out {out} is an input; an import never modifies its input, choose a new --out")


def _write_json(path: Path, record: dict) -> None:
    path.write_text(json.dumps(record, indent=2) + "\n")


def _build_hint(settings: LlavaSettings) -> str:
    layer = f" --vision-layer {settings.vision_layer}" if settings.vision_layer is not None else ""
    select = f" --vision-select {settings.vision_select}" if settings.vision_select is not None else ""
    tower = f" (CLIP_DIR: a local copy of {settings.vision_tower})" if settings.vision_tower else ""
    return (f"build a matching model first: lntune build --llm LLM_DIR --vision CLIP_DIR --out DIR "
            f"--connector {settings.projector_type}{layer}{select}{tower}")


def import_projector(model_dir, projector_file, out, llava_config_file=None, overwrite: bool = False,
                     say=print) -> Path:
    """Copy `model_dir` to `out` with its connector replaced by a LLaVA stage-1 projector."""
    model_dir, projector_file, out = (Path(path).expanduser() for path in (model_dir, projector_file, out))
    _require_new_output(out, model_dir)
    model_config = load_llava_config(model_dir)
    projector_type, tensors = connector_tensors(load_pickled_tensors(projector_file), projector_file)

    # LLaVA writes its config.json beside mm_projector.bin; it holds the settings the projector was trained with.
    settings_file = Path(llava_config_file).expanduser() if llava_config_file else projector_file.parent / "config.json"
    has_settings = bool(llava_config_file) or settings_file.is_file()
    if has_settings:
        data = read_config_dict(settings_file, "LLaVA config")
        if not any(key.startswith("mm_") for key in data):
            raise LntuneError(f"{settings_file} has no LLaVA settings (mm_* keys); give the LLaVA run's config.json")
        settings = read_llava_settings(data, settings_file)
        if settings.projector_type != projector_type:
            raise LntuneError(f"{projector_file} holds a {projector_type} projector, but {settings_file} says "
                              f"mm_projector_type {settings.projector_type}: the two files are from different runs")
    else:
        say(f"note: no LLaVA config.json beside {projector_file}; only the projector type and widths are checked")
        settings = projector_only_settings(projector_file, projector_type)
    differences = setting_differences(settings, model_config)
    if differences:
        raise LntuneError(f"{projector_file} does not fit {model_dir}: {'; '.join(differences)}; "
                          f"{_build_hint(settings)}")
    check_connector_shapes(tensors, projector_type, model_config, projector_file)

    with staged_output(out, overwrite) as staging:
        say(f"loading {model_dir}")
        model = load_model(model_dir)
        connector = model.model.multi_modal_projector
        dtype = next(connector.parameters()).dtype
        connector.load_state_dict({name: tensor.to(dtype) for name, tensor in tensors.items()}, strict=True)
        say(f"saving to {out}")
        model.save_pretrained(str(staging))
        load_processor(model_dir).save_pretrained(str(staging))
        if (model_dir / BUILD_INFO_FILE).is_file():
            shutil.copy(model_dir / BUILD_INFO_FILE, staging / BUILD_INFO_FILE)
        _write_json(staging / IMPORT_INFO_FILE, {
            "lntune_version": __version__,
            "kind": "llava-projector",
            "base_model": str(model_dir.resolve()),
            "projector": str(projector_file.resolve()),
            "projector_sha256": hashlib.sha256(projector_file.read_bytes()).hexdigest(),
            "projector_type": projector_type,
            "llava_settings": settings.to_dict() if has_settings else None,
        })
    say(f"imported the {projector_type} projector {projector_file} into {out}")
    return out


# ---- full LLaVA checkpoints ----------------------------------------------------------------------------------

def _check_tensors_fit(state: dict, expected: dict, tied: bool, source: Path) -> None:
    """Every weight of the model filled, with the shape its config.json implies; nothing left over."""
    missing = sorted(set(expected) - set(state) - ({"lm_head.weight"} if tied else set()))
    extra = sorted(set(state) - set(expected))
    wrong = [f"{name} {list(state[name].shape)}, config.json implies {list(expected[name])}"
             for name in sorted(set(state) & set(expected)) if tuple(state[name].shape) != expected[name]]
    problems = [f"{label}: {names[:5]}" for label, names in
                (("missing", missing), ("not in the model", extra), ("other shapes", wrong)) if names]
    if problems:
        raise LntuneError(f"{source}: its tensors do not fit the model its config.json describes: {'; '.join(problems)}")


def _most_common_float_dtype(tensors) -> torch.dtype:
    counts: dict[torch.dtype, int] = {}
    for tensor in tensors:
        if tensor.is_floating_point():
            counts[tensor.dtype] = counts.get(tensor.dtype, 0) + tensor.numel()
    return max(counts, key=counts.get)


def import_llava_checkpoint(checkpoint_dir, vision_dir, out, dtype: str = "auto", overwrite: bool = False,
                            say=print) -> Path:
    """Convert a LLaVA-codebase checkpoint directory into a Llava model directory lntune loads."""
    from transformers import GenerationConfig

    checkpoint_dir, out = Path(checkpoint_dir).expanduser(), Path(out).expanduser()
    config_file = config_json_path(checkpoint_dir, "LLaVA checkpoint")
    if checkpoint_dir.is_file():
        raise LntuneError(f"{checkpoint_dir} is a file; give the LLaVA checkpoint directory")
    _require_new_output(out, checkpoint_dir)
    check_output(out, overwrite, {})  # refuses an existing --out now, before the slow part
    data = read_config_dict(checkpoint_dir, "LLaVA checkpoint")
    model_type = text_model_type(data, config_file)
    settings = read_llava_settings(data, config_file)
    if settings.vision_layer is None:
        raise LntuneError(f"{config_file} has no mm_vision_select_layer: is it a LLaVA model's config.json?")
    if (checkpoint_dir / PEFT_CONFIG).is_file():
        raise LntuneError(f"{checkpoint_dir} is a LoRA run's output; merge it first "
                          "(LLaVA's scripts/merge_lora_weights.py), then import the merged directory")
    tensors = read_checkpoint_tensors(checkpoint_dir)
    tower_in_checkpoint = any(name.startswith(VISION_PREFIX) for name in tensors)
    if vision_dir is None:
        missing = "config, image processor" + ("" if tower_in_checkpoint else " or weights")
        raise LntuneError(f"{checkpoint_dir} needs --vision: the local directory of its vision tower "
                          f"({settings.vision_tower or 'CLIP'}); LLaVA checkpoints do not hold the tower's {missing}")
    vision_dir = Path(vision_dir).expanduser()
    vision_config = load_vision_config(vision_dir)
    if not tower_in_checkpoint:
        require_weights(vision_dir, "vision")

    with warnings.catch_warnings():
        # AutoTokenizer also reads config.json, whose transformers-4 `rope_scaling: null` only draws a
        # deprecation warning that is not the user's to act on (the import writes today's keys).
        warnings.filterwarnings("ignore", message="`rope_scaling` is deprecated", category=FutureWarning)
        tokenizer = load_llm_tokenizer(checkpoint_dir)
    added_tokens = add_special_tokens(tokenizer)
    image_token_id = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
    llava_config = compose_llava_config(text_config_from_llava(data, model_type), vision_config,
                                        settings.projector_type, settings.vision_layer, settings.vision_select,
                                        image_token_id)
    differences = setting_differences(settings, llava_config, other="--vision")
    if differences:
        raise LntuneError(f"--vision {vision_dir} is not the vision tower {checkpoint_dir} was trained with: "
                          f"{'; '.join(differences)}; give a local copy of {settings.vision_tower or 'that tower'}")
    projector_state = {name: tensor for name, tensor in tensors.items() if name.startswith(PROJECTOR_PREFIX)}
    projector_type, connector = connector_tensors(projector_state, checkpoint_dir)
    if projector_type != settings.projector_type:
        raise LntuneError(f"{checkpoint_dir} holds a {projector_type} projector, but its config.json says "
                          f"mm_projector_type {settings.projector_type}")
    check_connector_shapes(connector, projector_type, llava_config, checkpoint_dir)
    # The model's dtype: the checkpoint's own (LLaVA saves float16) unless --dtype says otherwise.
    model_dtype = _most_common_float_dtype(tensors.values()) if dtype == "auto" else torch_dtype(dtype)

    with torch.device("meta"):  # every name and shape the model needs, no memory
        expected = {name: tuple(tensor.shape)
                    for name, tensor in model_class_for(llava_config)(llava_config).state_dict().items()}
    vision_names = {name.removeprefix("model.vision_tower.") for name in expected if name.startswith("model.vision_tower.")}
    state, dropped = renamed_checkpoint_tensors(tensors, vision_names, checkpoint_dir)
    state.update({f"model.multi_modal_projector.{name}": tensor for name, tensor in connector.items()})
    if not tower_in_checkpoint:
        say(f"loading the vision tower from {vision_dir} (the checkpoint has none)")
        vision = load_vision_model(vision_dir, vision_config, model_dtype)
        state.update({f"model.vision_tower.{name}": tensor for name, tensor in vision.state_dict().items()})
    del tensors
    _check_tensors_fit(state, expected, llava_config.tie_word_embeddings, checkpoint_dir)

    say(f"assembling the Llava model ({model_type} LLM, {projector_type} connector, {model_dtype})")
    model, loading = model_class_for(llava_config).from_pretrained(
        None, config=llava_config, state_dict=state, dtype=model_dtype, output_loading_info=True
    )
    problems = {kind: sorted(map(str, names))[:5] for kind, names in loading.items() if names}
    if problems:
        raise LntuneError(f"{checkpoint_dir}: its tensors do not match a {model_type} Llava model: {problems}")
    if llava_config.tie_word_embeddings:
        model.tie_weights()
    if len(tokenizer) > model.get_input_embeddings().weight.shape[0]:
        # As in `lntune build`: new rows (the <image> token) start at the mean of the existing embeddings.
        model.resize_token_embeddings(len(tokenizer), mean_resizing=True)
    if (checkpoint_dir / "generation_config.json").is_file():
        model.generation_config = GenerationConfig.from_pretrained(str(checkpoint_dir), local_files_only=True)
    if model.generation_config.pad_token_id is None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    # Recorded for evaluation: LLaVA's own pads each image to a square first when the run used `pad`.
    model.config.image_aspect_ratio = settings.image_aspect_ratio
    image_processor = load_image_processor(vision_dir, vision_config, say)
    processor, chat_template_source = make_processor(tokenizer, image_processor, llava_config)

    with staged_output(out, overwrite) as staging:
        say(f"saving to {out}")
        model.save_pretrained(str(staging))
        processor.save_pretrained(str(staging))
        _write_json(staging / BUILD_INFO_FILE, {
            "lntune_version": __version__,
            "llm": str(checkpoint_dir.resolve()),
            "vision": str(vision_dir.resolve()),
            "connector": projector_type,
            "vision_layer": settings.vision_layer,
            "vision_select": settings.vision_select,
            "image_token_id": image_token_id,
            "image_seq_length": llava_config.image_seq_length,
            "added_tokens": added_tokens,
            "chat_template": chat_template_source,
            "dtype": str(model_dtype).replace("torch.", ""),
        })
        _write_json(staging / IMPORT_INFO_FILE, {
            "lntune_version": __version__,
            "kind": "llava-checkpoint",
            "checkpoint": str(checkpoint_dir.resolve()),
            "vision_tower_from": "checkpoint" if tower_in_checkpoint else str(vision_dir.resolve()),
            "llava_settings": settings.to_dict(),
            "dropped_tensors": dropped,
        })
    say(f"imported {checkpoint_dir} into {out} ({llava_config.image_seq_length} image tokens per image)")
    return out
