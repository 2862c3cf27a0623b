"""The report's findings, meanings, examples worth a look and warning counts."""

import copy
import html
import json
import math
import re
import warnings
from types import SimpleNamespace

import _audit_helpers
import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.model_selection import KFold, ShuffleSplit, StratifiedGroupKFold
from test_audit_report import parse

from sksim.audit import AuditResult, audit
from sksim.audit._examples import (
    atypical_features,
    isolated_rows,
    least_supported_rows,
    prediction_support,
)
from sksim.audit._findings import (
    _planted_accuracy,
    accuracy_meaning,
    agreement_bound,
    agreement_meaning,
    class_fitting_finding,
    class_recall_finding,
    correlation_meaning,
    density_meaning,
    error_meaning,
    findings,
    headline_meanings,
    held_out_error,
    sensitivity_finding,
    summary_value,
)
from sksim.audit._names import named
from sksim.audit.analyses.density import correlation
from sksim.audit.analyses.neighbors import _gallery_rows, diverse
from sksim.audit.core import (
    _count_warning,
    _methods,
    _warning_rows,
    _warning_text,
    splitter_words,
)
from sksim.audit.figures import sensitivity_layers
from sksim.audit.models import make_classifier
from sksim.audit.report import SECTIONS, render_html, timings


@pytest.fixture(scope="module")
def digit_images():
    return _audit_helpers.digit_images()


@pytest.fixture(scope="module")
def small_audit():
    return _audit_helpers.small_audit()


@pytest.fixture(scope="module")
def issues_audit():
    """Density, neighbours and label issues, with planted noise recorded."""
    return _audit_helpers.label_issues_audit()


def samples_table():
    return pd.DataFrame(
        dict(
            fold=[0, 0, 1, 1],
            index=[10, 11, 12, 13],
            label=[1, 2, 1, 2],
            prediction=[1, 1, 2, 2],
            neighbor_count=[3.0, 0.0, 0.0, 5.0],
            # counts of 0 at the floors of folds of different sizes
            log_density=[-2.0, -5.1, -5.0, -1.0],
            top_similarity=[0.9, 0.8, 0.6, 0.95],
        )
    )


def neighbors_table():
    rows = []
    neighbors = {
        (0, 10): [(1, 0.9), (2, 0.5)],
        (0, 11): [(2, 0.8), (1, -0.3)],
        (1, 12): [(2, 0.6), (1, 0.2)],
        (1, 13): [(1, -0.1), (1, -0.2)],
    }
    for (fold, index), pairs in neighbors.items():
        for rank, (label, similarity) in enumerate(pairs, 1):
            rows.append(
                dict(
                    fold=fold,
                    index=index,
                    rank=rank,
                    train_index=100 + rank,
                    similarity=similarity,
                    train_label=label,
                )
            )
    return pd.DataFrame(rows)


def test_prediction_support_by_hand():
    support = prediction_support(samples_table(), neighbors_table())
    # 10 predicts 1: 0.9 / 1.4; 11 predicts 1: the only label-1 neighbour has
    # a negative similarity, so 0 / 0.8; 12 predicts 2: 0.6 / 0.8; 13 has no
    # positive similarity: NaN
    np.testing.assert_allclose(support, [0.9 / 1.4, 0.0, 0.75, np.nan])


def test_least_supported_rows_first_nan_then_zero_then_ties_by_similarity():
    samples = samples_table()
    support = np.array([0.5, 0.0, 0.0, np.nan])
    assert list(least_supported_rows(samples, support)) == [3, 2, 1, 0]


def test_isolated_rows_are_the_lowest_densities_ties_by_similarity():
    """Examples without a similar training example tie, at whichever floor."""
    samples = samples_table()
    assert list(isolated_rows(samples, size=3)) == [2, 1, 0]
    assert list(isolated_rows(samples.drop(columns="top_similarity"), 2)) == [1, 2]


def test_isolated_examples_are_the_lowest_densities_of_the_audit(small_audit):
    samples = small_audit["samples"]
    items = [g for g in small_audit.examples if g["kind"] == "isolated"]
    assert len(items) == 10
    ordered = samples.sort_values(["log_density", "top_similarity"], kind="stable")
    assert [g["index"] for g in items] == ordered["index"][:10].tolist()
    for item, (_, row) in zip(items, ordered.iterrows(), strict=False):
        assert item["log_density"] == row["log_density"]
        assert item["neighbor_count"] == row["neighbor_count"]
    worst = items[0]
    assert worst["log_density"] == samples["log_density"].min()


def test_least_support_examples_carry_their_neighbours(digit_images, small_audit):
    X, y = digit_images
    samples = small_audit["samples"]
    support = prediction_support(samples, small_audit["neighbors"])
    items = [g for g in small_audit.examples if g["kind"] == "least support"]
    assert len(items) == 10
    shown = np.nan_to_num([g["support"] for g in items], nan=-1)
    np.testing.assert_array_equal(shown, np.sort(np.nan_to_num(support, nan=-1))[:10])
    for item in items:
        np.testing.assert_array_equal(item["image"], X[item["index"], 0])
        np.testing.assert_array_equal(item["neighbor_images"], X[item["neighbors"], 0])
        assert item["neighbor_labels"] == y[item["neighbors"]].tolist()


def test_atypical_features_by_hand():
    text = atypical_features(
        np.array([1.0, 10.0, -4.0]), np.zeros(3), np.array([1.0, 2.0, 1.0]), count=2
    )
    assert text == "feature 1 = 10 (+5.0 sd), feature 2 = -4 (-4.0 sd)"


