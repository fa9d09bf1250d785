"""Residual networks: ResNet, Wide ResNet, ResNeXt, SE-ResNet, SE-ResNeXt, SENet-154, ResNetV2.

Papers:

* He, Zhang, Ren, Sun, "Deep Residual Learning for Image Recognition", CVPR 2016 (ResNet v1).
* He, Zhang, Ren, Sun, "Identity Mappings in Deep Residual Networks", ECCV 2016 (pre-activation,
  ResNet v2).
* Zagoruyko, Komodakis, "Wide Residual Networks", BMVC 2016.
* Xie, Girshick, Dollar, Tu, He, "Aggregated Residual Transformations for Deep Neural Networks",
  CVPR 2017 (ResNeXt).
* Hu, Shen, Sun, "Squeeze-and-Excitation Networks", CVPR 2018 (SE-ResNet, SE-ResNeXt, SENet-154).

What differs between the published versions, and what each variant here follows:

* **Where the bottleneck strides.** The original Caffe ResNet (and the Caffe SENets) put the
  stride 2 on the first 1x1 convolution; torchvision, like NVIDIA's "ResNet v1.5", puts it on the
  3x3 (``stride_in_1x1=False``). Parameters are identical; MACs are not (ResNet-50 at 224:
  3.86 vs 4.09 G). ``resnet*``, ``resnext*`` and ``wide_resnet*`` follow torchvision (v1.5);
  ``seresnet*`` and the Keras ``resnet*_keras`` follow the Caffe originals (stride on the 1x1);
  ``seresnext*`` and ``senet154`` stride on the 3x3 as Cadene's ``pretrainedmodels`` (and timm's
  ``legacy_*`` ports of it) do.
* **Stem pooling.** torchvision and Keras pool 3x3/2 with one pixel of padding; Cadene's SENets
  pool without padding but round up (``ceil_mode=True``) to stay compatible with the Caffe
  weights. Both give 56x56 at 224 (same MACs), but differ in alignment and on odd sizes.
* **Biases.** torchvision, timm and Cadene convolutions have none (BatchNorm follows). The
  Keras ResNet v1 port of the Caffe weights keeps a bias on every convolution; Keras ResNetV2
  keeps one on the stem, the projection shortcut and the last 1x1 of each block.
* **Wide ResNet-50-2** (torchvision) doubles the inner width of the bottleneck (the 3x3), not its
  output, unlike the CIFAR WRNs of the paper.
* **SENet-154** has a 3-conv 3x3 stem (64-64-128), 64x4d grouped bottlenecks whose first 1x1 is
  half the group width, 3x3 projection shortcuts and dropout 0.2 before the classifier. timm's
  ``legacy_*`` ports apply that dropout to every SENet; Cadene's (followed here) only to this one.
* **SE blocks** are the two 1x1 convolutions with bias of every released port (reduction 16);
  the TPAMI paper's bias-free variant is not registered.
* **ResNetV2** follows Keras Applications (the TF-slim ``resnet_v2`` layout): pre-activation
  blocks, the stride on the *last* block of each stage (its shortcut subsamples), a final
  BatchNorm + ReLU before the pool. BatchNorm is Keras' (momentum 0.99, epsilon 1.001e-5) in both
  Keras ports, PyTorch's (0.1 there, 0.9 here; epsilon 1e-5) elsewhere.

Variants (224x224, 1000 classes). "params" are the learnable parameters (torchvision, timm,
Cadene); "Keras total" adds the BatchNorm moving statistics. GMACs count convolutions and matrix
products, batch 1, as torchvision's ``_ops`` (which they match). imgclsmob's SENet figures
(3.880 / 4.258 / 20.746) also count other layers: its ResNet-50 with the stride on the 1x1 is
3.878, where convolutions and the classifier alone make 3.858 (``resnet50_keras`` below).

==================  ===========  ===========  ======  ==============================================
variant             params       Keras total  GMACs   reference
==================  ===========  ===========  ======  ==============================================
resnet18            11,689,512   11,699,112   1.814   torchvision resnet18
resnet34            21,797,672   21,814,696   3.664   torchvision resnet34
resnet50            25,557,032   25,610,152   4.089   torchvision resnet50
resnet101           44,549,160   44,654,504   7.801   torchvision resnet101
resnet152           60,192,808   60,344,232   11.514  torchvision resnet152
wide_resnet50_2     68,883,240   68,951,464   11.398  torchvision wide_resnet50_2
wide_resnet101_2    126,886,696  127,024,552  22.753  torchvision wide_resnet101_2
resnext50_32x4d     25,028,904   25,097,128   4.230   torchvision resnext50_32x4d
resnext101_32x8d    88,791,336   88,994,216   16.414  torchvision resnext101_32x8d
resnext101_64x4d    83,455,272   83,658,152   15.460  torchvision resnext101_64x4d
seresnet50          28,088,024   28,141,144   3.860   Cadene se_resnet50, timm legacy_seresnet50
seresnet101         49,326,872   49,432,216   7.575   Cadene se_resnet101
seresnet152         66,821,848   66,973,272   11.289  Cadene se_resnet152
seresnext50_32x4d   27,559,896   27,628,120   4.233   Cadene se_resnext50_32x4d
seresnext101_32x4d  48,955,416   49,093,272   7.975   Cadene se_resnext101_32x4d
senet154            115,088,984  115,336,536  20.688  Cadene senet154, timm legacy_senet154
resnet50_keras      25,583,592   25,636,712   3.858   keras.applications.ResNet50
resnet101_keras     44,601,832   44,707,176   7.570   keras.applications.ResNet101
resnet152_keras     60,268,520   60,419,944   11.282  keras.applications.ResNet152
resnet50_v2         25,568,360   25,613,800   3.482   keras.applications.ResNet50V2
resnet101_v2        44,577,896   44,675,560   7.195   keras.applications.ResNet101V2
resnet152_v2        60,236,904   60,380,648   10.907  keras.applications.ResNet152V2
==================  ===========  ===========  ======  ==============================================
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxcnn import conv, layers
from jaxcnn.spec import (
    Converter, ModelSpec, NotMine, Published, groups, keras_leaf, keras_parts, lookup, number,
    torch_leaf, torch_parts, torchvision_meta,
)

STAGE_WIDTHS = (64, 128, 256, 512)
"""Bottleneck widths ("planes") of the four stages; outputs are these times the expansion."""


class _ResidualBlock(nn.Module):
    """Fields shared by the post-activation blocks (abstract)."""

    features: int
    strides: int = 1
    groups: int = 1
    base_width: int = 64
    first_width_ratio: float = 1.0
    stride_in_1x1: bool = False
    se_reduction: int = 0
    downsample_kernel: int = 1
    conv_bias: bool = False
    norm: Callable[..., nn.Module] = layers.batch_norm()
    kernel_init: Callable = layers.kaiming_normal_fan_out
    dtype: Any = jnp.float32

    def _conv(self, features: int, kernel: int, **kwargs: Any) -> layers.ConvBN:
        return layers.ConvBN(
            features, kernel, padding=kernel // 2, use_bias=self.conv_bias, norm=self.norm,
            kernel_init=self.kernel_init, dtype=self.dtype, **kwargs,
        )

    def _excite_and_add(self, y: jax.Array, x: jax.Array, *, train: bool) -> jax.Array:
        features = y.shape[-1]
        if self.se_reduction:
            y = layers.SqueezeExcite(
                features // self.se_reduction, dtype=self.dtype, name="squeeze_excite"
            )(y)
        shortcut = x
        if self.strides != 1 or x.shape[-1] != features:
            shortcut = self._conv(
                features, self.downsample_kernel, strides=self.strides, act=None,
                name="downsample",
            )(x, train=train)
        # The next block reads the sum twice: stored once, not recomputed (conv.kept_on_cpu).
        return conv.kept_on_cpu(nn.relu(y + shortcut))


class BasicBlock(_ResidualBlock):
    """Two 3x3 convolutions (ResNet-18/34)."""

    expansion = 1

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        if self.groups != 1 or self.base_width != 64 or self.first_width_ratio != 1.0:
            raise ValueError("BasicBlock takes no groups or width options (as in torchvision)")
        y = self._conv(self.features, 3, strides=self.strides, name="conv1")(x, train=train)
        y = self._conv(self.features, 3, act=None, name="conv2")(y, train=train)
        return self._excite_and_add(y, x, train=train)


class Bottleneck(_ResidualBlock):
    """1x1 reduce, 3x3 (grouped for ResNeXt), 1x1 expand by 4; optional squeeze-excitation."""

    expansion = 4

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        width = int(self.features * self.base_width / 64) * self.groups
        s1, s3 = (self.strides, 1) if self.stride_in_1x1 else (1, self.strides)
        y = self._conv(int(width * self.first_width_ratio), 1, strides=s1, name="conv1")(
            x, train=train)
        y = self._conv(width, 3, strides=s3, groups=self.groups, name="conv2")(y, train=train)
        y = self._conv(self.features * self.expansion, 1, act=None, name="conv3")(y, train=train)
        return self._excite_and_add(y, x, train=train)


class Stem(nn.Module):
    """One 7x7/2 convolution (or, for SENet-154, a stack of 3x3 ones) and a 3x3/2 max pool."""

    widths: tuple[int, ...] = (64,)
    pool_ceil: bool = False
    conv_bias: bool = False
    norm: Callable[..., nn.Module] = layers.batch_norm()
    kernel_init: Callable = layers.kaiming_normal_fan_out
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        kernel = 7 if len(self.widths) == 1 else 3
        for i, width in enumerate(self.widths):
            x = layers.ConvBN(
                width, kernel, strides=2 if i == 0 else 1, padding=kernel // 2,
                use_bias=self.conv_bias, norm=self.norm, kernel_init=self.kernel_init,
                dtype=self.dtype, name=f"conv{i + 1}",
            )(x, train=train)
        # Keras zero-pads before this pool, torchvision pads with -inf: after the ReLU the two
        # agree. Cadene's SENets pool unpadded with ceil_mode, as the Caffe originals did.
        if self.pool_ceil:
            return layers.max_pool(x, 3, 2, ceil_mode=True)
        return layers.max_pool(x, 3, 2, padding=1)


class ResNet(layers.Classifier):
    """ResNet v1/v1.5 and its relatives (Wide, ResNeXt, SE, SENet-154) through block options.

    ``stage_sizes`` are the blocks per stage; ``block`` is :class:`BasicBlock` or
    :class:`Bottleneck`. ``groups`` and ``base_width`` set the grouped 3x3 width
    (``int(planes * base_width / 64) * groups``, torchvision's rule); ``first_width_ratio`` scales
    the first 1x1 (0.5 in SENet-154); ``se_reduction`` > 0 adds squeeze-excitation;
    ``downsample_kernel`` is the kernel of the projection shortcuts of stages 2-4.
    """

    stage_sizes: tuple[int, ...]
    block: type[_ResidualBlock] = Bottleneck
    groups: int = 1
    base_width: int = 64
    first_width_ratio: float = 1.0
    stride_in_1x1: bool = False
    se_reduction: int = 0
    stem_widths: tuple[int, ...] = (64,)
    stem_pool_ceil: bool = False
    downsample_kernel: int = 1
    conv_bias: bool = False
    bn_momentum: float = 0.9
    bn_epsilon: float = 1e-5
    dropout_rate: float = 0.0
    kernel_init: Callable = layers.kaiming_normal_fan_out
    head_init: Callable = nn.initializers.lecun_normal()

    @property
    def min_size(self) -> int:
        # Padded strided convolutions and the padded pool keep any size >= 1 at >= 1 pixel;
        # Cadene's unpadded ceil-mode pool needs 2 pixels in, i.e. 3 at the input.
        return 3 if self.stem_pool_ceil else 1

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        x = self.check_input(x, model="ResNet")
        norm = self.norm_layer(momentum=self.bn_momentum, epsilon=self.bn_epsilon)
        common = dict(conv_bias=self.conv_bias, norm=norm, kernel_init=self.kernel_init,
                      dtype=self.dtype)
        x = Stem(self.stem_widths, self.stem_pool_ceil, name="stem", **common)(x, train=train)
        block = functools.partial(
            self.block, groups=self.groups, base_width=self.base_width,
            first_width_ratio=self.first_width_ratio, stride_in_1x1=self.stride_in_1x1,
            se_reduction=self.se_reduction, **common,
        )
        for i, (size, width) in enumerate(zip(self.stage_sizes, STAGE_WIDTHS)):
            for j in range(size):
                first_strided = i > 0 and j == 0
                x = block(
                    width, strides=2 if first_strided else 1,
                    downsample_kernel=self.downsample_kernel if first_strided else 1,
                    name=f"stage{i + 1}_block{j + 1}",
                )(x, train=train)
        return self.forward_head(x, train=train, dropout_rate=self.dropout_rate,
                                 kernel_init=self.head_init)


class PreActBottleneck(nn.Module):
    """Pre-activation bottleneck (ResNet v2): BN-ReLU first, no activation after the sum."""

    features: int
    strides: int = 1
    norm: Callable[..., nn.Module] = layers.batch_norm()
    kernel_init: Callable = nn.initializers.glorot_uniform()
    dtype: Any = jnp.float32

    expansion = 4

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        out = self.features * self.expansion
        preact = nn.relu(self.norm(name="preact_bn")(x, use_running_average=not train))
        conv = functools.partial(layers.Conv, kernel_init=self.kernel_init, dtype=self.dtype)
        if x.shape[-1] != out:
            shortcut = conv(out, (1, 1), strides=self.strides, name="shortcut")(preact)
        else:
            # Keras subsamples with a 1x1 max pool of stride 2: every other pixel.
            shortcut = x[:, :: self.strides, :: self.strides]
        unit = functools.partial(layers.ConvBN, norm=self.norm, kernel_init=self.kernel_init,
                                 dtype=self.dtype)
        y = unit(self.features, 1, name="conv1")(preact, train=train)
        y = unit(self.features, 3, strides=self.strides, padding=1, name="conv2")(y, train=train)
        y = conv(out, (1, 1), name="conv3")(y)
        return shortcut + y


class ResNetV2(layers.Classifier):
    """Pre-activation ResNet as Keras Applications builds it (``ResNet50V2`` and deeper).

    The stride sits on the last block of every stage but the last; the stem convolution is
    followed by the pool directly (its BatchNorm-ReLU are the first block's pre-activation).
    """

    stage_sizes: tuple[int, ...]
    bn_momentum: float = 0.99
    bn_epsilon: float = 1.001e-5
    kernel_init: Callable = nn.initializers.glorot_uniform()

    min_size = 1
    """Every strided layer is padded, so even a 1x1 image keeps one pixel to the end."""

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        x = self.check_input(x, model="ResNetV2")
        norm = self.norm_layer(momentum=self.bn_momentum, epsilon=self.bn_epsilon)
        x = layers.Conv(64, (7, 7), strides=2, padding=layers.pair_padding(3),
                        kernel_init=self.kernel_init, dtype=self.dtype, name="stem")(x)
        # No ReLU before this pool, so Keras' zero padding is not -inf padding.
        x = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
        x = layers.max_pool(x, 3, 2)
        last_stage = len(self.stage_sizes) - 1
        for i, (size, width) in enumerate(zip(self.stage_sizes, STAGE_WIDTHS)):
            for j in range(size):
                strided = i < last_stage and j == size - 1
                x = PreActBottleneck(
                    width, strides=2 if strided else 1, norm=norm, kernel_init=self.kernel_init,
                    dtype=self.dtype, name=f"stage{i + 1}_block{j + 1}",
                )(x, train=train)
        x = nn.relu(norm(name="post_bn")(x, use_running_average=not train))
        return self.forward_head(x, train=train, kernel_init=self.kernel_init)


# --- Converters: reference array names -> our variable paths ----------------------------------

def _torch_module(parts: list[str]) -> str:
    if parts in (["conv1"], ["bn1"]):  # torchvision stem
        return f"stem/conv1/{parts[0][:-1]}"
    if parts[0] == "layer0" and len(parts) == 2:  # Cadene/timm stem: conv1, bn1 (, conv2 ...)
        unit = lookup({"conv": "conv", "bn": "bn"}, parts[1][:-1])
        return f"stem/conv{number(parts[1][-1])}/{unit}"
    if parts in (["fc"], ["last_linear"]):
        return "head"
    if not parts[0].startswith("layer") or len(parts) < 3:
        raise NotMine(".".join(parts))
    block = f"stage{number(parts[0][len('layer'):])}_block{number(parts[1]) + 1}"
    if parts[2] == "downsample" and len(parts) == 4:
        return f"{block}/downsample/{lookup({'0': 'conv', '1': 'bn'}, parts[3])}"
    if parts[2] == "se_module" and len(parts) == 4:
        return f"{block}/squeeze_excite/{lookup({'fc1': 'reduce', 'fc2': 'expand'}, parts[3])}"
    if len(parts) != 3:
        raise NotMine(".".join(parts))
    unit = lookup({"conv": "conv", "bn": "bn"}, parts[2][:-1])
    return f"{block}/conv{number(parts[2][-1])}/{unit}"  # conv2 / bn2


def torch_rename(key: str) -> str | None:
    """torchvision ResNet and timm/Cadene legacy SENet state-dict keys to our variable paths."""
    parts, leaf = torch_parts(key)
    module = _torch_module(parts)
    return torch_leaf(module, leaf, norm=module.endswith("bn"))


_KERAS_UNITS = {
    "0_conv": "downsample/conv", "0_bn": "downsample/bn", "preact_bn": "preact_bn",
    "1_conv": "conv1/conv", "1_bn": "conv1/bn", "2_conv": "conv2/conv", "2_bn": "conv2/bn",
    "3_conv": "conv3/conv", "3_bn": "conv3/bn",
}
_KERAS_TOP = {"conv1_conv": "stem/conv1/conv", "conv1_bn": "stem/conv1/bn",
              "predictions": "head", "post_bn": "post_bn"}


def keras_rename(key: str) -> str | None:
    """Keras ResNet50/101/152 and ResNet50V2/101V2/152V2 ``layer/weight`` names to ours.

    The V1 stem is a conv+BN unit, the V2 stem a bare convolution (see :func:`keras_v2_rename`).
    """
    layer, leaf = keras_parts(key)
    if layer in _KERAS_TOP:
        return keras_leaf(_KERAS_TOP[layer], leaf)
    stage, block, unit = groups(r"conv(\d)_block(\d+)_(\w+)", layer)
    return keras_leaf(f"stage{int(stage) - 1}_block{block}/{lookup(_KERAS_UNITS, unit)}", leaf)


def keras_v2_rename(key: str) -> str | None:
    """As :func:`keras_rename`, for ResNetV2's bare stem, shortcut and last 1x1 convolutions."""
    path = keras_rename(key)
    return (path.replace("/stem/conv1/conv/", "/stem/")
            .replace("/downsample/conv/", "/shortcut/")
            .replace("/conv3/conv/", "/conv3/"))


# --- Variants ---------------------------------------------------------------------------------

_DEPTHS = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3), 50: (3, 4, 6, 3), 101: (3, 4, 23, 3),
           152: (3, 8, 36, 3)}

