"""DenseNet-BC: Huang et al., "Densely Connected Convolutional Networks", CVPR 2017
(arXiv:1608.06993).

Each layer of a dense block sees the concatenation of every earlier feature map of the block and
adds ``growth_rate`` new maps (BN-ReLU-1x1 conv to ``bn_size * growth_rate`` channels, then
BN-ReLU-3x3 conv; the "B" of DenseNet-BC). Transitions between blocks halve the channels and the
resolution (BN-ReLU-1x1 conv, 2x2 average pool; the "C", compression 0.5). The stem is a 7x7/2
conv and a 3x3/2 max pool; a final BN-ReLU precedes global average pooling and the classifier.

The registered variants follow torchvision (BatchNorm eps 1e-5, PyTorch momentum 0.1), whose
weights are the paper authors' Torch models. Keras' DenseNet121/169/201 are the same networks with
BatchNorm eps 1.001e-5 and momentum 0.99: build them with ``bn_epsilon=1.001e-5, bn_momentum=0.99``
(the stem's ZeroPadding2D before the max pool equals torchvision's padded pool after a ReLU).
Keras' "Total params" adds the BatchNorm moving statistics (``convention="keras"``).

| variant       | blocks          | params     | Keras total |
|---------------|-----------------|------------|-------------|
| ``densenet121`` | (6, 12, 24, 16) | 7,978,856  | 8,062,504   |
| ``densenet169`` | (6, 12, 32, 32) | 14,149,480 | 14,307,880  |
| ``densenet201`` | (6, 12, 48, 32) | 20,013,928 | 20,242,984  |

All three use growth rate 32, bn_size 4 and 64 stem channels.
"""

from __future__ import annotations

import functools
import math
import re
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxcnn import layers
from jaxcnn.spec import (
    Converter, ModelSpec, NotMine, Published, keras_leaf, keras_parts, lookup, torch_leaf,
    torch_parts, torchvision_meta,
)

# torchvision's kaiming_normal_ (fan_in, gain sqrt(2)) for every convolution.
_CONV_INIT = nn.initializers.variance_scaling(2.0, "fan_in", "normal")


class DenseLayer(nn.Module):
    """BN-ReLU-1x1 conv (bottleneck) then BN-ReLU-3x3 conv; returns the input and new maps."""

    growth_rate: int
    bn_size: int
    norm: Callable[..., nn.Module]
    drop_rate: float = 0.0
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        conv = functools.partial(layers.Conv, use_bias=False, dtype=self.dtype,
                                 kernel_init=_CONV_INIT)
        y = nn.relu(self.norm(name="norm1")(x, use_running_average=not train))
        y = conv(self.bn_size * self.growth_rate, (1, 1), name="conv1")(y)
        y = nn.relu(self.norm(name="norm2")(y, use_running_average=not train))
        y = conv(self.growth_rate, (3, 3), padding=((1, 1), (1, 1)), name="conv2")(y)
        if self.drop_rate:
            y = nn.Dropout(self.drop_rate, deterministic=not train)(y)
        return jnp.concatenate([x, y], axis=-1)


class DenseBlock(nn.Module):
    """``num_layers`` dense layers, each fed every earlier feature map of the block."""

    num_layers: int
    growth_rate: int
    bn_size: int
    norm: Callable[..., nn.Module]
    drop_rate: float = 0.0
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        for i in range(self.num_layers):
            x = DenseLayer(self.growth_rate, self.bn_size, self.norm, self.drop_rate, self.dtype,
                           name=f"denselayer{i + 1}")(x, train=train)
        return x


class ConvAvgPool(layers.Conv):
    """A 1x1 convolution without bias, then 2x2/2 average pooling: computed pool first.

    Both are linear and act on different axes (channels, pixels), so they commute: pooling
    first gives the same maps with a quarter of the convolution's multiply-accumulates. On a
    2-core CPU at 224 px this takes 6-11 % off DenseNet-121's inference step and 9 % off its
    train step. Parameters (``kernel``) and their names are the convolution's.
    """

    def __call__(self, inputs: jax.Array) -> jax.Array:
        return super().__call__(layers.avg_pool(inputs, 2, 2))

    def nominal_macs(self, inputs: jax.Array, kernel: jax.Array) -> int:
        """MACs per image as the architecture is written (convolution at the input's
        resolution), as torchvision's ``_ops`` and Keras count them: four times what runs."""
        return math.prod(inputs.shape[1:-1]) * math.prod(kernel.shape)


class Transition(nn.Module):
    """BN-ReLU-1x1 conv to ``features`` channels, then 2x2/2 average pooling."""

    features: int
    norm: Callable[..., nn.Module]
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        x = nn.relu(self.norm(name="norm")(x, use_running_average=not train))
        return ConvAvgPool(self.features, (1, 1), use_bias=False, dtype=self.dtype,
                           kernel_init=_CONV_INIT, name="conv")(x)