def test_tabular_examples_describe_their_features(digit_images):
    X, y = digit_images
    flat = X.reshape(len(X), -1)[:, :30]  # 30 features: not square, tabular
    result = audit(
        _audit_helpers.small_net(flat, max_epochs=2),
        flat,
        y,
        cv=2,
        analyses=("density", "neighbors"),
        n_neighbors=2,
    )
    isolated = [g for g in result.examples if g["kind"] == "isolated"]
    assert isolated[0]["image"] is None
    assert isolated[0]["features"].startswith("feature ")
    html = render_html(result)
    assert "+" in html and " sd)" in html


def test_diverse_picks_new_folds_classes_and_confusions_before_repeats():
    samples = pd.DataFrame(
        dict(
            fold=[0, 0, 0, 1, 2],
            label=[3, 3, 3, 5, 3],
            prediction=[8, 8, 8, 2, 8],
        )
    )
    # the first by position would be 0, 1, 2; diversity takes 0, then the
    # row new in fold, class and confusion (3), then a new fold (4)
    assert diverse(samples, samples.index, 3) == [0, 3, 4]


def test_neighbour_gallery_spreads_over_folds(small_audit):
    kinds = [g for g in small_audit.gallery if g["kind"] == "misclassified"]
    assert len({g["fold"] for g in kinds}) > 1
    assert len({(g["label"], g["prediction"]) for g in kinds}) == len(kinds)


def caught(message, category=UserWarning):
    with warnings.catch_warnings(record=True) as records:
        warnings.simplefilter("always")
        warnings.warn(message, category, stacklevel=1)
    return records[0]


def test_warnings_are_counted_with_their_samples_and_analyses():
    counts = {}
    raised = [
        ("denoising", "The Gram is near-singular for 3 sample(s): floored."),
        ("denoising", "The Gram is near-singular for 5 sample(s): floored."),
        ("density", "The Gram is near-singular for 7 sample(s): floored."),
        ("density", "Something else at rtol=1e-05: detail"),
    ]
    for name, message in raised:
        _count_warning(counts, *_warning_text(name, caught(message)))
    rows = _warning_rows(counts)
    assert rows == [
        dict(
            warning="UserWarning: The Gram is near-singular for N sample(s)",
            times=3,
            samples=15,
            analyses=dict(
                denoising=dict(times=2, samples=8), density=dict(times=1, samples=7)
            ),
        ),
        dict(
            warning="UserWarning: Something else at rtol=Ne-N",
            times=1,
            samples=None,
            analyses=dict(density=dict(times=1, samples=None)),
        ),
    ]


def test_report_prints_the_warning_counts(small_audit):
    result = copy.copy(small_audit)
    result.metadata = dict(
        small_audit.metadata,
        warnings=[
            dict(
                warning="UserWarning: near-singular for N sample(s)",
                times=6,
                samples=2146,
                analyses=dict(denoising=dict(times=6, samples=2146)),
            )
        ],
    )
    html = render_html(result)
    assert "(x6)" not in html
    assert "<td>2146</td>" in html
    assert "denoising: 6 times, 2146 samples" in html
    assert "6 warnings of 1 kind" in html


def softmax(logits):
    return torch.softmax(logits, dim=-1)


def test_real_warnings_are_counted_in_the_audit(digit_images):
    # softmax outputs make every Jacobian Gram singular (rows sum to zero)
    X, y = digit_images
    result = audit(
        _audit_helpers.small_net(X, max_epochs=1),
        X,
        y,
        cv=2,
        analyses=("density",),
        options=dict(density=dict(output=softmax)),
    )
    rows = result.metadata["warnings"]
    (row,) = [w for w in rows if "near-singular for N sample(s)" in w["warning"]]
    assert row["warning"].startswith("SingularJacobianGramWarning: ")
    assert list(row["analyses"]) == ["density"]
    assert row["times"] == row["analyses"]["density"]["times"] >= 2
    assert row["samples"] == row["analyses"]["density"]["samples"] >= len(X)


def test_the_splitters_warnings_are_counted_too(digit_images):
    X, y = digit_images
    y = y.copy()
    y[:2] = 10  # a class of two examples, for three folds
    with pytest.warns(UserWarning, match="least populated class"):
        result = audit(
            make_classifier("mlp", X, n_classes=11, max_epochs=1),
            X,
            y,
            cv=3,
            analyses=(),
        )
    (row,) = [
        w for w in result.metadata["warnings"] if "least populated" in w["warning"]
    ]
    assert row["analyses"] == {"cv": dict(times=1, samples=None)}
    page = render_html(result)  # no samples flagged: a dash, not "None"
    assert "least populated" in page and "<td>None</td>" not in page


def test_timings_table_sums_the_steps(small_audit):
    table = timings(small_audit.metadata)
    steps = list(small_audit.metadata["seconds"])
    assert table["step"].tolist() == [*steps, "total (wall clock)"]
    assert table["seconds"].iloc[:-1].tolist() == list(
        small_audit.metadata["seconds"].values()
    )
    assert table["seconds"].iloc[-1] == small_audit.metadata["total_seconds"]


