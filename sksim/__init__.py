"""sksim: input similarity from a neural network's perspective, for scikit-learn."""

from ._engine.normalize import DeadInputWarning, SingularJacobianGramWarning
from .kernel import (
    NetworkSimilarityKernel,
    gradient_features,
    network_similarity,
    similarity_to_distance,
)

__version__ = "0.1.0.dev0"

__all__ = [
    "DeadInputWarning",
    "NetworkSimilarityKernel",
    "SingularJacobianGramWarning",
    "gradient_features",
    "network_similarity",
    "similarity_to_distance",
]
