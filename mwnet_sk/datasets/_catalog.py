"""The data sets the package knows by name: one spelling rule and one table of statistics.

Every module that takes a data-set name (the loaders, :mod:`mwnet_sk.augment`, the
reproduction code) reads it with :func:`dataset_key`, and every normalisation uses
:data:`NORMALIZATION`, so a name or a statistic is defined in exactly one place.
"""

from __future__ import annotations

from collections.abc import Iterable

__all__ = ["NORMALIZATION", "dataset_key", "normalization"]

NORMALIZATION: dict[str, tuple[tuple[float, float, float], tuple[float, float, float]]] = {
    "cifar10": ((125.3 / 255, 123.0 / 255, 113.9 / 255), (63.0 / 255, 62.1 / 255, 66.7 / 255)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    "clothing1m": ((0.6959, 0.6537, 0.6371), (0.3113, 0.3192, 0.3214)),
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
}
"""Per-channel ``(mean, std)`` in [0, 1] units, by :func:`dataset_key` name.

* ``"cifar10"``: the values of the official Meta-Weight-Net code, ``(125.3, 123.0, 113.9) / 255``
  and ``(63.0, 62.1, 66.7) / 255``: the CIFAR-10 training-set mean and per-pixel standard
  deviation (not the frequently copied ``(0.2023, 0.1994, 0.2010)``). The authors normalise
  CIFAR-100 with these values too.
* ``"cifar100"``: the CIFAR-100 training-set statistics.
* ``"clothing1m"``: Clothing1M statistics, used with the ResNet-50 transforms.
* ``"imagenet"``: the ImageNet statistics of torchvision's pretrained models.
"""


def dataset_key(name: str, known: Iterable[str] | None = None, what: str = "data set") -> str:
    """The canonical spelling of a data-set name: lower case, letters and digits only.

    ``"CIFAR-10"``, ``"cifar_10"`` and ``"Cifar10"`` all become ``"cifar10"``.

    Parameters
    ----------
    name : str
        A data-set name in any of the usual spellings.
    known : iterable of str, optional
        Canonical names to accept; other names raise.
    what : str, default="data set"
        How the error message calls the thing named.

    Returns
    -------
    str
        The canonical name.

    Raises
    ------
    ValueError
        When ``known`` is given and the name is not among them (the message lists them).

    Examples
    --------
    >>> dataset_key("CIFAR-100")
    'cifar100'
    """
    key = "".join(ch for ch in str(name).lower() if ch.isalnum())
    if known is not None:
        known = tuple(known)
        if key not in known:
            expected = " or ".join(repr(k) for k in known)
            raise ValueError(f"Unknown {what} {name!r}; expected {expected}.")
    return key


def normalization(name: str) -> tuple[tuple[float, float, float], tuple[float, float, float]]:
    """``(mean, std)`` of a data set in :data:`NORMALIZATION` (any spelling of its name)."""
    return NORMALIZATION[dataset_key(name, NORMALIZATION, "normalisation statistics")]
