"""Serving throughput: tokens/s of `lntune serve`'s decoder with many adapters mixed in one batch, against swapping
adapters in and out of the model one at a time (decoding each adapter's requests as their own batch).

  python bench/serve_throughput.py                     # tiny random MLLM on CPU (built here, nothing downloaded)
  python bench/serve_throughput.py --model DIR         # any built model (GPU if available)

The same requests (a question about an image each, greedy) go through the same Decoder both ways; request i asks
adapter i mod k for k distinct adapters. Mixed: batches of up to --max-batch requests whatever their adapters
(norm banks and grouped modules). Swapping: requests grouped by adapter; before each group the adapter's tensors are
copied into the model's parameters (as loading it alone does; the files are read before timing), then the group is decoded in batches of up to
--max-batch. Both produce the same tokens (checked). Times are medians of --repeats interleaved runs after a warm-up.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path


def tiny_model(root: Path) -> Path:
    import sys

    # The tests' tiny random backbones (tests/backbones.py): the repository root onto the path, as pytest puts it.
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from lntune.config import BuildConfig
    from tests.backbones import write_tiny_llm, write_tiny_vision
    from lntune.model.build import build_mllm

    llm = write_tiny_llm(root / "llm", hidden_size=64, layers=4)
    vision = write_tiny_vision(root / "vision", hidden_size=64, layers=2)
    return build_mllm(BuildConfig(llm=str(llm), vision=str(vision), out=str(root / "model")), say=lambda m: None)


def write_adapters(model_dir: Path, root: Path, count: int, method: str) -> list[Path]:
    import torch

    from lntune.adapter import save_adapter
    from lntune.methods import apply_method
    from lntune.model.load import load_model

    model = apply_method(load_model(model_dir), method)
    base = {name: p.detach().clone() for name, p in model.named_parameters() if p.requires_grad}
    folders = []
    for index in range(count):
        generator = torch.Generator().manual_seed(index)
        with torch.no_grad():
            for name, parameter in model.named_parameters():
                if name in base:
                    noise = torch.randn(parameter.shape, generator=generator)
                    scale = 0.5 if "norm" in name else 0.1 * float(base[name].std().clamp(min=1e-3))
                    parameter.copy_(base[name] * (1 + scale * noise) if "norm" in name else base[name] + scale * noise)
        folders.append(save_adapter(model, root / f"adapter-{index:03d}", model_dir, {"name": method}, "finetune"))
    return folders


class Collect:
    def __init__(self):
        self.text = ""

    def on_text(self, piece):
        self.text += piece

    def on_finish(self, *args):
        pass

    def on_error(self, error):
        raise error


def requests(processor, image_seq_length, names, max_tokens):
    from PIL import Image

    from lntune.data.images import pixel_values
    from lntune.eval.generate import GenerationPrompts
    from lntune.serve.decoding import Sequence
    from lntune.serve.sampling import SamplingParams

    prompts = GenerationPrompts(processor, image_seq_length)
    made = []
    for index, name in enumerate(names):
        image = Image.new("RGB", (64, 48), (40 * (index % 6), 80, 200 - 30 * (index % 6)))
        question = f"What is left of the {['circle', 'square', 'star', 'triangle'][index % 4]}?"
        made.append(Sequence(prompts.ids(question, True), pixel_values(processor, image, "pad")[None], name,
                             max_tokens, SamplingParams(temperature=0.0), sink=Collect()))
    return made


def run_batches(decoder, sequences, max_batch) -> tuple[int, float]:
    tokens, started = 0, time.perf_counter()
    for start in range(0, len(sequences), max_batch):
        tokens += decoder.run(sequences[start:start + max_batch]).tokens
    return tokens, time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="a built model directory (default: a tiny random one)")
    parser.add_argument("--adapters", default="1,8,64", help="numbers of distinct adapters to compare")
    parser.add_argument("--requests", type=int, default=64)
    parser.add_argument("--max-batch", type=int, default=16)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3, help="runs per measurement (the median is printed)")
    parser.add_argument("--method", default="layernorm-simple", help="the adapters' method (layernorm-simple: norms "
                        "only, the bank path; layernorm: + connector, embeddings and head, grouped)")
    args = parser.parse_args()

    import torch

    from lntune.adapter import TRAINABLE_FILE
    from lntune.files import load_safetensors
    from lntune.model.load import load_model, load_processor
    from lntune.serve.adapters import AdapterSet
    from lntune.serve.decoding import Decoder

    counts = [int(count) for count in args.adapters.split(",")]
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        model_dir = Path(args.model) if args.model else tiny_model(scratch)
        folders = write_adapters(model_dir, scratch / "adapters", max(counts), args.method)
        device = "cuda" if torch.cuda.is_available() else "cpu"
        processor = load_processor(model_dir)
        mixed_model = load_model(model_dir).to(device).eval()
        mixed = AdapterSet(mixed_model, model_dir)
        for folder in folders:
            mixed.load(folder.name, folder)
        mixed_decoder = Decoder(mixed_model, processor.tokenizer, mixed)
        swap_model = load_model(model_dir).to(device).eval()
        live = dict(swap_model.named_parameters())  # by the plain model's names (before the norms are wrapped)
        swapping = AdapterSet(swap_model, model_dir)  # the base only: each adapter is copied into the weights in turn
        swap_decoder = Decoder(swap_model, processor.tokenizer, swapping)
        # Read before timing: swapping is timed as copying tensors already in memory into the weights.
        adapter_tensors = {folder.name: {name: tensor.to(device) for name, tensor in
                                         load_safetensors(folder / TRAINABLE_FILE).items()} for folder in folders}
        base_tensors = {name: live[name].detach().clone() for name in adapter_tensors[folders[0].name]}
        seq_length = mixed_model.config.image_seq_length
        print(f"model {model_dir if args.model else 'tiny random (Llama hidden 64, 4 layers; CLIP 2 layers, 16 image tokens)'}"
              f" on {device}; {args.method} adapters; {args.requests} requests (question + image), greedy, max_tokens "
              f"{args.max_tokens}, max batch {args.max_batch}; torch threads {torch.get_num_threads()}; load average "
              f"{' '.join(f'{load:.2f}' for load in os.getloadavg())}")
        print(f"{'adapters':>8} {'tokens':>7} {'mixed s':>8} {'mixed tok/s':>11} {'swap s':>8} {'swap tok/s':>10} "
              f"{'speed-up':>8}")
        def mixed_run(names):
            batch = requests(processor, seq_length, names, args.max_tokens)
            tokens, seconds = run_batches(mixed_decoder, batch, args.max_batch)
            return tokens, seconds, [sequence.sink.text for sequence in batch]

        def swap_run(names):
            batch = requests(processor, seq_length, names, args.max_tokens)
            for sequence in batch:
                sequence.model_name = swapping.base.name  # the weights themselves hold the adapter of the group
            tokens, seconds = 0, 0.0
            for folder in dict.fromkeys(names):
                group = [sequence for sequence, name in zip(batch, names) if name == folder]
                started = time.perf_counter()
                with torch.no_grad():
                    for name, tensor in adapter_tensors[folder].items():
                        live[name].copy_(tensor)
                tokens += run_batches(swap_decoder, group, args.max_batch)[0]
                seconds += time.perf_counter() - started
            with torch.no_grad():
                for name, tensor in base_tensors.items():
                    live[name].copy_(tensor)
            return tokens, seconds, [sequence.sink.text for sequence in batch]

        # Warm-up at the measured shapes: CPU kernels are slow on the first calls of each shape.
        warm = [folders[index % max(counts)].name for index in range(args.max_batch)]
        for run in (mixed_run, swap_run, mixed_run, swap_run):
            run(warm)
        for count in counts:
            names = [folders[index % count].name for index in range(args.requests)]
            mixed, swap = [], []
            for _ in range(args.repeats):  # interleaved, so that a busy moment of the machine hits both
                mixed.append(mixed_run(names))
                swap.append(swap_run(names))
            mixed_tokens, mixed_seconds = mixed[0][0], statistics.median(result[1] for result in mixed)
            swap_tokens, swap_seconds = swap[0][0], statistics.median(result[1] for result in swap)
            same = mixed[0][2] == swap[0][2] and mixed_tokens == swap_tokens
            print(f"{count:>8} {mixed_tokens:>7} {mixed_seconds:>8.2f} {mixed_tokens / mixed_seconds:>11.1f} "
                  f"{swap_seconds:>8.2f} {swap_tokens / swap_seconds:>10.1f} {swap_seconds / mixed_seconds:>7.2f}x"
                  + ("" if same else "  (outputs differ!)"))
        print(f"(median of {args.repeats} runs each; load average now "
              f"{' '.join(f'{load:.2f}' for load in os.getloadavg())})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
