"""Exact Gram of per-sample gradients: sksim against its peers, side by side.

Runs, in one process and alternating, for each case:

* ``sksim``: ``network_similarity(kind="ntk")`` (and ``"cosine"`` for d = 10);
* ``vmap``: ``torch.func`` ``vmap(grad)`` per-sample gradients, then ``G G^T``;
* ``nngeometry``: ``GramMatrix`` (if installed; ``pip install --no-deps nngeometry``);
* ``floor``: one forward and backward pass over the same batches, keeping
  activations: no method that needs per-sample gradients can be faster.

It reports the median wall time of single calls (alternating methods; three
or more per method, up to 40 while a method's calls add up to less than 3 s), ratios to
sksim, the peak memory added during one more call of each (resident memory on
the CPU, allocated GPU memory on CUDA), and the largest error against a float64
oracle on the leading block, then writes a Markdown table to
``docs/benchmarks.md`` (``docs/benchmarks-cuda.md`` with ``--device cuda``).

Usage: ``python benchmarks/bench_kernel.py [--quick] [--device cuda] [--out PATH]``.
"""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import statistics
import sys
import threading
import time
from functools import partial
from pathlib import Path

import numpy as np
import torch
from models import (
    cnn,
    mlp,
    small_resnet,
    transformers_resnet18,
    with_running_statistics,
)
from pages import write_page
from torch.func import functional_call, grad, vmap

from sksim import network_similarity

HERE = Path(__file__).resolve().parent


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def synchronize(device: torch.device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class PeakGPUMemory:
    """Peak allocated CUDA memory above the starting point."""

    def __init__(self, device):
        self.device = device

    def __enter__(self):
        synchronize(self.device)
        torch.cuda.reset_peak_memory_stats(self.device)
        self.start = torch.cuda.memory_allocated(self.device)
        return self

    def __exit__(self, *exc):
        synchronize(self.device)
        self.added = torch.cuda.max_memory_allocated(self.device) - self.start


class PeakMemory:
    """Peak resident memory above the starting point, sampled every 5 ms."""

    def __enter__(self):
        self.start = self.peak = _rss()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self):
        while not self._stop.wait(0.005):
            self.peak = max(self.peak, _rss())

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _rss())

    @property
    def added(self) -> int:
        return self.peak - self.start


def scalar(module):
    return lambda x: module(x)[:, :1]


def vmap_gram(module, X, output, batch_size):
    params = {n: p.detach() for n, p in module.named_parameters()}

    def f(p, x):
        out = functional_call(module, p, (x.unsqueeze(0),))
        return out[0, 0] if output == 0 else out[0].sum()

    per_sample = vmap(grad(f), in_dims=(None, 0))
    rows = []
    for start in range(0, len(X), batch_size):
        g = per_sample(params, X[start : start + batch_size])
        rows.append(torch.cat([v.reshape(v.shape[0], -1) for v in g.values()], dim=1))
    G = torch.cat(rows)
    return (G @ G.T).cpu().numpy()


def nngeometry_gram(module, X, batch_size):
    from nngeometry import GramMatrix
    from torch.utils.data import DataLoader, TensorDataset

    loader = DataLoader(TensorDataset(X), batch_size=batch_size)
    gram = GramMatrix(module, loader, function=lambda x: module(x)[:, :1])
    return gram.to_torch()[0, :, 0, :].cpu().numpy()


def floor(module, X, batch_size):
    for start in range(0, len(X), batch_size):
        module.zero_grad(set_to_none=True)
        module(X[start : start + batch_size])[:, 0].sum().backward()
    synchronize(X.device)


def oracle(module, X):
    """float64 Gram of scalar-output gradients, one sample at a time."""
    double = _double(module)
    rows = []
    for x in X.cpu().double():
        out = double(x[None])[0, 0]
        g = torch.autograd.grad(out, list(double.parameters()))
        rows.append(torch.cat([t.reshape(-1) for t in g]))
    G = torch.stack(rows)
    return (G @ G.T).numpy()


