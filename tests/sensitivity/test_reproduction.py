"""Reduced-size reproductions of Tomasini et al. 2023 and Petrini et al. 2021.

The full-size run (2048 images, 32/64/128 channels) is
examples/plot_relative_sensitivity.py; its numbers are in
docs/user_guide/sensitivity.rst.
"""

import numpy as np
import pytest
import torch
from _architectures import three_block_cnn
from sklearn.datasets import load_digits
from torch import nn

from sksim.datasets import make_scale_detection
from sksim.sensitivity import relative_sensitivity


def _train(net, X, y, epochs, lr):
    X, y = torch.as_tensor(X), torch.as_tensor(y)
    opt = torch.optim.Adam(net.parameters(), lr)
    for _ in range(epochs):
        for rows in torch.randperm(len(X)).split(32):
            opt.zero_grad()
            nn.functional.cross_entropy(net(X[rows]), y[rows]).backward()
            opt.step()
    return net.eval()


def _accuracy(net, X, y):
    with torch.no_grad():
        return float((net(torch.as_tensor(X)).argmax(1).numpy() == y).mean())


@pytest.fixture(scope="module")
def one_thread():
    # two pytest-xdist workers share two cores: avoid oversubscription
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def scale_detection_cnns(one_thread):
    # Reduced: 1024 training images and 16/32/64 channels instead of 2048 and
    # 32/64/128 (the example runs the full size); three training seeds.
    X, y = make_scale_detection(1024 + 500, size=16, xi=8, gap=2, random_state=0)
    nets = []
    for seed in range(3):
        torch.manual_seed(seed)
        net = _train(
            three_block_cnn(2, (16, 32, 64)), X[:1024], y[:1024], epochs=20, lr=3e-3
        )
        assert _accuracy(net, X[1024:], y[1024:]) > 0.97
        nets.append(net)
    return nets, X[1024:]


@pytest.mark.slow
def test_scale_detection_cnn_becomes_relatively_stable(scale_detection_cnns):
    nets, X_probe = scale_detection_cnns
    tables = [
        relative_sensitivity(net, X_probe, n_init=10, random_state=0).set_index("net")
        for net in nets
    ]
    init, trained = (
        {q: np.array([t[q][net] for t in tables]) for q in ("D", "G", "R")}
        for net in ("init", "trained")
    )
    # R is of order one at initialisation (Petrini et al. 2021)
    assert np.all((0.3 < init["R"]) & (init["R"] < 3))
    # deformation sensitivity falls with training (noise sensitivity does not
    # reliably rise at this size: see the user guide)
    assert np.all(trained["D"] < 0.4 * init["D"])
    # Tomasini et al. 2023: R_trained < 0.2 R_init, for the typical trained net. Single
    # nets scatter around the threshold, and so does the measured R_init with
    # the draw of its copies (these three nets' ratios 0.10-0.29 over
    # random_state 0-5, geometric means 0.14-0.24; see the docs), so the
    # geometric mean over three training seeds is asserted, and a looser bound
    # for each net.
    ratios = trained["R"] / init["R"]
    assert np.exp(np.log(ratios).mean()) < 0.2
    assert np.all(ratios < 0.3)


@pytest.mark.slow
def test_fully_connected_net_on_smooth_digits_is_not_relatively_stable(
    scale_detection_cnns,
):
    torch.manual_seed(0)
    digits = load_digits()
    images = torch.tensor(digits.images / 16.0, dtype=torch.float32)[:, None]
    images = nn.functional.interpolate(
        images, size=(16, 16), mode="bilinear", align_corners=False
    )
    images = ((images - images.mean()) / images.std()).numpy()
    order = np.random.RandomState(0).permutation(len(images))
    train, probe = order[:1200], order[1200:]
    fc = nn.Sequential(
        nn.Flatten(),
        nn.Linear(256, 128),
        nn.ReLU(),
        nn.Linear(128, 128),
        nn.ReLU(),
        nn.Linear(128, 10),
    )
    fc = _train(fc, images[train], digits.target[train], epochs=10, lr=1e-3)
    assert _accuracy(fc, images[probe], digits.target[probe]) > 0.9
    r_fc = (
        relative_sensitivity(fc, images[probe], n_probe=300, n_init=3, random_state=0)
        .set_index("net")
        .R
    )
    assert r_fc["trained"] > 1.0
    assert r_fc["trained"] > 3 * r_fc["init"]
    cnns, X_probe = scale_detection_cnns
    r_cnn = relative_sensitivity(cnns[0], X_probe, reference=None, random_state=0).R
    assert r_fc["trained"] > r_cnn.iloc[0]