_KA = "keras.io Applications table (exact-integer revision)"
_KA_TRAINABLE = "Keras 3.15.1 keras.applications.{}(weights=None) trainable"
_CAD = "Cadene pretrained-models.pytorch README"


def _tv(name: str, weights: str, builder: Callable[..., nn.Module], params: int, gmacs: float,
        top1: float, top5: float) -> ModelSpec:
    return ModelSpec(
        builder=builder,
        input_shape=(224, 224, 3),
        reference=f"torchvision.models.{name} (ResNet v1.5: stride on the 3x3)",
        published=torchvision_meta(weights, params, gmacs, top1, top5),
        converters=(Converter("torchvision", name, torch_rename),),
    )


def _tv_resnet(depth: int, **kwargs: Any) -> Callable[..., nn.Module]:
    block = BasicBlock if depth < 50 else Bottleneck
    return functools.partial(ResNet, stage_sizes=_DEPTHS[depth], block=block, **kwargs)


_SE = dict(se_reduction=16, stem_pool_ceil=True)
_SENET154 = dict(
    groups=64, base_width=4, first_width_ratio=0.5, stem_widths=(64, 64, 128),
    downsample_kernel=3, dropout_rate=0.2, **_SE,
)
_KERAS_V1 = dict(
    stride_in_1x1=True, conv_bias=True, bn_momentum=0.99, bn_epsilon=1.001e-5,
    kernel_init=nn.initializers.glorot_uniform(), head_init=nn.initializers.glorot_uniform(),
)


