"""Soft neighbour counts scale linearly with the reference set.

Times ``GradientDensityEstimator(method="soft").fit(X).neighbor_counts(X)`` on
the MLP 784-256-256-10 for N and 2N samples (two streaming passes, never an
N x N matrix) and prints time(2N) / time(N), which is 2 for a linear method
(the factorisation is derived in the density section of the docs' theory page).

Usage: ``python benchmarks/bench_density.py [--n 50000] [--output logits|0]``.
"""

import argparse
import resource
import time

import torch
from models import mlp

from sksim import GradientDensityEstimator


def soft_counts(module, X, output, batch_size):
    start = time.perf_counter()
    density = GradientDensityEstimator(module, output=output, batch_size=batch_size)
    counts = density.fit(X).neighbor_counts(X)
    return time.perf_counter() - start, counts


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=50000)
    parser.add_argument("--output", default="logits")
    parser.add_argument("--batch-size", type=int, default=1024)
    args = parser.parse_args()
    output = args.output if args.output == "logits" else int(args.output)
    torch.manual_seed(0)
    module = mlp().eval()
    X = torch.randn(2 * args.n, 784).numpy()
    soft_counts(module, X[:2048], output, args.batch_size)  # warm up
    t_n, _ = soft_counts(module, X[: args.n], output, args.batch_size)
    t_2n, counts = soft_counts(module, X, output, args.batch_size)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print(
        f"soft counts, MLP, output={args.output}: N = {args.n}: {t_n:.1f} s; "
        f"N = {2 * args.n}: {t_2n:.1f} s; ratio {t_2n / t_n:.2f}; "
        f"peak RSS {peak:.2f} GiB; mean count {counts.mean():.1f}"
    )


if __name__ == "__main__":
    main()
