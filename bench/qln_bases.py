"""How much the base quantization LayerNorm tuning was trained under matters once the base is full precision again.

On the built-in tiny world (`lntune demo`'s world, backbones and stage 1), stage 2 `layernorm` is trained twice at
the same budget from the same stage-1 model: once on the full-precision base, once with `--quantize 4bit` (QLN:
the LLM blocks' linear layers in NF4). Then the five tiny benchmarks are answered three times:
  - fp32 adapter on the fp32 base (the ordinary run);
  - QLN adapter on the 4-bit base (as trained: `lntune eval --quantize 4bit`);
  - QLN adapter on the fp32 base (what `lntune merge` gives: `lntune eval` without --quantize).
Printed: one table, the scores of each row, the share of all its answers (five benchmarks) that are word for word
those of the QLN adapter on its own 4-bit base, and the training run's median s/step (its own metrics.jsonl).

Everything goes through the public functions `lntune demo` uses (lntune.demo.pipeline), so a row is what the
commands give. Runs and evaluations already finished in --out are reused; the world is cached under --cache.
The tiny LLM (hidden 128, MLP 384) has block linears whose input widths are multiples of 64, which bitsandbytes'
CPU 4-bit kernels need (lntune.model.quantize.check_cpu_shapes), so the demo world is quantized as it is.

  python bench/qln_bases.py --out /tmp/qln_bases                       # the demo's budget (600 + 600 steps)
  python bench/qln_bases.py --out /tmp/qln_bases --stage2-steps 200    # shorter stage 2 on a busy machine
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

ROWS = (  # name, stage-2 run, base the adapter is evaluated on (None: full precision)
    ("layernorm (fp32 base)", "fp32", None),
    ("QLN on its 4-bit base", "qln4", "4bit"),
    ("QLN on the fp32 base", "qln4", None),
)
TRAINED_ON = {"fp32": None, "qln4": "4bit"}


def _load() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def _answers(folder: Path) -> dict[tuple[str, str], str]:
    """(benchmark, item id) -> the answer, from an evaluation's predictions.jsonl files."""
    from lntune.eval.runner import PREDICTIONS, read_predictions

    return {(bench.name, str(record["id"])): record["prediction"]
            for bench in sorted(folder.iterdir()) if (bench / PREDICTIONS).is_file()
            for record in read_predictions(bench / PREDICTIONS)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="/tmp/qln_bases")
    parser.add_argument("--cache", help="tiny world cache (default: the lntune cache, $LNTUNE_CACHE)")
    parser.add_argument("--stage1-steps", type=int, default=600)
    parser.add_argument("--stage2-steps", type=int, default=600)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--eval-limit", type=int, help="a subset of N items per benchmark (default: all)")
    parser.add_argument("--llm-steps", type=int, default=1000, help="pretraining steps of the tiny LLM (demo: 1000)")
    parser.add_argument("--vision-steps", type=int, default=300,
                        help="pretraining steps of the tiny vision encoder (demo: 300)")
    parser.add_argument("--smoke", action="store_true",
                        help="the demo's smoke world and backbones (seconds; checks the script, numbers mean nothing)")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    from lntune.demo.backbones_cache import prepare_world
    from lntune.demo.pipeline import DemoBudget, build_model, evaluate, run_summary, score_cells, stage1, stage2
    from lntune.demo.report import SCORE_COLUMNS

    started = time.monotonic()
    say = lambda message: print(message, file=sys.stderr, flush=True)  # noqa: E731
    say(f"start: {_load()}")
    out = Path(args.out)
    budget = DemoBudget(stage1_steps=args.stage1_steps, stage2_steps=args.stage2_steps, batch_size=args.batch_size,
                        eval_limit=args.eval_limit)
    from lntune.demo.backbones_cache import BackboneBudget

    world = {"budget": BackboneBudget(llm_steps=args.llm_steps, vision_steps=args.vision_steps)}
    if args.smoke:
        from lntune.demo.run import BUDGETS

        world = {"size": BUDGETS["smoke"][0], "budget": BackboneBudget(llm_steps=3, vision_steps=3)}
    paths = prepare_world(root=Path(args.cache) if args.cache else None, say=say, **world)
    model = build_model(paths, out / "model")
    say(f"stage 1 ({budget.stage1_steps} steps) ...")
    first = stage1(model, paths, out / "runs" / "stage1", budget)
    runs = {}
    for name, quantize in TRAINED_ON.items():
        say(f"stage 2 layernorm, {quantize or 'full-precision'} base ({budget.stage2_steps} steps) ...")
        overrides = [f"train.quantize={quantize}"] if quantize else []
        runs[name] = stage2(first / "model", paths, out / "runs" / name, budget, "layernorm", overrides)
    rows = []
    answers = {}
    for label, run_name, evaluated_on in ROWS:
        say(f"evaluating: {label} ...")
        folder = out / "eval" / f"{run_name}-on-{evaluated_on or 'fp32'}"
        results = evaluate(first / "model", runs[run_name] / "adapter", paths, folder, budget, quantize=evaluated_on)
        answers[label] = _answers(folder)
        recorded = {record.get("base_quantization") and record["base_quantization"]["mode"]
                    for record in results.values()}
        assert recorded == {evaluated_on}, (label, recorded)  # the metrics files say which base answered
        rows.append({"name": label, "trained": TRAINED_ON[run_name] or "fp32", "evaluated": evaluated_on or "fp32",
                     "step_seconds": run_summary(runs[run_name])["step_seconds"],
                     "eval_seconds": sum(r.get("generation_seconds") or 0 for r in results.values()),
                     **score_cells(results)})

    as_trained = answers[ROWS[1][0]]
    for row in rows:  # how many of the five benchmarks' answers are word for word those of QLN on its own base
        mine = answers[row["name"]]
        row["same"] = 100 * sum(mine[key] == as_trained[key] for key in as_trained) / len(as_trained)
    header = ["stage-2 layernorm adapter", "trained on", "evaluated on", "train s/step", *SCORE_COLUMNS,
              "same answers as QLN on 4-bit %", "eval s (generation)"]
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for row in rows:
        cells = [row["name"], row["trained"], row["evaluated"], f"{row['step_seconds']:.3f}",
                 *("-" if row[c] is None else f"{row[c]:.1f}" for c in SCORE_COLUMNS), f"{row['same']:.1f}",
                 f"{row['eval_seconds']:.1f}"]
        print("| " + " | ".join(cells) + " |")
    print(f"\nstage 1 {budget.stage1_steps} steps, stage 2 {budget.stage2_steps} steps, batch {budget.batch_size}, "
          f"eval limit {budget.eval_limit or 'none'}; {time.monotonic() - started:.0f} s in all; end: {_load()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
