"""Pieces of the HTML report and its figures shared by every analysis."""

from __future__ import annotations

import base64
import html
import io
from typing import TYPE_CHECKING

from .._pyplot import pyplot

if TYPE_CHECKING:
    import numpy as np

MAX_ROWS = 200


def subplots(*args, **kwargs):
    """``pyplot.subplots`` with the constrained layout."""
    return pyplot("The audit report").subplots(*args, layout="constrained", **kwargs)


def errorbars(ax, x, table, column, **style):
    """Draw ``table``'s ``{column}_mean`` against ``x``, ± ``{column}_std``.

    A standard deviation over a single fold is NaN and drawn as zero.
    """
    return ax.errorbar(
        x,
        table[f"{column}_mean"],
        yerr=table[f"{column}_std"].fillna(0),
        **style,
    )


def layer_tail(name: str, width: int) -> str:
    """A layer's ``name`` in ``width`` characters at most, its head cut to an ellipsis.

    The end of a module's path names the layer within its block and stage.
    """
    return name if len(name) <= width else "…" + name[1 - width :]


def png(fig) -> str:
    """The figure as an ``<img>`` with a base64 PNG data URI (then closed)."""
    plt = pyplot("The audit report")
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    plt.close(fig)
    data = base64.b64encode(buffer.getvalue()).decode("ascii")
    return f'<img alt="figure" src="data:image/png;base64,{data}">'


def figure(function, result) -> str:
    """``function(result)`` as an embedded PNG, or nothing when it draws None."""
    fig = function(result)
    return "" if fig is None else png(fig)


PROSE = 24  # characters from which a column's text reads as prose


def table(frame, max_rows=MAX_ROWS) -> str:
    """The first ``max_rows`` rows of ``frame`` as an HTML table (text escaped).

    Columns of prose (strings of :data:`PROSE` characters or more: messages,
    lists of neighbours) are aligned left, numbers right.
    """
    shown = frame.head(max_rows)
    text = shown.to_html(
        index=False,
        escape=True,
        border=0,
        classes="data",
        float_format=lambda v: f"{v:.4g}",
        na_rep="–",
    )
    prose = [
        j
        for j, column in enumerate(shown.columns)
        if shown[column].map(lambda v: isinstance(v, str) and len(v) >= PROSE).any()
    ]
    text = '<div class="scroll">' + _left_aligned(text, prose) + "</div>"
    if len(frame) > max_rows:
        text += (
            f'<p class="note">First {max_rows} of {len(frame)} rows; the JSON '
            "output (<code>to_json</code>) holds them all.</p>"
        )
    return text


def _left_aligned(text: str, columns: list[int]) -> str:
    """``text``, an HTML table, with the cells of ``columns`` aligned left."""
    if not columns:
        return text
    rows = text.split("<tr>")
    for i, row in enumerate(rows[1:], start=1):
        cells = row.split("<td>")
        rows[i] = cells[0] + "".join(
            ("<td style='text-align:left'>" if j in columns else "<td>") + cell
            for j, cell in enumerate(cells[1:])
        )
    return "<tr>".join(rows)


def paragraph(text, cls=None) -> str:
    """``text`` escaped in a ``<p>``, of class ``cls`` when given."""
    attr = f' class="{cls}"' if cls else ""
    return f"<p{attr}>{html.escape(str(text))}</p>"


WIDE_TITLE = 12  # characters of a thumbnail's title that fit on one line


def image(ax, picture: np.ndarray) -> None:
    """Draw ``picture`` on ``ax`` without ticks.

    A colour image ``(H, W, 3)`` is scaled to [0, 1] by its own range (images
    of a network come standardised, which imshow would clip); a grey one is
    drawn by its range already.
    """
    if picture.ndim == 3:
        low, high = picture.min(), picture.max()
        picture = (picture - low) / (high - low) if high > low else picture * 0
    cmap = "gray_r" if picture.ndim == 2 else None
    ax.imshow(picture, cmap=cmap, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])


def thumbnail(ax, picture: np.ndarray, title: str, color: str = "black") -> None:
    """Draw ``picture`` on ``ax`` (see :func:`image`), under ``title``.

    A title too wide for the thumbnail (long class names) goes on two
    lines, broken at its first space, in a smaller font.
    """
    image(ax, picture)
    if len(title) > WIDE_TITLE:
        title = title.replace(" ", "\n", 1)
    ax.set_title(title, fontsize=8 if "\n" not in title else 7, color=color)
