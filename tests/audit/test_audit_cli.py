import json
import os
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import _audit_helpers
import numpy as np
import pandas as pd
import pytest
import torch
from _architectures import small_net
from skorch import NeuralNet

import sksim
from sksim import cli
from sksim.audit import AuditAnalysisFailedWarning, audit
from sksim.audit.analyses.density import Density
from sksim.cli import _data, _main, _network, _parser


@pytest.fixture(scope="module")
def digit_images():
    return _audit_helpers.digit_images()


ROOT = Path(__file__).resolve().parents[2]
FAST = ["--cv", "2", "--max-epochs", "2", "--quiet"]


def subprocess_env(extra_path=None):
    paths = [str(ROOT)] + ([str(extra_path)] if extra_path else [])
    env = dict(os.environ, OMP_NUM_THREADS="1", MPLBACKEND="Agg")
    env["PYTHONPATH"] = os.pathsep.join(paths + [env.get("PYTHONPATH", "")])
    return env


@pytest.fixture
def npz(tmp_path, digit_images):
    X, y = digit_images
    path = tmp_path / "data.npz"
    np.savez(path, X=X[:120].astype(np.float64), y=y[:120])
    return path


@pytest.fixture
def factory_module(tmp_path, monkeypatch):
    (tmp_path / "userarch.py").write_text(
        textwrap.dedent(
            """
            import math
            import torch

            calls = []

            def make(input_shape, n_classes):
                calls.append((input_shape, n_classes))
                return torch.nn.Sequential(
                    torch.nn.Flatten(),
                    torch.nn.Linear(math.prod(input_shape), 16),
                    torch.nn.Tanh(),
                    torch.nn.Linear(16, n_classes),
                )

            def not_a_net(input_shape, n_classes):
                return "a string"

            def too_narrow(input_shape, n_classes):
                return torch.nn.Sequential(
                    torch.nn.Flatten(), torch.nn.Linear(10, n_classes)
                )

            def on_tokens(input_shape, n_classes):
                return torch.nn.Sequential(
                    torch.nn.Embedding(17, 4), torch.nn.Flatten(),
                    torch.nn.Linear(4 * input_shape[0], n_classes),
                )

            class NamedTokens(torch.nn.Module):
                def __init__(self, n_classes):
                    super().__init__()
                    self.embedding = torch.nn.Embedding(17, 4)
                    self.out = torch.nn.Linear(4, n_classes)

                def forward(self, input_ids, attention_mask):
                    calls.append((input_ids.dtype, attention_mask.dtype))
                    mask = attention_mask.unsqueeze(-1).float()
                    pooled = (self.embedding(input_ids) * mask).sum(1) / mask.sum(1)
                    return self.out(pooled)

            def on_named_tokens(input_shape, n_classes):
                calls.append((input_shape, n_classes))
                return NamedTokens(n_classes)

            def raises(input_shape, n_classes):
                raise RuntimeError("factory boom")

            class OutputObject(torch.nn.Module):  # a Hugging Face model's output
                def __init__(self, n_classes):
                    super().__init__()
                    self.linear = torch.nn.Linear(64, n_classes)

                def forward(self, x):
                    return {"logits": self.linear(x.flatten(1))}

            def with_an_output_object(input_shape, n_classes):
                return OutputObject(n_classes)

            def as_skorch(input_shape, n_classes):
                from skorch import NeuralNetClassifier

                return NeuralNetClassifier(
                    make(input_shape, n_classes),
                    criterion=torch.nn.CrossEntropyLoss,
                    max_epochs=3,
                    lr=0.05,
                    batch_size=16,
                )

            def without_a_device(input_shape, n_classes):
                from skorch import NeuralNetClassifier

                return NeuralNetClassifier(
                    make(input_shape, n_classes),
                    criterion=torch.nn.CrossEntropyLoss,
                    device=None,  # skorch moves nothing
                )

            def on_a_missing_gpu(input_shape, n_classes):
                from skorch import NeuralNetClassifier

                return NeuralNetClassifier(
                    make(input_shape, n_classes),
                    criterion=torch.nn.CrossEntropyLoss,
                    device="cuda:7",
                )
            """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "userarch", raising=False)  # this test's own
    return tmp_path


def test_cli_in_process_with_user_data_and_architecture(
    tmp_path, npz, factory_module, digit_images
):
    out, js = tmp_path / "r.html", tmp_path / "r.json"
    argv = ["audit", "--data", str(npz), "--module", "userarch:make", *FAST]
    argv += ["--analyses", "density,neighbors", "--n-neighbors", "2"]
    argv += [
        "--out",
        str(out),
        "--json",
        str(js),
        "--layers",
        "1, 3",
    ]  # spaces, as --analyses takes them
    assert cli.main(argv) == 0
    import userarch

    assert userarch.calls == [((1, 8, 8), 10)]
    data = json.loads(js.read_text())
    assert data["metadata"]["n_samples"] == 120
    assert data["metadata"]["analyses"] == ["density", "neighbors"]
    assert (
        data["metadata"]["net"]
        == "NeuralNetClassifier(module=Sequential, max_epochs=2)"
    )
    ranks = {row["rank"] for row in data["tables"]["neighbors"]}
    assert ranks == {1, 2}
    assert "Nearest training examples" in out.read_text()


def test_a_skorch_net_that_moves_nothing_is_audited(tmp_path, npz, factory_module):
    """skorch's device=None: check_device(None) raised a TypeError."""
    js = tmp_path / "r.json"
    argv = ["audit", "--data", str(npz), "--module", "userarch:without_a_device"]
    argv += [*FAST, "--analyses", "density", "--json", str(js)]
    assert cli.main(argv) == 0
    assert json.loads(js.read_text())["metadata"]["analyses"] == ["density"]


def test_a_skorch_net_from_module_takes_the_training_options_given(
    factory_module, digit_images
):
    """--max-epochs, --lr and --batch-size were dropped without a word for a
    factory's skorch net; the options not given keep the net's own."""
    X, y = digit_images
    parser = _parser.make_parser()
    argv = ["audit", "--dataset", "digits", "--module", "userarch:as_skorch"]
    own = _network.build_net(parser.parse_args(argv), X, 10)
    assert (own.max_epochs, own.lr, own.batch_size) == (3, 0.05, 16)
    given = parser.parse_args([*argv, "--max-epochs", "2", "--batch-size", "8"])
    net = _network.build_net(given, X, 10)
    assert (net.max_epochs, net.lr, net.batch_size) == (2, 0.05, 8)
    built = parser.parse_args(["audit", "--dataset", "digits", "--model", "mlp"])
    default = _network.build_net(built, X, 10)
    assert (default.max_epochs, default.lr, default.batch_size) == (20, 0.1, 64)


def test_the_module_is_imported_from_the_current_folder(tmp_path, monkeypatch, npz):
    """The ``sksim`` console script, unlike ``python -m sksim``, does not put
    the current folder on sys.path: "--module here:make" with here.py in it
    failed with "No module named 'here'". The factory's own imports when it
    runs are found there too."""
    (tmp_path / "here_arch.py").write_text(
        "import torch\n"
        "def make(input_shape, n_classes):\n"
        "    from here_layers import layers\n"
        "    return torch.nn.Sequential(*layers(n_classes))\n"
    )
    (tmp_path / "here_layers.py").write_text(
        "import torch\n"
        "def layers(n_classes):\n"
        "    return torch.nn.Flatten(), torch.nn.Linear(64, n_classes)\n"
    )
    monkeypatch.chdir(tmp_path)
    path = [entry for entry in sys.path if entry not in ("", str(tmp_path))]
    monkeypatch.setattr(sys, "path", path)
    monkeypatch.delitem(sys.modules, "here_arch", raising=False)
    monkeypatch.delitem(sys.modules, "here_layers", raising=False)
    argv = ["audit", "--data", str(npz), "--module", "here_arch:make", *FAST]
    assert cli.main([*argv, "--analyses", "density"]) == 0


def test_a_missing_module_names_the_option(capsys, monkeypatch):
    with pytest.raises(SystemExit) as exit_:
        cli.main(["audit", "--dataset", "iris", "--module", "no_such_mod_xyz:make"])
    assert exit_.value.code == 2
    assert one_line_error(capsys).endswith(
        "error: --module no_such_mod_xyz:make: No module named 'no_such_mod_xyz'; "
        "run sksim from the folder that holds it, or put that folder on "
        "PYTHONPATH.\n"
    )


@pytest.mark.parametrize("quiet", [True, False])
def test_options_of_analyses_not_run_are_said_in_one_line(capsys, quiet):
    """They leaked the API's UserWarning (its source line, "analyses=(...)")
    to stderr, even with --quiet."""
    argv = ["audit", "--dataset", "iris", "--cv", "2", "--max-epochs", "2"]
    argv += ["--analyses", "density", "--options", '{"neighbors": {"index": "Flat"}}']
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # none reaches Python's warnings either
        assert cli.main([*argv, "--quiet"] if quiet else argv) == 0
    err = capsys.readouterr().err
    line = (
        "sksim audit: warning: --options for analyses that --analyses does not "
        "run (neighbors) are ignored\n"
    )
    if quiet:
        assert err == ""
    else:
        assert line in err and "UserWarning" not in err


def test_layers_without_class_fitting_are_said_to_be_ignored(capsys):
    """--layers names class fitting's layers; with other analyses it was
    dropped without a word."""
    argv = ["audit", "--dataset", "iris", "--cv", "2", "--max-epochs", "2"]
    assert cli.main([*argv, "--analyses", "density", "--layers", "hidden"]) == 0
    assert (
        "sksim audit: warning: --layers is ignored: it names the layers of "
        "class_fitting, which --analyses does not run\n"
    ) in capsys.readouterr().err


def test_cli_seed_and_layers_reach_the_audit():
    """--seed and --layers could be dropped on the way to audit() unnoticed:
    the default seed is 0, and the analyses run did not read the layers."""
    argv = ["audit", "--dataset", "iris", *FAST, "--analyses", "class_fitting"]
    argv += ["--layers", "hidden", "--seed", "3"]
    result = _main.run_audit(_parser.make_parser().parse_args(argv))
    assert result.metadata["random_state"] == 3
    assert set(result["class_fitting"]["layer"]) == {"hidden"}
    again = _main.run_audit(_parser.make_parser().parse_args(argv))
    pd.testing.assert_frame_equal(again["class_fitting"], result["class_fitting"])
    argv[-1] = "0"
    other = _main.run_audit(_parser.make_parser().parse_args(argv))
    assert not other["class_fitting"].equals(result["class_fitting"])


def test_cli_builtin_dataset_reports_progress(tmp_path, capsys):
    out = tmp_path / "iris.html"
    argv = ["audit", "--dataset", "iris", "--cv", "2", "--max-epochs", "3"]
    argv += ["--analyses", "density,sensitivity", "--out", str(out)]
    result = _main.run_audit(_parser.make_parser().parse_args(argv))
    err = capsys.readouterr().err
    assert "150 samples of shape (4,), 3 classes, 2-fold" in err
    assert f"report written to {out.resolve()}" in err
    assert "sensitivity" in result.skipped
    assert result.metadata["data"] == "iris"


def test_cli_options_reach_the_analyses(tmp_path, capsys):
    pytest.importorskip("faiss")
    argv = ["audit", "--dataset", "iris", "--cv", "2", "--max-epochs", "3"]
    argv += ["--analyses", "neighbors", "--scale-threshold", "1"]
    argv += ["--options", '{"neighbors": {"candidates_per_neighbor": 3}}']
    argv += ["--out", str(tmp_path / "options.html"), "--quiet"]
    result = _main.run_audit(_parser.make_parser().parse_args(argv))
    assert "candidates (3 per neighbour)" in result.metadata["methods"]["neighbors"]
    for options, message in [
        ("{neighbors", "not valid JSON"),
        ('{"neighbors": 3}', "must be a JSON object of objects"),
    ]:
        with pytest.raises(SystemExit) as exit_:
            cli.main(["audit", "--options", options])
        assert exit_.value.code == 2
        assert message in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_:
        cli.main([*argv, "--options", '{"neighbours": {}}'])
    assert exit_.value.code == 2
    assert "options for unknown analyses ['neighbours']" in capsys.readouterr().err


def test_load_dataset():
    X, y = _data.load_dataset("digits")
    assert X.shape == (1797, 1, 8, 8) and X.dtype == np.float32
    assert X.min() == 0 and X.max() == 1
    X, y = _data.load_dataset("wine")
    np.testing.assert_allclose(X.mean(axis=0), 0, atol=1e-5)
    np.testing.assert_allclose(X.std(axis=0), 1, atol=1e-4)
    assert sorted(np.unique(y)) == [0, 1, 2]
    with pytest.raises(ValueError, match="--dataset must be one of"):
        _data.load_dataset("mnist")


def test_help_explains_every_option(capsys):
    parser = _parser.make_parser()
    audit = parser._subparsers._group_actions[0].choices["audit"]
    for action in audit._actions:
        assert action.help, action.option_strings
    with pytest.raises(SystemExit) as exit_:
        cli.main(["audit", "--help"])
    assert exit_.value.code == 0
    text = capsys.readouterr().out
    for action in audit._actions:
        for option in action.option_strings:
            assert option in text


@pytest.mark.parametrize(
    ("args", "message"),
    [
        # said first, not as a failed call of the factory: "userarch((1, 8, 8), 10)"
        (["--module", "userarch"], "error: --module must look like package.module:"),
        (["--module", "userarch:missing"], "error: Module 'userarch' has no 'missing'"),
        (["--module", "userarch:not_a_net"], "returned a str; it must return"),
        (["--module", "no_such_mod_xyz:make"], "No module named 'no_such_mod_xyz'"),
        (
            ["--module", "userarch:too_narrow"],
            "the network of userarch:too_narrow cannot take the inputs, of shape",
        ),
        (["--module", "userarch:on_tokens"], "token ids (an Embedding) converts them"),
        (["--module", "userarch:on_a_missing_gpu"], "CUDA device(s): use --device cpu"),
        (
            ["--module", "userarch:raises"],
            "userarch:raises((1, 8, 8), 10) failed: RuntimeError: factory boom",
        ),
        (  # skorch's loss fails on it: the advice was "give sksim net.module_"
            ["--module", "userarch:with_an_output_object"],
            "outputs a dict, not a tensor of logits, which training with skorch's "
            "loss needs: make the module's forward return the logits",
        ),
        (["--analyses", ""], "name at least one analysis"),
        (["--dataset", "iris", "--model", "cnn"], "The cnn model needs square images"),
        # Python's "[Errno 2] No such file or directory: 'nope.npz'" named no option
        (["--data", "nope.npz"], "error: --data nope.npz: no such file or folder."),
        (
            ["--dataset", "iris", "--checkpoint", "w.pt", "--test-data", "nope.npz"],
            "error: --test-data nope.npz: no such file or folder.",
        ),
    ],
)
def test_cli_errors(args, message, factory_module, capsys, tmp_path):
    argv = ["audit", *args, *FAST, "--out", str(tmp_path / "x.html")]
    with pytest.raises(SystemExit) as exit_:
        cli.main(argv)
    assert exit_.value.code == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize(
    ("saved", "options", "message"),
    [
        (dict(X=np.zeros((0, 4)), y=np.zeros(0)), [], "y holds no examples"),
        (
            dict(X=np.ones((8, 4)), y=np.r_[np.arange(7) / 7, np.nan]),
            [],
            "y holds NaN or infinity in 1 row(s) of",
        ),
        (
            dict(X=np.ones((8, 4)), y=np.arange(8) % 2, groups=np.zeros((8, 2))),
            ["--groups"],
            "--groups needs one group per example",
        ),
        (  # two regression targets: an architecture of one output failed
            dict(X=np.ones((8, 4)), y=np.random.RandomState(0).rand(8, 2)),
            [],
            "has shape (8, 2): audit one target (a column of y) at a time",
        ),
    ],
)
def test_cli_data_errors_say_what_to_do(saved, options, message, tmp_path, capsys):
    """An empty y met an IndexError, y with NaN scikit-learn's 'Input
    contains NaN', 2-D groups 'unhashable type', each with a traceback or
    without the array named."""
    np.savez(tmp_path / "data.npz", **saved)
    with pytest.raises(SystemExit) as exit_:
        cli.main(["audit", "--data", str(tmp_path / "data.npz"), *options, *FAST])
    assert exit_.value.code == 2
    assert message in capsys.readouterr().err


def test_labels_of_other_kinds_in_the_two_splits_are_refused():
    """Integers beside text were encoded together as classes of both kinds,
    and the architecture's error pointed elsewhere."""
    with pytest.raises(ValueError, match="give both splits' labels alike"):
        _data.encode_splits(np.arange(4) % 2, np.array(["a", "b"]), print)


def test_cli_json_of_the_reports_name_is_refused(tmp_path, capsys):
    """It overwrote the HTML report, and said the report was written."""
    out = str(tmp_path / "same.html")
    with pytest.raises(SystemExit) as exit_:
        cli.main(["audit", "--dataset", "iris", *FAST, "--out", out, "--json", out])
    assert exit_.value.code == 2
    assert "is a file of --out" in capsys.readouterr().err


def test_a_cache_in_the_data_folder_is_refused(tmp_path, capsys):
    """The audit's .pkl pieces were saved among the user's .npy files."""
    folder = tmp_path / "arrays"
    folder.mkdir()
    np.save(folder / "X.npy", np.zeros((30, 3), np.float32))
    np.save(folder / "y.npy", np.arange(30) % 2)
    argv = ["audit", "--data", str(folder), "--cache", str(folder), *FAST]
    with pytest.raises(SystemExit) as exit_:
        cli.main(argv)
    assert exit_.value.code == 2
    assert one_line_error(capsys).endswith(
        f"--cache {folder} is the folder of --data: the audit's pieces would be "
        "saved among your arrays; give another folder.\n"
    )
    assert sorted(p.name for p in folder.iterdir()) == ["X.npy", "y.npy"]


@pytest.mark.parametrize(
    "outputs, message",
    [
        (["--out", "{data}"], "--out {data} is a file of --data: it would be "),
        (["--json", "{data}"], "--json {data} is a file of --data"),
        (["--out", "{cache}/r.html"], "is in the --cache folder"),
        (["--out", "{cache}"], "is in the --cache folder"),
        (["--out", "{data}/r.html"], "r.html: {data} is a file, not a folder."),
    ],
)
def test_cli_outputs_that_would_overwrite_inputs_are_refused(
    tmp_path, capsys, outputs, message
):
    """The report replaced the data it was computed from (exit 0), or the
    audit ran and then failed to write a report where its cache was."""
    data = tmp_path / "data.npz"
    np.savez(data, X=np.zeros((30, 3), np.float32), y=np.arange(30) % 2)
    kept = data.read_bytes()
    names = dict(data=data, cache=tmp_path / "cache")
    if "{cache}/" in outputs[1]:
        names["cache"].mkdir()  # an earlier run's
    argv = ["audit", "--data", str(data), "--cache", str(names["cache"]), *FAST]
    argv += [part.format(**names) for part in outputs]
    with pytest.raises(SystemExit) as exit_:
        cli.main(argv)
    assert exit_.value.code == 2
    assert message.format(**names) in capsys.readouterr().err
    assert data.read_bytes() == kept


@pytest.mark.parametrize(
    "outputs, message",
    [
        (["--out", "{data}/X.npy"], "--out {data}/X.npy is a file of --data"),
        (["--json", "{data}/y.npy"], "--json {data}/y.npy is a file of --data"),
        (["--out", "userarch.py"], "--out userarch.py is a file of --module"),
    ],
)
def test_cli_outputs_onto_files_of_input_folders_and_modules_are_refused(
    tmp_path, capsys, factory_module, monkeypatch, outputs, message
):
    """A folder's arrays and the factory's code were replaced (exit 0)."""
    monkeypatch.chdir(factory_module)
    data = tmp_path / "arrays"
    data.mkdir()
    np.save(data / "X.npy", np.zeros((30, 1, 8, 8), np.float32))
    np.save(data / "y.npy", np.arange(30) % 2)
    kept = {p: p.read_bytes() for p in [*data.iterdir(), tmp_path / "userarch.py"]}
    argv = ["audit", "--data", str(data), "--module", "userarch:make", *FAST]
    argv += [part.format(data=data) for part in outputs]
    with pytest.raises(SystemExit) as exit_:
        cli.main(argv)
    assert exit_.value.code == 2
    assert message.format(data=data) in one_line_error(capsys)
    assert {p: p.read_bytes() for p in kept} == kept


@pytest.mark.parametrize(
    "content, message",
    [
        (b"", "y.npy is empty: write it again (np.save)."),
        (  # np.memmap's or tofile's raw values, read as pickled data before
            np.arange(30, dtype=np.int64).tobytes(),
            "y.npy is not a .npy file (it lacks the header",
        ),
    ],
)
def test_cli_npy_files_that_are_not_arrays_are_refused(
    tmp_path, capsys, content, message
):
    """An empty file gave numpy's EOFError with a traceback (exit 1)."""
    np.save(tmp_path / "X.npy", np.zeros((30, 3), np.float32))
    (tmp_path / "y.npy").write_bytes(content)
    with pytest.raises(SystemExit) as exit_:
        cli.main(["audit", "--data", str(tmp_path), *FAST])
    assert exit_.value.code == 2
    assert message in one_line_error(capsys)


@pytest.mark.parametrize(
    "spec, message",
    [
        ("userarch.py:make", "names a module as Python imports it, not its file"),
        ("./userarch:make", "names a module as Python imports it, not its file"),
        (":make", "must look like package.module:factory"),  # not Path's error
    ],
)
def test_cli_module_given_as_a_file_is_explained(capsys, factory_module, spec, message):
    """ "No module named 'userarch.py'": run from the folder that holds it."""
    argv = ["audit", "--dataset", "digits", "--module", spec, *FAST]
    with pytest.raises(SystemExit) as exit_:
        cli.main(argv)
    assert exit_.value.code == 2
    assert message in one_line_error(capsys)


def test_cli_output_onto_a_packages_init_is_refused(tmp_path, monkeypatch, capsys):
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "__init__.py").write_text("def make(shape, n): pass\n")
    monkeypatch.chdir(tmp_path)
    argv = ["audit", "--dataset", "iris", "--module", "pkg:make", *FAST]
    with pytest.raises(SystemExit) as exit_:
        cli.main([*argv, "--json", "pkg/__init__.py"])
    assert exit_.value.code == 2
    assert "is a file of --module" in one_line_error(capsys)


