#!/usr/bin/env bash
# The GPU check: feature-extraction throughput (fp32 / bf16, torch.compile off / on) of a
# timm ViT-S/16 and HEST's ResNet-50 baseline, and DINOv3 ViT-S/16 LoRA training steps/s.
# Runs on a GPU machine with whatever Python has torch, timm, transformers and peft (no
# internet needed: every model is built from its config with random weights):
#   bash benchmarks/gpu_check.sh [OUT_DIR] [extra gpu_check.py flags]
# Writes OUT_DIR/gpu_check.md and gpu_check.json ($OUT, else results/gpu_check).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
out="${1:-${OUT:-results/gpu_check}}"
shift || true
mkdir -p "$out" && out=$(cd "$out" && pwd)
python="${PYTHON:-python}"
[ -x .venv/bin/python ] && python="${PYTHON:-$root/.venv/bin/python}"
export PYTHONPATH="$root/src${PYTHONPATH:+:$PYTHONPATH}"
"$python" -c 'import torch; print("torch", torch.__version__, "cuda", torch.cuda.is_available())'
cd benchmarks
exec "$python" gpu_check.py --root "$root/results/bench" --out "$out" "$@"
