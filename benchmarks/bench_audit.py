"""Time and peak memory of each analysis of the audit, as the data grows.

For each size N (default 5 000, 20 000 and 50 000): synthetic data
(``sklearn.datasets.make_classification``, 64 features, 10 classes), the
built-in MLP (``sksim.audit.models.make_classifier("mlp")``, 5 epochs), a
2-fold audit. The folds are trained once (``audit(analyses=())`` with a cache
folder), then each analysis runs alone in an audit that loads the trained folds
from a fresh copy of that cache (so that no analysis is loaded from an earlier
one), so that its time is its own and its peak resident memory (sampled every
5 ms from ``/proc/self/statm``, above the level at its start) too. Times are the
audit's own timings (``result.metadata["seconds"]``, summed over the folds).
With ``--repeat R`` each analysis runs R times and the fastest run is
reported (the largest peak memory), with the slowest beside it: on a shared
machine, other load only ever adds time, and a single run of a 2-core virtual
machine varies by half.
The R rounds run the analyses in turn, so that a slow spell of the machine
slows one run of several analyses rather than every run of one.
The audit switches by itself to its linear-cost methods past
``--scale-threshold`` training examples per fold (the audit's default, 20 000);
the method each analysis used is listed.

Each size is audited twice from the same trained folds: as the audit runs by
default (``auto``), and with the linear-cost methods forced at every size
(``scaled``, ``scale_threshold=1``), whose growth exponent from the smallest
size is that of the methods themselves.

The default mode also runs every analysis in one audit, as a user runs it,
in the same rounds (``--no-one-audit`` leaves it out). There, analyses that
share work cost less than alone (the label issues take the search that the
neighbours analysis fitted on each fold), so its row, training included, is
the audit's real total.

The linear-cost methods are also called directly, without the audit, up to
200 000 examples (``--direct-sizes``): ``GradientDensityEstimator(method="soft")``
and ``NetworkNeighbors(algorithm="faiss")`` with the audit's settings at scale
(sketch size and ``search_components``), each on two folds
(fit on one half, query the other, both ways), with the MLP untrained (the
cost does not depend on the weights).

A small audit of every analysis and the direct calls run first, unmeasured
(:func:`warm_up`), so that no row carries the process's one-time costs.

The growth exponent of each analysis is ``log(t_large / t_small) /
log(N_large / N_small)`` between the smallest and largest sizes measured (1 for
a linear cost, 2 for a quadratic one), from the fastest runs, with the lowest
and highest that the fastest and slowest runs give. The page records the
machine's load average (``uptime``) at the start and the end.

With ``--model resnet18`` the network is a ResNet-18 from a ``transformers``
config (11.2 M parameters, see ``models.transformers_resnet18``) trained with
Adam on synthetic CIFAR-sized images (3 x 32 x 32, 10 classes: a smooth random
template per class, scaled and shifted per image, plus smooth and pixel noise),
on ``--device`` (``cuda`` for a GPU). ``--deadline SECONDS`` skips each run of
a step whose last run's time (at this size or the last one measured, scaled
linearly) would end it later, the runs made giving its row (for a machine lent
for a fixed time); the page is written after every step.
``--max-memory BYTES`` sets the ``max_memory`` of the analyses that take it
(density, neighbours, denoising, label issues; default 2 GiB), e.g. to keep a
ResNet-18's recall queries in memory on a GPU.

Usage: ``OMP_NUM_THREADS=2 python benchmarks/bench_audit.py [--sizes 5000 20000
50000] [--direct-sizes 5000 20000 50000 200000] [--modes auto scaled]
[--analyses ...] [--model mlp] [--device cpu] [--repeat R] [--deadline SECONDS]
[--max-memory BYTES] [--no-one-audit] [--label TEXT] [--out PATH]``.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import sklearn
import torch
from bench_kernel import PeakMemory
from models import transformers_resnet18
from pages import write_page
from sklearn.datasets import make_classification
from skorch import NeuralNetClassifier

from sksim import GradientDensityEstimator, NetworkNeighbors
from sksim.audit import audit
from sksim.audit.analyses.neighbors import SEARCH_COMPONENTS
from sksim.audit.models import MLP, make_classifier

ANALYSES = ("density", "neighbors", "denoising", "label_issues", "class_fitting")
MEMORY_BOUND = ("density", "neighbors", "denoising", "label_issues")  # take max_memory
N_FEATURES, N_CLASSES = 64, 10
ONE_AUDIT = "all analyses in one audit"  # the step of that run
WARM_UP_SIZE = 1000  # examples of the unmeasured first audit (see warm_up)


def load_average() -> str:
    """The load averages of ``uptime`` (1, 5 and 15 minutes)."""
    text = subprocess.run(["uptime"], capture_output=True, text=True).stdout
    return text.split("load average:")[-1].strip()


def synthetic(n_samples: int, seed: int = 0):
    X, y = make_classification(
        n_samples=n_samples,
        n_features=N_FEATURES,
        n_informative=32,
        n_classes=N_CLASSES,
        n_clusters_per_class=1,
        random_state=seed,
    )
    X = (X - X.mean(axis=0)) / X.std(axis=0)
    return X.astype(np.float32), y.astype(np.int64)


def images(n_samples: int, seed: int = 0):
    """Synthetic CIFAR-sized images: a smooth template per class, with noise."""
    rng = np.random.RandomState(seed)
    y = rng.randint(N_CLASSES, size=n_samples)

    def smooth(n):  # 4 x 4 random patterns, upsampled to 32 x 32
        coarse = torch.from_numpy(rng.standard_normal((n, 3, 4, 4)).astype(np.float32))
        return torch.nn.functional.interpolate(coarse, size=32, mode="bilinear")

    templates = smooth(N_CLASSES).numpy()
    scale = rng.uniform(0.5, 1.5, size=(n_samples, 1, 1, 1)).astype(np.float32)
    shift = rng.standard_normal((n_samples, 3, 1, 1)).astype(np.float32) * 0.3
    X = scale * templates[y] + shift + smooth(n_samples).numpy()
    X += 0.3 * rng.standard_normal(X.shape).astype(np.float32)
    return X, y.astype(np.int64)


def dataset_and_net(n_samples, args):
    """The data and the unfitted skorch classifier of ``--model``."""
    if args.model == "mlp":
        X, y = synthetic(n_samples)
        net = make_classifier(
            "mlp", X, n_classes=N_CLASSES, max_epochs=args.epochs, device=args.device
        )
        return X, y, net
    X, y = images(n_samples)
    torch.manual_seed(0)
    net = NeuralNetClassifier(
        transformers_resnet18(N_CLASSES),
        criterion=torch.nn.CrossEntropyLoss,
        optimizer=torch.optim.Adam,
        lr=1e-3,
        batch_size=256,
        max_epochs=args.epochs,
        train_split=None,
        device=args.device,
        verbose=0,
    )
    return X, y, net


def mode_thresholds(args) -> dict:
    """The scale threshold of each mode: ``--scale-threshold``, and 1 (scaled)."""
    return dict(auto=args.scale_threshold, scaled=1)


def audit_rows(n_samples, args, rows, write):
    """Fill ``rows`` per mode: training, then each analysis of a 2-fold audit.

    The modes are the scale thresholds: ``"auto"`` (``--scale-threshold``)
    and ``"scaled"`` (1: the linear-cost methods at every size); the folds
    are trained once for both. A step that would end past ``--deadline`` is
    skipped (see :func:`skipped`). ``write()`` is called after the training
    and after each analysis, so that a run cut short keeps what it measured.
    """
    X, y, net = dataset_and_net(n_samples, args)
    thresholds = mode_thresholds(args)
    with tempfile.TemporaryDirectory() as cache:
        if (reason := skipped("training", n_samples, args)) is not None:
            for mode in rows:
                rows[mode].append(dict(step="training", method=reason))
            return
        with PeakMemory() as memory, DeviceMemory(args.device) as device_memory:
            trained = os.path.join(cache, "trained")
            result = audit(net, X, y, cv=args.folds, analyses=(), cache=trained)
        training = dict(
            step="training",
            accuracy=float(result.tables["folds"]["accuracy"].mean()),
            seconds=result.metadata["seconds"]["fit"],
            mib=memory.added / 2**20,
            gpu_mib=device_memory.peak / 2**20,
        )
        args.measured["training"] = (n_samples, training["seconds"])
        for mode in args.modes:
            rows[mode].append(training)
        write()
        for mode in args.modes:
            runs = {(name,): [] for name in args.analyses}
            if args.one_audit and mode == "auto" and len(args.analyses) > 1:
                runs[tuple(args.analyses)] = []
            for round_ in range(args.repeat):  # interleaved: a slow spell hits one
                for analyses, measured in runs.items():
                    step = step_name(analyses)
                    if None in measured:  # skipped, or its runs stopped
                        continue
                    key = (mode, step)
                    if reason := skipped(key, n_samples, args):  # before every run
                        if not measured:
                            rows[mode].append(dict(step=step, method=reason))
                    else:
                        run = analysis_run(
                            net, X, y, analyses, thresholds[mode], cache, args
                        )
                        measured.append(run)
                        args.measured[key] = (n_samples, run["seconds"])
                    if measured and (reason or round_ == args.repeat - 1):
                        # written at once: a run cut short keeps it
                        row = step_row(step, measured, training)
                        rows[mode].append(row)
                        print(f"  N={n_samples} {mode} {step}: {row['seconds']:.1f} s")
                        write()
                    if reason or round_ == args.repeat - 1:
                        measured.append(None)  # no further round


def step_name(analyses) -> str:
    """The page's name of the step running ``analyses``."""
    return analyses[0] if len(analyses) == 1 else ONE_AUDIT


