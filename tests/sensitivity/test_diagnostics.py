"""Channel shuffling and the Laplacian spectrum of filters."""

import numpy as np
import pytest
import torch
from torch import nn

from sksim.sensitivity import filter_laplacian_spectrum, shuffle_conv_input_channels
from sksim.sensitivity.diagnostics import grid_laplacian


def test_shuffle_permutes_each_filter_independently():
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 6, 3),
        nn.ReLU(),
        nn.Conv2d(6, 5, 3),
        nn.Flatten(),
        nn.LazyLinear(2),
    )
    net(torch.zeros(1, 3, 8, 8))
    before = {k: v.clone() for k, v in net.state_dict().items()}
    shuffled = shuffle_conv_input_channels(net, random_state=0)
    for k, v in net.state_dict().items():  # original untouched
        assert torch.equal(v, before[k])
    for idx in (0, 2):
        w, ws = net[idx].weight, shuffled[idx].weight
        perms = set()
        for o in range(w.shape[0]):
            # each filter's slices are a permutation of the original slices
            match = [
                int(
                    np.argmin(
                        [
                            (ws[o, i] - w[o, j]).abs().sum().item()
                            for j in range(w.shape[1])
                        ]
                    )
                )
                for i in range(w.shape[1])
            ]
            assert sorted(match) == list(range(w.shape[1]))
            assert torch.equal(ws[o], w[o, match])
            perms.add(tuple(match))
        assert len(perms) > 1  # independent permutations per filter
        assert torch.equal(shuffled[idx].bias, net[idx].bias)
    assert torch.equal(shuffled[4].weight, net[4].weight)
    again = shuffle_conv_input_channels(net, random_state=0)
    assert torch.equal(again[2].weight, shuffled[2].weight)


def test_grid_laplacian_and_spectrum_against_brute_force():
    lap = grid_laplacian(3, 3)
    assert np.allclose(lap, lap.T) and np.allclose(lap.sum(1), 0)
    assert lap[4, 4] == 4 and lap[0, 0] == 2 and lap[0, 1] == -1 and lap[0, 4] == 0
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(2, 3, 3), nn.ReLU(), nn.Conv2d(3, 2, (2, 3)))
    spec = filter_laplacian_spectrum(net)
    assert set(spec["layer"]) == {"0", "2"}
    for name, conv in (("0", net[0]), ("2", net[2])):
        rows = spec[spec.layer == name]
        assert rows["energy"].sum() == pytest.approx(1.0, rel=1e-12)
        kh, kw = conv.weight.shape[-2:]
        vals, vecs = np.linalg.eigh(grid_laplacian(kh, kw))
        w = conv.weight.detach().double().numpy().reshape(-1, kh * kw)
        total = (w**2).sum()
        for value, energy in zip(rows["eigenvalue"], rows["energy"], strict=True):
            sel = np.isclose(vals, value, atol=1e-6)
            brute = sum(
                float((w @ vecs[:, m]) @ (w @ vecs[:, m])) for m in np.flatnonzero(sel)
            )
            assert energy == pytest.approx(brute / total, rel=1e-9)
    # a checkerboard filter puts all its energy on the largest eigenvalue
    conv = nn.Conv2d(1, 1, 2, bias=False)
    with torch.no_grad():
        conv.weight.copy_(torch.tensor([[[[1.0, -1.0], [-1.0, 1.0]]]]))
    spec = filter_laplacian_spectrum(conv)
    assert spec["eigenvalue"].tolist() == [0.0, 2.0, 4.0]
    np.testing.assert_allclose(spec["energy"], [0, 0, 1], atol=1e-12)
    with pytest.raises(ValueError, match="no torch.nn.Conv2d layer"):
        filter_laplacian_spectrum(nn.Linear(2, 2))
