"""FAISS neighbour search over the sketches' principal components.

The audit benchmark's setting (``bench_audit.py``): synthetic data
(``make_classification``, 64 features, 10 classes), the built-in MLP trained 5
epochs on the first half, its sketches of ``10 x 256`` values per example; the
first half is the reference set, the second half the queries. For each search,
the seconds of ``fit`` (sketches of the reference, principal directions, index)
and of ``most_similar`` of all queries for their 5 neighbours (their sketches
included), and the recall of their 5 neighbours (the audit's) and 10 (its label
issues') against the exact neighbours, on 500 queries drawn at random.

The reduced searches rank their candidates by exact similarities (the
default), 24 per neighbour unless ``candidates_per_neighbor`` says otherwise;
one row ranks them by the whole sketches instead, as when the network's
Jacobians do not fit in ``max_memory``.

Writes a Markdown table to ``docs/benchmarks-reduced-search.md``.

Usage: ``OMP_NUM_THREADS=2 python benchmarks/bench_reduced_search.py [--n 50000]``;
``--n`` at least :data:`MIN_N` (the IVF row's 32 probed lists of 256 must hold the
120 candidates of 5 neighbours).
"""

import argparse
import os
import platform
import time
from pathlib import Path
from unittest import mock

import numpy as np
import torch
from bench_audit import N_CLASSES, load_average, synthetic
from pages import write_page

from sksim import NetworkNeighbors
from sksim.audit.models import make_classifier
from sksim.neighbors import MAX_RANKING_BLOCKS

N_RECALL = 500  # queries on which the recall is measured
MIN_N = 6000  # examples (half of them the reference) the IVF row needs
SKETCH_RANKED = "'Flat', search_components=64, ranked by the whole sketches"
SEARCHES = [
    ("exhaustive ('Flat'), whole sketches", dict()),
    ("'Flat', search_components=256", dict(search_components=256)),
    ("'Flat', search_components=128", dict(search_components=128)),
    ("'Flat', search_components=64 (the audit's)", dict(search_components=64)),
    (
        "'Flat', search_components=64, candidates_per_neighbor=16",
        dict(search_components=64, candidates_per_neighbor=16),
    ),
    (
        "'Flat', search_components=64, candidates_per_neighbor=32",
        dict(search_components=64, candidates_per_neighbor=32),
    ),
    (SKETCH_RANKED, dict(search_components=64)),
    (
        "'IVF256,Flat' nprobe=32, search_components=64",
        dict(search_components=64, index="IVF256,Flat", index_params="nprobe=32"),
    ),
]


def recall(found, exact):
    hits = [len(np.intersect1d(a, b)) for a, b in zip(found, exact, strict=True)]
    return np.mean(hits) / exact.shape[1]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=50_000, help=f"at least {MIN_N}")
    parser.add_argument(
        "--out",
        default=Path(__file__).resolve().parent.parent
        / "docs"
        / "benchmarks-reduced-search.md",
    )
    args = parser.parse_args()
    if args.n < MIN_N:
        parser.error(f"--n must be at least {MIN_N}; got {args.n}.")
    loads = [load_average()]
    X, y = synthetic(args.n)
    half = args.n // 2
    torch.manual_seed(0)
    net = make_classifier("mlp", X, n_classes=N_CLASSES, max_epochs=5)
    net.fit(X[:half], y[:half])
    rng = np.random.default_rng(0)
    sample = np.sort(rng.choice(args.n - half, N_RECALL, replace=False))
    exact = NetworkNeighbors(net, n_neighbors=10).fit(X[:half])
    _, truth = exact.most_similar(X[half:][sample])
    rows = []
    for name, options in SEARCHES:
        start = time.perf_counter()
        # SKETCH_RANKED: as if the Jacobians took more than 8 blocks of memory
        blocks = 0 if name == SKETCH_RANKED else MAX_RANKING_BLOCKS
        with mock.patch("sksim.neighbors.MAX_RANKING_BLOCKS", blocks):
            search = NetworkNeighbors(
                net, algorithm="faiss", n_components=256, random_state=0, **options
            ).fit(X[:half])
        assert search.exact_ranking_ == (name != SKETCH_RANKED) or not options
        fitted = time.perf_counter()
        _, found = search.most_similar(X[half:], 5)
        done = time.perf_counter()
        _, found_10 = search.most_similar(X[half:][sample], 10)
        recalls = recall(found[sample], truth[:, :5]), recall(found_10, truth)
        rows.append((name, fitted - start, done - fitted, *recalls))
        print(rows[-1], flush=True)
    loads.append(load_average())
    lines = [
        "# Neighbour search over the sketches' principal components",
        "",
        "Written by `benchmarks/bench_reduced_search.py` (see its docstring): "
        f"{half:,} reference and {args.n - half:,} query examples, sketches of "
        f"{N_CLASSES} x 256 values, recall against the exact neighbours of "
        f"{N_RECALL} queries. Machine: {platform.machine()}, "
        f"{os.cpu_count()} CPUs, torch {torch.__version__}, "
        f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', '?')}; load "
        f"average at the start {loads[0]}, at the end {loads[1]}.",
        "",
        "| search | fit (s) | queries, 5 neighbours (s) | recall@5 | recall@10 |",
        "|---|---|---|---|---|",
        *(
            f"| {n} | {f:.1f} | {s:.1f} | {r:.3f} | {r10:.3f} |"
            for n, f, s, r, r10 in rows
        ),
    ]
    write_page(args.out, "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
