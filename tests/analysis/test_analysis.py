"""The paper's analyses: layer similarity, gradient variance, norm drift."""

import json
import statistics

import pytest
import torch

from lntune.analysis.gradients import gradient_variance
from lntune.analysis.similarity import layer_similarity, off_diagonal_mean
from lntune.cli import main
from lntune.model.load import load_model
from tests.helpers import image_inputs, write_llava_data


def _batches(model_dir):
    inputs = image_inputs(model_dir)
    return [{k: v for k, v in inputs.items() if k in ("input_ids", "attention_mask", "pixel_values")}]


def test_identical_layers_give_similarity_one(built_model):
    """Blocks that add nothing to the residual stream output their input: every layer equals every other."""
    model = load_model(built_model())
    for block in model.model.language_model.layers:
        torch.nn.init.zeros_(block.self_attn.o_proj.weight)
        torch.nn.init.zeros_(block.mlp.down_proj.weight)
    matrix = layer_similarity(model, _batches(built_model()), model.config.image_token_id)
    torch.testing.assert_close(matrix, torch.ones_like(matrix))
    assert off_diagonal_mean(matrix) == pytest.approx(1.0)


@pytest.mark.parametrize("tokens", ["all", "image", "text"])
def test_similarity_equals_a_direct_computation(built_model, tokens):
    model = load_model(built_model()).eval()
    batch = _batches(built_model())[0]
    matrix = layer_similarity(model, [batch], model.config.image_token_id, tokens)
    with torch.no_grad():
        # transformers' hidden_states: embeddings, then each block's output, except that the last entry has the
        # final norm applied; undo nothing, recompute the last block's raw output by running it on its input.
        states = model(**batch, output_hidden_states=True).hidden_states
        layers = model.model.language_model.layers
        seen = []
        hook = layers[-1].register_forward_hook(lambda m, i, o: seen.append(o[0] if isinstance(o, tuple) else o))
        model(**batch)
        hook.remove()
    hidden = list(states[1:-1]) + [seen[0]]
    image = batch["input_ids"][0] == model.config.image_token_id
    keep = {"all": torch.ones_like(image), "image": image, "text": ~image}[tokens]
    means = [h[0][keep].mean(0) for h in hidden]
    expected = torch.tensor([[float(torch.nn.functional.cosine_similarity(a, b, dim=0)) for b in means] for a in means])
    torch.testing.assert_close(matrix, expected, rtol=1e-5, atol=1e-5)
    assert off_diagonal_mean(matrix) < 1.0


def test_gradient_variance_equals_direct_computation():
    records = [{"step": i + 1, "norm_grad_norm": v, "block_norm_grad_norms": [v / 2, v * 3]}
               for i, v in enumerate([0.5, 0.25, 1.0, 0.75, 0.1])]
    result = gradient_variance(records, window=3)
    assert result["variance"] == pytest.approx(statistics.pvariance([0.5, 0.25, 1.0, 0.75, 0.1]))
    assert result["per_block_variance"][1] == pytest.approx(statistics.pvariance([1.5, 0.75, 3.0, 2.25, 0.3]))
    assert result["sliding_variance"] == pytest.approx([statistics.pvariance(w) for w in
                                                        ([0.5, 0.25, 1.0], [0.25, 1.0, 0.75], [1.0, 0.75, 0.1])])
    assert result["sliding_steps"] == [3, 4, 5]


@pytest.mark.slow
def test_analyze_commands_on_real_runs(built_model, tmp_path, capsys):
    from lntune.config import DataConfig, DataSource, MethodConfig, RunConfig, TrainConfig
    from lntune.train.trainer import train

    path, images = write_llava_data(tmp_path / "d", count=8)
    runs = []
    for method in ("full", "layernorm"):
        config = RunConfig(model=str(built_model()), out=str(tmp_path / method), method=MethodConfig(name=method),
                           data=DataConfig(sources=(DataSource(str(path)),), image_folder=str(images)),
                           train=TrainConfig(max_steps=3, batch_size=2, save_every=0))
        runs.append(str(train(config, say=lambda m: None)))
    logged = [json.loads(line)["norm_grad_norm"] for line in (tmp_path / "full" / "grad_stats.jsonl").read_text().splitlines()]
    out = tmp_path / "analysis"
    assert main(["analyze", "gradients", *runs, "--out", str(out), "--window", "2"]) == 0
    assert json.loads((out / "gradients.json").read_text())["full"]["variance"] == pytest.approx(statistics.pvariance(logged))
    assert main(["analyze", "drift", *runs, "--out", str(out)]) == 0
    drift = json.loads((out / "drift.json").read_text())
    assert all(value > 0 for value in drift["layernorm"]["input_layernorm"])
    assert main(["analyze", "similarity", "--run", runs[0], "--run", runs[1], "--data", str(path), "--image-folder",
                 str(images), "--n", "4", "--out", str(out)]) == 0
    assert set(json.loads((out / "similarity.json").read_text())) == {"full", "layernorm"}
    for name in ("gradients.png", "drift.png", "similarity.png"):
        assert (out / name).stat().st_size > 5000


def test_runs_with_the_same_folder_name_keep_distinct_labels(tmp_path):
    from lntune.analysis.commands import label_by_folder

    assert list(label_by_folder([tmp_path / "a" / "ln", tmp_path / "b" / "full"])) == ["ln", "full"]
    assert list(label_by_folder([tmp_path / "a" / "ln", tmp_path / "b" / "ln"])) == [
        str(tmp_path / "a" / "ln"), str(tmp_path / "b" / "ln")]
