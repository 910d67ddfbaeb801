"""The tuning methods: what each trains, as data (the paper's Figure 1; README, "Tuning methods").

A method only changes trainability (and, for LoRA, wraps the model with PEFT adapters). The
vision encoder is always frozen. Connector, word embeddings, output head and the LLM's final norm
are switches with per-method defaults, so the paper's ablations ("LayerNorm only", "LayerNorm +
connector") are the same method with a switch flipped.
"""

from __future__ import annotations

from dataclasses import KW_ONLY, dataclass

from lntune.errors import LntuneError


@dataclass(frozen=True)
class Method:
    summary: str
    """One line for tables and --help."""
    _: KW_ONLY  # the switches by name: six booleans in a row read as noise
    llm_selection: str
    """Which parameters inside the LLM: a key of lntune.methods.apply.SELECTIONS."""
    connector: bool
    """Train the vision-language connector by default."""
    embeddings: bool
    """Train the LLM's input word embeddings by default."""
    output_head: bool
    """Train the LLM's output head by default."""
    final_norm: bool
    """Train the LLM's final norm (after the last block) by default."""
    default_lr: float
    """Starting-point learning rate. Norm gains need a far larger step than full finetuning's
    (PEFT's own LN-tuning benchmark learned nothing at 1e-4); tune it for your data."""

    @property
    def trains_base_weights(self) -> bool:
        """Whether it updates the LLM blocks' linear weights: those a quantized base holds in 4 / 8 bits."""
        return self.llm_selection in ("all", "attn_qv", "mlp")


METHODS = {
    "full": Method(
        "every LLM parameter + connector", llm_selection="all",
        connector=True, embeddings=True, output_head=True, final_norm=True, default_lr=2e-5),
    "lora": Method(
        "LoRA adapters on the LLM's linear layers + connector + embeddings + head", llm_selection="lora",
        connector=True, embeddings=True, output_head=True, final_norm=False, default_lr=2e-4),
    "attn-qv": Method(
        "q_proj and v_proj of every block + connector + embeddings + head", llm_selection="attn_qv",
        connector=True, embeddings=True, output_head=True, final_norm=False, default_lr=5e-5),
    "attn-mlp": Method(
        "the MLP of every block + connector + embeddings + head", llm_selection="mlp",
        connector=True, embeddings=True, output_head=True, final_norm=False, default_lr=2e-5),
    "layernorm": Method(
        "the norms inside every block + final norm + connector + embeddings + head", llm_selection="block_norms",
        connector=True, embeddings=True, output_head=True, final_norm=True, default_lr=1e-3),
    "layernorm-simple": Method(
        "the norms inside every block + final norm, nothing else", llm_selection="block_norms",
        connector=False, embeddings=False, output_head=False, final_norm=True, default_lr=1e-3),
    "connector": Method(
        "the connector only (stage 1; an ablation in stage 2)", llm_selection="none",
        connector=True, embeddings=False, output_head=False, final_norm=False, default_lr=2e-3),
}


def refuse_quantized(name: str, mode: str) -> None:
    """The one-line refusal of a method that would train the weights `--quantize` holds quantized."""
    if METHODS[name].trains_base_weights:
        allowed = ", ".join(key for key, method in METHODS.items() if not method.trains_base_weights)
        raise LntuneError(f"method {name} trains the LLM's linear weights, which --quantize {mode} holds quantized "
                          f"(frozen); with --quantize use {allowed}, or train {name} without --quantize")
