"""The tiny world and its pretrained backbones, built once per (version, seed, size, budget) and cached.

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
from lntune.errors import LntuneError, unknown_key_error

CACHE_VERSION = "tiny-world-v4"
# The LLM shape of every cache key written before the shape was a setting: keys of this shape keep their old form,
# so users' caches stay valid; any other shape adds it to the key (a 4-block LLM is never served for 8 blocks).
KEYLESS_LLM_SHAPE = (4, 128)
LLM_HEADS = 4  # attention heads of the tiny LLM: its hidden size must divide by them


@dataclass(frozen=True)
class BackboneBudget:
    """The tiny world's backbones: their pretraining steps and the LLM's shape (a compare config's `backbones:`)."""

    llm_steps: int = 1000
    """LLM pretraining steps on the text corpus."""
    vision_steps: int = 300
    """Vision-encoder pretraining steps."""
    llm_layers: int = 4
    """The LLM's decoder blocks; the layer-similarity analysis compares every pair of them."""
    llm_hidden_size: int = 128
    """The LLM's width (its MLP is 3x that); a multiple of its 4 attention heads."""

    def __post_init__(self):
        for name in ("llm_steps", "vision_steps", "llm_layers", "llm_hidden_size"):
            value = getattr(self, name)
            if value < 1:
                raise LntuneError(f"backbones.{name} must be >= 1, got {value}")
        if self.llm_hidden_size % LLM_HEADS:
            raise LntuneError(f"backbones.llm_hidden_size must be a multiple of the LLM's {LLM_HEADS} attention "
                              f"heads, got {self.llm_hidden_size}")


# Named backbone settings: `backbones: {preset: deep}` in a compare config, `lntune demo --backbones deep`.
# deep: for the layer-similarity analysis (4 blocks give only 6 pairs of layers, 8 give 28): twice the blocks at
# three-quarters the width, so about the default LLM's parameters and compute per token (0.96M vs 0.85M in the
# blocks): depth is what changes. The default's 1,000 steps: 500 left it unable to read colours from its context
# (bench/grounding_probe.py; docs/benchmarks.md, "Layer similarity on the deep world").
BACKBONE_PRESETS = {
    "default": BackboneBudget(),
    "deep": BackboneBudget(llm_layers=8, llm_hidden_size=96),
}


def backbone_settings(block: dict, source: str) -> dict:
    """A `backbones:` mapping with its `preset` (if any) expanded: the preset's values, then the block's own keys."""
    if not isinstance(block, dict) or "preset" not in block:
        return block
    settings = dict(block)
    name = settings.pop("preset")
    if name not in BACKBONE_PRESETS:
        raise LntuneError(f"{source}: backbones.preset: {unknown_key_error('backbones preset', name, BACKBONE_PRESETS)}")
    return {**asdict(BACKBONE_PRESETS[name]), **settings}


def cache_key(seed: int, size: WorldSize, budget: BackboneBudget) -> str:
    """The cache entry's folder name: everything the world's files and backbones depend on."""
    key = (f"{CACHE_VERSION}-seed{seed}-{size.train_scenes}-{size.text_scenes}-{size.eval_images}"
           f"-{budget.llm_steps}-{budget.vision_steps}")
    if (budget.llm_layers, budget.llm_hidden_size) != KEYLESS_LLM_SHAPE:
        key += f"-llm{budget.llm_layers}x{budget.llm_hidden_size}"
    return key


def cache_root() -> Path:
    return Path(os.environ.get("LNTUNE_CACHE", Path.home() / ".cache" / "lntune"))


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def prepare_world(seed: int = 0, size: WorldSize = WorldSize(), budget: BackboneBudget = BackboneBudget(),
                  rebuild: bool = False, root: Path | None = None, say=_say) -> dict[str, Path]:
    """World files + tiny pretrained LLM and vision encoder; cached under `root` (default: the lntune cache)."""
    from tqdm.auto import tqdm

    from lntune.demo.pretrain import pretrain_llm, pretrain_vision

    entry = (root or cache_root()) / cache_key(seed, size, budget)
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
    llm_losses = []  # the LLM's loss per step: its last 50 say how well it learned (written to complete.json)
    llm_started = time.monotonic()
    with tqdm(total=budget.llm_steps, desc=f"pretrain LLM ({budget.llm_layers} blocks) on text", unit="step",
              dynamic_ncols=True) as bar:
        paths["llm"] = pretrain_llm(paths["text_corpus"], entry / "backbones" / "llm", steps=budget.llm_steps, seed=seed,
                                    hidden_size=budget.llm_hidden_size, layers=budget.llm_layers,
                                    progress=lambda step, loss: (llm_losses.append(loss), bar.update(1),
                                                                 bar.set_postfix(loss=f"{loss:.3f}")))
    tail = llm_losses[-50:]
    llm_loss = sum(tail) / len(tail)
    marker.write_text(json.dumps({"paths": {name: str(path) for name, path in paths.items()}, "size": asdict(size),
                                  "budget": asdict(budget), "llm_final_loss": llm_loss,
                                  "llm_seconds": time.monotonic() - llm_started,
                                  "seconds": time.monotonic() - started}, indent=2))
    say(f"tiny world and backbones built in {time.monotonic() - started:.0f}s "
        f"(LLM loss, mean of its last {len(tail)} steps: {llm_loss:.3f})")
    return paths