def _cadene(name: str, timm_name: str, builder: Callable[..., nn.Module],
            *published: Published) -> ModelSpec:
    return ModelSpec(
        builder=builder,
        input_shape=(224, 224, 3),
        reference=f"Cadene pretrainedmodels {name} = timm {timm_name} (ceil-mode stem pool)",
        published=published,
        # timm's legacy ports apply dropout 0.2 before the classifier of every SENet; Cadene's
        # (and the Caffe originals) only in SENet-154. Off here, so train-mode outputs compare.
        converters=(Converter("timm", timm_name, torch_rename,
                              reference_kwargs=(("drop_rate", 0.0),)),),
    )


def _keras(name: str, builder: Callable[..., nn.Module], *published: Published) -> ModelSpec:
    rename = keras_v2_rename if name.endswith("V2") else keras_rename
    return ModelSpec(builder=builder, input_shape=(224, 224, 3),
                     reference=f"keras.applications.{name}", published=published,
                     converters=(Converter("keras", name, rename),))


def _v2(depth: int) -> Callable[..., nn.Module]:
    return functools.partial(ResNetV2, stage_sizes=_DEPTHS[depth])


MODELS: dict[str, ModelSpec] = {
    "resnet18": _tv("resnet18", "ResNet18", _tv_resnet(18), 11_689_512, 1.814, 69.758, 89.078),
    "resnet34": _tv("resnet34", "ResNet34", _tv_resnet(34), 21_797_672, 3.664, 73.314, 91.420),
    "resnet50": _tv("resnet50", "ResNet50", _tv_resnet(50), 25_557_032, 4.089, 76.130, 92.862),
    "resnet101": _tv("resnet101", "ResNet101", _tv_resnet(101), 44_549_160, 7.801, 77.374,
                     93.546),
    "resnet152": _tv("resnet152", "ResNet152", _tv_resnet(152), 60_192_808, 11.514, 78.312,
                     94.046),
    "wide_resnet50_2": _tv("wide_resnet50_2", "Wide_ResNet50_2",
                           _tv_resnet(50, base_width=128), 68_883_240, 11.398, 78.468, 94.086),
    "wide_resnet101_2": _tv("wide_resnet101_2", "Wide_ResNet101_2",
                            _tv_resnet(101, base_width=128), 126_886_696, 22.753, 78.848,
                            94.284),
    "resnext50_32x4d": _tv("resnext50_32x4d", "ResNeXt50_32X4D",
                           _tv_resnet(50, groups=32, base_width=4), 25_028_904, 4.230, 77.618,
                           93.698),
    "resnext101_32x8d": _tv("resnext101_32x8d", "ResNeXt101_32X8D",
                            _tv_resnet(101, groups=32, base_width=8), 88_791_336, 16.414, 79.312,
                            94.526),
    "resnext101_64x4d": _tv("resnext101_64x4d", "ResNeXt101_64X4D",
                            _tv_resnet(101, groups=64, base_width=4), 83_455_272, 15.460, 83.246,
                            96.454),
    "seresnet50": _cadene(
        "se_resnet50", "legacy_seresnet50", _tv_resnet(50, stride_in_1x1=True, **_SE),
        Published(28_088_024, "params",
                  "osmr/imgclsmob gluon/README.md, SE-ResNet-50 (= timm 1.0.31 legacy_seresnet50)"),
        Published(77.636, "top1", _CAD),
        Published(93.752, "top5", _CAD),
    ),
    "seresnet101": _cadene(
        "se_resnet101", "legacy_seresnet101", _tv_resnet(101, stride_in_1x1=True, **_SE),
        Published(49_326_872, "params", "computed from timm 1.0.31 legacy_seresnet101"),
        Published(78.396, "top1", _CAD),
        Published(94.258, "top5", _CAD),
    ),
    "seresnet152": _cadene(
        "se_resnet152", "legacy_seresnet152", _tv_resnet(152, stride_in_1x1=True, **_SE),
        Published(66_821_848, "params", "computed from timm 1.0.31 legacy_seresnet152"),
        Published(78.658, "top1", _CAD),
        Published(94.374, "top5", _CAD),
    ),
    "seresnext50_32x4d": _cadene(
        "se_resnext50_32x4d", "legacy_seresnext50_32x4d",
        _tv_resnet(50, groups=32, base_width=4, **_SE),
        Published(27_559_896, "params",
                  "osmr/imgclsmob gluon/README.md, SE-ResNeXt-50 (32x4d) (= timm 1.0.31 "
                  "legacy_seresnext50_32x4d)"),
        Published(79.076, "top1", _CAD),
        Published(94.434, "top5", _CAD),
    ),
    "seresnext101_32x4d": _cadene(
        "se_resnext101_32x4d", "legacy_seresnext101_32x4d",
        _tv_resnet(101, groups=32, base_width=4, **_SE),
        Published(48_955_416, "params", "computed from timm 1.0.31 legacy_seresnext101_32x4d"),
        Published(80.236, "top1", _CAD),
        Published(95.028, "top5", _CAD),
    ),
    "senet154": _cadene(
        "senet154", "legacy_senet154", _tv_resnet(152, **_SENET154),
        Published(115_088_984, "params",
                  "osmr/imgclsmob gluon/README.md, SENet-154 (= timm 1.0.31 legacy_senet154)"),
        Published(81.304, "top1", _CAD),
        Published(95.498, "top5", _CAD),
    ),
    "resnet50_keras": _keras(
        "ResNet50", _tv_resnet(50, **_KERAS_V1),
        Published(25_636_712, "keras_total", _KA),
        Published(25_583_592, "params", _KA_TRAINABLE.format("ResNet50")),
        Published(74.9, "top1", _KA),
        Published(92.1, "top5", _KA),
    ),
    "resnet101_keras": _keras(
        "ResNet101", _tv_resnet(101, **_KERAS_V1),
        Published(44_707_176, "keras_total", _KA),
        Published(44_601_832, "params", _KA_TRAINABLE.format("ResNet101")),
        Published(76.4, "top1", _KA),
        Published(92.8, "top5", _KA),
    ),
    "resnet152_keras": _keras(
        "ResNet152", _tv_resnet(152, **_KERAS_V1),
        Published(60_419_944, "keras_total", _KA),
        Published(60_268_520, "params", _KA_TRAINABLE.format("ResNet152")),
        Published(76.6, "top1", _KA),
        Published(93.1, "top5", _KA),
    ),
    "resnet50_v2": _keras(
        "ResNet50V2", _v2(50),
        Published(25_613_800, "keras_total", _KA),
        Published(25_568_360, "params", _KA_TRAINABLE.format("ResNet50V2")),
        Published(76.0, "top1", _KA),
        Published(93.0, "top5", _KA),
    ),
    "resnet101_v2": _keras(
        "ResNet101V2", _v2(101),
        Published(44_675_560, "keras_total", _KA),
        Published(77.2, "top1", _KA),
        Published(93.8, "top5", _KA),
    ),
    "resnet152_v2": _keras(
        "ResNet152V2", _v2(152),
        Published(60_380_648, "keras_total", _KA),
        Published(78.0, "top1", _KA),
        Published(94.2, "top5", _KA),
    ),
}
