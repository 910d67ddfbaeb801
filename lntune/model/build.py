"""Assemble an MLLM: local causal LM + local CLIP/SigLIP encoder + a new connector -> HF Llava directory.

The pretrained modules are loaded once and moved into a Llava skeleton created on the meta device,
so building a 7B model needs the memory of the 7B model, not twice that. Every input is checked (configs,
weight files, tokenizer files) before anything is written; the output is written to a staging folder beside
the target and renamed at the end, and the staging folder is removed on any failure (a full disk, Ctrl-C):
a failed build leaves nothing behind, and an --out that is, holds or lies inside an input is refused.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch

from lntune import __version__
from lntune.config import BuildConfig
from lntune.errors import LntuneError
from lntune.files import RECOPY, check_model_files, check_out_apart, loading, staged_directory
from lntune.model.compose import compose_llava_config, has_cls_token
from lntune.model.connector import make_connector
from lntune.model.load import model_class_for, torch_dtype
from lntune.model.sources import CLIP_TYPES, load_llm_config, load_vision_config, require_weights
from lntune.prompt import IMAGE_TOKEN, VICUNA_V1

BUILD_INFO_FILE = "lntune_build.json"

def add_special_tokens(tokenizer) -> list[str]:
    """Add `<image>` (and a pad token where missing). Returns what was added, for the build record."""
    from tokenizers import AddedToken

    added = []
    if IMAGE_TOKEN not in tokenizer.get_vocab():
        tokenizer.add_tokens([AddedToken(IMAGE_TOKEN, special=True, normalized=False)], special_tokens=True)
        added.append(IMAGE_TOKEN)
    if tokenizer.pad_token is None:
        # LLaVA's choice for LLaMA-family tokenizers: pad with <unk>; padded positions are never supervised.
        if tokenizer.unk_token is not None:
            tokenizer.pad_token = tokenizer.unk_token
            added.append(f"pad_token={tokenizer.unk_token} (existing)")
        else:
            tokenizer.add_special_tokens({"pad_token": "<pad>"})
            added.append("<pad>")
    return added


def load_image_processor(vision_dir: Path, vision_config, say):
    from transformers import AutoImageProcessor

    if (vision_dir / "preprocessor_config.json").is_file():
        with loading(vision_dir, "the image processor", RECOPY, check=False):
            return AutoImageProcessor.from_pretrained(str(vision_dir), local_files_only=True)
    # Imported only here: without torchvision, importing these names makes transformers warn about its fallback.
    from transformers import CLIPImageProcessor, SiglipImageProcessor

    size = vision_config.image_size
    say(f"warning: {vision_dir} has no preprocessor_config.json; using the standard processor at {size}px")
    if vision_config.model_type in CLIP_TYPES:
        return CLIPImageProcessor(size={"shortest_edge": size}, crop_size={"height": size, "width": size})
    return SiglipImageProcessor(size={"height": size, "width": size})


TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "tokenizer.tiktoken", "qwen.tiktoken")
"""One of these makes a folder's tokenizer loadable: a fast tokenizer, a SentencePiece model (LLaMA, Vicuna), a BPE
vocabulary (GPT-2 style, with merges.txt) or a tiktoken file."""


def load_llm_tokenizer(llm_dir: Path, trust_remote_code: bool = False):
    """The LLM's tokenizer; a folder without one, or one that cannot be read, is an error naming the folder."""
    from transformers import AutoTokenizer

    if llm_dir.is_dir() and not any((llm_dir / name).is_file() for name in TOKENIZER_FILES):
        raise LntuneError(f"{llm_dir} has no tokenizer (none of {', '.join(TOKENIZER_FILES)}); copy the tokenizer files "
                          "of the model into the folder")
    try:
        return AutoTokenizer.from_pretrained(str(llm_dir), local_files_only=True, trust_remote_code=trust_remote_code)
    except (OSError, ValueError, ImportError) as error:
        reason = " ".join(str(error).split())  # transformers' messages span several lines
        raise LntuneError(f"cannot load the tokenizer from {llm_dir}: {reason}") from None


def load_vision_model(vision_dir: Path, vision_config, dtype):
    from transformers import CLIPVisionModel, SiglipVisionModel

    model_class = CLIPVisionModel if vision_config.model_type in CLIP_TYPES else SiglipVisionModel
    with loading(vision_dir, "the vision encoder", RECOPY, check=False):
        return model_class.from_pretrained(str(vision_dir), dtype=dtype, local_files_only=True)


