"""`lntune eval`: answer a benchmark's items with a model, writing predictions as they come, then score.

predictions.jsonl gets one line per item as soon as its batch is answered (flushed), so an
interrupted evaluation loses at most one batch and a rerun continues with the items not yet answered.
Each line carries the item's reference, so `lntune score BENCH --predictions FILE` can rescore it
(another mode, say) with no model and no benchmark files.

Images take the training path (lntune.data.images): confined to the benchmark's image folder, pixel-guarded,
converted to RGB the same way, and given the aspect ratio the model was trained with (see
evaluation_aspect_ratio), so that the model sees the pixels it was trained on.
"""

from __future__ import annotations

import json
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from lntune.data.images import (
    DEFAULT_MAX_PIXELS, EVALUATION_ASPECT_RATIO, apply_aspect_ratio, confine, open_image, recorded_aspect_ratio,
)
from lntune.errors import LntuneError
from lntune.eval.benchmarks import get_benchmark
from lntune.prompt import recorded_prompt

PREDICTIONS = "predictions.jsonl"
METRICS = "metrics.json"


def read_predictions(path: Path) -> list[dict]:
    """Lines of a predictions file; a torn last line (killed mid-write) is dropped and rewritten."""
    from lntune.files import read_text, write_text_atomic

    if not path.is_file():
        return []
    text = read_text(path, "delete it to answer every item again")
    lines = text.splitlines()  # json.dumps escapes U+2028 and friends, so no record holds a line break
    records = []
    for number, line in enumerate(lines, start=1):
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            if number != len(lines):
                raise LntuneError(f"{path}:{number}: invalid JSON in the middle of the file; delete the file to restart")
    if text and not text.endswith("\n") or len(records) != len(lines):
        # Killed mid-write: keep the complete records, newline-terminated, before anything is appended.
        write_text_atomic(path, "".join(json.dumps(r) + "\n" for r in records))
    for number, record in enumerate(records, start=1):
        if not isinstance(record, dict) or not {"id", "prediction", "reference"} <= set(record):
            raise LntuneError(f"{path}:{number}: not an lntune predictions file (needs id, prediction, reference)")
    return records


def _check_settings(out: Path, settings: dict) -> None:
    """Answers in `out` may only be reused by a run with the same model, prompt and decoding."""
    path = out / "settings.json"
    if path.is_file() and (out / PREDICTIONS).is_file():
        previous = json.loads(path.read_text())
        differing = sorted(key for key in set(previous) | set(settings) if previous.get(key) != settings.get(key))
        if differing:
            raise LntuneError(
                f"{out} holds answers made with other settings ({', '.join(differing)}); "
                "choose another --out, or delete it to start over"
            )
    path.write_text(json.dumps(settings, indent=2) + "\n")


def select_subset(items, limit: int | None, group_of=None):
    """A deterministic subset of whole groups (MME keeps both questions of an image), in the original order.

    Groups are drawn in a fixed random order (seed 0) until at least `limit` items are taken. Linear in the
    number of items: each item's group is looked up once.
    """
    if not limit or limit >= len(items):
        return items
    group_of = group_of or (lambda item: item.id)
    keys = [group_of(item) for item in items]
    sizes: dict = {}
    for key in keys:  # insertion order: the groups in order of first appearance
        sizes[key] = sizes.get(key, 0) + 1
    chosen, count = set(), 0
    for group in random.Random(0).sample(list(sizes), len(sizes)):
        if count >= limit:
            break
        chosen.add(group)
        count += sizes[group]
    return [item for item, key in zip(items, keys) if key in chosen]


"""For a model that records none (a built model, another tool's checkpoint): LLaVA-1.5's evaluation setting."""


