"""
Auditing a model you already trained
====================================

Train a small network on scikit-learn's digits with skorch, as in any project,
then audit that trained network as it is with ``cv="prefit"``: no retraining,
its weights untouched, on the train/test split it was trained and tested on.
The audit asks the network itself which training digits it considers similar
to each test digit, and whether its errors sit where it has seen few of them.
"""

# %%
# Train a classifier with skorch
# ------------------------------
# A one-hidden-layer MLP on 8x8 digits, a few epochs of SGD. Its outputs are
# logits, which the similarity kernel needs (not softmax probabilities).
import matplotlib.pyplot as plt
import numpy as np
import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from skorch import NeuralNetClassifier

from sksim.audit import audit
from sksim.audit.figures import error_by_density, neighbor_grid

X, y = load_digits(return_X_y=True)
X = (X / 16.0).astype(np.float32)
X_train, X_test, y_train, y_test = train_test_split(
    X, y, test_size=0.3, stratify=y, random_state=0
)

torch.manual_seed(0)
net = NeuralNetClassifier(
    torch.nn.Sequential(
        torch.nn.Linear(64, 64), torch.nn.ReLU(), torch.nn.Linear(64, 10)
    ),
    criterion=torch.nn.CrossEntropyLoss,
    max_epochs=8,
    lr=0.1,
    batch_size=64,
    train_split=None,
    verbose=0,
).fit(X_train, y_train)
print(f"test accuracy: {net.score(X_test, y_test):.3f}")

# %%
# Audit the trained network
# -------------------------
# ``cv="prefit"`` takes the fitted net (a ``FrozenEstimator`` around it or its
# ``torch.nn.Module`` would do too), the data it was trained on and its test
# split. Self-denoising runs on 300 training digits drawn at random to keep
# the example fast.
weights = {name: t.clone() for name, t in net.module_.state_dict().items()}
result = audit(
    net,
    X_train,
    y_train,
    cv="prefit",
    X_test=X_test,
    y_test=y_test,
    analyses=("density", "neighbors", "denoising"),
    options={"denoising": {"max_samples": 300}},
)
untouched = all(
    torch.equal(weights[name], t) for name, t in net.module_.state_dict().items()
)
print(f"weights bit-identical after the audit: {untouched}")
print(f"timings (s): {result.metadata['seconds']}")
print(result["folds"][["n_train", "n_test", "accuracy", "density_error_correlation"]])

# %%
# The accuracy in the ``folds`` table is the net's own score on the test
# split. Where are the errors? The test digits are binned by their density
# relative to the training set, as the network sees it (how many training
# digits it treats as nearly the same, cosine similarity of the parameter
# gradients above 0.9), lowest density first:
print(
    result["density_bins"][
        ["density_bin", "n_samples", "mean_log_density", "error_rate"]
    ]
)

# %%
error_by_density(result)
plt.show()

# %%
# The network's nearest training digits
# -------------------------------------
# For the lowest-density, misclassified and a typical test digit: the
# training digits the network considers most similar to it, with their
# labels and the cosine similarity ``k``.
neighbor_grid(result)
plt.show()

# %%
# Self-denoising of the trained network on (part of) its training set: how
# many training digits each prediction effectively averages over, and the
# label noise estimated from the training residuals.
print(result["denoising"].T)

# %%
# The same from the command line
# ------------------------------
# Save the module's ``state_dict`` and the two splits, and give them to
# ``sksim audit`` with the architecture: a state_dict of this ``Sequential``
# would be loaded into the factory of ``--module``; the built-in ``--model
# mlp`` has the same layers under other names (``hidden``, ``out``).
#
# .. code-block:: console
#
#     $ sksim audit --data train.npz --test-data test.npz \
#           --module mypkg.models:make_net --checkpoint weights.pt --out audit.html
