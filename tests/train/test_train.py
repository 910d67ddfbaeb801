"""Training end to end: outputs, adapters and merging, stages, resume after a real kill, 2 processes."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from lntune.adapter import load_adapter, read_manifest
from lntune.cli import main
from lntune.config import DataConfig, DataSource, MethodConfig, RunConfig, TrainConfig
from lntune.errors import LntuneError
from lntune.model.load import load_model
from lntune.train.trainer import train
from lntune.train.zero import free_local_port
from tests.helpers import image_inputs, write_llava_data

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_llava_data(tmp_path_factory.mktemp("data"), count=16, text_only=4)


def run_config(model_dir, out, data, method="layernorm", **train):
    path, images = data
    settings = dict(max_steps=4, batch_size=2, grad_accum=2, save_every=0, seed=3)
    settings.update(train)
    return RunConfig(
        model=str(model_dir), out=str(out), method=MethodConfig(name=method, lora_dropout=0.0),
        data=DataConfig(sources=(DataSource(str(path)),), image_folder=str(images)),
        train=TrainConfig(**settings),
    )


def _logits(model, inputs):
    model.eval()
    with torch.no_grad():
        return model(**inputs).logits


def test_layernorm_run_writes_everything(built_model, data, tmp_path):
    model_dir = built_model()
    run = train(run_config(model_dir, tmp_path / "run", data, save_every=2, save_merged=True), say=lambda m: None)
    names = {p.name for p in run.iterdir()}
    assert {"config.yaml", "metrics.jsonl", "grad_stats.jsonl", "adapter", "model", "tensorboard", "summary.json"} <= names
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == [1, 2, 3, 4]
    assert all(m["loss"] > 0 and m["tokens_per_second"] > 0 and m["memory_mb"] > 0 for m in metrics)
    # warmup then cosine: warmup_ratio 0.03 of 4 steps is 1 warmup step (at lr 0), then layernorm's 1e-3 decays
    # over the 3 steps left: 1e-3 * (1 + cos(pi * k / 3)) / 2 for k = 0, 1, 2
    assert [m["lr"] for m in metrics] == pytest.approx([0.0, 1e-3, 7.5e-4, 2.5e-4], rel=1e-6, abs=1e-12)
    gradients = [json.loads(line) for line in (run / "grad_stats.jsonl").read_text().splitlines()]
    assert len(gradients) == 4 and len(gradients[0]["block_norm_grad_norms"]) == 2
    assert [p.name for p in (run / "checkpoints").iterdir()] == ["step-00000002"]
    # the adapter holds exactly the trained tensors, and they moved
    manifest = read_manifest(run / "adapter")
    base = load_model(model_dir)
    trained = load_file(str(run / "adapter" / "trainable.safetensors"))
    expected = {n for n, _ in base.named_parameters() if ("norm" in n and "language_model" in n)
                or "multi_modal_projector" in n or "embed_tokens" in n or n == "lm_head.weight"}
    assert set(trained) == set(manifest["tensors"]) == expected
    parameters = dict(base.named_parameters())
    assert all(not torch.equal(trained[n], parameters[n]) for n in trained if "embed_tokens" not in n)
    # base + adapter == the merged model the run wrote
    inputs = image_inputs(model_dir)
    with_adapter = load_adapter(load_model(model_dir), run / "adapter", model_dir)
    assert torch.equal(_logits(with_adapter, inputs), _logits(load_model(run / "model"), inputs))


def test_layernorm_simple_adapter_is_only_norms(built_model, data, tmp_path):
    run = train(run_config(built_model(), tmp_path / "run", data, method="layernorm-simple"), say=lambda m: None)
    tensors = load_file(str(run / "adapter" / "trainable.safetensors"))
    assert len(tensors) == 2 * 2 + 1  # two norms per block, two blocks, the final norm
    assert all("layernorm" in name or name.endswith("language_model.norm.weight") for name in tensors)


def test_adapter_is_stored_in_the_base_models_dtype(built_model, data, tmp_path):
    """Trained in fp32, stored like a bf16 base: half the bytes, and base + adapter is what the merge writes."""
    from lntune.adapter import save_model_dir
    from lntune.model.load import load_processor

    fp32_dir = built_model()
    base = load_model(fp32_dir).to(torch.bfloat16)
    save_model_dir(base, load_processor(fp32_dir), tmp_path / "bf16-base", fp32_dir)
    run = train(run_config(tmp_path / "bf16-base", tmp_path / "run", data, method="layernorm-simple",
                           save_merged=True), say=lambda m: None)
    tensors = load_file(str(run / "adapter" / "trainable.safetensors"))
    assert tensors and {t.dtype for t in tensors.values()} == {torch.bfloat16}
    with_adapter = load_adapter(load_model(tmp_path / "bf16-base"), run / "adapter", tmp_path / "bf16-base")
    merged = load_model(run / "model")
    assert merged.dtype == torch.bfloat16
    inputs = image_inputs(fp32_dir)
    inputs["pixel_values"] = inputs["pixel_values"].to(torch.bfloat16)
    assert torch.equal(_logits(with_adapter, inputs), _logits(merged, inputs))


def test_lora_adapter_peft_format_and_merge(built_model, data, tmp_path):
    model_dir = built_model()
    run = train(run_config(model_dir, tmp_path / "run", data, method="lora", lr=1e-2), say=lambda m: None)
    adapter = run / "adapter"
    assert (adapter / "adapter_config.json").is_file() and (adapter / "adapter_model.safetensors").is_file()
    extra = load_file(str(adapter / "trainable.safetensors"))
    assert not any("lora" in name for name in extra) and any("multi_modal_projector" in name for name in extra)
    inputs = image_inputs(model_dir)
    adapted = _logits(load_adapter(load_model(model_dir), adapter, model_dir), inputs)
    assert not torch.allclose(adapted, _logits(load_model(model_dir), inputs))
    assert main(["merge", "--model", str(model_dir), "--adapter", str(adapter), "--out", str(tmp_path / "merged")]) == 0
    torch.testing.assert_close(_logits(load_model(tmp_path / "merged"), inputs), adapted, rtol=1e-4, atol=1e-5)


def test_adapter_refused_on_another_base(built_model, data, tmp_path):
    run = train(run_config(built_model(), tmp_path / "run", data), say=lambda m: None)
    other = built_model(llm="llama", connector="linear")  # same LLM, other connector: another base
    with pytest.raises(LntuneError, match="trained on another base model"):
        load_adapter(load_model(other), run / "adapter", other)


def test_fingerprint_sees_a_connector_change(built_model, tmp_path):
    """A stage-1 model differs from its base only in the connector: the fingerprint must tell them apart."""
    from lntune.adapter import fingerprint

    model = load_model(built_model())
    with torch.no_grad():
        model.model.multi_modal_projector.linear_2.bias[0] += 1.0
    model.save_pretrained(tmp_path / "changed")
    assert fingerprint(tmp_path / "changed") != fingerprint(built_model())


def test_worker_errors_stay_one_line(built_model, tmp_path):
    path, images = write_llava_data(tmp_path / "d", count=8)
    (images / "0003.png").write_bytes(b"broken")
    config = run_config(built_model(), tmp_path / "run", (path, images), batch_size=8, grad_accum=1)
    config = RunConfig(model=config.model, out=config.out, method=config.method, train=config.train,
                       data=DataConfig(sources=config.data.sources, image_folder=str(images), num_workers=1))
    with pytest.raises(LntuneError) as error:
        train(config, say=lambda m: None)
    assert "\n" not in str(error.value) and "cannot read image" in str(error.value) and "id s3" in str(error.value)


def test_two_stages(built_model, data, tmp_path):
    model_dir = built_model(connector="linear")
    stage1 = train(run_config(model_dir, tmp_path / "stage1", data, method="connector", stage="pretrain"), say=lambda m: None)
    assert (stage1 / "model" / "config.json").is_file()
    base, pretrained = load_model(model_dir), load_model(stage1 / "model")
    changed = {n for (n, a), (_, b) in zip(base.named_parameters(), pretrained.named_parameters()) if not torch.equal(a, b)}
    assert changed and all("multi_modal_projector" in name for name in changed)
    stage2 = train(run_config(stage1 / "model", tmp_path / "stage2", data), say=lambda m: None)
    assert read_manifest(stage2 / "adapter")["base_model"] == str((stage1 / "model").resolve())


def test_gradient_checkpointing_gives_the_same_weights(built_model, data, tmp_path):
    model_dir = built_model()
    plain = train(run_config(model_dir, tmp_path / "a", data, method="layernorm-simple"), say=lambda m: None)
    checkpointed = train(run_config(model_dir, tmp_path / "b", data, method="layernorm-simple",
                                    gradient_checkpointing=True), say=lambda m: None)
    a = load_file(str(plain / "adapter" / "trainable.safetensors"))
    b = load_file(str(checkpointed / "adapter" / "trainable.safetensors"))
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=1e-6)


def test_bf16_mixed_precision_runs(built_model, data, tmp_path, monkeypatch):
    """precision bf16: the frozen weights are loaded in bf16, the trained ones kept in fp32, and the forward runs in
    bf16 (a block's MLP computes in bf16); the losses stay finite."""
    import lntune.train.trainer as trainer

    seen = {}
    load_model_as_trainer_does = trainer.load_model

    def load_and_watch(*args, **kwargs):
        model = load_model_as_trainer_does(*args, **kwargs)

        def record(module, inputs, output):
            seen.setdefault("block_mlp", output.dtype)
            seen.setdefault("frozen", {p.dtype for p in model.model.vision_tower.parameters()})
            seen.setdefault("trained", {p.dtype for p in model.parameters() if p.requires_grad})

        model.model.language_model.layers[0].mlp.register_forward_hook(record)
        return model

    monkeypatch.setattr(trainer, "load_model", load_and_watch)
    run = train(run_config(built_model(), tmp_path / "run", data, precision="bf16"), say=lambda m: None)
    losses = [json.loads(line)["loss"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert all(loss == loss and loss > 0 for loss in losses)
    assert seen == {"block_mlp": torch.bfloat16, "frozen": {torch.bfloat16}, "trained": {torch.float32}}


def test_existing_run_dir_needs_resume(built_model, data, tmp_path):
    config = run_config(built_model(), tmp_path / "run", data)
    train(config, say=lambda m: None)
    with pytest.raises(LntuneError, match="--resume"):
        train(config, say=lambda m: None)
    changed = run_config(built_model(), tmp_path / "run", data, lr=0.5)
    with pytest.raises(LntuneError, match="train.lr"):
        train(changed, resume=True, say=lambda m: None)


def test_global_batch_size_and_grouping_run_and_resume_exactly(built_model, data, tmp_path):
    """grad_accum derived from the global batch (logged, recorded); grouped batches replay after a resume."""
    import shutil

    model_dir = built_model()
    settings = dict(grad_accum=None, global_batch_size=4, group_by_modality_length=True, save_every=2)
    messages = []
    straight = train(run_config(model_dir, tmp_path / "straight", data, **settings), say=messages.append)
    assert any("global batch 4 = batch_size 2 x grad_accum 2 x 1 process(es) (grad_accum derived from "
               "global_batch_size); grouped by modality and length" in message for message in messages)
    summary = json.loads((straight / "summary.json").read_text())
    assert (summary["global_batch_size"], summary["batch_size"], summary["grad_accum"], summary["processes"]) == (4, 2, 2, 1)
    saved = yaml.safe_load((straight / "config.yaml").read_text())["train"]
    assert saved["global_batch_size"] == 4 and saved["grad_accum"] is None  # as given: any process count compares equal
    crashed = tmp_path / "crashed"  # the run as it was after the step-2 checkpoint
    (crashed / "checkpoints").mkdir(parents=True)
    shutil.copy(straight / "config.yaml", crashed / "config.yaml")
    shutil.copytree(straight / "checkpoints" / "step-00000002", crashed / "checkpoints" / "step-00000002")
    train(run_config(model_dir, crashed, data, **settings), resume=True, say=lambda m: None)
    expected = load_file(str(straight / "adapter" / "trainable.safetensors"))
    resumed = load_file(str(crashed / "adapter" / "trainable.safetensors"))
    assert expected.keys() == resumed.keys() and all(torch.equal(expected[k], resumed[k]) for k in expected)


def test_cli_yaml_config_and_overrides(built_model, data, tmp_path):
    path, images = data
    config = {"model": str(built_model()), "data": {"sources": [{"path": str(path), "count": 8}], "image_folder": str(images)},
              "train": {"max_steps": 2, "batch_size": 2, "save_every": 0}}
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(config))
    assert main(["train", "--config", str(tmp_path / "run.yaml"), "--out", str(tmp_path / "run"), "--method",
                 "attn-qv", "train.lr=0.01", "data.max_length=512"]) == 0
    saved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert saved["method"]["name"] == "attn-qv" and saved["train"]["lr"] == 0.01 and saved["data"]["max_length"] == 512


def test_text_only_batch_gets_a_vision_placeholder_row(built_model, data):
    """With several processes the vision path runs in every step: a batch of text-only samples gets an extra row (a
    blank image, nothing supervised) that leaves the text rows' logits as they were."""
    from lntune.data.dataset import SupervisedDataset, collate
    from lntune.data.mixture import build_mixture
    from lntune.model.load import load_processor

    model_dir = built_model()
    config = run_config(model_dir, "-", data)
    model = load_model(model_dir).eval()
    dataset = SupervisedDataset(build_mixture(config.data, 0), load_processor(model_dir), model.config.image_seq_length,
                                config.data, "finetune")
    examples = [dataset[index] for index in range(len(dataset))]
    text_only = [example for example in examples if example.pixel_values is None][:2]
    with_image = [example for example in examples if example.pixel_values is not None][:1]
    placeholder = dataset.vision_placeholder()
    plain, padded = collate(text_only, 0), collate(text_only, 0, placeholder)
    assert "pixel_values" not in plain and padded["pixel_values"].shape[0] == 1
    assert padded["input_ids"].shape[0] == 3 and (padded["labels"][2] == -100).all()
    assert (padded["input_ids"][2] == dataset.image_token_id).sum() == model.config.image_seq_length
    assert collate(with_image + text_only, 0, placeholder)["input_ids"].shape[0] == 3  # has an image: no extra row
    with torch.no_grad():
        alone = model(input_ids=plain["input_ids"], attention_mask=plain["attention_mask"]).logits
        beside = model(input_ids=padded["input_ids"], attention_mask=padded["attention_mask"],
                       pixel_values=padded["pixel_values"]).logits
    real = plain["attention_mask"].bool()
    torch.testing.assert_close(beside[:2, : alone.shape[1]][real], alone[real], rtol=1e-4, atol=1e-5)


def test_cli_pretrain_defaults_to_connector(built_model, data, tmp_path):
    path, images = data
    assert main(["train", "--model", str(built_model()), "--out", str(tmp_path / "run"), "--stage", "pretrain",
                 "--data", f"{path}:8", "--image-folder", str(images), "--max-steps", "1", "--batch-size", "2"]) == 0
    assert yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())["method"]["name"] == "connector"
    code = main(["train", "--model", str(built_model()), "--out", str(tmp_path / "run2"), "--stage", "pretrain",
                 "--method", "layernorm", "--data", str(path), "--image-folder", str(images)])
    assert code == 1


def _torchrun(args, env, timeout=240):
    """Run torchrun in its own session and kill the whole group on timeout (no orphaned workers)."""
    process = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               start_new_session=True)
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        stdout, stderr = process.communicate()
        raise AssertionError(f"torchrun did not finish in {timeout}s:\n{stderr[-3000:]}")
    return subprocess.CompletedProcess(args, process.returncode, stdout, stderr)


