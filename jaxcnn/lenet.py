"""LeNet-5: the 1998 network of LeCun et al. and the "modern" LeNet-5 of the tutorials.

Y. LeCun, L. Bottou, Y. Bengio, P. Haffner, "Gradient-based learning applied to document
recognition", Proc. IEEE 86(11), 1998, section II-B and Appendix A.

The 1998 network (:class:`LeNet5_1998`, variant ``lenet5_1998``) differs from what most code
calls LeNet-5 in four ways, all followed here:

* S2 and S4 are *trainable* subsampling layers: each unit adds the four inputs of its 2x2
  window, multiplies the sum by a coefficient and adds a bias (both learned, one per map).
* C3 is only partially connected to S2 (Table I of the paper, :data:`C3_TABLE`): six C3 maps see
  three contiguous S2 maps, six see four contiguous maps, three see four non-contiguous maps and
  one sees all six. This gives 1,516 parameters instead of 2,416.
* Every layer up to F6 (C1, S2, C3, S4, C5, F6) is followed by the scaled hyperbolic tangent
  ``f(a) = 1.7159 tanh(2a/3)`` of Appendix A.
* The output is a layer of Euclidean radial basis function units, one per class:
  ``y_i = sum_j (x_j - w_ij)^2`` over the 84 F6 units. The 84-vectors ``w_i`` are fixed
  +1/-1 codes, not learned; the paper draws them as stylised 7x12 bitmaps of the characters.
  The paper's bitmaps are only printed as a figure, so :data:`DIGIT_BITMAPS` are 7x12 digits
  drawn for jaxcnn in the same manner (not a pixel copy of Fig. 3); classes beyond ten get a
  fixed pseudo-random +1/-1 code, which the paper names as an equally valid choice. The
  prototypes are a constant of the computation, not a variable, so no optimiser can touch them.
  The network returns ``-y_i`` so that the arg-max is the prediction and a softmax
  cross-entropy on these "logits" is the paper's MAP criterion with ``exp(-j)`` set to zero.

C5 is a 5x5 convolution over 5x5 maps; the 1998 network therefore takes exactly 32x32 inputs.
The paper counts 60,000 trainable parameters, which this module reproduces exactly (the 840
fixed RBF weights are excluded, as in the paper).

The "modern" LeNet-5 (:class:`LeNet5`, variant ``lenet5``) is the network of most tutorials:
two 5x5 convolutions (6 and 16 maps, fully connected), parameter-free pooling, and dense layers
400-120-84-10 with a bias-carrying linear output. ``padding=2`` takes 28x28 MNIST digits, as in
d2l.ai; ``padding=0`` (the default) takes the paper's 32x32 frame. The count does not depend on
the padding, the activation or the pooling.

Two networks of the model-compression papers (Han et al. 2015, "Learning both Weights and
Connections for Efficient Neural Networks", and 2016, "Deep Compression") complete the family;
both take the 28x28x1 MNIST digits as they are:

* ``lenet5_caffe``: what those papers call LeNet-5, Caffe's ``examples/mnist`` LeNet: 20 and 50
  unpadded 5x5 convolutions, each followed by 2x2 max pooling and *no* activation, then ``ip1``
  (500 units, ReLU) and ``ip2`` (the classifier). The papers' per-layer tables (conv1, conv2,
  ip1, ip2) are of its four layers: here ``conv1``, ``conv2``, ``fc1`` and ``head``.
* ``lenet_300_100``: the fully connected network of LeCun et al. 1998, sec. III-C (two hidden
  layers of 300 and 100 units), the first benchmark of both compression papers: 784-300-100-10
  with ReLU, the modern choice (the 1998 units were sigmoidal; the count does not depend on
  it). It takes exactly 28x28x1 images, the 784 inputs of the paper, and refuses any other
  shape rather than build a layer of another width.

=============  ==============================================  ===========
variant        network                                         params
=============  ==============================================  ===========
lenet5_1998    LeCun et al. 1998 (reference: the paper)            60,000
lenet5         modern LeNet-5, ReLU, max pooling                   61,706
lenet5_caffe   Caffe's MNIST LeNet (Han et al.'s "LeNet-5")       431,080
lenet_300_100  LeCun et al. 1998 fully connected 300-100          266,610
=============  ==============================================  ===========
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxcnn import layers
from jaxcnn.conv import conv_general_dilated
from jaxcnn.layers import Dtype
from jaxcnn.spec import ModelSpec, Published

# Table I of the paper: the S2 maps each C3 map takes its input from.
C3_TABLE: tuple[tuple[int, ...], ...] = (
    (0, 1, 2), (1, 2, 3), (2, 3, 4), (3, 4, 5), (0, 4, 5), (0, 1, 5),
    (0, 1, 2, 3), (1, 2, 3, 4), (2, 3, 4, 5), (0, 3, 4, 5), (0, 1, 4, 5), (0, 1, 2, 5),
    (0, 1, 3, 4), (1, 2, 4, 5), (0, 2, 3, 5),
    (0, 1, 2, 3, 4, 5),
)

# Stylised 7x12 digits for the RBF prototypes ("#" = +1, "." = -1), drawn for jaxcnn.
DIGIT_BITMAPS: tuple[str, ...] = (
    ".......|..###..|.#...#.|#.....#|#.....#|#.....#|#.....#|#.....#|#.....#|.#...#.|..###..|.......",
    ".......|...#...|..##...|.#.#...|...#...|...#...|...#...|...#...|...#...|...#...|.#####.|.......",
    ".......|..###..|.#...#.|#.....#|......#|.....#.|....#..|...#...|..#....|.#.....|#######|.......",
    ".......|.####..|#....#.|......#|.....#.|..###..|.....#.|......#|......#|#....#.|.####..|.......",
    ".......|.....#.|....##.|...#.#.|..#..#.|.#...#.|#....#.|#######|.....#.|.....#.|.....#.|.......",
    ".......|#######|#......|#......|#.###..|##...#.|......#|......#|......#|#....#.|.####..|.......",
    ".......|..###..|.#.....|#......|#......|#.###..|##...#.|#.....#|#.....#|.#...#.|..###..|.......",
    ".......|#######|......#|.....#.|....#..|....#..|...#...|...#...|..#....|..#....|..#....|.......",
    ".......|..###..|.#...#.|#.....#|.#...#.|..###..|.#...#.|#.....#|#.....#|.#...#.|..###..|.......",
    ".......|..###..|.#...#.|#.....#|#.....#|.#...##|..###.#|......#|......#|.....#.|..###..|.......",
)


def scaled_tanh(x: jax.Array) -> jax.Array:
    """The squashing function of Appendix A: ``1.7159 tanh(2x/3)`` (f(1) = 1, f(-1) = -1)."""
    return 1.7159 * jnp.tanh(x * (2.0 / 3.0))


def rbf_prototypes(num_classes: int) -> np.ndarray:
    """The fixed (num_classes, 84) +1/-1 RBF centres: digit bitmaps, then pseudo-random codes."""
    digits = np.array(
        [[1.0 if c == "#" else -1.0 for c in bitmap.replace("|", "")] for bitmap in DIGIT_BITMAPS],
        np.float32,
    )
    extra = max(0, num_classes - len(digits))
    codes = np.random.default_rng(1998).choice(np.float32([-1.0, 1.0]), size=(extra, 84))
    return np.concatenate([digits, codes.astype(np.float32)])[:num_classes]


def _uniform_by_fan_in(fan_in: int | np.ndarray) -> Callable:
    """Appendix A's initialisation: uniform in +-2.4 / fan-in (fan-in may vary per output)."""

    def init(key: jax.Array, shape: tuple[int, ...], dtype: Dtype = jnp.float32) -> jax.Array:
        bound = jnp.asarray(2.4 / np.asarray(fan_in, np.float32), dtype)
        return jax.random.uniform(key, shape, dtype, -1.0, 1.0) * bound

    return init


