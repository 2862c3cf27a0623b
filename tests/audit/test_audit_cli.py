import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import _audit_helpers
import numpy as np
import pytest

from sksim import cli


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
            """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    return tmp_path


def test_cli_in_process_with_user_data_and_architecture(
    tmp_path, npz, factory_module, digit_images
):
    out, js = tmp_path / "r.html", tmp_path / "r.json"
    argv = ["audit", "--data", str(npz), "--module", "userarch:make", *FAST]
    argv += ["--analyses", "density,neighbors", "--n-neighbors", "2"]
    argv += ["--out", str(out), "--json", str(js), "--layers", "1,3"]
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


def test_cli_builtin_dataset_reports_progress(tmp_path, capsys):
    out = tmp_path / "iris.html"
    argv = ["audit", "--dataset", "iris", "--cv", "2", "--max-epochs", "3"]
    argv += ["--analyses", "density,sensitivity", "--out", str(out)]
    result = cli.run_audit(cli.make_parser().parse_args(argv))
    err = capsys.readouterr().err
    assert "150 samples of shape (4,), 3 classes, 2-fold" in err
    assert f"report written to {out.resolve()}" in err
    assert "sensitivity" in result.skipped
    assert result.metadata["data"] == "iris"


def test_load_dataset():
    X, y = cli.load_dataset("digits")
    assert X.shape == (1797, 1, 8, 8) and X.dtype == np.float32
    assert X.min() == 0 and X.max() == 1
    X, y = cli.load_dataset("wine")
    np.testing.assert_allclose(X.mean(axis=0), 0, atol=1e-5)
    np.testing.assert_allclose(X.std(axis=0), 1, atol=1e-4)
    assert sorted(np.unique(y)) == [0, 1, 2]
    with pytest.raises(ValueError, match="--dataset must be one of"):
        cli.load_dataset("mnist")


def test_help_explains_every_option(capsys):
    parser = cli.make_parser()
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
        (["--module", "userarch"], "--module must look like package.module:factory"),
        (["--module", "userarch:missing"], "Module 'userarch' has no 'missing'"),
        (["--module", "userarch:not_a_net"], "returned a str; it must return"),
        (["--module", "no_such_mod_xyz:make"], "No module named 'no_such_mod_xyz'"),
        (["--dataset", "iris", "--model", "cnn"], "The cnn model needs square images"),
    ],
)
def test_cli_errors(args, message, factory_module, capsys, tmp_path):
    argv = ["audit", *args, *FAST, "--out", str(tmp_path / "x.html")]
    with pytest.raises(SystemExit) as exit_:
        cli.main(argv)
    assert exit_.value.code == 2
    assert message in capsys.readouterr().err


def test_cli_npz_without_y(tmp_path, capsys):
    path = tmp_path / "bad.npz"
    np.savez(path, X=np.zeros((4, 2)))
    with pytest.raises(SystemExit):
        cli.main(["audit", "--data", str(path), *FAST])
    assert "lacks the array(s) ['y']: save the inputs as X" in capsys.readouterr().err


def test_cli_argument_errors(capsys):
    with pytest.raises(SystemExit):
        cli.main(["audit", "--analyses", "density,foo"])
    assert "unknown analyses ['foo']" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(["audit", "--cv", "0"])
    assert "must be a positive integer; got 0" in capsys.readouterr().err


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
