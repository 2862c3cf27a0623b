"""Throughput on a GPU: ResNet-18 at 32 x 32, N = 10 000 (run where CUDA exists).

Measures, in samples per second:

* sketched whitened features, ``gradient_features(n_components=4096)``, for
  one output and for the 10 logits;
* exact kernel rows: 512 queries against the N reference inputs (the reference
  factors of ResNet-18 do not fit in memory, so they are recomputed per block:
  this is the streaming regime);
* the forward + backward floor over the same batches.

Usage: ``python benchmarks/bench_gpu.py [--device cuda] [--n 10000]``.
"""

import argparse
import time

import torch
from models import resnet18, with_running_statistics

from sksim import gradient_features, network_similarity


def timed(fn, device):
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--n", type=int, default=10000)
    parser.add_argument("--batch-size", type=int, default=256)
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.manual_seed(0)
    X = torch.randn(args.n, 3, 32, 32, device=device)
    module = with_running_statistics(resnet18().to(device), X)
    b = args.batch_size

    def floor():
        for start in range(0, args.n, b):
            module.zero_grad(set_to_none=True)
            module(X[start : start + b])[:, 0].sum().backward()

    runs = {
        "forward+backward floor": floor,
        "sketched features, 1 output": lambda: gradient_features(
            module, X, n_components=4096, output=0, batch_size=b, random_state=0
        ),
        "sketched features, 10 logits": lambda: gradient_features(
            module, X, n_components=4096, batch_size=b, random_state=0
        ),
        "exact kernel rows (512 x N), 1 output": lambda: network_similarity(
            module, X[:512], X, output=0, batch_size=b, max_memory=2**30
        ),
    }
    timed(
        lambda: gradient_features(module, X[:b], n_components=64, batch_size=b), device
    )  # warm up
    for name, fn in runs.items():
        seconds = timed(fn, device)
        print(f"{name}: {seconds:.1f} s, {args.n / seconds:.0f} samples/s")
    if device.type == "cuda":
        print(f"peak GPU memory {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB")


if __name__ == "__main__":
    main()
