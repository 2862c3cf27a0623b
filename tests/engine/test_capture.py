"""Layer capture, layer type by layer type, against the brute-force oracle."""

import numpy as np
import pytest
import torch
from _architectures import (
    LAYER_CASES,
    ResNet18Logits,
    family_case,
    layer_case,
    oracle_jacobians,
    oracle_kernel,
)
from _engine_helpers import ntk_blocks
from torch import nn

from sksim import network_similarity
from sksim._engine import capture
from sksim._engine.capture import plan_layers
from sksim._engine.jacobian import JacobianEngine


@pytest.mark.parametrize("output", ["logits", 1])
@pytest.mark.parametrize("name", LAYER_CASES)
def test_ntk_blocks_match_oracle(name, output):
    module, X = layer_case(name)
    J = oracle_jacobians(module, X, output=output)
    engine = JacobianEngine(module, output=output, batch_size=4)
    K, G_x, G_y = ntk_blocks(engine, X[:4], X)
    np.testing.assert_allclose(
        K, np.einsum("adp,bep->abde", J[:4], J), rtol=1e-9, atol=1e-12
    )
    np.testing.assert_allclose(
        G_y, np.einsum("adp,aep->ade", J, J), rtol=1e-9, atol=1e-12
    )


def test_a_global_hook_that_changes_some_outputs_gets_the_fallback():
    """A clamp on some samples' outputs went unseen by the check on the first
    two samples: kernels 0.02 off, or exact with the clamped rows first."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 3)).double()

    def clamp_first_layer(layer, inputs, out):
        return out.clamp(max=1.0) if layer is net[0] else None

    X = 0.3 * torch.randn(8, 4, dtype=torch.float64)
    X[4:] *= 8  # rows 4 to 7 meet the clamp
    handle = nn.modules.module.register_module_forward_hook(clamp_first_layer)
    try:
        expected = oracle_kernel(*[oracle_jacobians(net, X)] * 2, "cosine")
        with pytest.warns(UserWarning, match="A global forward hook is registered"):
            K = network_similarity(net, X, batch_size=8)
    finally:
        handle.remove()
    np.testing.assert_allclose(K, expected, atol=1e-12)


def test_plans_use_factors_where_supported():
    for name in LAYER_CASES[:-1]:
        module, X = layer_case(name)
        layers, fallback = plan_layers(module, dict(module.named_parameters()))
        assert fallback == [], name
        plan = JacobianEngine(module)._layer_plan(X)  # probe too
        assert plan.n_fallback == 0, name
    module, _ = layer_case("custom")
    _, fallback = plan_layers(module, dict(module.named_parameters()))
    assert fallback == ["scale", "bilinear.weight", "bilinear.bias"]


def test_transformers_models_are_factorised_throughout():
    bert, ids = family_case("bert", 3)
    gpt2, tokens = family_case("gpt2", 3)
    resnet = ResNet18Logits().eval()
    images = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    for module, X in ((bert, ids), (gpt2, tokens), (resnet.double(), images)):
        plan = JacobianEngine(module)._layer_plan(X)
        assert plan.jacobian is None and plan.n_fallback == 0


@pytest.mark.parametrize("tie, tied", [("embedding", "emb"), ("functional", "mix")])
def test_weights_used_outside_their_calls_fall_back(tie, tied):
    module, X = family_case(f"tied_{tie}", 3)
    plan = JacobianEngine(module)._layer_plan(X)
    assert set(plan.layers) == {"emb", "mix", "out"} - {tied}
    assert plan.n_fallback == sum(p.numel() for p in getattr(module, tied).parameters())


class _Cube(torch.autograd.Function):
    """Python control flow on the gradient: vmap cannot batch this backward."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x**3

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        if bool((grad == 0).all()):
            return torch.zeros_like(x)
        return 3 * x**2 * grad


def test_output_rows_fall_back_to_one_backward_each():
    torch.manual_seed(0)
    first, head = nn.Linear(4, 5).double(), nn.Linear(5, 3).double()

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.first, self.head = first, head

        def forward(self, x):
            return self.head(_Cube.apply(self.first(x)))

    module = Net()
    X = torch.randn(5, 4, dtype=torch.float64)
    J = oracle_jacobians(module, X)
    K, _, _ = ntk_blocks(JacobianEngine(module), X)
    np.testing.assert_allclose(K, np.einsum("adp,bep->abde", J, J), rtol=1e-9)


@pytest.mark.parametrize(
    "kernel, dilation, padding, stride",
    [
        ((3, 3), (1, 1), (0, 0), (1, 1)),
        ((3, 2), (2, 1), (1, 2), (2, 1)),
        ((1, 4), (1, 2), (0, 3), (1, 3)),
    ],
)
def test_strided_patches_equal_unfold(kernel, dilation, padding, stride):
    x = torch.randn(3, 2, 11, 13, dtype=torch.float64)
    expected = torch.nn.functional.unfold(x, kernel, dilation, padding, stride)
    patches = capture._strided_patches(x, kernel, dilation, padding, stride)
    torch.testing.assert_close(patches, expected.transpose(1, 2), rtol=0, atol=0)
