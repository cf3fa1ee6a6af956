#!/usr/bin/env bash
# A/B of an environment toggle on the engine benchmark, alternating (off, on, off, on) in one call:
#   bash bench/ab.sh "QWEN_CHAT_TMA=0" [CASES] [TTFT_LENS] [ROUNDS]
# Prints each run's table rows (per-token time and first token) with the setting they ran under.
set -uo pipefail
toggle=$1; cases=${2:-16:512:128,64:512:64}; ttft=${3:-4096}; rounds=${4:-2}
for r in $(seq "$rounds"); do
  for setting in "$toggle" ""; do
    echo "== round $r: ${setting:-as is} =="
    env $setting timeout "${AB_TIMEOUT:-150}" python3 -m inference bench --random-weights 7b --dtype float16 \
      --device cuda --max-num-batched-tokens 8192 --max-num-seqs 64 --max-model-len 8192 --cases "$cases" \
      --ttft-lens "$ttft" 2>&1 | grep -E "^7b " | cut -d"|" -f1,2,6,7,8,11
  done
done
