"""Peak memory of live tensors in one audit step of a ResNet-18, on any device.

Counts the bytes of every tensor storage that the step makes, from its
allocation until it is freed (a ``TorchDispatchMode`` sees the outputs of
every operator; storages over the same memory count once), the way
``torch.cuda.max_memory_allocated`` counts a GPU's allocations, but on the CPU
as well: where no GPU is at hand, the count stands for the device memory the
step would take. Arrays NumPy makes are not counted, unless a tensor is made
over them. On a GPU the two are printed side by side, so that one run
calibrates the count.

The steps, each in its own process (run the script once per step), on
untrained ResNet-18 (from a ``transformers`` config, 10 logits) and the
synthetic CIFAR-sized images of ``bench_audit.images``, with ``max_memory``
as given (default: sksim's, 2 GiB):

* ``density``: ``GradientDensityEstimator(method="soft")`` fitted on ``--n``
  images, then the counts of ``--n`` others;
* ``neighbors``: ``NetworkNeighbors`` as the audit sets it at scale (FAISS over
  sketches of ``n_components="auto"``, 64 principal components), fitted on
  ``--n`` images with the recall measured on 200 others, then queried with
  ``--n`` others;
* ``denoising``: ``SelfDenoisingAnalysis`` as the audit sets it: 500 of the
  ``--n`` images (all of them if fewer), each against all ``--n``, with the
  ``"cosine_pos_pow"`` weights of the first 9 softmax probabilities.

Usage: ``OMP_NUM_THREADS=2 python benchmarks/bench_tensor_peak.py {density,
neighbors,denoising} [--n 1000] [--device cpu] [--max-memory BYTES]``.
"""

from __future__ import annotations

import argparse
import time
import warnings
import weakref

import numpy as np
import torch
from bench_audit import images
from models import transformers_resnet18
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from sksim import GradientDensityEstimator, NetworkNeighbors, SelfDenoisingAnalysis
from sksim._engine.jacobian import DEFAULT_MAX_MEMORY
from sksim.audit.analyses.denoising import free_probabilities


class LiveTensors(TorchDispatchMode):
    """Bytes of the tensor storages made inside the block: now, and the peak."""

    def __init__(self):
        super().__init__()
        self.now = self.peak = 0
        self.owners = {}  # (device, address) -> [bytes, live storage objects]

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for tensor in tree_leaves(out):
            if isinstance(tensor, torch.Tensor) and tensor.device.type != "meta":
                for part in _parts(tensor):
                    self._count(part.untyped_storage())
        return out

    def _count(self, storage):
        if not storage.nbytes():
            return
        key = (str(storage.device), storage.data_ptr())
        entry = self.owners.setdefault(key, [storage.nbytes(), set()])
        if id(storage) in entry[1]:
            return
        if not entry[1]:
            self.now += entry[0]
            self.peak = max(self.peak, self.now)
        entry[1].add(id(storage))
        weakref.finalize(storage, self._release, key, id(storage))

    def _release(self, key, owner):
        entry = self.owners[key]
        entry[1].discard(owner)
        if not entry[1]:
            self.now -= entry[0]
            del self.owners[key]


def _parts(tensor: torch.Tensor) -> tuple:
    """The strided tensors that hold ``tensor``: itself, or a sparse one's parts."""
    if tensor.layout == torch.strided:
        return (tensor,)
    if tensor.layout == torch.sparse_coo:
        return tensor._indices(), tensor._values()
    return tensor.crow_indices(), tensor.col_indices(), tensor.values()


def step(name: str, n: int, device: str, max_memory: int) -> str:
    """Run audit step ``name`` on ``n`` images; what it found, in words."""
    X, y = images(3 * n)
    module = transformers_resnet18().eval().to(device)
    reference, queries = X[:n], X[n : 2 * n]
    common = dict(device=device, max_memory=max_memory)
    if name == "density":
        estimator = GradientDensityEstimator(module, method="soft", **common)
        counts = estimator.fit(reference).neighbor_counts(queries)
        return f"mean soft count {counts.mean():.4f}"
    if name == "neighbors":
        search = NetworkNeighbors(
            module,
            algorithm="faiss",
            n_components="auto",
            search_components=64,
            random_state=0,
            **common,
        )
        search.fit(reference, X_val=X[2 * n : 2 * n + 200])
        search.most_similar(queries)
        return f"recall@5 {search.recall_:.3f}, n_components {search.n_components_}"
    analysis = SelfDenoisingAnalysis(
        module,
        weights="cosine_pos_pow",
        output=free_probabilities,
        max_samples=500,
        random_state=0,
        **common,
    )
    analysis.fit(reference, np.eye(10)[y[:n], :9])
    return f"{len(analysis.sample_indices_)} of {n} examples"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("step", choices=("density", "neighbors", "denoising"))
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--max-memory", type=int, default=DEFAULT_MAX_MEMORY)
    args = parser.parse_args()
    torch.manual_seed(0)
    warnings.simplefilter("ignore")
    cuda = torch.device(args.device).type == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
    start = time.perf_counter()
    with LiveTensors() as live:
        found = step(args.step, args.n, args.device, args.max_memory)
    line = (
        f"{args.step}, n={args.n}, max_memory {args.max_memory / 2**20:.0f} MiB, "
        f"{args.device}: {time.perf_counter() - start:.0f} s, {found}; peak of "
        f"live tensors {live.peak / 2**20:.0f} MiB"
    )
    if cuda:
        allocated = torch.cuda.max_memory_allocated() - before
        line += f"; CUDA max_memory_allocated {allocated / 2**20:.0f} MiB"
    print(line)


if __name__ == "__main__":
    main()
