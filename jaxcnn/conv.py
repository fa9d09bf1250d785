"""Convolution that is fast on every backend: one entry point, a formulation chosen per shape.

XLA's CPU convolution is fast on most shapes and very slow on a few: a padded 3x3 convolution
over a 2x2 map (ResNet's last stage at 64 px, 512 channels, batch 32) runs about a hundred
times below XLA's own typical throughput (openxla/xla issue 34273, jax-ml/jax issue 31662).
The same numbers come out of other formulations, each one a handful of XLA operations:

* ``"xla"``: ``lax.conv_general_dilated`` itself;
* ``"im2col"``: the image's patches (one strided slice per kernel tap, side by side) times
  the kernel as one matrix product; one product per group (batched) for grouped
  convolutions. A 1x1 convolution is the special case of one tap: a plain matrix product;
* ``"shifted"``: the sum over the kernel taps of each shifted slice of the image times the
  tap's kernel (elementwise for a depthwise convolution), without im2col's patches;
* ``"flipped"`` (stride 1): the transpose of the convolution of the output's gradient with
  the flipped kernel, that convolution computed as :func:`choose` routes its forward pass.
  Its own value is slow; its input gradient *is* that convolution;
* ``"tapwise"``: im2col without the patches, one (batched) matrix product per kernel tap
  over the image with its groups leading, summed;
* ``"split"``: a grouped convolution as one ungrouped ``lax.conv_general_dilated`` per group,
  side by side;
* ``"spread"``: the shifted sum the other way round, each tap's product formed over the
  image (strided: over the phase of the image the tap reads) and shifted afterwards.
  Transposed for the kernel gradient it reads the image itself, the shifts falling on the
  output's gradient.

:func:`conv_general_dilated` has ``lax.conv_general_dilated``'s signature; it picks a
formulation at trace time from the backend and the shape (:func:`choose`) and differentiates
through it, so the backward pass takes the same route (the patches' product transposes into
two matrix products). Every network builds its convolutions with :class:`Conv`, Flax's
``nn.Conv`` with this function, so parameter names and trees are Flax's own.

Max pooling has the same weakness on the CPU: XLA differentiates ``reduce_window`` into a
select-and-scatter that runs 10-20x below the elementwise operations it amounts to, so
:func:`jaxcnn.layers.max_pool` follows the same switch (:func:`reroutes`).

On the CPU the convolutions that stay with XLA are compiled with :data:`CPU_COMPILER_OPTIONS`
(XLA's Eigen convolution rather than YNNPACK's, which runs narrow ones on one thread): jit
with :func:`jit` (or pass :func:`compiler_options` to ``jax.jit``) to get them. Where their
kernel gradient is XLA's, the convolution's input is computed once for it (:func:`kept`, and
:data:`KEPT_INPUT_KERNEL_GRADS` for why).

Other backends (GPU, TPU) keep XLA's convolution. :func:`policy` forces one formulation for
the code traced inside it (benchmarks compare them in one process), and the environment
variable ``JAXCNN_CONV=xla`` switches the choice off for a whole process.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import functools
import os
from typing import Any, Callable, Iterator, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax
from jax.custom_derivatives import SymbolicZero

FORMULATIONS = ("xla", "im2col", "shifted", "flipped", "tapwise", "split", "spread")
AUTO = "auto"

NHWC = lax.ConvDimensionNumbers(lhs_spec=(0, 3, 1, 2), rhs_spec=(3, 2, 0, 1),
                                out_spec=(0, 3, 1, 2))
"""Flax's layout (NHWC images, HWIO kernels), the one the formulations take."""


def _checked(name: str, where: str) -> str:
    if name not in (AUTO, *FORMULATIONS):
        raise ValueError(f"{where} {name!r} is not one of {AUTO}, {', '.join(FORMULATIONS)}")
    return name


_POLICY: contextvars.ContextVar[str] = contextvars.ContextVar(
    "jaxcnn_conv_policy",
    default=_checked(os.environ.get("JAXCNN_CONV", AUTO), "environment variable JAXCNN_CONV"))


@contextlib.contextmanager
def policy(name: str) -> Iterator[None]:
    """Within the block, functions traced use formulation ``name`` where it applies
    (``"auto"``: :func:`choose`'s pick). Jitted functions traced before keep their choice, and
    so does a function traced again: JAX reuses its trace of the same Python function for the
    same argument types, through a new ``jax.jit`` or ``jax.make_jaxpr`` of it too. To compare
    policies, trace a fresh function (a new closure or lambda) under each."""
    token = _POLICY.set(_checked(name, "conv policy"))
    try:
        yield
    finally:
        _POLICY.reset(token)


def _automatic_on_cpu() -> bool:
    # The automatic choice on the CPU: where the CPU-only workarounds (kept inputs) apply.
    return _POLICY.get() == AUTO and jax.default_backend() == "cpu"


def reroutes() -> bool:
    """Whether code traced now leaves XLA's own windowed operations for the formulations of
    this module: on the CPU under the automatic choice, everywhere under a forced formulation
    other than ``"xla"``. Max pooling follows it too (:func:`jaxcnn.layers.max_pool`)."""
    name = _POLICY.get()
    return name != "xla" and (name != AUTO or jax.default_backend() == "cpu")


CPU_COMPILER_OPTIONS = {"xla_cpu_experimental_ynn_fusion_type":
                        "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT,LIBRARY_FUSION_TYPE_REDUCE"}
"""XLA's options for jaxcnn's programs on the CPU: YNNPACK (XLA's CPU kernel library) keeps
the matrix products and reductions it takes by default in jax 0.10.2, and the convolutions
that stay with XLA go to XLA's own (Eigen) convolution instead of YNNPACK's. YNNPACK runs a
convolution onto 64 output channels or fewer on one thread (2-core AVX2 machine, batch 32,
3x3, forward: 64x64x64 -> 64 116 ms on two cores and on one, Eigen's 60 ms, PyTorch's 62;
32x32x128 -> 128 87 against 151 ms on one core, so wider ones do use both). Whole networks at
64 px, batch 32, images/s in processes of their own (2026-12-04): VGG-16 inference 34-37 ->
43-48, ResNet-18 316-348 -> 442-455, GoogLeNet 333-392 -> 496-573, DenseNet-121 160-188 ->
252-285; their train steps 4-40 % faster."""


CPU_INFERENCE_COMPILER_OPTIONS = {"xla_cpu_experimental_ynn_fusion_type":
                                  "LIBRARY_FUSION_TYPE_REDUCE"}
"""XLA's options for forward passes alone (inference, evaluation) on an x86 CPU without AVX-512:
YNNPACK keeps the reductions, and the matrix products go to XLA's own (Eigen) as the
convolutions do. On the 2-core AMD EPYC with AVX2 (2026-12-06, float32), Eigen's product was the
faster in 31 of 41 forward shapes (M x K by K x N, M 512-100,352, K and N 64-1,024; the median
1.10 times YNNPACK's rate, at most 1.78), but the gradient's product with a transposed right
operand ran at 0.37-0.62 of YNNPACK's where M is small (a 512 x 512 cotangent by the transpose
of a 4,096 x 512 kernel: 62 against 162 GFLOP/s), and train steps moved both ways (VGG-16 at 32
px 36.7 -> 28.8 images/s, ResNet-50 at 64 px 49.8 -> 55.5): train steps keep
:data:`CPU_COMPILER_OPTIONS`. Inference, batch 32, both programs in one process, windows in
turn, median images/s: LeNet-5 16,300 -> 23,600, AlexNet at 64 px 400 -> 558, VGG-16 at 32 px
118 -> 150, SE-ResNet-50 at 32 px 506 -> 607, MobileNetV2 at 32 px 4,320 -> 5,950, ResNet-18 at
32 px 1,454 -> 1,623, DenseNet-121 at 32 px 896 -> 1,002, MobileNet v1 at 32 px 4,219 -> 4,620;
at 224 px ResNeXt-50 14.7 -> 15.7, EfficientNet-B0 75.8 -> 81.7, ResNet-50 17.9 -> 18.2,
MobileNetV2 122 -> 121; GoogLeNet at 64 px 551 -> 554, Inception v3 at 75 px 334 -> 338,
ResNeXt-50 at 64 px 147 -> 148, ResNet-50 at 64 px 196 -> 185 (its windows 166-216 on both
sides). Not measured with AVX-512, where the default stays."""


