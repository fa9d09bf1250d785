"""Blocks shared by several families of networks.

Conventions used everywhere in jaxcnn:

* Images are NHWC. Parameters are float32; computation runs in the module's ``dtype``.
* BatchNorm (:class:`BatchNorm`: Flax's, with its train-mode derivative written out) keeps its
  running statistics in the ``batch_stats`` collection. ``momentum`` is Flax's (the weight of
  the old value): PyTorch's default ``momentum=0.1`` is ``0.9`` here, Keras'
  ``momentum=0.99`` is ``0.99``. In train mode both frameworks normalise with the biased batch
  variance, so train-mode outputs agree; PyTorch updates its running variance with the
  unbiased estimate, Flax with the biased one (a factor n/(n-1) on the update only).
* ``axis_name`` on BatchNorm makes the batch statistics cross-replica under ``pmap``; under
  ``jit`` with shardings the statistics are global without it.
* Padding is written out explicitly as PyTorch does (``((p, p), (p, p))``); ``"SAME"`` is the
  TensorFlow/Keras rule (extra padding at the bottom/right for even kernels and strides).
* Every convolution is a :class:`Conv` (:mod:`jaxcnn.conv`): Flax's ``nn.Conv`` with the
  formulation that is fast for its shape on the backend (XLA's own on GPU and TPU).
* Every network of the zoo is a :class:`Classifier`: the fields every network has
  (``num_classes``, ``dtype``, ``axis_name``, ``min_size``) and the tail every one of them ends
  with (:meth:`Classifier.forward_head`).
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxcnn import conv
from jaxcnn.conv import Conv  # noqa: F401  (every family builds its convolutions with it)

Dtype = Any
PaddingLike = str | int | Sequence[tuple[int, int]]

# Flax initialisers matching the reference frameworks' defaults are chosen per family; these are
# the ones used most.
kaiming_normal_fan_out = nn.initializers.variance_scaling(2.0, "fan_out", "normal")
"""He initialisation used by torchvision's ResNet, VGG, MobileNet and EfficientNet convolutions."""


def pair_padding(padding: PaddingLike) -> str | Sequence[tuple[int, int]]:
    """Turns PyTorch's symmetric ``padding=p`` into Flax's ``((p, p), (p, p))``."""
    if isinstance(padding, int):
        return ((padding, padding), (padding, padding))
    return padding


