"""`lntune import`: LLaVA-codebase projector files and full checkpoints -> lntune's Llava layout.

The LLaVA files are made here from tiny built models' own tensors under LLaVA's names, so each test
knows exactly what the import must produce.
"""

import hashlib
import json
import shutil

import pytest
import torch
import torch.nn.functional as F

from lntune.cli import main
from lntune.errors import LntuneError
from lntune.model.llava_import import import_llava_checkpoint, import_projector
from lntune.model.load import load_model, load_processor
from tests.helpers import image_inputs

# lntune's connector names -> LLaVA's mm_projector names.
LLAVA_PROJECTOR_NAMES = {
    "linear.weight": "weight", "linear.bias": "bias",
    "linear_1.weight": "0.weight", "linear_1.bias": "0.bias", "linear_2.weight": "2.weight", "linear_2.bias": "2.bias",
}


class RunsCodeWhenUnpickled:
    """A pickle that would create a file if unpickling ran its code (weights_only must refuse it)."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        import pathlib

        return pathlib.Path.touch, (pathlib.Path(self.marker),)


def _sha256(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def write_projector(model_dir, path, seed=0):
    """The model's own connector under LLaVA's names, perturbed (so the import must change something)."""
    connector = load_model(model_dir).model.multi_modal_projector
    generator = torch.Generator().manual_seed(seed)
    tensors = {f"model.mm_projector.{LLAVA_PROJECTOR_NAMES[name]}": tensor + 0.5 * torch.randn(tensor.shape, generator=generator)
               for name, tensor in connector.state_dict().items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(tensors, path)
    return tensors


def llava_settings(projector_type, **overrides):
    """The image-path keys of a LLaVA config.json matching the tiny CLIP (32 px, 8 px patches, width 32)."""
    settings = {
        "architectures": ["LlavaLlamaForCausalLM"], "model_type": "llava_llama",
        "mm_vision_select_layer": -2, "mm_vision_select_feature": "patch", "mm_projector_type": projector_type,
        "mm_hidden_size": 32, "mm_vision_tower": "tiny/clip-vit-patch8-32", "mm_use_im_start_end": False,
        "mm_use_im_patch_token": False, "image_aspect_ratio": "pad",
    }
    settings.update(overrides)
    return settings


def llava_image_features(model, pixel_values, tensors, projector_type):
    """LLaVA's image features computed directly: layer -2 of the tower, CLS dropped, LLaVA's projector."""
    hidden = model.model.vision_tower(pixel_values, output_hidden_states=True).hidden_states[-2][:, 1:]  # [B, N, D_v]
    weight = lambda name: tensors[f"model.mm_projector.{name}"]  # noqa: E731
    if projector_type == "linear":
        return F.linear(hidden, weight("weight"), weight("bias"))
    return F.linear(F.gelu(F.linear(hidden, weight("0.weight"), weight("0.bias"))), weight("2.weight"), weight("2.bias"))


def image_features(model, pixel_values):
    return torch.stack(list(model.get_image_features(pixel_values=pixel_values).pooler_output))  # [B, N, D_text]


@pytest.mark.parametrize("connector,with_config", [("linear", False), ("mlp2x_gelu", True)])
def test_projector_import_gives_llava_image_features(connector, with_config, built_model, tmp_path):
    model_dir = built_model(connector=connector)
    weights_before = _sha256(model_dir / "model.safetensors")
    projector = tmp_path / "llava-run" / "mm_projector.bin"
    tensors = write_projector(model_dir, projector)
    if with_config:
        (projector.parent / "config.json").write_text(json.dumps(llava_settings(connector)))
    out = tmp_path / "imported"

    assert main(["import", "projector", "--model", str(model_dir), "--projector", str(projector), "--out", str(out)]) == 0

    source, imported = load_model(model_dir).eval(), load_model(out).eval()
    pixel_values = image_inputs(out)["pixel_values"]
    with torch.no_grad():
        got = image_features(imported, pixel_values)
        expected = llava_image_features(imported, pixel_values, tensors, connector)
        before = image_features(source, pixel_values)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)
    assert not torch.allclose(got, before, atol=1e-2)  # the import changed the connector
    assert torch.equal(imported.lm_head.weight, source.lm_head.weight)  # and nothing else
    assert _sha256(model_dir / "model.safetensors") == weights_before  # the input model is untouched
    record = json.loads((out / "lntune_import.json").read_text())
    assert record["projector_type"] == connector
    assert (record["llava_settings"] is not None) == with_config
    assert load_processor(out).tokenizer.convert_tokens_to_ids("<image>") == imported.config.image_token_id
    with pytest.raises(LntuneError, match="already exists and is not empty; choose another --out or pass --overwrite"):
        import_projector(model_dir, projector, out, say=lambda m: None)


@pytest.mark.parametrize("overrides,message", [
    ({"mm_vision_select_layer": -1}, "vision layer: LLaVA -1, model -2; build a matching model first: lntune build "
     "--llm LLM_DIR --vision CLIP_DIR --out DIR --connector mlp2x_gelu --vision-layer -1 --vision-select patch"),
    ({"mm_vision_select_feature": "cls_patch"}, "vision select: LLaVA cls_patch, model patch"),
    ({"mm_vision_tower": "openai/clip-vit-large-patch14-336"}, "image size: LLaVA 336"),
    ({"mm_hidden_size": 1024}, "vision hidden size: LLaVA 1024, model 32"),
    ({"mm_use_im_start_end": True}, "mm_use_im_start_end is true"),
    ({"mm_projector_type": "linear"}, "the two files are from different runs"),
])
def test_projector_settings_that_differ_are_refused(overrides, message, built_model, tmp_path):
    model_dir = built_model()
    projector = tmp_path / "run" / "mm_projector.bin"
    write_projector(model_dir, projector)
    (projector.parent / "config.json").write_text(json.dumps(llava_settings("mlp2x_gelu", **overrides)))
    with pytest.raises(LntuneError) as error:
        import_projector(model_dir, projector, tmp_path / "out", say=lambda m: None)
    assert message in str(error.value)
    assert not (tmp_path / "out").exists()


def test_projector_type_must_match_the_model(built_model, tmp_path):
    projector = tmp_path / "mm_projector.bin"
    write_projector(built_model(connector="mlp2x_gelu"), projector)
    with pytest.raises(LntuneError, match=r"connector: LLaVA mlp2x_gelu, model linear; .*--connector mlp2x_gelu"):
        import_projector(built_model(connector="linear"), projector, tmp_path / "out", say=lambda m: None)


def test_projector_needs_a_clip_model(built_model, tmp_path):
    """LLaVA's vision tower is CLIP; its `patch` features drop a CLS token that SigLIP does not have."""
    projector = tmp_path / "mm_projector.bin"
    write_projector(built_model(), projector)
    with pytest.raises(LntuneError, match="vision encoder: LLaVA CLIP, model siglip_vision_model"):
        import_projector(built_model(vision="siglip"), projector, tmp_path / "out", say=lambda m: None)


