"""One prompt path: what the server sends the model for a question equals what `lntune eval` sends for it, with
the template, system prompt and image aspect ratio the served adapter records."""

import pytest
import torch

from lntune.data.images import pixel_values
from lntune.eval.generate import GenerationPrompts
from lntune.model.load import load_model, load_processor
from lntune.serve.adapters import AdapterSet
from lntune.serve.chat_request import RequestBuilder
from lntune.serve.errors import ServeError
from lntune.serve.openai_schema import ChatCompletionRequest
from lntune.serve.settings import ServeSettings
from lntune.serve.text import TextAssembler
from tests.helpers import make_image
from tests.serve.helpers import data_url, write_adapter


@pytest.fixture(scope="module")
def served(serve_model, tmp_path_factory):
    """The base, and an adapter trained (so its manifest says) with llama_2 + a system prompt and crop images."""
    folder = write_adapter(serve_model, tmp_path_factory.mktemp("recorded") / "a", seed=9, image_aspect_ratio="crop",
                           prompt={"template": "llama_2", "system": "Answer in one word.", "image_placement": "front"})
    adapters = AdapterSet(load_model(serve_model), serve_model)
    adapters.load("recorded", folder)
    processor = load_processor(serve_model)
    return adapters, RequestBuilder(processor, 16, 512, ServeSettings()), processor


def _request(model, question, image=None, history=()):
    content = question if image is None else [{"type": "image_url", "image_url": {"url": data_url(image)}},
                                              {"type": "text", "text": question}]
    return ChatCompletionRequest(model=model, messages=[*history, {"role": "user", "content": content}],
                                 temperature=0, max_tokens=5)


def test_server_prompt_equals_evaluation_prompt(served):
    adapters, builder, processor = served
    image = make_image(4)
    for name, template, system, aspect_ratio in ((adapters.base.name, "auto", None, "pad"),
                                                 ("recorded", "llama_2", "Answer in one word.", "crop")):
        sequence = builder.build(_request(name, "what color is the square?", image), adapters.get(name))
        evaluation = GenerationPrompts(processor, 16, template, system)
        assert sequence.prompt_ids == evaluation.ids("what color is the square?", True)
        assert torch.equal(sequence.pixel_values[0], pixel_values(processor, image, aspect_ratio))
        text_only = builder.build(_request(name, "is there a cat?"), adapters.get(name))
        assert text_only.prompt_ids == evaluation.ids("is there a cat?", False) and text_only.pixel_values is None
    assert builder.build(_request("recorded", "hi"), adapters.get("recorded")).prompt_ids != \
        builder.build(_request(adapters.base.name, "hi"), adapters.base).prompt_ids


def test_a_conversation_is_the_turns_chat_gives_the_builder(served):
    adapters, builder, processor = served
    image = make_image(5)
    history = [{"role": "system", "content": "Be brief."},
               {"role": "user", "content": [{"type": "text", "text": "what is this?"},
                                            {"type": "image_url", "image_url": {"url": data_url(image)}}]},
               {"role": "assistant", "content": "a square."}]
    sequence = builder.build(_request(adapters.base.name, "what color?", history=history), adapters.base)
    prompts = GenerationPrompts(processor, 16)
    turns = [{"role": "system", "content": "Be brief."}, prompts.builder.user_turn("what is this?", True),
             {"role": "assistant", "content": "a square."}]
    assert sequence.prompt_ids == prompts.ids("what color?", False, turns)
    assert sequence.pixel_values.shape[0] == 1


def test_sampling_settings_and_defaults(served):
    adapters, builder, _ = served
    request = ChatCompletionRequest(model="recorded", messages=[{"role": "user", "content": "hi"}])
    sequence = builder.build(request, adapters.get("recorded"))
    assert sequence.sampling.temperature == 1.0 and sequence.max_new_tokens == 256  # OpenAI's and the server's defaults
    request = ChatCompletionRequest(model="recorded", messages=[{"role": "user", "content": "hi"}], top_p=0.5,
                                    stop="x", max_completion_tokens=7, seed=3, temperature=0.7)
    sequence = builder.build(request, adapters.get("recorded"))
    assert (sequence.sampling.top_p, sequence.sampling.seed, sequence.stop, sequence.max_new_tokens) == (0.5, 3, ("x",), 7)
    with pytest.raises(ServeError, match="at most 4 stop strings"):
        builder.build(ChatCompletionRequest(model="recorded", messages=[{"role": "user", "content": "hi"}],
                                            stop=list("abcde")), adapters.get("recorded"))


class _Characters:
    """A tokenizer whose tokens are characters (ids = code points) and 0xFFFD a byte still incomplete."""

    def decode(self, ids, skip_special_tokens=True):
        return "".join(chr(i) for i in ids)


def test_text_is_released_only_when_final_and_stops_before_the_stop_string():
    assembler = TextAssembler(_Characters(), stop=("END",))
    released = [assembler.add(ord(c)) for c in "  hi E"]
    assert released == ["", "", "h", "i", " ", ""]  # leading spaces dropped; "E" might begin "END"
    assert assembler.add(ord("N")) == "" and assembler.add(ord("D")) == "" and assembler.stopped
    assert assembler.text == "hi "
    unfinished = TextAssembler(_Characters())
    assert unfinished.add(ord("a")) == "a" and unfinished.add(0xFFFD) == "" and unfinished.finish() == "\ufffd"
    held = TextAssembler(_Characters(), stop=("xyz",))
    assert [held.add(ord(c)) for c in "axy"] == ["a", "", ""] and held.finish() == "xy"
