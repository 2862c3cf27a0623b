"""Neighbours past the scale threshold: sketch size by memory, low recall warned."""

import re
import warnings
from types import SimpleNamespace

import numpy as np
import pytest
from _audit_helpers import AUDIT_OPTIONS, prefit_net, prefit_split
from _audit_helpers import prefit_audit as shared_prefit_audit

from sksim import LabelIssueDetector, network_similarity
from sksim.audit._findings import findings, headline_meanings
from sksim.audit.analyses.neighbors import (
    MIN_RECALL,
    SEARCH_COMPONENTS,
    SKETCH_MEMORY,
    Neighbors,
    low_recall_warning,
    sketch_components,
    sketched_search,
)


def prefit_audit(neighbor_options):
    options = {**AUDIT_OPTIONS, "neighbors": neighbor_options}
    return shared_prefit_audit(("neighbors",), 50, options, n_neighbors=3)


@pytest.mark.parametrize(
    "n_train, n_outputs, expected",
    [
        (2_500, 10, 256),
        (50_000, 10, 256),  # 512 MB of float32 sketches: the budget exactly
        (50_001, 10, 128),
        (100_000, 10, 128),
        (200_000, 10, 64),
        (10**6, 10, 64),  # over the budget even at 64: the smallest
        (10**6, 1, 128),
    ],
)
def test_the_sketch_is_the_largest_that_fits_the_memory_budget(
    n_train, n_outputs, expected
):
    assert SKETCH_MEMORY == 2**29
    budget = 50_000 * 10 * 256 * 4
    assert sketch_components(n_train, n_outputs, budget) == expected
    assert sketch_components(10, 10, 10 * 10 * 64 * 4 - 1) == 64


def test_the_default_budget_gives_256_components_up_to_52_428_examples():
    assert sketch_components(52_428, 10) == 256
    assert sketch_components(52_429, 10) == 128


@pytest.mark.parametrize(
    "n_train, classes, reduced",
    [
        (25_000, range(10), True),  # 10 x 256 values searched on 64
        (64, range(10), False),  # no more training examples than components
        (25_000, None, True),  # regression: one output of 256 values, on 64
    ],
)
def test_faiss_searches_principal_components_of_wider_sketches(
    n_train, classes, reduced
):
    pytest.importorskip("faiss")
    fold = SimpleNamespace(train=np.arange(n_train), classes=classes)
    options = sketched_search(fold)
    assert options["algorithm"] == "faiss"
    assert options["n_components"] == "auto"  # chosen in fit, at least 64
    assert options.get("search_components") == (SEARCH_COMPONENTS if reduced else None)


def fitted(exact_ranking):
    """What :func:`low_recall_warning` reads of a fitted search."""
    return SimpleNamespace(
        exact_ranking_=exact_ranking,
        n_components_=64,
        candidates_per_neighbor=16,
    )


@pytest.mark.parametrize(
    "exact_ranking, advice",
    [
        (False, r"sketches of n_components=64; raise options\['neighbors'\]\['n_"),
        (
            True,
            r"candidates \(16 per neighbour\) ranked by their exact similarities; "
            r"raise options\['neighbors'\]\['candidates_per_neighbor'\]",
        ),
    ],
)
def test_a_recall_below_the_threshold_is_warned(exact_ranking, advice):
    assert MIN_RECALL == 0.8
    with pytest.warns(UserWarning, match=r"recall@5 of 0\.79 against exact ones") as w:
        low_recall_warning(0.79, fitted(exact_ranking), 5, "neighbors")
    assert re.search(advice, str(w[0].message))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        low_recall_warning(0.8, fitted(exact_ranking), 5, "neighbors")


@pytest.mark.parametrize(
    "options, ranking",
    [
        ({}, "ranked by their exact similarities"),
        ({"search_components": None}, "(similarities estimated by the sketches)"),
        (
            {"algorithm": "exact", "search_components": None},
            "(similarities estimated by the sketches)",
        ),
    ],
)
def test_the_method_says_whether_the_similarities_are_the_sketches(options, ranking):
    pytest.importorskip("faiss")
    result = prefit_audit(options)
    method = result.metadata["methods"]["neighbors"]
    assert ranking in method
    assert ("estimated" in method) == ("estimated" in ranking)
    similarities = result["neighbors"]["similarity"].to_numpy()
    rows = result["neighbors"]["train_index"].to_numpy()
    queries = result["neighbors"]["index"].to_numpy()
    X_train, _, X_test, _ = prefit_split()
    K = network_similarity(prefit_net(), X_test, X_train)
    error = np.abs(similarities - K[queries, rows]).max()
    assert (error > 1e-5) == ("estimated" in ranking)  # float32 rounding: 1e-7