@pytest.mark.parametrize("shape,message", [
    ((32, 16), "input width 16, but the model's vision features are 32 wide"),
    ((20, 32), "output width 20, but the model's LLM hidden size is 32"),
])
def test_projector_widths_are_checked(shape, message, built_model, tmp_path):
    projector = tmp_path / "mm_projector.bin"
    torch.save({"model.mm_projector.weight": torch.zeros(shape), "model.mm_projector.bias": torch.zeros(shape[0])},
               projector)
    with pytest.raises(LntuneError, match=message):
        import_projector(built_model(connector="linear"), projector, tmp_path / "out", say=lambda m: None)


def test_pickle_with_code_is_refused_without_running_it(built_model, tmp_path, capsys):
    marker = tmp_path / "code-ran"
    projector = tmp_path / "mm_projector.bin"
    torch.save({"model.mm_projector.weight": torch.zeros(32, 32), "extra": RunsCodeWhenUnpickled(marker)}, projector)
    code = main(["import", "projector", "--model", str(built_model(connector="linear")), "--projector", str(projector),
                 "--out", str(tmp_path / "out")])
    error = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(error) == 1
    assert "holds more than tensors and was refused" in error[0] and "weights_only=True" in error[0]
    assert not marker.exists() and not (tmp_path / "out").exists()


def test_missing_or_foreign_projector_files_are_refused(built_model, tmp_path):
    model_dir = built_model(connector="linear")
    with pytest.raises(LntuneError, match="file not found"):
        import_projector(model_dir, tmp_path / "nowhere.bin", tmp_path / "out", say=lambda m: None)
    (tmp_path / "garbage.bin").write_bytes(b"not a torch file")
    with pytest.raises(LntuneError, match="is not a readable torch file"):
        import_projector(model_dir, tmp_path / "garbage.bin", tmp_path / "out", say=lambda m: None)
    torch.save({"model.mm_projector.0.weight": torch.zeros(2, 2)}, tmp_path / "odd.bin")
    with pytest.raises(LntuneError, match="neither LLaVA's linear"):
        import_projector(model_dir, tmp_path / "odd.bin", tmp_path / "out", say=lambda m: None)
    with pytest.raises(LntuneError, match="never modifies its input"):
        import_projector(model_dir, tmp_path / "odd.bin", model_dir, say=lambda m: None)


