"""The audit past its scale threshold: linear-cost methods, reported."""

import functools
import json

import numpy as np
import pandas as pd
import pytest
from _architectures import small_net
from _audit_helpers import (
    AUDIT_OPTIONS,
    N_PREFIT_TRAIN,
    digit_images,
    prefit_net,
    prefit_split,
)
from _audit_helpers import prefit_audit as shared_prefit_audit

import sksim
from sksim import GradientDensityEstimator, NetworkNeighbors
from sksim import cli as sksim_cli
from sksim.audit import audit
from sksim.audit.analyses import REGISTRY
from sksim.audit.analyses.class_fitting import per_class_rows
from sksim.audit.analyses.neighbors import recall_rows
from sksim.neighbors import recall

ANALYSES = ("density", "neighbors", "denoising", "class_fitting")
N_TRAIN = N_PREFIT_TRAIN


def prefit_audit(scale_threshold, options=AUDIT_OPTIONS, **kwargs):
    return shared_prefit_audit(
        ANALYSES, scale_threshold, options, n_neighbors=3, **kwargs
    )


@functools.cache
def scaled():
    return prefit_audit(50)


@functools.cache
def unscaled():
    return prefit_audit(None)


def test_past_the_threshold_density_is_the_soft_count():
    X_train, _, X_test, _ = prefit_split()
    soft = GradientDensityEstimator(prefit_net(), method="soft", random_state=0)
    expected = soft.fit(X_train).neighbor_counts(X_test)
    counts = scaled()["samples"]["neighbor_count"].to_numpy()
    np.testing.assert_allclose(counts, expected, rtol=1e-6)
    assert not np.allclose(counts, np.round(counts))  # not whole hard counts
    assert scaled().metadata["methods"]["density"] == (
        "soft counts (exact, time O(N p), no pair of examples formed): "
        "160 training examples > scale_threshold 50"
    )


def test_soft_counts_that_do_not_fit_sum_sketches():
    """The soft counts' sums S (d x p, float64) of a large network past the
    threshold failed the analysis (a 20 M-parameter MLP at the default
    max_memory): the audit sums the reference's sketches instead, and says so."""
    X_train, _, X_test, _ = prefit_split()
    net = prefit_net()
    p = sum(t.numel() for t in net.module_.parameters())
    max_memory = 8 * 10 * p  # S takes 1.5 times its two thirds
    options = AUDIT_OPTIONS | dict(density=dict(max_memory=max_memory))
    result = shared_prefit_audit(("density",), 50, options)
    assert not result.failed
    sketched = GradientDensityEstimator(
        net, n_components=2048, max_memory=max_memory, random_state=0
    )
    expected = sketched.fit(X_train).neighbor_counts(X_test)
    counts = result["samples"]["neighbor_count"].to_numpy()
    np.testing.assert_allclose(counts, expected, rtol=1e-6)
    method = result.metadata["methods"]["density"]
    assert method.startswith(
        "soft counts over gradient sketches with n_components=2048 (time O(N), "
        "no pair of examples formed) (The sums of the whitened Jacobians that "
        'method="soft" keeps (10 outputs x '
    )
    assert method.endswith(": 160 training examples > scale_threshold 50")

    def exhausted(*args, **kwargs):  # another MemoryError, whatever its words
        raise MemoryError("The sums of the whitened Jacobians")

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(GradientDensityEstimator, "fit", exhausted)
        failed = shared_prefit_audit(("density",), 50, options).failed["density"]
    assert failed[0] == "MemoryError: The sums of the whitened Jacobians"
    given = options | dict(density=dict(max_memory=max_memory, method="soft"))
    refused = shared_prefit_audit(("density",), 50, given)  # the user's choice
    assert refused.failed["density"][0].startswith("SoftSumsMemoryError: The sums")


def test_the_users_options_of_counts_over_pairs_keep_their_method():
    """A threshold given for the density is not dropped by the soft counts."""
    X_train, _, X_test, _ = prefit_split()
    options = AUDIT_OPTIONS | dict(density=dict(threshold=0.5))
    result = shared_prefit_audit(("density",), 50, options)
    hard = GradientDensityEstimator(prefit_net(), method="hard", threshold=0.5)
    expected = hard.fit(X_train).neighbor_counts(X_test)
    counts = result["samples"]["neighbor_count"].to_numpy()
    np.testing.assert_array_equal(counts, expected)
    assert result.metadata["methods"]["density"].startswith(
        "hard counts (similarity above 0.5)"
    )
    assert "scale_threshold" not in result.metadata["methods"]["density"]