@pytest.mark.parametrize(
    "r, words",
    [
        (-0.43, "Errors concentrate where the network sees few similar"),
        (-0.2, "coverage explains some of them, the others come from elsewhere"),
        (0.02, "not where training examples are scarce"),
        (0.15, "somewhat more frequent at high density, but weakly so"),
        (0.3, "Errors are more frequent at high density"),
    ],
)
def test_correlation_meaning(r, words):
    text = correlation_meaning(r)
    assert words in text
    assert f"{r * r:.0%} of the variance" in text


@pytest.mark.parametrize(
    "log_density, words",
    [
        ([0.0, 0.0, 0.0], "every held-out density is the same, 0.00"),
        ([-8.0, -8.0, -8.0], "every held-out density is at its floor"),
        ([-1.0, -2.0, -3.0], "the held-out errors, or the densities of some"),
    ],
)
def test_an_undefined_correlation_says_why(log_density, words):
    """Densities all at the ceiling (every count the training set's size) were
    said to be at their floor, no training example similar enough."""
    floor = np.log(0.5 / 100)
    samples = pd.DataFrame(
        dict(
            log_density=log_density,
            neighbor_count=[0.0 if v == -8.0 else 100.0 for v in log_density],
        )
    )
    samples.loc[samples["log_density"] == -8.0, "log_density"] = floor
    result = SimpleNamespace(
        tables=dict(samples=samples), metadata=dict(methods={}, task="regression")
    )
    assert words in density_meaning(result, float("nan"))


def test_densities_tied_at_the_floor_correlate_with_nothing():
    """80 copies of log(0.5 / 80) have a std of 9e-16 (their mean is not one of
    them): the correlation came out 1e-17, read as "0.00. Not telling"."""
    tied = np.full(80, np.log(0.5 / 80))
    assert tied.std() > 0
    errors = (np.arange(80) % 3 == 0).astype(float)
    assert np.isnan(correlation(tied, errors))
    assert correlation(-errors, errors) == pytest.approx(-1.0)


def test_accuracy_with_planted_flips_is_given_against_the_labels_before_them():
    """The demo scored its flips as errors of the network, without a word."""
    samples = pd.DataFrame(
        dict(index=[0, 1, 2, 3], label=[1, 0, 2, 2], prediction=[1, 1, 2, 0])
    )
    noise = dict(flipped=[1, 3], original=[1, 0])  # the net was right on 1 and 3
    text = _planted_accuracy(samples, noise)
    assert text == (
        " It is scored against the labels as given, the 2 flipped on purpose "
        "included; against the labels before the flips it is 1.000."
    )
    assert _planted_accuracy(samples, None) == ""
    named_labels = named(  # as the report reads them: the labels 1 to 3
        AuditResult(
            dict(samples=samples),
            {},
            dict(class_names=["1", "2", "3"], label_noise=noise),
            [],
            {},
            [],
        )
    )
    assert named_labels.tables["samples"]["label"].tolist() == ["2", "1", "3", "3"]
    assert (
        _planted_accuracy(
            named_labels.tables["samples"], named_labels.metadata["label_noise"]
        )
        == text
    )  # the labels before the flips, codes, were compared with names


def test_correlation_and_error_in_words_fit_the_task():
    assert "classes overlap" in correlation_meaning(0.3)
    assert "the targets vary fast" in correlation_meaning(0.3, regression=True)
    assert "label noise" in correlation_meaning(-0.2)
    assert "label" not in correlation_meaning(-0.2, regression=True)
    assert "label" not in correlation_meaning(0.0, regression=True)
    assert error_meaning(0.1) == (
        "The share of held-out examples misclassified: about one in 10."
    )
    assert error_meaning(0.774).endswith("misclassified: 77%.")  # not "one in 1"
    assert error_meaning(0.0) == "No held-out example is misclassified."


def test_findings_open_the_report(issues_audit):
    html = render_html(issues_audit)
    page = parse(html)
    assert page.headings == [title for _, title in SECTIONS]
    assert page.headings[0] == "Findings"
    table = issues_audit["label_issues"]
    n = int(table["is_issue"].sum())
    listed = findings(issues_audit)
    assert listed[0].startswith("Held-out accuracy")
    labels = next(text for text in listed if "look wrong" in text)
    assert labels.startswith(f"{n} training labels look wrong (estimated")
    top = table.iloc[0]
    assert f"#{top['index']} (given {top['given_label']}" in labels
    hits = int(table["index"][:3].isin([5, 69, 198]).sum())
    assert f"{hits} of the 3 highest-scored are flipped ones" in labels
    assert any(text.startswith("Density-error correlation") for text in listed)
    for text in listed:
        assert text in html.replace("&#x27;", "'")


