"""Damaged files and a refusing OS: one line naming the file and what to do, exit 1, nothing half-written left.

Each test damages a copy (never the session's cached models), runs the real command through lntune.cli.main and
checks stderr is exactly one line, the exit code, and that the inputs and earlier outputs are byte-identical.
"""

import errno
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from lntune.config import DataConfig, DataSource, MethodConfig, RunConfig, TrainConfig
from lntune.train.trainer import train
from tests.eval.fixtures import write_pope
from tests.faults.helpers import AFTER_MAIN, assert_one_line_error, leftovers, run_main, tree_digest
from tests.helpers import write_llava_data

DISK_FULL = "Error while serializing: I/O error: No space left on device (os error 28)"  # safetensors' own words


@pytest.fixture(scope="module")
def world(tmp_path_factory, built_model, backbone_dir):
    """A built model, LLaVA data, POPE files, and a trained layernorm and LoRA adapter (one step each)."""
    root = tmp_path_factory.mktemp("world")
    data, images = write_llava_data(root / "data", count=8)
    pope, pope_images = write_pope(root / "pope", count=2)
    model = built_model()
    adapters = {}
    for method in ("layernorm", "lora"):
        config = RunConfig(model=str(model), out=str(root / method), method=MethodConfig(name=method),
                           data=DataConfig(sources=(DataSource(str(data)),), image_folder=str(images)),
                           train=TrainConfig(max_steps=1, batch_size=2, save_every=0))
        adapters[method] = train(config, say=lambda message: None) / "adapter"
    return {"model": model, "data": data, "images": images, "pope": pope, "pope_images": pope_images,
            "adapters": adapters, "llm": backbone_dir("llm", "llama"), "vision": backbone_dir("vision", "clip")}


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])  # an interrupted copy


def _overwrite(path: Path) -> None:
    path.write_bytes(b"<html>404 Not Found</html>" * 4)  # a download that saved an error page


DAMAGES = {"truncated": _truncate, "not safetensors": _overwrite}


# ---- damaged weights and manifests ---------------------------------------------------------------

@pytest.mark.parametrize("damage", DAMAGES)
def test_damaged_llm_weights_name_the_file(capsys, world, tmp_path, damage):
    llm = shutil.copytree(world["llm"], tmp_path / "llm")
    DAMAGES[damage](llm / "model.safetensors")
    before = tree_digest(llm)
    code, err = run_main(capsys, "build", "--llm", llm, "--vision", world["vision"], "--out", tmp_path / "mllm")
    assert_one_line_error(code, err, "build", str(llm / "model.safetensors"), "truncated or corrupt",
                          "re-copy or re-download it")
    assert tree_digest(llm) == before and not (tmp_path / "mllm").exists() and not leftovers(tmp_path)


def test_truncated_torch_bin_weights_name_the_file(capsys, world, tmp_path):
    """Weights in torch's .bin format (older checkpoints) reach torch.load; a cut-off one is named all the same."""
    import torch
    from safetensors.torch import load_file

    llm = shutil.copytree(world["llm"], tmp_path / "llm")
    torch.save(load_file(str(llm / "model.safetensors")), llm / "pytorch_model.bin")
    (llm / "model.safetensors").unlink()
    _truncate(llm / "pytorch_model.bin")
    before = tree_digest(llm)
    code, err = run_main(capsys, "build", "--llm", llm, "--vision", world["vision"], "--out", tmp_path / "mllm")
    assert_one_line_error(code, err, "build", "cannot load the LLM", str(llm / "pytorch_model.bin"),
                          "truncated or corrupt", "re-copy or re-download it", progress=True)
    assert tree_digest(llm) == before and not (tmp_path / "mllm").exists() and not leftovers(tmp_path)


