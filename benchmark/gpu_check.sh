#!/usr/bin/env bash
# bash benchmark/gpu_check.sh WHEELS_DIR [OUT_DIR]        (issue #17: one prepared device check, <= 8 minutes)
#
# On the GPU machine (torch, transformers and accelerate installed; no network): installs diffusers (and pandas /
# pytest when absent) from the wheels in WHEELS_DIR with `pip install --no-index` and nothing else, runs the
# real-time sweep (python -m benchmark.gpu_check: eager vs compiled, full vs tiny VAE, batch 1/4/16/32 at 512² and 1
# at 1024², InstructPix2Pix 100 and 20 steps, within a 330 s budget), then `pytest -m gpu` (at most 120 s). Tables go
# to OUT_DIR (default results/gpu_check): gpu_check.md / .csv, one realtime.* folder per job, pytest_gpu.txt.
# Make WHEELS_DIR beforehand on a machine with network, for the device's Python:
#     pip download diffusers==0.42.1 pandas pytest -d WHEELS_DIR
# DEVICE=cpu ARCH=tiny runs the CPU smoke plan instead (python -m benchmark.gpu_check --cpu-smoke, < 2 min).
set -euo pipefail
WHEELS=${1:?usage: bash benchmark/gpu_check.sh WHEELS_DIR [OUT_DIR]}
OUT=${2:-results/gpu_check}
DEVICE=${DEVICE:-cuda}
ARCH=${ARCH:-sd15-ip2p}
cd "$(dirname "$0")/.."
mkdir -p "$OUT"

need=()
for mod in diffusers pandas pytest; do
    python -c "import $mod" 2>/dev/null || need+=("$mod")
done
if [ ${#need[@]} -gt 0 ]; then
    python -m pip install --no-index --find-links "$WHEELS" "${need[@]}"
fi

if [ "$DEVICE" = cpu ]; then
    python -m benchmark.gpu_check --cpu-smoke --out "$OUT"
else
    timeout 400 python -m benchmark.gpu_check --device "$DEVICE" --arch "$ARCH" --budget-s 330 --out "$OUT" \
        || echo "gpu_check exited with $?" | tee -a "$OUT/gpu_check.md"
    timeout 120 python -m pytest -q -m gpu -p no:cacheprovider --continue-on-collection-errors tests 2>&1 \
        | tee "$OUT/pytest_gpu.txt" | tail -25 || true
fi