def _double(module):
    import copy

    return copy.deepcopy(module).cpu().double().eval()


def alternating_timings(methods: dict, repeats: int, fast_runs=40, fast_total=3.0):
    """Wall times of single calls, methods alternating round by round.

    Every call is a fresh, single call, as a user makes it. Each method runs
    ``repeats`` times, and up to ``fast_runs`` times while its calls add up to
    less than ``fast_total`` seconds, so fast methods get stable medians.
    Returns the times and each method's last result.
    """
    timings = {m: [] for m in methods}
    results = {}

    def wanted(m):
        runs = len(timings[m])
        return runs < repeats or (runs < fast_runs and sum(timings[m]) < fast_total)

    while any(wanted(m) for m in methods):
        for method, call in methods.items():
            if wanted(method):
                start = time.perf_counter()
                results[method] = call()
                timings[method].append(time.perf_counter() - start)
    return timings, results


def run_case(name, module, X, methods, repeats, batch_size, n_check=128):
    module.eval()
    calls = {m: partial(fn, module, X, batch_size) for m, fn in methods.items()}
    timings, results = alternating_timings(calls, repeats)
    memory = {}
    for method, call in calls.items():  # apart, so that sampling does not slow
        with PeakGPUMemory(X.device) if X.is_cuda else PeakMemory() as peak:
            call()
        memory[method] = peak.added
    exact = oracle(module, X[:n_check])
    rows = []
    base = statistics.median(timings["sksim"])
    for method in methods:
        t = statistics.median(timings[method])
        result = results[method]
        error = (
            np.abs(result[:n_check, :n_check] - exact).max() / np.abs(exact).max()
            if result is not None
            else float("nan")
        )
        rows.append((name, len(X), method, t, t / base, memory[method] / 2**20, error))
    return rows


def _methods(output=0, with_nngeometry=True):
    methods = {
        "sksim": lambda m, X, b: network_similarity(
            m, X, kind="ntk", output=output, batch_size=b
        ),
        "sksim default": lambda m, X, b: network_similarity(
            m, X, kind="ntk", output=output
        ),
        "vmap": lambda m, X, b: vmap_gram(m, X, output, b),
        "floor": lambda m, X, b: floor(m, X, b),
    }
    if with_nngeometry:
        try:
            import nngeometry  # noqa: F401

            methods["nngeometry"] = lambda m, X, b: nngeometry_gram(m, X, b)
        except ImportError:
            print("nngeometry is not installed: skipped.")
            print("Install it with: pip install --no-deps nngeometry")
    return methods


def multi_output_rows(module, X, repeats, batch_size):
    """Whitened cosine kernel over d = 10 outputs against the scalar NTK."""
    methods = {
        "sksim scalar ntk": lambda: network_similarity(
            module, X, kind="ntk", output=0, batch_size=batch_size
        ),
        "sksim cosine d=10": lambda: network_similarity(
            module, X, kind="cosine", batch_size=batch_size
        ),
    }
    timings, _ = alternating_timings(methods, repeats)
    return {m: statistics.median(t) for m, t in timings.items()}