def step_row(name, measured, training) -> dict:
    """The page's row of step ``name`` from its runs ``measured``."""
    extra = training["seconds"] if name == ONE_AUDIT else 0
    result = measured[0]["result"]
    row = dict(
        step=name,
        seconds=extra + min(run["seconds"] for run in measured),
        slowest=extra + max(run["seconds"] for run in measured),
        mib=max(run["mib"] for run in measured),
        gpu_mib=max(run["gpu_mib"] for run in measured),
        method=result.metadata["methods"].get(name, ""),
    )
    folds = result.tables["folds"]
    if "neighbor_recall" in folds:
        row["recall"] = float(folds["neighbor_recall"].mean())
    return row


def analysis_run(net, X, y, analyses, threshold, cache, args) -> dict:
    """One audit of ``analyses`` on the trained folds in ``cache``.

    The run starts from a fresh copy of ``cache/trained`` holding only the
    trained folds, so that the analyses are computed, not loaded. Returns
    their seconds (both folds, summed), peak added resident and GPU memory
    (MiB) and the audit's result.
    """
    fresh = os.path.join(cache, "run")
    shutil.rmtree(fresh, ignore_errors=True)
    shutil.copytree(os.path.join(cache, "trained"), fresh)
    with PeakMemory() as memory, DeviceMemory(args.device) as device_memory:
        result = audit(
            net,
            X,
            y,
            cv=args.folds,
            analyses=analyses,
            cache=fresh,
            scale_threshold=threshold,
            options=memory_options(analyses, args.max_memory),
        )
    if result.failed:
        raise RuntimeError(f"analyses failed: {result.failed}")
    return dict(
        seconds=sum(result.metadata["seconds"][name] for name in analyses),
        mib=memory.added / 2**20,
        gpu_mib=device_memory.peak / 2**20,
        result=result,
    )


