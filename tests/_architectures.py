"""The small networks of the tests, and a brute-force Jacobian oracle.

Every network a test computes with is defined here, at module level (so that
nets pickle and go to parallel workers); networks written inside one test, for
that test alone, stay there.
"""

from collections import OrderedDict

import numpy as np
import torch
from skorch import NeuralNetClassifier, NeuralNetRegressor
from skorch.callbacks import LRScheduler
from torch import nn
from torch.nn import functional as F

# -- multi-layer perceptrons -----------------------------------------------------------


def mlp(n_in, n_out, hidden=12, *, seed=0):
    """``Linear -> tanh -> Linear``, after ``torch.manual_seed(seed)`` unless None."""
    if seed is not None:
        torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(n_in, hidden), nn.Tanh(), nn.Linear(hidden, n_out))


class MLP(nn.Module):
    def __init__(self, n_in=5, n_hidden=16, n_out=3):
        super().__init__()
        self.fc1 = nn.Linear(n_in, n_hidden)
        self.fc2 = nn.Linear(n_hidden, n_hidden)
        self.out = nn.Linear(n_hidden, n_out)

    def forward(self, x):
        return self.out(torch.tanh(self.fc2(torch.relu(self.fc1(x)))))


class DigitsMLP(nn.Module):
    """8x8 digits (64 features) -> ``hidden`` -> ReLU -> 10 logits."""

    def __init__(self, n_hidden=32):
        super().__init__()
        self.hidden = nn.Linear(64, n_hidden)
        self.out = nn.Linear(n_hidden, 10)

    def forward(self, X):
        return self.out(torch.relu(self.hidden(X)))


def make_digits_net(**kwargs):
    """An unfitted skorch classifier for 8x8 digits, outputting logits."""
    params = dict(
        module=DigitsMLP,
        criterion=nn.CrossEntropyLoss,
        max_epochs=20,
        lr=0.1,
        batch_size=64,
        train_split=None,
        verbose=0,
    )
    params.update(kwargs)
    return NeuralNetClassifier(**params)


def circle_sine_regressor(epochs=60):
    """The circle-sine toy's 2 -> 64 -> (5 x 64) -> 1 ReLU MLP, L1 loss and Adam.

    Seeded before its layers are built, so that its training is reproducible.
    """
    torch.manual_seed(0)
    layers = [nn.Linear(2, 64), nn.ReLU()]
    for _ in range(5):
        layers += [nn.Linear(64, 64), nn.ReLU()]
    return NeuralNetRegressor(
        nn.Sequential(*layers, nn.Linear(64, 1)),
        criterion=nn.L1Loss,
        optimizer=torch.optim.Adam,
        lr=3e-3,
        max_epochs=epochs,
        batch_size=64,
        train_split=None,
        callbacks=[LRScheduler("CosineAnnealingLR", T_max=epochs)],
        verbose=0,
    )


def small_net(X, **kwargs):
    """The audit's own ``"mlp"`` classifier for ``X`` and 10 classes, 6 epochs."""
    from sksim.audit.models import make_classifier

    params = dict(max_epochs=6, lr=0.1, batch_size=32)
    params.update(kwargs)
    return make_classifier("mlp", X, n_classes=10, **params)


class KeywordMLP(nn.Module):
    """An MLP whose input is named ``x``, so that dict inputs reach it too."""

    def __init__(self, n_outputs=2, dtype=torch.float64, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        self.hidden = nn.Linear(3, 8, dtype=dtype)
        self.out = nn.Linear(8, n_outputs, dtype=dtype)

    def forward(self, x):
        return self.out(torch.tanh(self.hidden(x)))


class WrappedMLP(nn.Module):
    """2 -> 32 -> ReLU -> 2, held in a ``Sequential`` attribute ``net``."""

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(2, 32), nn.ReLU(), nn.Linear(32, 2))

    def forward(self, X):
        return self.net(X)


class HiddenOutMLP(nn.Module):
    """4 -> 16 -> 3 with layers named ``hidden`` (after its ReLU) and ``out``."""

    def __init__(self):
        super().__init__()
        self.hidden = nn.Sequential(nn.Linear(4, 16), nn.ReLU())
        self.out = nn.Linear(16, 3)

    def forward(self, X):
        return self.out(self.hidden(X))


class WithDropoutAndBatchNorm(nn.Module):
    """6 -> 8 (BatchNorm, ReLU, Dropout 0.5) -> ``n_out``."""

    def __init__(self, n_out=3):
        super().__init__()
        self.fc = nn.Linear(6, 8)
        self.bn = nn.BatchNorm1d(8)
        self.drop = nn.Dropout(0.5)
        self.out = nn.Linear(8, n_out)

    def forward(self, X):
        return self.out(self.drop(torch.relu(self.bn(self.fc(X)))))


