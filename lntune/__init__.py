"""lntune: turn a text LLM into a multimodal LLM by tuning only its normalisation layers.

The public Python API is re-exported lazily so that `import lntune` (and the CLI's start-up)
does not pay for importing torch and transformers until they are used.
"""

__version__ = "0.1.0"


def _deepspeed_logs_to_stderr() -> None:
    """DeepSpeed logs to stdout, and Accelerate imports it whenever it is installed (transformers' save_pretrained
    does, through Accelerate). lntune's stdout carries results (`lntune report`, `eval` tables), so DeepSpeed's
    records are written to stderr instead. A filter on its logger, set before DeepSpeed creates the logger's handler,
    survives that creation; nothing is imported here.

    One record is dropped: on import DeepSpeed warns "Setting accelerator to CPU" whenever torch sees no GPU. That is
    DeepSpeed describing the machine, not something lntune's user can act on (lntune places its work by what torch
    sees, as DeepSpeed then does), and it turned every one-line error on a CPU machine into three lines."""
    import logging
    import sys

    class ToStderr(logging.Filter):
        def filter(self, record):
            message = record.getMessage()
            if not message.startswith("Setting accelerator to CPU"):
                sys.stderr.write(f"[DeepSpeed {record.levelname}] {message}\n")
            return False

    logging.getLogger("DeepSpeed").addFilter(ToStderr())


_deepspeed_logs_to_stderr()

_LAZY_EXPORTS = {
    "build_mllm": "lntune.model.build",
    "load_model": "lntune.model.load",
    "apply_method": "lntune.methods",
    "METHODS": "lntune.methods",
    "count_parameters": "lntune.params",
    "BuildConfig": "lntune.config",
    "MethodConfig": "lntune.config",
    "LntuneError": "lntune.errors",
}

__all__ = sorted(_LAZY_EXPORTS) + ["__version__"]


def __getattr__(name):
    if name in _LAZY_EXPORTS:
        import importlib

        return getattr(importlib.import_module(_LAZY_EXPORTS[name]), name)
    raise AttributeError(f"module 'lntune' has no attribute {name!r}")
