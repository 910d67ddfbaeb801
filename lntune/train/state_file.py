"""Nested state (optimizer, schedule, RNG) as one safetensors file: no pickle, so loading runs no code.

A state dict is a tree of dicts, lists, tuples, numbers, strings, None and tensors. The tensors go into the
safetensors body; the tree goes into its metadata as JSON, each tensor replaced by {"tensor": key}. Tuples and dicts
(whose keys may be ints: torch optimizers key their state by parameter index) are tagged, so the tree comes back
with the same types and `load_state_dict` sees what `state_dict` gave.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from lntune.errors import LntuneError

_METADATA_KEY = "lntune_state"


def _encode(value, tensors: dict[str, torch.Tensor]):
    if isinstance(value, torch.Tensor):
        key = str(len(tensors))
        tensors[key] = value.detach().to("cpu").contiguous().clone()  # safetensors refuses shared storage
        return {"tensor": key}
    if isinstance(value, dict):
        return {"dict": [[_encode(key, tensors), _encode(item, tensors)] for key, item in value.items()]}
    if isinstance(value, tuple):
        return {"tuple": [_encode(item, tensors) for item in value]}
    if isinstance(value, list):
        return [_encode(item, tensors) for item in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(f"a checkpoint stores tensors and plain values only, not {type(value).__name__}")


def _decode(value, tensors):
    if isinstance(value, list):
        return [_decode(item, tensors) for item in value]
    if isinstance(value, dict):
        (tag, content), = value.items()
        if tag == "tensor":
            return tensors[content]
        if tag == "tuple":
            return tuple(_decode(item, tensors) for item in content)
        return {_decode(key, tensors): _decode(item, tensors) for key, item in content}
    return value


def save_state(state, path: Path) -> None:
    from safetensors.torch import save_file

    tensors: dict[str, torch.Tensor] = {}
    tree = _encode(state, tensors)
    save_file(tensors, str(path), metadata={_METADATA_KEY: json.dumps(tree)})


def load_state(path: Path):
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata() or {}
        if _METADATA_KEY not in metadata:
            raise LntuneError(f"{path} is a safetensors file but not lntune's saved state (no {_METADATA_KEY} metadata)")
        tree = json.loads(metadata[_METADATA_KEY])
        tensors = {key: handle.get_tensor(key) for key in handle.keys()}
    return _decode(tree, tensors)
