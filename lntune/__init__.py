"""lntune: turn a text LLM into a multimodal LLM by tuning only its normalisation layers.

The public Python API is re-exported lazily so that `import lntune` (and the CLI's start-up)
does not pay for importing torch and transformers until they are used.
"""

__version__ = "0.1.0"

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
