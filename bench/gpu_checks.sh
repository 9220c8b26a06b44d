#!/usr/bin/env bash
# The checks that need an NVIDIA GPU, in one go (about 5-8 minutes on one H100), for a machine lent for a
# short time: CUDA tests (bf16, torchrun + NCCL, GPU JPEG decoding), then the GPU figures the issues ask for.
# Usage: bash bench/gpu_checks.sh [OUT_DIR]   (assumes `pip install -e ".[dev]"` has been run)
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:-gpu-check-results}
mkdir -p "$out"
export PYTHONUNBUFFERED=1
nvidia-smi | tee "$out/nvidia-smi.txt"
python -m pytest -q tests/test_cuda.py 2>&1 | tee "$out/test_cuda.txt"
python bench/bench_train.py --preset ViT-B-32 --batch-size 512 --precision bf16 --device cuda --steps 20 2>&1 \
  | tee "$out/bench_train_vit_b_32.txt"
python bench/bench_train.py --preset ViT-B-32 --batch-size 512 --precision bf16 --device cuda --steps 20 \
  --grad-checkpointing 2>&1 | tee "$out/bench_train_vit_b_32_ckpt.txt"
python bench/bench_data.py --modes plain,cache,gpu --workers 4,8 --n 2000 2>&1 | tee "$out/bench_data.txt"
