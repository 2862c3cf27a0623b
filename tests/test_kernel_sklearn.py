"""NetworkSimilarityKernel inside real scikit-learn objects."""

import copy
import functools
import pickle

import joblib
import numpy as np
import pytest
import torch
from _architectures import AnyWidth, TokenModel, make_digits_net
from _sklearn_checks import EXPECTED_FAILED_CHECKS
from sklearn.base import clone
from sklearn.cluster import SpectralClustering
from sklearn.decomposition import KernelPCA
from sklearn.exceptions import NotFittedError
from sklearn.frozen import FrozenEstimator
from sklearn.kernel_ridge import KernelRidge
from sklearn.model_selection import GridSearchCV
from sklearn.neighbors import KNeighborsClassifier, NearestNeighbors
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import FunctionTransformer
from sklearn.svm import SVC
from sklearn.utils.estimator_checks import parametrize_with_checks
from sklearn.utils.validation import check_is_fitted

from sksim import (
    GradientDensityEstimator,
    LabelIssueDetector,
    NetworkNeighbors,
    NetworkSimilarityKernel,
    SelfDenoisingAnalysis,
    network_similarity,
    similarity_to_distance,
)


def _plain_module():
    torch.manual_seed(0)
    return AnyWidth()


@parametrize_with_checks(
    [NetworkSimilarityKernel(_plain_module(), batch_size=16)],
    expected_failed_checks=lambda est: EXPECTED_FAILED_CHECKS,
)
def test_sklearn_conformance(estimator, check):
    check(estimator)


def test_fit_does_not_mutate_the_net():
    module = _plain_module().train()
    before = {k: v.clone() for k, v in module.state_dict().items()}
    X = np.random.RandomState(0).randn(8, 3)
    NetworkSimilarityKernel(module).fit(X).transform(X)
    assert module.training
    for key, value in module.state_dict().items():
        assert torch.equal(value, before[key])


def _fitted_attributes(estimator) -> set[str]:
    return {name for name in vars(estimator) if name.endswith("_")}


@pytest.mark.parametrize(
    "make, first, then",
    [
        (NetworkSimilarityKernel, dict(n_components=16), dict(n_components=None)),
        (GradientDensityEstimator, dict(n_components=16), dict(n_components=None)),
        (GradientDensityEstimator, dict(method="soft"), dict(method="hard")),
        (NetworkNeighbors, dict(n_components=16), dict(n_components=None)),
    ],
)
def test_a_refit_keeps_nothing_of_another_settings_fit(make, first, then):
    """A sketch's, or a soft count's (d x p), attributes stayed after a refit."""
    module = _plain_module()
    X = np.random.RandomState(0).randn(12, 3).astype(np.float32)
    refit = make(module, random_state=0, **first).fit(X)
    refit.set_params(**then).fit(X)
    fresh = make(module, random_state=0, **then).fit(X)
    assert _fitted_attributes(refit) == _fitted_attributes(fresh)
    answer = {
        NetworkSimilarityKernel: lambda e: e.transform(X),
        GradientDensityEstimator: lambda e: e.score_samples(X),
        NetworkNeighbors: lambda e: e.kneighbors(X)[0],
    }[make]
    np.testing.assert_array_equal(answer(refit), answer(fresh))


@pytest.mark.parametrize(
    "make",
    [
        NetworkSimilarityKernel,
        GradientDensityEstimator,
        NetworkNeighbors,
        SelfDenoisingAnalysis,
        functools.partial(LabelIssueDetector, cv="prefit"),
    ],
)
def test_a_failed_fit_leaves_the_estimator_unfitted(make):
    """A refit on inputs the network refuses kept net_ and the failed inputs'
    n_features_in_ beside the earlier fit: the next call checked the good
    inputs against the failed ones, or failed on a missing attribute."""
    torch.manual_seed(0)
    module = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh())
    module.append(torch.nn.Linear(4, 2))
    rng = np.random.RandomState(0)
    X, y = rng.randn(12, 3).astype(np.float32), np.arange(12) % 2
    if make is SelfDenoisingAnalysis:  # targets in the outputs' space
        y = np.eye(2)[y]
    estimator = make(module).fit(X, y)
    with pytest.raises(ValueError, match="The network fails on inputs of shape"):
        estimator.fit(np.zeros((12, 5), np.float32), y)
    assert not _fitted_attributes(estimator)
    with pytest.raises(NotFittedError):
        check_is_fitted(estimator)


