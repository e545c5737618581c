"""mwnet-sk: Meta-Weight-Net (Shu et al., NeurIPS 2019) as a scikit-learn / skorch estimator."""

from .baselines import PlainClassifier, plain_counterpart
from .core.weight_net import ClassAwareWeightNet, PerClassWeightNet, WeightFunction, WeightNet
from .estimator import MetaWeightClassifier, TrainingDivergedError
from .label_issues import find_label_issues
from .refit import MetaWeightRefit

__version__ = "0.1.0"

__all__ = [
    "MetaWeightClassifier",
    "PlainClassifier",
    "plain_counterpart",
    "MetaWeightRefit",
    "find_label_issues",
    "TrainingDivergedError",
    "WeightNet",
    "ClassAwareWeightNet",
    "PerClassWeightNet",
    "WeightFunction",
    "__version__",
]