class TwoInputs(nn.Module):
    """Two keyword inputs, ``left`` (4 features) and ``right`` (2), summed."""

    def __init__(self, n_out=3):
        super().__init__()
        self.a = nn.Linear(4, 5)
        self.b = nn.Linear(2, 5)
        self.out = nn.Linear(5, n_out)

    def forward(self, left, right):
        return self.out(torch.tanh(self.a(left) + self.b(right)))


class LazyLinear(nn.Module):
    """One lazy linear layer on ``X`` cast to float32: any number of features."""

    def __init__(self, n_out=3):
        super().__init__()
        self.linear = nn.LazyLinear(n_out)

    def forward(self, X):
        return self.linear(X.float())


class NaNRows(nn.Module):
    """An MLP whose outputs are NaN on the rows whose first feature is large."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(5, 3)

    def forward(self, x):
        out = self.fc(x)
        return out / (x[:, :1] < 1.5)  # infinite or NaN where x is large


# -- convolutional networks ------------------------------------------------------------


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


class MaxPoolCNN(nn.Module):
    """6x6 images: a 3x3 convolution to 3 channels, ReLU, 2x2 max-pooling, head."""

    def __init__(self, n_out=3):
        super().__init__()
        self.conv = nn.Conv2d(1, 3, 3)
        self.fc = nn.Linear(3 * 2 * 2, n_out)

    def forward(self, X):
        h = torch.relu(self.conv(X))
        return self.fc(nn.functional.max_pool2d(h, 2).flatten(1))


class ConvDropoutNet(nn.Module):
    """Conv, Dropout, BatchNorm and a mean-pooled head, beside an unused layer."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.drop = nn.Dropout(0.5)
        self.bn = nn.BatchNorm2d(4)
        self.head = nn.Linear(4, 3)
        self.unused = nn.Linear(2, 2)

    def forward(self, X):
        h = self.bn(self.drop(self.conv(X)))
        return self.head(h.mean(dim=(2, 3)))


class FunctionalConv(nn.Module):
    """A convolution whose ReLU and spatial sum are functional calls (fx nodes)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 3, 3)

    def forward(self, x):
        h = torch.relu(self.conv(x))
        return h.sum((2, 3))


def image_cnn(*, batchnorm=False, pool=True):
    """2-channel 8x8 images -> Conv(4) [-> BatchNorm] -> ReLU [-> MaxPool] -> 3.

    Built after ``torch.manual_seed(0)``.
    """
    torch.manual_seed(0)
    layers = [nn.Conv2d(2, 4, 3, padding=1)]
    layers += [nn.BatchNorm2d(4)] if batchnorm else []
    layers += [nn.ReLU()]
    layers += [nn.MaxPool2d(2)] if pool else []
    side = 4 if pool else 8
    layers += [nn.Flatten(), nn.Linear(4 * side * side, 3)]
    return nn.Sequential(*layers)


def signal_conv():
    """Rows of any length as 1-channel signals -> Conv1d(2) -> tanh (seed 0)."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Unflatten(1, (1, -1)), nn.Conv1d(1, 2, 3, padding=1), nn.Tanh()
    )


def _conv_block(c_in, c_out):
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2)
    )


def three_block_cnn(n_classes, widths):
    """Three conv-ReLU-maxpool blocks of ``widths`` channels, global average pool."""
    return nn.Sequential(
        OrderedDict(
            block1=_conv_block(1, widths[0]),
            block2=_conv_block(widths[0], widths[1]),
            block3=_conv_block(widths[1], widths[2]),
            gap=nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten()),
            readout=nn.Linear(widths[2], n_classes),
        )
    )


# -- other layer types -----------------------------------------------------------------


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


class MaskedMean(nn.Module):
    """Token embeddings averaged over the positions an attention mask keeps."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.embed, self.out = nn.Embedding(10, 4), nn.Linear(4, 3)

    def forward(self, input_ids, attention_mask=None):
        h = self.embed(input_ids)
        if attention_mask is None:
            return self.out(h.mean(1))
        mask = attention_mask[..., None].float()
        return self.out((h * mask).sum(1) / mask.sum(1))


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


class HookedOutputs(nn.Module):
    """An MLP whose user's forward hooks change a layer's output (scaled, and
    through a sine), which the engine's own hooks must not take for the
    layer's output."""

    def __init__(self):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(5, 8), nn.Linear(8, 3)
        self.fc1.register_forward_hook(lambda layer, args, out: 2.0 * out)
        self.fc2.register_forward_hook(lambda layer, args, out: torch.sin(out))

    def forward(self, x):
        return self.fc2(torch.tanh(self.fc1(x)))


