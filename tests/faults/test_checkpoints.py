"""Faults around checkpoints and resuming: damaged or torn checkpoints, planted pickles, a cut-off metrics line, a
DeepSpeed resume that fails. Each resume must end where an uninterrupted run did, or stop with a one-line error
that leaves the run directory as it was."""

import json
import os
import shutil

import pytest
import torch
from safetensors.torch import load_file

from lntune.cli import main
from lntune.errors import LntuneError
from lntune.train import manifest
from lntune.train.zero import tensors_only_loads
from lntune.train.logger import truncate_jsonl
from lntune.train.state_file import load_state
from tests.helpers import write_llava_data

STEPS = 4  # checkpoints after steps 1, 2 and 3 (none at the last step: the adapter is written then)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_llava_data(tmp_path_factory.mktemp("data"), count=16, text_only=4)


def _command(model_dir, data, out, method="lora", steps=STEPS, *extra):
    path, images = data
    # LoRA dropout: the resumed run draws from the restored RNG, so a wrong RNG state changes the weights.
    return ["train", "--model", str(model_dir), "--out", str(out), "--data", str(path), "--image-folder", str(images),
            "--seed", "3", "--max-steps", str(steps), "--batch-size", "2", "--grad-accum", "2", "--save-every", "1",
            "--keep-checkpoints", "3", "--method", method, "--lora-dropout", "0.1", "--lr", "0.01", *extra]


@pytest.fixture(scope="module")
def straight(built_model, data, tmp_path_factory):
    """An uninterrupted run (with its checkpoints) and the command that made it: command(out) for another --out."""
    model_dir = built_model()
    out = tmp_path_factory.mktemp("straight") / "run"
    assert main(_command(model_dir, data, out)) == 0
    return out, lambda other: _command(model_dir, data, other)


def _crashed_copy(run, destination):
    """What a run killed after its last checkpoint leaves: config, logs and checkpoints, no adapter."""
    destination.mkdir()
    for name in ("config.yaml", "metrics.jsonl", "grad_stats.jsonl"):
        if (run / name).exists():
            shutil.copy(run / name, destination / name)
    shutil.copytree(run / "checkpoints", destination / "checkpoints")
    return destination


def _checkpoint(run, step):
    return run / "checkpoints" / f"step-{step:08d}"


def _flip_byte(path, offset=-100):
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


def _same_weights(run, other):
    for name in ("trainable.safetensors", "adapter_model.safetensors"):
        ours, theirs = (load_file(str(directory / "adapter" / name)) for directory in (run, other))
        assert ours.keys() == theirs.keys()
        assert all(torch.equal(ours[key], theirs[key]) for key in ours), name


def _resume(command, capsys):
    code = main(command + ["--resume"])
    return code, capsys.readouterr().err


def _lines_with(text, needle):
    return [line for line in text.splitlines() if needle in line]


def test_damaged_newest_checkpoint_falls_back_to_the_older_one(straight, tmp_path, capsys):
    run, command = straight
    crashed = _crashed_copy(run, tmp_path / "crashed")
    _flip_byte(_checkpoint(crashed, 3) / "optimizer.safetensors")  # a flipped byte inside a tensor: loads, but wrong
    code, stderr = _resume(command(crashed), capsys)
    assert code == 0, stderr
    warnings = _lines_with(stderr, "warning: checkpoint")
    assert len(warnings) == 1 and "step-00000003" in warnings[0] and "optimizer.safetensors" in warnings[0]
    assert _lines_with(stderr, "resuming from") and "step-00000002" in _lines_with(stderr, "resuming from")[0]
    _same_weights(run, crashed)


def test_newest_checkpoint_without_manifest_falls_back(straight, tmp_path, capsys):
    """Killed mid-save: the files are there (one cut short), the manifest that seals them is not."""
    run, command = straight
    crashed = _crashed_copy(run, tmp_path / "crashed")
    (_checkpoint(crashed, 3) / manifest.MANIFEST).unlink()
    trainable = _checkpoint(crashed, 3) / "trainable.safetensors"
    trainable.write_bytes(trainable.read_bytes()[:1000])
    code, stderr = _resume(command(crashed), capsys)
    assert code == 0, stderr
    warnings = _lines_with(stderr, "warning: checkpoint")
    assert len(warnings) == 1 and "step-00000003" in warnings[0] and "no manifest.json" in warnings[0]
    _same_weights(run, crashed)
    # The resumed run wrote step 3 again, sealed.
    assert manifest.problem(_checkpoint(crashed, 3)) is None


