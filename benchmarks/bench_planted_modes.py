"""Time of the Gibbs fit of both classes of the planted-modes data.

Fits ``ClassConditionalDensity(6)`` with ``DirichletProcessGaussianMixture(
n_sweeps=50, burn_in=30, thin=4, init_clusters=10)`` on
``make_planted_modes(300, random_state=0)`` (the reduced size that
``tests/representations`` checks for its conclusions) and prints the seconds of
each of ``--repeats`` fits.

Usage: ``python benchmarks/bench_planted_modes.py [--repeats 3]``.
"""

import argparse
import time

from sksim.datasets import make_planted_modes
from sksim.representations import (
    ClassConditionalDensity,
    DirichletProcessGaussianMixture,
)


def gibbs_fit_seconds(X, y):
    mixture = DirichletProcessGaussianMixture(
        n_sweeps=50, burn_in=30, thin=4, init_clusters=10
    )
    start = time.perf_counter()
    ClassConditionalDensity(6, mixture=mixture, random_state=0).fit(X, y)
    return time.perf_counter() - start


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    X, y, _ = make_planted_modes(300, random_state=0)
    seconds = [gibbs_fit_seconds(X, y) for _ in range(args.repeats)]
    print(
        "planted modes, 2 x 300 points, d' = 6, 50 Gibbs sweeps: "
        + ", ".join(f"{s:.1f} s" for s in seconds)
    )


if __name__ == "__main__":
    main()
