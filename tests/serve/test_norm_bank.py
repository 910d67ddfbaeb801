"""BankedNorm reproduces each family's norm row by row: with adapter rows selected, every sequence's output equals
the norm module run with that row's weight (bit for bit for the families' RMSNorms), for [B, T, D] and Qwen3's
per-head [B, T, H, D] inputs, in fp32 and bf16."""

import pytest
import torch
from torch import nn
from torch.func import functional_call

from lntune.errors import LntuneError
from lntune.serve.norm_bank import BankedNorm, find_formula
from lntune.serve.rows import RowSelection


def _norms():
    from transformers.models.gemma2.modeling_gemma2 import Gemma2RMSNorm
    from transformers.models.llama.modeling_llama import LlamaRMSNorm
    from transformers.models.mistral.modeling_mistral import MistralRMSNorm
    from transformers.models.qwen3.modeling_qwen3 import Qwen3RMSNorm

    return {
        "llama": (lambda: LlamaRMSNorm(8, eps=1e-6), "scaled_rms", True),
        "mistral": (lambda: MistralRMSNorm(8, eps=1e-5), "scaled_rms", True),
        "qwen3": (lambda: Qwen3RMSNorm(8, eps=1e-6), "scaled_rms", True),
        "gemma2": (lambda: Gemma2RMSNorm(8, eps=1e-6), "one_plus_rms", True),
        "layernorm": (lambda: nn.LayerNorm(8), "layer_norm", False),
        "torch-rmsnorm": (lambda: nn.RMSNorm(8, eps=1e-6), "rms_norm", False),
    }


@pytest.mark.parametrize("family", list(_norms()))
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("per_head", [False, True])
def test_each_row_equals_the_norm_with_that_weight(family, dtype, per_head):
    make, formula, exact = _norms()[family]
    norm = make().to(dtype)
    assert find_formula(norm, family) == formula
    selection = RowSelection()
    banked = BankedNorm(norm, formula, selection)
    generator = torch.Generator().manual_seed(0)
    rows = {}
    for row in (1, 2, 3):
        weight = (torch.randn(8, generator=generator) + 1).to(dtype)
        bias = torch.randn(8, generator=generator).to(dtype) if family == "layernorm" else None
        banked.set_row(row, weight, bias)
        rows[row] = {"weight": weight, **({"bias": bias} if bias is not None else {})}
    shape = (5, 3, 2, 8) if per_head else (5, 3, 8)
    x = (torch.randn(shape, generator=generator) * 3 + 0.5).to(dtype)
    chosen = torch.tensor([0, 1, 2, 1, 3])
    with torch.no_grad(), selection.use(chosen):
        out = banked(x)
    for b, row in enumerate(chosen.tolist()):
        with torch.no_grad():
            expected = norm(x[b:b + 1]) if row == 0 else functional_call(norm, rows[row], (x[b:b + 1],))
        if exact:
            assert torch.equal(out[b:b + 1], expected), (family, dtype, b)
        else:
            torch.testing.assert_close(out[b:b + 1], expected)
    with torch.no_grad():
        assert torch.equal(banked(x), norm(x))  # no rows selected: the module itself


def test_a_norm_no_formula_matches_is_refused_by_name():
    class OffsetRMSNorm(nn.Module):  # a made-up family: scales by (2 + w)
        def __init__(self):
            super().__init__()
            self.weight = nn.Parameter(torch.ones(8))
            self.eps = 1e-6

        def forward(self, x):
            return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * (2 + self.weight)

    with pytest.raises(LntuneError, match="OffsetRMSNorm.*none of the formulas lntune serve can bank"):
        find_formula(OffsetRMSNorm(), "layers.0.norm")


def test_bank_grows_and_rows_reset_to_base():
    norm = nn.LayerNorm(4)
    banked = BankedNorm(norm, "layer_norm", RowSelection())
    banked.set_row(9, torch.full((4,), 3.0), torch.full((4,), 1.0))
    assert banked.rows >= 10 and torch.equal(banked.weight_bank[9], torch.full((4,), 3.0))
    banked.set_row(9, None, None)
    assert torch.equal(banked.weight_bank[9], norm.weight.detach()) and torch.equal(banked.bias_bank[9], norm.bias.detach())