def test_below_the_threshold_results_are_unchanged():
    X_train, _, X_test, _ = prefit_split()
    hard = GradientDensityEstimator(
        prefit_net(), method="hard", threshold=0.9, random_state=0
    )
    expected = hard.fit(X_train).neighbor_counts(X_test)
    for result in (unscaled(), prefit_audit(N_TRAIN)):  # N == threshold: unscaled
        samples = result["samples"]
        np.testing.assert_array_equal(samples["neighbor_count"], expected)
        exact = NetworkNeighbors(prefit_net(), n_neighbors=3, random_state=0)
        _, rows = exact.fit(X_train).most_similar(X_test)
        np.testing.assert_array_equal(samples["nearest_train_index"], rows[:, 0])
        assert "neighbor_recall" not in result["folds"]
        assert result.metadata["methods"] == {
            "density": "hard counts (similarity above 0.9) over all pairs of examples",
            "neighbors": "exact search over all pairs of examples",
            "denoising": "80 of the 160 training examples drawn at random, each "
            "against all 160 (time O(max_samples N)), weights='cosine_pos_pow'; "
            "take the predicted error as a lower bound: with these weights it was "
            "2 to 2.5 times too optimistic on the user guide's synthetic data, and "
            "is more so where the network misfits",
            "class_fitting": "Dirichlet-process mixtures (variational backend) "
            "fitted on all 160 training examples",
        }


@pytest.mark.parametrize("analysis", ["neighbors", "label_issues"])
def test_the_exact_search_the_low_recall_warning_advises_runs_past_the_threshold(
    analysis,
):
    """options[...] = {"algorithm": "exact", "n_components": None}, as the
    low-recall warning advises, failed: the scaled search_components stayed."""
    exact = dict(algorithm="exact", n_components=None)
    advised = shared_prefit_audit(
        (analysis,), 50, AUDIT_OPTIONS | {analysis: exact}, n_neighbors=3
    )
    below = shared_prefit_audit((analysis,), None, AUDIT_OPTIONS, n_neighbors=3)
    assert not advised.failed
    for table in ("samples", analysis):
        pd.testing.assert_frame_equal(advised[table], below[table])
    assert advised.metadata["methods"] == below.metadata["methods"]
    assert "neighbor_recall" not in advised["folds"]
    sketched = shared_prefit_audit(
        (analysis,), 50, AUDIT_OPTIONS | {analysis: dict(algorithm="exact")}
    )  # exact search of the sketches, of the size chosen past the threshold
    assert not sketched.failed
    method = sketched.metadata["methods"][analysis]
    assert "scale_threshold 50" in method and "FAISS" not in method


@pytest.mark.parametrize("analysis", ["neighbors", "label_issues"])
def test_a_faiss_search_asked_for_below_the_threshold_is_the_scaled_one(analysis):
    """options[...] = {"algorithm": "faiss"} below the threshold failed on every
    fold, after their training (no n_components): it takes the scaled search."""
    faiss = AUDIT_OPTIONS | {analysis: dict(algorithm="faiss")}
    asked = shared_prefit_audit((analysis,), None, faiss, n_neighbors=3)
    past = shared_prefit_audit((analysis,), 50, AUDIT_OPTIONS, n_neighbors=3)
    assert not asked.failed
    for table in ("samples", "folds", analysis):
        pd.testing.assert_frame_equal(asked[table], past[table])
    method = asked.metadata["methods"][analysis]
    assert method.startswith("FAISS search") or ", by FAISS search" in method
    reason = ": 160 training examples > scale_threshold 50"
    assert past.metadata["methods"][analysis] == method + reason


def test_faiss_neighbours_and_their_recall_on_a_sample():
    X_train, _, X_test, _ = prefit_split()
    result = scaled()
    table = result["neighbors"].sort_values(["index", "rank"])
    found = table["train_index"].to_numpy().reshape(len(X_test), 3)
    sample = recall_rows(len(X_test), 200, 0)
    np.testing.assert_array_equal(sample, np.arange(len(X_test)))  # 80 < 200
    exact = NetworkNeighbors(prefit_net(), n_neighbors=3, random_state=0)
    _, exact_rows = exact.fit(X_train).most_similar(X_test[sample])
    hits = [
        len(set(a) & set(b)) for a, b in zip(found[sample], exact_rows, strict=True)
    ]
    expected = sum(hits) / (3 * len(sample))
    measured = result["folds"]["neighbor_recall"].item()
    assert 0 <= measured <= 1
    assert measured == pytest.approx(expected)
    summary = result["summary"].set_index("metric")
    assert summary.loc["neighbor_recall", "mean"] == pytest.approx(expected)
    assert result.metadata["methods"]["neighbors"] == (
        "FAISS search (index 'Flat') over gradient sketches with n_components=256, "
        "candidates (24 per neighbour) from their 64 principal components ranked "
        "by their exact similarities, recall@3 against exact neighbours measured "
        "on 80 held-out examples: 160 training examples > "  # all: none drawn
        "scale_threshold 50"
    )


