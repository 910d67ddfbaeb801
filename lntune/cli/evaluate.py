"""Evaluation commands: `lntune eval`, `score`, `report`, `chat`."""

from __future__ import annotations

import json
from pathlib import Path

from lntune.cli.command import Command, one_or_named_adapters


def _add_quantize_arguments(parser):
    parser.add_argument("--quantize", choices=["4bit", "8bit"],
                        help="load the base quantized as `lntune train --quantize` does (default: full precision, "
                             "also for an adapter trained on a quantized base)")
    parser.add_argument("--quantize-vision", action="store_true",
                        help="with --quantize: the vision tower's linear layers too")


def _add_image_arguments(parser):
    parser.add_argument("--image-aspect-ratio", choices=["pad", "crop"],
                        help="default: what the adapter / model recorded in training, else pad (LLaVA-1.5)")
    parser.add_argument("--max-image-pixels", type=int, default=64_000_000, help="refuse larger images (default 64M)")


# ---- eval -----------------------------------------------------------------------------------------

def _eval_arguments(parser):
    parser.add_argument("--model", required=True, help="a built or trained MLLM directory")
    parser.add_argument("--adapter", action="append", metavar="DIR | NAME=DIR",
                        help="a run's adapter/ directory (trained on --model); or NAME=DIR, repeatable: several "
                             "adapters evaluated together in one pass, each into OUT/NAME/")
    parser.add_argument("--bench", action="append", required=True, help="mme, vqav2, coco, flickr30k, pope (repeatable)")
    parser.add_argument("--data", action="append", required=True, help="the benchmark's files (one per --bench, in order)")
    parser.add_argument("--images", action="append", help="image folder (one per --bench, or one for all)")
    parser.add_argument("--annotations", help="VQAv2 annotations file (default: found beside the questions file)")
    parser.add_argument("--out", required=True, help="output directory (one subfolder per benchmark)")
    parser.add_argument("--limit", type=int, help="a deterministic subset of N items, for quick checks")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--prompt", help="prompt template; {question} is replaced by the question")
    parser.add_argument("--max-new-tokens", type=int)
    parser.add_argument("--mode", help="metric mode (see lntune score --help)")
    parser.add_argument("--template", default="auto", help="chat template (as in training)")
    parser.add_argument("--system", help="system prompt (as in training; default: the template's own)")
    _add_quantize_arguments(parser)
    _add_image_arguments(parser)


def _refuse_quantized_mixing(args, named) -> None:
    """Several adapters share the serving banks on a full-precision base; a quantized base takes one at a time."""
    from lntune.errors import LntuneError

    if named is not None and (args.quantize or args.quantize_vision):
        raise LntuneError("--quantize takes one adapter at a time (several --adapter NAME=DIR are decoded together on "
                          "the full-precision base); run one command per adapter with --adapter DIR --quantize ...")


def _eval_run(args) -> int:
    from lntune.errors import LntuneError
    from lntune.eval.suite import BenchmarkFiles, evaluate_suite, evaluate_suite_mixed

    if len(args.data) != len(args.bench):
        raise LntuneError(f"give one --data per --bench ({len(args.bench)} benches, {len(args.data)} --data)")
    images = args.images or [None]
    if len(images) not in (1, len(args.bench)):
        raise LntuneError("give one --images for all benches, or one per --bench")
    images = images * len(args.bench) if len(images) == 1 else images
    benchmarks = [BenchmarkFiles(bench, Path(data), folder) for bench, data, folder in zip(args.bench, args.data, images)]
    adapter, named = one_or_named_adapters(args.adapter)
    _refuse_quantized_mixing(args, named)
    if named is None:
        print(evaluate_suite(
            args.model, adapter, benchmarks, Path(args.out), template=args.template, system=args.system,
            image_aspect_ratio=args.image_aspect_ratio, limit=args.limit, batch_size=args.batch_size,
            prompt=args.prompt, max_new_tokens=args.max_new_tokens, mode=args.mode, annotations=args.annotations,
            max_image_pixels=args.max_image_pixels, quantize=args.quantize, quantize_vision=args.quantize_vision))
        return 0
    print(evaluate_suite_mixed(
        args.model, named, benchmarks, Path(args.out), template=args.template,
        system=args.system, image_aspect_ratio=args.image_aspect_ratio, limit=args.limit, batch_size=args.batch_size,
        prompt=args.prompt, max_new_tokens=args.max_new_tokens, mode=args.mode, annotations=args.annotations,
        max_image_pixels=args.max_image_pixels,
    ))
    return 0


