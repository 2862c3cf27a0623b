"""Planted label noise: LabelIssueDetector against cleanlab.

Flips a fraction of the labels of small data sets (each flipped label becomes
another class, uniformly), runs :class:`sksim.LabelIssueDetector` with an MLP
(64 hidden units, 20 epochs, 3 folds) and compares, on the same out-of-fold
probabilities, cleanlab's ranking and estimated set with each signal alone
and their combinations:

* precision at k, k = the number of flipped labels: the share of flipped
  labels among the k highest-scored examples;
* the estimated set (cleanlab's ``find_label_issues``; sksim's first
  ``n_issues_`` examples): its size, precision and recall.

cleanlab is a benchmark-only dependency (``pip install "sksim[bench]"``).
Writes ``docs/benchmarks-label-issues.md``.

Usage: ``python benchmarks/bench_label_issues.py [--seeds 3] [--output PATH]``.
"""

import argparse
import platform
import time
from datetime import date
from pathlib import Path

import numpy as np
import torch
from sklearn.datasets import (
    load_breast_cancer,
    load_digits,
    load_wine,
    make_classification,
)
from sklearn.preprocessing import StandardScaler
from skorch import NeuralNetClassifier

from sksim import LabelIssueDetector
from sksim.label_issues import combine_signals, estimate_n_issues

SIGNALS = ("proba", "neighbors", "mean", "rank")
HEADER = {
    "cleanlab": "cleanlab",
    "proba": "P alone",
    "neighbors": "Q alone",
    "mean": "mean",
    "rank": "rank",
}


class MLP(torch.nn.Module):
    def __init__(self, n_in, n_out, n_hidden=64):
        super().__init__()
        self.hidden = torch.nn.Linear(n_in, n_hidden)
        self.out = torch.nn.Linear(n_hidden, n_out)

    def forward(self, X):
        return self.out(torch.relu(self.hidden(X)))


def standardized(X):
    return StandardScaler().fit_transform(X).astype(np.float32)


def digits():
    X, y = load_digits(return_X_y=True)
    return (X / 16.0).astype(np.float32), y


def tabular(loader):
    X, y = loader(return_X_y=True)
    return standardized(X), y


def synthetic(n_samples, n_features, n_classes, n_informative):
    X, y = make_classification(
        n_samples=n_samples,
        n_features=n_features,
        n_informative=n_informative,
        n_redundant=0,
        n_classes=n_classes,
        n_clusters_per_class=2,
        random_state=0,
    )
    return standardized(X), y


DATASETS = {
    "digits (1797 x 64, 10 classes)": (digits, 0.05),
    "digits, 10 % noise": (digits, 0.10),
    "breast cancer (569 x 30, 2 classes)": (lambda: tabular(load_breast_cancer), 0.05),
    "wine (178 x 13, 3 classes)": (lambda: tabular(load_wine), 0.10),
    "synthetic 4000 x 40, 6 classes": (lambda: synthetic(4000, 40, 6, 12), 0.05),
    "synthetic 1500 x 10, 3 classes": (lambda: synthetic(1500, 10, 3, 6), 0.10),
}


def flip_labels(y, fraction, seed):
    """Labels with ``fraction`` of them moved to another class, and which."""
    rng = np.random.RandomState(seed)
    n_classes = len(np.unique(y))
    flipped = rng.choice(len(y), int(round(fraction * len(y))), replace=False)
    noisy = y.copy()
    noisy[flipped] = (y[flipped] + rng.randint(1, n_classes, len(flipped))) % n_classes
    mask = np.zeros(len(y), dtype=bool)
    mask[flipped] = True
    return noisy, mask


def make_net(n_in, n_out):
    return NeuralNetClassifier(
        MLP,
        module__n_in=n_in,
        module__n_out=n_out,
        criterion=torch.nn.CrossEntropyLoss,
        max_epochs=20,
        lr=0.1,
        batch_size=64,
        train_split=None,
        verbose=0,
    )


def precision_at_k(scores, flipped):
    top = np.argsort(-scores, kind="stable")[: flipped.sum()]
    return flipped[top].mean()


def set_metrics(selected, flipped):
    """Size, precision and recall of a set of examples (boolean mask)."""
    hits = (selected & flipped).sum()
    return selected.sum(), hits / max(selected.sum(), 1), hits / flipped.sum()


def run(X, y, fraction, seed):
    """One planted-noise run: the metrics of every method."""
    from cleanlab.filter import find_label_issues
    from cleanlab.rank import get_label_quality_scores

    noisy, flipped = flip_labels(y, fraction, seed)
    start = time.perf_counter()
    detector = LabelIssueDetector(
        make_net(X.shape[1], len(np.unique(y))), cv=3, random_state=seed
    ).fit(X, noisy)
    seconds = time.perf_counter() - start
    P, Q = detector.oof_proba_, detector.neighbor_proba_
    results = {"cleanlab": precision_at_k(-get_label_quality_scores(noisy, P), flipped)}
    for signal in SIGNALS:
        results[signal] = precision_at_k(
            combine_signals(P, Q, noisy, signal)[1], flipped
        )
    cl_set = find_label_issues(noisy, P)
    ours = np.zeros(len(y), dtype=bool)
    ours[np.argsort(-detector.scores_, kind="stable")[: detector.n_issues_]] = True
    sets = {
        "cleanlab": set_metrics(cl_set, flipped),
        "sksim": set_metrics(ours, flipped),
        "sksim, P alone": (
            estimate_n_issues(P, noisy),
            *set_metrics(_top(-P[np.arange(len(y)), noisy], P, noisy), flipped)[1:],
        ),
    }
    return results, sets, flipped.sum(), seconds