def test_the_audit_records_the_warning_with_the_recall():
    result = prefit_audit(dict(n_components=1))
    recall = result["folds"]["neighbor_recall"].item()
    assert recall < MIN_RECALL
    assert result.metadata["warnings"] == [
        dict(
            warning="UserWarning: The approximate neighbours of the neighbors "
            "analysis have a recall@N of N.N against exact ones, below N.N, with "
            "sketches of n_components=N; "
            "raise options['neighbors']['n_components'] (or max_memory, from which "
            "n_components='auto' sizes them), or search exactly with "
            "algorithm='exact' and n_components=None.",
            times=1,
            samples=None,
            analyses={"neighbors": dict(times=1, samples=None)},
        )
    ]


def test_no_warning_when_the_recall_is_high():
    result = prefit_audit({})  # the scaled default: 256 components
    recall = result["folds"]["neighbor_recall"].item()
    assert recall >= MIN_RECALL
    assert "n_components=256" in result.metadata["methods"]["neighbors"]
    assert not any("recall" in w for w in result.metadata["warnings"])
    assert np.isfinite(result["samples"]["top_similarity"]).all()


def test_the_label_issues_measure_the_recall_of_their_own_search(tmp_path):
    """They took the sketched search unmeasured, with 16 candidates at k = 10."""
    pytest.importorskip("faiss")
    weak = dict(candidates_per_neighbor=1, search_components=2)
    options = {**AUDIT_OPTIONS, "label_issues": weak}
    for analyses in (("label_issues",), ("neighbors", "label_issues")):
        result = shared_prefit_audit(analyses, 50, options, n_neighbors=3)
        recall = result["folds"]["label_issue_recall"].item()
        assert recall < MIN_RECALL
        method = result.metadata["methods"]["label_issues"]
        assert "recall@10 against exact neighbours measured on 80 held-out" in method
        (warned,) = [
            w["warning"]
            for w in result.metadata["warnings"]
            if "recall" in w["warning"]
        ]
        assert "options['label_issues']['candidates_per_neighbor']" in warned
        text = result.to_html(tmp_path / "r.html").read_text()
        assert (
            f"Recall@10 of the approximate neighbours against exact ones: {recall:.3f}"
            in text
        )
    wide = shared_prefit_audit(("label_issues",), 50, AUDIT_OPTIONS, n_neighbors=3)
    assert wide["folds"]["label_issue_recall"].item() > recall
    # on queries of their own: those of the neighbours' options would make the
    # label issues' piece depend on another analysis' options (and its cache)
    fewer = {**AUDIT_OPTIONS, "neighbors": {"recall_queries": 20}}
    both = shared_prefit_audit(("neighbors", "label_issues"), 50, fewer, n_neighbors=3)
    methods = both.metadata["methods"]
    assert "measured on 20 held-out examples drawn at random" in methods["neighbors"]
    assert "measured on 80 held-out examples:" in methods["label_issues"]
    assert both["folds"]["label_issue_recall"].item() == (
        wide["folds"]["label_issue_recall"].item()
    )


@pytest.mark.parametrize("n_train, index", [(999_999, "Flat"), (10**6, "HNSW32")])
def test_neighbors_and_label_issues_share_the_index_of_their_size(n_train, index):
    pytest.importorskip("faiss")
    fold = SimpleNamespace(train=np.arange(n_train), classes=range(10), options={})
    assert Neighbors().scaled_options(fold)["index"] == index
    detector = LabelIssueDetector(None, **sketched_search(fold))
    X_reference = np.empty((n_train, 1), dtype=np.float32)
    assert detector._search(None, X_reference, 10).index == index


def test_findings_from_a_search_of_low_recall_say_so():
    """With a recall of 0.2, the findings stated the label issues, the
    unsupported predictions and the label agreement without a caveat."""
    pytest.importorskip("faiss")
    weak = dict(candidates_per_neighbor=1, search_components=2)
    options = {**AUDIT_OPTIONS, "neighbors": weak, "label_issues": weak}
    analyses = ("neighbors", "label_issues")
    result = shared_prefit_audit(analyses, 50, options, n_neighbors=3)
    said = findings(result)
    agreement = headline_meanings(result)["neighbor_label_agreement"]
    for metric, opening in [
        ("label_issue_recall", "training labels look wrong"),
        ("neighbor_recall", "held-out predictions are carried by none"),
    ]:
        recall = result["folds"][metric].item()
        assert recall < MIN_RECALL
        caveat = (
            " Read with care: the approximate search behind this found only "
            f"{recall:.0%} of the exact neighbours (the warnings say how to widen it)."
        )
        (finding,) = [text for text in said if opening in text]
        assert finding.endswith(caveat)
        if metric == "neighbor_recall":
            assert agreement.endswith(caveat)
    wide = shared_prefit_audit(analyses, 50, AUDIT_OPTIONS, n_neighbors=3)
    assert not any("Read with care" in text for text in findings(wide))
    assert "Read with care" not in headline_meanings(wide)["neighbor_label_agreement"]
