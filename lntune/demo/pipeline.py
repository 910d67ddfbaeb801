"""The paper's pipeline on the tiny world, as functions the demo and `lntune compare` share:
build -> stage 1 (connector on captions) -> stage 2 (a method on instruction data) -> five benchmarks.

Every step is the public one (build_mllm, train, evaluate_benchmark), run on files, so what the demo
shows is what a real run does.
"""

from __future__ import annotations

import json
import statistics
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import yaml

from lntune.config import BuildConfig, DataConfig, DataSource, MethodConfig, RunConfig, TrainConfig, apply_overrides
from lntune.config import config_from_dict, config_to_dict

# Benchmark -> the path name of its images folder (None: MME's files hold their images); the benchmark's own file
# is the path of its name.
BENCH_IMAGES = {"mme": None, "vqav2": "vqav2_images", "coco": "coco_images", "flickr30k": "flickr30k_images",
                "pope": "pope_images"}
BENCHES = tuple(BENCH_IMAGES)


@dataclass(frozen=True)
class DemoBudget:
    stage1_steps: int = 600
    stage2_steps: int = 600
    batch_size: int = 16
    eval_batch_size: int = 32
    eval_limit: int | None = None


def quiet(message: str) -> None:
    pass


def build_model(paths: dict, out: Path) -> Path:
    from lntune.model.build import build_mllm

    if (out / "config.json").is_file():
        return out
    return build_mllm(BuildConfig(llm=str(paths["llm"]), vision=str(paths["vision"]), out=str(out),
                                  connector="linear", overwrite=True), say=quiet)


def run_stage(model: Path, out: Path, data: DataConfig, method: MethodConfig, train: TrainConfig) -> Path:
    """Train unless `out` already holds a finished run (then reuse it)."""
    from lntune.train.trainer import train as run

    if (out / "summary.json").is_file():
        return out
    if out.exists():
        import shutil

        shutil.rmtree(out)  # an unfinished run from an interrupted demo: start it again
    return run(RunConfig(model=str(model), out=str(out), method=method, data=data, train=train), say=quiet)


def stage1(model: Path, paths: dict, out: Path, budget: DemoBudget) -> Path:
    config = stage1_config(model, paths, out, budget)
    return run_stage(model, out, config.data, config.method, config.train)


def stage1_config(model: Path, paths: dict, out: Path, budget: DemoBudget) -> RunConfig:
    """Stage 1: the connector on the captions."""
    data = DataConfig(sources=(DataSource(str(paths["captions"])),), image_folder=str(paths["train_images"]))
    train = TrainConfig(stage="pretrain", max_steps=budget.stage1_steps, batch_size=budget.batch_size, lr=3e-3,
                        save_every=0, log_every=5)
    return RunConfig(model=str(model), out=str(out), method=MethodConfig(name="connector"), data=data, train=train)


def stage2(model: Path, paths: dict, out: Path, budget: DemoBudget, method: str = "layernorm",
           overrides: list[str] | None = None) -> Path:
    """Stage 2 on the instruction data; `overrides` are dotted RunConfig keys (e.g. data.types=[detail])."""
    config = stage2_config(model, paths, out, budget, method, overrides)
    return run_stage(model, out, config.data, config.method, config.train)


def stage2_config(model: Path, paths: dict, out: Path, budget: DemoBudget, method: str = "layernorm",
                  overrides: list[str] | None = None, source: str = "demo") -> RunConfig:
    """The RunConfig of a stage-2 run (checked: unknown keys, types, values), before anything trains."""
    base = RunConfig(
        model=str(model), out=str(out), method=MethodConfig(name=method),
        data=DataConfig(sources=(DataSource(str(paths["instructions"])),), image_folder=str(paths["train_images"])),
        train=TrainConfig(max_steps=budget.stage2_steps, batch_size=budget.batch_size, save_every=0, log_every=5,
                          lr=DEMO_LEARNING_RATES.get(method)),
    )
    return config_from_dict(RunConfig, apply_overrides(config_to_dict(base), overrides or []), source)


