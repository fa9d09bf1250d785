"""Every formulation of jaxcnn.conv against lax.conv_general_dilated: values and gradients.

One small case per shape class of the zoo (tests/ sizes, not the benchmark's): the padded 3x3 on
2x2 and 1x1 maps, strided 3x3 on odd and even maps, 1x1 plain and strided, the 7x7 stem with
3 input channels, LeNet's grey 5x5 stem, a 5x5 onto a 4x4 map, Inception's 1x7/7x1, AlexNet's
11x11 stride 4, grouped and depthwise convolutions with symmetric and Keras' asymmetric
padding.
"""

import dataclasses
import functools
import os
import re
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from jaxcnn import conv

CASES = {
    # name: (input NHWC, kernel HWIO, strides, padding, groups)
    "3x3 pad on 2x2": ((2, 2, 2, 8), (3, 3, 8, 6), (1, 1), ((1, 1), (1, 1)), 1),
    "3x3 pad on 1x1": ((2, 1, 1, 8), (3, 3, 8, 6), (1, 1), ((1, 1), (1, 1)), 1),
    "3x3 s2 pad on 7x7": ((2, 7, 7, 4), (3, 3, 4, 5), (2, 2), ((1, 1), (1, 1)), 1),
    "3x3 s2 SAME on 8x8": ((2, 8, 8, 4), (3, 3, 4, 5), (2, 2), "SAME", 1),
    "1x1": ((2, 5, 5, 6), (1, 1, 6, 7), (1, 1), "VALID", 1),
    "1x1 s2": ((2, 6, 6, 6), (1, 1, 6, 7), (2, 2), ((0, 0), (0, 0)), 1),
    "7x7 s2 stem": ((2, 17, 17, 3), (7, 7, 3, 8), (2, 2), ((3, 3), (3, 3)), 1),
    "5x5 grey stem": ((2, 12, 12, 1), (5, 5, 1, 6), (1, 1), "VALID", 1),
    "5x5 grey s2 uneven pad on 11x9": ((2, 11, 9, 1), (5, 5, 1, 4), (2, 2), ((2, 1), (2, 2)), 1),
    "5x5 onto 4x4": ((2, 4, 4, 4), (5, 5, 4, 6), (1, 1), ((2, 2), (2, 2)), 1),
    "1x7": ((2, 6, 6, 4), (1, 7, 4, 5), (1, 1), ((0, 0), (3, 3)), 1),
    "7x1": ((2, 6, 6, 4), (7, 1, 4, 5), (1, 1), ((3, 3), (0, 0)), 1),
    "11x11 s4": ((1, 23, 23, 3), (11, 11, 3, 4), (4, 4), ((2, 2), (2, 2)), 1),
    "grouped 3x3": ((2, 4, 4, 8), (3, 3, 2, 12), (1, 1), ((1, 1), (1, 1)), 4),
    "grouped 3x3 s2": ((2, 5, 5, 8), (3, 3, 4, 8), (2, 2), ((1, 1), (1, 1)), 2),
    "grouped 3x3 uneven pad on 5x7": ((2, 5, 7, 8), (3, 3, 4, 6), (1, 1), ((0, 2), (2, 1)), 2),
    "grouped 3x3 16 a group": ((2, 4, 4, 32), (3, 3, 16, 32), (1, 1), ((1, 1), (1, 1)), 2),
    "depthwise 3x3": ((2, 4, 4, 6), (3, 3, 1, 6), (1, 1), ((1, 1), (1, 1)), 6),
    "depthwise 3x3 on 1x1": ((2, 1, 1, 6), (3, 3, 1, 6), (1, 1), ((1, 1), (1, 1)), 6),
    "depthwise 5x5 s2 keras pad": ((2, 8, 8, 6), (5, 5, 1, 6), (2, 2), ((1, 2), (1, 2)), 6),
}


def _arrays(lhs_shape, rhs_shape):
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal(lhs_shape), jnp.float32)
    w = jnp.asarray(rng.standard_normal(rhs_shape), jnp.float32)
    return x, w


def _reference(x, w, strides, padding, groups):
    return lax.conv_general_dilated(x, w, strides, padding, dimension_numbers=conv.NHWC,
                                    feature_group_count=groups)


def _every_formulation():
    """Each case in each formulation. The zoo computes the shifted sum, flipped and tapwise
    formulations on the CPU only for grouped and depthwise convolutions and the shifted sum
    for grey-level stems (checked in the fast subset too); on other dense ones they are slow
    to compile (the sum of an 11x11 kernel's 121 taps alone takes seconds): `make
    test` checks them there, the fast subset does not."""
    return [pytest.param(case, f, id=f"{name}-{f}",
                         marks=pytest.mark.slow if f in ("shifted", "flipped", "tapwise")
                         and case[-1] == 1 and (f, case[1][2]) != ("shifted", 1) else ())
            for name, case in CASES.items() for f in conv.FORMULATIONS]


@functools.partial(jax.jit, static_argnums=0)
def _value_and_grads(fn, x, w, cotangent):
    y, pullback = jax.vjp(fn, x, w)
    return y, pullback(cotangent)


@functools.cache
def _lax_value_and_grads(case):
    """lax's output of ``case`` and its gradients for a random cotangent: computed once per
    case and test process, for the seven formulations compared with it (the fast subset
    compiled lax's 83 times)."""
    lhs_shape, rhs_shape, strides, padding, groups = case
    x, w = _arrays(lhs_shape, rhs_shape)

    def reference(x, w):
        return _reference(x, w, strides, padding, groups)

    want_shape = jax.eval_shape(reference, x, w).shape
    cotangent = jnp.asarray(np.random.default_rng(1).standard_normal(want_shape), jnp.float32)
    return cotangent, *_value_and_grads(reference, x, w, cotangent)


