"""
Training with a similarity term on pairs of same-class digits
=============================================================

Charpiat et al. (NeurIPS 2019, section 4) add to the training loss a term on
the cosine between the parameter gradients of two examples known to be
similar. Their experiment trains a small network on MNIST with batches made
of one pair of same-class images, Adam at learning rate 1e-3, and compares
the validation accuracy after every step with and without the term.

This example reproduces that protocol on scikit-learn's 8x8 digits with
:class:`sksim.regularized.SimilarityRegularizedClassifier`, for three
settings: no term, ``similarity_direction="dissimilar"`` (adds the cosine,
``+cos``: the authors' published setting, which pushes the pairs' gradients
apart) and ``similarity_direction="similar"`` (subtracts it, ``-cos``: the
literal "enforce similarity", and the default). Each seed draws one
initialisation and one sequence of pairs, shared by the three settings, so the
comparison is paired. The question is which direction speeds up training. It
also times a regularised training step against a plain one.
"""

# %%
# Data, network and the three settings
# ------------------------------------
import time

import matplotlib.pyplot as plt
import numpy as np
import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from skorch.callbacks import Callback

from sksim.regularized import SimilarityRegularizedClassifier

N_SEEDS = 20
N_STEPS = 300
#: setting name -> (similarity_weight, similarity_direction); weight 0 is no term
SETTINGS = {
    "none": (0.0, "similar"),
    "dissimilar": (1.0, "dissimilar"),
    "similar": (1.0, "similar"),
}

# The network is tiny: one thread avoids paying thread synchronisation on every
# small operation (restored at the end of the example).
previous_threads = torch.get_num_threads()
torch.set_num_threads(1)

X, y = load_digits(return_X_y=True)
X = (X / 16).astype("float32")
X_train, X_valid, y_train, y_valid = train_test_split(
    X, y, test_size=500, stratify=y, random_state=0
)
X_valid_t, y_valid_t = torch.as_tensor(X_valid), torch.as_tensor(y_valid)


def make_module():
    return torch.nn.Sequential(
        torch.nn.Linear(64, 64), torch.nn.ReLU(), torch.nn.Linear(64, 10)
    )


def same_class_pair_sequence(rng, n_pairs):
    """Inputs and labels ordered as (a0, b0, a1, b1, ...), a_k and b_k of one class."""
    by_class = [np.flatnonzero(y_train == c) for c in range(10)]
    classes = rng.randint(10, size=n_pairs)
    index = np.array(
        [rng.choice(by_class[c], size=2, replace=False) for c in classes]
    ).ravel()
    return X_train[index], y_train[index]


class StepAccuracy(Callback):
    """Validation accuracy after every training step."""

    def on_train_begin(self, net, **kwargs):
        self.curve_ = []

    def on_batch_end(self, net, training=False, **kwargs):
        if not training:
            return
        with torch.no_grad():
            net.module_.eval()
            pred = net.module_(X_valid_t).argmax(1)
            net.module_.train()
        self.curve_.append((pred == y_valid_t).float().mean().item())


def run(seed, weight, direction):
    """One training run: N_STEPS steps, each on one same-class pair."""
    X_pairs, y_pairs = same_class_pair_sequence(np.random.RandomState(seed), N_STEPS)
    torch.manual_seed(seed)
    accuracy = StepAccuracy()
    net = SimilarityRegularizedClassifier(
        make_module(),
        criterion=torch.nn.CrossEntropyLoss,
        optimizer=torch.optim.Adam,
        lr=1e-3,
        batch_size=2,  # one pair per step: "same_class" pairs its two members
        max_epochs=1,
        train_split=None,
        callbacks=[("step_accuracy", accuracy)],
        similarity_weight=weight,
        similarity_direction=direction,
        verbose=0,
    )
    net.fit(X_pairs, y_pairs)
    return np.array(accuracy.curve_)


# %%
# Validation accuracy after every step, over seeds
# ------------------------------------------------
start = time.perf_counter()
curves = {
    name: np.array([run(seed, w, s) for seed in range(N_SEEDS)])
    for name, (w, s) in SETTINGS.items()
}
print(f"{3 * N_SEEDS} runs of {N_STEPS} steps in {time.perf_counter() - start:.0f} s")

steps = np.arange(1, N_STEPS + 1)
fig, ax = plt.subplots(figsize=(7, 4))
for name, curve in curves.items():
    mean, std = curve.mean(0), curve.std(0)
    ax.plot(steps, mean, label=name)
    ax.fill_between(steps, mean - std, mean + std, alpha=0.2)
