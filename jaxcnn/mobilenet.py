"""MobileNet v1, v2 and v3.

Papers:

* Howard et al., "MobileNets: Efficient Convolutional Neural Networks for Mobile Vision
  Applications", 2017 (v1: depthwise-separable convolutions, width multiplier ``alpha``,
  resolution multiplier = the input size, which any size >= ``min_size`` accepts).
* Sandler et al., "MobileNetV2: Inverted Residuals and Linear Bottlenecks", CVPR 2018.
* Howard et al., "Searching for MobileNetV3", ICCV 2019 (Large and Small, hard-swish,
  squeeze-excitation with a hard-sigmoid gate).

v2 and v3 are built from :class:`jaxcnn.layers.InvertedResidual`, shared with EfficientNet.

What differs between the published versions, and what each variant here follows:

* **Padding.** PyTorch ports (torchvision, timm) pad ``k // 2`` on every side. The Keras ports
  of the TensorFlow weights pad like TF's ``"SAME"``: before a stride-2 convolution only at the
  bottom/right on even sizes. Keras MobileNet (v1) always pads ``((0, 1), (0, 1))`` before its
  stride-2 depthwise convolutions (so it needs at least 31x31 pixels); Keras MobileNetV2 uses
  ``correct_pad`` (= TF ``"SAME"``). The stems of both Keras nets use ``"same"``.
* **BatchNorm.** timm v1 and torchvision v2: epsilon 1e-5, PyTorch momentum 0.1 (0.9 here).
  Keras v1: epsilon 1e-3, momentum 0.99; Keras v2: epsilon 1e-3, momentum 0.999. torchvision v3:
  epsilon 1e-3, PyTorch momentum 0.01 (0.99 here).
* **Classifier.** Keras v1 applies dropout 1e-3 and a 1x1 convolution with bias to the pooled
  features; it is the same map as the Dense ``head`` here (a converter reshapes its
  ``(1, 1, C, K)`` kernel to ``(C, K)``). timm v1 has no dropout, torchvision v2 has 0.2, Keras
  v2 none. v3 (torchvision) maps the pooled features through Dense 1280 (Small: 1024),
  hard-swish and dropout 0.2 before the ``head``; Keras' v3 uses 1x1 convolutions with the same
  parameters, so the Keras totals below also hold for the torchvision layout.
* **Channel rounding.** ``alpha``/``width`` scale every width, rounded with
  :func:`jaxcnn.layers.make_divisible` (multiples of 8) as timm, torchvision and Keras v2 do.
  Keras v1 truncates (``int(c * alpha)``) instead; the two agree for every released alpha
  (1, 0.75, 0.5, 0.25). The last 1x1 convolution of v2 widens only for ``width > 1``.
* **Counts.** The v1 paper's 4.2M and the v2 paper's 3.4M are rounded (3.4M matches no build;
  docs/sources.md sec. 3.2), and so are the v1 paper's figures for alpha < 1, the only ones
  published for them (sec. 3.1). "Keras total" adds the BatchNorm moving mean and
  variance (the ``batch_stats`` collection here).

Variants (224x224, 1000 classes):

=======================  =========  ===========  =====  =================================
variant                  params     Keras total  GMACs  reference
=======================  =========  ===========  =====  =================================
mobilenet_v1             4,231,976               0.569  timm mobilenetv1_100
mobilenet_v1_keras       4,231,976  4,253,864    0.569  keras.applications.MobileNet
mobilenet_v1_075_keras   2,585,560  2,601,976    0.325  MobileNet(alpha=0.75)
mobilenet_v1_050_keras   1,331,592  1,342,536    0.149  MobileNet(alpha=0.5)
mobilenet_v1_025_keras   470,072    475,544      0.041  MobileNet(alpha=0.25)
mobilenet_v2             3,504,872               0.301  torchvision mobilenet_v2
mobilenet_v2_keras       3,504,872  3,538,984    0.301  keras.applications.MobileNetV2
mobilenet_v3_large       5,483,032  5,507,432    0.217  torchvision mobilenet_v3_large
mobilenet_v3_small       2,542,856  2,554,968    0.057  torchvision mobilenet_v3_small
=======================  =========  ===========  =====  =================================
"""

from __future__ import annotations

