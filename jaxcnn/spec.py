"""What a registered variant is, and the words its weight converters are written in.

The ground of the package: it imports nothing from jaxcnn. Family files declare their variants
with :class:`ModelSpec` (timm's ``default_cfg``) and the foreign weights each can read with
:class:`Converter`; :mod:`jaxcnn.weights` executes converters, :mod:`jaxcnn.registry` collects
the specs.

A converter's ``rename`` maps one source array name to our variable path. It returns the path,
``None`` to drop an array on purpose, or raises :class:`NotMine` for a name outside its
reference's naming scheme (another network's or another framework's), which the engine then
reports as unexpected. Nothing else means "not mine": any other exception is a real problem
with the weights (the session numbering of Keras' InceptionV3, for one) and reaches the user
unchanged. The vocabulary below (BatchNorm, convolution and Keras leaves, the flatten-order
fix, the torchvision blocks shared by several families) exists once for every family.
"""

from __future__ import annotations

import dataclasses
import math
import re
from typing import Any, Callable, Mapping, Sequence, TypeVar

import flax.linen as nn
import numpy as np

Rename = Callable[[str], "str | None"]
Fix = Callable[[str, np.ndarray, tuple[int, ...]], np.ndarray]

SOURCES = ("torchvision", "timm", "keras")


@dataclasses.dataclass(frozen=True)
class Published:
    """A published figure: a value, what it measures, and where it was published.

    ``metric`` is one of:
      * ``"params"``: learnable parameters (torchvision, timm, Cadene, imgclsmob);
      * ``"keras_total"``: Keras' "Total params", i.e. params plus BatchNorm moving statistics
        (and the 7 numbers of EfficientNet's input ``Normalization`` layer);
      * ``"gmacs"``: multiply-accumulates at ``input_shape``, batch 1 (torchvision's ``_ops``);
      * ``"top1"``, ``"top5"``: ImageNet top-1 and top-5 accuracy in percent of the weights
        the source publishes.
    ``overrides`` are builder arguments the figure assumes (e.g. ``(("aux_logits", True),)``).
    ``rounded`` marks a figure the source rounds (a paper's "4.2M"): it is shown as such and
    never compared with a count as if it were exact.
    """

    value: float
    metric: str
    source: str
    overrides: tuple[tuple[str, Any], ...] = ()
    rounded: bool = False


TORCHVISION_META = "torchvision 0.29.1 {}_Weights.IMAGENET1K_V1 meta"


def torchvision_meta(weights: str, params: int, gmacs: float, top1: float, top5: float
                     ) -> tuple[Published, ...]:
    """The figures of ``torchvision.models.<weights>_Weights.IMAGENET1K_V1.meta``:
    ``num_params``, ``_ops`` (GMACs), ``acc@1`` and ``acc@5``."""
    source = TORCHVISION_META.format(weights)
    return (Published(params, "params", f"{source} num_params"),
            Published(gmacs, "gmacs", f"{source} _ops"),
            Published(top1, "top1", f"{source} acc@1"),
            Published(top5, "top5", f"{source} acc@5"))


@dataclasses.dataclass(frozen=True)
class Converter:
    """How one jaxcnn variant reads one reference implementation's weights.

    ``source``: ``"torchvision"``, ``"timm"`` or ``"keras"``. ``reference``: the reference's
    model name (``torchvision.models.<reference>``, ``timm.create_model(reference)``,
    ``keras.applications.<reference>``). ``rename`` maps a source array name (a state-dict key,
    or ``"layer_name/weight_name"`` for Keras) to our variable path
    (``"params/stage1_block1/conv1/conv/kernel"``), returns ``None`` to drop it on purpose, or
    raises :class:`NotMine` for a name of another scheme.
    ``fix`` optionally rewrites an array before the generic layout change (for example the
    flatten order of the first fully-connected layer of VGG and AlexNet).
    ``reference_kwargs`` are passed when the parity tests build the reference.
    ``optional`` names top-level modules the model may be built without (auxiliary heads):
    their arrays load when the model has them and are dropped when it does not.
    """

    source: str
    reference: str
    rename: Rename
    fix: Fix | None = None
    reference_kwargs: tuple[tuple[str, Any], ...] = ()
    optional: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """A registered variant: builder, default input, the reference it follows, figures, converters.

    ``objective`` names what the network is trained for, the trainer's objective of that name
    (``train.objectives``): ``"classification"`` (cross-entropy on the labels, plus the
    auxiliary classifiers of the networks that have them) or ``"swwae"`` (Zhao et al.'s
    classification and reconstruction terms, for networks that sow their reconstructions).
    """

    builder: Callable[..., nn.Module]
    input_shape: tuple[int, int, int]
    reference: str
    num_classes: int = 1000
    published: tuple[Published, ...] = ()
    converters: tuple[Converter, ...] = ()
    objective: str = "classification"


