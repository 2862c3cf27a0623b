"""The audit's label-issue analysis against hand computation and the detector."""

import json

import _audit_helpers
import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.base import clone
from sklearn.model_selection import StratifiedKFold

import sksim.label_issues
from sksim import LabelIssueDetector, NetworkNeighbors
from sksim._net import fit_net
from sksim.audit import audit
from sksim.audit.analyses.label_issues import (
    issue_rows,
    planted_precision,
    rank_issues,
    signals_table,
)
from sksim.cli import main
from sksim.cli._data import plant_label_noise
from sksim.label_issues import estimate_n_issues, score_labels

K = 4


@pytest.fixture(scope="module")
def noisy_digits():
    """The small digits with six labels flipped."""
    X, y = _audit_helpers.digit_images()
    noisy, flipped = plant_label_noise(y, 0.025, 0)
    return X, noisy, flipped


@pytest.fixture(scope="module")
def cv_audit(noisy_digits):
    X, y, _ = noisy_digits
    net = _audit_helpers.small_net(X, max_epochs=8)
    splitter = StratifiedKFold(3)
    result = audit(
        net,
        X,
        y,
        cv=splitter,
        analyses=("label_issues",),
        options=dict(label_issues=dict(n_neighbors=K)),
        random_state=0,
    )
    return net, splitter, result


def hand_scores(net, splitter, X, y):
    """-(P(y) + Q(y)) / 2 and (P + Q) / 2 of every example, fold by fold."""
    n_classes = 10
    P, Q = np.zeros((len(y), n_classes)), np.zeros((len(y), n_classes))
    neighbors = np.zeros((len(y), K), dtype=int)
    for train, test in splitter.split(X, y):
        fitted = fit_net(clone(net), X[train], y[train], 0)
        P[test] = fitted.predict_proba(X[test])
        search = NetworkNeighbors(fitted, n_neighbors=K).fit(X[train])
        similarities, found = search.most_similar(X[test])
        neighbors[test] = train[found]
        weights = np.maximum(similarities, 0)
        for row, w, rows in zip(test, weights, found, strict=True):
            for weight, j in zip(w, rows, strict=True):
                Q[row, y[train][j]] += weight
            Q[row] /= w.sum()
    rows = np.arange(len(y))
    mean = (P + Q) / 2
    return -mean[rows, y], mean, neighbors, P[rows, y], Q[rows, y]


