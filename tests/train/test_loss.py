"""The supervised-positions loss: the same loss and gradients as full logits + cross-entropy, without [B, T, V]."""

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from lntune.methods import apply_method
from lntune.model.load import load_model
from lntune.train.loss import SupervisedLossHead, shift_labels, supervised_losses
from lntune.train.loss import full_logits_loss_sum
from tests.helpers import image_inputs


def _case(batch=3, length=17, hidden_size=24, vocabulary=101, bias=False, seed=0):
    generator = torch.Generator().manual_seed(seed)
    hidden = torch.randn(batch, length, hidden_size, generator=generator, requires_grad=True)
    head = torch.nn.Linear(hidden_size, vocabulary, bias=bias)
    with torch.no_grad():
        head.weight.copy_(torch.randn(vocabulary, hidden_size, generator=generator) * 0.3)
        if bias:
            head.bias.copy_(torch.randn(vocabulary, generator=generator))
    labels = torch.randint(0, vocabulary, (batch, length), generator=generator)
    labels[torch.rand(batch, length, generator=generator) < 0.6] = -100  # a minority supervised, as in LLaVA data
    labels[0, :5] = -100
    labels[1, -1] = 7  # a label on the first position is never predicted; on the last it is (from T - 2)
    return hidden, head, labels


def _gradients(loss, hidden, head):
    loss.backward()
    result = [hidden.grad.clone(), head.weight.grad.clone()] + ([head.bias.grad.clone()] if head.bias is not None else [])
    hidden.grad = None
    head.zero_grad(set_to_none=True)
    return result


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("chunk_elements", [101, 7 * 101, 2**25])  # one row per chunk, 7 rows, everything at once
def test_same_loss_and_gradients_as_full_logits(bias, chunk_elements):
    hidden, head, labels = _case(bias=bias)
    expected = full_logits_loss_sum(head(hidden), labels)
    expected_gradients = _gradients(expected * 0.37, hidden, head)  # any upstream scale (the trainer's normaliser)
    losses = supervised_losses(hidden, head, shift_labels(labels), chunk_elements)
    assert losses.shape == ((labels[:, 1:] != -100).sum(),)
    torch.testing.assert_close(losses.sum(), expected, rtol=1e-5, atol=1e-5)
    for actual, wanted in zip(_gradients(losses.sum() * 0.37, hidden, head), expected_gradients):
        torch.testing.assert_close(actual, wanted, rtol=1e-5, atol=1e-6)


def test_per_position_weights_reach_each_position():
    # the losses are per position: a weighted sum back-propagates each position's own weight
    hidden, head, labels = _case()
    losses = supervised_losses(hidden, head, shift_labels(labels))
    weights = torch.linspace(0.1, 2.0, losses.shape[0])
    logits = head(hidden)[:, :-1]
    targets = labels[:, 1:]
    mask = targets != -100
    reference = torch.nn.functional.cross_entropy(logits[mask], targets[mask], reduction="none")
    torch.testing.assert_close(losses, reference, rtol=1e-5, atol=1e-6)
    expected = _gradients((reference * weights).sum(), hidden, head)
    for actual, wanted in zip(_gradients((losses * weights).sum(), hidden, head), expected):
        torch.testing.assert_close(actual, wanted, rtol=1e-5, atol=1e-6)


def test_bf16_autocast_matches_the_autocast_linear():
    hidden, head, labels = _case(hidden_size=32, vocabulary=256)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        expected = full_logits_loss_sum(head(hidden), labels)
        actual = supervised_losses(hidden, head, shift_labels(labels), chunk_elements=5 * 256).sum()
    torch.testing.assert_close(actual, expected, rtol=2e-3, atol=1e-3)
    expected_gradients = _gradients(expected, hidden, head)
    for got, wanted in zip(_gradients(actual, hidden, head), expected_gradients):
        assert got.dtype == wanted.dtype
        torch.testing.assert_close(got, wanted, rtol=3e-2, atol=3e-3)


