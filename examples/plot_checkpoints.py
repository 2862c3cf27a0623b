"""
Neighbours across training: the kernel averaged over checkpoints
================================================================

A network's similarity changes while it trains. Here skorch's ``Checkpoint``
callback saves the parameters of a small digits classifier after every epoch;
:func:`sksim.checkpoints.collect_checkpoints` finds the files, and
``checkpoints=`` averages the kernel over them,
``K = sum_c w_c K_c / sum_c w_c``, as TracIn sums over checkpoints. We compare
the training digits most similar to one test digit after the first epoch, at
the end, and on average over training.
"""

# %%
# Train with a ``Checkpoint`` that keeps every epoch (``monitor=None``) in a
# file of its own (the epoch in ``f_params``).
import tempfile

import matplotlib.pyplot as plt
import numpy as np
import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from skorch import NeuralNetClassifier
from skorch.callbacks import Checkpoint

from sksim import NetworkNeighbors
from sksim.checkpoints import collect_checkpoints

X, y = load_digits(return_X_y=True)
X = (X / 16.0).astype(np.float32)
X_train, X_test, y_train, y_test = train_test_split(
    X, y, train_size=600, test_size=200, random_state=0
)

folder = tempfile.mkdtemp()
torch.manual_seed(0)
net = NeuralNetClassifier(
    torch.nn.Sequential(
        torch.nn.Linear(64, 32), torch.nn.ReLU(), torch.nn.Linear(32, 10)
    ),  # logits, not softmax probabilities
    criterion=torch.nn.CrossEntropyLoss,
    max_epochs=8,
    lr=0.1,
    batch_size=32,
    train_split=None,
    verbose=0,
    callbacks=[
        Checkpoint(
            monitor=None, f_params="params_{last_epoch[epoch]}.pt", dirname=folder
        )
    ],
).fit(X_train, y_train)
print(f"test accuracy: {net.score(X_test, y_test):.3f}")

paths, epochs = collect_checkpoints(net, return_epochs=True)
print(f"{len(paths)} checkpoints, epochs {epochs}")

# %%
# Three searches over the training digits: the first epoch's kernel (one
# checkpoint), the trained network's, and the average over all epochs. The
# learning rate is constant here, so the checkpoints weigh the same; with a
# schedule, pass ``checkpoint_weights=`` the learning rate of each epoch.
searches = {
    "epoch 1": NetworkNeighbors(net, n_neighbors=6, checkpoints=paths[:1]),
    f"epoch {epochs[-1]} (trained)": NetworkNeighbors(net, n_neighbors=6),
    "average over training": NetworkNeighbors(net, n_neighbors=6, checkpoints=paths),
}
query = X_test[[1]]  # an 8
found = {}
for name, search in searches.items():
    similarities, indices = search.fit(X_train, y_train).most_similar(query)
    found[name] = similarities[0], indices[0]
    labels = " ".join(str(label) for label in y_train[indices[0]])
    print(f"{name:>24}: labels {labels}")

# %%
# Each row: the test digit, then its six most similar training digits under
# that kernel (label and similarity above each). After one epoch the network
# relates this 8 to a 1 and a 4 as well; over the whole training, as at its
# end, only to other 8s. The averaged kernel weighs what stayed similar
# throughout training rather than one moment of it.
fig, axes = plt.subplots(3, 7, figsize=(8, 4))
for row, (name, (similarities, indices)) in enumerate(found.items()):
    axes[row, 0].imshow(query[0].reshape(8, 8), cmap="gray_r")
    axes[row, 0].set_title(f"test: {y_test[1]}", fontsize=9)
    axes[row, 0].text(-1, 4, name, ha="right", va="center", fontsize=9)
    for k, (s, j) in enumerate(zip(similarities, indices, strict=True), start=1):
        axes[row, k].imshow(X_train[j].reshape(8, 8), cmap="gray_r")
        axes[row, k].set_title(f"{y_train[j]}: {s:.2f}", fontsize=9)
for ax in axes.ravel():
    ax.set_axis_off()
fig.tight_layout()
plt.show()

# %%
# How much the neighbourhoods move: the share of each test digit's ten
# nearest training digits that the first epoch's kernel and the averaged one
# have in common with the trained network's.
final = searches[f"epoch {epochs[-1]} (trained)"].kneighbors(
    X_test, 10, return_distance=False
)
for name in ("epoch 1", "average over training"):
    other = searches[name].kneighbors(X_test, 10, return_distance=False)
    shared = np.mean(
        [len(set(a) & set(b)) / 10 for a, b in zip(final, other, strict=True)]
    )
    print(f"{name}: {shared:.0%} of the trained network's neighbours")