class WeightMismatchError(ValueError):
    """The source arrays do not fit the model: missing, unexpected or misshapen arrays."""


class NotMine(LookupError):
    """A rename was handed a name outside its reference's scheme; the engine reports the name
    as unexpected. Deliberately neither a ``KeyError`` nor a ``ValueError``, so that no handler
    of those can mistake one for the other."""


# ----------------------------------------------------------------------------------------------
# Reading names

T = TypeVar("T")


def lookup(table: Mapping[str, T], name: str) -> T:
    """``table[name]``; a name the table lacks belongs to another scheme."""
    try:
        return table[name]
    except KeyError:
        raise NotMine(name) from None


def number(text: str) -> int:
    """The non-negative integer ``text`` (a Sequential index, a block number) of a name."""
    if not text.isdigit():
        raise NotMine(text)
    return int(text)


def groups(pattern: str, name: str) -> tuple[str | None, ...]:
    """The groups of ``pattern`` matching all of ``name``; a name it does not match belongs to
    another scheme."""
    found = re.fullmatch(pattern, name)
    if found is None:
        raise NotMine(name)
    return found.groups()


def nth(items: Sequence[T], text: str) -> T:
    """``items[int(text)]`` for a Sequential index ``text`` the scheme has."""
    index = number(text)
    if index >= len(items):
        raise NotMine(text)
    return items[index]


def torch_parts(key: str, count: int | None = None) -> tuple[list[str], str]:
    """A torch state-dict key as ``(module path, leaf)``: ``"layer1.0.conv1.weight"`` gives
    ``(["layer1", "0", "conv1"], "weight")``. ``count`` is the number of dotted parts the
    scheme's keys have (at least 2 when None). Keras names (``layer/weight``) are not torch's."""
    parts = key.split(".")
    wrong_count = len(parts) < 2 if count is None else len(parts) != count
    if "/" in key or not all(parts) or wrong_count:
        raise NotMine(key)
    return parts[:-1], parts[-1]


def keras_parts(key: str) -> tuple[str, str]:
    """A Keras weight name as ``(layer, weight)``: ``"conv1_bn/gamma"``."""
    parts = key.split("/")
    if len(parts) != 2 or not all(parts):
        raise NotMine(key)
    return parts[0], parts[1]


# ----------------------------------------------------------------------------------------------
# Leaves: a module path and a source leaf name -> our variable path

TORCH_NORM_LEAVES = {"weight": "params/{}/scale", "bias": "params/{}/bias",
                     "running_mean": "batch_stats/{}/mean", "running_var": "batch_stats/{}/var"}
"""PyTorch BatchNorm. Its step counter ``num_batches_tracked`` has no counterpart; the engine
drops it for every converter."""

TORCH_LAYER_LEAVES = {"weight": "params/{}/kernel", "bias": "params/{}/bias"}
"""PyTorch Conv2d and Linear (the engine transposes the layouts)."""

KERAS_LEAVES = {"kernel": "params/{}/kernel", "depthwise_kernel": "params/{}/kernel",
                "bias": "params/{}/bias", "gamma": "params/{}/scale", "beta": "params/{}/bias",
                "moving_mean": "batch_stats/{}/mean", "moving_variance": "batch_stats/{}/var"}
