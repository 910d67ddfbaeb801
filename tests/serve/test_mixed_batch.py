"""The feature that makes the server worth having: sequences of different adapters share one forward pass, and each
gets exactly what its adapter alone would give (the same greedy tokens; logits within fp32 rounding)."""

import pytest
import torch

from lntune.adapter import load_adapter
from lntune.data.images import pixel_values
from lntune.eval.generate import AnswerGenerator, GenerationPrompts
from lntune.model.load import load_model, load_processor
from lntune.serve.adapters import AdapterSet
from lntune.serve.decoding import Decoder, Sequence, Sink
from lntune.serve.sampling import SamplingParams
from tests.helpers import make_image
from tests.serve.helpers import model_alone

QUESTIONS = ["what color is the square?", "describe the image.", "how many objects are there?", "is there a cat?"]


class Collect(Sink):
    def __init__(self):
        self.pieces, self.finish, self.error = [], None, None

    def on_text(self, piece):
        self.pieces.append(piece)

    def on_finish(self, reason, prompt_tokens, completion_tokens, text):
        self.finish = (reason, prompt_tokens, completion_tokens, text)

    def on_error(self, error):
        self.error = error


@pytest.fixture(scope="module")
def serving(serve_model, adapter_dirs):
    model = load_model(serve_model).eval()
    adapters = AdapterSet(model, serve_model)
    for name, folder in adapter_dirs.items():
        adapters.load(name, folder)
    processor = load_processor(serve_model)
    return adapters, Decoder(model, processor.tokenizer, adapters), processor


def _alone(model_dir, adapter_dir):
    return model_alone(model_dir, adapter_dir)


@pytest.fixture(scope="module")
def references(serving, serve_model, adapter_dirs):
    """name -> the base, or the base with that one adapter put in by lntune.adapter.load_adapter."""
    adapters, _, _ = serving
    return {adapters.base.name: _alone(serve_model, None),
            **{name: _alone(serve_model, folder) for name, folder in adapter_dirs.items()}}


def _requests(processor, image_seq_length, names):
    """(model name, prompt ids, image or None) per row: a mix of image and text-only questions."""
    prompts = GenerationPrompts(processor, image_seq_length)
    rows = []
    for index, name in enumerate(names):
        image = make_image(index) if index % 3 != 2 else None
        rows.append((name, prompts.ids(QUESTIONS[index % len(QUESTIONS)], image is not None), image))
    return rows


def test_mixed_batch_equals_each_adapter_alone(serving, references):
    adapters, decoder, processor = serving
    names = [adapters.base.name, "simple-a", "simple-b", "ln", "qv", "simple-a", "ln", adapters.base.name, "qv"]
    rows = _requests(processor, decoder.model.config.image_seq_length, names)
    sinks = [Collect() for _ in rows]
    sequences = [Sequence(ids, None if image is None else pixel_values(processor, image, "pad")[None], name, 12,
                          SamplingParams(temperature=0.0), sink=sink)
                 for (name, ids, image), sink in zip(rows, sinks)]
    stats = decoder.run(sequences)
    assert stats.sequences == len(rows) and all(sink.error is None for sink in sinks)

    for (name, ids, image), sink, sequence in zip(rows, sinks, sequences):
        generator = AnswerGenerator(references[name], processor)  # `lntune eval`'s path, one question at a time
        picture = None if image is None else _padded(processor, image)
        expected = generator.generate([ids], [picture], 12)[0]
        reason, prompt_tokens, completion_tokens, text = sink.finish
        assert text.strip() == expected, name
        assert "".join(sink.pieces) == text and prompt_tokens == len(ids)
        assert sequence.generated == _generated_ids(generator, ids, picture, 12), name  # the very same tokens
        assert completion_tokens == len(sequence.generated)


def _generated_ids(generator, ids, picture, max_new_tokens):
    """transformers' greedy generate on one prompt: the new ids up to (without) the end-of-sequence token."""
    inputs = generator.inputs([ids], [picture])
    with torch.no_grad():
        output = generator.model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False, num_beams=1,
                                          temperature=None, top_p=None, top_k=None,
                                          pad_token_id=generator.tokenizer.pad_token_id)
    new = output[0, inputs["input_ids"].shape[1]:].tolist()
    eos = generator.model.generation_config.eos_token_id
    return new[:new.index(eos)] if eos in new else new


def _padded(processor, image):
    from lntune.data.images import apply_aspect_ratio

    return apply_aspect_ratio(processor, image, "pad")


def test_mixed_forward_logits_equal_each_adapter_alone(serving, references):
    """One prefill forward of a mixed batch (same prompt in every row: no padding) against each adapter's own model."""
    adapters, decoder, processor = serving
    names = ["simple-a", adapters.base.name, "ln", "simple-b", "qv", "simple-a"]
    ids = GenerationPrompts(processor, decoder.model.config.image_seq_length).ids(QUESTIONS[0], True)
    pixels = pixel_values(processor, make_image(7), "pad")[None]
    batch = {"input_ids": torch.tensor([ids] * len(names)), "pixel_values": pixels.repeat(len(names), 1, 1, 1)}
    sequence_rows, image_rows = adapters.rows(names, [1] * len(names))
    with torch.no_grad(), adapters.selection.use(sequence_rows, image_rows):
        mixed = decoder.model(**batch).logits
    for row, name in enumerate(names):
        with torch.no_grad():
            alone = references[name](input_ids=batch["input_ids"][:1], pixel_values=pixels).logits[0]
        torch.testing.assert_close(mixed[row], alone, rtol=1e-5, atol=1e-5)
    # and the adapters do differ from each other (so the equality above says something)
    assert not torch.allclose(mixed[0], mixed[1], atol=1e-3) and not torch.allclose(mixed[0], mixed[3], atol=1e-3)


