"""Batching: the global batch size, LLaVA's grouping by modality and length, and the recipes in configs/."""

import random
from pathlib import Path

import pytest
import torch

from lntune.config import RunConfig, TrainConfig, config_from_dict, load_yaml
from lntune.errors import LntuneError
from lntune.train.sampler import StepBatchSampler, resolve_grad_accum
from tests.cli.test_cli_errors import run_main

REPO = Path(__file__).resolve().parents[2]


def _data(images=24, texts=16, seed=0):
    """Per-sample modality and length, modalities interleaved at random."""
    rng = random.Random(seed)
    has_image = [True] * images + [False] * texts
    rng.shuffle(has_image)
    lengths = [rng.randrange(20, 2000) for _ in has_image]
    return has_image, lengths


def _sampler(has_image=None, lengths=None, size=None, batch_size=2, grad_accum=2, world=1, rank=0, seed=0,
             total_steps=10, start_step=0):
    size = size if size is not None else len(has_image)
    return StepBatchSampler(size, batch_size, grad_accum, world, rank, seed, total_steps, start_step,
                            has_image=has_image, lengths=lengths)


def _steps(sampler, steps):
    return [sampler.micro_batches(step) for step in range(steps)]


# ---- global batch size ---------------------------------------------------------------------------------------

def test_grad_accum_is_derived_from_the_global_batch():
    assert resolve_grad_accum(16, 1, 128, None) == 8
    assert resolve_grad_accum(16, 8, 128, None) == 1
    assert resolve_grad_accum(32, 2, 256, 4) == 4  # an explicit grad_accum that agrees is fine
    assert resolve_grad_accum(4, 2, None, None) == 1 and resolve_grad_accum(4, 2, None, 3) == 3


def test_global_batch_that_does_not_divide_is_refused_with_suggestions():
    with pytest.raises(LntuneError) as error:
        resolve_grad_accum(8, 2, 100, None)
    message = str(error.value)
    assert "global batch size 100" in message and "batch_size 8 x 2 processes = 16" in message
    assert "96 or 112" in message and "batch size that divides 50 (e.g. 5)" in message
    with pytest.raises(LntuneError, match=r"multiple of 48 \(240 or 288\)$"):  # 256 cannot split over 3 processes
        resolve_grad_accum(16, 3, 256, None)


def test_cli_global_batch_not_divisible_is_one_line(capsys, tmp_path):
    # Checked before the data or model are read: neither exists here, and no run directory is created.
    code, err = run_main(capsys, "train", "--model", str(tmp_path / "model"), "--out", str(tmp_path / "run"),
                         "--data", str(tmp_path / "data.json"), "--batch-size", "3", "--global-batch-size", "8")
    assert code == 1 and err.count("\n") == 0
    assert "global batch size 8 is not divisible by batch_size 3 x 1 process = 3" in err and "6 or 9" in err
    assert not (tmp_path / "run").exists()


def test_cli_grad_accum_contradicting_the_global_batch_is_refused(capsys, tmp_path):
    code, err = run_main(capsys, "train", "--model", str(tmp_path / "model"), "--out", str(tmp_path / "run"),
                         "--data", str(tmp_path / "data.json"), "--batch-size", "4", "--global-batch-size", "16",
                         "--grad-accum", "2")
    assert code == 1 and err.count("\n") == 0
    assert "grad_accum 2 contradicts global batch size 16" in err and "needs grad_accum 4" in err


def test_global_batch_size_must_be_positive():
    with pytest.raises(LntuneError, match="global_batch_size must be >= 1"):
        TrainConfig(global_batch_size=0)


# ---- grouping by modality and length -------------------------------------------------------------------------

