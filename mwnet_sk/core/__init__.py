"""The method itself, in plain PyTorch: no skorch, no numpy labels.

* :mod:`mwnet_sk.core.bilevel`: one Meta-Weight-Net step (Algorithm 1) and its meta-gradients;
* :mod:`mwnet_sk.core.weight_net`: the weighting function ``V(loss; Θ)`` and its fitted form;
* :mod:`mwnet_sk.core._fast_jvp`: exact, cheaper forward-mode rules for the JVP;
* :mod:`mwnet_sk.core.prior`: the class-prior correction of predictions (``target_prior``).
"""
