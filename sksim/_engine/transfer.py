"""Large results from the device into NumPy arrays.

Copying a large CUDA tensor straight into fresh pageable host memory runs at a
fraction of the bus speed (the driver stages it, and every new page faults).
Rows go instead through one small page-locked buffer into the destination.
"""

from __future__ import annotations

import numpy as np
import torch

# Bytes of the page-locked staging buffer.
STAGING_BYTES = 2**23


def copy_to_host(out: np.ndarray, tensor: torch.Tensor) -> np.ndarray:
    """Copy ``tensor`` into the array (or array view) ``out``; return ``out``."""
    target = torch.from_numpy(out)
    if tensor.device.type != "cuda" or len(tensor) == 0:
        target.copy_(tensor)
        return out
    row_bytes = max(1, tensor[0].numel() * tensor.element_size())
    rows = max(1, STAGING_BYTES // row_bytes)
    staging = torch.empty(
        (min(rows, len(tensor)), *tensor.shape[1:]),
        dtype=tensor.dtype,
        device="cpu",
        pin_memory=True,
    )
    for start in range(0, len(tensor), rows):
        part = tensor[start : start + rows]
        staging[: len(part)].copy_(part)
        target[start : start + rows].copy_(staging[: len(part)])
    return out


def to_host(tensor: torch.Tensor) -> np.ndarray:
    """``tensor`` as a NumPy array: shared if on the CPU, else copied rows."""
    if tensor.device.type == "cpu":
        return tensor.numpy()
    dtype = torch.empty(0, dtype=tensor.dtype, device="cpu").numpy().dtype
    return copy_to_host(np.empty(tensor.shape, dtype=dtype), tensor)