class DenseNet(layers.Classifier):
    """DenseNet-BC with torchvision's defaults (DenseNet-121)."""

    growth_rate: int = 32
    block_config: tuple[int, ...] = (6, 12, 24, 16)
    num_init_features: int = 64
    bn_size: int = 4
    drop_rate: float = 0.0
    bn_epsilon: float = 1e-5
    bn_momentum: float = 0.9

    @property
    def min_size(self) -> int:
        # The stem (7x7/2 conv, 3x3/2 pool, both padded) must leave 2**t pixels for t unpadded
        # 2x2/2 transition pools: 29 for four blocks, torchvision's meta min_size too.
        return 4 * 2 ** (len(self.block_config) - 1) - 3

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        x = self.check_input(x, model="DenseNet")
        norm = self.norm_layer(momentum=self.bn_momentum, epsilon=self.bn_epsilon)

        x = layers.Conv(self.num_init_features, (7, 7), strides=(2, 2), padding=((3, 3), (3, 3)),
                        use_bias=False, dtype=self.dtype, kernel_init=_CONV_INIT, name="conv0")(x)
        x = nn.relu(norm(name="norm0")(x, use_running_average=not train))
        x = layers.max_pool(x, 3, 2, 1)

        channels = self.num_init_features
        for i, num_layers in enumerate(self.block_config):
            x = DenseBlock(num_layers, self.growth_rate, self.bn_size, norm, self.drop_rate,
                           self.dtype, name=f"denseblock{i + 1}")(x, train=train)
            channels += num_layers * self.growth_rate
            if i < len(self.block_config) - 1:
                channels //= 2
                x = Transition(channels, norm, self.dtype, name=f"transition{i + 1}")(
                    x, train=train)
        x = nn.relu(norm(name="norm5")(x, use_running_average=not train))
        return self.forward_head(x, train=train)


# --- Converters: reference array names -> our variable paths ----------------------------------

def torchvision_rename(key: str) -> str | None:
    """torchvision DenseNet keys: ours are theirs without ``features.``; ``classifier`` -> head."""
    path, leaf = torch_parts(key)
    if path == ["classifier"]:
        module = "head"
    elif path[0] == "features" and len(path) > 1:
        module = "/".join(path[1:])
    else:
        raise NotMine(key)
    return torch_leaf(module, leaf, norm=path[-1].startswith("norm"))


_KERAS_TOP = {"conv1_conv": "conv0", "conv1_bn": "norm0", "bn": "norm5", "predictions": "head"}
_KERAS_UNITS = {"0_bn": "norm1", "1_conv": "conv1", "1_bn": "norm2", "2_conv": "conv2"}


def keras_rename(key: str) -> str | None:
    """Keras DenseNet121/169/201 ``layer/weight`` names to our variable paths.

    Keras counts its stages from the stem: ``conv2_block3_1_conv`` is denseblock1/denselayer3,
    ``pool2_*`` is transition1.
    """
    layer, leaf = keras_parts(key)
    if layer in _KERAS_TOP:
        return keras_leaf(_KERAS_TOP[layer], leaf)
    if match := re.fullmatch(r"conv(\d)_block(\d+)_(\d_\w+)", layer):
        stage, index, unit = match.groups()
        module = f"denseblock{int(stage) - 1}/denselayer{index}/{lookup(_KERAS_UNITS, unit)}"
    elif match := re.fullmatch(r"pool(\d)_(bn|conv)", layer):
        stage, unit = match.groups()
        module = f"transition{int(stage) - 1}/{'norm' if unit == 'bn' else 'conv'}"
    else:
        raise NotMine(key)
    return keras_leaf(module, leaf)


def _specs(name: str, blocks: tuple[int, ...], params: int, keras_total: int, gmacs: float,
           top1: float, top5: float) -> ModelSpec:
    keras_name = name.replace("densenet", "DenseNet")
    return ModelSpec(
        builder=functools.partial(DenseNet, block_config=blocks),
        input_shape=(224, 224, 3),
        reference=f"torchvision.models.{name}",
        published=(
            *torchvision_meta(keras_name, params, gmacs, top1, top5),
            Published(keras_total, "keras_total",
                      f"keras.io Applications table (exact-integer revision), {keras_name}"),
        ),
        # Keras' weights fit too; its BatchNorm eps (1.001e-5 against 1e-5) moves outputs by
        # about 1e-8 relative: build with bn_epsilon=1.001e-5 to reproduce Keras exactly.
        converters=(Converter("torchvision", name, torchvision_rename),
                    Converter("keras", keras_name, keras_rename)),
    )


MODELS: dict[str, ModelSpec] = {
    "densenet121": _specs("densenet121", (6, 12, 24, 16), 7_978_856, 8_062_504, 2.834, 74.434,
                          91.972),
    "densenet169": _specs("densenet169", (6, 12, 32, 32), 14_149_480, 14_307_880, 3.36, 75.600,
                          92.806),
    "densenet201": _specs("densenet201", (6, 12, 48, 32), 20_013_928, 20_242_984, 4.291, 76.896,
                          93.370),
}
