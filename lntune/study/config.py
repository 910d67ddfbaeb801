"""A compare config (the YAML file `lntune compare --config` reads) as frozen dataclasses, checked once on loading.

configs/demo-compare.yaml and configs/llama-2-7b-compare.yaml are the shipped examples. `load_compare_config` turns
a file into one `CompareConfig`; every mistake it finds (an unknown key, a wrong type, an unknown method or world,
two runs of a study writing to one folder) is an LntuneError naming the file, the study and run, and the key.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from lntune.config import config_from_dict, load_yaml
from lntune.demo.backbones_cache import BackboneBudget, backbone_settings
from lntune.demo.files import WorldSize
from lntune.demo.pipeline import BENCHES, DemoBudget
from lntune.errors import LntuneError, unknown_key_error
from lntune.study.search import grid_rate

WORLDS = ("tiny", "files")
SECTIONS = ("world_size", "backbones", "budget", "paths", "analysis", "validation", "bootstrap", "lr_search")
"""The mappings a compare config may leave empty (meaning their defaults)."""
DEFAULT_GRID_FACTORS = (1 / 3, 1.0, 3.0)
"""`lr_search: {METHOD: default}`: the rates searched are the run's own rate times these."""


@dataclass(frozen=True)
class StudyRun:
    """One stage-2 run of a study: a row of its table, a curve of its loss plot."""

    name: str
    """The run's label in the report; its folders are `folder`."""
    method: str
    """The tuning method (full, lora, attn-qv, attn-mlp, layernorm, layernorm-simple, connector)."""
    overrides: tuple[str, ...] = ()
    """Dotted run-config keys as `lntune train` takes them (data.types=[detail]); {name} is a path of the world /
    `paths`."""

    @property
    def folder(self) -> str:
        """The run's folder name under OUT/runs/STUDY/ and OUT/eval/STUDY/: the name, path-safe."""
        return self.name.replace(" ", "_").replace("+", "plus").replace("/", "_")


@dataclass(frozen=True)
class Study:
    """Runs that share one table, one loss plot and one analyses section of the report."""

    runs: tuple[StudyRun, ...]
    """The stage-2 runs, in table order."""
    title: str | None = None
    """The section's heading (default: the study's name)."""
    baselines: bool = False
    """Add the image-blind prior (VQAv2) and the stage-1-only model as rows."""
    analysis: bool = True
    """Add the analyses (layer similarity, gradient variance, norm drift) of the study's runs."""
    baseline: str | None = None
    """The run every other run is compared with by the paired bootstrap (default: `bootstrap.baseline`)."""


@dataclass(frozen=True)
class AnalysisSettings:
    """The `analysis:` block: settings of the analyses every study's section ends with."""

    data: str | None = "{instructions}"
    """Samples for layer similarity: a file, or {name} for a path of the world / `paths`; null skips similarity."""
    image_folder: str | None = "{train_images}"
    """The folder the samples' image paths start from ({name} as for `data`)."""
    n: int = 100
    """Similarity samples (a seeded draw)."""
    tokens: str = "all"
    """Similarity pooling: all | image | text."""
    window: int = 50
    """Gradient variance: sliding-window length in steps."""
    batch_size: int = 8
    """Similarity forward-pass batch size."""


@dataclass(frozen=True)
class ValidationSettings:
    """The `validation:` block: the held-out samples of the training distribution the learning rate is chosen on."""

    samples: int = 300
    """How many: the tiny world writes them from scenes of their own; for `world: files` (without a `validation`
    path) this many records of `instructions`, drawn with `seed`, are held out and the runs train on the rest."""
    fraction: float | None = None
    """`world: files`: hold out this fraction of `instructions` (rounded, at least one record) instead of `samples`."""
    seed: int = 0
    """The draw of the held-out records (`world: files`)."""
    batch_size: int = 16
    """Forward-pass batch size of the validation loss."""


@dataclass(frozen=True)
class BootstrapSettings:
    """The `bootstrap:` block: the paired bootstrap of each run against the study's baseline run."""

    baseline: str = "layernorm"
    """The run (by name) every other run of a study is compared with; a study may name its own (`baseline:`)."""
    resamples: int = 1000
    """Resamples of (seeds, evaluation items)."""
    seed: int = 0
    """The resamples' random draw: the same seed, the same intervals."""


