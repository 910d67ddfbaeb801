"""A quantized frozen base (QLN / QLoRA): what is quantized, how close it computes, what trains, exact merging."""

import sys

import bitsandbytes  # the test extra installs it: a missing one fails here, never skips
import pytest
import torch
from safetensors.torch import load_file

from lntune.adapter import load_adapter, merge_adapter, read_manifest
from lntune.config import DataConfig, DataSource, MethodConfig, RunConfig, TrainConfig
from lntune.errors import LntuneError
from lntune.methods import apply_method
from lntune.model.load import load_model
from lntune.model.parts import locate_parts
from lntune.train.trainer import train
from tests.helpers import image_inputs, write_llava_data

# NF4's 16 levels on [-1, 1] (Dettmers et al., QLoRA); the widest gap is -1.0 to -0.6962. A weight is rounded to
# the nearest level of its block of 64 scaled by the block's absolute maximum, so it is off by at most half that gap
# times the block maximum; double quantization stores the maxima in 8 bits (a further ~1% of them).
NF4_BLOCK = 64
NF4_WORST = (-0.6962 - -1.0) / 2 * 1.02


@pytest.fixture(scope="module")
def model64(tmp_path_factory):
    """A tiny Llama + CLIP MLLM whose linear layers are all 64 or 128 wide: bitsandbytes' CPU 4-bit kernels need
    rows of whole 64-weight blocks (the shared fixtures are 32 wide; see test_cpu_4bit_refuses_widths_...)."""
    from lntune.config import BuildConfig
    from tests.backbones import write_tiny_llm, write_tiny_vision
    from lntune.model.build import build_mllm

    root = tmp_path_factory.mktemp("model64")
    config = BuildConfig(llm=str(write_tiny_llm(root / "llm", hidden_size=64)),
                         vision=str(write_tiny_vision(root / "vision", hidden_size=64)), out=str(root / "model"))
    return build_mllm(config, say=lambda message: None)


def _block_linears(model):
    """The linear layers inside the LLM's decoder blocks, by full name."""
    return {name: module for name, module in model.named_modules()
            if isinstance(module, torch.nn.Linear) and ".language_model.layers." in name}


def _batch(model_dir):
    inputs = image_inputs(model_dir, text="USER: <image>\nWhat is this? ASSISTANT: a red square")
    labels = inputs["input_ids"].clone()
    labels[:, : labels.shape[1] // 2] = -100
    return dict(inputs), labels


def _loss(model, inputs, labels):
    logits = model(**inputs, use_cache=False).logits
    return torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1))


def test_4bit_quantizes_exactly_the_block_linears_and_computes_the_nf4_model(model64):
    model_dir = model64
    full = load_model(model_dir, dtype="float32")
    quantized = load_model(model_dir, dtype="float32", quantize="4bit")
    kinds = {name: type(module).__name__ for name, module in quantized.named_modules()
             if isinstance(module, torch.nn.Linear)}
    in_blocks = {name for name in kinds if ".language_model.layers." in name}
    assert in_blocks and all(kinds[name] == "Linear4bit" for name in in_blocks)
    assert all(kind == "Linear" for name, kind in kinds.items() if name not in in_blocks)  # head, connector, vision
    assert all(p.dtype == torch.float32 for name, p in quantized.named_parameters() if "norm" in name)

    # Every weight within NF4's rounding of its block; then the quantized model is exactly the model whose block
    # weights are those dequantized values (nothing else was changed or approximated).
    reference = load_model(model_dir, dtype="float32")
    full_linears, reference_linears = _block_linears(full), _block_linears(reference)
    for name, module in _block_linears(quantized).items():
        weight = full_linears[name].weight.detach()
        dequantized = bitsandbytes.functional.dequantize_4bit(module.weight.data, module.weight.quant_state)
        assert dequantized.shape == weight.shape
        block_max = weight.reshape(-1, NF4_BLOCK).abs().amax(dim=1, keepdim=True)
        error = (dequantized - weight).reshape(-1, NF4_BLOCK).abs()
        assert bool((error <= NF4_WORST * block_max).all()), name
        assert error.max() > 0  # it really was quantized
        with torch.no_grad():
            reference_linears[name].weight.copy_(dequantized)
    inputs = image_inputs(model_dir)
    for model in (quantized, reference, full):
        # the training path: in eval mode without gradients, bitsandbytes repacks the weights for a bf16 CPU kernel
        # (on CPUs with AVX512-BF16), which is inference-only and less exact
        model.train()
    with torch.no_grad():
        quantized_logits = quantized(**inputs).logits
        reference_logits = reference(**inputs).logits
        full_logits = full(**inputs).logits
    torch.testing.assert_close(quantized_logits, reference_logits, rtol=1e-4, atol=1e-4)
    assert not torch.allclose(quantized_logits, full_logits, atol=1e-4)