def test_a_label_issue_refit_by_folds_keeps_no_prefit_net(digits, fitted_digits_net):
    X, y = digits
    X, y = X[:60], y[:60]
    detector = LabelIssueDetector(fitted_digits_net, cv="prefit", random_state=0)
    detector.fit(X, y).set_params(net=clone(fitted_digits_net), cv=2).fit(X, y)
    fresh = LabelIssueDetector(clone(fitted_digits_net), cv=2, random_state=0)
    assert _fitted_attributes(detector) == _fitted_attributes(fresh.fit(X, y))
    assert not hasattr(detector, "net_")


def test_transform_is_kernel_to_fit_set(digits, fitted_digits_net):
    X, _ = digits
    kern = NetworkSimilarityKernel(fitted_digits_net).fit(X[:40])
    K = kern.transform(X[40:50])
    np.testing.assert_allclose(
        K, network_similarity(fitted_digits_net, X[40:50], X[:40])
    )
    K_fit = kern.fit_transform(X[:40])
    assert np.array_equal(K_fit, K_fit.T)
    np.testing.assert_allclose(np.diag(K_fit), 1.0, atol=1e-5)


def test_frozen_estimator_and_module_give_same_kernel(digits, fitted_digits_net):
    X, _ = digits
    K = network_similarity(fitted_digits_net, X[:20])
    np.testing.assert_array_equal(
        network_similarity(FrozenEstimator(fitted_digits_net), X[:20]), K
    )
    np.testing.assert_array_equal(
        network_similarity(fitted_digits_net.module_, X[:20]), K
    )


def test_svc_pipeline_with_frozen_net(digits, fitted_digits_net):
    X, y = digits
    pipe = make_pipeline(
        NetworkSimilarityKernel(FrozenEstimator(fitted_digits_net)),
        SVC(kernel="precomputed", C=10.0),
    ).fit(X[:300], y[:300])
    assert pipe.score(X[600:800], y[600:800]) > 0.75  # chance is 0.1


def test_kernel_ridge_matches_explicit_solution(digits, fitted_digits_net):
    X, y = digits
    Y = np.eye(10)[y]
    pipe = make_pipeline(
        NetworkSimilarityKernel(fitted_digits_net),
        KernelRidge(kernel="precomputed", alpha=0.1),
    ).fit(X[:100], Y[:100])
    K = network_similarity(fitted_digits_net, X[:100])
    coef = np.linalg.solve(K + 0.1 * np.eye(100), Y[:100])
    K_test = network_similarity(fitted_digits_net, X[600:620], X[:100])
    np.testing.assert_allclose(pipe.predict(X[600:620]), K_test @ coef, atol=1e-6)


def test_nearest_neighbors_on_distances(digits, fitted_digits_net):
    X, y = digits
    kern = NetworkSimilarityKernel(fitted_digits_net).fit(X[:200])
    K = kern.transform(X[600:610])
    nn = NearestNeighbors(metric="precomputed", n_neighbors=5).fit(
        similarity_to_distance(kern.fit_transform(X[:200]))
    )
    dist, idx = nn.kneighbors(similarity_to_distance(K))
    np.testing.assert_array_equal(idx, np.argsort(-K, axis=1, kind="stable")[:, :5])
    pipe = make_pipeline(
        NetworkSimilarityKernel(fitted_digits_net),
        FunctionTransformer(similarity_to_distance),
        KNeighborsClassifier(metric="precomputed", n_neighbors=3),
    ).fit(X[:300], y[:300])
    assert pipe.score(X[600:700], y[600:700]) > 0.75