def test_findings_and_headline_cards_give_the_tables_numbers(issues_audit):
    """Their numbers were never checked: the standard deviation shown as the
    accuracy, the correlation's sign flipped or the count of unsupported
    predictions changed all passed."""
    folds, meta = issues_audit["folds"], issues_audit.metadata
    listed = findings(issues_audit)
    html = render_html(issues_audit)
    accuracy = folds["accuracy"]
    mean, std = accuracy.mean(), accuracy.std(ddof=1)
    assert listed[0].startswith(
        f"Held-out accuracy {mean:.3f} ± {std:.3f} (mean ± std over folds). "
    )
    pooled = issues_audit["samples"]["correct"].mean()
    assert f"About {pooled * 100:.0f} in 100 held-out examples" in listed[0]
    assert f"<b>{mean:.3f} ± {std:.3f}</b>" in html  # the accuracy's card
    r = folds["density_error_correlation"]
    assert f"Density-error correlation {r.mean():.2f}" in " ".join(listed)
    by_bin = issues_audit["density_bins"].groupby("density_bin")["error_rate"].mean()
    assert (
        f"By density bin, mean over folds: error rate {by_bin.iloc[0]:.3g} in the "
        f"lowest (bin 0) against {by_bin.iloc[-1]:.3g} in the highest (bin "
        f"{by_bin.index[-1]})."
    ) in " ".join(listed)
    assert f"<b>{r.mean():.3f} ± {r.std(ddof=1):.3f}</b>" in html
    agreement = folds["neighbor_label_agreement"].mean()
    k = meta["n_neighbors"]
    assert f"{agreement * k:.1f} on average carry its label" in html
    # predictions none of the neighbours with a positive similarity carry
    pairs = issues_audit["neighbors"].merge(
        issues_audit["samples"][["fold", "index", "prediction"]], on=["fold", "index"]
    )
    positive = pairs[pairs["similarity"] > 0]
    carried = positive["train_label"] == positive["prediction"]
    unsupported = int(
        (~carried.groupby([positive["fold"], positive["index"]]).any()).sum()
    )
    n = len(issues_audit["samples"])
    assert f"{unsupported} of {n} held-out predictions are carried by none" in " ".join(
        listed
    )


def test_the_aggregated_table_shows_the_summarys_values(issues_audit):
    """Every table's values were unchecked: all of them rounded to one digit
    passed."""
    html = render_html(issues_audit)
    shown = html.split("<h3>Aggregated over folds</h3>")[1].split("</table>")[0]
    rows = re.findall(r"<tr>(.*?)</tr>", shown.split("<tbody>")[1], flags=re.S)
    summary = issues_audit["summary"]
    assert len(rows) == len(summary)
    for row, (_, expected) in zip(rows, summary.iterrows(), strict=True):
        cells = re.findall(r"<t[hd][^>]*>(.*?)</t[hd]>", row, flags=re.S)
        assert cells[0].strip() == expected["metric"]
        for cell, column in zip(cells[2:], ["mean", "std", "min", "max"], strict=True):
            value = expected[column]
            assert cell.strip() == ("NaN" if math.isnan(value) else f"{value:.4g}")


def test_class_fitting_and_sensitivity_findings_give_their_tables_numbers():
    """Neither sentence was tested: the gap's sign flipped, or R's standard
    deviation shown as R, passed."""
    classes = pd.DataFrame(
        dict(
            layer=["a", "a", "a", "b", "b", "b"],
            train_mean_log_density_mean=[5.0, 6.0, 9.0, 1.0, 1.0, 1.0],
            test_mean_log_density_mean=[4.0, 3.0, 1.0, 1.5, 0.5, 1.0],
        )
    )
    gap = (1.0 + 3.0 + 8.0) / 3  # layer a's, the larger
    assert class_fitting_finding(classes) == (
        f"Class-fitting gap: at layer a, held-out examples are on average "
        f"{gap:.2f} nats (a factor {math.exp(gap):.3g}) less likely than training "
        "examples under their own class density (log-density, mean over classes; "
        "median 3.00): the class densities fit the training examples individually "
        "more than in modes that held-out examples share; part of the gap is the "
        "mixtures' own fit to the examples they were fitted on, large for classes "
        "of few examples in many dimensions whatever the network, so compare it "
        "across layers, or with the network before training, before reading it as "
        "memorisation."
    )
    sensitivity = pd.DataFrame(
        dict(
            net=["trained", "trained", "init"],
            layer=["conv", "output", "output"],
            depth=[0, 1, 1],
            R_mean=[2.0, 0.4, 1.3],
            R_std=[0.5, 0.05, 0.1],
        )
    )
    assert sensitivity_finding(sensitivity) == (
        "Relative sensitivity R = 0.4 ± 0.05 at layer output (spread over folds "
        "12%: a stable estimate): more stable to smooth deformations than to noise "
        "of the same norm, as networks that generalise well tend to be; training "
        "lowered it from 1.3 at initialisation."
    )


def test_flags_are_set_beside_the_networks_own_mistakes(issues_audit):
    """A network wrong on 41 % of the held-out examples had 33 % of its labels
    said to "look wrong", with no word of its own mistakes."""
    result = copy.deepcopy(issues_audit)
    samples = result.tables["samples"]
    wrong = round(0.415 * len(samples))
    samples["correct"] = np.arange(len(samples)) >= wrong
    labels = next(text for text in findings(result) if "look wrong" in text)
    share = f"{wrong / len(samples):.1%}"
    assert f"the network (wrong on {share} of the held-out examples)" in labels
    assert "examples disagree with: wrong labels, or its own mistakes." in labels


def test_shares_of_held_out_examples_are_pooled_over_uneven_folds(issues_audit):
    """Test folds of 8 and 2 examples, all right in the first and all wrong in
    the second: 8 in 10 examples are right, though the folds' mean accuracy is
    0.5; the report said "About 50 in 100 held-out examples" (and, with
    groups of examples kept in one fold, 95 where 94 were right)."""
    samples = pd.DataFrame(
        dict(fold=[0] * 8 + [1] * 2, correct=[True] * 8 + [False] * 2)
    )
    assert held_out_error(samples) == pytest.approx(0.2)
    assert accuracy_meaning(0.8, 0.7, 2).startswith(
        "About 80 in 100 held-out examples are classified correctly by a network "
        "that never saw them (pooled over the 2 folds)."
    )
    assert "(pooled" not in accuracy_meaning(0.8, float("nan"), 1)
    result = copy.deepcopy(issues_audit)
    samples = result.tables["samples"]
    samples["correct"] = np.arange(len(samples)) % 4 > 0  # 3 in 4 right
    listed = findings(result)
    mean = result["folds"]["accuracy"].mean()
    assert listed[0].startswith(f"Held-out accuracy {mean:.3f}")  # the folds' mean
    assert "About 75 in 100 held-out examples" in listed[0]
    assert "(wrong on 25.0% of the held-out examples)" in " ".join(listed)
    assert headline_meanings(result)["error"] == (
        "The share of held-out examples misclassified: 25%."
    )


