"""What the registry knows about a variant besides how to build it (timm's ``default_cfg``)."""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import flax.linen as nn

from jaxcnn.weights import Converter


@dataclasses.dataclass(frozen=True)
class Published:
    """A published figure: a value, what it measures, and where it was published.

    ``metric`` is one of:
      * ``"params"``: learnable parameters (torchvision, timm, Cadene, imgclsmob);
      * ``"keras_total"``: Keras' "Total params", i.e. params plus BatchNorm moving statistics
        (and the 7 numbers of EfficientNet's input ``Normalization`` layer);
      * ``"gmacs"``: multiply-accumulates at ``input_shape``, batch 1 (torchvision's ``_ops``);
      * ``"top1"``: ImageNet top-1 accuracy in percent of the weights the source publishes.
    ``overrides`` are builder arguments the figure assumes (e.g. ``(("aux_logits", True),)``).
    """

    value: float
    metric: str
    source: str
    overrides: tuple[tuple[str, Any], ...] = ()


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """A registered variant: builder, default input, the reference it follows, figures, converters."""

    builder: Callable[..., nn.Module]
    input_shape: tuple[int, int, int]
    reference: str
    num_classes: int = 1000
    published: tuple[Published, ...] = ()
    converters: tuple[Converter, ...] = ()
