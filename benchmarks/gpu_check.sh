#!/usr/bin/env bash
# One prepared GPU check (< 8 minutes: the timeouts below add up to 7.5) for a session that has a CUDA machine:
#   training step with AMP, teacher vs student latency in FP16/BF16, DDP/NCCL, and the torch-free
#   runtime on the CUDA / TensorRT providers and on a runtime/build_engine.py engine, each against the
#   CPU output, plus the export checker's verdict next to TensorRT's own parser (each part skips with a
#   message when onnxruntime-gpu or tensorrt is missing).
# Run from the repo root on the GPU machine (torch with CUDA preinstalled there):
#   bash benchmarks/gpu_check.sh            # results also in $OUT/gpu_check.json if OUT is set
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1
# edgehaze.distill/export/runtime are mapped folders: install editable without deps.
python3 -m pip install -q --no-deps --no-build-isolation --no-index -e . >/dev/null 2>&1 \
  || echo "[gpu_check] editable install failed; continuing with PYTHONPATH" >&2
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || true

out="${OUT:-/tmp}"
# 53 s on an H200 (the one run so far); the runtime part exports its artifacts and builds engines, so it gets more
timeout 120 python3 benchmarks/gpu_check.py 2>&1 | tee "$out/gpu_check.log"

echo "== runtime: CUDA provider, TensorRT provider, build_engine.py engine vs CPU; checker vs TensorRT parser"
OUT="$out" timeout 230 python3 benchmarks/runtime_gpu_check.py 2>&1 | grep -E '^(== |Traceback|[A-Za-z]*Error)' \
  | tee -a "$out/gpu_check.log"

echo "== DDP with NCCL (torchrun, all local GPUs, a few steps of the quickstart config)"
ngpu=$(python3 -c "import torch; print(torch.cuda.device_count())")
timeout 100 torchrun --standalone --nproc_per_node "$ngpu" -m edgehaze train \
  --config configs/quickstart.yaml name=gpu-ddp out_dir=/tmp/gpu-ddp rgb.steps=20 fused.steps=20 \
  train.val_every=20 2>&1 | tail -n 25 | tee -a "$out/gpu_check.log"
echo "== done"
