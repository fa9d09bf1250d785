"""Test-wide settings.

Keras runs on the JAX backend (no TensorFlow graph needed). XLA's optimisation passes are
switched off: the tests run each network once at a tiny input, where compile time dominates and
optimised code would buy nothing (results are the same to float32 rounding).
"""

import contextlib
import os

os.environ.setdefault("KERAS_BACKEND", "jax")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("JAX_DISABLE_MOST_OPTIMIZATIONS", "1")
# TensorFlow imports Keras 3 whenever it is installed (the parity extra), to register tf.keras'
# optimizers: 2.3 s of its 7.4-s import on the 2-core AVX2 host, scikit-learn included, in each
# test worker and each trainer process that a test starts. No test uses tf.keras; with this
# setting TensorFlow looks for the legacy tf_keras instead, which is not installed, and skips it.
# Keras itself (the parity tests, on JAX) does not read the setting.
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # the checkout


def with_root_on_path(env: dict[str, str] | None = None) -> dict[str, str]:
    """A copy of ``env`` (by default this process's environment) whose PYTHONPATH starts with
    the checkout, so that a subprocess imports ``train`` (not installed) from any directory."""
    env = dict(os.environ if env is None else env)
    rest = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    env["PYTHONPATH"] = os.pathsep.join([ROOT, *rest])
    return env


def pytest_configure(config):
    """Importing torchvision (which loads triton) after TensorFlow crashes the process with a
    segmentation fault; the other order is fine. Each test worker therefore loads the reference
    frameworks first, when they are installed, unless the run leaves the parity tests out (the
    fast subset, ``-m "not slow and not parity"``): then no test imports them, and not
    importing them saves each worker about 8 seconds."""
    if "not parity" in (config.option.markexpr or ""):
        return
    try:
        import timm  # noqa: F401
        import torch  # noqa: F401
        import torchvision  # noqa: F401
    except ImportError:
        pass


# Deeper versions of a class that a shallower registered variant already runs for real (same
# blocks, more of them). The checks that build or trace a whole network take them in `make test`
# only (marked slow): tracing EfficientNet-B7 alone takes longer than running every small
# network, and the fast subset keeps their shallower siblings.
DEEPER_SIBLINGS = frozenset({
    *(f"efficientnet_b{i}" for i in range(1, 8)),
    *(f"efficientnet_b{i}_keras" for i in range(1, 8)),
    "resnet101", "resnet152", "resnext101_32x8d", "resnext101_64x4d", "wide_resnet101_2",
    "seresnet101", "seresnet152", "seresnext101_32x4d", "resnet101_keras", "resnet152_keras",
    "resnet101_v2", "resnet152_v2", "densenet169", "densenet201",
})


@contextlib.contextmanager
def xla_optimized():
    """XLA's optimisation passes on inside the block, for the programs a test compiles there
    whose running, not their compiling, takes the test's time (the suite switches the passes
    off, above): unoptimised, VGG-16's Captum comparison at 33 px in float64 took 92 s of
    JAX, 34 s optimised (2-core AMD EPYC with AVX-512, 2026-12-07), Occlusion's 32 passes
    52 -> 15 s of it. Compiled programs are cached by jit whatever the setting."""
    import jax

    before = jax.config.read("jax_disable_most_optimizations")
    jax.config.update("jax_disable_most_optimizations", False)
    try:
        yield
    finally:
        jax.config.update("jax_disable_most_optimizations", before)


def assert_batch_stats_moved(stats, updates):
    """A train-mode pass returns the BatchNorm state as the same tree, moved by the batch; a
    network without BatchNorm returns none."""
    import jax
    import numpy as np

    if stats:
        assert jax.tree.structure(updates["batch_stats"]) == jax.tree.structure(stats)
        assert any(not np.allclose(a, b) for a, b in zip(
            jax.tree.leaves(stats), jax.tree.leaves(updates["batch_stats"]))), "stats did not change"
    else:
        assert not updates.get("batch_stats")


# ---------------------------------------------------------------------------------------------
# Shared by the tests that compare converted weights with a reference implementation.


NUM_CLASSES = 10  # the classes of every reference and converted network compared
CALIBRATION_BATCH = 32
BRANCH_SCALE = 0.2
BRANCH_ENDS_TORCH = ("bn3",)  # torchvision and timm bottlenecks


