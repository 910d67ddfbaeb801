"""RowSelection: which adapter each sequence (and each image) of the running forward pass uses.

The decoder sets it around every forward pass; the banked norms and the grouped modules read it. Row 0 is the base
model; an adapter's row is its slot in the banks (lntune.serve.adapters). Rows are tensors on the model's device:
`sequence_rows` [B] (one per sequence of the batch), `image_rows` [N] (one per image, the row of its sequence).
"""

from __future__ import annotations

import contextlib

import torch

BASE_ROW = 0


class RowSelection:
    def __init__(self):
        self.sequence_rows: torch.Tensor | None = None
        self.image_rows: torch.Tensor | None = None

    def rows(self, kind: str) -> torch.Tensor | None:
        return self.sequence_rows if kind == "sequence" else self.image_rows

    @contextlib.contextmanager
    def use(self, sequence_rows: torch.Tensor | None, image_rows: torch.Tensor | None = None):
        """Rows for the forward passes inside the block. All-base rows are stored as None: the plain module runs."""
        previous = self.sequence_rows, self.image_rows
        self.sequence_rows = None if sequence_rows is None or not bool(sequence_rows.any()) else sequence_rows
        self.image_rows = None if image_rows is None or not bool(image_rows.any()) else image_rows
        try:
            yield
        finally:
            self.sequence_rows, self.image_rows = previous