"""Keras Conv2D, DepthwiseConv2D, Dense and BatchNormalization: one table, as no leaf name is
shared between them with another meaning."""


def torch_norm(module: str, leaf: str) -> str:
    """A PyTorch BatchNorm array -> ours under ``module``."""
    return lookup(TORCH_NORM_LEAVES, leaf).format(module)


def torch_layer(module: str, leaf: str) -> str:
    """A PyTorch Conv2d or Linear array -> ours under ``module``."""
    return lookup(TORCH_LAYER_LEAVES, leaf).format(module)


def torch_leaf(module: str, leaf: str, *, norm: bool) -> str:
    """:func:`torch_norm` when ``norm``, else :func:`torch_layer`."""
    return (torch_norm if norm else torch_layer)(module, leaf)


def keras_leaf(module: str, leaf: str) -> str:
    """A Keras layer's weight -> ours under ``module``."""
    return lookup(KERAS_LEAVES, leaf).format(module)


# ----------------------------------------------------------------------------------------------
# torchvision's shared blocks -> jaxcnn.layers' shared blocks


def torch_conv_norm(module: str, index: str, leaf: str) -> str:
    """torchvision's ``Conv2dNormActivation`` (``.0`` conv, ``.1`` BatchNorm) -> our
    :class:`jaxcnn.layers.ConvBN` ``module`` (``conv``, ``bn``)."""
    if index == "0":
        return torch_layer(f"{module}/conv", leaf)
    if index == "1":
        return torch_norm(f"{module}/bn", leaf)
    raise NotMine(index)


def torch_inverted_residual(block: str, parts: tuple[str, ...], path: list[str], leaf: str
                            ) -> str:
    """One torchvision MBConv/InvertedResidual -> our :class:`jaxcnn.layers.InvertedResidual`.

    ``path`` is what follows ``block.<k>`` in the key; ``parts`` names our sub-layer of each
    ``k`` (``"expand"``, ``"depthwise"``, ``"squeeze_excite"``, ``"project"``).
    """
    if len(path) != 2:
        raise NotMine(".".join(path))
    part = nth(parts, path[0])
    if part == "squeeze_excite":
        unit = lookup({"fc1": "reduce", "fc2": "expand"}, path[1])
        return torch_layer(f"{block}/squeeze_excite/{unit}", leaf)
    return torch_conv_norm(f"{block}/{part}", path[1], leaf)


def torchvision_stack_ends(path: list[str], leaf: str, *, last: int,
                           classifier: Mapping[str, str]) -> str | None:
    """The ends of torchvision's MobileNetV2/V3 and EfficientNet: ``features.0`` (our ``stem``)
    and ``features.<last>`` (``final_conv``), both ``Conv2dNormActivation``, and
    ``classifier.<i>`` (named by ``classifier``). ``None`` for a block in between, which the
    family renames."""
    if path[0] == "classifier" and len(path) == 2:
        return torch_layer(lookup(classifier, path[1]), leaf)
    if path[0] != "features" or len(path) < 3 or not 0 <= number(path[1]) <= last:
        raise NotMine(".".join(path))
    ends = {0: "stem", last: "final_conv"}
    if int(path[1]) not in ends:
        return None
    if len(path) != 3:
        raise NotMine(".".join(path))
    return torch_conv_norm(ends[int(path[1])], path[2], leaf)


# ----------------------------------------------------------------------------------------------
# Fixes


def torch_flatten_fix(key: str, array: np.ndarray, shape: tuple[int, ...], *, first_dense: str,
                      channels: int) -> np.ndarray:
    """Reorders the inputs of the first dense layer from torch's CHW flatten to our HWC flatten.

    ``first_dense`` is that layer's weight name (``classifier.1.weight`` in AlexNet,
    ``classifier.0.weight`` in VGG), ``channels`` the number of maps flattened (square maps).
    Every other array is returned unchanged.
    """
    if key != first_dense:
        return array
    out, inputs = array.shape
    side = math.isqrt(inputs // channels)
    return array.reshape(out, channels, side, side).transpose(0, 2, 3, 1).reshape(out, inputs)
