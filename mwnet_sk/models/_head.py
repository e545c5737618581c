"""The output contract every model here keeps."""

from __future__ import annotations

import torch


class FcHead:
    """Mixin: the logits are exactly ``self.fc(self.forward_features(x))``.

    The estimator's ``meta_params="last"`` mode relies on this: when the model's output is the
    output of its last layer, the meta-gradient's JVP runs through that layer alone.
    Subclasses define ``forward_features`` and a final linear layer ``fc``.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits, ``self.fc(self.forward_features(x))``."""
        return self.fc(self.forward_features(x))
