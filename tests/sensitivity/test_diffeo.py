"""Max-entropy diffeomorphisms against closed forms and brute-force oracles."""

import math

import numpy as np
import pytest
import torch

from sksim.sensitivity import (
    apply_diffeo,
    sample_diffeo,
    temperature_from_delta,
    temperature_range,
)
from sksim.sensitivity.diffeo import kept_modes


def _mode_sum(cutoff):
    return sum(
        1.0 / (i * i + j * j)
        for i in range(1, cutoff + 1)
        for j in range(1, cutoff + 1)
        if i * i + j * j < (cutoff + 0.5) ** 2
    )


def test_kept_modes_follow_the_cutoff_rule():
    assert sorted(map(tuple, kept_modes(3))) == [
        (1, 1),
        (1, 2),
        (1, 3),
        (2, 1),
        (2, 2),
        (3, 1),
    ]
    assert sorted(kept_modes(2, ndim=1).ravel()) == [1, 2]
    assert len(kept_modes(1)) == 1


@pytest.mark.parametrize(
    "n, cutoff, temperature",
    [
        (16, 3, 0.004),
        (16, 5, 0.001),
        (24, 2, 0.01),
        (12, 4, 0.02),
    ],
)
def test_mean_squared_displacement_matches_closed_form(n, cutoff, temperature):
    # Pixel k sits at u = k/(n-1); the average of sin^2(i pi k/(n-1)) over the
    # n pixels is (n-1)/(2n), so the pixel-averaged E|tau|^2 is
    # (T n^2/2) S ((n-1)/n)^2 with S = sum_kept 1/(i^2+j^2); the theory page's
    # (T n^2/2) S is its continuum limit (each sin^2 averaging to 1/2).
    dx, dy = sample_diffeo(
        n, cutoff, temperature=temperature, n_fields=20000, random_state=0
    )
    measured = float((dx**2 + dy**2).mean())
    spec = temperature * n**2 / 2 * _mode_sum(cutoff)
    assert measured == pytest.approx(spec * ((n - 1) / n) ** 2, rel=0.02)
    # Linear in T: same seed, four times the temperature, twice the field.
    dx4, _ = sample_diffeo(
        n, cutoff, temperature=4 * temperature, n_fields=20000, random_state=0
    )
    np.testing.assert_allclose(dx4, 2 * dx, rtol=1e-12, atol=1e-15)


def test_fields_have_the_covariance_of_their_sine_series():
    """tau_a(r, k) = n sum_ij C^a_ij sin(i pi u_k) sin(j pi u_r), u = k / (n - 1),
    over the kept modes, C^a_ij ~ N(0, T / (i^2 + j^2)) independent: the
    covariance of two pixels is n^2 T sum_ij s_ij(p) s_ij(q) / (i^2 + j^2), and dx
    and dy are uncorrelated. The pixel-averaged variance alone passed doubled
    wave numbers, dx equal to dy, and the column's sine for the row's."""
    n, cutoff, temperature, n_fields = 6, 3, 0.01, 60000
    u = np.arange(n) / (n - 1)
    expected = np.zeros((n * n, n * n))
    for i in range(1, cutoff + 1):
        for j in range(1, cutoff + 1):
            if i * i + j * j < (cutoff + 0.5) ** 2:
                s = np.outer(np.sin(j * math.pi * u), np.sin(i * math.pi * u)).ravel()
                expected += np.outer(s, s) / (i * i + j * j)
    expected *= n * n * temperature
    dx, dy = sample_diffeo(
        n, cutoff, temperature=temperature, n_fields=n_fields, random_state=0
    )
    fx, fy = dx.reshape(n_fields, -1), dy.reshape(n_fields, -1)
    scale = expected.max()  # the sampling error is about 0.017 of it
    for a, b, want in ((fx, fx, expected), (fy, fy, expected), (fx, fy, 0.0)):
        assert np.abs(a.T @ b / n_fields - want).max() < 0.05 * scale


def test_signal_fields_match_their_delta():
    n, delta = 20, 1.5
    dx = sample_diffeo(n, 3, delta=delta, n_fields=20000, ndim=1, random_state=0)
    assert dx.shape == (20000, n)
    # E tau^2 = T n^2/2 sum 1/i^2 = delta^2 in the continuum; one sine per mode,
    # so a factor (n-1)/n on the pixel grid
    assert float((dx**2).mean()) == pytest.approx(delta**2 * (n - 1) / n, rel=0.02)


