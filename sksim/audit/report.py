"""The audit report: one self-contained HTML file, and JSON for machines."""

from __future__ import annotations

import html
import json
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ._examples import isolated_section, support_section
from ._findings import counted, findings, headline_meanings, undefined_folds
from ._names import named
from ._render import paragraph, table
from ._tables import import_pandas
from .analyses import REGISTRY

if TYPE_CHECKING:
    import pandas as pd

    from .core import AuditResult

SECTIONS = (
    ("findings", "Findings"),
    ("summary", "Summary"),
    ("accuracy", "Scores per fold"),
    *((analysis.name, analysis.title) for analysis in REGISTRY.values()),
    ("isolated", "Isolated examples"),
    ("support", "Test inputs with least support"),
    ("tables", "Raw tables"),
)

STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 0;
       color: #1b1f24; background: #f6f7f9; }
header { background: #24394f; color: white; padding: 1.2em 2em; }
header h1 { margin: 0 0 .2em 0; font-size: 1.6em; }
nav { background: #e8ecf1; padding: .5em 2em; position: sticky; top: 0; }
nav a { margin-right: 1.2em; color: #24394f; text-decoration: none; }
main { padding: 0 2em 2em 2em; max-width: 1600px; }
p, ul { max-width: 75em; }
section { background: white; border-radius: 6px; padding: .6em 1.4em 1em 1.4em;
          margin-top: 1.2em; box-shadow: 0 1px 3px rgba(0,0,0,.12);
          scroll-margin-top: 6em; }  /* a link's heading below the sticky nav */
h2 { border-bottom: 1px solid #d0d7de; padding-bottom: .2em; }
table.data { border-collapse: collapse; font-size: .82em; margin: .6em 0; }
table.data th, table.data td { padding: .2em .6em; border-bottom: 1px solid #e5e8eb;
                               text-align: right; }
table.data th { background: #f0f3f6; }
img { max-width: 100%; height: auto; display: block; margin: .6em 0; }
.skipped { color: #8a4b00; background: #fff4e0; padding: .5em .8em;
           border-radius: 4px; }
.note { color: #57606a; font-size: .9em; }
.headline { display: flex; gap: 1.2em; flex-wrap: wrap; }
.metric { background: #f0f3f6; border-radius: 6px; padding: .5em 1em; }
.metric b { display: block; font-size: 1.4em; }
.metric span { display: block; font-size: .85em; color: #57606a; max-width: 24em; }
ul.findings li { margin: .35em 0; }
details { margin: .4em 0; }
.scroll { overflow-x: auto; }
"""


def _not_run(result, name) -> str | None:
    if name in result.skipped:
        return paragraph(f"Skipped: {result.skipped[name]}", "skipped")
    if name in result.failed and name not in result.metadata["analyses"]:
        return paragraph("Failed on every fold (errors in the summary).", "skipped")
    if name not in result.metadata["analyses"]:
        return paragraph("Not requested in this audit.", "skipped")
    return None


def _metric(label, result, metric, meaning=None):
    frame = result.tables["summary"]
    rows = frame[frame["metric"] == metric]
    if rows.empty:
        return ""
    mean, std = float(rows["mean"].iloc[0]), float(rows["std"].iloc[0])
    spread = "" if math.isnan(std) else f" ± {std:.3f}"
    shown = "n/a" if math.isnan(mean) else f"{mean:.3f}{spread}"
    label += undefined_folds(result, metric)
    text = "" if meaning is None else f"<span>{html.escape(meaning)}</span>"
    return f'<div class="metric">{html.escape(label)}<b>{shown}</b>{text}</div>'


def _headline(meta) -> str:
    if meta["cv"] == "prefit":
        return "prefit network, given train/test split"
    return f"{meta['n_folds']}-fold cross-validation"


HEADLINE = (
    ("accuracy ({over})", "accuracy"),
    ("error", "error"),
    ("R² ({over})", "r2"),
    ("root mean squared error", "rmse"),
    ("density–error correlation", "density_error_correlation"),
    ("share of neighbours with the same label", "neighbor_label_agreement"),
    ("mean |target difference| to the neighbours", "neighbor_target_difference"),
)


def noise_text(meta: Mapping[str, Any]) -> str:
    """The label noise planted before the audit, in words."""
    noise = meta["label_noise"]
    return (
        f"{noise['rate']:.1%} of the labels flipped at random to another class "
        f"before the audit ({len(noise['flipped'])} labels, seed {noise['seed']})"
    )


def _shape_text(shape: list | dict) -> str:
    """A sample's shape, per input of a dict: ``input_ids [16], mask [16]``."""
    if isinstance(shape, dict):
        return ", ".join(f"{key} {value}" for key, value in shape.items())
    return str(shape)


def classes_text(meta: Mapping[str, Any]) -> str:
    """The number of classes, with the labels their codes stand for if given."""
    if meta["n_classes"] is None:
        return "none (regression)"
    names = meta.get("class_names")
    if names is None:
        return str(meta["n_classes"])
    shown = ", ".join(f"{code} = {name}" for code, name in enumerate(names[:20]))
    return f"{meta['n_classes']}: {shown}" + (", ..." if len(names) > 20 else "")


def timings(meta: Mapping[str, Any]) -> pd.DataFrame:
    """The seconds of each step as a table, with their share of the total."""
    seconds = meta["seconds"]
    total = meta["total_seconds"]
    rows = [
        dict(step=step, seconds=value, share=f"{value / total:.0%}" if total else "")
        for step, value in seconds.items()
    ]
    rows.append(dict(step="total (wall clock)", seconds=total, share="100%"))
    return import_pandas().DataFrame(rows)


def _warnings_table(meta):
    """The warnings raised, with how often, how many samples and where."""
    rows = []
    for w in meta["warnings"]:
        where = "; ".join(
            f"{name}: {counted(a['times'], 'time')}"
            + ("" if a["samples"] is None else f", {counted(a['samples'], 'sample')}")
            for name, a in w["analyses"].items()
        )
        rows.append(
            dict(
                warning=w["warning"],
                times_raised=w["times"],
                samples_flagged=math.nan if w["samples"] is None else w["samples"],
                analyses=where,
            )
        )
    return import_pandas().DataFrame(rows)


def _facts(result):
    meta, folds = result.metadata, result.tables["folds"]
    samples = (
        f"{int(folds['n_train'].iloc[0])} training and {int(folds['n_test'].iloc[0])} "
        "test examples"
        if meta["cv"] == "prefit"
        else meta["n_samples"]
    )
    facts = [
        ("network", meta["net"]),
        ("task", meta["task"]),
        ("samples", samples),
        ("input shape", _shape_text(meta["input_shape"])),
        ("classes", classes_text(meta)),
        ("cross-validation", meta["cv_words"]),
        ("analyses run", ", ".join(meta["analyses"]) or "none"),
        ("scale threshold", meta.get("scale_threshold")),
    ]
    if "versions" in meta:
        facts.append(
            ("versions", ", ".join(f"{k} {v}" for k, v in meta["versions"].items()))
        )
    if "label_noise" in meta:
        facts.insert(6, ("planted label noise", noise_text(meta)))
    files = [("data", "data"), ("checkpoint", "checkpoint"), ("test data", "test_data")]
    facts[1:1] = [(name, meta[key]) for name, key in files if key in meta]
    parts = ['<table class="data">']
    for key, value in facts:
        parts.append(
            f"<tr><th>{html.escape(key)}</th>"
            f"<td style='text-align:left'>{html.escape(str(value))}</td></tr>"
        )
    parts.append("</table>")
    return "".join(parts)


def _summary(result) -> str:
    meta, summary = result.metadata, result.tables["summary"]
    meanings = headline_meanings(result)
    parts = ['<div class="headline">']
    over = "one split" if meta["cv"] == "prefit" else "mean ± std over folds"
    parts += [
        _metric(label.format(over=over), result, metric, meanings.get(metric))
        for label, metric in HEADLINE
    ]
    parts.append("</div>")
    parts.append(_facts(result))
    parts.append("<h3>Time taken</h3>")
    parts.append(table(timings(meta)))
    if meta.get("methods"):
        parts.append("<h3>Methods used</h3><ul>")
        for name, method in meta["methods"].items():
            parts.append(f"<li><b>{html.escape(name)}</b>: {html.escape(method)}</li>")
        parts.append("</ul>")
    if result.skipped:
        parts.append("<h3>Skipped analyses</h3><ul>")
        for name, reason in result.skipped.items():
            parts.append(f"<li><b>{html.escape(name)}</b>: {html.escape(reason)}</li>")
        parts.append("</ul>")
    if result.failed:
        parts.append("<h3>Failed analyses</h3><ul>")
        for name, folds in result.failed.items():
            for fold, error in folds.items():
                parts.append(
                    f"<li><b>{html.escape(name)}</b>, fold {fold}: "
                    f"{html.escape(error)}</li>"
                )
        parts.append("</ul>")
    if meta.get("warnings"):
        parts.append("<h3>Warnings raised during the analyses</h3>")
        parts.append(
            paragraph(
                "Numbers in a warning's text are masked (N) so that alike "
                "warnings count together; samples_flagged sums the samples "
                "they name, training examples included (self-denoising and the "
                "neighbour searches compute every training example's gradients, "
                "in every fold; a sample computed twice counts twice).",
                "note",
            )
        )
        parts.append(table(_warnings_table(meta)))
    if meta["cv"] == "prefit":  # one split: no spread over folds to show
        parts.append("<h3>Every score</h3>")
        parts.append(
            table(summary[["metric", "mean"]].rename(columns={"mean": "value"}))
        )
    else:
        parts.append("<h3>Aggregated over folds</h3>")
        parts.append(table(summary))
    return "".join(parts)


def _findings(result) -> str:
    items = "".join(f"<li>{html.escape(text)}</li>" for text in findings(result))
    return f'<ul class="findings">{items}</ul>'


def _partly_failed(result, name) -> str:
    """A note naming the folds an analysis failed on, when it ran on others."""
    folds = sorted(result.failed.get(name, {}))
    if not folds:
        return ""
    listed = ", ".join(map(str, folds))
    return paragraph(
        f"Failed on fold{'s' if len(folds) > 1 else ''} {listed} of "
        f"{result.metadata['n_folds']} (errors in the summary): what follows "
        "covers the other folds.",
        "note",
    )


def _analysis(name):
    """The builder of an analysis' section: why it did not run, or its body."""

    def build(result: AuditResult) -> str:
        return _not_run(result, name) or (
            _partly_failed(result, name) + REGISTRY[name].section(result)
        )

    return build


def _tables(result) -> str:
    parts = []
    for name, frame in result.tables.items():
        parts.append(
            f"<details><summary>{html.escape(name)} "
            f"({counted(len(frame), 'row')})</summary>"
            f"{table(frame)}</details>"
        )
    return "".join(parts)


BUILDERS = dict(
    findings=_findings,
    summary=_summary,
    accuracy=lambda r: table(r.tables["folds"]),
    **{name: _analysis(name) for name in REGISTRY},
    isolated=isolated_section,
    support=support_section,
    tables=_tables,
)


def render_html(result: AuditResult) -> str:
    """The report as one HTML string, with no external resource.

    Class codes read as the labels they stand for, when the result names them.
    """
    result = named(result)
    nav = "".join(
        f'<a href="#{key}">{html.escape(title)}</a>' for key, title in SECTIONS
    )
    body = "".join(
        f'<section id="{key}"><h2>{html.escape(title)}</h2>'
        f"{BUILDERS[key](result)}</section>"
        for key, title in SECTIONS
    )
    return (
        "<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
        "<meta name='viewport' content='width=device-width, initial-scale=1'>"
        "<title>sksim audit</title>"
        f"<style>{STYLE}</style></head><body>"
        "<header><h1>sksim audit</h1>"
        f"<div>{html.escape(result.metadata['net'])} · "
        f"{html.escape(_headline(result.metadata))}</div></header>"
        f"<nav>{nav}</nav><main>{body}</main></body></html>\n"
    )


def write_html(result: AuditResult, path: str | os.PathLike) -> Path:
    """Write :func:`render_html` to ``path`` (UTF-8)."""
    path = Path(path)
    path.write_text(render_html(result), encoding="utf-8")
    return path


def _clean(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    return value


def _without_images(items):
    return [
        {k: v for k, v in g.items() if k not in ("image", "neighbor_images")}
        for g in items
    ]


def _untabled(result: AuditResult) -> dict[str, Any]:
    """The skipped and failed analyses, metadata, gallery and examples, JSON-ready.

    Images left out.
    """
    return dict(
        metadata=_clean(result.metadata),
        skipped=dict(result.skipped),
        failed={
            name: {str(k): v for k, v in f.items()} for name, f in result.failed.items()
        },
        gallery=_clean(_without_images(result.gallery)),
        examples=_clean(_without_images(result.examples)),
    )


def write_json(result: AuditResult, path: str | os.PathLike) -> Path:
    """Write the tables and :func:`_untabled` to ``path`` as strict JSON (no NaN).

    Table by table, each as pandas writes it: no table is held as Python
    objects, which take ten times the file's size for a large audit.
    """
    path = Path(path)
    with path.open("w", encoding="utf-8") as out:
        head = json.dumps(_untabled(result), allow_nan=False, indent=1)
        out.write(head.removesuffix("\n}"))
        out.write(',\n "tables": {')
        for i, (name, frame) in enumerate(result.tables.items()):
            out.write(f"{', ' * bool(i)}\n  {json.dumps(name)}: ")
            frame.to_json(out, orient="records", double_precision=15)
        out.write("\n }\n}\n")
    return path
