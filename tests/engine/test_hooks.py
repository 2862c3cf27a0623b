"""ForwardHooks: the one forward-hook utility of the engine and the layer outputs."""

import gc
import weakref

import pytest
import torch

from sksim._engine.capture import LayerCapture
from sksim._engine.hooks import ForwardHooks
from sksim._layers import layer_outputs


def _net():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh())


def test_hooks_run_inside_the_block_only_and_may_replace_outputs():
    net, x = _net(), torch.ones(2, 3)
    seen = []

    def doubled(module, args, output):
        seen.append(module)
        return 2 * output

    plain = net(x)
    with ForwardHooks([(net[0], doubled)]):
        hooked = net(x)
    torch.testing.assert_close(hooked, torch.tanh(2 * net[0](x)))
    assert seen == [net[0]]
    torch.testing.assert_close(net(x), plain)
    assert not net[0]._forward_hooks


def test_hooks_are_removed_when_the_block_raises():
    net = _net()
    with pytest.raises(RuntimeError, match="inside"):
        with ForwardHooks([(net[0], lambda *a: None), (net[1], lambda *a: None)]):
            assert len(net[0]._forward_hooks) == len(net[1]._forward_hooks) == 1
            raise RuntimeError("inside")
    assert not net[0]._forward_hooks and not net[1]._forward_hooks


def test_engine_capture_and_layer_outputs_leave_no_hook_behind():
    net, x = _net(), torch.ones(2, 3)
    layers = {"0": (net[0], ["weight", "bias"])}
    with LayerCapture(layers) as capture:
        net(x)
    ((h, z),) = capture.calls["0"]
    torch.testing.assert_close(h, x)
    torch.testing.assert_close(z, net[0](x))
    (reps,) = layer_outputs(net, [x], ["0", "1"])
    torch.testing.assert_close(reps["1"], torch.tanh(net[0](x)))
    assert not net[0]._forward_hooks and not net[1]._forward_hooks


def test_a_capture_and_what_it_recorded_are_freed_without_the_collector():
    """The hooks close over the capture: kept after the block, they made a cycle
    that held the batch's activations and autograd graph until a collection."""
    net, x = _net(), torch.ones(2, 3)
    layers = {"0": (net[0], ["weight", "bias"])}
    gc.disable()
    try:
        with torch.enable_grad(), LayerCapture(layers) as capture:
            net(x)
        output = weakref.ref(capture.calls["0"][0][1])
        del capture
        assert output() is None
    finally:
        gc.enable()
