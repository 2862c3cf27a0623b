"""Error of the sketched cosine kernel against the exact one.

For two MLPs on scikit-learn's digits inputs (the 64-32-10 of the tests,
p = 2 410, and a 64-256-256-10, p = 85 002; both over their 10 logits), prints
the mean and largest absolute error of ``network_similarity(n_components=k)``
over 300 x 300 pairs, and the time of each call.

Usage: ``python benchmarks/bench_sketch.py``.
"""

import time

import numpy as np
import torch
from sklearn.datasets import load_digits
from torch import nn

from sksim import network_similarity


def main():
    X = (load_digits().data[:300] / 16).astype(np.float32)
    torch.manual_seed(0)
    nets = {
        "64-32-10": nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10)),
        "64-256-256-10": nn.Sequential(
            nn.Linear(64, 256),
            nn.ReLU(),
            nn.Linear(256, 256),
            nn.ReLU(),
            nn.Linear(256, 10),
        ),
    }
    print(
        "| network | p | n_components | mean abs. error | max abs. error | time (s) |"
    )
    print("| --- | --- | --- | --- | --- | --- |")
    for name, net in nets.items():
        p = sum(t.numel() for t in net.parameters())
        exact = network_similarity(net, X)
        for k in (256, 2048, 8192):
            start = time.perf_counter()
            K = network_similarity(net, X, n_components=k, random_state=0)
            seconds = time.perf_counter() - start
            error = np.abs(K - exact)
            print(
                f"| {name} | {p} | {k} | {error.mean():.3f} | {error.max():.3f} "
                f"| {seconds:.2f} |"
            )


if __name__ == "__main__":
    main()
