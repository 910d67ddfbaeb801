"""BankedNorm: one norm module serving many adapters in one forward pass, with no copy of the model.

Each norm keeps a bank of its adapters' weights ([A, D], + biases for LayerNorm; row 0 is the base) and scales every
sequence of the batch by its own adapter's row: the rows are gathered to [B, 1, D] ([B, 1, 1, D] for Qwen3's per-head
q/k norms, whose input is [B, T, H, D]) and broadcast over the tokens. The normalisation itself is the family's own
formula, step for step, so a row gives the very numbers the norm module computes with that weight.

FORMULAS below are the formulas lntune knows; the one a norm module computes is found by probing it (its own
forward with random weights vs each formula), so a family whose norm differs from all of them is refused by name
instead of being served wrongly.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from lntune.errors import LntuneError
from lntune.serve.rows import RowSelection


def _rms(x: torch.Tensor, eps: float) -> torch.Tensor:
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)


def scaled_rms(x, weight, bias, eps):
    """LlamaRMSNorm (Mistral, Qwen2, Qwen3, ...): normalise in fp32, cast back, then multiply by the weight."""
    return weight * _rms(x.to(torch.float32), eps).to(x.dtype)


def one_plus_rms(x, weight, bias, eps):
    """GemmaRMSNorm / Gemma2RMSNorm: normalise and scale by (1 + weight) in fp32, then cast back."""
    return (_rms(x.float(), eps) * (1.0 + weight.float())).type_as(x)


def layer_norm(x, weight, bias, eps):
    """torch.nn.LayerNorm: (x - mean) / std * weight + bias, in fp32 and rounded once, as its fused kernel does
    (equal within the kernel's fp32 rounding)."""
    out = F.layer_norm(x.float(), (x.shape[-1],), None, None, eps) * weight.float()
    return (out + bias.float() if bias is not None else out).to(x.dtype)


def rms_norm(x, weight, bias, eps):
    """torch.nn.RMSNorm, in fp32 and rounded once (equal within the fused kernel's fp32 rounding)."""
    return (F.rms_norm(x.float(), (x.shape[-1],), None, eps) * weight.float()).to(x.dtype)


FORMULAS = {"scaled_rms": scaled_rms, "one_plus_rms": one_plus_rms, "layer_norm": layer_norm, "rms_norm": rms_norm}


def norm_epsilon(module: nn.Module) -> float | None:
    for name in ("variance_epsilon", "eps", "epsilon"):
        value = getattr(module, name, None)
        if isinstance(value, (int, float)):
            return float(value)
    return None


def find_formula(module: nn.Module, where: str) -> str:
    """The name of the formula `module` computes, checked on a random probe in fp32 (off-centre input, random weight
    and bias, so that mean subtraction, `w` vs `1 + w` and the bias all show)."""
    from torch.func import functional_call

    weight = getattr(module, "weight", None)
    if not isinstance(weight, torch.Tensor) or weight.dim() != 1:
        raise LntuneError(f"norm {where} ({type(module).__name__}) has no one-dimensional weight; lntune serve cannot "
                          "bank it")
    size = weight.shape[0]
    generator = torch.Generator().manual_seed(0)
    probe = torch.randn(2, 3, size, generator=generator) + 0.5
    parameters = {"weight": torch.randn(size, generator=generator)}
    bias = getattr(module, "bias", None)
    if isinstance(bias, torch.Tensor):
        parameters["bias"] = torch.randn(size, generator=generator)
    eps = norm_epsilon(module)
    with torch.no_grad():
        expected = functional_call(module, parameters, (probe.to(weight.device),)).float().cpu()
        # torch's own classes first try their own formula (their fused kernels round like it in half precision).
        own = "layer_norm" if isinstance(module, nn.LayerNorm) else "rms_norm" if isinstance(module, nn.RMSNorm) else None
        for name in sorted(FORMULAS, key=lambda candidate: candidate != own):
            if eps is None and name != "rms_norm":
                continue
            got = FORMULAS[name](probe, parameters["weight"], parameters.get("bias"), eps)
            if torch.allclose(got, expected, rtol=1e-5, atol=1e-5):
                return name
    raise LntuneError(f"norm {where} ({type(module).__name__}) computes none of the formulas lntune serve can bank "
                      f"({', '.join(FORMULAS)})")


class BankedNorm(nn.Module):
    """Wraps a norm module in place of it. With no adapter rows selected it is the module itself (same call); with
    rows, each sequence gets its own row of the weight (and bias) bank."""

    def __init__(self, norm: nn.Module, formula: str, selection: RowSelection):
        super().__init__()
        self.norm = norm
        self.formula = FORMULAS[formula]
        self.formula_name = formula
        self.eps = norm_epsilon(norm)
        self.selection = selection
        with torch.no_grad():
            self.weight_bank = norm.weight.detach().clone().unsqueeze(0)  # [A, D]; row 0 = the base
            bias = getattr(norm, "bias", None)
            self.bias_bank = bias.detach().clone().unsqueeze(0) if isinstance(bias, torch.Tensor) else None

    @property
    def weight(self) -> torch.Tensor:
        return self.norm.weight

    @property
    def rows(self) -> int:
        return self.weight_bank.shape[0]

    def set_row(self, row: int, weight: torch.Tensor | None, bias: torch.Tensor | None) -> None:
        """Row `row` <- an adapter's weight and bias (None: the base's). The bank grows (doubling) when needed."""
        with torch.no_grad():
            if row >= self.rows:
                grow = max(row + 1, 2 * self.rows) - self.rows
                self.weight_bank = torch.cat([self.weight_bank, self.norm.weight.detach().expand(grow, -1)])
                if self.bias_bank is not None:
                    self.bias_bank = torch.cat([self.bias_bank, self.norm.bias.detach().expand(grow, -1)])
            self.weight_bank[row] = (weight if weight is not None else self.norm.weight).to(self.weight_bank)
            if self.bias_bank is not None:
                self.bias_bank[row] = (bias if bias is not None else self.norm.bias).to(self.bias_bank)
            elif bias is not None:
                raise LntuneError("an adapter gives a bias for a norm that has none")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = self.selection.sequence_rows
        if rows is None:
            return self.norm(x)
        if rows.shape[0] != x.shape[0]:
            raise RuntimeError(f"banked norm: {rows.shape[0]} adapter rows for a batch of {x.shape[0]}")
        shape = (x.shape[0],) + (1,) * (x.dim() - 2) + (x.shape[-1],)  # [B, 1, D] or [B, 1, 1, D]
        weight = self.weight_bank.index_select(0, rows).view(shape)
        bias = self.bias_bank.index_select(0, rows).view(shape) if self.bias_bank is not None else None
        return self.formula(x, weight, bias, self.eps)
