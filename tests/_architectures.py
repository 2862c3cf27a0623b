"""Small networks of every supported layer type, and a brute-force Jacobian oracle."""

import numpy as np
import torch
from torch import nn


class MLP(nn.Module):
    def __init__(self, n_in=5, n_hidden=16, n_out=3):
        super().__init__()
        self.fc1 = nn.Linear(n_in, n_hidden)
        self.fc2 = nn.Linear(n_hidden, n_hidden)
        self.out = nn.Linear(n_hidden, n_out)

    def forward(self, x):
        return self.out(torch.tanh(self.fc2(torch.relu(self.fc1(x)))))


class SmallCNN(nn.Module):
    """Conv + BatchNorm (evaluated with running statistics) + pooling + head."""

    def __init__(self, n_out=3):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 4, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(4)
        self.conv2 = nn.Conv2d(4, 6, 3, stride=2)
        self.head = nn.Linear(6, n_out)

    def forward(self, x):
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(self.conv2(x))
        return self.head(x.mean(dim=(2, 3)))


class ResidualNet(nn.Module):
    def __init__(self, n_out=2):
        super().__init__()
        self.stem = nn.Conv1d(2, 4, 3, padding=1)
        self.block = nn.Sequential(
            nn.Conv1d(4, 4, 3, padding=1),
            nn.GroupNorm(2, 4),
            nn.ReLU(),
            nn.Conv1d(4, 4, 3, padding=1),
        )
        self.head = nn.Linear(4, n_out)

    def forward(self, x):
        h = torch.relu(self.stem(x))
        h = torch.relu(h + self.block(h))
        return self.head(h.mean(dim=2))


class TokenModel(nn.Module):
    """Embedding + LayerNorm + a linear layer shared over positions."""

    def __init__(self, vocab=11, dim=6, n_out=2):
        super().__init__()
        self.emb = nn.Embedding(vocab, dim)
        self.norm = nn.LayerNorm(dim)
        self.mix = nn.Linear(dim, dim)
        self.head = nn.Linear(dim, n_out)

    def forward(self, tokens):
        h = torch.tanh(self.mix(self.norm(self.emb(tokens))))
        return self.head(h.mean(dim=1))


class SequenceFirst(nn.Module):
    """A transformer encoder layer on ``(T, B, H)``: samples on axis 1, not 0."""

    def __init__(self, vocab=11, dim=4, n_out=2):
        super().__init__()
        self.emb = nn.Embedding(vocab, dim)
        self.norm = nn.LayerNorm(dim)
        self.mix = nn.Linear(dim, dim)
        self.encoder = nn.TransformerEncoderLayer(dim, 2, 8, dropout=0.0)
        self.head = nn.Linear(dim, n_out)

    def forward(self, tokens):
        h = self.emb(tokens).transpose(0, 1)
        h = self.encoder(torch.tanh(self.mix(self.norm(h))))
        return self.head(h.mean(dim=0))


class SharedTables(nn.Module):
    """Layers whose outputs are shared by the batch and broadcast into it: a
    position embedding of ``(1, T)`` ids and a linear map of a learned table
    without a batch axis."""

    def __init__(self, vocab=11, dim=4, length=5, n_out=2):
        super().__init__()
        self.emb = nn.Embedding(vocab, dim)
        self.positions = nn.Embedding(length, dim)
        self.table = nn.Parameter(torch.linspace(-1, 1, length * dim).reshape(-1, dim))
        self.table_map = nn.Linear(dim, dim)
        self.head = nn.Linear(dim, n_out)

    def forward(self, tokens):
        ids = torch.arange(tokens.shape[1], device=tokens.device)[None]
        h = self.emb(tokens) + self.positions(ids) + self.table_map(self.table)
        return self.head(torch.tanh(h).mean(dim=1))


class BertLogits(nn.Module):
    """A two-layer BERT-style encoder from a ``transformers`` config, as logits."""

    def __init__(self, n_out=3):
        super().__init__()
        from transformers import BertConfig, BertForSequenceClassification

        config = BertConfig(
            vocab_size=60,
            hidden_size=16,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=24,
            max_position_embeddings=16,
            num_labels=n_out,
        )
        self.bert = BertForSequenceClassification(config)

    def forward(self, input_ids):
        return self.bert(input_ids=input_ids).logits