def make_processor(tokenizer, image_processor, llava_config):
    """The LlavaProcessor saved beside a model, and where its chat template came from ("llm" or "vicuna_v1")."""
    from transformers import LlavaProcessor

    # The LLM's own chat template if it has one (the format it was trained on), else LLaVA's vicuna_v1.
    # Tokenizer and processor get the same one, so lntune's training and stock apply_chat_template agree.
    source = "llm" if tokenizer.chat_template else "vicuna_v1"
    chat_template = tokenizer.chat_template or VICUNA_V1
    tokenizer.chat_template = chat_template
    processor = LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=llava_config.vision_config.patch_size,
        vision_feature_select_strategy=llava_config.vision_feature_select_strategy,
        num_additional_image_tokens=1 if has_cls_token(llava_config.vision_config) else 0,
        chat_template=chat_template,
        image_token=IMAGE_TOKEN,
    )
    return processor, source


def check_output(out: Path, overwrite: bool, inputs: dict) -> None:
    """Refuse an --out that overlaps an input, or that exists and is not empty without --overwrite."""
    check_out_apart(out, inputs)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        if not overwrite:
            raise LntuneError(f"output {out} already exists and is not empty; choose another --out or pass --overwrite")


def build_mllm(config: BuildConfig, say=print) -> Path:
    """Build the MLLM that `config` describes and save it to `config.out`. Returns the output path."""
    from transformers import AutoModelForCausalLM

    start = time.monotonic()
    llm_dir = require_weights(config.llm, "LLM")
    vision_dir = require_weights(config.vision, "vision")
    llm_config = load_llm_config(llm_dir, config.trust_remote_code)
    vision_config = load_vision_config(vision_dir)
    out = Path(config.out).expanduser()
    check_output(out, config.overwrite, {"LLM": llm_dir, "vision": vision_dir})
    check_model_files(llm_dir, RECOPY)
    check_model_files(vision_dir, RECOPY)

    tokenizer = load_llm_tokenizer(llm_dir, config.trust_remote_code)
    added_tokens = add_special_tokens(tokenizer)
    image_token_id = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)

    say(f"loading LLM from {llm_dir} ({llm_config.model_type})")
    with loading(llm_dir, "the LLM", RECOPY, check=False):
        llm = AutoModelForCausalLM.from_pretrained(
            str(llm_dir), dtype=torch_dtype(config.dtype), local_files_only=True,
            trust_remote_code=config.trust_remote_code,
        )
    dtype = llm.dtype
    say(f"loading vision encoder from {vision_dir} ({vision_config.model_type})")
    vision = load_vision_model(vision_dir, vision_config, dtype)
    image_processor = load_image_processor(vision_dir, vision_config, say)

    llava_config = compose_llava_config(
        llm.config, vision.config, config.connector, config.vision_layer, config.vision_select, image_token_id
    )
    with torch.device("meta"):
        model = model_class_for(llava_config)(llava_config)
    # Move the pretrained modules into the skeleton; their configs become the Llava config's sub-configs.
    language_model = getattr(llm, llm.base_model_prefix)
    output_head = llm.get_output_embeddings()
    if not isinstance(output_head, torch.nn.Linear) or output_head.bias is not None:
        raise LntuneError(f"{llm_dir}: the LLM's output head is not a bias-free linear layer, which Llava requires")
    model.model.language_model = language_model
    model.lm_head = output_head
    model.model.vision_tower = vision
    model.config.text_config = language_model.config
    model.config.vision_config = vision.config
    torch.manual_seed(config.seed)
    model.model.multi_modal_projector = make_connector(llava_config).to(dtype)
    if llava_config.tie_word_embeddings:
        model.tie_weights()

    vocab_size = model.get_input_embeddings().weight.shape[0]
    if len(tokenizer) > vocab_size:
        # New rows start at the mean of the existing embeddings (transformers' mean resizing), so the
        # new tokens do not disturb the LLM's output distribution before training.
        model.resize_token_embeddings(len(tokenizer), mean_resizing=True)
    leftovers = [name for name, tensor in list(model.named_parameters()) + list(model.named_buffers()) if tensor.is_meta]
    if leftovers:
        raise RuntimeError(f"internal error: tensors left on the meta device after assembly: {leftovers[:5]}")

    model.generation_config = llm.generation_config
    if model.generation_config.pad_token_id is None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id

    processor, chat_template_source = make_processor(tokenizer, image_processor, llava_config)
    say(f"saving to {out}")
    record = {
        "lntune_version": __version__,
        "llm": str(llm_dir.resolve()),
        "vision": str(vision_dir.resolve()),
        "connector": config.connector,
        "vision_layer": config.vision_layer,
        "vision_select": config.vision_select,
        "image_token_id": image_token_id,
        "image_seq_length": llava_config.image_seq_length,
        "added_tokens": added_tokens,
        "chat_template": chat_template_source,
        "dtype": str(dtype).replace("torch.", ""),
    }
    with staged_directory(out) as staging:
        model.save_pretrained(str(staging))
        processor.save_pretrained(str(staging))
        (staging / BUILD_INFO_FILE).write_text(json.dumps(record, indent=2) + "\n")
    say(f"built {out} in {time.monotonic() - start:.1f}s ({llava_config.image_seq_length} image tokens per image)")
    return out
