#!/usr/bin/env bash
# Every CUDA check of the GPU engine in one go, for a machine with a GPU (see README "Speed"):
# the CUDA-parametrised tests (the fused Triton engine against the reference, its colour and
# CLAHE pieces, its CUDA-graph capture and its sync-free step; alignment, device path, engine,
# device cache), the sync check of a whole train step
# (tests/test_augment_engine.py::test_a_cuda_train_step_has_no_host_sync), and both benchmarks.
# On the lent GPU machine, which lacks kornia, smp, hydra and albumentations, first run
# ../shared/tools/gpu-wheels here and carry .whl/; this script installs them there.
# Usage: bash benchmarks/gpu_check.sh [QUICK=1 for fewer timed batches]; figures go to $OUT.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/gpu_check}
mkdir -p "$OUT"
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
if ! python3 -c "import kornia, segmentation_models_pytorch, hydra, albumentations" 2>/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl || exit 3
  export PYTHONPATH=/tmp/site:$PWD
else
  export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
fi
PY=${PY:-python3}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
"$PY" -c "import torch, kornia; print('torch', torch.__version__, 'kornia', kornia.__version__)" | tee -a "$OUT/gpu.txt"
status=0
echo "== CUDA tests" | tee "$OUT/tests.txt"
"$PY" -m pytest -q -p no:cacheprovider -rs --durations=5 \
  tests/test_fused_engine.py tests/test_fused_colour.py tests/test_fused_clahe.py tests/test_augment_parity.py \
  tests/test_augment_engine.py tests/test_augment_alignment.py tests/test_augment_device_path.py \
  tests/test_device_cache.py tests/test_ignore_index.py tests/test_masks_and_images.py 2>&1 | tee -a "$OUT/tests.txt" || status=1
echo "== augmentation throughput, 384 px, batch 32" | tee "$OUT/augment.txt"
timeout 240 "$PY" benchmarks/augment_throughput.py --device cuda --size 384 --batch 32 \
  --cpu-procs 16 --seconds 3 2>&1 | tee -a "$OUT/augment.txt" || status=1
echo "== train throughput, 384 px, batch 32" | tee "$OUT/train.txt"
steps=$([ "${QUICK:-0}" = 1 ] && echo 10 || echo 25)
timeout 420 "$PY" benchmarks/train_throughput.py --size 384 --batch 32 --precision bf16-mixed \
  --steps "$steps" --workers 8 --albu-workers 15 --data-dir /tmp/nailseg-bench 2>&1 \
  | grep -v "^generating" | tee -a "$OUT/train.txt" || status=1
exit $status
