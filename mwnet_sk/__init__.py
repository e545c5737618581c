"""mwnet-sk: Meta-Weight-Net (Shu et al., NeurIPS 2019) as a scikit-learn / skorch estimator."""

from .baselines import PlainClassifier, plain_counterpart
from .core.weight_net import ClassAwareWeightNet, WeightFunction, WeightNet
from .estimator import MetaWeightClassifier, TrainingDivergedError

__version__ = "0.1.0"

__all__ = [
    "MetaWeightClassifier",
    "PlainClassifier",
    "plain_counterpart",
    "TrainingDivergedError",
    "WeightNet",
    "ClassAwareWeightNet",
    "WeightFunction",
    "__version__",
]