def test_nothing_supervised_gives_zero_and_zero_gradients():
    hidden, head, labels = _case()
    losses = supervised_losses(hidden, head, torch.full_like(labels, -100))
    assert losses.shape == (0,)
    hidden_gradient, weight_gradient = _gradients(losses.sum(), hidden, head)
    assert not hidden_gradient.any() and not weight_gradient.any()


class _LargestLogits(TorchDispatchMode):
    """The most elements of any tensor an operation makes that is shaped like logits: [..., rows, V] (the head
    weight's transpose [H, V] is not counted)."""

    def __init__(self, vocabulary, hidden_size):
        super().__init__()
        self.vocabulary, self.hidden_size, self.largest = vocabulary, hidden_size, 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for tensor in out if isinstance(out, (tuple, list)) else [out]:
            if (isinstance(tensor, torch.Tensor) and tensor.dim() >= 2 and tensor.shape[-1] == self.vocabulary
                    and tensor.shape[-2] != self.hidden_size):
                self.largest = max(self.largest, tensor.numel())
        return out


def test_never_materialises_logits_for_every_position():
    batch, length, vocabulary = 2, 64, 1000
    hidden, head, labels = _case(batch=batch, length=length, vocabulary=vocabulary)
    chunk_rows = 8
    with _LargestLogits(vocabulary, hidden.shape[-1]) as full:
        full_logits_loss_sum(head(hidden), labels).backward()
    with _LargestLogits(vocabulary, hidden.shape[-1]) as chunked:
        supervised_losses(hidden, head, shift_labels(labels), chunk_elements=chunk_rows * vocabulary).sum().backward()
    assert full.largest >= batch * length * vocabulary - batch * vocabulary  # the old way: [B, T(-1), V]
    assert chunked.largest == chunk_rows * vocabulary  # one chunk of [C, V] at a time, forward and backward


def test_installed_on_a_model_gives_the_trainer_loss_and_gradients(built_model):
    model_dir = built_model()
    inputs = image_inputs(model_dir, text="USER: <image>\nWhat is this? ASSISTANT: a red square, small")
    labels = inputs["input_ids"].clone()
    labels[:, : labels.shape[1] - 6] = -100

    def loss_and_gradients(use_head):
        torch.manual_seed(0)
        model = apply_method(load_model(model_dir, dtype="float32"), "layernorm")
        model.train()
        if use_head:
            loss_head = SupervisedLossHead.install(model, chunk_elements=3 * model.config.text_config.vocab_size)
            loss_head.set_labels(labels)
            loss = model(**inputs, use_cache=False).logits.sum()
        else:
            loss = full_logits_loss_sum(model(**inputs, use_cache=False).logits, labels)
        loss.backward()
        gradients = {name: p.grad for name, p in model.named_parameters() if p.requires_grad and p.grad is not None}
        if use_head:
            loss_head.remove()
            assert model(**inputs).logits.shape[:2] == labels.shape  # a plain head again
        return loss.detach(), gradients

    expected_loss, expected = loss_and_gradients(False)
    actual_loss, actual = loss_and_gradients(True)
    torch.testing.assert_close(actual_loss, expected_loss, rtol=1e-5, atol=1e-5)
    assert set(actual) == set(expected) and "lm_head.weight" in actual
    for name in expected:
        torch.testing.assert_close(actual[name], expected[name], rtol=1e-4, atol=1e-6, msg=name)


def test_labels_must_be_set_for_each_forward(built_model):
    model = load_model(built_model(), dtype="float32")
    loss_head = SupervisedLossHead.install(model)
    inputs = image_inputs(built_model())
    with pytest.raises(RuntimeError, match="set_labels"):
        model(**inputs)
    loss_head.set_labels(torch.full((1, 5), -100))
    with pytest.raises(RuntimeError, match="do not match the hidden states"):
        model(**inputs)
    loss_head.remove()
