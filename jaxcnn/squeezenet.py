"""SqueezeNet 1.0 and 1.1 (Iandola et al.), exactly as torchvision builds them.

F. Iandola, S. Han, M. Moskewicz, K. Ashraf, W. Dally, K. Keutzer, "SqueezeNet: AlexNet-level
accuracy with 50x fewer parameters and <0.5MB model size", arXiv:1602.07360, 2016.

A stem convolution, eight Fire modules (a 1x1 "squeeze" convolution feeding parallel 1x1 and 3x3
"expand" convolutions whose outputs are concatenated, 1x1 first), 3x3/2 max pools that round
their output size up (Caffe's rule, PyTorch's ``ceil_mode=True``), and a classifier made of
dropout 0.5, a 1x1 convolution with one map per class, ReLU, and global average pooling.
Every convolution has a bias and is followed by ReLU.

Version 1.0 is the paper's (Table 1: 1,248,424 parameters before pruning): a 7x7/2 stem with 96
maps and pools after the stem, fire4 and fire8. Version 1.1 (from the authors' repository)
has a 3x3/2 stem with 64 maps and pools after the stem, fire3 and fire5, for 2.4x less
computation at the same accuracy. Names follow the paper (``conv1``, ``fire2`` ... ``fire9``);
the classifier convolution (the paper's conv10) is ``head``. Both variants read torchvision's
weights (:func:`torchvision_rename`); the layouts need no fix beyond the generic OIHW -> HWIO.

==============  =================================  ==========  =======
variant         reference                           params      GMACs
==============  =================================  ==========  =======
squeezenet1_0   torchvision ``squeezenet1_0``       1,248,424     0.819
squeezenet1_1   torchvision ``squeezenet1_1``       1,235,496     0.349
==============  =================================  ==========  =======
"""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxcnn import layers
from jaxcnn.spec import (
    Converter, ModelSpec, Published, lookup, torch_layer, torch_parts, torchvision_meta,
)

# torch.nn.init.kaiming_uniform_ with its defaults, as torchvision initialises these convolutions.
_kaiming_uniform = nn.initializers.variance_scaling(2.0, "fan_in", "uniform")

# (squeeze, expand 1x1, expand 3x3) of fire2 ... fire9, the same in both versions.
FIRES: tuple[tuple[int, int, int], ...] = (
    (16, 64, 64), (16, 64, 64), (32, 128, 128), (32, 128, 128),
    (48, 192, 192), (48, 192, 192), (64, 256, 256), (64, 256, 256),
)


