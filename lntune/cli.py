"""`lntune <command>`: COMMANDS maps each command name to (define its arguments, run it).

Errors a user can cause (LntuneError) print as one line and exit 1, and so does the OS refusing a write (disk full,
read-only file system, permission denied); `--debug` shows the traceback.
Nothing is ever downloaded: HF_HUB_OFFLINE is set before transformers is imported.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import warnings

from lntune import __version__


def _add_method_switches(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("method switches (default: the method's own)")
    for switch in ("connector", "embeddings", "output-head", "final-norm"):
        group.add_argument(f"--train-{switch}", action=argparse.BooleanOptionalAction, default=None,
                           help=f"train the {switch.replace('-', ' ')} or not")
    group.add_argument("--lora-rank", type=int, default=None, help="LoRA rank (default 32)")
    group.add_argument("--lora-alpha", type=float, default=None, help="LoRA alpha (default 64)")
    group.add_argument("--lora-dropout", type=float, default=None, help="LoRA dropout (default 0.05)")
    group.add_argument("--lora-targets", default=None,
                       help="comma-separated linear layer names in the LLM's blocks (default: all of them)")


def _method_fields(args) -> dict:
    """The method settings given on the command line (unset ones are left to the config / defaults)."""
    fields = {
        "train_connector": args.train_connector,
        "train_embeddings": args.train_embeddings,
        "train_output_head": args.train_output_head,
        "train_final_norm": args.train_final_norm,
        "lora_rank": args.lora_rank,
        "lora_alpha": args.lora_alpha,
        "lora_dropout": args.lora_dropout,
        "lora_target_modules": args.lora_targets,
    }
    return {key: value for key, value in fields.items() if value is not None}


def method_configs_from_args(args, names):
    from lntune.config import MethodConfig, config_from_dict

    return [config_from_dict(MethodConfig, dict(_method_fields(args), name=name), "command line") for name in names]


# ---- build ----------------------------------------------------------------------------------------

def _build_arguments(parser):
    parser.add_argument("--llm", required=True, help="local Hugging Face causal LM directory")
    parser.add_argument("--vision", required=True, help="local CLIP or SigLIP model directory")
    parser.add_argument("--out", required=True, help="output directory for the Llava-format MLLM")
    parser.add_argument("--connector", default="mlp2x_gelu", help="mlp2x_gelu (stock Llava) or linear (the paper's)")
    parser.add_argument("--vision-layer", type=int, default=-2, help="vision hidden state to use (default -2)")
    parser.add_argument("--vision-select", default="patch", help="patch (default) or cls_patch (CLIP only)")
    parser.add_argument("--dtype", default="auto", help="auto (the LLM's stored dtype), float32, bfloat16, float16")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty output directory")
    parser.add_argument("--trust-remote-code", action="store_true")


def _build_run(args) -> int:
    from lntune.config import BuildConfig
    from lntune.model.build import build_mllm

    config = BuildConfig(
        llm=args.llm, vision=args.vision, out=args.out, connector=args.connector, vision_layer=args.vision_layer,
        vision_select=args.vision_select, dtype=args.dtype, trust_remote_code=args.trust_remote_code,
        seed=args.seed, overwrite=args.overwrite,
    )
    build_mllm(config, say=lambda message: print(message, file=sys.stderr))
    return 0


# ---- import ---------------------------------------------------------------------------------------

def _import_arguments(parser):
    sources = parser.add_subparsers(dest="source", metavar="SOURCE", required=True)
    projector = sources.add_parser(
        "projector", help="a LLaVA stage-1 mm_projector.bin into a built model (written as a new model)",
        description="Replace a built model's connector with a LLaVA stage-1 projector; the result is a new model.")
    projector.add_argument("--model", required=True, help="a built MLLM directory with a matching connector")
    projector.add_argument("--projector", required=True, help="LLaVA's mm_projector.bin")
    projector.add_argument("--llava-config", help="the LLaVA run's config.json (default: the one beside --projector)")
    llava = sources.add_parser(
        "llava", help="a full LLaVA-codebase checkpoint (LlavaLlamaForCausalLM) -> a Llava model directory",
        description="Convert a LLaVA-codebase checkpoint into the Hugging Face Llava layout lntune uses.")
    llava.add_argument("--checkpoint", required=True, help="the LLaVA checkpoint directory")
    llava.add_argument("--vision", help="local directory of its CLIP vision tower (mm_vision_tower): config, "
                       "image processor, and the weights when the checkpoint has none")
    llava.add_argument("--dtype", default="auto", help="auto (the checkpoint's), float32, bfloat16, float16")
    for sub in (projector, llava):
        sub.add_argument("--out", required=True, help="the new model directory")
        sub.add_argument("--overwrite", action="store_true", help="replace a non-empty output directory")
        sub.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show full tracebacks")


def _import_run(args) -> int:
    from lntune.model.llava_import import import_llava_checkpoint, import_projector

    say = lambda message: print(message, file=sys.stderr)  # noqa: E731
    if args.source == "projector":
        import_projector(args.model, args.projector, args.out, args.llava_config, args.overwrite, say=say)
    else:
        import_llava_checkpoint(args.checkpoint, args.vision, args.out, args.dtype, args.overwrite, say=say)
    return 0


# ---- params ---------------------------------------------------------------------------------------

def _params_arguments(parser):
    parser.add_argument("--model", help="a built MLLM directory (or any HF Llava checkpoint)")
    parser.add_argument("--llm", help="LLM directory or config.json (instead of --model)")
    parser.add_argument("--vision", help="vision model directory or config.json (with --llm)")
    parser.add_argument("--connector", default="mlp2x_gelu", help="with --llm/--vision: mlp2x_gelu or linear")
    parser.add_argument("--vision-layer", type=int, default=-2)
    parser.add_argument("--vision-select", default="patch")
    parser.add_argument("--method", action="append", help="a tuning method (repeatable; default: all of them)")
    parser.add_argument("--json", action="store_true", help="print JSON (an object for one method, a list for several)")
    parser.add_argument("--trust-remote-code", action="store_true")
    _add_method_switches(parser)


def _params_run(args) -> int:
    from lntune.methods import METHODS
    from lntune.params import config_for_counting, format_table, method_reports

    llava_config = config_for_counting(
        args.model, args.llm, args.vision, args.connector, args.vision_layer, args.vision_select, args.trust_remote_code
    )
    reports = method_reports(llava_config, method_configs_from_args(args, args.method or list(METHODS)))
    if args.json:
        payload = reports[0].to_dict() if len(reports) == 1 else [report.to_dict() for report in reports]
        print(json.dumps(payload, indent=2))
    else:
        print(format_table(reports))
    return 0


# ---- train ----------------------------------------------------------------------------------------

_TRAIN_FLAGS = {
    # flag dest -> dotted config key
    "model": "model", "out": "out", "method": "method.name",
    "image_folder": "data.image_folder", "types": "data.types", "template": "data.template",
    "max_length": "data.max_length", "overlong": "data.overlong", "skip_invalid": "data.skip_invalid",
    "num_workers": "data.num_workers", "max_image_pixels": "data.max_image_pixels",
    "image_placement": "data.image_placement", "system": "data.system", "image_aspect_ratio": "data.image_aspect_ratio",
    "stage": "train.stage", "epochs": "train.epochs", "max_steps": "train.max_steps", "batch_size": "train.batch_size",
    "grad_accum": "train.grad_accum", "global_batch_size": "train.global_batch_size",
    "group_by_modality_length": "train.group_by_modality_length", "lr": "train.lr", "norm_lr": "train.norm_lr",
    "connector_lr": "train.connector_lr",
    "embedding_lr": "train.embedding_lr", "weight_decay": "train.weight_decay", "warmup_ratio": "train.warmup_ratio",
    "scheduler": "train.scheduler", "precision": "train.precision", "gradient_checkpointing": "train.gradient_checkpointing",
    "seed": "train.seed", "save_every": "train.save_every", "keep_checkpoints": "train.keep_checkpoints",
    "save_merged": "train.save_merged", "log_every": "train.log_every", "grad_stats": "train.grad_stats",
    "distributed": "train.distributed", "max_grad_norm": "train.max_grad_norm", "deepspeed_config": "train.deepspeed_config",
    "quantize": "train.quantize", "quantize_vision": "train.quantize_vision",  # [memory] quantized frozen base
}


def _train_arguments(parser):
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="dotted overrides, e.g. train.lr=1e-3")
    parser.add_argument("--config", help="YAML run config (flags and overrides win over it)")
    parser.add_argument("--model", help="built MLLM directory (stage 2: the stage-1 run's model/)")
    parser.add_argument("--out", help="run directory")
    parser.add_argument("--stage", help="pretrain (connector on captions) or finetune (default)")
    parser.add_argument("--method", help="tuning method (default: layernorm; connector for pretrain)")
    parser.add_argument("--data", action="append", metavar="[TYPE=]PATH[:COUNT]", help="a data file (repeatable)")
    parser.add_argument("--image-folder", help="folder the samples' image paths are relative to")
    parser.add_argument("--types", help="comma-separated sample types to keep (e.g. conversation)")
    parser.add_argument("--template", help="auto, vicuna_v1, llama_2, plain, tokenizer")
    parser.add_argument("--system", help="system prompt for vicuna_v1 / llama_2 (default: LLaVA's, per template)")
    parser.add_argument("--image-placement", help="front (LLaVA: <image> first in its turn, default) or keep")
    parser.add_argument("--image-aspect-ratio", help="pad (LLaVA-1.5 finetune), crop, or auto (default: crop in "
                        "pretrain, pad in finetune)")
    parser.add_argument("--max-length", type=int)
    parser.add_argument("--overlong", help="truncate or skip")
    parser.add_argument("--skip-invalid", action="store_true", default=None, help="skip and count bad samples")
    parser.add_argument("--num-workers", type=int)
    parser.add_argument("--max-image-pixels", type=int)
    parser.add_argument("--epochs", type=float)
    parser.add_argument("--max-steps", type=int)
    parser.add_argument("--batch-size", type=int, help="samples per process per micro-step")
    parser.add_argument("--grad-accum", type=int, help="micro-steps per optimizer step (default 1; derived from "
                        "--global-batch-size when that is given)")
    parser.add_argument("--global-batch-size", type=int, metavar="N", help="samples per optimizer step over all "
                        "processes; grad_accum = N / (batch size x processes)")
    parser.add_argument("--group-by-modality-length", action=argparse.BooleanOptionalAction, default=None,
                        help="LLaVA's batching: image and text-only samples in separate batches, sorted by length")
    for name in ("lr", "norm-lr", "connector-lr", "embedding-lr", "weight-decay", "warmup-ratio"):
        parser.add_argument(f"--{name}", type=float)
    parser.add_argument("--scheduler", help="cosine, linear, constant")
    parser.add_argument("--precision", help="auto, bf16, fp16, fp32")
    parser.add_argument("--gradient-checkpointing", action="store_true", default=None)
    parser.add_argument("--max-grad-norm", type=float, help="gradient clipping (0: off)")
    parser.add_argument("--distributed", help="with several processes: ddp (default), fsdp2, zero2 or zero3 (DeepSpeed)")
    parser.add_argument("--deepspeed-config", metavar="JSON", help="zero2/zero3: DeepSpeed settings to merge in "
                        "(e.g. zero_optimization.offload_optimizer)")
    # [memory] quantized frozen base (QLN / QLoRA), lntune.model.quantize
    parser.add_argument("--quantize", help="4bit (NF4) or 8bit: the LLM blocks' frozen linear layers quantized "
                        "(bitsandbytes); layernorm, layernorm-simple, lora, connector")
    parser.add_argument("--quantize-vision", action=argparse.BooleanOptionalAction, default=None,
                        help="with --quantize: the vision tower's linear layers too")
    parser.add_argument("--seed", type=int)
    parser.add_argument("--save-every", type=int, help="checkpoint every N steps (0: only at the end)")
    parser.add_argument("--keep-checkpoints", type=int)
    parser.add_argument("--log-every", type=int)
    parser.add_argument("--save-merged", action=argparse.BooleanOptionalAction, default=None)
    parser.add_argument("--grad-stats", action=argparse.BooleanOptionalAction, default=None)
    parser.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    _add_method_switches(parser)


def run_config_from_args(args):
    from lntune.config import RunConfig, apply_overrides, config_from_dict, load_yaml
    from lntune.data.mixture import parse_data_spec

    data = load_yaml(args.config) if args.config else {}
    flat = [f"{key}={json.dumps(getattr(args, dest))}" for dest, key in _TRAIN_FLAGS.items() if getattr(args, dest) is not None]
    flat += [f"method.{key}={json.dumps(value)}" for key, value in _method_fields(args).items()]
    data = apply_overrides(data, flat + list(args.overrides))
    if args.data:
        data.setdefault("data", {})["sources"] = [
            {k: v for k, v in vars(parse_data_spec(spec)).items() if v is not None} for spec in args.data
        ]
    if data.get("train", {}).get("stage") == "pretrain":
        data.setdefault("method", {}).setdefault("name", "connector")
    source = args.config or "command line"
    for key in ("model", "out"):
        if key not in data:
            from lntune.errors import LntuneError

            raise LntuneError(f"--{key} is required (or set {key}: in the --config file)")
    return config_from_dict(RunConfig, data, source)


def _train_run(args) -> int:
    from lntune.train.trainer import train

    train(run_config_from_args(args), resume=args.resume)
    return 0


# ---- merge ----------------------------------------------------------------------------------------

def _merge_arguments(parser):
    parser.add_argument("--model", required=True, help="the base model the adapter was trained on")
    parser.add_argument("--adapter", required=True, help="a run's adapter/ directory")
    parser.add_argument("--out", required=True, help="where the merged full model is written")


def _merge_run(args) -> int:
    from lntune.adapter import merge_adapter

    merge_adapter(args.model, args.adapter, args.out, say=lambda message: print(message, file=sys.stderr))
    return 0


# ---- data check -----------------------------------------------------------------------------------

def _data_arguments(parser):
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    check = actions.add_parser("check", help="report on data before a long job",
                               description="counts, images, token lengths and the label-mask self-check")
    check.add_argument("specs", nargs="+", metavar="[TYPE=]PATH[:COUNT]")
    check.add_argument("--model", help="a built model: adds token lengths and the label-mask self-check")
    check.add_argument("--image-folder")
    check.add_argument("--types", help="comma-separated sample types to keep")
    check.add_argument("--template", default="auto")
    check.add_argument("--stage", default="finetune")
    check.add_argument("--max-length", type=int, default=2048)
    check.add_argument("--limit", type=int, help="check only the first N selected samples")
    check.add_argument("--json", action="store_true")
    show = actions.add_parser(
        "show", help="what the model sees: text, ids and labels of samples, or a benchmark's generation prompts",
        description="Training view (--data FILE): each sample's rendered text, input_ids and labels exactly as "
                    "`lntune train` builds them. Generation view (--bench B --data FILE): each question's ids exactly "
                    "as `lntune eval` builds them. Supervised spans are marked ⟦ ⟧ in the readable view.")
    show.add_argument("--model", required=True, help="a built model (its tokenizer, image token count, template)")
    show.add_argument("--data", required=True, help="a LLaVA data file, or with --bench the benchmark's files")
    show.add_argument("--bench", help="show generation prompts of this benchmark (mme, vqav2, coco, flickr30k, pope)")
    show.add_argument("--image-folder", "--images", dest="image_folder",
                      help="image folder (benchmarks that find their images through it need it)")
    show.add_argument("--index", type=int, nargs="+", action="extend", help="sample / item positions (repeatable; "
                      "default: all)")
    show.add_argument("--template", default="auto")
    show.add_argument("--stage", default="finetune", help="pretrain or finetune (decides what `auto` means)")
    show.add_argument("--system", help="system prompt (as in training)")
    show.add_argument("--image-placement", default="front", help="front (LLaVA) or keep")
    show.add_argument("--max-length", type=int, default=2048)
    show.add_argument("--prompt", help="benchmarks: prompt template with {question}, as in lntune eval")
    show.add_argument("--json", action="store_true", help="a JSON list of {index, id, text, input_ids, labels} "
                      "(training) or {index, question_id, text, input_ids} (--bench)")


def _data_run(args) -> int:
    if args.action == "show":
        return _data_show(args)
    from lntune.data.check import check_data, format_report

    report = check_data(args)
    print(json.dumps(report, indent=2) if args.json else format_report(report))
    return 0 if report["ok"] else 1


def _data_show(args) -> int:
    from lntune.data.show import ShowRequest, format_rows, show
    from lntune.model.load import load_llava_config, load_processor

    request = ShowRequest(
        model=args.model, data=args.data, indices=tuple(args.index) if args.index else None,
        image_folder=args.image_folder, bench=args.bench, template=args.template, stage=args.stage,
        system=args.system, image_placement=args.image_placement, max_length=args.max_length, prompt=args.prompt,
    )
    rows = show(request)
    if args.json:
        print(json.dumps(rows, ensure_ascii=False))
    else:
        print(format_rows(rows, load_processor(args.model).tokenizer, load_llava_config(args.model).image_token_id))
    return 0


# ---- eval / score / report / chat ---------------------------------------------------------------

def _eval_arguments(parser):
    parser.add_argument("--model", required=True, help="a built or trained MLLM directory")
    parser.add_argument("--adapter", help="a run's adapter/ directory (trained on --model)")
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
    _add_image_arguments(parser)


def _add_image_arguments(parser):
    parser.add_argument("--image-aspect-ratio", choices=["pad", "crop"],
                        help="default: what the adapter / model recorded in training, else pad (LLaVA-1.5)")
    parser.add_argument("--max-image-pixels", type=int, default=64_000_000, help="refuse larger images (default 64M)")


def _eval_run(args) -> int:
    from pathlib import Path

    from lntune.errors import LntuneError
    from lntune.eval.report import report
    from lntune.eval.runner import evaluate_benchmark, load_generator

    if len(args.data) != len(args.bench):
        raise LntuneError(f"give one --data per --bench ({len(args.bench)} benches, {len(args.data)} --data)")
    images = args.images or [None]
    if len(images) not in (1, len(args.bench)):
        raise LntuneError("give one --images for all benches, or one per --bench")
    images = images * len(args.bench) if len(images) == 1 else images
    generator = load_generator(args.model, args.adapter, args.template, system=args.system,
                               image_aspect_ratio=args.image_aspect_ratio)
    out = Path(args.out)
    for bench, data, image_folder in zip(args.bench, args.data, images):
        evaluate_benchmark(
            generator, bench, Path(data), image_folder, out / bench, limit=args.limit, batch_size=args.batch_size,
            prompt=args.prompt, max_new_tokens=args.max_new_tokens, mode=args.mode, annotations=args.annotations,
            extra_record={"model": str(args.model), "adapter": args.adapter}, max_image_pixels=args.max_image_pixels,
        )
    table = report([out])
    (out / "report.md").write_text(table)
    print(table)
    return 0


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
    from pathlib import Path

    from lntune.errors import LntuneError
    from lntune.eval import score
    from lntune.eval.benchmarks import get_benchmark

    mode = args.mode or get_benchmark(args.bench).default_mode
    if args.predictions:
        metrics = score.from_predictions(args.bench, Path(args.predictions), mode)
    elif args.bench == "vqav2" and args.annotations and args.results:
        metrics = score.vqav2(Path(args.annotations), Path(args.results), mode)
    elif args.bench == "pope" and args.labels and args.answers:
        metrics = score.pope(Path(args.labels), Path(args.answers), mode)
    elif args.bench == "mme" and args.results_dir:
        metrics = score.mme(Path(args.results_dir), mode)
    elif args.bench in ("coco", "flickr30k") and args.annotations and args.results:
        metrics = score.captions(Path(args.annotations), Path(args.results))
    else:
        raise LntuneError(
            "say what to score: --predictions FILE, or vqav2 --annotations --results, pope --labels --answers, "
            "mme --results-dir, coco|flickr30k --annotations --results"
        )
    print(json.dumps(metrics, indent=2) if args.json else _metrics_table(metrics))
    return 0


def _metrics_table(metrics: dict, prefix: str = "") -> str:
    lines = []
    for key, value in metrics.items():
        if isinstance(value, dict):
            lines.append(_metrics_table(value, f"{prefix}{key}."))
        elif isinstance(value, float):
            lines.append(f"{prefix}{key:<28} {value:.4f}")
        elif not isinstance(value, list) or value:
            lines.append(f"{prefix}{key:<28} {value}")
    return "\n".join(line for line in lines if line)


def _report_arguments(parser):
    parser.add_argument("runs", nargs="+", help="eval output directories")
    parser.add_argument("--out", help="also write the table to this markdown file")


def _report_run(args) -> int:
    from pathlib import Path

    from lntune.eval.report import report

    table = report([Path(run) for run in args.runs])
    if args.out:
        Path(args.out).write_text(table)
    print(table)
    return 0


def _chat_arguments(parser):
    parser.add_argument("prompt", nargs="?", help="one question; without it, an interactive loop")
    parser.add_argument("--model", required=True)
    parser.add_argument("--adapter")
    parser.add_argument("--image", help="an image file to talk about")
    parser.add_argument("--max-new-tokens", type=int, default=256)
    parser.add_argument("--template", default="auto")
    parser.add_argument("--system", help="system prompt (as in training; default: the template's own)")
    _add_image_arguments(parser)


def _chat_run(args) -> int:
    from lntune.eval.chat import chat

    return chat(args)


# ---- demo -----------------------------------------------------------------------------------------

def _demo_arguments(parser):
    parser.add_argument("--out", default="demo-out", help="working directory for the demo")
    parser.add_argument("--methods", default="layernorm", help="comma-separated stage-2 methods (default: layernorm)")
    parser.add_argument("--rebuild", action="store_true", help="rebuild the cached tiny world and backbones")
    parser.add_argument("--budget", default="default", choices=["default", "smoke"],
                        help="smoke: a seconds-long run through every step (numbers are not meaningful)")


def _demo_run(args) -> int:
    from lntune.demo.run import run_demo
    from lntune.methods import METHODS
    from lntune.errors import unknown_key_error

    methods = tuple(name.strip() for name in args.methods.split(",") if name.strip())
    for name in methods:
        if name not in METHODS:
            raise unknown_key_error("method", name, METHODS)
    return run_demo(args.out, methods, args.rebuild, args.budget)


def _analyze_arguments(parser):
    parser.add_argument("action", choices=["similarity", "gradients", "drift"])
    parser.add_argument("runs", nargs="*", help="gradients / drift: run directories")
    parser.add_argument("--run", action="append", help="similarity: a run directory (its model + adapter; repeatable)")
    parser.add_argument("--model", action="append", help="similarity: a model directory (repeatable)")
    parser.add_argument("--data", help="similarity: LLaVA-format samples, [TYPE=]PATH")
    parser.add_argument("--image-folder")
    parser.add_argument("--n", type=int, default=200, help="similarity: samples (a seeded draw)")
    parser.add_argument("--tokens", default="all", choices=["all", "image", "text"], help="similarity: tokens to pool")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-length", type=int, default=2048)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--window", type=int, default=50, help="gradients: sliding-window length in steps")
    parser.add_argument("--out", default="analysis", help="output directory (JSON + PNG)")


def _analyze_run(args) -> int:
    from lntune.analysis.commands import ACTIONS
    from lntune.errors import LntuneError

    if args.action == "similarity" and not args.data:
        raise LntuneError("similarity needs --data (the samples to run through the models)")
    if args.action != "similarity" and not args.runs:
        raise LntuneError(f"{args.action} needs run directories")
    summary = ACTIONS[args.action](args)
    for name, value in summary.items():
        print(f"{name:<30} {value if not isinstance(value, float) else f'{value:.6g}'}"
              if not isinstance(value, dict) else f"{name}: written")
    print(f"written to {args.out}/")
    return 0


def _compare_arguments(parser):
    parser.add_argument("--config", default="configs/demo-compare.yaml", help="the studies to run (YAML)")
    parser.add_argument("--out", help="output directory (default: the config's `out`)")
    parser.add_argument("--rebuild", action="store_true", help="rebuild the cached tiny world and backbones")


def _compare_run(args) -> int:
    from lntune.demo.compare import run_compare

    return run_compare(args.config, args.out, args.rebuild)


COMMANDS = {
    "build": (_build_arguments, _build_run, "assemble an MLLM from a local LLM and vision encoder"),
    "import": (_import_arguments, _import_run, "import LLaVA-codebase weights (a stage-1 projector or a full checkpoint)"),
    "params": (_params_arguments, _params_run, "count total and trainable parameters per component and method"),
    "train": (_train_arguments, _train_run, "train a stage (pretrain / finetune) with a tuning method"),
    "merge": (_merge_arguments, _merge_run, "merge an adapter into its base model -> a full model directory"),
    "data": (_data_arguments, _data_run, "check LLaVA-format data before training, or show what the model sees"),
    "eval": (_eval_arguments, _eval_run, "evaluate on MME, VQAv2, COCO, Flickr30k, POPE from their official files"),
    "score": (_score_arguments, _score_run, "score existing predictions with the official metrics (no model)"),
    "report": (_report_arguments, _report_run, "one markdown table across evaluated runs"),
    "chat": (_chat_arguments, _chat_run, "ask a model about an image (streams the answer)"),
    "analyze": (_analyze_arguments, _analyze_run, "layer similarity, gradient variance, norm drift (JSON + plots)"),
    "demo": (_demo_arguments, _demo_run, "the paper in miniature on the built-in tiny world (CPU, minutes)"),
    "compare": (_compare_arguments, _compare_run, "several methods / data types / ablations side by side, one report"),
}


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lntune",
        description="Turn a text LLM into a multimodal LLM by tuning its LayerNorms (LLaVA-style), with full, LoRA "
                    "and partial tuning beside it; evaluate on MME, VQAv2, COCO, Flickr30k and POPE.",
        epilog="Start with `lntune demo`. Every command has --help.",
    )
    parser.add_argument("--version", action="version", version=f"lntune {__version__}")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (add_arguments, _, help_text) in COMMANDS.items():
        sub = commands.add_parser(name, help=help_text, description=help_text)
        sub.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show full tracebacks")
        add_arguments(sub)
    return parser


def _library_progress_bars_only_on_a_terminal() -> None:
    """transformers' and the hub's progress bars ("Loading weights", "Writing model shards") are for a person
    watching; written into a pipe or a log file they are noise in front of the one line an error gets."""
    if sys.stderr.isatty():
        return
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # read when transformers is imported
    if "transformers" in sys.modules:  # imported already (the Python API, tests): switch it off directly
        from transformers.utils import logging as transformers_logging

        transformers_logging.disable_progress_bar()


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # before transformers / huggingface_hub are imported
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    _library_progress_bars_only_on_a_terminal()
    # PEFT still calls a transformers API that v5 deprecated; the warning is not the user's to act on.
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
    args = make_parser().parse_args(argv)
    from lntune.errors import LntuneError

    try:
        return COMMANDS[args.command][1](args)
    except LntuneError as error:
        if args.debug:
            raise
        print(f"lntune {args.command}: error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as error:
        # The OS refusing a write (disk full, read-only, permission denied) can surface from any library a command
        # calls, wrapped or not; it is the user's to fix, so it gets one line too. Anything else is a bug.
        from lntune.files import os_error_message

        message = os_error_message(error, getattr(args, "out", None))
        if message is None or args.debug:
            raise
        print(f"lntune {args.command}: error: {message}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
