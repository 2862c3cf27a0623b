"""Class codes shown as the labels they stand for (``metadata["class_names"]``).

The audit reads class ``j`` from the network's output ``j``, so its tables hold
codes; when the labels were encoded (the command line encodes string labels),
``metadata["class_names"][j]`` is the label of code ``j``. The report and its
figures show a view of the result with the names in place of the codes.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .core import AuditResult

# The columns of each table, and the keys of gallery and example items, that
# hold class codes (one per row, or a list of them).
CODE_COLUMNS = {
    "samples": ("label", "prediction"),
    "neighbors": ("train_label",),
    "label_issues": ("given_label", "suggested_label"),
    "class_fitting": ("class",),
    "class_fitting_summary": ("class",),
}
CODE_LISTS = {"label_issues": ("neighbor_labels",)}
ITEM_CODES = ("label", "prediction", "suggested")
ITEM_LISTS = ("neighbor_labels",)


def named(result: AuditResult) -> AuditResult:
    """A view of ``result`` whose class codes read as the labels they stand for.

    ``result`` is left as it is; without class names it is returned itself.
    """
    names = result.metadata.get("class_names")
    if names is None or result.metadata.get("codes_named"):
        return result

    def name(code):
        return names[code] if 0 <= code < len(names) else str(code)

    def each(codes):
        return [name(code) for code in codes]

    tables = dict(result.tables)
    for key, columns in CODE_COLUMNS.items():
        if key in tables:
            table = tables[key] = tables[key].copy()
            for column in columns:
                table[column] = table[column].map(name)
            for column in CODE_LISTS.get(key, ()):
                table[column] = table[column].map(each)

    def item(entry: dict) -> dict:
        entry = dict(entry)
        for key in ITEM_CODES:
            if key in entry:
                entry[key] = name(entry[key])
        for key in ITEM_LISTS:
            if key in entry:
                entry[key] = each(entry[key])
        return entry

    metadata = {**result.metadata, "codes_named": True}
    noise = metadata.get("label_noise")
    if noise is not None and "original" in noise:  # the labels before the flips
        metadata["label_noise"] = {**noise, "original": each(noise["original"])}
    return dataclasses.replace(
        result,
        tables=tables,
        metadata=metadata,
        gallery=[item(g) for g in result.gallery],
        examples=[item(e) for e in result.examples],
    )


def with_names(figure: Callable) -> Callable:
    """A figure function of an audit result, drawn on :func:`named`'s view."""

    @functools.wraps(figure)
    def draw(result: AuditResult):
        return figure(named(result))

    return draw