class TrainableSubsampling(nn.Module):
    """LeNet-5's S2/S4: sum of each 2x2 window, times a learned coefficient, plus a learned bias."""

    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        maps = x.shape[-1]
        coefficient = self.param("coefficient", _uniform_by_fan_in(4), (maps,))
        bias = self.param("bias", nn.initializers.zeros, (maps,))
        summed = jax.lax.reduce_window(
            x, np.zeros((), x.dtype), jax.lax.add, (1, 2, 2, 1), (1, 2, 2, 1), "VALID"
        )
        return summed * coefficient.astype(self.dtype) + bias.astype(self.dtype)


class PartialConv(nn.Module):
    """A convolution in which output map ``j`` sees only the input maps ``table[j]`` (C3).

    Only the connections in the table are parameters: ``kernel`` holds one k x k filter per
    (output map, input map) pair, in table order, and is scattered into a dense kernel.
    """

    table: tuple[tuple[int, ...], ...]
    kernel_size: int = 5
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        k = self.kernel_size
        out_maps = [j for j, inputs in enumerate(self.table) for _ in inputs]
        in_maps = [i for inputs in self.table for i in inputs]
        fan_in = np.array([k * k * len(self.table[j]) for j in out_maps])
        kernel = self.param("kernel", _uniform_by_fan_in(fan_in), (k, k, len(in_maps)))
        bias = self.param("bias", nn.initializers.zeros, (len(self.table),))
        dense = jnp.zeros((k, k, x.shape[-1], len(self.table)), kernel.dtype)
        dense = dense.at[:, :, np.array(in_maps), np.array(out_maps)].set(kernel)
        y = conv_general_dilated(
            x, dense.astype(self.dtype), (1, 1), "VALID",
            dimension_numbers=("NHWC", "HWIO", "NHWC"),
        )
        return y + bias.astype(self.dtype)


