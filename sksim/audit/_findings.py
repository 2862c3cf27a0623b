"""What the report's numbers mean, in one sentence each, and its findings list."""

from __future__ import annotations

import math

import numpy as np

from ._examples import prediction_support, soft_counts
from ._tables import floored
from .analyses.label_issues import planted_precision
from .analyses.neighbors import MIN_RECALL

STABLE_SPREAD = 0.25  # relative spread over folds below which R is called stable
BALANCE_GAP = 0.05  # accuracy above balanced accuracy by more: a finding


def summary_value(summary, metric):
    """Mean and standard deviation over folds of ``metric`` (None if absent)."""
    rows = summary[summary["metric"] == metric]
    if rows.empty:
        return None
    return float(rows["mean"].iloc[0]), float(rows["std"].iloc[0])


def undefined_folds(result, metric) -> str:
    """`` (over k of n folds: undefined on the others)``, or "" on all or none."""
    rows = result.tables["summary"]
    rows = rows[rows["metric"] == metric]
    n_folds = result.metadata["n_folds"]
    defined = n_folds if rows.empty else int(rows["n_folds"].iloc[0])
    if defined in (0, n_folds):  # n/a on every fold says it already
        return ""
    return f" (over {defined} of {n_folds} folds: undefined on the others)"


def _spread(std, digits=".3f"):
    """`` ± std``, formatted by the spec ``digits`` or the function; none if NaN."""
    if math.isnan(std):
        return ""
    return f" ± {digits(std) if callable(digits) else format(std, digits)}"


def plain(value: float, digits: int = 3) -> str:
    """``value`` to ``digits`` significant digits, in plain notation where it fits.

    As the ``g`` format, but from 1e-4 to 1e6 without an exponent: ``3218``
    rather than ``3.22e+03``, for sentences.
    """
    if not math.isfinite(value) or value == 0 or not 1e-4 <= abs(value) < 1e6:
        return f"{value:.{digits}g}"
    decimals = max(0, digits - 1 - math.floor(math.log10(abs(value))))
    text = f"{value:.{decimals}f}"
    return text.rstrip("0").rstrip(".") if "." in text else text


def counted(n, noun):
    """``n`` and ``noun``, in the plural unless ``n`` is one."""
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def over_folds(n_folds):
    """Over which held-out data a score was taken, in words."""
    return "on the one held-out split" if n_folds == 1 else f"mean over {n_folds} folds"


def low_recall_caveat(result, metric) -> str:
    """A caveat when the search behind a finding missed many exact neighbours.

    ``metric`` is the search's recall in the summary (``neighbor_recall`` or
    ``label_issue_recall``); "" when it was not measured or is at least
    :data:`~sksim.audit.analyses.neighbors.MIN_RECALL`.
    """
    value = summary_value(result.tables["summary"], metric)
    if value is None or not value[0] < MIN_RECALL:
        return ""
    return (
        " Read with care: the approximate search behind this found only "
        f"{value[0]:.0%} of the exact neighbours (the warnings say how to widen it)."
    )


def accuracy_meaning(share, std, n_folds):
    """One sentence on the share of held-out examples classified correctly.

    ``share`` is pooled over the held-out examples of every fold (the mean of
    the folds' accuracies weighs a small fold as much as a large one); ``std``
    is the folds' spread.
    """
    consistency = (
        ""
        if math.isnan(std)
        else f" Its standard deviation over folds, {std:.3f}, is small: the folds "
        "agree."
        if std < 0.03
        else f" Its standard deviation over folds, {std:.3f}, is large: the folds "
        "disagree (a small or uneven data set)."
    )
    pooled = "" if n_folds == 1 else f" (pooled over the {n_folds} folds)"
    return (
        f"About {share * 100:.0f} in 100 held-out examples are classified "
        f"correctly by a network that never saw them{pooled}.{consistency}"
    )


def held_out_error(samples) -> float:
    """The share of held-out examples misclassified, pooled over the folds."""
    return 1.0 - float(samples["correct"].mean())


def r2_meaning(r2):
    """What a regression's held-out R² says, in words (no full stop)."""
    if r2 > 0:
        return (
            f"the network accounts for {r2:.0%} of the variance of targets it never saw"
        )
    return "the network predicts targets it never saw no better than their mean would"