@pytest.mark.parametrize(
    "option, message",
    [
        (["--seed", "-1"], "must be an integer from 0 to 2**32 - 1; got -1"),
        (["--seed", "4294967296"], "from 0 to 2**32 - 1; got 4294967296"),
        (["--noise-seed", "-1"], "argument --noise-seed: must be an integer from 0"),
        (  # scikit-learn's "n_splits=51 cannot be greater than the number of ..."
            ["--cv", "51"],
            "51 stratified folds, but no class has that many examples (the largest "
            "has 50): each fold needs one. Use 50 folds or fewer",
        ),
        (["--lr", "abc"], "argument --lr: must be a number; got abc"),
        (["--label-noise", "abc"], "argument --label-noise: must be a number"),
        (["--layers", ","], "argument --layers: names no layer; got ','"),
    ],
)
def test_cli_bad_values_are_refused_before_any_training(capsys, option, message):
    """A seed out of NumPy's range was refused by the analyses, after every
    fold trained (exit 1); argparse named the checks' own functions."""
    with pytest.raises(SystemExit) as exit_:
        cli.main(["audit", "--dataset", "iris", *FAST, *option])
    assert exit_.value.code == 2
    assert message in capsys.readouterr().err


def test_a_trailing_comma_in_layers_adds_no_layer():
    """It added the empty name: the whole network's output, without a word."""
    assert _parser._layer_names("hidden, ") == ["hidden"]


