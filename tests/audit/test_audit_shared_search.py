"""The neighbours and label-issue analyses share one search per fold."""

import pandas as pd
import pytest
from _architectures import small_net
from _audit_helpers import digit_images
from _audit_helpers import prefit_audit as shared_prefit_audit

from sksim import NetworkNeighbors
from sksim.audit import audit
from sksim.audit.analyses import REGISTRY

SHARING = ("neighbors", "label_issues")


@pytest.fixture
def fits(monkeypatch):
    """The searches fitted, recorded as (id of the search, number of inputs)."""
    fitted = []
    fit = NetworkNeighbors.fit

    def recorded(self, X, y=None, **kwargs):
        fitted.append((id(self), len(X)))
        return fit(self, X, y, **kwargs)

    monkeypatch.setattr(NetworkNeighbors, "fit", recorded)
    return fitted


def cv_audit(analyses, scale_threshold):
    X, y = digit_images()
    return audit(
        small_net(X, max_epochs=2),
        X,
        y,
        cv=2,
        analyses=analyses,
        n_neighbors=3,
        scale_threshold=scale_threshold,
        random_state=0,
    )


def prefit_audit(analyses, scale_threshold):
    return shared_prefit_audit(analyses, scale_threshold, n_neighbors=3)


@pytest.mark.parametrize("run", [cv_audit, prefit_audit], ids=["cv", "prefit"])
@pytest.mark.parametrize("scale_threshold", [50, None], ids=["faiss", "exact"])
def test_label_issues_reuse_the_neighbours_search(fits, run, scale_threshold):
    pytest.importorskip("faiss")
    both = run(SHARING, scale_threshold)
    n_folds = len(both["folds"])
    assert len(fits) == n_folds  # one fit of the training part per fold
    assert both["folds"]["n_train"].tolist() == [n for _, n in fits]
    fits.clear()
    alone = run(("label_issues",), scale_threshold)
    assert len(fits) == n_folds
    pd.testing.assert_frame_equal(both["label_issues"], alone["label_issues"])
    methods = both.metadata["methods"]
    assert methods["label_issues"] == alone.metadata["methods"]["label_issues"]
    if scale_threshold is not None:  # the shared search is the sketched one
        assert "FAISS search" in methods["label_issues"]
        assert "FAISS search" in methods["neighbors"]
        # each with its own candidates: those of the queries are not the fit's
        assert "candidates (16 per neighbour)" in methods["label_issues"]
        assert "candidates (24 per neighbour)" in methods["neighbors"]
    fits.clear()
    neighbors = run(("neighbors",), scale_threshold)
    pd.testing.assert_frame_equal(both["neighbors"], neighbors["neighbors"])


def first_logits(output):
    return output[:, :3]


@pytest.mark.parametrize(
    "options, n_fits",
    [
        (dict(label_issues=dict(rtol=1e-4)), 4),  # two searches per fold
        (dict(neighbors=dict(output=first_logits)), 4),
        (  # the same callable: equal searches
            dict(
                neighbors=dict(output=first_logits),
                label_issues=dict(output=first_logits),
            ),
            2,
        ),
        (  # equal callables that are different objects count as different
            dict(
                neighbors=dict(output=lambda out: out[:, :3]),
                label_issues=dict(output=lambda out: out[:, :3]),
            ),
            4,
        ),
    ],
)
def test_only_equal_searches_are_shared(fits, options, n_fits):
    X, y = digit_images()
    audit(
        small_net(X, max_epochs=2),
        X,
        y,
        cv=2,
        analyses=SHARING,
        options=options,
        random_state=0,
    )
    assert len(fits) == n_fits


@pytest.mark.parametrize("analyses", [SHARING, (*SHARING, "denoising")])
def test_the_kept_search_is_freed_before_other_analyses_and_after_the_fold(
    monkeypatch, analyses
):
    kept = {}  # the fold's search as each analysis starts, per fold
    for name in analyses:
        run = type(REGISTRY[name]).run

        def spied(self, fold, run=run, name=name):
            kept.setdefault(fold, {})[name] = fold._search
            return run(self, fold)

        monkeypatch.setattr(type(REGISTRY[name]), "run", spied)
    X, y = digit_images()
    audit(
        small_net(X, max_epochs=2),
        X,
        y,
        cv=2,
        analyses=analyses,
        n_neighbors=3,
        options=dict(denoising=dict(max_samples=40)),
        random_state=0,
    )
    assert len(kept) == 2
    for fold, searches in kept.items():
        assert searches["neighbors"] is None
        assert isinstance(searches["label_issues"], NetworkNeighbors)
        assert searches.get("denoising", None) is None
        assert fold._search is None
