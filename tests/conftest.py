"""Shared fixtures: tiny random HF backbones and MLLMs built from configs, and a network ban.

Everything is built once per test session into a temporary directory; tests that change a model
load their own copy.
"""

import os

os.environ["HF_HUB_OFFLINE"] = "1"  # before transformers is imported anywhere
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")

import socket  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

# Under pytest-xdist (`make test` runs two workers on a 2-core machine) each worker keeps to one core: two workers
# of two OpenMP threads each would fight over the cores (steps several times slower, measured).
# The same for the processes tests start (lntune CLI runs, torchrun workers): they inherit OMP_NUM_THREADS.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ.setdefault("OMP_NUM_THREADS", "1")
torch.set_num_threads(1 if os.environ.get("PYTEST_XDIST_WORKER") else 2)

from lntune.cli import deepspeed_logs_to_stderr  # noqa: E402

# What lntune.cli.main does first: tests run the library in-process beside main(), and fixtures may import DeepSpeed
# (through Accelerate) before any main() call, so the routing is set before anything else, as the CLI sets it.
deepspeed_logs_to_stderr()

LOCAL_HOSTS = {"127.0.0.1", "::1", "localhost", "0.0.0.0"}


@pytest.fixture(autouse=True, scope="session")
def no_network():
    """Any attempt to reach another host fails the test: lntune must never download."""
    original_connect = socket.socket.connect

    def guarded_connect(sock, address):
        host = address[0] if isinstance(address, tuple) else address
        if sock.family in (socket.AF_INET, socket.AF_INET6) and host not in LOCAL_HOSTS:
            raise AssertionError(f"test tried to open a network connection to {address}")
        return original_connect(sock, address)

    socket.socket.connect = guarded_connect
    yield
    socket.socket.connect = original_connect


@pytest.fixture(scope="session")
def backbone_dir(tmp_path_factory):
    """backbone_dir("llm", "qwen3") / backbone_dir("vision", "siglip"): a cached tiny backbone directory."""
    from tests.backbones import write_tiny_llm, write_tiny_vision

    root = tmp_path_factory.mktemp("backbones")
    cache = {}

    def get(kind: str, family: str):
        key = (kind, family)
        if key not in cache:
            writer = write_tiny_llm if kind == "llm" else write_tiny_vision
            cache[key] = writer(root / f"{kind}-{family}", family=family)
        return cache[key]

    return get


@pytest.fixture(scope="session")
def built_model(tmp_path_factory, backbone_dir):
    """built_model(llm_family, vision_family, connector, vision_select): a cached built MLLM directory."""
    from lntune.config import BuildConfig
    from lntune.model.build import build_mllm

    root = tmp_path_factory.mktemp("built")
    cache = {}

    def get(llm="llama", vision="clip", connector="mlp2x_gelu", vision_select="patch"):
        key = (llm, vision, connector, vision_select)
        if key not in cache:
            out = root / "-".join(key)
            config = BuildConfig(
                llm=str(backbone_dir("llm", llm)), vision=str(backbone_dir("vision", vision)), out=str(out),
                connector=connector, vision_select=vision_select,
            )
            cache[key] = build_mllm(config, say=lambda message: None)
        return cache[key]

    return get
