"""`lntune compare --config FILE`: several stage-2 runs from one stage-1 model, on the same data, seed and budget,
evaluated and analysed in one report.md.

The shipped configs/demo-compare.yaml runs the paper's three comparisons on the tiny world: the methods (Table 1 and
the efficiency table), the data types at equal budgets (Figure 2) and the connector ablation (Table 4). The same
format works for real models: give `model` (a built MLLM), optionally `stage1_model` (skip stage 1), and `paths` for
the data and benchmark files (configs/llama-2-7b-compare.yaml).

A run is its RunConfig -> its run directory: every run's config is made (and so checked) and every path it needs
resolved before anything trains, and a directory that already holds a finished run is reused as it is, so a compare
that was stopped goes on where it stopped.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path

from lntune.config import RunConfig
from lntune.demo.pipeline import (BENCH_IMAGES, build_model, evaluate, image_blind_prior, run_stage, run_summary,
                                  score_cells, stage1, stage2_config)
from lntune.demo.report import plot_losses, results_table
from lntune.errors import LntuneError
from lntune.study.config import CompareConfig, load_compare_config
from lntune.study.report import analysis_section, report_header, study_section


@dataclass(frozen=True)
class PlannedRun:
    """A study's run as it will train: its config (model: the stage-1 model; out: OUT/runs/STUDY/FOLDER)."""

    name: str
    config: RunConfig
    eval_out: Path
    """OUT/eval/STUDY/FOLDER: the run's benchmark results."""


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def run_compare(config_path: str | Path, out: str | None = None, rebuild: bool = False) -> int:
    """Load the config file and run its studies; `out` (the --out flag) wins over the config's `out`."""
    config = load_compare_config(config_path)
    return run_studies(config, Path(out or config.out), rebuild, source=str(config_path))


def run_studies(config: CompareConfig, out: Path, rebuild: bool = False, source: str = "compare config") -> int:
    """Every study of `config` into `out`; `source` (the config file) names where errors are."""
    started = time.monotonic()
    paths = _paths(config, rebuild)
    _check_paths_defined(config, paths, source)
    similarity_data = _resolve(config.analysis.data, paths, source, "analysis.data")
    similarity_images = _resolve(config.analysis.image_folder, paths, source, "analysis.image_folder")
    stage1_model = Path(config.stage1_model) if config.stage1_model else out / "runs" / "stage1" / "model"
    plans = {name: [_plan(run, name, stage1_model, paths, out, config, source) for run in study.runs]
             for name, study in config.studies.items()}

    model = Path(config.model) if config.model else build_model(paths, out / "model")
    stage1_run = None
    if not config.stage1_model:
        _say("stage 1: the connector on captions")
        stage1_run = stage1(model, paths, out / "runs" / "stage1", config.budget)

    sections = [report_header(Path(source).name, config.seed, config.budget)]
    for study_name, study in config.studies.items():
        title = study.title or study_name
        rows, curves, trained_runs = [], {}, {}
        if study.baselines:
            if "vqav2" in config.benches and "instructions" in paths:
                rows.append({"name": "image-blind prior", "VQAv2": score_cells(image_blind_prior(paths))["VQAv2"]})
            if stage1_run is not None:
                results = evaluate(stage1_model, None, paths, out / "eval" / "stage1", config.budget, config.benches)
                rows.append({"name": "stage 1 only", **run_summary(stage1_run), **score_cells(results)})
        for plan in plans[study_name]:
            _say(f"[{study_name}] {plan.name}: stage 2 with {plan.config.method.name}")
            trained = run_stage(Path(plan.config.model), Path(plan.config.out), plan.config.data, plan.config.method,
                                plan.config.train)
            summary = run_summary(trained)
            curves[plan.name] = summary["losses"]
            trained_runs[plan.name] = trained
            results = evaluate(stage1_model, trained / "adapter", paths, plan.eval_out, config.budget, config.benches)
            rows.append({"name": plan.name, **summary, **score_cells(results)})
        plot = plot_losses(curves, out / f"loss_{study_name}.png", title)
        sections.append(study_section(title, rows, plot))
        if study.analysis and trained_runs:
            _say(f"[{study_name}] analyses: layer similarity, gradient variance, norm drift")
            references = {"stage 1 only": (str(stage1_model), None)} if study.baselines else {}
            sections.append(analysis_section(
                trained_runs, out / "analysis" / study_name, out, config.analysis,
                data=similarity_data, image_folder=similarity_images, references=references, seed=config.seed))
        print(f"\n{title}\n{results_table(rows)}")
    (out / "report.md").write_text("\n".join(sections))
    print(f"\ndone in {time.monotonic() - started:.0f}s: {out / 'report.md'}")
    return 0


