#!/usr/bin/env bash
# Qwen-72B in W8A16 on one GPU (an H200: ~70 GiB of int8 weights), in one device call: random weights of the
# 72B shape drawn straight into int8 (no checkpoint on disk, never an fp16 copy), then one table: decode at
# batch 1 and 16 (512 in / 128 out) against the int8 floor (weights as loaded + KV read a step / copy
# bandwidth), the first token of a 4096-token prompt, and under it the load time and peak GPU memory.
# About 5 minutes on an H200. Usage (GPU machine, repo root): bash bench/single_gpu_72b.sh [OUT_DIR]
# Env: SCHEME (w8a16, or w8a8), CASES, TTFT, BENCH_TIMEOUT (s, default 470), TESTS=1 (first the load-memory
# GPU tests, tests/test_quant_load_gpu.py: about a minute more).
set -uo pipefail
. "$(dirname "$0")/gpu_env.sh" "$@"  # OUT, PYTHONPATH, .whl/ wheels, the GPU's line
if [ "${TESTS:-0}" = 1 ]; then
  timeout 240 python3 -m pytest -q -m gpu -p no:cacheprovider tests/test_quant_load_gpu.py 2>&1 \
    | tee "$OUT/quant_load_tests.log" | tail -4
fi
timeout "${BENCH_TIMEOUT:-470}" python3 -m inference bench --random-weights 72b --quant "${SCHEME:-w8a16}" \
  --dtype float16 --device cuda --max-num-seqs 16 --max-model-len 8192 --max-num-batched-tokens 4096 \
  --cases "${CASES:-1:512:128,16:512:128}" --ttft-lens "${TTFT:-4096}" --out "$OUT/bench_72b.csv" 2>&1 \
  | tee "$OUT/bench_72b.log" | tail -9
