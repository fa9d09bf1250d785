"""EfficientNet B0-B7.

Paper: Tan & Le, "EfficientNet: Rethinking Model Scaling for Convolutional Neural Networks",
ICML 2019. B0 (Table 1) is a MnasNet-like stack of inverted residuals (MBConv,
:class:`jaxcnn.layers.InvertedResidual`) with squeeze-excitation and SiLU ("swish"); B1-B7 scale
it by compound scaling: every width by ``width`` (rounded to a multiple of 8 without losing more
than 10%), every stage's repeats by ``depth`` (rounded up), the input size, and the dropout rate.
Stochastic depth grows linearly from 0 to 0.2 over the blocks (residual blocks only).

What differs between the two released weight sets, and what each variant here follows:

* ``efficientnet_b*`` follow torchvision: symmetric ``k // 2`` padding; BatchNorm epsilon 1e-5
  and PyTorch momentum 0.1 (0.9 here) for B0-B4, but epsilon 1e-3 and momentum 0.01 (0.99
  here) for B5-B7, whose weights were ported from TensorFlow. Inputs are normalised outside
  the network (ImageNet mean/std).
* ``efficientnet_b*_keras`` follow Keras Applications: TensorFlow's padding (``correct_pad``
  zero-padding before every stride-2 convolution, i.e. one pixel less at the top/left on even
  sizes), BatchNorm epsilon 1e-3 and momentum 0.99, and the input preprocessing inside the
  network: ``Rescaling(1/255)`` then ``Normalization``, ``(x - mean) / sqrt(variance)``. Its
  mean (3), variance (3) and sample count (1) are not trained; they live here in the
  ``batch_stats`` collection under ``normalization``, and Keras counts them in its "Total
  params" (hence the +7). Keras initialises them to 0, 1 and 0 (so without weights the network
  only rescales by 1/255) and its ImageNet weights set them; those weights store the standard
  deviation where the variance belongs and follow the layer with ``Rescaling(1/sqrt(std))``,
  so a converter must store ``std**2`` as ``variance`` here. Keras models take pixels in
  [0, 255].
* **Input size.** Both use the paper's sizes except for B2: torchvision evaluates its B2
  weights at 288x288 (1.088 GMACs), the paper and Keras at 260x260 (docs/sources.md sec. 3.3).
  Any size of at least 1x1 runs (the pooling before the head is global).
* Parameters are identical (Keras trainable = torchvision); the SE bottleneck is a quarter of
  the block's *input* width.

Variants (at the default input; "Keras total" adds BatchNorm moving statistics and the 7
numbers of ``normalization``):

=====================  ==========  ===========  =====  ======  ===================================
variant                params      Keras total  input  GMACs   reference
=====================  ==========  ===========  =====  ======  ===================================
efficientnet_b0        5,288,548                224    0.386   torchvision efficientnet_b0
efficientnet_b1        7,794,184                240    0.687   torchvision efficientnet_b1
efficientnet_b2        9,109,994                288    1.088   torchvision efficientnet_b2
efficientnet_b3        12,233,232               300    1.827   torchvision efficientnet_b3
efficientnet_b4        19,341,616               380    4.394   torchvision efficientnet_b4
efficientnet_b5        30,389,784               456    10.266  torchvision efficientnet_b5
efficientnet_b6        43,040,704               528    19.068  torchvision efficientnet_b6
efficientnet_b7        66,347,960               600    37.746  torchvision efficientnet_b7
efficientnet_b0_keras  5,288,548   5,330,571    224    0.386   keras.applications.EfficientNetB0
efficientnet_b1_keras  7,794,184   7,856,239    240    0.687   keras.applications.EfficientNetB1
efficientnet_b2_keras  9,109,994   9,177,569    260    0.994   keras.applications.EfficientNetB2
efficientnet_b3_keras  12,233,232  12,320,535   300    1.827   keras.applications.EfficientNetB3
efficientnet_b4_keras  19,341,616  19,466,823   380    4.394   keras.applications.EfficientNetB4
efficientnet_b5_keras  30,389,784  30,562,527   456    10.266  keras.applications.EfficientNetB5
efficientnet_b6_keras  43,040,704  43,265,143   528    19.068  keras.applications.EfficientNetB6
efficientnet_b7_keras  66,347,960  66,658,687   600    37.746  keras.applications.EfficientNetB7
=====================  ==========  ===========  =====  ======  ===================================
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxcnn import layers
from jaxcnn.spec import (
    Converter, ModelSpec, NotMine, Published, groups, keras_leaf, keras_parts, lookup, number,
    torch_inverted_residual, torch_parts, torchvision_meta, torchvision_stack_ends,
)

# B0, paper Table 1: (expand ratio, kernel, stride, input channels, output channels, repeats).
B0_STAGES: tuple[tuple[int, int, int, int, int, int], ...] = (
    (1, 3, 1, 32, 16, 1),
    (6, 3, 2, 16, 24, 2),
    (6, 5, 2, 24, 40, 2),
    (6, 3, 2, 40, 80, 3),
    (6, 5, 1, 80, 112, 3),
    (6, 5, 2, 112, 192, 4),
    (6, 3, 1, 192, 320, 1),
)
STEM_FEATURES = 32
FINAL_FEATURES = 1280


class InputNormalization(nn.Module):
    """Keras' ``Rescaling(1/255)`` and ``Normalization``; its statistics are state, not params."""

    epsilon: float = 1e-7  # Keras' backend epsilon, the floor of the standard deviation

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        channels = x.shape[-1]
        mean = self.variable("batch_stats", "mean", jnp.zeros, (channels,), jnp.float32)
        variance = self.variable("batch_stats", "variance", jnp.ones, (channels,), jnp.float32)
        # Keras keeps the number of samples its statistics were adapted on; it is unused here.
        self.variable("batch_stats", "count", jnp.zeros, (), jnp.float32)
        std = jnp.maximum(jnp.sqrt(variance.value), self.epsilon)
        return ((x / 255.0 - mean.value) / std).astype(x.dtype)


