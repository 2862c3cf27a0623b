#!/usr/bin/env bash
# Every check that needs a CUDA device, in one command, with its logs in one folder.
#
# Usage, on a machine with a CUDA build of torch and sksim's dev dependencies:
#
#     bash benchmarks/gpu_checks.sh RESULTS_DIR [SECONDS]
#
# 1. tests/test_cuda.py: the estimators on the device against the CPU and the oracle,
#    and the other test files' CUDA tests (regularised training, extraction, transfers);
# 2. bench_tensor_peak.py, each step: the live-tensor count against torch.cuda's peak
#    at sksim's default max_memory;
# 3. bench_audit.py: a ResNet-18 on 5 000, then 50 000 CIFAR-sized images, its
#    neighbours, self-denoising and label issues as the audit runs them at scale,
#    written to RESULTS_DIR/benchmarks-audit-gpu-search.md after every step. A step
#    of 50 000 whose time, scaled from 5 000, would end past SECONDS (default 570)
#    from the start of this script is skipped, so that the whole fits in a lease.
set -uo pipefail
out=${1:?usage: bash benchmarks/gpu_checks.sh RESULTS_DIR [SECONDS]}
budget=${2:-570}
mkdir -p "$out"
export PYTHONUNBUFFERED=1
left() { echo $((budget - SECONDS)); }
nvidia-smi 2>&1 | tee "$out/nvidia-smi.log"
timeout 180 python3 -m pytest -q -p no:cacheprovider tests/test_cuda.py \
    tests/test_regularized.py::test_cuda_training_and_cpu_pickle \
    tests/representations/test_extract.py::test_cuda_device_gives_the_cpu_values \
    tests/engine/test_transfer.py 2>&1 \
    | tee "$out/test_cuda.log"
for step in density neighbors denoising; do
    timeout 60 python3 benchmarks/bench_tensor_peak.py "$step" --device cuda 2>&1 \
        | tee "$out/tensor_peak_$step.log"
done
deadline=$(($(left) - 45))  # the script's imports and the last page's writing
timeout "$(left)" python3 benchmarks/bench_audit.py --sizes 5000 50000 --direct-sizes \
    --modes scaled --analyses neighbors denoising label_issues --model resnet18 \
    --device cuda --epochs 3 --max-memory 17179869184 --deadline "$deadline" \
    --no-one-audit \
    --label "GPU machine: $(nvidia-smi --query-gpu=name --format=csv,noheader | head -1)" \
    --out "$out/benchmarks-audit-gpu-search.md" 2>&1 | tee "$out/bench_audit.log"
