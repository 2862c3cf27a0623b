"""Neighbour search over 10^6 reference examples: exhaustive and approximate indexes.

The audit benchmark's data (``bench_audit.py``: ``make_classification``, 64
features, 10 classes) and MLP, trained 5 epochs on 50 000 of the examples.
``NetworkNeighbors(algorithm="faiss", n_components="auto",
search_components=64)`` is fitted on ``--n`` reference examples (default
10^6), as the audit searches past its scale threshold, with
``--max-memory`` (default 12 GiB, so that the reference's whitened Jacobians
are kept and rank the candidates exactly); one more fit with the default
``max_memory`` (2 GiB), where they do not fit: the candidates of each block
of queries are then computed again to be ranked exactly.

Each FAISS index is built on the same fitted reference (``fit`` once, the
index rebuilt; HNSW parameters set on the built graph). For each: the
seconds to build it, the recall@5 of 500 held-out queries against their
exact neighbours (``NetworkNeighbors`` without sketches), and the seconds of
``most_similar`` for 20 000 held-out queries (their sketches and the exact
ranking included), from which the all-pairs time over the ``--n``
examples is extrapolated (the search's cost is linear in the queries). The
audit's index at this size (``"HNSW32"``, with its beam of twice the
candidates) is also timed on the all-pairs query itself
(``most_similar()``, each example's neighbours among the others), with
both ``max_memory``.

Writes ``docs/benchmarks-large-search.md``.

Usage: ``OMP_NUM_THREADS=2 python benchmarks/bench_large_search.py [--n 1000000]
[--max-memory BYTES] [--no-all-pairs]``.
"""

import argparse
import os
import platform
import resource
import time
from pathlib import Path

import numpy as np
import torch
from bench_audit import N_CLASSES, load_average, synthetic
from pages import write_page

from sksim import NetworkNeighbors
from sksim._reduced_search import CANDIDATES_PER_NEIGHBOR
from sksim.audit.models import make_classifier

# FAISS after torch: imported first, its OpenMP threads and torch's take the
# cores from each other (the exhaustive search 3 times slower at 10^6)
import faiss  # noqa: E402  isort: skip

N_TRAIN = 50_000  # examples the MLP is trained on
N_RECALL = 500  # held-out queries on which the recall is measured
N_TIMED = 20_000  # held-out queries whose search is timed
K = 5  # neighbours, as the audit's
INDEXES = [  # name, index, index_params
    ("'Flat' (exhaustive; the audit's below 10^6)", "Flat", None),
    ("'HNSW32', beam of twice the candidates (the audit's from 10^6)", "HNSW32", None),
    ("'HNSW32', efSearch=16 (FAISS's default)", "HNSW32", "efSearch=16"),
    ("'HNSW32', efSearch=320", "HNSW32", "efSearch=320"),
    ("'IVF4096,Flat', nprobe=256", "IVF4096,Flat", "nprobe=256"),
]


def recall(found, exact):
    hits = [len(np.intersect1d(a, b)) for a, b in zip(found, exact, strict=True)]
    return float(np.mean(hits)) / exact.shape[1]