def memory_options(analyses, max_memory: int | None) -> dict:
    """The audit's ``options`` setting ``max_memory`` of the ``analyses``."""
    if max_memory is None:
        return {}
    return {
        name: {"max_memory": max_memory} for name in analyses if name in MEMORY_BOUND
    }


def skipped(key, n_samples, args) -> str | None:
    """Why the next run of step ``key`` at ``n_samples`` is skipped, or None to run it.

    ``key`` is ``"training"`` or ``(mode, step)``. Checked before every run:
    skipped when the time of the step's last run (at this size or the last
    one measured, scaled linearly to ``n_samples``) would end it past
    ``--deadline`` seconds from the start; the rounds already run make its row.
    """
    if args.deadline is None or key not in args.measured:
        return None
    n, seconds = args.measured[key]
    estimate = seconds * n_samples / n
    left = args.deadline - (time.perf_counter() - args.start)
    if estimate <= left:
        return None
    return f"skipped: about {estimate:.0f} s expected, {max(left, 0):.0f} s left"


class DeviceMemory:
    """Peak GPU memory allocated by torch inside the block (0 on a CPU)."""

    def __init__(self, device: str):
        self.cuda = torch.device(device).type == "cuda"
        self.peak = 0

    def __enter__(self):
        if self.cuda:
            torch.cuda.reset_peak_memory_stats()
        return self

    def __exit__(self, *exc):
        if self.cuda:
            self.peak = torch.cuda.max_memory_allocated()


