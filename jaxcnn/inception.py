"""Inception v3: Szegedy et al., "Rethinking the Inception Architecture for Computer Vision",
CVPR 2016 (arXiv:1512.00567).

A 5-layer stem and eleven Inception modules on three grids (35x35, 17x17, 8x8 at 299x299 input):
three 35x35 modules with factorised 5x5 (A), a grid reduction (B), four 17x17 modules with
factorised 7x7 as 1x7 and 7x1 (C), a second reduction (D) and two 8x8 modules with expanded
1x3/3x1 filter banks (E). An auxiliary classifier on the last 17x17 module adds to the training
loss only. The paper's figures are rounded ("< 25 million parameters", "5 billion
multiply-adds"); the exact networks are the two ports of Google's TF-slim weights below, which
differ only in ways one class expresses as fields:

* **torchvision** ``Inception3`` (``inception_v3``): BatchNorm with scale and eps 1e-3, no conv
  bias; the average-pool branches count the zero padding (PyTorch's ``count_include_pad=True``);
  dropout 0.5 before the classifier; the aux head is optional (``aux_logits``, default False
  here although torchvision's class defaults to True; its weights meta counts it). Like
  ``googlenet``'s, its pretrained weights are loaded with ``transform_input=True``, i.e. they
  expect images in [-1, 1] ((x - 0.5) / 0.5 on [0, 1] pixels); that is preprocessing, not part
  of this model.
* **Keras** ``InceptionV3`` (``inception_v3_keras``): BatchNorm without scale (no gamma), eps 1e-3,
  momentum 0.99; ``AveragePooling2D(3, 1, padding="same")``, which in TensorFlow leaves the
  padding out of the average; no dropout and no aux head. Its convolutions are "valid" where
  torchvision pads 0 and "same" where torchvision pads k//2 with stride 1, which is the same
  padding, so the blocks are shared unchanged. Keras' "Total params" adds the BatchNorm moving
  statistics.

The aux head (avg pool 5x5/3, 1x1 conv 128, 5x5 conv 768, FC) needs a 17x17 grid, i.e. inputs of
at least 299x299, as in torchvision. It runs in train mode (and at init, to create its
parameters) and its logits are sown into the ``aux_logits`` collection as ``aux1``; its parameters
live in ``aux_head``.

| variant              | follows                 | params     | with aux   | Keras total |
|----------------------|-------------------------|------------|------------|-------------|
| ``inception_v3``       | torchvision Inception3  | 23,834,568 | 27,161,264 | 23,869,000  |
| ``inception_v3_keras`` | Keras InceptionV3       | 23,817,352 | -          | 23,851,784  |
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxcnn import layers
from jaxcnn.spec import (
    TORCHVISION_META, Converter, ModelSpec, Published, WeightMismatchError, groups, keras_leaf,
    keras_parts, torch_leaf, torch_parts,
)

ConvBlock = Callable[..., nn.Module]

# torchvision's init: truncated normal with these standard deviations.
_INIT = nn.initializers.truncated_normal(0.1)
_AUX_CONV_INIT = nn.initializers.truncated_normal(0.01)
_AUX_FC_INIT = nn.initializers.truncated_normal(0.001)


def _branch_pool(x: jax.Array, count_include_pad: bool) -> jax.Array:
    return layers.avg_pool(x, 3, 1, 1, count_include_pad=count_include_pad)


class InceptionA(nn.Module):
    """35x35 module: 1x1; 1x1->5x5; 1x1->3x3->3x3; 3x3 avg pool->1x1."""

    pool_features: int
    conv_block: ConvBlock
    count_include_pad: bool = True

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        conv = self.conv_block
        b1 = conv(64, 1, name="branch1x1")(x, train=train)
        b5 = conv(48, 1, name="branch5x5_1")(x, train=train)
        b5 = conv(64, 5, padding=2, name="branch5x5_2")(b5, train=train)
        b3 = conv(64, 1, name="branch3x3dbl_1")(x, train=train)
        b3 = conv(96, 3, padding=1, name="branch3x3dbl_2")(b3, train=train)
        b3 = conv(96, 3, padding=1, name="branch3x3dbl_3")(b3, train=train)
        bp = _branch_pool(x, self.count_include_pad)
        bp = conv(self.pool_features, 1, name="branch_pool")(bp, train=train)
        return jnp.concatenate([b1, b5, b3, bp], axis=-1)


class InceptionB(nn.Module):
    """Grid reduction 35->17: 3x3/2; 1x1->3x3->3x3/2; 3x3/2 max pool."""

    conv_block: ConvBlock

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        conv = self.conv_block
        b3 = conv(384, 3, strides=2, name="branch3x3")(x, train=train)
        bd = conv(64, 1, name="branch3x3dbl_1")(x, train=train)
        bd = conv(96, 3, padding=1, name="branch3x3dbl_2")(bd, train=train)
        bd = conv(96, 3, strides=2, name="branch3x3dbl_3")(bd, train=train)
        bp = layers.max_pool(x, 3, 2)
        return jnp.concatenate([b3, bd, bp], axis=-1)


_PAD_1X7 = ((0, 0), (3, 3))
_PAD_7X1 = ((3, 3), (0, 0))
_PAD_1X3 = ((0, 0), (1, 1))
_PAD_3X1 = ((1, 1), (0, 0))


class InceptionC(nn.Module):
    """17x17 module, 7x7 factorised: 1x1; 1x1->1x7->7x1; 1x1->(7x1->1x7)x2; avg pool->1x1."""

    channels_7x7: int
    conv_block: ConvBlock
    count_include_pad: bool = True

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        conv, c7 = self.conv_block, self.channels_7x7
        b1 = conv(192, 1, name="branch1x1")(x, train=train)
        b7 = conv(c7, 1, name="branch7x7_1")(x, train=train)
        b7 = conv(c7, (1, 7), padding=_PAD_1X7, name="branch7x7_2")(b7, train=train)
        b7 = conv(192, (7, 1), padding=_PAD_7X1, name="branch7x7_3")(b7, train=train)
        bd = conv(c7, 1, name="branch7x7dbl_1")(x, train=train)
        bd = conv(c7, (7, 1), padding=_PAD_7X1, name="branch7x7dbl_2")(bd, train=train)
        bd = conv(c7, (1, 7), padding=_PAD_1X7, name="branch7x7dbl_3")(bd, train=train)
        bd = conv(c7, (7, 1), padding=_PAD_7X1, name="branch7x7dbl_4")(bd, train=train)
        bd = conv(192, (1, 7), padding=_PAD_1X7, name="branch7x7dbl_5")(bd, train=train)
        bp = _branch_pool(x, self.count_include_pad)
        bp = conv(192, 1, name="branch_pool")(bp, train=train)
        return jnp.concatenate([b1, b7, bd, bp], axis=-1)


class InceptionD(nn.Module):
    """Grid reduction 17->8: 1x1->3x3/2; 1x1->1x7->7x1->3x3/2; 3x3/2 max pool."""

    conv_block: ConvBlock

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        conv = self.conv_block
        b3 = conv(192, 1, name="branch3x3_1")(x, train=train)
        b3 = conv(320, 3, strides=2, name="branch3x3_2")(b3, train=train)
        b7 = conv(192, 1, name="branch7x7x3_1")(x, train=train)
        b7 = conv(192, (1, 7), padding=_PAD_1X7, name="branch7x7x3_2")(b7, train=train)
        b7 = conv(192, (7, 1), padding=_PAD_7X1, name="branch7x7x3_3")(b7, train=train)
        b7 = conv(192, 3, strides=2, name="branch7x7x3_4")(b7, train=train)
        bp = layers.max_pool(x, 3, 2)
        return jnp.concatenate([b3, b7, bp], axis=-1)


class InceptionE(nn.Module):
    """8x8 module with expanded filter banks: 1x1; 1x1->(1x3|3x1); 1x1->3x3->(1x3|3x1); pool."""

    conv_block: ConvBlock
    count_include_pad: bool = True

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        conv = self.conv_block
        b1 = conv(320, 1, name="branch1x1")(x, train=train)
        b3 = conv(384, 1, name="branch3x3_1")(x, train=train)
        b3 = jnp.concatenate([
            conv(384, (1, 3), padding=_PAD_1X3, name="branch3x3_2a")(b3, train=train),
            conv(384, (3, 1), padding=_PAD_3X1, name="branch3x3_2b")(b3, train=train),
        ], axis=-1)
        bd = conv(448, 1, name="branch3x3dbl_1")(x, train=train)
        bd = conv(384, 3, padding=1, name="branch3x3dbl_2")(bd, train=train)
        bd = jnp.concatenate([
            conv(384, (1, 3), padding=_PAD_1X3, name="branch3x3dbl_3a")(bd, train=train),
            conv(384, (3, 1), padding=_PAD_3X1, name="branch3x3dbl_3b")(bd, train=train),
        ], axis=-1)
        bp = _branch_pool(x, self.count_include_pad)
        bp = conv(192, 1, name="branch_pool")(bp, train=train)
        return jnp.concatenate([b1, b3, bd, bp], axis=-1)


class InceptionAux(nn.Module):
    """Auxiliary head on the 17x17 grid: avg pool 5x5/3, 1x1 conv 128, 5x5 conv 768, FC."""

    num_classes: int
    conv_block: ConvBlock
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        x = layers.avg_pool(x, 5, 3)
        x = self.conv_block(128, 1, name="conv0")(x, train=train)
        x = self.conv_block(768, 5, kernel_init=_AUX_CONV_INIT, name="conv1")(x, train=train)
        x = layers.global_avg_pool(x)
        return layers.dense_head(x, self.num_classes, dtype=self.dtype, name="fc",
                                 kernel_init=_AUX_FC_INIT)


class Inception3(layers.Classifier):
    """Inception v3; the defaults are torchvision's, ``inception_v3_keras`` sets Keras' fields.

    ``bn_scale``/``bn_epsilon``/``bn_momentum`` configure every BatchNorm (momentum in Flax's
    convention); ``pool_count_include_pad`` is PyTorch's averaging rule for the 3x3 pool
    branches (False is TensorFlow's "same" pooling).
    """

    aux_logits: bool = False
    dropout: float = 0.5
    bn_scale: bool = True
    bn_epsilon: float = 1e-3
    bn_momentum: float = 0.9
    pool_count_include_pad: bool = True

    @property
    def min_size(self) -> int:
        # 75 leaves Mixed_7a a 1x1 output; the aux head's 5x5 conv needs a 17x17 Mixed_6e (299).
        return 299 if self.aux_logits and self.num_classes else 75

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        x = self.check_input(x, model="Inception v3")
        norm = self.norm_layer(momentum=self.bn_momentum, epsilon=self.bn_epsilon,
                               use_scale=self.bn_scale)
        conv = functools.partial(layers.ConvBN, norm=norm, use_bias=False, dtype=self.dtype,
                                 kernel_init=_INIT)
        pad = self.pool_count_include_pad

        x = conv(32, 3, strides=2, name="conv2d_1a_3x3")(x, train=train)
        x = conv(32, 3, name="conv2d_2a_3x3")(x, train=train)
        x = conv(64, 3, padding=1, name="conv2d_2b_3x3")(x, train=train)
        x = layers.max_pool(x, 3, 2)
        x = conv(80, 1, name="conv2d_3b_1x1")(x, train=train)
        x = conv(192, 3, name="conv2d_4a_3x3")(x, train=train)
        x = layers.max_pool(x, 3, 2)

        x = InceptionA(32, conv, pad, name="mixed_5b")(x, train=train)
        x = InceptionA(64, conv, pad, name="mixed_5c")(x, train=train)
        x = InceptionA(64, conv, pad, name="mixed_5d")(x, train=train)
        x = InceptionB(conv, name="mixed_6a")(x, train=train)
        x = InceptionC(128, conv, pad, name="mixed_6b")(x, train=train)
        x = InceptionC(160, conv, pad, name="mixed_6c")(x, train=train)
        x = InceptionC(160, conv, pad, name="mixed_6d")(x, train=train)
        x = InceptionC(192, conv, pad, name="mixed_6e")(x, train=train)
        if self.aux_logits and self.num_classes and (train or self.is_initializing()):
            aux = InceptionAux(self.num_classes, conv, dtype=self.dtype, name="aux_head")(
                x, train=train)
            # Not sown at init: init would otherwise return a stale aux_logits collection that
            # later applies would append to.
            if not self.is_initializing():
                self.sow("aux_logits", "aux1", aux)
        x = InceptionD(conv, name="mixed_7a")(x, train=train)
        x = InceptionE(conv, pad, name="mixed_7b")(x, train=train)
        x = InceptionE(conv, pad, name="mixed_7c")(x, train=train)

        return self.forward_head(x, train=train, dropout_rate=self.dropout, kernel_init=_INIT)


# --- Converters: reference array names -> our variable paths ----------------------------------

def torch_rename(key: str) -> str | None:
    """torchvision ``Inception3`` and timm ``inception_v3`` state-dict keys to our paths.

    Our names are theirs in lower case (``Conv2d_1a_3x3`` -> ``conv2d_1a_3x3``, ``Mixed_5b`` ->
    ``mixed_5b``), ``AuxLogits`` -> ``aux_head``, ``fc`` -> ``head``. torchvision's file always
    carries the aux head; the converters declare it optional (loaded into a model built with
    ``aux_logits=True``, dropped otherwise).
    """
    (top, *inner), leaf = torch_parts(key)
    module = "/".join([{"AuxLogits": "aux_head", "fc": "head"}.get(top, top.lower()), *inner])
    return torch_leaf(module, leaf, norm=module.endswith("/bn"))


def _keras_conv_order() -> tuple[str, ...]:
    """Our conv+BN units in the order Keras' InceptionV3 creates (and numbers) its layers."""
    a = ("branch1x1", "branch5x5_1", "branch5x5_2", "branch3x3dbl_1", "branch3x3dbl_2",
         "branch3x3dbl_3", "branch_pool")
    b = ("branch3x3", "branch3x3dbl_1", "branch3x3dbl_2", "branch3x3dbl_3")
    c = ("branch1x1", *(f"branch7x7_{i}" for i in range(1, 4)),
         *(f"branch7x7dbl_{i}" for i in range(1, 6)), "branch_pool")
    d = ("branch3x3_1", "branch3x3_2", *(f"branch7x7x3_{i}" for i in range(1, 5)))
    e = ("branch1x1", "branch3x3_1", "branch3x3_2a", "branch3x3_2b", "branch3x3dbl_1",
         "branch3x3dbl_2", "branch3x3dbl_3a", "branch3x3dbl_3b", "branch_pool")
    blocks = [("mixed_5b", a), ("mixed_5c", a), ("mixed_5d", a), ("mixed_6a", b),
              ("mixed_6b", c), ("mixed_6c", c), ("mixed_6d", c), ("mixed_6e", c),
              ("mixed_7a", d), ("mixed_7b", e), ("mixed_7c", e)]
    stem = ("conv2d_1a_3x3", "conv2d_2a_3x3", "conv2d_2b_3x3", "conv2d_3b_1x1", "conv2d_4a_3x3")
    return stem + tuple(f"{block}/{unit}" for block, units in blocks for unit in units)


_KERAS_ORDER = _keras_conv_order()


def keras_rename(key: str) -> str | None:
    """Keras ``InceptionV3`` ``layer/weight`` names to our variable paths.

    Keras leaves these layers unnamed, so they are ``conv2d``, ``conv2d_1``, ... and
    ``batch_normalization``, ``batch_normalization_1``, ... in creation order, which is our call
    order. The numbers are those of a fresh Keras 3 session; a second model built in the same
    session continues the count and cannot be told apart.
    """
    layer, leaf = keras_parts(key)
    if layer == "predictions":
        return keras_leaf("head", leaf)
    kind, suffix = groups(r"(conv2d|batch_normalization)(?:_(\d+))?", layer)
    index = int(suffix or 0)
    if index >= len(_KERAS_ORDER):
        raise WeightMismatchError(
            f"{key}: Keras numbers InceptionV3's unnamed layers per session and {layer} lies "
            f"beyond the {len(_KERAS_ORDER)} of one model. Build the Keras model in a fresh "
            "session (keras.backend.clear_session()) before saving its weights."
        )
    return keras_leaf(f"{_KERAS_ORDER[index]}/{'conv' if kind == 'conv2d' else 'bn'}", leaf)


inception_v3_keras = functools.partial(
    Inception3, bn_scale=False, bn_momentum=0.99, pool_count_include_pad=False, dropout=0.0,
)

_TV = TORCHVISION_META.format("Inception_V3")
_KA = "keras.io Applications table (exact-integer revision), InceptionV3"

MODELS: dict[str, ModelSpec] = {
    "inception_v3": ModelSpec(
        builder=Inception3,
        input_shape=(299, 299, 3),
        reference="torchvision.models.inception_v3 (Inception3)",
        published=(
            Published(23_834_568, "params",
                      "osmr/imgclsmob gluon/README.md, InceptionV3 (no aux head; = timm 1.0.31 "
                      "inception_v3)"),
            Published(27_161_264, "params", _TV + " num_params (with AuxLogits)",
                      overrides=(("aux_logits", True),)),
            Published(23_869_000, "keras_total",
                      "apache/mxnet docs/api/python/gluon/model_zoo.md, inceptionv3 "
                      "(docs/sources.md sec. 3.5)"),
            Published(5.713, "gmacs", _TV + " _ops"),
            Published(77.294, "top1", _TV + " acc@1"),
            Published(93.450, "top5", _TV + " acc@5"),
        ),
        # torchvision builds the aux head by default; it cannot run below 299x299.
        converters=(Converter("torchvision", "inception_v3", torch_rename,
                              reference_kwargs=(("aux_logits", False),), optional=("aux_head",)),
                    Converter("timm", "inception_v3", torch_rename, optional=("aux_head",))),
    ),
    "inception_v3_keras": ModelSpec(
        builder=inception_v3_keras,
        input_shape=(299, 299, 3),
        reference="keras.applications.InceptionV3 (Keras 3.15.1)",
        published=(
            Published(23_851_784, "keras_total", _KA),
            Published(23_817_352, "params",
                      "Keras 3.15.1 keras.applications.InceptionV3(weights=None) trainable"),
            Published(77.9, "top1", _KA),
            Published(93.7, "top5", _KA),
        ),
        converters=(Converter("keras", "InceptionV3", keras_rename),),
    ),
}
