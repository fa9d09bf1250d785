"""AlexNet (Krizhevsky et al.), its single-tower torchvision form, and ZFNet (Zeiler & Fergus).

* A. Krizhevsky, I. Sutskever, G. Hinton, "ImageNet classification with deep convolutional
  neural networks", NIPS 2012.
* A. Krizhevsky, "One weird trick for parallelizing convolutional neural networks",
  arXiv:1404.5997, 2014 (the 64-192-384-256-256 network torchvision ships).
* M. Zeiler, R. Fergus, "Visualizing and understanding convolutional networks", ECCV 2014.

One generic :class:`AlexNet` covers the three; the variants differ only in data:

* ``alexnet_paper`` is the 2012 network as trained on two GPUs: conv 96-256-384-384-256, the
  "two towers" expressed as ``groups=2`` in conv2, conv4 and conv5 (conv3 and the dense layers
  see both towers), local response normalisation after the ReLU of conv1 and conv2, then
  overlapping 3x3/2 max pooling. It follows Caffe's ``bvlc_alexnet`` (the source of the exact
  count) in its layer order and in rounding pooled sizes up, so 224x224 (the paper's text) and
  227x227 (Caffe's crop) both give the 6x6x256 maps the first dense layer expects. Its LRN
  uses the constants of the paper (k=2, n=5, alpha=1e-4, beta=0.75) in the paper's formula,
  which does not divide alpha by n; Caffe's ``bvlc_alexnet`` uses k=1 and divides alpha by n,
  i.e. ``lrn=(5, 1e-4, 0.75, 1.0)`` here. Dropout acts on the outputs of fc6 and fc7.
* ``alexnet`` is torchvision's: single tower, 64-192-384-256-256, 11x11/4 conv1 with padding
  2, no LRN, floor pooling, and dropout on the *inputs* of fc6 and fc7.
* ``zfnet`` is ZFNet as imgclsmob builds it (the source of the exact count; the paper gives
  none): 7x7/2 conv1 with padding 1, 5x5/2 conv2, 384-384-256, no groups, LRN (PyTorch's
  default constants, k=2) before pooling, pooled sizes rounded up as in Caffe. The paper
  normalises after pooling and does not give its normalisation constants.

Every variant average-pools adaptively to 6x6 before the classifier, as torchvision does. At
the default input sizes this is the identity, so the networks are exactly the published ones
there; other sizes (at least ``min_size``) also work. The flatten is in HWC order; torchvision's
is CHW: ``alexnet`` reads torchvision's weights (:func:`torchvision_rename`), and
:func:`jaxcnn.spec.torch_flatten_fix` permutes fc6's inputs. The other two variants have no
reference implementation in torchvision, timm or Keras, hence no converter.

==============  ===========================================  ===========  =======
variant         network (reference followed)                 params       input
==============  ===========================================  ===========  =======
alexnet_paper   2012 paper, two towers (Caffe bvlc_alexnet)   60,965,224  227x227
alexnet         torchvision ``alexnet``                       61,100,840  224x224
zfnet           ZFNet (imgclsmob ``zfnet``)                   62,357,608  224x224
==============  ===========================================  ===========  =======
"""

from __future__ import annotations

import functools

import flax.linen as nn
import jax

from jaxcnn import layers
from jaxcnn.spec import (
    Converter, ModelSpec, Published, lookup, torch_flatten_fix, torch_layer, torch_parts,
    torchvision_meta,
)

# PyTorch's default Conv2d/Linear initialisation (kaiming_uniform with a=sqrt(5)).
_torch_default_init = nn.initializers.variance_scaling(1 / 3, "fan_in", "uniform")


