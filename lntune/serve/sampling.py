"""Choosing each sequence's next token: greedy at temperature 0 (argmax, as `lntune eval` decodes), otherwise
temperature + nucleus (top_p) sampling with the request's own generator (a `seed` makes it repeatable)."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class SamplingParams:
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = None

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


def make_generator(params: SamplingParams) -> torch.Generator | None:
    if params.greedy:
        return None
    generator = torch.Generator()
    if params.seed is not None:
        generator.manual_seed(params.seed)
    else:
        generator.seed()
    return generator


def next_token(logits: torch.Tensor, params: SamplingParams, generator: torch.Generator | None) -> int:
    """logits: [V] (fp32) of one sequence -> the chosen token id."""
    if params.greedy:
        return int(torch.argmax(logits))
    probabilities = torch.softmax(logits.float().cpu() / params.temperature, dim=-1)
    if params.top_p < 1.0:
        sorted_probabilities, order = torch.sort(probabilities, descending=True)
        # Keep the smallest set of tokens whose mass reaches top_p (the most likely token is always kept).
        outside = sorted_probabilities.cumsum(-1) - sorted_probabilities >= params.top_p
        sorted_probabilities[outside] = 0.0
        probabilities = torch.zeros_like(probabilities).scatter_(0, order, sorted_probabilities)
    return int(torch.multinomial(probabilities, 1, generator=generator))
