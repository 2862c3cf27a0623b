"""relative_sensitivity against a brute-force, one-sample-at-a-time oracle."""

import copy

import numpy as np
import pandas as pd
import pytest
import torch
from _architectures import FunctionalConv, image_cnn
from torch import nn

from sksim import NonFiniteNetworkError
from sksim.representations import extract_representations
from sksim.sensitivity import (
    apply_diffeo,
    matched_noise,
    relative_sensitivity,
    sample_diffeo,
    shuffle_conv_input_channels,
)
from sksim.sensitivity.measure import calibrate_batchnorm, fresh_copy


def _data(n=12, seed=0):
    return np.random.RandomState(seed).rand(n, 2, 8, 8).astype(np.float32)


def _oracle(
    module, X, names, seed, statistic="mean", interp="linear", noise_norm="per_sample"
):
    """D, G, R per layer, one sample at a time, pairs by explicit loops."""
    rng = np.random.RandomState(seed)
    X = X.astype(np.float64)
    dx, dy = sample_diffeo(X.shape[-1], 3, delta=1.0, n_fields=len(X), random_state=rng)
    TX = apply_diffeo(X, dx, dy, interp)
    NX = X + matched_noise(X, TX, noise_norm, random_state=rng)
    model = copy.deepcopy(module).double().eval()
    mods = dict(model.named_modules())

    def features(x):
        out = {}
        handles = [
            mods[n].register_forward_hook(
                lambda m, i, o, n=n: out.__setitem__(n, o.detach().clone().ravel())
            )
            for n in names
            if n not in ("input", "output")
        ]
        with torch.no_grad():
            y = model(torch.tensor(x[None]))
        for h in handles:
            h.remove()
        out["input"] = torch.tensor(x).ravel()
        out["output"] = y.ravel()
        return {n: out[n].numpy() for n in names}

    f = [features(x) for x in X]
    ft = [features(x) for x in TX]
    fn = [features(x) for x in NX]
    result = {}
    for name in names:
        a = np.array([v[name] for v in f])
        t = np.array([v[name] for v in ft])
        e = np.array([v[name] for v in fn])
        pairs = [
            ((a[i] - a[j]) ** 2).sum()
            for i in range(len(a))
            for j in range(len(a))
            if i != j
        ]
        if statistic == "mean":
            den = np.mean(pairs)
            tau, eta = ((t - a) ** 2).sum(1).mean(), ((e - a) ** 2).sum(1).mean()
        else:
            den = np.median(pairs)
            tau = np.median((t - a) ** 2, axis=0).sum()
            eta = np.median((e - a) ** 2, axis=0).sum()
        result[name] = (tau / den, eta / den, tau / eta, den)
    return result


@pytest.mark.parametrize("statistic", ["mean", "median"])
@pytest.mark.parametrize("interp", ["linear", "gaussian"])
def test_trained_rows_match_the_oracle(statistic, interp):
    net, X = image_cnn(), _data()
    names = ["input", "0", "1", "3", "output"]
    table = relative_sensitivity(
        net,
        X,
        layers=names,
        reference=None,
        interp=interp,
        statistic=statistic,
        batch_size=5,
        random_state=7,
    )
    assert isinstance(table, pd.DataFrame)
    assert table["layer"].tolist() == names and set(table["net"]) == {"trained"}
    oracle = _oracle(net, X, names, 7, statistic, interp)
    for _, row in table.iterrows():
        np.testing.assert_allclose(
            [row.D, row.G, row.R, row.denominator], oracle[row.layer], rtol=1e-9
        )
    if statistic == "mean":  # matched per-sample norms: R = 1 on the input
        assert table["R"].iloc[0] == pytest.approx(1.0, rel=1e-12)


