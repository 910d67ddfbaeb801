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

import json
import statistics
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

from lntune.config import RunConfig
from lntune.demo.pipeline import (BENCH_IMAGES, build_model, evaluate, image_blind_prior, run_summary, score_cells,
                                  stage1_config, stage2_config)
from lntune.demo.report import plot_losses, results_table
from lntune.errors import LntuneError
from lntune.study.config import CompareConfig, load_compare_config, search_grid
from lntune.study.keys import check_folder_key, finished_run, run_folder_name, write_folder_key
from lntune.study.report import (analysis_section, bootstrap_section, gallery_section, lr_section, report_header,
                                 study_section)
from lntune.study.search import chosen_rate, rate_beyond


@dataclass(frozen=True)
class PlannedRun:
    """A study's run as it will train: its config with the first seed and its own rate (model: the stage-1 model;
    out: OUT/runs/METHOD-lrRATE-seedSEED-KEY), and the rates its search tries (none: no search)."""

    name: str
    config: RunConfig
    search: tuple[float, ...] = ()


@dataclass
class TrainedRun:
    """What a planned run became: the chosen rate, the search's points, one run folder and evaluation per seed."""

    rate: float
    search: list[tuple[float, float]]
    """(rate, validation loss) of each searched point."""
    runs: list[Path]
    evaluations: list[Path]
    """OUT/eval/RUN_FOLDER: one per seed, in `seeds` order."""
    at_edge: bool = False
    """The chosen rate is the highest or lowest searched (after any `lr_extend` steps): the best may lie beyond."""


def _runs_by_seed(trained: dict[str, TrainedRun], seeds) -> dict[str, Path]:
    """Every seed's run folder for the analyses, named `RUN (seed S)` when there are several seeds: the paper's
    layer-similarity and gradient claims are then seen seed by seed."""
    if len(seeds) == 1:
        return {name: run.runs[0] for name, run in trained.items()}
    return {f"{name} (seed {seed})": folder for name, run in trained.items() for seed, folder in zip(seeds, run.runs)}


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def run_compare(config_path: str | Path, out: str | None = None, rebuild: bool = False) -> int:
    """Load the config file and run its studies; `out` (the --out flag) wins over the config's `out`."""
    config = load_compare_config(config_path)
    return run_studies(config, Path(out or config.out), rebuild, source=str(config_path))


def run_studies(config: CompareConfig, out: Path, rebuild: bool = False, source: str = "compare config") -> int:
    """Every study of `config` into `out`; `source` (the config file) names where errors are."""
    from lntune.study.validation import make_validation_split, validation_paths

    started = time.monotonic()
    paths = _paths(config, rebuild)
    _check_paths_defined(config, paths, source)
    similarity_data = _resolve(config.analysis.data, paths, source, "analysis.data")
    similarity_images = _resolve(config.analysis.image_folder, paths, source, "analysis.image_folder")
    world_paths = dict(paths)
    if config.lr_search:
        paths.update(validation_paths(config, paths, out))
    stage1_model = Path(config.stage1_model) if config.stage1_model else out / "runs" / "stage1" / "model"
    plans = {name: [_plan(run, name, stage1_model, paths, out, config, source) for run in study.runs]
             for name, study in config.studies.items()}

    if config.lr_search:
        make_validation_split(config, world_paths, out)
    model = Path(config.model) if config.model else _build_model(paths, out / "model")
    stage1_run = None
    if not config.stage1_model:
        _say("stage 1: the connector on captions")
        stage1_run = _train(stage1_config(model, paths, out / "runs" / "stage1", config.budget))

    sections = [report_header(Path(source).name, config.seeds, config.budget)]
    record = {"seeds": list(config.seeds), "studies": {}}
    for study_name, study in config.studies.items():
        title = study.title or study_name
        rows, curves, trained = [], {}, {}
        if study.baselines:
            if "vqav2" in config.benches and "instructions" in paths:
                rows.append({"name": "image-blind prior", "VQAv2": score_cells(image_blind_prior(paths))["VQAv2"]})
            if stage1_run is not None:
                results = evaluate(stage1_model, None, paths, out / "eval" / "stage1", config.budget, config.benches)
                rows.append({"name": "stage 1 only", **run_summary(stage1_run), **score_cells(results)})
        for plan in plans[study_name]:
            trained[plan.name] = _run_plan(plan, study_name, config, paths, out, stage1_model)
            summary = run_summary(trained[plan.name].runs[0])
            curves[plan.name] = summary["losses"]
            scores = [score_cells(_evaluations(folder, config.benches)) for folder in trained[plan.name].evaluations]
            rows.append({"name": plan.name, **summary, **_mean_std(scores)})
        searched = {name: run for name, run in trained.items() if run.search}
        if searched:
            sections.append(f"## {title}\n")
            sections.append(lr_section(searched, out / f"lr_{study_name}.png", title))
        plot = plot_losses(curves, out / f"loss_{study_name}.png", title + (f" (seed {config.seeds[0]})"
                                                                             if len(config.seeds) > 1 else ""))
        sections.append(study_section(title, rows, plot, len(config.seeds), heading=not searched))
        baseline = study.baseline or config.bootstrap.baseline
        comparisons = {}
        if baseline in trained and len(trained) > 1:
            _say(f"[{study_name}] paired bootstrap against {baseline}")
            comparisons = _comparisons(trained, baseline, config)
            sections.append(bootstrap_section(baseline, comparisons, config.seeds, config.bootstrap.resamples))
        elif trained:
            sections.append(f"No paired bootstrap: the study has no run named {baseline!r} to compare with (give "
                            "the study a `baseline:`).\n")
        if config.gallery and trained:
            sections.append(gallery_section({name: run.evaluations[0] for name, run in trained.items()}, paths,
                                            config.benches, config.gallery, out / "gallery" / study_name, out))
        if study.analysis and trained:
            _say(f"[{study_name}] analyses: layer similarity, gradient variance, norm drift")
            references = {"stage 1 only": (str(stage1_model), None)} if study.baselines else {}
            sections.append(analysis_section(
                _runs_by_seed(trained, config.seeds), out / "analysis" / study_name, out,
                config.analysis, data=similarity_data, image_folder=similarity_images, references=references,
                seed=config.seed))
        record["studies"][study_name] = {name: _run_record(run, comparisons.get(name), out)
                                         for name, run in trained.items()}
        print(f"\n{title}\n{results_table(rows)}")
    (out / "results.json").write_text(json.dumps(record, indent=2) + "\n")
    (out / "report.md").write_text("\n".join(sections))
    print(f"\ndone in {time.monotonic() - started:.0f}s: {out / 'report.md'}")
    return 0


