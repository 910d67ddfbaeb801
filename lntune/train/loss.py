"""The training loss computed only where it is needed: the output head and cross-entropy at supervised positions.

A LLaVA-style sample supervises only its answers: a minority of its positions (the image's 576 tokens and the
prompts never are). Computing logits for every position, as `model(...).logits` does, materialises [B, T, V] in
the compute dtype and again in fp32 for the loss, and autograd keeps the log-probabilities for backward: at a
32K vocabulary and 4 x 2048 tokens that is several GB, at 128K four times more, nearly all of it for positions whose
loss is thrown away.

Here the real output head (the model's `lm_head` module itself, so parameter names, tied embeddings and every
distributed wrapper's hooks stay as they are) is given a training forward: it takes the final hidden states
[B, T, H] and returns the per-position losses [N] of the N supervised positions only, with the labels shifted
(position t predicts label t + 1) rather than the logits. Those positions' logits are made chunk by chunk, and
nothing of size V per position is kept for backward: the backward recomputes each chunk's logits from the saved
hidden states and the log-sum-exp ([N] floats). Peak memory of the loss is then one chunk of [C, V], whatever
the sequence length.

Why inside the head module's own forward: FSDP2 and DeepSpeed ZeRO-3 gather a module's sharded parameters around
that module's forward (and again before its backward); a weight read outside it would be a shard or an empty
placeholder. DDP reduces gradients only of what ran inside its wrapped forward, which this does too.

The trainer sets the labels on the head just before each forward:

    loss_head = SupervisedLossHead.install(model)        # once, on the unwrapped model
    loss_head.set_labels(labels)                         # [B, T], -100 where not supervised
    loss_sum = model(**inputs).logits.sum()              # `logits` is now the [N] per-position losses
    loss_head.remove()                                   # at the end: the head is a plain head again
"""

from __future__ import annotations

import types

import torch
from torch import nn

IGNORE_INDEX = -100
# Elements of one chunk's logits: 2**25 is 128 MB in fp32 (for a 32K vocabulary, 1,024 positions per chunk).
CHUNK_ELEMENTS = 2**25


def shift_labels(labels: torch.Tensor) -> torch.Tensor:
    """labels [B, T] -> the target of every position [B, T]: position t predicts labels[:, t + 1]; the last
    position predicts nothing."""
    shifted = torch.full_like(labels, IGNORE_INDEX)
    shifted[:, :-1] = labels[:, 1:]
    return shifted


def _compute_dtype(hidden: torch.Tensor) -> torch.dtype:
    """The dtype the head's matmul runs in: autocast's when it is on (as an nn.Linear under autocast), else the
    hidden states' (FSDP2's and DeepSpeed's bf16 modes cast parameters and inputs themselves)."""
    device = hidden.device.type
    if torch.is_autocast_enabled(device):
        return torch.get_autocast_dtype(device)
    return hidden.dtype


