"""VGG-11/13/16/19, with and without BatchNorm, exactly as torchvision builds them.

K. Simonyan, A. Zisserman, "Very deep convolutional networks for large-scale image
recognition", ICLR 2015 (configurations A, B, D, E of its Table 1).

Five stages of 3x3 convolutions (padding 1, with bias) and ReLU, each closed by a 2x2/2 max
pool; then a 7x7 adaptive average pool (the identity at 224x224), and the classifier
fc1 4096 - ReLU - dropout 0.5 - fc2 4096 - ReLU - dropout 0.5 - head. The ``_bn`` variants are
torchvision's: BatchNorm (eps 1e-5, PyTorch momentum 0.1) between each convolution and its
ReLU, the convolution keeping its bias (imgclsmob's BN-VGG drops it).

The paper's configurations A-LRN and C (with 1x1 convolutions) are not in torchvision and not
registered. Keras' VGG16 and VGG19 are the same networks without dropout layers and without the
adaptive pool (their counts equal torchvision's); Keras flattens the final 7x7x512 maps in HWC
order, as this module does, while torchvision flattens CHW (a weight converter permutes fc1's
rows). Layer names follow Keras (``block1_conv1`` ... ``fc1``, ``fc2``); the classifier is
``head``. Every variant reads torchvision's weights (:func:`torchvision_rename`, with
:func:`jaxcnn.spec.torch_flatten_fix` for fc1); ``vgg16`` and ``vgg19`` also read Keras'
``VGG16``/``VGG19`` (:func:`keras_rename`, no fix: Keras flattens HWC too).

========  ======  ============  ========  ============
variant   config  params        variant   params
========  ======  ============  ========  ============
vgg11     A       132,863,336   vgg11_bn  132,868,840
vgg13     B       133,047,848   vgg13_bn  133,053,736
vgg16     D       138,357,544   vgg16_bn  138,365,992
vgg19     E       143,667,240   vgg19_bn  143,678,248
========  ======  ============  ========  ============
"""

from __future__ import annotations

import functools

import flax.linen as nn
import jax

from jaxcnn import layers
from jaxcnn.spec import (
    Converter, ModelSpec, Published, keras_leaf, keras_parts, lookup, torch_flatten_fix,
    torch_leaf, torch_parts, torchvision_meta,
)

# Convolutions per stage of each configuration (Table 1 of the paper).
STAGE_SIZES: dict[int, tuple[int, ...]] = {
    11: (1, 1, 2, 2, 2),
    13: (2, 2, 2, 2, 2),
    16: (2, 2, 3, 3, 3),
    19: (2, 2, 4, 4, 4),
}


class VGG(layers.Classifier):
    """VGG: stages of 3x3 conv (+BN) + ReLU closed by max pooling, then three dense layers."""

    stage_sizes: tuple[int, ...]
    widths: tuple[int, ...] = (64, 128, 256, 512, 512)
    batch_norm: bool = False
    hidden: int = 4096
    dropout_rate: float = 0.5

    @property
    def min_size(self) -> int:
        """Each stage halves the input (floor), so every pool keeps a pixel from 2**stages."""
        return 2 ** len(self.stage_sizes)

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        x = self.check_input(x, model="VGG")
        norm = None
        if self.batch_norm:
            norm = self.norm_layer()
        for stage, (convs, width) in enumerate(zip(self.stage_sizes, self.widths), start=1):
            for i in range(1, convs + 1):
                x = layers.ConvBN(
                    width, 3, padding=1, use_bias=True, norm=norm,
                    kernel_init=layers.kaiming_normal_fan_out, dtype=self.dtype,
                    name=f"block{stage}_conv{i}",
                )(x, train=train)
            x = layers.max_pool(x, 2, 2)
        dense_init = nn.initializers.normal(0.01)
        dropout = functools.partial(nn.Dropout, self.dropout_rate, deterministic=not train)
        # 7x7 adaptive average pooling, flatten and fc1 in one layer (torchvision's avgpool).
        x = layers.PooledDense(self.hidden, kernel_init=dense_init, dtype=self.dtype,
                               pool_size=7, name="fc1")(x)
        x = dropout()(nn.relu(x))
        x = nn.Dense(self.hidden, kernel_init=dense_init, dtype=self.dtype, name="fc2")(x)
        x = dropout()(nn.relu(x))
        return self.forward_head(x, train=train, pool=False, kernel_init=dense_init)


