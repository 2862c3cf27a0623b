"""
Gaussian-process uncertainty from the network's kernel
======================================================

A network trained on the circle-sine task never sees a quarter of the circle.
A Gaussian process whose covariance is the network's own kernel
(:class:`sksim.NetworkKernel`, the empirical neural tangent kernel) is then
fitted to the same data: its predictive standard deviation grows where the
training data are missing, and we compare it with the error actually made
there.
"""

# %%
# Data with a gap, and the network
# --------------------------------
# Positions ``alpha`` between 0.2 and 0.45 of the circle are left out of the
# training set. The target ``sin(2 pi 3 alpha)`` has three periods, so the gap
# hides most of one of them.
import matplotlib.pyplot as plt
import numpy as np
import torch
from sklearn.gaussian_process import GaussianProcessRegressor
from sklearn.gaussian_process.kernels import ConstantKernel, WhiteKernel
from skorch import NeuralNetRegressor

from sksim import NetworkKernel
from sksim.datasets import make_circle_sine

FREQUENCY, NOISE, GAP = 3, 0.1, (0.2, 0.45)

toy = make_circle_sine(300, frequency=FREQUENCY, noise=NOISE, random_state=0)
train = (toy.alpha < GAP[0]) | (toy.alpha >= GAP[1])
X, y = toy.data[train], toy.target[train]

torch.manual_seed(0)
mlp = torch.nn.Sequential(
    torch.nn.Linear(2, 64),
    torch.nn.ReLU(),
    torch.nn.Linear(64, 64),
    torch.nn.ReLU(),
    torch.nn.Linear(64, 1),
)
net = NeuralNetRegressor(
    mlp,
    optimizer=torch.optim.Adam,
    lr=3e-3,
    max_epochs=200,
    batch_size=64,
    train_split=None,
    verbose=0,
).fit(X, y[:, None])

# the whole circle, for the predictions
alpha = np.linspace(0.0, 1.0, 400, endpoint=False)
X_grid = np.column_stack([np.cos(2 * np.pi * alpha), np.sin(2 * np.pi * alpha)])
X_grid = X_grid.astype(np.float32)
y_grid = np.sin(2 * np.pi * FREQUENCY * alpha)
in_gap = (alpha >= GAP[0]) & (alpha < GAP[1])

# %%
# A Gaussian process on the network's kernel
# ------------------------------------------
# The network's kernel has no hyper-parameters: the process learns a scale
# (``ConstantKernel``) and the noise level (``WhiteKernel``) by maximising the
# marginal likelihood. The standard deviation of ``predict`` includes the
# noise; the uncertainty about the function itself removes it.


def fit_and_predict(kind):
    kernel = ConstantKernel() * NetworkKernel(net, kind=kind) + WhiteKernel()
    gp = GaussianProcessRegressor(kernel, random_state=0).fit(X, y)
    mean, std = gp.predict(X_grid, return_std=True)
    latent_std = np.sqrt(np.maximum(std**2 - gp.kernel_.k2.noise_level, 0.0))
    return gp, mean, latent_std


results = {kind: fit_and_predict(kind) for kind in ("ntk", "cosine")}
print(f"fitted kernel: {results['ntk'][0].kernel_}")
print(f"(noise standard deviation used: {NOISE})\n")
print(f"{'kind':>7} {'region':>9} {'|error|':>8} {'std':>7} {'within 2 std':>12}")
for kind, (_, mean, std) in results.items():
    error = np.abs(mean - y_grid)
    for region, mask in (("gap", in_gap), ("elsewhere", ~in_gap)):
        print(
            f"{kind:>7} {region:>9} {error[mask].mean():>8.3f} "
            f"{std[mask].mean():>7.3f} {np.mean(error[mask] < 2 * std[mask]):>12.2f}"
        )
    print(
        f"{kind:>7} correlation of std and |error|: {np.corrcoef(std, error)[0, 1]:.2f}"
    )

# %%
# Where the standard deviation grows
# ----------------------------------
# Top: the clean target, the training points, the network and the process's
# mean with two standard deviations. Bottom: the standard deviation against
# the error of the mean. Both rise sharply at the edges of the gap, and
# elsewhere the error is about the size the process predicts. Inside the gap
# the standard deviation is flat while the error swings with the missing
# period: it tells *where* the prediction is unreliable better than *by how
# much* (a tenth of the gap lies outside two standard deviations, 40 % with
# the cosine kind). The
# cosine kind, a correlation kernel, gives a similar picture with somewhat
# smaller standard deviations in the gap.
gp, mean, std = results["ntk"]
fig, (top, bottom) = plt.subplots(2, 1, figsize=(7, 6), sharex=True)
for ax in (top, bottom):
    ax.axvspan(*GAP, color="0.9", label="no training data")
top.plot(alpha, y_grid, "k--", lw=1, label="clean target")
top.plot(toy.alpha[train], y, ".", color="0.5", ms=3, label="training data")
top.plot(alpha, net.predict(X_grid).ravel(), color="C1", label="network")
top.plot(alpha, mean, color="C0", label="GP mean (ntk)")
top.fill_between(alpha, mean - 2 * std, mean + 2 * std, color="C0", alpha=0.25)
top.set_ylabel("y")
top.legend(loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=3, fontsize="small")
bottom.plot(alpha, std, color="C0", label="GP standard deviation")
bottom.plot(alpha, np.abs(mean - y_grid), color="C3", label="|GP mean - target|")
bottom.set_xlabel("position on the circle, alpha")
bottom.set_ylabel("error / std")
bottom.legend(loc="upper right", fontsize="small")
fig.tight_layout()
plt.show()

# %%
# When it fails: a process on the network's residuals
# ---------------------------------------------------
# One could hope to put error bars on the network's own predictions by
# fitting the process to its training residuals ``y - f(x)``. But a network
# that fits its training data leaves residuals that look like pure noise, so
# the process learns a vanishing scale and a flat, tiny standard deviation,
# in the gap as elsewhere: the uncertainty of a Gaussian process comes from
# its hyper-parameters, and these are learnt from the targets it is given
# (scikit-learn warns that the scale reached its lower bound).
residuals = y - net.predict(X).ravel()
kernel = ConstantKernel() * NetworkKernel(net) + WhiteKernel()
gp_res = GaussianProcessRegressor(kernel, random_state=0).fit(X, residuals)
correction, std_res = gp_res.predict(X_grid, return_std=True)
std_res = np.sqrt(np.maximum(std_res**2 - gp_res.kernel_.k2.noise_level, 0.0))
error_res = np.abs(net.predict(X_grid).ravel() + correction - y_grid)
print(f"fitted kernel on residuals: {gp_res.kernel_}")
for region, mask in (("gap", in_gap), ("elsewhere", ~in_gap)):
    print(
        f"{region:>9}: |error| {error_res[mask].mean():.3f}, "
        f"std {std_res[mask].mean():.4f}"
    )
