"""Throughput on a GPU: ResNet-18 at 32 x 32, N = 10 000 (run where CUDA exists).

Measures, in samples per second:

* sketched whitened features, ``gradient_features(n_components=4096)``, for
  one output and for the 10 logits;
* exact kernel rows: 512 queries against the N reference inputs (the reference
  factors of ResNet-18 do not fit in memory, so they are recomputed per block:
  this is the streaming regime);
* the forward + backward floor over the same batches.

Prints a Markdown table and writes it to ``docs/benchmarks-gpu.md``.

Usage: ``python benchmarks/bench_gpu.py [--device cuda] [--n 10000]``.
"""

import argparse
import time
from pathlib import Path

import torch
from models import resnet18, with_running_statistics

from sksim import gradient_features, network_similarity

HERE = Path(__file__).resolve().parent


def timed(fn, device):
    """Seconds and peak added device memory (GiB) of one call."""
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        start_memory = torch.cuda.memory_allocated()
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    if device.type != "cuda":
        return seconds, float("nan")
    return seconds, (torch.cuda.max_memory_allocated() - start_memory) / 2**30


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--n", type=int, default=10000)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument(
        "--max-memory", type=float, default=24.0, help="sksim's max_memory, GiB"
    )
    parser.add_argument("--out", default=HERE.parent / "docs" / "benchmarks-gpu.md")
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.manual_seed(0)
    X = torch.randn(args.n, 3, 32, 32, device=device)
    module = with_running_statistics(resnet18().to(device), X)
    b, memory = args.batch_size, int(args.max_memory * 2**30)

    def floor():
        for start in range(0, args.n, b):
            module.zero_grad(set_to_none=True)
            module(X[start : start + b])[:, 0].sum().backward()

    def features(output):
        return lambda: gradient_features(
            module,
            X,
            n_components=4096,
            output=output,
            batch_size=b,
            random_state=0,
            max_memory=memory,
        )

    runs = {
        "forward+backward floor": (floor, args.n),
        "sketched features (k = 4096), 1 output": (features(0), args.n),
        "sketched features (k = 4096), 10 logits": (features("logits"), args.n),
        "exact kernel rows (512 x N), 1 output": (
            lambda: network_similarity(
                module, X[:512], X, output=0, batch_size=b, max_memory=memory
            ),
            args.n,
        ),
    }
    timed(features(0), device)  # warm up
    lines = [
        "| measurement | time (s) | samples/s | peak added GPU memory (GiB) |",
        "| --- | --- | --- | --- |",
    ]
    for name, (fn, count) in runs.items():
        seconds, peak = timed(fn, device)
        lines.append(f"| {name} | {seconds:.2f} | {count / seconds:.0f} | {peak:.1f} |")
        print(lines[-1], flush=True)
    machine = (
        torch.cuda.get_device_name(device) if device.type == "cuda" else device.type
    )
    header = (
        "# GPU throughput\n\nProduced by `python benchmarks/bench_gpu.py` on "
        f"{machine}, torch {torch.__version__}, {time.strftime('%Y-%m-%d')}: "
        f"ResNet-18 (11.2 M parameters) on N = {args.n} random 3 x 32 x 32 "
        f"inputs, batch_size={b}, max_memory={args.max_memory:g} GiB, one call "
        "each after a warm-up.\n\n"
    )
    Path(args.out).write_text(header + "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
