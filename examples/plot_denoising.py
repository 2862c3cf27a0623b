"""
Self-denoising: predicted versus measured error on noisy labels
===============================================================

Trained on labels corrupted by Gaussian noise of standard deviation
``sigma = 0.2``, the circle-sine network ends up much closer to the clean
target than its labels are: each prediction averages the noisy labels of the
examples the network treats as similar (Charpiat et al., NeurIPS 2019,
self-denoising section; derived on the
:ref:`theory page <theory-denoising>`).

:class:`sksim.denoising.SelfDenoisingAnalysis` turns that explanation into a
prediction of the error against the clean labels, from the noisy labels only
(``sigma`` is estimated from the training residuals). How well it predicts
depends on which neighbours are averaged: the paper's unnormalised NTK
weighting averages over about two thirds of the training set and is far too
optimistic, while weighting only the samples the network treats as nearly the
same (hard threshold on the cosine similarity) gives the right order.
"""

# %%
# Train the toy network (as in the density example) on noisy labels for
# f = 1 and f = 4, then analyse it
# with every weighting.
import matplotlib.pyplot as plt
import torch
from skorch import NeuralNetRegressor
from skorch.callbacks import LRScheduler

from sksim.datasets import make_circle_sine
from sksim.denoising import SelfDenoisingAnalysis, plot_denoising

N_SAMPLES = 2048
SIGMA = 0.2
WEIGHTINGS = {
    "ntk": dict(weights="ntk"),
    "cosine": dict(weights="cosine"),
    "cos+^8": dict(weights="cosine_pos_pow", power=8),
    "hard 0.95": dict(weights="hard", threshold=0.95),
    "hard 0.99": dict(weights="hard", threshold=0.99),
}


def circle_sine_mlp():
    layers = [torch.nn.Linear(2, 64), torch.nn.ReLU()]
    for _ in range(5):
        layers += [torch.nn.Linear(64, 64), torch.nn.ReLU()]
    return torch.nn.Sequential(*layers, torch.nn.Linear(64, 1))


results, analyses = {}, {}
for f in (1, 4):
    toy = make_circle_sine(N_SAMPLES, frequency=f, noise=SIGMA, random_state=0)
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
    for name, params in WEIGHTINGS.items():
        analysis = SelfDenoisingAnalysis(net, batch_size=256, **params)
        analysis.fit(toy.data, toy.target)
        results[f, name] = analysis.summary(toy.target_clean)
        analyses[f, name] = (analysis, toy.target_clean)

print(f"label noise sigma = {SIGMA}; errors are RMSE against the clean labels")
print(
    f"{'f':>2} {'weights':>10} {'sigma est.':>10} {'N_eff':>8} "
    f"{'predicted':>9} {'measured':>9} {'ratio':>6}"
)
for (f, name), s in results.items():
    print(
        f"{f:>2} {name:>10} {s['sigma']:>10.3f} "
        f"{s['mean_effective_neighbors']:>8.1f} {s['predicted_rmse']:>9.4f} "
        f"{s['measured_rmse']:>9.4f} {s['predicted_over_measured']:>6.2f}"
    )

# %%
# The measured error (black) is several times below the label noise; the
# all-samples weightings predict an error four to seven times too small, the
# hard thresholds predict the right order.
fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
for ax, f in zip(axes, (1, 4), strict=True):
    names = list(WEIGHTINGS)
    ax.bar(
        names,
        [results[f, n]["predicted_rmse"] for n in names],
        color="C0",
        label="predicted",
    )
    ax.axhline(
        results[f, names[0]]["measured_rmse"],
        color="k",
        label="measured (clean labels)",
    )
    ax.axhline(SIGMA, color="C3", ls=":", label="label noise sigma")
    ax.set_yscale("log")
    ax.set_title(f"f = {f}")
    ax.tick_params(axis="x", rotation=30)
axes[0].set_ylabel("RMSE against clean labels")
axes[0].legend(fontsize="small", loc="center left")
fig.tight_layout()

# %%
# Per sample, with the hard threshold 0.99 at f = 4: the predicted error falls
# as one over the square root of the effective number of neighbours.
analysis, clean = analyses[4, "hard 0.99"]
plot_denoising(analysis, y_clean=clean)
plt.show()
