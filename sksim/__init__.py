"""sksim: input similarity from a neural network's perspective, for scikit-learn."""

from ._engine.normalize import DeadInputWarning, SingularJacobianGramWarning
from .denoising import IllConditionedWeightsWarning, SelfDenoisingAnalysis
from .density import GradientDensityEstimator
from .kernel import (
    NetworkSimilarityKernel,
    gradient_features,
    network_similarity,
    similarity_to_distance,
)
from .neighbors import NetworkNeighbors

__version__ = "0.1.0.dev0"

__all__ = [
    "DeadInputWarning",
    "GradientDensityEstimator",
    "IllConditionedWeightsWarning",
    "NetworkNeighbors",
    "NetworkSimilarityKernel",
    "SelfDenoisingAnalysis",
    "SingularJacobianGramWarning",
    "gradient_features",
    "network_similarity",
    "similarity_to_distance",
]
