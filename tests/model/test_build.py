"""lntune build: assembly for every LLM and vision family, save/reload, stock loading, image tokens."""

import json

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoProcessor, LlavaForConditionalGeneration

from lntune.config import BuildConfig
from lntune.errors import LntuneError
from lntune.model.build import build_mllm
from lntune.model.connector import LinearConnector
from lntune.model.load import LntuneLlavaForConditionalGeneration, load_model, load_processor
from tests.helpers import image_inputs

LLM_FAMILIES = ["llama", "mistral", "qwen2", "qwen3", "gemma2"]


def _logits(model, inputs):
    model.eval()
    with torch.no_grad():
        return model(**inputs).logits


@pytest.mark.parametrize("llm", LLM_FAMILIES)
def test_every_llm_family_keeps_its_language_model(llm, built_model, backbone_dir):
    """Text-only logits of the built MLLM equal the original LLM's (for the original vocabulary)."""
    model_dir = built_model(llm=llm)
    mllm = load_model(model_dir).eval()
    original = AutoModelForCausalLM.from_pretrained(backbone_dir("llm", llm)).eval()
    input_ids = torch.tensor([[1, 5, 17, 42, 99, 7]])
    with torch.no_grad():
        expected = original(input_ids=input_ids).logits
        got = mllm(input_ids=input_ids).logits[..., : expected.shape[-1]]
    if llm == "gemma2":
        # Stock Llava applies no final-logit soft-capping (Gemma2ForCausalLM does); it is monotonic,
        # so greedy answers agree. Compare the capped values. Documented in docs/architecture.md.
        cap = original.config.final_logit_softcapping
        got = torch.tanh(got / cap) * cap
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)


@pytest.mark.parametrize(
    "llm,vision,connector",
    [(family, "clip", "mlp2x_gelu") for family in LLM_FAMILIES]
    + [("llama", "siglip", "mlp2x_gelu"), ("llama", "clip-full", "linear"), ("qwen3", "siglip", "linear")],
)
def test_build_save_reload_identical_logits(llm, vision, connector, built_model, tmp_path):
    model_dir = built_model(llm=llm, vision=vision, connector=connector)
    inputs = image_inputs(model_dir)
    model = load_model(model_dir)
    before = _logits(model, inputs)
    model.save_pretrained(tmp_path / "again")
    after = _logits(load_model(tmp_path / "again"), inputs)
    assert torch.equal(before, after)
    assert torch.isfinite(before).all()


def test_vision_half_of_full_clip_checkpoint_is_used(built_model, backbone_dir):
    from transformers import CLIPModel

    model = load_model(built_model(vision="clip-full"))
    clip = CLIPModel.from_pretrained(backbone_dir("vision", "clip-full"))
    ours = dict(model.model.vision_tower.named_parameters())
    theirs = dict(clip.vision_model.named_parameters())
    assert set(ours) == set(theirs)
    assert all(torch.equal(ours[name], theirs[name]) for name in ours)


def test_mlp2x_gelu_loads_and_generates_in_stock_transformers(built_model):
    model_dir = built_model()
    model = LlavaForConditionalGeneration.from_pretrained(model_dir).eval()
    processor = AutoProcessor.from_pretrained(model_dir)
    conversation = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is it?"}]}]
    prompt = processor.apply_chat_template(conversation, add_generation_prompt=True)
    assert "<image>" in prompt and prompt.endswith("ASSISTANT:")
    inputs = image_inputs(model_dir, text=prompt)
    cached = model.generate(**inputs, max_new_tokens=6, do_sample=False, use_cache=True)
    uncached = model.generate(**inputs, max_new_tokens=6, do_sample=False, use_cache=False)
    assert cached.shape[1] > inputs["input_ids"].shape[1]
    assert torch.equal(cached, uncached)


def test_linear_connector_is_an_lntune_extension(built_model):
    model_dir = built_model(connector="linear")
    config = json.loads((model_dir / "config.json").read_text())
    assert config["lntune_connector"] == "linear"
    model = load_model(model_dir)
    assert isinstance(model, LntuneLlavaForConditionalGeneration)
    assert isinstance(model.model.multi_modal_projector, LinearConnector)


def test_image_tokens_land_where_the_image_is(built_model):
    """The embeddings at the <image> positions are exactly the connector's output for that image."""
    model_dir = built_model()
    model = load_model(model_dir).eval()
    inputs = image_inputs(model_dir)
    positions = inputs["input_ids"][0] == model.config.image_token_id
    assert int(positions.sum()) == model.config.image_seq_length == 16  # 32 px / 8 px patches
    with torch.no_grad():
        features = model.get_image_features(pixel_values=inputs["pixel_values"]).pooler_output[0]  # [N, D]
        outputs = model(**inputs, output_hidden_states=True)
    input_embeddings = outputs.hidden_states[0][0]  # [T, D]: what the first block received
    torch.testing.assert_close(input_embeddings[positions], features)
    text_ids = inputs["input_ids"][0][~positions]
    torch.testing.assert_close(input_embeddings[~positions], model.get_input_embeddings()(text_ids))