def _pooled_size(size: int, window: int, stride: int, ceil_mode: bool) -> int:
    """Output size of an unpadded PyTorch/Caffe max pool (0 when the input is too small)."""
    span = size - window
    out = (-(-span // stride) if ceil_mode else span // stride) + 1
    if ceil_mode and (out - 1) * stride >= size:
        out -= 1
    return max(out, 0)


class AlexNet(layers.Classifier):
    """Five convolutions (``convs``), three max pools, two hidden dense layers, a classifier.

    ``convs`` holds one ``(features, kernel, stride, padding, groups)`` row per convolution.
    ``lrn`` is ``(size, alpha, beta, k)`` in the PyTorch/Caffe convention (alpha divided by size)
    applied after the ReLU of conv1 and conv2, or ``None``. ``dropout_before_dense`` puts the
    dropout on the inputs of fc6 and fc7 (torchvision) rather than on their outputs (the paper).
    """

    convs: tuple[tuple[int, int, int, int, int], ...]
    lrn: tuple[int, float, float, float] | None = None
    ceil_mode: bool = False
    dropout_before_dense: bool = False
    hidden: int = 4096
    dropout_rate: float = 0.5

    pool_after = (0, 1, 4)  # max pooling follows conv1, conv2 and conv5

    def _feature_size(self, size: int) -> int:
        for i, (_, kernel, stride, padding, _) in enumerate(self.convs):
            size = max((size + 2 * padding - kernel) // stride + 1, 0)
            if i in self.pool_after:
                size = _pooled_size(size, 3, 2, self.ceil_mode)
        return size

    @property
    def min_size(self) -> int:
        """The smallest square input for which every convolution and pool keeps a pixel."""
        return layers.smallest_input(self._feature_size)

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        x = self.check_input(x, model="AlexNet")
        for i, (features, kernel, stride, padding, groups) in enumerate(self.convs):
            x = layers.Conv(
                features, (kernel, kernel), strides=(stride, stride),
                padding=layers.pair_padding(padding), feature_group_count=groups,
                kernel_init=_torch_default_init, dtype=self.dtype, name=f"conv{i + 1}",
            )(x)
            x = nn.relu(x)
            if self.lrn is not None and i < 2:
                size, alpha, beta, k = self.lrn
                x = layers.local_response_norm(x, size=size, alpha=alpha, beta=beta, k=k)
            if i in self.pool_after:
                x = layers.max_pool(x, 3, 2, ceil_mode=self.ceil_mode)
        dropout = functools.partial(nn.Dropout, self.dropout_rate, deterministic=not train)
        before = self.dropout_before_dense
        # 6x6 adaptive average pooling, flatten and fc6 as one layer (layers.PooledDense).
        # torchvision's dropout on fc6's inputs acts on the pooled grid; outside training it is
        # the identity, and the layer may then fold the pooling into its kernel.
        x = layers.PooledDense(self.hidden, kernel_init=_torch_default_init, dtype=self.dtype,
                               pool_size=6, name="fc6")(x, dropout() if before and train else None)
        # Both orders have one dropout between fc6 and fc7: torchvision's on fc7's inputs, the
        # paper's on fc6's outputs.
        x = dropout()(nn.relu(x))
        x = nn.relu(nn.Dense(self.hidden, kernel_init=_torch_default_init, dtype=self.dtype,
                             name="fc7")(x))
        if not before:
            x = dropout()(x)
        return self.forward_head(x, train=train, pool=False, kernel_init=_torch_default_init)


# --- Weight converters ------------------------------------------------------------------------


# torchvision's Sequential indices: features.<i> are the convolutions, classifier.<i> the dense.
_TV_MODULES = {
    "features": {"0": "conv1", "3": "conv2", "6": "conv3", "8": "conv4", "10": "conv5"},
    "classifier": {"1": "fc6", "4": "fc7", "6": "head"},
}


def torchvision_rename(key: str) -> str | None:
    """torchvision ``alexnet`` state-dict keys (``features.3.weight``) to our variable paths."""
    (part, index), leaf = torch_parts(key, 3)
    return torch_layer(lookup(lookup(_TV_MODULES, part), index), leaf)


MODELS: dict[str, ModelSpec] = {
    "alexnet_paper": ModelSpec(
        builder=functools.partial(
            AlexNet,
            convs=((96, 11, 4, 0, 1), (256, 5, 1, 2, 2), (384, 3, 1, 1, 1), (384, 3, 1, 1, 2),
                   (256, 3, 1, 1, 2)),
            lrn=(5, 5e-4, 0.75, 2.0),  # the paper's alpha=1e-4 times n: no division by n
            ceil_mode=True,
        ),
        input_shape=(227, 227, 3),
        reference="Krizhevsky et al. 2012 as Caffe bvlc_alexnet (groups=2), paper LRN constants",
        published=(
            Published(60_965_224, "params",
                      "HewlettPackard dlcookbook-dlbs models table (Caffe bvlc_alexnet, groups=2)"),
        ),
    ),
    "alexnet": ModelSpec(
        builder=functools.partial(
            AlexNet,
            convs=((64, 11, 4, 2, 1), (192, 5, 1, 2, 1), (384, 3, 1, 1, 1), (256, 3, 1, 1, 1),
                   (256, 3, 1, 1, 1)),
            dropout_before_dense=True,
        ),
        input_shape=(224, 224, 3),
        reference="torchvision 0.29.1 models.alexnet",
        published=(
            *torchvision_meta("AlexNet", 61_100_840, 0.714, 56.522, 79.066),
        ),
        converters=(
            Converter("torchvision", "alexnet", torchvision_rename,
                      fix=functools.partial(torch_flatten_fix, first_dense="classifier.1.weight",
                                            channels=256)),
        ),
    ),
    "zfnet": ModelSpec(
        builder=functools.partial(
            AlexNet,
            convs=((96, 7, 2, 1, 1), (256, 5, 2, 0, 1), (384, 3, 1, 1, 1), (384, 3, 1, 1, 1),
                   (256, 3, 1, 1, 1)),
            lrn=(5, 1e-4, 0.75, 2.0),
            ceil_mode=True,
        ),
        input_shape=(224, 224, 3),
        reference="imgclsmob (pytorchcv) zfnet",
        published=(
            Published(62_357_608, "params", "osmr/imgclsmob gluon/README.md, ZFNet"),
        ),
    ),
}