def make_divisible(value: float, divisor: int = 8, min_value: int | None = None) -> int:
    """Rounds a channel count to a multiple of ``divisor`` without losing more than 10%.

    The rule of the TensorFlow MobileNet/EfficientNet code, used by torchvision, timm and Keras.
    """
    min_value = divisor if min_value is None else min_value
    rounded = max(min_value, int(value + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * value:
        rounded += divisor
    return int(rounded)


class ConvBN(nn.Module):
    """Convolution, optional BatchNorm, optional activation: the unit most networks repeat.

    ``padding`` is an int (PyTorch's symmetric padding), a Flax padding spec or ``"SAME"``.
    ``norm`` is a BatchNorm partial (see :func:`batch_norm`) or ``None`` for no normalisation.
    """

    features: int
    kernel_size: int | tuple[int, int] = 3
    strides: int | tuple[int, int] = 1
    padding: PaddingLike = 0
    groups: int = 1
    use_bias: bool = False
    norm: Callable[..., nn.Module] | None = None
    act: Callable[[jax.Array], jax.Array] | None = nn.relu
    kernel_init: Callable = nn.initializers.lecun_normal()
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        k = (self.kernel_size,) * 2 if isinstance(self.kernel_size, int) else tuple(self.kernel_size)
        s = (self.strides,) * 2 if isinstance(self.strides, int) else tuple(self.strides)
        x = Conv(
            self.features,
            k,
            strides=s,
            padding=pair_padding(self.padding),
            feature_group_count=self.groups,
            use_bias=self.use_bias,
            kernel_init=self.kernel_init,
            dtype=self.dtype,
            name="conv",
        )(x)
        if self.norm is not None:
            x = self.norm(name="bn")(x, use_running_average=not train)
        if self.act is not None:
            x = self.act(x)
        return x


def _channel_means(a: jax.Array, b: jax.Array, axis_name: str | None) -> jax.Array:
    # The per-channel means of a and b over every axis but the last, stacked, and averaged
    # over ``axis_name`` in one collective.
    axes = tuple(range(a.ndim - 1))
    means = jnp.stack([a.mean(axes), b.mean(axes)])
    return means if axis_name is None else jax.lax.pmean(means, axis_name)


def _batch_stats(x: jax.Array, axis_name: str | None) -> tuple[jax.Array, jax.Array]:
    # Flax's statistics (use_fast_variance): one pass for E[x] and E[x^2], in float32.
    x = x.astype(jnp.promote_types(x.dtype, jnp.float32))
    mean, mean2 = _channel_means(x, x * x, axis_name)
    return mean, jnp.maximum(0.0, mean2 - mean * mean)


def _normalize_batch_fwd(x, scale, bias, epsilon, axis_name, dtype):
    mean, var = _batch_stats(x, axis_name)
    rstd = jax.lax.rsqrt(var + epsilon)
    y = (x - mean) * (rstd * scale) + bias  # Flax's _normalize, operation for operation
    return (y.astype(dtype), mean, var), rstd


@functools.partial(jax.custom_jvp, nondiff_argnums=(3, 4, 5))
def _normalize_batch(x, scale, bias, epsilon, axis_name, dtype):
    """Train-mode BatchNorm over the last axis: the output and the batch's mean and variance."""
    return _normalize_batch_fwd(x, scale, bias, epsilon, axis_name, dtype)[0]


@_normalize_batch.defjvp
def _normalize_batch_jvp(epsilon, axis_name, dtype, primals, tangents):
    # Written so that the only primal array the tangent reads is x itself: reverse mode
    # (JAX transposes this) then holds x and per-channel values, where XLA, differentiating
    # the forward pass above, forms x - mean as a buffer of its own as soon as x exists and
    # holds it beside x until the backward pass.
    x, scale, bias = primals
    dx, dscale, dbias = tangents
    (y, mean, var), rstd = _normalize_batch_fwd(x, scale, bias, epsilon, axis_name, dtype)
    xf, dxf = x.astype(mean.dtype), dx.astype(mean.dtype)
    dmean, dmean2 = _channel_means(dxf, dxf * xf, axis_name)  # dmean2: half E[x^2]'s tangent
    dvar = 2 * (dmean2 - mean * dmean)
    k = rstd * scale
    dk = rstd * dscale - 0.5 * rstd ** 3 * dvar * scale
    # The per-channel terms are summed before they meet the full-size ones, so that the
    # transpose reduces over g and g * x only (a separate dmean * k term costs it a third
    # reduction, of g * k, and a buffer the size of x to hold g * k).
    dy = dxf * k + xf * dk + (dbias - dmean * k - mean * dk)
    return (y, mean, var), (dy.astype(dtype), dmean, dvar)


class BatchNorm(nn.BatchNorm):
    """Flax's ``nn.BatchNorm``, with the same variables and outputs, whose train-mode gradient
    holds only its input between the forward and the backward pass.

    Differentiated by Flax's code, XLA forms ``x - mean`` (or ``x_hat``) as a buffer of its own
    and keeps it beside ``x`` until the backward pass: one extra activation-sized buffer for
    every BatchNorm of the network. Here the derivative is written out (a ``custom_jvp``, so
    forward mode works too) in terms of ``x`` itself, and its transpose, the gradient, holds
    nothing else. Train steps' temporaries at 224 px, batch 32, float32 (XLA's memory
    analysis, GiB, before -> after; PyTorch's saved tensors in brackets): ResNet-50 3.90 ->
    2.57 (2.54), EfficientNet-B0 3.50 -> 2.74 (2.61), DenseNet-121 5.56 -> 3.69 (3.87).

    Configurations the zoo does not use (a ``mask``, a feature axis other than the last, no
    bias, two-pass variance, groups of replicas, reductions in the parameters' dtype) and
    initialisation and evaluation are Flax's own code.
    """

    @nn.compact
    def __call__(self, x: jax.Array, use_running_average: bool | None = None, *,
                 mask: jax.Array | None = None) -> jax.Array:
        use_running_average = nn.merge_param("use_running_average", self.use_running_average,
                                             use_running_average)
        if (use_running_average or self.is_initializing() or mask is not None
                or self.axis not in (-1, x.ndim - 1) or not self.use_bias
                or not self.use_fast_variance or self.axis_index_groups is not None
                or not self.force_float32_reductions):
            return super().__call__(x, use_running_average, mask=mask)
        features = (x.shape[-1],)
        ra_mean = self.variable("batch_stats", "mean", lambda s: jnp.zeros(s, jnp.float32),
                                features)
        ra_var = self.variable("batch_stats", "var", lambda s: jnp.ones(s, jnp.float32),
                               features)
        args = [x]
        scale = jnp.ones(features, jnp.float32)
        if self.use_scale:
            scale = self.param("scale", self.scale_init, features, self.param_dtype)
            args.append(scale)
        bias = self.param("bias", self.bias_init, features, self.param_dtype)
        dtype = nn.dtypes.canonicalize_dtype(*args, bias, dtype=self.dtype)
        y, mean, var = _normalize_batch(x, scale, bias, self.epsilon, self.axis_name, dtype)
        ra_mean.value = self.momentum * ra_mean.value + (1 - self.momentum) * mean
        ra_var.value = self.momentum * ra_var.value + (1 - self.momentum) * var
        return y


def batch_norm(
    *,
    momentum: float = 0.9,
    epsilon: float = 1e-5,
    use_scale: bool = True,
    axis_name: str | None = None,
    dtype: Dtype = jnp.float32,
) -> Callable[..., nn.BatchNorm]:
    """A BatchNorm partial. Defaults are PyTorch's (momentum 0.1 in its convention, eps 1e-5).

    Keras networks use ``momentum=0.99, epsilon=1e-3`` (``1.001e-5`` in its ResNet/DenseNet).
    """
    return functools.partial(
        BatchNorm,
        momentum=momentum,
        epsilon=epsilon,
        use_scale=use_scale,
        axis_name=axis_name,
        dtype=dtype,
    )


class SqueezeExcite(nn.Module):
    """Squeeze-and-excitation (Hu et al. 2018): global pool, bottleneck, gate each channel.

    ``reduced`` is the bottleneck width (callers compute it: ``channels // 16`` in SENet,
    ``make_divisible(channels // 4)`` in MobileNetV3, ``in_channels * 0.25`` in EfficientNet).
    The two 1x1 layers are convolutions with bias, as in every released port.
    """

    reduced: int
    act: Callable[[jax.Array], jax.Array] = nn.relu
    gate: Callable[[jax.Array], jax.Array] = nn.sigmoid
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        s = jnp.mean(x, axis=(1, 2), keepdims=True)
        s = Conv(self.reduced, (1, 1), dtype=self.dtype, name="reduce")(s)
        s = self.act(s)
        s = Conv(x.shape[-1], (1, 1), dtype=self.dtype, name="expand")(s)
        return x * self.gate(s)


def local_response_norm(
    x: jax.Array, size: int = 5, alpha: float = 1e-4, beta: float = 0.75, k: float = 2.0
) -> jax.Array:
    """Local response normalisation across channels, PyTorch/Caffe convention.

    ``b_c = a_c / (k + alpha / size * sum_{c' in window(c)} a_{c'}^2) ** beta``, the window being
    ``size`` channels centred on ``c`` (zero-padded at the ends). Note that Caffe and PyTorch
    divide ``alpha`` by ``size``; the AlexNet paper's formula does not (its alpha is 1e-4 with
    size 5 in Caffe's scaling).
    """
    sq = jnp.square(x.astype(jnp.float32))
    lo = size // 2
    hi = (size - 1) // 2
    padded = jnp.pad(sq, [(0, 0)] * (x.ndim - 1) + [(lo, hi)])
    window = jax.lax.reduce_window(
        padded, 0.0, jax.lax.add, (1,) * (x.ndim - 1) + (size,), (1,) * x.ndim, "VALID"
    )
    div = jnp.power(k + alpha / size * window, beta)
    return (x.astype(jnp.float32) / div).astype(x.dtype)


def max_pool(
    x: jax.Array,
    window: int,
    stride: int,
    padding: int = 0,
    *,
    ceil_mode: bool = False,
) -> jax.Array:
    """Max pooling with PyTorch's ``padding`` and ``ceil_mode`` semantics.

    With ``ceil_mode`` the output size rounds up, but (as in PyTorch) a last window that would
    start entirely in the right/bottom padding is dropped.
    """
    _, pads = _pool_geometry(x, window, stride, padding, ceil_mode)
    if not conv.reroutes():
        return nn.max_pool(x, (window, window), (stride, stride), padding=pads)
    return _windowed_max(x, window, stride, tuple(pads))


# Max pooling as elementwise operations on the window's strided views (the CPU's formulation,
# :func:`jaxcnn.conv.reroutes`). XLA differentiates ``reduce_window`` into a select-and-scatter
# that its CPU backend runs 10-20x slower than this: the forward pass keeps, per output, the
# tap that won (int8), and the backward pass hands each output's gradient to that tap, one
# phase of the stride at a time.


def _pool_views(x: jax.Array, window: int, stride: int, pads: tuple[tuple[int, int], ...]
                ) -> list[jax.Array]:
    """The -inf padded input seen through each tap of the window (row-major), output-sized."""
    padded = jnp.pad(x, [(0, 0), *pads, (0, 0)], constant_values=-jnp.inf)
    n, h, w, c = padded.shape
    oh, ow = (h - window) // stride + 1, (w - window) // stride + 1
    return [jax.lax.slice(padded, (0, i, j, 0),
                          (n, i + (oh - 1) * stride + 1, j + (ow - 1) * stride + 1, c),
                          (1, stride, stride, 1))
            for i in range(window) for j in range(window)]


KEPT_SWITCH_CHANNELS = 50
"""The most channels a max pool over windows that do not overlap may have for
:func:`_kept_switches` to keep its switches: the widest pool of the networks it was measured
faster on (Caffe's LeNet, 50)."""


def _kept_switches(window: int, stride: int, channels: int) -> bool:
    """Whether max pooling stores its winning taps computed once (:func:`jaxcnn.conv.kept`,
    as float32) and its backward pass keeps the gradient it is handed: where the windows do
    not overlap (2x2 at stride 2) over at most :data:`KEPT_SWITCH_CHANNELS` maps (LeNet, the
    MNIST networks). XLA's CPU fusion otherwise copied the taps' comparisons and the producer of
    that gradient (LeNet-5's: the sum of the 25 shifted slices of its C3's input gradient) into
    the backward pass, run once for every input pixel, fused with the ReLU's backward pass:
    0.7-0.9 ms of LeNet-5's 2.7-4.0-ms train step (profile, batch 32, AVX-512), 0.11 ms with
    both kept. ReLU, pooling and their gradients alone, taps kept (ms): 28x28x6 0.65-0.86 ->
    0.34, 32x32x64 1.3-2.5 -> 0.78-1.14, 16x16x128 1.4 -> 0.5-0.56. In-process A/B of train
    steps (2026-12-07, AVX-512, batch 32, images/s, median of 7 windows, huge pages as
    ``train.*`` runs): LeNet-5 9,360 -> 11,470, Caffe's LeNet 3,390 -> 4,500 (with glibc's
    default malloc: LeNet-5 8,630 -> 11,610 and 10,640 -> 12,360, Caffe's LeNet 3,760 -> 5,150,
    the MNIST CNN 7,290 -> 9,900); their temporaries (XLA's memory analysis) LeNet-5 8 -> 4
    MiB, Caffe's LeNet 21 -> 12. VGG's pools (64-512 maps) were level at 64 px but slower at
    32 px with huge pages (52.2 -> 46.7 over 11 windows; level with the default malloc), and
    keep the int8 taps, as do overlapping 3x3 windows, where kept taps were slower (32x32x64:
    3.4 -> 4.0 ms). Inference programs are unchanged (they do not differentiate)."""
    return window <= stride and channels <= KEPT_SWITCH_CHANNELS


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3))
def _windowed_max(x: jax.Array, window: int, stride: int, pads: tuple[tuple[int, int], ...]
                  ) -> jax.Array:
    views = _pool_views(x, window, stride, pads)
    return functools.reduce(jnp.maximum, views)