def test_scores_equal_the_hand_computation_on_the_same_folds(noisy_digits, cv_audit):
    X, y, _ = noisy_digits
    net, splitter, result = cv_audit
    scores, mean, neighbors, P_given, Q_given = hand_scores(net, splitter, X, y)
    table = result["label_issues"].sort_values("index")
    assert table["index"].tolist() == list(range(len(y)))
    np.testing.assert_allclose(table["score"], scores, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(table["proba_given_label"], P_given, rtol=1e-5)
    np.testing.assert_allclose(table["neighbors_given_label"], Q_given, rtol=1e-5)
    np.testing.assert_array_equal(table["suggested_label"], mean.argmax(axis=1))
    np.testing.assert_array_equal(np.stack(table["neighbors"]), neighbors)
    assert table["is_issue"].sum() == estimate_n_issues(mean, y)
    ranked = result["label_issues"]["score"].to_numpy()
    assert np.all(np.diff(ranked) <= 0)
    assert list(result["label_issues"].columns[:4]) == [
        "index",
        "fold",
        "given_label",
        "suggested_label",
    ]


def test_the_planted_flips_rank_first(noisy_digits, cv_audit):
    _, _, flipped = noisy_digits
    table = cv_audit[2]["label_issues"]
    found = planted_precision(table, dict(flipped=flipped.tolist()))
    top = set(table["index"][: len(flipped)])
    assert found["k"] == len(flipped) == 6
    assert found["hits"] == len(top & set(flipped.tolist()))
    assert found["precision"] >= 0.5


def test_planted_precision_by_hand():
    table = pd.DataFrame(
        dict(index=[7, 3, 9, 1, 4], is_issue=[True, True, True, False, False])
    )
    found = planted_precision(table, dict(flipped=[3, 4, 8]))
    # top 3 = {7, 3, 9}: one flip; estimated set {7, 3, 9} holds 1 of 3
    assert found == dict(k=3, hits=1, precision=1 / 3, recall=1 / 3)


def prefit_label_issues(net, X, y):
    """The prefit audit's label issues, the first 160 examples for training."""
    return audit(
        net,
        X[:160],
        y[:160],
        cv="prefit",
        X_test=X[160:],
        y_test=y[160:],
        analyses=("label_issues",),
        options=dict(label_issues=dict(n_neighbors=K)),
    )


def test_prefit_audit_takes_the_detector_prefit_path(noisy_digits, tmp_path):
    X, y, _ = noisy_digits
    net = _audit_helpers.small_net(X, max_epochs=3).fit(X[:160], y[:160])
    result = prefit_label_issues(net, X, y)
    expected = LabelIssueDetector(net, cv="prefit", n_neighbors=K).fit(X[:160], y[:160])
    table = result["label_issues"]
    reference = expected.label_issues_
    assert table["index"].tolist() == reference["index"].tolist()
    np.testing.assert_allclose(table["score"], reference["score"])
    assert table["suggested_label"].tolist() == reference["suggested_label"].tolist()
    assert table["is_issue"].sum() == expected.n_issues_
    assert "in-sample probabilities" in result.metadata["methods"]["label_issues"]


def test_prefit_neighbours_are_all_the_other_training_examples_at_most(noisy_digits):
    """Ten neighbours asked of six training examples: each has the five others."""
    X, y, _ = noisy_digits
    net = _audit_helpers.small_net(X, max_epochs=3).fit(X[:160], y[:160])
    result = audit(
        net,
        X[:6],
        y[:6],
        cv="prefit",
        X_test=X[160:],
        y_test=y[160:],
        analyses=("label_issues",),
        options=dict(label_issues=dict(n_neighbors=10)),
    )
    table = result["label_issues"]
    assert sorted(table["index"]) == list(range(6))
    for index, neighbors in zip(table["index"], table["neighbors"], strict=True):
        assert sorted(neighbors) == [j for j in range(6) if j != index]


def test_prefit_audit_refuses_logits_given_as_probabilities(noisy_digits):
    X, y, _ = noisy_digits
    net = _audit_helpers.small_net(X, max_epochs=1)
    net.set_params(predict_nonlinearity=None).fit(X[:160], y[:160])  # logits
    with pytest.raises(ValueError, match="predict_proba does not give class prob"):
        prefit_label_issues(net, X, y)


def test_regression_is_skipped_with_the_reason(noisy_digits):
    X, _, _ = noisy_digits
    with torch.random.fork_rng():
        torch.manual_seed(0)
        module = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 1))
    target = X.mean(axis=(1, 2, 3))
    result = audit(
        module,
        X[:160],
        target[:160],
        cv="prefit",
        X_test=X[160:],
        y_test=target[160:],
        analyses=("label_issues",),
    )
    assert "needs class labels" in result.skipped["label_issues"]
    assert "label_issues" not in result.tables


def test_invalid_options_raise_before_training(noisy_digits):
    X, y, _ = noisy_digits
    with pytest.raises(ValueError, match="n_neighbors"):
        audit(
            _audit_helpers.small_net(X),
            X,
            y,
            analyses=("label_issues",),
            options=dict(label_issues=dict(n_neighbors=0)),
        )


def test_below_the_scale_threshold_the_search_is_exact(noisy_digits, monkeypatch):
    """The detector's own switch to FAISS (past 10,000) is not the audit's."""
    monkeypatch.setattr(sksim.label_issues, "EXACT_MAX_SAMPLES", 10)
    X, y, _ = noisy_digits
    result = audit(
        _audit_helpers.small_net(X, max_epochs=2),
        X,
        y,
        cv=2,
        analyses=("label_issues",),
        scale_threshold=None,
        random_state=0,
    )
    method = result.metadata["methods"]["label_issues"]
    assert method.endswith("k = 10, by exact search over all pairs of examples")


def test_options_the_audit_sets_are_refused(noisy_digits):
    X, y, _ = noisy_digits
    fixed = r"sets \['combination'\], which the audit sets for the label_issues"
    with pytest.raises(ValueError, match=fixed):
        audit(
            _audit_helpers.small_net(X),
            X,
            y,
            analyses=("label_issues",),
            options=dict(label_issues=dict(combination="rank")),
        )


def test_plant_label_noise_flips_the_share_asked_to_other_classes():
    y = np.repeat(np.arange(4), 50)
    noisy, flipped = plant_label_noise(y, 0.05, 3)
    assert len(flipped) == 10 and np.all(np.diff(flipped) > 0)
    assert np.all(noisy[flipped] != y[flipped])
    kept = np.setdiff1d(np.arange(len(y)), flipped)
    np.testing.assert_array_equal(noisy[kept], y[kept])
    again, same = plant_label_noise(y, 0.05, 3)
    np.testing.assert_array_equal(again, noisy)
    np.testing.assert_array_equal(same, flipped)
    # codes kept with --n-classes: flips went to 0, 1, 2, which the data lack
    sparse, flipped = plant_label_noise(np.array([3, 5, 9])[y % 3], 0.2, 0)
    assert set(sparse) == {3, 5, 9} and len(flipped) == 40


