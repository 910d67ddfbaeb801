"""The demo's and compare's report: markdown tables and loss curves (PNG, matplotlib)."""

from __future__ import annotations

from pathlib import Path

SCORE_COLUMNS = ("MME-P", "VQAv2", "COCO CIDEr", "Flickr30k CIDEr", "POPE F1")


def _cell(value, digits=1) -> str:
    if value is None:
        return "-"
    if isinstance(value, tuple):  # (mean, standard deviation) over seeds
        return f"{value[0]:.{digits}f} ± {value[1]:.{digits}f}"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def results_table(rows: list[dict]) -> str:
    """rows: {"name", "trainable", "trainable_percent", "peak_memory_mb", "step_seconds", scores...}."""
    header = ["run", "trainable", "%", "peak MB", "s/step", *SCORE_COLUMNS]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        percent = row.get("trainable_percent")
        cells = [row["name"], f"{row['trainable']:,}" if row.get("trainable") is not None else "-",
                 "-" if percent is None else (f"{percent:.3g}" if percent < 1 else f"{percent:.2f}"),
                 _cell(row.get("peak_memory_mb"), 0), _cell(row.get("step_seconds"), 3)]
        cells += [_cell(row.get(column)) for column in SCORE_COLUMNS]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot_losses(curves: dict[str, list[tuple[int, float]]], path: Path, title: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(7, 4))
    for name, points in curves.items():
        if points:
            axes.plot([step for step, _ in points], [loss for _, loss in points], label=name)
    axes.set_xlabel("optimizer step")
    axes.set_ylabel("training loss (per supervised token)")
    axes.set_title(title)
    axes.grid(alpha=0.3)
    axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path
