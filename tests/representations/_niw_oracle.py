"""The Normal-inverse-Wishart posterior predictive, from the textbook formulas.

Murphy, "Conjugate Bayesian analysis of the Gaussian distribution" (2007),
section 9: after ``n`` points with mean ``xbar`` and scatter ``S``, the base
``(mu0, kappa0, nu0, Psi0)`` becomes ``kappa_n = kappa0 + n``, ``nu_n = nu0 + n``,
``mu_n = (kappa0 mu0 + n xbar) / kappa_n`` and ``Psi_n = Psi0 + S + kappa0 n /
kappa_n (xbar - mu0)(xbar - mu0)^T``; the predictive is a Student t with
``nu_n - d + 1`` degrees of freedom, location ``mu_n`` and shape
``Psi_n (kappa_n + 1) / (kappa_n (nu_n - d + 1))``.
"""

import numpy as np
from scipy.stats import multivariate_t


def niw_predictive(members, prior):
    """Location, shape and degrees of freedom of the predictive after ``members``."""
    n, d = members.shape
    mu0, kappa0, nu0, psi0 = prior.mean, prior.kappa, prior.nu, prior.psi
    kappa, nu = kappa0 + n, nu0 + n
    xbar = members.mean(axis=0) if n else mu0
    scatter = (members - xbar).T @ (members - xbar)
    shift = np.outer(xbar - mu0, xbar - mu0)
    psi = psi0 + scatter + kappa0 * n / kappa * shift
    df = nu - d + 1
    return (kappa0 * mu0 + n * xbar) / kappa, psi * (kappa + 1) / (kappa * df), df


def niw_log_predictive(members, x, prior):
    """Log-density at ``x`` of the predictive after ``members``."""
    location, shape, df = niw_predictive(members, prior)
    return multivariate_t(location, shape, df=df).logpdf(x)
