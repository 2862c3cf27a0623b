#!/usr/bin/env bash
# Every check that needs a CUDA device, in one command, with its logs in one folder.
#
# Usage, on a machine with a CUDA build of torch and sksim's dev dependencies:
#
#     bash benchmarks/gpu_checks.sh RESULTS_DIR
#
# 1. tests/test_cuda.py: the estimators on the device against the CPU and the oracle;
# 2. bench_tensor_peak.py, each step: the live-tensor count against torch.cuda's peak;
# 3. bench_audit.py: a ResNet-18 on 50 000 CIFAR-sized images, its neighbours, label
#    issues and self-denoising as the audit runs them at scale, written to
#    RESULTS_DIR/benchmarks-audit-gpu-search.md (steps expected to end after 420 s
#    are skipped, so that the whole script fits in ten minutes on an H200).
set -uo pipefail
out=${1:?usage: bash benchmarks/gpu_checks.sh RESULTS_DIR}
mkdir -p "$out"
export PYTHONUNBUFFERED=1
python3 -m pytest -q -p no:cacheprovider tests/test_cuda.py 2>&1 | tee "$out/test_cuda.log"
for step in density neighbors denoising; do
    python3 benchmarks/bench_tensor_peak.py "$step" --device cuda 2>&1 \
        | tee "$out/tensor_peak_$step.log"
done
python3 benchmarks/bench_audit.py --sizes 50000 --direct-sizes --modes scaled \
    --analyses neighbors label_issues denoising --model resnet18 --device cuda \
    --epochs 3 --max-memory 17179869184 --deadline 420 --no-one-audit \
    --label "GPU machine: $(nvidia-smi --query-gpu=name --format=csv,noheader | head -1)" \
    --out "$out/benchmarks-audit-gpu-search.md" 2>&1 | tee "$out/bench_audit.log"
