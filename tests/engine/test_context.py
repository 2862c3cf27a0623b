"""Process-wide settings of torch that the engine changes inside its blocks."""

import torch

from sksim._engine.context import math_attention


def _flags():
    cuda = torch.backends.cuda
    return (
        cuda.flash_sdp_enabled(),
        cuda.mem_efficient_sdp_enabled(),
        cuda.math_sdp_enabled(),
        cuda.cudnn_sdp_enabled(),
    )


def test_math_attention_blocks_of_two_threads_restore_the_flags():
    """Blocks overlapping in time, as two threads' networks do, end in either
    order: the flags stay set until the last ends, then are as before."""
    before = _flags()
    first, second = math_attention(), math_attention()
    first.__enter__()
    inside = _flags()
    assert inside != before and inside[2]  # the math kernel alone
    second.__enter__()
    first.__exit__(None, None, None)  # the first thread ends first
    assert _flags() == inside
    second.__exit__(None, None, None)
    assert _flags() == before
    with math_attention():  # and again
        assert _flags() == inside
    assert _flags() == before
