"""Which classifier parameters take the virtual step, their step sizes, and the head shortcut.

Used by :class:`mwnet_sk.core.bilevel.BilevelStep`; pure torch.
"""

from __future__ import annotations

from torch import nn

__all__ = ["select_parameter_names", "parameter_groups", "find_head", "has_dropout"]


def select_parameter_names(module: nn.Module, meta_params) -> list[str]:
    """Resolve ``meta_params`` ("all", "last", or names) to trainable parameter names of ``module``.

    ``"last"`` is every trainable parameter of the last registered submodule that owns
    trainable parameters directly (the classifier head in most architectures). Frozen
    parameters (``requires_grad=False``, e.g. set by skorch's ``Freezer``) never take the step.
    """
    trainable = [n for n, p in module.named_parameters() if p.requires_grad]
    if not trainable:
        raise ValueError("the module has no trainable parameters (all have requires_grad=False)")
    if meta_params is None or (isinstance(meta_params, str) and meta_params == "all"):
        return trainable
    if isinstance(meta_params, str) and meta_params == "last":
        owner = None
        for mod_name, mod in module.named_modules():
            if any(p.requires_grad for p in mod.parameters(recurse=False)):
                owner = mod_name
        # a tied parameter (e.g. an output layer sharing the embedding's weight) is listed by
        # named_parameters() once, under its first name: use that name
        canonical = {id(p): n for n, p in module.named_parameters()}
        return [canonical[id(p)] for p in module.get_submodule(owner).parameters(recurse=False) if p.requires_grad]
    if isinstance(meta_params, str):
        raise ValueError(f"meta_params must be 'all', 'last' or a list of parameter names, got {meta_params!r}")
    try:
        names = list(meta_params)
    except TypeError:
        names = None
    if names is None or not all(isinstance(n, str) for n in names):
        raise ValueError(f"meta_params must be 'all', 'last' or a list of parameter names, got {meta_params!r}")
    if not names:
        raise ValueError("meta_params is an empty list")
    unknown = [n for n in names if n not in trainable]
    if unknown:
        raise ValueError(
            f"meta_params names {unknown} are not trainable parameters of the module; available: {trainable}"
        )
    return names


def parameter_groups(optimizer, names, params) -> list[int]:
    """The optimizer parameter group of each virtual parameter (its lr is the step size α)."""
    index = {id(p): g for g, group in enumerate(optimizer.param_groups) for p in group["params"]}
    groups = []
    for name, p in zip(names, params):
        if id(p) not in index:
            raise ValueError(
                f"parameter {name!r} takes the virtual step but is not updated by the classifier optimizer, "
                "so its step size α is undefined"
            )
        groups.append(index[id(p)])
    return groups


def has_dropout(module: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.dropout._DropoutNd) for m in module.modules())


def find_head(module: nn.Module, virtual_names):
    """(name, submodule) whose parameters are exactly the virtual ones (e.g. ``"fc"``), or (None, None).

    When only such a head takes the virtual step and its output is the model's output, the
    JVP and finite differences run the head alone on its captured input. A head with dropout
    inside is not used: its masks would not be replayed.
    """
    if len(virtual_names) == len([p for p in module.parameters() if p.requires_grad]) and \
            len(virtual_names) == len(list(module.parameters())):
        return None, None
    owners = {n.rsplit(".", 1)[0] if "." in n else "" for n in virtual_names}
    if len(owners) != 1:
        return None, None
    owner = owners.pop()
    if owner == "":
        return None, None
    head = module.get_submodule(owner)
    own = {f"{owner}.{n}" for n, p in head.named_parameters() if p.requires_grad}
    if own != set(virtual_names) or has_dropout(head):
        return None, None
    return owner, head