def evaluation_aspect_ratio(model_dir, adapter=None, override: str | None = None) -> tuple[str, str]:
    """(pad or crop, where it came from): --image-aspect-ratio, else the adapter's manifest, else the model's
    config.json (`image_aspect_ratio`, written when a trained model is merged), else LLaVA-1.5's `pad`."""
    import json as json_module

    from lntune.adapter import MANIFEST, read_manifest

    if override is not None:
        return recorded_aspect_ratio(override, "--image-aspect-ratio"), "--image-aspect-ratio"
    if adapter:
        where = str(Path(adapter) / MANIFEST)
        value = recorded_aspect_ratio(read_manifest(adapter).get("image_aspect_ratio"), where)
        if value is not None:
            return value, where
    config_path = Path(model_dir).expanduser() / "config.json"
    if config_path.is_file():
        value = recorded_aspect_ratio(json_module.loads(config_path.read_text()).get("image_aspect_ratio"),
                                      str(config_path))
        if value is not None:
            return value, str(config_path)
    return EVALUATION_ASPECT_RATIO, "default (nothing recorded; LLaVA-1.5 evaluates with pad)"


def evaluation_prompt(model_dir, adapter=None, template: str = "auto", system: str | None = None) -> tuple[str, str | None]:
    """(template, system) for evaluation: what the caller names wins; for `auto` / no system, what finetuning recorded
    (the adapter's manifest, else a merged model's config.json `lntune_prompt`), so a model trained with --template
    llama_2 --system X is asked its questions the same way without repeating the flags."""
    from lntune.adapter import read_manifest
    from lntune.files import read_json_object

    recorded = None
    if adapter:
        recorded = read_manifest(adapter).get("prompt")
    if recorded is None:
        config_path = Path(model_dir).expanduser() / "config.json"
        if config_path.is_file():
            recorded = read_json_object(config_path, "rebuild or re-copy the model").get("lntune_prompt")
    recorded_template, recorded_system = recorded_prompt(recorded)
    return (recorded_template if template == "auto" else template), (recorded_system if system is None else system)


def _image_folders(data: Path, images: Path | None) -> list[Path]:
    """Where a benchmark's images may lie: the --images folder and the benchmark's own folder (MME's release
    folder holds its images beside the questions)."""
    data = Path(data)
    return [folder for folder in (images, data if data.is_dir() else data.parent) if folder is not None]


@dataclass
class BenchmarkRun:
    """One model (or adapter) on one benchmark: its items, its output folder and the answers already there."""

    generator: object
    """An AnswerGenerator: its prompts, processor and image aspect ratio are this run's."""
    bench: str
    benchmark: object
    items: list
    mode: str
    prompt: str | None
    limit: int | None
    batch_size: int
    max_new_tokens: int
    aspect_ratio: str
    aspect_ratio_source: str | None
    max_image_pixels: int
    out: Path
    extra_record: dict
    done: dict
    """item id -> answer (from an earlier, interrupted run, then this one's)."""
    todo: list

    @property
    def predictions_path(self) -> Path:
        return self.out / PREDICTIONS


