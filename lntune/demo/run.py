"""`lntune demo`: the whole paper in miniature on a laptop CPU.

Tiny world (cached) -> tiny pretrained backbones (cached) -> lntune build -> stage 1 (connector on
captions) -> stage 2 with `layernorm` (others with --methods) -> MME, VQAv2, COCO, Flickr30k, POPE ->
a paper-style table and report.md with loss curves. Runs already finished in --out are reused.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from lntune.demo.files import WorldSize
from lntune.demo.pipeline import (DemoBudget, build_model, evaluate, image_blind_prior, run_summary, score_cells,
                                  stage1, stage2)
from lntune.demo.report import plot_losses, results_table

BUDGETS = {
    "default": (WorldSize(), DemoBudget()),
    # CI and tests: the same pipeline with everything cut down (numbers are not meaningful)
    "smoke": (WorldSize(train_scenes=64, text_scenes=200, eval_images=4),
              DemoBudget(stage1_steps=2, stage2_steps=2, batch_size=4, eval_batch_size=8)),
}


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def run_demo(out: str | Path, methods=("layernorm",), rebuild: bool = False, budget_name: str = "default",
             cache: Path | None = None, backbones: str = "default") -> int:
    """`backbones` names a preset of BACKBONE_PRESETS (deep: an 8-block LLM); the smoke budget keeps its shape."""
    from dataclasses import replace

    from lntune.demo.backbones_cache import BACKBONE_PRESETS, prepare_world

    started = time.monotonic()
    out = Path(out)
    size, budget = BUDGETS[budget_name]
    backbone_budget = BACKBONE_PRESETS[backbones]
    if budget_name != "default":
        backbone_budget = replace(backbone_budget, llm_steps=3, vision_steps=3)
    _say("[1/5] tiny world and pretrained backbones")
    paths = prepare_world(size=size, budget=backbone_budget, rebuild=rebuild, root=cache)
    _say(f"[2/5] lntune build: tiny LLM ({backbone_budget.llm_layers} blocks) + tiny CLIP -> Llava MLLM "
         "(linear connector, as in the paper)")
    model = build_model(paths, out / "model")
    _say("[3/5] stage 1: the connector on captions")
    first = stage1(model, paths, out / "runs" / "stage1", budget)
    rows, curves = [], {"stage 1 (connector)": run_summary(first)["losses"]}
    prior = image_blind_prior(paths)
    rows.append({"name": "image-blind prior", **{k: v for k, v in score_cells(prior).items() if k == "VQAv2"}})
    _say("      evaluating the stage-1 model")
    rows.append({"name": "stage 1 only", **run_summary(first),
                 **score_cells(evaluate(first / "model", None, paths, out / "eval" / "stage1", budget))})
    for index, method in enumerate(methods, start=1):
        _say(f"[4/5] stage 2 ({index}/{len(methods)}): {method} on the instruction data")
        run = stage2(first / "model", paths, out / "runs" / method, budget, method)
        summary = run_summary(run)
        curves[f"stage 2: {method}"] = summary["losses"]
        _say(f"      evaluating {method} on MME, VQAv2, COCO, Flickr30k, POPE")
        results = evaluate(first / "model", run / "adapter", paths, out / "eval" / method, budget)
        rows.append({"name": method, **summary, **score_cells(results)})
    _say("[5/5] report")
    table = results_table(rows)
    plot = plot_losses(curves, out / "loss_curves.png", "tiny world: training loss")
    (out / "report.md").write_text(
        "# lntune demo: the tiny world\n\n" + table + "\n\n"
        "trainable and % are of the whole MLLM; peak MB is the largest resident memory of the process sampled at the run's steps (CPU; on a GPU the peak allocated); s/step is the median "
        "optimizer-step time. Scores: MME perception (4 subtasks present, max 800), VQAv2 accuracy (llava mode), "
        "CIDEr x100, POPE F1 x100 averaged over random / popular / adversarial.\n\n"
        f"![loss curves]({plot.name})\n"
    )
    print(table)
    print(f"\ndone in {time.monotonic() - started:.0f}s: {out / 'report.md'}, {plot}")
    print(
        "Next:\n"
        f"  lntune chat --model {first / 'model'} --adapter {out / 'runs' / methods[0] / 'adapter'} "
        f"--image {next(Path(paths['coco_images']).rglob('*.jpg'))} \"How many objects are there?\"\n"
        "  lntune demo --methods full,lora,layernorm,layernorm-simple      # the paper's comparison, in miniature\n"
        "  lntune compare --config configs/demo-compare.yaml              # + the data-type and connector studies\n"
        "  lntune train --model YOUR_MODEL --data YOUR_DATA.json ...       # your own data: see docs/training.md"
    )
    return 0