def test_cli_refuses_label_noise_that_flips_nothing(tmp_path, capsys):
    """The report said "precision nan" of no flips."""
    X, y = _audit_helpers.digit_images()
    np.savez(tmp_path / "digits.npz", X=X[:200], y=y[:200])
    argv = ["audit", "--data", str(tmp_path / "digits.npz"), "--quiet"]
    with pytest.raises(SystemExit):
        main([*argv, "--label-noise", "0.001", "--out", str(tmp_path / "r.html")])
    message = "--label-noise 0.001 flips no label of the 200 examples"
    assert message in capsys.readouterr().err
    assert len(plant_label_noise(y[:200], 1 / 200, 0)[1]) == 1  # the rate advised


def test_cli_records_the_planted_noise_and_reports_its_precision(tmp_path):
    X, y = _audit_helpers.digit_images()
    data = tmp_path / "digits.npz"
    np.savez(data, X=X, y=y)
    out, js = tmp_path / "report.html", tmp_path / "report.json"
    status = main(
        [
            "audit",
            "--data",
            str(data),
            "--cv",
            "2",
            "--max-epochs",
            "4",
            "--analyses",
            "label_issues",
            "--label-noise",
            "0.05",
            "--noise-seed",
            "1",
            "--out",
            str(out),
            "--json",
            str(js),
            "--quiet",
        ]
    )
    assert status == 0
    _, flipped = plant_label_noise(y, 0.05, 1)
    meta = json.loads(js.read_text())["metadata"]
    assert meta["label_noise"] == dict(
        rate=0.05, seed=1, flipped=flipped.tolist(), original=y[flipped].tolist()
    )
    html = out.read_text()
    assert "against the labels before the flips it is" in html
    assert "5.0% of the labels flipped at random" in html
    assert f"{len(flipped)} training labels were flipped at random" in html
    assert "are flipped ones: a precision of" in html


def test_cli_rejects_noise_outside_zero_one(capsys):
    with pytest.raises(SystemExit) as raised:
        main(["audit", "--label-noise", "1.5"])
    assert raised.value.code == 2
    assert "must be between 0 and 1" in capsys.readouterr().err


def test_issue_rows_mark_the_planted_flips(cv_audit, noisy_digits):
    _, _, flipped = noisy_digits
    table = cv_audit[2]["label_issues"]
    rows = issue_rows(table, dict(flipped=flipped.tolist()), top=8)
    assert len(rows) == 8
    expected = [int(i) in set(flipped.tolist()) for i in table["index"][:8]]
    assert rows["planted_flip"].tolist() == expected
    first = table.iloc[0]
    assert rows["nearest_training_examples"][0].startswith(
        f"#{first['neighbors'][0]} (y={first['neighbor_labels'][0]}, "
    )


def test_folds_with_fewer_neighbors_are_scored_on_the_neighbors_all_have():
    rng = np.random.RandomState(0)
    names = np.arange(3)  # label j is output j
    folds = []
    for fold, (n, k) in enumerate([(6, 4), (5, 3)]):
        P = rng.dirichlet(np.ones(3), size=n)
        similarities = np.sort(rng.uniform(0, 1, (n, k)))[:, ::-1]
        neighbors = rng.randint(0, 50, (n, k))
        labels = names[rng.randint(0, 3, n)]
        neighbor_labels = names[rng.randint(0, 3, (n, k))]
        rows = np.arange(n) + 10 * fold
        folds.append((P, similarities, neighbors, labels, neighbor_labels, rows))
        table = signals_table(
            fold, rows, labels, P, neighbors, similarities, neighbor_labels
        )
        folds[-1] += (table,)
    ranked = rank_issues(pd.concat([f[-1] for f in folds], ignore_index=True))
    P, similarities, neighbors, labels, neighbor_labels, rows = (  # k = 3 in both
        np.concatenate([f[i][:, :3] if f[i].ndim == 2 else f[i] for f in folds])
        for i in range(6)
    )
    y = np.searchsorted(names, labels)
    scored = score_labels(P, similarities, np.searchsorted(names, neighbor_labels), y)
    order = np.argsort(-scored.scores, kind="stable")
    np.testing.assert_array_equal(ranked["index"], rows[order])
    np.testing.assert_allclose(ranked["score"], scored.scores[order])
    np.testing.assert_array_equal(
        ranked["suggested_label"], names[scored.suggested[order]]
    )
    np.testing.assert_array_equal(np.stack(ranked["neighbors"]), neighbors[order])
    assert ranked["given_label"].tolist() == labels[order].tolist()
    assert ranked["is_issue"].sum() == scored.n_issues
