"""GroupedModule: a module some adapters replace the tensors of (connector, embeddings, output head, ...), serving
a batch that mixes adapters in one forward pass.

The rows of its input (sequences for modules of the language model, images for the connector) are grouped by
adapter; each group runs the module with its adapter's tensors through torch.func.functional_call (the module's own
forward, the adapter's tensors swapped in for the call: no copy of the module), and the outputs are put back in row
order. A batch of one adapter is one call. Base rows run the module as it is.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.func import functional_call

from lntune.serve.rows import BASE_ROW, RowSelection

ROW_KINDS = ("sequence", "image")


class GroupedModule(nn.Module):
    def __init__(self, module: nn.Module, kind: str, selection: RowSelection):
        super().__init__()
        if kind not in ROW_KINDS:
            raise ValueError(f"row kind {kind!r}; valid: {ROW_KINDS}")
        self.module = module
        self.kind = kind
        self.selection = selection
        self.overrides: dict[int, dict[str, torch.Tensor]] = {}
        """bank row -> {parameter name inside the module: the adapter's tensor}."""

    def __getattr__(self, name: str):
        # Callers read attributes of the wrapped module (embed_tokens.weight, lm_head.weight, linear.in_features).
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(super().__getattr__("module"), name)

    def _call(self, row: int, inputs: tuple, kwargs: dict):
        tensors = self.overrides.get(row)
        if not tensors:
            return self.module(*inputs, **kwargs)
        return functional_call(self.module, tensors, inputs, kwargs, tie_weights=False, strict=False)

    def forward(self, x: torch.Tensor, *args, **kwargs):
        rows = self.selection.rows(self.kind)
        if rows is None or not self.overrides:
            return self.module(x, *args, **kwargs)
        if rows.shape[0] != x.shape[0]:
            raise RuntimeError(f"grouped module: {rows.shape[0]} adapter rows for {x.shape[0]} input rows")
        present = rows.unique().tolist()
        if len(present) == 1:
            return self._call(present[0], (x, *args), kwargs)
        output = None
        for row in present:
            index = (rows == row).nonzero().squeeze(1)
            part = self._call(row if row in self.overrides else BASE_ROW, (x.index_select(0, index), *args), kwargs)
            if output is None:
                output = part.new_empty((x.shape[0],) + tuple(part.shape[1:]))
            output.index_copy_(0, index, part)
        return output