def test_a_failed_import_leaves_nothing_behind(built_model, tmp_path, monkeypatch):
    import lntune.model.llava_import as llava_import

    projector = tmp_path / "mm_projector.bin"
    write_projector(built_model(), projector)

    def fail(*args):
        raise OSError("disk full")

    monkeypatch.setattr(llava_import, "_write_json", fail)
    with pytest.raises(OSError, match="disk full"):
        import_projector(built_model(), projector, tmp_path / "out", say=lambda m: None)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["mm_projector.bin"]


# ---- full LLaVA checkpoints ---------------------------------------------------------------------------------------

def write_llava_checkpoint(source_dir, llm_dir, out, llm_family, tower, file_format, dtype=None,
                           **setting_overrides):
    """A LLaVA-codebase checkpoint made from a built model: LLaVA's names, the LLM's own vocabulary, two shards."""
    model = load_model(source_dir)
    vocabulary = model.config.image_token_id  # <image> was appended to the LLM's vocabulary by the build
    tensors = {}
    for name, tensor in model.state_dict().items():
        if name.startswith("model.language_model."):
            llava_name = "model." + name.removeprefix("model.language_model.")
        elif name.startswith("model.multi_modal_projector."):
            llava_name = "model.mm_projector." + LLAVA_PROJECTOR_NAMES[name.removeprefix("model.multi_modal_projector.")]
        elif name.startswith("model.vision_tower."):
            if not tower:
                continue  # LLaVA usually does not save its (frozen) vision tower
            llava_name = "model.vision_tower.vision_tower.vision_model." + name.removeprefix("model.vision_tower.")
        else:
            llava_name = name
        if llava_name in ("model.embed_tokens.weight", "lm_head.weight"):
            tensor = tensor[:vocabulary]
        tensors[llava_name] = tensor.to(dtype or tensor.dtype).clone().contiguous()
    out.mkdir(parents=True)
    names = sorted(tensors)
    for index, shard_names in enumerate((names[: len(names) // 2], names[len(names) // 2:]), start=1):
        shard = {name: tensors[name] for name in shard_names}
        if file_format == "bin":
            torch.save(shard, out / f"pytorch_model-0000{index}-of-00002.bin")
        else:
            from safetensors.torch import save_file

            save_file(shard, str(out / f"model-0000{index}-of-00002.safetensors"), metadata={"format": "pt"})
    # LLaVA saves its training arguments beside the weights: a pickle that must never be read.
    torch.save({"args": RunsCodeWhenUnpickled(out / "code-ran")}, out / "training_args.bin")
    # config.json as LLaVA-1.5 (transformers 4.31) writes it: the LLM's config plus LLaVA's keys.
    text = model.config.text_config.to_dict()
    rope = text.pop("rope_parameters")
    for key in ("dtype", "_name_or_path", "architectures", "model_type", "transformers_version"):
        text.pop(key, None)
    text.update(vocab_size=vocabulary, rope_theta=rope["rope_theta"], rope_scaling=None,
                torch_dtype=str(dtype or torch.float32).removeprefix("torch."))
    architecture = {"llama": "LlavaLlamaForCausalLM", "mistral": "LlavaMistralForCausalLM"}[llm_family]
    settings = llava_settings(load_model(source_dir).config.lntune_connector, architectures=[architecture],
                              model_type="llava", **setting_overrides)  # LLaVA-1.5's own model_type is "llava"
    (out / "config.json").write_text(json.dumps({**text, **settings}, indent=2))
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(llm_dir / name, out / name)
    return vocabulary


@pytest.mark.parametrize("llm_family,connector,tower,file_format", [
    ("llama", "linear", False, "bin"),
    ("mistral", "mlp2x_gelu", True, "safetensors"),
])
def test_llava_checkpoint_converts_with_identical_logits(llm_family, connector, tower, file_format,
                                                          built_model, backbone_dir, tmp_path):
    from tests.backbones import write_tiny_vision

    source_dir = built_model(llm=llm_family, connector=connector)
    checkpoint = tmp_path / "llava-checkpoint"
    vocabulary = write_llava_checkpoint(source_dir, backbone_dir("llm", llm_family), checkpoint, llm_family, tower,
                                        file_format)
    # With the tower in the checkpoint, --vision gives only config and processor: another CLIP's weights
    # there must not be used.
    vision = write_tiny_vision(tmp_path / "other-clip", seed=1) if tower else backbone_dir("vision", "clip")
    out = tmp_path / "imported"

    assert main(["import", "llava", "--checkpoint", str(checkpoint), "--vision", str(vision), "--out", str(out)]) == 0

    source, imported = load_model(source_dir).eval(), load_model(out).eval()
    source_inputs, inputs = image_inputs(source_dir), image_inputs(out)
    assert torch.equal(source_inputs["input_ids"], inputs["input_ids"])
    assert torch.equal(source_inputs["pixel_values"], inputs["pixel_values"])
    with torch.no_grad():
        expected = source(**source_inputs).logits[..., :vocabulary]
        got = imported(**inputs).logits[..., :vocabulary]
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)
    generated = imported.generate(**inputs, max_new_tokens=4, do_sample=False)
    assert generated.shape[1] == inputs["input_ids"].shape[1] + 4
    config = json.loads((out / "config.json").read_text())
    assert config["image_aspect_ratio"] == "pad"
    assert config["vision_feature_layer"] == -2 and config["vision_feature_select_strategy"] == "default"
    # mlp2x_gelu: a stock Llava directory; linear: lntune's extension.
    assert (type(imported).__name__ == "LlavaForConditionalGeneration") == (connector == "mlp2x_gelu")
    record = json.loads((out / "lntune_import.json").read_text())
    assert (record["vision_tower_from"] == "checkpoint") == tower
    assert not (checkpoint / "code-ran").exists()


def test_llava_checkpoint_keeps_its_dtype(built_model, backbone_dir, tmp_path):
    """LLaVA saves half precision; the import keeps it (the float32 vision tower from --vision is cast)."""
    checkpoint = tmp_path / "llava-checkpoint"
    write_llava_checkpoint(built_model(), backbone_dir("llm", "llama"), checkpoint, "llama", False, "safetensors",
                           dtype=torch.bfloat16)
    out = import_llava_checkpoint(checkpoint, backbone_dir("vision", "clip"), tmp_path / "out", say=lambda m: None)
    model = load_model(out)
    assert {parameter.dtype for parameter in model.parameters()} == {torch.bfloat16}
    with torch.no_grad():
        assert torch.isfinite(model(**image_inputs(out)).logits).all()


@pytest.mark.parametrize("overrides,vision,message", [
    ({"mm_use_im_start_end": True}, True, "mm_use_im_start_end is true"),
    ({}, False, "needs --vision: the local directory of its vision tower (tiny/clip-vit-patch8-32)"),
    ({"mm_vision_tower": "openai/clip-vit-large-patch14-336"}, True, "image size: LLaVA 336 "
     "(openai/clip-vit-large-patch14-336), --vision 32; give a local copy of openai/clip-vit-large-patch14-336"),
    ({"image_aspect_ratio": "anyres"}, True, "LLaVA-NeXT"),
])
def test_llava_checkpoint_refusals(overrides, vision, message, built_model, backbone_dir, tmp_path):
    checkpoint = tmp_path / "llava-checkpoint"
    write_llava_checkpoint(built_model(), backbone_dir("llm", "llama"), checkpoint, "llama", False, "bin", **overrides)
    with pytest.raises(LntuneError) as error:
        import_llava_checkpoint(checkpoint, backbone_dir("vision", "clip") if vision else None, tmp_path / "out",
                                say=lambda m: None)
    assert message in str(error.value)
    assert not (tmp_path / "out").exists()


def test_hf_llava_directory_is_not_imported(built_model, tmp_path):
    with pytest.raises(LntuneError, match="already a Hugging Face Llava model"):
        import_llava_checkpoint(built_model(), None, tmp_path / "out", say=lambda m: None)


@pytest.mark.parametrize("change,message", [
    ("extra", "holds tensors lntune does not know where to put: ['model.extra_head.weight']"),
    ("missing", "its tensors do not fit the model its config.json describes: missing: "
     "['model.language_model.norm.weight']"),
    ("vocabulary", "other shapes: ['lm_head.weight [320, 32], config.json implies [325, 32]'"),
    ("lora", "is a LoRA run's output; merge it first"),
])
def test_llava_checkpoint_tensors_must_fit(change, message, built_model, backbone_dir, tmp_path):
    checkpoint = tmp_path / "llava-checkpoint"
    write_llava_checkpoint(built_model(), backbone_dir("llm", "llama"), checkpoint, "llama", False, "bin")
    shard_file = checkpoint / "pytorch_model-00002-of-00002.bin"  # the later names, model.norm.weight among them
    shard = torch.load(shard_file, weights_only=True)
    assert "model.norm.weight" in shard
    if change == "extra":
        shard["model.extra_head.weight"] = torch.zeros(2)
    elif change == "missing":
        shard = {name: tensor for name, tensor in shard.items() if name != "model.norm.weight"}
    elif change == "vocabulary":
        config = json.loads((checkpoint / "config.json").read_text())
        (checkpoint / "config.json").write_text(json.dumps(dict(config, vocab_size=config["vocab_size"] + 5)))
    else:
        (checkpoint / "adapter_config.json").write_text("{}")
    torch.save(shard, shard_file)
    with pytest.raises(LntuneError) as error:
        import_llava_checkpoint(checkpoint, backbone_dir("vision", "clip"), tmp_path / "out", say=lambda m: None)
    assert message in str(error.value)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["llava-checkpoint"]
