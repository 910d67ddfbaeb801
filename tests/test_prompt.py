"""LLaVA parity of what the model sees: templates byte for byte, image placement, BOS as an id, and one prompt
builder, so that evaluation and chat feed the model exactly the training ids of the same conversation up to the
answer — on real LLaMA-style SentencePiece tokenizers, legacy and not (trained here in a second, no download)."""

import json
import types

import pytest

from tests.helpers import sentencepiece_tokenizer, write_llava_data
from lntune.config import DataConfig, DataSource
from lntune.errors import LntuneError
from lntune.prompt import IGNORE_INDEX, LLAMA_2_SYSTEM, VICUNA_SYSTEM, PromptBuilder, place_image_first

S_V = VICUNA_SYSTEM
S_L = LLAMA_2_SYSTEM

CONVERSATIONS = {
    "image_first": [("user", "<image>\nWhat is on the table?"), ("assistant", "A red apple.")],
    "image_last_multi_turn": [("user", "What is on the table?\n<image>"), ("assistant", "A red apple."),
                              ("user", "And the cup?"), ("assistant", "Blue.")],
    "image_alone": [("user", "<image>"), ("assistant", "The image shows a cat sitting on a mat.")],
    "unicode_punctuation": [("user", "Where is this? 東京 or café?\n<image>"), ("assistant", "Tokyo, naïve guess!"),
                            ("user", "Really?"), ("assistant", "Yes...")],
    "text_only": [("user", "What is 42 and 7?"), ("assistant", "49")],
}

# What LLaVA's conv_vicuna_v1 / conv_llava_llama_2 / conv_llava_plain print for the same conversations after its
# preprocess_multimodal (image first); plain ends with </s> where LLaVA ends with "\n" (documented in docs/llava.md).
GOLDEN = {
    ("vicuna_v1", "image_first"): f"{S_V} USER: <image>\nWhat is on the table? ASSISTANT: A red apple.</s>",
    ("vicuna_v1", "image_last_multi_turn"):
        f"{S_V} USER: <image>\nWhat is on the table? ASSISTANT: A red apple.</s>USER: And the cup? ASSISTANT: Blue.</s>",
    ("vicuna_v1", "image_alone"): f"{S_V} USER: <image> ASSISTANT: The image shows a cat sitting on a mat.</s>",
    ("vicuna_v1", "unicode_punctuation"):
        f"{S_V} USER: <image>\nWhere is this? 東京 or café? ASSISTANT: Tokyo, naïve guess!</s>"
        "USER: Really? ASSISTANT: Yes...</s>",
    ("vicuna_v1", "text_only"): f"{S_V} USER: What is 42 and 7? ASSISTANT: 49</s>",
    ("llama_2", "image_first"):
        f"[INST] <<SYS>>\n{S_L}\n<</SYS>>\n\n<image>\nWhat is on the table? [/INST] A red apple. </s>",
    ("llama_2", "image_last_multi_turn"):
        f"[INST] <<SYS>>\n{S_L}\n<</SYS>>\n\n<image>\nWhat is on the table? [/INST] A red apple. </s>"
        "<s>[INST] And the cup? [/INST] Blue. </s>",
    ("llama_2", "image_alone"):
        f"[INST] <<SYS>>\n{S_L}\n<</SYS>>\n\n<image> [/INST] The image shows a cat sitting on a mat. </s>",
    ("llama_2", "unicode_punctuation"):
        f"[INST] <<SYS>>\n{S_L}\n<</SYS>>\n\n<image>\nWhere is this? 東京 or café? [/INST] Tokyo, naïve guess! </s>"
        "<s>[INST] Really? [/INST] Yes... </s>",
    ("llama_2", "text_only"): f"[INST] <<SYS>>\n{S_L}\n<</SYS>>\n\nWhat is 42 and 7? [/INST] 49 </s>",
    ("plain", "image_first"): "<image>A red apple.</s>",
    ("plain", "image_alone"): "<image>The image shows a cat sitting on a mat.</s>",
}


@pytest.fixture(scope="module", params=[True, False], ids=["legacy", "non_legacy"])
def tokenizer(request, tmp_path_factory):
    return sentencepiece_tokenizer(tmp_path_factory.mktemp("sp") / "tokenizer", legacy=request.param)


@pytest.mark.parametrize("template,conversation", sorted(GOLDEN))
def test_templates_render_llavas_strings(tokenizer, template, conversation):
    assert PromptBuilder(tokenizer, template).render(CONVERSATIONS[conversation]) == GOLDEN[(template, conversation)]


