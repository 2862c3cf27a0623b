"""sksim: input similarity from a neural network's perspective, for scikit-learn."""

from ._engine.finite import NonFiniteNetworkError
from ._engine.flags import DeadInputWarning, SingularJacobianGramWarning
from .denoising import (
    IllConditionedWeightsWarning,
    NoiseEstimateWarning,
    SelfDenoisingAnalysis,
)
from .density import FlooredDensityWarning, GradientDensityEstimator
from .gaussian_process import NetworkKernel
from .kernel import (
    NetworkSimilarityKernel,
    gradient_features,
    network_similarity,
    similarity_to_distance,
)
from .label_issues import LabelIssueDetector
from .neighbors import NetworkNeighbors
from .regularized import (
    SimilarityRegularizedClassifier,
    SimilarityRegularizedNet,
    SimilarityRegularizedRegressor,
    ValidPairSimilarity,
    with_pairs,
)
from .sensitivity import DiffeoSensitivity, DiffeoTransform, relative_sensitivity

__version__ = "0.1.0.dev0"

__all__ = [
    "DeadInputWarning",
    "DiffeoSensitivity",
    "DiffeoTransform",
    "FlooredDensityWarning",
    "GradientDensityEstimator",
    "IllConditionedWeightsWarning",
    "NoiseEstimateWarning",
    "LabelIssueDetector",
    "NetworkKernel",
    "NetworkNeighbors",
    "NetworkSimilarityKernel",
    "NonFiniteNetworkError",
    "SelfDenoisingAnalysis",
    "SimilarityRegularizedClassifier",
    "SimilarityRegularizedNet",
    "SimilarityRegularizedRegressor",
    "SingularJacobianGramWarning",
    "ValidPairSimilarity",
    "gradient_features",
    "network_similarity",
    "relative_sensitivity",
    "similarity_to_distance",
    "with_pairs",
]
