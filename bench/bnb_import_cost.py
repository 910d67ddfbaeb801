"""Does merely having bitsandbytes installed slow a CPU training run that does not quantize?

The same short `lntune train` (connector, stage 1, the demo's smoke world) runs in fresh processes, alternating
between bitsandbytes importable and hidden, over several rounds (the order flips every round). Hidden: a
sitecustomize on PYTHONPATH puts `sys.modules["bitsandbytes"] = None`, so `import bitsandbytes` fails and
importlib.util.find_spec (how transformers and PEFT probe for it) returns None, exactly as if it were not
installed. In both variants the same sitecustomize records, at exit, whether bitsandbytes was imported.

Printed per variant: median [min, max] over rounds of the process's wall time, its time before the first
optimizer step (imports, loading; wall time minus the steps) and the run's median step time (metrics.jsonl).

  python bench/bnb_import_cost.py --rounds 4 --steps 8
  git archive COMMIT | tar -x -C /tmp/before && python bench/bnb_import_cost.py --before /tmp/before   # + an older tree
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SITECUSTOMIZE = """
import atexit, os, sys
if os.environ.get("BENCH_HIDE_BITSANDBYTES") == "1":
    sys.modules["bitsandbytes"] = None  # import fails; importlib.util.find_spec returns None: "not installed"
def _record():
    with open(os.environ["BENCH_REPORT"], "w") as handle:
        handle.write("1" if sys.modules.get("bitsandbytes") is not None else "0")
atexit.register(_record)
"""
VARIANTS = ("importable", "hidden")  # with --before, also "before importable" (the older tree, bitsandbytes importable)


def _setup(work: Path) -> dict:
    from lntune.demo.backbones_cache import BackboneBudget, prepare_world
    from lntune.demo.pipeline import build_model
    from lntune.demo.run import BUDGETS

    paths = prepare_world(size=BUDGETS["smoke"][0], budget=BackboneBudget(llm_steps=3, vision_steps=3),
                          root=work / "cache", say=lambda message: None)
    return {"model": build_model(paths, work / "model"), "captions": paths["captions"],
            "images": paths["train_images"]}


def _run(variant: str, setup: dict, work: Path, steps: int, tag: str, root: Path) -> dict:
    """One fresh `python -m lntune train` of the tree `root` (run from it: -m imports from the working folder)."""
    site = work / "site"
    report = work / f"report-{tag}"
    out = work / f"run-{tag}"
    env = {**os.environ, "PYTHONPATH": f"{site}{os.pathsep}{root}", "HF_HUB_OFFLINE": "1",
           "BENCH_REPORT": str(report), "BENCH_HIDE_BITSANDBYTES": "1" if variant.endswith("hidden") else "0"}
    command = [sys.executable, "-m", "lntune", "train", "--model", str(setup["model"]), "--data",
               str(setup["captions"]), "--image-folder", str(setup["images"]), "--method", "connector",
               "--stage", "pretrain", "--max-steps", str(steps), "--batch-size", "4", "--save-every", "0",
               "--out", str(out)]
    started = time.perf_counter()
    subprocess.run(command, env=env, check=True, capture_output=True, cwd=root)
    wall = time.perf_counter() - started
    step_times = [json.loads(line)["step_seconds"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    return {"wall": wall, "before_steps": wall - sum(step_times), "step": statistics.median(step_times),
            "bitsandbytes_imported": report.read_text() == "1"}


def _summary(values: list[float]) -> str:
    return f"{statistics.median(values):7.3f} [{min(values):.3f}, {max(values):.3f}]"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--before", type=Path,
                        help="also run an older lntune tree (e.g. `git archive COMMIT | tar -x -C DIR`) with "
                             "bitsandbytes importable: the variant `before importable`")
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    with tempfile.TemporaryDirectory(prefix="bnb_import_cost_") as folder:
        work = Path(folder)
        (work / "site").mkdir()
        (work / "site" / "sitecustomize.py").write_text(SITECUSTOMIZE)
        setup = _setup(work)
        print(f"start: {subprocess.run(['uptime'], capture_output=True, text=True).stdout.strip()}", flush=True)
        variants = VARIANTS + (("before importable",) if args.before else ())
        roots = {variant: args.before if variant.startswith("before") else ROOT for variant in variants}
        results = {variant: [] for variant in variants}
        for round_number in range(args.rounds):
            order = variants if round_number % 2 == 0 else variants[::-1]
            for variant in order:
                result = _run(variant, setup, work, args.steps, f"{round_number}-{variant.replace(' ', '-')}",
                              roots[variant])
                results[variant].append(result)
                print(f"round {round_number + 1} {variant:<17} wall {result['wall']:.2f} s, before steps "
                      f"{result['before_steps']:.2f} s, median step {result['step']:.4f} s, bitsandbytes imported: "
                      f"{result['bitsandbytes_imported']}", flush=True)
        print(f"\n{args.steps} connector steps, batch 4, {args.rounds} rounds; median [min, max] in seconds"
              + (f"; before = {args.before}" if args.before else ""))
        print(f"{'bitsandbytes':<18} {'process wall':>24} {'before first step':>24} {'median step':>24}  imported")
        for variant in variants:
            rows = results[variant]
            imported = sorted({str(r["bitsandbytes_imported"]) for r in rows})
            print(f"{variant:<18} {_summary([r['wall'] for r in rows]):>24} "
                  f"{_summary([r['before_steps'] for r in rows]):>24} {_summary([r['step'] for r in rows]):>24}  "
                  f"{'/'.join(imported)}")
        print(f"end: {subprocess.run(['uptime'], capture_output=True, text=True).stdout.strip()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
