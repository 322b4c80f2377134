#!/usr/bin/env bash
# Step cost on one CUDA GPU with bf16 autocast (a few minutes). Run from the repository root after
# `pip install torch==2.14.1 torchvision==0.29.1 && pip install -e .`; results land in benchmarks/out/.
set -euo pipefail
cd "$(dirname "$0")/.."
python -c "import torch; assert torch.cuda.is_available(), 'no CUDA device visible'; print(torch.cuda.get_device_name())"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
python benchmarks/step_cost.py --device cuda --amp bf16 --batch 64 --image 64 --rounds 30 --warmup 5 "$@"