def test_base_rows_run_the_unwrapped_modules(serving, references):
    adapters, decoder, processor = serving
    ids = GenerationPrompts(processor, decoder.model.config.image_seq_length).ids(QUESTIONS[1], False)
    with torch.no_grad():
        served = decoder.model(input_ids=torch.tensor([ids])).logits
        alone = references[adapters.base.name](input_ids=torch.tensor([ids])).logits
    assert torch.equal(served, alone)


@pytest.mark.parametrize("family", ["qwen3", "gemma2"])
def test_other_families_mix_too(built_model, tmp_path, family):
    """Qwen3: per-head q/k norms ([B, T, H, D]) and a tied output head; Gemma2: (1 + w) norms, four per block."""
    from tests.serve.helpers import write_adapter

    model_dir = built_model(llm=family)
    folders = {name: write_adapter(model_dir, tmp_path / name, method, seed)
               for name, method, seed in (("a", "layernorm-simple", 1), ("b", "layernorm", 2))}
    model = load_model(model_dir).eval()
    adapters = AdapterSet(model, model_dir)
    for name, folder in folders.items():
        adapters.load(name, folder)
    processor = load_processor(model_dir)
    names = ["a", adapters.base.name, "b", "a"]
    ids = GenerationPrompts(processor, model.config.image_seq_length).ids(QUESTIONS[2], True)
    pixels = pixel_values(processor, make_image(3), "pad")[None]
    batch = {"input_ids": torch.tensor([ids] * len(names)), "pixel_values": pixels.repeat(len(names), 1, 1, 1)}
    with torch.no_grad(), adapters.selection.use(*adapters.rows(names, [1] * len(names))):
        mixed = model(**batch).logits
    for row, name in enumerate(names):
        folder = folders.get(name)
        with torch.no_grad():
            alone = _alone(model_dir, folder)(input_ids=batch["input_ids"][:1], pixel_values=pixels).logits[0]
        torch.testing.assert_close(mixed[row], alone, rtol=1e-5, atol=1e-5)
    # decoding with the KV cache (Gemma2: sliding-window layers; rows leave the batch as they end)
    decoder = Decoder(model, processor.tokenizer, adapters)
    rows = _requests(processor, model.config.image_seq_length, names)
    sequences = [Sequence(ids, None if image is None else pixel_values(processor, image, "pad")[None], name, 10,
                          SamplingParams(temperature=0.0), sink=Collect()) for name, ids, image in rows]
    decoder.run(sequences)
    for (name, ids, image), sequence in zip(rows, sequences):
        generator = AnswerGenerator(_alone(model_dir, folders.get(name)), processor)
        picture = None if image is None else _padded(processor, image)
        assert sequence.generated == _generated_ids(generator, ids, picture, 10), (family, name)


def test_bf16_mixed_forward_within_bf16_rounding(serve_model, adapter_dirs):
    model = load_model(serve_model, dtype="bfloat16").eval()
    adapters = AdapterSet(model, serve_model)
    for name in ("simple-a", "ln"):
        adapters.load(name, adapter_dirs[name])
    processor = load_processor(serve_model)
    names = ["ln", "simple-a", adapters.base.name]
    ids = GenerationPrompts(processor, model.config.image_seq_length).ids(QUESTIONS[0], True)
    pixels = pixel_values(processor, make_image(1), "pad")[None].to(torch.bfloat16)
    batch = {"input_ids": torch.tensor([ids] * len(names)), "pixel_values": pixels.repeat(len(names), 1, 1, 1)}
    with torch.no_grad(), adapters.selection.use(*adapters.rows(names, [1] * len(names))):
        mixed = model(**batch).logits.float()
    for row, name in enumerate(names):
        alone = load_model(serve_model, dtype="bfloat16")
        if name != adapters.base.name:
            alone = load_adapter(alone, adapter_dirs[name], serve_model)
        with torch.no_grad():
            expected = alone.eval()(input_ids=batch["input_ids"][:1], pixel_values=pixels).logits[0].float()
        torch.testing.assert_close(mixed[row], expected, rtol=2e-2, atol=2e-2)


def test_norms_of_an_unknown_formula_are_served_grouped_and_still_exact(serve_model, adapter_dirs, references,
                                                                         monkeypatch):
    import lntune.serve.adapters as adapters_module
    from lntune.errors import LntuneError

    def unknown(module, where):
        raise LntuneError(f"norm {where} computes none of the formulas")

    monkeypatch.setattr(adapters_module, "find_formula", unknown)
    model = load_model(serve_model).eval()
    adapters = AdapterSet(model, serve_model)
    assert not adapters.norms and len(adapters.unbanked_norms) == 5  # two per block, two blocks, the final norm
    for name in ("simple-a", "simple-b", "ln"):
        adapters.load(name, adapter_dirs[name])
    processor = load_processor(serve_model)
    names = ["simple-a", adapters.base.name, "ln", "simple-b"]
    ids = GenerationPrompts(processor, model.config.image_seq_length).ids(QUESTIONS[3], True)
    pixels = pixel_values(processor, make_image(5), "pad")[None]
    batch = {"input_ids": torch.tensor([ids] * len(names)), "pixel_values": pixels.repeat(len(names), 1, 1, 1)}
    with torch.no_grad(), adapters.selection.use(*adapters.rows(names, [1] * len(names))):
        mixed = model(**batch).logits
    for row, name in enumerate(names):
        with torch.no_grad():
            alone = references[name](input_ids=batch["input_ids"][:1], pixel_values=pixels).logits[0]
        torch.testing.assert_close(mixed[row], alone, rtol=1e-5, atol=1e-5)
