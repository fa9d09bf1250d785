"""Spatial transformer networks (Jaderberg, Simonyan, Zisserman, Kavukcuoglu, NeurIPS 2015).

A spatial transformer is a differentiable module that a network can put in front of any
layer: a *localisation network* looks at the input and regresses the parameters ``theta`` of a
transformation, a *grid generator* maps each output pixel to a sampling position in the input
(:func:`affine_grid`), and a *sampler* reads the input there with bilinear interpolation
(:func:`bilinear_sample`). Everything is differentiable, so the localisation network learns
from the classification loss alone, with no supervision of the transform.

The paper allows any parametrised transform (affine, attention, projective, thin-plate
spline); this module implements the affine one, which its MNIST experiments and every common
implementation use. Coordinates are normalised to [-1, 1] with ``align_corners=False``, so
:func:`affine_grid` and :func:`bilinear_sample` match PyTorch's ``F.affine_grid`` and
``F.grid_sample(mode="bilinear", padding_mode="zeros", align_corners=False)``; the sampler
treats everything outside the input as zero.

:class:`SpatialTransformer` wraps any localisation network (a module returning one feature
vector, or a feature map that is flattened, per image) and adds the final regression to the six
affine parameters, initialised to the identity transform as in the paper and the PyTorch
tutorial, so training starts from "no transform". Put it in front of any classifier::

    class MyNet(nn.Module):
        def setup(self):
            self.stn = SpatialTransformer(localization=LocalizationNet())
            self.backbone = jaxcnn.create_model("resnet18", num_classes=10)

        def __call__(self, x, *, train=False):
            return self.backbone(self.stn(x, train=train), train=train)

(Inside an ``@nn.compact`` method build the localisation network with ``parent=None``, e.g.
``SpatialTransformer(localization=LocalizationNet(parent=None))``; otherwise Flax binds it to
the enclosing module and its parameters appear there instead of under ``stn/localization``.)

Variants (learnable parameters; there is no published count, the figures are computed from the
layer sizes):

=============  ===================================================  ========  ===========
variant        follows                                               input     params
=============  ===================================================  ========  ===========
stn_mnist      PyTorch tutorial ``spatial_transformer_tutorial.py``  28x28x1   27,360
cnn_mnist      the paper's distorted-MNIST comparison: a small CNN   42x42x1   114,314
stn_cnn_mnist  the same CNN behind a spatial transformer (ST-CNN)    42x42x1   143,056
=============  ===================================================  ========  ===========

``stn_mnist`` is the tutorial's network: the classic PyTorch MNIST example classifier (21,840
parameters) behind a spatial transformer whose localisation network has 5,520. It is not one of
the paper's MNIST networks (those are fully connected or larger convnets on distorted MNIST).
Its classifier's flatten (320 features) takes 28x28 maps; they flatten in PyTorch's (C, H, W)
order so that the tutorial's fully connected weights convert by a transpose alone. Larger
inputs (the 42x42 canvas of the RTS digits) are admitted: the transformer then samples a 28x28
view of them, which the tutorial's classifier reads, and only the localisation network's fully
connected layer grows (90 features at 28x28, 490 at 42x42: 40,160 parameters in all). At
28x28 the network is the tutorial's, unchanged.

``cnn_mnist`` and ``stn_cnn_mnist`` reproduce the comparison of the paper's Table 1 (CNN against
ST-CNN on rotated, rotated-translated-scaled, projective and elastic digits) at a size that
trains in about a minute on two CPU cores: the same classifier, conv(5x5, 16) -> max-pool ->
ReLU -> conv(5x5, 32) -> max-pool -> ReLU -> fc 64 -> ReLU -> fc, with or without an affine
spatial transformer in front (localisation: conv(5x5, 8) -> max-pool -> ReLU -> conv(5x5, 16)
-> max-pool -> ReLU -> fc 32 -> ReLU, then the identity-initialised regression, whose gradient
is scaled by 0.1: a tenth of the learning rate for the transformer). The paper's
networks are larger (Jaderberg et al. 2015, appendix A); the sizes here are this library's.
Their dense layers take the flattened maps, so the counts above are at 42x42 (the RTS canvas);
at 28x28 they are 46,730 and 58,576.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxcnn.layers import Classifier, Conv, max_pool
from jaxcnn.spec import ModelSpec, Published

# PyTorch's default Conv2d/Linear weight initialisation (kaiming_uniform with a=sqrt(5)).
_torch_default_init = nn.initializers.variance_scaling(1 / 3, "fan_in", "uniform")


def affine_grid(theta: jax.Array, out_shape: tuple[int, ...]) -> jax.Array:
    """Sampling positions of an affine transform, as PyTorch's ``F.affine_grid``.

    ``theta`` is (N, 2, 3) and maps output coordinates ``(x, y, 1)`` to input coordinates, both
    normalised to [-1, 1] (``align_corners=False``: -1 and 1 are the outer edges of the corner
    pixels, pixel centres sit at ``(2 * i + 1) / size - 1``). ``out_shape`` is the output's
    (H, W) or a whole NHWC shape (N, H, W, C). Returns (N, H, W, 2) positions, ``x`` first.
    """
    theta = jnp.asarray(theta)
    if theta.ndim != 3 or theta.shape[1:] != (2, 3):
        raise ValueError(f"theta must be shaped (N, 2, 3); got {tuple(theta.shape)}.")
    if len(out_shape) == 4:
        if out_shape[0] != theta.shape[0]:
            raise ValueError(
                f"out_shape {tuple(out_shape)} has batch {out_shape[0]}, theta has "
                f"{theta.shape[0]}."
            )
        out_shape = out_shape[1:3]
    elif len(out_shape) != 2:
        raise ValueError(f"out_shape must be (H, W) or (N, H, W, C); got {tuple(out_shape)}.")
    h, w = out_shape
    dtype = jnp.promote_types(theta.dtype, jnp.float32)
    theta = theta.astype(dtype)
    xs = ((2 * jnp.arange(w) + 1) / w - 1).astype(dtype)[None, None, :]
    ys = ((2 * jnp.arange(h) + 1) / h - 1).astype(dtype)[None, :, None]
    # Written out rather than as a matmul: TPUs would run an f32 matmul in bfloat16.
    t = theta[:, :, :, None, None]
    gx = t[:, 0, 0] * xs + t[:, 0, 1] * ys + t[:, 0, 2]
    gy = t[:, 1, 0] * xs + t[:, 1, 1] * ys + t[:, 1, 2]
    return jnp.stack([gx, gy], axis=-1)


def bilinear_sample(images: jax.Array, grid: jax.Array) -> jax.Array:
    """Reads ``images`` (N, H, W, C) at ``grid`` (N, Ho, Wo, 2) positions, bilinearly.

    PyTorch's ``F.grid_sample(mode="bilinear", padding_mode="zeros", align_corners=False)``:
    positions are normalised to [-1, 1] (``x`` first), and the four neighbours of a position
    that fall outside the image count as zeros. Differentiable in both the images and the grid.
    Returns (N, Ho, Wo, C) in the images' dtype.
    """
    if images.ndim != 4 or grid.ndim != 4 or grid.shape[-1] != 2:
        raise ValueError(
            f"images must be (N, H, W, C) and grid (N, Ho, Wo, 2); got {tuple(images.shape)} "
            f"and {tuple(grid.shape)}."
        )
    if grid.shape[0] != images.shape[0]:
        raise ValueError(f"grid batch {grid.shape[0]} != images batch {images.shape[0]}.")
    n, h, w, _ = images.shape
    grid = grid.astype(jnp.promote_types(grid.dtype, jnp.float32))
    # Unnormalise to pixel coordinates (align_corners=False): -1 -> -0.5, 1 -> size - 0.5.
    ix = ((grid[..., 0] + 1) * w - 1) / 2
    iy = ((grid[..., 1] + 1) * h - 1) / 2
    x0, y0 = jnp.floor(ix), jnp.floor(iy)
    wx1, wy1 = _fraction(ix, x0), _fraction(iy, y0)
    batch = jnp.arange(n)[:, None, None]
    source = images.astype(jnp.promote_types(images.dtype, jnp.float32))

    def tap(yf: jax.Array, xf: jax.Array, weight: jax.Array) -> jax.Array:
        # Bounds are tested on the float positions: casting a far-away position to int32 first
        # could overflow.
        inside = (xf >= 0) & (xf <= w - 1) & (yf >= 0) & (yf <= h - 1)
        yi = jnp.clip(yf, 0, h - 1).astype(jnp.int32)
        xi = jnp.clip(xf, 0, w - 1).astype(jnp.int32)
        return source[batch, yi, xi] * jnp.where(inside, weight, 0)[..., None]

    out = (tap(y0, x0, (1 - wy1) * (1 - wx1)) + tap(y0, x0 + 1, (1 - wy1) * wx1)
           + tap(y0 + 1, x0, wy1 * (1 - wx1)) + tap(y0 + 1, x0 + 1, wy1 * wx1))
    return out.astype(images.dtype)


def _fraction(position: jax.Array, floor: jax.Array) -> jax.Array:
    """``position - floor`` kept in [0, 1].

    Under ``jit`` XLA may compute a position once for the taps' indices and again, in another
    fusion, for their weights, rounded differently by an ulp; at a position a hair below an
    integer the two then disagree on its floor, and ``position - floor`` comes out near -1e-6 or
    1 + 1e-6. Unclamped, that reads the neighbour pixel with a weight near 1 (seen on XLA's CPU
    backend at 224x224: outputs off by whole pixel values, in gradients too); clamped, the
    error is the ulp. Inside [0, 1] the clamp passes the value and its derivative unchanged.
    """
    fraction = position - floor
    return jnp.where(fraction < 0, 0.0, jnp.where(fraction > 1, 1.0, fraction))


def _identity_affine(key: Any, shape: tuple[int, ...], dtype: Any = jnp.float32) -> jax.Array:
    del key
    if shape != (6,):
        raise ValueError(f"the affine regression has 6 outputs; got bias shape {shape}")
    return jnp.array([1, 0, 0, 0, 1, 0], dtype)


def _accepts_train(module: nn.Module) -> bool:
    try:
        return "train" in inspect.signature(module.__call__).parameters
    except (TypeError, ValueError):
        return False


class SpatialTransformer(nn.Module):
    """Localisation network, affine regression (identity at init), grid generator, sampler.

    ``localization`` is any module mapping the images to per-image features (flattened here);
    it gets ``train=`` when its ``__call__`` takes it. ``output_size`` is the (H, W) of the
    transformed images, the input's by default. The predicted ``theta`` (N, 2, 3) is sown in
    ``intermediates`` for inspection. ``gradient_scale`` multiplies the gradient that reaches
    ``theta`` (and through it the localisation network), the forward pass unchanged: with SGD,
    a learning rate that much lower for the transformer than for the network behind it, which
    keeps the transform from jumping far off the image in the first steps (the classifier's
    gradient on theta is large while the digits are still a blur to it).
    """

    localization: nn.Module
    output_size: tuple[int, int] | None = None
    gradient_scale: float = 1.0
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        if _accepts_train(self.localization):
            features = self.localization(x, train=train)
        else:
            features = self.localization(x)
        features = features.reshape(features.shape[0], -1)
        theta = nn.Dense(
            6, dtype=self.dtype, kernel_init=nn.initializers.zeros, bias_init=_identity_affine,
            name="fc_theta",
        )(features)
        theta = theta.astype(jnp.float32).reshape(-1, 2, 3)
        if self.gradient_scale != 1.0:
            theta = (self.gradient_scale * theta
                     + jax.lax.stop_gradient((1.0 - self.gradient_scale) * theta))
        self.sow("intermediates", "theta", theta)
        grid = affine_grid(theta, self.output_size or x.shape[1:3])
        return bilinear_sample(x, grid)


def _flatten_chw(x: jax.Array) -> jax.Array:
    """Flattens NHWC in PyTorch's (C, H, W) order, so converted fc weights need no reshuffle."""
    return jnp.transpose(x, (0, 3, 1, 2)).reshape(x.shape[0], -1)


