#!/usr/bin/env bash
# The prepared device-machine check, one command: the CUDA tests (tests/test_cuda.py) and
# bench/gpu_check.py, which fail the script when the GPU disagrees with the CPU beyond their
# stated thresholds, then the core, extraction and decomposition benchmarks on CUDA.
#
# The device image has torch, pytest, numpy, pandas, pyarrow, scikit-image and pillow but not
# all of our needs: carry them as cp312 manylinux wheels in .whl (git-ignored; `pip download
# --no-deps` as the device tool's README shows): zarr numcodecs donfig google-crc32c dask toolz
# partd locket xarray timm fsspec, at the versions of this project's venv. Then, from the repo
# root (run's carry: [".whl"]):
#   bash bench/gpu.sh   (writes its outputs under $OUT when set)
# A check that fails stops the script (set -e); a benchmark that fails or times out is
# reported and the others still run, and the script then exits 1.
set -euo pipefail
out=${OUT:-/tmp/bfd-gpu-out}; mkdir -p "$out"
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:$PWD HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/gpu.txt"

# checks: any failure ends the script here
timeout 240 python3 -m pytest -q -p no:cacheprovider tests/test_cuda.py -rs 2>&1 \
  | tee "$out/test_cuda.txt"
if grep -q skipped "$out/test_cuda.txt"; then echo "CUDA tests skipped: no GPU seen"; exit 1; fi
timeout 180 python3 bench/gpu_check.py 2>&1 | tee "$out/gpu_check.txt"

failed=0
bench() {  # name, command...: a failed benchmark is reported, the next one still runs
  local name=$1; shift
  local t0=$SECONDS
  "$@" 2>&1 | tee "$out/$name.txt" || { echo "bench $name failed (exit $?)"; failed=1; }
  echo "bench $name took $((SECONDS - t0)) s"
}
bench core_cuda timeout 120 python3 bench/core.py --device cuda --n 1024 --compare-n 4
# the pipeline as the flow's one worker runs it (two shards side by side), and one shard at a
# time, with Zarr's own chunk writes, and with torch's intra-op threads at 1, all in the same run
bench extract_cuda timeout 200 python3 bench/extract.py --device cuda --no-flow --n-images 512 \
  --batch-size 64 --decode-workers 8 --reps 2 --stages --one-shard-at-a-time --zarr-writes-too \
  --torch-threads-too 1
# the same with shards of 8 chunks: a shard's writes then overlap its next forwards
bench extract_cuda_shard256 timeout 150 python3 bench/extract.py --device cuda --no-flow \
  --n-images 512 --batch-size 64 --decode-workers 8 --reps 2 --images-per-shard 256 --stages \
  --one-shard-at-a-time
bench decompose_cuda timeout 150 python3 bench/decompose.py --device cuda --skip b,c --n 512 \
  --reps 2
exit $failed
