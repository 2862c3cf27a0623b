"""LabelIssueDetector: planted label errors, brute-force oracles, errors."""

import copy

import numpy as np
import pytest
import torch
from _architectures import AnyWidth, make_digits_net
from _sklearn_checks import EXPECTED_FAILED_CHECKS
from scipy.stats import rankdata
from sklearn.model_selection import GroupKFold, KFold, StratifiedKFold
from sklearn.utils.estimator_checks import parametrize_with_checks
from skorch import NeuralNetClassifier, NeuralNetRegressor
from skorch.callbacks import Callback

from sksim import LabelIssueDetector, label_issues, network_similarity
from sksim.label_issues import (
    COMBINATIONS,
    combine_signals,
    estimate_n_issues,
    neighbor_label_distribution,
)
from sksim.representations import memorization_scores


class Counting(Callback):
    """Counts the trainings started, over its clones (a fold's net is one)."""

    started = 0

    def on_train_begin(self, net, **kwargs):
        Counting.started += 1


def any_width_net(**kwargs):
    params = dict(
        module=AnyWidth,
        module__n_out=6,
        criterion=torch.nn.CrossEntropyLoss,
        max_epochs=2,
        lr=0.1,
        train_split=None,
        verbose=0,
    )
    return NeuralNetClassifier(**(params | kwargs))


def _plain_module():
    torch.manual_seed(0)
    return AnyWidth(n_out=6)


@parametrize_with_checks(
    [
        LabelIssueDetector(_plain_module(), cv="prefit", n_neighbors=3),
        LabelIssueDetector(any_width_net(), cv=2, n_neighbors=3, random_state=0),
    ],
    # a plain module is the net parameter itself; a skorch net is cloned
    expected_failed_checks=lambda est: (
        EXPECTED_FAILED_CHECKS if isinstance(est.net, torch.nn.Module) else {}
    ),
)
def test_sklearn_compatible(estimator, check):
    check(estimator)


def flip(y, n_flipped, seed=0):
    """``y`` with ``n_flipped`` labels moved to another of 10 classes."""
    rng = np.random.RandomState(seed)
    flipped = rng.choice(len(y), n_flipped, replace=False)
    noisy = y.copy()
    noisy[flipped] = (y[flipped] + rng.randint(1, 10, n_flipped)) % 10
    return noisy, flipped


@pytest.fixture(scope="module")
def planted(digits):
    X, y = digits[0][:600], digits[1][:600]
    noisy, flipped = flip(y, 30)
    detector = LabelIssueDetector(make_digits_net(), random_state=0).fit(X, noisy)
    return X, y, noisy, flipped, detector


def test_planted_label_errors_rank_first_with_their_true_labels(planted):
    X, y, noisy, flipped, detector = planted
    top = np.argsort(-detector.scores_)[:30]
    precision = np.isin(top, flipped).mean()
    assert precision >= 0.8
    recovered = (detector.suggested_labels_[flipped] == y[flipped]).mean()
    assert recovered >= 0.8
    assert 15 <= detector.n_issues_ <= 60
    np.testing.assert_array_equal(detector.classes_, np.arange(10))
    np.testing.assert_allclose(detector.oof_proba_.sum(axis=1), 1)
    np.testing.assert_allclose(detector.neighbor_proba_.sum(axis=1), 1)


def test_label_issues_frame_is_ranked_with_its_evidence(planted):
    X, y, noisy, flipped, detector = planted
    frame = detector.label_issues_
    order = frame["index"].to_numpy()
    np.testing.assert_array_equal(np.sort(order), np.arange(600))
    assert (np.diff(frame["score"].to_numpy()) <= 0).all()
    np.testing.assert_array_equal(frame["score"], detector.scores_[order])
    np.testing.assert_array_equal(frame["given_label"], noisy[order])
    np.testing.assert_array_equal(
        frame["suggested_label"], detector.suggested_labels_[order]
    )
    assert frame["is_issue"].sum() == detector.n_issues_
    assert frame["is_issue"].iloc[: detector.n_issues_].all()
    first = frame.iloc[0]
    np.testing.assert_array_equal(
        first["neighbors"], detector.neighbor_indices_[first["index"]]
    )
    np.testing.assert_array_equal(first["neighbor_labels"], noisy[first["neighbors"]])
    np.testing.assert_array_equal(
        first["neighbor_similarities"],
        detector.neighbor_similarities_[first["index"]],
    )