class LeNet5_1998(layers.Classifier):
    """LeNet-5 exactly as LeCun et al. 1998: trainable subsampling, partial C3, RBF output."""

    num_classes: int = dataclasses.field(default=10, kw_only=True)

    min_size = 32

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        x = self.check_input(x, model="LeNet-5 (1998)", fixed=True)

        def conv(features: int, fan_in: int, name: str) -> layers.Conv:
            return layers.Conv(features, (5, 5), padding="VALID", dtype=self.dtype, name=name,
                               kernel_init=_uniform_by_fan_in(fan_in))

        x = scaled_tanh(conv(6, 25 * x.shape[-1], "c1")(x))
        x = scaled_tanh(TrainableSubsampling(dtype=self.dtype, name="s2")(x))
        x = scaled_tanh(PartialConv(C3_TABLE, dtype=self.dtype, name="c3")(x))
        x = scaled_tanh(TrainableSubsampling(dtype=self.dtype, name="s4")(x))
        x = scaled_tanh(conv(120, 25 * 16, "c5")(x))
        x = x.reshape(x.shape[0], -1)
        x = nn.Dense(84, dtype=self.dtype, kernel_init=_uniform_by_fan_in(120), name="f6")(x)
        return self.forward_head(scaled_tanh(x), train=train, pool=False,
                                 output=self._rbf_units)

    def _rbf_units(self, x: jax.Array) -> jax.Array:
        """Minus the squared distance of the F6 output to each class's fixed prototype."""
        centres = jnp.asarray(rbf_prototypes(self.num_classes))
        return -jnp.sum(jnp.square(x[:, None, :] - centres[None]), axis=-1)


class LeNet5(layers.Classifier):
    """LeNet-5 as most code has it: two 5x5 convolutions, each followed by 2x2 max pooling, a
    flatten and dense layers; by default the modern one (6 and 16 maps, dense 400-120-84-classes).

    ``frame``: the input size (before ``padding``) the flatten is designed for: 32 for the
    modern LeNet-5, 28 for Caffe's; ``conv_activation=False`` leaves the convolutions linear,
    as Caffe's LeNet does.
    """

    padding: int = 0
    activation: Callable[[jax.Array], jax.Array] = nn.relu
    conv_features: tuple[int, int] = (6, 16)
    hidden_features: tuple[int, ...] = (120, 84)
    conv_activation: bool = True
    frame: int = 32
    num_classes: int = dataclasses.field(default=10, kw_only=True)

    @property
    def min_size(self) -> int:
        """The one input size the flatten admits: 32 unpadded, 28 with padding 2 (modern);
        28 for Caffe's."""
        return self.frame - 2 * self.padding

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        x = self.check_input(x, model="LeNet-5", fixed=True)
        conv = functools.partial(layers.Conv, kernel_size=(5, 5), dtype=self.dtype)
        after_conv = self.activation if self.conv_activation else (lambda y: y)
        first, second = self.conv_features
        x = after_conv(conv(first, padding=layers.pair_padding(self.padding), name="conv1")(x))
        x = layers.max_pool(x, 2, 2)
        x = after_conv(conv(second, padding="VALID", name="conv2")(x))
        x = layers.max_pool(x, 2, 2)
        x = x.reshape(x.shape[0], -1)
        for i, features in enumerate(self.hidden_features, 1):
            x = self.activation(nn.Dense(features, dtype=self.dtype, name=f"fc{i}")(x))
        return self.forward_head(x, train=train, pool=False)


