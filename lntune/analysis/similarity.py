"""Layer representation similarity (the paper's expressive-power analysis).

The paper does not publish its recipe; lntune's, stated plainly: for a fixed, seeded set of
multimodal samples (tokenised exactly as in training), take each decoder layer's output hidden states,
mean-pool them over the sample's tokens (all, image or text tokens), and compute the cosine similarity
between every pair of layers; average the matrices over samples. The paper's number is the mean over
off-diagonal pairs: lower means the layers do more distinct work.
"""

from __future__ import annotations

import torch


@torch.no_grad()
def layer_similarity(model, batches, image_token_id: int, tokens: str = "all") -> torch.Tensor:
    """Mean over samples of the [L, L] cosine-similarity matrix of mean-pooled layer outputs."""
    from lntune.model.parts import locate_parts

    # Block outputs are captured with hooks: transformers' `hidden_states` applies the final norm to the last
    # entry, which would make the last layer look unlike the others for a reason that is not the layer's work.
    captured: list[torch.Tensor] = []
    hooks = [block.module.register_forward_hook(
        lambda module, inputs, output: captured.append(output[0] if isinstance(output, tuple) else output))
        for block in locate_parts(model).blocks]
    total, count = None, 0
    model.eval()
    try:
        for batch in batches:
            captured.clear()
            model(**batch, use_cache=False)
            hidden = torch.stack(captured, dim=1).float()  # [B, L, T, D]: each decoder layer's output
            total, count = _accumulate(hidden, batch, image_token_id, tokens, total, count)
    finally:
        for hook in hooks:
            hook.remove()
    if not count:
        from lntune.errors import LntuneError

        raise LntuneError(f"no sample had {tokens} tokens to pool")
    return total / count


def _accumulate(hidden, batch, image_token_id, tokens, total, count):
    """Add one batch's per-sample [L, L] matrices to the running sum."""
    mask = batch["attention_mask"].bool()  # [B, T]
    if tokens == "image":
        mask &= batch["input_ids"] == image_token_id
    elif tokens == "text":
        mask &= batch["input_ids"] != image_token_id
    weights = mask[:, None, :, None].float()
    pooled = (hidden * weights).sum(2) / weights.sum(2).clamp(min=1)  # [B, L, D]
    unit = torch.nn.functional.normalize(pooled, dim=-1)
    matrices = unit @ unit.transpose(1, 2)  # [B, L, L]
    keep = mask.any(dim=1)  # samples with no token of the chosen kind contribute nothing
    matrices = matrices[keep]
    total = matrices.sum(0) if total is None else total + matrices.sum(0)
    return total, count + int(keep.sum())


def off_diagonal_mean(matrix: torch.Tensor) -> float:
    size = matrix.shape[0]
    return float((matrix.sum() - matrix.diagonal().sum()) / (size * size - size))
