"""One image path for training, evaluation and chat: the aspect-ratio step, the same pixels in training and
evaluation, the aspect ratio recorded by training and read back by evaluation, the up-front image check."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from lntune.config import DataConfig, DataSource, MethodConfig, RunConfig, TrainConfig
from lntune.data.dataset import SupervisedDataset
from lntune.data.images import (apply_aspect_ratio, expand2square, find_unusable_images, mean_color, pixel_values,
                                resolve_aspect_ratio)
from lntune.data.mixture import build_mixture
from lntune.errors import LntuneError
from lntune.eval.runner import evaluate_benchmark, evaluation_aspect_ratio, load_generator
from lntune.model.load import load_llava_config, load_processor
from tests.eval.fixtures import write_pope
from tests.helpers import make_image, write_llava_data


def llava_expand2square(pil_img, background_color):
    """LLaVA's own function (llava/mm_utils.py), verbatim: the reference for `pad`."""
    width, height = pil_img.size
    if width == height:
        return pil_img
    elif width > height:
        result = Image.new(pil_img.mode, (width, width), background_color)
        result.paste(pil_img, (0, (width - height) // 2))
        return result
    else:
        result = Image.new(pil_img.mode, (height, height), background_color)
        result.paste(pil_img, ((height - width) // 2, 0))
        return result


@pytest.fixture(scope="module")
def processor(built_model):
    return load_processor(built_model())


def test_auto_is_crop_in_pretrain_and_pad_in_finetune():
    assert resolve_aspect_ratio("auto", "pretrain") == "crop" and resolve_aspect_ratio("auto", "finetune") == "pad"
    assert resolve_aspect_ratio("crop", "finetune") == "crop" and resolve_aspect_ratio("pad", "pretrain") == "pad"


@pytest.mark.parametrize("size", [(48, 20), (20, 48), (33, 30)])  # wide, tall, odd difference
def test_expand2square_is_llavas(size):
    image = make_image(1, size=(size[1], size[0]))
    background = (122, 116, 104)
    assert np.array_equal(np.asarray(expand2square(image, background)), np.asarray(llava_expand2square(image, background)))


def test_pad_is_llavas_pad_then_the_processor(processor):
    image = Image.new("RGB", (48, 24), (250, 10, 10))  # wide: bands of the mean colour above and below
    image_processor = processor.image_processor
    expected = image_processor(images=llava_expand2square(image, tuple(int(x * 255) for x in image_processor.image_mean)),
                               return_tensors="pt")["pixel_values"][0]
    padded = pixel_values(processor, image, "pad")
    assert torch.equal(padded, expected) and padded.shape == (3, 32, 32)
    # By hand: the padded square's corners are the mean colour, int(mean * 255), then normalised per channel.
    mean, std = torch.tensor(image_processor.image_mean), torch.tensor(image_processor.image_std)
    corner = (torch.tensor([int(m * 255) for m in image_processor.image_mean]) / 255 - mean) / std
    for row, column in ((0, 0), (0, -1), (-1, 0), (-1, -1)):
        torch.testing.assert_close(padded[:, row, column], corner, atol=1e-5, rtol=0)
    # ...and the middle row is the image (red), which the crop keeps too; crop has no mean-colour corners.
    red = (torch.tensor([250, 10, 10]) / 255 - mean) / std
    torch.testing.assert_close(padded[:, 16, 16], red, atol=1e-5, rtol=0)
    cropped = pixel_values(processor, image, "crop")
    torch.testing.assert_close(cropped[:, 0, 0], red, atol=1e-5, rtol=0)


def test_crop_is_the_processor_as_it_is(processor):
    image = make_image(2, size=(20, 44))
    expected = processor.image_processor(images=image, return_tensors="pt")["pixel_values"][0]
    assert torch.equal(pixel_values(processor, image, "crop"), expected)
    assert apply_aspect_ratio(processor, image, "crop") is image
    assert not torch.equal(pixel_values(processor, image, "pad"), expected)  # the two do differ on this image


def test_mean_color_truncates_like_llava(processor):
    assert mean_color(processor) == tuple(int(x * 255) for x in processor.image_processor.image_mean)
    assert mean_color(processor) == (122, 116, 104)  # CLIP's mean: int() truncates 122.77, 116.75, 104.09


# ---- the same pixels in training and evaluation -------------------------------------------------------------

def _write_modes(folder):
    """One file per awkward mode, all non-square: RGBA, palette with a transparent index, 16-bit grayscale."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(5)
    rgba = rng.integers(0, 256, (30, 44, 4), dtype=np.uint8)
    rgba[..., 3] = np.where(np.arange(44) < 20, 0, 255)  # half transparent: composited on white
    Image.fromarray(rgba, mode="RGBA").save(folder / "rgba.png")
    palette = Image.fromarray(rng.integers(0, 256, (40, 26, 3), dtype=np.uint8)).quantize(16)
    palette.info["transparency"] = 3
    palette.save(folder / "palette.png", transparency=3)
    deep = (np.arange(36 * 50).reshape(36, 50) * 29).astype(np.uint16)
    Image.fromarray(deep).save(folder / "gray16.png")
    assert {name: Image.open(folder / f"{name}.png").mode for name in ("rgba", "palette", "gray16")} == {
        "rgba": "RGBA", "palette": "P", "gray16": "I;16"}
    return ["rgba.png", "palette.png", "gray16.png"]


@pytest.mark.parametrize("aspect_ratio", ["pad", "crop"])
def test_training_and_evaluation_see_identical_pixels(built_model, tmp_path, aspect_ratio):
    model_dir = built_model()
    root, images = write_pope(tmp_path / "pope", count=3)
    names = _write_modes(images)
    for split in ("random", "popular", "adversarial"):  # point POPE's three questions at the awkward files
        lines = [json.loads(line) for line in (root / f"coco_pope_{split}.json").read_text().splitlines()]
        for line, name in zip(lines, names):
            line["image"] = name
        (root / f"coco_pope_{split}.json").write_text("".join(json.dumps(line) + "\n" for line in lines))
    records = [{"id": name, "image": name, "conversations": [{"from": "human", "value": "<image>\nWhat?"},
                                                             {"from": "gpt", "value": "A thing."}]} for name in names]
    (tmp_path / "train.json").write_text(json.dumps(records))
    config = DataConfig(sources=(DataSource(str(tmp_path / "train.json")),), image_folder=str(images),
                        image_aspect_ratio=aspect_ratio)
    dataset = SupervisedDataset(build_mixture(config, 0), load_processor(model_dir),
                                load_llava_config(model_dir).image_seq_length, config, "finetune")
    trained = {name: dataset[index].pixel_values for index, name in enumerate(names)}

    generator = load_generator(str(model_dir), image_aspect_ratio=aspect_ratio)
    seen = {}
    real_answer = generator.answer

    def answer(questions, pictures, *args, **kwargs):
        # What the model gets: the generator's image processor on the images the runner hands it.
        tensors = generator.processor.image_processor(images=pictures, return_tensors="pt")["pixel_values"]
        seen.update({id(picture): tensor for picture, tensor in zip(pictures, tensors)})
        answer.pictures += pictures
        return real_answer(questions, pictures, *args, **kwargs)

    answer.pictures = []
    generator.answer = answer
    record = evaluate_benchmark(generator, "pope", root, images, tmp_path / "out", max_new_tokens=1, batch_size=3,
                                say=lambda m: None)
    assert record["image_aspect_ratio"] == aspect_ratio
    evaluated = [seen[id(picture)] for picture in answer.pictures[:3]]  # the random split: names in order
    for name, tensor in zip(names, evaluated):
        assert torch.equal(tensor, trained[name]), name
    assert not torch.equal(trained["rgba.png"], trained["palette.png"])


# ---- recorded by training, read back by evaluation ------------------------------------------------------------

def test_built_model_records_nothing_and_evaluates_with_pad(built_model):
    model_dir = built_model()
    assert "image_aspect_ratio" not in json.loads((model_dir / "config.json").read_text())
    value, source = evaluation_aspect_ratio(model_dir)
    assert value == "pad" and source.startswith("default")
    assert evaluation_aspect_ratio(model_dir, override="crop") == ("crop", "--image-aspect-ratio")


def test_training_records_the_aspect_ratio_for_evaluation(built_model, tmp_path):
    """A pretrain run (auto -> crop) with one missing image and --skip-invalid: the image is dropped before the
    first step and counted; adapter.json and the merged model's config.json record crop; evaluation reads it
    from either (and from neither for the built model: pad)."""
    from lntune.train.trainer import train

    model_dir = built_model()
    path, images = write_llava_data(tmp_path / "data", count=6, types=("detail",))
    (images / "0004.png").unlink()
    config = RunConfig(
        model=str(model_dir), out=str(tmp_path / "run"), method=MethodConfig(name="connector"),
        data=DataConfig(sources=(DataSource(str(path)),), image_folder=str(images), skip_invalid=True),
        train=TrainConfig(stage="pretrain", max_steps=1, batch_size=2, save_every=0),
    )
    messages = []
    run = train(config, say=messages.append)
    assert "images crop; 1 samples dropped before training" in messages[0]
    assert json.loads((run / "summary.json").read_text())["unusable_images_skipped"] == 1
    assert json.loads((run / "adapter" / "adapter.json").read_text())["image_aspect_ratio"] == "crop"
    assert json.loads((run / "model" / "config.json").read_text())["image_aspect_ratio"] == "crop"
    assert evaluation_aspect_ratio(model_dir, run / "adapter") == ("crop", str(run / "adapter" / "adapter.json"))
    assert evaluation_aspect_ratio(run / "model") == ("crop", str(run / "model" / "config.json"))
    assert load_generator(str(run / "model")).image_aspect_ratio == "crop"
    # The adapter comes first: a finetune adapter (pad) on the stage-1 model (crop) evaluates with pad.
    manifest = json.loads((run / "adapter" / "adapter.json").read_text())
    (tmp_path / "pad-adapter").mkdir()
    (tmp_path / "pad-adapter" / "adapter.json").write_text(json.dumps(dict(manifest, image_aspect_ratio="pad")))
    assert evaluation_aspect_ratio(run / "model", tmp_path / "pad-adapter")[0] == "pad"


def test_unknown_recorded_aspect_ratio_is_refused(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llava", "image_aspect_ratio": "anyres"}))
    with pytest.raises(LntuneError, match="anyres.*--image-aspect-ratio"):
        evaluation_aspect_ratio(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llava", "image_aspect_ratio": "square"}))
    assert evaluation_aspect_ratio(tmp_path)[0] == "crop"  # LLaVA's `square`: the processor as it is


# ---- the up-front image check ----------------------------------------------------------------------------

@pytest.mark.parametrize("count", [8, 40])  # a stat per file, and one listing of a folder with many wanted files
def test_find_unusable_images_checks_confinement_and_existence(tmp_path, count):
    images = tmp_path / "images"
    (images / "sub").mkdir(parents=True)
    for index in range(count):
        (images / "sub" / f"{index}.png").write_bytes(b"x")
    (tmp_path / "outside.png").write_bytes(b"x")
    (images / "sub" / "link-out.png").symlink_to(tmp_path / "outside.png")
    (images / "sub" / "link-in.png").symlink_to(images / "sub" / "0.png")
    (images / "sub" / "folder.png").mkdir()
    (tmp_path / "elsewhere").mkdir()
    (images / "escape").symlink_to(tmp_path / "elsewhere")
    (tmp_path / "elsewhere" / "e.png").write_bytes(b"x")
    entries = [(index, f"sub/{index}.png") for index in range(count)] + [
        ("gone", "sub/gone.png"), ("dotdot", "../outside.png"), ("absolute", str(tmp_path / "outside.png")),
        ("link-out", "sub/link-out.png"), ("link-in", "sub/link-in.png"), ("folder", "sub/folder.png"),
        ("dir-link", "escape/e.png"), ("inner-dotdot", "sub/../sub/1.png"), ("no-folder", "nope/x.png"),
    ]
    problems = {key: why for key, _, why in find_unusable_images(images, entries)}
    assert set(problems) == {"gone", "dotdot", "absolute", "link-out", "folder", "dir-link", "no-folder"}
    assert problems["gone"].startswith("not found") and problems["no-folder"].startswith("not found")
    assert all("outside" in problems[key] for key in ("dotdot", "absolute", "link-out", "dir-link"))
