"""Relative sensitivity to diffeomorphisms and noise, layer by layer.

The definitions are on the theory page of the user guide.
"""

from .diagnostics import filter_laplacian_spectrum, shuffle_conv_input_channels
from .diffeo import (
    apply_diffeo,
    sample_diffeo,
    temperature_from_delta,
    temperature_range,
)
from .measure import DiffeoSensitivity, relative_sensitivity
from .noise import matched_noise
from .transform import DiffeoTransform

__all__ = [
    "DiffeoSensitivity",
    "DiffeoTransform",
    "apply_diffeo",
    "filter_laplacian_spectrum",
    "matched_noise",
    "relative_sensitivity",
    "sample_diffeo",
    "shuffle_conv_input_channels",
    "temperature_from_delta",
    "temperature_range",
]
