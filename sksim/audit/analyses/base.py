"""The interface every analysis of the audit implements."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from sklearn.utils._param_validation import validate_parameter_constraints

from ..._typing import NetInput
from .. import _render

if TYPE_CHECKING:
    import pandas as pd
    import torch

    from ..core import AuditResult, _Data, _Fold

# Options the audit sets for every analysis, with their command-line names.
AUDIT_KEYWORDS = {"n_neighbors": "--n-neighbors", "random_state": "--seed"}


@dataclass
class FoldOutput:
    """What one analysis adds to the audit for one fold.

    Each parameter is kept as the attribute of the same name; the dicts are
    empty by default.

    Parameters
    ----------
    samples : dict of str to ndarray, optional
        Columns added to the fold's rows of the ``samples`` table (one value
        per held-out example).
    metrics : dict of str to float, optional
        Values added to the fold's row of the ``folds`` table (aggregated
        over folds in ``summary``).
    tables : dict of str to pandas.DataFrame, optional
        Rows of per-fold tables, each with a ``fold`` column; the rows of all
        folds are concatenated into ``result.tables[name]``.
    method : str, default=None
        The method the analysis used on the fold, and why, in words; the
        audit records it in ``metadata["methods"]`` and the report shows it.
    """

    samples: dict = field(default_factory=dict)
    metrics: dict = field(default_factory=dict)
    tables: dict = field(default_factory=dict)
    method: str | None = None


class Analysis:
    """One analysis of :func:`~sksim.audit.audit`, registered in ``REGISTRY``.

    A subclass sets the class attributes and implements :meth:`run`; the
    other methods have defaults that fit an analysis whose per-fold table is
    aggregated into one summary table shown under its figures.

    Attributes
    ----------
    name : str
        The key in ``analyses=``, ``options=``, ``result.skipped`` and
        ``result.failed``, and the id of its report section.
    title : str
        The heading of its report section.
    defaults : dict
        Default keyword arguments, overridden by ``options[name]``.
    scaled_defaults : dict
        Defaults that replace ``defaults`` when the audit's largest training
        fold holds more examples than its ``scale_threshold`` (methods whose
        cost grows linearly with the data), still overridden by
        ``options[name]``.
    description : str
        The paragraph that opens its report section.
    figures : tuple of callable
        Functions drawing an :class:`~sksim.audit.AuditResult` (a matplotlib
        figure, or None when there is nothing to draw), shown in order.
    report_table : str or None
        The table shown under the figures.
    tasks : tuple of str
        The tasks it applies to, among ``"classification"`` and
        ``"regression"``; the audit skips it on the others, with the reason.
    shares_search : bool
        Whether :meth:`run` fits its neighbour search on the training part by
        ``fold.fitted_search``, which hands an equal search kept from an
        earlier analysis of the fold back without a second fit; the fold
        frees the kept search before any analysis that does not share it.
    own_options : tuple of str
        Options the analysis reads itself, not passed to
        :meth:`option_target`; accepted in ``options[name]``.
    fixed_options : tuple of str
        Keyword arguments of :meth:`option_target` the analysis sets itself,
        refused in ``options[name]``.
    audit_settings : tuple of str
        The audit's arguments beside ``options[name]`` that its results
        depend on, among ``"n_neighbors"`` and ``"layers"`` (both by default):
        with its options, they name its results in the audit's cache.
    """

    name: str = ""
    title: str = ""
    defaults: dict = {}
    scaled_defaults: dict = {}
    description: str = ""
    figures: tuple = ()
    report_table: str | None = None
    tasks: tuple = ("classification", "regression")
    shares_search: bool = False
    own_options: tuple = ()
    fixed_options: tuple = ()
    audit_settings: tuple = ("n_neighbors", "layers")

    def at_scale(self, fold: _Fold) -> bool:
        """Whether the audit's largest training part is past its scale threshold.

        The same for every fold, whose results the summaries pool.

        Parameters
        ----------
        fold : object
            The fold (see :meth:`run`); its ``scale_size`` and
            ``scale_threshold`` are read.

        Returns
        -------
        at_scale : bool
            Whether ``scale_size > scale_threshold`` (False when the
            threshold is None).
        """
        threshold = fold.scale_threshold
        return threshold is not None and fold.scale_size > threshold

    def scaled_options(self, fold: _Fold) -> dict[str, Any]:
        """The defaults that replace ``defaults`` past the scale threshold.

        Parameters
        ----------
        fold : object
            The fold (see :meth:`run`), for defaults that depend on it.

        Returns
        -------
        options : dict of str to object
            Keyword arguments; by default a copy of ``scaled_defaults``.
        """
        return dict(self.scaled_defaults)

    def options(self, fold: _Fold) -> dict[str, Any]:
        """Keyword arguments of this analysis.

        Its defaults, those of :meth:`scaled_options` past the scale
        threshold (or, for an analysis that shares the neighbour search,
        whenever the user's options ask for ``algorithm="faiss"``), then the
        user's.

        Parameters
        ----------
        fold : object
            The fold (see :meth:`run`); its ``options`` hold the user's.

        Returns
        -------
        options : dict of str to object
            Keyword arguments, each source overriding the ones before it.
        """
        given = fold.options.get(self.name, {})
        faiss = self.shares_search and given.get("algorithm") == "faiss"
        scaled = self.scaled_options(fold) if self.at_scale(fold) or faiss else {}
        return {**self.defaults, **scaled, **given}

    def scale_reason(self, fold: _Fold) -> str | None:
        """Why the scaled defaults apply to the fold, in words (None if not).

        None as well when the user's options set every one of them.

        Parameters
        ----------
        fold : object
            The fold (see :meth:`run`).

        Returns
        -------
        reason : str or None
            Such as ``"60,000 training examples > scale_threshold 50,000"``;
            in every fold ``"the largest training fold holds 60,000 training
            examples > ..."`` where the folds' training parts differ in size,
            so that the folds' texts are alike.
        """
        if not self.at_scale(fold):
            return None
        given = fold.options.get(self.name, {})
        if set(self.scaled_options(fold)) <= set(given):
            return None
        size = f"{fold.scale_size:,} training examples"
        if len(set(fold.train_sizes)) > 1:  # the same words in every fold
            size = f"the largest training fold holds {size}"
        return f"{size} > scale_threshold {fold.scale_threshold:,}"

    def method_text(self, fold: _Fold, method: str) -> str:
        """``method`` followed by :meth:`scale_reason`, when there is one.

        Parameters
        ----------
        fold : object
            The fold (see :meth:`run`).
        method : str
            The method the analysis used on the fold, in words.

        Returns
        -------
        text : str
            ``method``, or ``"method: reason"``: the ``method`` of a
            :class:`FoldOutput`.
        """
        reason = self.scale_reason(fold)
        return method if reason is None else f"{method}: {reason}"

    def option_target(self) -> Callable | None:
        """The estimator or function the options are passed to (None: unchecked).

        Returns
        -------
        target : callable or None
            An estimator class or a function: its keyword arguments with a
            default are the option names :meth:`check_options` accepts, and
            an estimator's ``_parameter_constraints`` check their values.
        """
        return None

    def check_options(self, options: Mapping[str, Any]) -> None:
        """Raise on invalid ``options[name]`` before any training.

        Names are checked: :attr:`own_options`, and the keyword arguments of
        :meth:`option_target` not in :attr:`fixed_options`; so are the values
        of an estimator's parameters, by its constraints.

        Parameters
        ----------
        options : dict
            ``options[name]``, as passed to :func:`~sksim.audit.audit`.
        """
        if not isinstance(options, Mapping):
            raise TypeError(
                f"options[{self.name!r}] must be a dict of keyword arguments; "
                f"got {type(options).__name__} {options!r}."
            )
        target = self.option_target()
        if target is None:
            return
        keywords = {
            name
            for name, parameter in inspect.signature(target).parameters.items()
            if parameter.default is not inspect.Parameter.empty
        }
        fixed = sorted(set(options) & set(self.fixed_options))
        if fixed:
            audit_wide = [name for name in fixed if name in AUDIT_KEYWORDS]
            where = (
                f": give {', '.join(audit_wide)} to audit() itself "
                f"({', '.join(AUDIT_KEYWORDS[name] for name in audit_wide)} on "
                "the command line), for every analysis"
                if audit_wide
                else ""
            )
            raise ValueError(
                f"options[{self.name!r}] sets {fixed}, which the audit sets for "
                f"the {self.name} analysis{where}."
            )
        accepted = set(self.own_options) | (keywords - set(self.fixed_options))
        unknown = sorted(set(options) - accepted)
        if unknown:
            raise ValueError(
                f"options[{self.name!r}] has unknown names {unknown}: the "
                f"{self.name} analysis takes {sorted(accepted)}."
            )
        constraints = getattr(target, "_parameter_constraints", {})
        validate_parameter_constraints(
            constraints,
            {name: value for name, value in options.items() if name in constraints},
            caller_name=f"options[{self.name!r}]",
        )

    def check_network(
        self,
        module: Callable[[], torch.nn.Module],
        layers: Sequence[str] | None,
        options: Mapping[str, Any],
    ) -> None:
        """Raise, before any training, on what the network cannot take.

        Parameters
        ----------
        module : callable
            Returns the network's module, built (untrained, unless the audit
            is prefit) on the first call; None when it cannot be built before
            training, and then the analysis checks nothing.
        layers : sequence of str or None
            The audit's ``layers``.
        options : dict
            ``options[name]``, checked by :meth:`check_options` already.
        """

    def skip_reason(self, X: NetInput) -> str | None:
        """Why the analysis does not apply to inputs ``X`` (None when it does).

        Parameters
        ----------
        X : array-like, dict of array-like or Dataset
            The audited inputs (the training ones, with ``cv="prefit"``).

        Returns
        -------
        reason : str or None
            The reason, recorded in ``result.skipped``.
        """
        return None

    def run(self, fold: _Fold) -> FoldOutput:
        """Analyse one fold.

        Parameters
        ----------
        fold : object
            The fold: ``net`` (trained on it), ``fold`` (its number),
            ``train`` and ``test`` (indices of its rows in the training and
            held-out data, the same ``X`` unless the audit is prefit),
            ``X_train``, ``y_train``, ``X_test``, ``y_test``, ``prediction``,
            ``probabilities`` (the net's class probabilities of ``X_test``
            when the pass that predicted gave them, else None),
            ``correct`` (classification) and ``error`` (per held-out
            example: 1.0 when misclassified, or the squared error of a
            regression), ``task`` (``"classification"`` or
            ``"regression"``), ``classes`` (the sorted classes; None for a
            regression), ``prefit`` (whether the net was given trained,
            ``cv="prefit"``), ``n_neighbors``, ``layers``, ``options``,
            ``scale_threshold`` and ``random_state`` (the audit's arguments),
            ``train_sizes`` (the sizes of the training parts of the audit's
            folds) and ``scale_size`` (the largest of them).

        Returns
        -------
        output : FoldOutput
            What the analysis adds to the audit's tables for the fold.
        """
        raise NotImplementedError

    def summary_metrics(
        self, tables: Mapping[str, pd.DataFrame]
    ) -> pd.DataFrame | None:
        """Long rows ``fold, metric, value`` added to ``summary``, or None.

        Parameters
        ----------
        tables : dict of str to pandas.DataFrame
            The audit's tables after the last fold, those of all folds
            concatenated; ``summary`` is not among them yet.

        Returns
        -------
        metrics : pandas.DataFrame or None
            Columns ``fold``, ``metric`` and ``value``, aggregated over folds
            in ``summary`` as the ``folds`` table's metrics are.
        """
        return None

    def summarise(self, tables: Mapping[str, pd.DataFrame]) -> dict[str, pd.DataFrame]:
        """The tables derived from the per-fold ones after the last fold.

        Parameters
        ----------
        tables : dict of str to pandas.DataFrame
            The audit's tables, ``summary`` and those of the analyses
            summarised before this one included.

        Returns
        -------
        summaries : dict of str to pandas.DataFrame
            Tables added to ``result.tables`` by name; one of an existing name
            replaces it.
        """
        return {}

    def gallery(
        self, data: _Data, tables: Mapping[str, pd.DataFrame]
    ) -> list[dict[str, Any]]:
        """The examples worth showing (see :class:`~sksim.audit.AuditResult`).

        Parameters
        ----------
        data : object
            The audited data: its ``X, y`` are the training-side inputs and
            targets (where training indices point), ``X_test, y_test`` the
            held-out ones (where held-out indices point; the same arrays
            unless prefit).
        tables : dict of str to pandas.DataFrame
            The audit's tables, summaries included.

        Returns
        -------
        gallery : list of dict
            One dict per example shown, added to ``result.gallery``: ``kind``
            (why it is shown, such as ``"misclassified"``), ``fold``,
            ``index`` (its row of ``X_test`` when held out, else of ``X``),
            ``label``, ``neighbors`` (training indices of its most similar
            training examples), ``neighbor_labels``, ``similarities``,
            ``image`` and ``neighbor_images`` (None unless the inputs are
            image-like), and keys of its kind (``prediction`` and
            ``log_density``; ``suggested`` and ``score`` for a label issue).
        """
        return []

    def section(self, result: AuditResult) -> str:
        """The body of its report section, as HTML.

        Parameters
        ----------
        result : AuditResult
            The audit's result.

        Returns
        -------
        html : str
            By default, ``description``, the method, the figures, then
            ``report_table`` (its means and spreads over folds: the minima
            and maxima, which made it wider than a page, are left to the raw
            tables).
        """
        parts = [_render.paragraph(self.description)]
        method = result.metadata.get("methods", {}).get(self.name)
        if method is not None:
            parts.append(_render.paragraph(f"Method: {method}.", "note"))
        parts += [_render.figure(draw, result) for draw in self.figures]
        if self.report_table is not None:
            shown = result.tables[self.report_table]
            extremes = [
                column
                for column in shown
                if column.endswith(("_min", "_max")) and f"{column[:-4]}_mean" in shown
            ]
            parts.append(_render.table(shown.drop(columns=extremes)))
            if extremes:
                parts.append(
                    _render.paragraph(
                        "The minimum and maximum over folds are in the raw tables.",
                        "note",
                    )
                )
        return "".join(parts)