@pytest.mark.parametrize("command", ["train", "eval", "merge"])
def test_damaged_built_model_names_the_file(capsys, world, tmp_path, command):
    model = shutil.copytree(world["model"], tmp_path / "model")
    _truncate(model / "model.safetensors")
    before = tree_digest(model)
    out = tmp_path / "out"
    argv = {
        "train": ["train", "--model", model, "--data", world["data"], "--image-folder", world["images"], "--out", out],
        "eval": ["eval", "--model", model, "--bench", "pope", "--data", world["pope"], "--images",
                 world["pope_images"], "--out", out],
        "merge": ["merge", "--model", model, "--adapter", world["adapters"]["layernorm"], "--out", out],
    }[command]
    code, err = run_main(capsys, *argv)
    assert_one_line_error(code, err, command, str(model / "model.safetensors"), "truncated or corrupt", "rebuild")
    assert tree_digest(model) == before and not out.exists() and not leftovers(tmp_path)


ADAPTER_DAMAGES = {
    "trainable.safetensors truncated": ("layernorm", lambda a: _truncate(a / "trainable.safetensors"),
                                        "trainable.safetensors is truncated or corrupt"),
    "adapter_model.safetensors garbage": ("lora", lambda a: _overwrite(a / "adapter_model.safetensors"),
                                          "adapter_model.safetensors is truncated or corrupt"),
    "adapter.json corrupt": ("layernorm", lambda a: (a / "adapter.json").write_text('{"format": "lntune-adapter",'),
                             "adapter.json:1:"),
    "adapter_config.json missing": ("lora", lambda a: (a / "adapter_config.json").unlink(),
                                    "has no adapter_config.json"),
}


@pytest.mark.parametrize("command", ["merge", "eval"])
@pytest.mark.parametrize("damage", ADAPTER_DAMAGES)
def test_damaged_adapter_names_the_file(capsys, world, tmp_path, command, damage):
    method, harm, message = ADAPTER_DAMAGES[damage]
    adapter = shutil.copytree(world["adapters"][method], tmp_path / "adapter")
    harm(adapter)
    before, model_before = tree_digest(adapter), tree_digest(world["model"])
    out = tmp_path / "out"
    argv = ["--model", world["model"], "--adapter", adapter, "--out", out]
    if command == "eval":
        argv += ["--bench", "pope", "--data", world["pope"], "--images", world["pope_images"]]
    code, err = run_main(capsys, command, *argv)
    assert_one_line_error(code, err, command, message, "train it again")
    assert tree_digest(adapter) == before and tree_digest(world["model"]) == model_before
    assert not out.exists() and not leftovers(tmp_path)


def test_lora_adapter_loads_local_files_only(world, monkeypatch):
    """PeftModel.from_pretrained is told never to look on the hub (a folder name can look like a hub id)."""
    from peft import PeftModel

    from lntune.adapter import load_adapter
    from lntune.model.load import load_model

    seen = {}
    original = PeftModel.from_pretrained.__func__

    def spy(cls, model, model_id, **kwargs):
        seen.update(kwargs)
        return original(cls, model, model_id, **kwargs)

    monkeypatch.setattr(PeftModel, "from_pretrained", classmethod(spy))
    load_adapter(load_model(world["model"]), world["adapters"]["lora"], world["model"])
    assert seen.get("local_files_only") is True


# ---- the OS refusing writes: disk full, read-only, permission denied -------------------------------

def _failing_save(code: int, after_bytes: int = 64):
    """A safetensors save_file that writes part of the file, then fails as the real one does when the OS refuses."""
    from safetensors import SafetensorError

    def save_file(tensors, filename, metadata=None):
        with open(filename, "wb") as handle:
            handle.write(b"\0" * after_bytes)  # half-written, as a full disk leaves it
        if code == errno.ENOSPC:
            raise SafetensorError(DISK_FULL)
        raise SafetensorError(f"Error while serializing: I/O error: {os.strerror(code)} (os error {code})")

    return save_file


@pytest.mark.parametrize("code, message", [(errno.ENOSPC, "disk full while writing"),
                                           (errno.EDQUOT, "disk quota exceeded"),
                                           (errno.EROFS, "read-only file system")])
