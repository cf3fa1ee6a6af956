#!/usr/bin/env bash
# The whole GPU sweep in one device call: GPU tests, then the engine benchmark with the transformers
# baseline. Usage (on the GPU machine, repo root): bash bench/gpu_sweep.sh [OUT_DIR]
set -uo pipefail
OUT=${1:-${OUT:-/tmp/qwen-bench}}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD:${PYTHONPATH:-}
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl && export PYTHONPATH=$PYTHONPATH:/tmp/site
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c 'import torch, triton, transformers; print("torch", torch.__version__, "triton", triton.__version__, "transformers", transformers.__version__)'
if [ "${SKIP_TESTS:-0}" != 1 ]; then
  timeout 300 python3 -m pytest -q -m gpu tests/test_gpu.py ${GPU_TESTS:-} 2>&1 | tee "$OUT/gpu_tests.log" | tail -25
fi
timeout ${BENCH_TIMEOUT:-420} python3 -m inference bench --random-weights 7b --dtype float16 --device cuda \
  --cases "${CASES:-1:512:128,16:512:128,64:512:64}" --ttft-lens 4096 --max-num-batched-tokens 8192 \
  --max-num-seqs 64 --max-model-len 8192 ${BASELINE:---baseline hf --baseline-batch-sizes 1,16} \
  --out "$OUT/bench_7b.csv" 2>&1 | tee "$OUT/bench.log" | tail -20