@pytest.mark.parametrize("case,formulation", _every_formulation())
def test_formulation_equals_lax_values_and_gradients(case, formulation):
    lhs_shape, rhs_shape, strides, padding, groups = case
    x, w = _arrays(lhs_shape, rhs_shape)
    pads = conv.explicit_pads(padding, lhs_shape, rhs_shape, strides)
    shape = conv.Shape(lhs_shape, rhs_shape, strides, pads, groups)
    if not conv.applies(formulation, shape):
        pytest.skip(f"{formulation} does not compute {shape}")
    impl = conv.implementation(formulation)

    def ours(x, w):
        return impl(x, w, shape)

    cotangent, want, want_grads = _lax_value_and_grads(case)
    got, got_grads = _value_and_grads(ours, x, w, cotangent)
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    for g, r in zip(got_grads, want_grads):
        np.testing.assert_allclose(g, r, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("case", CASES.values(), ids=list(CASES))
def test_the_routed_entry_point_equals_lax_on_this_backend(case):
    lhs_shape, rhs_shape, strides, padding, groups = case
    x, w = _arrays(lhs_shape, rhs_shape)
    got = jax.jit(lambda x, w: conv.conv_general_dilated(
        x, w, strides, padding, dimension_numbers=conv.NHWC, feature_group_count=groups))(x, w)
    np.testing.assert_allclose(got, _reference(x, w, strides, padding, groups), rtol=1e-5,
                               atol=1e-5)


def test_accelerators_keep_xla_convolution():
    shape = conv.Shape((32, 2, 2, 512), (3, 3, 512, 512), (1, 1), ((1, 1), (1, 1)), 1)
    assert conv.choose(shape, "gpu") == conv.choose(shape, "tpu") == conv.XLA


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="CPU compiler options")
def test_jit_compiles_convolutions_with_xlas_own_kernel_on_the_cpu():
    """conv.jit compiles with CPU_COMPILER_OPTIONS: a 3x3 convolution onto 64 channels (which
    YNNPACK, where XLA hands it over by default, runs on one thread) is not handed to YNNPACK,
    the matrix product still is, and the numbers are those of the default compilation. Under
    policy("xla") (jaxcnn before its routing) XLA's defaults stay."""
    if not conv._accepts_cpu_options():
        pytest.skip("this jaxlib has no xla_cpu_experimental_ynn_fusion_type")
    x, w = _arrays((32, 16, 16, 64), (3, 3, 64, 64))
    m = jnp.asarray(np.random.default_rng(1).standard_normal((64, 8)), jnp.float32)

    def f(x, w, m):
        y = lax.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=conv.NHWC)
        return y, y.reshape(-1, 64) @ m

    def ynn_lines(jitted):
        hlo = jitted.lower(x, w, m).compile().as_text()
        return [line for line in hlo.splitlines() if "__ynn_fusion" in line]

    if not any("conv_general_dilated" in line for line in ynn_lines(jax.jit(f))):
        pytest.skip("this XLA keeps the convolution by default: nothing to change")
    assert conv.compiler_options() == conv.CPU_COMPILER_OPTIONS
    ours = ynn_lines(conv.jit(f))
    assert any("dot_general" in line for line in ours), "the product should stay with YNNPACK"
    assert not any("conv_general_dilated" in line for line in ours), ours
    for got, want in zip(conv.jit(f)(x, w, m), jax.jit(f)(x, w, m)):  # sums of 576 terms:
        scale = float(jnp.max(jnp.abs(want)))                         # rounding, not rtol
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-5 * scale)
    with conv.policy("xla"):
        assert conv.compiler_options() is None


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="CPU compiler options")
@pytest.mark.parametrize("flags, to_eigen", [({"avx", "avx2"}, True),
                                             ({"avx", "avx2", "avx512f"}, False),
                                             ({"asimd"}, False)], ids=["avx2", "avx512", "arm"])
def test_forward_passes_alone_take_xlas_own_products_without_avx512(monkeypatch, request, flags,
                                                                    to_eigen):
    """conv.jit(..., inference=True) hands its matrix products to XLA's own kernel instead of
    YNNPACK's on an x86 CPU with AVX2 and without AVX-512 (the CPU's flags read from a stand-in
    for /proc/cpuinfo), and nowhere else; train steps keep YNNPACK's products everywhere; the
    numbers are the default compilation's."""
    if not conv._accepts_cpu_options():
        pytest.skip("this jaxlib has no xla_cpu_experimental_ynn_fusion_type")
    monkeypatch.setattr(conv, "read_cpuinfo",
                        lambda path="/proc/cpuinfo": ("cpu", frozenset(flags)))
    conv._forward_products_to_eigen.cache_clear()
    request.addfinalizer(conv._forward_products_to_eigen.cache_clear)  # the real CPU's again
    x, m = _arrays((256, 64), (64, 32))

    def f(x, m):
        return jax.nn.relu(x @ m)

    def ynn_product(jitted):
        hlo = jitted.lower(x, m).compile().as_text()
        return any("__ynn_fusion" in line and "dot_general" in line for line in hlo.splitlines())

    if not ynn_product(jax.jit(f)):
        pytest.skip("this XLA keeps matrix products by default: nothing to change")
    assert conv.compiler_options() == conv.CPU_COMPILER_OPTIONS
    assert conv.compiler_options(inference=True) == (
        conv.CPU_INFERENCE_COMPILER_OPTIONS if to_eigen else conv.CPU_COMPILER_OPTIONS)
    assert ynn_product(conv.jit(f)), "a train step's products should stay with YNNPACK"
    assert ynn_product(conv.jit(f, inference=True)) is not to_eigen
    want = jax.jit(f)(x, m)  # sums of 64 terms: rounding, not rtol
    np.testing.assert_allclose(conv.jit(f, inference=True)(x, m), want, rtol=0,
                               atol=1e-5 * float(jnp.max(jnp.abs(want))))


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="CPU compiler options")
def test_pmap_compiles_with_the_same_options_as_jit():
    """``jax.pmap`` takes no compiler options; conv.pmap compiles each signature with them:
    the pmapped 3x3 onto 64 channels leaves YNNPACK like conv.jit's, donation still holds,
    the numbers equal jax.pmap's, and a new batch size compiles a program of its own."""
    if not conv._accepts_cpu_options():
        pytest.skip("this jaxlib has no xla_cpu_experimental_ynn_fusion_type")
    n = jax.local_device_count()

    def f(x, w):
        return jax.nn.relu(lax.conv_general_dilated(x, w, (1, 1), "SAME",
                                                    dimension_numbers=conv.NHWC))

    x, w = _arrays((n, 4, 16, 16, 64), (3, 3, 64, 64))
    x, ws = np.asarray(x), jnp.stack([w] * n)  # x on the host: each device_put is a copy
    plain = jax.pmap(f, donate_argnums=(0,))
    if not any("__ynn_fusion" in line and "conv_general_dilated" in line
               for line in plain.lower(x, ws).compile().as_text().splitlines()):
        pytest.skip("this XLA keeps the convolution by default: nothing to change")
    ours = conv.pmap(f, donate_argnums=(0,))
    stacked = jax.sharding.NamedSharding(jax.sharding.Mesh(np.asarray(jax.local_devices()),
                                                           ("d",)), jax.sharding.PartitionSpec("d"))
    x_plain, x_ours = jax.device_put(x, stacked), jax.device_put(x, stacked)
    want = np.asarray(plain(x_plain, ws))
    got = ours(x_ours, ws)
    assert x_plain.is_deleted() and x_ours.is_deleted(), "the donated input should be consumed"
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5 * float(np.abs(want).max()))
    (program,) = ours.programs.values()
    assert not any("__ynn_fusion" in line and "conv_general_dilated" in line
                   for line in program.as_text().splitlines()), "the convolution should be XLA's"
    ours(jax.device_put(x[:, :2], stacked), ws)
    assert len(ours.programs) == 2


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="CPU compiler options")
def test_deferred_jit_reads_the_options_at_each_call():
    """A function decorated at import (jaxcnn.visualize's) compiles like conv.jit's: the
    3x3 onto 64 channels leaves YNNPACK, under policy("xla") it is a program of its own with
    XLA's defaults, static arguments still work, and the numbers are jax.jit's."""
    if not conv._accepts_cpu_options():
        pytest.skip("this jaxlib has no xla_cpu_experimental_ynn_fusion_type")
    x, w = _arrays((4, 16, 16, 64), (3, 3, 64, 64))

    @conv.deferred_jit(static_argnames=("scale",))
    def f(x, w, scale):
        return scale * lax.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=conv.NHWC)

    def to_ynnpack(program):
        return any("__ynn_fusion" in line and "conv_general_dilated" in line
                   for line in program.lower(x, w, scale=2.0).compile().as_text().splitlines())

    if not to_ynnpack(jax.jit(f.__wrapped__, static_argnames=("scale",))):
        pytest.skip("this XLA keeps the convolution by default: nothing to change")
    want = 2.0 * lax.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=conv.NHWC)
    np.testing.assert_allclose(f(x, w, scale=2.0), want, rtol=0,
                               atol=1e-5 * float(jnp.max(jnp.abs(want))))
    with conv.policy("xla"):
        f(x, w, scale=2.0)
    options = tuple(sorted(conv.CPU_COMPILER_OPTIONS.items()))
    assert set(f.programs) == {options, ()}
    assert not to_ynnpack(f.programs[options])
    assert to_ynnpack(f.programs[()])