class _ChunkedCrossEntropy(torch.autograd.Function):
    """Per-row cross-entropy of hidden [N, H] through a linear head, made C rows at a time; saves no logits."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, chunk, compute_dtype):
        losses = torch.empty(hidden.shape[0], dtype=torch.float32, device=hidden.device)
        log_norms = torch.empty_like(losses)  # log-sum-exp of each row's logits: all backward needs of them
        with torch.autocast(hidden.device.type, enabled=False):
            w = weight.to(compute_dtype)
            b = bias.to(compute_dtype) if bias is not None else None
            for start in range(0, hidden.shape[0], chunk):
                rows = slice(start, start + chunk)
                logits = nn.functional.linear(hidden[rows].to(compute_dtype), w, b).float()  # [C, V]
                log_norms[rows] = torch.logsumexp(logits, dim=-1)
                losses[rows] = log_norms[rows] - logits.gather(1, targets[rows, None]).squeeze(1)
                del logits
        ctx.save_for_backward(hidden, weight, bias, targets, log_norms)
        ctx.chunk, ctx.compute_dtype = chunk, compute_dtype
        return losses

    @staticmethod
    def backward(ctx, grad_losses):
        hidden, weight, bias, targets, log_norms = ctx.saved_tensors
        chunk, compute_dtype = ctx.chunk, ctx.compute_dtype
        need_hidden, need_weight, need_bias = ctx.needs_input_grad[:3]
        grad_hidden = torch.empty_like(hidden) if need_hidden else None
        # fp32 accumulators over chunks (an nn.Linear's weight gradient under autocast is made in the compute
        # dtype, then added to an fp32 .grad: this is at least as exact)
        grad_weight = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if need_weight else None
        grad_bias = torch.zeros(bias.shape, dtype=torch.float32, device=bias.device) if need_bias else None
        with torch.autocast(hidden.device.type, enabled=False):
            w = weight.to(compute_dtype)
            b = bias.to(compute_dtype) if bias is not None else None
            for start in range(0, hidden.shape[0], chunk):
                rows = slice(start, start + chunk)
                h = hidden[rows].to(compute_dtype)
                # d loss / d logits = softmax - one_hot(target), times each row's incoming gradient
                probabilities = nn.functional.linear(h, w, b).float().sub_(log_norms[rows, None]).exp_()
                probabilities[torch.arange(probabilities.shape[0], device=h.device), targets[rows]] -= 1
                grad_logits = probabilities.mul_(grad_losses[rows, None].float()).to(compute_dtype)  # [C, V]
                del probabilities
                if need_hidden:
                    grad_hidden[rows] = (grad_logits @ w).to(hidden.dtype)
                if need_weight:
                    grad_weight += (grad_logits.t() @ h).float()
                if need_bias:
                    grad_bias += grad_logits.float().sum(0)
        return (grad_hidden, grad_weight.to(weight.dtype) if need_weight else None,
                grad_bias.to(bias.dtype) if need_bias else None, None, None, None)


def supervised_losses(hidden: torch.Tensor, head: nn.Linear, shifted_labels: torch.Tensor,
                      chunk_elements: int = CHUNK_ELEMENTS) -> torch.Tensor:
    """Cross-entropy [N] at the N positions of hidden [B, T, H] whose shifted label is not -100 (row-major order),
    through `head`'s weight and bias, chunk by chunk. Call it inside `head`'s forward (see the module docstring)."""
    mask = shifted_labels != IGNORE_INDEX
    selected = hidden[mask]  # [N, H]: the gather's backward scatters into a [B, T, H] gradient
    targets = shifted_labels[mask]
    vocabulary = head.weight.shape[0]
    chunk = max(1, chunk_elements // vocabulary)
    return _ChunkedCrossEntropy.apply(selected, head.weight, head.bias, targets, chunk, _compute_dtype(hidden))


class SupervisedLossHead:
    """Gives a model's output head (an nn.Linear) the training forward `hidden -> per-position losses` (see the
    module docstring); `remove()` gives the head its own forward back."""

    def __init__(self, head: nn.Linear, chunk_elements: int = CHUNK_ELEMENTS):
        if not isinstance(head, nn.Linear):
            raise TypeError(f"the supervised loss needs a linear output head, not {type(head).__name__}")
        self.head, self.chunk_elements = head, chunk_elements
        self.shifted_labels: torch.Tensor | None = None

    @classmethod
    def install(cls, model: nn.Module, chunk_elements: int = CHUNK_ELEMENTS) -> SupervisedLossHead:
        """On `model`'s output head (a PEFT, DDP or DeepSpeed wrapper around it is looked through)."""
        from lntune.model.parts import unwrap

        inner = getattr(model, "module", model)  # DDP / DeepSpeed engine
        loss_head = cls(unwrap(inner).get_output_embeddings(), chunk_elements)
        head = loss_head.head

        def forward(module, hidden):  # an instance attribute: nn.Module.__call__ and its hooks stay the same
            return loss_head(hidden)

        head.forward = types.MethodType(forward, head)
        return loss_head

    def set_labels(self, labels: torch.Tensor) -> None:
        """The next forward's labels [B, T] (unshifted, as the data gives them)."""
        self.shifted_labels = shift_labels(labels)

    def __call__(self, hidden: torch.Tensor) -> torch.Tensor:
        if self.shifted_labels is None:
            raise RuntimeError("SupervisedLossHead: set_labels(labels) before each forward")
        if self.shifted_labels.shape != hidden.shape[:2]:
            raise RuntimeError(f"SupervisedLossHead: labels {list(self.shifted_labels.shape)} do not match the "
                               f"hidden states {list(hidden.shape[:2])}")
        shifted, self.shifted_labels = self.shifted_labels, None  # one forward per set_labels: no stale labels
        return supervised_losses(hidden, self.head, shifted.to(hidden.device), self.chunk_elements)

    def remove(self) -> None:
        if "forward" in vars(self.head):
            del self.head.forward


def full_logits_loss_sum(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The textbook loss this module replaces, kept as the reference for tests and benchmarks: the sum of next-token
    cross-entropy over supervised positions from full logits [B, T, V] and labels [B, T]."""
    return torch.nn.functional.cross_entropy(
        logits[:, :-1].float().reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1), ignore_index=-100, reduction="sum"
    )