@dataclass(frozen=True)
class CompareConfig:
    """Studies of stage-2 runs from one stage-1 model, on the same data, seed and budget."""

    studies: dict[str, Study]
    """Study name -> study; the name names its folders (OUT/runs/NAME, OUT/analysis/NAME) and loss plot."""
    world: str = "tiny"
    """tiny: the built-in tiny world supplies backbones, data and benchmarks; files: all of them come from `paths`
    (and `model`)."""
    world_size: WorldSize = field(default_factory=WorldSize)
    """The tiny world's scene counts."""
    backbones: BackboneBudget = field(default_factory=BackboneBudget)
    """The tiny world's backbone pretraining steps and LLM shape; `preset: deep` starts from a named setting."""
    seed: int = 0
    """The tiny world's seed and the similarity samples' draw (not the training seeds: `seeds`)."""
    seeds: tuple[int, ...] = (0,)
    """Training seeds (train.seed): every run is trained once per seed; tables give the mean and standard
    deviation over them."""
    lr_search: dict = field(default_factory=dict)
    """Method -> the learning rates to search (a list, or `default`: the run's rate x 1/3, 1, 3); `lr_search:
    default` searches every method. Each point is trained at the same budget with the first seed, the rate of the
    lowest validation loss is chosen and run with every seed."""
    lr_extend: int = 0
    """When the chosen rate is the highest or lowest searched, search up to this many more rates past it, one grid
    step each (the ratio of that edge's two outermost rates; x3 on the default grid). 0: the grid as given; the
    report marks a rate chosen at the grid's edge either way."""
    validation: ValidationSettings = field(default_factory=ValidationSettings)
    """The validation split the learning rate is chosen on."""
    bootstrap: BootstrapSettings = field(default_factory=BootstrapSettings)
    """The paired bootstrap against the baseline run."""
    gallery: int = 3
    """Held-out benchmark images per study shown with every run's answer and caption (0: no gallery)."""
    out: str = "compare-out"
    """Output folder (the command's --out wins): model/, runs/, eval/, analysis/, report.md."""
    budget: DemoBudget = field(default_factory=DemoBudget)
    """Steps and batch sizes of stage 1, stage 2 (every run the same) and evaluation."""
    model: str | None = None
    """A built MLLM (lntune build); default: built here from paths llm and vision."""
    stage1_model: str | None = None
    """A finished stage-1 model to start every run from; default: stage 1 is trained here on `captions`."""
    paths: dict[str, str] = field(default_factory=dict)
    """Name -> file or folder: the data and benchmark files (added to, or replacing, the tiny world's)."""
    benches: tuple[str, ...] = BENCHES
    """Benchmarks every run is evaluated on."""
    analysis: AnalysisSettings = field(default_factory=AnalysisSettings)
    """Settings of the analyses."""