def test_spectral_clustering_and_kernel_pca(digits, fitted_digits_net):
    X, y = digits
    K = NetworkSimilarityKernel(fitted_digits_net).fit_transform(X[:150])
    labels = SpectralClustering(
        n_clusters=10, affinity="precomputed", random_state=0
    ).fit_predict(np.clip(K, 0, None))
    from sklearn.metrics import adjusted_rand_score

    assert adjusted_rand_score(y[:150], labels) > 0.3
    embedding = KernelPCA(n_components=5, kernel="precomputed").fit_transform(K)
    centred = K - K.mean(0) - K.mean(1)[:, None] + K.mean()
    top = np.linalg.eigvalsh(centred)[::-1][:5]
    np.testing.assert_allclose((embedding**2).sum(0), top, rtol=1e-6)


def test_a_numpy_integer_output_is_an_int(digits, fitted_digits_net):
    """A grid over output=np.arange(10) failed every fit: "output must be ..."."""
    X, _ = digits
    for estimator in (NetworkSimilarityKernel, GradientDensityEstimator):
        fitted = [
            estimator(fitted_digits_net, output=o).fit(X[:30]) for o in (3, np.int64(3))
        ]
        if estimator is NetworkSimilarityKernel:
            np.testing.assert_array_equal(*(f.transform(X[30:40]) for f in fitted))
        else:
            np.testing.assert_array_equal(*(f.score_samples(X[30:40]) for f in fitted))


def test_grid_search_over_net_and_svc_parameters(digits):
    X, y = digits
    pipe = Pipeline(
        [
            ("kernel", NetworkSimilarityKernel(make_digits_net(), random_state=0)),
            ("svc", SVC(kernel="precomputed")),
        ]
    )
    search = GridSearchCV(
        pipe, {"kernel__net__max_epochs": [1, 4], "svc__C": [0.1, 10.0]}, cv=2
    ).fit(X[:240], y[:240])
    assert len(search.cv_results_["params"]) == 4
    assert search.best_score_ > 0.6
    fitted_net = search.best_estimator_.named_steps["kernel"].net_
    assert fitted_net.max_epochs == search.best_params_["kernel__net__max_epochs"]
    # the unfitted net given to the pipeline was cloned, not trained in place
    assert not getattr(pipe.named_steps["kernel"].net, "initialized_", False)


def test_unfitted_net_training_is_seeded(digits):
    X, y = digits
    first = NetworkSimilarityKernel(make_digits_net(max_epochs=1), random_state=3)
    second = clone(first)
    K1 = first.fit(X[:60], y[:60]).transform(X[60:70])
    K2 = second.fit(X[:60], y[:60]).transform(X[60:70])
    np.testing.assert_array_equal(K1, K2)


@pytest.mark.parametrize("dump", ["pickle", "joblib"])
def test_round_trip_gives_identical_kernel(digits, fitted_digits_net, dump, tmp_path):
    X, _ = digits
    kern = NetworkSimilarityKernel(fitted_digits_net).fit(X[:30])
    K = kern.transform(X[30:40])
    if dump == "pickle":
        restored = pickle.loads(pickle.dumps(kern))
    else:
        joblib.dump(kern, tmp_path / "kernel.joblib")
        restored = joblib.load(tmp_path / "kernel.joblib")
    np.testing.assert_array_equal(restored.transform(X[30:40]), K)


@pytest.mark.parametrize("change", [dict(output=3), dict(params="3")])
def test_parameters_set_after_fit_apply_at_the_next_fit(digits, change):
    """What fit computed and the engine that queries it share their settings:
    set_params after fit is refused until the next fit, in the estimator and
    in its copies (fit's output was answered for output=3, silently)."""
    X, _ = digits
    module = torch.nn.Sequential(
        torch.nn.Flatten(), torch.nn.Linear(64, 8), torch.nn.Tanh()
    )
    module.append(torch.nn.Linear(8, 10))
    density = GradientDensityEstimator(module).fit(X[:40])
    expected = density.score_samples(X[40:50])
    density.set_params(**change)
    for each in (density, pickle.loads(pickle.dumps(density))):
        with pytest.raises(ValueError, match="changed since fit.*Call fit again"):
            each.score_samples(X[40:50])
    refitted = density.fit(X[:40]).score_samples(X[40:50])
    assert not np.allclose(refitted, expected)


