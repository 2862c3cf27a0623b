"""Results from the device into NumPy arrays."""

import numpy as np
import pytest
import torch

from sksim._engine import transfer


@pytest.mark.parametrize("device", ["cpu", "cuda"])
def test_results_reach_the_host_intact(device, monkeypatch):
    if device == "cuda" and not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    monkeypatch.setattr(transfer, "STAGING_BYTES", 3 * 7 * 8)  # 3 rows at a time
    tensor = torch.randn(10, 7, dtype=torch.float64, device=device)
    out = np.zeros((10, 9))
    transfer.copy_to_host(out[:, 1:8], tensor)  # a strided view
    np.testing.assert_array_equal(out[:, 1:8], tensor.cpu().numpy())
    assert not out[:, [0, 8]].any()
    np.testing.assert_array_equal(transfer.to_host(tensor), tensor.cpu().numpy())
