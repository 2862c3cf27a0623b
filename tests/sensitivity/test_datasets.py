"""The scale-detection task and its one-pixel perturbation."""

import numpy as np
import pytest
import torch

from sksim.datasets import (
    make_planted_modes,
    make_scale_detection,
    scale_detection_perturbation,
)


@pytest.mark.parametrize("norm", ["l2", "l1", "linf"])
def test_scale_detection_classes(norm):
    X, y = make_scale_detection(400, size=12, xi=6, gap=2, norm=norm, random_state=0)
    assert X.shape == (400, 1, 12, 12) and X.dtype == np.float32
    assert (y == 0).sum() == 200 and (y == 1).sum() == 200
    order = {"l2": 2, "l1": 1, "linf": np.inf}[norm]
    for image, label in zip(X[:, 0], y, strict=True):
        points = np.argwhere(image == 1)
        assert len(points) == 2 and image.sum() == 2
        d = np.linalg.norm(points[0] - points[1], ord=order)
        assert (d < 5) if label == 0 else (d >= 7)
    X2, y2 = make_scale_detection(400, size=12, xi=6, norm=norm, random_state=0)
    np.testing.assert_array_equal(X, X2)
    _, y3 = make_scale_detection(10, size=12, xi=6, shuffle=False, random_state=0)
    assert y3.tolist() == [0] * 5 + [1] * 5


def test_scale_detection_errors():
    with pytest.raises(ValueError, match="both classes exist"):
        make_scale_detection(10, size=8, xi=12)
    with pytest.raises(ValueError, match="norm must be one of"):
        make_scale_detection(10, norm="cosine")
    with pytest.raises(ValueError, match="n_samples must be an int >= 2"):
        make_scale_detection(1)
    with pytest.raises(ValueError, match="size must be an int >= 2"):
        make_scale_detection(10, size=1)
    with pytest.raises(ValueError, match="gap must be positive"):
        make_scale_detection(10, size=12, xi=6, gap=-2)


def test_planted_modes_errors():
    with pytest.raises(ValueError, match="n_samples_per_class >= 2; got 1"):
        make_planted_modes(1)
    with pytest.raises(ValueError, match="n_modes must be a positive int"):
        make_planted_modes(10, n_modes=0)
    with pytest.raises(ValueError, match="no class to draw"):
        make_planted_modes(10, n_single=0, n_multi=0)
    # a zero scale divided by a zero spread (NaN inputs with a RuntimeWarning),
    # NaN or a negative scale were accepted
    for scale in (0.0, -0.2, float("nan")):
        with pytest.raises(ValueError, match="mode_scale must be a finite positive"):
            make_planted_modes(10, n_modes=1, mode_scale=scale)
    with pytest.raises(ValueError, match="class_separation must be a finite non-"):
        make_planted_modes(10, class_separation=float("nan"))
    X, y, multimodal = make_planted_modes(1, n_multi=0, random_state=0)
    assert X.shape == (1, 6) and np.isfinite(X).all()


def test_perturbation_moves_each_pixel_by_one():
    X, _ = make_scale_detection(300, size=10, xi=5, random_state=0)
    Xm = scale_detection_perturbation(X, random_state=1)
    for before, after in zip(X[:, 0], Xm[:, 0], strict=True):
        p, q = np.argwhere(before != 0), np.argwhere(after != 0)
        assert len(q) == 2 and after.sum() == before.sum()
        # a matching moves each point by exactly one 4-neighbour step
        steps = [np.abs(p - q).sum(1), np.abs(p - q[::-1]).sum(1)]
        assert any((s == 1).all() for s in steps)
    t = scale_detection_perturbation(torch.tensor(X[:5]), random_state=1)
    assert isinstance(t, torch.Tensor)
    np.testing.assert_array_equal(t.numpy(), Xm[:5])
    with pytest.raises(ValueError, match="Image 0 has 0 non-zero pixels"):
        scale_detection_perturbation(np.zeros((2, 1, 5, 5)))
