"""Joining a running batch: the KV cache and attention mask of newly prefilled sequences appended to those of the
sequences already decoding, so the newcomers share the next forward step instead of waiting for the batch to end.

Both parts are left-padded to the longer of their lengths (zero keys and values under a zero mask: padding the
attention never reads) and concatenated along the batch. Each sequence keeps its own position ids (the decoder
counts them per row), so where its cache entries sit does not change what it computes. Only caches whose every
layer is a plain DynamicLayer can be joined; a sliding-window layer (Gemma2, Mistral's window) keeps only its
last window of tokens per batch, so its sequences wait for the next batch instead.
"""

from __future__ import annotations

import torch
from transformers.cache_utils import DynamicLayer


def joinable(cache) -> bool:
    return all(type(layer) is DynamicLayer for layer in cache.layers)


def _left_pad(tensor: torch.Tensor, length: int, dim: int) -> torch.Tensor:
    missing = length - tensor.shape[dim]
    if missing == 0:
        return tensor
    shape = list(tensor.shape)
    shape[dim] = missing
    return torch.cat([tensor.new_zeros(shape), tensor], dim=dim)


def join(cache, attention_mask: torch.Tensor, other, other_mask: torch.Tensor) -> torch.Tensor:
    """Append `other`'s rows (cache layers [b, H, t, D], mask [b, t]) to `cache`'s ([B, H, T, D], mask [B, T]) in
    place; returns the joined mask [B + b, max(T, t)]."""
    length = max(attention_mask.shape[1], other_mask.shape[1])
    for layer, extra in zip(cache.layers, other.layers):
        if not (layer.is_initialized and extra.is_initialized):
            raise RuntimeError("a cache layer holds nothing: the caches cannot be joined")
        layer.keys = torch.cat([_left_pad(layer.keys, length, 2), _left_pad(extra.keys, length, 2)])
        layer.values = torch.cat([_left_pad(layer.values, length, 2), _left_pad(extra.values, length, 2)])
    return torch.cat([_left_pad(attention_mask, length, 1), _left_pad(other_mask, length, 1)])
