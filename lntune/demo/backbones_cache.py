"""The tiny world and its pretrained backbones, built once per (version, seed, size) and cached.

A cache entry is complete only when its `complete.json` exists (written last), so an interrupted
build is redone, never half-used. `--rebuild` removes the entry first.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from lntune.demo.files import WorldSize, write_world

CACHE_VERSION = "tiny-world-v4"


@dataclass(frozen=True)
class BackboneBudget:
    llm_steps: int = 1000
    vision_steps: int = 300


def cache_root() -> Path:
    return Path(os.environ.get("LNTUNE_CACHE", Path.home() / ".cache" / "lntune"))


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def prepare_world(seed: int = 0, size: WorldSize = WorldSize(), budget: BackboneBudget = BackboneBudget(),
                  rebuild: bool = False, root: Path | None = None, say=_say) -> dict[str, Path]:
    """World files + tiny pretrained LLM and vision encoder; cached under `root` (default: the lntune cache)."""
    from tqdm.auto import tqdm

    from lntune.demo.pretrain import pretrain_llm, pretrain_vision

    key = f"{CACHE_VERSION}-seed{seed}-{size.train_scenes}-{size.text_scenes}-{size.eval_images}-{budget.llm_steps}-{budget.vision_steps}"
    entry = (root or cache_root()) / key
    marker = entry / "complete.json"
    if rebuild:
        shutil.rmtree(entry, ignore_errors=True)
    if marker.is_file():
        say(f"tiny world and backbones: cached in {entry}")
        return {name: Path(path) for name, path in json.loads(marker.read_text())["paths"].items()}
    shutil.rmtree(entry, ignore_errors=True)
    started = time.monotonic()
    say(f"writing the tiny world to {entry}")
    paths = write_world(entry / "world", seed, size)
    with tqdm(total=budget.vision_steps, desc="pretrain vision encoder", unit="step", dynamic_ncols=True) as bar:
        paths["vision"] = pretrain_vision(entry / "backbones" / "vision", steps=budget.vision_steps, seed=seed,
                                          progress=lambda step, loss: (bar.update(1), bar.set_postfix(loss=f"{loss:.3f}")))
    with tqdm(total=budget.llm_steps, desc="pretrain LLM on text", unit="step", dynamic_ncols=True) as bar:
        paths["llm"] = pretrain_llm(paths["text_corpus"], entry / "backbones" / "llm", steps=budget.llm_steps, seed=seed,
                                    progress=lambda step, loss: (bar.update(1), bar.set_postfix(loss=f"{loss:.3f}")))
    marker.write_text(json.dumps({"paths": {name: str(path) for name, path in paths.items()}, "size": asdict(size),
                                  "budget": asdict(budget), "seconds": time.monotonic() - started}, indent=2))
    say(f"tiny world and backbones built in {time.monotonic() - started:.0f}s")
    return paths