ax.set_xlabel("training step (one same-class pair per step)")
ax.set_ylabel("validation accuracy")
ax.set_title(f"digits, Adam 1e-3, mean ± std over {N_SEEDS} seeds")
ax.legend()
fig.tight_layout()

# %%
# Area under the accuracy curve
# -----------------------------
# The area is the mean validation accuracy over the steps (1 is perfect from
# the first step). Differences are paired: same seed, same pairs, same
# initialisation.
auc = {name: curve.mean(1) for name, curve in curves.items()}
print(
    f"{'setting':10} {'AUC mean ± std':>16} {'acc@20':>7} {'acc@40':>7} "
    f"{'acc@100':>8} {'acc@300':>8} {'AUC - none (paired)':>22}"
)
for name, curve in curves.items():
    diff = auc[name] - auc["none"]
    print(
        f"{name:10} {auc[name].mean():9.3f} ± {auc[name].std():.3f} "
        + " ".join(f"{curve[:, k - 1].mean():7.3f}" for k in (20, 40))
        + " ".join(f"{curve[:, k - 1].mean():9.3f}" for k in (100, 300))
        + f"   {diff.mean():+.3f} ± {diff.std() / np.sqrt(N_SEEDS):.3f} (s.e.)"
    )
ranking = sorted(auc, key=lambda name: -auc[name].mean())
print("AUC ordering:", " > ".join(ranking))
for name in ("dissimilar", "similar"):
    faster = auc[name].mean() > auc["none"].mean()
    print(
        f'similarity_direction="{name}" '
        f"{'speeds up' if faster else 'slows down'} training here"
    )

# %%
# What the term does to the pairs
# -------------------------------
# The direction decides whether training pulls the gradients of same-class
# pairs together ("similar", -cos) or apart ("dissimilar", +cos): the mean
# cosine of same-class pairs of the whole training set after training, for
# seed 0 (one partner drawn per digit).


def pair_cosines(weight, direction, seed=0):
    X_pairs, y_pairs = same_class_pair_sequence(np.random.RandomState(seed), N_STEPS)
    torch.manual_seed(seed)
    net = SimilarityRegularizedClassifier(
        make_module(),
        criterion=torch.nn.CrossEntropyLoss,
        optimizer=torch.optim.Adam,
        lr=1e-3,
        batch_size=2,
        max_epochs=1,
        train_split=None,
        similarity_weight=weight,
        similarity_direction=direction,
        verbose=0,
    ).fit(X_pairs, y_pairs)
    return net.pair_similarity(X_train, y_train, random_state=0, batch_size=256).mean()


for name, (w, d) in SETTINGS.items():
    print(
        f"{name:10} mean same-class pair cosine on the training set after "
        f"{N_STEPS} steps: {pair_cosines(w, d):.3f}"
    )

# %%
# Cost of a regularised step
# --------------------------
# A plain step and a regularised step are timed alternately in this process,
# for a batch of one pair and for a batch of 64 (all of one class, so every
# row is paired): median step time over 5 rounds of 100 alternations, and the
# range of the per-round ratio.


def step_times(batch_size, rounds=5, repeats=100):
    nets = {}
    for weight in (0.0, 1.0):
        net = SimilarityRegularizedClassifier(
            make_module(),
            criterion=torch.nn.CrossEntropyLoss,
            optimizer=torch.optim.Adam,
            lr=1e-3,
            similarity_weight=weight,
            verbose=0,
        ).initialize()
        net.history.new_epoch()
        nets[weight] = net
    Xb = torch.as_tensor(X_train[:batch_size])
    yb = torch.zeros(batch_size, dtype=torch.int64)  # one class: every row paired
    medians = {0.0: [], 1.0: []}
    for _ in range(rounds):
        times = {0.0: [], 1.0: []}
        for _ in range(repeats):
            for weight, net in nets.items():
                net.history.new_batch()
                start = time.perf_counter()
                net.train_step((Xb, yb))
                times[weight].append(time.perf_counter() - start)
        for weight in nets:
            medians[weight].append(np.median(times[weight][10:]))
    plain, regularised = np.array(medians[0.0]), np.array(medians[1.0])
    return np.median(plain), np.median(regularised), regularised / plain


for batch_size in (2, 64):
    plain, regularised, ratios = step_times(batch_size)
    print(
        f"batch {batch_size:3}: plain step {1e3 * plain:.2f} ms, regularised "
        f"{1e3 * regularised:.2f} ms, ratio {np.median(ratios):.1f}x "
        f"(rounds {ratios.min():.1f}-{ratios.max():.1f})"
    )

torch.set_num_threads(previous_threads)