def test_out_of_fold_neighbours_come_from_the_other_folds(planted):
    X, y, noisy, flipped, detector = planted
    for _, test in StratifiedKFold(3).split(X, noisy):
        assert not np.isin(detector.neighbor_indices_[test], test).any()
    expected = neighbor_label_distribution(
        detector.neighbor_similarities_, noisy[detector.neighbor_indices_], 10
    )
    np.testing.assert_allclose(detector.neighbor_proba_, expected)


def test_neighbours_are_as_many_as_the_reference_allows(digits, fitted_digits_net):
    """n_neighbors above what the reference holds: prefit, each example's
    neighbours are all the others; cross-validated, as many as the smallest
    training fold (the test folds are smaller and did not cap them)."""
    X, y = digits[0][600:605], digits[1][600:605]
    prefit = LabelIssueDetector(fitted_digits_net, cv="prefit", n_neighbors=10)
    indices = prefit.fit(X, y).neighbor_indices_
    assert indices.shape == (5, 4)
    for i, row in enumerate(indices):
        assert sorted(row) == [j for j in range(5) if j != i]
    X, y = digits[0][:60], digits[1][:60] % 2
    net = any_width_net(module__n_out=2, max_epochs=1)
    detector = LabelIssueDetector(net, cv=3, n_neighbors=30, random_state=0)
    assert detector.fit(X, y).neighbor_indices_.shape == (60, 30)  # folds of 40


def test_cross_validated_fits_with_a_seed_repeat(digits):
    """random_state seeds each fold's training: a fit again, whatever torch's
    generator holds by then, gives the same scores."""
    X, y = digits[0][:90], digits[1][:90] % 3
    net = any_width_net(module__n_out=3, iterator_train__shuffle=True)
    first = LabelIssueDetector(net, cv=3, random_state=0).fit(X, y).scores_
    torch.manual_seed(123)
    again = LabelIssueDetector(net, cv=3, random_state=0).fit(X, y).scores_
    np.testing.assert_array_equal(first, again)


def test_prefit_signals_against_the_brute_force_kernel(digits, fitted_digits_net):
    X, y = digits[0][600:700], digits[1][600:700]
    noisy, _ = flip(y, 10)
    detector = LabelIssueDetector(fitted_digits_net, cv="prefit", n_neighbors=4)
    detector.fit(X, noisy)
    np.testing.assert_allclose(
        detector.oof_proba_, fitted_digits_net.predict_proba(X), rtol=1e-6
    )
    K = network_similarity(fitted_digits_net, X)
    np.fill_diagonal(K, -np.inf)  # an example is not its own neighbour
    order = np.argsort(-K, axis=1, kind="stable")[:, :4]
    np.testing.assert_array_equal(detector.neighbor_indices_, order)
    Q = np.zeros((100, 10))
    for i in range(100):
        for j in order[i]:
            Q[i, noisy[j]] += max(K[i, j], 0)
    Q /= Q.sum(axis=1, keepdims=True)
    np.testing.assert_allclose(detector.neighbor_proba_, Q, atol=1e-6)
    mean = (detector.oof_proba_ + Q) / 2
    np.testing.assert_allclose(
        detector.scores_, -mean[np.arange(100), noisy], atol=1e-6
    )
    np.testing.assert_array_equal(detector.suggested_labels_, mean.argmax(axis=1))


def test_neighbor_label_distribution_against_a_loop():
    rng = np.random.RandomState(0)
    similarities = rng.uniform(-0.5, 1, size=(20, 5))
    similarities[3] = -0.2  # no positive weight: uniform
    labels = rng.randint(0, 3, size=(20, 5))
    Q = neighbor_label_distribution(similarities, labels, 3)
    for i in range(20):
        counts = np.zeros(3)
        for s, c in zip(similarities[i], labels[i], strict=True):
            counts[c] += max(s, 0)
        expected = counts / counts.sum() if counts.sum() > 0 else np.full(3, 1 / 3)
        np.testing.assert_allclose(Q[i], expected)


