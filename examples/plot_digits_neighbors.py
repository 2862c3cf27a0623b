"""
Which training digits does the network lump with this test digit?
=================================================================

Train a small skorch network on scikit-learn's digits, then ask the network
itself which training images it considers similar to a few test images: the
cosine similarity of the parameter gradients of its outputs (whitened over the
10 logits), as in Charpiat et al. (2019).
"""

# %%
# Train a small classifier with skorch.
import matplotlib.pyplot as plt
import numpy as np
import torch
from sklearn.datasets import load_digits
from sklearn.frozen import FrozenEstimator
from sklearn.model_selection import GridSearchCV, train_test_split
from sklearn.pipeline import make_pipeline
from sklearn.svm import SVC
from skorch import NeuralNetClassifier

from sksim import NetworkSimilarityKernel

X, y = load_digits(return_X_y=True)
X = (X / 16.0).astype(np.float32)
X_train, X_test, y_train, y_test = train_test_split(
    X, y, test_size=0.25, random_state=0
)

torch.manual_seed(0)
net = NeuralNetClassifier(
    torch.nn.Sequential(
        torch.nn.Linear(64, 64), torch.nn.ReLU(), torch.nn.Linear(64, 10)
    ),  # logits: the kernel needs them, not softmax probabilities
    criterion=torch.nn.CrossEntropyLoss,
    max_epochs=30,
    lr=0.1,
    train_split=None,
    verbose=0,
).fit(X_train, y_train)
print(f"test accuracy: {net.score(X_test, y_test):.3f}")

# %%
# Similarity of three test digits to every training digit.
kernel = NetworkSimilarityKernel(net).fit(X_train)
queries = X_test[:3]
K = kernel.transform(queries)  # shape (3, n_train), values in [-1, 1]
top = np.argsort(-K, axis=1)[:, :5]

for q, neighbours in enumerate(top):
    row = ", ".join(f"#{j} ({y_train[j]}, {K[q, j]:.3f})" for j in neighbours)
    print(f"test digit {y_test[q]} -> {row}")

# %%
# Show them: each row is a test digit followed by its five most similar
# training digits, with the similarity above each.
fig, axes = plt.subplots(3, 6, figsize=(7, 3.8))
for q, neighbours in enumerate(top):
    axes[q, 0].imshow(queries[q].reshape(8, 8), cmap="gray_r")
    axes[q, 0].set_title(f"test: {y_test[q]}", fontsize=9)
    for k, j in enumerate(neighbours, start=1):
        axes[q, k].imshow(X_train[j].reshape(8, 8), cmap="gray_r")
        axes[q, k].set_title(f"{K[q, j]:.2f}", fontsize=9)
for ax in axes.ravel():
    ax.set_axis_off()
fig.tight_layout()
plt.show()

# %%
# The kernel inside a model search, with the trained net kept as it is.
# ``GridSearchCV`` clones its estimator, and a clone of a fitted skorch net is
# unfitted: it would be trained again on every fold. ``FrozenEstimator`` keeps
# it: only the SVM's ``C`` is searched, on the network's fixed kernel.
model = make_pipeline(
    NetworkSimilarityKernel(FrozenEstimator(net)), SVC(kernel="precomputed")
)
search = GridSearchCV(model, {"svc__C": [0.1, 1.0, 10.0]}, cv=3)
search.fit(X_train, y_train)
print(f"best C: {search.best_params_['svc__C']}, test accuracy of the SVM on the")
print(f"network's kernel: {search.score(X_test, y_test):.3f}")
