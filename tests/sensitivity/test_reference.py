"""The reference at initialisation, the spread of R, probes apart from training."""

import copy
import warnings

import numpy as np
import pytest
import torch
from _architectures import image_cnn, pooled_cnn
from skorch import NeuralNetClassifier
from torch import nn

from sksim.datasets import make_scale_detection, scale_detection_perturbation
from sksim.sensitivity import DiffeoSensitivity, relative_sensitivity
from sksim.sensitivity.measure import fresh_copy

COLS = ["D", "G", "R", "deformation", "noise", "denominator"]


def _trained(net):
    """A copy of ``net`` with moved weights, standing for training."""
    trained = copy.deepcopy(net)
    with torch.no_grad():
        for p in trained.parameters():
            p.add_(0.5 * torch.randn_like(p))
    return trained


def _data(n=12):
    return np.random.RandomState(0).rand(n, 2, 8, 8)


@pytest.mark.parametrize("as_module", [False, True])
def test_reference_is_the_given_initial_state(as_module):
    initial, X = image_cnn(pool=False), _data()
    net = _trained(initial)
    reference = initial if as_module else copy.deepcopy(initial.state_dict())
    table = relative_sensitivity(
        net, X, layers=["1", "output"], reference=reference, random_state=3
    )
    alone = relative_sensitivity(
        initial, X, layers=["1", "output"], reference=None, random_state=3
    )
    init = table[table.net == "init"]
    np.testing.assert_allclose(
        init[COLS].to_numpy(), alone[COLS].to_numpy(), rtol=1e-12
    )
    trained = table[table.net == "trained"]
    assert not np.allclose(trained["R"], init["R"])
    # one net: no spread
    np.testing.assert_array_equal(init["R_min"], init["R"])
    np.testing.assert_array_equal(init["R_max"], init["R"])
    assert init["R_gstd"].isna().all()


def test_reference_state_dict_must_fit_the_net():
    with pytest.raises(ValueError, match="reference state_dict does not fit"):
        relative_sensitivity(
            image_cnn(pool=False), _data(), reference={"0.weight": torch.ones(1)}
        )
    with pytest.raises(ValueError, match='reference must be "reinitialized"'):
        relative_sensitivity(image_cnn(pool=False), _data(), reference="init")
    with pytest.raises(ValueError, match='reference must be "reinitialized"'):
        relative_sensitivity(image_cnn(pool=False), _data(), reference=3)


def test_init_rows_report_the_spread_over_reinitialised_copies():
    net, X = image_cnn(pool=False), _data(16)
    table = relative_sensitivity(
        net, X, layers=["1", "output"], n_init=4, random_state=5
    )
    init_seed = np.random.RandomState(5).randint(2**31 - 1)  # not the probe's draws
    rng = np.random.RandomState(init_seed)
    model = copy.deepcopy(net).double()
    per_seed = [
        relative_sensitivity(
            fresh_copy(model, int(seed)),
            X,
            layers=["1", "output"],
            reference=None,
            random_state=5,
        )["R"].to_numpy()
        for seed in rng.randint(2**31 - 1, size=4)
    ]
    init = table[table.net == "init"]
    np.testing.assert_allclose(init["R_min"], np.min(per_seed, 0), rtol=1e-10)
    np.testing.assert_allclose(init["R_max"], np.max(per_seed, 0), rtol=1e-10)
    gstd = np.exp(np.std(np.log(per_seed), axis=0, ddof=1))
    np.testing.assert_allclose(init["R_gstd"], gstd, rtol=1e-10)
    assert (init["R_max"] > init["R_min"]).all() and (init["R_gstd"] > 1).all()
    trained = table[table.net == "trained"]
    np.testing.assert_array_equal(trained["R_min"], trained["R"])


def test_estimator_measures_on_the_probe_set_when_given():
    X, y = make_scale_detection(64, size=8, xi=4, random_state=0)
    X_probe, _ = make_scale_detection(40, size=8, xi=4, random_state=1)
    module = pooled_cnn()
    net = NeuralNetClassifier(module, max_epochs=1, train_split=None, verbose=0)
    est = DiffeoSensitivity(net, n_init=2, statistic="median", random_state=0).fit(
        X, y, X_probe=X_probe
    )
    expected = relative_sensitivity(
        est.net_, X_probe, n_init=2, statistic="median", random_state=0
    )
    np.testing.assert_allclose(est.results_["R"], expected["R"], rtol=1e-12)
    on_train = relative_sensitivity(
        est.net_, X, n_init=2, statistic="median", random_state=0
    )
    assert not np.allclose(est.results_["R"], on_train["R"])
    with pytest.raises(ValueError, match="features"):
        est.fit(X, y, X_probe=X_probe[:, :, :4, :4].reshape(40, 4, 2, 2))


def test_perturbation_of_standardised_images_gives_the_raw_images_numbers():
    X, _ = make_scale_detection(40, size=8, xi=4, random_state=0)
    mean, std = X.mean(), X.std()
    torch.manual_seed(0)
    conv = nn.Sequential(nn.Conv2d(1, 3, 3), nn.Tanh(), nn.Flatten())

    class Standardised(nn.Module):  # the same net, fed standardised images
        def __init__(self):
            super().__init__()
            self.conv = conv

        def forward(self, x):
            return self.conv(x * std + mean)

    raw = relative_sensitivity(
        conv,
        X,
        deformation=scale_detection_perturbation,
        reference=None,
        random_state=0,
    )
    scaled = relative_sensitivity(
        Standardised(),
        (X - mean) / std,
        deformation=scale_detection_perturbation,
        reference=None,
        random_state=0,
    )
    np.testing.assert_allclose(scaled["D"], raw["D"], rtol=1e-9)