def test_estimated_count_is_confident_learnings_calibrated_joint():
    y = np.array([0, 0, 0, 1, 1, 1])
    combined = np.array(
        [[0.9, 0.1], [0.8, 0.2], [0.2, 0.8], [0.1, 0.9], [0.3, 0.7], [0.7, 0.3]]
    )
    assert estimate_n_issues(combined, y) == 2  # rows 2 and 5
    # thresholds 0.583 and 0.85; rows [0.55, 0.45] and [0.2, 0.8] reach none,
    # so the counted rows of each class are scaled up to its size: class 0 has
    # 1 of 3 counted off the diagonal, 6 examples: 2 issues; class 1 none.
    y = np.array([0, 0, 0, 0, 0, 0, 1, 1])
    combined = np.array(
        [[0.9, 0.1]] * 2
        + [[0.05, 0.95]]
        + [[0.55, 0.45]] * 3
        + [[0.1, 0.9]]
        + [[0.2, 0.8]]
    )
    assert estimate_n_issues(combined, y) == 2


def test_the_signals_functions_check_their_inputs():
    """A NaN row was left out of the count (0 issues, no error), float codes
    failed in NumPy's cast, a y of another length in a boolean index."""
    P = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4]])
    y = np.array([0, 0, 1])
    assert estimate_n_issues(P, y.astype(float)) == estimate_n_issues(P, y)
    with pytest.raises(
        ValueError, match=r"combined holds NaN .* in 1 row\(s\), e\.g\. \[1\]"
    ):
        estimate_n_issues(np.where([[False], [True], [False]], np.nan, P), y)
    with pytest.raises(
        ValueError, match=r"shape \(n, n_classes\) with n = len\(y\) = 2"
    ):
        estimate_n_issues(P, y[:2])
    with pytest.raises(ValueError, match=r"class codes 0 \.\. 1 of combined's columns"):
        estimate_n_issues(P, y + 0.5)
    with pytest.raises(ValueError, match=r"class codes 0 \.\. 1 of P's columns"):
        combine_signals(P, P, np.array(["a", "a", "b"]))
    with pytest.raises(ValueError, match="Q holds NaN"):
        combine_signals(P, P * np.nan, y)


def test_tied_scores_share_their_mean_rank():
    """Neighbours often agree on a label (Q(y) = 1 for many): the tied examples
    share the mean of their ranks, as the docstring says, not the first."""
    P = np.array([[0.9, 0.1], [0.8, 0.2], [0.7, 0.3], [0.6, 0.4]])
    Q = np.array([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0], [0.5, 0.5]])
    _, scores = combine_signals(P, Q, np.zeros(4, dtype=int), "rank")
    # ranks in [0, 1] of -P(y): 0, 1/3, 2/3, 1; of -Q(y): the three tied at
    # the mean of 0, 1/3 and 2/3, then 1
    np.testing.assert_allclose(scores, [1 / 6, 1 / 3, 1 / 2, 1])


def test_a_probability_equal_to_its_threshold_reaches_it():
    """Thresholds 0.8 and 0.667 (at least chance): the last example, labelled 1,
    gives class 0 exactly its threshold and counts towards (1, 0)."""
    y = np.array([0, 0, 1, 1, 1])
    combined = np.array([[0.8, 0.2]] * 2 + [[0.1, 0.9]] * 2 + [[0.8, 0.2]])
    assert estimate_n_issues(combined, y) == 1


def test_the_calibrated_off_diagonal_total_is_rounded():
    """Class 0: 5 examples, 3 counted (2 on the diagonal, 1 off), scaled to 5:
    5/3 = 1.67 issues, rounded to 2 (not cut to 1)."""
    y = np.array([0, 0, 0, 0, 0, 1, 1, 1])
    combined = np.array(
        [[0.9, 0.1]] * 2 + [[0.05, 0.95]] + [[0.5, 0.5]] * 2 + [[0.1, 0.9]] * 3
    )
    # thresholds: class 0's mean self-confidence 0.57, class 1's 0.9; the two
    # [0.5, 0.5] rows reach neither
    assert estimate_n_issues(combined, y) == 2