class LocalizationNet(nn.Module):
    """(conv, 2x2 max-pool, ReLU) stages, flatten, a hidden ReLU layer: the tutorial's."""

    features: tuple[int, ...] = (8, 10)
    kernel_sizes: tuple[int, ...] = (7, 5)
    hidden: int = 32
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        for i, (f, k) in enumerate(zip(self.features, self.kernel_sizes, strict=True), 1):
            x = Conv(f, (k, k), padding="VALID", dtype=self.dtype,
                     kernel_init=_torch_default_init, name=f"conv{i}")(x)
            x = nn.relu(max_pool(x, 2, 2))
        x = _flatten_chw(x)
        x = nn.Dense(self.hidden, dtype=self.dtype, kernel_init=_torch_default_init,
                     name="fc")(x)
        return nn.relu(x)


class StnNet(Classifier):
    """The PyTorch STN tutorial network: a spatial transformer, then a small LeNet-style net.

    Classifier: conv(5x5) -> max-pool 2 -> ReLU -> conv(5x5) -> channel dropout -> max-pool 2
    -> ReLU -> flatten -> fc -> ReLU -> dropout -> fc. The transformer's output is 28x28
    whatever the input's size, the classifier's input.
    """

    features: tuple[int, int] = (10, 20)
    kernel_size: int = 5
    hidden: int = 50
    dropout_rate: float = 0.5
    loc_features: tuple[int, ...] = (8, 10)
    loc_kernel_sizes: tuple[int, ...] = (7, 5)
    loc_hidden: int = 32
    num_classes: int = dataclasses.field(default=10, kw_only=True)

    # The classifier's flatten (320 features) reads 28x28 maps: the transformer's output size,
    # and the smallest input.
    min_size = 28

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        x = self.check_input(x, model="STN (MNIST tutorial)")
        localization = LocalizationNet(self.loc_features, self.loc_kernel_sizes, self.loc_hidden,
                                       dtype=self.dtype, parent=None)
        x = SpatialTransformer(localization=localization, output_size=(28, 28), dtype=self.dtype,
                               name="stn")(x, train=train)
        k = (self.kernel_size, self.kernel_size)
        x = Conv(self.features[0], k, padding="VALID", dtype=self.dtype,
                 kernel_init=_torch_default_init, name="conv1")(x)
        x = nn.relu(max_pool(x, 2, 2))
        x = Conv(self.features[1], k, padding="VALID", dtype=self.dtype,
                 kernel_init=_torch_default_init, name="conv2")(x)
        # PyTorch's Dropout2d: whole channels are dropped, hence the broadcast over H and W.
        x = nn.Dropout(self.dropout_rate, broadcast_dims=(1, 2), deterministic=not train)(x)
        x = nn.relu(max_pool(x, 2, 2))
        x = nn.Dense(self.hidden, dtype=self.dtype, kernel_init=_torch_default_init,
                     name="fc1")(_flatten_chw(x))
        x = nn.Dropout(self.dropout_rate, deterministic=not train)(nn.relu(x))
        return self.forward_head(x, train=train, pool=False, kernel_init=_torch_default_init)