def test_fields_vanish_on_the_border_and_at_zero_temperature():
    dx, dy = sample_diffeo(10, 4, delta=2.0, n_fields=50, random_state=1)
    for field in (dx, dy):
        for border in (field[:, 0], field[:, -1], field[:, :, 0], field[:, :, -1]):
            assert np.abs(border).max() < 1e-12
        assert np.abs(field[:, 1:-1, 1:-1]).max() > 0.1
    zero_x, zero_y = sample_diffeo(10, 3, temperature=0.0, random_state=1)
    assert not zero_x.any() and not zero_y.any()
    x = np.random.RandomState(0).rand(3, 2, 10, 10)
    for interp in ("linear", "nearest"):
        np.testing.assert_array_equal(apply_diffeo(x, zero_x, zero_y, interp), x)


def test_temperature_formulas():
    n, c = 32, 3
    assert temperature_from_delta(1.0, c, n) == pytest.approx(
        4 / (math.pi * n**2 * math.log(c)), rel=1e-14
    )
    t_min, t_max = temperature_range(n, c)
    # T_min is the temperature of half a pixel, T_max of n / (pi c) pixels
    assert t_min == pytest.approx(temperature_from_delta(0.5, c, n), rel=1e-14)
    assert t_max == pytest.approx(
        temperature_from_delta(n / (math.pi * c), c, n), rel=1e-14
    )
    # delta=None path: same fields as the explicit temperature
    a = sample_diffeo(n, c, delta=1.0, random_state=3)[0]
    b = sample_diffeo(
        n, c, temperature=temperature_from_delta(1.0, c, n), random_state=3
    )[0]
    np.testing.assert_array_equal(a, b)


def _shift_oracle(x, sx, sy):
    n = x.shape[-1]
    out = np.empty_like(x)
    for r in range(n):
        for k in range(n):
            out[..., r, k] = x[
                ..., min(max(r - sy, 0), n - 1), min(max(k - sx, 0), n - 1)
            ]
    return out


@pytest.mark.parametrize("interp", ["linear", "nearest"])
@pytest.mark.parametrize("sx, sy", [(1, 0), (0, -2), (3, 2), (-1, 1)])
def test_integer_shifts_are_exact(interp, sx, sy):
    x = np.random.RandomState(0).rand(2, 3, 7, 7)
    out = apply_diffeo(
        x, np.full((7, 7), float(sx)), np.full((7, 7), float(sy)), interp
    )
    np.testing.assert_array_equal(out, _shift_oracle(x, sx, sy))
    signal = x[:, 0, 0]
    out1 = apply_diffeo(signal, np.full(7, float(sx)), interp=interp)
    expected = signal[:, np.clip(np.arange(7) - sx, 0, 6)]
    np.testing.assert_array_equal(out1, expected)


def _bilinear_oracle(image, dx, dy):
    n = image.shape[-1]
    out = np.empty_like(image)
    for r in range(n):
        for k in range(n):
            sr = min(max(r - dy[r, k], 0.0), n - 1.0)
            sc = min(max(k - dx[r, k], 0.0), n - 1.0)
            r0, c0 = min(int(np.floor(sr)), n - 2), min(int(np.floor(sc)), n - 2)
            fr, fc = sr - r0, sc - c0
            out[..., r, k] = (
                (1 - fr) * (1 - fc) * image[..., r0, c0]
                + (1 - fr) * fc * image[..., r0, c0 + 1]
                + fr * (1 - fc) * image[..., r0 + 1, c0]
                + fr * fc * image[..., r0 + 1, c0 + 1]
            )
    return out


def _gaussian_oracle(image, dx, dy, sigma):
    n = image.shape[-1]
    grid = np.arange(n)
    out = np.empty_like(image)
    for r in range(n):
        for k in range(n):
            sr = min(max(r - dy[r, k], 0.0), n - 1.0)
            sc = min(max(k - dx[r, k], 0.0), n - 1.0)
            wr = np.exp(-((sr - grid) ** 2) / (2 * sigma**2))
            wc = np.exp(-((sc - grid) ** 2) / (2 * sigma**2))
            w = np.outer(wr / wr.sum(), wc / wc.sum())
            out[..., r, k] = (image * w).sum((-2, -1))
    return out


def test_gaussian_interpolation_is_the_authors_by_default():
    """Its width is that of Petrini et al.'s code, 0.4715 pixels (0.4 before)."""
    rng = np.random.RandomState(0)
    x = rng.rand(2, 7, 7)
    dx, dy = sample_diffeo(7, 3, delta=1.0, n_fields=2, random_state=1)
    deformed = apply_diffeo(x, dx, dy, "gaussian")
    for b in range(2):
        np.testing.assert_allclose(
            deformed[b], _gaussian_oracle(x[b], dx[b], dy[b], 0.4715), rtol=1e-10
        )


