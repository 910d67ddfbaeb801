"""Data: lazy LLaVA records with validation, images, templates and label masks, mixing, the dataset."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from lntune.config import DataConfig, DataSource
from lntune.data.dataset import SupervisedDataset, collate
from lntune.data.images import DEFAULT_MAX_PIXELS, ImageError, load_image, to_rgb
from lntune.data.mixture import build_mixture, parse_data_spec
from lntune.data.records import RecordFile
from lntune.errors import LntuneError
from lntune.model.load import load_llava_config, load_processor
from lntune.prompt import IGNORE_INDEX, TEMPLATES, PromptBuilder
from tests.helpers import shifted_offsets, write_llava_data

GOOD = {"id": "a", "image": "x.png", "conversations": [
    {"from": "human", "value": "<image>\nWhat?"}, {"from": "gpt", "value": "A square."}]}


def write_json(path, records):
    path.write_text(json.dumps(records, indent=1))
    return path


# ---- records -------------------------------------------------------------------------------------

@pytest.mark.parametrize("jsonl", [False, True])
def test_json_list_and_lines_read_lazily(tmp_path, jsonl):
    path, _ = write_llava_data(tmp_path, count=6, text_only=2, jsonl=jsonl)
    records = RecordFile(path)
    assert len(records) == 8
    assert records[3].id == "s3" and records[3].image == "0003.png"
    assert records[7].image is None and records[7].messages[0] == ("user", "What is 1 plus one?")
    assert [records.type_of(i) for i in range(3)] == ["conversation", "detail", "conversation"]
    assert sum(records.has_image) == 6


def test_offsets_survive_non_ascii_text(tmp_path):
    records = [dict(GOOD, id=f"n{i}", conversations=[{"from": "human", "value": "<image>\nWas ist das? — ünïcode ✓"},
                                                     {"from": "gpt", "value": f"Ein Quadrat Nr. {i} 🟥"}]) for i in range(3)]
    index = RecordFile(write_json(tmp_path / "u.json", records))
    assert [index[i].messages[1][1] for i in range(3)] == [f"Ein Quadrat Nr. {i} 🟥" for i in range(3)]


def test_malformed_json_names_line_and_column(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text("[\n  " + json.dumps(GOOD) + ',\n  {"id": "b",, }\n]')
    with pytest.raises(LntuneError, match=r"bad.json:3:\d+: invalid JSON in sample 1"):
        RecordFile(path)
    lines = tmp_path / "bad.jsonl"
    lines.write_text(json.dumps(GOOD) + "\n{not json}\n")
    with pytest.raises(LntuneError, match=r"bad.jsonl:2:\d+: invalid JSON"):
        RecordFile(lines)


def test_not_utf8_names_the_byte(tmp_path):
    path = tmp_path / "latin1.jsonl"
    path.write_bytes(json.dumps(GOOD).encode() + b"\n" + '{"id": "caf\xe9"}'.encode("latin-1") + b"\n")
    with pytest.raises(LntuneError, match=r"not UTF-8 text at byte \d+ \(line 2\)"):
        RecordFile(path)


@pytest.mark.parametrize("change,message", [
    ({"conversations": None}, "missing or empty 'conversations'"),
    ({"conversations": [{"from": "gpt", "value": "hi"}, {"from": "human", "value": "<image>"}]}, "out of order"),
    ({"conversations": [{"from": "human", "value": "<image>\nq"}, {"from": "gpt", "value": "  "}]}, "is empty"),
    ({"conversations": [{"from": "human", "value": "<image>\nq"}]}, "must end with a gpt turn"),
    ({"conversations": [{"from": "robot", "value": "x"}]}, "unknown 'from'"),
    ({"image": None}, "no 'image'"),
    ({"conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}]}, "0 <image> placeholders"),
    ({"image": ["a.png", "b.png"]}, "multi-image"),
])
def test_invalid_records_are_named(tmp_path, change, message):
    bad = dict(GOOD, id="bad-one", **change)
    path = write_json(tmp_path / "d.json", [GOOD, bad])
    with pytest.raises(LntuneError, match="id bad-one") as error:
        RecordFile(path)
    assert message in str(error.value) and "sample 1" in str(error.value) and "--skip-invalid" in str(error.value)


def test_skip_invalid_counts(tmp_path):
    path = write_json(tmp_path / "d.json", [GOOD, dict(GOOD, id="x", conversations=[]), GOOD])
    records = RecordFile(path, skip_invalid=True)
    assert len(records) == 2 and len(records.invalid) == 1 and "id x" in records.invalid[0]


# ---- images --------------------------------------------------------------------------------------

@pytest.mark.parametrize("mode", ["L", "1", "P", "RGBA", "LA", "CMYK", "I;16", "I", "F"])
def test_every_image_mode_becomes_rgb(tmp_path, mode):
    base = Image.fromarray(np.random.default_rng(0).integers(0, 255, (12, 10, 3), dtype=np.uint8))
    if mode in ("I;16", "I", "F"):
        image = Image.fromarray((np.arange(120).reshape(12, 10) * 500).astype({"I;16": np.uint16, "I": np.int32, "F": np.float32}[mode]))
    else:
        image = base.convert(mode)
    suffix = ".tiff" if mode in ("CMYK", "I", "F") else ".png"
    image.save(tmp_path / f"i{suffix}")
    loaded = load_image(tmp_path, f"i{suffix}", "s")
    assert loaded.mode == "RGB" and loaded.size == (10, 12)
    if mode in ("I;16", "I", "F"):
        values = np.asarray(loaded)[..., 0]
        assert values.min() == 0 and values.max() == 255  # rescaled, not clipped to white


def test_transparency_composited_on_white():
    image = Image.new("RGBA", (4, 4), (255, 0, 0, 0))
    assert to_rgb(image).getpixel((0, 0)) == (255, 255, 255)


def test_image_path_escape_refused(tmp_path):
    (tmp_path / "images").mkdir()
    Image.new("RGB", (4, 4)).save(tmp_path / "secret.png")
    for path in ("../secret.png", str(tmp_path / "secret.png")):
        with pytest.raises(ImageError, match="outside the image folder"):
            load_image(tmp_path / "images", path, "sample 7")


def test_decompression_bomb_guard(tmp_path):
    Image.new("L", (400, 300)).save(tmp_path / "big.png")
    with pytest.raises(ImageError, match="120,000 pixels"):
        load_image(tmp_path, "big.png", "s", max_pixels=100_000)
    assert load_image(tmp_path, "big.png", "s", max_pixels=DEFAULT_MAX_PIXELS).size == (400, 300)


def test_missing_and_corrupt_images(tmp_path):
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8\xff not really a jpeg")
    with pytest.raises(ImageError, match="not found"):
        load_image(tmp_path, "gone.jpg", "sample 3")
    with pytest.raises(ImageError, match="cannot read image"):
        load_image(tmp_path, "broken.jpg", "sample 3")


# ---- templates and masks -------------------------------------------------------------------------

MESSAGES = [{"role": "user", "content": "<image>\nWhat is it?"}, {"role": "assistant", "content": "A red circle."},
            {"role": "user", "content": "Color?"}, {"role": "assistant", "content": "Red"}]


@pytest.mark.parametrize("name", sorted(TEMPLATES))
def test_only_assistant_tokens_are_supervised(name, built_model):
    tokenizer = load_processor(built_model()).tokenizer
    sample = PromptBuilder(tokenizer, name).encode(MESSAGES, "s")
    supervised = tokenizer.decode([t for t, label in zip(sample.input_ids, sample.labels) if label != IGNORE_INDEX])
    eos = tokenizer.eos_token
    assert supervised.replace(" ", "") == f"Ared circle.{eos}Red{eos}".replace(" ", "")
    assert sample.input_ids.count(tokenizer.convert_tokens_to_ids("<image>")) == 1
    prompt = tokenizer.decode(sample.input_ids)
    if name != "plain":
        assert "What is it?" in prompt and "Color?" in prompt


def test_vicuna_v1_is_llavas_format(built_model):
    tokenizer = load_processor(built_model()).tokenizer
    text = tokenizer.apply_chat_template(MESSAGES, chat_template=TEMPLATES["vicuna_v1"], tokenize=False)
    assert text.endswith("USER: <image>\nWhat is it? ASSISTANT: A red circle.</s>USER: Color? ASSISTANT: Red</s>")
    assert text.startswith("A chat between a curious user and an artificial intelligence assistant. The assistant "
                           "gives helpful, detailed, and polite answers to the user's questions. USER:")


def test_mask_self_check_catches_a_broken_tokenizer(built_model):
    """A tokenizer whose offsets are wrong would supervise the wrong text: the check names the sample."""
    tokenizer = load_processor(built_model()).tokenizer
    with shifted_offsets(tokenizer, 6), pytest.raises(LntuneError, match="sample 42.*self-check failed"):
        PromptBuilder(tokenizer, "vicuna_v1").encode(MESSAGES, "sample 42")


# ---- mixing --------------------------------------------------------------------------------------

def test_data_spec_parsing():
    assert parse_data_spec("conversation=conv58k.json:20000") == DataSource("conv58k.json", "conversation", 20000)
    assert parse_data_spec("/data/x.jsonl") == DataSource("/data/x.jsonl", None, None)
    assert parse_data_spec("x.json:5") == DataSource("x.json", None, 5)


def test_mixing_by_count_and_type_is_deterministic(tmp_path):
    conv, _ = write_llava_data(tmp_path / "a", count=12, types=("conversation",), name="conv")
    detail, _ = write_llava_data(tmp_path / "b", count=12, types=("detail",), name="detail")
    config = DataConfig(sources=(DataSource(str(conv), count=5), DataSource(str(detail), count=3)))
    first, again = build_mixture(config, seed=1), build_mixture(config, seed=1)
    assert first.items == again.items and len(first) == 8
    assert first.counts_by_type() == {"conversation": 5, "detail": 3}
    assert build_mixture(config, seed=2).items != first.items
    only = build_mixture(DataConfig(sources=(DataSource(str(conv)), DataSource(str(detail))), types=("detail",)), 0)
    assert only.counts_by_type() == {"detail": 12}
    with pytest.raises(LntuneError, match="13 samples asked for, but it has only 12"):
        build_mixture(DataConfig(sources=(DataSource(str(conv), count=13),)), 0)


def test_source_type_tags_untyped_samples(tmp_path):
    path = write_json(tmp_path / "u.json", [GOOD, GOOD])
    mixture = build_mixture(DataConfig(sources=(DataSource(str(path), type="conversation"),)), 0)
    assert mixture.counts_by_type() == {"conversation": 2}


# ---- dataset -------------------------------------------------------------------------------------

def _dataset(model_dir, path, images, **data):
    config = DataConfig(sources=(DataSource(str(path)),), image_folder=str(images), **data)
    return SupervisedDataset(build_mixture(config, 0), load_processor(model_dir),
                             load_llava_config(model_dir).image_seq_length, config, "finetune")


def test_dataset_expands_image_tokens_and_collates(built_model, tmp_path):
    model_dir = built_model()
    path, images = write_llava_data(tmp_path, count=3, text_only=1)
    dataset = _dataset(model_dir, path, images)
    image_id = load_llava_config(model_dir).image_token_id
    example = dataset[0]
    assert example.input_ids.count(image_id) == 16 and example.pixel_values.shape == (3, 32, 32)
    batch = collate([dataset[0], dataset[3], dataset[1]], pad_token_id=0)
    assert batch["pixel_values"].shape == (2, 3, 32, 32)  # the text-only sample brings no image
    assert (batch["input_ids"] == image_id).sum() == 32
    assert batch["labels"][batch["input_ids"] == image_id].eq(IGNORE_INDEX).all()
    assert batch["attention_mask"].sum() == sum(len(dataset[i].input_ids) for i in (0, 3, 1))


def test_overlong_truncate_and_skip(built_model, tmp_path):
    model_dir = built_model()
    path, images = write_llava_data(tmp_path, count=4, types=("detail",))
    full = len(_dataset(model_dir, path, images)[0].input_ids)
    truncated = _dataset(model_dir, path, images, max_length=full - 3)[0]
    assert truncated.truncated and len(truncated.input_ids) == full - 3
    assert any(label != IGNORE_INDEX for label in truncated.labels)
    tiny = _dataset(model_dir, path, images, max_length=10)  # shorter than the 16 image tokens
    with pytest.raises(LntuneError, match="skipped"):
        tiny[0]
    skip = _dataset(model_dir, path, images, max_length=full, overlong="skip")
    assert skip[0].skipped == []


def test_unreadable_image_error_or_skip(built_model, tmp_path):
    model_dir = built_model()
    path, images = write_llava_data(tmp_path, count=4)
    (images / "0001.png").write_bytes(b"garbage")
    with pytest.raises(LntuneError, match="id s1.*cannot read image.*--skip-invalid"):
        _dataset(model_dir, path, images)[1]
    example = _dataset(model_dir, path, images, skip_invalid=True)[1]
    assert len(example.skipped) == 1 and "cannot read image" in example.skipped[0]
    assert example.sample_id == "s2"  # replaced by the next usable sample


def test_image_without_folder_is_an_error(built_model, tmp_path):
    path, _ = write_llava_data(tmp_path, count=2)
    config = DataConfig(sources=(DataSource(str(path)),))
    dataset = SupervisedDataset(build_mixture(config, 0), load_processor(built_model()), 16, config, "finetune")
    with pytest.raises(LntuneError, match="--image-folder"):
        dataset[0]


def test_pixel_values_match_the_processor(built_model, tmp_path):
    model_dir = built_model()
    path, images = write_llava_data(tmp_path, count=1)
    processor = load_processor(model_dir)
    expected = processor.image_processor(images=Image.open(images / "0000.png").convert("RGB"), return_tensors="pt")
    dataset = _dataset(model_dir, path, images, image_aspect_ratio="crop")  # crop: the processor as it is
    assert torch.equal(dataset[0].pixel_values, expected["pixel_values"][0])
