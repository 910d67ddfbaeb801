"""Model commands: `lntune build`, `import`, `params`, `merge`."""

from __future__ import annotations

import json

from lntune.cli.command import Command, add_debug_flag, say
from lntune.cli.config_flags import add_method_flags, method_configs
from lntune.config import DTYPE_NAMES

_FIXED_DTYPES = ", ".join(name for name in DTYPE_NAMES if name != "auto")  # float32, bfloat16, float16


# ---- build ----------------------------------------------------------------------------------------

def _build_arguments(parser):
    parser.add_argument("--llm", required=True, help="local Hugging Face causal LM directory")
    parser.add_argument("--vision", required=True, help="local CLIP or SigLIP model directory")
    parser.add_argument("--out", required=True, help="output directory for the Llava-format MLLM")
    parser.add_argument("--connector", default="mlp2x_gelu", help="mlp2x_gelu (stock Llava) or linear (the paper's)")
    parser.add_argument("--vision-layer", type=int, default=-2, help="vision hidden state to use (default -2)")
    parser.add_argument("--vision-select", default="patch", help="patch (default) or cls_patch (CLIP only)")
    parser.add_argument("--dtype", default="auto", help=f"auto (the LLM's stored dtype), {_FIXED_DTYPES}")
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
    build_mllm(config, say=say)
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
    llava.add_argument("--dtype", default="auto", help=f"auto (the checkpoint's), {_FIXED_DTYPES}")
    for sub in (projector, llava):
        sub.add_argument("--out", required=True, help="the new model directory")
        sub.add_argument("--overwrite", action="store_true", help="replace a non-empty output directory")
        add_debug_flag(sub)


def _import_run(args) -> int:
    from lntune.model.llava_import import import_llava_checkpoint, import_projector

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
    add_method_flags(parser, "method switches (default: the method's own)", with_name=False)


def _params_run(args) -> int:
    from lntune.methods import METHODS
    from lntune.params import config_for_counting, format_table, method_reports

    llava_config = config_for_counting(
        args.model, args.llm, args.vision, args.connector, args.vision_layer, args.vision_select, args.trust_remote_code
    )
    reports = method_reports(llava_config, method_configs(args, args.method or list(METHODS)))
    if args.json:
        payload = reports[0].to_dict() if len(reports) == 1 else [report.to_dict() for report in reports]
        print(json.dumps(payload, indent=2))
    else:
        print(format_table(reports))
    return 0


# ---- merge ----------------------------------------------------------------------------------------

def _merge_arguments(parser):
    parser.add_argument("--model", required=True, help="the base model the adapter was trained on")
    parser.add_argument("--adapter", required=True, help="a run's adapter/ directory")
    parser.add_argument("--out", required=True, help="where the merged full model is written")


def _merge_run(args) -> int:
    from lntune.adapter import merge_adapter

    merge_adapter(args.model, args.adapter, args.out, say=say)
    return 0


BUILD = Command(_build_arguments, _build_run, "assemble an MLLM from a local LLM and vision encoder")
IMPORT = Command(_import_arguments, _import_run,
                 "import LLaVA-codebase weights (a stage-1 projector or a full checkpoint)")
PARAMS = Command(_params_arguments, _params_run, "count total and trainable parameters per component and method")
MERGE = Command(_merge_arguments, _merge_run, "merge an adapter into its base model -> a full model directory")
