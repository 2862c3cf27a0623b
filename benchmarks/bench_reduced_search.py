"""FAISS neighbour search over the sketches' principal components.

The audit benchmark's setting (``bench_audit.py``): synthetic data
(``make_classification``, 64 features, 10 classes), the built-in MLP trained 5
epochs on the first half, its sketches of ``10 x 256`` values per example; the
first half is the reference set, the second half the queries. For each search,
the seconds of ``fit`` (sketches of the reference, principal directions, index)
and of the search of the queries' sketches (computed once, outside the timing)
for their 5 neighbours, and the share of the exhaustive search's 5 neighbours
(the audit's neighbours) and 10 neighbours (its label issues') it finds.

Writes a Markdown table to ``docs/benchmarks-reduced-search.md``.

Usage: ``OMP_NUM_THREADS=2 python benchmarks/bench_reduced_search.py [--n 50000]``.
"""

import argparse
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch
from bench_audit import N_CLASSES, load_average, synthetic

from sksim import NetworkNeighbors
from sksim.audit.models import make_classifier

SEARCHES = [
    ("exhaustive ('Flat'), whole sketches", dict()),
    ("'Flat', search_components=256", dict(search_components=256)),
    ("'Flat', search_components=128", dict(search_components=128)),
    ("'Flat', search_components=64 (the audit's)", dict(search_components=64)),
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
    parser.add_argument("--n", type=int, default=50_000)
    parser.add_argument(
        "--out",
        default=Path(__file__).resolve().parent.parent
        / "docs"
        / "benchmarks-reduced-search.md",
    )
    args = parser.parse_args()
    loads = [load_average()]
    X, y = synthetic(args.n)
    half = args.n // 2
    torch.manual_seed(0)
    net = make_classifier("mlp", X, n_classes=N_CLASSES, max_epochs=5)
    net.fit(X[:half], y[:half])
    rows, exhaustive, queries = [], None, None
    for name, options in SEARCHES:
        start = time.perf_counter()
        search = NetworkNeighbors(
            net, algorithm="faiss", n_components=256, random_state=0, **options
        ).fit(X[:half])
        fitted = time.perf_counter()
        if queries is None:
            queries = search._sketch(X[half:])
        searched = time.perf_counter()
        _, found = search._faiss(queries, 5, exclude_self=False)
        done = time.perf_counter()
        _, found_10 = search._faiss(queries, 10, exclude_self=False)
        exhaustive = exhaustive or (found, found_10)
        agreement = recall(found, exhaustive[0]), recall(found_10, exhaustive[1])
        rows.append((name, fitted - start, done - searched, *agreement))
        print(rows[-1], flush=True)
    loads.append(load_average())
    lines = [
        "# Neighbour search over the sketches' principal components",
        "",
        "Written by `benchmarks/bench_reduced_search.py` (see its docstring): "
        f"{half:,} reference and {args.n - half:,} query examples, sketches of "
        f"{N_CLASSES} x 256 values. Machine: {platform.machine()}, "
        f"{os.cpu_count()} CPUs, torch {torch.__version__}, "
        f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', '?')}; load "
        f"average at the start {loads[0]}, at the end {loads[1]}.",
        "",
        "| search | fit (s) | search, 5 neighbours (s) | share of the exhaustive "
        "search's 5 neighbours | of its 10 neighbours |",
        "|---|---|---|---|---|",
        *(
            f"| {n} | {f:.1f} | {s:.1f} | {r:.3f} | {r10:.3f} |"
            for n, f, s, r, r10 in rows
        ),
    ]
    Path(args.out).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