def test_results_do_not_depend_on_batch_size_and_net_is_untouched():
    net, X = image_cnn(), _data()
    before = copy.deepcopy(net.state_dict())
    a = relative_sensitivity(
        net, X, layers="all", n_init=2, random_state=0, batch_size=4
    )
    b = relative_sensitivity(
        net, torch.tensor(X), layers="all", n_init=2, random_state=0, batch_size=64
    )
    cols = ["D", "G", "R", "denominator"]
    np.testing.assert_allclose(a[cols].to_numpy(), b[cols].to_numpy(), rtol=1e-10)
    for k, v in net.state_dict().items():
        assert torch.equal(v, before[k]) and v.dtype == torch.float32
    # "all": input, leaf modules in execution order, output
    assert a["layer"].tolist()[:7] == ["input", "0", "1", "2", "3", "4", "output"]


class CountsRows(nn.Module):
    """A small CNN recording how many rows each forward pass gets."""

    rows: list[int] = []  # a class attribute: the float64 copies share it

    def __init__(self):
        super().__init__()
        self.net = image_cnn()

    def forward(self, x):
        CountsRows.rows.append(len(x))
        return self.net(x)


@pytest.mark.parametrize(
    "statistic, max_memory", [("mean", 300_000), ("median", 1_200_000)]
)
def test_passes_shrink_within_max_memory_with_the_same_results(statistic, max_memory):
    """Every pass held 3 x batch_size inputs' representations of every layer
    measured, whatever they took (4.7 GiB for a small residual CNN's 48
    layers at the default batch_size)."""
    net, X = CountsRows(), _data(24)
    options = dict(layers="all", n_init=2, random_state=0, statistic=statistic)
    CountsRows.rows.clear()
    free = relative_sensitivity(net, X, max_memory=None, **options)
    assert max(CountsRows.rows) == 3 * 24
    CountsRows.rows.clear()
    bounded = relative_sensitivity(net, X, max_memory=max_memory, **options)
    assert 3 <= max(CountsRows.rows) < 3 * 24
    cols = ["D", "G", "R", "denominator"]
    np.testing.assert_allclose(bounded[cols], free[cols], rtol=1e-10)
    with pytest.raises(MemoryError, match="One probe input, deformed and noisy"):
        relative_sensitivity(net, X, n_probe=4, max_memory=60_000, layers="all")
    kept = "The probe inputs with their deformed and noisy copies" + (
        ", and the median's" if statistic == "median" else " take"
    )
    with pytest.raises(MemoryError, match=kept):
        relative_sensitivity(net, X, max_memory=max_memory // 4, **options)


def test_the_probe_sets_bytes_are_checked_before_they_are_made(monkeypatch):
    """Its deformed and noisy copies were made, and the deformation's
    temporaries (ten times them), before the MemoryError that they took too
    much: 367 MiB above the start for a max_memory of 29 MiB."""
    from sksim.sensitivity import measure

    def deform(*args):
        raise AssertionError("deformed before the probe set was checked")

    monkeypatch.setattr(measure, "deform", deform)
    with pytest.raises(MemoryError, match="The probe inputs with their deformed"):
        relative_sensitivity(image_cnn(), _data(24), max_memory=60_000)


class LargeInside(nn.Module):
    """Two outputs, after a large hidden convolution."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(2, 64, 3, padding=1)
        self.head = nn.Linear(64, 2)

    def forward(self, x):
        return self.head(self.conv(x).mean((2, 3)))


def test_a_large_forward_pass_is_told_to_take_more_memory_alone():
    """Fewer layers or pooling cannot help where the forward pass's largest
    output, not the representations, passes the third of max_memory."""
    with pytest.raises(MemoryError, match=r"unfolded input\), more .*bytes\)\.$"):
        relative_sensitivity(LargeInside(), _data(4), pool="mean", max_memory=200_000)


def test_a_convolutions_unfolded_input_counts_in_a_pass():
    """A float64 convolution on the CPU unfolds its input (channels times the
    kernel's size per position): uncounted, passes took 4.6 times max_memory
    for a CNN of two 5 x 5 convolutions."""
    torch.manual_seed(0)
    wide = nn.Sequential(
        nn.Conv2d(2, 16, 1),
        nn.Conv2d(16, 2, 5, padding=2),
        nn.Flatten(),
        nn.Linear(128, 2),
    )  # one triple: 614 400 bytes unfolded, 24 576 in its largest output
    with pytest.raises(MemoryError, match="a convolution's output and unfolded"):
        relative_sensitivity(wide, _data(12), max_memory=1_500_000)
    relative_sensitivity(wide, _data(12), max_memory=2_000_000)


class DictItems(torch.utils.data.Dataset):
    """Items as a Hugging Face image dataset gives them."""

    def __init__(self, X):
        self.X = X

    def __len__(self):
        return len(self.X)

    def __getitem__(self, i):
        return {"pixel_values": torch.as_tensor(self.X[i]), "labels": 0}


def test_a_dataset_of_dict_items_is_refused_as_a_dict():
    """It met numpy's 'can't convert np.ndarray of type numpy.object_'."""
    with pytest.raises(ValueError, match=r"Dict inputs .*\['labels', 'pixel_values'"):
        relative_sensitivity(image_cnn(), DictItems(_data(6)))


def two_batchnorms():
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Conv2d(2, 4, 3, padding=1),
        torch.nn.BatchNorm2d(4),
        torch.nn.ReLU(inplace=True),
        torch.nn.Conv2d(4, 3, 3, padding=1),
        torch.nn.BatchNorm2d(3),
        torch.nn.Tanh(),
        torch.nn.Flatten(),
        torch.nn.Linear(3 * 64, 3),
    ).double()


def test_batchnorm_calibration_is_that_of_the_whole_probe_set_as_one_batch():
    X = torch.as_tensor(_data(23) * np.arange(1, 24)[:, None, None, None])
    whole = two_batchnorms().train()
    with torch.no_grad():
        expected = whole(X)  # each layer normalises with the batch's statistics
    for size in (1, 5, 23):
        net = two_batchnorms()
        calibrate_batchnorm(net, lambda size=size: list(torch.split(X, size)))
        assert net.training  # its modes are restored
        with torch.no_grad():
            net.eval()
            np.testing.assert_allclose(net(X), expected, rtol=1e-9, atol=1e-12)


def test_init_rows_do_not_depend_on_batch_size():
    net, X = two_batchnorms().float(), _data(23) * np.arange(1, 24)[:, None, None, None]
    common = dict(layers=["1", "4", "output"], n_init=2, random_state=0)
    tables = [
        relative_sensitivity(net, X.astype(np.float32), batch_size=size, **common)
        for size in (4, 64)
    ]
    cols = ["D", "G", "R", "denominator"]
    np.testing.assert_allclose(
        tables[0][cols].to_numpy(), tables[1][cols].to_numpy(), rtol=1e-9
    )


def test_init_rows_are_geometric_means_over_fresh_copies():
    net, X = image_cnn(batchnorm=True), _data(16)
    # a trained-like BatchNorm: non-trivial running statistics
    net[1].running_mean.fill_(0.3)
    net[1].running_var.fill_(2.0)
    table = relative_sensitivity(
        net, X, layers=["1", "output"], n_init=3, random_state=5
    )
    init_seed = np.random.RandomState(5).randint(2**31 - 1)  # not the probe's draws
    seeds = np.random.RandomState(init_seed).randint(2**31 - 1, size=3)
    model = copy.deepcopy(net).double()
    per_seed = []
    for seed in seeds:
        fresh = fresh_copy(model, int(seed))
        calibrate_batchnorm(fresh, lambda: [torch.tensor(X, dtype=torch.float64)])
        # BatchNorm of the fresh copy normalises with the probe set's statistics
        with torch.no_grad():
            conv_out = fresh[0](torch.tensor(X, dtype=torch.float64))
        np.testing.assert_allclose(
            fresh[1].running_mean.numpy(), conv_out.mean((0, 2, 3)).numpy(), rtol=1e-10
        )
        assert not torch.equal(fresh[0].weight, model[0].weight)
        per_seed.append(
            relative_sensitivity(
                fresh, X, layers=["1", "output"], reference=None, random_state=5
            )
        )
    init = table[table.net == "init"]
    for col in ["D", "G", "R", "denominator", "deformation", "noise"]:
        expected = np.exp(np.mean([np.log(t[col].to_numpy()) for t in per_seed], 0))
        np.testing.assert_allclose(init[col].to_numpy(), expected, rtol=1e-9)
    np.testing.assert_allclose(init["R"], init["D"] / init["G"], rtol=1e-12)


def test_shuffled_rows_and_pooling():
    net, X = image_cnn(), _data()
    table = relative_sensitivity(
        net, X, layers=["0"], reference=None, shuffled=True, random_state=0
    )
    assert table["net"].tolist() == ["trained", "shuffled"]
    # the shuffles draw from the second seed that random_state draws
    seed = np.random.RandomState(0).randint(2**31 - 1, size=2)[1]
    shuffled = shuffle_conv_input_channels(net, np.random.RandomState(seed))
    direct = relative_sensitivity(
        shuffled, X, layers=["0"], reference=None, random_state=0
    )
    for column in ["D", "G", "R", "denominator", "deformation", "noise"]:
        np.testing.assert_allclose(
            table[column].iloc[1], direct[column].iloc[0], rtol=1e-10
        )
    assert table["D"].iloc[1] != pytest.approx(table["D"].iloc[0], rel=1e-6)
    # pooled representations against direct computations
    for pool, reduce in [
        ("channel_mean", lambda t: t.mean(1)),
        ("mean", lambda t: t.mean((2, 3))),
    ]:
        pooled = relative_sensitivity(
            net, X, layers=["0"], reference=None, pool=pool, random_state=0
        )

        class Reduced(nn.Module):
            def __init__(self, reduce):
                super().__init__()
                self.conv = net[0]
                self.reduce = reduce

            def forward(self, x):
                return self.reduce(self.conv(x))

        direct = relative_sensitivity(
            Reduced(reduce), X, reference=None, random_state=0
        )
        np.testing.assert_allclose(
            pooled[["D", "G"]].to_numpy(), direct[["D", "G"]].to_numpy(), rtol=1e-10
        )


def test_fx_node_names_and_custom_deformation():
    torch.manual_seed(0)
    net = FunctionalConv()
    X = np.random.RandomState(0).rand(10, 1, 6, 6)

    def roll(X, random_state):
        return torch.roll(X, 1, dims=-1)

    table = relative_sensitivity(
        net,
        X,
        layers=["relu", "conv", "output"],
        deformation=roll,
        reference=None,
        random_state=0,
    )
    ref = relative_sensitivity(
        nn.Sequential(net.conv, nn.ReLU()),
        X,
        deformation=roll,
        reference=None,
        random_state=0,
    )
    np.testing.assert_allclose(
        table[["D", "G"]].to_numpy()[0], ref[["D", "G"]].to_numpy()[0], rtol=1e-10
    )
    X1, conv = torch.tensor(X), copy.deepcopy(net.conv).double()
    with torch.no_grad():
        tau = (
            ((torch.relu(conv(torch.roll(X1, 1, -1))) - torch.relu(conv(X1))) ** 2)
            .sum((1, 2, 3))
            .mean()
        )
    assert table["deformation"].iloc[0] == pytest.approx(float(tau), rel=1e-6)


def test_a_deformation_that_edits_its_argument_leaves_the_clean_inputs():
    """An in-place deformation edited sksim's clean probe set too: D was 0."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(64, 3))
    X = np.random.RandomState(0).randn(10, 1, 6, 6)

    def in_place(X, random_state):
        X[:, :, 2, 2] += 1.0
        return X

    def copying(X, random_state):
        return in_place(X.clone(), random_state)

    options = dict(reference=None, random_state=0)
    edited = relative_sensitivity(net, X, deformation=in_place, **options)
    copied = relative_sensitivity(net, X, deformation=copying, **options)
    assert copied["D"].iloc[0] > 0
    np.testing.assert_array_equal(edited[["D", "G"]], copied[["D", "G"]])


def test_signals_and_skorch_net():
    from skorch import NeuralNetClassifier

    torch.manual_seed(0)
    module = nn.Sequential(
        nn.Unflatten(1, (1, -1)),
        nn.Conv1d(1, 4, 3, padding=1),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(4 * 10, 2),
    )
    X = np.random.RandomState(0).rand(40, 10).astype(np.float32)
    y = (X[:, :5].sum(1) > X[:, 5:].sum(1)).astype(np.int64)
    net = NeuralNetClassifier(module, max_epochs=2, train_split=None, verbose=0).fit(
        X, y
    )
    table = relative_sensitivity(
        net, X, layers=["input", "output"], n_init=2, n_probe=30, random_state=0
    )
    assert table["R"].iloc[0] == pytest.approx(1.0, rel=1e-12)
    assert np.isfinite(table["R"]).all() and len(table) == 4


def test_all_layers_of_a_parametrized_network_are_its_modules():
    """A spectral_norm'd or weight_norm'd layer: "all" took its parametrizations,
    whose outputs are weights, and failed on a shape inside torch."""
    from torch.nn.utils.parametrizations import spectral_norm, weight_norm

    torch.manual_seed(0)
    net = nn.Sequential(
        weight_norm(nn.Conv2d(2, 3, 3)), nn.ReLU(), nn.Flatten(), nn.Linear(108, 2)
    )
    net[3] = spectral_norm(net[3])
    net.eval()  # spectral_norm's power iteration: its estimate as it is
    table = relative_sensitivity(net, _data(), layers="all", n_init=2, random_state=0)
    layers = ["input", "0", "1", "2", "3", "output"]
    assert table[table.net == "trained"]["layer"].tolist() == layers
    assert np.isfinite(table["R"]).all()
    reps = extract_representations(net, _data(), layers="all")
    assert list(reps) == layers


def test_a_forward_casting_to_float32_is_explained():
    """x.float() in forward failed on the float64 copy with torch's "Input type
    (float) and bias type (double) should be the same", sksim's copy unnamed."""

    class Casting(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(2, 3, 3)

        def forward(self, x):
            return self.conv(x.float()).flatten(1)

    with pytest.raises(TypeError, match=r"float64 copy .* Does it cast its inputs"):
        relative_sensitivity(Casting(), _data(), reference=None, random_state=0)


def test_inputs_the_network_fails_on_are_explained_as_the_kernel_explains_them():
    """torch's RuntimeError alone: 3 channels given to a network of 2."""
    X = np.random.RandomState(0).rand(6, 3, 8, 8)
    shaped = r"inputs of shape \(3, 8, 8\) per sample .*: pass inputs shaped as"
    with pytest.raises(ValueError, match=shaped):
        relative_sensitivity(image_cnn(), X, reference=None, random_state=0)


def test_errors_and_warnings():
    net, X = image_cnn(), _data()
    with pytest.raises(ValueError, match="Images must be square"):
        relative_sensitivity(net, X[..., :7])
    with pytest.raises(ValueError, match="got 1 sample"):
        relative_sensitivity(net, X[:1])
    with pytest.raises(ValueError, match="and n_probe=1"):
        relative_sensitivity(net, X, n_probe=1)
    with pytest.raises(ValueError, match="statistic must be one of"):
        relative_sensitivity(net, X, statistic="mode")
    with pytest.raises(ValueError, match=r"delta=0 deforms nothing"):  # R was NaN
        relative_sensitivity(net, X, delta=0)
    with pytest.raises(ValueError, match=r"noise_norm=0 adds no noise"):  # R was NaN
        relative_sensitivity(net, X, noise_norm=0.0)
    # these failed inside torch or blamed the network's weights
    with pytest.raises(ValueError, match="delta must be a finite non-negative"):
        relative_sensitivity(net, X, delta=np.inf)
    with pytest.raises(ValueError, match="delta=1e[+]200 pixels is too large"):
        relative_sensitivity(net, X, delta=1e200)
    with pytest.raises(ValueError, match="or a finite non-negative float; got inf"):
        relative_sensitivity(net, X, noise_norm=np.inf)
    with pytest.raises(ValueError, match="Complex inputs are not measured"):  # cut
        relative_sensitivity(net, X + 1j)
    # its copies of the network carried no version counters: a raw torch error
    with torch.inference_mode(), pytest.raises(RuntimeError, match="outside of that"):
        relative_sensitivity(net, X)
    flat = nn.Sequential(nn.Flatten(), nn.Linear(X[0].size, 2))
    with pytest.raises(ValueError, match="no convolution"):  # shuffled nothing
        relative_sensitivity(flat, X, shuffled=True)
    with pytest.raises(ValueError, match="pool must be one of"):
        relative_sensitivity(net, X, pool="sum")
    with pytest.raises(ValueError, match="deformation must be None"):
        relative_sensitivity(net, X, deformation="roll")
    with pytest.raises(ValueError, match="deformation must return an array"):
        relative_sensitivity(net, X, deformation=lambda x, r: x[:2])
    with pytest.raises(ValueError, match="layers must be"):
        relative_sensitivity(net, X, layers=3)
    with pytest.raises(ValueError, match="layers must name at least one layer"):
        relative_sensitivity(net, X, layers=[])
    with pytest.raises(ValueError, match="n_init must be a positive int"):
        relative_sensitivity(net, X, n_init=0)
    with pytest.raises(ValueError, match="Unknown layers \\['nope'\\]"):
        relative_sensitivity(net, X, layers=["nope"])
    with pytest.raises(ValueError, match="Dict inputs are not supported"):
        relative_sensitivity(net, {"x": X})
    with pytest.raises(ValueError, match="contains NaN or infinity"):
        relative_sensitivity(net, np.full_like(X, np.nan))

    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(4, 4)

        def forward(self, x):
            return self.lin(self.lin(x.flatten(1)[:, :4]))

    with pytest.raises(ValueError, match="ran more than once in one forward pass"):
        relative_sensitivity(Twice(), X, layers=["lin"])
    with pytest.warns(UserWarning, match=r"Modules \['lin'\] ran more than once"):
        table = relative_sensitivity(Twice(), X, layers="all")
    assert table["layer"].unique().tolist() == ["input", "output"]
    with pytest.raises(ValueError, match=r"names \['0'\] more than once"):
        relative_sensitivity(net, X, layers=["0", "0"])
    tiny = nn.Sequential(nn.Flatten(), nn.Linear(4, 2))
    with pytest.warns(UserWarning, match="of 2 value.s. a side: the deformations"):
        tiny_table = relative_sensitivity(tiny, np.ones((5, 1, 2, 2), np.float32))
    assert tiny_table["R"].isna().all()

    class Packed(nn.Module):
        def __init__(self):
            super().__init__()
            self.lstm = nn.LSTM(8, 2, batch_first=True)

        def forward(self, x):
            x = x.flatten(1, 2)
            lengths = torch.full((len(x),), x.shape[1])
            packed = nn.utils.rnn.pack_padded_sequence(x, lengths, batch_first=True)
            return self.lstm(packed)[1][0][-1]

    with pytest.raises(ValueError, match="returns a PackedSequence"):
        relative_sensitivity(Packed(), X, layers=["lstm"], reference=None)

    class Untraceable(nn.Module):
        def forward(self, x):
            return x if x.sum() > 0 else -x

    with pytest.raises(ValueError, match="could not be traced with torch.fx"):
        relative_sensitivity(Untraceable(), X, layers=["relu"])

    class Scaled(nn.Module):
        def __init__(self):
            super().__init__()
            self.scale = nn.Parameter(torch.ones(1))
            self.dead = nn.Linear(2, 1)

        def forward(self, x):
            zeros = torch.zeros_like(x[:, 0, 0, :2])
            return self.scale * x.flatten(1), self.dead(zeros)

    class First(nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = Scaled()

        def forward(self, x):
            a, b = self.inner(x)
            return torch.cat([a, b], 1)

    with pytest.warns(UserWarning, match="inner.scale.*reset_parameters"):
        relative_sensitivity(First(), X, n_init=1)
    with pytest.warns(UserWarning) as record:
        table = relative_sensitivity(First(), X, layers=["inner.dead"], n_init=1)
    assert any(
        "['inner.dead'] have a constant representation" in str(w.message)
        for w in record
    )
    assert table["D"].isna().all()


def test_constant_representation_has_no_ratio_despite_rounding():
    # the mean of 50 copies of 1/3 is not exactly 1/3 in floating point: the
    # spread must still come out as exactly zero, and D, G as undefined
    class Constant(nn.Module):
        def forward(self, x):
            return torch.full((len(x), 1), 1 / 3, dtype=x.dtype)

    X = np.random.RandomState(0).rand(50, 1, 8, 8)
    with pytest.warns(UserWarning, match="have a constant representation"):
        table = relative_sensitivity(Constant(), X, reference=None, random_state=0)
    assert table["D"].isna().all() and table["G"].isna().all()
    assert (table["denominator"] == 0).all()


class NaNOnMarked(nn.Module):
    """A CNN whose outputs are NaN for the images whose first pixel is 1."""

    def __init__(self):
        super().__init__()
        self.body = image_cnn()

    def forward(self, x):
        marked = x[:, 0, 0, 0] == 1
        return self.body(x) / (~marked).to(x.dtype)[:, None]


def test_non_finite_representations_name_the_rows_of_x():
    """Not a table of NaN with a warning about constant representations."""
    X = _data()
    X[[2, 5], 0, 0, 0] = 1.0
    with pytest.raises(
        NonFiniteNetworkError, match=r"rows \[2, 5\] of X, in the probe"
    ):
        relative_sensitivity(NaNOnMarked(), X, n_init=1, batch_size=6)


@pytest.mark.parametrize(
    "wrap, kept",
    [
        (nn.utils.spectral_norm, ["0.weight_orig"]),
        (nn.utils.weight_norm, ["0.weight_g", "0.weight_v"]),
    ],
)
def test_weights_computed_by_norm_hooks_are_named_as_kept(wrap, kept):
    """reset_parameters draws into the weight these hooks compute, which the
    hook overwrites: the initialised copies kept the trained weights, and the
    "init" rows measured the trained network without a word."""
    torch.manual_seed(0)
    net = nn.Sequential(wrap(nn.Conv2d(2, 2, 3)), nn.Tanh(), nn.Flatten())
    X = _data(6)
    with torch.no_grad():  # weight_norm's first weight is not deep-copyable
        net(torch.as_tensor(X))
    with pytest.warns(UserWarning, match="weight_norm or spectral_norm") as record:
        relative_sensitivity(net, X, n_init=1, random_state=0)
    (warning,) = [w for w in record if "reset_parameters" in str(w.message)]
    assert str(kept) in str(warning.message)
    fresh = fresh_copy(net, 1)
    for name in kept:  # the warning's reason: these stay as trained
        torch.testing.assert_close(
            fresh.get_parameter(name), net.get_parameter(name), rtol=0, atol=0
        )
    assert not torch.equal(fresh[0].bias, net[0].bias)  # the others are redrawn