@pytest.mark.parametrize(
    "estimator, change, query",
    [
        (
            lambda m: NetworkSimilarityKernel(m, n_components=64, random_state=0),
            dict(kind="ntk"),
            "transform",
        ),
        (
            lambda m: NetworkSimilarityKernel(m, n_components=64, random_state=0),
            dict(n_components=None),
            "transform",
        ),
        (
            lambda m: GradientDensityEstimator(m, method="hard"),
            dict(method="soft"),
            "score_samples",
        ),
        (
            lambda m: GradientDensityEstimator(m, method="hard"),
            dict(n_components=64),
            "score_samples",
        ),
        (lambda m: NetworkNeighbors(m), dict(algorithm="faiss"), "kneighbors"),
        # the engine kept fit's: the logits' kernel answered for output=3
        (lambda m: NetworkSimilarityKernel(m), dict(output=3), "transform"),
        (lambda m: GradientDensityEstimator(m), dict(params=["0"]), "score_samples"),
        (lambda m: NetworkNeighbors(m), dict(output=0), "kneighbors"),
    ],
    ids=[
        "kernel kind",
        "kernel sketches",
        "density method",
        "density sketches",
        "search",
        "kernel output",
        "density params",
        "search output",
    ],
)
def test_parameters_fit_computed_with_refuse_other_values_until_refit(
    digits, estimator, change, query
):
    """A sketched kernel set to kind="ntk" after fit answered 3.2 off the
    NTK (query features of the new kind against reference sketches of the
    old), and n_components=None 0.66 off the cosine; a density set to soft
    counts failed with a bare AttributeError. Query-time parameters (the
    hard count's threshold) still apply at once."""
    X, _ = digits
    fitted = estimator(_plain_module()).fit(X[:30])
    expected = getattr(fitted, query)(X[30:35])
    name, value = next(iter(change.items()))
    before = fitted.get_params()[name]
    fitted.set_params(**change)
    with pytest.raises(ValueError, match=rf"changed since fit: {name}=.*Call fit"):
        getattr(fitted, query)(X[30:35])
    fitted.set_params(**{name: before})
    np.testing.assert_array_equal(getattr(fitted, query)(X[30:35])[0], expected[0])


def first_output(out):
    return out[:, 0]


def test_parameters_changed_in_place_or_to_equal_looking_objects_are_refused(digits):
    """A params list grown in place after fit was not seen (fit's was used);
    a copy of fit's callable was refused, showing the same repr twice."""
    X, _ = digits
    params = ["w"]
    kernel = NetworkSimilarityKernel(_plain_module(), params=params).fit(X[:30])
    params.append("b")
    with pytest.raises(ValueError, match=r"params=\['w', 'b'\] \(fitted with \['w'\]"):
        kernel.transform(X[30:35])
    output = functools.partial(first_output)
    kernel = NetworkSimilarityKernel(_plain_module(), output=output).fit(X[:30])
    kernel.set_params(output=copy.deepcopy(output))
    with pytest.raises(ValueError, match=r"output=.*\(not the value fit had\)"):
        kernel.transform(X[30:35])
    kernel.set_params(output=output)
    assert kernel.transform(X[30:35]).shape == (5, 30)


def test_query_time_parameters_apply_without_refit(digits):
    X, _ = digits
    module = _plain_module()
    density = GradientDensityEstimator(module, method="hard").fit(X[:30])
    K = network_similarity(module, X[30:35], X[:30])
    for threshold in (0.5, 0.9):
        density.set_params(threshold=threshold)
        counts = density.neighbor_counts(X[30:35])
        np.testing.assert_array_equal(counts, (K > threshold).sum(axis=1))