def rmse_meaning(samples):
    """A regression's root mean squared error against predicting the targets' mean."""
    baseline = float(np.std(samples["label"].to_numpy(dtype=float)))
    return (
        "In the targets' units; predicting their mean for every held-out example "
        f"would give {plain(baseline)}."
    )


def fit_finding(r2, rmse, n_folds):
    """One sentence on a regression's held-out R² and root mean squared error."""
    (mean, std), (error, error_std) = r2, rmse
    reading = r2_meaning(mean)
    return (
        f"Held-out R² {mean:.3f}{_spread(std)}, root mean squared error "
        f"{plain(error)}{_spread(error_std, plain)}: {reading} "
        f"({over_folds(n_folds)})."
    )


def class_recall_finding(samples):
    """Balanced accuracy and the classes never predicted right, when they matter.

    None unless some class is never predicted correctly, or the balanced
    accuracy (recall averaged over the classes) is below the accuracy by more
    than :data:`BALANCE_GAP`: an accuracy that hides a neglected class.
    """
    recall = samples.groupby("label")["correct"].agg(["mean", "size"])
    balanced, accuracy = float(recall["mean"].mean()), float(samples["correct"].mean())
    never = recall[recall["mean"] == 0]
    if never.empty and accuracy - balanced <= BALANCE_GAP:
        return None
    text = (
        f"Balanced accuracy {balanced:.3f} (recall averaged over the "
        f"{len(recall)} classes), against {accuracy:.3f} over the examples"
    )
    if never.empty:
        return text + ": the network favours its frequent classes."
    named = ", ".join(
        f"{label} ({size} example{'s' if size > 1 else ''})"
        for label, size in never["size"].items()
    )
    return (
        f"{text}: class {named} is never predicted right."
        if len(never) == 1
        else f"{text}: classes {named} are never predicted right."
    )


def error_meaning(error):
    """One sentence on the share of held-out examples misclassified."""
    if error <= 0:
        return "No held-out example is misclassified."
    share = f"about one in {1 / error:.0f}" if error < 0.2 else f"{error:.0%}"
    return f"The share of held-out examples misclassified: {share}."


def correlation_meaning(r, regression=False):
    """One sentence on the Pearson correlation of log-density and error."""
    share = f"density accounts for {r * r:.0%} of the variance of the errors"
    if r <= -0.3:
        return (
            f"Errors concentrate where the network sees few similar training "
            f"examples ({share}): more training data like the low-density "
            "inputs would help most."
        )
    elsewhere = (
        "targets that vary fast or are noisy"
        if regression
        else "ambiguous inputs, label noise"
    )
    if r <= -0.1:
        return (
            f"Errors are somewhat more frequent at low density ({share}): "
            f"coverage explains some of them, the others come from elsewhere "
            f"({elsewhere})."
        )
    if r < 0.1:
        look = "the targets' noise" if regression else "confusions and label issues"
        return (
            f"Errors are not where training examples are scarce ({share}): "
            f"look at {look} rather than coverage."
        )
    where = (
        "the targets vary fast or are noisy"
        if regression
        else "classes overlap or labels are inconsistent"
    )
    if r < 0.3:
        return (
            f"Errors are somewhat more frequent at high density, but weakly so "
            f"({share}): where {where}, more than at unfamiliar inputs."
        )
    return (
        f"Errors are more frequent at high density ({share}): regions where "
        f"{where}, not unfamiliar inputs."
    )


def density_meaning(result, r):
    """What the density-error correlation ``r`` of the audit says, if anything."""
    samples = result.tables["samples"]
    at_floor = float(floored(samples).mean())
    if math.isnan(r):
        return _undefined_correlation(samples, at_floor)
    if at_floor > 0.5 and not soft_counts(result):
        return (
            f"Not telling: {at_floor:.0%} of the held-out densities tie at the "
            "floor (no training example above the similarity threshold), so "
            "the correlation rests on few examples; lower the threshold, or count "
            "softly."
        )
    if soft_counts(result) and -0.3 < r < 0.1:
        # a weak or absent concentration at low density may be the soft
        # counts'; errors more frequent at high density are read as they are
        return (
            "Soft counts, which sum every similarity, follow the errors more "
            "weakly than counts of the nearly identical examples: density "
            f"accounts for {r * r:.0%} of the variance of the errors, which does "
            "not rule coverage out (hard counts, method='hard', on fewer "
            "examples say more)."
        )
    return correlation_meaning(r, result.metadata["task"] == "regression")


