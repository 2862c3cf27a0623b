"""Network inputs: arrays are read in place and left unchanged."""

import warnings

import numpy as np
import pytest
import torch
from _architectures import layer_case

from sksim import network_similarity
from sksim._engine.gram import GramReference
from sksim._engine.jacobian import JacobianEngine


def test_array_inputs_are_read_in_place_and_left_unchanged():
    module, X = layer_case("linear_sequence")
    array = X.numpy().copy()
    frozen = array.copy()
    frozen.flags.writeable = False  # torch warns on sharing such memory: copied
    engine = JacobianEngine(module, batch_size=4)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        K = GramReference(engine, frozen).matrix()
    np.testing.assert_array_equal(GramReference(engine, array).matrix(), K)
    np.testing.assert_array_equal(array, frozen)


def test_read_only_inputs_are_checked_without_torch_warnings():
    """A memory map or a pandas column is read-only: its NaN rows are named
    by NumPy, which torch would have warned about."""
    module, X = layer_case("linear_sequence")
    frozen = X.numpy().copy()
    frozen.flags.writeable = False
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        network_similarity(module, frozen)
    broken = X.numpy().copy()
    broken[[1, 3]] = np.nan
    broken.flags.writeable = False
    with pytest.raises(ValueError, match=r"contains NaN or infinity in rows \[1, 3\]"):
        network_similarity(module, broken)


def test_reversed_views_are_read():
    """``X[::-1]`` and ``np.flip`` are views with negative strides, which
    torch cannot share: they are copied, a batch or the whole array."""
    module, X = layer_case("linear_sequence")
    array = X.numpy().copy()
    expected = network_similarity(module, array[::-1].copy(), batch_size=4)
    np.testing.assert_array_equal(
        network_similarity(module, array[::-1], batch_size=4), expected
    )
    np.testing.assert_allclose(
        network_similarity(module, np.flip(array, axis=0), batch_size=1),
        expected,
        rtol=1e-12,
    )


class _MaskedAttention(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.attn = torch.nn.MultiheadAttention(4, 2, batch_first=True)
        self.head = torch.nn.Linear(4, 2)

    def forward(self, x, key_padding_mask):
        h, _ = self.attn(x, x, x, key_padding_mask=key_padding_mask)
        return self.head(h[:, 0])


def test_inputs_named_as_masks_may_hold_minus_infinity():
    """Torch's additive attention masks are -inf where they mask."""
    torch.manual_seed(0)
    net = _MaskedAttention()
    x = torch.randn(5, 3, 4)
    padded = torch.zeros(5, 3, dtype=torch.bool)
    padded[1, 2:] = padded[3, 1:] = True
    additive = torch.zeros(5, 3).masked_fill(padded, -torch.inf)
    K = network_similarity(net, {"x": x, "key_padding_mask": additive}, batch_size=2)
    expected = network_similarity(net, {"x": x, "key_padding_mask": padded})
    np.testing.assert_allclose(K, expected, rtol=1e-6)
    for X, name in [
        ({"x": x, "key_padding_mask": additive.masked_fill(padded, torch.nan)}, "key_"),
        (
            {
                "x": x.masked_fill(padded[..., None], -torch.inf),
                "key_padding_mask": padded,
            },
            "x",
        ),
    ]:
        with pytest.raises(
            ValueError, match=f"Input {name}.*NaN or infinity in rows \\[1, 3\\]"
        ):
            network_similarity(net, X)