def test_audit_refuses_a_seed_numpy_refuses_before_training(digit_images):
    X, y = digit_images
    with pytest.raises(ValueError, match="random_state must be None or an integer"):
        audit(small_net(X), X, y, cv=2, analyses=("density",), random_state=-1)


def test_cli_npz_without_y(tmp_path, capsys):
    path = tmp_path / "bad.npz"
    np.savez(path, X=np.zeros((4, 2)))
    with pytest.raises(SystemExit):
        cli.main(["audit", "--data", str(path), *FAST])
    assert "lacks the labels y: save the inputs as X" in capsys.readouterr().err
    np.savez(path, y=np.zeros(4))
    with pytest.raises(SystemExit):
        cli.main(["audit", "--data", str(path), *FAST])
    assert "lacks inputs: save the inputs as X" in capsys.readouterr().err


def test_cli_names_arrays_saved_without_a_name(tmp_path, capsys):
    """np.savez(path, X, y=y) saves X as arr_0, which was read as an input."""
    np.savez(tmp_path / "unnamed.npz", np.zeros((4, 2)), y=np.arange(4) % 2)
    with pytest.raises(SystemExit):
        cli.main(["audit", "--data", str(tmp_path / "unnamed.npz"), *FAST])
    assert "saved without a name (arr_0, ...): save" in capsys.readouterr().err


