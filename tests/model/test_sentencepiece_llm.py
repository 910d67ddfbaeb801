"""An LLM folder as LLaMA / Vicuna ship it, with only tokenizer.model (no tokenizer.json): it builds, the built
model tokenizes exactly as the LLM did (legacy and not), and it trains; a folder without any tokenizer is refused
with a message naming the folder."""

import shutil

import pytest
from transformers import AutoTokenizer

from lntune.cli import main
from tests.helpers import write_llava_data, write_sentencepiece_tokenizer

SAMPLES = ["<s>A chat</s>USER: What is on the table?", "<image>\nWhat", "Two  spaces, café 東京!"]


def _sentencepiece_llm(root, legacy):
    from tests.backbones import write_tiny_llm

    tokenizer_dir = write_sentencepiece_tokenizer(root / "tokenizer", legacy)
    llm = write_tiny_llm(root / "llm", tokenizer=AutoTokenizer.from_pretrained(str(tokenizer_dir)))
    (llm / "tokenizer.json").unlink()
    for name in ("tokenizer.model", "tokenizer_config.json"):
        shutil.copy(tokenizer_dir / name, llm / name)
    return llm


@pytest.mark.parametrize("legacy", [True, False], ids=["legacy", "non_legacy"])
def test_sentencepiece_only_llm_builds_and_trains(legacy, backbone_dir, tmp_path, capsys):
    llm = _sentencepiece_llm(tmp_path, legacy)
    model = tmp_path / "model"
    assert main(["build", "--llm", str(llm), "--vision", str(backbone_dir("vision", "clip")), "--out", str(model)]) == 0
    original, built = AutoTokenizer.from_pretrained(str(llm)), AutoTokenizer.from_pretrained(str(model))
    for text in SAMPLES[:1] + SAMPLES[2:]:  # <image> is new in the built tokenizer
        assert built(text, add_special_tokens=False)["input_ids"] == original(text, add_special_tokens=False)["input_ids"]
    assert built("A")["input_ids"][0] == built.bos_token_id
    data, images = write_llava_data(tmp_path / "data", count=4)
    run = tmp_path / "run"
    code = main(["train", "--model", str(model), "--data", str(data), "--image-folder", str(images), "--out", str(run),
                 "--template", "vicuna_v1", "--max-steps", "2", "--batch-size", "2", "--save-every", "0",
                 "--no-save-merged", "--precision", "fp32"])
    assert code == 0, capsys.readouterr().err
    assert (run / "adapter" / "trainable.safetensors").is_file()


def test_llm_folder_without_tokenizer_is_refused(backbone_dir, tmp_path, capsys):
    llm = _sentencepiece_llm(tmp_path, legacy=False)
    for name in ("tokenizer.model", "tokenizer_config.json"):
        (llm / name).unlink()
    code = main(["build", "--llm", str(llm), "--vision", str(backbone_dir("vision", "clip")), "--out", str(tmp_path / "m")])
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert code == 1
    assert str(llm) in err and "has no tokenizer" in err and "tokenizer.model" in err
    assert not (tmp_path / "m").exists()