class FullyConnected(layers.Classifier):
    """A fully connected network on the flattened image: ``hidden_features`` ReLU layers, then
    the classifier. Takes exactly ``image_shape`` (the input width is part of the network)."""

    hidden_features: tuple[int, ...] = (300, 100)
    image_shape: tuple[int, int, int] = (28, 28, 1)
    num_classes: int = dataclasses.field(default=10, kw_only=True)

    @property
    def min_size(self) -> int:
        return self.image_shape[0]

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        x = self.check_input(x, model="LeNet-300-100", fixed=True, channels=self.image_shape[2])
        x = x.reshape(x.shape[0], -1)
        for i, features in enumerate(self.hidden_features, 1):
            x = nn.relu(nn.Dense(features, dtype=self.dtype, name=f"fc{i}")(x))
        return self.forward_head(x, train=train, pool=False)


MODELS: dict[str, ModelSpec] = {
    "lenet5_1998": ModelSpec(
        builder=LeNet5_1998,
        input_shape=(32, 32, 1),
        num_classes=10,
        reference="LeCun et al. 1998, sec. II-B and Appendix A (no reference code)",
        published=(
            Published(60_000, "params",
                      "LeCun et al. 1998, sec. II-B: '60,000 trainable free parameters'"),
        ),
    ),
    "lenet5": ModelSpec(
        builder=LeNet5,
        input_shape=(32, 32, 1),
        num_classes=10,
        reference="the modern LeNet-5 of Keras/PyTorch tutorials (d2l.ai with padding=2)",
        published=(
            Published(61_706, "params",
                      "computed from the modern LeNet-5's layer sizes, the total Keras' "
                      "model.summary() prints for it (docs/sources.md sec. 3.6)"),
        ),
    ),
    "lenet5_caffe": ModelSpec(
        builder=functools.partial(LeNet5, conv_features=(20, 50), hidden_features=(500,),
                                  conv_activation=False, frame=28),
        input_shape=(28, 28, 1),
        num_classes=10,
        reference="Caffe examples/mnist/lenet_train_test.prototxt, the LeNet-5 of Han et al. "
                  "2015 and 2016",
        published=(
            Published(431_080, "params",
                      "computed from Caffe's examples/mnist/lenet_train_test.prototxt: "
                      "20x(5x5x1+1) + 50x(5x5x20+1) + 500x(800+1) + 10x(500+1)"),
            Published(431_000, "params",
                      "Han, Mao & Dally 2016, Deep Compression, Table 3: LeNet-5 431K weights",
                      rounded=True),
        ),
    ),
    "lenet_300_100": ModelSpec(
        builder=functools.partial(FullyConnected, hidden_features=(300, 100)),
        input_shape=(28, 28, 1),
        num_classes=10,
        reference="LeCun et al. 1998, sec. III-C, the 300-100 network (with ReLU)",
        published=(
            Published(266_610, "params",
                      "computed from LeCun et al. 1998's layer sizes 784-300-100-10: "
                      "300x(784+1) + 100x(300+1) + 10x(100+1)"),
            Published(266_000, "params",
                      "Han, Mao & Dally 2016, Deep Compression, Table 2: LeNet-300-100 266K "
                      "weights", rounded=True),
        ),
    ),
}