def test_a_class_of_one_unrecognised_example_claims_no_examples():
    """One example of a third class, given 0.05 by the network, set that
    class's threshold to 0.05: the examples under their own class's threshold
    that give it 0.06 counted towards it, and the estimate rose from 0 to 4
    of 7 (a real audit: 1 to 113 of 407). Thresholds are at least chance."""
    y = np.array([0, 0, 0, 1, 1, 1])
    rows = [[0.9, 0.04], [0.5, 0.44], [0.4, 0.54]]  # thresholds 0.6
    clean = np.array([[*r, 0.06] for r in rows] + [[b, a, 0.06] for a, b in rows])
    assert estimate_n_issues(clean, y) == 0
    rare = np.vstack([clean, [[0.5, 0.45, 0.05]]])
    assert estimate_n_issues(rare, np.append(y, 2)) == 0


@pytest.mark.parametrize("combination", COMBINATIONS)
def test_combinations_score_the_given_label(digits, fitted_digits_net, combination):
    X, y = digits[0][600:700], digits[1][600:700]
    detector = LabelIssueDetector(
        fitted_digits_net, cv="prefit", combination=combination
    ).fit(X, y)
    P, Q, rows = detector.oof_proba_, detector.neighbor_proba_, np.arange(100)
    expected = {
        "mean": -(P + Q)[rows, y] / 2,
        "proba": -P[rows, y],
        "neighbors": -Q[rows, y],
        "rank": (rankdata(-P[rows, y]) + rankdata(-Q[rows, y]) - 2) / 198,
    }[combination]
    np.testing.assert_allclose(detector.scores_, expected)
    np.testing.assert_array_equal(
        detector.suggested_labels_, ((P + Q) / 2).argmax(axis=1)
    )


def test_faiss_search_on_sketches_and_the_automatic_switch(
    digits, fitted_digits_net, monkeypatch
):
    X, y = digits[0][600:900], digits[1][600:900]
    kwargs = dict(cv="prefit", n_neighbors=5, random_state=0)
    exact = LabelIssueDetector(
        fitted_digits_net, algorithm="exact", n_components=64, **kwargs
    ).fit(X, y)
    faiss = LabelIssueDetector(
        fitted_digits_net, algorithm="faiss", n_components=64, **kwargs
    ).fit(X, y)
    np.testing.assert_array_equal(faiss.neighbor_indices_, exact.neighbor_indices_)
    np.testing.assert_allclose(faiss.neighbor_proba_, exact.neighbor_proba_, atol=1e-5)
    reduced = LabelIssueDetector(
        fitted_digits_net, algorithm="faiss", n_components="auto",
        search_components=64, **kwargs,
    ).fit(X, y)  # fmt: skip
    assert reduced.exact_ranking_
    monkeypatch.setattr(label_issues, "EXACT_MAX_SAMPLES", 100)
    auto = LabelIssueDetector(fitted_digits_net, **kwargs).fit(X, y)
    assert auto.exact_ranking_  # candidates from 64 components, ranked exactly
    np.testing.assert_array_equal(auto.neighbor_indices_, reduced.neighbor_indices_)
    np.testing.assert_array_equal(auto.scores_, reduced.scores_)


def test_a_faiss_search_takes_the_index_it_is_given(digits, fitted_digits_net):
    """The MemoryError of sketches past max_memory advised a compressed
    index=, which the detector did not take."""
    X, y = digits[0][:600], digits[1][:600]
    kwargs = dict(cv="prefit", n_neighbors=5, random_state=0, algorithm="faiss")
    kwargs.update(n_components=64)
    # the 600 sketches of 10 x 64 take 1.5 MiB, a flat index as much again
    small = 3 * 2**20  # two thirds of it kept: 2 MiB
    with pytest.raises(MemoryError, match="compressed one"):
        LabelIssueDetector(fitted_digits_net, **kwargs, max_memory=small).fit(X, y)
    flat = LabelIssueDetector(fitted_digits_net, **kwargs).fit(X, y)
    every_list = dict(index="IVF8,Flat", index_params="nprobe=8")
    ivf = LabelIssueDetector(fitted_digits_net, **kwargs, **every_list).fit(X, y)
    np.testing.assert_array_equal(ivf.neighbor_indices_, flat.neighbor_indices_)
    one_list = LabelIssueDetector(
        fitted_digits_net, **kwargs, index="IVF8,Flat", index_params="nprobe=1"
    ).fit(X, y)
    assert (one_list.neighbor_indices_ != flat.neighbor_indices_).any()
    compressed = dict(index="PQ16x4", max_memory=small)  # 8 bytes an example
    LabelIssueDetector(fitted_digits_net, **kwargs, **compressed).fit(X, y)


