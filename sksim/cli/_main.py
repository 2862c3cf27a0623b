"""``sksim audit``: load the data and the network, audit, write the report."""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import signal
import sys
import threading
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ._data import load_data, noisy_labels
from ._network import (
    build_net,
    check_checkpoint_args,
    check_forward,
    load_checkpoint,
    training_options,
)
from ._parser import make_parser

if TYPE_CHECKING:
    from ..audit import AuditResult


def check_outputs(args: argparse.Namespace) -> None:
    """Fail before any training where an output cannot be written.

    Or where it would overwrite an input, the other output or the cache.
    """
    written = {"--out": args.out, "--json": args.json}
    read = [
        ("--data", args.data),
        ("--test-data", args.test_data),
        ("--checkpoint", args.checkpoint),
        ("--out", args.out),
    ]
    for option, folder in read[:2]:  # a folder's .npy files are read
        if folder is not None and Path(folder).is_dir():
            read += [(option, file) for file in Path(folder).glob("*.npy")]
    name = (args.module or "").partition(":")[0]
    if name and all(part.isidentifier() for part in name.split(".")):
        source = Path(*name.split("."))  # the factory's file, if in this folder
        for file in (source.with_suffix(".py"), source / "__init__.py"):
            read += [("--module", file)] if file.is_file() else []
    for option, path in written.items():
        if path is None:
            continue
        check_output(path, option)
        target = Path(path).resolve()
        for other, source in read:
            if (
                other != option
                and source is not None
                and Path(source).resolve() == target
            ):
                raise ValueError(
                    f"{option} {path} is a file of {other}: it would be "
                    "overwritten; give another name."
                )
        if args.cache is not None and Path(args.cache).resolve() in (
            target,
            *target.parents,
        ):
            raise ValueError(
                f"{option} {path} is in the --cache folder {args.cache}, which "
                "holds the audit's saved pieces; write it elsewhere."
            )
    if args.cache is not None:
        cache = Path(args.cache).resolve()
        for option in ("--data", "--test-data"):
            source = getattr(args, option[2:].replace("-", "_"))
            if source is not None and cache == Path(source).resolve():
                raise ValueError(
                    f"--cache {args.cache} is the folder of {option}: the audit's "
                    "pieces would be saved among your arrays; give another folder."
                )


def check_output(path: str | os.PathLike, option: str) -> None:
    """Fail before any training when ``path`` cannot be written."""
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{option} {path} is a folder; give a file name in it.")
    folder = path.parent
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"{option} {path}: {folder} is a file, not a folder.")
    if not folder.is_dir():
        raise ValueError(f"{option} {path}: the folder {folder} does not exist.")
    if not os.access(folder, os.W_OK):
        raise ValueError(f"{option} {path}: the folder {folder} is not writable.")