class SortedByLength(nn.Module):
    """A GRU over sequences packed in order of decreasing length, as code before
    ``enforce_sorted=False`` did: the batch is sorted by length, and put back in
    order at the end, so the first Linear sees its samples in another order
    than the batch's, an order that depends on the data."""

    def __init__(self):
        super().__init__()
        self.inp, self.out = nn.Linear(3, 6), nn.Linear(5, 2)
        self.rnn = nn.GRU(6, 5, batch_first=True)

    def forward(self, x, lengths):
        lengths, order = lengths.sort(descending=True)
        h = torch.tanh(self.inp(x[order]))
        packed = nn.utils.rnn.pack_padded_sequence(h, lengths.cpu(), batch_first=True)
        _, last = self.rnn(packed)
        return self.out(last[-1][order.argsort()])


class CallForms(nn.Module):
    """Layers called in the ways the hooks must follow: a block recomputed by
    activation checkpointing in the backward pass, a layer also called under
    ``torch.no_grad()`` (a stop-gradient branch), one called with ``input=``."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(5, 8)
        self.block = nn.Sequential(nn.Linear(8, 8), nn.Tanh())
        self.out = nn.Linear(8, 3)

    def forward(self, x):
        h = torch.tanh(self.fc(input=x))
        h = torch.utils.checkpoint.checkpoint(self.block, h, use_reentrant=False)
        with torch.no_grad():
            target = self.block(h)
        return self.out(h) + target[:, :3]


class PReLUNet(nn.Module):
    """A PReLU between two Linear layers, 3 outputs: torch.func's ``vmap`` of
    ``jacrev`` gets its Jacobians wrong for batches of 3 samples."""

    def __init__(self):
        super().__init__()
        self.fc1, self.act, self.out = nn.Linear(5, 6), nn.PReLU(), nn.Linear(6, 3)
        with torch.no_grad():
            self.act.weight.fill_(0.3)

    def forward(self, x):
        return self.out(self.act(self.fc1(x)))


def pooled_cnn():
    """One convolution of 4 channels on one-channel images, pooled to 2 logits."""
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(4, 2),
    )


class Prototypes(nn.Module):
    """Logits ``-|z - p_c|`` from learned prototypes by ``torch.cdist``: a bare
    parameter, differentiated by torch.func, whose ``vmap`` rule for ``cdist``
    is wrong for batches of two samples or more (torch 2.13)."""

    def __init__(self):
        super().__init__()
        self.encode = nn.Linear(5, 4)
        self.prototypes = nn.Parameter(torch.randn(3, 4))

    def forward(self, x):
        return -torch.cdist(torch.tanh(self.encode(x)), self.prototypes)


class FunctionalPReLU(nn.Module):
    """:class:`PReLUNet` with ``F.prelu`` and a bare slope: no ``nn.PReLU``
    tells that torch.func's ``vmap`` is wrong through it."""

    def __init__(self):
        super().__init__()
        self.fc1, self.out = nn.Linear(5, 6), nn.Linear(6, 3)
        self.slope = nn.Parameter(torch.full((1,), 0.3))

    def forward(self, x):
        return self.out(nn.functional.prelu(self.fc1(x), self.slope))


class TiedWeights(nn.Module):
    """Parameters with uses that no layer call shows: an output projection tied
    to the embedding (as in language models), ``mix``'s weight also applied
    by the network's own code, or every layer ``bypassed`` (its parameters
    applied by functions, or its ``forward`` called, which runs no hooks)."""

    def __init__(self, tie, vocab=7, dim=4, n_out=3):
        super().__init__()
        self.tie = tie
        self.emb = nn.Embedding(vocab, dim)
        self.mix = nn.Linear(dim, dim)
        self.out = nn.Linear(dim, vocab)
        if tie == "embedding":
            self.out.weight = self.emb.weight
        self.n_out = n_out

    def forward(self, tokens):
        if self.tie == "bypassed":
            h = torch.tanh(self.mix.forward(F.embedding(tokens, self.emb.weight)))
            out = F.linear(h.mean(dim=1), self.out.weight, self.out.bias)
            return out[:, : self.n_out]
        h = torch.tanh(self.mix(self.emb(tokens)))
        if self.tie == "functional":
            h = h + torch.tanh(h @ self.mix.weight.T)
        return self.out(h.mean(dim=1))[:, : self.n_out]


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