# The slowest passes of XLA's CPU convolution found by the quiet survey (docs/conv_cpu.md,
# GFLOP/s at batch 32: XLA -> the routed formulation), each with the route that avoids it.
SLOW_ON_CPU = {
    # ResNet-50 at 64 px, the last stage's strided 3x3: input gradient 0.7 -> 307.
    "3x3 s2 onto 2x2": ((32, 4, 4, 1024), (3, 3, 1024, 2048), (2, 2), ((1, 1), (1, 1)), 1,
                        conv.Route.all("im2col")),
    # GoogLeNet at 64 px, 5x5 onto 4x4: forward 7.9 -> 132.
    "5x5 onto 4x4": ((32, 4, 4, 32), (5, 5, 32, 128), (1, 1), ((2, 2), (2, 2)), 1,
                     conv.Route.all("im2col")),
    # ResNet-50's 1x1 expansion at 224 px: kernel gradient 18 -> 121.
    "1x1 on 56x56": ((32, 56, 56, 256), (1, 1, 256, 512), (1, 1), "VALID", 1,
                     conv.Route.all("im2col")),
    # ResNeXt-50's grouped 3x3 at 64 px: kernel gradient 0.6 -> 102.
    "grouped 3x3 on 2x2": ((32, 2, 2, 2048), (3, 3, 64, 2048), (1, 1), ((1, 1), (1, 1)), 32,
                           conv.Route("xla", "im2col", "im2col")),
    # ResNeXt-50's grouped 3x3 with 4 channels a group at 64 px: forward 17 -> 2.1 ms alone
    # (im2col -> the broadcast shifted sum; PyTorch 1.3); its input gradient the same sum over
    # the output's gradient with the flipped kernel (im2col 19.7 -> 3.2 ms; at 224 px, 56x56,
    # 252 -> 32), its kernel gradient one XLA convolution per group (tapwise 10.3 -> 3.0 ms;
    # at 224 px 127 -> 63). Strided, both gradients are spread sums (2026-12-06, AVX-512: at
    # 64 px 16x16x256 at stride 2, input gradient im2col 13.2 -> 9.4 ms, kernel gradient
    # tapwise 12.0 -> 6.0; at 224 px 56x56x256 104.5 -> 100.8 and 131.3 -> 107.2).
    "grouped 3x3, 4 a group": ((32, 16, 16, 128), (3, 3, 4, 128), (1, 1), ((1, 1), (1, 1)), 32,
                               conv.Route("shifted", "flipped", "split")),
    "grouped 3x3, 4 a group at 224 px": ((32, 56, 56, 128), (3, 3, 4, 128), (1, 1),
                                         ((1, 1), (1, 1)), 32,
                                         conv.Route("shifted", "flipped", "split")),
    "grouped 3x3 s2, 8 a group": ((32, 16, 16, 256), (3, 3, 8, 256), (2, 2), ((1, 1), (1, 1)),
                                  32, conv.Route("shifted", "spread", "spread")),
    # 16 channels a group and more: the forward pass and the kernel gradient one XLA
    # convolution per group (14x14x512 at 224 px: forward 20.5 -> 6.9 ms, PyTorch 3.4; kernel
    # gradient im2col 53 -> 12), the input gradient im2col (split 14.5, im2col 13.9) ...
    "grouped 3x3, 16 a group": ((32, 14, 14, 512), (3, 3, 16, 512), (1, 1), ((1, 1), (1, 1)),
                                32, conv.Route("split", "im2col", "split")),
    # ... onto maps of 7x7 and more; onto 4x4 XLA's forward pass stays (0.9 ms, split 0.5,
    # im2col 1.0), each group's convolution costing about 14 ms of compilation.
    "grouped 3x3, 16 a group onto 4x4": ((32, 4, 4, 512), (3, 3, 16, 512), (1, 1),
                                         ((1, 1), (1, 1)), 32,
                                         conv.Route("xla", "im2col", "im2col")),
    # Strided, split forward and spread gradients (28x28x512 at 224 px: input gradient im2col
    # 66.8 -> 33.4 ms, kernel gradient tapwise 63.8 -> 50.1).
    "grouped 3x3 s2, 16 a group": ((32, 28, 28, 512), (3, 3, 16, 512), (2, 2),
                                   ((1, 1), (1, 1)), 32, conv.Route("split", "spread", "spread")),
    # ... but from 48 a group on (AlexNet's towers) the input gradient too (27x27x96 -> 256:
    # im2col 73 -> 38 ms).
    "AlexNet's towers": ((32, 27, 27, 96), (5, 5, 48, 256), (1, 1), ((2, 2), (2, 2)), 2,
                         conv.Route.all("split")),
    # MobileNetV2's depthwise 3x3: every pass 10-100x; at stride 1 the input gradient as the
    # shifted sum over the output's gradient with the flipped kernel (56x56x144: 38 -> 16 ms),
    # the kernel gradient reading the input itself (spread; MobileNetV2's train step at 224 px
    # held 1.7 GiB of shifted copies of inputs without it).
    "depthwise 3x3": ((32, 16, 16, 96), (3, 3, 1, 96), (1, 1), ((1, 1), (1, 1)), 96,
                      conv.Route("shifted", "flipped", "spread")),
    "depthwise 3x3 s2": ((32, 16, 16, 96), (3, 3, 1, 96), (2, 2), ((1, 1), (1, 1)), 96,
                         conv.Route("shifted", "shifted", "spread")),
    # A strided 5x5 (EfficientNet's) takes spread's input gradient as well (56x56x288:
    # shifted 119.0 -> spread 35.9 ms; the strided 3x3 above: 2.4 against 5.1 over 56x56x144).
    "depthwise 5x5 s2": ((32, 56, 56, 288), (5, 5, 1, 288), (2, 2), ((2, 2), (2, 2)), 288,
                         conv.Route("shifted", "spread", "spread")),
    # Strided 3x3 onto larger maps: the input gradient (56x56x64 -> 128: 51 -> 35 ms under
    # conv.jit, 2026-12-04); its kernel gradient stays with XLA's Eigen convolution (36 ms,
    # im2col 46), as do those of the 3x3 onto 56x56 maps (VGG-16's 56x56x256: 725, im2col
    # 1,018) and of the colour stems (ResNet's at 224 px: 81, im2col 198), which took im2col
    # while XLA ran its convolutions through YNNPACK (jaxcnn.conv.CPU_COMPILER_OPTIONS).
    "3x3 on 56x56": ((32, 56, 56, 256), (3, 3, 256, 256), (1, 1), ((1, 1), (1, 1)), 1,
                     conv.XLA),
    "3x3 s2 onto 28x28": ((32, 56, 56, 64), (3, 3, 64, 128), (2, 2), ((1, 1), (1, 1)), 1,
                          conv.Route("xla", "im2col", "xla")),
    "7x7 colour stem": ((32, 224, 224, 3), (7, 7, 3, 64), (2, 2), ((3, 3), (3, 3)), 1,
                        conv.XLA),
    # What also stays with XLA: the stems onto smaller maps (XLA 6.4 ms, im2col 8.8 for
    # ResNet's at 64 px), 3x3 convolutions at stride 1 onto smaller maps (ResNet-18's
    # 28x28x128: 56 -> 79 with im2col's kernel gradient; VGG-16's at 64 px ran at 0.63x with
    # the shifted sum's), Inception's 1x7 onto 3x3 (XLA 216 GFLOP/s, im2col 174).
    "7x7 colour stem at 64 px": ((32, 64, 64, 3), (7, 7, 3, 64), (2, 2), ((3, 3), (3, 3)), 1,
                                 conv.XLA),
    "3x3 on 28x28": ((32, 28, 28, 128), (3, 3, 128, 128), (1, 1), ((1, 1), (1, 1)), 1,
                     conv.XLA),
    # DenseNet's 3x3 onto 32 channels at 224 px: 163 ms XLA, 196 with im2col's kernel gradient.
    "3x3 on 56x56 onto 32": ((32, 56, 56, 128), (3, 3, 128, 32), (1, 1), ((1, 1), (1, 1)), 1,
                             conv.XLA),
    "1x7 onto 3x3": ((32, 3, 3, 192), (1, 7, 192, 192), (1, 1), ((0, 0), (3, 3)), 1,
                     conv.XLA),
    "3x3 on 8x8": ((32, 8, 8, 64), (3, 3, 64, 64), (1, 1), ((1, 1), (1, 1)), 1, conv.XLA),
    # LeNet-5 (AVX-512, 2026-12-04): C3's input gradient pads by 4 (XLA 0.81 ms, im2col 0.32)
    # and C1, one grey-level channel onto 6 maps, took 1.2 ms of a 2.9-ms train step in XLA,
    # 1.0-1.2 ms as im2col's 25 one-channel slices, 0.17 as the sum of broadcast products
    # (2026-12-07), which grey-level 5x5 stems onto up to 20 maps take.
    "LeNet-5's C3": ((32, 14, 14, 6), (5, 5, 6, 16), (1, 1), "VALID", 1,
                     conv.Route("xla", "im2col", "xla")),
    "unpadded 3x3 on 8x8": ((32, 8, 8, 64), (3, 3, 64, 64), (1, 1), "VALID", 1,
                            conv.Route("xla", "im2col", "xla")),
    "LeNet-5's C1": ((32, 32, 32, 1), (5, 5, 1, 6), (1, 1), "VALID", 1,
                     conv.Route("shifted", "im2col", "xla", "im2col")),
    "grey stem onto 20": ((32, 28, 28, 1), (5, 5, 1, 20), (1, 1), "VALID", 1,
                          conv.Route("shifted", "im2col", "xla")),
    # A 7x7 grey stem fused its 49-tap sum into the max pool after it and inferred slower
    # (the STN's localisation net on 28x28 MNIST: 10,500 -> 6,100 images/s), so it keeps
    # im2col; a grey stem onto more maps stays with XLA, as does a 5x5 onto larger maps
    # (28x28x32 -> 64: XLA 7.0 ms, im2col 12.2).
    "7x7 grey stem": ((32, 28, 28, 1), (7, 7, 1, 8), (1, 1), "VALID", 1,
                      conv.Route("im2col", "im2col", "xla")),
    "grey stem onto 32": ((32, 28, 28, 1), (5, 5, 1, 32), (1, 1), "VALID", 1,
                          conv.Route("xla", "im2col", "xla")),
    # The input gradient of a stem at stride 1 (attributions and the ST-CNN's classifier
    # compute it; training on images does not):
    # a convolution onto the image's 1-3 channels, XLA 5-20 GFLOP/s, im2col (survey of
    # 2026-12-07, batch 32, ms) VGG's 224x224x3 -> 64 289 -> 65, NiN's 5x5 32x32x3 -> 192
    # 47.1 -> 7.3. Strided stems keep XLA's (above).
    "VGG's colour stem": ((32, 224, 224, 3), (3, 3, 3, 64), (1, 1), ((1, 1), (1, 1)), 1,
                          conv.Route("xla", "im2col", "xla")),
    "NiN's 5x5 colour stem": ((32, 32, 32, 3), (5, 5, 3, 192), (1, 1), ((2, 2), (2, 2)), 1,
                              conv.Route("xla", "im2col", "xla")),
    "unpadded 5x5 on 28x28": ((32, 28, 28, 32), (5, 5, 32, 64), (1, 1), "VALID", 1, conv.XLA),
}