def warm_up(args) -> None:
    """Pay the process's one-time costs unmeasured, at :data:`WARM_UP_SIZE`.

    The first training, density and search of a process took 0.5 to 1 s more
    than the same calls after them (imports, first allocations, FAISS):
    timed once, they lowered the growth exponents of training, of the one
    audit and of the direct rows. A small audit of every analysis, in each
    mode, and the direct calls run first.
    """
    direct_rows(WARM_UP_SIZE, args)
    X, y, net = dataset_and_net(WARM_UP_SIZE, args)
    for mode in args.modes:
        audit(
            net,
            X,
            y,
            cv=args.folds,
            analyses=args.analyses,
            scale_threshold=mode_thresholds(args)[mode],
            options=memory_options(args.analyses, args.max_memory),
        )
    print("  warmed up", flush=True)


def direct_rows(n_samples, args):
    """Soft density and FAISS neighbours called directly, on two folds."""
    X, _ = synthetic(n_samples)
    torch.manual_seed(0)
    module = MLP(N_FEATURES, N_CLASSES).eval()
    half = n_samples // 2
    folds = [(X[:half], X[half:]), (X[half:], X[:half])]
    estimators = dict(
        density=lambda: GradientDensityEstimator(module, method="soft"),
        neighbors=lambda: NetworkNeighbors(
            module,
            algorithm="faiss",
            n_components="auto",
            search_components=SEARCH_COMPONENTS,
            random_state=0,
        ),
    )
    queries = dict(
        density=lambda e, Q: e.neighbor_counts(Q),
        neighbors=lambda e, Q: e.most_similar(Q),
    )
    rows = []
    for name, make in estimators.items():
        start = time.perf_counter()
        with PeakMemory() as memory:
            for reference, query in folds:
                queries[name](make().fit(reference), query)
        seconds = time.perf_counter() - start
        rows.append(dict(step=name, seconds=seconds, mib=memory.added / 2**20))
        print(f"  N={n_samples} direct {name}: {seconds:.1f} s", flush=True)
    return rows


def exponent(times: dict, slowest: dict | None = None) -> str:
    """Growth exponent between the smallest and largest sizes measured.

    With the slowest runs' times too, the range of exponents that any
    fastest or slowest run of each end gives follows in brackets.
    """
    sizes = sorted(n for n, t in times.items() if t is not None)
    if len(sizes) < 2 or min(times[sizes[0]], times[sizes[-1]]) <= 0:
        return "n/a"
    small, large = sizes[0], sizes[-1]

    def value(t_small, t_large):
        return math.log(t_large / t_small) / math.log(large / small)

    text = f"{value(times[small], times[large]):.2f}"
    if slowest is not None and None not in (slowest[small], slowest[large]):
        low = value(slowest[small], times[large])
        high = value(times[small], slowest[large])
        text += f" [{low:.2f} to {high:.2f}]"
    return f"{text} ({small:,} to {large:,})"


def markdown_table(header, rows) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(v) for v in row) + " |" for row in rows]
    return lines


MODES = dict(
    auto="as the audit runs by default (the linear-cost methods past the "
    "scale threshold)",
    scaled="with the linear-cost methods at every size (`scale_threshold=1`)",
)


