"""Time of class fitting (one DP mixture per class) at the scale of the audit.

Synthetic representations: every class is a mixture of ``--modes`` Gaussian
modes in ``d`` dimensions (mode centres drawn with spread 2 around a class
centre of spread 4, unit mode variance). For each case the script fits
``ClassConditionalDensity(d, mixture=...)`` to the points and prints the
wall-clock seconds, the CPU seconds of one class's fit (measured in the worker
that ran it), the method each class's mixture used, the mean
number of clusters and the mean own-class log-density. With ``--write`` it
also writes ``docs/benchmarks-class-fitting.md`` (with ``uptime``: the machine
is shared).

Cases ``paper-*``: 100 classes in 64 dimensions, the default Gibbs schedule
(400 sweeps) with ``block_size="auto"``. Cases ``audit-*``: 10 classes in 8
dimensions (the audit's ``n_components=8``), with the variational backend (the
audit's choice), side by side with scikit-learn's ``BayesianGaussianMixture``
given the same prior and seed (the fit the backend reproduces), both on at most
1000 points per class as well, and the blocked Gibbs sampler on at most 1000
points per class.

Usage: ``python benchmarks/bench_class_fitting.py [--cases audit paper]
[--sizes 5000 20000 50000] [--paper-sizes ...] [--n-jobs 2] [--write]``.
"""

import argparse
import os
import subprocess
import time

import numpy as np
import pages
from sklearn.mixture import BayesianGaussianMixture

from sksim.representations import (
    ClassConditionalDensity,
    DirichletProcessGaussianMixture,
)

PAGE = os.path.join(
    os.path.dirname(__file__), "..", "docs", "benchmarks-class-fitting.md"
)
SHAPES = {"paper": (100, 64), "audit": (10, 8)}


def make_classes(n, n_classes, d, n_modes, seed=0):
    rng = np.random.RandomState(seed)
    y = np.arange(n) % n_classes
    centres = 4 * rng.standard_normal((n_classes, d))
    modes = centres[:, None] + 2 * rng.standard_normal((n_classes, n_modes, d))
    which = rng.randint(n_modes, size=n)
    return modes[y, which] + rng.standard_normal((n, d)), y


class TimedMixture(DirichletProcessGaussianMixture):
    """The DP mixture, recording the CPU seconds of its own fit (``fit_cpu_``)."""

    def fit(self, X, y=None):
        start = time.process_time()
        super().fit(X, y)
        self.fit_cpu_ = time.process_time() - start
        return self


class SklearnVariational(TimedMixture):
    """The variational backend's fit by scikit-learn's ``BayesianGaussianMixture``."""

    def _fit_variational(self, X, prior, rng):
        self.method_ = "scikit-learn's variational"
        bgm = BayesianGaussianMixture(
            n_components=min(self.max_components, len(X)),
            weight_concentration_prior_type="dirichlet_process",
            weight_concentration_prior=1.0,
            mean_prior=prior.mean,
            mean_precision_prior=prior.kappa,
            degrees_of_freedom_prior=prior.nu,
            covariance_prior=prior.psi,
            reg_covar=self.reg_covar,
            max_iter=self.max_iter,
            random_state=rng.randint(2**31 - 1),
        ).fit(X)
        components = dict(
            mean=bgm.means_,
            chol=np.linalg.cholesky(bgm.covariances_),
            prec_chol=np.transpose(bgm.precisions_cholesky_, (0, 2, 1)),
            df=np.full(bgm.n_components, np.inf),
            log_weight=np.log(bgm.weights_),
        )
        self._set_components(components, 1)
        self.n_clusters_ = np.array([len(np.unique(bgm.predict(X)))])


