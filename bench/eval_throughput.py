"""Evaluation throughput: items per second of batched greedy generation at several batch sizes.

  python bench/eval_throughput.py                      # tiny random MLLM on CPU (built here, nothing downloaded)
  python bench/eval_throughput.py --model DIR          # any built model (GPU if available)

The answers are generated with the same AnswerGenerator as `lntune eval` (chat template, left padding,
KV cache), on POPE-style items written to a temporary folder.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path


def tiny_model(root: Path) -> Path:
    # The tests' tiny random backbones (tests/backbones.py): the repository root onto the path, as pytest puts it.
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from lntune.config import BuildConfig
    from lntune.model.build import build_mllm
    from tests.backbones import write_tiny_llm, write_tiny_vision

    llm = write_tiny_llm(root / "llm", hidden_size=64, layers=4)
    vision = write_tiny_vision(root / "vision", hidden_size=64, layers=2)
    return build_mllm(BuildConfig(llm=str(llm), vision=str(vision), out=str(root / "model")), say=lambda m: None)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="a built model directory (default: a tiny random one)")
    parser.add_argument("--batch-sizes", default="1,8,32")
    parser.add_argument("--items", type=int, default=64)
    parser.add_argument("--max-new-tokens", type=int, default=8)
    args = parser.parse_args()

    import torch
    from PIL import Image

    from lntune.eval.runner import load_generator

    with tempfile.TemporaryDirectory() as scratch:
        model_dir = args.model or str(tiny_model(Path(scratch)))
        generator = load_generator(model_dir)
        images = [Image.new("RGB", (64, 48), (40 * (i % 6), 80, 200 - 30 * (i % 6))) for i in range(args.items)]
        questions = [f"Is there a {['dog', 'cat', 'car', 'cup'][i % 4]} in the image?\nAnswer the question using a "
                     "single word or phrase." for i in range(args.items)]
        device = next(generator.model.parameters()).device
        print(f"model {model_dir if args.model else 'tiny random (hidden 64, 4 layers; CLIP 2 layers, 16 image tokens)'}"
              f" on {device}, {args.items} items, greedy, max_new_tokens {args.max_new_tokens}, "
              f"torch threads {torch.get_num_threads()}")
        print(f"{'batch':>6} {'seconds':>8} {'items/s':>8}")
        generator.answer(questions[:2], images[:2], args.max_new_tokens)  # warm-up
        for batch_size in (int(size) for size in args.batch_sizes.split(",")):
            started = time.perf_counter()
            for start in range(0, args.items, batch_size):
                generator.answer(questions[start:start + batch_size], images[start:start + batch_size], args.max_new_tokens)
            if device.type == "cuda":
                torch.cuda.synchronize()
            seconds = time.perf_counter() - started
            print(f"{batch_size:>6} {seconds:>8.2f} {args.items / seconds:>8.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
