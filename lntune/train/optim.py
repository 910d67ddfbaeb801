"""Parameter groups (own learning rate per kind, no weight decay on norms/biases/embeddings) and the schedule."""

from __future__ import annotations

import math

import torch

from lntune.config import RunConfig
from lntune.methods import METHODS
from lntune.model.parts import locate_parts


def _or(value, default):
    return default if value is None else value


def base_learning_rate(config: RunConfig) -> float:
    return config.train.lr if config.train.lr is not None else METHODS[config.method.name].default_lr


def parameter_groups(model, config: RunConfig) -> list[dict]:
    """AdamW groups: norms, connector, embeddings/head, and the rest (split by weight decay)."""
    parts = locate_parts(model)
    lr = base_learning_rate(config)
    train = config.train
    norm_ids = {id(p) for block in parts.blocks for n in block.norms.values() for p in n.parameters()}
    norm_ids |= {id(p) for n in parts.final_norms.values() for p in n.parameters()}
    connector_ids = {id(p) for p in parts.connector.parameters()}
    embedding_ids = {id(p) for p in parts.embeddings.parameters()} | {id(p) for p in parts.output_head.parameters()}
    groups = {
        "norms": {"params": [], "lr": _or(train.norm_lr, lr), "weight_decay": 0.0},
        "connector": {"params": [], "lr": _or(train.connector_lr, lr), "weight_decay": train.weight_decay},
        "connector_bias": {"params": [], "lr": _or(train.connector_lr, lr), "weight_decay": 0.0},
        "embeddings": {"params": [], "lr": _or(train.embedding_lr, lr), "weight_decay": 0.0},
        "matrices": {"params": [], "lr": lr, "weight_decay": train.weight_decay},
        "other": {"params": [], "lr": lr, "weight_decay": 0.0},
    }
    seen = set()
    for parameter in model.parameters():
        if not parameter.requires_grad or id(parameter) in seen:
            continue
        seen.add(id(parameter))
        if id(parameter) in norm_ids:
            key = "norms"
        elif id(parameter) in connector_ids:
            key = "connector" if parameter.ndim >= 2 else "connector_bias"
        elif id(parameter) in embedding_ids:
            key = "embeddings"
        else:
            key = "matrices" if parameter.ndim >= 2 else "other"
        groups[key]["params"].append(parameter)
    return [dict(group, name=name) for name, group in groups.items() if group["params"]]


def _schedule_factor(step: int, *, name: str, warmup: int, total: int) -> float:
    """The learning-rate factor at `step`: transformers' get_scheduler formulas ("cosine", "linear",
    "constant_with_warmup"), digit for digit (tested against it). Not imported from there: transformers.optimization
    imports trainer_utils, which imports PEFT, which imports bitsandbytes where it is installed, seconds of start-up
    for every run (bench/bnb_import_cost.py)."""
    if step < warmup:
        return float(step) / float(max(1, warmup))
    if name == "constant":
        return 1.0
    if name == "linear":
        return max(0.0, float(total - step) / float(max(1, total - warmup)))
    progress = float(step - warmup) / float(max(1, total - warmup))
    return max(0.0, 0.5 * (1.0 + math.cos(math.pi * 0.5 * 2.0 * progress)))  # half a cosine (num_cycles 0.5)


def make_scheduler(optimizer, name: str, total_steps: int, warmup_ratio: float):
    """A LambdaLR stepping `name` (cosine, linear, constant) after a linear warmup over warmup_ratio of the steps.
    Its state_dict is that of the get_scheduler one (a functools.partial factor), so checkpoints resume alike."""
    from functools import partial

    if name not in ("cosine", "linear", "constant"):
        raise KeyError(name)
    warmup = math.ceil(warmup_ratio * total_steps)
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, partial(_schedule_factor, name=name, warmup=warmup, total=total_steps))


def make_optimizer(model, config: RunConfig) -> torch.optim.Optimizer:
    return torch.optim.AdamW(parameter_groups(model, config), betas=(0.9, 0.999), eps=1e-8)