def test_cv_splitter_and_fitted_skorch_net_are_cloned(digits, fitted_digits_net):
    X, y = digits[0][:120], digits[1][:120]
    before = {k: v.clone() for k, v in fitted_digits_net.module_.state_dict().items()}
    detector = LabelIssueDetector(
        fitted_digits_net, cv=KFold(2, shuffle=True, random_state=0), random_state=0
    ).fit(X, y)
    for key, value in fitted_digits_net.module_.state_dict().items():
        assert torch.equal(value, before[key])
    for _, test in KFold(2, shuffle=True, random_state=0).split(X):
        assert not np.isin(detector.neighbor_indices_[test], test).any()
    assert not detector.exact_ranking_  # an exact search, no candidates to rank


def test_a_fold_whose_training_part_lacks_a_class_is_warned_about(digits):
    """Sorted labels in KFold(3): the nets of the folds never saw some classes,
    whose held-out examples were scored as label issues without a word."""
    X, y = digits[0][:90], np.sort(digits[1][:90])
    net = make_digits_net(max_epochs=2)
    with pytest.warns(
        UserWarning, match=r"never see: the held-out .* \(fold 0 lacks \[0, 1"
    ):
        LabelIssueDetector(net, cv=KFold(3), random_state=0).fit(X, y)


def test_group_splitter_holds_each_group_out_together(digits, fitted_digits_net):
    """A group splitter failed with scikit-learn's "groups should not be None"."""
    X, y = digits[0][:120], digits[1][:120]
    groups = np.arange(120) // 10
    detector = LabelIssueDetector(fitted_digits_net, cv=GroupKFold(3), random_state=0)
    detector.fit(X, y, groups=groups)
    for _, test in GroupKFold(3).split(X, y, groups):
        neighbours = detector.neighbor_indices_[test]
        assert not np.isin(groups[neighbours], groups[test]).any()
    with pytest.raises(ValueError, match="groups has 3 entries for 120 examples"):
        detector.fit(X, y, groups=[0, 1, 2])
    with pytest.raises(ValueError, match='groups are for a splitter; cv="prefit"'):
        LabelIssueDetector(fitted_digits_net, cv="prefit").fit(X, y, groups=groups)


def test_every_fold_ranks_the_reduced_search_candidates_exactly(digits):
    X, y = digits[0][:120], digits[1][:120]
    kwargs = dict(algorithm="faiss", n_components=16, random_state=0)
    reduced = LabelIssueDetector(
        make_digits_net(max_epochs=2), cv=2, search_components=8, **kwargs
    ).fit(X, y)
    assert reduced.exact_ranking_
    flat = LabelIssueDetector(make_digits_net(max_epochs=2), cv=2, **kwargs).fit(X, y)
    assert not flat.exact_ranking_


def test_string_labels_are_encoded(digits, fitted_digits_net):
    X, y = digits[0][600:680], digits[1][600:680]
    names = np.array(list("abcdefghij"))
    folds = LabelIssueDetector(make_digits_net(max_epochs=2), cv=2, random_state=0)
    folds.fit(X, names[y])
    np.testing.assert_array_equal(folds.classes_, names)
    assert set(folds.suggested_labels_) <= set(names)
    assert set(folds.label_issues_["given_label"]) <= set(names)
    named = copy.deepcopy(fitted_digits_net)
    named.classes = list(names[::-1])  # output j is the label named[j]
    detector = LabelIssueDetector(named, cv="prefit").fit(X, names[::-1][y])
    expected = LabelIssueDetector(fitted_digits_net, cv="prefit").fit(X, y)
    np.testing.assert_array_equal(detector.classes_, names[::-1])
    np.testing.assert_array_equal(detector.scores_, expected.scores_)
    np.testing.assert_array_equal(
        detector.suggested_labels_, names[::-1][expected.suggested_labels_]
    )
    table = detector.label_issues_.sort_values("index")  # unsorted classes_ too
    np.testing.assert_array_equal(table["suggested_label"], detector.suggested_labels_)