class GPT2Logits(nn.Module):
    """A two-layer GPT-2 from a ``transformers`` config, as logits: its
    projections are ``transformers``' ``Conv1D`` (weights stored transposed),
    its logits those of each sequence's last token before padding (id 0)."""

    def __init__(self, n_out=3):
        super().__init__()
        from transformers import GPT2Config, GPT2ForSequenceClassification

        config = GPT2Config(
            vocab_size=40,
            n_embd=16,
            n_layer=2,
            n_head=2,
            n_positions=16,
            num_labels=n_out,
            pad_token_id=0,
            bos_token_id=1,
            eos_token_id=1,
        )
        self.gpt2 = GPT2ForSequenceClassification(config)

    def forward(self, input_ids):
        return self.gpt2(input_ids=input_ids).logits


class TrimmedTokens(nn.Module):
    """Token ids padded with 0, cut to the longest sequence of the batch: its
    layers see other numbers of positions in other batches."""

    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(11, 4, padding_idx=0)
        self.lin = nn.Linear(4, 4)
        self.out = nn.Linear(4, 3)

    def forward(self, ids):
        ids = ids[:, : int(ids.ne(0).any(dim=0).nonzero().max()) + 1]
        mask = ids.ne(0).unsqueeze(-1).to(self.lin.weight.dtype)
        h = torch.tanh(self.lin(self.emb(ids))) * mask
        return self.out(h.sum(dim=1) / mask.sum(dim=1).clamp_min(1))


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


# -- the engine's layer cases: one small double-precision network per layer type -------


