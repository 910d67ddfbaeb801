"""Peak memory and time of the loss step (output head + cross-entropy, forward and backward): full logits vs
lntune.train.loss (supervised positions only, in chunks).

Each (vocabulary, way) runs in its own subprocess; memory is the process's peak resident memory during the step
minus its resident memory just before it (CPU), or torch.cuda.max_memory_allocated above the allocation before
it (GPU). The head is trained (as `layernorm` trains it), fp32 on CPU, bf16 autocast on GPU.

  python bench/loss_memory.py                                  # CPU: vocabularies 32,000 and 128,256
  python bench/loss_memory.py --batch-size 4 --seq-len 2048 --hidden 4096     # GPU, LLaMA-shaped
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

WAYS = ("full logits", "supervised only")


def _resident_mb() -> float:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def worker(args) -> dict:
    import torch

    from lntune.train.loss import shift_labels, supervised_losses
    from lntune.train.loss import full_logits_loss_sum

    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.manual_seed(0)
    head = torch.nn.Linear(args.hidden, args.vocabulary, bias=False, device=device)
    hidden = torch.randn(args.batch_size, args.seq_len, args.hidden, device=device, requires_grad=True)
    labels = torch.randint(0, args.vocabulary, (args.batch_size, args.seq_len), device=device)
    labels[:, : args.seq_len - args.supervised] = -100  # image tokens and prompt: only the answer is supervised
    shifted = shift_labels(labels)
    times, peak = [], 0.0
    for _ in range(args.steps):
        if device == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            before = torch.cuda.memory_allocated()
        else:
            before = _resident_mb()
        started = time.perf_counter()
        with torch.autocast(device, dtype=torch.bfloat16, enabled=device == "cuda"):
            if args.way == WAYS[0]:
                loss = full_logits_loss_sum(head(hidden), labels)
            else:
                loss = supervised_losses(hidden, head, shifted).sum()
        loss.backward()
        if device == "cuda":
            torch.cuda.synchronize()
            peak = max(peak, (torch.cuda.max_memory_allocated() - before) / 2**20)
        else:
            peak = max(peak, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - before)
        times.append(time.perf_counter() - started)
        hidden.grad = None
        head.weight.grad = None
    return {"vocabulary": args.vocabulary, "way": args.way, "peak_mb": peak, "step_seconds": sorted(times)[len(times) // 2],
            "loss": float(loss), "device": device}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vocabularies", default="32000,128256")
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--seq-len", type=int, default=1024)
    parser.add_argument("--supervised", type=int, default=192, help="supervised (answer) positions per sample")
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--json", help="also write the results here")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--way", help=argparse.SUPPRESS)
    parser.add_argument("--vocabulary", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print("RESULT " + json.dumps(worker(args)))
        return 0
    results = []
    for vocabulary in [int(v) for v in args.vocabularies.split(",")]:
        for way in WAYS:
            command = [sys.executable, __file__, "--worker", "--way", way, "--vocabulary", str(vocabulary),
                       "--batch-size", str(args.batch_size), "--seq-len", str(args.seq_len),
                       "--supervised", str(args.supervised), "--hidden", str(args.hidden), "--steps", str(args.steps)]
            done = subprocess.run(command, capture_output=True, text=True)
            lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
            if done.returncode != 0 or not lines:
                print(f"{vocabulary} {way}: failed: {done.stderr.strip().splitlines()[-1:]}", file=sys.stderr)
                continue
            results.append(json.loads(lines[-1][len("RESULT "):]))
    print(f"loss step (head + cross-entropy, forward + backward), batch {args.batch_size} x {args.seq_len} positions, "
          f"{args.supervised} supervised per sample, hidden {args.hidden}, head trained; median of {args.steps} steps")
    print(f"{'vocabulary':>10}  {'way':<16} {'peak MB':>9} {'step s':>8} {'loss':>12}")
    for r in results:
        print(f"{r['vocabulary']:>10,}  {r['way']:<16} {r['peak_mb']:>9,.0f} {r['step_seconds']:>8.3f} {r['loss']:>12.4f}")
    if results:
        kind = "cuda max allocated above the step's start" if results[0]["device"] == "cuda" else \
            "peak RSS above the step's start"
        print(f"memory: {kind} on {results[0]['device']}")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(results, handle, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