def prepare_benchmark(generator, bench: str, data: Path, images: Path | None, out: Path, *, limit=None,
                      batch_size=8, prompt=None, max_new_tokens=None, mode=None, annotations=None, extra_record=None,
                      say=None, image_aspect_ratio=None, max_image_pixels=DEFAULT_MAX_PIXELS) -> BenchmarkRun:
    """Everything before the first answer: the arguments, the items, every image path, the settings of answers
    already in `out` (reused only when they match) and the items still to answer."""
    say = say or (lambda message: print(message, file=sys.stderr, flush=True))
    if batch_size < 1:
        raise LntuneError(f"--batch-size must be >= 1, got {batch_size}")
    if limit is not None and limit < 1:
        raise LntuneError(f"--limit must be >= 1, got {limit}")
    if max_new_tokens is not None and max_new_tokens < 1:
        raise LntuneError(f"--max-new-tokens must be >= 1, got {max_new_tokens}")
    benchmark = get_benchmark(bench, annotations=annotations)
    if prompt is not None and benchmark.asks_questions and "{question}" not in prompt:
        raise LntuneError(f"--prompt for {bench} must contain {{question}} (where the question goes)")
    mode = benchmark.check_mode(mode or benchmark.default_mode)
    items = select_subset(benchmark.load(Path(data), Path(images) if images else None, prompt), limit,
                          benchmark.group_of)
    max_new_tokens = max_new_tokens or benchmark.max_new_tokens
    aspect_ratio, aspect_ratio_source = (
        (image_aspect_ratio, "argument") if image_aspect_ratio is not None
        else (getattr(generator, "image_aspect_ratio", None), getattr(generator, "image_aspect_ratio_source", None)))
    if aspect_ratio is None:
        aspect_ratio, aspect_ratio_source = EVALUATION_ASPECT_RATIO, "default"
    aspect_ratio = recorded_aspect_ratio(aspect_ratio, "the image aspect ratio")
    # Every image path is checked before anything is answered: an escaping path stops the run, naming the item.
    folders = _image_folders(data, images)
    for item in items:
        if item.image is not None:
            confine(item.image, folders, f"{bench} item {item.id}")
    # Which base answered (None: full precision; else lntune.model.quantize.describe): in settings.json, so that
    # answers from another base are never continued, and in metrics.json, so that scores are never mixed up.
    base_quantization = getattr(generator, "base_quantization", None)
    out.mkdir(parents=True, exist_ok=True)
    _check_settings(out, {"benchmark": bench, "base_quantization": base_quantization,
                          "data": str(Path(data).resolve()), "limit": limit,
                          "prompt": prompt or benchmark.default_prompt, **generator.prompts.settings(),
                          "max_new_tokens": max_new_tokens, "image_aspect_ratio": aspect_ratio,
                          **(extra_record or {})})
    predictions_path = out / PREDICTIONS
    done = {record["id"]: record["prediction"] for record in read_predictions(predictions_path)}
    todo = [item for item in items if item.id not in done]
    if done:
        say(f"{bench}: {len(done)} answers found in {predictions_path}, {len(todo)} to go")
    return BenchmarkRun(generator, bench, benchmark, items, mode, prompt, limit, batch_size, max_new_tokens,
                        aspect_ratio, aspect_ratio_source, max_image_pixels, out, dict(extra_record or {}), done, todo)


def answer_runs(runs: list[BenchmarkRun], batch_size: int, answer) -> float:
    """Answer every run's items still to do, `batch_size` questions per generation call, in item order with the
    runs of one item side by side (so one batch holds several runs' questions when there are several). Each answer
    is appended to its run's predictions.jsonl once its batch is answered. `answer(runs, questions, pictures)` ->
    one answer per question. Returns the seconds spent."""
    from tqdm.auto import tqdm

    queue = [(run, item) for item, runs_of_item in _by_item(runs) for run in runs_of_item]
    total = sum(len(run.items) for run in runs)
    handles = {}
    started = time.perf_counter()
    try:
        for run in runs:
            handles[id(run)] = run.predictions_path.open("a", encoding="utf-8")
        with tqdm(total=total, initial=total - len(queue), desc=runs[0].bench, unit="item",
                  dynamic_ncols=True) as bar:
            for start in range(0, len(queue), batch_size):
                batch = queue[start : start + batch_size]
                # Loaded (pixel guard, RGB) and given the aspect ratio before anything of the batch is written: a bad
                # image stops the run naming its item, with the earlier answers on disk untouched.
                pictures = [_picture(run.generator, item, run.bench, run.aspect_ratio, run.max_image_pixels)
                            for run, item in batch]
                answers = answer([run for run, _ in batch], [item.prompt for _, item in batch], pictures)
                for (run, item), prediction in zip(batch, answers):
                    run.done[item.id] = prediction
                    handles[id(run)].write(json.dumps({"id": item.id, "prompt": item.prompt, "prediction": prediction,
                                                       "reference": item.reference}) + "\n")
                for run in {id(run): run for run, _ in batch}.values():
                    handles[id(run)].flush()
                bar.update(len(batch))
    finally:
        for handle in handles.values():
            handle.close()
    return time.perf_counter() - started