def test_the_isolated_section_says_why_floored_densities_differ(issues_audit):
    """Examples at the floor of folds of other sizes tie, though their log
    densities differ: the most isolated (-5.649) was listed before one at
    -5.656, with no word of why."""
    result = copy.deepcopy(issues_audit)
    first = next(g for g in result.examples if g["kind"] == "isolated")
    said = "Examples at the floor tie whatever their fold, though the floor's"
    first["neighbor_count"] = 0.0
    assert said in html.unescape(render_html(result))
    first["neighbor_count"] = 3.0
    assert said not in html.unescape(render_html(result))


def test_isolated_finding_counts_the_examples_without_a_similar_one(issues_audit):
    """Counted by their neighbour count of 0, whatever their fold's floor."""
    result = copy.deepcopy(issues_audit)
    samples = result.tables["samples"]
    first = next(g for g in result.examples if g["kind"] == "isolated")

    def isolated_text():
        return next(t for t in findings(result) if f"#{first['index']} (" in t)

    samples["neighbor_count"] = np.where(np.arange(len(samples)) < 3, 0.0, 2.0)
    assert isolated_text().startswith(
        "3 examples have no training example the network treats as similar"
    )
    samples["neighbor_count"] = 514.0
    assert isolated_text().startswith(
        "Every held-out example has training examples the network treats as "
        f"similar; the least dense, #{first['index']} (label {first['label']}), with"
    )
    # soft counts sum similarities: no example count, floored or not
    result.metadata["methods"]["density"] = "soft counts (exact, time O(N p))"
    first["neighbor_count"] = 514.0
    assert isolated_text().startswith(
        f"The least dense held-out example, #{first['index']} (label "
        f"{first['label']}), has a soft count of 514 (its similarities"
    )
    html = render_html(result)
    assert "with the lowest soft counts" in html and "a soft count of 514 (" in html
    assert "ties are broken by the lower similarity" not in html


def test_label_findings_list_only_the_labels_that_look_wrong(issues_audit):
    result = copy.deepcopy(issues_audit)
    table = result.tables["label_issues"]
    table["is_issue"] = False
    table.loc[table.index[1], "is_issue"] = True  # below the top score
    second = table.iloc[1]
    text = next(t for t in findings(result) if "looks wrong" in t)
    assert text.startswith("1 training label looks wrong (estimated")  # one
    assert f"the top one: #{second['index']} (given" in text
    assert f"#{table.iloc[0]['index']} (" not in text
    table["is_issue"] = False
    disputed = int((table["suggested_label"] != table["given_label"]).sum())
    assert disputed > 0
    text = next(t for t in findings(result) if "estimated to be wrong" in t)
    assert text.startswith(  # it said every given label was agreed with
        f"No training label is estimated to be wrong, though for {disputed} the "
        "network and its most similar examples together favour another label"
    )
    table["suggested_label"] = table["given_label"]
    text = next(t for t in findings(result) if "looks wrong" in t)
    assert text.startswith("No training label looks wrong (estimated)")


def test_findings_name_the_failed_analyses(issues_audit):
    result = copy.deepcopy(issues_audit)
    n_folds = result.metadata["n_folds"]
    result.failed = {
        "density": dict.fromkeys(range(n_folds), "E: e"),
        "denoising": {0: "E: e"},
    }
    assert findings(result)[0] == (
        f"Analyses failed: density (every fold), denoising (1 of {n_folds} "
        "folds); their results are left out where they failed (the errors are "
        "in the summary)."
    )


def test_an_accuracy_that_hides_a_class_is_followed_by_the_balanced_one():
    samples = pd.DataFrame(
        dict(label=[0] * 18 + [1] * 2, correct=[True] * 18 + [False] * 2)
    )
    assert class_recall_finding(samples) == (
        "Balanced accuracy 0.500 (recall averaged over the 2 classes), against "
        "0.900 over the examples: class 1 (2 examples) is never predicted right."
    )
    samples["correct"] = [True] * 16 + [False] * 2 + [True, False]
    assert class_recall_finding(samples).endswith("favours its frequent classes.")
    samples["correct"] = [True] * 17 + [False] + [True] * 2
    assert class_recall_finding(samples) is None  # 0.972 against 0.95


def test_headline_numbers_have_their_meaning(issues_audit):
    html = render_html(issues_audit)
    assert "About " in html and "in 100 held-out examples are classified" in html
    assert "of the variance of the errors" in html
    assert "on average carry its label" in html
    assert "<h3>Time taken</h3>" in html


