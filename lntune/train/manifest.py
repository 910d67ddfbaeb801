"""Checkpoints that prove themselves: manifest.json lists every file of a checkpoint with its size and sha256.

It is written last (temporary file, fsync, rename), after every file it lists has been fsynced, so a checkpoint
with a manifest that matches its files is complete and unchanged. `problem(directory)` says what is wrong with a
checkpoint (None: intact): no manifest, a file missing, added, of another size or checksum, unreadable, or not
what its name says (a safetensors file that is not one, a DeepSpeed .pt file holding Python objects other than the
few DeepSpeed classes it needs: loading such a pickle could run code).
"""

from __future__ import annotations

import hashlib
import importlib
import json
import os
import pickle
import zipfile
from pathlib import Path

MANIFEST = "manifest.json"
FORMAT = 1
# What DeepSpeed's optimizer-state files hold besides tensors and plain containers (ZeRO-2 and ZeRO-3). Loading
# allows these classes and nothing else (lntune.train.checkpoint), so the check refuses any other.
DEEPSPEED_CLASSES = (
    "deepspeed.runtime.fp16.loss_scaler.LossScaler",
    "deepspeed.runtime.fp16.loss_scaler.DynamicLossScaler",
    "deepspeed.runtime.zero.config.ZeroStageEnum",
    "deepspeed.utils.tensor_fragment.fragment_address",
)
_CHUNK = 1 << 20


def _files(directory: Path) -> list[str]:
    return sorted(path.relative_to(directory).as_posix() for path in directory.rglob("*")
                  if path.is_file() and path.name != MANIFEST)


def _sha256(path: Path, sync: bool = False) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
        if sync:
            os.fsync(handle.fileno())  # on disk before the manifest vouches for it
    return digest.hexdigest()


def fsync_directory(directory: Path) -> None:
    """Make a rename inside `directory` durable."""
    descriptor = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def write_manifest(directory: Path) -> None:
    """List (and fsync) every file under `directory`, then write manifest.json atomically. Call after all files
    are written (every process's)."""
    files = {name: {"size": (directory / name).stat().st_size, "sha256": _sha256(directory / name, sync=True)}
             for name in _files(directory)}
    # Not lntune.files.write_text_atomic: the manifest vouches for the checkpoint, so it (and the folder's entry) is
    # fsync'ed to the disk before and after the rename, not only renamed.
    temporary = directory / f".{MANIFEST}.tmp"
    with temporary.open("w") as handle:
        json.dump({"format": FORMAT, "files": files}, handle, indent=1)
        handle.flush()
        os.fsync(handle.fileno())
    temporary.rename(directory / MANIFEST)
    fsync_directory(directory)


def _content_problem(path: Path, name: str) -> str | None:
    """A file that matches the manifest but is not what lntune may load."""
    if name.endswith(".safetensors"):
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="pt"):
                pass
        except Exception as error:  # safetensors raises its own error types for a bad header
            return f"{name} is not a safetensors file ({_first_line(error)})"
    elif name.endswith(".json"):
        try:
            json.loads(path.read_text())
        except (ValueError, UnicodeDecodeError) as error:
            return f"{name} is not valid JSON ({error})"
    elif name.endswith(".pt"):
        import torch

        try:
            if zipfile.is_zipfile(path):  # torch's format: its pickle can be scanned without loading the tensors
                unsafe = set(torch.serialization.get_unsafe_globals_in_checkpoint(str(path))) - set(DEEPSPEED_CLASSES)
                if unsafe:
                    return f"{name} holds Python objects that loading would run ({', '.join(sorted(unsafe))})"
            else:  # torch's legacy format (DeepSpeed's checkpoint_serialization false): a tensors-only load runs no code
                with torch.serialization.safe_globals(deepspeed_classes()):
                    torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError:
            return f"{name} holds Python objects that loading would run"
        except Exception as error:  # not a torch file at all
            return f"{name} is not a readable torch file ({_first_line(error)})"
    return None


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def deepspeed_classes() -> list[type]:
    """DEEPSPEED_CLASSES, imported (a class that this DeepSpeed version lacks cannot be in the files it wrote)."""
    classes = []
    for name in DEEPSPEED_CLASSES:
        module, _, attribute = name.rpartition(".")
        try:
            classes.append(getattr(importlib.import_module(module), attribute))
        except (ImportError, AttributeError):
            continue
    return classes


def problem(directory: Path) -> str | None:
    """Why `directory` is not an intact checkpoint, in a few words; None if it is."""
    manifest_path = directory / MANIFEST
    if not manifest_path.is_file():
        return f"no {MANIFEST} (its save did not finish, or an older lntune wrote it)"
    try:
        listed = json.loads(manifest_path.read_text())["files"]
        present = _files(directory)
    except (OSError, ValueError, KeyError, TypeError) as error:
        return f"{MANIFEST} unreadable ({error})"
    missing = sorted(set(listed) - set(present))
    if missing:
        return f"missing {', '.join(missing)}"
    extra = sorted(set(present) - set(listed))
    if extra:
        return f"{', '.join(extra)} not in its {MANIFEST}"
    for name in present:
        path = directory / name
        try:
            size = path.stat().st_size
            if size != listed[name]["size"]:
                return f"{name} has {size} bytes, its {MANIFEST} says {listed[name]['size']}"
            if _sha256(path) != listed[name]["sha256"]:
                return f"{name} differs from its {MANIFEST} (sha256)"
        except OSError as error:
            return f"{name} unreadable ({error.strerror or error})"
        except (KeyError, TypeError) as error:
            return f"{MANIFEST} unreadable (entry {name}: {error})"
        reason = _content_problem(path, name)
        if reason:
            return reason
    return None
