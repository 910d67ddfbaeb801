"""Small helpers the tests share (images, processor inputs)."""


def make_image(seed: int = 0, size=(40, 48)):
    """A small random RGB image (deliberately not square: the processor must resize and crop)."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, size=(size[0], size[1], 3), dtype=np.uint8))


def image_inputs(model_dir, text="USER: <image>\nWhat is this? ASSISTANT:", images=1, seed=0):
    """Processor inputs for one prompt with `images` random images."""
    from lntune.model.load import load_processor

    processor = load_processor(model_dir)
    pictures = [make_image(seed + index) for index in range(images)]
    return processor(images=pictures, text=text, return_tensors="pt")


COLORS = {"red": (220, 40, 40), "green": (40, 180, 60), "blue": (40, 60, 220), "yellow": (230, 210, 40)}


def write_llava_data(root, count=16, text_only=0, types=("conversation", "detail"), jsonl=False, name="data"):
    """A small LLaVA-format dataset: coloured-square images + conversations; returns (data file, image folder)."""
    import json
    from pathlib import Path

    from PIL import Image

    root = Path(root)
    images = root / "images"
    images.mkdir(parents=True, exist_ok=True)
    records = []
    colors = list(COLORS)
    for index in range(count):
        color = colors[index % len(colors)]
        Image.new("RGB", (36, 30), COLORS[color]).save(images / f"{index:04d}.png")
        sample_type = types[index % len(types)]
        if sample_type == "detail":
            conversations = [{"from": "human", "value": "<image>\nDescribe the image in detail."},
                             {"from": "gpt", "value": f"The image is filled with the color {color}."}]
        else:
            conversations = [{"from": "human", "value": "What color is the image?\n<image>"},
                             {"from": "gpt", "value": color},
                             {"from": "human", "value": "Is it dark?"},
                             {"from": "gpt", "value": "no" if color == "yellow" else "a little"}]
        records.append({"id": f"s{index}", "image": f"{index:04d}.png", "type": sample_type, "conversations": conversations})
    for index in range(text_only):
        records.append({"id": f"t{index}", "type": "text",
                        "conversations": [{"from": "human", "value": f"What is {index} plus one?"},
                                          {"from": "gpt", "value": str(index + 1)}]})
    path = root / (f"{name}.jsonl" if jsonl else f"{name}.json")
    if jsonl:
        path.write_text("".join(json.dumps(record) + "\n" for record in records))
    else:
        path.write_text(json.dumps(records, indent=1))
    return path, images


SENTENCEPIECE_TEXT = [
    "A chat between a curious user and an artificial intelligence assistant. The assistant gives helpful, detailed, "
    "and polite answers to the user's questions.",
    "USER: What is on the table? ASSISTANT: A red apple. USER: And the colour of the cup? ASSISTANT: Blue.",
    "You are a helpful language and vision assistant. You are able to understand the visual content that the user "
    "provides, and assist the user with a variety of tasks using natural language.",
    "[INST] <<SYS>> Describe the image in detail. [/INST] The image shows a cat sitting on a mat, next to a dog.",
    "Answer the question using a single word or phrase. Is there a dog in the image? Yes, there is. No.",
    "Two  spaces, tabs\tand unicode: café, naïve, 東京, emoji-free text! Really? Yes... 42 and 7.",
]


def sentencepiece_model_bytes() -> bytes:
    """A LLaMA-style SentencePiece BPE model (byte fallback, `▁` prefix, <unk>/<s>/</s> = 0/1/2), trained in about a
    second on a fixed text: the same model every time."""
    import io

    import sentencepiece

    model = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(SENTENCEPIECE_TEXT * 20), model_writer=model, vocab_size=400, model_type="bpe",
        byte_fallback=True, character_coverage=1.0, add_dummy_prefix=True, remove_extra_whitespaces=False,
        normalization_rule_name="identity", unk_id=0, bos_id=1, eos_id=2, pad_id=-1, split_digits=True,
        num_threads=1, minloglevel=2,
    )
    return model.getvalue()


def write_sentencepiece_tokenizer(folder, legacy: bool):
    """A tokenizer folder as LLaMA / Vicuna ship it without tokenizer.json: tokenizer.model + tokenizer_config.json."""
    import json
    from pathlib import Path

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "tokenizer.model").write_bytes(sentencepiece_model_bytes())
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "LlamaTokenizer", "legacy": legacy, "add_bos_token": True, "add_eos_token": False,
        "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "pad_token": None,
    }))
    return folder


def sentencepiece_tokenizer(folder, legacy: bool):
    """The Llama tokenizer of a fresh SentencePiece folder, with the image token added as `lntune build` adds it."""
    from transformers import AutoTokenizer

    from lntune.model.build import add_special_tokens

    tokenizer = AutoTokenizer.from_pretrained(str(write_sentencepiece_tokenizer(folder, legacy)), local_files_only=True)
    add_special_tokens(tokenizer)
    return tokenizer


def shifted_offsets(tokenizer, shift: int):
    """A context in which `tokenizer` reports every token `shift` characters to the left of where it is: the label
    mask then covers other text, which the mask self-check must catch."""
    import contextlib

    @contextlib.contextmanager
    def patched():
        tokenizer_class = tokenizer.__class__
        real_call = tokenizer_class.__call__

        def call(self, text, **kwargs):
            encoding = real_call(self, text, **kwargs)
            if "offset_mapping" in encoding:
                offsets = encoding["offset_mapping"]
                encoding["offset_mapping"] = [(max(0, s - shift), max(0, e - shift)) for s, e in offsets]
            return encoding

        tokenizer_class.__call__ = call
        try:
            yield
        finally:
            tokenizer_class.__call__ = real_call

    return patched()
