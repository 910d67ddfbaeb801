"""Adapters: only the tensors a run trained, tied to the exact base model they were trained on.

`adapter/` holds `trainable.safetensors` (the trained tensors, by their names in the Llava model)
and `adapter.json` (method, stage, the image aspect ratio trained with, tensor names and shapes, and the
base model's fingerprint). LoRA
runs add PEFT's own files (`adapter_config.json`, `adapter_model.safetensors`), so the LoRA part
also loads with `PeftModel.from_pretrained`. Loading an adapter onto another base is refused.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch

from lntune import __version__
from lntune.errors import LntuneError
from lntune.files import (
    REBUILD, RETRAIN, check_out_apart, check_safetensors, load_safetensors, loading, read_json_object,
    safetensors_header, staged_directory,
)

# An adapter folder's files; every other module (checkpoints, import, analysis, evaluation) takes the names from here.
MANIFEST = "adapter.json"
TRAINABLE_FILE = "trainable.safetensors"
"""The trained tensors by their names in the Llava model (a checkpoint holds its copy under the same name)."""
PEFT_CONFIG = "adapter_config.json"  # PEFT's own names (peft.utils.CONFIG_NAME, SAFETENSORS_WEIGHTS_NAME)
PEFT_TENSORS = "adapter_model.safetensors"
_SAMPLE_BYTES = 256


def fingerprint(model_dir: str | Path) -> str:
    """A content fingerprint of a model directory's weights, cheap even for 70B.

    Hashes config.json, every safetensors header (names, shapes, dtypes) and, for every tensor, 256
    bytes at its start, middle and end. Sampling per tensor (not per file) is what tells a stage-1
    model from its base: they differ only in the connector, a sliver of a 13 GB file.
    """
    model_dir = Path(model_dir)
    digest = hashlib.sha256()
    config = model_dir / "config.json"
    if config.is_file():
        digest.update(config.read_bytes())
    weight_files = sorted(model_dir.glob("*.safetensors"))
    if not weight_files:
        raise LntuneError(f"{model_dir} has no *.safetensors weights to fingerprint")
    for path in weight_files:
        header, data_start = safetensors_header(path, REBUILD)
        size = path.stat().st_size
        digest.update(f"{path.name}:{size}".encode())
        with path.open("rb") as handle:
            handle.seek(8)
            digest.update(handle.read(data_start - 8))  # the header's bytes, as stored
            for name, entry in sorted(header.items()):
                if name == "__metadata__":
                    continue
                start, end = entry["data_offsets"]
                for offset in (start, (start + end) // 2, max(start, end - _SAMPLE_BYTES)):
                    handle.seek(data_start + offset)
                    digest.update(handle.read(min(_SAMPLE_BYTES, end - offset)))
    return digest.hexdigest()[:32]


PEFT_PREFIX = "base_model.model."


_HEADER_DTYPES = {"F32": torch.float32, "BF16": torch.bfloat16, "F16": torch.float16, "F64": torch.float64}


def stored_float_dtype(model_dir: str | Path) -> torch.dtype | None:
    """The floating dtype holding most of a model directory's weights on disk (read from the safetensors headers)."""
    elements: dict[str, int] = {}
    for path in sorted(Path(model_dir).glob("*.safetensors")):
        header, _ = safetensors_header(path, REBUILD)
        for name, entry in header.items():
            if name != "__metadata__" and entry["dtype"] in _HEADER_DTYPES:
                count = 1
                for size in entry["shape"]:
                    count *= size
                elements[entry["dtype"]] = elements.get(entry["dtype"], 0) + count
    return _HEADER_DTYPES[max(elements, key=elements.get)] if elements else None