def test_generation_prompts_end_as_llavas(tokenizer):
    question = [("user", "<image>\nWhat is on the table?")]
    assert PromptBuilder(tokenizer, "vicuna_v1").render(question, add_generation_prompt=True) == \
        f"{S_V} USER: <image>\nWhat is on the table? ASSISTANT:"
    assert PromptBuilder(tokenizer, "llama_2").render(question, add_generation_prompt=True) == \
        f"[INST] <<SYS>>\n{S_L}\n<</SYS>>\n\n<image>\nWhat is on the table? [/INST]"


def test_image_placement_is_llavas_preprocess_multimodal(tokenizer):
    assert place_image_first("What is on the table?\n<image>") == "<image>\nWhat is on the table?"
    assert place_image_first("  <image> Describe it. ") == "<image>\nDescribe it."
    assert place_image_first("<image>") == "<image>"
    assert place_image_first("No image here.") == "No image here."
    kept = PromptBuilder(tokenizer, "vicuna_v1", image_placement="keep").render(CONVERSATIONS["image_last_multi_turn"])
    assert "USER: What is on the table?\n<image> ASSISTANT:" in kept


def test_system_prompts(tokenizer):
    conversation = [("system", "Be brief."), *CONVERSATIONS["text_only"]]
    assert PromptBuilder(tokenizer, "vicuna_v1").render(conversation).startswith("Be brief. USER: What is 42")
    assert PromptBuilder(tokenizer, "llama_2").render(conversation).startswith(
        "[INST] <<SYS>>\nBe brief.\n<</SYS>>\n\nWhat is 42")
    configured = PromptBuilder(tokenizer, "llama_2", system="Answer in one word.")
    assert configured.render(CONVERSATIONS["text_only"]).startswith("[INST] <<SYS>>\nAnswer in one word.\n<</SYS>>")
    assert configured.render(conversation).startswith("[INST] <<SYS>>\nBe brief.")  # the sample's own turn wins
    assert PromptBuilder(tokenizer, "llama_2", system="").render(CONVERSATIONS["text_only"]) == \
        "[INST] What is 42 and 7? [/INST] 49 </s>"  # an empty system drops the block, as LLaVA's wrap_sys
    with pytest.raises(LntuneError, match="template 'plain' has none"):
        PromptBuilder(tokenizer, "plain", system="Be brief.")


def test_bos_is_the_token_id_and_the_next_token_is_the_trained_one(tokenizer):
    """The text "<s>" tokenised as text gives "A" after it with legacy=false tokenizers; the training layout has
    BOS as an id followed by "▁A". Evaluation must see the latter."""
    builder = PromptBuilder(tokenizer, "vicuna_v1")
    ids = builder.encode_prompt([("user", "<image>\nWhat is on the table?")])
    tokens = tokenizer.convert_ids_to_tokens(ids)
    assert ids[0] == tokenizer.bos_token_id and tokens[1] == "▁A"
    assert ids.count(tokenizer.bos_token_id) == 1


def test_hand_checked_ids_and_labels(tokenizer):
    """Hand-checked against the SentencePiece pieces: legacy tokenizers put a "▁" after a special token, others do
    not; either way the supervised tokens are exactly " A red apple.</s>"."""
    sample = PromptBuilder(tokenizer, "vicuna_v1").encode(CONVERSATIONS["image_first"], "s")
    tokens = tokenizer.convert_ids_to_tokens(sample.input_ids)
    supervised = [token for token, label in zip(tokens, sample.labels) if label != IGNORE_INDEX]
    assert supervised == ["▁A", "▁", "re", "d", "▁a", "p", "p", "le", ".", "</s>"]
    assert tokens[:3] == ["<s>", "▁A", "▁c"]
    image = tokens.index("<image>")
    legacy = tokenizer.legacy
    assert tokens[image - 4 : image] == ["▁US", "ER", ":", "▁"]
    after = ["▁", "<0x0A>", "W", "hat"] if legacy else ["<0x0A>", "W", "hat"]
    assert tokens[image + 1 : image + 1 + len(after)] == after
    assert tokens[-11:-10] == [":"] and all(label == IGNORE_INDEX for label in sample.labels[:-10])
    plain = PromptBuilder(tokenizer, "plain").encode(CONVERSATIONS["image_alone"], "s")
    plain_tokens = tokenizer.convert_ids_to_tokens(plain.input_ids)
    assert plain_tokens[:3] == ["<s>", "<image>", "▁T" if legacy else "T"]
    assert [label == IGNORE_INDEX for label in plain.labels[:2]] == [True, True]
    assert all(label != IGNORE_INDEX for label in plain.labels[2:])