@functools.cache
def _forward_products_to_eigen() -> bool:
    """Whether forward passes compile with :data:`CPU_INFERENCE_COMPILER_OPTIONS` here: an x86
    CPU with AVX2 and without AVX-512, where they were measured."""
    flags = read_cpuinfo()[1]
    return "avx2" in flags and "avx512f" not in flags


@functools.cache
def _accepts_cpu_options() -> bool:
    # jaxlibs before YNNPACK do not know the option and refuse to compile with it.
    try:
        jax.jit(lambda x: x + 1, compiler_options=CPU_COMPILER_OPTIONS).lower(
            jnp.zeros((), jnp.float32)).compile()
    except Exception:  # noqa: BLE001 -- any refusal means: compile with XLA's defaults
        return False
    return True


def compiler_options(inference: bool = False) -> dict[str, str] | None:
    """``jax.jit``'s ``compiler_options`` for programs that run jaxcnn's networks here:
    :data:`CPU_COMPILER_OPTIONS` on the CPU (for a forward pass alone, ``inference=True``, on
    an x86 CPU without AVX-512: :data:`CPU_INFERENCE_COMPILER_OPTIONS`), None (XLA's defaults)
    on other backends, under ``policy("xla")`` (jaxcnn before its routing) and where the
    jaxlib lacks the option."""
    if not reroutes() or jax.default_backend() != "cpu" or not _accepts_cpu_options():
        return None
    if inference and _forward_products_to_eigen():
        return dict(CPU_INFERENCE_COMPILER_OPTIONS)
    return dict(CPU_COMPILER_OPTIONS)


def jit(fun: Callable[..., Any], *, inference: bool = False, **kwargs: Any) -> Any:
    """``jax.jit(fun, **kwargs)`` compiled with :func:`compiler_options`: how to jit a
    jaxcnn network's train step, or with ``inference=True`` its forward pass alone, to get the
    speeds in README."""
    return jax.jit(fun, compiler_options=compiler_options(inference), **kwargs)


def deferred_jit(fun: Callable[..., Any] | None = None, *, inference: bool = False,
                 **kwargs: Any) -> Any:
    """:func:`jit` for functions defined at import (a decorator, with or without arguments:
    ``@deferred_jit(static_argnames=...)``): :func:`compiler_options` is read at each call,
    when the backend is known and under the :func:`policy` of the call, and one ``jax.jit``
    is kept for each set of options (on the CPU, ``policy("xla")`` compiles with XLA's
    defaults)."""
    if fun is None:
        return functools.partial(deferred_jit, inference=inference, **kwargs)
    programs: dict[tuple[tuple[str, str], ...], Any] = {}

    @functools.wraps(fun)
    def call(*args: Any, **call_kwargs: Any) -> Any:
        options = compiler_options(inference)
        key = tuple(sorted(options.items())) if options else ()
        if key not in programs:
            programs[key] = jax.jit(fun, compiler_options=options, **kwargs)
        return programs[key](*args, **call_kwargs)

    call.programs = programs  # type: ignore[attr-defined]  -- the jax.jit of each set of options
    return call


def pmap(fun: Callable[..., Any], *, inference: bool = False,
         **kwargs: Any) -> Callable[..., Any]:
    """``jax.pmap(fun, **kwargs)`` compiled with :func:`compiler_options` (``inference`` as
    :func:`jit`'s). ``jax.pmap`` takes no compiler options, so each new signature of the
    arguments (shapes, dtypes, shardings) is lowered and compiled with them once, and the
    compiled program is kept for later calls. Runs of several processes keep ``jax.pmap`` as
    it is (XLA's defaults): its compiled form does not convert between the processes' local
    arrays and global ones."""
    mapped = jax.pmap(fun, **kwargs)
    options = compiler_options(inference)
    if options is None or jax.process_count() > 1:
        return mapped
    compiled: dict[Any, Any] = {}

    @functools.wraps(fun)
    def call(*args: Any) -> Any:
        leaves, tree = jax.tree.flatten(args)
        key = (tree, tuple((jax.typeof(x), getattr(x, "sharding", None)) for x in leaves))
        if key not in compiled:
            compiled[key] = mapped.lower(*args).compile(compiler_options=options)
        return compiled[key](*args)

    call.programs = compiled  # type: ignore[attr-defined]  -- the compiled ones, by signature
    return call


# ----------------------------------------------------------------------------------------------
# The geometry of a convolution, as the formulations see it.


class Shape:
    """An NHWC x HWIO convolution: sizes, strides, explicit padding, groups."""

    def __init__(self, lhs: tuple[int, ...], rhs: tuple[int, ...], strides: Sequence[int],
                 pads: Sequence[tuple[int, int]], groups: int):
        self.batch, self.height, self.width, self.in_channels = lhs
        self.kh, self.kw, self.group_in, self.out_channels = rhs
        self.strides = tuple(strides)
        self.pads = tuple(tuple(p) for p in pads)
        self.groups = groups
        (top, bottom), (left, right) = self.pads
        self.out_h = (self.height + top + bottom - self.kh) // self.strides[0] + 1
        self.out_w = (self.width + left + right - self.kw) // self.strides[1] + 1

    @property
    def taps(self) -> int:
        return self.kh * self.kw

    @property
    def depthwise(self) -> bool:
        return self.groups > 1 and self.groups == self.in_channels == self.out_channels

    @property
    def padded(self) -> bool:
        return any(p for pair in self.pads for p in pair)

    @property
    def flops(self) -> int:
        """Multiply-adds x 2 of the forward pass."""
        return 2 * self.batch * self.out_h * self.out_w * self.taps * self.group_in * \
            self.out_channels

    @property
    def patch_bytes(self) -> int:
        """Size of the stacked patches im2col builds, in float32."""
        return 4 * self.batch * self.out_h * self.out_w * self.taps * self.in_channels

    @property
    def batch_chunks(self) -> int | None:
        """The fewest equal slices of the batch whose patches each stay within
        :data:`MAX_PATCH_BYTES` (1: the whole batch's do); None where one image's do not."""
        for chunks in range(1, self.batch + 1):
            if self.batch % chunks == 0 and self.patch_bytes // chunks <= MAX_PATCH_BYTES:
                return chunks
        return None

    def __repr__(self) -> str:
        return (f"Shape(N{self.batch} {self.height}x{self.width}x{self.in_channels} "
                f"k{self.kh}x{self.kw} -> {self.out_channels} s{self.strides} p{self.pads} "
                f"g{self.groups})")


def explicit_pads(padding: str | Sequence[tuple[int, int]], lhs: tuple[int, ...],
                  rhs: tuple[int, ...], strides: Sequence[int]) -> tuple[tuple[int, int], ...]:
    """``"SAME"``/``"VALID"`` (or pairs) as (before, after) pairs for H and W."""
    if isinstance(padding, str):
        return tuple(lax.padtype_to_pads(lhs[1:3], rhs[:2], strides, padding))
    return tuple((int(lo), int(hi)) for lo, hi in padding)


# ----------------------------------------------------------------------------------------------
# The formulations. Each takes NHWC ``x`` and HWIO ``w`` with explicit padding.


def _matmul(x: jax.Array, w: jax.Array, precision: Any = None) -> jax.Array:
    """``x @ w`` over the last axis of ``x``, its leading axes flattened into one first."""
    y = jnp.dot(x.reshape(-1, x.shape[-1]), w, precision=precision)
    return y.reshape(*x.shape[:-1], w.shape[-1])