def test_cli_takes_labels_as_a_column(tmp_path, digit_images):
    """A cross-validated audit refused them; audit() takes them."""
    X, y = digit_images
    np.savez(tmp_path / "column.npz", X=X[:120], y=y[:120, None])
    argv = ["audit", "--data", str(tmp_path / "column.npz"), *FAST]
    argv += ["--analyses", "density", "--json", str(tmp_path / "r.json")]
    assert cli.main(argv) == 0
    samples = json.loads((tmp_path / "r.json").read_text())["tables"]["samples"]
    assert sorted(row["label"] for row in samples) == sorted(y[:120].tolist())


def test_cli_counts_the_test_samples_of_inputs_saved_by_name(
    tmp_path, factory_module, capsys
):
    """It printed the number of inputs (2) as that of test samples."""
    import userarch

    rng = np.random.RandomState(0)
    for name, n in (("train", 60), ("test", 40)):
        ids = rng.randint(1, 17, size=(n, 6))
        np.savez(
            tmp_path / f"{name}.npz",
            input_ids=ids,
            attention_mask=ids > 0,
            y=ids[:, 0] % 2,
        )
    torch.save(userarch.NamedTokens(2).state_dict(), tmp_path / "w.pt")
    argv = ["audit", "--module", "userarch:on_named_tokens", "--analyses", "density"]
    argv += ["--data", str(tmp_path / "train.npz"), "--test-data"]
    argv += [str(tmp_path / "test.npz"), "--checkpoint", str(tmp_path / "w.pt")]
    assert cli.main([*argv, "--out", str(tmp_path / "r.html")]) == 0
    assert f"{tmp_path / 'test.npz'}, 40 test samples" in capsys.readouterr().err


