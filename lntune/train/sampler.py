"""Which samples each process sees at each step: a seeded permutation per epoch, cut into global batches.

Step s of a run always uses the same global batch, whatever the number of processes and wherever the
run was resumed: rank r takes micro-batch slice r of each accumulation step. That is what makes a
2-process run equal a 1-process run with the same global batch, and a resumed run equal an
uninterrupted one.
"""

from __future__ import annotations

import torch

from lntune.errors import LntuneError


class StepBatchSampler:
    def __init__(self, dataset_size: int, batch_size: int, grad_accum: int, world_size: int, rank: int,
                 seed: int, total_steps: int, start_step: int = 0):
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

    def order(self, epoch: int) -> torch.Tensor:
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        return torch.randperm(self.dataset_size, generator=generator)

    def micro_batches(self, step: int) -> list[list[int]]:
        """This rank's grad_accum micro-batches for optimizer step `step`."""
        epoch, position = divmod(step, self.steps_per_epoch)
        order = self.order(epoch)
        base = position * self.global_batch
        batches = []
        for micro in range(self.grad_accum):
            start = base + (micro * self.world_size + self.rank) * self.batch_size
            batches.append(order[start : start + self.batch_size].tolist())
        return batches

    def __iter__(self):
        for step in range(self.start_step, self.total_steps):
            yield from self.micro_batches(step)

    def __len__(self) -> int:
        return (self.total_steps - self.start_step) * self.grad_accum
