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

WORLDS = ("tiny", "files")
SECTIONS = ("world_size", "backbones", "budget", "paths", "analysis")  # the mappings a compare config may leave empty


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
    """The tiny world's seed and the similarity samples' draw."""
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
    # config_from_dict keeps the mappings (studies, paths) as given: they are checked here, the rest there.
    config = config_from_dict(CompareConfig, {**data, "studies": parsed}, str(path))
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