def test_build_refused_by_the_os_leaves_nothing(capsys, world, tmp_path, monkeypatch, code, message):
    import transformers.modeling_utils

    monkeypatch.setattr(transformers.modeling_utils, "safe_save_file", _failing_save(code))
    inputs = tree_digest(world["llm"]), tree_digest(world["vision"])
    out = tmp_path / "mllm"
    code_, err = run_main(capsys, "build", "--llm", world["llm"], "--vision", world["vision"], "--out", out)
    assert_one_line_error(code_, err, "build", message, str(out), "--out", progress=True)
    assert not out.exists() and leftovers(tmp_path) == []
    assert (tree_digest(world["llm"]), tree_digest(world["vision"])) == inputs


def test_build_overwrite_that_fails_keeps_the_previous_model(capsys, world, tmp_path, monkeypatch):
    import transformers.modeling_utils

    out = shutil.copytree(world["model"], tmp_path / "mllm")
    before = tree_digest(out)
    monkeypatch.setattr(transformers.modeling_utils, "safe_save_file", _failing_save(errno.ENOSPC))
    code, err = run_main(capsys, "build", "--llm", world["llm"], "--vision", world["vision"], "--out", out,
                         "--overwrite")
    assert_one_line_error(code, err, "build", "disk full", progress=True)
    assert tree_digest(out) == before and leftovers(tmp_path) == []


def test_build_interrupted_leaves_no_partial_folder(capsys, world, tmp_path, monkeypatch):
    import transformers.modeling_utils

    def interrupted(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"\0" * 64)
        raise KeyboardInterrupt

    monkeypatch.setattr(transformers.modeling_utils, "safe_save_file", interrupted)
    code, err = run_main(capsys, "build", "--llm", world["llm"], "--vision", world["vision"], "--out", tmp_path / "m")
    assert code == 130 and err.splitlines()[-1] == "interrupted"
    assert list(tmp_path.iterdir()) == []


def test_build_removes_a_killed_builds_staging_folder(world, tmp_path):
    """A build killed outright (SIGKILL) could not clean up; the next build into that --out removes its folder."""
    from lntune.config import BuildConfig
    from lntune.model.build import build_mllm

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = tmp_path / f".mllm.partial-{dead.pid}"
    stale.mkdir()
    (stale / "model.safetensors").write_bytes(b"\0" * 10)
    build_mllm(BuildConfig(llm=str(world["llm"]), vision=str(world["vision"]), out=str(tmp_path / "mllm")),
               say=lambda message: None)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["mllm"]


def test_disk_full_while_training_writes_a_checkpoint(capsys, world, tmp_path, monkeypatch):
    import safetensors.torch

    out = tmp_path / "run"
    monkeypatch.setattr(safetensors.torch, "save_file", _failing_save(errno.ENOSPC))
    code, err = run_main(capsys, "train", "--model", world["model"], "--data", world["data"], "--image-folder",
                         world["images"], "--out", out, "--max-steps", "2", "--batch-size", "2", "--save-every", "1")
    assert_one_line_error(code, err, "train", "disk full while writing", "free space or choose another --out",
                          progress=True)
    assert not (out / "adapter").exists() and not (out / "checkpoints" / "step-00000001").exists()


def test_disk_full_while_writing_the_adapter(capsys, world, tmp_path, monkeypatch):
    """The adapter is staged: a failed write leaves no adapter/ and no staging folder, and the run resumes."""
    import safetensors.torch

    out = tmp_path / "run"
    real_save = safetensors.torch.save_file
    failing = _failing_save(errno.ENOSPC)
    monkeypatch.setattr(safetensors.torch, "save_file",
                        lambda tensors, filename, metadata=None: (failing if ".adapter." in str(filename) else real_save)(
                            tensors, filename, metadata=metadata))
    argv = ["train", "--model", world["model"], "--data", world["data"], "--image-folder", world["images"],
            "--out", out, "--max-steps", "1", "--batch-size", "2", "--save-every", "0"]
    code, err = run_main(capsys, *argv)
    assert_one_line_error(code, err, "train", "disk full while writing", progress=True)
    assert not (out / "adapter").exists() and leftovers(out) == []
    monkeypatch.setattr(safetensors.torch, "save_file", real_save)  # space freed: the same run continues
    code, err = run_main(capsys, *argv, "--resume")
    assert code == 0, err
    assert (out / "adapter" / "trainable.safetensors").is_file()


