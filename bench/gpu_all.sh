#!/usr/bin/env bash
# Every GPU benchmark in one run, on a machine with a CUDA device (about 5 min on one H100/H200):
#   bash bench/gpu_all.sh [REAL_MODEL]      # REAL_MODEL: a checkpoint directory or catalog name (optional)
# Figures go to $IPG_BENCH_OUT (default bench/results/gpu/), one JSON file per benchmark, with the device.
# 1. the paper's settings on Qwen2.5-1.5B's shapes (random weights, bf16, N 5, q 10, T 512, layers 20-26);
# 2. the same with T 2048;
# 3. a real model, when given: the arithmetic questions in its chat template, bf16, T 512;
# 4. packed evaluation against one pass per evaluation: the organism's whole run on the GPU.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${IPG_BENCH_OUT:-bench/results/gpu}
py=${PYTHON:-python}
if ! "$py" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  echo "error: no CUDA device visible to torch; run this on a GPU machine" >&2
  exit 2
fi
mkdir -p "$out"
"$py" -c "import torch, json; print(json.dumps({'device': torch.cuda.get_device_name(), 'torch': torch.__version__, 'date': __import__('time').strftime('%Y-%m-%d')}))" | tee "$out/device.json"
echo "== 1. Qwen2.5-1.5B shapes, T 512"
"$py" bench/gpu_attribution.py --device cuda --out "$out/attribution-t512.json"
echo "== 2. Qwen2.5-1.5B shapes, T 2048"
"$py" bench/gpu_attribution.py --device cuda --max-new-tokens 2048 --out "$out/attribution-t2048.json"
if [ -n "${1:-}" ]; then
  echo "== 3. real model $1, T 512"
  "$py" bench/gpu_attribution.py --device cuda --model "$1" --prompts 16 --out "$out/attribution-real.json"
else
  echo "== 3. no real model given (bash bench/gpu_all.sh MODEL_DIR): skipped"
fi
echo "== 4. packed evaluation vs one pass per evaluation, the organism's run"
"$py" bench/packing.py --set model.device=cuda --modes one_pass packed --out "$out/packing-organism.json"
