"""Digests of tensors' contents, to tell whether weights changed."""

from __future__ import annotations

import hashlib
import pickle
from collections.abc import Container, Iterable

import torch
from torch.nn.parameter import is_lazy


def tensors_digest(
    named: Iterable[tuple[str, torch.Tensor]], unread: Container[str] = ()
) -> str:
    """A digest of named tensors: names, dtypes, shapes, bytes and trainability.

    Equal digests mean equal tensors, wherever they live; uninitialised lazy
    parameters are left out, as are the bytes of the tensors named in
    ``unread``. Other values (a module's extra state in its ``state_dict``)
    count by their pickle, or their repr if they have none.
    """
    digest = hashlib.blake2b(digest_size=16)
    for name, tensor in named:
        if not isinstance(tensor, torch.Tensor):
            digest.update(f"{name} {_value_bytes(tensor)!r}".encode())
            continue
        if is_lazy(tensor):
            continue
        t = tensor.detach()
        described = (
            f"{name} {t.dtype} {t.layout} {tuple(t.shape)} {tensor.requires_grad}"
        )
        digest.update(described.encode())
        if name not in unread:
            for part in strided_parts(t):
                digest.update(part.reshape(-1).view(torch.uint8).cpu().numpy())
    return digest.hexdigest()


def strided_parts(t: torch.Tensor) -> list[torch.Tensor]:
    """The dense tensors that hold ``t``'s values: itself, or its indices and values.

    A sparse tensor is never made dense: a graph's adjacency would not fit.
    """
    if t.layout == torch.strided:
        return [t.contiguous()]
    coo = t.to_sparse_coo().coalesce()
    return [coo.indices().contiguous(), coo.values().contiguous()]


def _value_bytes(value) -> bytes:
    """``value`` pickled, or its repr where it cannot be."""
    try:
        return pickle.dumps(value)
    except Exception:  # whatever an object that cannot be pickled raises
        return repr(value).encode()