def test_no_intact_checkpoint_is_a_one_line_error_that_changes_nothing(straight, tmp_path, capsys):
    run, command = straight
    crashed = _crashed_copy(run, tmp_path / "crashed")
    _flip_byte(_checkpoint(crashed, 1) / "trainable.safetensors")
    (_checkpoint(crashed, 2) / manifest.MANIFEST).unlink()
    (_checkpoint(crashed, 3) / "state.json").unlink()
    before = {path: path.read_bytes() for path in crashed.rglob("*") if path.is_file()}
    code, stderr = _resume(command(crashed), capsys)
    assert code == 1
    errors = _lines_with(stderr, "error:")
    assert len(errors) == 1 and "no intact checkpoint" in errors[0]
    for reason in ("step-00000001: trainable.safetensors differs", "step-00000002: no manifest.json",
                   "step-00000003: missing state.json", "delete"):
        assert reason in errors[0]
    assert not _lines_with(stderr, "warning: checkpoint")  # the error says it all
    after = {path: path.read_bytes() for path in crashed.rglob("*") if path.is_file()}
    assert after == before


def test_manifest_problems_are_named(straight, tmp_path):
    run, _ = straight
    cases = {
        "intact": (lambda d: None, None),
        "size": (lambda d: (d / "state.json").write_text("{}"), "state.json has 2 bytes"),
        "extra": (lambda d: (d / "notes.txt").write_text("x"), "notes.txt not in its manifest.json"),
        "manifest": (lambda d: (d / manifest.MANIFEST).write_text("{"), "manifest.json unreadable"),
        "unreadable": (lambda d: (d / "state.json").chmod(0), "state.json unreadable"),
    }
    for name, (damage, expected) in cases.items():
        directory = shutil.copytree(_checkpoint(run, 1), tmp_path / name)
        damage(directory)
        if name == "unreadable" and os.access(directory / "state.json", os.R_OK):
            continue  # running as root: every file is readable
        reason = manifest.problem(directory)
        assert (reason is None) if expected is None else (expected in reason), (name, reason)