def test_8bit_stays_close_to_full_precision(model64):
    model_dir = model64
    quantized = load_model(model_dir, dtype="float32", quantize="8bit")
    assert {type(module).__name__ for module in _block_linears(quantized).values()} == {"Linear8bitLt"}
    inputs = image_inputs(model_dir)
    with torch.no_grad():
        full_logits = load_model(model_dir, dtype="float32")(**inputs).logits
        quantized_logits = quantized(**inputs).logits
    # int8 weights (per row) and int8 activations (per token; inputs pass through fp16): a fraction of a percent
    # here, measured 0.4-0.5%
    relative = (quantized_logits - full_logits).norm() / full_logits.norm()
    assert 0 < relative < 0.02


def test_vision_tower_quantized_only_when_asked(model64):
    model = load_model(model64, dtype="float32", quantize="4bit", quantize_vision=True)
    parts = locate_parts(model)
    assert {type(m).__name__ for m in parts.vision_encoder.modules() if isinstance(m, torch.nn.Linear)} == {"Linear4bit"}
    assert all(type(m) is torch.nn.Linear for m in parts.connector.modules() if isinstance(m, torch.nn.Linear))
    assert model.lntune_quantization["vision_tower"] is True


@pytest.mark.parametrize("method", ["layernorm", "layernorm-simple"])
def test_norms_get_gradients_and_the_loss_falls(model64, method):
    model_dir = model64
    model = apply_method(load_model(model_dir, dtype="float32", quantize="4bit"), method)
    parts = locate_parts(model)
    norms = [p for block in parts.blocks for norm in block.norms.values() for p in norm.parameters()]
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert norms and all(p.requires_grad and p.dtype == torch.float32 for p in norms)
    assert all(p.is_floating_point() for p in trainable)  # nothing quantized trains
    inputs, labels = _batch(model_dir)
    optimizer = torch.optim.AdamW(trainable, lr=1e-2)
    losses = []
    for step in range(6):
        loss = _loss(model, inputs, labels)
        loss.backward()
        if step == 0:
            assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in norms)
        optimizer.step()
        optimizer.zero_grad()
        losses.append(float(loss))
    assert losses[-1] < losses[0] - 0.01, losses


def test_qlora_puts_peft_bitsandbytes_layers_on_the_quantized_weights(model64):
    from peft.tuners.lora.bnb import Linear4bit as LoraLinear4bit

    model_dir = model64
    model = apply_method(load_model(model_dir, dtype="float32", quantize="4bit"), MethodConfig(name="lora", lora_rank=4))
    wrapped = [m for m in model.modules() if isinstance(m, LoraLinear4bit)]
    assert len(wrapped) == len(_block_linears(load_model(model_dir)))
    trainable = [p for p in model.parameters() if p.requires_grad]
    inputs, labels = _batch(model_dir)
    optimizer = torch.optim.AdamW(trainable, lr=1e-2)
    losses = []
    for _ in range(6):
        loss = _loss(model, inputs, labels)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(float(loss))
    assert losses[-1] < losses[0] - 0.01, losses


def test_quantized_run_adapter_merges_exactly_into_the_full_precision_base(model64, tmp_path):
    model_dir = model64
    path, images = write_llava_data(tmp_path / "data", count=8)
    config = RunConfig(model=str(model_dir), out=str(tmp_path / "run"), method=MethodConfig(name="layernorm"),
                       data=DataConfig(sources=(DataSource(str(path)),), image_folder=str(images)),
                       train=TrainConfig(max_steps=3, batch_size=2, save_every=0, quantize="4bit", precision="fp32"))
    run = train(config, say=lambda message: None)
    manifest = read_manifest(run / "adapter")
    assert manifest["base_quantization"]["mode"] == "4bit" and manifest["base_quantization"]["vision_tower"] is False
    assert "quantize: 4bit" in (run / "config.yaml").read_text()
    trained = load_file(str(run / "adapter" / "trainable.safetensors"))
    assert any("layernorm" in name for name in trained)

    merged_dir = merge_adapter(model_dir, run / "adapter", tmp_path / "merged", say=lambda message: None)
    merged = dict(load_model(merged_dir).named_parameters())
    base = dict(load_model(model_dir).named_parameters())
    with_adapter = dict(load_adapter(load_model(model_dir), run / "adapter", model_dir).named_parameters())
    assert set(merged) == set(base)
    for name, parameter in merged.items():
        expected = trained[name] if name in trained else base[name]
        assert torch.equal(parameter, expected), name  # bit for bit: nothing quantized reaches the merged model
        assert torch.equal(with_adapter[name], expected), name
    assert any(not torch.equal(trained[name], base[name]) for name in trained)  # and training moved them


