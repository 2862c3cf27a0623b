"""extract_representations: forward hooks, pooling, eval mode, batching."""

import re
import warnings

import numpy as np
import pytest
import torch
from _architectures import ConvDropoutNet
from skorch import NeuralNetClassifier

from sksim import NonFiniteNetworkError
from sksim.representations import extract_representations


@pytest.fixture
def net():
    torch.manual_seed(0)
    module = ConvDropoutNet()
    module.bn.running_mean.uniform_(-1, 1)  # eval mode must use these
    return module


def test_pooled_stage_outputs_match_a_manual_forward(net):
    X = torch.randn(10, 1, 5, 5)
    reps = extract_representations(net, X, ["bn", "head"], batch_size=3)
    net.eval()
    with torch.no_grad():
        bn = net.bn(net.drop(net.conv(X)))
        head = net(X)
    np.testing.assert_allclose(
        reps["bn"], bn.mean(dim=(2, 3)).numpy(), rtol=1e-5, atol=1e-6
    )
    np.testing.assert_allclose(reps["head"], head.numpy(), rtol=1e-5, atol=1e-6)
    flat = extract_representations(net, X, "bn", pool="flatten")["bn"]
    np.testing.assert_allclose(flat, bn.reshape(10, -1).numpy(), rtol=1e-5, atol=1e-6)
    mx = extract_representations(net, X, "bn", pool="max")["bn"]
    np.testing.assert_allclose(mx, bn.amax(dim=(2, 3)).numpy(), rtol=1e-5, atol=1e-6)


def test_bfloat16_representations_come_as_float32(net):
    """NumPy has no bfloat16: a bfloat16 network's representations (and the
    prefit audit's class fitting of them) failed."""
    X = torch.randn(6, 1, 5, 5)
    half = extract_representations(net.to(torch.bfloat16), X, ["bn", "head"])
    layers = ["bn", "head"]
    full = extract_representations(net.float(), X.to(torch.bfloat16).float(), layers)
    assert half["bn"].dtype == half["head"].dtype == np.float32
    for layer in layers:  # bfloat16 rounds to 2^-8 of each value
        np.testing.assert_allclose(half[layer], full[layer], rtol=0.02, atol=0.02)


def test_training_mode_is_restored_and_hooks_removed(net):
    net.train()
    extract_representations(net, torch.randn(4, 1, 5, 5), ["conv"])
    assert net.training and net.drop.training
    assert not net.conv._forward_hooks


def test_skorch_net_and_progress_bar(capsys):
    torch.manual_seed(0)
    X = np.random.RandomState(0).randn(30, 1, 5, 5).astype(np.float32)
    y = np.arange(30) % 3
    clf = NeuralNetClassifier(ConvDropoutNet, max_epochs=1, train_split=None, verbose=0)
    clf.fit(X, y)
    reps = extract_representations(clf, X, ["head"], batch_size=8, verbose=1)
    np.testing.assert_allclose(
        reps["head"], clf.forward(X).numpy(), rtol=1e-5, atol=1e-6
    )
    assert "4/4" in capsys.readouterr().err


@pytest.mark.parametrize(
    "layers, kwargs, error, match",
    [
        (["nope"], {}, ValueError, "No module named \\['nope'\\]"),
        ([], {}, ValueError, "at least one module"),
        (["conv"], dict(pool="sum"), ValueError, "pool must be one of"),
        (["unused"], {}, ValueError, "was not called in the forward pass"),
    ],
)
def test_errors(net, layers, kwargs, error, match):
    with pytest.raises(error, match=match):
        extract_representations(net, torch.randn(2, 1, 5, 5), layers, **kwargs)


def test_inputs_the_network_fails_on_are_explained_as_the_kernel_explains_them(net):
    """torch's RuntimeError was raised as it was."""
    shaped = r"inputs of shape \(2, 5, 5\) per sample .*: pass inputs shaped as"
    with pytest.raises(ValueError, match=shaped):
        extract_representations(net, torch.randn(2, 2, 5, 5), ["conv"])
    typed = r"inputs of shape \(1, 5, 5\) .*: pass inputs of the dtype the network"
    with pytest.raises(ValueError, match=typed):
        extract_representations(net, torch.ones(2, 1, 5, 5, dtype=torch.long), ["conv"])