@pytest.mark.parametrize("case", SLOW_ON_CPU.values(), ids=list(SLOW_ON_CPU))
def test_the_cpu_routes_avoid_the_slow_passes_the_survey_found(case):
    lhs, rhs, strides, padding, groups, want = case
    s = conv.Shape(lhs, rhs, strides, conv.explicit_pads(padding, lhs, rhs, strides), groups)
    assert conv.choose(s, "cpu") == want


def test_split_leaves_depthwise_convolutions_alone():
    """One convolution per group is a formulation of ResNeXt's few wide groups, not of a
    depthwise convolution: for EfficientNet-B7's 3840 channels it was 3840 convolutions, which
    the survey compiled for over two minutes before the process ran out of memory mappings."""
    def shape(channels, groups):
        return conv.Shape((32, 7, 7, channels), (3, 3, channels // groups, channels), (1, 1),
                          ((1, 1), (1, 1)), groups)

    assert not conv.applies("split", shape(3840, 3840))
    assert conv.applies("split", shape(1024, 32))


def test_cpuinfo_gives_the_model_and_the_flags(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nmodel name\t: AMD EPYC\nflags\t\t: fpu avx2 avx512f\n\n"
                    "processor\t: 1\nmodel name\t: other\nflags\t\t: fpu\n")
    assert conv.read_cpuinfo(str(info)) == ("AMD EPYC", frozenset({"fpu", "avx2", "avx512f"}))
    assert conv.read_cpuinfo(str(tmp_path / "missing")) == (None, frozenset())


def test_im2col_patches_stay_bounded():
    """Where the patches would pass MAX_PATCH_BYTES, no pass builds them."""
    s = conv.Shape((256, 14, 14, 512), (3, 3, 16, 512), (1, 1), ((1, 1), (1, 1)), 32)
    assert s.patch_bytes > conv.MAX_PATCH_BYTES
    assert "im2col" not in conv.choose(s, "cpu").passes()


def test_batch_chunks_bound_each_slice_of_patches(monkeypatch):
    s = conv.Shape((6, 4, 4, 2), (3, 3, 2, 3), (1, 1), ((1, 1), (1, 1)), 1)
    per_image = s.patch_bytes // 6  # 4 * 16 pixels * 9 taps * 2 channels
    monkeypatch.setattr(conv, "MAX_PATCH_BYTES", 6 * per_image)
    assert s.batch_chunks == 1
    monkeypatch.setattr(conv, "MAX_PATCH_BYTES", 2 * per_image)  # 6 / 2 -> 3 slices of 2
    assert s.batch_chunks == 3
    monkeypatch.setattr(conv, "MAX_PATCH_BYTES", 4 * per_image)  # 6 / 4 -> 2 slices of 3
    assert s.batch_chunks == 2
    monkeypatch.setattr(conv, "MAX_PATCH_BYTES", per_image - 1)
    assert s.batch_chunks is None


def _equations(jaxpr):
    """Every equation of ``jaxpr`` and of the programs inside it (loops, remat, custom
    rules)."""
    for eqn in jaxpr.eqns:
        yield eqn
        for p in eqn.params.values():
            for sub in p if isinstance(p, (tuple, list)) else (p,):
                inner = getattr(sub, "jaxpr", sub)
                if hasattr(inner, "eqns"):
                    yield from _equations(inner)


def _arrays_in(jaxpr):
    """Every variable of ``jaxpr`` and of the programs inside it, as avals."""
    return (v.aval for eqn in _equations(jaxpr) for v in eqn.outvars)


@pytest.mark.parametrize("case", ["3x3 s2 pad on 7x7", "grouped 3x3", "7x7 s2 stem"])
def test_im2col_takes_the_batch_in_slices_where_patches_would_be_too_large(case, monkeypatch):
    """Past MAX_PATCH_BYTES, im2col loops over slices of the batch: same values and gradients
    as lax, and neither pass holds an array as large as the whole batch's patches (the
    differentiated loop, not rematerialised, stacked every slice's patches for the backward
    pass: 3.7 GB for VGG-16's 224x224x64 convolution at batch 32)."""
    lhs_shape, rhs_shape, strides, padding, groups = CASES[case]
    lhs_shape = (6, *lhs_shape[1:])
    x, w = _arrays(lhs_shape, rhs_shape)
    pads = conv.explicit_pads(padding, lhs_shape, rhs_shape, strides)
    shape = conv.Shape(lhs_shape, rhs_shape, strides, pads, groups)
    monkeypatch.setattr(conv, "MAX_PATCH_BYTES", shape.patch_bytes // 3)
    assert shape.batch_chunks == 3
    cotangent = jnp.asarray(np.random.default_rng(1).standard_normal(
        (6, shape.out_h, shape.out_w, shape.out_channels)), jnp.float32)
    want_y, pullback = jax.vjp(lambda x, w: _reference(x, w, strides, padding, groups), x, w)
    for route in (conv.Route.all("im2col"), conv.Route("xla", "xla", "im2col")):
        def vjp(x, w, cotangent):
            y, pullback = jax.vjp(lambda x, w: conv.routed(x, w, shape, route), x, w)
            return y, pullback(cotangent)

        got_y, got_grads = jax.jit(vjp)(x, w, cotangent)
        np.testing.assert_allclose(got_y, want_y, rtol=1e-5, atol=1e-5)
        for g, r in zip(got_grads, pullback(cotangent)):
            np.testing.assert_allclose(g, r, rtol=1e-5, atol=1e-4)
        program = jax.make_jaxpr(vjp)(x, w, cotangent).jaxpr
        sizes = [4 * int(np.prod(a.shape)) for a in _arrays_in(program) if hasattr(a, "shape")]
        assert "scan" in str(program)
        assert max(sizes) < shape.patch_bytes, (route, max(sizes), shape.patch_bytes)


@pytest.mark.parametrize("keep", [(False, False), (True, False), (False, True)],
                         ids=["", "kept input", "kept output"])
@pytest.mark.parametrize("route", [conv.Route("xla", "im2col", "xla"),
                                   conv.Route("im2col", "xla", "im2col"),
                                   conv.Route("shifted", "xla", "im2col"),
                                   conv.Route("shifted", "flipped", "tapwise"),
                                   conv.Route("shifted", "flipped", "spread"),
                                   conv.Route("split", "im2col", "tapwise"),
                                   conv.Route("split", "im2col", "split"), conv.XLA], ids=str)
def test_mixed_routes_differentiate_both_ways(route, keep):
    """Each pass may take another formulation: reverse mode (the gradients) and forward mode
    (jax.jvp) still give lax's numbers, and a gradient with respect to the kernel alone
    computes no input gradient. So they do with the input kept for the kernel gradient, and
    with the output kept when differentiated."""
    lhs_shape, rhs_shape, strides, padding, groups = CASES["depthwise 3x3"]
    x, w = _arrays(lhs_shape, rhs_shape)
    shape = conv.Shape(lhs_shape, rhs_shape, strides, padding, groups)

    def ours(x, w):
        return conv.routed(x, w, shape, route, keep=keep[0], keep_output=keep[1])

    want_grads, want_tangent = _lax_grads_and_tangent(CASES["depthwise 3x3"])
    for g, r in zip(_sine_loss_grads(ours)(x, w), want_grads):
        np.testing.assert_allclose(g, r, rtol=1e-5, atol=1e-4)
    _, tangent = jax.jvp(ours, (x, w), (x, w))
    np.testing.assert_allclose(tangent, want_tangent, rtol=1e-5, atol=1e-4)


def _sine_loss_grads(fn):
    return jax.jit(jax.grad(lambda x, w: jnp.sum(jnp.sin(fn(x, w))), argnums=(0, 1)))


@functools.cache
def _lax_grads_and_tangent(case):
    """lax's gradients of the sine loss and its forward-mode tangent along (x, w) for
    ``case``, once per test process (the 24 routes and keeps above compare with them)."""
    lhs_shape, rhs_shape, strides, padding, groups = case
    x, w = _arrays(lhs_shape, rhs_shape)

    def reference(x, w):
        return _reference(x, w, strides, padding, groups)

    return _sine_loss_grads(reference)(x, w), jax.jvp(reference, (x, w), (x, w))[1]


def test_kept_is_the_identity_bit_for_bit():
    """Finite values keep their bits (signed zeros too; XLA's CPU flushes subnormals to zero
    in every elementwise operation, this one as well), NaN stays NaN, the derivative is 1."""
    values = np.array([0.0, -0.0, 1.0, -3.5, 1.2e-38, 6.1e-5, 3.4e38, -3.4e38, np.nan],
                      np.float32)
    for compile_ in (jax.jit, conv.jit):
        got = np.asarray(compile_(conv.kept)(jnp.asarray(values)))
        np.testing.assert_array_equal(got[:-1].view(np.uint32), values[:-1].view(np.uint32))
        assert np.isnan(got[-1])
        np.testing.assert_array_equal(
            compile_(jax.grad(lambda x: jnp.sum(conv.kept(x))))(jnp.asarray(values[:-1])), 1.0)
    np.testing.assert_array_equal(conv.kept(jnp.arange(4)), np.arange(4))


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="a CPU route")
@pytest.mark.parametrize("case", ["3x3 pad on 7x7", "grouped 3x3 16 a group"])
def test_kernel_gradients_transpose_a_kept_input(case, monkeypatch):
    """XLA's kernel gradient reads the convolution's input transposed. Without the input
    kept, XLA's CPU fusion wrote that transposition with the batch norm and ReLU before it in
    one loop, 10-30x slower than the transposition alone (ResNet-18 at 224 px: 230-320 ms of
    a 1.2-s train step); no fusion of the compiled gradient may transpose and rectify."""
    lhs_shape, rhs_shape, strides, padding, groups = {
        "3x3 pad on 7x7": ((4, 7, 7, 8), (3, 3, 8, 8), (1, 1), "SAME", 1),
        "grouped 3x3 16 a group": CASES["grouped 3x3 16 a group"],
    }[case]
    if groups > 1:  # onto a map this small the kernel gradient would not split
        monkeypatch.setattr(conv, "SPLIT_MIN_MAP", 1)
    x, w = _arrays(lhs_shape, rhs_shape)
    shape = conv.Shape(lhs_shape, rhs_shape, strides,
                       conv.explicit_pads(padding, lhs_shape, rhs_shape, strides), groups)
    assert conv.choose(shape, "cpu").kernel_grad in conv.KEPT_INPUT_KERNEL_GRADS
    scale = jnp.linspace(0.5, 1.5, lhs_shape[-1])

    def loss(w, x):
        h = jnp.maximum(x * scale + 0.1, 0)  # a batch norm's affine map and a ReLU
        return jnp.sum(jnp.sin(conv.conv_general_dilated(
            h, w, strides, padding, dimension_numbers=("NHWC", "HWIO", "NHWC"),
            feature_group_count=groups)))

    program = conv.jit(jax.grad(loss)).lower(w, x).compile().as_text()
    computations = re.split(r"\n(?=%|ENTRY)", program)
    assert any(" transpose(" in c for c in computations)
    assert not [c.splitlines()[0] for c in computations
                if " transpose(" in c and " maximum(" in c]


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="a CPU route")
def test_a_grey_stem_infers_through_im2col_and_trains_through_the_shifted_sum():
    """LeNet-5's C1 (a grey-level 5x5 onto 6 maps): the forward pass alone is im2col (its
    patches concatenated: a max pool fused the shifted sum into its strided views and ran
    LeNet-5's inference 20 % slower), the differentiated one the shifted sum (no
    concatenation), and both give lax's numbers."""
    lhs_shape, rhs_shape = (3, 12, 12, 1), (5, 5, 1, 6)
    x, w = _arrays(lhs_shape, rhs_shape)

    def ours(x, w):
        return conv.conv_general_dilated(x, w, (1, 1), "VALID", dimension_numbers=conv.NHWC)

    def loss(f):
        return lambda w: jnp.sum(jnp.sin(f(x, w)))

    forward = [e.primitive.name for e in _equations(jax.make_jaxpr(ours)(x, w).jaxpr)]
    trained = [e.primitive.name
               for e in _equations(jax.make_jaxpr(jax.grad(loss(ours)))(w).jaxpr)]
    assert "concatenate" in forward and "conv_general_dilated" not in forward
    assert "concatenate" not in trained
    reference = functools.partial(_reference, strides=(1, 1), padding="VALID", groups=1)
    np.testing.assert_allclose(jax.jit(ours)(x, w), reference(x, w), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(jax.jit(jax.grad(loss(ours)))(w), jax.grad(loss(reference))(w),
                               rtol=1e-5, atol=1e-4)


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="a CPU route")
@pytest.mark.parametrize("kept_output", [True, False], ids=["kept", "without the rule"])
def test_a_differentiated_shifted_sum_is_formed_once(kept_output, monkeypatch):
    """A grouped convolution of 4 channels a group (the shifted sum of broadcast products)
    under a train-mode batch norm: each of the norm's uses of the output (two statistics, the
    normalisation, their gradients) copied the sum's 36 products into its own fusion, 12 of
    them, until the output was kept. Now one fusion forms them forward and one for the input
    gradient. Without the rule the count must exceed that, or this test checks nothing."""
    lhs_shape, rhs_shape, groups = (4, 8, 8, 32), (3, 3, 4, 32), 8
    if not kept_output:
        monkeypatch.setattr(conv, "KEPT_OUTPUT_FORWARDS", frozenset())
    x, w = _arrays(lhs_shape, rhs_shape)
    shape = conv.Shape(lhs_shape, rhs_shape, (1, 1), ((1, 1), (1, 1)), groups)
    assert conv.choose(shape, "cpu").forward == "shifted"

    def loss(x, w):
        h = conv.conv_general_dilated(x, w, (1, 1), "SAME", feature_group_count=groups,
                                      dimension_numbers=("NHWC", "HWIO", "NHWC"))
        mean = jnp.mean(h, (0, 1, 2))
        var = jnp.mean(jnp.square(h - mean), (0, 1, 2))
        return jnp.sum(jnp.sin(jnp.maximum((h - mean) * lax.rsqrt(var + 1e-5), 0)))

    program = conv.jit(jax.grad(loss, argnums=(0, 1))).lower(x, w).compile().as_text()
    products = shape.taps * shape.group_in
    forming = [c for c in re.split(r"\n(?=%|ENTRY)", program)
               if c.count(" multiply(") >= products]
    assert (len(forming) == 2) is kept_output, len(forming)