def test_cls_patch_adds_one_token_and_runs(built_model):
    model_dir = built_model(vision_select="cls_patch")
    model = load_model(model_dir)
    assert model.config.image_seq_length == 17
    inputs = image_inputs(model_dir)
    assert int((inputs["input_ids"] == model.config.image_token_id).sum()) == 17
    assert torch.isfinite(_logits(model, inputs)).all()


def test_siglip_has_no_cls_token(backbone_dir, tmp_path):
    config = BuildConfig(llm=str(backbone_dir("llm", "llama")), vision=str(backbone_dir("vision", "siglip")),
                         out=str(tmp_path / "m"), vision_select="cls_patch")
    with pytest.raises(LntuneError, match="CLS token"):
        build_mllm(config, say=lambda m: None)
    assert not (tmp_path / "m").exists()


def test_tokens_added_and_embeddings_resized(built_model, backbone_dir):
    from transformers import AutoTokenizer

    model_dir = built_model()
    original = AutoTokenizer.from_pretrained(backbone_dir("llm", "llama"))
    processor = load_processor(model_dir)
    model = load_model(model_dir)
    assert processor.tokenizer.pad_token == "<unk>"  # no pad token in the LLM: LLaVA's choice, <unk>
    assert processor.tokenizer.convert_tokens_to_ids("<image>") == model.config.image_token_id == len(original)
    assert model.get_input_embeddings().weight.shape[0] == len(original) + 1
    assert model.lm_head.weight.shape[0] == len(original) + 1
    record = json.loads((model_dir / "lntune_build.json").read_text())
    assert record["added_tokens"] == ["<image>", "pad_token=<unk> (existing)"]


def test_pad_token_added_when_no_unk(backbone_dir, tmp_path):
    from transformers import AutoTokenizer

    llm_dir = tmp_path / "llm"
    import shutil

    shutil.copytree(backbone_dir("llm", "llama"), llm_dir)
    tokenizer = AutoTokenizer.from_pretrained(llm_dir)
    tokenizer.unk_token = None
    tokenizer.save_pretrained(llm_dir)
    out = build_mllm(BuildConfig(llm=str(llm_dir), vision=str(backbone_dir("vision", "clip")), out=str(tmp_path / "m")),
                     say=lambda m: None)
    processor = load_processor(out)
    assert processor.tokenizer.pad_token == "<pad>"
    assert load_model(out).get_input_embeddings().weight.shape[0] == len(tokenizer) + 2


def test_existing_hf_llava_checkpoint_is_accepted(tmp_path):
    """A stock Llava checkpoint (no lntune keys) loads, counts and takes a method."""
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig

    from lntune.methods import apply_method
    from lntune.params import config_for_counting, count_parameters

    config = LlavaConfig(
        text_config=LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                num_attention_heads=4, num_key_value_heads=2),
        vision_config=CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                       num_attention_heads=4, image_size=32, patch_size=8),
        image_token_index=63, image_seq_length=16,
    )
    LlavaForConditionalGeneration(config).save_pretrained(tmp_path / "stock")
    model = load_model(tmp_path / "stock")
    assert type(model) is LlavaForConditionalGeneration
    report = count_parameters(apply_method(model, "layernorm"), method="layernorm")
    assert report.components["block_norms"].trainable == 2 * 2 * 32
    assert config_for_counting(model=str(tmp_path / "stock")).image_token_index == 63


def test_existing_output_is_not_overwritten(built_model, backbone_dir):
    model_dir = built_model()
    before = (model_dir / "model.safetensors").read_bytes()
    config = BuildConfig(llm=str(backbone_dir("llm", "llama")), vision=str(backbone_dir("vision", "clip")),
                         out=str(model_dir))
    with pytest.raises(LntuneError, match="--overwrite"):
        build_mllm(config, say=lambda m: None)
    assert (model_dir / "model.safetensors").read_bytes() == before


def test_dtype_option(backbone_dir, tmp_path):
    config = BuildConfig(llm=str(backbone_dir("llm", "llama")), vision=str(backbone_dir("vision", "clip")),
                         out=str(tmp_path / "bf16"), dtype="bfloat16")
    model = load_model(build_mllm(config, say=lambda m: None))
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
