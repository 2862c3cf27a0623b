import base64
import copy
import json
import sys
from html.parser import HTMLParser

import _audit_helpers
import numpy as np
import pandas as pd
import pytest
from matplotlib.figure import Figure

from sksim.audit import _render, figures
from sksim.audit._findings import findings
from sksim.audit._names import named
from sksim.audit._tables import spread
from sksim.audit.report import SECTIONS, classes_text, render_html


@pytest.fixture(scope="module")
def digit_images():
    return _audit_helpers.digit_images()


@pytest.fixture(scope="module")
def small_audit():
    return _audit_helpers.small_audit()


class Collector(HTMLParser):
    """Headings, section ids, image sources and external links of a page."""

    def __init__(self):
        super().__init__()
        self.headings, self.ids, self.images, self.links = [], [], [], []
        self._in_h2 = False

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "h2":
            self._in_h2 = True
        if tag == "section":
            self.ids.append(attrs.get("id"))
        if tag == "img":
            self.images.append(attrs.get("src", ""))
        for key in ("src", "href"):
            if key in attrs and not attrs[key].startswith(("#", "data:")):
                self.links.append(attrs[key])

    def handle_endtag(self, tag):
        if tag == "h2":
            self._in_h2 = False

    def handle_data(self, data):
        if self._in_h2:
            self.headings.append(data)


def parse(text):
    collector = Collector()
    collector.feed(text)
    return collector


def test_html_has_every_section_and_only_embedded_images(small_audit, tmp_path):
    path = small_audit.to_html(tmp_path / "report.html")
    page = parse(path.read_text(encoding="utf-8"))
    assert page.headings == [title for _, title in SECTIONS]
    assert page.ids == [key for key, _ in SECTIONS]
    assert page.links == []
    # histogram, error by density, neighbour grid, class densities, isolated
    # and least-supported examples
    assert len(page.images) == 6
    for src in page.images:
        assert src.startswith("data:image/png;base64,")
        png = base64.b64decode(src.split(",", 1)[1])
        assert png[:8] == b"\x89PNG\r\n\x1a\n"


def test_html_says_why_an_analysis_is_missing(small_audit):
    text = render_html(small_audit)
    assert "Skipped" not in text
    # sensitivity and label_issues
    assert text.count("Not requested in this audit.") == 2
    result = copy.copy(small_audit)
    result.skipped = {"sensitivity": "inputs are not <images> & so on"}
    text = render_html(result)
    assert "Skipped: inputs are not &lt;images&gt; &amp; so on" in text


def test_html_escapes_text(small_audit):
    result = copy.copy(small_audit)
    result.metadata = dict(small_audit.metadata, net="<script>alert(1)</script>")
    result.tables = dict(small_audit.tables)
    folds = result.tables["folds"].copy()
    folds["note"] = "<b>x</b>"
    result.tables["folds"] = folds
    text = render_html(result)
    assert "<script>" not in text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in text
    assert "<b>x</b>" not in text and "&lt;b&gt;x&lt;/b&gt;" in text


def test_long_tables_are_cut_in_html_but_whole_in_json(small_audit, tmp_path):
    text = render_html(small_audit)
    assert "First 200 of 240 rows" in text  # the samples table
    path = small_audit.to_json(tmp_path / "audit.json")

    def refuse(constant):
        raise AssertionError(f"non-standard JSON constant {constant}")

    data = json.loads(path.read_text(), parse_constant=refuse)
    assert set(data["tables"]) == set(small_audit.tables)
    samples = data["tables"]["samples"]
    assert len(samples) == 240
    expected = small_audit["samples"]["log_density"].to_numpy()
    np.testing.assert_allclose([r["log_density"] for r in samples], expected)
    assert data["metadata"]["n_folds"] == 3
    assert data["gallery"][0]["neighbors"] == small_audit.gallery[0]["neighbors"]
    assert "image" not in data["gallery"][0]


def test_json_turns_nan_into_null(small_audit, tmp_path):
    result = copy.copy(small_audit)
    result.tables = dict(small_audit.tables)
    folds = result.tables["folds"].copy()
    folds.loc[0, "accuracy"] = np.nan
    folds.loc[1, "accuracy"] = -np.inf
    result.tables["folds"] = folds
    result.metadata = dict(small_audit.metadata, ratio=float("inf"))
    text = result.to_json(tmp_path / "audit.json").read_text()

    def refuse(constant):
        raise AssertionError(f"{constant} is not strict JSON")

    data = json.loads(text, parse_constant=refuse)
    assert data["tables"]["folds"][0]["accuracy"] is None
    assert data["tables"]["folds"][1]["accuracy"] is None
    assert data["metadata"]["ratio"] is None
    written = pd.DataFrame(data["tables"]["folds"]).iloc[2:]
    pd.testing.assert_frame_equal(
        written, folds.iloc[2:], check_dtype=False, rtol=1e-14
    )