def _windowed_max_fwd(x, window, stride, pads):
    # PyTorch's rule for the switch: the first maximum in row-major order, or a NaN (which then
    # is the maximum too, as jnp.maximum propagates it).
    views = _pool_views(x, window, stride, pads)
    best, tap = views[0], jnp.zeros(views[0].shape, jnp.int8)
    for t, view in enumerate(views[1:], 1):
        wins = (view > best) | jnp.isnan(view)
        best = jnp.where(wins, view, best)
        tap = jnp.where(wins, jnp.int8(t), tap)
    if _kept_switches(window, stride, x.shape[-1]):
        tap = conv.kept(tap.astype(jnp.float32))
    return best, (tap, x.shape)


def _windowed_max_bwd(window, stride, pads, residuals, g):
    tap, shape = residuals
    if _kept_switches(window, stride, g.shape[-1]):
        g = conv.kept(g)
    n, oh, ow, c = g.shape
    # Input row stride * a + r (padded coordinates) is tap row i = stride * q + r of output row
    # a - q: each phase (r, r') of the stride gathers its taps from shifted output-sized views.
    reach = (window - 1) // stride
    wide = [(0, 0), (reach, reach), (reach, reach), (0, 0)]
    g_wide, tap_wide = jnp.pad(g, wide), jnp.pad(tap, wide, constant_values=-1)
    zero = jnp.zeros((), g.dtype)
    phases: dict[tuple[int, int], jax.Array] = {}
    for t in range(window * window):
        i, j = divmod(t, window)
        start = (0, reach - i // stride, reach - j // stride, 0)
        end = (n, start[1] + oh + reach, start[2] + ow + reach, c)
        part = jnp.where(jax.lax.slice(tap_wide, start, end) == t,
                         jax.lax.slice(g_wide, start, end), zero)
        key = (i % stride, j % stride)
        phases[key] = part + phases[key] if key in phases else part
    empty = jnp.zeros_like(next(iter(phases.values())))
    grid = jnp.stack([jnp.stack([phases.get((r, q), empty) for q in range(stride)])
                      for r in range(stride)])  # (stride, stride, n, rows, cols, c)
    _, _, _, rows, cols, _ = grid.shape
    dx = grid.transpose(2, 3, 0, 4, 1, 5).reshape(n, rows * stride, cols * stride, c)
    (top, bottom), (left, right) = pads
    height, width = shape[1] + top + bottom, shape[2] + left + right
    dx = dx[:, :height, :width]
    dx = jnp.pad(dx, [(0, 0), (0, height - dx.shape[1]), (0, width - dx.shape[2]), (0, 0)])
    return (dx[:, top:top + shape[1], left:left + shape[2]],)


_windowed_max.defvjp(_windowed_max_fwd, _windowed_max_bwd)


def _pool_out_size(size: int, window: int, stride: int, padding: int, ceil_mode: bool) -> int:
    span = size + 2 * padding - window
    out = (-(-span // stride) if ceil_mode else span // stride) + 1
    if ceil_mode and (out - 1) * stride >= size + padding:
        out -= 1
    return out


def _pool_geometry(x: jax.Array, window: int, stride: int, padding: int, ceil_mode: bool
                   ) -> tuple[list[int], list[tuple[int, int]]]:
    """Output (H, W) of a PyTorch pool on NHWC ``x`` and the (before, after) padding of H and W
    that gives it: ``padding`` on each side plus the ceil-mode overhang at the bottom/right."""
    outs, pads = [], []
    for size in x.shape[1:3]:
        out = _pool_out_size(size, window, stride, padding, ceil_mode)
        extra = max(0, (out - 1) * stride + window - size - 2 * padding)
        outs.append(out)
        pads.append((padding, padding + extra))
    return outs, pads


def avg_pool(
    x: jax.Array,
    window: int,
    stride: int,
    padding: int = 0,
    *,
    count_include_pad: bool = True,
    ceil_mode: bool = False,
) -> jax.Array:
    """Average pooling with PyTorch semantics (``count_include_pad`` defaults to True there).

    With ``ceil_mode`` the extra bottom/right cells are never counted, as in PyTorch.
    """
    _, pads = _pool_geometry(x, window, stride, padding, ceil_mode)
    summed = jax.lax.reduce_window(
        x, np.zeros((), x.dtype), jax.lax.add, (1, window, window, 1), (1, stride, stride, 1),
        [(0, 0), *pads, (0, 0)],
    )
    ones = jnp.ones((1, *x.shape[1:3], 1), x.dtype)
    if count_include_pad:
        # The symmetric padding counts, the ceil-mode overhang does not.
        ones = jnp.pad(ones, [(0, 0), (padding, padding), (padding, padding), (0, 0)],
                       constant_values=1)
        pads = [(0, p[1] - padding) for p in pads]
    counts = jax.lax.reduce_window(
        ones, np.zeros((), x.dtype), jax.lax.add, (1, window, window, 1), (1, stride, stride, 1),
        [(0, 0), *pads, (0, 0)],
    )
    return summed / counts


def adaptive_avg_pool(x: jax.Array, output_size: int | tuple[int, int]) -> jax.Array:
    """PyTorch's ``AdaptiveAvgPool2d``: cell i averages rows floor(i*H/n) to ceil((i+1)*H/n)."""
    oh, ow = (output_size, output_size) if isinstance(output_size, int) else output_size
    h, w = x.shape[1:3]
    if (h, w) == (oh, ow):
        return x
    if h % oh == 0 and w % ow == 0:
        return nn.avg_pool(x, (h // oh, w // ow), (h // oh, w // ow))

    rows = [jnp.mean(x[:, a:b], axis=1) for a, b in _adaptive_cells(h, oh)]
    x = jnp.stack(rows, axis=1)
    cols = [jnp.mean(x[:, :, a:b], axis=2) for a, b in _adaptive_cells(w, ow)]
    return jnp.stack(cols, axis=2)


def _adaptive_cells(n_in: int, n_out: int) -> list[tuple[int, int]]:
    """The input range [a, b) that each of ``n_out`` adaptive pooling cells averages."""
    return [(i * n_in // n_out, -(-(i + 1) * n_in // n_out)) for i in range(n_out)]


def _adaptive_pool_matrix(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in): row i averages the inputs that :func:`adaptive_avg_pool`'s cell i does."""
    matrix = np.zeros((n_out, n_in), np.float32)
    for i, (a, b) in enumerate(_adaptive_cells(n_in, n_out)):
        matrix[i, a:b] = 1.0 / (b - a)
    return matrix


class PooledDense(nn.Dense):
    """torchvision's classifier entry, ``AdaptiveAvgPool2d(pool_size)``, flatten, ``Linear``, as
    one layer with the Dense's parameters: ``kernel`` (pool_size**2 * C, features), rows in
    (row, column, channel) order, and ``bias``. It takes the NHWC maps.

    Both steps are linear. Where the maps are smaller than the pooled grid (VGG at 32 or 64 px:
    1x1 or 2x2 maps spread over 7x7 cells), the pooling only repeats pixels, and the kernel
    summed over the cells each pixel feeds gives the same outputs from the pixels themselves:
    the batch's multiply-accumulates fall by the ratio of cells to pixels (49 at 1x1), for the
    price of one fold of the kernel per step. The fold is taken where it costs less in all.

    ``dropout``, when given, acts on the pooled grid before the product (torchvision's AlexNet
    drops fc6's inputs in training): the grid is then formed, as the cells' masks differ.
    """

    pool_size: int = 7

    @nn.compact
    def __call__(self, inputs: jax.Array, dropout: Callable[[jax.Array], jax.Array] | None = None
                 ) -> jax.Array:
        batch, h, w, c = inputs.shape
        n = self.pool_size
        kernel = self.param("kernel", self.kernel_init, (n * n * c, self.features),
                            self.param_dtype)
        bias = (self.param("bias", self.bias_init, (self.features,), self.param_dtype)
                if self.use_bias else None)
        # Multiply-accumulates over c * features: the fold (one product of the kernel's cells
        # with the pixels they take) and the batch's product, against the batch's product with
        # the pooled grid. (Two products, one per axis, took 10 times as long on the CPU.)
        if dropout is None and h * w * (n * n + batch) < batch * n * n:
            rows, cols = _adaptive_pool_matrix(h, n), _adaptive_pool_matrix(w, n)
            pixels_of_cells = np.einsum("ir,js->rsij", rows, cols).reshape(h * w, n * n)
            kernel = jnp.dot(pixels_of_cells, kernel.reshape(n * n, c * self.features),
                             precision=jax.lax.Precision.HIGHEST)  # no reduced-precision passes
            kernel = kernel.reshape(h * w * c, self.features)
            x = inputs.reshape(batch, -1)
        else:
            x = adaptive_avg_pool(inputs, n).reshape(batch, -1)
            if dropout is not None:
                x = dropout(x)
        x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias, dtype=self.dtype)
        y = jax.lax.dot_general(x, kernel, (((1,), (0,)), ((), ())), precision=self.precision)
        return y if bias is None else y + bias


def global_avg_pool(x: jax.Array) -> jax.Array:
    """Mean over the spatial axes: NHWC to NC."""
    return jnp.mean(x, axis=(1, 2))


class InputShapeError(ValueError):
    """An image batch the network cannot take (wrong rank or too small)."""


def check_image(
    x: jax.Array, *, min_size: int, model: str, channels: int | None = None, fixed: bool = False
) -> None:
    """Raises a clear error for inputs that are not NHWC batches the network admits.

    ``fixed`` means the network takes exactly ``min_size`` pixels (a flatten before a dense
    layer with no adaptive pooling, as in LeNet-5).
    """
    if x.ndim != 4:
        hint = " Add a batch axis: x[None]." if x.ndim == 3 else ""
        raise InputShapeError(
            f"{model} takes a batch of images shaped (N, H, W, C) (NHWC); got shape "
            f"{tuple(x.shape)} with rank {x.ndim}.{hint}"
        )
    h, w = x.shape[1:3]
    if h in (1, 3) and w > 4 and x.shape[3] > 4 and x.shape[3] != channels:
        # PyTorch's layout: an NHWC reading would be an image 1 or 3 pixels tall with as many
        # channels as the image is wide, which no network of the zoo is meant to see.
        raise InputShapeError(
            f"{model} takes a batch of images shaped (N, H, W, C) (NHWC, channels last); "
            f"shape {tuple(x.shape)} looks like NCHW, with {h} channel(s) first. Transpose "
            f"it: x.transpose(0, 2, 3, 1)."
        )
    if fixed and (h, w) != (min_size, min_size):
        raise InputShapeError(
            f"{model} takes images of exactly {min_size}x{min_size} pixels; got {h}x{w}. "
            f"Resize or pad the input to {min_size}x{min_size}."
        )
    if h < min_size or w < min_size:
        raise InputShapeError(
            f"{model} needs images of at least {min_size}x{min_size} pixels (the minimum size "
            f"its downsampling admits); got {h}x{w}. Resize the input to {min_size}x{min_size} "
            f"or larger."
        )
    if channels is not None and x.shape[-1] != channels:
        raise InputShapeError(
            f"{model} takes images with {channels} channel(s) in the last (NHWC) axis; got "
            f"shape {tuple(x.shape)}. Channels go last: transpose NCHW with "
            f"x.transpose(0, 2, 3, 1)."
        )


def class_map_head(x: jax.Array, num_classes: int, conv: Callable, name: str = "head"
                   ) -> jax.Array:
    """The all-convolutional classifier (NIN, All-CNN, SqueezeNet): a 1x1 convolution to one
    map per class (``conv``: the family's ``Conv`` partial), ReLU, global average; the
    logits are float32 whatever the compute dtype."""
    x = nn.relu(conv(num_classes, (1, 1), padding="VALID", name=name)(x))
    return global_avg_pool(x.astype(jnp.float32))


def dense_head(
    x: jax.Array, num_classes: int, *, dtype: Dtype, name: str = "head",
    kernel_init: Callable = nn.initializers.lecun_normal(),
) -> jax.Array:
    """The final classifier: logits are returned in float32 whatever the compute dtype."""
    x = nn.Dense(num_classes, dtype=dtype, kernel_init=kernel_init, name=name)(x)
    return x.astype(jnp.float32)


class Classifier(nn.Module, kw_only=True):
    """What every network of the zoo has, and the tail every one of them ends with.

    ``num_classes``: outputs of the classifier; 0 builds the network without it (a backbone
    returning its pre-logits, timm's convention). ``dtype``: the computation dtype (parameters
    stay float32, logits are float32). ``axis_name``: the ``pmap`` axis over which BatchNorm
    averages its batch statistics; networks without BatchNorm accept and ignore it, so that one
    trainer builds every network the same way. ``min_size``: the smallest square input, in
    pixels a side, that every layer of the network admits (a class attribute or a property of
    each network; :func:`check_image` names it in its error).

    The fields are keyword-only, so a network's own fields keep their positional order; a
    network with another default declares e.g. ``num_classes: int = dataclasses.field(
    default=10, kw_only=True)``.
    """

    num_classes: int = 1000
    dtype: Dtype = jnp.float32
    axis_name: str | None = None

    @property
    def min_size(self) -> int:
        """The smallest square input (pixels a side) the network admits."""
        raise NotImplementedError(f"{type(self).__name__} does not declare its min_size")

    def check_input(self, x: jax.Array, *, model: str | None = None, fixed: bool = False,
                    channels: int | None = None) -> jax.Array:
        """The batch ``x`` checked against the network's ``min_size`` (and ``channels`` when
        given; :func:`check_image`, whose error names ``model``) and cast to the compute dtype:
        how every ``__call__`` begins."""
        check_image(x, min_size=self.min_size, model=model or type(self).__name__, fixed=fixed,
                    channels=channels)
        return x.astype(self.dtype)

    def norm_layer(self, *, momentum: float = 0.9, epsilon: float = 1e-5, use_scale: bool = True
                   ) -> Callable[..., nn.BatchNorm]:
        """The network's BatchNorm (:func:`batch_norm`), cross-replica over ``axis_name``."""
        return batch_norm(momentum=momentum, epsilon=epsilon, use_scale=use_scale,
                          axis_name=self.axis_name, dtype=self.dtype)

    def forward_head(
        self,
        x: jax.Array,
        *,
        train: bool,
        pool: bool = True,
        dropout_rate: float = 0.0,
        kernel_init: Callable = nn.initializers.lecun_normal(),
        class_maps: Callable[..., nn.Module] | None = None,
        output: Callable[[jax.Array], jax.Array] | None = None,
        pre_logits: bool = False,
    ) -> jax.Array:
        """The classifier tail (timm's ``forward_head``), called from the network's ``__call__``.

        Global average pooling of the maps ``x`` (``pool=False``: ``x`` is already the feature
        vector), in float32; the result is sown as ``intermediates/pre_logits`` and returned as
        it is when ``pre_logits`` is asked for or ``num_classes == 0``. Otherwise dropout at
        ``dropout_rate`` and the classifier: the Dense ``head`` (``kernel_init``); or, given
        ``class_maps`` (the family's ``Conv`` partial), the all-convolutional head of NIN,
        All-CNN and SqueezeNet on the maps (dropout then acts on the maps); or ``output``, a
        parameter-free output layer on the pre-logits (LeNet-5's RBF units). Logits are float32.
        """
        features = x.astype(jnp.float32)
        if pool:
            features = global_avg_pool(features)
        self.sow("intermediates", "pre_logits", features)
        if pre_logits or self.num_classes == 0:
            return features
        if class_maps is not None:
            return class_map_head(self._dropout(x, dropout_rate, train), self.num_classes,
                                  class_maps)
        features = self._dropout(features, dropout_rate, train)
        if output is not None:
            return output(features)
        return dense_head(features, self.num_classes, dtype=self.dtype, kernel_init=kernel_init)

    def _dropout(self, x: jax.Array, rate: float, train: bool) -> jax.Array:
        # No module at rate 0: a network without dropout has no Dropout layer to list.
        return nn.Dropout(rate, deterministic=not train)(x) if rate else x


def max_pool_with_switches(
    x: jax.Array,
    window: int,
    stride: int | None = None,
    padding: int = 0,
    *,
    ceil_mode: bool = False,
) -> tuple[jax.Array, jax.Array]:
    """Max pooling that also returns its "switches", the positions of the maxima.

    The pooled values are those of :func:`max_pool` (PyTorch's padding and ``ceil_mode``;
    ``stride`` defaults to ``window``). The switches follow PyTorch's ``return_indices``: an
    int32 array shaped like the output holding ``row * W + col``, the flat position of the
    maximum in its (unpadded) input plane. Within a window the first maximum in row-major order
    wins, as in PyTorch. Used by unpooling decoders (what-where auto-encoders, deconvnets).
    """
    stride = window if stride is None else stride
    width = x.shape[2]
    (oh, ow), pads = _pool_geometry(x, window, stride, padding, ceil_mode)
    # One strided view per window offset: taps[..., a * window + b] is the input at offset (a, b).
    taps = jnp.stack(_pool_views(x, window, stride, tuple(pads)), axis=-1)
    best = jnp.argmax(taps, axis=-1)
    # Gathering (not jnp.max) sends the gradient to the switch only, as PyTorch does on ties.
    pooled = jnp.take_along_axis(taps, best[..., None], axis=-1)[..., 0]
    rows = jnp.arange(oh)[:, None, None] * stride + best // window - padding
    cols = jnp.arange(ow)[None, :, None] * stride + best % window - padding
    return pooled, (rows * width + cols).astype(jnp.int32)


def max_unpool(x: jax.Array, switches: jax.Array, output_size: tuple[int, int]) -> jax.Array:
    """Puts each value back where its maximum was, zeros elsewhere (PyTorch's ``max_unpool2d``).

    ``switches`` come from :func:`max_pool_with_switches`; ``output_size`` is the (H, W) of the
    pooled input, which pooling alone cannot recover when it floored an odd size.
    """
    n, _, _, c = x.shape
    h, w = output_size
    batch = jnp.arange(n)[:, None, None, None]
    channel = jnp.arange(c)[None, None, None, :]
    flat = jnp.zeros((n, h * w, c), x.dtype).at[batch, switches, channel].set(x)
    return flat.reshape(n, h, w, c)


def _window_taps(x: jax.Array, window: int) -> jax.Array:
    """The non-overlapping ``window`` x ``window`` windows of ``x`` (sizes floored), each
    flattened in row-major order: (N, H // window, W // window, C, window * window)."""
    n, h, w, c = x.shape
    oh, ow = h // window, w // window
    x = x[:, :oh * window, :ow * window].reshape(n, oh, window, ow, window, c)
    return x.transpose(0, 1, 3, 5, 2, 4).reshape(n, oh, ow, c, window * window)


def soft_pool_with_positions(x: jax.Array, window: int, beta: float
                             ) -> tuple[jax.Array, jax.Array]:
    """Soft max pooling and its soft "where" (Zhao et al. 2016, the soft SWWAE variant).

    Within each non-overlapping ``window`` x ``window`` window (sizes floored, as
    :func:`max_pool`), the weights ``softmax(beta * x)`` give the *what*, the weighted mean of
    the values, and the *where*, the weighted mean of the (row, col) offsets: a position in
    ``[0, window - 1]`` on both axes, float32, shaped (N, H', W', C, 2). Both are differentiable;
    as ``beta`` grows they become max pooling and its switches.
    """
    taps = _window_taps(x, window)
    weights = jax.nn.softmax(beta * taps.astype(jnp.float32), axis=-1)
    pooled = jnp.sum(weights * taps, axis=-1).astype(x.dtype)
    offsets = jnp.arange(window * window)
    rows = jnp.sum(weights * (offsets // window), axis=-1)
    cols = jnp.sum(weights * (offsets % window), axis=-1)
    return pooled, jnp.stack([rows, cols], axis=-1)


def soft_unpool(x: jax.Array, positions: jax.Array, output_size: tuple[int, int],
                window: int) -> jax.Array:
    """Puts each value at its soft position, shared bilinearly among the nearest pixels of its
    ``window``: the inverse of :func:`soft_pool_with_positions` (at integer positions, exactly
    :func:`max_unpool`). ``output_size`` is the (H, W) of the pooled input; the rows and
    columns that pooling floored away are zeros."""
    n, oh, ow, c = x.shape
    offsets = jnp.arange(window, dtype=jnp.float32)
    # The bilinear ("tent") weight of each offset, per axis: 1 at the position, 0 a pixel away.
    row_w = jnp.maximum(0.0, 1.0 - jnp.abs(positions[..., 0, None] - offsets))
    col_w = jnp.maximum(0.0, 1.0 - jnp.abs(positions[..., 1, None] - offsets))
    spread = (x[..., None, None] * (row_w[..., :, None] * col_w[..., None, :]).astype(x.dtype))
    spread = spread.transpose(0, 1, 4, 2, 5, 3).reshape(n, oh * window, ow * window, c)
    h, w = output_size
    return jnp.pad(spread, [(0, 0), (0, h - oh * window), (0, w - ow * window), (0, 0)])


def keras_correct_pad(size: tuple[int, int], kernel_size: int) -> tuple[tuple[int, int], ...]:
    """Keras' ``correct_pad``: the ZeroPadding its applications put before a stride-2 conv.

    For a known input size it equals TensorFlow's ``"SAME"`` padding for stride 2: one row/column
    less at the top/left when the size is even.
    """
    half = kernel_size // 2
    return tuple((half - (1 - n % 2), half) for n in size)


class InvertedResidual(nn.Module):
    """MobileNetV2's inverted residual (MBConv): 1x1 expand, depthwise, optional SE, 1x1 project.

    Shared by MobileNetV2/V3 and EfficientNet; callers compute the widths because their rounding
    rules differ. The expand conv is skipped when ``expanded`` equals the input width. ``padding``
    is ``"symmetric"`` (PyTorch: ``k // 2`` on each side) or ``"keras"`` (``keras_correct_pad``
    before a stride-2 depthwise conv, ``"same"`` otherwise). ``se_features=0`` means no
    squeeze-excitation. ``drop_path_rate`` is stochastic depth on the residual branch (whole
    samples dropped, survivors scaled by ``1 / (1 - rate)``; the ``dropout`` rng).
    """

    features: int
    expanded: int
    kernel_size: int = 3
    strides: int = 1
    se_features: int = 0
    act: Callable[[jax.Array], jax.Array] = nn.relu6
    se_act: Callable[[jax.Array], jax.Array] = nn.relu
    se_gate: Callable[[jax.Array], jax.Array] = nn.sigmoid
    padding: str = "symmetric"
    norm: Callable[..., nn.Module] = batch_norm()
    drop_path_rate: float = 0.0
    kernel_init: Callable = kaiming_normal_fan_out
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        if self.padding not in ("symmetric", "keras"):
            raise ValueError(f"padding must be 'symmetric' or 'keras', not {self.padding!r}")
        conv = functools.partial(ConvBN, norm=self.norm, act=self.act,
                                 kernel_init=self.kernel_init, dtype=self.dtype)
        shortcut = x
        if self.expanded != x.shape[-1]:
            x = conv(self.expanded, 1, name="expand")(x, train=train)
        if self.padding == "keras" and self.strides == 2:
            pad = keras_correct_pad(x.shape[1:3], self.kernel_size)
        else:
            pad = self.kernel_size // 2
        x = conv(self.expanded, self.kernel_size, self.strides, pad, groups=self.expanded,
                 name="depthwise")(x, train=train)
        if self.se_features:
            x = SqueezeExcite(self.se_features, act=self.se_act, gate=self.se_gate,
                              dtype=self.dtype, name="squeeze_excite")(x)
        x = conv(self.features, 1, act=None, name="project")(x, train=train)
        if self.strides == 1 and shortcut.shape[-1] == self.features:
            if self.drop_path_rate > 0:
                x = nn.Dropout(self.drop_path_rate, broadcast_dims=(1, 2, 3),
                               deterministic=not train, name="drop_path")(x)
            x = x + shortcut
        return x


def smallest_input(feature_size: Callable[[int], int], limit: int = 1024) -> int:
    """The smallest square input for which ``feature_size(n)``, the last map's size, is >= 1."""
    return next(n for n in range(1, limit) if feature_size(n) >= 1)