def test_a_correlation_of_floored_or_soft_densities_draws_no_conclusion(
    issues_audit,
):
    """92% of a regression's densities tied at the floor, and soft counts past
    the scale threshold read 0.07 where hard ones read -0.38: both reports
    concluded that errors were not where training examples are scarce."""
    result = copy.deepcopy(issues_audit)
    samples = result.tables["samples"]
    r = summary_value(result.tables["summary"], "density_error_correlation")[0]

    def meaning():
        text = next(t for t in findings(result) if t.startswith("Density-error"))
        return text.split(". ", 1)[1].split(" By density bin")[0]  # then the bins

    assert meaning() == correlation_meaning(r)
    samples["neighbor_count"] = np.where(np.arange(len(samples)) % 4, 0.0, 7.0)
    assert meaning().startswith(
        "Not telling: 75% of the held-out densities tie at the floor"
    )
    result.metadata["methods"]["density"] = "soft counts (exact, time O(N p))"
    summary = result.tables["summary"]
    rows = summary["metric"] == "density_error_correlation"
    summary.loc[rows, "mean"] = 0.07
    assert meaning().startswith("Soft counts, which sum every similarity, follow")
    assert "0% of the variance of the errors, which does not rule" in meaning()
    summary.loc[rows, "mean"] = -0.38  # strong enough to read even so
    assert meaning() == correlation_meaning(-0.38)
    # errors more frequent at high density: the soft counts' weakness does not
    # explain them, and "does not rule coverage out" read against its own bins
    for r in (0.22, 0.6):
        summary.loc[rows, "mean"] = r
        assert meaning() == correlation_meaning(r)


def test_an_undefined_correlation_reads_n_a_with_its_reason(issues_audit):
    result = copy.deepcopy(issues_audit)
    summary = result.tables["summary"]
    rows = summary["metric"] == "density_error_correlation"
    summary.loc[rows, ["mean", "std"]] = np.nan
    html = render_html(result)
    assert "density–error correlation<b>n/a</b>" in html
    assert "Undefined: the held-out errors, or the densities of some fold" in html
    assert "<b>nan" not in html
    assert any(
        text.startswith("Density-error correlation n/a. Undefined")
        for text in findings(result)
    )


def test_label_issue_section_shows_top_twenty_with_thumbnails(issues_audit):
    from sksim.audit.analyses.label_issues import issue_grid

    items = [g for g in issues_audit.gallery if g["kind"] == "label issue"]
    table = issues_audit["label_issues"]
    assert [g["index"] for g in items] == table["index"][:20].tolist()
    for item, (_, row) in zip(items, table.iterrows(), strict=False):
        # the most similar neighbours, as their similarities and labels are
        np.testing.assert_array_equal(item["neighbors"], row["neighbors"][:5])
        np.testing.assert_array_equal(
            item["similarities"], row["neighbor_similarities"][:5]
        )
    fig = issue_grid(issues_audit)
    titled = [  # a wide title is on two lines
        ax.get_title().replace("\n", " ")
        for ax in fig.axes
        if ax.get_title().startswith("#")
    ]
    assert len(titled) == 20
    colors = {  # by the example's number
        ax.get_title().split()[0]: ax.title.get_color()
        for ax in fig.axes
        if ax.get_title().startswith("#")
    }
    for item, (_, row) in zip(items, table.iterrows(), strict=False):
        flip = " (flip)" if item["index"] in (5, 69, 198) else ""
        given, suggested = item["label"], item["suggested"]
        title = f"#{item['index']} y={given}" + (
            "" if suggested == given else f"→{suggested}"
        )
        assert title + flip in titled
        # the estimated issues in red: all 20 were, the suggested label the given one
        assert item["issue"] == row["is_issue"]
        assert colors[f"#{item['index']}"] == ("tab:red" if item["issue"] else "black")
    assert 0 < sum(g["issue"] for g in items) < 20
    html = render_html(issues_audit)
    assert "Planted noise: 3 training labels were flipped" in html
    assert "planted_flip" in html and "estimated_issue" in html


def test_examples_are_in_the_json_without_images(issues_audit, tmp_path):
    data = json.loads(issues_audit.to_json(tmp_path / "audit.json").read_text())
    kinds = {g["kind"] for g in data["examples"]}
    assert kinds == {"isolated", "least support"}
    assert all("image" not in g for g in data["examples"])


def test_sensitivity_axes_are_labelled(small_audit):
    result = copy.copy(small_audit)
    rows = []
    for net in ("trained", "init"):
        for depth, layer in enumerate(("a", "b")):
            rows.append(
                dict(
                    net=net,
                    layer=layer,
                    depth=depth,
                    **{f"{m}_{s}": 1.0 + depth for m in "DGR" for s in ("mean", "std")},
                )
            )
    result.tables = dict(small_audit.tables, sensitivity_summary=pd.DataFrame(rows))
    fig = sensitivity_layers(result)
    assert [ax.get_xlabel() for ax in fig.axes] == ["layer"] * 3
    assert [ax.get_ylabel() for ax in fig.axes] == [
        "D: sensitivity to deformations",
        "G: sensitivity to noise",
        "R = D / G",
    ]