def _cli_train(model_dir, data, out, *extra):
    path, images = data
    return [sys.executable, "-m", "lntune", "train", "--model", str(model_dir), "--out", str(out),
            "--data", str(path), "--image-folder", str(images), "--seed", "5", *extra]


@pytest.mark.slow
def test_resume_after_kill_reaches_the_same_weights(built_model, data, tmp_path):
    model_dir = built_model()
    args = ["--max-steps", "30", "--batch-size", "2", "--save-every", "5", "--method", "lora", "--lr", "0.01",
            "--lora-dropout", "0.1"]  # dropout: the RNG state must be restored too
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    subprocess.run(_cli_train(model_dir, data, tmp_path / "straight", *args), check=True, env=env, capture_output=True, timeout=600)

    killed = subprocess.Popen(_cli_train(model_dir, data, tmp_path / "killed", *args), env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    checkpoints = tmp_path / "killed" / "checkpoints"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and killed.poll() is None:
        if any(p.name >= "step-00000010" and not p.name.startswith(".") for p in checkpoints.glob("step-*")):
            killed.send_signal(signal.SIGKILL)
            break
        time.sleep(0.02)
    assert killed.wait(timeout=60) == -signal.SIGKILL, "the run finished before it could be killed"
    assert not (tmp_path / "killed" / "adapter").exists()
    subprocess.run(_cli_train(model_dir, data, tmp_path / "killed", *args, "--resume"), check=True, env=env,
                   capture_output=True, timeout=600)

    for name in ("adapter_model.safetensors", "trainable.safetensors"):
        straight = load_file(str(tmp_path / "straight" / "adapter" / name))
        resumed = load_file(str(tmp_path / "killed" / "adapter" / name))
        assert straight.keys() == resumed.keys()
        assert all(torch.equal(straight[key], resumed[key]) for key in straight)
    steps = [json.loads(line)["step"] for line in (tmp_path / "killed" / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 31))


@pytest.mark.slow
def test_two_processes_match_one(built_model, tmp_path):
    """DDP with torchrun and with accelerate launch: the weights of one process with the same global batch (set as
    --global-batch-size, with LLaVA's grouping by modality and length: the same batches on any process count)."""
    model_dir = built_model()
    data = write_llava_data(tmp_path / "data", count=8, text_only=8)  # half the samples text-only
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    common = ["--max-steps", "3", "--method", "layernorm", "--lr", "0.01", "--save-every", "0",
              "--global-batch-size", "4", "--group-by-modality-length"]
    assert main(_cli_train(model_dir, data, tmp_path / "one", *common, "--batch-size", "2")[3:]) == 0
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    # One sample per micro-batch: whole global batches are text-only, so the vision placeholder row is what keeps
    # DDP's gradient buckets in step (no find_unused_parameters).
    two_args = _cli_train(model_dir, data, tmp_path / "two", *common, "--batch-size", "1")[1:]
    result = _torchrun(torchrun + two_args, env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "global batch 4 = batch_size 1 x grad_accum 2 x 2 process(es)" in result.stderr
    # The same with `accelerate launch` (its --multi_gpu launcher starts the processes; on CPUs they use gloo).
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
              "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
              "--main_process_port", str(free_local_port())]
    result = _torchrun(launch + _cli_train(model_dir, data, tmp_path / "launched", *common, "--batch-size", "2")[1:], env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "2 process(es)" in result.stderr
    one = load_file(str(tmp_path / "one" / "adapter" / "trainable.safetensors"))
    base = dict(load_model(model_dir).named_parameters())
    for run in ("two", "launched"):
        two = load_file(str(tmp_path / run / "adapter" / "trainable.safetensors"))
        assert one.keys() == two.keys()
        for name in one:
            torch.testing.assert_close(two[name], one[name], rtol=0, atol=2e-6)
    assert any(not torch.equal(one[name], base[name]) for name in one)


def _resume_from_step_2(run_dir, command, env):
    """A crash after the step-2 checkpoint: a copy of the run with only what existed then, resumed with the same
    command. Returns the resumed run's trained tensors."""
    import shutil

    crashed = run_dir.with_name(run_dir.name + "-crashed")
    (crashed / "checkpoints").mkdir(parents=True)
    shutil.copy(run_dir / "config.yaml", crashed / "config.yaml")
    shutil.copytree(run_dir / "checkpoints" / "step-00000002", crashed / "checkpoints" / "step-00000002")
    result = _torchrun([a if a != str(run_dir) else str(crashed) for a in command] + ["--resume"], env)
    assert result.returncode == 0, result.stderr[-3000:]
    return load_file(str(crashed / "adapter" / "trainable.safetensors"))


# What the sharded runs below train, and the one-process run they must equal (global batch 4 either way).
SHARDED_COMMON = ["--max-steps", "4", "--method", "layernorm", "--lr", "0.01", "--max-grad-norm", "0.5"]


@pytest.fixture(scope="module")
def one_process_run(built_model, tmp_path_factory):
    """The sharded tests' reference: one process, batch 2 x 2 accumulation, trained in this process (a subprocess
    per test would only add its start-up). Returns (model, data, run directory)."""
    model_dir = built_model()
    root = tmp_path_factory.mktemp("one-process")
    # Text-only samples and one sample per micro-batch: some micro-batches have no image (the placeholder row).
    data = write_llava_data(root / "data", count=16, text_only=4)
    command = _cli_train(model_dir, data, root / "one", *SHARDED_COMMON, "--batch-size", "2", "--grad-accum", "2",
                         "--save-every", "0")
    assert main(command[3:]) == 0  # without `python -m lntune`
    return model_dir, data, root / "one"


@pytest.mark.slow
def test_fsdp2_two_processes_match_one_and_resume(one_process_run, tmp_path):
    model_dir, data, one_run = one_process_run
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    sharded_args = _cli_train(model_dir, data, tmp_path / "fsdp", *SHARDED_COMMON, "--batch-size", "1",
                              "--grad-accum", "2", "--save-every", "2", "train.distributed=fsdp2")[1:]
    result = _torchrun(torchrun + sharded_args, env)
    assert result.returncode == 0, result.stderr[-3000:]
    one = load_file(str(one_run / "adapter" / "trainable.safetensors"))
    sharded = load_file(str(tmp_path / "fsdp" / "adapter" / "trainable.safetensors"))
    assert one.keys() == sharded.keys()
    for name in one:
        torch.testing.assert_close(sharded[name], one[name], rtol=0, atol=2e-6)

    resumed = _resume_from_step_2(tmp_path / "fsdp", torchrun + sharded_args, env)
    for name in sharded:
        torch.testing.assert_close(resumed[name], sharded[name], rtol=0, atol=1e-7)


@pytest.mark.parametrize("mode", ["zero2", "zero3"])
def test_deepspeed_in_one_process_trains_like_the_plain_loop(built_model, data, tmp_path, mode):
    """zero2/zero3 use DeepSpeed's engine in one process too (on a process group of one), and other runs in the
    same process still work (lntune compare). Same
    gradients and weights as lntune's own loop: exact on CPU (fp32), close on a GPU (DeepSpeed's bf16 keeps the
    whole module in bf16, the plain loop autocasts around fp32 trainables)."""
    pytest.importorskip("deepspeed")
    model_dir = built_model()
    settings = dict(max_grad_norm=0.5, lr=1e-2, save_every=2)
    plain = train(run_config(model_dir, tmp_path / "plain", data, **settings), say=lambda m: None)
    linear = torch.nn.functional.linear
    engine = train(run_config(model_dir, tmp_path / "engine", data, distributed=mode, **settings), say=lambda m: None)
    assert torch.nn.functional.linear is linear  # ZeRO-3 replaces it process-wide; lntune puts it back
    again = train(run_config(model_dir, tmp_path / "again", data, **settings), say=lambda m: None)
    first, second = (load_file(str(run / "adapter" / "trainable.safetensors")) for run in (plain, again))
    assert all(torch.equal(first[name], second[name]) for name in first)
    tolerance = dict(rel=2e-2) if torch.cuda.is_available() else dict(rel=1e-5)
    for file in ("metrics.jsonl", "grad_stats.jsonl"):
        rows = [[json.loads(line) for line in (run / file).read_text().splitlines()] for run in (plain, engine)]
        assert [r["step"] for r in rows[0]] == [r["step"] for r in rows[1]] == [1, 2, 3, 4]
        key = "loss" if file == "metrics.jsonl" else "norm_grad_norm"
        assert [r[key] for r in rows[1]] == pytest.approx([r[key] for r in rows[0]], **tolerance)
    ours = load_file(str(plain / "adapter" / "trainable.safetensors"))
    theirs = load_file(str(engine / "adapter" / "trainable.safetensors"))
    assert ours.keys() == theirs.keys()
    for name in ours:
        torch.testing.assert_close(theirs[name], ours[name], rtol=0, atol=2e-2 if torch.cuda.is_available() else 2e-6)


@pytest.mark.parametrize("mode", ["zero2", "zero3"])
def test_deepspeed_lora_with_gradient_checkpointing(built_model, data, tmp_path, mode):
    """PEFT's LoRA layers and non-reentrant checkpointing inside the engine (ZeRO-3 gathers the partitioned weights
    again for the recomputation): the same LoRA tensors as the plain loop, and the adapter loads."""
    pytest.importorskip("deepspeed")
    model_dir = built_model()
    settings = dict(method="lora", lr=1e-2, gradient_checkpointing=True)
    plain = train(run_config(model_dir, tmp_path / "plain", data, **settings), say=lambda m: None)
    engine = train(run_config(model_dir, tmp_path / "engine", data, distributed=mode, **settings), say=lambda m: None)
    ours, theirs = (load_file(str(run / "adapter" / "adapter_model.safetensors")) for run in (plain, engine))
    assert ours.keys() == theirs.keys()
    # CPU: the engine reduces in another order; on padded images one LoRA value of 2048 lands 6e-6..1.1e-5 away
    # (relative 1e-4) after the four steps. A wrong gradient moves values by the learning rate's scale (1e-2).
    atol = 2e-2 if torch.cuda.is_available() else 2e-5
    for name in ours:
        torch.testing.assert_close(theirs[name], ours[name], rtol=0, atol=atol)
    adapted = load_adapter(load_model(model_dir), engine / "adapter", model_dir)
    assert not torch.allclose(_logits(adapted, image_inputs(model_dir)), _logits(load_model(model_dir), image_inputs(model_dir)))


def test_deepspeed_failure_midway_undoes_its_process_wide_changes(built_model, tmp_path):
    pytest.importorskip("deepspeed")
    path, images = write_llava_data(tmp_path / "data", count=8)
    for image in images.iterdir():
        image.write_bytes(b"not a png")  # the first batch fails to load, inside the training loop
    linear = torch.nn.functional.linear
    with pytest.raises(LntuneError, match="--skip-invalid"):
        train(run_config(built_model(), tmp_path / "run", (path, images), distributed="zero3"), say=lambda m: None)
    assert torch.nn.functional.linear is linear and "LOCAL_RANK" not in os.environ


def test_failed_run_leaves_no_settings_behind(built_model, tmp_path):
    """Accelerate keeps a run's settings (its precision) in a process-wide singleton: a run that failed midway must
    not hold a later run in the same process (lntune compare, notebooks) to them."""
    model_dir = built_model()
    path, broken = write_llava_data(tmp_path / "broken", count=8)
    for image in broken.iterdir():
        image.write_bytes(b"not a png")  # the first batch fails to load, inside the training loop
    with pytest.raises(LntuneError, match="--skip-invalid"):
        train(run_config(model_dir, tmp_path / "failed", (path, broken), precision="bf16"), say=lambda m: None)
    good = write_llava_data(tmp_path / "good", count=8)
    run = train(run_config(model_dir, tmp_path / "next", good, precision="fp32", max_steps=1), say=lambda m: None)
    assert (run / "adapter" / "trainable.safetensors").is_file()


def test_deepspeed_config_file_offloads_and_is_checked(built_model, data, tmp_path):
    """A user's DeepSpeed JSON is merged in (here: the optimizer state offloaded to the CPU, which keeps lntune's
    AdamW); keys lntune sets itself are refused before any work, unless "auto"."""
    pytest.importorskip("deepspeed")
    model_dir = built_model()
    offload = tmp_path / "offload.json"
    offload.write_text(json.dumps({"zero_optimization": {"offload_optimizer": {"device": "cpu"}},
                                   "train_batch_size": "auto", "gradient_clipping": "auto"}))
    settings = dict(lr=1e-2, max_grad_norm=0.5)
    plain = train(run_config(model_dir, tmp_path / "plain", data, **settings), say=lambda m: None)
    said = []
    offloaded = train(run_config(model_dir, tmp_path / "offloaded", data, distributed="zero3",
                                 deepspeed_config=str(offload), **settings), say=said.append)
    assert any("ZeRO-3" in line for line in said)
    ours, theirs = (load_file(str(run / "adapter" / "trainable.safetensors")) for run in (plain, offloaded))
    for name in ours:
        torch.testing.assert_close(theirs[name], ours[name], rtol=0, atol=2e-2 if torch.cuda.is_available() else 2e-6)

    owned = tmp_path / "owned.json"
    owned.write_text(json.dumps({"bf16": {"enabled": True}}))
    with pytest.raises(LntuneError, match=r"owned.json: `bf16` is set by lntune .*--precision"):
        train(run_config(model_dir, tmp_path / "owned", data, distributed="zero2", deepspeed_config=str(owned)))
    broken = tmp_path / "broken.json"
    broken.write_text('{"zero_optimization": {\n  "stage": 3,\n}')
    with pytest.raises(LntuneError, match=r"broken.json: not valid JSON \(line 3"):
        train(run_config(model_dir, tmp_path / "broken", data, distributed="zero2", deepspeed_config=str(broken)))
    assert not (tmp_path / "owned").exists() and not (tmp_path / "broken").exists()  # refused before any work
    with pytest.raises(LntuneError, match="needs distributed zero2 or zero3"):
        TrainConfig(deepspeed_config=str(offload))


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["zero2", "zero3"])
def test_deepspeed_two_processes_match_one_and_resume(one_process_run, tmp_path, mode):
    """DeepSpeed ZeRO on 2 CPU processes (gloo): the same weights as one process with the same global batch, and a
    resume from its partitioned checkpoint ends where the uninterrupted run did."""
    pytest.importorskip("deepspeed")

    model_dir, data, one_run = one_process_run
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    zero_args = _cli_train(model_dir, data, tmp_path / "zero", *SHARDED_COMMON, "--batch-size", "1", "--grad-accum",
                           "2", "--save-every", "2", "--distributed", mode)[1:]
    result = _torchrun(torchrun + zero_args, env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"with DeepSpeed ZeRO-{mode[-1]}" in result.stderr
    one = load_file(str(one_run / "adapter" / "trainable.safetensors"))
    sharded = load_file(str(tmp_path / "zero" / "adapter" / "trainable.safetensors"))
    assert one.keys() == sharded.keys()
    for name in one:
        torch.testing.assert_close(sharded[name], one[name], rtol=0, atol=2e-6)
    # the norms' gradient statistics are the whole (accumulated, averaged) gradients, as in one process
    for file in ("metrics.jsonl", "grad_stats.jsonl"):
        lines = [[json.loads(line) for line in (run / file).read_text().splitlines()]
                 for run in (one_run, tmp_path / "zero")]
        assert [r["step"] for r in lines[0]] == [r["step"] for r in lines[1]] == [1, 2, 3, 4]
    for ours, theirs in zip(*lines):
        assert ours["norm_grad_norm"] == pytest.approx(theirs["norm_grad_norm"], rel=1e-4)
    checkpoint = tmp_path / "zero" / "checkpoints" / "step-00000002"
    assert (checkpoint / "deepspeed").is_dir() and not (checkpoint / "optimizer.pt").exists()

    resumed = _resume_from_step_2(tmp_path / "zero", torchrun + zero_args, env)
    for name in sharded:
        torch.testing.assert_close(resumed[name], sharded[name], rtol=0, atol=1e-7)


def test_deepspeed_logs_stay_off_stdout():
    """DeepSpeed logs to stdout (and warns on import on a CPU machine); the CLI's stdout carries result tables."""
    pytest.importorskip("deepspeed")
    from tests.faults.helpers import AFTER_MAIN

    done = subprocess.run([sys.executable, "-c", AFTER_MAIN + "import deepspeed; deepspeed.utils.logger.warning('w')"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout == "" and "[DeepSpeed WARNING] w" in done.stderr
