"""The run directory before training: inputs checked before --out is touched, and the choice between starting
afresh and continuing (--resume), including the one case where a start may clear files (an unstarted run)."""

from __future__ import annotations

import shutil
from pathlib import Path

import yaml

from lntune.config import RunConfig, config_to_dict
from lntune.errors import LntuneError
from lntune.files import read_yaml, write_text_atomic
from lntune.model.load import check_model_dir
from lntune.train.checkpoint import checkpoint_dirs


def check_inputs(config: RunConfig, mixture) -> None:
    """Everything about the inputs that can be checked without loading them, before --out is touched: a mistake
    then costs nothing, and the corrected command starts in the same --out. (The data files were read already.)"""
    check_model_dir(config.model)
    folder = config.data.image_folder
    if folder is not None and not Path(folder).expanduser().is_dir():
        problem = "is not a folder" if Path(folder).expanduser().exists() else "does not exist"
        raise LntuneError(f"image folder {folder} {problem} (--image-folder)")
    with_images = len(mixture) - mixture.text_only()
    if with_images and folder is None:
        raise LntuneError(f"{with_images} of the selected samples have an image, but no image folder was given "
                          "(--image-folder)")
    out = Path(config.out)
    if out.exists() and not out.is_dir():
        raise LntuneError(f"--out {out} is a file; give a directory for the run")


# What a start writes into a run directory before its first logged step. A directory holding only these, with the
# logs empty and no checkpoint, is an unstarted run (a start that failed before training got anywhere): a new
# start may clear it, and nothing else in a run directory is ever removed.
_START_FILES = ("config.yaml", "metrics.jsonl", "grad_stats.jsonl", "tensorboard", "checkpoints")


def _unstarted(out: Path) -> bool:
    names = {path.name for path in out.iterdir()}
    if "config.yaml" not in names or not names <= set(_START_FILES) or checkpoint_dirs(out):
        return False
    return all(not (out / name).is_file() or (out / name).stat().st_size == 0
               for name in ("metrics.jsonl", "grad_stats.jsonl"))


def plan_run_dir(config: RunConfig, resume: bool) -> bool:
    """Start afresh (True) or continue (False), from the run directory as it is. Reads only: every process
    runs it before the main process writes anything."""
    out = Path(config.out)
    saved = out / "config.yaml"
    unstarted = out.is_dir() and _unstarted(out)
    if resume:
        if not saved.is_file():
            raise LntuneError(f"--resume: {out} is not a run directory (no config.yaml)")
        if unstarted:
            return True  # nothing was trained there: start afresh, with this command's configuration
        previous = read_yaml(saved, "it is the run's record; restore it, or start the run again in another --out")
        differing = sorted(key for key in _diff(previous, config_to_dict(config)) if key != "out")  # a run dir may be moved
        if differing:
            raise LntuneError(f"--resume: the configuration differs from {saved} at {', '.join(differing)}")
        return False  # continue: the checkpoint is chosen (and verified) by select_checkpoint
    if out.exists() and any(out.iterdir()) and not unstarted:
        raise LntuneError(f"run directory {out} already exists; pass --resume to continue it, or choose another --out")
    return True


def start_run_dir(config: RunConfig, say) -> None:
    """Main process: the run directory, emptied of an unstarted run's files, with this run's config.yaml."""
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    if (out / "config.yaml").exists():
        say(f"{out} holds a run that never logged a step; starting it afresh")
    for name in _START_FILES:
        path = out / name
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()
    write_text_atomic(out / "config.yaml", yaml.safe_dump(config_to_dict(config), sort_keys=False))


def _diff(a, b, prefix=""):
    if isinstance(a, dict) and isinstance(b, dict):
        for key in set(a) | set(b):
            yield from _diff(a.get(key), b.get(key), f"{prefix}{key}.")
    elif a != b:
        yield prefix.rstrip(".")