def _by_item(runs: list[BenchmarkRun]):
    """(item, the runs that still need it), in the benchmark's item order (the runs share one benchmark)."""
    todo = [{item.id for item in run.todo} for run in runs]
    by_item = [(item, [run for run, ids in zip(runs, todo) if item.id in ids]) for item in runs[0].items]
    return [(item, needing) for item, needing in by_item if needing]


def finish_benchmark(run: BenchmarkRun, seconds: float, answered: int, extra: dict | None = None) -> dict:
    """Score the run's answers and write metrics.json (and the benchmark's official results file)."""
    metrics = run.benchmark.score(run.items, run.done, run.mode)
    record = {
        "benchmark": run.bench, "mode": run.mode, "items": len(run.items), "limit": run.limit,
        "prompt": run.prompt or run.benchmark.default_prompt, **run.generator.prompts.settings(),
        "decoding": {"strategy": "greedy", "max_new_tokens": run.max_new_tokens, "batch_size": run.batch_size},
        "image_aspect_ratio": run.aspect_ratio, "image_aspect_ratio_source": run.aspect_ratio_source,
        "base_quantization": getattr(run.generator, "base_quantization", None),
        "generation_seconds": seconds, "items_per_second": answered / seconds if answered and seconds else None,
        **run.extra_record, **(extra or {}), "metrics": metrics,
    }
    (run.out / METRICS).write_text(json.dumps(record, indent=2) + "\n")
    official_results = run.benchmark.official_results(run.items, run.done)
    if official_results is not None:
        (run.out / "results.json").write_text(json.dumps(official_results) + "\n")
    return record


def evaluate_benchmark(generator, bench: str, data: Path, images: Path | None, out: Path, *, limit=None,
                       batch_size=8, prompt=None, max_new_tokens=None, mode=None, annotations=None,
                       extra_record=None, say=None, image_aspect_ratio=None,
                       max_image_pixels=DEFAULT_MAX_PIXELS) -> dict:
    """`image_aspect_ratio` (pad / crop): default the generator's (load_generator learns it from the model)."""
    run = prepare_benchmark(generator, bench, data, images, out, limit=limit, batch_size=batch_size, prompt=prompt,
                            max_new_tokens=max_new_tokens, mode=mode, annotations=annotations,
                            extra_record=extra_record, say=say, image_aspect_ratio=image_aspect_ratio,
                            max_image_pixels=max_image_pixels)
    answered = len(run.todo)
    seconds = answer_runs([run], batch_size, lambda runs, questions, pictures: generator.answer(
        questions, pictures, run.max_new_tokens))
    return finish_benchmark(run, seconds, answered)


def evaluate_benchmark_mixed(mixed, bench: str, data: Path, images: Path | None, outs: dict[str, Path], *,
                             limit=None, batch_size=8, prompt=None, max_new_tokens=None, mode=None, annotations=None,
                             extra_records: dict[str, dict] | None = None, say=None, image_aspect_ratio=None,
                             max_image_pixels=DEFAULT_MAX_PIXELS) -> dict[str, dict]:
    """Several adapters (a MixedAnswerer, lntune.eval.mixed) on one benchmark in one pass: each batch holds
    `batch_size` questions of several adapters, decoded together through the serving banks; adapter NAME's
    predictions, metrics and settings go to outs[NAME] exactly as evaluate_benchmark writes them for it alone."""
    runs = {name: prepare_benchmark(
        mixed.generators[name], bench, data, images, out, limit=limit, batch_size=batch_size, prompt=prompt,
        max_new_tokens=max_new_tokens, mode=mode, annotations=annotations,
        extra_record=(extra_records or {}).get(name), say=say, image_aspect_ratio=image_aspect_ratio,
        max_image_pixels=max_image_pixels) for name, out in outs.items()}
    names = {id(run): name for name, run in runs.items()}
    answered = {name: len(run.todo) for name, run in runs.items()}
    max_new = next(iter(runs.values())).max_new_tokens  # one benchmark, one budget for every adapter
    seconds = answer_runs(list(runs.values()), batch_size, lambda batch, questions, pictures: mixed.answer(
        [names[id(run)] for run in batch], questions, pictures, max_new))
    # generation_seconds is the shared pass's; items_per_second counts every adapter's answers of that pass.
    together = sum(answered.values())
    return {name: finish_benchmark(run, seconds, together, {"evaluated_with": sorted(runs)})
            for name, run in runs.items()}