def test_every_micro_batch_has_one_modality_when_the_data_allows():
    has_image, lengths = _data(images=24, texts=16)  # both multiples of the global batch of 8
    for world in (1, 2):
        for rank in range(world):
            sampler = _sampler(has_image, lengths, grad_accum=4 // world, world=world, rank=rank, total_steps=15)
            for micro_batches in _steps(sampler, 15):  # three epochs
                for batch in micro_batches:
                    assert len({has_image[i] for i in batch}) == 1
    # The same data without grouping mixes them.
    plain = _sampler(size=40, grad_accum=4)
    assert any(len({has_image[i] for i in batch}) == 2 for step in _steps(plain, 5) for batch in step)


def test_leftovers_of_both_modalities_form_at_most_one_mixed_batch():
    has_image, lengths = _data(images=21, texts=11)  # 5 + 3 left over: one mixed global batch of 8 per epoch
    sampler = _sampler(has_image, lengths, grad_accum=4)
    assert sampler.steps_per_epoch == 4
    for epoch in range(3):
        batches = [sampler.global_batch_indices(epoch * 4 + position) for position in range(4)]
        mixed = [batch for batch in batches if len({has_image[i] for i in batch}) == 2]
        assert len(mixed) == 1 and mixed[0] == batches[0]  # first, as LLaVA places its mixed megabatch
        # images first, then text: only the micro-batch at the boundary holds both
        flags = [has_image[i] for i in mixed[0]]
        assert flags == sorted(flags, reverse=True)
        micro_mixed = [flags[start:start + 2] for start in range(0, 8, 2) if len(set(flags[start:start + 2])) == 2]
        assert len(micro_mixed) <= 1
        every = [i for batch in batches for i in batch]
        assert len(every) == len(set(every)) == 32  # each sample at most once per epoch


def test_each_global_batch_is_sorted_longest_first_but_the_batches_are_random():
    has_image, lengths = _data(images=64, texts=0)
    sampler = _sampler(has_image, lengths, batch_size=4, grad_accum=4)
    batches = [sampler.global_batch_indices(step) for step in range(sampler.steps_per_epoch)]
    for batch in batches:
        assert [lengths[i] for i in batch] == sorted((lengths[i] for i in batch), reverse=True)
    # Not one global sort: the longest sample of the data is not always in the first batch, and the batches overlap
    # in length range (each is a random draw, sorted inside).
    firsts = {_sampler(has_image, lengths, batch_size=4, grad_accum=4, seed=seed).global_batch_indices(0)[0]
              for seed in range(6)}
    assert len(firsts) > 1
    ranges = [(lengths[batch[-1]], lengths[batch[0]]) for batch in batches]
    assert any(low < ranges[0][1] and high > ranges[0][0] for low, high in ranges[1:])
    # sorting cuts padding: the micro-batches' longest-sample total is below the plain order's
    plain = _sampler(size=64, batch_size=4, grad_accum=4)
    padded = lambda s: sum(max(lengths[i] for i in b) for step in _steps(s, 4) for b in step)  # noqa: E731
    assert padded(sampler) < padded(plain)


def test_same_seed_same_order_other_seed_other_order():
    has_image, lengths = _data()
    first = _steps(_sampler(has_image, lengths, seed=7, total_steps=15), 15)
    assert first == _steps(_sampler(has_image, lengths, seed=7, total_steps=15), 15)
    assert first != _steps(_sampler(has_image, lengths, seed=8, total_steps=15), 15)
    assert first[:5] != first[5:10]  # each epoch its own arrangement


@pytest.mark.parametrize("grouped", [True, False])
def test_resume_replays_the_same_batches(grouped):
    has_image, lengths = _data()
    groups = dict(has_image=has_image, lengths=lengths) if grouped else dict(size=40)
    whole = list(_sampler(**groups, world=2, rank=1, grad_accum=2, total_steps=13))
    for start in (3, 5, 7):  # inside an epoch, at an epoch boundary, in the next epoch
        resumed = list(_sampler(**groups, world=2, rank=1, grad_accum=2, total_steps=13, start_step=start))
        assert resumed == whole[start * 2:]


@pytest.mark.parametrize("grouped", [True, False])
def test_world_sizes_share_each_steps_global_batch(grouped):
    """Global batch 8 from batch_size 2: 1 process x 4 micro-steps, 2 x 2, 4 x 1. Micro-batch j of the one-process
    run is micro-batch j // world of rank j % world."""
    has_image, lengths = _data()
    groups = dict(has_image=has_image, lengths=lengths) if grouped else dict(size=40)
    one = _steps(_sampler(**groups, grad_accum=4, total_steps=12), 12)
    for world in (2, 4):
        ranks = [_steps(_sampler(**groups, grad_accum=4 // world, world=world, rank=rank, total_steps=12), 12)
                 for rank in range(world)]
        for step in range(12):
            assert [ranks[j % world][step][j // world] for j in range(4)] == one[step]
    # Another batch size with the same global batch: the same samples at every step.
    wider = _steps(_sampler(**groups, batch_size=4, grad_accum=2, total_steps=12), 12)
    assert [sorted(sum(step, [])) for step in wider] == [sorted(sum(step, [])) for step in one]


def test_plain_order_is_unchanged():
    """Runs started before grouping existed resume with the same data order."""
    sampler = _sampler(size=40, grad_accum=4, seed=3)
    for step in (0, 4, 5, 9):
        epoch, position = divmod(step, 5)
        order = torch.randperm(40, generator=torch.Generator().manual_seed(3 * 1_000_003 + epoch))
        assert sum(sampler.micro_batches(step), []) == order[position * 8:(position + 1) * 8].tolist()


def test_mixture_gives_modality_and_length(tmp_path):
    from lntune.config import DataConfig, DataSource
    from lntune.data.mixture import build_mixture
    from tests.helpers import write_llava_data

    path, _ = write_llava_data(tmp_path, count=4, text_only=2)
    has_image, lengths = build_mixture(DataConfig(sources=(DataSource(str(path)),)), 0).modality_lengths()
    assert has_image == [True] * 4 + [False] * 2
    assert lengths[4] == len("What is 0 plus one?") + len("1")


# ---- recipes -------------------------------------------------------------------------------------------------

RECIPES = sorted(path for path in (REPO / "configs").glob("*.yaml") if "studies" not in load_yaml(path))


def test_the_recipes_are_there():
    names = {path.stem for path in RECIPES}
    for size in ("7b", "13b"):
        assert {f"llava-1.5-{size}-{part}" for part in ("stage1", "full", "lora", "layernorm")} <= names
        assert {f"paper-{size}-{part}" for part in ("stage1", "layernorm")} <= names


@pytest.mark.parametrize("path", RECIPES, ids=lambda path: path.name)
def test_recipe_loads_as_a_run_config(path):
    config = config_from_dict(RunConfig, load_yaml(path), str(path))
    train = config.train
    assert train.global_batch_size in (128, 256) and train.grad_accum is None
    for processes in (1, 2, 4, 8):  # every usual GPU count divides the global batch
        resolve_grad_accum(train.batch_size, processes, train.global_batch_size, None)
    assert config.data.template == "vicuna_v1" if train.stage == "finetune" else config.data.template == "plain"
    assert config.data.image_aspect_ratio == ("pad" if train.stage == "finetune" else "crop")
    assert train.group_by_modality_length == (train.stage == "finetune")
