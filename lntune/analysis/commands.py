"""`lntune analyze similarity | gradients | drift`: files in (runs, models, data), JSON + PNG out.

Each analysis is a function of named inputs ({label: run or model}) and an output folder, so `lntune analyze`
(which labels runs by their folder names: the *_of functions) and `lntune compare` (by their study names) share one
implementation.
"""

from __future__ import annotations

import json
from functools import partial
from pathlib import Path


from lntune.errors import LntuneError
from lntune.files import read_yaml


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _write(figure, out: Path, stem: str, results: dict) -> Path:
    """Save the figure as <stem>.png and the numbers as <stem>.json; returns the PNG."""
    out.mkdir(parents=True, exist_ok=True)
    figure.tight_layout()
    figure.savefig(out / f"{stem}.png", dpi=110)
    _plt().close(figure)
    (out / f"{stem}.json").write_text(json.dumps(results, indent=2) + "\n")
    return out / f"{stem}.png"


def _integer_ticks(axis) -> None:
    from matplotlib.ticker import MaxNLocator

    axis.xaxis.set_major_locator(MaxNLocator(integer=True))  # blocks are whole numbers


def run_model(run: Path) -> tuple[str, str]:
    """(base model, adapter) of a training run directory."""
    config_file = Path(run) / "config.yaml"
    if not config_file.is_file():
        raise LntuneError(f"{run} is not a run directory (no config.yaml)")
    config = read_yaml(config_file, "it is the run's record; restore it from a copy")
    if not isinstance(config, dict) or "model" not in config:
        raise LntuneError(f"{config_file}: not an lntune run record (no `model:` key)")
    return config["model"], str(Path(run) / "adapter")