def pairing_cost(module, d):
    """Multiply-adds per pair of factorised dense layers, ``sum (a + 1 + d o)``."""
    return sum(
        layer.in_features + 1 + d * layer.out_features
        for layer in module.modules()
        if isinstance(layer, torch.nn.Linear)
    )


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small N, one repeat")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", default=None, help="default: docs/benchmarks*.md")
    parser.add_argument(
        "--cases",
        nargs="+",
        default=["mlp", "cnn", "resnet", "resnet18"],
        help="networks to time (the multi-output row comes with mlp)",
    )
    args = parser.parse_args()
    device = torch.device(args.device)
    suffix = "" if device.type == "cpu" else f"-{device.type}"
    out = args.out or HERE.parent / "docs" / f"benchmarks{suffix}.md"
    torch.manual_seed(0)
    repeats = 1 if args.quick else args.repeats
    sizes = (
        {"mlp": (256,), "cnn": (128,), "resnet": (128,), "resnet18": (16,)}
        if args.quick
        else {
            "mlp": (1024, 4096),
            "cnn": (512, 2048),
            "resnet": (512,),
            "resnet18": (64,),
        }
    )
    sizes = {case: n for case, n in sizes.items() if case in args.cases}
    rows = []
    for n in sizes.get("mlp", ()):
        X = torch.randn(n, 784, device=device)
        module = mlp().to(device)
        rows += run_case("MLP 784-256-256-10", module, X, _methods(), repeats, 1024)
    for n in sizes.get("cnn", ()):
        X = torch.randn(n, 1, 28, 28, device=device)
        module = cnn().to(device)
        rows += run_case("CNN conv32-conv64", module, X, _methods(), repeats, 256)
    for n in sizes.get("resnet", ()):
        X = torch.randn(n, 3, 16, 16, device=device)
        module = with_running_statistics(small_resnet().to(device), X)
        rows += run_case("ResNet-8 + BatchNorm", module, X, _methods(), repeats, 128)
    for n in sizes.get("resnet18", ()):
        X = torch.randn(n, 3, 32, 32, device=device)
        module = with_running_statistics(transformers_resnet18().to(device), X)
        methods = _methods(with_nngeometry=False)  # it cannot read this model
        rows += run_case("ResNet-18 (transformers)", module, X, methods, repeats, 32)
    multi, n_multi = None, None
    if "mlp" in sizes:
        n_multi = sizes["mlp"][0]
        X = torch.randn(n_multi, 784, device=device)
        multi = multi_output_rows(mlp().to(device), X, repeats, 1024)
    write_report(rows, multi, n_multi, out, device, repeats)


def _machine(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} (CUDA {torch.version.cuda})"
    processor = platform.processor() or platform.machine()
    return f"{processor}, {torch.get_num_threads()} torch threads"


def write_report(rows, multi, n_multi, path, device, repeats):
    lines = [
        "| network | N | method | median time (s) | ratio to sksim "
        f"| peak added {'GPU memory' if device.type == 'cuda' else 'RSS'} (MiB) "
        "| max rel. error vs float64 |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, n, method, t, ratio, mem, err in rows:
        error = "—" if method == "floor" else f"{err:.1e}"
        lines.append(
            f"| {name} | {n} | {method} | {t:.4f} | {ratio:.3f} | {mem:.0f} | {error} |"
        )
    if multi is not None:
        scalar_time = multi["sksim scalar ntk"]
        lines += [
            "",
            f"Multi-output, MLP, N = {n_multi}: scalar-output NTK {scalar_time:.4f} s, "
            f"whitened cosine over d = 10 outputs {multi['sksim cosine d=10']:.4f} s "
            f"(ratio {multi['sksim cosine d=10'] / scalar_time:.2f}); pairing two "
            f"samples takes {pairing_cost(mlp(), 10) / pairing_cost(mlp(), 1):.2f} "
            "times the multiply-adds with 10 whitened output rows as with one.",
        ]
    table = "\n".join(lines)
    print(table)
    header = (
        f"# Benchmarks ({device.type})\n\nProduced by "
        f"`python benchmarks/bench_kernel.py {shlex.join(sys.argv[1:])}` on "
        f"{_machine(device)}, torch {torch.__version__}, "
        f"{time.strftime('%Y-%m-%d')}. Times are medians of single calls, alternating "
        f"methods in one process (at least {repeats} per method, up to 40 for fast "
        "ones); "
        "'floor' is one forward and backward pass over the same batches. 'sksim' "
        "and the peers take the batch size tuned for each network (the same for "
        "all); 'sksim default' is a call with the library's defaults "
        '(`batch_size="auto"`, measured per network within `max_memory`).\n\n'
    )
    write_page(path, header + table + "\n")


if __name__ == "__main__":
    main()
