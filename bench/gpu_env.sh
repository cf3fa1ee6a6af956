# The setup that the one-call GPU scripts share (bench/gpu_sweep.sh, bench/single_gpu_72b.sh); they source it
# with their arguments: OUT (the first argument, else $OUT, else /tmp/qwen-bench) made, Python unbuffered and
# importing this checkout, wheels in .whl/ (if any) installed to /tmp/site for this run, then the GPU's line.
OUT=${1:-${OUT:-/tmp/qwen-bench}}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD:${PYTHONPATH:-}
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl && export PYTHONPATH=$PYTHONPATH:/tmp/site
fi
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,power.limit --format=csv,noheader