def test_error_by_density_figure_draws_the_summary(small_audit):
    fig = figures.error_by_density(small_audit)
    ax = fig.axes[0]
    mean_line = ax.containers[0].lines[0]
    np.testing.assert_allclose(
        np.asarray(mean_line.get_ydata(), float),
        small_audit["density_bins_summary"]["error_rate_mean"],
    )
    assert len(ax.lines) >= 3  # one line per fold
    labels = ax.get_legend_handles_labels()[1]
    assert labels == ["one fold", "mean over folds (± std)"]
    ticks = [tick for tick in ax.get_xticks() if tick == int(tick)]
    assert len(ticks) == len(ax.get_xticks())  # whole bins only


def test_bins_that_only_some_folds_have_are_marked(small_audit):
    """Ties at the floor leave bins empty in some folds: the mean line drew
    one fold's value there as a mean over folds, without a word."""
    result = copy.copy(small_audit)
    bins = small_audit["density_bins"]
    fewer = bins[~((bins["fold"] > 0) & (bins["density_bin"] == 4))]
    summary = spread(fewer, "density_bin", ["error_rate"])
    result.tables = dict(
        small_audit.tables, density_bins=fewer, density_bins_summary=summary
    )
    ax = figures.error_by_density(result).axes[0]
    (marked,) = [line for line in ax.lines if line.get_markerfacecolor() == "white"]
    assert marked.get_label() == "bins only some folds have"
    np.testing.assert_array_equal(marked.get_xdata(), [4])
    one_fold = bins[(bins["fold"] == 0) & (bins["density_bin"] == 4)]
    np.testing.assert_allclose(marked.get_ydata(), one_fold["error_rate"])
    assert "bins only some folds have" not in [
        line.get_label() for line in figures.error_by_density(small_audit).axes[0].lines
    ]


def test_error_by_density_of_one_split_names_no_folds(small_audit):
    """A prefit audit's one split was drawn as "one fold" and "mean over
    folds (± std)"."""
    result = copy.copy(small_audit)
    bins = small_audit["density_bins"]
    one = bins[bins["fold"] == 0]
    result.tables = dict(small_audit.tables, density_bins=one)
    fig = figures.error_by_density(result)
    ax = fig.axes[0]
    assert ax.get_legend_handles_labels()[1] == ["held-out examples"]
    assert [line.get_color() for line in ax.lines if line.get_color() == "0.7"] == []


def test_figures_and_their_absence(small_audit):
    histogram = figures.density_histogram(small_audit)
    assert isinstance(histogram, Figure)
    samples = small_audit["samples"]  # stacked: correct, then misclassified on top
    values, correct = samples["log_density"].to_numpy(), samples["correct"].to_numpy()
    edges = np.histogram_bin_edges(values, bins=30)
    bars = histogram.axes[0].patches
    heights = np.array([bar.get_height() for bar in bars]).reshape(2, -1)
    np.testing.assert_array_equal(heights[0], np.histogram(values[correct], edges)[0])
    np.testing.assert_array_equal(heights[1], np.histogram(values[~correct], edges)[0])
    grid = figures.neighbor_grid(small_audit)
    assert len(grid.axes) == len(small_audit.gallery) * 4  # example + 3 neighbours
    classes = figures.class_densities(small_audit)
    assert [ax.get_title() for ax in classes.axes] == ["hidden", "out"]
    assert figures.sensitivity_layers(small_audit) is None
    bare = copy.copy(small_audit)
    bare.tables = {k: small_audit.tables[k] for k in ("folds", "samples", "summary")}
    bare.tables["samples"] = bare.tables["samples"][["fold", "index", "correct"]]
    bare.gallery = []
    for draw in (
        figures.density_histogram,
        figures.error_by_density,
        figures.neighbor_grid,
        figures.class_densities,
    ):
        assert draw(bare) is None


def test_sensitivity_figure(small_audit):
    import pandas as pd

    result = copy.copy(small_audit)
    rows = []
    for net, scale in (("trained", 1.0), ("init", 2.0)):
        for depth, layer in enumerate(["input", "hidden", "output"]):
            rows.append(
                dict(
                    net=net,
                    layer=layer,
                    depth=depth,
                    n_folds=2,
                    D_mean=scale,
                    D_std=0.1,
                    G_mean=1.0,
                    G_std=0.1,
                    R_mean=scale * (depth + 1),
                    R_std=0.0,
                )
            )
    result.tables = dict(small_audit.tables, sensitivity_summary=pd.DataFrame(rows))
    fig = figures.sensitivity_layers(result)
    r_axis = fig.axes[2]
    assert r_axis.get_title() == "R"
    r_line = r_axis.containers[1].lines[0]
    np.testing.assert_allclose(np.asarray(r_line.get_ydata(), float), [2, 4, 6])
    labels = [t.get_text() for t in r_axis.get_xticklabels()]
    assert labels == ["input", "hidden", "output"]