def density_contrast(result) -> str:
    """The error of the lowest and highest density bins, in words ("" if one bin).

    What the correlation sums up: a 0/1 error varies much within any
    density, so a correlation of -0.25 can hide an error rate five times
    higher in the lowest bin than in the highest.
    """
    table = result.tables.get("density_bins_summary")
    if table is None or len(table) < 2:
        return ""
    regression = "error_rate_mean" not in table
    column = "mean_squared_error_mean" if regression else "error_rate_mean"
    name = "mean squared error" if regression else "error rate"
    low, high = table[column].iloc[0], table[column].iloc[-1]
    over = "" if result.metadata["n_folds"] == 1 else ", mean over folds"
    return (
        f" By density bin{over}: {name} {plain(low)} in the lowest "
        f"(bin 0) against {plain(high)} in the highest (bin "
        f"{table['density_bin'].iloc[-1]})."
    )


def _undefined_correlation(samples, floored: float) -> str:
    """Why the density-error correlation is undefined: densities or errors alike."""
    if samples["log_density"].nunique() > 1:
        return (
            "Undefined: the held-out errors, or the densities of some fold, are "
            "all alike."
        )
    if floored == 1:
        return (
            "Undefined: every held-out density is at its floor, no training "
            "example similar enough; lower the threshold, or count softly."
        )
    return (
        "Undefined: every held-out density is the same, "
        f"{samples['log_density'].iloc[0]:.2f}, as when every training example "
        "is similar enough to every held-out one (a log relative density of 0): "
        "at this threshold the network tells them apart little; raise it, or "
        "count softly."
    )


def agreement_meaning(a, k, bound=1.0, caveat=""):
    """One sentence on the share of neighbours with the example's label.

    ``bound`` is the largest share the training sets allow: below 1 when some
    classes have fewer than ``k`` training examples; ``caveat`` ends it.
    """
    quality = (
        "the network's notion of similarity follows the classes closely"
        if a >= 0.9 * bound
        else "the network relates many examples across classes"
    )
    text = (
        f"Of the {k} training examples most similar to a held-out example, "
        f"{a * k:.1f} on average carry its label: {quality}"
    )
    if bound < 1:
        text += (
            f" (at most {bound * k:.1f} could: some classes have fewer than {k} "
            "training examples)"
        )
    return text + "." + caveat


def mean_pair_difference(values) -> float:
    """The mean ``|a - b|`` over the pairs of distinct entries of ``values``.

    From the sorted values, each pair's difference counted once: O(n log n).
    """
    v = np.sort(np.asarray(values, dtype=np.float64))
    n = len(v)
    if n < 2:
        return float("nan")
    weights = 2 * np.arange(n) - (n - 1)  # how often each is the larger, less smaller
    return float(weights @ v / (n * (n - 1) / 2))


def target_difference_meaning(difference, k, samples, caveat=""):
    """One sentence on a regression's neighbours' target difference, with a baseline.

    The baseline is the mean difference between two held-out examples drawn at
    random (from the targets of ``samples``): similar examples whose targets
    differ as much as any two say the similarity does not follow the targets.
    ``caveat`` ends it.
    """
    baseline = mean_pair_difference(samples["label"])
    text = (
        f"The targets of the {k} training examples most similar to a held-out "
        f"example differ from its own by {plain(difference)} on average, against "
        f"{plain(baseline)} between two held-out examples drawn at random"
    )
    if difference < 0.8 * baseline:
        reading = "the network's most similar examples have similar targets"
    elif difference < baseline:
        reading = (
            "hardly closer than any two: the similarity follows the targets weakly"
        )
    else:
        reading = "no closer than any two: the similarity does not follow the targets"
    return f"{text}: {reading}.{caveat}"