def reindexed(search, index, params):
    """``search`` with another FAISS index over the same fitted reference."""
    if index != search.index:
        search.set_params(index=index, index_params=None)
        search._faiss_index = search._build_index()
    search.set_params(index_params=params)
    # the index is rebuilt, not the fit: the search takes it as fit's
    search._fitted_settings.update(index=index, index_params=params)
    if params is not None:
        faiss.ParameterSpace().set_index_parameters(search._faiss_index, params)
    elif index == "HNSW32":  # FAISS's default: the search sets its beam
        search._faiss_index.hnsw.efSearch = 16
    return search


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--max-memory", type=int, default=12 * 2**30)
    parser.add_argument("--no-all-pairs", action="store_true")
    parser.add_argument(
        "--out",
        default=Path(__file__).resolve().parent.parent
        / "docs"
        / "benchmarks-large-search.md",
    )
    args = parser.parse_args()
    loads, start = [load_average()], time.perf_counter()
    X, y = synthetic(args.n + N_TIMED)
    reference, queries = X[: args.n], X[args.n :]
    torch.manual_seed(0)
    net = make_classifier("mlp", X, n_classes=N_CLASSES, max_epochs=5)
    net.fit(X[:N_TRAIN], y[:N_TRAIN])
    sample = queries[:N_RECALL]
    t = time.perf_counter()
    _, exact = NetworkNeighbors(net, n_neighbors=K).fit(reference).most_similar(sample)
    exact_seconds = time.perf_counter() - t
    print(f"exact neighbours of {N_RECALL} queries: {exact_seconds:.1f} s", flush=True)

    fits, rows, all_pairs = [], [], []
    for label, max_memory in [
        (f"max_memory={args.max_memory / 2**30:g} GiB", args.max_memory),
        ("max_memory=2 GiB (the default)", None),
    ]:
        t = time.perf_counter()
        search = NetworkNeighbors(
            net,
            n_neighbors=K,
            algorithm="faiss",
            n_components="auto",
            search_components=64,
            random_state=0,
            **({} if max_memory is None else dict(max_memory=max_memory)),
        ).fit(reference)
        fit_seconds = time.perf_counter() - t
        ranking = "whole sketches"
        if search.exact_ranking_:
            blocks = len(search._blocks(args.n))
            ranking = (
                "exact, Jacobians kept"
                if blocks == 1
                else (f"exact, candidates computed again for each of {blocks} blocks")
            )
        fits.append((label, fit_seconds, search.n_components_, ranking))
        print(fits[-1], flush=True)
        indexes = INDEXES if max_memory is not None else INDEXES[:2]
        for name, index, params in indexes:
            rebuilt = index not in ("Flat", search.index)
            t = time.perf_counter()
            reindexed(search, index, params)
            build = time.perf_counter() - t if rebuilt else None  # else: the same
            found = search.most_similar(sample)[1]
            t = time.perf_counter()
            search.most_similar(queries)
            timed = time.perf_counter() - t
            rows.append(
                (
                    label,
                    name,
                    build,
                    recall(found, exact),
                    timed,
                    timed * args.n / N_TIMED,
                )
            )
            print(rows[-1], flush=True)
        if not args.no_all_pairs:
            reindexed(search, *INDEXES[1][1:])
            t = time.perf_counter()
            search.most_similar()
            all_pairs.append((label, time.perf_counter() - t))
            print(f"all pairs, the audit's HNSW: {all_pairs[-1]}", flush=True)
        del search
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    loads.append(load_average())
    n = f"{args.n:,}"
    lines = [
        "# Neighbour search over 10^6 reference examples",
        "",
        "Written by `benchmarks/bench_large_search.py` (see its docstring): "
        f"{n} reference examples, the audit benchmark's MLP (10 outputs), "
        "`NetworkNeighbors(algorithm='faiss', n_components='auto', "
        f"search_components=64)`, {K} neighbours "
        f"({K * CANDIDATES_PER_NEIGHBOR} candidates). "
        f"Recall@{K} of {N_RECALL} held-out queries against their exact neighbours "
        f"(found in {exact_seconds:.0f} s); query time of {N_TIMED:,} held-out "
        "queries, and extrapolated to all-pairs queries of the "
        f"{n} (time linear in the queries). Machine: {platform.machine()}, "
        f"{os.cpu_count()} CPUs, torch {torch.__version__}, faiss "
        f"{faiss.__version__}, OMP_NUM_THREADS="
        f"{os.environ.get('OMP_NUM_THREADS', '?')}; load average at the start "
        f"{loads[0]}, at the end {loads[1]}; peak resident memory "
        f"{peak:.1f} GiB; {time.perf_counter() - start:.0f} s in all.",
        "",
        "| max_memory | fit (s) | sketch per output | candidates ranked by |",
        "|---|---|---|---|",
        *(f"| {a} | {b:.1f} | {c} | {d} |" for a, b, c, d in fits),
        "",
        f"| max_memory | index | build (s) | recall@{K} | {N_TIMED:,} queries (s) "
        f"| all pairs of {n}, extrapolated (s) |",
        "|---|---|---|---|---|---|",
        *(
            f"| {a} | {b} | {'' if c is None else f'{c:.1f}'} | {d:.3f} | {e:.1f} "
            f"| {f:.0f} |"
            for a, b, c, d, e, f in rows
        ),
    ]
    if not args.no_all_pairs:
        lines += [
            "",
            f"All-pairs query of the {n} (`most_similar()`), the audit's HNSW "
            "index, measured: "
            + "; ".join(f"{a}: {b:.0f} s" for a, b in all_pairs)
            + ".",
        ]
    write_page(args.out, "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