class _Sequences(torch.nn.Module):
    """Recurrent and attention layers, batch first or sequence first."""

    def __init__(self, batch_first):
        super().__init__()
        nn, self.batch_first = torch.nn, batch_first
        self.lstm = nn.LSTM(4, 6, batch_first=batch_first)
        self.attn = nn.MultiheadAttention(6, 2, batch_first=batch_first)
        self.block = nn.TransformerEncoderLayer(6, 2, 8, batch_first=batch_first)
        self.gru = nn.GRU(6, 6, batch_first=batch_first, bidirectional=True)
        self.head = nn.Linear(12, 3)

    def forward(self, x):  # x: (B, T, 4)
        x = x if self.batch_first else x.transpose(0, 1)
        h, _ = self.lstm(x)
        a, _ = self.attn(h, h, h)
        g, _ = self.gru(self.block(a))
        return self.head(g[:, -1] if self.batch_first else g[-1])


@pytest.mark.parametrize("batch_first", [True, False])
def test_recurrent_and_attention_layers_give_their_output_sequence(batch_first):
    """A layer returning a tuple is its first item; sequence first or not.

    Batches of as many samples as time steps: rows taken from the wrong axis
    would pass unseen.
    """
    torch.manual_seed(0)
    net = _Sequences(batch_first).eval()
    X = torch.randn(6, 3, 4)
    with torch.no_grad():
        x = X if batch_first else X.transpose(0, 1)
        h, _ = net.lstm(x)
        a, _ = net.attn(h, h, h)
        b = net.block(a)
        g, _ = net.gru(b)
    time = 1 if batch_first else 0
    values = dict(lstm=h, attn=a, block=b, gru=g)
    expected = {name: v.mean(time) for name, v in values.items()}
    expected["block.norm2"] = expected["block"]  # its last module
    for batch_size in (3, 6):
        reps = extract_representations(
            net, X, list(expected), pool="mean", batch_size=batch_size
        )
        for name, value in expected.items():
            np.testing.assert_allclose(reps[name], value, rtol=1e-5, atol=1e-6)
        every = extract_representations(
            net, X, "all", pool="mean", batch_size=batch_size
        )
        assert {"lstm", "block.norm1", "block.linear1", "gru"} < set(every)
        # its dropouts, of no known layout, hold their features last too
        assert every["block.dropout"].shape == (6, 8)
        assert every["block.dropout1"].shape == (6, 6)
        for name in ("lstm", "block.norm2", "gru"):
            np.testing.assert_allclose(every[name], reps[name], rtol=1e-5, atol=1e-6)
    flat = extract_representations(net, X, ["gru"], pool="flatten", batch_size=3)
    np.testing.assert_allclose(
        flat["gru"],
        (g if batch_first else g.transpose(0, 1)).reshape(6, -1),
        rtol=1e-5,
        atol=1e-6,
    )


