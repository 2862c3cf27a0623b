"""Results do not depend on torch's default device (``torch.set_default_device``).

A user who sets ``torch.set_default_device("cuda")`` makes every tensor that
sksim creates without a ``device=`` a CUDA one, which then meets tensors kept
on the CPU. There is no GPU here: the "meta" device stands for it, stricter
still (a meta tensor holds no values), with the network and data on the CPU
and ``device="cpu"``. Every call must give what it gives without the setting.
"""

import numpy as np
import pandas as pd
import pytest
import torch
from _architectures import TokenModel, image_cnn, mlp

from sksim import (
    DiffeoTransform,
    GradientDensityEstimator,
    LabelIssueDetector,
    NetworkKernel,
    NetworkNeighbors,
    SelfDenoisingAnalysis,
    gradient_features,
    network_similarity,
    relative_sensitivity,
)
from sksim.audit import audit
from sksim.representations import extract_representations
from sksim.sensitivity import apply_diffeo, matched_noise, sample_diffeo

rng = np.random.RandomState(0)
X = rng.randn(24, 3).astype(np.float32)
IMAGES = rng.rand(12, 2, 8, 8).astype(np.float32)
TOKENS = rng.randint(0, 11, (12, 5))
Y = np.arange(24) % 3
NET = mlp(3, 3)
CNN = image_cnn(batchnorm=True)
torch.manual_seed(0)
TOKEN_NET = TokenModel(n_out=3)
FIELD = sample_diffeo(8, random_state=0)

CASES = {
    "cosine": lambda: network_similarity(NET, X, device="cpu"),
    "influence rows": lambda: network_similarity(
        NET, X[:4], X, kind="influence", device="cpu"
    ),
    "streamed rows": lambda: network_similarity(
        NET, X[:5], X, device="cpu", max_memory=3000
    ),
    "cnn": lambda: network_similarity(CNN, IMAGES, device="cpu"),
    "tokens": lambda: network_similarity(TOKEN_NET, TOKENS, device="cpu"),
    "sketches": lambda: gradient_features(
        CNN, IMAGES, n_components=8, random_state=0, device="cpu"
    ),
    "hard density": lambda: (
        GradientDensityEstimator(NET, device="cpu").fit(X).score_samples(X[:4])
    ),
    "soft density": lambda: (
        GradientDensityEstimator(NET, method="soft", device="cpu")
        .fit(X)
        .score_samples(X[:4])
    ),
    "exact neighbours": lambda: (
        NetworkNeighbors(NET, n_neighbors=3, device="cpu").fit(X).kneighbors(X[:4])
    ),
    "faiss neighbours": lambda: (
        NetworkNeighbors(
            NET,
            n_neighbors=3,
            algorithm="faiss",
            n_components=8,
            search_components=4,
            device="cpu",
            random_state=0,
        )
        .fit(X)
        .kneighbors(X[:4])
    ),
    "denoising": lambda: (
        SelfDenoisingAnalysis(NET, device="cpu").fit(X, np.eye(3)[Y]).summary()
    ),
    "label issues": lambda: (
        LabelIssueDetector(NET, cv="prefit", device="cpu").fit(X, Y).scores_
    ),
    "GP kernel": lambda: NetworkKernel(NET, device="cpu")(X[:5], X[:7]),
    "representations": lambda: extract_representations(CNN, IMAGES, ["2"]),
    "sensitivity": lambda: relative_sensitivity(
        CNN, IMAGES, layers=["2"], n_init=1, device="cpu", random_state=0
    ),
    "deformation": lambda: DiffeoTransform(random_state=0).fit_transform(IMAGES),
    "apply_diffeo": lambda: apply_diffeo(IMAGES[:, 0], *FIELD),
    "matched_noise": lambda: matched_noise(IMAGES, IMAGES + 0.1, random_state=0),
    "prefit audit": lambda: audit(
        NET,
        X,
        Y,
        cv="prefit",
        X_test=X[:6],
        y_test=Y[:6],
        analyses=("density", "neighbors", "label_issues"),
        n_neighbors=3,
    )["samples"],
}


def _values(result):
    if isinstance(result, pd.DataFrame):
        numbers = result.select_dtypes("number")
        others = result.drop(columns=numbers.columns)
        return [numbers.to_numpy(np.float64), others.to_numpy().astype(str)]
    if isinstance(result, dict):
        return [_values(result[key]) for key in sorted(result)]
    if isinstance(result, (tuple, list)):
        return [_values(part) for part in result]
    if isinstance(result, torch.Tensor):
        return result.detach().cpu().numpy()
    return np.asarray(result)


def _assert_equal(found, expected):
    if isinstance(expected, list):
        assert len(found) == len(expected)
        for a, b in zip(found, expected, strict=True):
            _assert_equal(a, b)
    elif expected.dtype.kind in "fc":
        np.testing.assert_allclose(found, expected, rtol=1e-6, atol=1e-7)
    else:
        np.testing.assert_array_equal(found, expected)


@pytest.mark.filterwarnings("ignore")
@pytest.mark.parametrize("case", list(CASES))
def test_results_do_not_depend_on_the_default_device(case):
    expected = _values(CASES[case]())
    torch.set_default_device("meta")
    try:
        found = _values(CASES[case]())
    finally:
        torch.set_default_device(None)
    _assert_equal(found, expected)
