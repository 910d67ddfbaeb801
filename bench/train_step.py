"""Training-step benchmark: step time, tokens/s and peak memory of every method on the same model and batch.

Each method runs in its own subprocess, so peak memory is that method's alone. Results print side by
side with ratios against `full`.

  python bench/train_step.py                          # CPU, a small Llama + CLIP model (random weights)
  python bench/train_step.py --preset llama-2-7b      # GPU: LLaMA-2-7B + CLIP ViT-L/14 shapes, bf16, random weights
  python bench/train_step.py --preset llama-2-7b --layers 8   # the same width, 8 blocks: `full` fits one 80 GB GPU
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

METHODS = ["full", "lora", "attn-qv", "attn-mlp", "layernorm", "layernorm-simple", "connector"]
REFERENCE = Path(__file__).resolve().parent.parent / "lntune" / "reference_configs"


def _model(preset: str, device, dtype, layers: int | None = None):
    import torch

    from lntune.model.compose import compose_llava_config
    from lntune.model.load import model_class_for
    from lntune.model.sources import load_llm_config, load_vision_config

    if preset == "llama-2-7b":
        text = load_llm_config(REFERENCE / "llama-2-7b" / "config.json")
        if layers:
            text.num_hidden_layers = layers
        config = compose_llava_config(text,
                                      load_vision_config(REFERENCE / "clip-vit-large-patch14" / "config.json"), "linear",
                                      image_token_id=31999)  # reuse the last vocabulary id: no resize needed
    else:
        from transformers import CLIPVisionConfig, LlamaConfig

        text = LlamaConfig(vocab_size=8000, hidden_size=512, intermediate_size=1376, num_hidden_layers=layers or 8,
                           num_attention_heads=8, num_key_value_heads=8)
        vision = CLIPVisionConfig(hidden_size=256, intermediate_size=1024, num_hidden_layers=4, num_attention_heads=4,
                                  image_size=112, patch_size=14)
        config = compose_llava_config(text, vision, "linear", image_token_id=text.vocab_size - 1)
    torch.manual_seed(0)
    with torch.device(device):
        model = model_class_for(config)(config).to(dtype)
    return model, config


def worker(args) -> dict:
    import torch

    from lntune.config import DataConfig, DataSource, MethodConfig, RunConfig, TrainConfig
    from lntune.methods import apply_method
    from lntune.params import count_parameters
    from lntune.train.optim import make_optimizer
    from lntune.train.loss import full_logits_loss_sum

    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    model, config = _model(args.preset, device, dtype, args.layers)
    model = apply_method(model, MethodConfig(name=args.worker))
    for parameter in model.parameters():
        if parameter.requires_grad:
            parameter.data = parameter.data.float()
    if args.gradient_checkpointing:
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    run = RunConfig(model="-", out="-", method=MethodConfig(name=args.worker),
                    data=DataConfig(sources=(DataSource("-"),)), train=TrainConfig())
    optimizer = make_optimizer(model, run)
    generator = torch.Generator().manual_seed(0)
    image_tokens = config.image_seq_length
    text = args.seq_len - image_tokens
    input_ids = torch.randint(3, config.text_config.vocab_size - 1, (args.batch_size, args.seq_len), generator=generator)
    input_ids[:, 1 : 1 + image_tokens] = config.image_token_id
    labels = input_ids.clone()
    labels[:, : 1 + image_tokens + text // 2] = -100  # supervise the second half of the text, as an answer
    size = config.vision_config.image_size
    pixel_values = torch.randn(args.batch_size, 3, size, size, generator=generator)
    batch = {"input_ids": input_ids.to(device), "pixel_values": pixel_values.to(device, dtype),
             "attention_mask": torch.ones_like(input_ids).to(device)}
    labels = labels.to(device)
    model.train()
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times = []
    for step in range(args.warmup + args.steps):
        if device == "cuda":
            torch.cuda.synchronize()
        started = time.perf_counter()
        with torch.autocast(device_type=device, dtype=torch.bfloat16, enabled=device == "cuda"):
            logits = model(**batch, use_cache=False).logits
            loss = full_logits_loss_sum(logits, labels) / (labels[:, 1:] != -100).sum()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if device == "cuda":
            torch.cuda.synchronize()
        if step >= args.warmup:
            times.append(time.perf_counter() - started)
    step_time = sorted(times)[len(times) // 2]
    memory = (torch.cuda.max_memory_allocated() / 2**30 if device == "cuda"
              else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20)
    return {"method": args.worker, "trainable": count_parameters(model).trainable, "step_seconds": step_time,
            "tokens_per_second": args.batch_size * args.seq_len / step_time, "peak_memory_gib": memory,
            "memory_kind": "cuda max allocated" if device == "cuda" else "process peak RSS", "device": device}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="small", choices=["small", "llama-2-7b"])
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--seq-len", type=int, default=512, help="tokens per sample, image tokens included")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--gradient-checkpointing", action="store_true")
    parser.add_argument("--layers", type=int, help="blocks in the LLM (default: the preset's); fewer keep the "
                        "preset's width where `full` would not fit in memory")
    parser.add_argument("--json", help="also write the results here")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print("RESULT " + json.dumps(worker(args)))
        return 0
    results = []
    for method in args.methods.split(","):
        command = [sys.executable, __file__, "--worker", method] + [
            arg for arg in sys.argv[1:] if not arg.startswith("--json") and not arg.endswith(".json")]
        done = subprocess.run(command, capture_output=True, text=True, env=dict(os.environ, HF_HUB_OFFLINE="1"))
        lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
        if done.returncode != 0 or not lines:
            reason = "out of memory" if "OutOfMemory" in done.stderr or "out of memory" in done.stderr else "failed"
            results.append({"method": method, "error": reason, "detail": done.stderr[-500:]})
            last_line = (done.stderr.strip().splitlines() or [""])[-1]
            print(f"{method}: {reason}: {last_line[:300]}", file=sys.stderr)
        else:
            results.append(json.loads(lines[-1][len("RESULT "):]))
            print(f"{method}: done", file=sys.stderr)
    full = next((r for r in results if r["method"] == "full" and "error" not in r), None)
    print(f"preset {args.preset}{f' ({args.layers} LLM blocks)' if args.layers else ''}, batch {args.batch_size} x {args.seq_len} tokens, median of {args.steps} steps"
          f"{', gradient checkpointing' if args.gradient_checkpointing else ''}")
    print(f"{'method':<17} {'trainable':>14} {'step s':>8} {'x full':>7} {'tokens/s':>10} {'peak GiB':>9} {'x full':>7}")
    for r in results:
        if "error" in r:
            print(f"{r['method']:<17} {r['error']}")
            continue
        time_ratio = f"{r['step_seconds'] / full['step_seconds']:.2f}" if full else "-"
        memory_ratio = f"{r['peak_memory_gib'] / full['peak_memory_gib']:.2f}" if full else "-"
        print(f"{r['method']:<17} {r['trainable']:>14,} {r['step_seconds']:>8.3f} {time_ratio:>7} "
              f"{r['tokens_per_second']:>10,.0f} {r['peak_memory_gib']:>9.2f} {memory_ratio:>7}")
    if results and "error" not in results[0]:
        print(f"memory: {results[0]['memory_kind']} on {results[0]['device']}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
