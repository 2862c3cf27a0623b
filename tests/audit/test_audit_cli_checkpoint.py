"""``sksim audit --checkpoint``: a trained network audited as it is, no training."""

import json
import math
import re
import textwrap

import _audit_helpers
import numpy as np
import pytest
import torch
from _architectures import small_net
from skorch import NeuralNet, NeuralNetRegressor

from sksim import cli
from sksim._engine.context import torch_seed
from sksim.cli import _data, _network

N_TRAIN = 160


@pytest.fixture(scope="module")
def trained():
    """A small digits MLP trained on 160 images, and its data."""
    X, y = _audit_helpers.digit_images()
    with torch_seed(0):
        net = small_net(X).fit(X[:N_TRAIN], y[:N_TRAIN])
    return net, X, y


@pytest.fixture
def files(tmp_path, trained):
    """Training and test splits as .npz files, and the net's state_dict."""
    net, X, y = trained
    np.savez(tmp_path / "train.npz", X=X[:N_TRAIN], y=y[:N_TRAIN])
    np.savez(tmp_path / "test.npz", X=X[N_TRAIN:], y=y[N_TRAIN:])
    torch.save(net.module_.state_dict(), tmp_path / "mlp.pt")
    return tmp_path


def checkpoint_argv(folder, *extra):
    return [
        "audit",
        "--data",
        str(folder / "train.npz"),
        "--test-data",
        str(folder / "test.npz"),
        "--checkpoint",
        str(folder / "mlp.pt"),
        "--out",
        str(folder / "r.html"),
        *extra,
    ]