def agreement_bound(samples, folds, k):
    """The largest share of same-label neighbours the folds' training sets allow.

    A held-out example has at most its class's training examples of its fold
    among its ``k`` neighbours. Where every example is held out once and each
    fold trains on all the others (k-fold splits), those are the class's
    examples less the fold's held-out ones; for other splits, 1 (no bound).
    """
    n = len(samples)
    if (
        not samples["index"].is_unique
        or not (folds["n_train"] + folds["n_test"] == n).all()
    ):
        return 1.0
    held_out = samples.groupby(["fold", "label"])["label"].transform("size")
    training = samples["label"].map(samples["label"].value_counts()) - held_out
    # averaged as the agreement is: over each fold's examples, then the folds
    share = np.minimum(training / k, 1.0)
    return float(share.groupby(samples["fold"]).mean().mean())


def headline_meanings(result):
    """``{metric: sentence}`` for the headline numbers of the summary."""
    summary, meta = result.tables["summary"], result.metadata
    meanings = {}
    value = summary_value(summary, "accuracy")
    if value is not None:
        error = held_out_error(result.tables["samples"])
        meanings["accuracy"] = accuracy_meaning(1 - error, value[1], meta["n_folds"])
        meanings["error"] = error_meaning(error)
    value = summary_value(summary, "r2")
    if value is not None:
        reading = r2_meaning(value[0])
        meanings["r2"] = reading[0].upper() + reading[1:] + "."
        meanings["rmse"] = rmse_meaning(result.tables["samples"])
    value = summary_value(summary, "density_error_correlation")
    if value is not None:
        meanings["density_error_correlation"] = density_meaning(result, value[0])
    value = summary_value(summary, "neighbor_label_agreement")
    if value is not None:
        k = meta["n_neighbors"]
        bound = (
            1.0  # a prefit audit's training labels are not among its samples
            if meta["cv"] == "prefit"
            else agreement_bound(result.tables["samples"], result.tables["folds"], k)
        )
        meanings["neighbor_label_agreement"] = agreement_meaning(
            value[0], k, bound, low_recall_caveat(result, "neighbor_recall")
        )
    value = summary_value(summary, "neighbor_target_difference")
    if value is not None:
        meanings["neighbor_target_difference"] = target_difference_meaning(
            value[0],
            meta["n_neighbors"],
            result.tables["samples"],
            low_recall_caveat(result, "neighbor_recall"),
        )
    return meanings


def sensitivity_finding(table):
    """R at the last layer of the trained net: its value, stability and meaning."""
    trained = table[table["net"] == "trained"].sort_values("depth")
    if trained.empty:
        return None
    last = trained.iloc[-1]
    mean, std = float(last["R_mean"]), float(last["R_std"])
    spread = std / mean if mean > 0 and not math.isnan(std) else math.nan
    stability = (
        "one fold only: its stability is unknown"
        if math.isnan(spread)
        else f"spread over folds {spread:.0%}: a stable estimate"
        if spread < STABLE_SPREAD
        else f"spread over folds {spread:.0%}: unstable, read it as a rough value "
        "(more probes, options n_probe, tighten it)"
    )
    side = (
        "more stable to smooth deformations than to noise of the same norm, as "
        "networks that generalise well tend to be"
        if mean < 1
        else "more sensitive to smooth deformations than to noise of the same "
        "norm, unlike networks that generalise well"
    )
    text = (
        f"Relative sensitivity R = {mean:.2g}{_spread(std, '.2g')} at layer "
        f"{last['layer']} ({stability}): {side}"
    )
    init = table[(table["net"] == "init") & (table["layer"] == last["layer"])]
    if not init.empty:
        before = float(init["R_mean"].iloc[0])
        change = "lowered" if mean < before else "raised"
        text += f"; training {change} it from {before:.2g} at initialisation"
    return text + "."


