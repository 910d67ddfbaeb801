"""`lntune eval`: one model (plus adapter), loaded once, over several benchmarks; one report table across them."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from lntune.data.images import DEFAULT_MAX_PIXELS


@dataclass(frozen=True)
class BenchmarkFiles:
    """One benchmark to evaluate and where its official files are."""

    bench: str
    """A name in lntune.eval.benchmarks (mme, vqav2, coco, flickr30k, pope)."""
    data: Path
    """The benchmark's questions / items file (or MME's release folder)."""
    images: str | None = None
    """Its image folder; None: the benchmark finds its images beside `data` where it can."""


def evaluate_suite(model: str, adapter: str | None, benchmarks: list[BenchmarkFiles], out: Path, *,
                   template: str = "auto", system: str | None = None, image_aspect_ratio: str | None = None,
                   limit: int | None = None, batch_size: int = 8, prompt: str | None = None,
                   max_new_tokens: int | None = None, mode: str | None = None, annotations: str | None = None,
                   max_image_pixels: int = DEFAULT_MAX_PIXELS, quantize: str | None = None,
                   quantize_vision: bool = False) -> str:
    """Evaluate each benchmark into out/<bench>/; returns the report table, also written to out/report.md.
    quantize / quantize_vision: the base loaded quantized as training loads it (see load_generator)."""
    from lntune.eval.report import report
    from lntune.eval.runner import evaluate_benchmark, load_generator

    generator = load_generator(model, adapter, template, system=system, image_aspect_ratio=image_aspect_ratio,
                               quantize=quantize, quantize_vision=quantize_vision)
    out = Path(out)
    for benchmark in benchmarks:
        evaluate_benchmark(
            generator, benchmark.bench, Path(benchmark.data), benchmark.images, out / benchmark.bench, limit=limit,
            batch_size=batch_size, prompt=prompt, max_new_tokens=max_new_tokens, mode=mode, annotations=annotations,
            extra_record={"model": str(model), "adapter": adapter},
            max_image_pixels=max_image_pixels,
        )
    table = report([out])
    (out / "report.md").write_text(table)
    return table


def evaluate_suite_mixed(model: str, adapters: dict[str, str], benchmarks: list[BenchmarkFiles], out: Path, *,
                         template: str = "auto", system: str | None = None, image_aspect_ratio: str | None = None,
                         limit: int | None = None, batch_size: int = 8, prompt: str | None = None,
                         max_new_tokens: int | None = None, mode: str | None = None, annotations: str | None = None,
                         max_image_pixels: int = DEFAULT_MAX_PIXELS) -> str:
    """Several adapters (name -> adapter folder) in one pass over each benchmark, decoded together (lntune.eval.mixed):
    adapter NAME's results go to out/NAME/<bench>/ and out/NAME/report.md, as `evaluate_suite(model, folder, ...,
    out/NAME)` writes them; returns one table with a row per adapter, also written to out/report.md."""
    from lntune.eval.mixed import load_mixed
    from lntune.eval.report import report
    from lntune.eval.runner import evaluate_benchmark_mixed

    mixed = load_mixed(model, adapters, template, system=system, image_aspect_ratio=image_aspect_ratio)
    out = Path(out)
    for benchmark in benchmarks:
        evaluate_benchmark_mixed(
            mixed, benchmark.bench, Path(benchmark.data), benchmark.images,
            {name: out / name / benchmark.bench for name in adapters}, limit=limit, batch_size=batch_size,
            prompt=prompt, max_new_tokens=max_new_tokens, mode=mode, annotations=annotations,
            extra_records={name: {"model": str(model), "adapter": folder} for name, folder in adapters.items()},
            max_image_pixels=max_image_pixels,
        )
    for name in adapters:
        (out / name / "report.md").write_text(report([out / name]))
    table = report([out / name for name in adapters])
    (out / "report.md").write_text(table)
    return table
