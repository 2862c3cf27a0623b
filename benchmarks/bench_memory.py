"""Peak memory of the exact cosine kernel of the MLP at N = 16 000.

Materialised per-sample Jacobians would take N x d x p floats (16 000 x 10 x
269 322 x 4 bytes = 172 GB for the logits, 17 GB for one output); sksim keeps
per-layer factors instead. Prints the wall time and the peak resident set size
of this process (``ru_maxrss``), which includes the 2 GB float64 result.

Usage: ``python benchmarks/bench_memory.py [--n 16000] [--output logits|0]``.
"""

import argparse
import resource
import time

import torch
from models import mlp

from sksim import network_similarity


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=16000)
    parser.add_argument("--output", default="logits")
    parser.add_argument("--batch-size", type=int, default=512)
    args = parser.parse_args()
    output = args.output if args.output == "logits" else int(args.output)
    torch.manual_seed(0)
    X = torch.randn(args.n, 784)
    start = time.perf_counter()
    K = network_similarity(mlp(), X, output=output, batch_size=args.batch_size)
    elapsed = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print(
        f"N = {args.n}, output = {args.output}: cosine kernel {K.shape} in "
        f"{elapsed:.1f} s, peak RSS {peak:.2f} GiB, "
        f"diagonal within {abs(K.diagonal() - 1).max():.1e} of 1"
    )


if __name__ == "__main__":
    main()