@pytest.mark.parametrize("method", ["full", "attn-qv", "attn-mlp"])
def test_methods_that_train_quantized_weights_are_refused(model64, tmp_path, method):
    with pytest.raises(LntuneError, match=f"method {method} trains the LLM's linear weights.*--quantize 4bit"):
        RunConfig(model="m", out="o", method=MethodConfig(name=method), data=DataConfig(sources=(DataSource("d"),)),
                  train=TrainConfig(quantize="4bit"))
    model = load_model(model64, dtype="float32", quantize="8bit")
    with pytest.raises(LntuneError, match="use lora, layernorm, layernorm-simple, connector"):
        apply_method(model, method)


def test_cpu_4bit_refuses_widths_its_kernels_get_wrong(built_model):
    with pytest.raises(LntuneError, match=r"--quantize 4bit on the CPU needs .* multiple of 64.*has 32. Use "
                                          r"--quantize 8bit"):
        load_model(built_model(), dtype="float32", quantize="4bit")


def test_quantize_settings_are_checked(monkeypatch):
    with pytest.raises(LntuneError, match="unknown train.quantize '3bit'"):
        TrainConfig(quantize="3bit")
    for mode in ("fsdp2", "zero2", "zero3"):
        with pytest.raises(LntuneError, match=f"one process or with distributed ddp, not {mode}"):
            TrainConfig(quantize="4bit", distributed=mode)
    with pytest.raises(LntuneError, match="quantize_vision needs train.quantize"):
        TrainConfig(quantize_vision=True)
    from lntune.model.quantize import require_bitsandbytes

    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # as if not installed
    with pytest.raises(LntuneError, match=r"needs bitsandbytes.*lntune\[quantize\]"):
        require_bitsandbytes()


def test_cli_quantize_flag_reaches_the_config(model64, tmp_path, capsys):
    from lntune.cli import main

    path, images = write_llava_data(tmp_path / "data", count=4)
    code = main(["train", "--model", str(model64), "--data", str(path), "--image-folder", str(images),
                 "--out", str(tmp_path / "run"), "--method", "full", "--quantize", "4bit"])
    assert code == 1
    assert "method full trains the LLM's linear weights" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()  # refused before anything was written


# ---- evaluation and chat on the quantized base -----------------------------------------------------

@pytest.fixture(scope="module")
def qln_adapter(model64, tmp_path_factory):
    """A layernorm adapter trained 2 steps on the 4-bit base."""
    root = tmp_path_factory.mktemp("qln")
    path, images = write_llava_data(root / "data", count=4)
    config = RunConfig(model=str(model64), out=str(root / "run"), method=MethodConfig(name="layernorm"),
                       data=DataConfig(sources=(DataSource(str(path)),), image_folder=str(images)),
                       train=TrainConfig(max_steps=2, batch_size=2, save_every=0, quantize="4bit", precision="fp32"))
    return train(config, say=lambda message: None) / "adapter"


def _eval_args(model_dir, adapter, tmp_path, *extra):
    from tests.eval.fixtures import write_pope

    pope, pope_images = write_pope(tmp_path / "pope", count=2)
    return ["eval", "--model", str(model_dir), "--adapter", str(adapter), "--out", str(tmp_path / "out"),
            "--bench", "pope", "--data", str(pope), "--images", str(pope_images), "--max-new-tokens", "2", *extra]


