"""Layer-wise relative sensitivity to diffeomorphisms of the held-out images."""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable, Mapping
from types import ModuleType
from typing import TYPE_CHECKING, Any

from ..._engine.inputs import n_samples
from ..._pyplot import log_scale
from ..._typing import NetInput
from ..._validation import sample_shape
from .._render import errorbars, layer_tail, subplots
from .._tables import frame, spread
from ..models import is_square_image_batch
from .base import Analysis, FoldOutput

if TYPE_CHECKING:
    import pandas as pd
    from matplotlib.figure import Figure

    from ..core import AuditResult, _Fold


def import_sensitivity() -> ModuleType | None:
    """The module ``sksim.sensitivity``, or None when it cannot be imported."""
    try:
        return importlib.import_module("sksim.sensitivity")
    except ImportError:
        return None


WIDE_PANELS = 8  # layers past which the three panels are stacked, full width
MAX_LAYER_TICKS = 30  # layers named on a panel's axis, at most
LAYER_NAME = 24  # characters of a layer's name on an axis


def sensitivity_layers(result: AuditResult) -> Figure | None:
    """Layer-wise D, G and R, trained and at initialisation, mean over folds.

    Parameters
    ----------
    result : AuditResult
        The audit's result.

    Returns
    -------
    fig : matplotlib.figure.Figure or None
        None when the sensitivity analysis did not run.
    """
    table = result.tables.get("sensitivity_summary")
    if table is None:
        return None
    layers = table.sort_values("depth").drop_duplicates("depth")
    n_layers = len(layers)
    fig, axes = subplots(
        3 if n_layers > WIDE_PANELS else 1,
        1 if n_layers > WIDE_PANELS else 3,
        figsize=(10, 9.6) if n_layers > WIDE_PANELS else (10, 3.4),
        squeeze=False,
    )
    axes = axes.ravel()
    styles = {"trained": "tab:blue", "init": "tab:gray", "shuffled": "tab:green"}
    for net, rows in table.groupby("net", sort=False):
        rows = rows.sort_values("depth")
        for ax, name in zip(axes, ("D", "G", "R"), strict=True):
            errorbars(
                ax,
                rows["depth"],
                rows,
                name,
                marker="o",
                capsize=2,
                color=styles.get(net),
                label=net,
            )
    step = -(-n_layers // MAX_LAYER_TICKS)  # every step-th layer named
    names = [layer_tail(str(layer), LAYER_NAME) for layer in layers["layer"]]
    for ax, name in zip(axes, ("D", "G", "R"), strict=True):
        log_scale(ax)
        ax.set_title(name)
        ax.set_xticks(
            layers["depth"][::step], names[::step], rotation=60, ha="right", fontsize=7
        )
        ax.set_xlabel("layer" + (f" (one in {step} named)" if step > 1 else ""))
    axes[0].set_ylabel("D: sensitivity to deformations")
    axes[1].set_ylabel("G: sensitivity to noise")
    axes[2].set_ylabel("R = D / G")
    axes[0].legend(fontsize="small")
    fig.suptitle("Relative sensitivity to diffeomorphisms per layer (R = D / G)")
    return fig


def sensitivity_method(measure: Callable, options: Mapping[str, Any], n: int) -> str:
    """How ``measure`` (``relative_sensitivity``) probed ``n`` held-out images.

    From ``options`` over the function's own defaults.
    """
    settings = {
        name: parameter.default
        for name, parameter in inspect.signature(measure).parameters.items()
        if parameter.default is not parameter.empty
    }
    settings.update(options)
    n_probe = min(settings["n_probe"], n)
    probes = (
        f"all {n:,} held-out images"
        if n_probe == n
        else f"{n_probe:,} of the {n:,} held-out images drawn at random"
    )
    if settings["deformation"] is None:
        deformed = (
            "a random smooth diffeomorphism (typical displacement "
            f"delta={settings['delta']:g} pixel{'s' * (settings['delta'] != 1)}, "
            "wave numbers up to "
            f"cutoff={settings['cutoff']}, {settings['interp']} interpolation)"
        )
    else:
        deformed = "the given deformation"
    text = (
        f"{probes}, each deformed once by {deformed} and noised once at the same "
        f"norm (noise_norm={settings['noise_norm']!r}), {settings['statistic']}s "
        "of squared distances"
    )
    reference = settings["reference"]
    if isinstance(reference, str):  # "reinitialized"
        copies = "copy" if settings["n_init"] == 1 else "copies"
        text += (
            f"; initialisation: {settings['n_init']} re-initialised {copies}, "
            "combined by geometric means"
        )
    elif reference is not None:
        text += "; initialisation: the given initial network"
    if settings["pool"] != "flatten":
        text += f"; representations pooled by {settings['pool']!r}"
    if settings["shuffled"]:
        text += (
            "; also the trained network with each convolution filter's input "
            "channels shuffled"
        )
    return text


class Sensitivity(Analysis):
    """D, G and R = D / G per layer, trained and at initialisation."""

    name = "sensitivity"
    title = "Relative sensitivity"
    defaults = dict(layers="all", n_probe=200, n_init=2)
    description = (
        "Sensitivity of each layer to smooth deformations (D) and to "
        "noise of the same norm (G) of the held-out images, and their "
        "ratio R = D / G (Petrini et al. 2021): networks that generalise "
        "well are, relative to noise, stable to deformations."
    )
    figures = (sensitivity_layers,)
    report_table = "sensitivity_summary"

    def skip_reason(self, X: NetInput) -> str | None:
        if not is_square_image_batch(X):
            n, shape = n_samples(X), sample_shape(X)
            these = (
                "these are a dict of inputs of shapes "
                + ", ".join(f"{key} {(n, *each)}" for key, each in shape.items())
                if isinstance(shape, dict)
                else f"these have shape {(n, *shape)}"
            )
            return (
                "relative sensitivity deforms images: it needs inputs of shape "
                f"(n, C, H, W) with H == W, and {these}."
            )
        if import_sensitivity() is None:
            return "sksim.sensitivity is not available in this version of sksim."
        return None

    fixed_options = ("random_state",)
    audit_settings = ()

    def option_target(self) -> Callable | None:
        module = import_sensitivity()
        return None if module is None else module.relative_sensitivity

    def check_options(self, options: Mapping[str, Any]) -> None:
        super().check_options(options)
        module = import_sensitivity()
        if module is not None:
            module.measure.check_params(options)

    def run(self, fold: _Fold) -> FoldOutput:
        options = self.options(fold)
        measure = import_sensitivity().relative_sensitivity
        table = measure(
            fold.net, fold.X_test, random_state=fold.random_state, **options
        )
        table = frame(dict(table))
        table.insert(0, "fold", fold.fold)
        method = sensitivity_method(measure, options, n_samples(fold.X_test))
        return FoldOutput(
            tables=dict(sensitivity=table), method=self.method_text(fold, method)
        )

    def summarise(self, tables: Mapping[str, pd.DataFrame]) -> dict[str, pd.DataFrame]:
        summary = spread(
            tables["sensitivity"], ["net", "layer", "depth"], ["D", "G", "R"]
        )
        return dict(
            sensitivity_summary=summary.sort_values(["net", "depth"], ignore_index=True)
        )
