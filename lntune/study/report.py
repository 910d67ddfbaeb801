"""The compare report: its header, one section per study (results table, loss plot) and each study's analyses."""

from __future__ import annotations

from pathlib import Path

from lntune.analysis.commands import drift_analysis, gradient_analysis, run_model, similarity_analysis
from lntune.demo.pipeline import DemoBudget
from lntune.demo.report import results_table
from lntune.study.config import AnalysisSettings


def report_header(config_name: str, seeds, budget: DemoBudget) -> str:
    if len(seeds) == 1:
        return (f"# lntune compare: {config_name}\n\n"
                f"Same stage-1 model, seed {seeds[0]} and budget for every run: "
                f"{budget.stage2_steps} steps of {budget.batch_size} samples.\n")
    return (f"# lntune compare: {config_name}\n\n"
            f"Same stage-1 model and budget for every run: {budget.stage2_steps} steps of {budget.batch_size} "
            f"samples, each run trained with seeds {', '.join(map(str, seeds))}; scores are the mean ± standard "
            f"deviation over the {len(seeds)} seeds (trainable, memory, step time and the loss curves: seed "
            f"{seeds[0]}).\n")


def study_section(title: str, rows: list[dict], loss_plot: Path, seeds: int = 1, heading: bool = True) -> str:
    """The study's results table (rows as demo.report.results_table takes them) and its loss plot."""
    return (f"## {title}\n\n" if heading else "") + f"{results_table(rows)}\n\n![loss curves]({loss_plot.name})\n"


def plot_lr_curves(searched: dict, path: Path, title: str) -> Path:
    """Validation loss against learning rate (log scale), one line per run, the chosen rate ringed."""
    import math

    plt = _plt()
    figure, axes = plt.subplots(figsize=(7, 4))
    for name, run in searched.items():
        points = [(rate, loss) for rate, loss in run.search if math.isfinite(loss)]
        line, = axes.plot([r for r, _ in points], [l for _, l in points], marker="o", label=name)
        chosen = [l for r, l in points if r == run.rate]
        axes.scatter([run.rate] * len(chosen), chosen, s=160, facecolors="none", edgecolors=line.get_color())
    axes.set_xscale("log")
    axes.set_xlabel("learning rate")
    axes.set_ylabel("validation loss (per supervised token)")
    axes.set_title(f"{title}: learning-rate search (ringed: chosen)")
    axes.grid(alpha=0.3)
    axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def lr_section(searched: dict, plot: Path, title: str) -> str:
    """The learning-rate search of the runs that had one: each rate's validation loss, the chosen one, the plot."""
    plot_lr_curves(searched, plot, title)
    lines = ["**Learning rates**, chosen on the validation split (held-out samples of the training data; the lowest "
             "validation loss per supervised token), each point trained at the run's budget with the first seed:\n",
             "| run | learning rate | validation loss | |", "|---|---|---|---|"]
    for name, run in searched.items():
        for rate, loss in run.search:
            lines.append(f"| {name} | {rate:g} | {loss:.4f} | {'chosen' if rate == run.rate else ''} |")
    edge = [name for name, run in searched.items() if run.at_edge]
    if edge:
        lines.append(f"\n**At the edge of the rates searched:** {', '.join(edge)}: the chosen rate is the highest or "
                     "lowest tried, so a better one may lie beyond; widen the grid (`lr_search`) or let the search "
                     "step past it (`lr_extend`).")
    lines.append(f"\n![learning-rate curves]({plot.name})\n")
    return "\n".join(lines)


def bootstrap_section(baseline: str, comparisons: dict, seeds, resamples: int) -> str:
    """Each run minus the baseline per benchmark, with the 95% interval; 'within noise' where it holds 0."""
    columns = list(next(iter(comparisons.values())))
    lines = [f"**Against {baseline}** (paired bootstrap over {len(seeds)} seed{'s' if len(seeds) > 1 else ''} and the "
             f"evaluation items, {resamples} resamples): the run's score minus {baseline}'s, and its 95% interval; "
             "*within noise* where the interval holds 0.\n",
             "| run | " + " | ".join(columns) + " |", "|---|" + "---|" * len(columns)]
    for name, by_column in comparisons.items():
        cells = []
        for column in columns:
            c = by_column[column]
            cells.append(f"{c.difference:+.1f} [{c.low:+.1f}, {c.high:+.1f}]" + (" *within noise*" if c.within_noise
                                                                                 else ""))
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


GALLERY_BENCHES = (("vqav2", "question"), ("coco", "caption"), ("flickr30k", "caption"))
"""The benchmarks a gallery takes its images from, in order of preference: one that asks, one that captions."""


def gallery_section(evaluations: dict[str, Path], paths: dict, benches, count: int, folder: Path,
                    report_root: Path) -> str:
    """A few held-out benchmark images with each run's answer (first seed) beside the reference: one table for a
    question benchmark, one for a captioning benchmark."""
    from PIL import Image

    from lntune.demo.pipeline import bench_files
    from lntune.eval.benchmarks import get_benchmark
    from lntune.eval.score import load_predictions

    lines = ["**Gallery**: held-out benchmark images, the reference and each run's output (first seed).\n"]
    kinds_done = set()
    for bench, kind in GALLERY_BENCHES:
        if bench not in benches or kind in kinds_done:
            continue
        kinds_done.add(kind)
        answers = {name: {r["id"]: r for r in load_predictions(evaluation / bench / "predictions.jsonl")}
                   for name, evaluation in evaluations.items()}
        data, images = bench_files(paths, bench)
        items = {item.id: item for item in get_benchmark(bench).load(Path(data), Path(images) if images else None,
                                                                     None)}
        shared = sorted(set.intersection(*(set(a) for a in answers.values())) & set(items))[:count]
        folder.mkdir(parents=True, exist_ok=True)
        header = ["image", *(["question"] if kind == "question" else []), "reference", *answers]
        lines += [f"{bench}:\n", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for item_id in shared:
            picture = folder / f"{bench}-{item_id}.png"
            with Image.open(items[item_id].image) as image:
                image = image.convert("RGB")
                image.thumbnail((160, 160))
                image.save(picture)
            reference = answers[next(iter(answers))][item_id]["reference"]
            truth = (reference["annotation"]["multiple_choice_answer"] if bench == "vqav2"
                     else reference["references"][0])
            question = items[item_id].prompt.split("\n")[0]
            cells = [f"![{bench} {item_id}]({_relative(picture, report_root)})",
                     *([question] if kind == "question" else []), truth,
                     *(answers[name][item_id]["prediction"] for name in answers)]
            lines.append("| " + " | ".join(_table_text(cell) for cell in cells) + " |")
        lines.append("")
    return "\n".join(lines)


GALLERY_CHARACTERS = 120
"""A gallery cell's text is cut to this many characters (a model that rambles fills the page otherwise)."""


def _table_text(text: str) -> str:
    """A cell's text on one line, its pipes escaped, cut to GALLERY_CHARACTERS (an image link is kept whole)."""
    text = " ".join(str(text).split())
    if len(text) > GALLERY_CHARACTERS and not text.startswith("!["):
        text = text[:GALLERY_CHARACTERS] + "…"
    return text.replace("|", "\\|")


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


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