def load_compare_config(path: str | Path) -> CompareConfig:
    """Read and check a compare YAML file."""
    # An empty section (`analysis:` with nothing under it) reads as None: it means the defaults.
    data = {key: value for key, value in load_yaml(path).items() if value is not None or key not in SECTIONS}
    studies = data.get("studies")
    if not studies:
        raise LntuneError(f"{path}: no studies; give `studies:`, a mapping of study name -> runs "
                          "(see configs/demo-compare.yaml)")
    if not isinstance(studies, dict):
        raise LntuneError(f"{path}: studies must be a mapping of study name -> study, got {studies!r}")
    parsed = {str(name): _study(body, f"{path}: study {name!r}") for name, body in studies.items()}
    if "backbones" in data:
        data["backbones"] = backbone_settings(data["backbones"], str(path))
    lr_search = _lr_search(data.get("lr_search"), parsed, f"{path}: lr_search")
    # config_from_dict keeps the mappings (studies, paths) as given: they are checked here, the rest there.
    config = config_from_dict(CompareConfig, {**data, "studies": parsed, "lr_search": lr_search}, str(path))
    if not config.seeds or len(set(config.seeds)) != len(config.seeds):
        raise LntuneError(f"{path}: seeds must be a non-empty list of different training seeds, got "
                          f"{list(config.seeds)}")
    for seed in config.seeds:
        if not 0 <= seed < 2**32:
            raise LntuneError(f"{path}: seeds: {seed} is not in [0, 2**32)")
    for key, value, lowest in (("validation.samples", config.validation.samples, 1),
                               ("validation.batch_size", config.validation.batch_size, 1),
                               ("bootstrap.resamples", config.bootstrap.resamples, 10),
                               ("lr_extend", config.lr_extend, 0)):
        if value < lowest:
            raise LntuneError(f"{path}: {key} must be >= {lowest}, got {value}")
    fraction = config.validation.fraction
    if fraction is not None and not 0 < fraction < 1:
        raise LntuneError(f"{path}: validation.fraction must be between 0 and 1 (a share of `instructions`), got "
                          f"{fraction}")
    if fraction is not None and config.world == "tiny":
        raise LntuneError(f"{path}: validation.fraction is for `world: files` (a share of your `instructions`); the "
                          "tiny world writes its validation split from scenes of its own: give validation.samples")
    if config.gallery < 0:
        raise LntuneError(f"{path}: gallery must be >= 0, got {config.gallery}")
    if config.world not in WORLDS:
        raise LntuneError(f"{path}: unknown world {config.world!r}; valid: {', '.join(WORLDS)}")
    if not isinstance(config.paths, dict):
        raise LntuneError(f"{path}: paths must be a mapping of name -> file or folder, got {config.paths!r}")
    for name, value in config.paths.items():
        if not isinstance(value, str) or not value:
            raise LntuneError(f"{path}: paths.{name} must be a file or folder, got {value!r}")
    for bench in config.benches:
        if bench not in BENCHES:
            raise LntuneError(f"{path}: benches: {unknown_key_error('benchmark', bench, BENCHES)}")
    return config


def _study(body, source: str) -> Study:
    from lntune.methods import METHODS

    study = config_from_dict(Study, body, source)
    folders = {}
    for run in study.runs:
        if run.method not in METHODS:
            raise LntuneError(f"{source}, run {run.name!r}: {unknown_key_error('method', run.method, METHODS)}")
        if run.folder in folders:
            raise LntuneError(f"{source}: runs {folders[run.folder]!r} and {run.name!r} would share the folder "
                              f"{run.folder!r}; give them names that differ in more than spaces, '+' and '/'")
        folders[run.folder] = run.name
    return study


def _lr_search(value, studies: dict[str, Study], source: str) -> dict[str, tuple[float, ...] | None]:
    """Method -> its rates (None: the default grid around the run's rate), every method and rate checked."""
    from lntune.methods import METHODS

    if value is None:
        return {}
    if value == "default":
        return {run.method: None for study in studies.values() for run in study.runs}
    if not isinstance(value, dict):
        raise LntuneError(f"{source} must be `default` or a mapping of method -> [rates] or `default`, got {value!r}")
    grids = {}
    for method, rates in value.items():
        if method not in METHODS:
            raise LntuneError(f"{source}: {unknown_key_error('method', method, METHODS)}")
        if rates == "default":
            grids[method] = None
            continue
        if not isinstance(rates, list) or not rates:
            raise LntuneError(f"{source}.{method} must be a non-empty list of rates or `default`, got {rates!r}")
        parsed = []
        for rate in rates:
            try:
                number = float(rate)  # PyYAML reads 1e-3 (no dot) as a string
            except (TypeError, ValueError):
                number = float("nan")
            if not number > 0 or number == float("inf") or isinstance(rate, bool):
                raise LntuneError(f"{source}.{method}: {rate!r} is not a learning rate (a number > 0)")
            parsed.append(number)
        if len(set(parsed)) != len(parsed):
            raise LntuneError(f"{source}.{method}: a rate is given twice in {rates}")
        grids[method] = tuple(parsed)
    return grids


def search_grid(grid: tuple[float, ...] | None, rate: float) -> tuple[float, ...]:
    """The rates searched: the given grid, or the run's own rate times DEFAULT_GRID_FACTORS."""
    return grid if grid is not None else tuple(grid_rate(rate * factor) for factor in DEFAULT_GRID_FACTORS)