def test_numpy_integers_are_accepted():
    net, X = image_cnn(pool=False), _data()
    a = relative_sensitivity(
        net,
        X,
        n_probe=np.int64(10),
        n_init=np.int64(2),
        batch_size=np.int64(4),
        cutoff=np.int64(3),
        random_state=np.int64(0),
    )
    b = relative_sensitivity(
        net, X, n_probe=10, n_init=2, batch_size=4, cutoff=3, random_state=0
    )
    np.testing.assert_allclose(a[COLS].to_numpy(), b[COLS].to_numpy(), rtol=1e-12)


def test_copies_and_shuffles_do_not_change_with_the_deformation():
    """At one random_state every net is compared with the same copies: they
    were drawn after the probe, so another cutoff, a deformation of one's own
    or more copies changed them (the clean spread at init moved 0.102 to 0.153)
    and the shuffled channels."""
    net, X = image_cnn(pool=False), _data(16)

    def own(batch, rng):
        return batch + 0.1 * rng.standard_normal(batch.shape)

    tables = [
        relative_sensitivity(net, X, layers=["1"], random_state=0, shuffled=True, **kw)
        for kw in (dict(cutoff=3), dict(cutoff=4), dict(deformation=own))
    ]
    for table in tables[1:]:  # the clean probe is the same: so is its spread
        for name in ("init", "shuffled", "trained"):
            first = tables[0][tables[0].net == name]["denominator"].to_numpy()
            rows = table[table.net == name]["denominator"].to_numpy()
            np.testing.assert_allclose(rows, first, rtol=1e-12)
    fewer = relative_sensitivity(
        net, X, layers=["1"], n_init=2, random_state=0, shuffled=True
    )
    none = relative_sensitivity(
        net, X, layers=["1"], reference=None, random_state=0, shuffled=True
    )
    shuffled = [
        t[t.net == "shuffled"][COLS].to_numpy() for t in (tables[0], fewer, none)
    ]
    np.testing.assert_allclose(shuffled[1], shuffled[0], rtol=1e-12)
    np.testing.assert_allclose(shuffled[2], shuffled[0], rtol=1e-12)


def test_attention_layers_are_reinitialised_too():
    """nn.MultiheadAttention initialises its projections in
    _reset_parameters: its trained values were kept, with a warning asking
    for a reset_parameters method the user cannot give a torch layer."""

    class Attending(nn.Module):
        def __init__(self):
            super().__init__()
            self.attn = nn.MultiheadAttention(8, 2, batch_first=True)
            self.head = nn.Linear(8, 2)

        def forward(self, x):  # signals (B, 8) as 8 tokens of 1 feature, embedded
            tokens = x[..., None].expand(-1, -1, 8)
            return self.head(self.attn(tokens, tokens, tokens)[0].mean(1))

    torch.manual_seed(0)
    net = Attending()
    with torch.no_grad():
        net.attn.in_proj_weight.fill_(0.5)
    with torch.no_grad():
        net.attn.out_proj.bias.fill_(0.5)
    fresh = fresh_copy(net, seed=0)
    assert not torch.equal(fresh.attn.in_proj_weight, net.attn.in_proj_weight)
    assert not fresh.attn.out_proj.bias.any()  # zeroed after its own reset, as built
    X = np.random.RandomState(0).rand(20, 8)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no parameter kept its trained value
        relative_sensitivity(net, X, n_init=1, n_probe=20, random_state=0)


class HalvedInputs(nn.Module):
    """Halves its inputs, in place (as ``x /= 255``) or not."""

    def __init__(self, in_place: bool):
        super().__init__()
        self.in_place = in_place
        self.conv, self.bn = nn.Conv2d(2, 4, 3), nn.BatchNorm2d(4)
        self.fc = nn.Linear(4 * 36, 2)

    def forward(self, x):
        if self.in_place:
            x /= 2
        else:
            x = x / 2
        return self.fc(torch.tanh(self.bn(self.conv(x))).flatten(1))


def test_a_network_changing_its_inputs_in_place_measures_as_one_that_does_not():
    """The BatchNorm of the re-initialised and shuffled copies was calibrated
    on the probe's clean inputs themselves: each calibration pass halved
    them, and the copies measured after the first one met clean inputs four
    or more times smaller than their deformations (R of 0.43 for 1.0 at the
    input)."""
    torch.manual_seed(0)
    in_place, out_of_place = HalvedInputs(True), HalvedInputs(False)
    out_of_place.load_state_dict(in_place.state_dict())
    X = np.random.RandomState(0).randn(20, 2, 8, 8)
    kwargs = dict(layers=["input", "output"], n_init=2, shuffled=True, random_state=0)
    found = relative_sensitivity(in_place, X, **kwargs)
    expected = relative_sensitivity(out_of_place, X, **kwargs)
    assert set(found["net"]) == {"trained", "init", "shuffled"}
    for column in ("D", "G", "R"):
        np.testing.assert_allclose(found[column], expected[column], rtol=1e-12)