@pytest.mark.parametrize("template", ["vicuna_v1", "llama_2"])
@pytest.mark.parametrize("conversation", sorted(CONVERSATIONS))
def test_prompt_ids_equal_training_ids_up_to_every_answer(tokenizer, template, conversation):
    turns = CONVERSATIONS[conversation]
    builder = PromptBuilder(tokenizer, template)
    sample = builder.encode(turns, "s")
    for index, (role, _) in enumerate(turns):
        if role != "assistant":
            continue
        prompt = builder.encode_prompt(turns[:index])
        assert sample.input_ids[: len(prompt)] == prompt, f"turn {index}"
        answer_start = next(i for i, label in enumerate(sample.labels[len(prompt):]) if label != IGNORE_INDEX)
        assert answer_start == 0, f"turn {index}: the answer starts right after the prompt"


class _FakeLlava:
    """What AnswerGenerator reads of a model (no weights needed to compare prompt ids)."""

    def __init__(self, image_seq_length):
        self.config = types.SimpleNamespace(image_seq_length=image_seq_length)

    def eval(self):
        return self


@pytest.mark.parametrize("template", ["vicuna_v1", "llama_2"])
def test_eval_generator_ids_equal_the_training_dataset_ids(tokenizer, template, tmp_path):
    """The generator of `lntune eval` / `lntune chat` and the training dataset, each built as the commands build
    them, give the same ids for a question about an image (the data has the image last: placement moves it)."""
    from lntune.data.dataset import SupervisedDataset
    from lntune.data.mixture import build_mixture
    from lntune.eval.generate import AnswerGenerator

    data, images = write_llava_data(tmp_path, count=2, types=("conversation",))
    processor = types.SimpleNamespace(tokenizer=tokenizer, image_token="<image>")
    config = DataConfig(sources=(DataSource(str(data)),), image_folder=str(images), template=template)
    dataset = SupervisedDataset(build_mixture(config, 0), processor, 5, config, "finetune")
    record = dataset.mixture.record(0)
    assert record.messages[0][1] == "What color is the image?\n<image>"
    training_ids, _ = dataset.tokenize(record)
    generator = AnswerGenerator(_FakeLlava(5), processor, template)
    eval_ids = generator.prompt_ids("What color is the image?", has_image=True)
    assert training_ids[: len(eval_ids)] == eval_ids
    assert eval_ids.count(tokenizer.convert_tokens_to_ids("<image>")) == 5
    # chat's second turn: the history (with its answer) then the new question, again a prefix of training
    history = [generator.prompts.user_turn("What color is the image?", True),
               {"role": "assistant", "content": record.messages[1][1]}]
    second = generator.prompt_ids(record.messages[2][1], has_image=False, history=history)
    assert training_ids[: len(second)] == second



def test_evaluation_asks_as_finetuning_did(built_model, tmp_path):
    """A run trained with --template llama_2 --system X records both in its adapter (and a merged model's config):
    `lntune eval` / `lntune chat` with the defaults then build their prompts the same way; named flags still win."""
    from lntune.adapter import merge_adapter
    from lntune.config import MethodConfig, RunConfig, TrainConfig
    from lntune.eval.runner import load_generator
    from lntune.train.trainer import train

    model = built_model()
    data, images = write_llava_data(tmp_path / "data", count=4)
    config = RunConfig(
        model=str(model), out=str(tmp_path / "run"), method=MethodConfig(name="layernorm-simple"),
        data=DataConfig(sources=(DataSource(str(data)),), image_folder=str(images), template="llama_2",
                        system="Answer briefly."),
        train=TrainConfig(max_steps=1, batch_size=2, save_every=0, save_merged=False),
    )
    run = train(config, say=lambda message: None)
    recorded = json.loads((run / "adapter" / "adapter.json").read_text())["prompt"]
    assert recorded == {"template": "llama_2", "system": "Answer briefly.", "image_placement": "front"}
    generator = load_generator(str(model), str(run / "adapter"))
    assert (generator.template_name, generator.prompts.system) == ("llama_2", "Answer briefly.")
    assert generator.prompts.render([("user", "Hi")], True).startswith("[INST] <<SYS>>\nAnswer briefly.\n<</SYS>>")
    named = load_generator(str(model), str(run / "adapter"), template="vicuna_v1", system="Other.")
    assert (named.template_name, named.prompts.system) == ("vicuna_v1", "Other.")
    merged = merge_adapter(model, run / "adapter", tmp_path / "merged", say=lambda message: None)
    assert load_generator(str(merged)).template_name == "llama_2"
    assert load_generator(str(model)).template_name == "vicuna_v1"  # the built model: nothing recorded
