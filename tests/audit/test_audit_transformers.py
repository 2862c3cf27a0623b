"""A ResNet-18 and a BERT encoder from ``transformers`` configs, audited prefit."""

import numpy as np
import pytest
import torch
from _architectures import BertLogits

from sksim import GradientDensityEstimator, NetworkNeighbors, network_similarity
from sksim._engine.context import torch_seed
from sksim.audit import audit

pytest.importorskip("transformers")

N_TRAIN, N_TEST, N_CLASSES = 24, 12, 3
OPTIONS = dict(class_fitting=dict(n_components=2, n_bins=2, n_samples=20))


class SmallResNet18(torch.nn.Module):
    """ResNet-18 layout (basic blocks, depths 2-2-2-2), narrow, as logits."""

    def __init__(self):
        super().__init__()
        from transformers import ResNetConfig, ResNetForImageClassification

        config = ResNetConfig(
            num_channels=3,
            embedding_size=4,
            layer_type="basic",
            depths=[2, 2, 2, 2],
            hidden_sizes=[4, 4, 8, 8],
            num_labels=N_CLASSES,
        )
        self.resnet = ResNetForImageClassification(config)

    def forward(self, pixel_values):
        return self.resnet(pixel_values=pixel_values).logits


def resnet_case():
    rng = np.random.RandomState(0)
    X = rng.randn(N_TRAIN + N_TEST, 3, 32, 32).astype(np.float32)
    with torch_seed(0):
        module = SmallResNet18().eval()
    return module, X


def bert_case():
    rng = np.random.RandomState(0)
    X = rng.randint(0, 60, size=(N_TRAIN + N_TEST, 8)).astype(np.int64)
    with torch_seed(0):
        module = BertLogits(n_out=N_CLASSES).eval()
    return module, X


def audited(module, X):
    y = np.random.RandomState(1).randint(N_CLASSES, size=len(X))
    result = audit(
        module,
        X[:N_TRAIN],
        y[:N_TRAIN],
        cv="prefit",
        X_test=X[N_TRAIN:],
        y_test=y[N_TRAIN:],
        analyses=("density", "neighbors", "class_fitting"),
        n_neighbors=3,
        options=OPTIONS,
        random_state=0,
        errors="raise",
    )
    return result, y


@pytest.mark.parametrize("case", [resnet_case, bert_case], ids=["resnet18", "bert"])
def test_transformers_nets_audited_prefit(case):
    module, X = case()
    before = {k: v.clone() for k, v in module.state_dict().items()}
    result, y = audited(module, X)
    X_train, X_test, y_test = X[:N_TRAIN], X[N_TRAIN:], y[N_TRAIN:]
    for name, tensor in module.state_dict().items():
        assert torch.equal(tensor, before[name]), name
    with torch.no_grad():
        prediction = module(torch.from_numpy(X_test)).argmax(dim=1).numpy()
    samples = result["samples"]
    np.testing.assert_array_equal(samples["prediction"], prediction)
    assert result["folds"]["accuracy"].item() == pytest.approx(
        np.mean(prediction == y_test)
    )
    density = GradientDensityEstimator(module, method="hard", threshold=0.9)
    counts = density.fit(X_train).neighbor_counts(X_test)
    np.testing.assert_allclose(samples["neighbor_count"], counts)
    similarities, rows = (
        NetworkNeighbors(module, n_neighbors=3).fit(X_train).most_similar(X_test)
    )
    neighbors = result["neighbors"]
    np.testing.assert_array_equal(neighbors["train_index"], rows.ravel())
    np.testing.assert_allclose(neighbors["similarity"], similarities.ravel())
    assert np.all(np.abs(similarities) <= 1 + 1e-6)
    classes = result["class_fitting"]
    assert len(classes) > 0
    assert np.isfinite(classes["train_mean_log_density"]).all()
    assert result.failed == {} and result.skipped == {}
    # neither images nor floating features: token ids are not described
    assert result.examples and all(g["features"] is None for g in result.examples)


@pytest.mark.parametrize("case", [resnet_case, bert_case], ids=["resnet18", "bert"])
def test_transformers_nets_searched_past_the_scale_threshold(case):
    """FAISS over gradient sketches, the candidates ranked exactly.

    Sixteen candidates per neighbour make every training example one of them:
    the search must find the exact neighbours.
    """
    module, X = case()
    y = np.random.RandomState(1).randint(N_CLASSES, size=len(X))
    X_train, X_test = X[:N_TRAIN], X[N_TRAIN:]
    result = audit(
        module,
        X_train,
        y[:N_TRAIN],
        cv="prefit",
        X_test=X_test,
        y_test=y[N_TRAIN:],
        analyses=("neighbors", "label_issues"),
        n_neighbors=3,
        scale_threshold=1,
        options=dict(neighbors=dict(n_components=16, search_components=4)),
        random_state=0,
        errors="raise",
    )
    assert result.metadata["methods"]["neighbors"].startswith("FAISS search")
    assert "FAISS search" in result.metadata["methods"]["label_issues"]
    similarities, rows = (
        NetworkNeighbors(module, n_neighbors=3).fit(X_train).most_similar(X_test)
    )
    neighbors = result["neighbors"]
    np.testing.assert_array_equal(neighbors["train_index"], rows.ravel())
    np.testing.assert_allclose(
        neighbors["similarity"], similarities.ravel(), rtol=1e-4, atol=1e-5
    )
    assert len(result["label_issues"]) == N_TRAIN


def test_a_model_returning_an_output_object_is_told_to_return_its_logits():
    """The encoder alone returns hidden states, no logits."""
    module, X = bert_case()
    y = np.arange(len(X)) % N_CLASSES
    with pytest.raises(TypeError, match="returned BaseModelOutputWith.*, not a"):
        audit(
            module.bert.bert,
            X[:N_TRAIN],
            y[:N_TRAIN],
            cv="prefit",
            X_test=X[N_TRAIN:],
            y_test=y[N_TRAIN:],
            analyses=["density"],
        )


def test_a_hugging_face_models_own_output_is_read_as_its_logits():
    """The model itself, returning a ``SequenceClassifierOutput``, was refused:
    ``output="logits"`` and the audit read its ``logits`` item, as they read
    a tuple's first item, and answer as the wrapper returning them does."""
    wrapped, X = bert_case()
    model = wrapped.bert
    y = np.random.RandomState(1).randint(N_CLASSES, size=len(X))
    X_train, X_test = X[:N_TRAIN], X[N_TRAIN:]
    np.testing.assert_array_equal(
        network_similarity(model, X_test, X_train),
        network_similarity(wrapped, X_test, X_train),
    )
    split = dict(cv="prefit", X_test=X_test, y_test=y[N_TRAIN:], errors="raise")
    own, expected = (
        audit(net, X_train, y[:N_TRAIN], analyses=("density",), **split)
        for net in (model, wrapped)
    )
    for table in ("samples", "summary"):
        assert own[table].equals(expected[table])