# ---- score ----------------------------------------------------------------------------------------

def _score_arguments(parser):
    parser.add_argument("bench", help="mme, vqav2, coco, flickr30k, pope")
    parser.add_argument("--predictions", help="an lntune predictions.jsonl (rescoring needs nothing else)")
    parser.add_argument("--annotations", help="vqav2: v2_mscoco_<split>_annotations.json; coco/flickr30k: Karpathy file")
    parser.add_argument("--questions", help="vqav2: the questions file (accepted for symmetry; not needed)")
    parser.add_argument("--results", help="vqav2: [{question_id, answer}]; coco/flickr30k: [{image_id, caption}]")
    parser.add_argument("--labels", help="pope: coco_pope_<split>.json")
    parser.add_argument("--answers", help="pope: answers JSON Lines with question_id and text")
    parser.add_argument("--results-dir", help="mme: the eval tool's <subtask>.txt files")
    parser.add_argument("--mode", help="metric mode: vqav2 official|llava|lmms-eval; mme/pope official|lmms-eval")
    parser.add_argument("--json", action="store_true")


def _score_run(args) -> int:
    from lntune.eval.report import format_metrics

    metrics = _score(args.bench, args.mode, predictions=args.predictions, annotations=args.annotations,
                     results=args.results, labels=args.labels, answers=args.answers, results_dir=args.results_dir)
    print(json.dumps(metrics, indent=2) if args.json else format_metrics(metrics))
    return 0


def _score(bench: str, mode: str | None, *, predictions, annotations, results, labels, answers, results_dir) -> dict:
    """The metrics of whichever set of files was given for `bench`."""
    from lntune.errors import LntuneError
    from lntune.eval import score
    from lntune.eval.benchmarks import get_benchmark

    mode = mode or get_benchmark(bench).default_mode
    if predictions:
        return score.from_predictions(bench, Path(predictions), mode)
    if bench == "vqav2" and annotations and results:
        return score.vqav2(Path(annotations), Path(results), mode)
    if bench == "pope" and labels and answers:
        return score.pope(Path(labels), Path(answers), mode)
    if bench == "mme" and results_dir:
        return score.mme(Path(results_dir), mode)
    if bench in ("coco", "flickr30k") and annotations and results:
        return score.captions(Path(annotations), Path(results))
    raise LntuneError(
        "say what to score: --predictions FILE, or vqav2 --annotations --results, pope --labels --answers, "
        "mme --results-dir, coco|flickr30k --annotations --results"
    )


# ---- report ---------------------------------------------------------------------------------------

def _report_arguments(parser):
    parser.add_argument("runs", nargs="+", help="eval output directories")
    parser.add_argument("--out", help="also write the table to this markdown file")


def _report_run(args) -> int:
    from lntune.eval.report import report

    table = report([Path(run) for run in args.runs])
    if args.out:
        Path(args.out).write_text(table)
    print(table)
    return 0


# ---- chat -----------------------------------------------------------------------------------------

def _chat_arguments(parser):
    parser.add_argument("prompt", nargs="?", help="one question; without it, an interactive loop")
    parser.add_argument("--model", required=True)
    parser.add_argument("--adapter", action="append", metavar="DIR | NAME=DIR",
                        help="an adapter directory; or NAME=DIR, repeatable: every adapter answers, labelled")
    parser.add_argument("--image", help="an image file to talk about")
    parser.add_argument("--max-new-tokens", type=int, default=256)
    parser.add_argument("--template", default="auto")
    parser.add_argument("--system", help="system prompt (as in training; default: the template's own)")
    _add_quantize_arguments(parser)
    _add_image_arguments(parser)


def _chat_run(args) -> int:
    from lntune.eval.chat import chat

    adapter, named = one_or_named_adapters(args.adapter)
    _refuse_quantized_mixing(args, named)
    return chat(args.model, adapter if named is None else named, args.prompt, args.image, max_new_tokens=args.max_new_tokens,
                template=args.template, system=args.system, image_aspect_ratio=args.image_aspect_ratio,
                max_image_pixels=args.max_image_pixels, quantize=args.quantize,
                quantize_vision=args.quantize_vision)


EVAL = Command(_eval_arguments, _eval_run, "evaluate on MME, VQAv2, COCO, Flickr30k, POPE from their official files")
SCORE = Command(_score_arguments, _score_run, "score existing predictions with the official metrics (no model)")
REPORT = Command(_report_arguments, _report_run, "one markdown table across evaluated runs")
CHAT = Command(_chat_arguments, _chat_run, "ask a model about an image (streams the answer)")