def randomize_torch_batchnorm(model, seed=0):
    """Gives every BatchNorm of a torch ``model`` random scales (1 + 0.2 N), offsets (0.2 N) and
    running statistics (mean 0.2 N, variance 0.5 + U), so that eval mode tests the converted
    statistics; a fresh BatchNorm (scale 1, mean 0, variance 1) would hide misplaced ones.
    Returns the BatchNorm modules."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    with torch.no_grad():
        for m in norms:
            n = m.num_features
            m.weight.copy_(1 + 0.2 * torch.randn(n, generator=gen))
            m.bias.copy_(0.2 * torch.randn(n, generator=gen))
            m.running_mean.copy_(0.2 * torch.randn(n, generator=gen))
            m.running_var.copy_(0.5 + torch.rand(n, generator=gen))
    return norms


def randomize_keras_batchnorm(model, seed=0):
    """:func:`randomize_torch_batchnorm` for a Keras ``model`` (gamma is absent where Keras
    builds BatchNorm with ``scale=False``). Returns the BatchNormalization layers."""
    import keras
    import numpy as np

    rng = np.random.default_rng(seed)
    norms = [layer for layer in model.layers
             if isinstance(layer, keras.layers.BatchNormalization)]
    for layer in norms:
        n = layer.moving_mean.shape[0]
        if layer.gamma is not None:
            layer.gamma.assign(1 + 0.2 * rng.standard_normal(n).astype("float32"))
        layer.beta.assign(0.2 * rng.standard_normal(n).astype("float32"))
        layer.moving_mean.assign(0.2 * rng.standard_normal(n).astype("float32"))
        layer.moving_variance.assign((0.5 + rng.random(n)).astype("float32"))
    return norms


@contextlib.contextmanager
def numpy_keras_initialisers():
    """Keras' JAX backend compiles its random ops once per weight shape, which costs more than
    the comparison itself; the initial values are irrelevant here, so NumPy draws them."""
    import numpy as np
    from keras.src.backend.jax import random as backend_random

    rng = np.random.default_rng(0)

    def uniform(shape, minval=0.0, maxval=1.0, dtype=None, seed=None):
        return rng.uniform(minval, maxval, shape).astype(dtype or "float32")

    def normal(shape, mean=0.0, stddev=1.0, dtype=None, seed=None):
        return (mean + stddev * rng.standard_normal(shape)).astype(dtype or "float32")

    def truncated_normal(shape, mean=0.0, stddev=1.0, dtype=None, seed=None):
        values = mean + stddev * np.clip(rng.standard_normal(shape), -2, 2)
        return values.astype(dtype or "float32")

    replacements = {"uniform": uniform, "normal": normal, "truncated_normal": truncated_normal}
    saved = {name: getattr(backend_random, name) for name in replacements}
    for name, fn in replacements.items():
        setattr(backend_random, name, fn)
    try:
        yield
    finally:
        for name, fn in saved.items():
            setattr(backend_random, name, fn)


def keras_calls(model, x, *modes):
    """``(outputs, non-trainable variables)`` of one stateless call per training flag in
    ``modes``, compiled together (Keras' eager call dispatches op by op: 5x slower here)."""
    import jax

    trainable = [v.value for v in model.trainable_variables]
    non_trainable = [v.value for v in model.non_trainable_variables]
    return jax.jit(lambda t, n, x: tuple(model.stateless_call(t, n, x, training=m)
                                         for m in modes))(trainable, non_trainable, x)


def torch_reference(conv, calibration):
    """The torchvision or timm network that converter ``conv`` reads, with random weights and
    BatchNorm (:func:`randomize_torch_batchnorm`) and no random masks (dropout, stochastic
    depth). With a ``calibration`` batch (NHWC), the deep residual networks' conditioning of
    tests/test_parity.py: each branch's last BatchNorm scaled by BRANCH_SCALE, and the running
    statistics set to the batch statistics of ``calibration``."""
    import torch

    kwargs = dict(conv.reference_kwargs)
    torch.manual_seed(0)  # the reference's own initialisation, for repeatable errors
    if conv.source == "torchvision":
        import torchvision

        model = getattr(torchvision.models, conv.reference)(weights=None, num_classes=NUM_CLASSES,
                                                             **kwargs)
    else:
        import timm

        model = timm.create_model(conv.reference, pretrained=False, num_classes=NUM_CLASSES,
                                  **kwargs)
    bns = randomize_torch_batchnorm(model)
    with torch.no_grad():
        for name, m in model.named_modules():
            if calibration is not None and name.endswith(BRANCH_ENDS_TORCH):
                m.weight.mul_(BRANCH_SCALE)
                m.bias.mul_(BRANCH_SCALE)
            # Random masks cannot agree across frameworks: switch them off on both sides.
            if hasattr(m, "p") and isinstance(m.p, float) and "drop" in type(m).__name__.lower():
                m.p = 0.0
            if hasattr(m, "drop_prob"):
                m.drop_prob = 0.0
            if type(m).__name__ == "StochasticDepth":
                m.p = 0.0
    if calibration is not None:  # running statistics := the calibration batch's statistics
        momenta = [m.momentum for m in bns]
        for m in bns:
            m.momentum = 1.0
        model.train()
        with torch.no_grad():
            model(torch.from_numpy(calibration.transpose(0, 3, 1, 2).copy()))
        for m, momentum in zip(bns, momenta):
            m.momentum = momentum
    return model


def random_images(seed, batch, size, pixels):
    """``batch`` NHWC float32 images of N(0, 1) noise (``pixels``: 127.5 + 60 N, in pixel
    units)."""
    import numpy as np

    x = np.random.default_rng(seed).standard_normal((batch, size, size, 3))
    # Networks that normalise their own input (Keras EfficientNet) take pixels in [0, 255];
    # N(0, 1) noise would reach them as a nearly constant image.
    return (127.5 + 60.0 * x if pixels else x).astype(np.float32)
