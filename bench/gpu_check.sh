#!/usr/bin/env bash
# The one prepared check for a lent GPU (see docs/benchmarks.md): the LLaMA-2-7B-shaped training-step benchmark
# (all 32 blocks, then 8 blocks of the same width so that `full` fits), then lntune's training tests on CUDA.
# Each phase has its own time limit and writes into $OUT as it goes, so a cut-off run still returns what it did.
#   OUT=/tmp/gpu-check bash bench/gpu_check.sh        # on a machine without a GPU it runs the small preset
#   PHASES=tests bash bench/gpu_check.sh               # only the tests (PHASES: any of "bench tests")
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
PHASES=${PHASES:-bench tests}
if [[ " $PHASES " == *" bench "* ]]; then
phase bench-32-blocks 240 $PYTHON bench/train_step.py $PRESET --json "$OUT/bench-32-blocks.json"
phase bench-8-blocks 150 $PYTHON bench/train_step.py $PRESET --layers 8 --json "$OUT/bench-8-blocks.json"
fi
# The single-process training tests, DeepSpeed's engine (zero2/zero3 with one process, bf16) included; the
# 2-process ones need a GPU per process.
if [[ " $PHASES " == *" tests "* ]]; then
phase tests-cuda 240 $PYTHON -m pytest -q -rfs -p no:cacheprovider --timeout 200 tests/train/test_train.py \
    -k "not two_processes"
fi