def test_recall_on_a_subsample_of_queries():
    options = {**AUDIT_OPTIONS, "neighbors": dict(recall_queries=7)}
    result = prefit_audit(50, options, cache=None)
    X_train, _, X_test, _ = prefit_split()
    sample = recall_rows(len(X_test), 7, 0)
    assert len(sample) == 7 and len(np.unique(sample)) == 7
    table = result["neighbors"].sort_values(["index", "rank"])
    found = table["train_index"].to_numpy().reshape(len(X_test), 3)[sample]
    exact = NetworkNeighbors(prefit_net(), n_neighbors=6, random_state=0)
    nearest = exact.fit(X_train).most_similar(X_test[sample])
    assert result["folds"]["neighbor_recall"].item() == pytest.approx(
        recall(found, *nearest)
    )
    assert (
        "measured on 7 held-out examples drawn at random"
        in (result.metadata["methods"]["neighbors"])
    )


def test_recall_counts_shared_neighbours_whatever_their_order():
    found = np.array([[1, 2, 3], [4, 5, 6]])
    exact = np.array([[3, 2, 9, 0], [7, 8, 9, 0]])
    similarities = np.array([[0.9, 0.8, 0.7, 0.1], [0.9, 0.8, 0.7, 0.1]])
    assert recall(found, similarities, exact) == pytest.approx(2 / 6)
    assert recall(exact[:, :3], similarities, exact) == 1.0


def test_recall_counts_a_neighbour_as_similar_as_the_last_as_found():
    """A duplicated reference example: either copy is as near."""
    exact = np.array([[3, 2, 9, 4, 0]])
    similarities = np.array([[0.9, 0.8, 0.7, 0.7, 0.1]])
    assert recall(np.array([[2, 3, 4]]), similarities, exact) == 1.0
    assert recall(np.array([[2, 3, 0]]), similarities, exact) == pytest.approx(2 / 3)
    assert recall(np.array([[9, 3, 4]]), similarities, exact) == pytest.approx(2 / 3)


def test_denoising_stays_on_its_subsample():
    rows = scaled()["denoising"]
    assert rows["n_samples"].tolist() == [80]
    assert (
        scaled()
        .metadata["methods"]["denoising"]
        .startswith("80 of the 160 training examples drawn at random")
    )


def test_the_denoising_caveat_is_that_of_its_weights():
    """ "A lower bound, 2 to 2.5 times too optimistic" was said of any weights."""
    options = {**AUDIT_OPTIONS, "denoising": {"max_samples": 80, "weights": "ntk"}}
    result = shared_prefit_audit(("denoising",), None, options)
    method = result.metadata["methods"]["denoising"]
    assert method.endswith("(time O(max_samples N)), weights='ntk'")
    assert "optimistic" not in REGISTRY["denoising"].description


def test_class_fitting_subsamples_each_class():
    y = np.array([0] * 10 + [1] * 3 + [2] * 6)
    rows = per_class_rows(y, 4, 0)
    assert np.bincount(y[rows]).tolist() == [4, 3, 4]
    assert np.all(np.diff(rows) > 0)
    np.testing.assert_array_equal(per_class_rows(y, None, 0), np.arange(len(y)))
    options = {
        **AUDIT_OPTIONS,
        "class_fitting": {**AUDIT_OPTIONS["class_fitting"], "max_per_class": 5},
    }
    result = prefit_audit(50, options)
    assert result.metadata["methods"]["class_fitting"] == (
        "Dirichlet-process mixtures (variational backend) fitted on 50 of the 160 "
        "training examples (at most 5 per class, drawn at random): 160 training "
        "examples > scale_threshold 50"
    )
    assert scaled().metadata["methods"]["class_fitting"] == (
        "Dirichlet-process mixtures (variational backend) fitted on all 160 "
        "training examples"
    )