def mode_tables(results, mode, threshold, analyses, repeat) -> list[str]:
    """The tables of seconds, memory and methods of one mode."""
    steps = ["training", *analyses]
    title = MODES[mode].replace("the scale threshold", f"{threshold:,}")
    runs = (
        ""
        if repeat == 1
        else f"; analyses: the fastest of {repeat} runs, then the slowest; in "
        "brackets, the lowest and highest growth exponents these runs give"
    )
    lines = [f"## Audit {title}", "", f"Seconds per step (both folds{runs}):", ""]
    sizes = sorted(results)
    seconds, slowest = (
        {step: {n: _value(results[n], step, key) for n in sizes} for step in steps}
        for key in ("seconds", "slowest")
    )
    rows = [
        [
            step,
            *(_spread(seconds[step][n], slowest[step][n]) for n in sizes),
            exponent(seconds[step], slowest[step] if repeat > 1 else None),
        ]
        for step in steps
    ]
    totals = {n: _total(results[n]) for n in sizes}
    rows.append(
        [
            "**total** (each analysis alone, training included)",
            *(_fmt(totals[n]) for n in sizes),
            exponent(totals),
        ]
    )
    one = {
        key: {n: _value(results[n], ONE_AUDIT, key) for n in sizes}
        for key in ("seconds", "slowest")
    }
    together = any(t is not None for t in one["seconds"].values())
    if together:
        rows.append(
            [
                f"**{ONE_AUDIT}** (training included)",
                *(_spread(one["seconds"][n], one["slowest"][n]) for n in sizes),
                exponent(one["seconds"], one["slowest"] if repeat > 1 else None),
            ]
        )
    header = ["step", *(f"N={n:,}" for n in sizes), "growth exponent"]
    lines += markdown_table(header, rows)
    lines += [
        "",
        "Peak memory added per step (MiB of resident memory above its level at "
        "the step's start; the steps run one after another in one process, and "
        "memory an earlier step freed but the allocator kept is reused without "
        "showing here: lower bounds, lower for later steps):",
        "",
    ]
    if together:
        steps.append(ONE_AUDIT)
    rows = [
        [step, *(_fmt(_value(results[n], step, "mib")) for n in sizes)]
        for step in steps
    ]
    lines += markdown_table(["step", *(f"N={n:,}" for n in sizes)], rows)
    if any(r.get("gpu_mib") for n in sizes for r in results[n]):
        lines += ["", "Peak GPU memory allocated per step (MiB):", ""]
        rows = [
            [step, *(_fmt(_value(results[n], step, "gpu_mib")) for n in sizes)]
            for step in steps
        ]
        lines += markdown_table(["step", *(f"N={n:,}" for n in sizes)], rows)
    lines += ["", "Method each analysis used (recall of the neighbours):", ""]
    rows = [
        [f"N={n:,}", r["step"], r["method"], _fmt(r.get("recall"), 3)]
        for n in sizes
        for r in results[n]
        if (r["step"] != "training" or "method" in r) and r["step"] != ONE_AUDIT
    ]
    lines += markdown_table(["size", "analysis", "method", "recall"], rows)
    return lines + [""]


DATA = dict(
    mlp=f"Synthetic data: `make_classification`, {N_FEATURES} features",
    resnet18="Synthetic CIFAR-sized images (3 x 32 x 32, see `images`)",
)
NETS = dict(
    mlp="built-in MLP (one hidden layer of 64), plain SGD",
    resnet18="ResNet-18 from a `transformers` config (11.2 M parameters), Adam",
)


def machine(device: str) -> str:
    """The processor, and the GPU's name when the device is one."""
    cpu = platform.processor() or platform.machine()
    if torch.device(device).type != "cuda":
        return cpu
    return f"{torch.cuda.get_device_name(device)} (GPU) with {cpu}"


def page(results, direct, args, loads, wall) -> str:
    lines = [
        "# Audit at scale: time and peak memory per analysis",
        "",
        f"**{args.label}**",
        "",
        "Written by `benchmarks/bench_audit.py` (see its docstring for the method).",
        f"{DATA[args.model]}, {N_CLASSES} classes; {NETS[args.model]}, "
        f"{args.epochs} epochs, {args.folds}-fold audit, "
        f"`scale_threshold={args.scale_threshold}` (training examples per fold). "
        "Held-out accuracy of the trained folds: "
        + ", ".join(
            f"{accuracy:.3f} at N={n:,}"
            for n, rows in sorted(results.items())
            if (accuracy := _value(rows[args.modes[0]], "training", "accuracy"))
        )
        + ".",
        "",
        f"Machine: {machine(args.device)}, "
        f"{os.cpu_count()} CPUs, torch {torch.__version__} with "
        f"{torch.get_num_threads()} threads, scikit-learn {sklearn.__version__}, "
        f"Python {platform.python_version()}. Load average (1, 5, 15 min) at "
        f"the start: {loads[0]}; at the end: {loads[1]}. Total wall time of the "
        f"benchmark: {wall:.0f} s.",
        "",
        "Command:",
        "",
        f"    OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', '?')} "
        f"python benchmarks/bench_audit.py {args.command}",
        "",
    ]
    for mode in args.modes if results else ():
        per_size = {n: rows[mode] for n, rows in results.items()}
        lines += mode_tables(
            per_size, mode, args.scale_threshold, args.analyses, args.repeat
        )
    if direct:
        lines += [
            "",
            "## Linear-cost methods called directly (two folds, seconds / MiB)",
            "",
            "`GradientDensityEstimator(method='soft')` and "
            "`NetworkNeighbors(algorithm='faiss')` as the audit sets it past its "
            "threshold (index 'Flat' over the sketches' "
            f"{SEARCH_COMPONENTS} principal components, `n_components='auto'`), "
            "fit on one half and queried with the other, "
            "both ways.",
            "",
        ]
        dsizes = sorted(direct)
        rows = []
        for step in ("density", "neighbors"):
            t = {n: _value(direct[n], step, "seconds") for n in dsizes}
            rows.append(
                [
                    step,
                    *(
                        f"{_fmt(t[n])} s / {_fmt(_value(direct[n], step, 'mib'))}"
                        for n in dsizes
                    ),
                    exponent(t),
                ]
            )
        header = ["method", *(f"N={n:,}" for n in dsizes), "growth exponent"]
        lines += markdown_table(header, rows)
    return "\n".join(lines) + "\n"