class RecurrentClassifier(nn.Module):
    """Embedding -> GRU or LSTM -> Linear on the last hidden state."""

    def __init__(self, cell="gru", vocab=20, dim=6, hidden=8, n_out=3):
        super().__init__()
        self.emb = nn.Embedding(vocab, dim)
        self.rnn = (nn.GRU if cell == "gru" else nn.LSTM)(dim, hidden, batch_first=True)
        self.head = nn.Linear(hidden, n_out)

    def forward(self, tokens):
        _, state = self.rnn(self.emb(tokens))
        h = state[0] if isinstance(state, tuple) else state
        return self.head(h[-1])


class ResNet18Logits(nn.Module):
    """A ResNet-18 (basic blocks, depths 2-2-2-2) from a ``transformers`` config."""

    def __init__(self, n_out=2):
        super().__init__()
        from transformers import ResNetConfig, ResNetForImageClassification

        config = ResNetConfig(
            num_channels=3,
            layer_type="basic",
            depths=[2, 2, 2, 2],
            hidden_sizes=[64, 128, 256, 512],
            num_labels=n_out,
        )
        self.resnet = ResNetForImageClassification(config)

    def forward(self, pixel_values):
        return self.resnet(pixel_values=pixel_values).logits


class AnyWidth(nn.Module):
    """Accepts any number of features: a per-feature embedding averaged over them.

    scikit-learn's estimator checks fit on data of varying width; this module
    lets a plain (pre-trained) network face all of them.
    """

    def __init__(self, n_hidden=8, n_out=2):
        super().__init__()
        self.w = nn.Parameter(torch.linspace(-1.0, 1.0, n_hidden))
        self.b = nn.Parameter(torch.linspace(0.5, -0.5, n_hidden))
        self.out = nn.Linear(n_hidden, n_out)

    def forward(self, x):
        x = x.reshape(len(x), -1).to(self.w.dtype)
        return self.out(torch.tanh(x.unsqueeze(-1) * self.w + self.b).mean(dim=1))


def trained_batchnorm(module, X):
    """Give BatchNorm layers non-trivial running statistics, then return eval module."""
    module.train()
    with torch.no_grad():
        module(X)
    return module.eval()


def oracle_jacobians(module, X, output="logits"):
    """Per-sample Jacobians (n, d, p) with one autograd.grad per sample and output."""
    module.eval()
    params = [p for p in module.parameters() if p.requires_grad]
    rows = []
    n = len(next(iter(X.values()))) if isinstance(X, dict) else len(X)
    for i in range(n):
        if isinstance(X, dict):
            out = module(**{k: torch.as_tensor(v[i : i + 1]) for k, v in X.items()})
        else:
            out = module(X[i : i + 1])
        out = out.reshape(1, -1)
        if output != "logits":
            out = out[:, output : output + 1]
        per_output = []
        for c in range(out.shape[1]):
            grads = torch.autograd.grad(
                out[0, c], params, allow_unused=True, retain_graph=True
            )
            per_output.append(
                torch.cat(
                    [
                        (g if g is not None else torch.zeros_like(p)).reshape(-1)
                        for g, p in zip(grads, params, strict=True)
                    ]
                )
            )
        rows.append(torch.stack(per_output))
    return torch.stack(rows).detach().double().numpy()


def _inv_sqrt(G):
    lam, V = np.linalg.eigh(G)
    return V @ np.diag(lam**-0.5) @ V.T


def oracle_kernel(J_x, J_y, kind):
    """The ntk, cosine and influence kernels from explicit Jacobians, pair by pair."""
    d = J_x.shape[1]
    K = np.empty((len(J_x), len(J_y)))
    for i, a in enumerate(J_x):
        for j, b in enumerate(J_y):
            if kind == "ntk":
                M = a @ b.T
            elif kind == "cosine":
                M = _inv_sqrt(a @ a.T) @ a @ b.T @ _inv_sqrt(b @ b.T)
            else:  # influence: K(y, x) K(x, x)^-1
                M = b @ a.T @ np.linalg.inv(a @ a.T)
            K[i, j] = np.trace(M) / d
    return K