class ReusedLinear(nn.Module):
    """One Linear layer called twice (weight sharing across calls), in-place ReLU."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 4)
        self.act = nn.ReLU(inplace=True)
        self.head = nn.Linear(4, 3)

    def forward(self, x):
        return self.head(self.lin(self.act(self.lin(x))))


class UnsupportedLayers(nn.Module):
    """A bare parameter and an unsupported layer: both go to per-sample autograd."""

    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.linspace(0.5, 1.5, 4))
        self.bilinear = nn.Bilinear(4, 4, 3)
        self.lin = nn.Linear(4, 4)

    def forward(self, x):
        h = torch.tanh(self.lin(x) * self.scale)
        return self.bilinear(h, x)


def _layer_case_network(name):
    g = torch.Generator().manual_seed(1)
    t = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64)  # noqa: E731
    if name == "linear":
        return nn.Sequential(nn.Linear(5, 6), nn.Tanh(), nn.Linear(6, 3)), t(6, 5)
    if name == "linear_sequence":
        return nn.Sequential(
            nn.Linear(5, 4), nn.Tanh(), nn.Flatten(), nn.Linear(12, 3)
        ), t(6, 3, 5)
    if name == "conv1d":
        return nn.Sequential(
            nn.Conv1d(2, 3, 3, stride=2, dilation=2, padding=1),
            nn.Tanh(),
            nn.Flatten(),
            nn.LazyLinear(3),
        ), t(6, 2, 11)
    if name == "conv2d_same":
        return nn.Sequential(
            nn.Conv2d(2, 3, (3, 2), padding="same"),
            nn.Tanh(),
            nn.Flatten(),
            nn.LazyLinear(3),
        ), t(6, 2, 5, 4)
    if name == "conv2d_big":  # the cost model materialises this one
        return nn.Sequential(
            nn.Conv2d(1, 2, 3, padding=1),
            nn.Tanh(),
            nn.Conv2d(2, 3, 3),
            nn.Flatten(),
            nn.LazyLinear(3),
        ), t(6, 1, 12, 12)
    if name == "conv_grouped":  # groups of 2 channels, then depthwise
        return nn.Sequential(
            nn.Conv2d(4, 6, 3, groups=2, padding=1),
            nn.Tanh(),
            nn.Conv2d(6, 6, (3, 2), groups=6, stride=2),
            nn.Tanh(),
            nn.Flatten(2),
            nn.Conv1d(6, 3, 2, groups=3),
            nn.Flatten(),
            nn.LazyLinear(3),
        ), t(6, 4, 6, 5)
    if name == "embedding":
        return nn.Sequential(
            nn.Embedding(7, 4, padding_idx=0), nn.Flatten(), nn.Linear(20, 3)
        ), torch.randint(0, 7, (6, 5), generator=g)
    if name == "layernorm":
        return nn.Sequential(
            nn.Linear(5, 4), nn.LayerNorm(4), nn.Tanh(), nn.Linear(4, 3)
        ), t(6, 5)
    if name == "groupnorm":
        return nn.Sequential(
            nn.Conv1d(2, 4, 3),
            nn.GroupNorm(2, 4),
            nn.Tanh(),
            nn.Flatten(),
            nn.LazyLinear(3),
        ), t(6, 2, 7)
    if name == "batchnorm":
        return nn.Sequential(
            nn.Conv2d(1, 3, 3),
            nn.BatchNorm2d(3),
            nn.Tanh(),
            nn.Flatten(),
            nn.LazyLinear(3),
        ), t(6, 1, 5, 5)
    if name == "shared":
        return ReusedLinear(), t(6, 4)
    if name == "custom":
        return UnsupportedLayers(), t(6, 4)
    raise ValueError(name)


LAYER_CASES = [
    "linear",
    "linear_sequence",
    "conv1d",
    "conv2d_same",
    "conv2d_big",
    "conv_grouped",
    "embedding",
    "layernorm",
    "groupnorm",
    "batchnorm",
    "shared",
    "custom",
]


def layer_case(name):
    """The network of one of ``LAYER_CASES`` in float64, and its 6 inputs.

    Lazy layers are materialised, BatchNorm has running statistics and the
    normalisation layers non-trivial affine parameters.
    """
    torch.manual_seed(0)
    module, X = _layer_case_network(name)
    module = module.double()
    module(X[:2])  # materialise lazy layers
    if name == "batchnorm":
        module = trained_batchnorm(module, X * 3 + 1)
    with torch.no_grad():  # non-trivial affine parameters
        for sub in module.modules():
            if isinstance(sub, (nn.LayerNorm, nn.GroupNorm, nn.BatchNorm2d)):
                sub.weight.uniform_(0.5, 1.5)
                sub.bias.uniform_(-0.5, 0.5)
    return module, X


def family_case(name, n):
    """A float64 network of one architecture family, in eval mode, and ``n`` inputs.

    Families: ``mlp`` (one output), ``mlp_d3``, ``cnn_batchnorm`` (running
    statistics set), ``residual``, ``tokens``, ``bert``, ``gpt2``, ``gru``, ``lstm``,
    ``shared_tables``, ``tied_embedding``, ``tied_functional``, ``tied_bypassed``,
    ``sequence_first_<T>`` (sequences of length ``T``), ``output_hooks``,
    ``prelu``, ``call_forms`` and ``sorted_by_length``.
    """
    g = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    x = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64)  # noqa: E731
    ids = lambda high, length: torch.randint(0, high, (n, length), generator=g)  # noqa: E731
    if name in ("mlp", "mlp_d3"):
        return MLP(n_out=1 if name == "mlp" else 3).double(), x(n, 5)
    if name == "cnn_batchnorm":
        X = x(n, 1, 8, 8)
        return trained_batchnorm(SmallCNN().double(), X * 2 + 1), X
    if name == "residual":
        return ResidualNet().double(), x(n, 2, 9)
    if name == "tokens":
        return TokenModel().double(), ids(11, 5)
    if name == "bert":
        return BertLogits().double().eval(), ids(60, 9)
    if name == "gpt2":  # the first sequence padded after its 6th token
        tokens = 1 + ids(39, 8)
        tokens[0, 6:] = 0
        return GPT2Logits().double().eval(), tokens
    if name == "trimmed":  # lengths 2 to 7 of 7, cut per batch
        tokens = 1 + ids(10, 7)
        for i, length in enumerate(2 + torch.arange(n) * 5 % 6):
            tokens[i, int(length) :] = 0
        return TrimmedTokens().double(), tokens
    if name in ("gru", "lstm"):
        return RecurrentClassifier(name).double(), ids(20, 7)
    if name == "shared_tables":
        return SharedTables().double(), ids(11, 5)
    if name.startswith("tied_"):
        return TiedWeights(name.removeprefix("tied_")).double(), ids(7, 5)
    if name.startswith("sequence_first"):
        return SequenceFirst().double(), ids(11, int(name[-1]))
    if name == "output_hooks":
        return HookedOutputs().double(), x(n, 5)
    if name == "prelu":
        return PReLUNet().double(), x(n, 5)
    if name == "functional_prelu":
        return FunctionalPReLU().double(), x(n, 5)
    if name == "prototypes":
        return Prototypes().double(), x(n, 5)
    if name == "call_forms":
        return CallForms().double(), x(n, 5)
    if name == "sorted_by_length":  # pairs in order, larger batches not
        lengths = torch.tensor([5, 3, 4, 2, 5, 1, 2, 4])[:n]
        return SortedByLength().double(), dict(x=x(n, 5, 3), lengths=lengths)
    raise ValueError(name)


# -- helpers and the brute-force oracle ------------------------------------------------


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