def class_fitting_finding(table):
    """The largest gap between training and held-out class densities, explained."""
    gaps = (
        table.assign(
            gap=table["train_mean_log_density_mean"]
            - table["test_mean_log_density_mean"]
        )
        .groupby("layer", sort=False)["gap"]
        .mean()
    )
    if gaps.dropna().empty:
        return None
    layer = gaps.idxmax()
    gap = float(gaps[layer])
    at_layer = table.loc[table["layer"] == layer]
    median = float(
        (
            at_layer["train_mean_log_density_mean"]
            - at_layer["test_mean_log_density_mean"]
        ).median()
    )
    meaning = (
        "the class densities fit the training examples individually more than "
        "in modes that held-out examples share; part of the gap is the "
        "mixtures' own fit to the examples they were fitted on, large for "
        "classes of few examples in many dimensions whatever the network, so "
        "compare it across layers, or with the network before training, before "
        "reading it as memorisation"
        if gap > 1
        else "held-out examples fall in the same class modes as training ones"
    )
    factor = f" (a factor {plain(math.exp(gap))})" if gap < 10 else ""
    return (
        f"Class-fitting gap: at layer {layer}, held-out examples are on average "
        f"{gap:.2f} nats{factor} less likely than training examples under their "
        f"own class density (log-density, mean over classes; median "
        f"{median:.2f}): {meaning}."
    )


def label_issue_finding(result):
    """How many labels look wrong, and the top ones."""
    table = result.tables["label_issues"]
    issues = table[table["is_issue"].astype(bool)]
    n = len(issues)
    top = ", ".join(
        f"#{r['index']} (given {r['given_label']}, looks like {r['suggested_label']})"
        for _, r in issues.head(3).iterrows()
    )
    disputed = int((table["suggested_label"] != table["given_label"]).sum())
    if n:
        text = (
            f"{counted(n, 'training label')} {'looks' if n == 1 else 'look'} wrong "
            "(estimated, "
            f"{n / len(table):.1%} of the data); the top "
            f"{'one' if n == 1 else 'ones'}: {top}."
        )
        if "correct" in result.tables["samples"]:  # a classifier's audit
            error = held_out_error(result.tables["samples"])
            text += (  # the flags cannot tell one from the other
                " They are the labels that the network (wrong on "
                f"{error:.1%} of the held-out examples) and their most "
                "similar examples disagree with: wrong labels, or its own mistakes."
            )
    elif disputed:
        text = (
            "No training label is estimated to be wrong, though for "
            f"{disputed} the network and its most similar examples together "
            "favour another label (the highest-scored head the table)."
        )
    else:
        text = (
            "No training label looks wrong (estimated): the network and its "
            "most similar examples favour every given label."
        )
    noise = result.metadata.get("label_noise")
    if noise is not None:
        found = planted_precision(table, noise)
        text += (
            f" With {found['k']} labels flipped on purpose, {found['hits']} of the "
            f"{found['k']} highest-scored are flipped ones (precision "
            f"{found['precision']:.2f})."
        )
    return text + low_recall_caveat(result, "label_issue_recall")


def denoising_finding(result):
    """Self-denoising's effective neighbours and noise level, in words."""
    summary = result.tables["summary"]
    neighbors = summary_value(summary, "denoising_mean_effective_neighbors")
    sigma = summary_value(summary, "denoising_sigma")
    if neighbors is None or sigma is None:
        return None
    targets = "targets" if result.metadata["task"] == "regression" else "labels"
    text = (
        f"Self-denoising: each training prediction averages over about "
        f"{neighbors[0]:.0f} training examples, and the residuals put the noise "
        f"of the targets, misfit included, at σ = {sigma[0]:.3f} (root mean "
        f"square per output; 0 would be {targets} the network reproduces "
        "exactly)."
    )
    warned = any(
        w["warning"].startswith("NoiseEstimateWarning")
        for w in result.metadata.get("warnings", [])
    )
    if warned:
        text += (
            " The estimate is unreliable here: the network does not average its "
            "neighbours' targets as it assumes (see the warnings)."
        )
    return text


def failure_finding(result):
    """Which analyses failed, on how many folds."""
    if not result.failed:
        return None
    n_folds = result.metadata["n_folds"]
    where = {
        name: "every fold"
        if len(folds) == n_folds
        else f"{len(folds)} of {n_folds} folds"
        for name, folds in result.failed.items()
    }
    failed = ", ".join(f"{name} ({folds})" for name, folds in where.items())
    return (
        f"Analyses failed: {failed}; their results are left out where they "
        "failed (the errors are in the summary)."
    )


