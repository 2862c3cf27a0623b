"""Error of the sketched cosine kernel against the exact one.

For two MLPs on scikit-learn's digits inputs (the 64-32-10 of the tests,
p = 2 410, and a 64-256-256-10, p = 85 002; both over their 10 logits), prints
the mean and largest absolute error of ``network_similarity(n_components=k)``
over 300 x 300 pairs, for the seeds ``random_state`` 0 to 3 (the smallest and
largest over them: one sketch's errors share much of their sign, so a seed's
mean error varies between seeds about as much as it is large), and the time of
a call (the fastest).

Usage: ``python benchmarks/bench_sketch.py``.
"""

import argparse
import time

import numpy as np
import torch
from sklearn.datasets import load_digits
from torch import nn

from sksim import network_similarity

SEEDS = range(4)


def main():
    argparse.ArgumentParser(description=__doc__.splitlines()[0]).parse_args()
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
            means, largest, times = [], [], []
            for seed in SEEDS:
                start = time.perf_counter()
                K = network_similarity(net, X, n_components=k, random_state=seed)
                times.append(time.perf_counter() - start)
                error = np.abs(K - exact)
                means.append(error.mean())
                largest.append(error.max())
            print(
                f"| {name} | {p} | {k} | {min(means):.3f} to {max(means):.3f} "
                f"| {min(largest):.3f} to {max(largest):.3f} | {min(times):.2f} |"
            )


if __name__ == "__main__":
    main()
