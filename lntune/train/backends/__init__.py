"""One backend per train.distributed mode; see base.py for what each offers the loop."""

from __future__ import annotations

from lntune.train.backends.base import Backend
from lntune.train.backends.deepspeed_zero import DeepSpeedBackend
from lntune.train.backends.fsdp2 import Fsdp2Backend
from lntune.train.backends.plain import PlainBackend

# FSDP2 only with several processes (one process has nothing to shard: the plain loop runs); DeepSpeed even with one
# (e.g. to try a zero3 run on one GPU first).
BACKENDS = {"ddp": PlainBackend, "fsdp2": Fsdp2Backend, "zero2": DeepSpeedBackend, "zero3": DeepSpeedBackend}


def create_backend(train_config, precision: str, processes: int) -> Backend:
    """The backend for train_config.distributed, not yet entered: it has checked what it can before any work."""
    kind = BACKENDS[train_config.distributed]
    if kind is Fsdp2Backend and processes == 1:
        kind = PlainBackend
    return kind(train_config, precision, processes)