@pytest.mark.parametrize("values", [(0.21, 0.26, 0.39), (0.01, 0.5, 30.0)])
def test_sensitivity_ticks_read_as_plain_numbers(small_audit, values):
    """The log axes' labels read 0.3, not 3 x 10^-1 (mathtext): within one
    decade (the demo's D) and across several."""
    result = copy.copy(small_audit)
    rows = [
        dict(
            net="trained",
            layer=f"layer{depth}",
            depth=depth,
            **{f"{m}_mean": value for m in "DGR"},
            **{f"{m}_std": 0.0 for m in "DGR"},
        )
        for depth, value in enumerate(values)
    ]
    result.tables = dict(small_audit.tables, sensitivity_summary=pd.DataFrame(rows))
    fig = sensitivity_layers(result)
    fig.canvas.draw()
    ax = fig.axes[0]
    low, high = ax.get_ylim()
    labels = [
        (tick.get_loc(), tick.label1.get_text())
        for tick in ax.yaxis.get_major_ticks() + ax.yaxis.get_minor_ticks()
        if tick.label1.get_visible()
        and tick.label1.get_text()
        and low <= tick.get_loc() <= high
    ]
    assert len(labels) >= 2
    for location, text in labels:
        assert float(text) == pytest.approx(location), text


def test_sensitivity_of_many_long_layer_names_is_drawn(small_audit):
    """26 layers of a Hugging Face ResNet: matplotlib warned that the layout
    could not be applied, and the names overlapped."""
    result = copy.copy(small_audit)
    layers = [
        f"resnet.encoder.stages.{i // 4}.layers.{i % 4}.shortcut" for i in range(26)
    ]
    rows = [
        dict(
            net=net,
            layer=layer,
            depth=depth,
            **{f"{m}_{s}": 1.0 + depth for m in "DGR" for s in ("mean", "std")},
        )
        for net in ("trained", "init")
        for depth, layer in enumerate(layers)
    ]
    result.tables = dict(small_audit.tables, sensitivity_summary=pd.DataFrame(rows))
    fig = sensitivity_layers(result)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # "constrained_layout not applied"
        fig.canvas.draw()
    names = [label.get_text() for label in fig.axes[0].get_xticklabels()]
    assert len(names) == 26 and max(map(len, names)) == 24
    assert names[:2] == ["…ges.0.layers.0.shortcut", "…ges.0.layers.1.shortcut"]
    assert [ax.get_position().width > 0.7 for ax in fig.axes] == [True] * 3


@pytest.mark.parametrize("task", ["classification", "regression"])
def test_the_typical_example_is_none_of_the_others_shown(task):
    """Of median density, not one shown as an error, and classified right."""
    rng = np.random.RandomState(0)
    samples = pd.DataFrame(
        dict(
            log_density=np.round(rng.randn(40), 1),
            label=rng.randint(3, size=40),
            prediction=rng.randint(3, size=40),
            fold=rng.randint(2, size=40),
        )
    )
    if task == "classification":
        samples["correct"] = rng.rand(40) > 0.3
    else:
        samples["squared_error"] = rng.rand(40)
    rows = _gallery_rows(samples, size=3)
    typical = [i for kind, i in rows if kind == "typical"]
    others = [i for kind, i in rows if kind != "typical"]
    assert len(typical) == 1 and typical[0] not in others
    if task == "classification":
        assert samples["correct"][typical[0]]
    median = samples["log_density"].sort_values(kind="stable").iloc[20]
    assert abs(samples["log_density"][typical[0]] - median) <= 0.3


def test_the_gallery_breaks_ties_at_the_floor_as_the_isolated_examples():
    """585 of 600 held-out densities at the floor: the gallery's "lowest
    density" were the first rows of fold 0, and its "typical" a floored one."""
    rng = np.random.RandomState(0)
    floored = np.arange(40) < 34
    samples = pd.DataFrame(
        dict(
            index=np.arange(40),
            fold=np.repeat([0, 1], 20),
            label=rng.randint(3, size=40),
            prediction=rng.randint(3, size=40),
            correct=rng.rand(40) > 0.3,
            # each fold's floor is its own (the sizes of their training parts)
            log_density=np.where(floored, np.repeat([-5.08, -5.06], 20), rng.rand(40)),
            neighbor_count=np.where(floored, 0.0, 5.0),
            top_similarity=np.linspace(0, 1, 40),  # a floored row of fold 0 first
        )
    )
    rows = _gallery_rows(samples, size=3)
    lowest = [i for kind, i in rows if kind == "lowest density"]
    assert list(isolated_rows(samples, size=15)[:15]).index(lowest[0]) == 0
    assert set(lowest) <= set(isolated_rows(samples, size=15))
    typical = next(i for kind, i in rows if kind == "typical")
    assert not floored[typical]


def _partition(labels_by_fold):
    """The samples and folds tables of k-fold splits holding out these labels."""
    rows = [
        (fold, label) for fold, labels in enumerate(labels_by_fold) for label in labels
    ]
    samples = pd.DataFrame(rows, columns=["fold", "label"])
    samples["index"] = np.arange(len(samples))
    n_test = samples.groupby("fold").size().to_numpy()
    folds = pd.DataFrame(dict(n_train=len(samples) - n_test, n_test=n_test))
    return samples, folds


def test_neighbour_agreement_is_read_against_what_the_folds_allow():
    """Two folds of 12 examples, 6 per class: 3 training examples of a class
    in each fold, so at most 3 of 5 neighbours can share a label."""
    samples, folds = _partition([[0, 0, 0, 1, 1, 1]] * 2)
    bound = agreement_bound(samples, folds, k=5)
    assert bound == pytest.approx(0.6)
    text = agreement_meaning(0.58, 5, bound)
    assert "follows the classes closely (at most 3.0 could: some classes" in text
    assert "relates many examples across" in agreement_meaning(0.58, 5)