def test_random_fields_against_brute_force_interpolation():
    rng = np.random.RandomState(0)
    x = rng.rand(3, 2, 9, 9)
    dx, dy = sample_diffeo(9, 3, delta=2.0, n_fields=3, random_state=1)
    dx[0, 2, 3] = 30.0  # far outside: clamped
    linear = apply_diffeo(x, dx, dy, "linear")
    gaussian = apply_diffeo(x, dx, dy, "gaussian", sigma=0.6)
    nearest = apply_diffeo(x, dx, dy, "nearest")
    for b in range(3):
        np.testing.assert_allclose(
            linear[b], _bilinear_oracle(x[b], dx[b], dy[b]), rtol=1e-12, atol=1e-12
        )
        np.testing.assert_allclose(
            gaussian[b],
            _gaussian_oracle(x[b], dx[b], dy[b], 0.6),
            rtol=1e-10,
            atol=1e-12,
        )
        rows = np.clip(np.round(np.arange(9)[:, None] - dy[b]), 0, 8).astype(int)
        cols = np.clip(np.round(np.arange(9)[None, :] - dx[b]), 0, 8).astype(int)
        np.testing.assert_array_equal(nearest[b], x[b][:, rows, cols])


def test_one_field_for_all_images_channels_and_tensors():
    x = torch.rand(4, 3, 8, 8, dtype=torch.float32)
    dx, dy = sample_diffeo(8, 3, delta=1.0, random_state=0)
    out = apply_diffeo(x, dx, dy)
    assert isinstance(out, torch.Tensor) and out.dtype == torch.float32
    for b in range(4):
        for c in range(3):
            single = apply_diffeo(x[b, c].numpy()[None].astype(float), dx, dy)[0]
            np.testing.assert_allclose(out[b, c].numpy(), single, rtol=1e-5, atol=1e-6)
    # (n, H, W) input, integer input cast to float64
    ints = np.arange(2 * 64).reshape(2, 8, 8)
    out_int = apply_diffeo(ints, dx, dy)
    assert out_int.dtype == np.float64
    np.testing.assert_allclose(out_int, apply_diffeo(ints.astype(float), dx, dy))


def test_apply_diffeo_errors():
    x = np.zeros((2, 5, 6))
    with pytest.raises(
        ValueError, match=r"got samples of shape \(5, 6\): if these are"
    ):
        apply_diffeo(x, np.zeros((6, 6)), np.zeros((6, 6)))
    # read as 8 channels of 8 x 3 images: "square" was all it said
    with pytest.raises(ValueError, match=r"channel-last images \(8, 8, 3\): put the"):
        apply_diffeo(np.zeros((2, 8, 8, 3)), np.zeros((8, 8)), np.zeros((8, 8)))
    x = np.zeros((2, 5, 5))
    with pytest.raises(ValueError, match="Displacement fields must have shape"):
        apply_diffeo(x, np.zeros((4, 4)), np.zeros((4, 4)))
    with pytest.raises(ValueError, match="Displacement fields must have shape"):
        apply_diffeo(x, np.zeros((3, 5, 5)), np.zeros((3, 5, 5)))
    with pytest.raises(ValueError, match="Images need both dx and dy"):
        apply_diffeo(x, np.zeros((5, 5)))
    # one image (5, 5) is two signals: dy was dropped, rows warped in 1-D
    with pytest.raises(ValueError, match=r"signals \(n, L\), which take dx alone"):
        apply_diffeo(x[0], np.zeros((5, 5)), np.zeros((5, 5)))
    with pytest.raises(ValueError, match="interp must be one of"):
        apply_diffeo(x, np.zeros((5, 5)), np.zeros((5, 5)), interp="cubic")
    with pytest.raises(ValueError, match="got an array with 5 dimensions"):
        apply_diffeo(np.zeros((1, 1, 1, 5, 5)), np.zeros((5, 5)), np.zeros((5, 5)))
    for sigma in (-1, 0):  # 0 gave NaN images without a word
        with pytest.raises(ValueError, match="sigma must be a finite positive number"):
            apply_diffeo(x, np.zeros((5, 5)), np.zeros((5, 5)), "gaussian", sigma)
    field = np.zeros((5, 5))
    field[2, 3] = np.nan  # torch's indexing error, an index of -9e18
    with pytest.raises(ValueError, match="Displacement fields hold NaN or infinity"):
        apply_diffeo(x, np.zeros((5, 5)), field)