def test_prefit_skorch_net_takes_float64_inputs_as_the_kernels_do(
    digits, fitted_digits_net
):
    """skorch passes inputs as they are: float64 failed in a float32 module."""
    X, y = digits[0][600:680], digits[1][600:680]
    wide = LabelIssueDetector(fitted_digits_net, cv="prefit", n_neighbors=4)
    wide.fit(X.astype(np.float64), y)
    expected = LabelIssueDetector(fitted_digits_net, cv="prefit", n_neighbors=4)
    expected.fit(X, y)
    np.testing.assert_allclose(wide.scores_, expected.scores_, rtol=1e-5)
    with pytest.raises(TypeError, match="skorch net failed on a dtype: .*astype"):
        memorization_scores(
            make_digits_net(max_epochs=1), X.astype(np.float64), y, n_models=2
        )


def test_prefit_net_whose_classes_name_fewer_labels_than_its_outputs(digits):
    """A skorch net of 3 outputs fitted on labels {0, 1}: its classes_ do not
    name its outputs, so label j is output j and label 2 is scored (it was
    refused as naming no output)."""
    X, y = digits[0][:60], digits[1][:60] % 2
    net = any_width_net(module__n_out=3).fit(X, y)
    assert len(net.classes_) == 2
    given = np.where(np.arange(60) < 5, 2, y)
    detector = LabelIssueDetector(net, cv="prefit", n_neighbors=5).fit(X, given)
    np.testing.assert_array_equal(detector.classes_, [0, 1, 2])
    P = torch.softmax(net.forward(X), dim=1).double().numpy()
    np.testing.assert_allclose(detector.oof_proba_, P, rtol=1e-5)


def test_prefit_labels_are_the_nets_outputs(digits, fitted_digits_net):
    """Label j is output j: a subset of the classes is scored against the
    net's own columns for them, not renumbered."""
    X, y = digits[0][600:780], digits[1][600:780]
    subset = np.isin(y, [3, 5, 7])
    whole = LabelIssueDetector(fitted_digits_net, cv="prefit", n_neighbors=5)
    part = LabelIssueDetector(fitted_digits_net, cv="prefit", n_neighbors=5)
    part.fit(X[subset], y[subset])
    np.testing.assert_array_equal(part.classes_, np.arange(10))
    P = fitted_digits_net.predict_proba(X[subset]).astype(np.float64)
    np.testing.assert_allclose(part.oof_proba_, P / P.sum(1, keepdims=True))
    rows = np.arange(subset.sum())
    given = part.oof_proba_[rows, y[subset]]
    assert given.mean() > 0.5  # the net mostly agrees with the true labels
    with pytest.raises(ValueError, match=r"labels \[10\] that name none of its 10"):
        whole.fit(X, np.where(y == 9, 10, y))
    with pytest.raises(ValueError, match=r"labels \['a'\]"):
        whole.fit(X[:3], np.array(["a", "a", "a"]))


