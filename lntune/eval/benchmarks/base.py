"""What every benchmark is: a Benchmark, from its official files to its official numbers, in one module each.

`lntune eval` (runner.py), `lntune score` (score.py) and `lntune data show` use a benchmark only through what
Benchmark declares here; a new benchmark is one module with one subclass, added to BENCHMARKS.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

from lntune.eval.metrics.modes import check_mode

SHORT_ANSWER = "\nAnswer the question using a single word or phrase."
"""LLaVA-1.5's short-answer instruction: the default question prompts end with it, as its question files do."""


@dataclass
class EvalItem:
    id: str
    """Unique within the benchmark; predictions.jsonl is keyed by it."""
    image: Path | None
    prompt: str
    """The user turn's text (without the image placeholder)."""
    reference: dict = field(default_factory=dict)
    """What scoring needs: ground truth and grouping fields (JSON-serialisable)."""


class Benchmark(ABC):
    """One benchmark: its items (loaded from the official files), their scoring, and the scoring of result files
    made by other tools. Subclasses set the class attributes and implement load, score and score_files."""

    name: ClassVar[str]
    """The BENCHMARKS key (`--bench`)."""
    default_prompt: ClassVar[str]
    """The user turn when --prompt is not given; {question} marks where the question goes."""
    max_new_tokens: ClassVar[int]
    modes: ClassVar[tuple[str, ...]]
    """The scoring modes (--mode) its metric knows."""
    default_mode: ClassVar[str]
    asks_questions: ClassVar[bool] = True
    """Whether its items are questions: a --prompt must then hold {question} (captioning asks none)."""
    scoring_files: ClassVar[tuple[str, ...]]
    """The `lntune score` options naming another tool's result files: score_files' keyword arguments."""

    def __init__(self, annotations: Path | None = None):
        """annotations (`lntune eval --annotations`): the answers to a questions file that holds none (VQAv2's
        LLaVA question files); benchmarks whose files hold their answers do not read it."""
        self.annotations = Path(annotations) if annotations else None

    @abstractmethod
    def load(self, data: Path, images: Path | None, prompt: str | None) -> list[EvalItem]:
        """The items of the official files at `data`, images found under `images`, each prompt made from the
        template `prompt` (None: default_prompt). Every problem with the files is raised here, before any answer
        is generated."""

    def group_of(self, item: EvalItem) -> str:
        """What a subset (--limit) keeps together: it takes whole groups. By default each item is its own group."""
        return item.id

    @abstractmethod
    def score(self, items: list[EvalItem], predictions: dict[str, str], mode: str) -> dict:
        """The official metrics of the answered items (predictions: item id -> answer); the others are left out."""

    @abstractmethod
    def score_files(self, mode: str, **files: Path) -> dict:
        """`lntune score`: the official metrics of result files made by another tool (or an earlier run), no
        model; `files` are the options named in scoring_files. Every input is read, never written, and checked
        before scoring."""

    def official_results(self, items: list[EvalItem], predictions: dict[str, str]) -> list[dict] | None:
        """The answers as the benchmark's own tools or evaluation server read them (`lntune eval` writes them to
        results.json), or None when there is no such format."""
        return None

    def check_mode(self, mode: str) -> str:
        """mode if its metric knows it, else the house error listing the valid ones."""
        return check_mode(mode, self.modes, f"{self.name} mode")


def without_short_answer(question: str) -> str:
    """The question without a trailing short-answer instruction (LLaVA's question files end with it)."""
    stripped = question.rstrip()
    return stripped[: -len(SHORT_ANSWER)] if stripped.endswith(SHORT_ANSWER) else question


def fill_prompt(template: str, question: str) -> str:
    """template with the question in it, the short-answer instruction appearing once.

    The default templates append SHORT_ANSWER after {question}; LLaVA's question files (llava_pope_test.jsonl,
    llava_mme.jsonl, llava_vqav2_mscoco_test-dev2015.jsonl) already end each question with it, so such a
    question loses its own copy and keeps the template's. A template without SHORT_ANSWER right after
    {question} gets the question exactly as the file has it.
    """
    if "{question}" + SHORT_ANSWER in template:
        question = without_short_answer(question)
    return template.format(question=question)