@pytest.mark.parametrize("code, message", [(errno.EROFS, "read-only file system"), (errno.EACCES, "permission denied")])
def test_out_the_os_will_not_write(capsys, world, tmp_path, monkeypatch, code, message):
    """--out in a read-only or forbidden folder (faked: the tests run as root, whom chmod does not stop)."""
    locked = tmp_path / "locked"
    locked.mkdir()
    out = locked / "run"
    real_mkdir = Path.mkdir

    def mkdir(self, *args, **kwargs):
        if locked in self.parents:
            raise OSError(code, os.strerror(code), str(self))
        return real_mkdir(self, *args, **kwargs)

    monkeypatch.setattr(Path, "mkdir", mkdir)
    for argv in (["train", "--model", world["model"], "--data", world["data"], "--image-folder", world["images"],
                  "--max-steps", "1", "--batch-size", "2"],
                 ["build", "--llm", world["llm"], "--vision", world["vision"]]):
        code_, err = run_main(capsys, *argv, "--out", out)
        assert_one_line_error(code_, err, argv[0], message, str(locked), "--out", progress=argv[0] == "build")
        assert list(locked.iterdir()) == []


def test_os_errors_that_are_not_refusals_keep_their_traceback(world, tmp_path, monkeypatch):
    """Only disk full / quota / read-only / permission get one line; anything else is a bug to see."""
    import transformers.modeling_utils

    from lntune.cli import main

    def broken(tensors, filename, metadata=None):
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(transformers.modeling_utils, "safe_save_file", broken)
    with pytest.raises(OSError, match="Input/output error"):
        main(["build", "--llm", str(world["llm"]), "--vision", str(world["vision"]), "--out", str(tmp_path / "m")])
    assert list(tmp_path.iterdir()) == []


# ---- build's --out must stay clear of its inputs -------------------------------------------------

@pytest.mark.parametrize("where", ["is", "inside", "contains"])
def test_build_out_overlapping_an_input_is_refused(capsys, world, tmp_path, where):
    parent = tmp_path / "models"
    llm = shutil.copytree(world["llm"], parent / "llm")
    before = tree_digest(parent)
    out = {"is": llm, "inside": llm / "mllm", "contains": parent}[where]
    code, err = run_main(capsys, "build", "--llm", llm, "--vision", world["vision"], "--out", out, "--overwrite")
    assert_one_line_error(code, err, "build", {"is": "is the LLM folder", "inside": "is inside the LLM folder",
                                               "contains": "contains the LLM folder"}[where])
    assert tree_digest(parent) == before


def test_merge_out_inside_the_adapter_is_refused(capsys, world, tmp_path):
    adapter = shutil.copytree(world["adapters"]["layernorm"], tmp_path / "adapter")
    before = tree_digest(adapter)
    code, err = run_main(capsys, "merge", "--model", world["model"], "--adapter", adapter, "--out", adapter / "merged")
    assert_one_line_error(code, err, "merge", "is inside the adapter folder")
    assert tree_digest(adapter) == before


# ---- DeepSpeed's import notice -------------------------------------------------------------------

def test_no_deepspeed_cpu_notice(tmp_path):
    """On a machine without a GPU, DeepSpeed's import says "Setting accelerator to CPU" on stderr; the CLI drops
    that one notice (other DeepSpeed records still reach stderr, see tests/train/test_train.py)."""
    pytest.importorskip("deepspeed")
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="")
    done = subprocess.run([sys.executable, "-c", AFTER_MAIN + "import deepspeed"], capture_output=True, text=True,
                          timeout=120, env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "Setting accelerator to CPU" not in done.stderr and done.stdout == ""


def test_importing_lntune_leaves_logging_alone():
    """Only the CLI reroutes DeepSpeed's logs: `import lntune` (the Python API) changes no process-wide state."""
    done = subprocess.run([sys.executable, "-c", "import logging, lntune, lntune.cli\n"
                           "assert not logging.getLogger('DeepSpeed').filters"], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]