def support_finding(result):
    """How many held-out predictions none of their neighbours carry."""
    samples = result.tables["samples"]
    support = prediction_support(samples, result.tables["neighbors"])
    zero = int(np.sum(support == 0))
    return (
        f"{zero} of {len(samples)} held-out predictions are carried by none of "
        f"their {result.metadata['n_neighbors']} most similar training examples "
        "(see the least-supported test inputs)."
    ) + low_recall_caveat(result, "neighbor_recall")


def isolated_finding(result):
    """The most isolated example, in words."""
    isolated = [g for g in result.examples if g["kind"] == "isolated"]
    first = isolated[0]
    none = int(floored(result.tables["samples"]).sum())
    if result.metadata["task"] == "regression":
        shown = f"#{first['index']} (target {plain(first['label'])})"
    else:
        shown = f"#{first['index']} (label {first['label']})"
    if soft_counts(result):
        return (
            f"The least dense held-out example, {shown}, has a soft count of "
            f"{plain(first['neighbor_count'])} (its similarities to the training "
            f"examples, summed); it heads the {len(isolated)} shown."
        )
    if none:
        examples = "1 example has" if none == 1 else f"{none} examples have"
        return (
            f"{examples} no training example the network treats as "
            "similar (log relative density at its floor); the most isolated, "
            f"{shown}, heads the {len(isolated)} shown."
        )
    return (
        "Every held-out example has training examples the network treats as "
        f"similar; the least dense, {shown}, with {plain(first['neighbor_count'])} "
        f"of them, heads the {len(isolated)} shown."
    )


def _planted_accuracy(samples, noise) -> str:
    """The accuracy against the labels before the planted flips, in words ("" if none).

    The audit scores the labels it was given, flips included.
    """
    if noise is None or "original" not in noise:
        return ""
    truth = dict(zip(noise["flipped"], noise["original"], strict=True))
    labels = [
        truth.get(int(i), label)
        for i, label in zip(samples["index"], samples["label"], strict=True)
    ]
    accuracy = float(np.mean(np.asarray(labels) == samples["prediction"].to_numpy()))
    return (
        f" It is scored against the labels as given, the {len(truth)} flipped on "
        f"purpose included; against the labels before the flips it is "
        f"{accuracy:.3f}."
    )


def findings(result):
    """The report's opening list: a few sentences an auditor can act on."""
    tables, meta = result.tables, result.metadata
    meanings = headline_meanings(result)
    out = [failure_finding(result)]
    accuracy = summary_value(tables["summary"], "accuracy")
    if accuracy is not None:
        out.append(
            f"Held-out accuracy {accuracy[0]:.3f}{_spread(accuracy[1])}"
            f"{'' if meta['n_folds'] == 1 else ' (mean ± std over folds)'}. "
            + meanings["accuracy"]
            + _planted_accuracy(tables["samples"], meta.get("label_noise"))
        )
        out.append(class_recall_finding(tables["samples"]))
    r2 = summary_value(tables["summary"], "r2")
    if r2 is not None:
        rmse = summary_value(tables["summary"], "rmse")
        out.append(fit_finding(r2, rmse, meta["n_folds"]))
    if "label_issues" in tables:
        out.append(label_issue_finding(result))
    if "density_error_correlation" in meanings:
        r = summary_value(tables["summary"], "density_error_correlation")[0]
        shown = "n/a" if math.isnan(r) else f"{r:.2f}"
        out.append(
            f"Density-error correlation {shown}"
            f"{undefined_folds(result, 'density_error_correlation')}. "
            + meanings["density_error_correlation"]
            + density_contrast(result)
        )
    if any(g["kind"] == "isolated" for g in result.examples):
        out.append(isolated_finding(result))
    if "neighbors" in tables and "correct" in tables["samples"]:
        out.append(support_finding(result))
    if "denoising" in tables:
        out.append(denoising_finding(result))
    if "sensitivity_summary" in tables:
        out.append(sensitivity_finding(tables["sensitivity_summary"]))
    if "class_fitting_summary" in tables:
        out.append(class_fitting_finding(tables["class_fitting_summary"]))
    if meta.get("warnings"):
        times = sum(w["times"] for w in meta["warnings"])
        out.append(
            f"{counted(times, 'warning')} of {counted(len(meta['warnings']), 'kind')} "
            f"{'was' if times == 1 else 'were'} raised during the analyses (listed in "
            "the summary)."
        )
    return [text for text in out if text]