# Learning rates for the tiny world (hidden 128): larger than the 7B defaults, found by a short sweep on this world.
DEMO_LEARNING_RATES = {"full": 3e-4, "lora": 2e-3, "attn-qv": 1e-3, "attn-mlp": 5e-4, "layernorm": 1e-2,
                       "layernorm-simple": 1e-2, "connector": 3e-3}


def bench_files(paths: dict, bench: str) -> tuple[Path, Path | None]:
    images = BENCH_IMAGES[bench]
    return Path(paths[bench]), paths[images] if images else None


def evaluate(model: Path, adapter: Path | None, paths: dict, out: Path, budget: DemoBudget,
             benches=BENCHES, quantize: str | None = None) -> dict[str, dict]:
    """quantize (4bit / 8bit): on the base loaded quantized, as `lntune eval --quantize` does."""
    from lntune.eval.runner import evaluate_benchmark, load_generator

    results = {}
    generator = None
    for bench in benches:
        metrics_file = out / bench / "metrics.json"
        if metrics_file.is_file():
            results[bench] = json.loads(metrics_file.read_text())
            continue
        generator = generator or load_generator(str(model), str(adapter) if adapter else None, quantize=quantize,
                                                say=quiet)
        data, images = bench_files(paths, bench)
        results[bench] = evaluate_benchmark(generator, bench, data, images, out / bench, limit=budget.eval_limit,
                                            batch_size=budget.eval_batch_size, say=quiet)
    return results


def image_blind_prior(paths: dict) -> dict:
    """VQAv2 accuracy of the best answer that ignores the image: the most common training answer per question type."""
    from lntune.eval.benchmarks import get_benchmark
    from lntune.prompt import IMAGE_TOKEN

    answers: dict[str, Counter] = {}
    for record in json.loads(Path(paths["instructions"]).read_text()):
        turns = record["conversations"]
        for question, answer in zip(turns[::2], turns[1::2]):
            text = question["value"].replace(IMAGE_TOKEN + "\n", "").split("\n")[0]
            answers.setdefault(" ".join(text.lower().split()[:3]), Counter())[answer["value"]] += 1
    benchmark = get_benchmark("vqav2")
    data, images = bench_files(paths, "vqav2")
    items = benchmark.load(data, images, None)
    overall = Counter(a for counter in answers.values() for a in counter.elements())
    predictions = {}
    for item in items:
        question_type = item.reference["annotation"]["question_type"]
        counter = answers.get(question_type) or overall
        predictions[item.id] = counter.most_common(1)[0][0]
    return {"vqav2": {"metrics": benchmark.score(items, predictions, benchmark.default_mode)}}


def run_summary(run: Path) -> dict:
    """Trainable parameters, peak memory and median step time of a training run, from its files."""
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    config = yaml.safe_load((run / "config.yaml").read_text())
    from lntune.methods import apply_method
    from lntune.model.load import load_llava_config, meta_model
    from lntune.params import count_parameters

    method = config_from_dict(MethodConfig, config["method"], str(run))
    report = count_parameters(apply_method(meta_model(load_llava_config(config["model"])), method))
    return {"trainable": report.trainable, "trainable_percent": report.trainable_percent,
            "peak_memory_mb": max(m["memory_mb"] for m in metrics),
            "step_seconds": statistics.median(m["step_seconds"] for m in metrics),
            "losses": [(m["step"], m["loss"]) for m in metrics]}


def score_cells(results: dict) -> dict[str, float | None]:
    from lntune.eval.report import metric_value

    def get(bench, *keys, scale=1.0):
        value = metric_value(results, bench, *keys)
        return None if value is None else scale * value

    return {"MME-P": get("mme", "perception"), "VQAv2": get("vqav2", "accuracy"),
            "COCO CIDEr": get("coco", "CIDEr_x100"), "Flickr30k CIDEr": get("flickr30k", "CIDEr_x100"),
            "POPE F1": get("pope", "f1", scale=100)}