def _paths(config: CompareConfig, rebuild: bool) -> dict[str, Path]:
    """Path name -> file or folder: the tiny world's (built or cached), then the config's `paths` over them."""
    paths = {}
    if config.world == "tiny":
        from lntune.demo.backbones_cache import prepare_world

        paths = prepare_world(seed=config.seed, size=config.world_size, budget=config.backbones, rebuild=rebuild)
    paths.update({name: Path(path) for name, path in config.paths.items()})
    return paths


def _substitute(text: str, paths: dict) -> str:
    for name, path in paths.items():
        text = text.replace("{" + name + "}", str(path))
    return text


def _resolve(template: str | None, paths: dict, source: str, key: str) -> str | None:
    """A path with {name} placeholders filled from the world's / config's paths; checked before any training."""
    if not template:
        return None
    resolved = _substitute(template, paths)
    if "{" in resolved:
        raise LntuneError(f"{source}: {key} {template!r} names a path that is not defined; "
                          f"defined: {', '.join(sorted(paths)) or 'none'} (or give a file, or null to skip)")
    return resolved


def _check_paths_defined(config: CompareConfig, paths: dict, source: str) -> None:
    """Every path name the steps to come read is defined, so none of them fails after hours of training."""
    needed = {}  # path name -> what reads it
    if not config.model:
        needed.update(llm="building the model (or give `model`)", vision="building the model (or give `model`)")
    if not config.stage1_model:
        needed.update(captions="stage 1 (or give `stage1_model`)", train_images="stage 1 (or give `stage1_model`)")
    trains = any(study.runs for study in config.studies.values())
    if trains:
        needed.setdefault("instructions", "stage 2")
        needed.setdefault("train_images", "stage 2")
    if trains or any(study.baselines for study in config.studies.values()):  # baselines: stage-1-only row, prior
        for bench in config.benches:
            needed.setdefault(bench, f"the {bench} benchmark")
            if BENCH_IMAGES[bench]:
                needed.setdefault(BENCH_IMAGES[bench], f"the {bench} benchmark")
    missing = [name for name in needed if name not in paths]
    if missing:
        raise LntuneError(f"{source}: paths.{missing[0]} is not defined, and {needed[missing[0]]} reads it; "
                          f"defined: {', '.join(sorted(paths)) or 'none'}"
                          + (f" (also missing: {', '.join(missing[1:])})" if missing[1:] else ""))


def _plan(run, study_name: str, stage1_model: Path, paths: dict, out: Path, config: CompareConfig,
          source: str) -> PlannedRun:
    """The run's RunConfig from the study's run entry; its overrides are checked here, before anything trains."""
    where = f"{source}: study {study_name!r}, run {run.name!r}"
    folder = out / "runs" / study_name / run.folder
    overrides = [_substitute(item, paths) for item in run.overrides]
    try:
        run_config = stage2_config(stage1_model, paths, folder, config.budget, run.method, overrides,
                                   source="overrides")
    except LntuneError as error:
        raise LntuneError(f"{where}: {error}") from None
    if run_config.model != str(stage1_model) or run_config.out != str(folder):
        raise LntuneError(f"{where}: overrides set `model` or `out`, which compare sets for every run "
                          "(the stage-1 model; OUT/runs/STUDY/RUN)")
    return PlannedRun(run.name, run_config, out / "eval" / study_name / run.folder)