def similarity_analysis(targets: dict[str, tuple[str, str | None]], data: str, image_folder: str | None, out: Path,
                        n: int = 200, tokens: str = "all", batch_size: int = 8, max_length: int = 2048,
                        seed: int = 0) -> dict:
    """targets: {label: (model dir, adapter dir or None)}. Writes similarity.json / .png; returns the results."""
    import torch

    from lntune.adapter import load_with_adapter
    from lntune.analysis.similarity import layer_similarity, off_diagonal_mean
    from lntune.config import DataConfig, DataSource
    from lntune.data.dataset import SupervisedDataset, collate
    from lntune.data.mixture import build_mixture, parse_data_spec
    from lntune.model.load import load_llava_config, load_processor

    source = parse_data_spec(data)
    data_config = DataConfig(sources=(DataSource(source.path, source.type, n),), image_folder=image_folder,
                             max_length=max_length)
    results = {}
    for name, (model_dir, adapter) in targets.items():
        config = load_llava_config(model_dir)
        model = load_with_adapter(model_dir, adapter or None)
        processor = load_processor(model_dir)
        dataset = SupervisedDataset(build_mixture(data_config, seed=seed), processor, config.image_seq_length,
                                    data_config, "finetune")
        loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size,
                                             collate_fn=partial(collate, pad_token_id=processor.tokenizer.pad_token_id))
        batches = ({k: v for k, v in batch.items() if k in ("input_ids", "attention_mask", "pixel_values")}
                   for batch in loader)
        matrix = layer_similarity(model, batches, config.image_token_id, tokens)
        results[name] = {"model": model_dir, "adapter": adapter, "tokens": tokens, "samples": len(dataset),
                         "mean_off_diagonal": off_diagonal_mean(matrix), "matrix": matrix.tolist()}
        del model
    plt = _plt()
    columns = min(4, len(results))  # rows of at most four heatmaps: readable at a glance
    rows = -(-len(results) // columns)
    figure, axes = plt.subplots(rows, columns, figsize=(4.2 * columns, 3.8 * rows), squeeze=False)
    for axis in axes.flat[len(results):]:
        axis.set_visible(False)
    low = min(min(row) for result in results.values() for row in result["matrix"])  # one colour scale for all
    for axis, (name, result) in zip(axes.flat, results.items()):
        image = axis.imshow(result["matrix"], vmin=low, vmax=1.0, cmap="viridis")
        axis.set_title(f"{name}\nmean off-diagonal {result['mean_off_diagonal']:.3f}")
        axis.set_xlabel("decoder layer")
        axis.set_ylabel("decoder layer")
        axis.set_xticks(range(len(result["matrix"])))
        axis.set_yticks(range(len(result["matrix"])))
        figure.colorbar(image, ax=axis, fraction=0.046, label="cosine similarity")
    _write(figure, out, "similarity", results)
    return results


def gradient_analysis(runs: dict[str, Path], out: Path, window: int = 50) -> dict:
    """runs: {label: run dir}. Writes gradients.json / .png; returns the per-run statistics."""
    from lntune.analysis.gradients import gradient_variance, read_gradient_log

    results = {name: gradient_variance(read_gradient_log(Path(run)), window) for name, run in runs.items()}
    plt = _plt()
    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    for name, result in results.items():
        left.plot(result["sliding_steps"], result["sliding_variance"], label=name)
        right.plot(range(len(result["per_block_variance"])), result["per_block_variance"], marker="o", label=name)
    window = max(result["window"] for result in results.values())
    left.set(xlabel="optimizer step", ylabel=f"variance of the norm-gradient norm (window {window})",
             title="gradient variance over training", yscale="log")
    right.set(xlabel="decoder block", ylabel="variance over the run", title="per block", yscale="log")
    _integer_ticks(right)
    for axis in (left, right):
        axis.grid(alpha=0.3)
        axis.legend()
    _write(figure, out, "gradients", results)
    return results


def drift_analysis(runs: dict[str, Path], out: Path) -> dict:
    """runs: {label: run dir}. Writes drift.json / .png; returns {label: {norm kind: [per block]}}."""
    from lntune.analysis.drift import adapter_tensors, norm_drift
    from lntune.model.load import load_model

    results, bases = {}, {}
    for name, run in runs.items():
        model_dir, adapter = run_model(Path(run))
        if model_dir not in bases:  # the runs of a comparison share one base model: load it once
            bases[model_dir] = load_model(model_dir)
        results[name] = norm_drift(bases[model_dir], adapter_tensors(Path(adapter)))
    plt = _plt()
    kinds = sorted({kind for result in results.values() for kind in result})
    figure, axes = plt.subplots(1, len(kinds), figsize=(5 * len(kinds), 3.8), squeeze=False)
    for axis, kind in zip(axes[0], kinds):
        for name, result in results.items():
            values = result.get(kind, [])
            axis.plot(range(len(values)), [v if v is not None else float("nan") for v in values], marker="o", label=name)
        # log scale: full finetuning moves the norms ~100x less than norm tuning; linear would flatten it to 0
        axis.set(xlabel="decoder block", ylabel="relative L2 change from the base model", title=kind, yscale="log")
        _integer_ticks(axis)
        axis.grid(alpha=0.3)
        axis.legend()
    _write(figure, out, "drift", results)
    return results


# ---- run directories labelled by their folder names (lntune analyze) ------------------------------

def label_by_folder(paths) -> dict[str, Path]:
    """{folder name: path}; full paths when two folders share a name (runs/a/ln and runs/b/ln), so none is lost."""
    names = [Path(path).name for path in paths]
    unique = len(set(names)) == len(names)
    return {(Path(path).name if unique else str(path)): Path(path) for path in paths}


def similarity_of(runs: list[str], models: list[str], data: str, image_folder: str | None, out: Path,
                  **settings) -> dict:
    """similarity_analysis of run directories (their model + adapter) and plain model directories, labelled by
    folder name; `settings`: n, tokens, batch_size, max_length, seed. Returns {label: mean off-diagonal}."""
    targets = {name: run_model(path) for name, path in label_by_folder(runs).items()}
    targets.update({name: (str(path), None) for name, path in label_by_folder(models).items()})
    if not targets:
        raise LntuneError("give --run RUN_DIR or --model DIR (repeatable)")
    results = similarity_analysis(targets, data, image_folder, Path(out), **settings)
    return {name: result["mean_off_diagonal"] for name, result in results.items()}


def gradients_of(runs: list[str], out: Path, window: int = 50) -> dict:
    """gradient_analysis of run directories labelled by folder name; returns {label: variance}."""
    results = gradient_analysis(label_by_folder(runs), Path(out), window)
    return {name: result["variance"] for name, result in results.items()}


def drift_of(runs: list[str], out: Path) -> dict:
    """drift_analysis of run directories labelled by folder name."""
    return drift_analysis(label_by_folder(runs), Path(out))