# --- Weight converters ------------------------------------------------------------------------

_TV_CLASSIFIER = {"0": "fc1", "3": "fc2", "6": "head"}


@functools.lru_cache(maxsize=None)
def _torchvision_features(stage_sizes: tuple[int, ...], batch_norm: bool) -> dict[str, str]:
    """torchvision's ``features.<i>`` index of each convolution and BatchNorm, for one config.

    torchvision's Sequential holds conv (, BN), ReLU per convolution and a max pool per stage.
    """
    table, index = {}, 0
    for stage, convs in enumerate(stage_sizes, start=1):
        for i in range(1, convs + 1):
            table[str(index)] = f"block{stage}_conv{i}/conv"
            if batch_norm:
                table[str(index + 1)] = f"block{stage}_conv{i}/bn"
            index += 3 if batch_norm else 2
        index += 1
    return table


def torchvision_rename(key: str, *, depth: int, batch_norm: bool) -> str | None:
    """torchvision ``vgg<depth>[_bn]`` state-dict keys to our variable paths.

    Bound to a variant with ``functools.partial(torchvision_rename, depth=16, batch_norm=False)``:
    torchvision's layer indices depend on the configuration.
    """
    (part, index), leaf = torch_parts(key, 3)
    tables = {"features": _torchvision_features(STAGE_SIZES[depth], batch_norm),
              "classifier": _TV_CLASSIFIER}
    module = lookup(lookup(tables, part), index)
    return torch_leaf(module, leaf, norm=module.endswith("/bn"))


def keras_rename(key: str) -> str | None:
    """Keras ``VGG16``/``VGG19`` names (``block1_conv1/kernel``, ``fc1/bias``) to ours."""
    layer, leaf = keras_parts(key)
    if layer.startswith("block"):
        layer = f"{layer}/conv"
    elif layer == "predictions":
        layer = "head"
    return keras_leaf(layer, leaf)


# depth: (params, GMACs, top-1, top-5) without BN, then with BN, from torchvision's Weights meta.
_TV_FIGURES = {
    11: ((132_863_336, 7.609, 69.020, 88.628), (132_868_840, 7.609, 70.370, 89.810)),
    13: ((133_047_848, 11.308, 69.928, 89.246), (133_053_736, 11.308, 71.586, 90.374)),
    16: ((138_357_544, 15.470, 71.592, 90.382), (138_365_992, 15.470, 73.360, 91.516)),
    19: ((143_667_240, 19.632, 72.376, 90.876), (143_678_248, 19.632, 74.218, 91.842)),
}
_KERAS_TOTAL = {16: 138_357_544, 19: 143_667_240}


def _spec(depth: int, batch_norm: bool) -> ModelSpec:
    name = f"vgg{depth}" + ("_bn" if batch_norm else "")
    published = list(torchvision_meta(f"VGG{depth}" + ("_BN" if batch_norm else ""),
                                      *_TV_FIGURES[depth][batch_norm]))
    converters = [Converter(
        "torchvision", name,
        functools.partial(torchvision_rename, depth=depth, batch_norm=batch_norm),
        fix=functools.partial(torch_flatten_fix, first_dense="classifier.0.weight", channels=512),
    )]
    if depth in _KERAS_TOTAL and not batch_norm:
        published.append(Published(_KERAS_TOTAL[depth], "keras_total",
                                   f"keras.io Applications table, VGG{depth}"))
        converters.append(Converter("keras", f"VGG{depth}", keras_rename))
    return ModelSpec(
        builder=functools.partial(VGG, stage_sizes=STAGE_SIZES[depth], batch_norm=batch_norm),
        input_shape=(224, 224, 3),
        reference=f"torchvision 0.29.1 models.{name}",
        published=tuple(published),
        converters=tuple(converters),
    )


MODELS: dict[str, ModelSpec] = {
    f"vgg{depth}{suffix}": _spec(depth, bool(suffix))
    for depth in STAGE_SIZES
    for suffix in ("", "_bn")
}