def _build_model(paths: dict, out: Path) -> Path:
    """The built MLLM, keyed by the backbones it was built from (a folder built from others is refused)."""
    key = {"llm": str(paths["llm"]), "vision": str(paths["vision"]), "connector": "linear"}
    if (out / "config.json").is_file() and not check_folder_key(out, key):
        raise LntuneError(f"{out} holds a model that records no backbones (made by an older lntune compare); "
                          "delete it to build it again, or choose another --out")
    built = build_model(paths, out)
    write_folder_key(out, key)
    return built


def _train(config: RunConfig) -> Path:
    """The run of `config`, trained unless its folder holds it finished (lntune.study.keys)."""
    from lntune.demo.pipeline import quiet
    from lntune.train.trainer import train

    if finished_run(config):
        _say(f"  reused: {config.out} (finished, same config)")
        return Path(config.out)
    return train(config, say=quiet)


def _with(config: RunConfig, out: Path, lr: float | None, seed: int) -> RunConfig:
    """`config` with this rate and seed, in its keyed folder under OUT/runs."""
    keyed = replace(config, out="", train=replace(config.train, lr=lr, seed=seed))
    return replace(keyed, out=str(out / "runs" / run_folder_name(keyed)))


def _rate(config: RunConfig) -> float:
    from lntune.methods import METHODS

    return config.train.lr if config.train.lr is not None else METHODS[config.method.name].default_lr


def _eval_folder(run: Path, out: Path, config: CompareConfig) -> Path:
    limit = config.budget.eval_limit
    return out / "eval" / (run.name + ("" if limit is None else f"-limit{limit}"))


