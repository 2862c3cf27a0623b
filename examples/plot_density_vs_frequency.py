"""
Density from the network's perspective on the circle-sine toy
=============================================================

A network regresses ``sin(2 pi f alpha)`` from the point
``(cos 2 pi alpha, sin 2 pi alpha)`` of the unit circle. The higher the
frequency ``f``, the more the network must tell nearby points apart, so the
fewer training examples it treats as similar to each input: the mean soft
neighbour count ``N_S(x) = sum_j k^C(x, x_j)`` falls as ``f`` grows, and,
pooled over the frequencies, per sample it is lower where the target bends
more (a trend across frequencies: within ``f = 1`` and ``2`` it holds, within
``f = 4`` and ``8`` it reverses) (Charpiat et al., NeurIPS 2019, density
section; see the
:ref:`theory page <theory-density>`).

The soft counts come from :class:`sksim.density.GradientDensityEstimator` in
two streaming passes over the training set (no ``N x N`` kernel).
"""

# %%
# Train the paper's MLP (2 -> 64 -> 5 x 64 -> 1, ReLU, L1 loss, Adam with
# a cosine learning-rate decay) for f = 1, 2, 4, 8 and count the neighbours of
# every training example.
import matplotlib.pyplot as plt
import numpy as np
import torch
from scipy.stats import spearmanr
from skorch import NeuralNetRegressor
from skorch.callbacks import LRScheduler

from sksim.datasets import make_circle_sine
from sksim.density import GradientDensityEstimator

N_SAMPLES = 2048
FREQUENCIES = [1, 2, 4, 8]


def circle_sine_mlp():
    layers = [torch.nn.Linear(2, 64), torch.nn.ReLU()]
    for _ in range(5):
        layers += [torch.nn.Linear(64, 64), torch.nn.ReLU()]
    return torch.nn.Sequential(*layers, torch.nn.Linear(64, 1))


counts, curvatures = {}, {}
for f in FREQUENCIES:
    toy = make_circle_sine(N_SAMPLES, frequency=f, random_state=0)
    torch.manual_seed(0)
    net = NeuralNetRegressor(
        circle_sine_mlp(),
        criterion=torch.nn.L1Loss,
        optimizer=torch.optim.Adam,
        lr=3e-3,
        max_epochs=60,
        batch_size=128,
        train_split=None,
        callbacks=[LRScheduler("CosineAnnealingLR", T_max=60)],
        verbose=0,
    ).fit(toy.data, toy.target[:, None])
    error = np.abs(net.predict(toy.data)[:, 0] - toy.target).mean()
    density = GradientDensityEstimator(net, batch_size=256).fit(toy.data)
    counts[f] = density.neighbor_counts(toy.data)
    curvatures[f] = toy.curvature
    rho = spearmanr(counts[f], curvatures[f])[0]
    print(
        f"f = {f}: training L1 error {error:.4f}, mean soft count "
        f"{counts[f].mean():7.1f} of {N_SAMPLES}, rank correlation with "
        f"curvature {rho:+.2f}"
    )

pooled = spearmanr(
    np.concatenate(list(counts.values())), np.concatenate(list(curvatures.values()))
)[0]
print(f"rank correlation of count and curvature, all frequencies: {pooled:+.2f}")

# %%
# The mean count falls with the frequency, and across frequencies the
# per-sample count falls with the curvature ``|y''| = f^2 |sin(f s)|``.
fig, (ax_f, ax_c) = plt.subplots(1, 2, figsize=(10, 4))
ax_f.plot(FREQUENCIES, [counts[f].mean() for f in FREQUENCIES], "o-")
ax_f.set_xscale("log", base=2)
ax_f.set_xlabel("frequency f")
ax_f.set_ylabel("mean soft count N_S")
ax_f.set_title("density falls with frequency")
for f in FREQUENCIES:
    ax_c.scatter(curvatures[f], counts[f], s=3, alpha=0.5, label=f"f = {f}")
ax_c.set_xscale("log")
ax_c.set_xlabel("curvature of the target |y''|")
ax_c.set_ylabel("soft count N_S")
ax_c.set_title(f"per sample (Spearman {pooled:+.2f})")
ax_c.legend(markerscale=4)
fig.tight_layout()
plt.show()
