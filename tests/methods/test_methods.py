"""Tuning methods: after a few optimizer steps, exactly the intended tensors changed, all others are bit-identical.

The intended sets are written here with name patterns of the HF module layout: an oracle that is
independent of lntune's type-based discovery (lntune.model.parts).
"""

import re

import pytest
import torch

from lntune.config import MethodConfig
from lntune.errors import LntuneError
from lntune.methods import METHODS, apply_method
from lntune.model.load import load_model
from tests.helpers import image_inputs

BLOCK = r"model\.language_model\.layers\.\d+\."
CONNECTOR = r"model\.multi_modal_projector\."
EMBEDDINGS = r"model\.language_model\.embed_tokens\."
HEAD = r"lm_head\."
FINAL_NORM = r"model\.language_model\.norm\."
NORMS = {
    "llama": BLOCK + r"(input_layernorm|post_attention_layernorm)\.",
    "qwen3": BLOCK + r"(input_layernorm|post_attention_layernorm|self_attn\.q_norm|self_attn\.k_norm)\.",
    "gemma2": BLOCK + r"(input_layernorm|post_attention_layernorm|pre_feedforward_layernorm|post_feedforward_layernorm)\.",
}
DEFAULT_EXTRAS = [CONNECTOR, EMBEDDINGS, HEAD]
INTENDED = {
    "full": [r"model\.language_model\.", CONNECTOR, HEAD],
    "lora": [r".*lora_[AB]\."] + DEFAULT_EXTRAS,
    "attn-qv": [BLOCK + r"self_attn\.(q_proj|v_proj)\."] + DEFAULT_EXTRAS,
    "attn-mlp": [BLOCK + r"mlp\."] + DEFAULT_EXTRAS,
    "layernorm": ["NORMS", FINAL_NORM] + DEFAULT_EXTRAS,
    "layernorm-simple": ["NORMS", FINAL_NORM],
    "connector": [CONNECTOR],
}


def _canonical(name: str) -> str:
    """PEFT-wrapped names -> the plain Llava name (base_model.model.X.base_layer.weight -> X.weight)."""
    name = name.removeprefix("base_model.model.")
    return name.replace(".base_layer.", ".")