def _pooled_size(size: int) -> int:
    """Output size of a 3x3/2 max pool with ``ceil_mode`` (0 when the input is too small)."""
    out = -(-(size - 3) // 2) + 1
    if (out - 1) * 2 >= size:
        out -= 1
    return max(out, 0)


class Fire(nn.Module):
    """Fire module: 1x1 squeeze, then 1x1 and 3x3 expand convolutions concatenated (all ReLU)."""

    squeeze: int
    expand1x1: int
    expand3x3: int
    dtype: layers.Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        conv = functools.partial(layers.Conv, kernel_init=_kaiming_uniform, dtype=self.dtype)
        x = nn.relu(conv(self.squeeze, (1, 1), padding="VALID", name="squeeze")(x))
        a = nn.relu(conv(self.expand1x1, (1, 1), padding="VALID", name="expand1x1")(x))
        b = nn.relu(conv(self.expand3x3, (3, 3), padding=layers.pair_padding(1),
                         name="expand3x3")(x))
        return jnp.concatenate([a, b], axis=-1)


class SqueezeNet(layers.Classifier):
    """SqueezeNet: stem conv, Fire modules between ceil-mode max pools, 1x1 conv classifier.

    ``pool_after`` names the Fire modules (numbered from 2, as in the paper) followed by a max
    pool; the stem is always followed by one.
    """

    stem_features: int
    stem_kernel: int
    pool_after: tuple[int, ...]
    fires: tuple[tuple[int, int, int], ...] = FIRES
    dropout_rate: float = 0.5

    def _feature_size(self, size: int) -> int:
        size = _pooled_size(max((size - self.stem_kernel) // 2 + 1, 0))
        for _ in self.pool_after:
            size = _pooled_size(size)
        return size

    @property
    def min_size(self) -> int:
        """The smallest square input for which the stem and every pool keep a pixel."""
        return layers.smallest_input(self._feature_size)

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        x = self.check_input(x, model="SqueezeNet")
        x = layers.Conv(self.stem_features, (self.stem_kernel,) * 2, strides=(2, 2),
                        padding="VALID", kernel_init=_kaiming_uniform, dtype=self.dtype,
                        name="conv1")(x)
        x = layers.max_pool(nn.relu(x), 3, 2, ceil_mode=True)
        for number, widths in enumerate(self.fires, start=2):
            x = Fire(*widths, dtype=self.dtype, name=f"fire{number}")(x)
            if number in self.pool_after:
                x = layers.max_pool(x, 3, 2, ceil_mode=True)
        conv = functools.partial(layers.Conv, kernel_init=nn.initializers.normal(0.01),
                                 dtype=self.dtype)
        return self.forward_head(x, train=train, dropout_rate=self.dropout_rate, class_maps=conv)


# --- Weight converters ------------------------------------------------------------------------

@functools.lru_cache(maxsize=None)
def _torchvision_modules(pool_after: tuple[int, ...]) -> dict[str, str]:
    """torchvision's ``features.<i>``/``classifier.<i>`` prefix of each of our modules.

    torchvision's ``features`` is conv, ReLU, pool, then the Fire modules with a pool after
    those named in ``pool_after``; ``classifier`` is dropout, conv, ReLU, pool.
    """
    table, index = {"features.0": "conv1", "classifier.1": "head"}, 3
    for number in range(2, 2 + len(FIRES)):
        table[f"features.{index}"] = f"fire{number}"
        index += 2 if number in pool_after else 1
    return table


def torchvision_rename(key: str, *, pool_after: tuple[int, ...]) -> str | None:
    """torchvision ``squeezenet1_0``/``1_1`` keys (``features.3.squeeze.weight``) to ours.

    Bound to a variant with ``functools.partial(torchvision_rename, pool_after=(4, 8))``:
    torchvision's indices depend on where the pools are.
    """
    path, leaf = torch_parts(key)
    ours = lookup(_torchvision_modules(pool_after), ".".join(path[:2]))
    return torch_layer("/".join([ours, *path[2:]]), leaf)


def _converters(name: str, pool_after: tuple[int, ...]) -> tuple[Converter, ...]:
    return (Converter("torchvision", name,
                      functools.partial(torchvision_rename, pool_after=pool_after)),)


MODELS: dict[str, ModelSpec] = {
    "squeezenet1_0": ModelSpec(
        builder=functools.partial(SqueezeNet, stem_features=96, stem_kernel=7,
                                  pool_after=(4, 8)),
        input_shape=(224, 224, 3),
        reference="torchvision 0.29.1 models.squeezenet1_0",
        published=(
            *torchvision_meta("SqueezeNet1_0", 1_248_424, 0.819, 58.092, 80.420),
            Published(1_248_424, "params", "Iandola et al. 2016, Table 1 (before pruning)"),
        ),
        converters=_converters("squeezenet1_0", (4, 8)),
    ),
    "squeezenet1_1": ModelSpec(
        builder=functools.partial(SqueezeNet, stem_features=64, stem_kernel=3,
                                  pool_after=(3, 5)),
        input_shape=(224, 224, 3),
        reference="torchvision 0.29.1 models.squeezenet1_1",
        published=torchvision_meta("SqueezeNet1_1", 1_235_496, 0.349, 58.178, 80.624),
        converters=_converters("squeezenet1_1", (3, 5)),
    ),
}