def test_the_agreement_bound_counts_each_folds_own_training_examples():
    """3 classes of 7 in 3 stratified folds hold out 3, 2 and 2 of each: the
    bound took floor(7 * 2 / 3) = 4 training examples for all (at most 4.0 of
    5), below the 4.6 the network reached; averaged over the examples rather
    than over the folds, as the agreement is, it stayed below a perfect
    network's; other splits allow no bound."""
    samples, folds = _partition(
        [[0, 0, 0, 1, 1, 1, 2, 2, 2]] + [[0, 0, 1, 1, 2, 2]] * 2
    )
    expected = (4 / 5 + 1.0 + 1.0) / 3  # training examples 4, 5 and 5 of 7
    assert agreement_bound(samples, folds, k=5) == pytest.approx(expected)
    repeated = samples.assign(index=samples["index"] % 10)  # held out twice
    assert agreement_bound(repeated, folds, k=5) == 1.0


def test_the_protocol_is_described_in_words(small_audit):
    """The report showed the splitter's repr, StratifiedKFold(n_splits=3,
    random_state=None, shuffle=False)."""
    meta = small_audit.metadata
    assert meta["cv"].startswith("StratifiedKFold(")  # kept, as scikit-learn's
    words = "StratifiedKFold: 3 folds, the classes in like proportions, in the data's"
    assert meta["cv_words"] == words + " order"
    shown = f"<td style='text-align:left'>{html.escape(meta['cv_words'])}<"
    assert shown in render_html(small_audit)
    assert splitter_words(KFold(4, shuffle=True), 4) == (
        "KFold: 4 folds, shuffled at random"
    )
    assert splitter_words(StratifiedGroupKFold(2), 2) == (  # groups dealt by size
        "StratifiedGroupKFold: 2 folds, each group whole in one fold, the classes in "
        "like proportions, not shuffled"
    )
    random = KFold(2, shuffle=True, random_state=np.random.RandomState(0))
    assert splitter_words(random, 2) == "KFold: 2 folds, shuffled at random"
    other = ShuffleSplit(2, random_state=0)
    assert splitter_words(other, 2) == f"2 train/test splits: {other!r}"


def test_methods_that_differ_only_in_numbers_read_as_one_with_ranges():
    """A long text was repeated per fold for two numbers that differed."""
    analysis = SimpleNamespace(name="class_fitting")
    text = "fitted on {} of the 10,000 training examples (at most 1,000 per class)"
    per_fold = {0: text.format("9,986"), 1: text.format("9,987"), 2: text.format("10")}
    merged = _methods({"class_fitting": per_fold}, [analysis])["class_fitting"]
    assert merged == text.format("10 to 9,987 (over the folds)")
    per_fold = {0: "hard counts over all pairs", 1: "soft counts, 3 examples"}
    merged = _methods({"class_fitting": per_fold}, [analysis])["class_fitting"]
    assert (
        merged == "fold 0: hard counts over all pairs; fold 1: soft counts, 3 examples"
    )


def test_one_warning_is_counted_in_the_singular(small_audit):
    result = copy.copy(small_audit)
    warning = dict(warning="W", times=1, samples=None, analyses={"density": {}})
    result.metadata = {**small_audit.metadata, "warnings": [warning]}
    assert findings(result)[-1] == (
        "1 warning of 1 kind was raised during the analyses (listed in the summary)."
    )


def test_isolated_thumbnails_of_a_regression_show_targets_not_errors():
    """Every thumbnail was red ("misclassified": a target never equals its
    prediction) and showed the target to all its digits."""
    from matplotlib.colors import to_hex

    from sksim.audit._examples import isolated_figure

    items = [
        dict(
            kind="isolated", index=i, label=0.123456 * i, prediction=0.5, log_density=-2
        )
        for i in range(1, 4)
    ]
    for item in items:
        item.update(image=np.eye(4), log_density=-2.0)
    result = SimpleNamespace(examples=items, metadata=dict(task="regression"))
    fig = isolated_figure(result)
    titles = [ax.title for ax in fig.axes]
    assert [" ".join(t.get_text().split()) for t in titles] == [
        f"#{i} y={0.123456 * i:.3g} log ρ=-2.00" for i in range(1, 4)
    ]
    assert {to_hex(t.get_color()) for t in titles} == {"#000000"}
    assert "misclassified" not in fig._suptitle.get_text()


def test_images_scale_colour_to_their_range(caplog):
    """Standardised colour images were clipped to saturated colours, with a
    matplotlib message per thumbnail, outside the neighbours' gallery."""
    import matplotlib.pyplot as plt

    from sksim.audit import _render

    image = np.linspace(-2.0, 3.0, 4 * 4 * 3).reshape(4, 4, 3)
    fig, ax = plt.subplots()
    with caplog.at_level("WARNING"):
        _render.image(ax, image)
    drawn = np.asarray(ax.images[0].get_array())
    np.testing.assert_allclose(drawn, (image + 2.0) / 5.0)
    assert "Clipping" not in caplog.text
    plt.close(fig)


def test_table_columns_of_prose_are_aligned_left():
    """Every cell was aligned right: messages and neighbour lists wrapped
    ragged on the left, over three to five lines."""
    from sksim.audit import _render

    frame = pd.DataFrame(
        dict(
            count=[3, 12],
            label=["a", "b"],
            message=["short", "a message long enough to read as prose"],
        )
    )
    html_table = _render.table(frame)
    assert html_table.count("<td style='text-align:left'>") == 2
    assert "<td style='text-align:left'>short</td>" in html_table
    assert "<td>12</td>" in html_table and "<td>b</td>" in html_table
