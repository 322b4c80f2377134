#!/usr/bin/env bash
# The GPU check, in one call of under 8 minutes: the card, the CUDA-marked tests, the step-cost benchmark in bf16
# with and without torch.compile, a 2-GPU torchrun run when two devices are visible, and a short real run of
# recipes/vit_to_deit.py on CUDA. Run from anywhere on a machine with a CUDA device; it installs featdistill into
# .venv if needed. Everything lands in ${OUT:-benchmarks/out/gpu} (card.txt, *.log, step_cost_*.json/.md, runs).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-benchmarks/out/gpu}
mkdir -p "$OUT"
export FEATDISTILL_CACHE="$OUT/cache"
if ! python -c "import featdistill, torch" 2>/dev/null; then
  python3 -m venv .venv && . .venv/bin/activate
  pip install -q torch==2.14.1 torchvision==0.29.1 && pip install -q -e ".[dev]"
fi
status=0
step() {  # name, seconds, command...: run it with a time limit, keep its log, remember a failure
  local name=$1 limit=$2; shift 2
  echo "== $name (limit ${limit}s)"
  local start=$SECONDS
  timeout "$limit" "$@" > "$OUT/$name.log" 2>&1
  local rc=$?
  echo "   exit $rc in $((SECONDS - start)) s; log: $OUT/$name.log"
  tail -n 15 "$OUT/$name.log"
  [ "$rc" -eq 0 ] || status=1
}
python - > "$OUT/card.txt" <<'PY'
import torch
assert torch.cuda.is_available(), "no CUDA device visible"
for i in range(torch.cuda.device_count()):
    p = torch.cuda.get_device_properties(i)
    print(f"cuda:{i} {p.name}, {p.total_memory / 2**30:.0f} GiB, capability {p.major}.{p.minor}")
print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, bf16 {torch.cuda.is_bf16_supported()}")
PY
[ $? -eq 0 ] || { echo "no CUDA device: nothing to measure"; exit 1; }
cat "$OUT/card.txt"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
step cuda_tests 150 python -m pytest -m cuda -q -p no:cacheprovider -o addopts=""
step step_cost 200 python benchmarks/step_cost.py --device cuda --amp bf16 --batch 64 --image 64 --rounds 20 \
  --warmup 5 --pairs cnn vit --compile --out "$OUT"
if [ "$(python -c 'import torch; print(torch.cuda.device_count())')" -ge 2 ]; then
  step torchrun_2gpu 90 torchrun --standalone --nproc_per_node=2 -m featdistill.run recipes/vit_to_deit.py \
    --device cuda --quiet --out "$OUT/torchrun_2gpu" --set train.epochs=3 --set train.amp=bf16
else
  echo "== torchrun_2gpu: one device visible, not run" | tee "$OUT/torchrun_2gpu.log"
fi
step teacher_cost 150 python benchmarks/teacher_cost.py recipes/vit_to_deit.py --rounds 5 --warmup 1 --out "$OUT"
step vit_to_deit_cuda 120 python -m featdistill.run recipes/vit_to_deit.py --device cuda --quiet \
  --out "$OUT/vit_to_deit_cuda" --set train.epochs=5 --set train.amp=bf16
exit $status
