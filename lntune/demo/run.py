"""`lntune demo`: the largest end-to-end path that exists so far, on tiny backbones, on CPU.

It builds a tiny MLLM from random tiny backbones through the real `build` path, checks that stock
transformers loads it and generates from an image, and prints the parameter tables of every tuning
method, for the tiny model and for the paper's LLaMA-2-7B + CLIP ViT-L/14 (from configs, no weights).
Training and evaluation join the demo as they land (issues: training, evaluation, built-in world).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

REFERENCE_CONFIGS = Path(__file__).resolve().parent.parent / "reference_configs"


def _synthetic_image(size: int = 64):
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (size, size), (40, 60, 160))
    draw = ImageDraw.Draw(image)
    draw.ellipse((size // 4, size // 4, 3 * size // 4, 3 * size // 4), fill=(220, 40, 40))
    return image


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def run_demo(out: str | Path) -> int:
    import torch
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    from lntune.config import BuildConfig, MethodConfig
    from lntune.demo.backbones import write_tiny_llm, write_tiny_vision
    from lntune.methods import METHODS
    from lntune.model.build import build_mllm
    from lntune.params import config_for_counting, format_table, method_reports

    start = time.monotonic()
    out = Path(out)
    backbones = out / "backbones"
    _say("[1/4] writing tiny random backbones (Llama-architecture LLM, CLIP vision encoder)")
    llm_dir = write_tiny_llm(backbones / "llm", family="llama", hidden_size=64, layers=4)
    vision_dir = write_tiny_vision(backbones / "vision", family="clip", hidden_size=64, layers=2)

    _say("[2/4] lntune build: LLM + CLIP -> Llava MLLM with the mlp2x_gelu connector")
    model_dir = build_mllm(
        BuildConfig(llm=str(llm_dir), vision=str(vision_dir), out=str(out / "model"), overwrite=True), say=_say
    )

    _say("[3/4] loading it with stock transformers and generating from an image")
    model = LlavaForConditionalGeneration.from_pretrained(str(model_dir), local_files_only=True)
    processor = AutoProcessor.from_pretrained(str(model_dir), local_files_only=True)
    conversation = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is in the image?"}]}]
    prompt = processor.apply_chat_template(conversation, add_generation_prompt=True)
    inputs = processor(images=_synthetic_image(), text=prompt, return_tensors="pt")
    with torch.no_grad():
        generated = model.generate(**inputs, max_new_tokens=12, do_sample=False)
    answer = processor.decode(generated[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
    image_tokens = int((inputs["input_ids"] == model.config.image_token_id).sum())
    print(f"prompt: {prompt!r} ({image_tokens} image tokens after expansion)")
    print(f"answer: {answer!r}  (random weights, so gibberish is the right answer until training lands)")

    _say("[4/4] parameter accounting for every tuning method")
    methods = [MethodConfig(name=name) for name in METHODS]
    print(f"\nTiny MLLM ({model_dir}):")
    print(format_table(method_reports(config_for_counting(model=str(model_dir)), methods)))
    paper_config = config_for_counting(
        llm=str(REFERENCE_CONFIGS / "llama-2-7b" / "config.json"),
        vision=str(REFERENCE_CONFIGS / "clip-vit-large-patch14" / "config.json"),
        connector="linear",
    )
    print("\nLLaMA-2-7B + CLIP ViT-L/14 + linear connector (the paper's setting; meta device, no weights):")
    print(format_table(method_reports(paper_config, methods)))
    print(
        f"\ndone in {time.monotonic() - start:.0f}s. Next:\n"
        f"  lntune params --model {model_dir} --method layernorm --json\n"
        "  lntune build --llm YOUR_LLM_DIR --vision YOUR_CLIP_DIR --out my-mllm   # real checkpoints, local paths\n"
        "  (training, evaluation and the tiny-world paper reproduction are on the roadmap: see README.md)"
    )
    return 0