def run_audit(args: argparse.Namespace) -> AuditResult:
    """Load the data, build the net, audit it and write the report(s)."""
    from .._engine.inputs import n_samples
    from .._validation import sample_shape
    from ..audit import ANALYSES, AuditAnalysisFailedWarning, audit

    def say(message: str) -> None:
        if not args.quiet:
            print(message, file=sys.stderr, flush=True)

    check_outputs(args)
    check_checkpoint_args(args)
    data = load_data(args, say)
    X, y = data.X, data.y
    noise = None
    if args.label_noise is not None:
        y, noise = noisy_labels(args, data)
        say(
            f"{len(noise['flipped'])} labels ({args.label_noise:g}) flipped at "
            f"random (seed {args.noise_seed})"
        )
    n_outputs = data.n_outputs
    given = [
        o
        for o, v in (("--n-classes", args.n_classes), ("--classes", args.classes))
        if v
    ]
    if data.task == "regression" and given:
        raise ValueError(
            f"{' and '.join(given)} name a classifier's outputs; the targets are "
            "a regression's (continuous, or --task regression): leave them out."
        )
    if args.classes is not None:
        if args.n_classes not in (None, len(args.classes)):
            raise ValueError(
                f"--classes names {len(args.classes)} classes, but --n-classes is "
                f"{args.n_classes}."
            )
        n_outputs = len(args.classes)
    elif args.n_classes is not None:
        if args.n_classes < n_outputs:
            raise ValueError(
                f"--n-classes {args.n_classes} is fewer than the {n_outputs} "
                "outputs the labels need (label j is output j)."
            )
        n_outputs = args.n_classes
    encoded = None  # classes encoded in sorted order, which an output may shift
    if data.class_names is not None and args.classes is None:
        encoded = len(data.class_names)
    if args.checkpoint is None:
        net = build_net(args, X, n_outputs)
        check_forward(net, X, args, encoded)
        protocol = dict(cv=args.cv)
        plan = f"{args.cv}-fold cross-validation"
        if data.groups is not None:
            from sklearn.model_selection import StratifiedGroupKFold

            protocol = dict(cv=StratifiedGroupKFold(args.cv), groups=data.groups)
            plan += f", {len(np.unique(data.groups))} groups kept whole"
    else:
        net = load_checkpoint(args, X, n_outputs)
        from skorch import NeuralNet, NeuralNetRegressor

        from .._net import resolve_device

        if data.task == "regression" and not isinstance(net, NeuralNet):
            # a regressor says the task, which whole-number targets would not
            device = str(resolve_device(net))
            net = NeuralNetRegressor(net, device=device).initialize()
        check_forward(net, X, args, encoded)
        protocol = dict(cv="prefit", X_test=data.X_test, y_test=data.y_test)
        plan = (
            f"{args.checkpoint} audited as it is (no training) on "
            f"{args.test_data}, {n_samples(data.X_test)} test samples"
        )
    kind = "regression" if data.task == "regression" else f"{n_outputs} classes"
    say(
        f"sksim audit: {data.source}, {n_samples(X)} samples of shape "
        f"{sample_shape(X)}, {kind}, {plan}"
    )
    analyses = ANALYSES if args.analyses is None else args.analyses
    idle = [name for name in args.options or {} if name not in analyses]
    if idle:
        say(
            f"sksim audit: warning: --options for analyses that --analyses does "
            f"not run ({', '.join(idle)}) are ignored"
        )
    if args.layers is not None and "class_fitting" not in analyses:
        say(
            "sksim audit: warning: --layers is ignored: it names the layers of "
            "class_fitting, which --analyses does not run"
        )
    untrained = [f"--{name.replace('_', '-')}" for name in training_options(args)]
    if args.checkpoint is not None and untrained:
        say(
            f"sksim audit: warning: {', '.join(untrained)} "
            f"{'is' if len(untrained) == 1 else 'are'} ignored: with --checkpoint "
            "the network is audited as it is, with no training"
        )
    start = time.perf_counter()
    with warnings.catch_warnings():  # failures are reported below, in one line each
        warnings.simplefilter("ignore", AuditAnalysisFailedWarning)
        # said above, in the command line's words
        warnings.filterwarnings("ignore", "options for analyses that do not run")
        result = audit(
            net,
            X,
            y,
            analyses=analyses,
            n_neighbors=args.n_neighbors,
            scale_threshold=args.scale_threshold,
            layers=args.layers,
            options=args.options,
            random_state=args.seed,
            verbose=0 if args.quiet else 1,
            cache=args.cache,
            **protocol,
        )
    result.metadata["data"] = data.source
    if data.class_names is not None:
        result.metadata["class_names"] = data.class_names
    if noise is not None:
        result.metadata["label_noise"] = noise
    if args.checkpoint is not None:
        result.metadata["checkpoint"] = str(args.checkpoint)
        result.metadata["test_data"] = str(args.test_data)
    out = result.to_html(args.out).resolve()
    say(f"audit done in {time.perf_counter() - start:.1f} s")
    if "cache" in result.metadata:
        cache = result.metadata["cache"]
        say(f"cache {cache['folder']}: {cache['loaded']} piece(s) loaded")
    for name, folds in result.failed.items():
        say(f"{name} failed on fold(s) {sorted(folds)}: see the report")
    if args.json is not None:
        say(f"JSON written to {result.to_json(args.json).resolve()}")
    say(f"report written to {out}")
    return result


def every_analysis_failed(result: AuditResult) -> str | None:
    """One line on the first error when analyses failed and none ran, else None."""
    if not result.failed or result.metadata["analyses"]:
        return None
    name, errors = next(iter(result.failed.items()))
    error = next(iter(errors.values())).splitlines()[0]
    return (
        f"every analysis failed on every fold ({name}: {error}); "
        "the report lists them all"
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``sksim`` console script.

    Parameters
    ----------
    argv : list of str, default=None
        The arguments; None reads ``sys.argv``.

    Returns
    -------
    status : int
        0 on success, 1 when every analysis failed on every fold, 2 on
        invalid input, 130 when interrupted (with one line on stderr).
    """
    parser = make_parser()
    args = parser.parse_args(argv)
    prefix = f"sksim {args.command}"
    with _noted_interrupts() as interrupted:
        try:
            result = run_audit(args)
        except (ValueError, TypeError, ImportError, OSError) as error:
            parser.exit(2, f"{prefix}: error: {_one_line(error)}\n")
        except KeyboardInterrupt:
            interrupted.append(signal.SIGINT)
    if interrupted:
        resume = "" if args.cache is None else "; run it again to resume from --cache"
        parser.exit(130, f"{prefix}: interrupted{resume}\n")
    failure = every_analysis_failed(result)
    if failure is not None:
        parser.exit(1, f"{prefix}: error: {failure}\n")
    return 0


@contextlib.contextmanager
def _noted_interrupts():
    """A list that notes each Ctrl-C inside, which raises KeyboardInterrupt as usual.

    Python drops a KeyboardInterrupt raised in a callback of its garbage
    collector: the audit would then finish and exit 0. Where the signal is
    ignored (a job started in the background), or outside the main thread,
    nothing changes.
    """
    noted: list = []

    def interrupt(signum, frame):
        noted.append(signum)
        raise KeyboardInterrupt

    main = threading.current_thread() is threading.main_thread()
    previous = signal.getsignal(signal.SIGINT) if main else signal.SIG_IGN
    if previous is signal.SIG_IGN:
        yield noted
        return
    signal.signal(signal.SIGINT, interrupt)
    try:
        yield noted
    finally:
        signal.signal(signal.SIGINT, previous)


def _one_line(error: BaseException) -> str:
    """The error's message on one line, without terminal colour codes."""
    return " ".join(re.sub(r"\x1b\[[0-9;]*m", "", str(error)).split())