def _taps(x: jax.Array, s: Shape, spatial: int = 1) -> list[jax.Array]:
    """One strided view of the padded input per kernel tap, in the kernel's row-major order:
    (N, out_h, out_w, C) each, or (..., out_h, out_w, C) with the spatial axes at ``spatial``
    and ``spatial + 1``."""
    if s.padded:
        x = jnp.pad(x, [(0, 0)] * spatial + [*s.pads, (0, 0)])
    sh, sw = s.strides
    lead = x.shape[:spatial]
    return [lax.slice(x, (0,) * spatial + (i, j, 0),
                      (*lead, i + (s.out_h - 1) * sh + 1, j + (s.out_w - 1) * sw + 1,
                       x.shape[-1]), (1,) * spatial + (sh, sw, 1))
            for i in range(s.kh) for j in range(s.kw)]


def _row_taps(x: jax.Array, s: Shape) -> tuple[list[jax.Array], int]:
    """At stride 1: each kernel tap as one contiguous slice of the padded input flattened to
    rows of its padded width ``wp``, (N, out_h * wp, C) each, and ``wp``. A sum over them has
    ``wp - out_w`` extra pixels per row, which the caller drops. Unlike :func:`_taps`, every
    tap reads the padded input: XLA rewrites the centre tap of those into the unpadded input
    and fuses the input's producer there (a previous layer's batch norm and ReLU), and LLVM
    then left the whole fused sum unvectorised (ResNeXt-50's grouped 3x3 at 8x8x256: 1.6 ms
    alone, 12.4 with the producer fused; 1.5 as rows)."""
    (top, bottom), (left, right) = s.pads
    wp = s.width + left + right
    # One more row at the bottom: the last taps run past the padded input by kw - 1 pixels.
    x = jnp.pad(x, [(0, 0), (top, bottom + 1), (left, right), (0, 0)])
    flat = x.reshape(x.shape[0], -1, x.shape[-1])
    length = s.out_h * wp
    return [lax.slice_in_dim(flat, i * wp + j, i * wp + j + length, axis=1)
            for i in range(s.kh) for j in range(s.kw)], wp


def _grey_patches(x: jax.Array, s: Shape) -> jax.Array:
    """im2col's patches of a one-channel image, (N, out_h, out_w, kh * kw), in two levels:
    each row's ``kw`` taps side by side first, then ``kh`` slices of those rows. A one-channel
    tap per slice concatenated along the channel axis wrote one number at a time: LeNet-5's
    C1 (32x32x1, 5x5, batch 32, AVX-512) 1.0-1.2 ms against 0.6-0.7 ms in two levels."""
    if s.padded:
        x = jnp.pad(x, [(0, 0), *s.pads, (0, 0)])
    (sh, sw), (n, h) = s.strides, x.shape[:2]
    rows = jnp.concatenate([lax.slice(x, (0, 0, j, 0), (n, h, j + (s.out_w - 1) * sw + 1, 1),
                                      (1, 1, sw, 1)) for j in range(s.kw)], axis=-1)
    return jnp.concatenate([lax.slice(rows, (0, i, 0, 0),
                                      (n, i + (s.out_h - 1) * sh + 1, s.out_w, s.kw),
                                      (1, sh, 1, 1)) for i in range(s.kh)], axis=-1)


def xla_conv(x: jax.Array, w: jax.Array, s: Shape, precision: Any = None) -> jax.Array:
    return lax.conv_general_dilated(x, w, s.strides, s.pads, dimension_numbers=NHWC,
                                    feature_group_count=s.groups, precision=precision)