def test_a_kernel_gradient_alone_computes_no_input_gradient():
    # The stem of a network: its input (the images) needs no gradient. With im2col only for
    # the input gradient, the kernel's gradient alone has no matrix product in it.
    lhs_shape, rhs_shape, strides, padding, groups = CASES["7x7 s2 stem"]
    x, w = _arrays(lhs_shape, rhs_shape)
    shape = conv.Shape(lhs_shape, rhs_shape, strides, padding, groups)
    route = conv.Route("xla", "im2col", "xla")
    kernel_only = jax.make_jaxpr(jax.grad(lambda w: jnp.sum(conv.routed(x, w, shape, route))))
    both = jax.make_jaxpr(jax.grad(lambda x, w: jnp.sum(conv.routed(x, w, shape, route)),
                                   argnums=(0, 1)))
    assert "dot_general" not in str(kernel_only(w)) and "dot_general" in str(both(x, w))


@pytest.mark.parametrize("formulation", ["im2col", "shifted"])
@pytest.mark.parametrize("case", ["1x1", "3x3 pad on 2x2"])
def test_products_contract_one_axis_in_both_passes(case, formulation):
    """The matrix products see the pixels as one axis, forward and in both gradients. With
    (N, H, W) contracted as three axes, XLA's CPU layout assignment wrote every kernel
    gradient's cotangent transposed in a loop fusion: 69 ms of ResNet-50's 64-px train step,
    four times the products themselves (jax.profiler; the commit that flattened them)."""
    lhs_shape, rhs_shape, strides, padding, groups = CASES[case]
    x, w = _arrays(lhs_shape, rhs_shape)
    pads = conv.explicit_pads(padding, lhs_shape, rhs_shape, strides)
    shape = conv.Shape(lhs_shape, rhs_shape, strides, pads, groups)
    impl = conv.implementation(formulation)
    jaxpr = jax.make_jaxpr(jax.grad(lambda x, w: jnp.sum(jnp.sin(impl(x, w, shape))),
                                    argnums=(0, 1)))(x, w)
    dots = [e for e in jaxpr.jaxpr.eqns if e.primitive.name == "dot_general"]
    assert dots, "no matrix product in the gradient"
    for e in dots:
        (lhs_contract, rhs_contract), _ = e.params["dimension_numbers"]
        assert len(lhs_contract) == len(rhs_contract) == 1, e
        assert all(v.aval.ndim == 2 for v in e.invars), e