def _top(scores, P, noisy):
    """The first ``estimate_n_issues(P)`` examples by ``scores``."""
    selected = np.zeros(len(scores), dtype=bool)
    selected[np.argsort(-scores, kind="stable")[: estimate_n_issues(P, noisy)]] = True
    return selected


def mean_std(values):
    return f"{np.mean(values):.3f} ± {np.std(values):.3f}"


def findings(rows, set_rows):
    """Where sksim's default (mean) wins and loses against cleanlab, in words."""
    gaps = {name: np.mean(m["mean"]) - np.mean(m["cleanlab"]) for name, *_, m in rows}
    mean_gap = np.mean(list(gaps.values()))
    lines = [
        f"On average over the data sets, *mean* scores {mean_gap:+.3f} precision "
        "at k against cleanlab.",
    ]
    losses = {name: gap for name, gap in gaps.items() if gap < 0}
    if losses:
        worst = ", ".join(f"{name} ({gap:+.3f})" for name, gap in losses.items())
        lines[0] += f" It loses on: {worst}."
    else:
        lines[0] += " It loses on no data set."
    ratios = {
        name: np.mean([size for size, _, _ in per_set["sksim"]]) / n_flipped
        for name, n_flipped, per_set in set_rows
    }
    over = ", ".join(
        f"{name} ({r:.1f} times the number flipped)"
        for name, r in ratios.items()
        if r > 1.5
    )
    if over:
        lines += [
            "",
            "The estimated count overshoots the planted errors where the network "
            "itself is often wrong (its mistakes look like label issues, for "
            f"confident learning as for sksim): {over}.",
        ]
    return lines


def write_page(path, rows, set_rows, seeds, seconds):
    methods = list(HEADER)
    lines = [
        "# Benchmark: label issues against cleanlab",
        "",
        f"Produced by `python benchmarks/bench_label_issues.py --seeds {seeds}` on "
        f"{platform.machine()}, {torch.get_num_threads()} torch thread(s), torch "
        f"{torch.__version__}, {date.today().isoformat()}, in {seconds / 60:.1f} "
        "minutes.",
        "",
        "Labels are flipped to another class uniformly at random; one MLP (64 "
        "hidden units, ReLU, 20 epochs of SGD, learning rate 0.1) trained on 3 "
        "folds gives the out-of-fold probabilities `P` that cleanlab and sksim "
        "share, and sksim's neighbour label distribution `Q` (10 most similar "
        "training examples by the network's cosine similarity). Mean ± standard "
        f"deviation over {seeds} seeds (each seed draws the noise and trains the "
        "nets).",
        "",
        "## Precision at k (k = number of flipped labels)",
        "",
        "cleanlab ranks by self-confidence `P(y)` (its default), so its column "
        "equals *P alone* up to ties; *mean* is minus `(P(y) + Q(y)) / 2` "
        "(sksim's default), *rank* averages the ranks of `P(y)` and `Q(y)`.",
        "",
        "| data set | noise | flipped | " + " | ".join(HEADER.values()) + " |",
        "| --- | --- | --- | " + " | ".join("---" for _ in methods) + " |",
    ]
    for name, fraction, n_flipped, per_method in rows:
        cells = [mean_std(per_method[m]) for m in methods]
        lines.append(
            f"| {name} | {fraction:.0%} | {n_flipped} | " + " | ".join(cells) + " |"
        )
    averages = [np.mean([r[3][m] for r in rows]) for m in methods]
    lines.append(
        "| **mean over data sets** | | | "
        + " | ".join(f"**{a:.3f}**" for a in averages)
        + " |"
    )
    lines += ["", *findings(rows, set_rows)]
    lines += [
        "",
        "## The estimated set",
        "",
        "cleanlab: `find_label_issues(labels, P)` (pruning by noise rate, its "
        "default). sksim: the first `n_issues_` examples by score, `n_issues_` "
        "from confident learning's calibrated joint on `(P + Q) / 2`; *sksim, P "
        "alone* applies the same count and ranking to `P` only.",
        "",
        "| data set | flipped | method | size | precision | recall |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for name, n_flipped, per_method in set_rows:
        for method, values in per_method.items():
            size, precision, recall = np.array(values).T
            lines.append(
                f"| {name} | {n_flipped} | {method} | {np.mean(size):.0f} | "
                f"{mean_std(precision)} | {mean_std(recall)} |"
            )
    Path(path).write_text("\n".join(lines) + "\n")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument(
        "--output",
        default=Path(__file__).resolve().parent.parent
        / "docs"
        / "benchmarks-label-issues.md",
    )
    args = parser.parse_args()
    try:
        import cleanlab  # noqa: F401 (the peer, imported where it runs)
    except ModuleNotFoundError:
        raise SystemExit(
            "bench_label_issues.py compares sksim with cleanlab, a benchmark-only "
            'peer: pip install "sksim[bench]" (or pip install cleanlab).'
        ) from None
    start = time.perf_counter()
    rows, set_rows = [], []
    for name, (load, fraction) in DATASETS.items():
        X, y = load()
        per_method = {m: [] for m in HEADER}
        per_set = {}
        for seed in range(args.seeds):
            results, sets, n_flipped, seconds = run(X, y, fraction, seed)
            for method, value in results.items():
                per_method[method].append(value)
            for method, value in sets.items():
                per_set.setdefault(method, []).append(value)
            print(
                f"{name}, seed {seed}: {seconds:.0f} s; "
                + ", ".join(f"{m} {v:.3f}" for m, v in results.items()),
                flush=True,
            )
        rows.append((name, fraction, n_flipped, per_method))
        set_rows.append((name, n_flipped, per_set))
    write_page(args.output, rows, set_rows, args.seeds, time.perf_counter() - start)


if __name__ == "__main__":
    main()