def test_cut_off_last_metrics_line_is_dropped_with_a_note(straight, tmp_path, capsys):
    run, command = straight
    crashed = _crashed_copy(run, tmp_path / "crashed")
    shutil.rmtree(_checkpoint(crashed, 3))  # resume from step 2: lines of steps 3 and 4 go
    with (crashed / "metrics.jsonl").open("a") as handle:
        handle.write('{"step": 5, "loss": 2.3')  # what a kill in the middle of a write leaves
    code, stderr = _resume(command(crashed), capsys)
    assert code == 0, stderr
    notes = _lines_with(stderr, "note:")
    assert len(notes) == 1 and "metrics.jsonl line 5" in notes[0]
    lines = (crashed / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == list(range(1, STEPS + 1))
    _same_weights(run, crashed)


def test_damaged_metrics_line_in_the_middle_is_an_error(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1}\n{"step": 2, "lo\n{"step": 3}\n')
    with pytest.raises(LntuneError, match=r"metrics.jsonl line 2: not a JSON record"):
        truncate_jsonl(path, 3)
    assert path.read_text() == '{"step": 1}\n{"step": 2, "lo\n{"step": 3}\n'  # untouched


class _Planted:
    """A pickle that, loaded with plain torch.load / pickle.load, writes `marker`."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return exec, (f"open({self.marker!r}, 'w').write('code ran')",)


def _plant(path, marker):
    torch.save(_Planted(marker), path)


def test_planted_pickle_is_never_run(straight, tmp_path, capsys):
    run, command = straight
    marker = tmp_path / "marker"
    # The payload works: loading it the old way (weights_only=False) runs it.
    _plant(tmp_path / "probe.pt", tmp_path / "probe-marker")
    torch.load(tmp_path / "probe.pt", weights_only=False)
    assert (tmp_path / "probe-marker").exists()

    crashed = _crashed_copy(run, tmp_path / "crashed")
    for name in ("rng-0.safetensors", "optimizer.safetensors", "scheduler.safetensors"):
        _plant(_checkpoint(crashed, 3) / name, marker)
    manifest.write_manifest(_checkpoint(crashed, 3))  # sealed: the files match their manifest
    with pytest.raises(Exception):
        load_state(_checkpoint(crashed, 3) / "rng-0.safetensors")  # even without the check, loading runs nothing
    code, stderr = _resume(command(crashed), capsys)
    assert code == 0, stderr
    warnings = _lines_with(stderr, "warning: checkpoint")
    assert len(warnings) == 1 and "step-00000003" in warnings[0] and "is not a safetensors file" in warnings[0]
    assert not marker.exists()
    _same_weights(run, crashed)


@pytest.fixture(scope="module")
def zero3_run(built_model, data, tmp_path_factory):
    pytest.importorskip("deepspeed")
    model_dir = built_model()
    out = tmp_path_factory.mktemp("zero3") / "run"
    def command(other):
        return _command(model_dir, data, other, "layernorm", 2, "--distributed", "zero3")

    assert main(command(out)) == 0
    return out, command


def _optimizer_states(checkpoint):
    found = list((checkpoint / "deepspeed").glob("*optim_states.pt"))
    assert len(found) == 1
    return found[0]


def test_planted_pickle_in_deepspeed_state_is_never_run(zero3_run, tmp_path):
    run, _ = zero3_run
    marker = tmp_path / "marker"
    checkpoint = shutil.copytree(_checkpoint(run, 1), tmp_path / "checkpoint")
    assert manifest.problem(checkpoint) is None  # DeepSpeed's own files pass: only the classes they need
    states = _optimizer_states(checkpoint)
    # DeepSpeed's checkpoint_serialization=false writes torch's legacy format: checked by a tensors-only load.
    with torch.serialization.safe_globals(manifest.deepspeed_classes()):
        torch.save(torch.load(states, weights_only=True), states, _use_new_zipfile_serialization=False)
    manifest.write_manifest(checkpoint)
    assert manifest.problem(checkpoint) is None
    torch.save(_Planted(marker), states, _use_new_zipfile_serialization=False)
    manifest.write_manifest(checkpoint)
    assert "holds Python objects that loading would run" in manifest.problem(checkpoint)
    _plant(states, marker)
    manifest.write_manifest(checkpoint)
    assert "holds Python objects that loading would run (builtins.exec)" in manifest.problem(checkpoint)

    # And the load itself: DeepSpeed's checkpoint engine reads with weights_only=False; lntune swaps in a safe one.
    class Engine:
        class checkpoint_engine:  # noqa: N801 (DeepSpeed's attribute name)
            load = staticmethod(lambda path, map_location=None: torch.load(path, weights_only=False))

    with tensors_only_loads(Engine), pytest.raises(Exception, match="Weights only load failed"):
        Engine.checkpoint_engine.load(str(_optimizer_states(checkpoint)))
    assert not marker.exists()


def test_failed_deepspeed_resume_undoes_its_process_wide_changes(zero3_run, tmp_path, capsys):
    run, command = zero3_run
    crashed = _crashed_copy(run, tmp_path / "crashed")
    # Sealed and free of code, but not DeepSpeed's state: the failure comes after zero.initialize, in its load.
    torch.save({}, _optimizer_states(_checkpoint(crashed, 1)))
    manifest.write_manifest(_checkpoint(crashed, 1))
    linear = torch.nn.functional.linear
    assert "LOCAL_RANK" not in os.environ
    code, stderr = _resume(command(crashed), capsys)
    assert code == 1
    errors = _lines_with(stderr, "error:")
    assert len(errors) == 1 and "DeepSpeed could not load its state" in errors[0]
    assert torch.nn.functional.linear is linear and "LOCAL_RANK" not in os.environ


def test_state_file_keeps_types_without_pickle(tmp_path):
    """Optimizer state keys are ints, betas a tuple, steps 0-d tensors; views are stored as their own data."""
    from lntune.train.state_file import save_state

    state = {"state": {0: {"step": torch.tensor(3.0), "exp_avg": torch.arange(6.0).reshape(2, 3)[:, :2]}},
             "param_groups": [{"betas": (0.9, 0.999), "params": [0], "foreach": None, "name": "norms", "eps": float("inf")}]}
    save_state(state, tmp_path / "state.safetensors")
    loaded = load_state(tmp_path / "state.safetensors")
    assert loaded["param_groups"] == state["param_groups"] and isinstance(loaded["param_groups"][0]["betas"], tuple)
    assert list(loaded["state"]) == [0]
    assert all(torch.equal(loaded["state"][0][key], state["state"][0][key]) for key in ("step", "exp_avg"))
    with pytest.raises(TypeError, match="not object"):
        save_state({"bad": object()}, tmp_path / "bad.safetensors")
