"""ResNet-50 (torchvision) with offline-only pretrained-weight loading.

The Meta-Weight-Net paper fine-tunes an ImageNet-pretrained ResNet-50 on
Clothing1M (14 classes). :class:`ResNet50` is torchvision's ResNet-50 (same module
names, so torchvision state dicts load as-is) with a ``forward_features`` method;
the classifier keeps torchvision's name ``fc``. Nothing here ever downloads: ImageNet
weights are taken from the torch hub cache if present, or from a local file.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from urllib.parse import urlparse

import torch
from torchvision.models import ResNet50_Weights
from torchvision.models.resnet import Bottleneck, ResNet

from ._head import FcHead

__all__ = ["ResNet50", "resnet50", "load_resnet50_state_dict"]

_PATH_SUFFIXES = (".pth", ".pt", ".pth.tar", ".bin", ".ckpt", ".tar")


def _looks_like_path(value: str) -> bool:
    return (
        os.path.sep in value
        or (os.path.altsep is not None and os.path.altsep in value)
        or value.lower().endswith(_PATH_SUFFIXES)
        or os.path.exists(value)
    )


def _resolve_enum(weights) -> ResNet50_Weights:
    if isinstance(weights, ResNet50_Weights):
        return weights
    if isinstance(weights, str):
        name = weights.split(".", 1)[1] if weights.startswith("ResNet50_Weights.") else weights
        try:
            return ResNet50_Weights[name]
        except KeyError:
            valid = ", ".join(["DEFAULT"] + list(ResNet50_Weights.__members__))
            raise ValueError(
                f"unknown ResNet-50 weights {weights!r}; expected None, one of {valid}, "
                "a torchvision ResNet50_Weights member, or a path to a local state-dict file"
            ) from None
    raise ValueError(
        f"unsupported weights {weights!r} (type {type(weights).__name__}); expected None, a "
        "ResNet50_Weights member or name such as 'IMAGENET1K_V1', or a path to a local .pth file"
    )


def _hub_cache_file(weights: ResNet50_Weights) -> str:
    filename = os.path.basename(urlparse(weights.url).path)
    return os.path.join(torch.hub.get_dir(), "checkpoints", filename)


def load_resnet50_state_dict(weights) -> dict[str, torch.Tensor]:
    """Read ResNet-50 weights from disk without ever downloading.

    Parameters
    ----------
    weights : str, os.PathLike or torchvision.models.ResNet50_Weights
        A path to a local state-dict file (loaded with
        ``torch.load(path, map_location="cpu", weights_only=True)``), or a
        torchvision weights enum / name (``"IMAGENET1K_V1"``, ``"IMAGENET1K_V2"``,
        ``"DEFAULT"``, ``"ResNet50_Weights.IMAGENET1K_V1"``) whose file must already
        be in the torch hub cache (``torch.hub.get_dir()/checkpoints``).

    Returns
    -------
    dict of str to torch.Tensor
        The state dict. A checkpoint wrapping it under ``"state_dict"`` or
        ``"model"`` is unwrapped and a DataParallel ``"module."`` prefix is stripped.

    Raises
    ------
    FileNotFoundError
        If the file (or the hub-cache file for an enum) does not exist; the message
        says how to provide the weights offline.
    ValueError
        If the file cannot be read as a state dict of tensors, or ``weights`` is
        not a recognised ResNet-50 weights name.
    """
    if isinstance(weights, (str, os.PathLike)) and (
        isinstance(weights, os.PathLike) or _looks_like_path(weights)
    ):
        path = os.fspath(weights)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"ResNet-50 weights file not found: {path!r}")
        source = path
    else:
        enum = _resolve_enum(weights)
        path = _hub_cache_file(enum)
        if not os.path.isfile(path):
            raise FileNotFoundError(
                f"ResNet-50 weights {enum} are not in the torch hub cache (expected {path!r}), "
                "and mwnet-sk never downloads. Either copy the file "
                f"{os.path.basename(path)} (from {enum.url}, or from a machine where "
                f"torchvision.models.resnet50(weights='{enum.name}') was run) into "
                f"{os.path.dirname(path)!r} (set TORCH_HOME to use another cache), or save a state "
                "dict with torch.save(model.state_dict(), 'resnet50.pth') and give its path as "
                "the weights."
            )
        source = f"{path} ({enum})"
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle errors, zip errors, unsafe globals, ...
        raise ValueError(f"could not read a ResNet-50 state dict from {source}: {exc}") from exc
    for key in ("state_dict", "model"):
        if isinstance(obj, Mapping) and isinstance(obj.get(key), Mapping):
            obj = obj[key]
            break
    if not isinstance(obj, Mapping) or not obj or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()
    ):
        raise ValueError(
            f"{source} does not contain a state dict (a mapping of parameter names to tensors); "
            f"got {type(obj).__name__}"
        )
    state = dict(obj)
    if all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    return state


class ResNet50(FcHead, ResNet):
    """torchvision ResNet-50 with a ``forward_features`` method and offline weights.

    Parameters
    ----------
    num_classes : int, default=14
        Number of output logits (14 for Clothing1M).
    weights : None, str, os.PathLike or torchvision.models.ResNet50_Weights, default=None
        ``None`` for random initialisation; a torchvision weights enum or its name
        (``"IMAGENET1K_V1"``, ``"IMAGENET1K_V2"``, ``"DEFAULT"``), used only if its file
        is already in the torch hub cache; or a path to a local state-dict file. The
        pretrained ``fc`` weights are dropped (the new head stays randomly
        initialised) when their shape does not match ``num_classes``.

    Attributes
    ----------
    fc : torch.nn.Linear
        The classifier ``Linear(2048, num_classes)`` (torchvision's name).

    Raises
    ------
    FileNotFoundError
        If the requested weights are not available locally.
    ValueError
        If the weights file is not a ResNet-50 state dict.

    Notes
    -----
    Construction never downloads anything. State-dict keys are torchvision's, so
    checkpoints are interchangeable with ``torchvision.models.resnet50``.
    """

    def __init__(self, num_classes: int = 14, weights=None) -> None:
        # read the weights first so that a missing/bad file fails before building the net
        state = None if weights is None else load_resnet50_state_dict(weights)
        super().__init__(Bottleneck, [3, 4, 6, 3], num_classes=num_classes)
        self.num_classes = num_classes
        if state is not None:
            self._load_pretrained(state, weights)

    def _load_pretrained(self, state: dict[str, torch.Tensor], weights) -> None:
        fc_keys = {"fc.weight", "fc.bias"}
        own = self.state_dict()
        if any(k in state and state[k].shape != own[k].shape for k in fc_keys):
            state = {k: v for k, v in state.items() if k not in fc_keys}
        unexpected = sorted(set(state) - set(own))
        missing = sorted(
            k for k in set(own) - set(state) if k not in fc_keys and not k.endswith("num_batches_tracked")
        )
        mismatched = sorted(k for k in set(state) & set(own) if state[k].shape != own[k].shape)
        if unexpected or missing or mismatched:
            parts = []
            for label, keys in (("missing", missing), ("unexpected", unexpected), ("shape-mismatched", mismatched)):
                if keys:
                    shown = ", ".join(keys[:5]) + (", ..." if len(keys) > 5 else "")
                    parts.append(f"{len(keys)} {label} keys ({shown})")
            raise ValueError(
                f"weights {weights!r} are not a torchvision ResNet-50 state dict: " + "; ".join(parts)
            )
        self.load_state_dict(state, strict=False)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Compute the pooled 2048-d features (everything but ``fc``).

        Parameters
        ----------
        x : torch.Tensor
            Float images of shape ``(N, 3, H, W)``.

        Returns
        -------
        torch.Tensor
            Features of shape ``(N, 2048)``.
        """
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return torch.flatten(self.avgpool(x), 1)


def resnet50(num_classes: int = 14, weights=None) -> ResNet50:
    """Build a ResNet-50, optionally loading local/cached pretrained weights.

    Parameters
    ----------
    num_classes : int, default=14
        Number of output logits.
    weights : None, str, os.PathLike or torchvision.models.ResNet50_Weights, default=None
        See :class:`ResNet50`. Nothing is ever downloaded.

    Returns
    -------
    ResNet50
        A freshly initialised network (with the loaded weights, if any).

    Raises
    ------
    FileNotFoundError
        If the requested weights are not available locally.
    ValueError
        If the weights are not a ResNet-50 state dict or not a known weights name.

    Examples
    --------
    >>> import torch, torchvision
    >>> torch.save(torchvision.models.resnet50().state_dict(), "r50.pth")  # doctest: +SKIP
    >>> model = resnet50(num_classes=14, weights="r50.pth")  # doctest: +SKIP
    """
    return ResNet50(num_classes=num_classes, weights=weights)