VARIATIONAL = dict(backend="variational")
CAPPED = dict(backend="variational", max_samples=1000)
MIXTURES = {
    "paper": {"blocked Gibbs, 400 sweeps": (TimedMixture, dict())},
    "audit": {
        "variational": (TimedMixture, VARIATIONAL),
        "scikit-learn's variational (peer)": (SklearnVariational, VARIATIONAL),
        "variational, max_samples=1000": (TimedMixture, CAPPED),
        "scikit-learn's variational (peer), max_samples=1000": (
            SklearnVariational,
            CAPPED,
        ),
        "blocked Gibbs, 400 sweeps, max_samples=1000": (
            TimedMixture,
            dict(max_samples=1000),
        ),
    },
}


def run_case(Z, y, mixture_class, params, n_jobs):
    mixture = mixture_class(**params)
    start, cpu = time.perf_counter(), time.process_time()
    ccd = ClassConditionalDensity(
        Z.shape[1], mixture=mixture, n_jobs=n_jobs, random_state=0
    ).fit(Z, y)
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu
    methods = sorted(
        {f"{m.method_} (block {getattr(m, 'block_size_', '-')})" for m in ccd.mixtures_}
    )
    clusters = np.mean([m.n_clusters_.mean() for m in ccd.mixtures_])
    return dict(
        wall=wall,
        cpu=cpu,
        method=", ".join(methods),
        clusters=clusters,
        logp=ccd.train_log_density_.mean(),
        class_cpu=np.mean([m.fit_cpu_ for m in ccd.mixtures_]),
        load=os.getloadavg()[0],
    )


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", nargs="+", default=["audit", "paper"])
    parser.add_argument("--sizes", nargs="+", type=int, default=[5000, 20000, 50000])
    parser.add_argument(
        "--paper-sizes",
        nargs="+",
        type=int,
        default=None,
        help="sizes of the paper case (default: --sizes)",
    )
    parser.add_argument("--modes", type=int, default=3)
    parser.add_argument("--n-jobs", type=int, default=2)
    parser.add_argument("--write", action="store_true")
    args = parser.parse_args()
    rows = []
    for case in args.cases:
        n_classes, d = SHAPES[case]
        sizes = args.paper_sizes if case == "paper" and args.paper_sizes else args.sizes
        for n in sizes:
            Z, y = make_classes(n, n_classes, d, args.modes)
            for name, (mixture_class, params) in MIXTURES[case].items():
                r = run_case(Z, y, mixture_class, params, args.n_jobs)
                rows.append((case, n, n_classes, d, name, r))
                print(
                    f"{case}: N={n}, {n_classes} classes, d={d}, {name}: "
                    f"{r['wall']:.1f} s wall ({r['cpu']:.1f} s CPU in this "
                    f"process, {r['class_cpu']:.2f} s CPU per class fit), "
                    f"{r['method']}, {r['clusters']:.1f} clusters, "
                    f"mean log-density {r['logp']:.2f}, load {r['load']:.1f}",
                    flush=True,
                )
    if args.write:
        write_page(rows, args)


def write_page(rows, args):
    uptime = subprocess.run(["uptime"], capture_output=True, text=True).stdout
    lines = [
        "# Class fitting at scale",
        "",
        "Measured by `benchmarks/bench_class_fitting.py "
        f"--cases {' '.join(args.cases)} --sizes "
        f"{' '.join(map(str, args.sizes))} --paper-sizes "
        f"{' '.join(map(str, args.paper_sizes or args.sizes))} "
        f"--n-jobs {args.n_jobs} --write` "
        f"on a shared 2-core CPU, `OMP_NUM_THREADS=1`; load when the page was "
        f"written (`uptime`): `{uptime.strip()}`. *CPU s / class*: CPU seconds "
        "of one class's mixture fit, in its worker, averaged over the classes; "
        "*load*: the 1-minute load average when the row finished.",
        "",
        "| case | N | classes | d | mixture | wall s | CPU s / class | load "
        "| method | clusters | mean log-density |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for case, n, k, d, name, r in rows:
        lines.append(
            f"| {case} | {n} | {k} | {d} | {name} | {r['wall']:.1f} | "
            f"{r['class_cpu']:.2f} | {r['load']:.1f} | {r['method']} | "
            f"{r['clusters']:.1f} | {r['logp']:.2f} |"
        )
    pages.write_page(PAGE, "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