def test_a_statistic_undefined_on_a_fold_says_over_how_many(small_audit):
    """n_folds counted the folds whose value was NaN: "mean over folds" of 3
    for the mean of 2, in the summary, the headline card and the findings."""
    import pandas as pd

    long = pd.DataFrame(
        dict(metric=["r"] * 3 + ["accuracy"] * 3, value=[np.nan, -0.2, -0.4, 1, 1, 1])
    )
    summary = spread(long, "metric", ["value"]).set_index("metric")
    assert summary.loc["r", "n_folds"] == 2 and summary.loc["accuracy", "n_folds"] == 3
    assert summary.loc["r", "value_mean"] == pytest.approx(-0.3)

    result = copy.copy(small_audit)
    folds = small_audit.tables["folds"].copy()
    folds.loc[folds["fold"] == 0, "density_error_correlation"] = np.nan
    table = small_audit.tables["summary"].set_index("metric")
    r = folds["density_error_correlation"]
    table.loc["density_error_correlation", ["n_folds", "mean", "std"]] = (
        r.count(),
        r.mean(),
        r.std(),
    )
    result.tables = dict(small_audit.tables, folds=folds, summary=table.reset_index())
    page = render_html(result)
    said = "density–error correlation (over 2 of 3 folds: undefined on the others)"
    assert said in page
    assert any("(over 2 of 3 folds: undefined" in line for line in findings(result))


def test_values_equal_but_for_rounding_have_no_spread():
    long = pd.DataFrame(
        dict(metric=["a", "a", "b", "b", "c"], value=[0.1 + 0.2, 0.3, 0.5, 0.6, 1.0])
    )
    summary = spread(long, "metric", ["value"]).set_index("metric")
    assert summary.loc["a", "value_std"] == 0.0
    assert summary.loc["b", "value_std"] == pytest.approx(np.std([0.5, 0.6], ddof=1))
    assert np.isnan(summary.loc["c", "value_std"])  # one fold: no spread at all


def test_missing_matplotlib_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib.pyplot", None)
    with pytest.raises(
        ImportError, match=r"pip install matplotlib. \(sksim's plot extra\)"
    ):
        _render.subplots()


def test_classes_text_names_the_codes():
    assert classes_text(dict(n_classes=None)) == "none (regression)"
    assert classes_text(dict(n_classes=3)) == "3"
    named = dict(n_classes=2, class_names=["cat", "dog"])
    assert classes_text(named) == "2: 0 = cat, 1 = dog"


WORDS = "zero one two three four five six seven eight nine".split()


def test_the_report_shows_the_labels_the_codes_stand_for():
    result = _audit_helpers.label_issues_audit()
    codes = result["samples"]["label"].to_numpy().copy()
    result.metadata["class_names"] = WORDS  # as the command line records them
    view = named(result)
    assert view["samples"]["label"].tolist() == [WORDS[c] for c in codes]
    issues = result["label_issues"]
    assert view["label_issues"]["neighbor_labels"].iloc[0] == [
        WORDS[c] for c in issues["neighbor_labels"].iloc[0]
    ]
    assert view.gallery[0]["label"] == WORDS[result.gallery[0]["label"]]
    np.testing.assert_array_equal(result["samples"]["label"], codes)  # untouched
    page = render_html(result)
    top = issues.iloc[0]
    given, looks = WORDS[top["given_label"]], WORDS[top["suggested_label"]]
    assert f"#{top['index']} (given {given}, looks like {looks})" in page
    grid = figures.neighbor_grid(result)
    titles = [ax.get_title() for ax in grid.axes if ax.get_title()]
    assert titles[0].startswith(f"y={view.gallery[0]['label']} pred=")
    assert all(title.split()[0][2:] in WORDS for title in titles)


def test_class_densities_name_many_long_classes_legibly(small_audit):
    """At most 40 names per panel, each cut to 16 characters keeping both ends."""
    result = copy.copy(small_audit)
    table = small_audit.tables["class_fitting_summary"]
    layer = table[table["layer"] == table["layer"].iloc[0]]
    wide = layer.loc[layer.index.repeat(-(-90 // len(layer)))].head(90).copy()
    wide["class"] = [f"class_with_a_rather_long_name_{i}" for i in range(90)]
    result.tables = {**small_audit.tables, "class_fitting_summary": wide}
    result.metadata = {**small_audit.metadata, "class_names": None}
    (ax,) = figures.class_densities(result).axes
    names = [label.get_text() for label in ax.get_xticklabels()]
    assert len(names) == 30
    assert ax.get_xlabel() == "class (by training-fold log-density, one in 3 named)"
    assert all(n.startswith("class_w…") and n[-1].isdigit() for n in names)
    assert ax.get_legend() is None  # below the panels


def test_a_sections_table_leaves_the_minima_and_maxima_to_the_raw_tables(
    small_audit,
):
    """The class-fitting summary's minima and maxima pushed the columns behind
    the class-fitting gap out of a 1280 px window."""
    page = render_html(small_audit)
    section = page[page.index('<section id="density">') :]
    section = section[: section.index("</section>")]
    assert "<th>error_rate_mean</th>" in section
    assert "<th>error_rate_std</th>" in section
    assert "error_rate_min" not in section and "error_rate_max" not in section
    assert "The minimum and maximum over folds are in the raw tables." in section
    raw = page[page.index('<section id="tables">') :]
    assert "<th>error_rate_min</th>" in raw and "<th>error_rate_max</th>" in raw