def _picture(generator, item, bench: str, aspect_ratio: str, max_pixels: int):
    """An item's image as the generator's processor should get it (None for a text-only item): the training
    loader's checks and RGB conversion, then the aspect-ratio step (pad, then the processor's own resize, is
    LLaVA's pad path)."""
    if item.image is None:
        return None
    image = open_image(item.image, f"{bench} item {item.id}", max_pixels)
    return apply_aspect_ratio(generator.processor, image, aspect_ratio)


@dataclass(frozen=True)
class GeneratorSettings:
    """How a model (or adapter) is asked: its template and system prompt, and what its images get."""

    template: str
    system: str | None
    image_aspect_ratio: str
    image_aspect_ratio_source: str


def generator_settings(model_dir, adapter=None, template: str = "auto", system: str | None = None,
                       image_aspect_ratio: str | None = None) -> GeneratorSettings:
    """evaluation_prompt and evaluation_aspect_ratio of a model (plus adapter); read before any weight, so a model or
    adapter recording an aspect ratio lntune lacks is refused at once."""
    aspect_ratio, source = evaluation_aspect_ratio(model_dir, adapter, image_aspect_ratio)
    template, system = evaluation_prompt(model_dir, adapter, template, system)
    return GeneratorSettings(template, system, aspect_ratio, source)


def make_generator(model, processor, settings: GeneratorSettings):
    """An AnswerGenerator asking `model` as `settings` say (several may share one model: lntune.eval.mixed)."""
    from lntune.eval.generate import AnswerGenerator

    generator = AnswerGenerator(model, processor, settings.template, settings.system)
    generator.image_aspect_ratio = settings.image_aspect_ratio
    generator.image_aspect_ratio_source = settings.image_aspect_ratio_source
    return generator


def load_generator(model_dir: str, adapter: str | None = None, template: str = "auto", dtype: str = "auto",
                   image_aspect_ratio: str | None = None, system: str | None = None, quantize: str | None = None,
                   quantize_vision: bool = False, say=None):
    """The model (plus adapter) ready to answer; `generator.image_aspect_ratio` is what its images get (see
    evaluation_aspect_ratio; `image_aspect_ratio` overrides), `generator.image_aspect_ratio_source` says why.

    quantize (4bit / 8bit; quantize_vision): the base loaded quantized as `lntune train --quantize` loads it. Without
    it the base is full precision, also for an adapter trained on a quantized base (what merging it gives); `say`
    (default stderr) then gets one line saying so. `generator.base_quantization` records which base answered."""
    import torch

    from lntune.adapter import load_with_adapter, read_manifest
    from lntune.model.load import load_processor
    from lntune.model.quantize import check_request, evaluation_note, quantization_of

    say = say or (lambda message: print(message, file=sys.stderr, flush=True))
    check_request(quantize, quantize_vision)
    settings = generator_settings(model_dir, adapter, template, system, image_aspect_ratio)  # before the weights
    note = evaluation_note(adapter, read_manifest(adapter), quantize) if adapter else None
    if note:
        say(note)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = load_with_adapter(model_dir, adapter or None, dtype=dtype, quantize=quantize,
                              quantize_vision=quantize_vision)
    if quantize is None:
        model = model.to(device)  # a quantized load is already where it computes (load_model)
    generator = make_generator(model, load_processor(model_dir), settings)
    generator.base_quantization = quantization_of(model)
    return generator