def test_prefit_names_or_codes(digits):
    """A skorch net whose classes= names its outputs takes the names or the
    codes it was trained on, as the audit does, with the same scores."""
    X, codes = digits[0][:90], digits[1][:90] % 3
    names = np.array(["dog", "cat", "bird"])
    torch.manual_seed(0)
    net = any_width_net(module__n_out=3, classes=names.tolist()).fit(X, codes)
    by_name = LabelIssueDetector(net, cv="prefit", n_neighbors=5).fit(X, names[codes])
    by_code = LabelIssueDetector(net, cv="prefit", n_neighbors=5).fit(X, codes)
    np.testing.assert_array_equal(by_name.classes_, names)
    np.testing.assert_array_equal(by_code.classes_, [0, 1, 2])
    np.testing.assert_array_equal(by_name.scores_, by_code.scores_)
    np.testing.assert_array_equal(
        by_name.suggested_labels_, names[by_code.suggested_labels_]
    )
    with pytest.raises(ValueError, match=r"'cow'\] that name none of its 3 outputs:"):
        by_name.fit(X[:3], ["dog", "cow", "cat"])
    accepted = r"\[3\] .*: give y as its classes_ \['dog', 'cat', 'bird'\], or the o"
    with pytest.raises(ValueError, match=accepted):
        by_code.fit(X[:3], [0, 1, 3])
    torch.manual_seed(0)  # classes_ of numbers are labels, whichever are given
    numbered = any_width_net(module__n_out=3, classes=[1, 2, 3]).fit(X, codes)
    few = LabelIssueDetector(numbered, cv="prefit", n_neighbors=5).fit(X, codes + 1)
    np.testing.assert_array_equal(few.classes_, [1, 2, 3])
    P = numbered.predict_proba(X).astype(np.float64)
    rows = np.arange(len(X))
    np.testing.assert_allclose(few.oof_proba_[rows, codes], P[rows, codes], rtol=1e-6)
    with pytest.raises(ValueError, match=r"\[0\] that name none of its 3 outputs"):
        LabelIssueDetector(numbered, cv="prefit").fit(X, codes)


def test_a_faiss_search_without_sketches_is_refused_before_training(digits):
    """algorithm="faiss" without n_components raised only after a fold's
    training."""
    Counting.started = 0
    net = make_digits_net(max_epochs=1, callbacks=[("count", Counting())])
    detector = LabelIssueDetector(net, algorithm="faiss", cv=2)
    with pytest.raises(ValueError, match="searches sketched gradient features: set"):
        detector.fit(*digits)
    assert Counting.started == 0
    detector.set_params(algorithm="exact").fit(digits[0][:60], digits[1][:60])
    assert Counting.started == 2  # the count counts


def test_errors(digits, fitted_digits_net):
    X, y = digits[0][:60], digits[1][:60]
    prefit = LabelIssueDetector(fitted_digits_net, cv="prefit")
    with pytest.raises(ValueError, match="needs classification targets; got a cont"):
        prefit.fit(X, X[:, 10] + 0.5)
    with pytest.raises(
        ValueError, match=r"at least two classes; y has one class \(0\.0\)"
    ):
        LabelIssueDetector(make_digits_net(), cv=2).fit(X, np.zeros(60))
    with pytest.raises(ValueError, match=r"y has one class \('cat'\)"):  # object
        LabelIssueDetector(make_digits_net(), cv=2).fit(X, np.full(60, "cat", object))
    regressor = NeuralNetRegressor(torch.nn.Linear(64, 1), max_epochs=1, verbose=0)
    with pytest.raises(ValueError, match="needs a classifier; NeuralNetRegressor is"):
        LabelIssueDetector(regressor, cv=2).fit(X, y)  # integer targets
    with pytest.raises(ValueError, match="got 1 sample; pass at least 2"):
        prefit.fit(X[:1], y[:1])
    with pytest.raises(ValueError, match="requires y to be passed"):
        prefit.fit(X, None)
    with pytest.raises(ValueError, match="different numbers of samples: 60 and 59"):
        prefit.fit(X, y[:59])
    with pytest.raises(ValueError, match=r"For one-hot labels, pass Y.argmax\(axis=1"):
        prefit.fit(X, np.eye(10)[y])  # scikit-learn's "y should be a 1d array"
    with pytest.raises(ValueError, match='cv="prefit" uses the net as it is'):
        LabelIssueDetector(make_digits_net(), cv="prefit").fit(X, y)
    with pytest.raises(TypeError, match="needs a skorch classifier; got Sequential"):
        LabelIssueDetector(torch.nn.Sequential(torch.nn.Linear(64, 10))).fit(X, y)
    two_outputs = torch.nn.Sequential(torch.nn.Linear(64, 2))
    with pytest.raises(ValueError, match="name none of its 2 outputs"):
        LabelIssueDetector(two_outputs, cv="prefit").fit(X, y)
    halves = [(np.arange(30), np.arange(30, 60)), (np.arange(30), np.arange(30, 60))]
    with pytest.raises(ValueError, match="hold 30 examples never and 30 more than"):
        LabelIssueDetector(make_digits_net(max_epochs=1), cv=halves).fit(X, y)
    first, second = np.arange(30), np.arange(30, 60)  # every example held out
    twice = [(first, second), (second, first), (second, first)]
    with pytest.raises(ValueError, match="hold 0 examples never and 30 more than"):
        LabelIssueDetector(make_digits_net(max_epochs=1), cv=twice).fit(X, y)
    with pytest.raises(ValueError, match="combination"):
        LabelIssueDetector(fitted_digits_net, combination="max").fit(X, y)
    P = np.full((2, 2), 0.5)  # the helpers read an unknown one as "mean"
    with pytest.raises(ValueError, match=r"one of \['mean', 'rank'.*got 'max'"):
        combine_signals(P, P, np.array([0, 1]), "max")


