#!/usr/bin/env bash
# Fetch, into .whl/ (git-ignored), the wheels bench/gpu_checks.sh installs on a lent GPU machine, where nothing
# can be downloaded and the image (Python 3.12, torch, torchvision, pillow, regex, pyyaml, pytest, timm, ...)
# lacks pydantic, ftfy and open_clip. Same versions as this machine's, so the GPU runs the code CI tests.
#   bash bench/fetch_gpu_wheels.sh            # here, with PyPI reachable
#   then, through the device tool: run(command="bash bench/gpu_checks.sh $OUT", carry=[".whl"])
set -euo pipefail
cd "$(dirname "$0")/.."
packages=(pydantic pydantic_core annotated-types typing-inspection typing_extensions ftfy wcwidth open-clip-torch)
pins=()
for name in "${packages[@]}"; do
    version=$(python -c "import importlib.metadata as m, sys; print(m.version(sys.argv[1]))" "$name")
    pins+=("$name==$version")
done
rm -rf .whl && mkdir .whl
python -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d .whl "${pins[@]}"
ls -l .whl