def test_eval_on_the_4bit_base_runs_quantized_and_records_it(model64, qln_adapter, tmp_path, monkeypatch, capsys):
    import json

    from lntune.cli import main
    from lntune.eval import generate

    seen = []
    real_generate = generate.AnswerGenerator.generate

    def watching(self, *args, **kwargs):  # what the model answering the questions really holds
        seen.append({type(module).__name__ for module in _block_linears(self.model).values()})
        return real_generate(self, *args, **kwargs)

    monkeypatch.setattr(generate.AnswerGenerator, "generate", watching)
    assert main(_eval_args(model64, qln_adapter, tmp_path, "--quantize", "4bit")) == 0
    assert seen and all(kinds == {"Linear4bit"} for kinds in seen)  # --quantize was not silently dropped
    assert "trained on a 4bit quantized base" not in capsys.readouterr().err  # evaluated as trained: no note
    record = json.loads((tmp_path / "out" / "pope" / "metrics.json").read_text())
    assert record["base_quantization"]["mode"] == "4bit" and record["base_quantization"]["vision_tower"] is False
    settings = json.loads((tmp_path / "out" / "pope" / "settings.json").read_text())
    assert settings["base_quantization"]["mode"] == "4bit"

    # the same folder on the full-precision base: answers from another base are never continued
    assert main(_eval_args(model64, qln_adapter, tmp_path)) == 1
    assert "base_quantization" in capsys.readouterr().err


def test_eval_of_a_qln_adapter_defaults_to_the_full_precision_base_with_a_note(model64, qln_adapter, tmp_path,
                                                                               capsys):
    import json
    import shutil

    from lntune.cli import main

    assert main(_eval_args(model64, qln_adapter, tmp_path)) == 0
    notes = [line for line in capsys.readouterr().err.splitlines() if line.startswith("note: adapter")]
    assert len(notes) == 1
    assert "trained on a 4bit quantized base" in notes[0] and "add --quantize 4bit to evaluate" in notes[0]
    assert json.loads((tmp_path / "out" / "pope" / "metrics.json").read_text())["base_quantization"] is None

    # an adapter trained on the full-precision base: no note
    plain = tmp_path / "plain_adapter"
    shutil.copytree(qln_adapter, plain)
    manifest = json.loads((plain / "adapter.json").read_text())
    del manifest["base_quantization"]
    (plain / "adapter.json").write_text(json.dumps(manifest))
    shutil.rmtree(tmp_path / "out")
    assert main(_eval_args(model64, plain, tmp_path)) == 0
    assert "note: adapter" not in capsys.readouterr().err


def test_quantized_base_with_adapter_computes_as_in_training(model64, qln_adapter):
    """The evaluation model (eval mode, no gradients) gives the logits of the training path (train mode): same
    4-bit weights, same fp32 compute (no bf16 inference kernel), the adapter's norms in place."""
    from lntune.adapter import load_with_adapter
    from lntune.eval.runner import load_generator

    trained = load_file(str(qln_adapter / "trainable.safetensors"))
    model = load_generator(str(model64), str(qln_adapter), quantize="4bit").model
    parameters = dict(model.named_parameters())
    assert all(torch.equal(parameters[name], tensor) for name, tensor in trained.items())
    inputs = image_inputs(model64)
    with torch.no_grad():
        evaluated = model(**inputs).logits
    training = load_with_adapter(model64, qln_adapter, quantize="4bit").train()
    with torch.no_grad():
        trained_logits = training(**inputs).logits
    torch.testing.assert_close(evaluated, trained_logits, rtol=1e-5, atol=1e-5)


def test_eval_quantize_refusals(model64, qln_adapter, tmp_path, monkeypatch, capsys):
    from lntune.cli import main

    assert main(_eval_args(model64, qln_adapter, tmp_path, "--quantize-vision")) == 1
    assert "--quantize-vision needs --quantize" in capsys.readouterr().err
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # as if not installed
    assert main(_eval_args(model64, qln_adapter, tmp_path, "--quantize", "8bit")) == 1
    assert "needs bitsandbytes" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()  # refused before anything was written


def test_chat_on_the_quantized_base(model64, qln_adapter, monkeypatch, capsys):
    from lntune.cli import main
    from lntune.eval import generate

    seen = []
    real_generate = generate.AnswerGenerator.generate
    monkeypatch.setattr(generate.AnswerGenerator, "generate", lambda self, *a, **k: (
        seen.append({type(m).__name__ for m in _block_linears(self.model).values()}), real_generate(self, *a, **k))[1])
    assert main(["chat", "--model", str(model64), "--adapter", str(qln_adapter), "--quantize", "8bit",
                 "--max-new-tokens", "2", "Hello?"]) == 0
    assert seen == [{"Linear8bitLt"}]
