"""Peak memory of the exact cosine kernel of the MLP at N = 16 000.

Materialised per-sample Jacobians would take N x d x p floats (16 000 x 10 x
269 322 x 4 bytes = 172 GB for the logits, 17 GB for one output); sksim keeps
per-layer factors instead. Prints the wall time and the peak resident set size
of this process (``ru_maxrss``), which includes the 2 GB float64 result, and
the largest error of the kernel's first :data:`CHECKED` rows and columns
against a float64 oracle computed after the measurement.

Usage: ``python benchmarks/bench_memory.py [--n 16000] [--output logits|0]``.
"""

import argparse
import copy
import resource
import time

import torch
from models import mlp

from sksim import network_similarity

CHECKED = 8  # samples of the oracle's block


def oracle(module, X, output):
    """float64 cosine kernel of the rows of ``X``, one sample's Jacobian at a time.

    ``tr(A_i A_j^T) / d`` with ``A = (J J^T)^{-1/2} J`` the whitened Jacobian
    of the ``d`` selected outputs.
    """
    double = copy.deepcopy(module).double().eval()
    params = list(double.parameters())
    whitened = []
    for x in X.double():
        out = double(x[None])[0]
        rows = out if output == "logits" else out[output : output + 1]
        J = torch.stack(
            [
                torch.cat(
                    [
                        g.reshape(-1)
                        for g in torch.autograd.grad(o, params, retain_graph=True)
                    ]
                )
                for o in rows
            ]
        )
        w, V = torch.linalg.eigh(J @ J.T)
        whitened.append((V / w.sqrt()) @ V.T @ J)
    return torch.tensor(
        [[float((a * b).sum()) / len(a) for b in whitened] for a in whitened]
    )


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
    module = mlp()
    K = network_similarity(module, X, output=output, batch_size=args.batch_size)
    elapsed = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    error = (
        (torch.from_numpy(K[:CHECKED, :CHECKED]) - oracle(module, X[:CHECKED], output))
        .abs()
        .max()
    )
    print(
        f"N = {args.n}, output = {args.output}: cosine kernel {K.shape} in "
        f"{elapsed:.1f} s, peak RSS {peak:.2f} GiB, largest error of its first "
        f"{CHECKED} rows and columns against a float64 oracle {float(error):.1e}"
    )


if __name__ == "__main__":
    main()