def test_the_report_says_which_methods_ran(tmp_path):
    text = scaled().to_html(tmp_path / "r.html").read_text()
    assert "Method: soft counts (exact, time O(N p)" in text
    assert "<li><b>density</b>: soft counts (exact, time O(N p)" in text
    assert "<th>scale threshold</th><td style='text-align:left'>50</td>" in text
    assert f"<td style='text-align:left'>sksim {sksim.__version__}, python" in text
    assert "Method: FAISS search (index &#x27;Flat&#x27;)" in text
    recall_value = scaled()["folds"]["neighbor_recall"].item()
    assert (
        f"Recall@3 of the approximate neighbours against exact ones: "
        f"{recall_value:.3f} (fold 0 {recall_value:.3f})." in text
    )
    data = json.loads(scaled().to_json(tmp_path / "r.json").read_text())
    assert data["metadata"]["scale_threshold"] == 50
    assert set(data["metadata"]["methods"]) == set(ANALYSES)


def test_the_cache_tells_scaled_from_unscaled_analyses(tmp_path):
    options = dict(AUDIT_OPTIONS)
    first = prefit_audit(None, options, cache=tmp_path)
    second = prefit_audit(50, options, cache=tmp_path)
    assert second.metadata["methods"]["density"].startswith("soft counts")
    np.testing.assert_allclose(
        second["samples"]["neighbor_count"], scaled()["samples"]["neighbor_count"]
    )
    assert first.metadata["methods"]["density"].startswith("hard counts")
    # denoising and class fitting keep the same options below 160: still
    # computed again, since the key says whether the analysis ran at scale
    assert second.metadata["cache"]["loaded"] == 0


def test_without_faiss_neighbours_use_exact_search_of_sketches(monkeypatch):
    from sksim.audit.analyses import neighbors

    monkeypatch.setattr(neighbors, "find_spec", lambda name: None)
    result = shared_prefit_audit(("neighbors",), 50, n_neighbors=3)
    assert result.metadata["methods"]["neighbors"].startswith(
        "exact search over all pairs of gradient sketches with n_components=256 "
        "(similarities estimated by the sketches), recall@3"
    )
    assert 0 <= result["folds"]["neighbor_recall"].item() <= 1


def test_scale_threshold_is_checked():
    X_train, y_train, _, _ = prefit_split()
    with pytest.raises(ValueError, match="scale_threshold must be a positive int"):
        audit(small_net(X_train), X_train, y_train, cv=2, scale_threshold=0)
    with pytest.raises(ValueError, match="recall_queries must be a positive int"):
        audit(
            small_net(X_train),
            X_train,
            y_train,
            cv=2,
            options=dict(neighbors=dict(recall_queries=0)),
        )
    with pytest.raises(ValueError, match="max_per_class must be a positive int"):
        audit(
            small_net(X_train),
            X_train,
            y_train,
            cv=2,
            options=dict(class_fitting=dict(max_per_class=-1)),
        )


def test_cross_validated_audit_switches_per_fold():
    X, y = digit_images()
    result = audit(
        small_net(X, max_epochs=2),
        X,
        y,
        cv=2,
        analyses=("density",),
        scale_threshold=119,
    )
    # both training folds hold 120 examples > 119
    assert result.metadata["methods"]["density"].endswith(
        "120 training examples > scale_threshold 119"
    )
    assert REGISTRY["density"].defaults["method"] == "hard"


def test_folds_on_both_sides_of_the_threshold_use_the_same_methods():
    """Hard and soft log-densities, of other scales, were averaged together."""
    X, y = digit_images()
    X, y = np.concatenate([X, X[:1]]), np.concatenate([y, y[:1]])
    result = audit(
        small_net(X, max_epochs=2),
        X,
        y,
        cv=3,
        analyses=("density",),
        scale_threshold=160,
    )
    sizes = result["folds"]["n_train"].tolist()
    assert min(sizes) == 160 < max(sizes) == 161
    # one text for the three folds, each saying why in the same words
    assert result.metadata["methods"]["density"] == (
        "soft counts (exact, time O(N p), no pair of examples formed): the largest "
        "training fold holds 161 training examples > scale_threshold 160"
    )


def test_cli_scale_threshold(tmp_path, capsys):
    out, js = tmp_path / "r.html", tmp_path / "r.json"
    argv = ["audit", "--dataset", "iris", "--cv", "2", "--max-epochs", "2"]
    argv += ["--analyses", "density,neighbors", "--scale-threshold", "50"]
    argv += ["--out", str(out), "--json", str(js), "--quiet"]
    assert sksim_cli.main(argv) == 0
    meta = json.loads(js.read_text())["metadata"]
    assert meta["scale_threshold"] == 50
    assert meta["methods"]["density"].endswith(
        "75 training examples > scale_threshold 50"
    )
    assert "Method: FAISS search" in out.read_text()