def save_adapter(model, out: str | Path, base_dir: str | Path, method: dict, stage: str,
                 base_fingerprint: str | None = None, tensors: dict[str, torch.Tensor] | None = None,
                 image_aspect_ratio: str | None = None, prompt: dict | None = None) -> Path:
    """Write `tensors`, full copies of `model`'s trained tensors (as the training backend gathered them from shards or
    replicas), as an adapter of the base `base_dir`, whose fingerprint the run took when it started. From the Python
    API (a model tuned in one's own loop), both may be left out: the trained tensors of the unsharded `model` and the
    base's fingerprint are then taken here.
    `image_aspect_ratio` (pad / crop, as training resolved it) and `prompt` (template, system, image placement) are
    recorded so that evaluation and chat show the model what training did."""
    from safetensors.torch import save_file

    from lntune.methods.lora import lora_parameters

    out = Path(out)
    if tensors is None:
        from lntune.train.distributed import gather_trainable

        tensors = gather_trainable(model)
    base_fingerprint = base_fingerprint or fingerprint(base_dir)
    # Trained in fp32, stored like the base (a bf16/fp16 base's adapter is half the size). Nothing is lost for use:
    # loading the adapter or merging it casts to the base's dtype anyway; resuming reads the fp32 checkpoints.
    stored = stored_float_dtype(base_dir)
    if stored is not None:
        tensors = {name: t.to(stored) if t.is_floating_point() and t.dtype.itemsize > stored.itemsize else t
                   for name, t in tensors.items()}
    lora_ids = {id(parameter) for parameter in lora_parameters(model)}
    lora_names = {name for name, parameter in model.named_parameters() if id(parameter) in lora_ids}
    is_lora = hasattr(model, "peft_config")
    # The rest by their names in the plain Llava model (named_parameters lists a tied tensor once).
    plain = {name.removeprefix(PEFT_PREFIX): t for name, t in tensors.items() if name not in lora_names}
    manifest = {
        "format": "lntune-adapter",
        "version": 1,
        "lntune_version": __version__,
        "stage": stage,
        "method": method,
        "lora": is_lora,
        "base_model": str(Path(base_dir).resolve()),
        "base_fingerprint": base_fingerprint,
        "tensors": {name: list(tensor.shape) for name, tensor in plain.items()},
    }
    from lntune.model.quantize import quantization_of

    if quantization_of(model) is not None:
        # Trained on a quantized base; the tensors here are full precision and apply (merge) exactly to the real one.
        manifest["base_quantization"] = quantization_of(model)
    if image_aspect_ratio is not None:
        manifest["image_aspect_ratio"] = image_aspect_ratio
    if prompt is not None:
        manifest["prompt"] = prompt
    # Written whole or not at all: a full disk or Ctrl-C leaves the previous adapter (if any) as it was.
    with staged_directory(out) as staging:
        if is_lora:
            # PEFT's own files (adapter_config.json + adapter_model.safetensors) from the LoRA tensors.
            model.save_pretrained(str(staging), state_dict={k: v for k, v in tensors.items() if k in lora_names})
        save_file(plain, str(staging / TRAINABLE_FILE), metadata={"format": "pt"})
        (staging / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return out


_MANIFEST_KEYS = ("format", "method", "lora", "base_model", "base_fingerprint", "tensors")


def read_manifest(adapter_dir: str | Path) -> dict:
    adapter_dir = Path(adapter_dir)
    path = adapter_dir / MANIFEST
    if not adapter_dir.is_dir():
        raise LntuneError(f"adapter {adapter_dir} is not a folder (give a run's adapter/ folder)")
    if not path.is_file():
        raise LntuneError(f"{adapter_dir} is not an lntune adapter (no {MANIFEST})")
    manifest = read_json_object(path, RETRAIN)
    missing = [key for key in _MANIFEST_KEYS if key not in manifest]
    if missing or manifest["format"] != "lntune-adapter":
        raise LntuneError(f"{path} is not an lntune adapter manifest (missing {', '.join(missing) or 'format'}); "
                          f"{RETRAIN}")
    return manifest


def check_adapter(adapter_dir: str | Path) -> dict:
    """Everything about an adapter folder that can be checked without a model: its manifest, its tensors file and,
    for LoRA, PEFT's files. Returns the manifest."""
    adapter_dir = Path(adapter_dir)
    manifest = read_manifest(adapter_dir)
    check_safetensors(adapter_dir / TRAINABLE_FILE, RETRAIN)
    if manifest["lora"]:
        for name in (PEFT_CONFIG, PEFT_TENSORS):
            if not (adapter_dir / name).is_file():
                raise LntuneError(f"LoRA adapter {adapter_dir} has no {name} (PEFT's part of a LoRA adapter); {RETRAIN}")
        read_json_object(adapter_dir / PEFT_CONFIG, RETRAIN)
        check_safetensors(adapter_dir / PEFT_TENSORS, RETRAIN)
    return manifest


def load_adapter(model, adapter_dir: str | Path, base_dir: str | Path):
    """Put an adapter's tensors into `model` (loaded from `base_dir`). Returns the model (PEFT-wrapped for LoRA)."""
    adapter_dir = Path(adapter_dir)
    manifest = check_adapter(adapter_dir)
    actual = fingerprint(base_dir)
    if actual != manifest["base_fingerprint"]:
        raise LntuneError(
            f"adapter {adapter_dir} was trained on another base model (fingerprint {manifest['base_fingerprint']}, "
            f"from {manifest['base_model']}); {base_dir} has fingerprint {actual}. Load it on the model it was trained from."
        )
    tensors = load_safetensors(adapter_dir / TRAINABLE_FILE, RETRAIN)
    if manifest["lora"]:
        from peft import PeftModel

        # local_files_only: a folder name that looks like a hub id must never reach the network.
        with loading(adapter_dir, "the LoRA adapter", RETRAIN, check=False):
            model = PeftModel.from_pretrained(model, str(adapter_dir), local_files_only=True)
    from lntune.model.parts import unwrap

    parameters = dict(unwrap(model).named_parameters())
    for name, tensor in tensors.items():
        if name not in parameters or parameters[name].shape != tensor.shape:
            raise LntuneError(f"adapter tensor {name} {list(tensor.shape)} does not fit the model {base_dir}")
        with torch.no_grad():
            parameters[name].copy_(tensor.to(parameters[name].dtype))
    return model


def load_with_adapter(model_dir: str | Path, adapter_dir: str | Path | None = None, dtype: str = "auto",
                      quantize: str | None = None, quantize_vision: bool = False):
    """The model of `model_dir` (lntune.model.load.load_model) with the adapter's tensors in it, LoRA merged into the
    weights: a plain Llava model, as `lntune merge` would have written it. No adapter: the model alone.

    quantize (4bit / 8bit, quantize_vision): the base loaded quantized exactly as `lntune train --quantize` loads it
    (the same load_model call), the adapter's full-precision tensors put in as trained. LoRA then stays unmerged
    (PEFT's bitsandbytes layers add it to the quantized weights' output, as in QLoRA training; merging would round
    it into the 4 / 8-bit weights); the plain Llava model inside the PEFT wrapper is returned."""
    from lntune.model.load import load_model
    from lntune.model.parts import unwrap

    if adapter_dir is not None:
        check_adapter(adapter_dir)  # a damaged adapter costs nothing: checked before the model's weights are read
    model = load_model(model_dir, dtype=dtype, quantize=quantize, quantize_vision=quantize_vision)
    if adapter_dir is None:
        return model
    model = load_adapter(model, adapter_dir, model_dir)
    if quantize is not None:
        return unwrap(model)
    return model.merge_and_unload() if hasattr(model, "merge_and_unload") else model  # PEFT-wrapped: LoRA


def merge_adapter(base_dir: str | Path, adapter_dir: str | Path, out: str | Path, say=print) -> Path:
    """A full model directory: base + adapter, LoRA merged into the weights. The adapter's image aspect ratio
    goes into the merged config.json as `image_aspect_ratio` (LLaVA's config key) and its prompt settings as
    `lntune_prompt`, where evaluation finds them."""
    from lntune.model.load import check_model_dir, load_processor

    out = Path(out)
    check_out_apart(out, {"base model": base_dir, "adapter": adapter_dir})
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise LntuneError(f"output {out} already exists and is not empty; choose another --out")
    check_model_dir(base_dir)  # every input checked before the slow part
    manifest = check_adapter(adapter_dir)
    model = load_with_adapter(base_dir, adapter_dir)
    if manifest.get("image_aspect_ratio") is not None:
        model.config.image_aspect_ratio = manifest["image_aspect_ratio"]
    if manifest.get("prompt") is not None:
        model.config.lntune_prompt = manifest["prompt"]  # template, system, image placement: read by evaluation
    save_model_dir(model, load_processor(base_dir), out, base_dir)
    say(f"merged {adapter_dir} into {base_dir} -> {out}")
    return out


def save_model_dir(model, processor, out: str | Path, base_dir: str | Path) -> None:
    """Save a full model + processor atomically (whole or not at all), carrying the base's build record along."""
    import shutil

    with staged_directory(Path(out)) as staging:
        model.save_pretrained(str(staging))
        processor.save_pretrained(str(staging))
        build_record = Path(base_dir) / "lntune_build.json"
        if build_record.is_file():
            shutil.copy(build_record, staging / build_record.name)