def test_sampler_errors():
    with pytest.raises(ValueError, match="cutoff must be a positive int"):
        sample_diffeo(8, cutoff=0)
    with pytest.raises(ValueError, match="n \\(the image side in pixels\\)"):
        sample_diffeo(0)
    with pytest.raises(ValueError, match="ndim must be 1"):
        sample_diffeo(8, ndim=3)
    with pytest.raises(ValueError, match="delta must be a finite non-negative number"):
        sample_diffeo(8, delta=-1.0)
    for temperature in (np.nan, np.inf):  # inf gave NaN fields
        with pytest.raises(ValueError, match="temperature must be a finite non-neg"):
            sample_diffeo(8, temperature=temperature)
    with pytest.raises(ValueError, match="its temperature overflows"):
        sample_diffeo(8, delta=1e200)
    with pytest.raises(ValueError, match="n_fields must be a positive int"):
        sample_diffeo(8, n_fields=0)
    with pytest.raises(ValueError, match="needs cutoff >= 2"):
        temperature_from_delta(1.0, 1, 8)
    with pytest.raises(ValueError, match="temperature_range needs cutoff >= 2"):
        temperature_range(8, 1)
    dx, _ = sample_diffeo(8, cutoff=1, temperature=0.01, random_state=0)
    assert np.abs(dx).max() > 0


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_images_are_deformed_as_float32_ones(dtype):
    """Pixel coordinates in half precision rounded past 256 (an index out of
    bounds at side 300 in bfloat16, errors of 3 at 200)."""
    x = torch.randn(2, 300, 300, generator=torch.Generator().manual_seed(0))
    dx, dy = sample_diffeo(300, delta=3.0, n_fields=2, random_state=0)
    exact = apply_diffeo(x.double(), dx, dy)
    half = apply_diffeo(x.to(dtype), dx, dy)
    assert half.dtype == dtype
    rounding = (exact.to(dtype).double() - exact).abs().max()
    assert (half.double() - exact).abs().max() <= 2 * rounding


def test_the_border_does_not_move_at_all():
    """sin(k pi) is 1e-16 in floating point: a 2-value signal moved by 3e-16,
    and R was a ratio of rounding."""
    for n in (2, 9, 32):
        dx, dy = sample_diffeo(n, delta=2.0, n_fields=3, random_state=0)
        for field in (dx, dy):
            assert not field[:, [0, -1], :].any() and not field[:, :, [0, -1]].any()
        signal = sample_diffeo(n, delta=2.0, ndim=1, n_fields=3, random_state=0)
        assert not signal[:, [0, -1]].any()


def test_flipped_arrays_are_deformed_as_their_copies():
    x = np.random.RandomState(0).rand(3, 2, 8, 8)
    dx, dy = sample_diffeo(8, n_fields=3, random_state=0)
    flipped = np.flip(x, -1)
    np.testing.assert_array_equal(
        apply_diffeo(flipped, np.flip(dx, -1), dy),
        apply_diffeo(flipped.copy(), np.flip(dx, -1).copy(), dy),
    )


def test_gaussian_interpolation_in_chunks_of_samples_is_the_whole(monkeypatch):
    """Its weights take n^3 values per image: 14 GB for 100 RGB 64 x 64
    images at once."""
    from sksim.sensitivity import diffeo

    x = np.random.RandomState(0).rand(5, 3, 9, 9)
    dx, dy = sample_diffeo(9, n_fields=5, random_state=0)
    whole = apply_diffeo(x, dx, dy, interp="gaussian")
    monkeypatch.setattr(diffeo, "GAUSSIAN_ELEMENTS", 2 * 9**3)  # 2 images a chunk
    np.testing.assert_allclose(apply_diffeo(x, dx, dy, interp="gaussian"), whole)
    shared = apply_diffeo(x, dx[0], dy[0], interp="gaussian")  # one field for all
    monkeypatch.setattr(diffeo, "GAUSSIAN_ELEMENTS", 2**20)
    np.testing.assert_allclose(shared, apply_diffeo(x, dx[0], dy[0], interp="gaussian"))


def test_deformations_in_chunks_of_samples_are_the_whole(monkeypatch):
    """The interpolation's temporaries of a whole probe set took ten times it
    (386 MiB for 37.5 MiB of images)."""
    from sksim.sensitivity import diffeo

    x = torch.as_tensor(np.random.RandomState(0).rand(5, 3, 9, 9))
    for interp in ("linear", "nearest", "gaussian"):
        whole = diffeo.deform(x, 1.0, 3, interp, np.random.RandomState(0))
        monkeypatch.setattr(diffeo, "DEFORMED_ELEMENTS", 2 * x[0].numel())
        parts = diffeo.deform(x, 1.0, 3, interp, np.random.RandomState(0))
        monkeypatch.undo()
        torch.testing.assert_close(parts, whole, rtol=1e-12, atol=1e-12)
        assert not torch.equal(whole, x)