def test_conv_has_the_parameters_of_flax_conv():
    x = jnp.ones((1, 6, 6, 4))
    kwargs = dict(features=8, kernel_size=(3, 3), padding=((1, 1), (1, 1)),
                  feature_group_count=2)
    ours = conv.Conv(**kwargs).init(jax.random.key(0), x)
    flax = nn.Conv(**kwargs).init(jax.random.key(0), x)
    assert jax.tree.map(jnp.shape, ours) == jax.tree.map(jnp.shape, flax)
    np.testing.assert_allclose(conv.Conv(**kwargs).apply(flax, x), nn.Conv(**kwargs).apply(flax, x),
                               rtol=1e-5, atol=1e-5)


def test_dilated_and_other_layouts_go_to_lax_unchanged():
    x, w = _arrays((1, 6, 6, 2), (3, 3, 2, 3))
    got = conv.conv_general_dilated(x, w, (1, 1), "SAME", rhs_dilation=(2, 2),
                                    dimension_numbers=conv.NHWC)
    want = lax.conv_general_dilated(x, w, (1, 1), "SAME", rhs_dilation=(2, 2),
                                    dimension_numbers=conv.NHWC)
    np.testing.assert_array_equal(got, want)


def test_policy_names_are_checked():
    with pytest.raises(ValueError, match="not one of auto, xla"):
        with conv.policy("winograd"):
            pass


