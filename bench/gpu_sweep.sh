#!/usr/bin/env bash
# The whole GPU sweep in one device call: GPU tests, then the engine benchmark with the transformers baseline
# (docs/performance.md). Usage (on the GPU machine, repo root): bash bench/gpu_sweep.sh [OUT_DIR]
# Env: SKIP_TESTS=1, GPU_TESTS (more test files), CASES, BASELINE, TEST_TIMEOUT, BENCH_TIMEOUT,
# SKIP_SOAK=1, SOAK_DURATION (seconds of bench/soak.py's traffic, default 180), SOAK_TIMEOUT.
# SWEEP=72b: instead, Qwen-72B W8A16 on this one GPU (an H200: ~70 GiB of random weights drawn straight into
# int8), decode at batch 1 and 16 against the int8 floor and a 4096-token first token (about 5 minutes).
set -uo pipefail
OUT=${1:-${OUT:-/tmp/qwen-bench}}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD:${PYTHONPATH:-}
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl && export PYTHONPATH=$PYTHONPATH:/tmp/site
fi
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,power.limit --format=csv,noheader
if [ "${SWEEP:-7b}" = 72b ]; then
  timeout "${BENCH_TIMEOUT:-470}" python3 -m inference bench --random-weights 72b --quant w8a16 --dtype float16 \
    --device cuda --max-num-seqs 16 --max-model-len 8192 --max-num-batched-tokens 4096 \
    --cases "${CASES:-1:512:128,16:512:128}" --ttft-lens 4096 --out "$OUT/bench_72b.csv" 2>&1 \
    | tee "$OUT/bench_72b.log" | tail -9
  exit
fi
python3 -c 'import torch, triton, transformers; print("torch", torch.__version__, "triton", triton.__version__, "transformers", transformers.__version__)'
if [ "${SKIP_TESTS:-0}" != 1 ]; then
  xdist=$(python3 -c 'import xdist' 2>/dev/null && echo "-n 8")
  timeout "${TEST_TIMEOUT:-300}" python3 -m pytest -q -m gpu $xdist -p no:cacheprovider tests/test_gpu_*.py \
    tests/test_quant_gpu.py ${GPU_TESTS:-} --deselect tests/test_gpu_warmup.py 2>&1 | tee "$OUT/gpu_tests.log" | tail -8
  # alone: these time the first turns after start or measure the GPU's peak memory (no other test beside them)
  for t in tests/test_gpu_warmup.py tests/test_quant_load_gpu.py; do  # one process each
    timeout "${TEST_TIMEOUT:-300}" python3 -m pytest -q -m gpu -p no:cacheprovider "$t" 2>&1 \
      | tee -a "$OUT/gpu_tests.log" | tail -2
  done
fi
BENCH="python3 -m inference bench --random-weights 7b --dtype float16 --device cuda --max-num-batched-tokens 8192
  --max-num-seqs 64 --max-model-len 8192"  # 7b random weights, fp16 (word-split on purpose)
timeout "${BENCH_TIMEOUT:-420}" $BENCH --cases "${CASES:-1:512:128,16:512:128,64:512:64}" --ttft-lens 4096 \
  ${BASELINE:---baseline hf --baseline-batch-sizes 1,16} --out "$OUT/bench_7b.csv" 2>&1 | tee "$OUT/bench.log" | tail -12
if [ "${SKIP_SOAK:-0}" != 1 ]; then  # the server under chat traffic: random 7B weights, float32 (exact greedy)
  timeout "${SOAK_TIMEOUT:-480}" python3 bench/soak.py --model random-7b --device cuda \
    --duration "${SOAK_DURATION:-180}" 2>&1 | tee "$OUT/soak.log" | tail -16
fi
grep -h "passed\|failed" "$OUT/gpu_tests.log" 2>/dev/null | tail -3
