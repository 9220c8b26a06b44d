#!/usr/bin/env bash
# The checks that need an NVIDIA GPU, in one go (within 8 minutes on one H100/H200), for a machine lent for a
# short time: CUDA tests (bf16, torchrun + NCCL, GPU JPEG decoding), then bench/gpu_compare.py's table
# (cliplab vs open_clip, eager and compiled, ViT-B-32 bs512 bf16; end to end from JPEG files).
# Usage: bash bench/gpu_checks.sh [OUT_DIR]
# On a machine with cliplab installed (`pip install -e ".[dev]"`) it runs as is. On the lent machine, which has
# torch but cannot download, first `bash bench/fetch_gpu_wheels.sh` here, then carry .whl/ along:
#   run(command="bash bench/gpu_checks.sh $OUT", carry=[".whl"], timeout_s=540)
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:-gpu-check-results}
mkdir -p "$out"
export PYTHONUNBUFFERED=1
python=$(command -v python3 || command -v python)
if compgen -G ".whl/*.whl" > /dev/null; then
    "$python" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/cliplab-site \
        .whl/*.whl || exit 1
    export PYTHONPATH="/tmp/cliplab-site:$PWD${PYTHONPATH:+:$PYTHONPATH}"
fi
nvidia-smi | tee "$out/nvidia-smi.txt"
"$python" -c "import torch, torchvision, pydantic, ftfy, open_clip; print('torch', torch.__version__, 'cuda', torch.version.cuda,
      'gpus', torch.cuda.device_count(), 'open_clip', open_clip.__version__)" 2>&1 | tee "$out/versions.txt"
timeout 150 "$python" -m pytest -q -p no:cacheprovider tests/trainer/test_cuda.py 2>&1 | tee "$out/test_cuda.txt"
timeout 320 "$python" bench/gpu_compare.py --device cuda 2>&1 | tee "$out/gpu_compare.txt"
# Optional extras when time is left (each prints its own lines):
#   python bench/bench_train.py --preset ViT-B-32 --batch-size 512 --precision bf16 --device cuda --steps 20
#   python bench/bench_data.py --modes plain,cache,gpu --workers 4,8 --n 2000
