"""The validation split and the validation loss the learning-rate search chooses on.

The split is held-out samples of the training distribution, never a benchmark: the tiny world writes them from
scenes of their own (lntune.demo.files.write_validation); for `world: files` a `validation` path is used when given,
else a seeded draw of `validation.samples` records of `instructions` is held out and every run trains on the rest.

The measure is the mean loss per supervised token over the split: what training minimises, measured on samples it
never saw, so it needs no generation and no benchmark (answer accuracy would need both, and would tune the rate to a
benchmark-like task). The learning rate of the lowest validation loss is chosen.
"""

from __future__ import annotations

import json
import math
import random
from dataclasses import replace
from functools import partial
from pathlib import Path

from lntune.config import DataConfig, DataSource, config_to_dict
from lntune.errors import LntuneError
from lntune.study.config import CompareConfig

VALIDATION_FILE = "validation.json"
"""What a run folder records of its validation loss (keyed by the split's file)."""


def validation_paths(config: CompareConfig, paths: dict, out: Path) -> dict[str, Path]:
    """{"validation", "validation_images"} (and for a held-out draw "instructions": the rest) to put over `paths`;
    nothing is written (make_validation_split writes them), so every run can be planned first."""
    if "validation" in paths:  # the user's own split
        return {"validation": Path(paths["validation"]),
                "validation_images": Path(paths.get("validation_images", paths["train_images"]))}
    folder = out / "validation"
    if config.world == "tiny":
        return {"validation": folder / VALIDATION_FILE, "validation_images": folder / "images"}
    return {"validation": folder / VALIDATION_FILE, "validation_images": Path(paths["train_images"]),
            "instructions": folder / "train.json"}


def make_validation_split(config: CompareConfig, paths: dict, out: Path) -> None:
    """Write the split validation_paths named (nothing when the user gave one); `paths` are the world's / config's,
    before validation_paths' are put over them."""
    if "validation" in paths:
        return
    folder = out / "validation"
    settings = config.validation
    if config.world == "tiny":
        from lntune.demo.files import write_validation

        marker = folder / "complete.json"
        wanted = {"world_seed": config.seed, "samples": settings.samples}
        if not (marker.is_file() and json.loads(marker.read_text()) == wanted):
            write_validation(folder, config.seed, settings.samples)
            marker.write_text(json.dumps(wanted))
        return
    _held_out(Path(paths["instructions"]), folder, settings.samples, settings.seed, settings.fraction)


def _held_out(instructions: Path, folder: Path, samples: int, seed: int, fraction: float | None = None) -> None:
    """A seeded draw of `samples` records (or of `fraction` of them) held out of `instructions`: validation.json, and
    train.json (the rest)."""
    from lntune.files import read_text

    text = read_text(instructions, "the instruction data the validation split is drawn from")
    try:
        records = ([json.loads(line) for line in text.splitlines() if line.strip()] if instructions.suffix == ".jsonl"
                   else json.loads(text))
    except json.JSONDecodeError as error:
        raise LntuneError(f"{instructions}: invalid JSON ({error}); `lntune data check` says where") from None
    if not isinstance(records, list):
        raise LntuneError(f"{instructions}: not a list of LLaVA records")
    if fraction is not None:
        samples = max(1, round(fraction * len(records)))
        if samples >= len(records):
            raise LntuneError(f"validation.fraction {fraction} of {instructions}'s {len(records)} records leaves none "
                              "to train on; hold out less, or give paths.validation")
    elif samples >= len(records):
        raise LntuneError(f"validation.samples is {samples}, but {instructions} has only {len(records)} records; "
                          "hold out fewer, or give paths.validation")
    held = set(random.Random(f"validation:{seed}").sample(range(len(records)), samples))
    folder.mkdir(parents=True, exist_ok=True)
    contents = {VALIDATION_FILE: [r for i, r in enumerate(records) if i in held],
                "train.json": [r for i, r in enumerate(records) if i not in held]}
    for name, part in contents.items():
        text = json.dumps(part)
        if not (folder / name).is_file() or (folder / name).read_text() != text:  # rewritten only when it changed
            (folder / name).write_text(text)


def validation_data(run_data: DataConfig, split: Path, images: Path) -> DataConfig:
    """The run's own data settings (template, type filter, lengths) on the validation split."""
    return replace(run_data, sources=(DataSource(str(split)),), image_folder=str(images), skip_invalid=False)


def validation_loss(run: Path, model: str, data: DataConfig, batch_size: int) -> float:
    """Mean loss per supervised token of the trained run (`run`/adapter on `model`) over `data`; cached in the run
    folder, keyed by the data. inf when the run diverged (a nan loss)."""
    import torch
    from tqdm.auto import tqdm

    from lntune.adapter import load_with_adapter
    from lntune.data.dataset import SupervisedDataset, collate
    from lntune.data.mixture import build_mixture
    from lntune.model.load import load_llava_config, load_processor
    from lntune.train.loss import SupervisedLossHead

    cache = run / VALIDATION_FILE
    key = {"data": config_to_dict(data), "model": str(model)}
    if cache.is_file():
        recorded = json.loads(cache.read_text())
        if recorded.get("key") == key:
            return float(recorded["loss"])
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model_module = load_with_adapter(model, run / "adapter").to(device).eval()
    processor = load_processor(model)
    dataset = SupervisedDataset(build_mixture(data, seed=0), processor, load_llava_config(model).image_seq_length,
                                data, "finetune")
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False,
                                         collate_fn=partial(collate, pad_token_id=processor.tokenizer.pad_token_id))
    head = SupervisedLossHead.install(model_module)  # per-position losses at supervised positions only
    total, tokens = 0.0, 0
    try:
        with torch.no_grad():
            for batch in tqdm(loader, desc=f"validation loss ({run.name})", unit="batch", leave=False):
                labels = batch.pop("labels").to(device)
                inputs = {k: v.to(device) for k, v in batch.items() if k in ("input_ids", "attention_mask",
                                                                                "pixel_values")}
                head.set_labels(labels)
                losses = model_module(**inputs, use_cache=False).logits  # [N supervised positions]
                total += float(losses.float().sum())
                tokens += int(losses.numel())
    finally:
        head.remove()
        del model_module  # before the next run's model loads (a 7B one is GBs)
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    if tokens == 0:
        raise LntuneError(f"the validation split {data.sources[0].path} has no supervised tokens for this run "
                          f"(type filter {data.types}); give samples of the types it trains on")
    loss = total / tokens
    if not math.isfinite(loss):
        loss = math.inf
    cache.write_text(json.dumps({"key": key, "loss": loss, "samples": len(dataset), "tokens": tokens}, indent=2))
    return loss
