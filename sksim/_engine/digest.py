"""Digests of tensors' contents, to tell whether weights changed."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

import torch
from torch.nn.parameter import is_lazy


def tensors_digest(named: Iterable[tuple[str, torch.Tensor]]) -> str:
    """A digest of named tensors: names, dtypes, shapes, bytes and trainability.

    Equal digests mean equal tensors, wherever they live; uninitialised lazy
    parameters are left out.
    """
    digest = hashlib.blake2b(digest_size=16)
    for name, tensor in named:
        if is_lazy(tensor):
            continue
        t = tensor.detach()
        described = f"{name} {t.dtype} {tuple(t.shape)} {tensor.requires_grad}"
        digest.update(described.encode())
        digest.update(t.reshape(-1).view(torch.uint8).cpu().numpy())
    return digest.hexdigest()
