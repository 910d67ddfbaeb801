"""`lntune compare --config FILE`: several stage-2 runs on the same data, seed and budget, in one report.

The shipped configs/demo-compare.yaml runs the paper's three comparisons on the tiny world: the methods
(Table 1 and the efficiency table), the data types at equal budgets (Figure 2) and the connector
ablation (Table 4). The same format works for real models: give `model` (a built MLLM), optionally
`stage1_model` (skip stage 1), and `paths` for the data and benchmark files (see
configs/llama-2-7b-compare.yaml).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from lntune.analysis.report import AnalysisSettings, analysis_section
from lntune.config import config_from_dict, load_yaml
from lntune.demo.pipeline import (BENCHES, DemoBudget, build_model, evaluate, image_blind_prior, run_summary,
                                  score_cells, stage1, stage2)
from lntune.demo.report import plot_losses, results_table
from lntune.errors import LntuneError

TOP_KEYS = {"world", "world_size", "backbones", "seed", "out", "budget", "studies", "model", "stage1_model", "paths",
            "benches", "analysis"}
STUDY_KEYS = {"title", "baselines", "runs", "analysis"}


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _substitute(text: str, paths: dict) -> str:
    for name, path in paths.items():
        text = text.replace("{" + name + "}", str(path))
    return text


def _resolve(template: str | None, paths: dict, config_path, key: str) -> str | None:
    """A path with {name} placeholders filled from the world's / config's paths; checked before any training."""
    if not template:
        return None
    resolved = _substitute(template, paths)
    if "{" in resolved:
        raise LntuneError(f"{config_path}: {key} {template!r} names a path that is not defined; "
                          f"defined: {', '.join(sorted(paths)) or 'none'} (or give a file, or null to skip)")
    return resolved


def run_compare(config_path: str | Path, out: str | None = None, rebuild: bool = False) -> int:
    config = load_yaml(config_path)
    unknown = sorted(set(config) - TOP_KEYS)
    if unknown:
        raise LntuneError(f"{config_path}: unknown key {unknown[0]!r}; valid: {', '.join(sorted(TOP_KEYS))}")
    if not config.get("studies"):
        raise LntuneError(f"{config_path}: no studies")
    started = time.monotonic()
    out = Path(out or config.get("out", "compare-out"))
    budget = config_from_dict(DemoBudget, config.get("budget") or {}, f"{config_path}: budget")
    analysis = config_from_dict(AnalysisSettings, config.get("analysis") or {}, f"{config_path}: analysis")
    for study_name, study in config["studies"].items():
        unknown = sorted(set(study) - STUDY_KEYS)
        if unknown:
            raise LntuneError(f"{config_path}: study {study_name!r}: unknown key {unknown[0]!r}; "
                              f"valid: {', '.join(sorted(STUDY_KEYS))}")
    paths = {}
    if config.get("world", "tiny") == "tiny":
        from lntune.demo.backbones_cache import BackboneBudget, prepare_world
        from lntune.demo.files import WorldSize

        paths = prepare_world(seed=config.get("seed", 0), size=WorldSize(**config.get("world_size", {})),
                              budget=BackboneBudget(**config.get("backbones", {})), rebuild=rebuild)
    paths.update({name: Path(path) for name, path in (config.get("paths") or {}).items()})
    benches = tuple(config.get("benches", BENCHES))
    similarity_data = _resolve(analysis.data, paths, config_path, "analysis.data")
    similarity_images = _resolve(analysis.image_folder, paths, config_path, "analysis.image_folder")
    model = Path(config["model"]) if config.get("model") else build_model(paths, out / "model")
    if config.get("stage1_model"):
        stage1_model, stage1_run = Path(config["stage1_model"]), None
    else:
        _say("stage 1: the connector on captions")
        stage1_run = stage1(model, paths, out / "runs" / "stage1", budget)
        stage1_model = stage1_run / "model"

    sections = [f"# lntune compare: {Path(config_path).name}\n",
                f"Same stage-1 model, seed {config.get('seed', 0)} and budget for every run: "
                f"{budget.stage2_steps} steps of {budget.batch_size} samples.\n"]
    for study_name, study in config["studies"].items():
        rows, curves, trained_runs = [], {}, {}
        if study.get("baselines", False):
            if "vqav2" in benches and "instructions" in paths:
                rows.append({"name": "image-blind prior", "VQAv2": score_cells(image_blind_prior(paths))["VQAv2"]})
            if stage1_run is not None:
                rows.append({"name": "stage 1 only", **run_summary(stage1_run),
                             **score_cells(evaluate(stage1_model, None, paths, out / "eval" / "stage1", budget, benches))})
        for run in study["runs"]:
            name = run["name"]
            folder = name.replace(" ", "_").replace("+", "plus").replace("/", "_")
            _say(f"[{study_name}] {name}: stage 2 with {run['method']}")
            overrides = [_substitute(item, paths) for item in run.get("overrides", [])]
            trained = stage2(stage1_model, paths, out / "runs" / study_name / folder, budget, run["method"], overrides)
            summary = run_summary(trained)
            curves[name] = summary["losses"]
            trained_runs[name] = trained
            results = evaluate(stage1_model, trained / "adapter", paths, out / "eval" / study_name / folder, budget, benches)
            rows.append({"name": name, **summary, **score_cells(results)})
        plot = plot_losses(curves, out / f"loss_{study_name}.png", study.get("title", study_name))
        sections.append(f"## {study.get('title', study_name)}\n\n{results_table(rows)}\n\n![loss curves]({plot.name})\n")
        if study.get("analysis", True) and trained_runs:
            _say(f"[{study_name}] analyses: layer similarity, gradient variance, norm drift")
            references = {"stage 1 only": (str(stage1_model), None)} if study.get("baselines", False) else {}
            sections.append(analysis_section(
                trained_runs, out / "analysis" / study_name, out, analysis,
                data=similarity_data, image_folder=similarity_images,
                references=references, seed=config.get("seed", 0)))
        print(f"\n{study.get('title', study_name)}\n{results_table(rows)}")
    (out / "report.md").write_text("\n".join(sections))
    print(f"\ndone in {time.monotonic() - started:.0f}s: {out / 'report.md'}")
    return 0