class EfficientNet(layers.Classifier):
    """EfficientNet: the B0 stages of :data:`B0_STAGES` scaled by ``width`` and ``depth``."""

    width: float = 1.0
    depth: float = 1.0
    dropout_rate: float = 0.2
    drop_path_rate: float = 0.2
    padding: str = "symmetric"
    input_normalization: bool = False
    bn_momentum: float = 0.9
    bn_epsilon: float = 1e-5

    # Symmetric k // 2 padding and Keras' correct_pad both map 1 pixel to 1 pixel at stride 2.
    min_size = 1

    def round_channels(self, channels: int) -> int:
        """A B0 width scaled by ``width``, rounded to a multiple of 8 (at most 10% lost)."""
        return layers.make_divisible(channels * self.width, 8)

    def round_repeats(self, repeats: int) -> int:
        """A B0 stage depth scaled by ``depth``, rounded up."""
        return int(math.ceil(repeats * self.depth))

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        x = self.check_input(x, model="EfficientNet")
        if self.padding not in ("symmetric", "keras"):
            raise ValueError(f"padding must be 'symmetric' or 'keras', not {self.padding!r}")
        if self.input_normalization:
            x = InputNormalization(name="normalization")(x)
        norm = self.norm_layer(momentum=self.bn_momentum, epsilon=self.bn_epsilon)
        conv = functools.partial(layers.ConvBN, norm=norm, act=nn.silu,
                                 kernel_init=layers.kaiming_normal_fan_out, dtype=self.dtype)
        stem_pad = layers.keras_correct_pad(x.shape[1:3], 3) if self.padding == "keras" else 1
        x = conv(self.round_channels(STEM_FEATURES), 3, 2, stem_pad, name="stem")(x, train=train)

        total_blocks = sum(self.round_repeats(stage[-1]) for stage in B0_STAGES)
        block_id = 0
        for i, (expand, kernel, stride, _, out, repeats) in enumerate(B0_STAGES, start=1):
            for j in range(self.round_repeats(repeats)):
                in_features = x.shape[-1]
                x = layers.InvertedResidual(
                    self.round_channels(out),
                    layers.make_divisible(in_features * expand, 8),
                    kernel,
                    stride if j == 0 else 1,
                    se_features=max(1, in_features // 4),
                    act=nn.silu, se_act=nn.silu, se_gate=nn.sigmoid,
                    padding=self.padding, norm=norm,
                    drop_path_rate=self.drop_path_rate * block_id / total_blocks,
                    dtype=self.dtype, name=f"stage{i}_block{j + 1}",
                )(x, train=train)
                block_id += 1

        x = conv(self.round_channels(FINAL_FEATURES), 1, name="final_conv")(x, train=train)
        # torchvision's uniform(+-1/sqrt(classes)) = Keras' VarianceScaling(1/3, fan_out, uniform).
        return self.forward_head(
            x, train=train, dropout_rate=self.dropout_rate,
            kernel_init=nn.initializers.variance_scaling(1 / 3, "fan_out", "uniform"),
        )


# ---------------------------------------------------------------------------------------------
# Weight converters (the blocks are MobileNet's, and so are the naming schemes; the shared
# pieces are jaxcnn.spec's)

# Sub-layers of a torchvision MBConv, in order; stage 1 (expand ratio 1) has no expansion.
_TV_PARTS = ("expand", "depthwise", "squeeze_excite", "project")


def rename_torchvision(key: str) -> str | None:
    """torchvision ``efficientnet_b*`` -> :class:`EfficientNet` (any width and depth)."""
    path, leaf = torch_parts(key)
    last = len(B0_STAGES) + 1
    if (end := torchvision_stack_ends(path, leaf, last=last, classifier={"1": "head"})):
        return end
    if len(path) < 4 or path[3] != "block":
        raise NotMine(key)
    i = int(path[1])
    parts = _TV_PARTS[1:] if B0_STAGES[i - 1][0] == 1 else _TV_PARTS
    return torch_inverted_residual(f"stage{i}_block{number(path[2]) + 1}", parts, path[4:], leaf)


# Keras layer-name suffix of a block -> our sub-module.
_KERAS_PARTS = {"expand_conv": "expand/conv", "expand_bn": "expand/bn",
                "dwconv": "depthwise/conv", "bn": "depthwise/bn",
                "se_reduce": "squeeze_excite/reduce", "se_expand": "squeeze_excite/expand",
                "project_conv": "project/conv", "project_bn": "project/bn"}
_KERAS_TOP = {"stem_conv": "stem/conv", "stem_bn": "stem/bn", "top_conv": "final_conv/conv",
              "top_bn": "final_conv/bn", "predictions": "head"}
_KERAS_NORMALIZATION = ("mean", "variance", "count")


def rename_keras(key: str) -> str | None:
    """``keras.applications.EfficientNetB*`` -> :class:`EfficientNet` (``padding="keras"``).

    ``block{stage}{letter}_{part}``: the stage 1-7 and the block a, b, c, ... within it.
    """
    layer, leaf = keras_parts(key)
    if layer == "normalization" and leaf in _KERAS_NORMALIZATION:
        return f"batch_stats/normalization/{leaf}"
    if layer in _KERAS_TOP:
        return keras_leaf(_KERAS_TOP[layer], leaf)
    stage, letter, part = groups(r"block(\d)([a-z])_(\w+)", layer)
    block = f"stage{stage}_block{ord(letter) - ord('a') + 1}"
    return keras_leaf(f"{block}/{lookup(_KERAS_PARTS, part)}", leaf)


def fix_keras(key: str, array, shape):
    """Keras' ImageNet files store the standard deviation as ``normalization/variance`` (and
    Keras divides by its square root once more in an extra ``Rescaling``); ours is the variance.

    A network built without ImageNet weights has variance 1, which squaring leaves unchanged.
    """
    return array ** 2 if key == "normalization/variance" else array


@dataclasses.dataclass(frozen=True)
class Scaling:
    """Compound-scaling coefficients of one variant, and its published figures."""

    width: float
    depth: float
    dropout: float
    tv_size: int
    keras_size: int
    tv_params: int
    tv_gmacs: float
    tv_top1: float
    tv_top5: float
    keras_total: int
    keras_top1: float
    keras_top5: float


# width, depth, dropout (paper / torchvision / Keras); input sizes; published figures: params,
# GMACs, top-1 and top-5 of torchvision's EfficientNet_B*_Weights.IMAGENET1K_V1 meta, Keras
# totals of the keras.io Applications table (exact-integer revision), Keras top-1 and top-5 of
# its current revision.
SCALING: dict[str, Scaling] = {
    "b0": Scaling(1.0, 1.0, 0.2, 224, 224, 5_288_548, 0.386, 77.692, 93.532, 5_330_571, 77.1,
                  93.3),
    "b1": Scaling(1.0, 1.1, 0.2, 240, 240, 7_794_184, 0.687, 78.642, 94.186, 7_856_239, 79.1,
                  94.4),
    "b2": Scaling(1.1, 1.2, 0.3, 288, 260, 9_109_994, 1.088, 80.608, 95.310, 9_177_569, 80.1,
                  94.9),
    "b3": Scaling(1.2, 1.4, 0.3, 300, 300, 12_233_232, 1.827, 82.008, 96.054, 12_320_535, 81.6,
                  95.7),
    "b4": Scaling(1.4, 1.8, 0.4, 380, 380, 19_341_616, 4.394, 83.384, 96.594, 19_466_823, 82.9,
                  96.4),
    "b5": Scaling(1.6, 2.2, 0.4, 456, 456, 30_389_784, 10.266, 83.444, 96.628, 30_562_527, 83.6,
                  96.7),
    "b6": Scaling(1.8, 2.6, 0.5, 528, 528, 43_040_704, 19.068, 84.008, 96.916, 43_265_143, 84.0,
                  96.8),
    "b7": Scaling(2.0, 3.1, 0.5, 600, 600, 66_347_960, 37.746, 84.122, 96.908, 66_658_687, 84.3,
                  97.0),
}

_KA = "keras.io Applications table"


def _torchvision(variant: str, s: Scaling) -> ModelSpec:
    # torchvision builds B5-B7 with TensorFlow's BatchNorm settings (their weights came from TF).
    bn = {"bn_momentum": 0.99, "bn_epsilon": 1e-3} if variant in ("b5", "b6", "b7") else {}
    size_note = " (evaluated at 288; the paper and Keras use 260)" if variant == "b2" else ""
    return ModelSpec(
        builder=functools.partial(EfficientNet, width=s.width, depth=s.depth,
                                  dropout_rate=s.dropout, **bn),
        input_shape=(s.tv_size, s.tv_size, 3),
        reference=f"torchvision efficientnet_{variant} (torchvision 0.29.1){size_note}",
        published=torchvision_meta(f"EfficientNet_{variant.upper()}", s.tv_params, s.tv_gmacs,
                                   s.tv_top1, s.tv_top5),
        converters=(Converter("torchvision", f"efficientnet_{variant}", rename_torchvision),),
    )


def _keras(variant: str, s: Scaling) -> ModelSpec:
    name = f"EfficientNet{variant.upper()}"
    return ModelSpec(
        builder=functools.partial(EfficientNet, width=s.width, depth=s.depth,
                                  dropout_rate=s.dropout, padding="keras",
                                  input_normalization=True, bn_momentum=0.99, bn_epsilon=1e-3),
        input_shape=(s.keras_size, s.keras_size, 3),
        reference=(f"keras.applications.{name} (Keras 3.15.1); takes pixels in [0, 255]"
                   + ("; 260x260 as in the paper (torchvision's B2 uses 288)"
                      if variant == "b2" else "")),
        published=(
            Published(s.keras_total, "keras_total", _KA + f" (exact-integer revision), {name}"),
            Published(s.tv_params, "params",
                      f"Keras 3.15.1 keras.applications.{name}(weights=None) trainable "
                      "(= torchvision)"),
            Published(s.keras_top1, "top1", _KA + f" (current revision), {name}"),
            Published(s.keras_top5, "top5", _KA + f" (current revision), {name}"),
        ),
        converters=(Converter("keras", name, rename_keras, fix=fix_keras),),
    )


MODELS: dict[str, ModelSpec] = {
    **{f"efficientnet_{v}": _torchvision(v, s) for v, s in SCALING.items()},
    **{f"efficientnet_{v}_keras": _keras(v, s) for v, s in SCALING.items()},
}