def _train_steps(model, inputs, steps=3):
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2, weight_decay=0.0)
    labels = inputs["input_ids"].clone()
    labels[labels == model.config.image_token_id] = -100
    for _ in range(steps):
        loss = model(**inputs, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()


def changed_parameters(model, inputs) -> set[str]:
    before = {name: tensor.detach().clone() for name, tensor in model.named_parameters()}
    _train_steps(model, inputs)
    after = dict(model.named_parameters())
    return {_canonical(name) for name in before if not torch.equal(before[name], after[name])}


def expected(names, patterns, family):
    patterns = [NORMS[family] if p == "NORMS" else p for p in patterns]
    return {name for name in names if any(re.match(p, name) for p in patterns)}


@pytest.mark.parametrize("method", sorted(METHODS))
def test_exactly_the_intended_parameters_change(method, built_model):
    model_dir = built_model()
    inputs = image_inputs(model_dir)
    model = apply_method(load_model(model_dir), MethodConfig(name=method, lora_dropout=0.0))
    names = {_canonical(name) for name, _ in model.named_parameters()}
    intended = expected(names, INTENDED[method], "llama")
    assert intended, "the oracle matched nothing"
    trainable = {_canonical(name) for name, p in model.named_parameters() if p.requires_grad}
    assert trainable == intended
    assert changed_parameters(model, inputs) == intended
    assert not any(name.startswith("model.vision_tower.") for name in trainable)


@pytest.mark.parametrize("family", ["qwen3", "gemma2"])
def test_layernorm_finds_every_norm_inside_blocks(family, built_model):
    model_dir = built_model(llm=family)
    model = apply_method(load_model(model_dir), "layernorm-simple")
    names = {name for name, _ in model.named_parameters()}
    intended = expected(names, INTENDED["layernorm-simple"], family)
    assert changed_parameters(model, image_inputs(model_dir)) == intended


@pytest.mark.parametrize(
    "switch,removed",
    [("train_connector", CONNECTOR), ("train_final_norm", FINAL_NORM), ("train_embeddings", EMBEDDINGS),
     ("train_output_head", HEAD)],
)
def test_switches_turn_components_off(switch, removed, built_model):
    model = apply_method(load_model(built_model()), MethodConfig(name="layernorm", **{switch: False}))
    names = {name for name, _ in model.named_parameters()}
    intended = expected(names, INTENDED["layernorm"], "llama") - expected(names, [removed], "llama")
    assert {name for name, p in model.named_parameters() if p.requires_grad} == intended


def test_switch_turns_connector_on_for_layernorm_simple(built_model):
    model = apply_method(load_model(built_model()), MethodConfig(name="layernorm-simple", train_connector=True))
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert any(name.startswith("model.multi_modal_projector.") for name in trainable)


def test_full_with_frozen_embeddings(built_model):
    model = apply_method(load_model(built_model()), MethodConfig(name="full", train_embeddings=False))
    assert not model.get_input_embeddings().weight.requires_grad
    assert model.lm_head.weight.requires_grad


def test_tied_embeddings_must_agree(built_model):
    model = load_model(built_model(llm="qwen3"))  # the tiny qwen3 ties embeddings and head
    assert model.lm_head.weight is model.get_input_embeddings().weight
    with pytest.raises(LntuneError, match="ties"):
        apply_method(model, MethodConfig(name="layernorm", train_output_head=False))


def test_lora_targets_are_the_llm_linear_layers_only(built_model):
    model = apply_method(load_model(built_model()), "lora")
    adapted = {name.split(".lora_A")[0] for name, _ in model.named_parameters() if ".lora_A." in name}
    assert adapted and all(".language_model.layers." in name for name in adapted)
    assert {name.rsplit(".", 1)[-1] for name in adapted} == {
        "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}


def test_lora_target_modules_option(built_model):
    model = apply_method(load_model(built_model()), MethodConfig(name="lora", lora_target_modules=("q_proj", "v_proj")))
    adapted = {name.split(".lora_A")[0].rsplit(".", 1)[-1] for name, _ in model.named_parameters() if ".lora_A." in name}
    assert adapted == {"q_proj", "v_proj"}
    with pytest.raises(LntuneError, match="available linear layers"):
        apply_method(load_model(built_model()), MethodConfig(name="lora", lora_target_modules=("qkv",)))


def test_unknown_method_lists_the_valid_ones():
    with pytest.raises(LntuneError) as error:
        MethodConfig(name="ln")
    for name in METHODS:
        assert name in str(error.value)


def test_methods_do_not_copy_modules(built_model):
    """LayerNorm tuning flips requires_grad on the model's own norm parameters."""
    model = load_model(built_model())
    norm_weight = model.model.language_model.layers[0].input_layernorm.weight
    assert apply_method(model, "layernorm") is model
    assert model.model.language_model.layers[0].input_layernorm.weight is norm_weight
    assert norm_weight.requires_grad


def test_a_run_without_lora_or_quantize_never_imports_peft_or_bitsandbytes(built_model, tmp_path):
    """Importing PEFT imports bitsandbytes where it is installed: seconds of start-up (bench/bnb_import_cost.py) that
    a layernorm run needs neither of. A fresh interpreter: applies the method, counts, trains a step, saves."""
    import os
    import subprocess
    import sys

    from tests.helpers import write_llava_data

    path, images = write_llava_data(tmp_path / "data", count=2)
    script = (
        "import sys\n"
        "from lntune.config import DataConfig, DataSource, MethodConfig, RunConfig, TrainConfig\n"
        "from lntune.train.trainer import train\n"
        f"train(RunConfig(model={str(built_model())!r}, out={str(tmp_path / 'run')!r},\n"
        "    method=MethodConfig(name='layernorm'),\n"
        f"    data=DataConfig(sources=(DataSource({str(path)!r}),), image_folder={str(images)!r}),\n"
        "    train=TrainConfig(max_steps=1, batch_size=2, save_every=0)), say=lambda message: None)\n"
        "print(sorted(name for name in ('peft', 'bitsandbytes') if name in sys.modules))\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                            env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert result.returncode == 0, result.stderr[-2000:]
    assert (tmp_path / "run" / "adapter" / "trainable.safetensors").is_file()
    assert result.stdout.strip().splitlines()[-1] == "[]"
