"""Gradient statistics of the norm parameters (the paper's optimisation analysis), from grad_stats.jsonl.

The trainer logs, per optimizer step, the L2 norm of the norm parameters' gradients in every block and
overall. The variance of those norms over training steps (whole run, and over a sliding window) is the
quantity compared across methods: the paper finds it smaller for LayerNorm tuning.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path

from lntune.errors import LntuneError


def read_gradient_log(run: Path) -> list[dict]:
    path = Path(run) / "grad_stats.jsonl"
    if not path.is_file():
        raise LntuneError(f"{run}: no grad_stats.jsonl (train with grad_stats on, the default)")
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    if not records:
        raise LntuneError(f"{path} is empty: the run's method does not train the norms (e.g. lora, connector), "
                          "so there are no norm gradients to analyse")
    if len(records) < 2:
        raise LntuneError(f"{path}: needs at least 2 steps for a variance, found {len(records)}")
    return records


def gradient_variance(records: list[dict], window: int = 50) -> dict:
    """Variance over steps of the overall and per-block norm-gradient norms, plus a sliding-window series."""
    overall = [record["norm_grad_norm"] for record in records]
    blocks = list(zip(*[record["block_norm_grad_norms"] for record in records]))
    window = max(2, min(window, len(overall)))
    sliding = [statistics.pvariance(overall[end - window:end]) for end in range(window, len(overall) + 1)]
    return {
        "steps": len(overall),
        "variance": statistics.pvariance(overall),
        "mean": statistics.fmean(overall),
        "per_block_variance": [statistics.pvariance([v for v in block if v is not None]) for block in blocks],
        "window": window,
        "sliding_variance": sliding,
        "sliding_steps": [records[end - 1]["step"] for end in range(window, len(overall) + 1)],
    }