def im2col_conv(x: jax.Array, w: jax.Array, s: Shape, precision: Any = None) -> jax.Array:
    chunks = s.batch_chunks if s.taps > 1 else 1  # one tap: the patches are the image
    if chunks is not None and chunks > 1:
        # Patches too large for the whole batch: one slice of the batch at a time (a loop,
        # whose transpose sums the slices' kernel gradients), each slice's patches bounded.
        # Rematerialised: differentiated, the loop would otherwise keep every slice's
        # patches for the backward pass (all of them at once, the size this avoids).
        part = Shape((s.batch // chunks, s.height, s.width, s.in_channels),
                     (s.kh, s.kw, s.group_in, s.out_channels), s.strides, s.pads, s.groups)
        y = lax.map(jax.checkpoint(lambda xs: im2col_conv(xs, w, part, precision)),
                    x.reshape(chunks, part.batch, *x.shape[1:]))
        return y.reshape(s.batch, s.out_h, s.out_w, s.out_channels)
    if s.groups == 1:
        if s.in_channels == 1:
            patches = _grey_patches(x, s)
        else:
            taps = _taps(x, s)
            patches = taps[0] if len(taps) == 1 else jnp.concatenate(taps, axis=-1)
        return _matmul(patches, w.reshape(s.taps * s.group_in, s.out_channels), precision)
    # One matrix product per group, the group axis leading (a batched product XLA handles
    # well).
    g, cg, og = s.groups, s.group_in, s.out_channels // s.groups
    patches = jnp.concatenate(_taps(_group_major(x, s), s, spatial=2), axis=-1)  # G N h w T*Cg
    kernel = w.reshape(s.taps, cg, g, og).transpose(2, 0, 1, 3).reshape(g, s.taps * cg, og)
    return _from_group_major(_batched_matmul(patches.reshape(g, -1, s.taps * cg), kernel,
                                             precision), s)


def _group_major(x: jax.Array, s: Shape) -> jax.Array:
    """NHWC -> (G, N, H, W, C / G): each group's channels, the group axis leading."""
    return x.reshape(*x.shape[:3], s.groups, s.group_in).transpose(3, 0, 1, 2, 4)


def _from_group_major(y: jax.Array, s: Shape) -> jax.Array:
    """(G, N * out_h * out_w, out / G) -> NHWC; output channel o belongs to group
    o // (out / G), as in lax."""
    og = s.out_channels // s.groups
    y = y.reshape(s.groups, s.batch, s.out_h, s.out_w, og).transpose(1, 2, 3, 0, 4)
    return y.reshape(s.batch, s.out_h, s.out_w, s.out_channels)


def _batched_matmul(x: jax.Array, w: jax.Array, precision: Any = None) -> jax.Array:
    """(G, M, K) @ (G, K, N), batched over G."""
    return lax.dot_general(x, w, (((2,), (1,)), ((0,), (0,))), precision=precision)


def tapwise_conv(x: jax.Array, w: jax.Array, s: Shape, precision: Any = None) -> jax.Array:
    # im2col without the patches: one batched product per tap, summed. Grouped patches
    # interleave each tap's few channels (4 a group: 16-byte pieces), which costs more than
    # the products; the taps of the group-major image are contiguous blocks.
    g, cg, og = s.groups, s.group_in, s.out_channels // s.groups
    kernel = w.reshape(s.taps, cg, g, og).transpose(0, 2, 1, 3)  # T G Cg Og
    y = None
    for t, tap in enumerate(_taps(_group_major(x, s), s, spatial=2)):
        term = _batched_matmul(tap.reshape(g, -1, cg), kernel[t], precision)
        y = term if y is None else y + term
    return _from_group_major(y, s)


def split_conv(x: jax.Array, w: jax.Array, s: Shape, precision: Any = None) -> jax.Array:
    # One ungrouped XLA convolution per group over the group's channels, the outputs side by
    # side: independent operations XLA's CPU runtime may run at once, each a dense convolution
    # (the same convolutions one group at a time in a loop, lax.map, took 10.5 ms at 14x14x512
    # with 16 a group, batch 32, where these took 6.6 and the grouped convolution 20).
    cg, og = s.group_in, s.out_channels // s.groups
    ys = [lax.conv_general_dilated(x[..., g * cg:(g + 1) * cg], w[..., g * og:(g + 1) * og],
                                   s.strides, s.pads, dimension_numbers=NHWC,
                                   precision=precision)
          for g in range(s.groups)]
    return jnp.concatenate(ys, axis=-1)


SPLIT_GROUP_IN = 16
"""Grouped convolutions with at least this many input channels a group (ResNeXt-50's last two
stages, AlexNet's towers) take their forward pass as one XLA convolution per group
(``"split"``) onto maps of :data:`SPLIT_MIN_MAP` pixels or more. Batch 32, AVX-512, under
:func:`jit`, XLA's grouped convolution -> split: 14x14x512 with 16 a group 20.5 -> 6.9 ms
(PyTorch 3.4), 7x7x1024 with 32 7.6 -> 4.2, 28x28x512 at stride 2 30.1 -> 14.9, AlexNet's
27x27x96 -> 256 in two towers 40.3 -> 35.8."""

SPLIT_MIN_MAP = 7 * 7
"""The split formulation and the per-tap kernel gradient of grouped convolutions are taken onto
output maps of at least this many pixels (ResNeXt's last stage at 224 px: 7x7). Each group's
convolution costs XLA about 14 ms of compilation (ResNeXt-101 64x4d's forward pass at 64 px
compiled in 7.4 s split against 2.1), and onto smaller maps there is little to win: at 4x4x512
with 16 channels a group, batch 32, 0.5 against 0.9 ms; onto 2x2 with padding split is 2-7
times slower than XLA and im2col."""

SPLIT_INPUT_GRAD_GROUP_IN = 48
"""From this many input channels a group (AlexNet's towers: 48 and 192) the input gradient
takes the split formulation too (27x27x96 -> 256: im2col 73.4 -> 37.8 ms, 13x13x384 25.3 ->
16.7); with 16-32 a group (ResNeXt) it was level with im2col's or slower (14x14x512 14.5
against 13.9 ms, 8x8x512 at stride 2 5.4 against 2.1)."""

BROADCAST_GROUP_IN = 8
"""Grouped convolutions with at most this many input channels per group take the shifted sum
as elementwise products, one per tap and input channel of a group, each broadcast over the
group's outputs (ResNeXt-50's first two stages: 4 and 8 channels a group; forward pass 3-8
times faster than im2col alone, batch 32, 2026-12-03). From 16 channels a group on it ran 6-13
times slower than im2col. A grey-level image (one input channel, :data:`GREY_SUM_TAPS`) takes
the same sum as one group."""


def _tap_product(v: jax.Array, kernel: jax.Array, s: Shape, precision: Any = None
                 ) -> jax.Array:
    """``v`` (N, h, w, in) times one tap of the kernel, (group_in, out): (N, h, w, out)."""
    g, cg, og = s.groups, s.group_in, s.out_channels // s.groups
    if s.depthwise:  # one input channel per output channel: elementwise
        return v * kernel[0]
    if g == 1:
        return _matmul(v, kernel, precision)
    term = jnp.einsum("nhwgc,cgo->nhwgo", v.reshape(*v.shape[:3], g, cg),
                      kernel.reshape(cg, g, og), precision=precision)
    return term.reshape(*v.shape[:3], s.out_channels)


def shifted_conv(x: jax.Array, w: jax.Array, s: Shape, precision: Any = None) -> jax.Array:
    kernel = w.reshape(s.taps, s.group_in, s.out_channels)
    g, cg, og = s.groups, s.group_in, s.out_channels // s.groups
    # A grey-level image (one input channel) is the one-group case of the same sum.
    broadcast = (g > 1 or s.in_channels == 1) and not s.depthwise and cg <= BROADCAST_GROUP_IN
    rows = broadcast and s.strides == (1, 1)
    taps, wp = _row_taps(x, s) if rows else (_taps(x, s), None)
    y = None
    for t, tap in enumerate(taps):
        if broadcast:  # channel c of every group times its kernel row, over the group's outputs
            grouped, row = tap.reshape(*tap.shape[:-1], g, cg), kernel[t].reshape(cg, g, og)
            for c in range(cg):
                part = grouped[..., c:c + 1] * row[c]
                term = part if c == 0 else term + part
            term = term.reshape(*tap.shape[:-1], s.out_channels)
        else:
            term = _tap_product(tap, kernel[t], s, precision)
        y = term if y is None else y + term
    if rows:
        y = y.reshape(s.batch, s.out_h, wp, s.out_channels)[:, :, :s.out_w]
    return y


def spread_conv(x: jax.Array, w: jax.Array, s: Shape, precision: Any = None) -> jax.Array:
    # The shifted sum the other way round: each tap's product is formed over the input (over
    # the phase of the input its stride reads: every sh-th row from the tap's own, every
    # sw-th column) and its shift is taken afterwards, on the product. Transposed for the
    # kernel gradient the shifts fall on the output's gradient, and each tap's gradient reads
    # the input itself (strided: one of its sh x sw phases, which together are the input).
    kernel = w.reshape(s.taps, s.group_in, s.out_channels)
    (top, _), (left, _) = s.pads
    sh, sw = s.strides
    zero = jnp.zeros((), x.dtype)
    phases: dict[tuple[int, int], jax.Array] = {}
    y = None
    for t in range(s.taps):
        i, j = divmod(t, s.kw)
        # Padded row a + sh * p is the phase's row p; its first row in the input is r0.
        (a, di), (b, dj) = (i % sh, i // sh), (j % sw, j // sw)
        r0, c0 = (a - top) % sh, (b - left) % sw
        if (a, b) not in phases:
            phases[a, b] = lax.slice(x, (0, r0, c0, 0), x.shape, (1, sh, sw, 1))
        phase = phases[a, b]
        lo_h, lo_w = di - (r0 + top - a) // sh, dj - (c0 + left - b) // sw
        # Rows lo_h .. lo_h + out_h of the product (zeros where they fall outside it).
        term = lax.pad(_tap_product(phase, kernel[t], s, precision), zero,
                       [(0, 0, 0), (-lo_h, lo_h + s.out_h - phase.shape[1], 0),
                        (-lo_w, lo_w + s.out_w - phase.shape[2], 0), (0, 0, 0)])
        y = term if y is None else y + term
    return y


def transposed(s: Shape) -> Shape:
    """At stride 1: the convolution whose forward pass is ``s``'s input gradient. It runs over
    the output's gradient (N, out_h, out_w, out) with the kernel flipped in space and, within
    each group, in/out swapped (:func:`flip`), the padding its complement to ``k - 1``."""
    (top, bottom), (left, right) = s.pads
    return Shape((s.batch, s.out_h, s.out_w, s.out_channels),
                 (s.kh, s.kw, s.out_channels // s.groups, s.groups * s.group_in), (1, 1),
                 ((s.kh - 1 - top, s.kh - 1 - bottom), (s.kw - 1 - left, s.kw - 1 - right)),
                 s.groups)


def flip(w: jax.Array, s: Shape) -> jax.Array:
    """``s``'s HWIO kernel as :func:`transposed`'s: reversed taps, each group's (in, out)
    swapped; output channel o of group g becomes input channel o of the same group."""
    g, cg, og = s.groups, s.group_in, s.out_channels // s.groups
    k = w[::-1, ::-1].reshape(s.kh, s.kw, cg, g, og).transpose(0, 1, 4, 3, 2)
    return k.reshape(s.kh, s.kw, og, g * cg)


def flipped_conv(x: jax.Array, w: jax.Array, s: Shape, precision: Any = None) -> jax.Array:
    # conv(., w) is the transpose of the transposed convolution (a linear map of the output's
    # gradient): JAX writes that transpose here, and transposes it back, into the transposed
    # convolution itself, for the input gradient. Under a forced policy it is the shifted sum.
    t, kernel = transposed(s), flip(w, s)
    name = _route(t).forward
    impl = _IMPLEMENTATIONS["shifted" if name == "flipped" else name]
    cotangent = jax.ShapeDtypeStruct((s.batch, s.out_h, s.out_w, s.out_channels), x.dtype)
    (y,) = jax.linear_transpose(lambda g: impl(g, kernel, t, precision), cotangent)(x)
    return y


_IMPLEMENTATIONS: dict[str, Callable[..., jax.Array]] = {
    "xla": xla_conv, "im2col": im2col_conv, "shifted": shifted_conv, "flipped": flipped_conv,
    "tapwise": tapwise_conv, "split": split_conv, "spread": spread_conv,
}


def implementation(name: str) -> Callable[..., jax.Array]:
    """Formulation ``name`` as ``f(x, w, shape, precision=None)``."""
    return _IMPLEMENTATIONS[name]


def applies(name: str, s: Shape) -> bool:
    """Whether formulation ``name`` computes convolution ``s``: each computes every one but
    ``"flipped"``, only at stride 1 with padding of at most ``k - 1`` on each side, and
    ``"split"``, only grouped ones that are not depthwise (an ungrouped one it would leave as
    XLA's; a depthwise one would be one convolution per channel: EfficientNet-B7's 3840
    channels compiled for over two minutes and ran the process out of memory mappings)."""
    if name == "split":
        return s.groups > 1 and not s.depthwise
    if name == "flipped":
        (top, bottom), (left, right) = s.pads
        return s.strides == (1, 1) and max(top, bottom) < s.kh and max(left, right) < s.kw
    return name in _IMPLEMENTATIONS


# ----------------------------------------------------------------------------------------------
# The choice.


@dataclasses.dataclass(frozen=True)
class Route:
    """The formulation of each pass of one convolution: the forward pass, the gradient with
    respect to the input and the one with respect to the kernel (each the transpose of its
    formulation's linear map, so any mix gives the same numbers), and the forward pass where
    nothing differentiates it (``inference``; None: ``forward``)."""

    forward: str = "xla"
    input_grad: str = "xla"
    kernel_grad: str = "xla"
    inference: str | None = None

    @classmethod
    def all(cls, name: str) -> "Route":
        return cls(name, name, name)

    def passes(self) -> frozenset[str]:
        """Every formulation the route computes."""
        return frozenset({self.forward, self.input_grad, self.kernel_grad,
                          self.inference or self.forward})


XLA = Route()


MAX_PATCH_BYTES = 256 << 20
"""im2col's patches are kept below this size (they hold each input pixel once per tap): the
routes build them where they fit, and :func:`im2col_conv` takes a larger batch in slices."""

SMALL_STRIDED_MAP = 16 * 16
"""Strided convolutions onto output maps of at most this many pixels go through im2col: its
patches are then small (about taps / stride^2 times the input) and XLA's strided convolution
ran at a third to a half of its usual throughput there through YNNPACK (2026-12-02), its input
gradient at 1/300 on some. With XLA's own kernel (:func:`jit`) the forward pass and kernel
gradient are as fast alone or faster (2026-12-07 survey: AllCNN-C's 32x32x96, forward 6.6
against 12.9 ms), but whole steps with them were level (ResNet-18, ResNet-50) or slower
(AllCNN-C's inference 275 -> 231 images/s), so the rule stays (docs/conv_cpu.md)."""


GREY_STEM_OUT = 8
"""A stride-1 convolution of a one-channel (grey-level) image onto at most this many maps,
with a kernel larger than :data:`GREY_SUM_TAPS` (the 7x7 of the STN's localisation net on
MNIST), takes its forward pass through im2col. XLA's convolution took 1.2 ms of LeNet-5's
2.9-ms train step at its C1 (batch 32, AVX-512); in-process A/B, LeNet-5 inference 44,400 ->
57,000 images/s (2026-12-04, before :data:`GREY_SUM_TAPS`' rule took C1)."""

GREY_SUM_TAPS, GREY_SUM_OUT = 25, 20
"""A stride-1 convolution of a grey-level image with at most 25 taps (5x5) onto at most 20 maps
takes its differentiated forward pass as the shifted sum of broadcast products (the one-group
case of :data:`BROADCAST_GROUP_IN`): one elementwise product per tap, each broadcast over the
maps, all in one loop, its output kept (:data:`KEPT_OUTPUT_FORWARDS`). Im2col built 25
one-channel slices and concatenated them along the channel axis, 1.0-1.2 ms for LeNet-5's C1
(32x32x1 -> 6, batch 32, AVX-512; 0.6-0.7 ms since its patches are formed in two levels,
:func:`_grey_patches`) against the sum's 0.17-0.18 ms alone. In-process A/B of whole networks
(2026-12-07, AVX-512, batch 32, images/s, median of 5-7 windows, before -> after; before is
im2col onto 8 maps or fewer, XLA onto more): train steps LeNet-5 7,700 -> 9,900 and 7,900 ->
11,200 in two runs, the STN's CNN on 42x42 MNIST 860 -> 1,300, Caffe's LeNet (20 maps) 3,070 ->
3,380, the what-where autoencoder (16 maps) 2,730 -> 3,030, LeNet-5 (1998) and the MNIST CNN (16
maps) level; inference Caffe's LeNet 10,500 -> 12,500, the what-where autoencoder 6,900 ->
10,600, the MNIST CNN 7,300 -> 11,200. Onto :data:`GREY_STEM_OUT` maps or fewer the forward pass
alone keeps im2col (``Route.inference``): LeNet-5's max pool fused the sum into its strided
views, where it lost its speed, and ``train.bench``'s LeNet-5 inference fell from 23,100-26,900
to 18,600-19,600 images/s (with the two-level patches, in-process A/B: LeNet-5 inference 19,600
-> 27,200, LeNet-5 (1998) 16,500 -> 17,800, the STN's 7x7 level at 11,100). A 7x7 kernel (49
taps, the STN's 28x28 localisation net onto 8 maps) trained 2,000 -> 2,180 but inferred 10,500
-> 6,100, so larger kernels keep their route. An earlier shifted sum of one matrix product per
tap (each contracting one channel) made LeNet-5 slower (0.85x train)."""

WIDE_PAD_GRAD_MAP = 16 * 16
"""The input gradient of a stride-1 convolution is a convolution padded by ``k - 1 - pad``:
4 on every side for LeNet's unpadded 5x5, 2 for an unpadded 3x3 or a 5x5 padded by 2. Where
that is 2 or more on a side of a kernel of at least 3x3, over input maps of at most this many
pixels, the input gradient takes im2col: batch 32, AVX-512, XLA -> im2col: LeNet-5's C3
(14x14x6 -> 16, 5x5) 0.81 -> 0.32 ms, Caffe LeNet's conv2 (12x12x20 -> 50) 1.12 -> 0.74,
14x14x6 -> 16 padded by 2 0.44 -> 0.24, 8x8x64 -> 64 unpadded 3x3 0.83 -> 0.40; onto larger
maps XLA's is faster (28x28x32 -> 64, 5x5: 7.0 against 12.2 ms), and with padding k - 2 (a
3x3 padded by 1, Inception's 1x7 padded by 3) the two are level. In-process A/B of train
steps (2026-12-04): LeNet-5 15,600 -> 19,800 images/s (with :data:`GREY_STEM_OUT`'s rule too:
15,300 -> 20,700), LeNet-5 (1998) 15,500 -> 16,800; Inception v3 at 75 px (205 against 206),
GoogLeNet at 32 and 64 px, AlexNet at 63 px and Caffe's LeNet unchanged."""


STEM_IN = 4
"""A convolution of at most this many input channels is a stem: it reads the image (grey
levels or colours), and its few multiply-adds an output value (27 for a 3x3 on colours) make
it memory-bound in every formulation. Its forward pass and kernel gradient stay with XLA (the
fastest, or level, on every stem of the 2026-12-07 survey but the grey-level ones below).

Its input gradient at stride 1 takes im2col: a convolution onto 1-3 channels, which XLA runs at
5-20 GFLOP/s, where im2col's transpose is one matrix product onto the patches' few columns and
the sum of their shifted slices (survey of 2026-12-07, AVX-512, batch 32, ms, XLA -> im2col:
VGG's and the CIFAR ResNets' 32x32x3 -> 64 6.0 -> 1.1, VGG's 64x64x3 -> 64 21.9 -> 4.6 and
224x224x3 -> 64 289 -> 65, Network-in-Network's 5x5 32x32x3 -> 192 47.1 -> 7.3, LeNet-5's C1
2.7 -> 0.4, the STN's 7x7 on 28x28 MNIST 1.5 -> 0.5; level on one, 28x28x1 -> 16 5x5 padded by
2, 1.15 -> 1.24). Training computes it only where the image is itself computed: the
ST-CNN's classifier reads the transformer's output (its train step on 42x42 MNIST, in-process
A/B, 2,048 -> 2,409 images/s). The attributions of :mod:`jaxcnn.visualize` (gradient,
SmoothGrad, integrated gradients, deconvnet, guided backpropagation) and adversarial examples
compute it (LeNet-5's SmoothGrad 336 -> 448 images/s). Strided stems keep XLA's input
gradient, level with im2col's or faster (ResNet's 7x7 at 224 px 182 against 159 ms, AlexNet's
11x11 at stride 4 93 against 263)."""


SPREAD_INPUT_GRAD_TAPS = 25
"""The fewest taps a depthwise convolution that the flipped sum does not take (every strided
one: :func:`applies`) has for its input gradient to be the transpose of ``spread`` rather
than of the shifted sum on the CPU. Survey of 2026-12-07
(docs/conv_cpu.json, batch 32, AVX-512, ms, shifted -> spread): the 5x5 at stride 2 over
56x56x288 119.0 -> 35.9, 56x56x72 29.2 -> 7.2, 14x14x1344 33.4 -> 10.1, 28x28x96 9.7 -> 1.2;
the 3x3 the other way (56x56x144 2.4 -> 5.1, 28x28x480 5.3 -> 9.7), which keep the shifted
sum's. In-process A/B of train steps (2026-12-07, AVX-512, batch 32, huge pages, images/s,
median of the windows; the programs' temporaries unchanged): EfficientNet-B0 at 224 px 13.8 ->
14.7 (5 windows; its inference, the same program on both sides, 86.7 -> 89.9: the noise), at
64 px 209.6 -> 227.9 (15 windows) and 186.7 -> 190.8 (11); MobileNetV3-Large at 64 px 355.9 ->
369.3 and 358.4 -> 375.1, at 224 px level (37.6 -> 37.0); MobileNetV3-Small at 64 px level
(726.8 -> 701.4, its 5x5 over 4x4 maps)."""


def read_cpuinfo(path: str = "/proc/cpuinfo") -> tuple[str | None, frozenset[str]]:
    """The first processor's model name and feature flags (x86 ``flags``, Arm ``Features``)
    from ``path``; ``(None, frozenset())`` where there is no such file (macOS, Windows)."""
    model, flags = None, frozenset()
    try:
        with open(path) as f:
            for line in f:
                key, _, value = line.partition(":")
                key = key.strip()
                if key == "model name" and model is None:
                    model = value.strip()
                elif key in ("flags", "Features") and not flags:
                    flags = frozenset(value.split())
    except OSError:
        pass
    return model, flags


def choose(s: Shape, backend: str) -> Route:
    """The formulation of each pass of ``s`` on ``backend``: XLA's convolution except where
    its CPU convolution is slow. Each rule comes from a quiet survey of every convolution
    shape class of the zoo (``python -m train.convbench``; docs/conv_cpu.md has the figures)
    and was checked in whole train steps:

    * depthwise convolutions, every pass: the elementwise sum of shifted slices (XLA runs
      them at a few percent of its speed, the kernel gradient at a fraction of a percent); at
      stride 1 the input gradient as that sum over the output's gradient with the flipped
      kernel (``"flipped"``: 56x56x144, batch 32, 38 -> 16 ms; train steps at 224 px back to
      back, 2026-12-04, images/s: MobileNetV2 35 -> 40, MobileNetV3-Large 45-48 -> 50-53,
      EfficientNet-B0 24-26 -> 26-28, MobileNet v1 level; at 64 px MobileNetV2 and
      EfficientNet-B0 level within the noise); the kernel gradient as the transpose of the
      sum the other way round (``"spread"``: each tap's product shifted after it is formed),
      which reads the input itself (strided: its phases) where the shifted sum's read one
      shifted copy of it per off-centre tap, computed by XLA's CPU scheduler in the forward
      pass and held until the backward pass. Train steps' temporaries (XLA's memory
      analysis, batch 32, 224 px, GiB; shifted -> spread at stride 1 -> spread at every
      stride): MobileNetV2 4.44 -> 2.71 -> 2.42, EfficientNet-B0 7.10 -> 4.06 -> 3.49,
      MobileNetV3-Large 3.58 -> 2.15 -> 1.78, MobileNet v1 3.54 -> 2.07 -> 1.85 (PyTorch's
      MobileNetV2 saves 2.33 for its backward pass). In-process A/B, images/s, median of 9
      train steps (range). At stride 1: at 224 px MobileNetV2 33.2 (5.8-37.6) -> 34.0
      (30.3-36.5), MobileNet v1 35.4 (18.5-36.9) -> 36.6 (35.7-38.7), MobileNetV3-Large
      29.9 -> 43.6 (both sides in two modes, 26-50), EfficientNet-B0 25.0 -> 24.9 over 18;
      at 64 px MobileNetV2 479 -> 509, EfficientNet-B0 305 -> 312, MobileNetV3-Large 470 ->
      589, MobileNet v1 524 -> 549. Strided as well: at 224 px MobileNetV2 29.7 (17.6-35.9)
      -> 34.4 (22.2-36.1), EfficientNet-B0 23.0 (22.1-24.0) -> 24.1 (23.5-25.3),
      MobileNetV3-Large 50.2 (21.9-51.6) -> 52.3 (50.8-53.5), MobileNet v1 37.3
      (16.5-38.4) -> 39.0 (37.9-39.6); at 64 px 465 -> 479, 274 -> 277, 404 -> 431, 383 ->
      399 (2026-12-05). Strided products over the whole input instead of its phases are
      four times the work (MobileNetV2 at 224 px: 29.7 images/s against the shifted sum's
      36.9 in the same run). Strided with :data:`SPREAD_INPUT_GRAD_TAPS` taps or more
      (EfficientNet's and MobileNetV3's 5x5), the input gradient as ``spread``'s transpose too,
      each tap's share added into one phase of the input where the shifted sum's transpose
      scatters every tap over the whole of it;
    * other grouped convolutions: XLA's grouped convolution is slow in every pass (its kernel
      gradient, a batch-grouped convolution, below 1 GFLOP/s), and the routes depend on the
      channels a group. With :data:`BROADCAST_GROUP_IN` or fewer (ResNeXt's first two
      stages) the forward pass is the shifted sum of broadcast products (ResNeXt-50's
      inference at 32/64/224 px 1.35/1.38/2.1 times faster than with im2col; differentiated,
      its output kept: :data:`KEPT_OUTPUT_FORWARDS`) and at stride 1
      the input gradient that sum over the output's gradient with the flipped kernel
      (``"flipped"``; batch 32, 4 channels a group: 16x16x128 19.7 -> 3.2 ms, 56x56x128 252
      -> 32; 8 a group: 56x56x256 409 -> 153). With
      :data:`SPLIT_GROUP_IN` or more the forward pass is one XLA convolution per group
      (``"split"``, there the constant's figures), the input gradient im2col (one batched
      product for all groups), from :data:`SPLIT_INPUT_GRAD_GROUP_IN` on split too. Whatever
      the width, the kernel gradient is split at stride 1 (batch 32, AVX-512, ms, before ->
      after: 4 a group 56x56x128 127 -> 63, 16x16x128 10.3 -> 3.0; 8 a group 28x28x256 46 ->
      25; 16 a group 14x14x512 53 -> 12; 32 a group 7x7x1024 32 -> 11; AlexNet's towers
      27x27x96 -> 256 77 -> 36). Strided, whatever the width, both gradients are spread sums
      (``"spread"``, 2026-12-06: faster than the earlier routes in 16 of the 18 gradients of
      ResNeXt-50's nine strided shapes at 32, 64 and 224 px on AVX-512, 0.1 ms slower in
      the two onto a 1x1 map, and in all at 64 px on AVX2; ms, input gradient im2col ->
      spread and kernel gradient tapwise or im2col -> spread, AVX-512: at 64 px 16x16x256 13.2 ->
      9.4 and 12.0 -> 6.0, 8x8x512 3.7 -> 2.4 and 3.8 -> 2.2; at 224 px 28x28x512 66.8 ->
      33.4 and 63.8 -> 50.1, 14x14x1024 35.0 -> 31.0 and 30.3 -> 23.7). In whole steps
      (in-process A/B, AVX-512, images/s, median of 5): ResNeXt-50 at 224 px 3.8 -> 4.0,
      its train step's temporaries 3.72 -> 3.51 GiB (XLA's memory analysis); at 32 and 64 px
      level within the noise (measured with stride-1 changes that were not taken). Before
      that, the input gradient took im2col and the kernel gradient one product per tap
      (``"tapwise"``: 56x56x256 127 -> 85, 28x28x512 60 -> 30, 14x14x1024 33 -> 20 against
      XLA's). In-process A/B of whole steps, the split routes against the ones before them
      (XLA forward, im2col and tapwise kernel gradients; 2026-12-04, AVX-512, batch 32,
      images/s): ResNeXt-50 at 224 px inference
      27.6 -> 32.4, train 6.6 -> 7.0; at 64 px train 82 -> 90 (inference level); at 32 px
      level; AlexNet's two towers at 227 px inference 161 -> 184, train 56 -> 63. The price
      is compilation: ResNeXt-50's train step 8 -> 18 s at 224 px, 7.5 -> 13 at 64. Onto maps
      smaller than :data:`SPLIT_MIN_MAP` the forward pass of 16 or more channels a group
      stays with XLA and the kernel gradients at stride 1 with im2col (tapwise for 8 or
      fewer);
    * 1x1 convolutions, every pass: one matrix product (XLA's kernel gradient runs at 15-41 %
      of the product's speed, its forward pass and input gradient at 30-90 %);
    * a kernel that covers its output map and overhangs it (a padded 3x3 onto 2x2 or 1x1,
      a 5x5 onto 4x4, Inception's 1x7 onto 1x1; not a 1x7 onto 3x3), every pass: im2col
      (XLA: 1-10 GFLOP/s instead of 200);
    * strided convolutions onto small maps (:data:`SMALL_STRIDED_MAP`) but for the stems,
      every pass: im2col; onto larger maps, the input gradient (56x56x64 -> 128 at stride 2,
      batch 32: 51 -> 35 ms);
    * at stride 1 over small maps (:data:`WIDE_PAD_GRAD_MAP`), the input gradient of kernels
      whose gradient pads by 2 or more (an unpadded 5x5 or 3x3): im2col (LeNet-5's C3 0.81 ->
      0.32 ms);
    * the forward pass of a grey-level image at stride 1: with a kernel of at most 5x5 onto
      at most 20 maps (LeNet-5's C1, Caffe's LeNet, the MNIST networks) the shifted sum of
      broadcast products (:data:`GREY_SUM_TAPS`), but undifferentiated onto a few maps im2col
      with its patches in two levels (LeNet-5's inference, whose max pool fused the sum into
      its strided views); a larger kernel onto a few maps im2col (:data:`GREY_STEM_OUT`);
    * the input gradient of stems (:data:`STEM_IN`) at stride 1, which attributions and the
      ST-CNN's classifier compute: im2col (VGG's 224x224x3 -> 64 289 -> 65 ms).

    Everything else stays with XLA, compiled by :func:`jit` to XLA's own (Eigen) convolution:
    the stems' other passes, the forward pass of strided convolutions onto larger maps,
    every pass of 3x3 and larger kernels at stride 1, and every kernel gradient but the ones
    above. Before :data:`CPU_COMPILER_OPTIONS`, with YNNPACK's convolution, three more
    kernel gradients took im2col (onto maps of 56x56 and more, of the stems, and without
    AVX-512 of dense convolutions onto 64 channels or more); Eigen's beats im2col's on all of
    them (batch 32: VGG-16's 56x56x256 725 against 1,018 ms, ResNet's 7x7 stem at 224 px 81
    against 198, GoogLeNet's 16x16x64 -> 192 12 against 17) and whole steps got faster without them
    (in-process A/B: ResNet-18 at 224 px 9.4 -> 10.6 images/s, ResNet-50 4.4 -> 4.6,
    ResNet-18 at 64 px 130 -> 142, Inception v3 at 75 px 91 -> 95, VGG-16 at 32 px 37 -> 40).

    Two rules that won on single convolutions lost in whole networks and are not taken: the
    shifted sum for the kernel gradient of 3x3 convolutions on maps of 17 px and more (1.6-2.3x
    faster alone; VGG-16's train step at 64 px 0.63x with it) and, for the forward pass of
    grey-level stems, the shifted sum of one matrix product per tap (2-5x alone; LeNet-5 0.85x
    train, 0.69x inference with it), since replaced by its broadcast products.
    """
    if backend != "cpu":
        return XLA
    if s.depthwise:
        input_grad = ("flipped" if applies("flipped", s)
                      else "spread" if s.taps >= SPREAD_INPUT_GRAD_TAPS else "shifted")
        return Route("shifted", input_grad, "spread")
    fits = s.patch_bytes <= MAX_PATCH_BYTES
    if s.groups > 1:
        broadcast = s.group_in <= BROADCAST_GROUP_IN and s.batch_chunks is not None
        large = s.out_h * s.out_w >= SPLIT_MIN_MAP
        split = large and s.group_in >= SPLIT_GROUP_IN
        if s.strides != (1, 1):
            return Route("shifted" if broadcast else "split" if split else "xla",
                         "spread", "spread")
        # Onto maps of SPLIT_MIN_MAP pixels or more the kernel gradient takes one convolution
        # per group.
        if broadcast:
            if applies("flipped", s):
                return Route("shifted", "flipped", "split" if large else "tapwise")
            return Route("shifted", "im2col", "split" if large else "im2col")
        gradients = "im2col" if fits else "shifted"
        if not split:
            return Route("xla", gradients, gradients)
        return Route("split", "split" if s.group_in >= SPLIT_INPUT_GRAD_GROUP_IN else gradients,
                     "split")
    if s.taps == 1:
        return Route.all("im2col")
    covers = s.kh >= s.out_h and s.kw >= s.out_w
    if fits and covers and (s.kh > s.out_h or s.kw > s.out_w):
        return Route.all("im2col")
    if s.in_channels <= STEM_IN:
        if s.strides != (1, 1):  # XLA is the fastest on a strided stem's few channels
            return XLA
        if s.in_channels == 1:
            few = s.out_channels <= GREY_STEM_OUT and fits
            if s.taps <= GREY_SUM_TAPS and s.out_channels <= GREY_SUM_OUT:
                return Route("shifted", "im2col", "xla", "im2col" if few else None)
            if few:
                return Route("im2col", "im2col", "xla")
        return Route("xla", "im2col", "xla")  # the input gradient: STEM_IN
    if fits and max(s.strides) > 1:
        return (Route.all("im2col") if s.out_h * s.out_w <= SMALL_STRIDED_MAP
                else Route("xla", "im2col", "xla"))
    if (fits and s.strides == (1, 1) and min(s.kh, s.kw) >= 3
            and s.height * s.width <= WIDE_PAD_GRAD_MAP
            and max(p for pair in transposed(s).pads for p in pair) >= 2):
        return Route("xla", "im2col", "xla")
    return XLA


def _route(s: Shape) -> Route:
    name = _POLICY.get()
    if name == AUTO:
        return choose(s, jax.default_backend())
    return Route.all(name if applies(name, s) else "xla")


KEPT_INPUT_KERNEL_GRADS = frozenset({"xla", "split"})
"""Kernel gradients that read their convolution's input through XLA's own convolution, which
wants it transposed (the batch innermost). On the CPU, XLA fuses the cheap elementwise work
that made the input (batch norm, ReLU, the residual sum) into that transposition and runs it
10-30 times slower than the transposition alone (batch 32: 56x56x64, three operands, 35
against 3.7 ms; 112x112x64 540 against 19; ResNet-18's train step at 224 px spent 230-320 ms
of 1,200 in them). Under the automatic choice on the CPU :func:`routed` therefore passes the
input of these kernel gradients through :func:`kept` first. In-process A/B of train steps
(2026-12-05, AVX-512, batch 32, images/s): ResNet-18 at 224 px 26.7 -> 30.3 (another run
25.4 -> 28.7), VGG-16 at 224 px 3.5 -> 3.8, DenseNet-121 at 224 px 10.7 -> 11.1; ResNet-50,
SE-ResNet-50, ResNeXt-50, GoogLeNet, MobileNetV2, EfficientNet-B0 at 224 px, Inception v3 at
299 and every family at 32-75 px level within the noise. Inference does not differentiate
and never takes it."""


KEPT_OUTPUT_FORWARDS = frozenset({"shifted"})
"""Forward formulations whose output a convolution keeps (:func:`kept`) when it is differentiated
(grouped ones and grey-level stems; depthwise ones do not). The shifted sum of broadcast
products (:data:`BROADCAST_GROUP_IN`) is elementwise work to XLA, and the CPU fusion copied it
into every consumer of its output: in a train step the batch norm's two statistics, its
normalisation and its backward pass each recomputed the convolution. ResNeXt-50's train step at
64 px (batch 32, AVX2) spent 39-44 ms in each of three loop fusions of its 8x8x256 backward
pass, where the convolution's own passes take 3-4 ms alone; kept, the products are formed once
forward and once for the input gradient. In-process A/B of train steps (2026-12-06, AVX2, batch
32, images/s, median of 5 windows; gradients bit-identical at 32 and 64 px): ResNeXt-50 at 32 px
103.8 -> 132.4, at 64 px 28.6 -> 38.3 (compile 21.2 -> 14.0 s), at 224 px 2.4 -> 3.2 (3 windows;
compile 31.1 -> 23.2 s); SE-ResNeXt-50 at 64 px 31.1 -> 39.6. Inference keeps nothing (one
consumer, nothing recomputed: ResNeXt-50 level within the noise with it), nor do depthwise
convolutions (MobileNetV2 and EfficientNet-B0 train steps at 64 px level within the noise with
it)."""


def kept(x: jax.Array) -> jax.Array:
    """``x`` itself, computed once and read from memory by every consumer: ``x / (1 + 0 x)``,
    exact for finite values (an infinity becomes NaN), which XLA neither simplifies (0 x is
    not 0 for IEEE floats) nor copies into each consumer, a division being an expensive
    operation to duplicate. ``lax.optimization_barrier`` does not do this on the CPU: XLA
    removes it before fusing."""
    if not jnp.issubdtype(x.dtype, jnp.floating):
        return x
    return x / (1 + 0 * x)


def kept_on_cpu(x: jax.Array) -> jax.Array:
    """``x`` through :func:`kept` under the automatic choice on the CPU, ``x`` elsewhere: for
    the running sum of a residual network, which each block reads twice (its first
    convolution and its shortcut).

    XLA's CPU fusion copies cheap elementwise producers into each consumer. In ResNet v1 the
    stream is such a producer (batch norm, sum, ReLU), so every block's sum recomputed the sums
    of all the blocks before it, in a chain back to the stage's first block: ResNet-101's
    inference step at 224 px spent 470 of 1,900 ms in those sums (profile, batch 32), and
    ResNet-101 ran at 1.6x ResNet-101 v2's time for 1.08x its multiply-adds (the pre-activation
    sum is fused into its product and never copied). Kept, a block's sum reads two arrays.
    In-process A/B, 2026-12-05, AVX-512, batch 32, images/s without -> with: ResNet-152 at
    224 px inference 10.2-11.2 -> 16.1-16.6, train 2.7-3.0 -> 3.3-3.6 (compile 12.1 -> 8.3 s);
    ResNet-101 inference 17.1-19.6 -> 22.6-23.7, train 3.9-5.3 -> 6.4-7.0; ResNet-50
    inference 38.6-39.3 -> 41.8-42.0, train level; ResNeXt-50 at 64 px inference 464-478 ->
    500-510, train 92-100 -> 101-103; ResNet-18 at 64 px (two blocks a stage) level within
    the noise (inference 1,300-1,350 -> 1,245-1,293)."""
    return kept(x) if _automatic_on_cpu() else x


def routed(x: jax.Array, w: jax.Array, s: Shape, route: Route, precision: Any = None,
           keep: bool = False, keep_output: bool = False) -> jax.Array:
    """``s`` computed forward by ``route.forward`` (by ``route.inference`` where it is not
    differentiated); differentiated (forward or reverse mode) through ``route.input_grad`` and
    ``route.kernel_grad``. With ``keep`` the convolution's input goes through :func:`kept` when
    the kernel gradient is wanted, with ``keep_output`` its output when it is differentiated
    (:data:`KEPT_OUTPUT_FORWARDS`)."""
    impl = _IMPLEMENTATIONS
    primal = route.inference or route.forward
    if len(route.passes()) == 1 and not (keep or keep_output):
        return impl[primal](x, w, s, precision)

    @jax.custom_jvp
    def conv(x, w):
        return impl[primal](x, w, s, precision)

    def jvp(primals, tangents):
        (x, w), (dx, dw) = primals, tangents
        terms = []
        if not isinstance(dx, SymbolicZero):
            terms.append(impl[route.input_grad](dx, w, s, precision))
        if not isinstance(dw, SymbolicZero):
            if keep:
                x = kept(x)
            terms.append(impl[route.kernel_grad](x, dw, s, precision))
        y = conv(x, w) if primal == route.forward else impl[route.forward](x, w, s, precision)
        if keep_output:
            y = kept(y)
        if not terms:
            return y, jnp.zeros_like(y)
        return y, terms[0] if len(terms) == 1 else terms[0] + terms[1]

    conv.defjvp(jvp, symbolic_zeros=True)
    return conv(x, w)


def conv_general_dilated(lhs: jax.Array, rhs: jax.Array, window_strides: Sequence[int],
                         padding: str | Sequence[tuple[int, int]],
                         lhs_dilation: Sequence[int] | None = None,
                         rhs_dilation: Sequence[int] | None = None,
                         dimension_numbers: Any = None, feature_group_count: int = 1,
                         batch_group_count: int = 1, precision: Any = None,
                         preferred_element_type: Any = None) -> jax.Array:
    """``lax.conv_general_dilated``, each pass computed by the formulation :func:`choose`
    picks.

    Only 2-D NHWC x HWIO convolutions without dilation are rerouted (every convolution of the
    zoo); anything else goes to ``lax.conv_general_dilated`` unchanged.
    """
    def native() -> jax.Array:
        return lax.conv_general_dilated(
            lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation, dimension_numbers,
            feature_group_count, batch_group_count, precision, preferred_element_type)

    if (lhs.ndim != 4 or batch_group_count != 1 or preferred_element_type is not None
            or any(d != 1 for d in (*(lhs_dilation or ()), *(rhs_dilation or ())))
            or lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers) != NHWC):
        return native()
    pads = explicit_pads(padding, lhs.shape, rhs.shape, window_strides)
    if any(p < 0 for pair in pads for p in pair):
        return native()
    s = Shape(lhs.shape, rhs.shape, window_strides, pads, feature_group_count)
    route = _route(s)
    keep = _automatic_on_cpu() and route.kernel_grad in KEPT_INPUT_KERNEL_GRADS
    keep_output = (_automatic_on_cpu() and route.forward in KEPT_OUTPUT_FORWARDS
                   and not s.depthwise)
    return routed(lhs, rhs, s, route, precision, keep, keep_output)


class Conv(nn.Conv):
    """Flax's ``nn.Conv`` computed by :func:`conv_general_dilated`: same fields, same
    parameters (``kernel`` HWIO, ``bias``), the fast formulation for each shape."""

    conv_general_dilated: Callable[..., jax.Array] | None = conv_general_dilated

    def __call__(self, inputs: jax.Array) -> jax.Array:
        if self.is_initializing():
            # ``init`` keeps the parameters, whose shapes do not depend on how the convolution
            # is computed: XLA's own convolution traces and compiles fastest (SENet-154's
            # ``init_shapes``: about 8 s through the CPU's formulations, 3.6 s without).
            with policy("xla"):
                return super().__call__(inputs)
        return super().__call__(inputs)