def test_cli_reads_inputs_saved_by_name(tmp_path, factory_module, capsys):
    """Token ids and their mask, the keyword inputs of the network's forward:
    the command line read X alone, as one array cast to float32."""
    rng = np.random.RandomState(0)
    ids = rng.randint(1, 17, size=(90, 6))
    mask = np.ones_like(ids)
    mask[:, 4:] = 0
    y = ids[:, 0] % 2
    argv = ["audit", "--module", "userarch:on_named_tokens", *FAST]
    argv += ["--analyses", "density,neighbors", "--n-neighbors", "2"]
    tables = []
    for padded in (ids, np.where(mask == 1, ids, 16)):  # other ids where masked
        np.savez(tmp_path / "text.npz", input_ids=padded, attention_mask=mask, y=y)
        js = tmp_path / "r.json"
        assert (
            cli.main([*argv, "--data", str(tmp_path / "text.npz"), "--json", str(js)])
            == 0
        )
        tables.append(json.loads(js.read_text()))
    import userarch

    built = [call for call in userarch.calls if isinstance(call[0], dict)]
    read = {call for call in userarch.calls if isinstance(call[0], torch.dtype)}
    assert built == [({"input_ids": (6,), "attention_mask": (6,)}, 2)] * 2
    assert read == {(torch.int64, torch.int64)}
    assert tables[0]["metadata"]["input_shape"] == {
        "input_ids": [6],
        "attention_mask": [6],
    }
    for name in ("folds", "samples", "neighbors"):  # the mask is respected
        rows = [
            [{k: v for k, v in row.items() if k != "fit_seconds"} for row in t]
            for t in (tables[0]["tables"][name], tables[1]["tables"][name])
        ]
        assert rows[0] == rows[1]
    with pytest.raises(SystemExit):
        cli.main([*argv[:1], "--data", str(tmp_path / "text.npz"), *FAST])
    assert (
        "inputs by name (input_ids, attention_mask) need a module"
        in capsys.readouterr().err
    )
    # names forward does not take: it was forward()'s bare TypeError
    np.savez(tmp_path / "renamed.npz", input_ids=ids, mask=mask, y=y)
    with pytest.raises(SystemExit):
        cli.main([*argv, "--data", str(tmp_path / "renamed.npz")])
    assert one_line_error(capsys).startswith(
        "sksim audit: error: the network of userarch:on_named_tokens does not take "
        "the inputs saved by name, input_ids, mask: each array is passed to its "
        "forward by its name ("
    )


