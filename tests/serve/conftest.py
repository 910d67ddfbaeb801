import pytest

from tests.serve.helpers import write_adapter


@pytest.fixture(scope="session")
def serve_model(built_model):
    return built_model()


@pytest.fixture(scope="session")
def adapter_dirs(serve_model, tmp_path_factory):
    """name -> adapter folder on the tiny Llama/CLIP model: two norm-only adapters, one LayerNorm-tuning adapter
    (norms + connector + embeddings + head) and one attn-qv adapter (q/v projections + connector + embeddings + head)."""
    root = tmp_path_factory.mktemp("adapters")
    specs = {"simple-a": ("layernorm-simple", 1), "simple-b": ("layernorm-simple", 2), "ln": ("layernorm", 3),
             "qv": ("attn-qv", 4)}
    return {name: write_adapter(serve_model, root / name, method, seed) for name, (method, seed) in specs.items()}
