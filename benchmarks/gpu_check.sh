#!/usr/bin/env bash
# The real-scale preset's GPU check (benchmarks/gpu_check.py): exactness of the shared-prompt and packed paths
# on the device, sampling reproducibility, step time and peak memory at the preset's shapes, the quick config
# end to end. A few minutes on one GPU; no hub, no internet. Record its output with the card's name.
set -euo pipefail
cd "$(dirname "$0")/.."
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null || true
python benchmarks/gpu_check.py --device "${DEVICE:-cuda}" --out "${OUT:-runs/gpu_check}" "$@"