def test_cli_reads_inputs_by_name_from_a_folder(tmp_path, factory_module, capsys):
    """A folder of .npy files holding the inputs by name, memory-mapped: the
    command line asked for an X.npy."""
    rng = np.random.RandomState(0)
    arrays = dict(
        input_ids=rng.randint(1, 17, size=(90, 6)),
        attention_mask=(np.arange(6) < rng.randint(2, 7, size=(90, 1))).astype(int),
    )
    arrays["y"] = arrays["input_ids"][:, 0] % 2
    folder = tmp_path / "text"
    folder.mkdir()
    for name, array in arrays.items():
        np.save(folder / f"{name}.npy", array)
    np.savez(tmp_path / "text.npz", **arrays)
    inputs, y = _data.load_npy_folder(folder)
    assert sorted(inputs) == ["attention_mask", "input_ids"]
    assert all(isinstance(value, np.memmap) for value in inputs.values())
    np.testing.assert_array_equal(y, arrays["y"])
    argv = ["audit", "--module", "userarch:on_named_tokens", *FAST]
    argv += ["--analyses", "density,neighbors", "--n-neighbors", "2"]
    tables = []
    for source in (folder, tmp_path / "text.npz"):
        js = tmp_path / "r.json"
        assert cli.main([*argv, "--data", str(source), "--json", str(js)]) == 0
        tables.append(json.loads(js.read_text())["tables"])
    for name in ("samples", "neighbors"):
        assert tables[0][name] == tables[1][name]
    (folder / "input_ids.npy").unlink()
    (folder / "attention_mask.npy").unlink()
    with pytest.raises(SystemExit):
        cli.main([*argv, "--data", str(folder)])
    assert f"{folder} is a folder without inputs: save" in capsys.readouterr().err


def test_cli_argument_errors(capsys):
    with pytest.raises(SystemExit):
        cli.main(["audit", "--analyses", "density,foo"])
    assert "unknown analyses ['foo']" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(["audit", "--cv", "0"])
    assert "must be a positive integer; got 0" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # argparse named its private function
        cli.main(["audit", "--cv", "1.5"])
    assert "must be a positive integer; got 1.5" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # scikit-learn would name its n_splits
        cli.main(["audit", "--cv", "1"])
    assert "--cv: must be 2 folds or more; got 1" in capsys.readouterr().err
    parser = _parser.make_parser()
    for text, threshold in (("none", None), ("None", None), ("500", 500)):
        args = parser.parse_args(["audit", "--scale-threshold", text])
        assert args.scale_threshold == threshold


