"""The compare report: its header, one section per study (results table, loss plot) and each study's analyses."""

from __future__ import annotations

from pathlib import Path

from lntune.analysis.commands import drift_analysis, gradient_analysis, run_model, similarity_analysis
from lntune.demo.pipeline import DemoBudget
from lntune.demo.report import results_table
from lntune.study.config import AnalysisSettings


def report_header(config_name: str, seed: int, budget: DemoBudget) -> str:
    return (f"# lntune compare: {config_name}\n\n"
            f"Same stage-1 model, seed {seed} and budget for every run: "
            f"{budget.stage2_steps} steps of {budget.batch_size} samples.\n")


def study_section(title: str, rows: list[dict], loss_plot: Path) -> str:
    """The study's results table (rows as demo.report.results_table takes them) and its loss plot."""
    return f"## {title}\n\n{results_table(rows)}\n\n![loss curves]({loss_plot.name})\n"


def trains_norms(run: Path) -> bool:
    """Whether a run logged norm gradients for at least two steps (lora, attn-*, connector leave norms frozen)."""
    log = Path(run) / "grad_stats.jsonl"
    return log.is_file() and sum(1 for line in log.read_text().splitlines() if line.strip()) >= 2


def _relative(path: Path, root: Path) -> str:
    return str(path.relative_to(root)) if path.is_relative_to(root) else str(path)


def analysis_section(runs: dict[str, Path], out: Path, report_root: Path, settings: AnalysisSettings,
                     data: str | None, image_folder: str | None, references: dict[str, tuple[str, None]] | None = None,
                     seed: int = 0) -> str:
    """Run similarity (every run + `references`), gradient variance and drift (runs that train norms); markdown.

    `data` / `image_folder` are the similarity samples (None skips similarity, with a line saying so).
    """
    lines = ["### Analyses\n"]
    if data:
        targets = dict(references or {})
        targets.update({name: run_model(run) for name, run in runs.items()})
        results = similarity_analysis(targets, data, image_folder, out, n=settings.n, tokens=settings.tokens,
                                      batch_size=settings.batch_size, seed=seed)
        samples = max(result["samples"] for result in results.values())
        lines += [f"**Layer similarity** ({samples} samples, {settings.tokens} tokens): the mean cosine similarity "
                  "between different decoder layers' outputs; lower = layers do more distinct work (the paper's "
                  "expressive-power measure).\n",
                  "| run | mean off-diagonal similarity |", "|---|---|"]
        lines += [f"| {name} | {result['mean_off_diagonal']:.4f} |" for name, result in results.items()]
        lines.append(f"\n![layer similarity]({_relative(out / 'similarity.png', report_root)})\n")
    else:
        lines.append("Layer similarity: skipped (no `analysis.data` samples given).\n")
    normed = {name: run for name, run in runs.items() if trains_norms(run)}
    frozen = [name for name in runs if name not in normed]
    if normed:
        gradients = gradient_analysis(normed, out, settings.window)
        lines += ["**Gradient variance** of the norm parameters: the variance over training steps of the L2 norm of "
                  "their gradients (the paper finds it smaller for LayerNorm tuning).\n",
                  "| run | variance over the run | mean gradient norm | steps |", "|---|---|---|---|"]
        lines += [f"| {name} | {result['variance']:.4g} | {result['mean']:.4g} | {result['steps']} |"
                  for name, result in gradients.items()]
        lines.append(f"\n![gradient variance]({_relative(out / 'gradients.png', report_root)})\n")
        drift = drift_analysis(normed, out)
        kinds = sorted({kind for result in drift.values() for kind in result})
        lines += ["**Norm drift**: relative L2 change of each block's norm weights from the base model, mean over "
                  "blocks (per block in the plot).\n",
                  "| run | " + " | ".join(kinds) + " |", "|---|" + "---|" * len(kinds)]
        for name, result in drift.items():
            cells = []
            for kind in kinds:
                values = [v for v in result.get(kind, []) if v is not None]
                cells.append(f"{sum(values) / len(values):.4g}" if values else "-")
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
        lines.append(f"\n![norm drift]({_relative(out / 'drift.png', report_root)})\n")
    if frozen:
        lines.append(f"No gradient variance or drift for {', '.join(frozen)}: these runs leave the norms frozen.\n")
    return "\n".join(lines)
