"""Which samples each process sees at each step: per epoch, a seeded arrangement of the data into global batches.

Step s of a run always uses the same global batch, whatever the number of processes and wherever the run was
resumed. A global batch is an ordered list of `global_batch` samples cut into `batch_size` slots; at accumulation
step `micro`, rank r takes slot `micro x world_size + r`. So the arrangement depends only on the seed, the data and
the global batch size: a 2-process run equals a 1-process run with the same global batch (and, because the loss
is normalised over the whole global batch's tokens, the same gradient however the batch is split), and a resumed
run equals an uninterrupted one.

Two arrangements per epoch (the epoch's seed is `seed x 1,000,003 + epoch`):
- plain: a random permutation of all samples, cut into global batches;
- group_by_modality_length (LLaVA's option): image samples and text-only samples are shuffled apart and cut into
  global batches of one modality; what is left of each modality (fewer than a global batch each) is pooled, and if
  the pool fills a global batch, a random global batch of it becomes the one mixed batch, placed first (as LLaVA
  places its); the batches are shuffled; inside each, samples are sorted images first, then longest first, so that
  a micro-batch holds one modality and samples of similar length (less padding), and the ranks of one micro-step
  get neighbouring slots (similar work).
Either way an epoch has `samples // global_batch` steps; the samples that do not fill a global batch are left out
of that epoch (a different random remainder each epoch).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from lntune.errors import LntuneError


def resolve_grad_accum(batch_size: int, world_size: int, global_batch_size: int | None,
                       grad_accum: int | None) -> int:
    """Micro-steps per optimizer step: grad_accum as given (default 1), or global_batch_size / (batch_size x
    world_size) when a global batch size is set. Raises LntuneError when that does not divide, or contradicts an
    explicit grad_accum."""
    if global_batch_size is None:
        return grad_accum if grad_accum is not None else 1
    processes = f"{world_size} process{'es' if world_size != 1 else ''}"
    per_micro_step = batch_size * world_size
    if global_batch_size % per_micro_step:
        lower = global_batch_size // per_micro_step * per_micro_step
        options = [str(value) for value in (lower, lower + per_micro_step) if value > 0]
        advice = f"use a global batch size that is a multiple of {per_micro_step} ({' or '.join(options)})"
        if global_batch_size % world_size == 0:
            per_process = global_batch_size // world_size
            fitting = max(size for size in range(1, batch_size + 1) if per_process % size == 0)
            advice += f", or a batch size that divides {per_process} (e.g. {fitting})"
        raise LntuneError(
            f"global batch size {global_batch_size} is not divisible by batch_size {batch_size} x {processes} "
            f"= {per_micro_step} samples per micro-step; {advice}"
        )
    derived = global_batch_size // per_micro_step
    if grad_accum is not None and grad_accum != derived:
        raise LntuneError(
            f"grad_accum {grad_accum} contradicts global batch size {global_batch_size}: with batch_size {batch_size} "
            f"x {processes}, it needs grad_accum {derived}; leave grad_accum unset (it is derived from the global "
            f"batch size) or drop the global batch size"
        )
    return derived


class StepBatchSampler:
    def __init__(self, dataset_size: int, batch_size: int, grad_accum: int, world_size: int, rank: int,
                 seed: int, total_steps: int, start_step: int = 0, has_image: Sequence[bool] | None = None,
                 lengths: Sequence[int] | None = None):
        """`has_image` and `lengths` (one per sample, e.g. Mixture.modality_lengths()) switch on grouping by
        modality and length; without them the order is a plain permutation."""
        self.dataset_size = dataset_size
        self.batch_size = batch_size
        self.grad_accum = grad_accum
        self.world_size = world_size
        self.rank = rank
        self.seed = seed
        self.total_steps = total_steps
        self.start_step = start_step
        self.global_batch = batch_size * grad_accum * world_size
        self.steps_per_epoch = dataset_size // self.global_batch
        if self.steps_per_epoch == 0:
            raise LntuneError(
                f"the data has {dataset_size} samples, fewer than one global batch of {self.global_batch} "
                f"(batch_size {batch_size} x grad_accum {grad_accum} x {world_size} processes)"
            )
        self.grouped = has_image is not None
        if self.grouped:
            if lengths is None or len(has_image) != dataset_size or len(lengths) != dataset_size:
                raise ValueError("grouping needs has_image and lengths for every sample")
            image = torch.tensor([bool(flag) for flag in has_image], dtype=torch.bool)
            length = torch.tensor(list(lengths), dtype=torch.long).clamp(min=0)
            self._modalities = (torch.nonzero(image).flatten(), torch.nonzero(~image).flatten())
            # One descending sort puts image samples first, then longer before shorter.
            self._sort_key = image.long() * (int(length.max()) + 1) + length
        self._cached_epoch, self._cached_arrangement = None, None

    def order(self, epoch: int) -> torch.Tensor:
        """The plain arrangement: a permutation of all samples."""
        return torch.randperm(self.dataset_size, generator=self._generator(epoch))

    def _generator(self, epoch: int) -> torch.Generator:
        return torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)

    def _grouped_batches(self, epoch: int) -> torch.Tensor:
        """[steps_per_epoch, global_batch] sample indices, grouped by modality and sorted by length."""
        generator = self._generator(epoch)
        size = self.global_batch
        full, leftovers = [], []
        for indices in self._modalities:  # image samples, then text-only samples
            shuffled = indices[torch.randperm(len(indices), generator=generator)]
            cut = len(shuffled) // size * size
            full.append(shuffled[:cut].view(-1, size))
            leftovers.append(shuffled[cut:])
        batches = torch.cat(full)
        batches = batches[torch.randperm(len(batches), generator=generator)]
        pool = torch.cat(leftovers)
        if len(pool) >= size:  # fewer than 2 global batches: at most one mixed batch per epoch
            mixed = pool[torch.randperm(len(pool), generator=generator)[:size]]
            batches = torch.cat([mixed.unsqueeze(0), batches])
        order = torch.sort(self._sort_key[batches], dim=1, descending=True, stable=True).indices
        return torch.gather(batches, 1, order)

    def global_batch_indices(self, step: int) -> list[int]:
        """The samples of optimizer step `step`, in slot order (the same for any world size)."""
        epoch, position = divmod(step, self.steps_per_epoch)
        if self._cached_epoch != epoch:  # one arrangement per epoch, not per step
            arrangement = self._grouped_batches(epoch) if self.grouped else self.order(epoch)
            self._cached_epoch, self._cached_arrangement = epoch, arrangement
        if self.grouped:
            return self._cached_arrangement[position].tolist()
        start = position * self.global_batch
        return self._cached_arrangement[start : start + self.global_batch].tolist()

    def micro_batches(self, step: int) -> list[list[int]]:
        """This rank's grad_accum micro-batches for optimizer step `step`."""
        batch = self.global_batch_indices(step)
        batches = []
        for micro in range(self.grad_accum):
            start = (micro * self.world_size + self.rank) * self.batch_size
            batches.append(batch[start : start + self.batch_size])
        return batches

    def __iter__(self):
        for step in range(self.start_step, self.total_steps):
            yield from self.micro_batches(step)

    def __len__(self) -> int:
        return (self.total_steps - self.start_step) * self.grad_accum