def test_python_dash_m_sksim(tmp_path, npz):
    out = tmp_path / "sub.html"
    completed = subprocess.run(
        [sys.executable, "-m", "sksim", "audit", "--data", str(npz), *FAST[:-1]]
        + ["--analyses", "density", "--out", str(out)],
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert completed.returncode == 0, completed.stderr
    assert f"report written to {out.resolve()}" in completed.stderr
    assert completed.stdout == ""
    assert out.read_text().startswith("<!DOCTYPE html>")
    completed = subprocess.run(
        [sys.executable, "-m", "sksim", "audit", "--help"],
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert completed.returncode == 0
    assert "--module PKG.MOD:FACTORY" in completed.stdout


def one_line_error(capsys):
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    return err


def test_cli_version(capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main(["--version"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out == f"sksim {sksim.__version__}\n"


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"label,x\n1,2\n", "is not an .npz file (a zip archive of arrays)"),
        ("truncated", "could not be read as an .npz file; is it truncated"),
        ("objects", "holds an array of Python objects (dtype object, e.g. a"),
    ],
)
def test_cli_damaged_npz_is_one_line(content, message, tmp_path, npz, capsys):
    path = tmp_path / "damaged.npz"
    if content == "truncated":
        content = npz.read_bytes()[: npz.stat().st_size // 2]
    if content == "objects":  # labels from a pandas column: a sound file
        np.savez(path, X=np.ones((4, 3)), y=np.array(["a", "b", 1, 2], dtype=object))
        content = path.read_bytes()
    path.write_bytes(content)
    with pytest.raises(SystemExit) as exit_:
        cli.main(["audit", "--data", str(path), *FAST])
    assert exit_.value.code == 2
    err = one_line_error(capsys)
    assert err.startswith(f"sksim audit: error: {path} ")
    assert message in err
    assert "pickled" not in err


def test_cli_casts_integer_inputs_and_encodes_labels(tmp_path, digit_images, capsys):
    X, y = digit_images
    path, js = tmp_path / "pixels.npz", tmp_path / "r.json"
    np.savez(path, X=(X[:120] * 16).astype(np.uint8), y=y[:120] + 1)
    argv = ["audit", "--data", str(path), "--cv", "2", "--max-epochs", "2"]
    argv += ["--analyses", "density", "--out", str(tmp_path / "r.html")]
    argv += ["--json", str(js)]
    assert cli.main(argv) == 0
    err = capsys.readouterr().err
    assert "X cast from uint8 to float32" in err
    assert "labels 1, 2, 3, 4, 5, 6, 7, 8, 9, 10 encoded as 0 .. 9" in err
    data = json.loads(js.read_text())
    assert sorted({row["label"] for row in data["tables"]["samples"]}) == list(
        range(10)
    )
    assert data["metadata"]["n_classes"] == 10
    assert data["metadata"]["class_names"] == [str(label) for label in range(1, 11)]
    report = (tmp_path / "r.html").read_text()
    assert "10: 0 = 1, 1 = 2, 2 = 3" in report


def test_prepare_inputs():
    X = _data.prepare_inputs(np.array([[0, 255]], dtype=np.uint8))
    assert X.dtype == np.float32 and X.tolist() == [[0.0, 255.0]]
    assert _data.prepare_inputs(np.ones((2, 2), bool)).dtype == np.float32
    with pytest.raises(ValueError, match="X must hold numbers; its dtype is <U1"):
        _data.prepare_inputs(np.array([["a"]]))
    with pytest.raises(ValueError, match=r"its shape is \(3,\), it needs"):
        _data.prepare_inputs(np.ones(3))
    with pytest.raises(ValueError, match=r"one label per sample; its shape"):
        _data.encode_labels(np.ones((3, 2)))


def test_cli_forward_check_leaves_the_data_unchanged():
    """A network that works on its input in place gets a copy (a read-only
    memory map would crash the process, an array be changed)."""

    class InPlace(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = torch.nn.Linear(3, 2)

        def forward(self, x):
            return self.fc(x.sub_(0.5))

    X = np.arange(12, dtype=np.float32).reshape(4, 3)
    args = _parser.make_parser().parse_args(["audit", "--model", "mlp"])
    _network.check_forward(InPlace(), X, args)
    assert X.tolist() == np.arange(12, dtype=np.float32).reshape(4, 3).tolist()


@pytest.mark.parametrize(
    ("option", "target", "message"),
    [
        ("--out", "missing/r.html", "--out {p}: the folder {d} does not exist"),
        ("--json", "missing/r.json", "--json {p}: the folder {d} does not exist"),
        ("--out", ".", "--out {p} is a folder; give a file name in it"),
    ],
)
def test_cli_checks_outputs_before_training(
    option, target, message, tmp_path, monkeypatch, capsys
):
    def no_training(*args):
        raise AssertionError("the net was built before the outputs were checked")

    monkeypatch.setattr(_main, "build_net", no_training)
    path = tmp_path / target
    argv = ["audit", *FAST, "--out", str(tmp_path / "r.html"), option, str(path)]
    with pytest.raises(SystemExit) as exit_:
        cli.main(argv)
    assert exit_.value.code == 2
    expected = message.format(p=path, d=path.parent)
    assert one_line_error(capsys) == f"sksim audit: error: {expected}.\n"


@pytest.mark.parametrize("label", [7, "cat"])
def test_cli_single_class_is_one_line(tmp_path, capsys, label):
    path = tmp_path / "one.npz"
    np.savez(path, X=np.ones((20, 3), np.float32), y=np.full(20, label))
    with pytest.raises(SystemExit) as exit_:
        cli.main(["audit", "--data", str(path), *FAST])
    assert exit_.value.code == 2
    err = one_line_error(capsys)
    assert f"y holds a single class ({label})" in err
    assert "analyses need at least two classes" in err


def test_cli_device(tmp_path, capsys):
    out = tmp_path / "cpu.html"
    argv = ["audit", "--dataset", "iris", *FAST, "--analyses", "density"]
    args = _parser.make_parser().parse_args(
        [*argv, "--device", "cpu", "--out", str(out)]
    )
    assert _network.build_net(args, np.ones((2, 4), np.float32), 3).device == "cpu"
    assert cli.main([*argv, "--device", "cpu", "--out", str(out)]) == 0
    for device, message in (
        ("cuda:99", "device='cuda:99', but this machine has"),
        ("cuda:99", "use --device cpu, or one of them"),  # not device="cpu"
        ("banana", "not a torch device"),
        ("mps", "MPS has no float64 tensors"),
    ):
        with pytest.raises(SystemExit) as exit_:
            cli.main([*argv, "--device", device])
        assert exit_.value.code == 2
        assert message in capsys.readouterr().err


def test_cli_seeds_the_module_factory(factory_module, tmp_path):
    argv = ["audit", "--dataset", "digits", "--module", "userarch:make", *FAST]
    X = np.ones((2, 64), np.float32)
    weights = [
        [
            p.detach().clone()
            for p in _network.build_net(
                _parser.make_parser().parse_args([*argv, "--seed", str(seed)]), X, 10
            ).module.parameters()
        ]
        for seed in (0, 0, 1)
    ]
    for same, other in zip(weights[1], weights[2], strict=True):
        assert not torch.equal(same, other)
    for first, same in zip(weights[0], weights[1], strict=True):
        assert torch.equal(first, same)


def test_cli_leaves_torch_generator_as_it_was(tmp_path):
    """The check of the network's forward drew its weights from it, unseeded."""
    state = torch.get_rng_state()
    argv = ["audit", *FAST, "--analyses", "density", "--quiet"]
    assert cli.main([*argv, "--out", str(tmp_path / "r.html")]) == 0
    assert torch.equal(torch.get_rng_state(), state)


def test_cli_rejects_a_nan_learning_rate(capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main(["audit", "--lr", "nan"])
    assert exit_.value.code == 2
    assert "must be a positive finite number; got nan" in capsys.readouterr().err


def test_cli_exits_1_when_every_analysis_failed(tmp_path, monkeypatch, capsys):
    def diverged(self, fold):
        raise ValueError("The network produced NaN or infinite outputs\nsecond line")

    monkeypatch.setattr(Density, "run", diverged)
    out = tmp_path / "r.html"
    argv = ["audit", "--dataset", "iris", *FAST, "--analyses", "density"]
    with warnings.catch_warnings():
        warnings.simplefilter("error", AuditAnalysisFailedWarning)
        with pytest.raises(SystemExit) as exit_:
            cli.main([*argv, "--out", str(out)])
    assert exit_.value.code == 1
    assert one_line_error(capsys) == (
        "sksim audit: error: every analysis failed on every fold (density: "
        "ValueError: The network produced NaN or infinite outputs); the report "
        "lists them all\n"
    )
    assert "Failed on every fold" in out.read_text()


def test_cli_interrupted_says_how_to_resume(tmp_path, monkeypatch, capsys):
    def interrupted(self, fold):
        raise KeyboardInterrupt

    monkeypatch.setattr(Density, "run", interrupted)
    argv = ["audit", "--dataset", "iris", *FAST, "--analyses", "density"]
    argv += ["--out", str(tmp_path / "r.html"), "--cache", str(tmp_path / "c")]
    with pytest.raises(SystemExit) as exit_:
        cli.main(argv)
    assert exit_.value.code == 130
    assert one_line_error(capsys) == (
        "sksim audit: interrupted; run it again to resume from --cache\n"
    )
    assert len(list((tmp_path / "c").glob("*.pkl"))) == 1  # fold 0, trained


def test_cli_reads_a_folder_of_npy_files_memory_mapped(tmp_path, digit_images, npz):
    X, y = digit_images
    folder = tmp_path / "arrays"
    folder.mkdir()
    np.save(folder / "X.npy", X[:120].astype(np.float32))
    np.save(folder / "y.npy", y[:120])
    X_mapped, y_read = _data.load_npy_folder(folder)
    assert isinstance(X_mapped, np.memmap)
    assert _data.prepare_inputs(X_mapped) is X_mapped  # float32: never copied
    np.testing.assert_array_equal(y_read, y[:120])
    reports = {}
    for name, source in (("npy", folder), ("npz", npz)):
        reports[name] = tmp_path / f"{name}.json"
        argv = ["audit", "--data", str(source), *FAST, "--analyses", "density"]
        argv += ["--out", str(tmp_path / f"{name}.html"), "--json", str(reports[name])]
        assert cli.main(argv) == 0
    rows = {
        k: json.loads(v.read_text())["tables"]["samples"] for k, v in reports.items()
    }
    assert [r["log_density"] for r in rows["npy"]] == [
        r["log_density"] for r in rows["npz"]
    ]
    (folder / "y.npy").unlink()
    with pytest.raises(SystemExit) as stop:
        cli.main(["audit", "--data", str(folder), *FAST])
    assert stop.value.code == 2


def test_errors_are_one_line_without_terminal_colours():
    error = ValueError("\x1b[1mWeights only load failed.\x1b[0m Re-running\n  with it")
    assert _main._one_line(error) == "Weights only load failed. Re-running with it"


def test_cli_unknown_layer_fails_before_any_training(
    npz, tmp_path, capsys, monkeypatch
):
    def refuse(*args, **kwargs):
        raise AssertionError("the audit trained before checking --layers")

    monkeypatch.setattr(NeuralNet, "fit", refuse)
    argv = ["audit", "--data", str(npz), *FAST, "--out", str(tmp_path / "r.html")]
    with pytest.raises(SystemExit) as exit_:
        cli.main([*argv, "--layers", "hidden,nonesuch"])
    assert exit_.value.code == 2
    assert "Unknown layers ['nonesuch']" in one_line_error(capsys)


def test_cli_groups_stay_in_one_fold(tmp_path, digit_images, capsys):
    X, y = digit_images
    groups = np.arange(120) // 8  # 15 groups: StratifiedKFold would split them
    np.savez(tmp_path / "g.npz", X=X[:120], y=y[:120], groups=groups)
    argv = ["audit", "--data", str(tmp_path / "g.npz"), "--groups", *FAST]
    argv += ["--analyses", "density", "--out", str(tmp_path / "g.html")]
    argv += ["--json", str(tmp_path / "g.json")]
    assert cli.main(argv) == 0
    report = json.loads((tmp_path / "g.json").read_text())
    assert report["metadata"]["cv"].startswith("StratifiedGroupKFold")
    fold_of = {}
    for row in report["tables"]["samples"]:
        fold_of.setdefault(groups[row["index"]], set()).add(row["fold"])
    assert len(fold_of) == 15 and all(len(f) == 1 for f in fold_of.values())
    np.savez(tmp_path / "no_groups.npz", X=X[:120], y=y[:120])
    for data, extra, message in (
        ("no_groups.npz", [], "--groups reads the group of each example from"),
        ("g.npz", ["--checkpoint", "w.pt", "--test-data", "g.npz"], "no folds"),
        (None, ["--dataset", "iris"], "from --data (an .npz file with an array"),
    ):  # --dataset was told that --checkpoint has no folds
        source = [] if data is None else ["--data", str(tmp_path / data)]
        argv = ["audit", *source, "--groups", *FAST, *extra]
        with pytest.raises(SystemExit) as stop:
            cli.main(argv)
        assert stop.value.code == 2
        assert message in capsys.readouterr().err


def test_cli_interrupted_in_a_collector_callback_exits_130(
    tmp_path, monkeypatch, capsys
):
    """Python drops a KeyboardInterrupt raised in a weakref's callback: the
    audit went on, wrote its report and exited 0."""
    import signal
    import weakref

    def interrupted_in_a_callback(self, fold):
        class Collected:
            pass

        weakref.finalize(Collected(), signal.raise_signal, signal.SIGINT)
        raise ValueError("after the interrupt")  # as a later step fails

    monkeypatch.setattr(Density, "run", interrupted_in_a_callback)
    argv = ["audit", "--dataset", "iris", *FAST, "--analyses", "density"]
    with pytest.raises(SystemExit) as exit_:
        cli.main([*argv, "--out", str(tmp_path / "r.html")])
    assert exit_.value.code == 130
    assert one_line_error(capsys) == "sksim audit: interrupted\n"
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