def test_values_beside_sequence_first_layers_that_may_hold_time_steps_are_refused():
    """Beside torch's sequence-first modules, rows may be samples or steps.

    Judged on the first batch: a later batch of as many samples as steps
    keeps what the first told.
    """

    class Dropped(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = torch.nn.Embedding(10, 6)
            self.rnn = torch.nn.GRU(6, 6)
            self.drop = torch.nn.Dropout(0.1)
            self.head = torch.nn.Linear(6, 3)

        def forward(self, x):
            h, _ = self.rnn(self.emb(x).transpose(0, 1))
            return self.head(self.drop(h)[-1])

    torch.manual_seed(0)
    net, X = Dropped(), torch.randint(0, 10, (7, 3))  # 3 time steps
    unsure = r"\['emb', 'drop'\] give values of a shape that the modules \['rnn'\]"
    with pytest.raises(ValueError, match=unsure + ".*another batch_size"):
        extract_representations(net, X, ["emb", "drop"], batch_size=3)
    with pytest.warns(UserWarning, match=unsure + '.*"all" leaves them out'):
        reps = extract_representations(net, X, "all", batch_size=3)
    assert list(reps) == ["input", "rnn", "head", "output"]
    with pytest.raises(ValueError, match="'drop' gave 3 rows for a batch of 4"):
        extract_representations(net, X, ["drop"], batch_size=4)
    with pytest.warns(UserWarning, match=r"\['drop'\] are not the samples"):
        every = extract_representations(net, X, "all", pool="mean", batch_size=4)
    emb = extract_representations(net, X, ["emb"], pool="mean", batch_size=4)["emb"]
    with torch.no_grad():
        expected = net.emb(X).mean(1)
    for value in (every["emb"], emb):  # its last batch: 3 samples of 3 steps
        np.testing.assert_allclose(value, expected, rtol=1e-6)


class _MaskedMean(torch.nn.Module):
    """Token features, attended under an additive or a 0/1 attention_mask."""

    def __init__(self):
        super().__init__()
        self.proj = torch.nn.Linear(4, 5)
        self.head = torch.nn.Linear(5, 2)

    def forward(self, x, attention_mask):
        keep = attention_mask == 0 if attention_mask.min() < 0 else attention_mask > 0
        h = self.proj(x)
        return self.head((h * keep[..., None]).sum(1) / keep.sum(1, keepdim=True))


def test_an_additive_attention_mask_keeps_its_zeros():
    """0 for the tokens kept, -inf for the others: read as ones, the mean
    went over the padding alone."""
    torch.manual_seed(0)
    net, x = _MaskedMean(), torch.randn(5, 6, 4)
    kept = torch.arange(6) < torch.tensor([6, 2, 4, 1, 3])[:, None]
    with torch.no_grad():
        expected = (net.proj(x) * kept[..., None]).sum(1) / kept.sum(1, keepdim=True)
    additive = torch.zeros(5, 6).masked_fill(~kept, -torch.inf)
    for mask in (additive, kept.long(), kept):
        X = {"x": x, "attention_mask": mask}
        reps = extract_representations(net, X, ["proj"], pool="mean", batch_size=2)
        np.testing.assert_allclose(reps["proj"], expected, rtol=1e-5, atol=1e-6)


def test_all_leaves_out_an_input_of_several_tensors():
    class Two(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = torch.nn.Linear(5, 4)

        def forward(self, a, b):
            return self.fc(a) * b

    torch.manual_seed(0)
    net, X = Two(), {"a": torch.randn(7, 5), "b": torch.randn(7, 1)}
    with pytest.warns(UserWarning, match='input is a dict.*"all" leaves it out'):
        reps = extract_representations(net, X, "all", batch_size=3)
    assert list(reps) == ["fc", "output"]
    with torch.no_grad():
        np.testing.assert_allclose(reps["output"], net(**X), rtol=1e-6)


class _PaddedEncoder(torch.nn.Module):
    """PyTorch's encoder as built by default, fed a padding mask."""

    def __init__(self):
        super().__init__()
        self.emb = torch.nn.Embedding(20, 8)
        layer = torch.nn.TransformerEncoderLayer(8, 2, 16, batch_first=True)
        self.enc = torch.nn.TransformerEncoder(layer, 2)
        self.head = torch.nn.Linear(8, 3)

    def forward(self, x):
        padded = x == 0
        h = self.enc(self.emb(x), src_key_padding_mask=padded)
        return self.head(h[:, 0])


def test_transformer_layers_give_what_they_compute_off_the_fast_path():
    """Run without gradients, torch's encoder hands its layers nested tensors.

    The representations are those of the network's training path (computed
    here with gradients), and the fast path is as it was.
    """
    torch.manual_seed(0)
    net = _PaddedEncoder().eval()
    X = torch.randint(1, 20, (6, 5))
    X[0, 3:], X[2, 1:] = 0, 0
    layers = ["enc.layers.0", "enc.layers.1.linear1", "enc.layers.1.norm2"]
    seen = {}
    hooks = [
        net.get_submodule(name).register_forward_hook(
            lambda _m, _i, out, name=name: seen.setdefault(name, out.detach())
        )
        for name in layers
    ]
    net(X)  # with gradients: no fast path
    for hook in hooks:
        hook.remove()
    reps = extract_representations(net, X, layers, pool="max", batch_size=3)
    for name in layers:
        np.testing.assert_allclose(reps[name], seen[name].amax(1), rtol=1e-5, atol=1e-6)
    every = extract_representations(net, X, "all", pool="max", batch_size=3)
    np.testing.assert_allclose(every["enc.layers.1.norm2"], reps["enc.layers.1.norm2"])
    assert torch.backends.mha.get_fastpath_enabled()


def test_token_sequences_are_pooled_over_the_tokens_the_attention_mask_keeps():
    """A sentence's representation does not depend on its padding."""
    pytest.importorskip("transformers")
    from _architectures import BertLogits

    torch.manual_seed(0)
    bert = BertLogits().bert.eval()
    ids = torch.randint(1, 60, (4, 6))
    lengths = torch.tensor([6, 3, 5, 1])
    short = (torch.arange(6) < lengths[:, None]).long()
    layers = ["bert.encoder.layer.1.output.dense", "bert.encoder.layer.0"]
    reps = {}
    for width in (6, 11):
        X = {
            "input_ids": torch.cat([ids * short, torch.zeros(4, width - 6).long()], 1),
            "attention_mask": torch.cat([short, torch.zeros(4, width - 6).long()], 1),
        }
        for pool in ("mean", "max"):
            reps[width, pool] = extract_representations(
                bert, X, ["output", *layers], pool=pool, batch_size=3
            )
    for pool in ("mean", "max"):
        for name in ["output", *layers]:
            np.testing.assert_allclose(
                reps[11, pool][name], reps[6, pool][name], rtol=1e-4, atol=1e-5
            )
    with torch.no_grad():  # the one-token sentence, alone and unpadded
        hidden = bert.bert.encoder.layer[0](bert.bert.embeddings(ids[3:, :1]))
    hidden = hidden[0] if isinstance(hidden, tuple) else hidden
    np.testing.assert_allclose(
        reps[11, "mean"]["bert.encoder.layer.0"][3:], hidden[:, 0], rtol=1e-4, atol=1e-5
    )
    with torch.no_grad():
        logits = bert(**{"input_ids": ids * short, "attention_mask": short}).logits
    np.testing.assert_allclose(reps[6, "mean"]["output"], logits, rtol=1e-5, atol=1e-6)


class _Packed(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = torch.nn.Embedding(20, 8)
        self.rnn = torch.nn.GRU(8, 6, batch_first=True)
        self.head = torch.nn.Linear(6, 3)

    def forward(self, x):
        lengths = (x > 0).sum(1).clamp(min=1)
        packed = torch.nn.utils.rnn.pack_padded_sequence(
            self.emb(x), lengths, batch_first=True, enforce_sorted=False
        )
        return self.head(self.rnn(packed)[1][-1])


def test_packed_sequences_are_refused_by_name_and_left_out_of_all():
    torch.manual_seed(0)
    net, X = _Packed(), torch.randint(0, 20, (7, 5))
    with pytest.raises(TypeError, match="PackedSequence.*pad_packed_sequence"):
        extract_representations(net, X, ["rnn"], batch_size=3)
    with pytest.warns(UserWarning, match="'rnn' returns a PackedSequence: \"all\""):
        reps = extract_representations(net, X, "all", batch_size=3)
    assert list(reps) == ["input", "emb", "head", "output"]
    with torch.no_grad():
        np.testing.assert_allclose(reps["output"], net(X), rtol=1e-6)


def test_non_tensor_output_is_refused():
    class Named(torch.nn.Module):
        def forward(self, x):
            return {"x": x}

    net = torch.nn.Sequential(Named())
    with pytest.raises(TypeError, match="'0' returns a dict, not a tensor"):
        extract_representations(net, torch.randn(2, 5, 3), ["0"])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_device_gives_the_cpu_values(net):
    X = torch.randn(9, 1, 5, 5)
    cpu = extract_representations(net, X, ["bn", "head"], device="cpu")
    gpu = extract_representations(net, X, ["bn", "head"], device="cuda", batch_size=4)
    for name in cpu:
        np.testing.assert_allclose(gpu[name], cpu[name], rtol=1e-4, atol=1e-5)


def test_non_finite_representations_name_their_rows(net):
    X = torch.randn(7, 1, 5, 5)
    X[5] = 3e38  # finite, but the convolution overflows
    with pytest.raises(
        NonFiniteNetworkError, match=r"at layer 'conv' for input rows \[5\]"
    ):
        extract_representations(net, X, ["conv"], batch_size=2)


class InPlace(torch.nn.Module):
    """Layers whose values the forward pass changes in place afterwards."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.first = torch.nn.ReLU(inplace=True)  # changes the input itself
        self.conv = torch.nn.Conv2d(1, 2, 3, padding=1)
        self.fc = torch.nn.Linear(50, 4)

    def forward(self, x):
        h = self.conv(self.first(x))
        h = torch.relu_(h)  # in place on conv's output
        z = self.fc(h.flatten(1))
        s = z + h.flatten(1)[:, :4]  # a residual sum, the torch.fx node "add"
        return torch.tanh_(s)


def true_values(X):
    net = InPlace().eval()
    with torch.no_grad():
        x = X.clone()
        conv = net.conv(torch.relu(x))
        fc = net.fc(torch.relu(conv).flatten(1))
        add = fc + torch.relu(conv).flatten(1)[:, :4]
    return dict(input=X, conv=conv, fc=fc, add=add)


@pytest.mark.parametrize("pool", ["flatten", "mean"])
@pytest.mark.parametrize("layers", [["input", "conv", "fc"], ["add"], ["conv", "add"]])
def test_values_are_taken_before_the_network_changes_them_in_place(layers, pool):
    X = torch.randn(6, 1, 5, 5)
    reps = extract_representations(InPlace(), X, layers, pool=pool, batch_size=4)
    expected = true_values(X)
    for name in layers:
        value = expected[name]
        if pool == "mean" and value.dim() > 2:
            value = value.mean(dim=(2, 3))
        np.testing.assert_allclose(
            reps[name], value.reshape(6, -1).numpy(), rtol=1e-5, atol=1e-6
        )


class Tokens(torch.nn.Module):
    """Token sequences (B, T, E) through linear and attention layers, then a
    one-dimensional convolution over the tokens (B, C, T)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.embed = torch.nn.Linear(3, 8)
        self.act = torch.nn.GELU()  # no layout of its own: the Linear's
        self.block = torch.nn.TransformerEncoderLayer(8, 2, 16, batch_first=True)
        self.conv = torch.nn.Conv1d(8, 6, 3)
        self.fc = torch.nn.Linear(6, 2)

    def forward(self, x):
        h = self.block(self.act(self.embed(x)))
        h = h + 1  # the torch.fx node "add", after the encoder layer
        c = self.conv(h.transpose(1, 2))
        return self.fc(c.mean(2))


@pytest.mark.parametrize("pool", ["mean", "max", "channel_mean"])
def test_token_outputs_are_pooled_over_tokens(pool):
    """Outputs (B, T, E) of linear and attention layers were pooled as if E
    were positions: one value per token, averaged over the features."""
    net = Tokens().eval()
    X = torch.randn(5, 7, 3)
    layers = ["input", "embed", "act", "block", "add", "conv"]
    reps = extract_representations(net, X, layers, pool=pool, batch_size=2)
    with torch.no_grad():
        embed = net.embed(X)
        block = net.block(net.act(embed))
        values = dict(input=X, embed=embed, act=net.act(embed), block=block)
        values["add"] = block + 1
        conv = net.conv((block + 1).transpose(1, 2)).transpose(1, 2)  # (B, T, C)
        values["conv"] = conv
    reduce = dict(mean=lambda v, a: v.mean(a), max=lambda v, a: v.amax(a))
    for name in layers:
        axis = 2 if pool == "channel_mean" else 1  # features, or tokens
        expected = reduce.get(pool, reduce["mean"])(values[name], axis)
        np.testing.assert_allclose(reps[name], expected.numpy(), atol=1e-5)
    every = extract_representations(net, X, "all", pool=pool)
    for name in ("embed", "act", "conv"):
        np.testing.assert_allclose(every[name], reps[name], atol=1e-6)


class Gated(torch.nn.Module):
    """A convolution gated by a linear layer of its pooled channels (as a
    squeeze-and-excitation block), then a linear head."""

    def __init__(self, conv=torch.nn.Conv1d):
        super().__init__()
        torch.manual_seed(0)
        self.conv = conv(2, 6, 3, padding=1)
        self.gate = torch.nn.Linear(6, 6)
        self.head = torch.nn.LazyLinear(2)
        self.spatial = (2,) if conv is torch.nn.Conv1d else (2, 3)

    def gated(self, h):
        g = torch.sigmoid(self.gate(h.mean(self.spatial)))
        return h * g.reshape(-1, 6, *(1 for _ in self.spatial))

    def forward(self, x):
        h = self.gated(self.conv(x))  # the torch.fx node "mul"
        return self.head(h.flatten(1))


@pytest.mark.parametrize(
    "conv, shape", [(torch.nn.Conv1d, (7,)), (torch.nn.Conv2d, (5, 4))]
)
def test_feature_maps_keep_their_channels_beside_linear_layers(conv, shape):
    """The layout rule took a gated block's output, and with a module named
    beside it a torch.fx node's, for the last linear layer's, which had run:
    they were pooled over their last axis."""
    net = Gated(conv).eval()
    X = torch.randn(4, 2, *shape)
    net(X)  # the lazy head
    reps = extract_representations(net, X, ["conv", "mul", "input"], pool="mean")
    with torch.no_grad():
        h = net.conv(X)
        mul = net.gated(h)
    spatial = net.spatial
    expected = dict(conv=h.mean(spatial), mul=mul.mean(spatial))
    expected["input"] = X.mean(spatial)
    for name, value in expected.items():
        np.testing.assert_allclose(reps[name], value.numpy(), atol=1e-6)


class Transposed(torch.nn.Module):
    """A signal (B, C, L) turned into a sequence (B, L, C) by a module."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv1d(2, 6, 3)
        self.turn = Turn()
        self.norm = torch.nn.LayerNorm(6)
        self.act = torch.nn.GELU()

    def forward(self, x):
        return self.act(self.norm(self.turn(self.conv(x)))).mean(1)


class Turn(torch.nn.Module):
    def forward(self, x):
        return x.transpose(1, 2)


def test_a_module_is_read_as_the_layers_after_it_read_it():
    """The layout came from the layers run before a module only: a transpose
    before a layer norm was pooled over its last axis; GPT-2's projections
    (transformers' Conv1D, of no known kind) were pooled over their features."""
    net = Transposed().eval()
    X = torch.randn(5, 2, 9)
    reps = extract_representations(net, X, ["conv", "turn", "act"], batch_size=2)
    with torch.no_grad():
        conv = net.conv(X)
        act = net.act(net.norm(conv.transpose(1, 2)))
    expected = dict(conv=conv.mean(2), turn=conv.mean(2), act=act.mean(1))
    for name, value in expected.items():
        np.testing.assert_allclose(reps[name], value.numpy(), atol=1e-6)
    transformers = pytest.importorskip("transformers")
    config = transformers.GPT2Config(n_embd=12, n_layer=1, n_head=2, vocab_size=50)
    gpt = transformers.GPT2Model(config).eval()
    ids = torch.randint(0, 50, (3, 7))
    width = extract_representations(gpt, ids, "h.0.mlp.c_fc")["h.0.mlp.c_fc"]
    assert width.shape == (3, 48)


class LayerNorm2d(torch.nn.LayerNorm):
    """A layer norm over the channels of feature maps, which it permutes."""

    def forward(self, x):
        return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


@pytest.mark.parametrize("norm", [LayerNorm2d(6), torch.nn.LayerNorm([6, 4, 4])])
def test_layer_norms_of_feature_maps_keep_their_channels(norm):
    """A LayerNorm subclass with its own forward, or one over several axes,
    was taken for a linear-like layer: its feature maps were pooled over
    their last axis."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 6, 2, stride=2), norm).eval()
    X = torch.randn(5, 3, 8, 8)
    reps = extract_representations(net, X, "all", pool="mean")
    with torch.no_grad():
        expected = net(X).mean((2, 3))
    np.testing.assert_allclose(reps["1"], expected.numpy(), atol=1e-6)


class ChannelsLastNorm(torch.nn.LayerNorm):
    """A layer norm with ConvNeXt's ``data_format``, over the last axis."""

    def __init__(self, width):
        super().__init__(width)
        self.data_format = "channels_last"

    def forward(self, x):
        return super().forward(x)


def test_a_channels_last_layer_norm_keeps_its_features_where_shapes_coincide():
    """In ConvNeXt's first stage (C = H = W), its channels-last layer norm was
    pooled over its last axis: a depthwise convolution had a tensor of its
    shape with channels first."""
    torch.manual_seed(0)
    conv, norm = torch.nn.Conv2d(4, 4, 3, padding=1, groups=4), ChannelsLastNorm(4)
    net = torch.nn.Sequential(conv, Permute(0, 2, 3, 1), norm).eval()
    X = torch.randn(3, 4, 4, 4)
    reps = extract_representations(net, X, ["2"], pool="mean")
    with torch.no_grad():
        expected = net(X).mean((1, 2))
    np.testing.assert_allclose(reps["2"], expected.numpy(), atol=1e-6)


class Permute(torch.nn.Module):
    def __init__(self, *axes):
        super().__init__()
        self.axes = axes

    def forward(self, x):
        return x.permute(*self.axes)


def test_a_layout_that_known_layers_dispute_is_read_from_its_readers_or_named():
    """Where known layers of both layouts read or made tensors of a value's
    shape (16 frames of 16 features after a convolution of 16 channels, as
    in Wav2Vec2), it was pooled as channels first without a word: the
    encoder's blocks, read by linear layers, over their features."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Conv1d(2, 16, 3),
        Permute(0, 2, 1),
        torch.nn.GELU(),
        torch.nn.Linear(16, 2),
    ).eval()
    X = torch.randn(3, 2, 18)
    with pytest.warns(UserWarning) as warned:
        reps = extract_representations(net, X, ["0", "1", "2"], pool="mean")
    with torch.no_grad():
        conv = net[0](X)
        expected = {"0": conv.mean(2), "2": net[2](conv.transpose(1, 2)).mean(1)}
    for name, value in expected.items():  # by their kind, by the linear layer
        np.testing.assert_allclose(reps[name], value.numpy(), atol=1e-6)
    # the permutation's value is read by no known layer: channels first, named
    (message,) = [str(w.message) for w in warned]
    assert re.search(r"did not tell .* layers \['1'\] .*flatten", message)


class Patches(torch.nn.Module):
    """A ViT's patch embeddings: tokens (B, T, E) no known layer reads whole."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 2, stride=2)

    def forward(self, x):
        return self.conv(x).flatten(2).transpose(1, 2)


class TinyViT(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.patches = Patches()
        self.cls = torch.nn.Parameter(torch.randn(1, 1, 8))
        self.norm = torch.nn.LayerNorm(8)

    def forward(self, x):
        tokens = self.patches(x)
        tokens = torch.cat([self.cls.expand(len(x), -1, -1), tokens], 1)
        return self.norm(tokens)[:, 0]


def test_a_layout_no_known_layer_tells_is_named():
    """A ViT's patch embeddings, whose tokens the next layer reads with a class
    token more, were pooled over their features without a word."""
    torch.manual_seed(0)
    net = TinyViT().eval()
    with pytest.warns(UserWarning, match=r"did not tell .*\['patches'\]"):
        extract_representations(net, torch.randn(3, 3, 8, 8), ["patches"], pool="mean")


def test_flat_outputs_have_no_layout_to_dispute():
    """A (batch, features) output beside layers of both layouts was named in
    a warning from the second batch on (the first batch's came too late)."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Linear(8, 16),
        torch.nn.BatchNorm1d(16),
        torch.nn.Linear(16, 16),
        torch.nn.Tanh(),
    ).eval()
    X = torch.randn(20, 8)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for batch_size in 20, 8:
            reps = extract_representations(net, X, "all", batch_size=batch_size)
            with torch.no_grad():
                np.testing.assert_allclose(reps["output"], net(X).numpy(), atol=1e-6)


class Windows(torch.nn.Module):
    """A layer that sees each sample's two halves as rows (windowed attention)."""

    def __init__(self):
        super().__init__()
        self.window = torch.nn.Linear(3, 3)
        self.head = torch.nn.Linear(6, 2)

    def forward(self, x):
        halves = self.window(x.reshape(-1, 3))  # (2 B, 3)
        return self.head(halves.reshape(len(x), 6))


def test_layers_whose_rows_are_not_the_samples_are_refused_or_left_out():
    """A windowed layer gave twice as many rows as samples, concatenated with
    the others' as if they were samples."""
    net, X = Windows().eval(), torch.randn(5, 6)
    with pytest.raises(
        ValueError, match="'window' gave 4 rows for a batch of 2 inputs"
    ):
        extract_representations(net, X, ["window", "head"], batch_size=2)
    with pytest.warns(UserWarning, match=r"layers \['window'\] are not the samples"):
        reps = extract_representations(net, X, "all", batch_size=2)
    assert list(reps) == ["input", "head", "output"]
    assert all(len(v) == 5 for v in reps.values())


class FreedThenReused(torch.nn.Module):
    """An activation freed by a copy, whose memory a linear layer's output may
    take: another tensor, of its shape, at its address."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv1d(16, 16, 1)
        self.act = torch.nn.Tanh()
        self.lin = torch.nn.Linear(16, 16)
        self.lin2 = torch.nn.Linear(16, 2)

    def forward(self, x):
        h = self.act(self.conv(x))  # (B, C=16, T=16)
        return self.lin2(self.lin(h.transpose(1, 2).contiguous())).mean(1)


def test_a_value_is_told_from_tensors_that_take_its_memory_after_it():
    """Told by where its data lay, the activation was taken for the tensor
    that the last linear layer read at its freed address: pooled over its
    channels, without a word, in 13 to 20 of 20 runs at 8 or 32 samples."""
    torch.manual_seed(0)
    net = FreedThenReused().eval()
    for n in 8, 32:
        X = torch.randn(n, 16, 16)
        with torch.no_grad():
            expected = net.act(net.conv(X)).mean(2).numpy()
        for _ in range(5):
            with pytest.warns(UserWarning, match=r"did not tell .*\['act'\]"):
                reps = extract_representations(net, X, ["act"], pool="mean")
            np.testing.assert_allclose(reps["act"], expected, atol=1e-6)


class TransposedInPlace(torch.nn.Module):
    """An activation turned into a sequence in place, then read as one."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv1d(16, 16, 1)
        self.act = torch.nn.Tanh()
        self.lin = torch.nn.Linear(16, 2)

    def forward(self, x):
        h = self.act(self.conv(x))  # (B, C=16, T=16)
        return self.lin(h.transpose_(1, 2)).mean(1)


class Dropped(torch.nn.Module):
    """PyTorch's MNIST example: a dropout after a functional pool."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 4, 3)
        self.dropout = torch.nn.Dropout(0.25)
        self.fc = torch.nn.Linear(36, 2)

    def forward(self, x):
        h = torch.nn.functional.max_pool2d(torch.relu(self.conv(x)), 2)
        return self.fc(torch.flatten(self.dropout(h), 1))


def test_a_value_read_after_an_in_place_change_of_shape_is_not_told_by_it():
    """The linear layer that read the activation transposed in place (the
    same object, of another shape) had it pooled over its channels."""
    torch.manual_seed(0)
    net = TransposedInPlace().eval()
    X = torch.randn(4, 16, 16)
    with torch.no_grad():
        expected = net.act(net.conv(X)).mean(2).numpy()
    with pytest.warns(UserWarning, match=r"did not tell .*\['act'\]"):
        reps = extract_representations(net, X, ["act"], pool="mean")
    np.testing.assert_allclose(reps["act"], expected, atol=1e-6)


def test_feature_maps_no_known_layer_reads_are_channels_first_without_a_word():
    torch.manual_seed(0)
    net = Dropped().eval()
    X = torch.randn(3, 1, 8, 8)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        reps = extract_representations(net, X, "all", pool="mean")
    with torch.no_grad():
        h = torch.nn.functional.max_pool2d(torch.relu(net.conv(X)), 2)
    np.testing.assert_allclose(reps["dropout"], h.mean((2, 3)).numpy(), atol=1e-6)


class ChannelsLastImages(torch.nn.Module):
    """Images given as (B, H, W, C), permuted before the first convolution."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3)
        self.fc = torch.nn.Linear(4, 2)

    def forward(self, x):
        return self.fc(self.conv(x.permute(0, 3, 1, 2)).mean((2, 3)))


def test_feature_maps_of_other_channels_than_known_layers_saw_are_named():
    """Images of channels last: none of the known layers saw a tensor of their
    shape or of their channels on axis 1: named (a rule of three axes only
    left them unnamed)."""
    net, X = ChannelsLastImages().eval(), torch.randn(5, 8, 9, 3)
    with pytest.warns(UserWarning, match=r"did not tell .*\['input'\]"):
        extract_representations(net, X, ["input"], pool="mean")


class CutToLongest(torch.nn.Module):
    """Token ids cut to their batch's longest sequence, embedded."""

    def __init__(self):
        super().__init__()
        self.embed = torch.nn.Embedding(10, 3, padding_idx=0)

    def forward(self, ids):
        return self.embed(ids[:, : int(ids.ne(0).sum(1).max())])


def test_unpooled_values_of_other_sizes_between_batches_are_explained():
    """numpy's 'could not broadcast' (before: 'all the input array dimensions
    except for the concatenation axis must match')."""
    ids = np.zeros((4, 6), dtype=np.int64)
    ids[:2, :2], ids[2:, :5] = 1, 2
    with pytest.raises(
        ValueError, match=r"'embed' gave \(15,\) values per input from input row 2"
    ):
        extract_representations(CutToLongest(), ids, ["embed"], "flatten", batch_size=2)
    pooled = extract_representations(CutToLongest(), ids, ["embed"], batch_size=2)
    assert pooled["embed"].shape == (4, 3)