import functools
import re
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxcnn import layers
from jaxcnn.spec import (
    Converter, ModelSpec, NotMine, Published, keras_leaf, keras_parts, lookup, nth, number,
    torch_conv_norm, torch_inverted_residual, torch_leaf, torch_parts, torchvision_meta,
    torchvision_stack_ends,
)

PADDINGS = ("symmetric", "keras")


def _check_padding(padding: str) -> None:
    if padding not in PADDINGS:
        raise ValueError(f"padding must be one of {PADDINGS}, not {padding!r}")


def _stride2_out(size: int, kernel: int, padding: str, keras_pad: str) -> int:
    """Output size of a stride-2 ``kernel``-sized convolution under a padding convention."""
    if padding == "symmetric":
        return (size + 2 * (kernel // 2) - kernel) // 2 + 1
    if keras_pad == "same":
        return -(-size // 2)
    if keras_pad == "bottom_right":
        return (size + 1 - kernel) // 2 + 1
    return (size + sum(layers.keras_correct_pad((size,), kernel)[0]) - kernel) // 2 + 1


def _min_size(padding: str, keras_block_pad: str, strided_blocks: int) -> int:
    """The smallest square input for which the 3x3 stride-2 stem and the ``strided_blocks``
    3x3 stride-2 blocks each keep a pixel (Keras pads the stem ``"same"``, the blocks by
    ``keras_block_pad``)."""
    _check_padding(padding)

    def feature_size(size: int) -> int:
        size = _stride2_out(size, 3, padding, "same")
        for _ in range(strided_blocks):
            size = _stride2_out(size, 3, padding, keras_block_pad) if size >= 1 else 0
        return size

    return layers.smallest_input(feature_size)


# ---------------------------------------------------------------------------------------------
# MobileNet v1

# (output channels, stride) of the 13 depthwise-separable blocks (paper, Table 1).
V1_BLOCKS: tuple[tuple[int, int], ...] = (
    (64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2),
    (512, 1), (512, 1), (512, 1), (512, 1), (512, 1), (1024, 2), (1024, 1),
)


class DepthwiseSeparable(nn.Module):
    """A 3x3 depthwise conv and a 1x1 pointwise conv, each with BatchNorm and ReLU6."""

    features: int
    strides: int = 1
    padding: str = "symmetric"
    norm: Callable[..., nn.Module] = layers.batch_norm()
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        conv = functools.partial(layers.ConvBN, norm=self.norm, act=nn.relu6,
                                 kernel_init=layers.kaiming_normal_fan_out, dtype=self.dtype)
        pad = ((0, 1), (0, 1)) if self.padding == "keras" and self.strides == 2 else 1
        channels = x.shape[-1]
        x = conv(channels, 3, self.strides, pad, groups=channels, name="depthwise")(x, train=train)
        return conv(self.features, 1, name="pointwise")(x, train=train)


class MobileNetV1(layers.Classifier):
    """MobileNet v1: a 3x3 stride-2 stem and 13 depthwise-separable blocks, no residuals."""

    alpha: float = 1.0
    padding: str = "symmetric"
    bn_momentum: float = 0.9
    bn_epsilon: float = 1e-5
    dropout_rate: float = 0.0

    @property
    def min_size(self) -> int:
        return _min_size(self.padding, "bottom_right", sum(s == 2 for _, s in V1_BLOCKS))

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        x = self.check_input(x, model="MobileNetV1")
        norm = self.norm_layer(momentum=self.bn_momentum, epsilon=self.bn_epsilon)
        width = functools.partial(layers.make_divisible, divisor=8)
        x = layers.ConvBN(width(32 * self.alpha), 3, 2,
                          padding="SAME" if self.padding == "keras" else 1, norm=norm,
                          act=nn.relu6, kernel_init=layers.kaiming_normal_fan_out,
                          dtype=self.dtype, name="stem")(x, train=train)
        for i, (features, stride) in enumerate(V1_BLOCKS, start=1):
            x = DepthwiseSeparable(width(features * self.alpha), strides=stride,
                                   padding=self.padding, norm=norm, dtype=self.dtype,
                                   name=f"block{i}")(x, train=train)
        return self.forward_head(x, train=train, dropout_rate=self.dropout_rate)


# ---------------------------------------------------------------------------------------------
# MobileNet v2

# (expansion t, output channels c, repeats n, first stride s) per stage (paper, Table 2).
V2_STAGES: tuple[tuple[int, int, int, int], ...] = (
    (1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2),
    (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1),
)


class MobileNetV2(layers.Classifier):
    """MobileNetV2: a 3x3 stride-2 stem, 17 inverted residuals (ReLU6), a 1x1 conv to 1280."""

    width: float = 1.0
    padding: str = "symmetric"
    bn_momentum: float = 0.9
    bn_epsilon: float = 1e-5
    dropout_rate: float = 0.2

    @property
    def min_size(self) -> int:
        return _min_size(self.padding, "correct", sum(s == 2 for *_, s in V2_STAGES))

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        x = self.check_input(x, model="MobileNetV2")
        norm = self.norm_layer(momentum=self.bn_momentum, epsilon=self.bn_epsilon)
        conv = functools.partial(layers.ConvBN, norm=norm, act=nn.relu6,
                                 kernel_init=layers.kaiming_normal_fan_out, dtype=self.dtype)
        x = conv(layers.make_divisible(32 * self.width), 3, 2,
                 "SAME" if self.padding == "keras" else 1, name="stem")(x, train=train)
        for i, (expansion, channels, repeats, stride) in enumerate(V2_STAGES, start=1):
            features = layers.make_divisible(channels * self.width)
            for j in range(repeats):
                x = layers.InvertedResidual(
                    features, round(x.shape[-1] * expansion), 3, stride if j == 0 else 1,
                    act=nn.relu6, padding=self.padding, norm=norm, dtype=self.dtype,
                    name=f"stage{i}_block{j + 1}",
                )(x, train=train)
        x = conv(layers.make_divisible(1280 * max(1.0, self.width)), 1,
                 name="final_conv")(x, train=train)
        return self.forward_head(x, train=train, dropout_rate=self.dropout_rate,
                                 kernel_init=nn.initializers.normal(0.01))


# ---------------------------------------------------------------------------------------------
# MobileNet v3

# (kernel, expanded channels, output channels, squeeze-excite, activation, stride) per block
# (paper, Tables 1 and 2; "RE" = ReLU, "HS" = hard-swish).
V3_LARGE: tuple[tuple[int, int, int, bool, str, int], ...] = (
    (3, 16, 16, False, "RE", 1),
    (3, 64, 24, False, "RE", 2),
    (3, 72, 24, False, "RE", 1),
    (5, 72, 40, True, "RE", 2),
    (5, 120, 40, True, "RE", 1),
    (5, 120, 40, True, "RE", 1),
    (3, 240, 80, False, "HS", 2),
    (3, 200, 80, False, "HS", 1),
    (3, 184, 80, False, "HS", 1),
    (3, 184, 80, False, "HS", 1),
    (3, 480, 112, True, "HS", 1),
    (3, 672, 112, True, "HS", 1),
    (5, 672, 160, True, "HS", 2),
    (5, 960, 160, True, "HS", 1),
    (5, 960, 160, True, "HS", 1),
)
V3_SMALL: tuple[tuple[int, int, int, bool, str, int], ...] = (
    (3, 16, 16, True, "RE", 2),
    (3, 72, 24, False, "RE", 2),
    (3, 88, 24, False, "RE", 1),
    (5, 96, 40, True, "HS", 2),
    (5, 240, 40, True, "HS", 1),
    (5, 240, 40, True, "HS", 1),
    (5, 120, 48, True, "HS", 1),
    (5, 144, 48, True, "HS", 1),
    (5, 288, 96, True, "HS", 2),
    (5, 576, 96, True, "HS", 1),
    (5, 576, 96, True, "HS", 1),
)
_V3_ACTS = {"RE": nn.relu, "HS": nn.hard_swish}


class MobileNetV3(layers.Classifier):
    """MobileNetV3: hard-swish stem, inverted residuals with SE, 1x1 conv, pooled Dense head."""

    blocks: tuple[tuple[int, int, int, bool, str, int], ...] = V3_LARGE
    hidden_features: int = 1280
    width: float = 1.0
    bn_momentum: float = 0.99
    bn_epsilon: float = 1e-3
    dropout_rate: float = 0.2

    min_size = 1  # symmetric padding: a stride-2 conv maps 1 pixel to 1 pixel

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        x = self.check_input(x, model="MobileNetV3")
        norm = self.norm_layer(momentum=self.bn_momentum, epsilon=self.bn_epsilon)

        def width(channels: int) -> int:
            return layers.make_divisible(channels * self.width)

        conv = functools.partial(layers.ConvBN, norm=norm, act=nn.hard_swish,
                                 kernel_init=layers.kaiming_normal_fan_out, dtype=self.dtype)
        x = conv(width(16), 3, 2, 1, name="stem")(x, train=train)
        for i, (kernel, expanded, out, se, act, stride) in enumerate(self.blocks, start=1):
            expanded = width(expanded)
            x = layers.InvertedResidual(
                width(out), expanded, kernel, stride,
                se_features=layers.make_divisible(expanded // 4) if se else 0,
                act=_V3_ACTS[act], se_act=nn.relu, se_gate=nn.hard_sigmoid, norm=norm,
                dtype=self.dtype, name=f"block{i}",
            )(x, train=train)
        x = conv(6 * x.shape[-1], 1, name="final_conv")(x, train=train)
        x = layers.global_avg_pool(x)
        x = nn.Dense(width(self.hidden_features), dtype=self.dtype,
                     kernel_init=nn.initializers.normal(0.01), name="head_hidden")(x)
        return self.forward_head(nn.hard_swish(x), train=train, pool=False,
                                 dropout_rate=self.dropout_rate,
                                 kernel_init=nn.initializers.normal(0.01))


# ---------------------------------------------------------------------------------------------
# Weight converters: the reference's array names -> ours (vocabulary of jaxcnn.spec).


def stage_block(index: int, repeats: tuple[int, ...]) -> str:
    """The 0-based ``index`` of a block in a flat stack -> ``stage{i}_block{j}`` (1-based)."""
    for stage, n in enumerate(repeats, start=1):
        if index < n:
            return f"stage{stage}_block{index + 1}"
        index -= n
    raise NotMine(f"block {index} beyond the last stage")


_V1_TIMM_STAGES = (1, 2, 2, 6, 2)  # timm groups the 13 blocks by output stride
_V1_TIMM_TOP = {"conv_stem": "stem/conv", "bn1": "stem/bn", "classifier": "head"}
_V1_TIMM_LAYERS = {"conv_dw": "depthwise/conv", "bn1": "depthwise/bn",
                   "conv_pw": "pointwise/conv", "bn2": "pointwise/bn"}


def rename_timm_v1(key: str) -> str | None:
    """timm ``mobilenetv1_*`` -> :class:`MobileNetV1`."""
    path, leaf = torch_parts(key)
    if len(path) == 1:
        module = lookup(_V1_TIMM_TOP, path[0])
    elif len(path) == 4 and path[0] == "blocks":
        _, stage, block, layer = path
        first = sum(_V1_TIMM_STAGES[:number(stage)])
        module = f"block{first + number(block) + 1}/{lookup(_V1_TIMM_LAYERS, layer)}"
    else:
        raise NotMine(key)
    return torch_leaf(module, leaf, norm=module.endswith("/bn"))


_KERAS_V1_KINDS = {"dw": "depthwise", "pw": "pointwise"}


def rename_keras_v1(key: str) -> str | None:
    """``keras.applications.MobileNet`` (any alpha) -> :class:`MobileNetV1` (``padding="keras"``)."""
    layer, leaf = keras_parts(key)
    if layer == "conv_preds":
        return keras_leaf("head", leaf)
    unit, bn = (layer[:-3], True) if layer.endswith("_bn") else (layer, False)
    if unit == "conv1":
        module = "stem"
    elif match := re.fullmatch(r"conv_(dw|pw)_(\d+)", unit):
        module = f"block{int(match.group(2))}/{_KERAS_V1_KINDS[match.group(1)]}"
    else:
        raise NotMine(key)
    return keras_leaf(f"{module}/{'bn' if bn else 'conv'}", leaf)


_V2_REPEATS = tuple(n for _, _, n, _ in V2_STAGES)


def rename_torchvision_v2(key: str) -> str | None:
    """torchvision ``mobilenet_v2`` -> :class:`MobileNetV2`.

    ``features.{i}.conv`` holds [expand (Conv-BN-ReLU6)], depthwise (Conv-BN-ReLU6), project
    conv, project BN; the first block has no expansion.
    """
    path, leaf = torch_parts(key)
    last = sum(_V2_REPEATS) + 1
    if (end := torchvision_stack_ends(path, leaf, last=last, classifier={"1": "head"})):
        return end
    if len(path) not in (4, 5) or path[2] != "conv":
        raise NotMine(key)
    i = int(path[1])
    parts = (["expand"] if i > 1 else []) + ["depthwise", "project/conv", "project/bn"]
    part = nth(parts, path[3])
    module = f"{stage_block(i - 1, _V2_REPEATS)}/{part}"
    if part.startswith("project") and len(path) == 4:
        return torch_leaf(module, leaf, norm=part.endswith("/bn"))
    if not part.startswith("project") and len(path) == 5:
        return torch_conv_norm(module, path[4], leaf)
    raise NotMine(key)


def rename_keras_v2(key: str) -> str | None:
    """``keras.applications.MobileNetV2`` -> :class:`MobileNetV2` (``padding="keras"``)."""
    layer, leaf = keras_parts(key)
    if layer == "predictions":
        return keras_leaf("head", leaf)
    bn = layer.lower().endswith("_bn")
    unit = layer[:-3] if bn else layer
    if unit in ("Conv1", "bn_Conv1"):
        module, bn = "stem", unit == "bn_Conv1"
    elif unit == "Conv_1":
        module = "final_conv"
    elif match := re.fullmatch(r"(?:expanded_conv|block_(\d+))_(expand|depthwise|project)", unit):
        module = f"{stage_block(int(match.group(1) or 0), _V2_REPEATS)}/{match.group(2)}"
    else:
        raise NotMine(key)
    return keras_leaf(f"{module}/{'bn' if bn else 'conv'}", leaf)


def rename_torchvision_v3(key: str, blocks: tuple[tuple[int, int, int, bool, str, int], ...]
                          ) -> str | None:
    """torchvision ``mobilenet_v3_large/small`` -> :class:`MobileNetV3` with ``blocks``."""
    path, leaf = torch_parts(key)
    classifier = {"0": "head_hidden", "3": "head"}
    if (end := torchvision_stack_ends(path, leaf, last=len(blocks) + 1, classifier=classifier)):
        return end
    if path[2] != "block":
        raise NotMine(key)
    i = int(path[1])
    _, expanded, _, se, _, _ = blocks[i - 1]
    in_features = blocks[i - 2][2] if i > 1 else 16
    parts = ((["expand"] if expanded != in_features else []) + ["depthwise"]
             + (["squeeze_excite"] if se else []) + ["project"])
    return torch_inverted_residual(f"block{i}", tuple(parts), path[3:], leaf)


# ---------------------------------------------------------------------------------------------
# Registry

_KA = "keras.io Applications table (exact-integer revision)"
_KERAS = "Keras 3.15.1 keras.applications.{}(weights=None)"
_PAPER_V1 = "Howard et al. 2017, Table 6 (params rounded to 0.1M, Mult-Adds to 1M)"


_keras_v1 = functools.partial(MobileNetV1, padding="keras", bn_momentum=0.99, bn_epsilon=1e-3,
                              dropout_rate=1e-3)


def _keras_v1_alpha(alpha: float, params: float, gmacs: float, top1: float) -> ModelSpec:
    return ModelSpec(
        builder=functools.partial(_keras_v1, alpha=alpha),
        input_shape=(224, 224, 3),
        reference=f"keras.applications.MobileNet(alpha={alpha}) (Keras 3.15.1)",
        published=(
            Published(params, "params", _PAPER_V1, rounded=True),
            Published(gmacs, "gmacs", _PAPER_V1, rounded=True),
            Published(top1, "top1", _PAPER_V1),
        ),
        converters=(Converter("keras", "MobileNet", rename_keras_v1,
                              reference_kwargs=(("alpha", alpha),)),),
    )


MODELS: dict[str, ModelSpec] = {
    "mobilenet_v1": ModelSpec(
        builder=MobileNetV1,
        input_shape=(224, 224, 3),
        reference="timm mobilenetv1_100 (timm 1.0.31): symmetric padding, BN eps 1e-5, Linear head",
        published=(
            Published(4_231_976, "params",
                      "osmr/imgclsmob gluon/README.md, MobileNet 1.0 (= timm 1.0.31 "
                      "mobilenetv1_100, = Keras MobileNet trainable)"),
            Published(0.569, "gmacs", _PAPER_V1, rounded=True),
            Published(70.6, "top1", "Howard et al. 2017, Table 6"),
        ),
        converters=(Converter("timm", "mobilenetv1_100", rename_timm_v1),),
    ),
    "mobilenet_v1_keras": ModelSpec(
        builder=_keras_v1,
        input_shape=(224, 224, 3),
        reference="keras.applications.MobileNet (Keras 3.15.1): TF padding, BN eps 1e-3",
        published=(
            Published(4_253_864, "keras_total", _KA + ", MobileNet"),
            Published(4_231_976, "params", _KERAS.format("MobileNet") + " trainable"),
            Published(0.569, "gmacs", _PAPER_V1, rounded=True),
            Published(70.4, "top1", _KA + ", MobileNet"),
            Published(89.5, "top5", _KA + ", MobileNet"),
        ),
        converters=(Converter("keras", "MobileNet", rename_keras_v1),),
    ),
    "mobilenet_v1_075_keras": _keras_v1_alpha(0.75, 2.6e6, 0.325, 68.4),
    "mobilenet_v1_050_keras": _keras_v1_alpha(0.5, 1.3e6, 0.149, 63.7),
    "mobilenet_v1_025_keras": _keras_v1_alpha(0.25, 0.5e6, 0.041, 50.6),
    "mobilenet_v2": ModelSpec(
        builder=MobileNetV2,
        input_shape=(224, 224, 3),
        reference="torchvision mobilenet_v2 (torchvision 0.29.1)",
        published=torchvision_meta("MobileNet_V2", 3_504_872, 0.301, 71.878, 90.286),
        converters=(Converter("torchvision", "mobilenet_v2", rename_torchvision_v2),),
    ),
    "mobilenet_v2_keras": ModelSpec(
        builder=functools.partial(MobileNetV2, padding="keras", bn_momentum=0.999,
                                  bn_epsilon=1e-3, dropout_rate=0.0),
        input_shape=(224, 224, 3),
        reference="keras.applications.MobileNetV2 (Keras 3.15.1): TF padding, BN eps 1e-3",
        published=(
            Published(3_538_984, "keras_total", _KA + ", MobileNetV2"),
            Published(3_504_872, "params",
                      _KERAS.format("MobileNetV2") + " trainable (= torchvision)"),
            Published(71.3, "top1", _KA + ", MobileNetV2"),
            Published(90.1, "top5", _KA + ", MobileNetV2"),
        ),
        converters=(Converter("keras", "MobileNetV2", rename_keras_v2),),
    ),
    "mobilenet_v3_large": ModelSpec(
        builder=functools.partial(MobileNetV3, blocks=V3_LARGE, hidden_features=1280),
        input_shape=(224, 224, 3),
        reference="torchvision mobilenet_v3_large (torchvision 0.29.1)",
        published=(
            *torchvision_meta("MobileNet_V3_Large", 5_483_032, 0.217, 74.042, 91.340),
            Published(5_507_432, "keras_total", "computed: " + _KERAS.format("MobileNetV3Large")
                      + " total, not in the keras.io table (docs/sources.md sec. 3.6)"),
        ),
        converters=(Converter("torchvision", "mobilenet_v3_large",
                              functools.partial(rename_torchvision_v3, blocks=V3_LARGE)),),
    ),
    "mobilenet_v3_small": ModelSpec(
        builder=functools.partial(MobileNetV3, blocks=V3_SMALL, hidden_features=1024),
        input_shape=(224, 224, 3),
        reference="torchvision mobilenet_v3_small (torchvision 0.29.1)",
        published=(
            *torchvision_meta("MobileNet_V3_Small", 2_542_856, 0.057, 67.668, 87.402),
            Published(2_554_968, "keras_total", "computed: " + _KERAS.format("MobileNetV3Small")
                      + " total, not in the keras.io table (docs/sources.md sec. 3.6)"),
        ),
        converters=(Converter("torchvision", "mobilenet_v3_small",
                              functools.partial(rename_torchvision_v3, blocks=V3_SMALL)),),
    ),
}
