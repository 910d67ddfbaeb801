"""lntune's LayerNorm tuning vs PEFT's LNTuningConfig + HF Trainer: same model, same data, same batch, same optimizer.

Both contenders train the same parameters of one model directory built by `lntune build` (random weights) on the
same LLaVA-format samples, tokenized and batched by the same code (lntune's dataset and collate: every sample is cut
to the same length, so every step sees the same number of tokens):
  - lntune: `lntune.train.trainer.train` as `lntune train` runs it (Accelerate loop, its loss, logging, adapter);
  - PEFT + Trainer: `get_peft_model(model, LNTuningConfig(...))` and `transformers.Trainer` (the model computes the
    loss from full logits, as HF does), AdamW (adamw_torch), the same learning rate, schedule, clipping and seed.
Rows: `layernorm` (block norms + final norm + connector + embeddings + output head; PEFT: the norms as LN-tuning
targets and the rest as modules_to_save), `layernorm-simple` (the norms only), and the same two with the LLM's
block linear layers in 4-bit NF4 (lntune --quantize 4bit; PEFT: the same BitsAndBytesConfig in from_pretrained,
without prepare_model_for_kbit_training, which would also turn on gradient checkpointing).

Every (row, contender) runs in its own process, so peak memory is its own; the contenders are interleaved over
several rounds (ABAB..., the order alternating), and each round's median step is kept. Printed: median [min, max]
over rounds of s/step and tokens/s, and peak memory (CPU: the process's peak RSS; GPU: torch.cuda.max_memory_allocated).

  python bench/peft_compare.py                                   # CPU preset (about 10 minutes on 2 cores)
  python bench/peft_compare.py --preset llama-2-7b --layers 8    # GPU: LLaMA-2-7B width + CLIP ViT-L/14, bf16
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REFERENCE = Path(__file__).resolve().parent.parent / "lntune" / "reference_configs"
ROWS = {  # row -> (lntune method, quantize)
    "layernorm": ("layernorm", None),
    "layernorm-simple": ("layernorm-simple", None),
    "layernorm 4bit": ("layernorm", "4bit"),
    "layernorm-simple 4bit": ("layernorm-simple", "4bit"),
}
CONTENDERS = ("lntune", "peft+trainer")
LEARNING_RATE = 1e-3
SUPERVISED = None  # supervised tokens per step (the PEFT worker counts them)


# ---- the shared model and data -------------------------------------------------------------------

def _words(count: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    letters = "abcdefghijklmnopqrstuvwxyz"
    return ["".join(rng.choice(letters) for _ in range(rng.randint(3, 8))) for _ in range(count)]


def _tokenizer(vocabulary: int):
    """A byte-level BPE tokenizer with exactly vocabulary - 1 entries (the build adds <image>), trained on random
    words; topped up with unused added tokens if the corpus runs out of merges."""
    from lntune.demo.tokenizer import build_tokenizer

    words = _words(60_000, seed=1)
    corpus = [" ".join(words[i:i + 50]) for i in range(0, len(words), 50)]
    tokenizer = build_tokenizer(corpus, vocab_size=vocabulary - 1)
    if len(tokenizer) < vocabulary - 1:
        tokenizer.add_tokens([f"<unused_{i}>" for i in range(vocabulary - 1 - len(tokenizer))])
    return tokenizer


def _prepare(preset: str, layers: int | None, work: Path, samples: int, seq_len: int) -> tuple[Path, Path, Path]:
    """(model dir, data file, image folder), written once into `work`."""
    import torch
    from PIL import Image
    from transformers import AutoModelForCausalLM, CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModel

    from lntune.config import BuildConfig
    from lntune.model.build import build_mllm
    from lntune.model.sources import load_llm_config, load_vision_config

    model_dir = work / "model"
    data, images = work / f"data-{samples}x{seq_len}.json", work / "images"
    if not (model_dir / "config.json").is_file():
        torch.manual_seed(0)
        if preset == "llama-2-7b":
            text = load_llm_config(REFERENCE / "llama-2-7b" / "config.json")
            vision_config = load_vision_config(REFERENCE / "clip-vit-large-patch14" / "config.json")
            dtype = torch.bfloat16
        else:
            from transformers import LlamaConfig

            # LLaMA's MLP ratio, rounded to whole 64-weight blocks (bitsandbytes' CPU 4-bit kernels need them)
            text = LlamaConfig(vocab_size=8000, hidden_size=512, intermediate_size=1408, num_hidden_layers=8,
                               num_attention_heads=8, num_key_value_heads=8, max_position_embeddings=2048)
            vision_config = CLIPVisionConfig(hidden_size=256, intermediate_size=1024, num_hidden_layers=4,
                                             num_attention_heads=4, image_size=112, patch_size=14)
            dtype = torch.float32
        if layers:
            text.num_hidden_layers = layers
        tokenizer = _tokenizer(text.vocab_size)
        text.vocab_size = len(tokenizer)
        text.bos_token_id, text.eos_token_id = tokenizer.bos_token_id, tokenizer.eos_token_id
        llm = AutoModelForCausalLM.from_config(text, dtype=dtype)
        llm.save_pretrained(work / "llm")
        tokenizer.save_pretrained(work / "llm")
        del llm
        vision = CLIPVisionModel(vision_config).to(dtype)
        vision.save_pretrained(work / "vision")
        size = vision_config.image_size
        CLIPImageProcessor(size={"shortest_edge": size}, crop_size={"height": size, "width": size}).save_pretrained(
            work / "vision")
        del vision
        build_mllm(BuildConfig(llm=str(work / "llm"), vision=str(work / "vision"), out=str(model_dir)),
                   say=lambda message: None)
    if not data.is_file():
        images.mkdir(parents=True, exist_ok=True)
        words, rng, records = _words(2_000, seed=2), random.Random(3), []
        for index in range(samples):
            Image.new("RGB", (64, 48), tuple(rng.randrange(256) for _ in range(3))).save(images / f"{index}.png")
            question = " ".join(rng.choice(words) for _ in range(seq_len // 10))  # ~2.6 tokens a word
            answer = " ".join(rng.choice(words) for _ in range(seq_len))  # cut at max_length: every sample as long
            records.append({"id": str(index), "image": f"{index}.png", "conversations": [
                {"from": "human", "value": f"<image>\n{question}"}, {"from": "gpt", "value": answer}]})
        data.write_text(json.dumps(records))
    return model_dir, data, images


# ---- one contender in its own process ----------------------------------------------------------------

def _peak_memory_gib(device: str) -> float:
    import torch

    if device == "cuda":
        return torch.cuda.max_memory_allocated() / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def _run_lntune(args, model_dir, data, images, method, quantize, device) -> tuple[list[float], int]:
    from lntune.config import DataConfig, DataSource, MethodConfig, RunConfig, TrainConfig
    from lntune.train.trainer import train

    with tempfile.TemporaryDirectory() as out:
        config = RunConfig(
            model=str(model_dir), out=str(Path(out) / "run"), method=MethodConfig(name=method),
            data=DataConfig(sources=(DataSource(str(data)),), image_folder=str(images), max_length=args.seq_len),
            train=TrainConfig(max_steps=args.warmup + args.steps, batch_size=args.batch_size, lr=LEARNING_RATE,
                              save_every=0, seed=0, quantize=quantize))
        run = train(config, say=lambda message: None)
        metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    # lntune's step_seconds: fetching the batch (collate, images) to the optimizer step, as the Trainer's below
    seconds = [m["step_seconds"] for m in metrics[args.warmup:]]
    tokens = round(metrics[-1]["tokens_per_second"] * metrics[-1]["step_seconds"])
    return seconds, tokens


def _peft_targets(model) -> tuple[list[str], list[str]]:
    """(the norms: LN-tuning targets, the other trained modules: modules_to_save), by full module name."""
    from lntune.model.parts import locate_parts

    parts = locate_parts(model)
    names = {id(module): name for name, module in model.named_modules()}
    norms = [names[id(norm)] for block in parts.blocks for norm in block.norms.values()]
    norms += [names[id(norm)] for norm in parts.final_norms.values()]
    others = [names[id(parts.connector)], names[id(parts.embeddings)], names[id(parts.output_head)]]
    return norms, others


def _run_peft(args, model_dir, data, images, method, quantize, device) -> tuple[list[float], int]:
    import torch
    from peft import LNTuningConfig, get_peft_model
    from transformers import Trainer, TrainerCallback, TrainingArguments

    from lntune.config import DataConfig, DataSource
    from lntune.data.dataset import SupervisedDataset, collate
    from lntune.data.mixture import build_mixture
    from lntune.model.load import load_model, load_processor

    dtype = "bfloat16" if device == "cuda" else "float32"
    model = load_model(model_dir, dtype=dtype, quantize=quantize)  # quantize: lntune's BitsAndBytesConfig, same layers
    norms, others = _peft_targets(model)
    config = LNTuningConfig(target_modules=norms, modules_to_save=others if method == "layernorm" else None,
                            task_type="CAUSAL_LM")
    model = get_peft_model(model, config)
    for parameter in model.parameters():
        if parameter.requires_grad:
            parameter.data = parameter.data.float()  # fp32 trained parameters on both sides
    data_config = DataConfig(sources=(DataSource(str(data)),), image_folder=str(images), max_length=args.seq_len)
    processor = load_processor(model_dir)
    dataset = SupervisedDataset(build_mixture(data_config, 0), processor, model.config.image_seq_length, data_config,
                                "finetune")

    def collator(examples):
        batch = collate(examples, pad_token_id=processor.tokenizer.pad_token_id)
        batch.pop("skipped"), batch.pop("truncated")
        return batch

    ends = []

    class StepTimes(TrainerCallback):
        def on_train_begin(self, *unused, **kwargs):
            ends.append(time.perf_counter())

        def on_step_end(self, *unused, **kwargs):
            if device == "cuda":
                torch.cuda.synchronize()
            ends.append(time.perf_counter())

    with tempfile.TemporaryDirectory() as out:
        training = TrainingArguments(
            output_dir=out, per_device_train_batch_size=args.batch_size, max_steps=args.warmup + args.steps,
            # warmup_steps below 1 is a ratio: lntune's default warmup_ratio
            learning_rate=LEARNING_RATE, lr_scheduler_type="cosine", warmup_steps=0.03, weight_decay=0.0,
            max_grad_norm=1.0, optim="adamw_torch", bf16=device == "cuda", seed=0, logging_steps=10**6,
            save_strategy="no", report_to="none", dataloader_num_workers=0, remove_unused_columns=False,
            disable_tqdm=True, use_cpu=device == "cpu")
        Trainer(model=model, args=training, train_dataset=dataset, data_collator=collator,
                callbacks=[StepTimes()]).train()
    # on_step_end to on_step_end: fetching the batch, forward, backward, clipping, the optimizer step
    seconds = [b - a for a, b in zip(ends, ends[1:])][args.warmup:]
    batch = collator([dataset[i] for i in range(args.batch_size)])
    global SUPERVISED
    SUPERVISED = int((batch["labels"][:, 1:] != -100).sum())
    return seconds, int(batch["attention_mask"].sum())


def worker(args) -> dict:
    import torch

    torch.manual_seed(0)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    method, quantize = ROWS[args.row]
    run = _run_lntune if args.contender == "lntune" else _run_peft
    seconds, tokens = run(args, Path(args.model_dir), Path(args.data), Path(args.images), method, quantize, device)
    step = statistics.median(seconds)
    return {"row": args.row, "contender": args.contender, "step_seconds": step, "tokens_per_second": tokens / step,
            "tokens_per_step": tokens, "supervised_per_step": SUPERVISED, "peak_memory_gib": _peak_memory_gib(device),
            "device": device, "round": None}


# ---- the harness ---------------------------------------------------------------------------------

def _summary(values: list[float], digits: int) -> str:
    return f"{statistics.median(values):.{digits}f} [{min(values):.{digits}f}, {max(values):.{digits}f}]"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="small", choices=["small", "llama-2-7b"])
    parser.add_argument("--layers", type=int, help="LLM blocks (default: the preset's; 8 of LLaMA-2-7B's 32 keep "
                        "its width at a quarter of the time to write and load)")
    parser.add_argument("--rows", default=",".join(ROWS), help=f"any of: {', '.join(ROWS)}")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--seq-len", type=int, default=512, help="tokens per sample, image tokens included")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=4, help="timed steps per run")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--work", help="where the model and data are written (kept between runs); default: a temp dir")
    parser.add_argument("--json", help="also write every run's result here")
    parser.add_argument("--malloc-trim", action="store_true", help="CPU: glibc hands freed memory back at once "
                        "(MALLOC_MMAP_THRESHOLD_=65536, MALLOC_TRIM_THRESHOLD_=0), so that peak RSS is what a "
                        "process used rather than what its heap kept after fragmentation")
    for hidden in ("--worker", "--row", "--contender", "--model-dir", "--data", "--images"):
        parser.add_argument(hidden, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print("RESULT " + json.dumps(worker(args)))
        return 0
    work = Path(args.work or tempfile.mkdtemp(prefix="peft-compare-"))
    work.mkdir(parents=True, exist_ok=True)
    samples = args.batch_size * (args.warmup + args.steps)
    model_dir, data, images = _prepare(args.preset, args.layers, work, samples, args.seq_len)
    rows = args.rows.split(",")
    results = []
    for round_index in range(args.rounds):
        for row in rows:
            order = CONTENDERS if round_index % 2 == 0 else CONTENDERS[::-1]
            for contender in order:
                command = [sys.executable, __file__, "--worker", "1", "--row", row, "--contender", contender,
                           "--model-dir", str(model_dir), "--data", str(data), "--images", str(images),
                           "--batch-size", str(args.batch_size), "--seq-len", str(args.seq_len),
                           "--steps", str(args.steps), "--warmup", str(args.warmup)]
                env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
                if args.malloc_trim:
                    env.update(MALLOC_MMAP_THRESHOLD_="65536", MALLOC_TRIM_THRESHOLD_="0")
                done = subprocess.run(command, capture_output=True, text=True, env=env)
                lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
                if done.returncode != 0 or not lines:
                    last = (done.stderr.strip().splitlines() or ["?"])[-1]
                    print(f"round {round_index + 1} {row} {contender}: failed: {last[:300]}", file=sys.stderr)
                    continue
                results.append(dict(json.loads(lines[-1][len("RESULT "):]), round=round_index))
                r = results[-1]
                print(f"round {round_index + 1} {row:<22} {contender:<13} {r['step_seconds']:.3f} s/step "
                      f"{r['tokens_per_second']:,.0f} tokens/s {r['peak_memory_gib']:.2f} GiB", file=sys.stderr)
    device = results[0]["device"] if results else "?"
    supervised = next((r["supervised_per_step"] for r in results if r["supervised_per_step"]), None)
    memory = "peak RSS GiB" if device == "cpu" else "peak CUDA GiB"
    precision = "fp32" if device == "cpu" else "bf16 autocast"
    print(f"preset {args.preset}{f' ({args.layers} LLM blocks)' if args.layers else ''}, batch {args.batch_size} x "
          f"{args.seq_len} tokens ({supervised} of them supervised), AdamW lr {LEARNING_RATE:g}, {precision} on "
          f"{device}{', malloc trim' if args.malloc_trim else ''}; {args.rounds} rounds interleaved, each the median "
          f"of {args.steps} steps after {args.warmup}; median [min, max] over rounds")
    print(f"{'row':<22} {'contender':<13} {'s/step':>22} {'tokens/s':>26} {memory:>24}")
    for row in rows:
        for contender in CONTENDERS:
            runs = [r for r in results if r["row"] == row and r["contender"] == contender]
            if not runs:
                print(f"{row:<22} {contender:<13} failed")
                continue
            print(f"{row:<22} {contender:<13} {_summary([r['step_seconds'] for r in runs], 3):>22} "
                  f"{_summary([r['tokens_per_second'] for r in runs], 0):>26} "
                  f"{_summary([r['peak_memory_gib'] for r in runs], 2):>24}")
        pair = {c: [r for r in results if r["row"] == row and r["contender"] == c] for c in CONTENDERS}
        if all(pair.values()):
            speed = (statistics.median(r["tokens_per_second"] for r in pair["lntune"])
                     / statistics.median(r["tokens_per_second"] for r in pair["peft+trainer"]))
            memory_ratio = (statistics.median(r["peak_memory_gib"] for r in pair["lntune"])
                            / statistics.median(r["peak_memory_gib"] for r in pair["peft+trainer"]))
            print(f"{'':<22} {'lntune / peft':<13} {'':>22} {f'{speed:.2f}x':>26} {f'{memory_ratio:.2f}x':>24}")
            # the two runs of one round ran back to back: their ratio is the least disturbed by a changing load
            paired = [a["tokens_per_second"] / b["tokens_per_second"] for a in pair["lntune"] for b in pair["peft+trainer"]
                      if a["round"] == b["round"]]
            print(f"{'':<22} {'same round':<13} {'':>22} {'tokens/s ratios ' + ' '.join(f'{x:.2f}' for x in paired):>26}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
