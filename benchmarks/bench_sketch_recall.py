"""Recall of neighbours ranked by sketches: columns shared by energy or equally.

A ResNet-18 (``transformers`` config, basic blocks 2-2-2-2, 10 logits) trained
one epoch (Adam, batches of 256) on 1 000 synthetic CIFAR-sized images of
``bench_audit.py``; 200 more are the queries. For each sketch width
(``n_components`` per output), the recall@5 of the neighbours that the
sketches rank (``NetworkNeighbors(n_components=...)``, an exact search over
the sketches) against the exact neighbours, with the sketch's columns shared
among the 61 layer pieces in proportion to their energies (the default, from
``sketch_weights_``) and equally (as before), and the seconds of ``fit`` and
the queries.

Writes a Markdown table to ``docs/benchmarks-sketch-recall.md``.

Usage: ``OMP_NUM_THREADS=2 python benchmarks/bench_sketch_recall.py``.
"""

import argparse
import contextlib
import os
import platform
import time
from pathlib import Path
from unittest import mock

import torch
from bench_audit import dataset_and_net, load_average
from pages import write_page

from sksim import NetworkNeighbors
from sksim.neighbors import recall

WIDTHS = (256, 512, 1024, 2048, 4096)
N_REFERENCE, N_QUERIES = 1000, 200


def equal_shares(search, X):
    """No measured energies: the columns shared equally among the pieces."""
    return [None] * len(search._engines())


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--out",
        default=Path(__file__).resolve().parent.parent
        / "docs"
        / "benchmarks-sketch-recall.md",
    )
    args = parser.parse_args()
    loads = [load_average()]
    # the audit benchmark's images and ResNet-18, trained one epoch on the reference
    model = argparse.Namespace(model="resnet18", epochs=1, device="cpu")
    X, y, net = dataset_and_net(N_REFERENCE + N_QUERIES, model)
    X_ref, X_query = X[:N_REFERENCE], X[N_REFERENCE:]
    net.fit(X_ref, y[:N_REFERENCE])
    accuracy = float((net.predict(X_query) == y[N_REFERENCE:]).mean())
    start = time.perf_counter()
    # ten exact neighbours, so that ties with the fifth count as hits
    exact = NetworkNeighbors(net).fit(X_ref).most_similar(X_query, 10)
    exact_seconds = time.perf_counter() - start
    rows = []
    for width in WIDTHS:
        for shares in ("energy", "equal"):
            patch = contextlib.nullcontext()
            if shares == "equal":
                patch = mock.patch.object(
                    NetworkNeighbors, "_sketch_weights", equal_shares
                )
            with patch:
                start = time.perf_counter()
                search = NetworkNeighbors(net, n_components=width, random_state=0)
                search.fit(X_ref)
                fitted = time.perf_counter()
                found = search.kneighbors(X_query, 5)[1]
                done = time.perf_counter()
            rows.append(
                (width, shares, recall(found, *exact), fitted - start, done - fitted)
            )
            print(rows[-1], flush=True)
    loads.append(load_average())
    lines = [
        "# Neighbours ranked by sketches: columns shared by energy or equally",
        "",
        "Written by `benchmarks/bench_sketch_recall.py` (see its docstring): "
        f"ResNet-18 after one epoch (held-out accuracy {accuracy:.2f}), "
        f"{N_REFERENCE:,} reference and {N_QUERIES} query images, recall@5 against "
        f"the exact neighbours (found in {exact_seconds:.0f} s). Machine: "
        f"{platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
        f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', '?')}; load average "
        f"at the start {loads[0]}, at the end {loads[1]}.",
        "",
        "| n_components per output | columns shared | recall@5 | fit (s) | "
        "queries (s) |",
        "|---|---|---|---|---|",
        *(f"| {w:,} | {s} | {r:.3f} | {f:.1f} | {q:.1f} |" for w, s, r, f, q in rows),
    ]
    write_page(args.out, "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
