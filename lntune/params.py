"""Parameter accounting: totals and trainable counts per component of an MLLM.

Every parameter is assigned to exactly one component, in the order of COMPONENTS (LoRA adapters
first, so that an adapted q_proj's base weight counts as attention and its adapters as LoRA).
Tied tensors are counted once. Works on the meta device, so 70B configs cost no memory.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import nn

from lntune.methods.lora import lora_parameters
from lntune.model.parts import locate_parts

COMPONENTS = (
    "vision_encoder",
    "connector",
    "embeddings",
    "block_norms",
    "attention",
    "mlp",
    "block_other",
    "final_norm",
    "output_head",
    "lora",
    "other",
)


@dataclass
class Count:
    total: int = 0
    trainable: int = 0


@dataclass
class ParamReport:
    total: int
    trainable: int
    components: dict[str, Count]
    block_norms_by_kind: dict[str, Count] = field(default_factory=dict)
    """Block norms summed over blocks by their name inside a block (input_layernorm, ...)."""
    tied_embeddings: bool = False
    method: str | None = None

    @property
    def trainable_percent(self) -> float:
        return 100.0 * self.trainable / self.total if self.total else 0.0

    def percent(self, count: int) -> float:
        return 100.0 * count / self.total if self.total else 0.0

    def to_dict(self) -> dict:
        return {
            "method": self.method,
            "total": self.total,
            "trainable": self.trainable,
            "trainable_percent": self.trainable_percent,
            "tied_embeddings": self.tied_embeddings,
            "components": {
                name: {"total": c.total, "trainable": c.trainable, "trainable_percent": self.percent(c.trainable)}
                for name, c in self.components.items()
            },
            "block_norms_by_kind": {
                name: {"total": c.total, "trainable": c.trainable} for name, c in self.block_norms_by_kind.items()
            },
        }


def _component_modules(model: nn.Module) -> list[tuple[str, list[nn.Module]]]:
    parts = locate_parts(model)
    return [
        ("vision_encoder", [parts.vision_encoder]),
        ("connector", [parts.connector]),
        ("embeddings", [parts.embeddings]),
        ("block_norms", [norm for block in parts.blocks for norm in block.norms.values()]),
        ("attention", [block.attention for block in parts.blocks if block.attention is not None]),
        ("mlp", [block.mlp for block in parts.blocks if block.mlp is not None]),
        ("block_other", [block.module for block in parts.blocks]),
        ("final_norm", list(parts.final_norms.values())),
        ("output_head", [parts.output_head]),
        ("other", [parts.model]),
    ]


def count_parameters(model: nn.Module, method: str | None = None) -> ParamReport:
    """Count `model`'s parameters per component as its requires_grad flags stand now."""
    owner: dict[int, str] = {}
    for parameter in lora_parameters(model):
        owner.setdefault(id(parameter), "lora")
    for component, modules in _component_modules(model):
        for module in modules:
            for parameter in module.parameters():
                owner.setdefault(id(parameter), component)

    components = {name: Count() for name in COMPONENTS}
    total = trainable = 0
    for parameter in model.parameters():  # deduplicates tied parameters
        count = components[owner.get(id(parameter), "other")]
        count.total += parameter.numel()
        total += parameter.numel()
        if parameter.requires_grad:
            count.trainable += parameter.numel()
            trainable += parameter.numel()

    parts = locate_parts(model)
    by_kind: dict[str, Count] = {}
    for block in parts.blocks:
        for name, norm in block.norms.items():
            count = by_kind.setdefault(name, Count())
            for parameter in norm.parameters():
                count.total += parameter.numel()
                count.trainable += parameter.numel() if parameter.requires_grad else 0
    return ParamReport(
        total=total,
        trainable=trainable,
        components=components,
        block_norms_by_kind=by_kind,
        tied_embeddings=parts.tied_embeddings,
        method=method,
    )


def percent_text(value: float) -> str:
    if value == 0:
        return "0%"
    return f"{value:.3g}%" if value < 1 else f"{value:.2f}%"


def format_table(reports: list[ParamReport]) -> str:
    """One row per component; a column of trainable counts per method."""
    first = reports[0]
    header = ["component", "total"] + [report.method or "trainable" for report in reports]
    rows = []
    for name in COMPONENTS:
        # LoRA adds its adapters to the model, so that row's total is the largest any method has.
        total = max(r.components[name].total for r in reports)
        if total == 0:
            if name == "output_head" and first.tied_embeddings:
                rows.append(["output_head", "tied"] + ["(embeddings)"] * len(reports))
            continue
        label = name
        cells = [f"{r.components[name].trainable:,}" if r.components[name].trainable else "-" for r in reports]
        rows.append([label, f"{total:,}"] + cells)
    rows.append(["all", f"{first.total:,}"] + [f"{r.trainable:,}" for r in reports])
    rows.append(["trainable %", "100%"] + [percent_text(r.trainable_percent) for r in reports])
    widths = [max(len(str(row[i])) for row in [header] + rows) for i in range(len(header))]
    lines = [
        "  ".join(cell.ljust(widths[i]) if i == 0 else cell.rjust(widths[i]) for i, cell in enumerate(row))
        for row in [header] + rows
    ]
    lines.insert(1, "  ".join("-" * width for width in widths))
    lines.insert(-2, "  ".join("-" * width for width in widths))
    if any(r.components["lora"].total for r in reports):
        lines.append("(percentages are of each method's whole model; LoRA's includes its adapters)")
    return "\n".join(lines)


def config_for_counting(
    model: str | None = None,
    llm: str | None = None,
    vision: str | None = None,
    connector: str = "mlp2x_gelu",
    vision_layer: int = -2,
    vision_select: str = "patch",
    trust_remote_code: bool = False,
):
    """The Llava config to count: a built model's, or one composed from LLM + vision configs.

    Composed configs keep the LLM's vocabulary as configured; `lntune build` adds one or two tokens
    (<image>, and a pad token where missing), which a built model's config includes.
    """
    from lntune.errors import LntuneError
    from lntune.model.compose import compose_llava_config
    from lntune.model.load import load_llava_config
    from lntune.model.sources import load_llm_config, load_vision_config

    if model is not None:
        if llm is not None or vision is not None:
            raise LntuneError("give either --model or --llm with --vision, not both")
        return load_llava_config(model, trust_remote_code)
    if llm is None or vision is None:
        raise LntuneError("give --model DIR, or both --llm and --vision (directories or config.json files)")
    return compose_llava_config(
        load_llm_config(llm, trust_remote_code), load_vision_config(vision), connector, vision_layer, vision_select
    )


def method_reports(llava_config, method_configs) -> list[ParamReport]:
    """One report per method, each on a fresh meta-device model (no memory, no weights)."""
    from lntune.methods import apply_method
    from lntune.model.load import meta_model

    reports = []
    for method_config in method_configs:
        model = apply_method(meta_model(llava_config), method_config)
        reports.append(count_parameters(model, method=method_config.name))
    return reports
