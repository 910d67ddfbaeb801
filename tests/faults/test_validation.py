"""Inputs and values checked before anything is written: a mistake costs nothing, and the corrected command then
runs in the same --out."""

import shutil

import pytest

from lntune.config import RunConfig, config_from_dict
from lntune.errors import LntuneError
from tests.faults.helpers import assert_one_line_error, run_main, tree_digest
from tests.helpers import write_llava_data


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_llava_data(tmp_path_factory.mktemp("data"), count=8)


def _train(model, out, data, *extra):
    path, images = data
    return ["train", "--model", model, "--data", path, "--image-folder", images, "--out", out,
            "--max-steps", "1", "--batch-size", "2", "--save-every", "0", *extra]


# ---- values ---------------------------------------------------------------------------------------

REFUSED = [
    ("train.lr", -1e-3), ("train.lr", 0), ("train.norm_lr", -1.0), ("train.connector_lr", float("nan")),
    ("train.embedding_lr", float("inf")), ("train.weight_decay", -0.1), ("train.max_grad_norm", -1.0),
    ("train.batch_size", 0), ("train.grad_accum", 0), ("train.warmup_ratio", 1.0), ("train.warmup_ratio", -0.1),
    ("train.save_every", -1), ("train.seed", -1), ("train.epochs", 0), ("method.lora_dropout", 1.0),
    ("method.lora_alpha", 0), ("method.lora_rank", 0), ("data.num_workers", -1), ("data.max_image_pixels", 0),
    ("data.max_length", 4),
]


def _config(key, value):
    section, name = key.split(".")
    data = {"model": "m", "out": "o", "data": {"sources": [{"path": "d.json"}]}}
    data.setdefault(section, {})[name] = value
    return config_from_dict(RunConfig, data, "run.yaml")


@pytest.mark.parametrize("key, value", REFUSED, ids=[f"{key}={value}" for key, value in REFUSED])
def test_bad_value_is_refused_naming_the_dotted_key(key, value):
    with pytest.raises(LntuneError, match=rf"^{key} must .*got {value}"):
        _config(key, value)


def test_edge_values_that_make_sense_are_accepted():
    for key, value in [("train.lr", 1e-9), ("train.weight_decay", 0), ("train.max_grad_norm", 0),
                       ("train.warmup_ratio", 0), ("train.save_every", 0), ("data.num_workers", 0),
                       ("method.lora_dropout", 0), ("train.seed", 2**32 - 1)]:
        _config(key, value)


def test_negative_learning_rate_from_the_command_line(capsys, built_model, data, tmp_path):
    out = tmp_path / "run"
    code, err = run_main(capsys, *_train(built_model(), out, data, "--lr", "-0.001"))
    assert_one_line_error(code, err, "train", "train.lr must be a number > 0, got -0.001")
    assert not out.exists()
    code, err = run_main(capsys, *_train(built_model(), out, data, "train.norm_lr=-1e-4"))
    assert_one_line_error(code, err, "train", "train.norm_lr")
    assert not out.exists()


# ---- paths, checked before --out is created -------------------------------------------------------

@pytest.mark.parametrize("wrong, message", [
    ("a file", "is a file; give the model directory"),
    ("its config.json", "is a file; give the model directory"),
    ("a missing folder", "model path does not exist"),
    ("an LLM, not a Llava model", "not a Llava MLLM"),
    ("a Llava config without weights", "has no weights"),
])
def test_wrong_model_path_then_the_corrected_command_runs(capsys, built_model, backbone_dir, data, tmp_path, wrong,
                                                          message):
    model = built_model()
    bad = {"a file": data[0], "its config.json": model / "config.json", "a missing folder": tmp_path / "nowhere",
           "an LLM, not a Llava model": backbone_dir("llm", "llama"), "a Llava config without weights": tmp_path / "bare"}
    if wrong == "a Llava config without weights":
        (tmp_path / "bare").mkdir()
        shutil.copy(model / "config.json", tmp_path / "bare")
    out = tmp_path / "run"
    model_before = tree_digest(model)
    code, err = run_main(capsys, *_train(bad[wrong], out, data))
    assert_one_line_error(code, err, "train", message)
    assert not out.exists()
    code, err = run_main(capsys, *_train(model, out, data))  # corrected: no "already exists", no --resume needed
    assert code == 0, err
    assert (out / "adapter" / "trainable.safetensors").is_file() and tree_digest(model) == model_before


@pytest.mark.parametrize("problem", ["missing image folder", "image folder is a file", "no image folder",
                                     "missing data file", "--out is a file"])
def test_data_paths_are_checked_before_out_is_created(capsys, built_model, data, tmp_path, problem):
    path, images = data
    out = tmp_path / "run"
    argv = ["train", "--model", built_model(), "--max-steps", "1", "--batch-size", "2", "--out", out]
    argv += {
        "missing image folder": ["--data", path, "--image-folder", tmp_path / "nowhere"],
        "image folder is a file": ["--data", path, "--image-folder", path],
        "no image folder": ["--data", path],
        "missing data file": ["--data", tmp_path / "nothing.json", "--image-folder", images],
        "--out is a file": ["--data", path, "--image-folder", images],
    }[problem]
    if problem == "--out is a file":
        out.write_text("notes")
    message = {"missing image folder": "image folder", "image folder is a file": "is not a folder",
               "no image folder": "--image-folder", "missing data file": "data file not found",
               "--out is a file": "is a file"}[problem]
    code, err = run_main(capsys, *argv)
    assert_one_line_error(code, err, "train", message)
    assert out.is_file() if problem == "--out is a file" else not out.exists()


def test_a_start_that_failed_before_its_first_step_does_not_block_the_next(capsys, built_model, tmp_path):
    """Unreadable images fail the first batch, after the run folder was made: it holds config.yaml and empty logs,
    which neither a fresh start nor --resume with a corrected configuration refuses."""
    path, images = write_llava_data(tmp_path / "data", count=8)
    broken = tmp_path / "broken"
    shutil.copytree(images, broken)
    for image in broken.iterdir():
        image.write_bytes(b"not a png")
    out = tmp_path / "run"
    model = built_model()
    code, err = run_main(capsys, *_train(model, out, (path, broken)))
    assert code == 1 and "cannot read image" in err.splitlines()[-1]
    assert (out / "config.yaml").is_file() and not (out / "metrics.jsonl").read_text()
    code, err = run_main(capsys, *_train(model, out, (path, images)))  # the corrected command
    assert code == 0, err
    assert str(images) in (out / "config.yaml").read_text() and (out / "adapter").is_dir()

    again = tmp_path / "again"
    run_main(capsys, *_train(model, again, (path, broken)))
    code, err = run_main(capsys, *_train(model, again, (path, images)), "--resume")  # other config, nothing to resume
    assert code == 0, err
    assert str(images) in (again / "config.yaml").read_text()


def test_a_run_with_logged_steps_is_never_cleared(capsys, built_model, data, tmp_path):
    out = tmp_path / "run"
    model = built_model()
    assert run_main(capsys, *_train(model, out, data))[0] == 0
    before = tree_digest(out)
    code, err = run_main(capsys, *_train(model, out, data, "--lr", "0.01"))
    assert_one_line_error(code, err, "train", "already exists", "--resume")
    assert tree_digest(out) == before
