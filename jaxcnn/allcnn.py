"""All-CNN-C (Springenberg, Dosovitskiy, Brox, Riedmiller).

J. T. Springenberg, A. Dosovitskiy, T. Brox, M. Riedmiller, "Striving for simplicity: the all
convolutional net", ICLR 2015 workshop (Tables 1 and 2, model All-CNN-C).

Only convolutions (with bias) and ReLU: the max-pooling layers of the base model C are replaced
by 3x3 convolutions of stride 2. From 32x32: 3x3 conv 96, 96, 96/2; 3x3 conv 192, 192, 192/2;
3x3 conv 192 without padding (8x8 to 6x6), 1x1 conv 192, 1x1 conv with one map per class (also
followed by ReLU, as in the paper's table), and global average pooling over 6x6. Dropout: 20% on
the input image and 50% after each strided convolution (the layers replacing the pools).

The paper gives no code; the other 3x3 convolutions are padded by 1 on every side (Caffe and
PyTorch style, as in the authors' time). Keras reimplementations with ``padding="same"`` pad the
strided convolutions at the bottom/right only, which shifts their windows by one pixel but
leaves every shape and the count unchanged. The paper rounds the count to "1.3M".

=========  ============================================  ===========
variant    network                                       params
=========  ============================================  ===========
allcnn_c   All-CNN-C for CIFAR-10 (reference: the paper)    1,369,738
=========  ============================================  ===========
"""

from __future__ import annotations

import dataclasses
import functools

import flax.linen as nn
import jax

from jaxcnn import layers
from jaxcnn.spec import ModelSpec, Published


class AllCNN(layers.Classifier):
    """All-CNN: 3x3 convolutions, strided ones instead of pooling, 1x1 class maps, global mean.

    ``widths`` are the two stage widths; each stage has three 3x3 convolutions, the last one with
    stride 2.
    """

    widths: tuple[int, int] = (96, 192)
    input_dropout: float = 0.2
    dropout_rate: float = 0.5
    num_classes: int = dataclasses.field(default=10, kw_only=True)

    # Two stride-2 convolutions (padding 1) take 9 pixels to 3, which the unpadded 3x3 needs.
    min_size = 9

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        x = self.check_input(x, model="All-CNN-C")
        conv = functools.partial(layers.Conv, kernel_init=nn.initializers.he_normal(),
                                 dtype=self.dtype)
        x = nn.Dropout(self.input_dropout, deterministic=not train)(x)
        index = 0
        for width in self.widths:
            for stride in (1, 1, 2):
                index += 1
                x = nn.relu(conv(width, (3, 3), strides=(stride, stride),
                                 padding=layers.pair_padding(1), name=f"conv{index}")(x))
            x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
        x = nn.relu(conv(self.widths[-1], (3, 3), padding="VALID", name="conv7")(x))
        x = nn.relu(conv(self.widths[-1], (1, 1), padding="VALID", name="conv8")(x))
        return self.forward_head(x, train=train, class_maps=conv)


MODELS: dict[str, ModelSpec] = {
    "allcnn_c": ModelSpec(
        builder=AllCNN,
        input_shape=(32, 32, 3),
        num_classes=10,
        reference="Springenberg et al. 2015, Table 2, All-CNN-C (no reference code)",
        published=(
            Published(1_369_738, "params",
                      "computed from Springenberg et al. 2015, Table 2, All-CNN-C (the paper "
                      "rounds it to '1.3M'; docs/sources.md sec. 3.6)"),
        ),
    ),
}
