"""`lntune report`: one markdown table across runs in the paper's layout, read from metrics.json files."""

from __future__ import annotations

import json
from pathlib import Path

from lntune.errors import LntuneError

COLUMNS = ("MME-P", "MME-C", "VQAv2", "COCO CIDEr", "Flickr30k CIDEr", "POPE rand Acc/F1", "POPE pop Acc/F1",
           "POPE adv Acc/F1")


def collect(run: Path) -> dict[str, dict]:
    """benchmark -> metrics.json contents, from `run` (an eval output dir) or a single bench dir."""
    found = {}
    for path in [run / "metrics.json", *sorted(run.glob("*/metrics.json")), *sorted(run.glob("eval/*/metrics.json"))]:
        if path.is_file():
            record = json.loads(path.read_text())
            found[record["benchmark"]] = record
    if not found:
        raise LntuneError(f"{run}: no metrics.json (in it, its subfolders or eval/): run lntune eval first")
    return found


def metric_value(found: dict[str, dict], bench: str, *keys: str):
    """found[bench]["metrics"][keys[0]][keys[1]]..., or None where any level is missing (a benchmark not run)."""
    value = found.get(bench, {}).get("metrics")
    for key in keys:
        value = value.get(key) if isinstance(value, dict) else None
    return value


def row(found: dict[str, dict]) -> list[str]:
    def metric(bench, *keys, scale=1.0, digits=1):
        value = metric_value(found, bench, *keys)
        return "-" if value is None else f"{scale * value:.{digits}f}"

    cells = [metric("mme", "perception"), metric("mme", "cognition"), metric("vqav2", "accuracy"),
             metric("coco", "CIDEr_x100"), metric("flickr30k", "CIDEr_x100")]
    for split in ("random", "popular", "adversarial"):
        accuracy = metric("pope", "splits", split, "accuracy", scale=100)
        f1 = metric("pope", "splits", split, "f1", scale=100)
        cells.append("-" if accuracy == "-" else f"{accuracy}/{f1}")
    return cells


def report(runs: list[Path]) -> str:
    lines = ["| run | " + " | ".join(COLUMNS) + " |", "|---" * (len(COLUMNS) + 1) + "|"]
    notes = set()
    for run in runs:
        found = collect(run)
        lines.append(f"| {run.name} | " + " | ".join(row(found)) + " |")
        for record in found.values():
            if record.get("limit"):
                notes.add(f"{run.name}/{record['benchmark']}: a subset of {record['items']} items (--limit)")
            tokenizer = record.get("metrics", {}).get("tokenizer")
            if tokenizer == "approximate":
                notes.add(f"{run.name}/{record['benchmark']}: CIDEr with the approximate tokenizer (no Java)")
    if notes:
        lines.append("")
        lines += [f"- {note}" for note in sorted(notes)]
    return "\n".join(lines) + "\n"


def format_metrics(metrics: dict, prefix: str = "") -> str:
    """`lntune score`'s readable view of a metrics mapping: one `key value` line per number, nested keys dotted."""
    lines = []
    for key, value in metrics.items():
        if isinstance(value, dict):
            lines.append(format_metrics(value, f"{prefix}{key}."))
        elif isinstance(value, float):
            lines.append(f"{prefix}{key:<28} {value:.4f}")
        elif not isinstance(value, list) or value:
            lines.append(f"{prefix}{key:<28} {value}")
    return "\n".join(line for line in lines if line)