def test_grid_search_retrains_a_fitted_net_unless_frozen(digits, fitted_digits_net):
    """A clone of a fitted skorch net is unfitted; FrozenEstimator keeps the net."""
    X, y = digits
    expected = network_similarity(fitted_digits_net, X[:10], X[:120])  # refit on all
    for net, kept in (
        (fitted_digits_net, False),
        (FrozenEstimator(fitted_digits_net), True),
    ):
        search = GridSearchCV(
            make_pipeline(NetworkSimilarityKernel(net), SVC(kernel="precomputed")),
            {"svc__C": [1.0]},
            cv=[(np.arange(90), np.arange(90, 120))],
        ).fit(X[:120], y[:120])
        K = search.best_estimator_[0].transform(X[:10])
        assert np.allclose(K, expected) == kept


def test_clones_of_fitted_nets_and_frozen_unfitted_ones_say_what_to_do(
    digits, fitted_digits_net
):
    """The clone's error asked for a fitted net, which had been given; a
    frozen unfitted net was trained, and frozen fitted ones retrained per
    fold by the estimators that cross-validate."""
    X, y = digits
    for estimator in (
        GradientDensityEstimator(clone(fitted_digits_net)),
        NetworkNeighbors(clone(fitted_digits_net)),
    ):
        with pytest.raises(ValueError, match="no y was given.*FrozenEstimator"):
            estimator.fit(X[:50])
    prefit = LabelIssueDetector(clone(fitted_digits_net), cv="prefit")
    with pytest.raises(ValueError, match="is not fitted.*A clone of a fitted"):
        prefit.fit(X[:50], y[:50])
    frozen_unfitted = FrozenEstimator(make_digits_net())
    with pytest.raises(ValueError, match="unfitted skorch net: frozen, it is never"):
        NetworkSimilarityKernel(frozen_unfitted).fit(X[:50], y[:50])
    folds = LabelIssueDetector(FrozenEstimator(fitted_digits_net), cv=2)
    with pytest.raises(ValueError, match='is not trained again.*cv="prefit"'):
        folds.fit(X[:50], y[:50])


def test_fitted_estimators_take_sequences_padded_to_another_length():
    """Text is padded per batch: a fitted estimator takes queries of another
    length when the network does, as a dict or as an integer array of token
    ids (refused before, as if its columns were features), and refuses other
    axes. A floating 2-D array's columns stay features, as scikit-learn's
    checks hold them."""
    torch.manual_seed(0)
    module = TokenModel()
    g = torch.Generator().manual_seed(0)
    X = {"tokens": torch.randint(0, 11, (8, 10), generator=g)}
    Q = {"tokens": torch.randint(0, 11, (3, 7), generator=g)}
    expected = network_similarity(module, Q, X)
    kernel = NetworkSimilarityKernel(module).fit(X)
    np.testing.assert_allclose(kernel.transform(Q), expected, rtol=1e-6)
    search = NetworkNeighbors(module, n_neighbors=2).fit(X)
    similarities, _ = search.most_similar(Q, 2)
    best = -np.sort(-expected, axis=1)[:, :2]
    np.testing.assert_allclose(similarities, best, rtol=1e-5)
    with pytest.raises(ValueError, match="pass inputs with the same axes as in fit"):
        kernel.transform({"tokens": Q["tokens"][:, None]})
    tokens = NetworkSimilarityKernel(module).fit(X["tokens"].numpy())
    np.testing.assert_allclose(tokens.transform(Q["tokens"]), expected, rtol=1e-6)
    floats = NetworkSimilarityKernel(torch.nn.Linear(10, 2)).fit(np.ones((4, 10)))
    with pytest.raises(ValueError, match="X has 7 features, but .* expecting 10"):
        floats.transform(np.ones((2, 7)))
