"""mwnet-sk: Meta-Weight-Net (Shu et al., NeurIPS 2019) as a scikit-learn / skorch estimator."""

from .estimator import MetaWeightClassifier, TrainingDivergedError
from .core.weight_net import WeightFunction, WeightNet

__version__ = "0.1.0"

__all__ = ["MetaWeightClassifier", "TrainingDivergedError", "WeightNet", "WeightFunction", "__version__"]
