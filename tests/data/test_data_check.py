"""`lntune data check`: the report a user runs before a long job."""

import json

from lntune.cli import main
from tests.helpers import write_llava_data


def test_clean_data_reports_ok(built_model, tmp_path, capsys):
    path, images = write_llava_data(tmp_path, count=8, text_only=2)
    code = main(["data", "check", f"{path}", "--model", str(built_model()), "--image-folder", str(images), "--json"])
    report = json.loads(capsys.readouterr().out)
    assert code == 0 and report["ok"]
    assert report["by_type"] == {"conversation": 4, "detail": 4, "text": 2}
    assert report["text_only"] == 2 and report["template"] == "vicuna_v1"  # the template lntune build stamped
    assert report["token_lengths"]["min"] > 16  # image samples count their 16 expanded image tokens
    assert sum(report["length_histogram"].values()) == 10


def test_problems_are_counted_with_examples(built_model, tmp_path, capsys):
    path, images = write_llava_data(tmp_path, count=6)
    records = json.loads(path.read_text())
    records[1]["conversations"] = []
    path.write_text(json.dumps(records))
    (images / "0002.png").unlink()
    (images / "0003.png").write_bytes(b"not a png")
    code = main(["data", "check", str(path), "--model", str(built_model()), "--image-folder", str(images),
                 "--max-length", "30"])
    out = capsys.readouterr().out
    assert code == 1
    assert "invalid records (skipped): 1" in out and "id s1" in out
    assert "missing images: 1" in out and "0002.png" in out
    assert "unreadable images: 1" in out and "0003.png" in out
    assert "over max_length 30: 5" in out
    assert "PROBLEMS FOUND" in out


def test_without_model_checks_structure_and_images(tmp_path, capsys):
    path, images = write_llava_data(tmp_path, count=4, types=("detail",))
    assert main(["data", "check", f"detail={path}:3", "--image-folder", str(images)]) == 0
    out = capsys.readouterr().out
    assert "samples: 3" in out and "pass --model" in out