class PlainCrossEntropy(torch.nn.Module):
    """Cross-entropy under another name: skorch's predict_proba then gives logits."""

    def forward(self, logits, target):
        return torch.nn.functional.cross_entropy(logits, target)


def test_predict_proba_that_gives_no_probabilities_is_refused(digits):
    X, y = digits[0][:200], digits[1][:200]
    torch.manual_seed(0)
    net = make_digits_net(criterion=PlainCrossEntropy, max_epochs=2).fit(X, y)
    assert net.predict_proba(X[:5]).min() < 0  # the logits, as they are
    detector = LabelIssueDetector(net, cv="prefit", n_neighbors=3)
    with pytest.raises(ValueError, match="predict_proba does not give class prob"):
        detector.fit(X, y)
    net.set_params(predict_nonlinearity=lambda out: out.softmax(dim=-1))
    softmax = LabelIssueDetector(net, cv="prefit", n_neighbors=3).fit(X, y)
    logits = net.forward(X).double()
    np.testing.assert_allclose(softmax.oof_proba_, logits.softmax(-1), rtol=1e-6)


def test_logits_under_nll_loss_are_refused_with_the_criterion_to_use(digits):
    """skorch trains NLLLoss on the log of the outputs: logits give a NaN loss."""
    X, y = digits[0][:200], digits[1][:200]
    torch.manual_seed(0)
    net = make_digits_net(criterion=torch.nn.NLLLoss, max_epochs=2).fit(X, y)
    assert np.isnan(net.history[-1, "train_loss"])  # what the advice must not hide
    with pytest.raises(ValueError, match="predict_proba does not give") as error:
        LabelIssueDetector(net, cv="prefit", n_neighbors=3).fit(X, y)
    assert "criterion=torch.nn.CrossEntropyLoss" in str(error.value)
    assert "predict_nonlinearity" not in str(error.value)


def test_prefit_restores_the_modules_modes(digits, fitted_digits_net):
    """And leaves torch's global generator as it was (skorch's predict draws)."""
    module, was_training = fitted_digits_net.module_, fitted_digits_net.module_.training
    module.train()
    try:
        detector = LabelIssueDetector(fitted_digits_net, cv="prefit", n_neighbors=3)
        generator = torch.get_rng_state()
        detector.fit(digits[0][:40], digits[1][:40])
        assert torch.equal(torch.get_rng_state(), generator)
        assert module.training
    finally:
        module.train(was_training)


class FeaturesAndLogits(torch.nn.Module):
    """Returns ``(features, logits)``: 16 features, 10 logits."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.body = torch.nn.Sequential(torch.nn.Linear(64, 16), torch.nn.Tanh())
        self.head = torch.nn.Linear(16, 10)

    def forward(self, x):
        features = self.body(x)
        return features, self.head(features)


def test_prefit_module_probabilities_are_of_the_selected_outputs(digits):
    X, y = digits[0][:60], digits[1][:60]
    module = FeaturesAndLogits()
    detector = LabelIssueDetector(
        module, cv="prefit", n_neighbors=3, output=lambda out: out[1]
    ).fit(X, y)
    with torch.no_grad():
        logits = module(torch.as_tensor(X))[1].double()
    np.testing.assert_array_equal(detector.classes_, np.arange(10))
    np.testing.assert_allclose(detector.oof_proba_, logits.softmax(-1), rtol=1e-6)


def test_tags_say_that_fit_needs_the_labels():
    assert LabelIssueDetector(make_digits_net()).__sklearn_tags__().target_tags.required
