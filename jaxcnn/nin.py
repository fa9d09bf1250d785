"""Network in Network for CIFAR-10 (Lin, Chen, Yan).

M. Lin, Q. Chen, S. Yan, "Network in network", ICLR 2014.

Three "mlpconv" stages, each a spatial convolution followed by two 1x1 convolutions (the
paper's cascaded cross-channel parametric pooling), all with bias and ReLU; 3x3/2 max pooling
and dropout 0.5 after the first stage, 3x3/2 average pooling and dropout 0.5 after the second.
The last 1x1 convolution has one map per class (also followed by ReLU, as in the paper's Caffe
model) and global average pooling replaces the fully connected classifier.

This follows imgclsmob's ``nin_cifar10`` (the source of the exact count; the paper gives none),
whose pools use padding 1 with floor rounding (averages counting the zero padding, PyTorch's
default), where the paper's Caffe model pools without padding and rounds up: both give
16x16 and 8x8 maps from 32x32, but the windows are shifted by one pixel. imgclsmob ends with
an 8x8 average pool; global average pooling is the same at 32x32 and lets any size through.

============  ===========================================  =========
variant       network (reference followed)                 params
============  ===========================================  =========
nin_cifar10   192-160-96 / 192-192-192 / 192-192-10         966,986
============  ===========================================  =========
"""

from __future__ import annotations

import dataclasses
import functools

import flax.linen as nn
import jax

from jaxcnn import layers
from jaxcnn.spec import ModelSpec, Published

# torch.nn.init.kaiming_uniform_ with its defaults, as imgclsmob initialises every convolution.
_kaiming_uniform = nn.initializers.variance_scaling(2.0, "fan_in", "uniform")


class NIN(layers.Classifier):
    """Network in Network: mlpconv stages separated by pool + dropout, then a 1x1 class conv.

    ``stages[i]`` lists the widths of stage i's convolutions: the first has kernel
    ``first_kernels[i]`` (padded to keep the size), the others are 1x1.
    """

    stages: tuple[tuple[int, ...], ...] = ((192, 160, 96), (192, 192, 192), (192, 192))
    first_kernels: tuple[int, ...] = (5, 5, 3)
    dropout_rate: float = 0.5
    num_classes: int = dataclasses.field(default=10, kw_only=True)

    # Padded 3x3/2 pools keep at least one pixel and the head pools globally.
    min_size = 1

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        x = self.check_input(x, model="NIN")
        conv = functools.partial(layers.Conv, kernel_init=_kaiming_uniform, dtype=self.dtype)
        for i, (widths, kernel) in enumerate(zip(self.stages, self.first_kernels)):
            if i == 1:
                x = layers.max_pool(x, 3, 2, padding=1)
            elif i >= 2:
                x = layers.avg_pool(x, 3, 2, padding=1)
            if i >= 1:
                x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
            for j, width in enumerate(widths):
                k = kernel if j == 0 else 1
                x = conv(width, (k, k), padding=layers.pair_padding((k - 1) // 2),
                         name=f"stage{i + 1}_unit{j + 1}")(x)
                x = nn.relu(x)
        return self.forward_head(x, train=train, class_maps=conv)


MODELS: dict[str, ModelSpec] = {
    "nin_cifar10": ModelSpec(
        builder=NIN,
        input_shape=(32, 32, 3),
        num_classes=10,
        reference="imgclsmob (pytorchcv) nin_cifar10",
        published=(
            Published(966_986, "params", "osmr/imgclsmob gluon/README.md, NIN (nin_cifar10)"),
        ),
    ),
}