def _run_plan(plan: PlannedRun, study_name: str, config: CompareConfig, paths: dict, out: Path,
              stage1_model: Path) -> TrainedRun:
    """The search (each rate with the first seed, its validation loss), the choice, every seed; each evaluated."""
    from lntune.study.validation import validation_data, validation_loss

    first = config.seeds[0]
    rate, search = _rate(plan.config), []

    def search_point(point: float, label: str) -> None:
        _say(f"[{study_name}] {plan.name}: learning rate {point:g} ({label}), seed {first}")
        point_config = _with(plan.config, out, point, first)
        run = _train(point_config)
        data = validation_data(point_config.data, paths["validation"], paths["validation_images"])
        search.append((point, validation_loss(run, point_config.model, data, config.validation.batch_size)))

    for index, point in enumerate(plan.search, start=1):
        search_point(point, f"{index}/{len(plan.search)}")
    at_edge = False
    if search:
        for extension in range(1, config.lr_extend + 1):
            best = chosen_rate(search)
            beyond = None if best is None else rate_beyond(search, best)
            if beyond is None:
                break
            search_point(beyond, f"past the grid's {'highest' if beyond > best else 'lowest'} rate {best:g}, "
                                 f"{extension}/{config.lr_extend}")
        rate = chosen_rate(search)
        if rate is None:
            raise LntuneError(f"study {study_name!r}, run {plan.name!r}: every learning rate searched "
                              f"({', '.join(f'{r:g}' for r, _ in search)}) diverged (validation loss not finite); "
                              "search lower rates")
        at_edge = rate_beyond(search, rate) is not None
        _say(f"[{study_name}] {plan.name}: learning rate {rate:g} chosen on the validation split"
             + (" -- the edge of the rates searched: a better rate may lie beyond (widen the grid, or raise "
                "lr_extend)" if at_edge else ""))
    runs, evaluations = [], []
    for seed in config.seeds:
        _say(f"[{study_name}] {plan.name}: stage 2 with {plan.config.method.name}, lr {rate:g}, seed {seed}")
        run = _train(_with(plan.config, out, rate if search else plan.config.train.lr, seed))
        folder = _eval_folder(run, out, config)
        evaluate(stage1_model, run / "adapter", paths, folder, config.budget, config.benches)
        runs.append(run)
        evaluations.append(folder)
    return TrainedRun(rate, search, runs, evaluations, at_edge)


def _evaluations(folder: Path, benches) -> dict:
    return {bench: json.loads((folder / bench / "metrics.json").read_text()) for bench in benches}


def _mean_std(scores: list[dict]) -> dict:
    """Column -> the value (one seed), or (mean, sample standard deviation) over the seeds."""
    cells = {}
    for column in scores[0]:
        values = [score[column] for score in scores if score[column] is not None]
        if len(values) != len(scores):
            cells[column] = None
        elif len(values) == 1:
            cells[column] = values[0]
        else:
            cells[column] = (statistics.mean(values), statistics.stdev(values))
    return cells


def _comparisons(trained: dict[str, TrainedRun], baseline: str, config: CompareConfig) -> dict:
    """Run -> benchmark column -> Comparison against the baseline run (lntune.study.bootstrap)."""
    from lntune.study.bootstrap import paired_bootstrap
    from lntune.study.items import COLUMN, item_table

    def tables(run: TrainedRun, bench: str):
        return [item_table(bench, folder / bench) for folder in run.evaluations]

    base = {bench: tables(trained[baseline], bench) for bench in config.benches}
    return {name: {COLUMN[bench]: paired_bootstrap(tables(run, bench), base[bench], config.bootstrap.resamples,
                                                   config.bootstrap.seed)
                   for bench in config.benches}
            for name, run in trained.items() if name != baseline}


def _run_record(run: TrainedRun, comparisons: dict | None, out: Path) -> dict:
    """results.json's entry of a run: the rate, the search, the runs and evaluations, each seed's scores, the
    bootstrap."""
    return {
        "lr": run.rate, "lr_at_edge": run.at_edge,
        "lr_search": [{"lr": rate, "validation_loss": loss} for rate, loss in run.search],
        "runs": [str(path.relative_to(out)) for path in run.runs],
        "evaluations": [str(path.relative_to(out)) for path in run.evaluations],
        "scores": [score_cells(_evaluations(folder, [p.name for p in sorted(folder.iterdir()) if p.is_dir()]))
                   for folder in run.evaluations],
        "bootstrap": {column: {"difference": c.difference, "low": c.low, "high": c.high,
                               "within_noise": c.within_noise} for column, c in (comparisons or {}).items()},
    }


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
    """The run's RunConfig (first seed) from the study's run entry and the rates to search; its overrides are
    checked here, before anything trains."""
    where = f"{source}: study {study_name!r}, run {run.name!r}"
    overrides = [_substitute(item, paths) for item in run.overrides]
    set_keys = {item.split("=", 1)[0].strip() for item in overrides}
    if "train.seed" in set_keys:
        raise LntuneError(f"{where}: overrides set train.seed, which compare sets from `seeds`; list the seeds there")
    try:
        run_config = stage2_config(stage1_model, paths, out / "runs", config.budget, run.method, overrides,
                                   source="overrides")
    except LntuneError as error:
        raise LntuneError(f"{where}: {error}") from None
    if run_config.model != str(stage1_model) or run_config.out != str(out / "runs"):
        raise LntuneError(f"{where}: overrides set `model` or `out`, which compare sets for every run "
                          "(the stage-1 model; OUT/runs/METHOD-lrRATE-seedSEED-KEY)")
    search = ()
    if run.method in config.lr_search and "train.lr" not in set_keys:  # a rate the run sets is not searched
        search = search_grid(config.lr_search[run.method], _rate(run_config))
    return PlannedRun(run.name, _with(run_config, out, run_config.train.lr, config.seeds[0]), search)
