"""`lntune analyze similarity | gradients | drift`: files in (runs, models, data), JSON + PNG out."""

from __future__ import annotations

import json
from functools import partial
from pathlib import Path

import yaml

from lntune.errors import LntuneError


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _write(figure, out: Path, stem: str, results: dict) -> None:
    """Save the figure as <stem>.png and the numbers as <stem>.json."""
    figure.tight_layout()
    figure.savefig(out / f"{stem}.png", dpi=110)
    _plt().close(figure)
    (out / f"{stem}.json").write_text(json.dumps(results, indent=2) + "\n")


def _run_model(run: Path) -> tuple[str, str | None]:
    """(base model, adapter) of a training run directory."""
    config_file = run / "config.yaml"
    if not config_file.is_file():
        raise LntuneError(f"{run} is not a run directory (no config.yaml)")
    return yaml.safe_load(config_file.read_text())["model"], str(run / "adapter")


def similarity(args) -> dict:
    import torch

    from lntune.adapter import load_adapter
    from lntune.analysis.similarity import layer_similarity, off_diagonal_mean
    from lntune.config import DataConfig, DataSource
    from lntune.data.dataset import SupervisedDataset, collate
    from lntune.data.mixture import build_mixture, parse_data_spec
    from lntune.model.load import load_llava_config, load_model, load_processor

    targets = [(Path(run).name, *_run_model(Path(run))) for run in args.run or []]
    targets += [(Path(model).name, model, None) for model in args.model or []]
    if not targets:
        raise LntuneError("give --run RUN_DIR or --model DIR (repeatable)")
    source = parse_data_spec(args.data)
    data = DataConfig(sources=(DataSource(source.path, source.type, args.n),), image_folder=args.image_folder,
                      max_length=args.max_length)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results = {}
    for name, model_dir, adapter in targets:
        config = load_llava_config(model_dir)
        model = load_model(model_dir)
        if adapter:
            model = load_adapter(model, adapter, model_dir)
            model = model.merge_and_unload() if hasattr(model, "merge_and_unload") else model
        processor = load_processor(model_dir)
        dataset = SupervisedDataset(build_mixture(data, seed=args.seed), processor, config.image_seq_length, data, "finetune")
        loader = torch.utils.data.DataLoader(dataset, batch_size=args.batch_size,
                                             collate_fn=partial(collate, pad_token_id=processor.tokenizer.pad_token_id))
        batches = ({k: v for k, v in batch.items() if k in ("input_ids", "attention_mask", "pixel_values")}
                   for batch in loader)
        matrix = layer_similarity(model, batches, config.image_token_id, args.tokens)
        results[name] = {"model": model_dir, "adapter": adapter, "tokens": args.tokens, "samples": len(dataset),
                         "mean_off_diagonal": off_diagonal_mean(matrix), "matrix": matrix.tolist()}
    plt = _plt()
    figure, axes = plt.subplots(1, len(results), figsize=(4.2 * len(results), 3.8), squeeze=False)
    for axis, (name, result) in zip(axes[0], results.items()):
        image = axis.imshow(result["matrix"], vmin=min(min(row) for row in result["matrix"]), vmax=1.0, cmap="viridis")
        axis.set_title(f"{name}\nmean off-diagonal {result['mean_off_diagonal']:.3f}")
        axis.set_xlabel("decoder layer")
        axis.set_ylabel("decoder layer")
        axis.set_xticks(range(len(result["matrix"])))
        axis.set_yticks(range(len(result["matrix"])))
        figure.colorbar(image, ax=axis, fraction=0.046, label="cosine similarity")
    _write(figure, out, "similarity", results)
    return {name: result["mean_off_diagonal"] for name, result in results.items()}


def gradients(args) -> dict:
    from lntune.analysis.gradients import gradient_variance, read_gradient_log

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results = {Path(run).name: gradient_variance(read_gradient_log(Path(run)), args.window) for run in args.runs}
    plt = _plt()
    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    for name, result in results.items():
        left.plot(result["sliding_steps"], result["sliding_variance"], label=name)
        right.plot(range(len(result["per_block_variance"])), result["per_block_variance"], marker="o", label=name)
    left.set(xlabel="optimizer step", ylabel=f"variance of the norm-gradient norm (window {args.window})",
             title="gradient variance over training", yscale="log")
    right.set(xlabel="decoder block", ylabel="variance over the run", title="per block", yscale="log")
    for axis in (left, right):
        axis.grid(alpha=0.3)
        axis.legend()
    _write(figure, out, "gradients", results)
    return {name: result["variance"] for name, result in results.items()}


def drift(args) -> dict:
    from lntune.analysis.drift import adapter_tensors, norm_drift
    from lntune.model.load import load_model

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results = {}
    for run in args.runs:
        model_dir, adapter = _run_model(Path(run))
        results[Path(run).name] = norm_drift(load_model(model_dir), adapter_tensors(Path(adapter)))
    plt = _plt()
    kinds = sorted({kind for result in results.values() for kind in result})
    figure, axes = plt.subplots(1, len(kinds), figsize=(5 * len(kinds), 3.8), squeeze=False)
    for axis, kind in zip(axes[0], kinds):
        for name, result in results.items():
            values = result.get(kind, [])
            axis.plot(range(len(values)), [v if v is not None else float("nan") for v in values], marker="o", label=name)
        axis.set(xlabel="decoder block", ylabel="relative L2 change", title=kind)
        axis.grid(alpha=0.3)
        axis.legend()
    _write(figure, out, "drift", results)
    return results


ACTIONS = {"similarity": similarity, "gradients": gradients, "drift": drift}
