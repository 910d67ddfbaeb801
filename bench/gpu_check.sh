#!/usr/bin/env bash
# The one prepared check for a lent GPU (see docs/benchmarks.md): the LLaMA-2-7B-shaped training-step benchmark
# (all 32 blocks, then 8 blocks of the same width so that `full` fits), then lntune's training tests on CUDA.
# Each phase has its own time limit and writes into $OUT as it goes, so a cut-off run still returns what it did.
#   OUT=/tmp/gpu-check bash bench/gpu_check.sh        # on a machine without a GPU it runs the small preset
#   PHASES=tests bash bench/gpu_check.sh               # only the tests (PHASES: any of "bench memory tests")
set -u
OUT=${OUT:-/tmp/gpu-check}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
PYTHON=${PYTHON:-python3}
if command -v nvidia-smi >/dev/null; then
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
    PRESET="--preset llama-2-7b --batch-size 4 --seq-len 1024"
else
    PRESET="--preset small --steps 2 --warmup 1"
fi
$PYTHON -c "import sys, torch, transformers, peft, accelerate; print(sys.version.split()[0], 'torch', torch.__version__,
'transformers', transformers.__version__, 'peft', peft.__version__, 'accelerate', accelerate.__version__)"
$PYTHON -c "import deepspeed; print('deepspeed', deepspeed.__version__)" 2>/dev/null | tail -1 || echo 'no deepspeed'
phase() {  # phase NAME SECONDS COMMAND...: run with a limit, keep the log, say how it ended
    local name=$1 limit=$2; shift 2
    local started=$SECONDS
    timeout --kill-after 10 "$limit" "$@" >"$OUT/$name.log" 2>&1
    local rc=$?
    echo "== $name: exit $rc after $((SECONDS - started)) s"
    grep -v "^RESULT " "$OUT/$name.log" | tr '\r' '\n' | tail -n 14
}
PHASES=${PHASES:-bench memory tests}
if [[ " $PHASES " == *" bench "* ]]; then
phase bench-32-blocks 240 $PYTHON bench/train_step.py $PRESET --json "$OUT/bench-32-blocks.json"
phase bench-8-blocks 150 $PYTHON bench/train_step.py $PRESET --layers 8 --json "$OUT/bench-8-blocks.json"
fi
# lntune vs PEFT LN-tuning + HF Trainer at LLaMA-2-7B width (8 of 32 blocks: writing and loading the random model
# then takes a quarter of the time), with 4-bit rows (lntune --quantize 4bit on CUDA end to end); and the loss
# step's memory, full logits vs supervised positions only, at vocabularies 32K and 128K.
if [[ " $PHASES " == *" memory "* ]]; then
if command -v nvidia-smi >/dev/null; then
    PEFT_PRESET="--preset llama-2-7b --layers 8 --seq-len 1024 --rounds 2 --steps 5 --warmup 2"
    LOSS_PRESET="--batch-size 4 --seq-len 2048 --supervised 512 --hidden 4096 --steps 3"
else
    PEFT_PRESET="--rounds 1 --steps 1 --warmup 1 --rows layernorm"
    LOSS_PRESET="--vocabularies 32000 --seq-len 256 --steps 1"
fi
phase loss-memory 150 $PYTHON bench/loss_memory.py $LOSS_PRESET --json "$OUT/loss-memory.json"
phase peft-compare 480 $PYTHON bench/peft_compare.py $PEFT_PRESET --work "$OUT/peft-work" --json "$OUT/peft-compare.json"
rm -rf "$OUT/peft-work"  # the random model: gigabytes, not a result
fi
# The single-process training tests, DeepSpeed's engine (zero2/zero3 with one process, bf16) included; the
# 2-process ones need a GPU per process.
if [[ " $PHASES " == *" tests "* ]]; then
phase tests-cuda 240 $PYTHON -m pytest -q -rfs -p no:cacheprovider --timeout 200 tests/train/test_train.py \
    -k "not two_processes"
fi
