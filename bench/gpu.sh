#!/usr/bin/env bash
# The prepared device-machine check: GPU extraction against a CPU forward, then the core,
# extraction and decomposition benchmarks on CUDA. The device image has torch but not all of
# our needs: carry them as cp312 manylinux wheels in .whl (git-ignored; `pip download --no-deps`
# as the device tool's README shows): zarr numcodecs donfig google-crc32c dask toolz partd
# locket xarray timm fsspec. Then, from the repo root (run's carry: [".whl"]):
#   bash bench/gpu.sh   (writes its outputs under $OUT when set)
set -uo pipefail
out=${OUT:-/tmp/bfd-gpu-out}; mkdir -p "$out"
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl \
  || exit 1
export PYTHONPATH=/tmp/site:$PWD HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/gpu.txt"
python3 bench/gpu_check.py 2>&1 | tee "$out/gpu_check.txt"
python3 bench/core.py --device cuda --n 1024 --brute-n 4 2>&1 | tee "$out/core_cuda.txt"
timeout 300 python3 bench/extract.py --device cuda --no-flow --n-images 512 --batch-size 64 \
  --decode-workers 8 --reps 2 --stages 2>&1 \
  | tee "$out/extract_cuda.txt"
timeout 240 python3 bench/decompose.py --device cuda --skip b,c --n 512 --reps 2 2>&1 \
  | tee "$out/decompose_cuda.txt"