class DigitCNN(Classifier):
    """The CNN of the distorted-digits comparison, optionally behind a spatial transformer.

    (conv, 2x2 max-pool, ReLU) stages, flatten, a hidden ReLU layer, the classifier; with
    ``spatial_transformer``, an affine transformer (identity at initialisation, output the
    input's size) in front, whose localisation network is ``loc_*``.
    """

    features: tuple[int, ...] = (16, 32)
    kernel_size: int = 5
    hidden: int = 64
    spatial_transformer: bool = False
    loc_features: tuple[int, ...] = (8, 16)
    loc_kernel_sizes: tuple[int, ...] = (5, 5)
    loc_hidden: int = 32
    # With SGD, the transformer learns at a tenth of the rate of the CNN behind it: at the same
    # rate, the transform drifts off the digits within the first steps and the network never
    # recovers (RTS digits, SGD 0.05 with momentum 0.9: chance after 4 epochs; at a tenth,
    # 84% against the CNN's 68%).
    loc_gradient_scale: float = 0.1
    num_classes: int = dataclasses.field(default=10, kw_only=True)

    @property
    def min_size(self) -> int:
        """Each stage needs a map of ``kernel_size + 1`` pixels or more (valid conv, pool 2)."""
        kernels = [self.kernel_size] * len(self.features)
        if self.spatial_transformer:
            kernels = [max(a, b) for a, b in zip(kernels, self.loc_kernel_sizes)]
        size = 1
        for k in reversed(kernels):
            size = 2 * size + k - 1
        return size

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        x = self.check_input(x, model="distorted-digits CNN")
        if self.spatial_transformer:
            localization = LocalizationNet(self.loc_features, self.loc_kernel_sizes,
                                           self.loc_hidden, dtype=self.dtype, parent=None)
            x = SpatialTransformer(localization=localization,
                                   gradient_scale=self.loc_gradient_scale, dtype=self.dtype,
                                   name="stn")(x, train=train)
        for i, f in enumerate(self.features, 1):
            x = Conv(f, (self.kernel_size, self.kernel_size), padding="VALID",
                     dtype=self.dtype, name=f"conv{i}")(x)
            x = nn.relu(max_pool(x, 2, 2))
        x = nn.Dense(self.hidden, dtype=self.dtype, name="fc1")(x.reshape(x.shape[0], -1))
        return self.forward_head(nn.relu(x), train=train, pool=False)


MODELS: dict[str, ModelSpec] = {
    "stn_mnist": ModelSpec(
        builder=StnNet,
        input_shape=(28, 28, 1),
        reference="PyTorch tutorials intermediate_source/spatial_transformer_tutorial.py",
        num_classes=10,
        published=(
            Published(27_360, "params",
                      "computed from the layer sizes of pytorch/tutorials "
                      "intermediate_source/spatial_transformer_tutorial.py, which prints no "
                      "count (docs/sources.md sec. 3.6)"),
        ),
    ),
    "cnn_mnist": ModelSpec(
        builder=DigitCNN,
        input_shape=(42, 42, 1),
        reference="Jaderberg et al. 2015, sec. 4.1 (distorted MNIST): the CNN baseline, at this "
                  "library's size",
        num_classes=10,
    ),
    "stn_cnn_mnist": ModelSpec(
        builder=functools.partial(DigitCNN, spatial_transformer=True),
        input_shape=(42, 42, 1),
        reference="Jaderberg et al. 2015, sec. 4.1 (distorted MNIST): ST-CNN (affine), at this "
                  "library's size",
        num_classes=10,
    ),
}