def _total(rows):
    """Seconds of all steps each run alone, or None when one was skipped."""
    seconds = [row.get("seconds") for row in rows if row["step"] != ONE_AUDIT]
    return None if None in seconds else sum(seconds)


def _value(rows, step, key):
    for row in rows:
        if row["step"] == step:
            return row.get(key)
    return None


def _fmt(value, digits=1):
    return "" if value is None else f"{value:.{digits}f}"


def _spread(fastest, slowest):
    """``fastest`` seconds, then ``slowest`` when the runs differ."""
    if slowest is None or _fmt(slowest) == _fmt(fastest):
        return _fmt(fastest)
    return f"{_fmt(fastest)}, {_fmt(slowest)}"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="*", default=[5000, 20000, 50000])
    parser.add_argument(
        "--direct-sizes", type=int, nargs="*", default=[5000, 20000, 50000, 200000]
    )
    parser.add_argument("--scale-threshold", type=int, default=20_000)
    parser.add_argument("--modes", nargs="*", choices=tuple(MODES), default=list(MODES))
    parser.add_argument(
        "--analyses", nargs="*", choices=ANALYSES, default=list(ANALYSES)
    )
    parser.add_argument("--model", choices=tuple(NETS), default="mlp")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--folds", type=int, default=2)
    parser.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="runs of each analysis; the fastest is reported",
    )
    parser.add_argument(
        "--deadline",
        type=float,
        default=None,
        help="skip steps expected to end later than this many seconds",
    )
    parser.add_argument(
        "--max-memory",
        type=int,
        default=None,
        help="max_memory (bytes) of the analyses that take it; default 2 GiB",
    )
    parser.add_argument(
        "--one-audit",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also run all analyses in one audit",
    )
    parser.add_argument(
        "--label",
        default="unlabelled run",
        help="the page's first line: what ran and the machine's load, e.g. "
        "'quiet machine (nothing else running), full run'",
    )
    parser.add_argument(
        "--out",
        default=Path(__file__).resolve().parent.parent / "docs" / "benchmarks-audit.md",
    )
    args = parser.parse_args()
    args.command = " ".join(
        [
            "--sizes",
            *map(str, args.sizes),
            "--direct-sizes",
            *map(str, args.direct_sizes),
            "--scale-threshold",
            str(args.scale_threshold),
            "--modes",
            *args.modes,
            "--analyses",
            *args.analyses,
            "--model",
            args.model,
            "--device",
            args.device,
            "--epochs",
            str(args.epochs),
            "--folds",
            str(args.folds),
            "--repeat",
            str(args.repeat),
            *(["--deadline", str(args.deadline)] if args.deadline else []),
            *(["--max-memory", str(args.max_memory)] if args.max_memory else []),
            *([] if args.one_audit else ["--no-one-audit"]),
            "--label",
            repr(args.label),
        ]
    )
    start, loads = time.perf_counter(), [load_average()]
    args.start, args.measured = start, {}
    results, direct = {}, {}

    def write():  # after every size, so that an interrupted run leaves a page
        ends = [*loads, load_average()]
        text = page(results, direct, args, ends, time.perf_counter() - start)
        write_page(args.out, text)
        return text

    warm_up(args)
    for n in args.direct_sizes:
        direct[n] = direct_rows(n, args)
        write()
    for n in args.sizes:
        results[n] = {mode: [] for mode in args.modes}
        audit_rows(n, args, results[n], write)
    print(write())


if __name__ == "__main__":
    main()