def no_training(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("the checkpoint audit trained a network")

    monkeypatch.setattr(NeuralNet, "fit", refuse)
    monkeypatch.setattr(NeuralNet, "partial_fit", refuse)


def test_cli_checkpoint_audits_the_trained_net_without_training(
    files, trained, monkeypatch, capsys
):
    net, X, y = trained
    no_training(monkeypatch)
    argv = checkpoint_argv(files, "--analyses", "density,neighbors", "--quiet")
    assert cli.main([*argv, "--json", str(files / "r.json")]) == 0
    data = json.loads((files / "r.json").read_text())
    folds = data["tables"]["folds"]
    assert [row["accuracy"] for row in folds] == [net.score(X[N_TRAIN:], y[N_TRAIN:])]
    assert [(row["n_train"], row["n_test"]) for row in folds] == [(160, 80)]
    meta = data["metadata"]
    assert meta["cv"] == "prefit" and meta["task"] == "classification"
    assert set(meta["seconds"]) == {"predict", "density", "neighbors"}
    assert meta["checkpoint"] == str(files / "mlp.pt")
    assert meta["test_data"] == str(files / "test.npz")
    predictions = [row["prediction"] for row in data["tables"]["samples"]]
    assert predictions == net.predict(X[N_TRAIN:]).tolist()
    page = (files / "r.html").read_text()
    assert "prefit network, given train/test split" in page
    named = {"data": "train.npz", "checkpoint": "mlp.pt", "test data": "test.npz"}
    for name, path in named.items():  # the report says which files it audited
        assert f"<th>{name}</th><td style='text-align:left'>{files / path}<" in page


def test_cli_checkpoint_says_it_does_not_train(files, capsys):
    argv = checkpoint_argv(files, "--analyses", "density")
    assert cli.main(argv) == 0
    err = capsys.readouterr().err
    assert (
        "160 samples of shape (1, 8, 8), 10 classes, "
        f"{files / 'mlp.pt'} audited as it is (no training) on "
        f"{files / 'test.npz'}, 80 test samples"
    ) in err


def test_cli_checkpoint_says_the_training_options_are_ignored(files, capsys):
    argv = checkpoint_argv(files, "--analyses", "density")
    assert cli.main([*argv, "--max-epochs", "5", "--lr", "0.5"]) == 0
    said = "sksim audit: warning: --max-epochs, --lr are ignored: with --checkpoint "
    assert (
        f"{said}the network is audited as it is, with no training\n"
        in capsys.readouterr().err
    )
    assert cli.main(argv) == 0
    assert "warning" not in capsys.readouterr().err


@pytest.mark.parametrize("missing", [9, 3, 0])
def test_cli_checkpoint_on_data_lacking_a_class(files, trained, missing, capsys):
    """The labels hold 9 of the 10 classes the net was trained on: label j
    stays the net's output j, whichever class is missing."""
    net, X, y = trained
    kept, kept_test = y[:N_TRAIN] != missing, y[N_TRAIN:] != missing
    np.savez(files / "train.npz", X=X[:N_TRAIN][kept], y=y[:N_TRAIN][kept])
    np.savez(files / "test.npz", X=X[N_TRAIN:][kept_test], y=y[N_TRAIN:][kept_test])
    argv = checkpoint_argv(files, "--analyses", "density", "--quiet")
    if missing == 9:  # the labels need 9 outputs only
        with pytest.raises(SystemExit) as exit_:
            cli.main(argv)
        assert exit_.value.code == 2
        assert "with --n-classes N when the data lack" in capsys.readouterr().err
    expected = net.score(X[N_TRAIN:][kept_test], y[N_TRAIN:][kept_test])
    runs = [["--n-classes", "10"]] if missing == 9 else [[], ["--n-classes", "10"]]
    for extra in runs:
        assert cli.main([*argv, *extra, "--json", str(files / "r.json")]) == 0
        data = json.loads((files / "r.json").read_text())
        folds = data["tables"]["folds"]
        assert folds[0]["accuracy"] == pytest.approx(expected, rel=1e-12)  # via JSON
        assert "class_names" not in data["metadata"]


NAMES = np.array("zero one two three four five six seven eight nine".split())


def test_cli_checkpoint_of_named_classes_the_data_lack(files, trained, capsys):
    """Names, not codes, and the data lack "eight" (first in sorted order):
    encoded in sorted order, every label shifted against the outputs and the
    accuracy read 0. --n-classes alone is refused; --classes maps them."""
    net, X, y = trained
    kept, kept_test = y[:N_TRAIN] != 8, y[N_TRAIN:] != 8
    np.savez(files / "train.npz", X=X[:N_TRAIN][kept], y=NAMES[y[:N_TRAIN][kept]])
    test_y = NAMES[y[N_TRAIN:][kept_test]]
    np.savez(files / "test.npz", X=X[N_TRAIN:][kept_test], y=test_y)
    argv = checkpoint_argv(files, "--analyses", "density", "--quiet")
    with pytest.raises(SystemExit) as exit_:
        cli.main([*argv, "--n-classes", "10"])
    assert exit_.value.code == 2
    assert "they would shift against the network's outputs. Pass --classes" in (
        capsys.readouterr().err
    )
    # a factory that builds its ten outputs whatever n_classes says
    (files / "userten.py").write_text(
        textwrap.dedent(
            """
            import math
            from sksim.audit.models import MLP

            def make(input_shape, n_classes):
                return MLP(math.prod(input_shape), 10)
            """
        )
    )
    with pytest.MonkeyPatch.context() as patch:
        patch.syspath_prepend(str(files))
        with pytest.raises(SystemExit) as exit_:
            cli.main([*argv, "--module", "userten:make"])
    assert exit_.value.code == 2
    assert (
        "gives 10 outputs, and the labels, which are not integers from 0, name 9"
        in (capsys.readouterr().err)
    )
    classes = ["--classes", ",".join(NAMES)]
    assert cli.main([*argv, *classes, "--json", str(files / "r.json")]) == 0
    data = json.loads((files / "r.json").read_text())
    expected = net.score(X[N_TRAIN:][kept_test], y[N_TRAIN:][kept_test])
    assert data["tables"]["folds"][0]["accuracy"] == pytest.approx(expected)
    assert data["metadata"]["class_names"] == NAMES.tolist()
    for wrong, message in (
        (",".join(NAMES[:9]), r"labels \['nine'\] are not among --classes"),
        ("zero,zero", "two or more distinct comma-separated class names"),
    ):
        with pytest.raises(SystemExit):
            cli.main([*argv, "--classes", wrong])
        assert re.search(message, capsys.readouterr().err)


@pytest.fixture
def regression_factory(tmp_path, monkeypatch):
    (tmp_path / "userreg.py").write_text(
        textwrap.dedent(
            """
            import math
            import torch

            def make(input_shape, n_outputs):
                return torch.nn.Sequential(
                    torch.nn.Linear(math.prod(input_shape), 16),
                    torch.nn.Tanh(),
                    torch.nn.Linear(16, n_outputs),
                )
            """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    return tmp_path


def saved_regression(module, X, y, folder, lr):
    """A regressor trained on the first 70 rows, saved with both splits as the CLI
    reads them (train.npz, test.npz, mlp.pt)."""
    with torch_seed(0):
        net = NeuralNetRegressor(
            module, max_epochs=20, lr=lr, train_split=None, verbose=0
        ).fit(X[:70], y[:70, None])
    np.savez(folder / "train.npz", X=X[:70], y=y[:70])
    np.savez(folder / "test.npz", X=X[70:], y=y[70:])
    torch.save(net.module_.state_dict(), folder / "mlp.pt")
    return net


def test_cli_checkpoint_of_a_regression_net(regression_factory, monkeypatch, capsys):
    import userreg

    folder = regression_factory
    rng = np.random.RandomState(0)
    X = rng.uniform(-2, 2, size=(100, 2)).astype(np.float32)
    y = (np.sin(X[:, 0]) + 0.5 * X[:, 1]).astype(np.float32)
    net = saved_regression(userreg.make((2,), 1), X, y, folder, lr=0.1)
    no_training(monkeypatch)
    argv = checkpoint_argv(folder, "--module", "userreg:make", "--quiet")
    argv += ["--analyses", "density,class_fitting", "--json", str(folder / "r.json")]
    assert cli.main(argv) == 0
    data = json.loads((folder / "r.json").read_text())
    (row,) = data["tables"]["folds"]
    assert row["r2"] == pytest.approx(net.score(X[70:], y[70:, None]), rel=1e-6)
    residuals = net.predict(X[70:])[:, 0].astype(float) - y[70:]
    assert row["rmse"] == pytest.approx(math.sqrt(np.mean(residuals**2)), rel=1e-6)
    assert data["metadata"]["task"] == "regression"
    assert "needs class labels" in data["skipped"]["class_fitting"]
    for extra, named in (
        (["--n-classes", "3"], "--n-classes name"),
        (["--classes", "a,b"], "--classes name"),
        (["--n-classes", "2", "--classes", "a,b"], "--n-classes and --classes name"),
    ):  # they said "fewer than the 1 outputs the labels need, or ..."
        with pytest.raises(SystemExit) as exit_:
            cli.main([*argv, *extra])
        assert exit_.value.code == 2
        error = capsys.readouterr().err
        assert (
            f"{named} a classifier's outputs; the targets are a regression's" in error
        )


def test_cli_checkpoint_of_a_regression_on_counts(regression_factory, monkeypatch):
    """Whole-number targets were taken for class labels, the net built for 10."""
    import userreg

    folder = regression_factory
    rng = np.random.RandomState(0)
    X = rng.uniform(0, 2, size=(100, 2)).astype(np.float32)
    y = rng.poisson(2 * X[:, 0] + X[:, 1]).astype(np.float32)  # counts, 0 to 9
    net = saved_regression(userreg.make((2,), 1), X, y, folder, lr=0.05)
    no_training(monkeypatch)
    argv = checkpoint_argv(folder, "--module", "userreg:make", "--quiet")
    argv += ["--analyses", "density", "--json", str(folder / "r.json")]
    with pytest.raises(SystemExit):  # read as 10 classes: 10 outputs, not 1
        cli.main(argv)
    assert cli.main([*argv, "--task", "regression"]) == 0
    data = json.loads((folder / "r.json").read_text())
    assert data["metadata"]["task"] == "regression"
    (row,) = data["tables"]["folds"]
    assert row["r2"] == pytest.approx(net.score(X[70:], y[70:, None]), rel=1e-6)


def test_cli_task_classification_of_continuous_values(tmp_path, capsys):
    path = tmp_path / "reg.npz"
    np.savez(path, X=np.ones((20, 3), np.float32), y=np.linspace(0, 1, 20))
    with pytest.raises(SystemExit) as exit_:
        cli.main(["audit", "--data", str(path), "--task", "classification"])
    assert exit_.value.code == 2
    assert "y holds continuous values, not class labels" in capsys.readouterr().err


def test_cli_checkpoint_of_a_binary_classifier_factory(tmp_path, monkeypatch):
    """A factory's NeuralNetBinaryClassifier (one logit) is audited through
    its own predict_proba, which gives the two columns."""
    (tmp_path / "userbin.py").write_text(
        textwrap.dedent(
            """
            import torch
            from skorch import NeuralNetBinaryClassifier

            class OneLogit(torch.nn.Module):
                def __init__(self, n_features):
                    super().__init__()
                    self.linear = torch.nn.Linear(n_features, 1)

                def forward(self, x):
                    return self.linear(x)[:, 0]

            def make(input_shape, n_classes):
                return NeuralNetBinaryClassifier(
                    OneLogit, module__n_features=input_shape[0], max_epochs=20,
                    lr=0.1, train_split=None, verbose=0,
                )
            """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    import userbin

    rng = np.random.RandomState(0)
    X = rng.normal(size=(120, 3)).astype(np.float32)
    y = (X[:, 0] + 0.5 * rng.normal(size=120) > 0).astype(np.int64)
    with torch_seed(0):
        net = userbin.make((3,), 2).fit(X[:80], y[:80].astype(np.float32))
    np.savez(tmp_path / "train.npz", X=X[:80], y=y[:80])
    np.savez(tmp_path / "test.npz", X=X[80:], y=y[80:])
    torch.save(net.module_.state_dict(), tmp_path / "mlp.pt")
    no_training(monkeypatch)
    argv = checkpoint_argv(tmp_path, "--module", "userbin:make", "--quiet")
    argv += ["--analyses", "density,label_issues", "--json", str(tmp_path / "r.json")]
    assert cli.main(argv) == 0
    data = json.loads((tmp_path / "r.json").read_text())
    (row,) = data["tables"]["folds"]
    assert row["accuracy"] == net.score(X[80:], y[80:])
    predictions = [row["prediction"] for row in data["tables"]["samples"]]
    assert predictions == net.predict(X[80:]).tolist()


def test_labels_as_text_or_floats_keep_the_outputs_they_name(tmp_path):
    """Integers saved as text were sorted as text with a checkpoint ("10"
    read as output 2: accuracy 0.135 for 0.59); whole floats were not among
    --classes; a column of labels was refused; labels saved as bytes failed
    in scikit-learn's check of the task before they were decoded."""
    said = []
    codes, _, names = _data.encode_splits(
        np.array(["10", "2", "0"]), np.array(["11"]), said.append, keep_codes=True
    )
    np.testing.assert_array_equal(codes, [10, 2, 0])
    assert names is None
    codes, _, _ = _data.encode_splits(
        np.array([2.0, 0.0, 1.0]), None, said.append, classes=["0", "1", "2"]
    )
    np.testing.assert_array_equal(codes, [2, 0, 1])
    codes, _, names = _data.encode_splits(
        np.array(["b", "10"]), None, said.append, True
    )
    assert names == ["10", "b"]  # text that is not all integers: sorted, named
    path = tmp_path / "bytes.npz"  # bytes, as np.savez keeps them
    np.savez(path, X=np.zeros((3, 2), np.float32), y=np.array([b"10", b"2", b"+3"]))
    _, y = _data.read_npz(path, said.append)
    assert not _data.is_continuous(y)
    codes, _, names = _data.encode_splits(y, None, said.append, keep_codes=True)
    np.testing.assert_array_equal(codes, [10, 2, 3])
    codes, _, _ = _data.encode_splits(
        np.array([2.0, 1.0]), None, said.append, classes=["1.0", "2.0"]
    )  # floats named as they print
    np.testing.assert_array_equal(codes, [1, 0])
    with pytest.raises(ValueError, match="the same integer"):
        _data.encode_splits(np.array(["7", "007"]), None, said.append, keep_codes=True)


def test_a_checkpoint_behind_a_prefix_is_told_to_strip_it():
    """The mismatch was torch's own, every key listed (5 KB for a ResNet)."""
    module = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 2))
    expected = module.state_dict()
    wrapped = {"model." + key: value for key, value in expected.items()}
    text = _network.state_mismatch(wrapped, expected)
    assert text.endswith("strip the prefix 'model.' from the checkpoint's keys")
    assert text.startswith("4 keys of the architecture missing ('0.weight', ")
    unwrapped = _network.state_mismatch(expected, wrapped)
    assert unwrapped.endswith("add the prefix 'model.' to the checkpoint's keys")
    resized = {**expected, "1.weight": torch.zeros(5, 4)}
    assert _network.state_mismatch(resized, expected) == (
        "1 shape differing ('1.weight': (5, 4) for (2, 4))"
    )


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            ["--model", "cnn"],
            "does not fit the architecture of --model cnn for 10 outputs, one per "
            "label code from 0 to the largest that --data and --test-data hold, 9 "
            "(label j is output j) (with --n-classes N when the data lack some of "
            "the classes it was trained on, --classes A,B,... naming the label of "
            "each output when the labels "
            "are not the outputs' numbers, --task regression for whole-number "
            "targets): 4 keys of the architecture missing ('conv1.weight', "
            "'conv1.bias', 'conv2.weight', ...); 2 keys it lacks ('hidden.weight', "
            "'hidden.bias'); 1 shape differing ('out.weight': (10, 64) for (10, "
            "256)).",
        ),
        (
            "garbage",
            "could not be loaded as a state_dict: it is damaged or not written by "
            "torch.save (UnpicklingError: ",
        ),
        # these two ended in tracebacks (an empty message, an AttributeError)
        ("empty", "could not be loaded as a state_dict: the file is empty"),
        ("int keys", "holds a dict whose keys are not all names, not a state_dict"),
        # torch's advice was cut before its two options
        (
            "module",
            "holds pickled objects besides tensors (torch.nn.modules.linear.Linear: "
            "a whole module saved with torch.save(module)?), which loading without "
            "running code refuses; save it with torch.save(module.state_dict(), "
            "path).",
        ),
        ("list", "holds a list, not a state_dict; save it with torch.save("),
        ("missing", "mlp.pt: no such file."),
        ("no test", "--checkpoint audits a trained network on its test split"),
        ("no checkpoint", "--test-data is the test split of a trained network"),
    ],
)
def test_cli_bad_checkpoint_is_one_line(files, change, message, capsys):
    argv = checkpoint_argv(files, "--quiet")
    if change == "garbage":
        (files / "mlp.pt").write_bytes(b"not a checkpoint")
    elif change == "empty":
        (files / "mlp.pt").write_bytes(b"")
    elif change == "int keys":
        torch.save({0: torch.zeros(2)}, files / "mlp.pt")
    elif change == "module":
        torch.save(torch.nn.Linear(2, 2), files / "mlp.pt")
    elif change == "list":
        torch.save([torch.zeros(2)], files / "mlp.pt")
    elif change == "missing":
        (files / "mlp.pt").unlink()
    elif change == "no test":
        argv = [a for a in argv if a != "--test-data" and "test.npz" not in a]
    elif change == "no checkpoint":
        argv = [a for a in argv if a != "--checkpoint" and "mlp.pt" not in a]
    else:
        argv += change
    with pytest.raises(SystemExit) as exit_:
        cli.main(argv)
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    assert err.startswith("sksim audit: error: ")
    assert message in err
    assert "weights_only" not in err  # torch's advice to run the file's code
    assert not (files / "r.html").exists()


def test_cli_continuous_targets_without_checkpoint(tmp_path, capsys):
    path = tmp_path / "reg.npz"
    np.savez(path, X=np.ones((20, 3), np.float32), y=np.linspace(0, 1, 20))
    with pytest.raises(SystemExit) as exit_:
        cli.main(["audit", "--data", str(path), "--quiet"])
    assert exit_.value.code == 2
    assert "A trained regression network is audited with --checkpoint" in (
        capsys.readouterr().err
    )
