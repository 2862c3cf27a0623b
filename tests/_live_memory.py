"""Peak bytes of what a block of code holds: NumPy arrays and torch tensors."""

import tracemalloc
import weakref

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves


class LiveBytes(TorchDispatchMode):
    """The peak of the bytes of live arrays and tensors made inside the block.

    NumPy's arrays are traced by ``tracemalloc``; the storages of the tensors
    that torch's operators make are counted from their allocation until they
    are freed, those over NumPy's memory (not resizable) aside. The peak is
    taken when a tensor is made, with the arrays then traced.
    """

    def __enter__(self):
        self.now = self.peak = 0
        self.owners = {}
        tracemalloc.start()
        return super().__enter__()

    def __exit__(self, *exc):
        tracemalloc.stop()
        return super().__exit__(*exc)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for tensor in tree_leaves(out):
            if isinstance(tensor, torch.Tensor) and tensor.layout == torch.strided:
                self._count(tensor.untyped_storage())
        self.peak = max(self.peak, self.now + tracemalloc.get_traced_memory()[0])
        return out

    def _count(self, storage):
        key = storage.data_ptr()
        if not storage.nbytes() or not storage.resizable() or key in self.owners:
            return
        self.owners[key] = storage.nbytes()
        self.now += storage.nbytes()
        weakref.finalize(storage, self._release, key)

    def _release(self, key):
        self.now -= self.owners.pop(key)