def test_a_misspelt_jaxcnn_conv_is_refused_not_ignored():
    # It used to fall back to XLA's convolution everywhere without a word.
    env = {**os.environ, "JAXCNN_CONV": "spreadd"}
    run = subprocess.run([sys.executable, "-c", "import jaxcnn"], env=env, capture_output=True,
                         text=True, timeout=300)
    assert run.returncode != 0
    assert "environment variable JAXCNN_CONV 'spreadd' is not one of auto, xla" in run.stderr


def test_every_network_convolves_through_jaxcnn_conv():
    """The routing lives in one place: no family file calls Flax's or lax's convolution
    itself (jaxcnn.conv.Conv subclasses nn.Conv, so summaries still recognise it)."""
    import pathlib

    package = pathlib.Path(conv.__file__).parent
    for path in sorted(package.glob("*.py")):
        if path.name == "conv.py":
            continue
        text = path.read_text()
        for forbidden in ("nn.Conv(", "lax.conv_general_dilated(", "nn.Conv,"):
            assert forbidden not in text, f"{path.name} calls {forbidden[:-1]} directly"


@pytest.mark.slow
def test_a_network_gives_xlas_numbers_and_gradients_with_the_routing():
    """ResNet-18 at 32x32 ends on 2x2 and 1x1 maps (im2col, every pass): its logits and every
    parameter gradient of the train step, compiled by conv.jit, equal those with XLA's
    convolution everywhere and XLA's default compilation.
    (Depthwise and grouped routes are checked layer by layer above; whole networks of them
    cost minutes to compile twice on 2 cores.)"""
    import jaxcnn

    model = jaxcnn.create_model("resnet18", num_classes=10)
    x = jnp.asarray(np.random.default_rng(0).standard_normal((4, 32, 32, 3)), jnp.float32)
    variables = model.init(jax.random.key(0), x, train=False)

    def loss(params):
        logits, _ = model.apply({**variables, "params": params}, x, train=True,
                                mutable=["batch_stats"], rngs={"dropout": jax.random.key(1)})
        return jnp.sum(jnp.sin(logits)), logits

    results = {}
    for name in ("auto", "xla"):
        with conv.policy(name):
            results[name] = conv.jit(jax.grad(loss, has_aux=True))(variables["params"])
    (g_auto, y_auto), (g_xla, y_xla) = results["auto"], results["xla"]
    np.testing.assert_allclose(y_auto, y_xla, rtol=1e-4, atol=1e-4)
    # Relative to the largest gradient: biases ahead of a BatchNorm have gradients that are
    # zero but for rounding, which no relative test per leaf survives.
    scale = max(float(jnp.max(jnp.abs(b))) for b in jax.tree.leaves(g_xla))
    for a, b in zip(jax.tree.leaves(g_auto), jax.tree.leaves(g_xla)):
        assert float(jnp.max(jnp.abs(a - b))) < 1e-4 * scale


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="a CPU route")
def test_depthwise_kernel_gradients_hold_no_shifted_copies_of_the_input():
    """The kernel gradient of a 3x3 depthwise convolution at stride 1 reads the input itself
    ("spread"): as the shifted sum's transpose it read eight shifted copies of it, which XLA's
    CPU scheduler computed during the forward pass and held until the backward pass
    (MobileNetV2's train step at 224 px: 4.44 GiB of temporaries, 2.71 without them). Each
    layer of a stack may add fewer than those eight input-sized buffers to the gradient's
    temporaries (XLA's memory analysis; 4.5 here, 11.8 with the shifted sum's kernel
    gradient, 2026-12-05)."""
    n, size, channels = 8, 16, 32
    scale = jnp.linspace(0.5, 1.5, channels)

    def loss(kernels, x):
        for w in kernels:
            x = jnp.clip(x * scale + 0.1, 0, 6)  # a batch norm's affine map and a ReLU6
            x = conv.conv_general_dilated(x, w, (1, 1), "SAME",
                                          dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                          feature_group_count=channels)
        return jnp.sum(x ** 2)

    def temporaries(layers):
        x = jnp.ones((n, size, size, channels))
        kernels = [jnp.full((3, 3, 1, channels), 0.1)] * layers
        program = conv.jit(jax.grad(loss, argnums=(0, 1))).lower(kernels, x).compile()
        return program.memory_analysis().temp_size_in_bytes

    shape = conv.Shape((n, size, size, channels), (3, 3, 1, channels), (1, 1),
                       ((1, 1), (1, 1)), channels)
    assert conv.choose(shape, "cpu").kernel_grad == "spread"
    # 4.5 from 2 to 4 layers as from 2 to 6 (whose compilation took 4.9 s of the test's 11).
    per_layer = (temporaries(4) - temporaries(2)) / 2 / (4 * n * size * size * channels)
    assert per_layer < 8, per_layer
