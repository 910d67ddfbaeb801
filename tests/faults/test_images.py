"""Image faults: each one stops with a one-line error naming the sample or item (or, where asked, is skipped and
counted), before it can cost a long run or damage earlier results."""

import json
import struct
import zlib

from PIL import Image

from lntune.cli import main
from lntune.config import DataConfig, DataSource
from lntune.data.mixture import build_mixture
from lntune.errors import LntuneError
from tests.eval.fixtures import write_pope
from tests.helpers import write_llava_data

import pytest


def write_huge_png_header(path, width=20000, height=20000):
    """A valid PNG header (1-bit grayscale, width x height) with a token of pixel data: the pixel guard reads only
    the header, so the file never needs its 50 MB of pixels (nor a 400 MB image in memory to write it)."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(b"\x00" * 16)) + chunk(b"IEND", b""))


def _eval(model_dir, root, images, out):
    return main(["eval", "--model", str(model_dir), "--bench", "pope", "--data", str(root), "--images", str(images),
                 "--out", str(out), "--max-new-tokens", "2"])


def _add_pope_question(root, image, question_id=99):
    path = root / "coco_pope_random.json"
    line = {"question_id": question_id, "image": image, "text": "Is there a cat?", "label": "no"}
    path.write_text(path.read_text() + json.dumps(line) + "\n")


@pytest.mark.parametrize("fault", ["escaping path", "oversized image"])
def test_eval_image_fault_names_the_item_and_keeps_earlier_answers(built_model, tmp_path, capsys, fault):
    root, images = write_pope(tmp_path / "pope", count=2)
    out = tmp_path / "out"
    assert _eval(built_model(), root, images, out) == 0
    predictions = (out / "pope" / "predictions.jsonl").read_bytes()
    capsys.readouterr()
    if fault == "escaping path":
        (tmp_path / "elsewhere").mkdir()
        Image.new("RGB", (8, 8)).save(tmp_path / "elsewhere" / "x.jpg")
        _add_pope_question(root, "../../elsewhere/x.jpg")
        expected = "pope item random/99: image path .* points outside the image folder"
    else:
        write_huge_png_header(images / "huge.png")
        _add_pope_question(root, "huge.png")
        expected = "pope item random/99: image .*huge.png is 20000x20000 = 400,000,000 pixels, over the 64,000,000-pixel"
    assert _eval(built_model(), root, images, out) == 1
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith("lntune eval: error: ")
    import re

    assert re.search(expected, error), error
    assert (out / "pope" / "predictions.jsonl").read_bytes() == predictions


def test_eval_refuses_an_escaping_image_before_answering_anything(built_model, tmp_path, capsys):
    root, images = write_pope(tmp_path / "pope", count=2)
    (tmp_path / "elsewhere").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "elsewhere" / "x.jpg")
    _add_pope_question(root, "../../elsewhere/x.jpg")
    assert _eval(built_model(), root, images, tmp_path / "out") == 1
    assert "random/99" in capsys.readouterr().err
    assert not (tmp_path / "out" / "pope" / "predictions.jsonl").exists()


def test_chat_refuses_an_oversized_image_in_one_line(built_model, tmp_path, capsys):
    write_huge_png_header(tmp_path / "huge.png")
    assert main(["chat", "--model", str(built_model()), "--image", str(tmp_path / "huge.png"), "What?"]) == 1
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and "400,000,000 pixels" in error and "--max-image-pixels" in error


def test_bad_training_images_are_all_listed_before_training(tmp_path):
    path, images = write_llava_data(tmp_path, count=40)
    records = json.loads(path.read_text())
    for index in range(3, 28):  # 25 missing in one folder: more than the 20 an error shows
        (images / f"{index:04d}.png").unlink()
    Image.new("RGB", (4, 4)).save(tmp_path / "outside.png")
    records[31]["image"] = "../outside.png"
    (images / "0029.png").unlink()
    (images / "0029.png").symlink_to(tmp_path / "outside.png")
    path.write_text(json.dumps(records))
    config = DataConfig(sources=(DataSource(str(path)),), image_folder=str(images))
    with pytest.raises(LntuneError) as raised:
        build_mixture(config, 0)
    message = str(raised.value)
    assert "\n" not in message
    assert message.startswith(f"27 of 40 selected samples with an image cannot use it (image folder {images}): ")
    assert f"{path}: sample 3 (id s3, line " in message and "image '0003.png' not found" in message
    assert message.count(" not found") + message.count(" points outside") == 20 and "; and 7 more." in message
    assert "--skip-invalid" in message
    # in file order; the escaping ones (odd samples: type detail) are named too when among the first 20
    config = DataConfig(sources=(DataSource(str(path)),), image_folder=str(images), types=("detail",))
    with pytest.raises(LntuneError, match=r"^15 of 20 .*id s3,.*id s27,.*id s29, .*'0029\.png' points outside the "
                                          r"image folder \(symbolic link\); .*id s31, .*'\.\./outside\.png' points "
                                          r"outside the image folder\. Fix"):
        build_mixture(config, 0)

    skipping = build_mixture(DataConfig(sources=(DataSource(str(path)),), image_folder=str(images), skip_invalid=True), 0)
    assert len(skipping) == 13 and len(skipping.unusable_images) == 27
    kept = {skipping.record(index).id for index in range(len(skipping))}
    assert kept == {f"s{index}" for index in (0, 1, 2, 28, 30, 32, 33, 34, 35, 36, 37, 38, 39)}


def test_a_wrong_image_folder_with_skip_invalid_is_not_an_empty_run(tmp_path):
    path, _ = write_llava_data(tmp_path, count=4)
    (tmp_path / "empty").mkdir()
    config = DataConfig(sources=(DataSource(str(path)),), image_folder=str(tmp_path / "empty"), skip_invalid=True)
    with pytest.raises(LntuneError, match="every selected sample was dropped.*Is --image-folder right"):
        build_mixture(config, 0)


def test_train_cli_stops_on_a_missing_image_before_loading_the_model(tmp_path, capsys):
    path, images = write_llava_data(tmp_path, count=4)
    (images / "0002.png").unlink()
    # --model does not even exist: the data is checked first
    assert main(["train", "--model", str(tmp_path / "no-model"), "--out", str(tmp_path / "run"), "--data", str(path),
                 "--image-folder", str(images)]) == 1
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and "id s2" in error and "'0002.png' not found" in error
    assert not (tmp_path / "run").exists()


def test_data_check_warns_about_duplicate_ids(tmp_path, capsys):
    path, images = write_llava_data(tmp_path, count=5)
    records = json.loads(path.read_text())
    records[3]["id"] = records[4]["id"] = "s1"
    path.write_text(json.dumps(records))
    assert main(["data", "check", str(path), "--image-folder", str(images)]) == 0  # a warning, not a problem
    out = capsys.readouterr().out
    assert "warning: 2 samples repeat an earlier sample's id" in out and "id 's1'" in out and out.rstrip().endswith("OK")
    assert main(["data", "check", str(path), "--image-folder", str(images), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["ok"] and report["duplicate_ids"] == 2 and "sample 3" in report["duplicate_ids_examples"][0]
