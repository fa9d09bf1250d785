"""Every registered model, once: shapes, dtypes, modes, BatchNorm state, input checks.

Each model runs for real at its smallest admissible input (batch 2, 7 classes), so the suite
stays fast while every layer executes in both train and eval mode.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util
from conftest import DEEPER_SIBLINGS, assert_batch_stats_moved

import jaxcnn
from jaxcnn import conv, convert

ALL = jaxcnn.list_models()
NUM_CLASSES = 7
# Deeper siblings (conftest.DEEPER_SIBLINGS) are checked here through shapes only, which keeps
# the suite inside its time budget; each has a converter, so test_parity runs it in both modes.
EXECUTED = [name for name in ALL if name not in DEEPER_SIBLINGS]
# The edit-test loop (-m "not slow") runs the checks that build a network on small networks, one
# of each kind of layer stack (plain, NIN, fire modules, spatial transformer, what-where,
# residual, depthwise-separable, inverted residual with squeeze-excitation); tracing a deep
# network alone takes seconds. `make test` runs every variant.
FAST_LOOP = {"lenet5", "lenet5_1998", "alexnet_paper", "allcnn_c", "nin_cifar10", "squeezenet1_1",
             "stn_mnist", "whatwhere_mnist", "resnet18", "mobilenet_v1_025_keras",
             "mobilenet_v3_small"}


# Networks with a converter run in both modes in test_parity, which compares their outputs with
# the reference's and checks their BatchNorm state: here they run in the edit-test loop only,
# and a compilation of each (SENet-154: 40 s) is saved from `make test`.
CONVERTED = {name for name in ALL if convert.converters_for(name)}
RUN_HERE = [name for name in EXECUTED if name in FAST_LOOP or name not in CONVERTED]


def _cases(names):
    return [pytest.param(n, marks=() if n in FAST_LOOP else pytest.mark.slow) for n in names]


def _small_input(name, batch=2, size=None):
    info = jaxcnn.model_info(name)
    size = info.min_size if size is None else size
    x = jax.random.normal(jax.random.key(1), (batch, size, size, info.input_shape[-1]))
    return x


def _rngs(seed=0):
    return {"params": jax.random.key(seed), "dropout": jax.random.key(seed + 1)}


def _host_init(model, x):
    """Variables drawn with NumPy from the model's shapes (He-style scale for kernels).

    Compiling the random initialisers costs more than running the network at these sizes, so
    the variables are made on the host; the shapes still come from the model's own init.
    """
    shapes = jax.eval_shape(lambda x: model.init(_rngs(), x, train=False), x)
    rng = np.random.default_rng(0)

    def draw(path, leaf):
        name = jax.tree_util.keystr(path)
        if "var" in name.rsplit("[", 1)[-1] or name.endswith("['scale']"):
            return np.ones(leaf.shape, leaf.dtype)
        if leaf.ndim >= 2:
            fan_in = int(np.prod(leaf.shape[:-1]))
            return (rng.standard_normal(leaf.shape) * np.sqrt(2.0 / fan_in)).astype(leaf.dtype)
        return np.zeros(leaf.shape, leaf.dtype)

    return jax.tree_util.tree_map_with_path(draw, shapes)


def test_every_network_runs_in_both_modes_somewhere():
    """A network that this module does not run (a deeper sibling, or one with a converter
    outside the edit-test loop) is run in train and eval mode by test_parity, against its
    reference; a new one that neither runs is an oversight."""
    unrun = [name for name in ALL if name not in RUN_HERE and name not in CONVERTED]
    assert not unrun, f"run them in test_runs_in_train_and_eval_mode or convert them: {unrun}"


@pytest.mark.parametrize("name", _cases(EXECUTED))
def test_the_train_step_differentiates_under_jit(name):
    """Every layer has a reverse-mode derivative inside jit, as the train step needs (average
    pooling once built a reduce_window whose init value was traced: it ran, and its gradient
    failed under jit only, so every network with an average pool could not train). The deeper
    siblings repeat their shallower variant's blocks and are left out (tracing EfficientNet-B7's
    backward alone takes longer than a dozen small networks)."""
    model = jaxcnn.create_model(name, num_classes=NUM_CLASSES)
    x = jax.ShapeDtypeStruct(_small_input(name).shape, jnp.float32)
    variables = jax.eval_shape(lambda x: model.init(_rngs(), x, train=False), x)

    def loss(params, rest, x):
        logits, _ = model.apply({**rest, "params": params}, x, train=True,
                                rngs={"dropout": jax.random.key(2)}, mutable=["batch_stats"])
        return jnp.sum(logits)

    rest = {k: v for k, v in variables.items() if k != "params"}
    grads = jax.eval_shape(jax.jit(jax.grad(loss)), variables["params"], rest, x)
    structure = jax.tree_util.tree_structure
    assert structure(grads) == structure(variables["params"])


@pytest.mark.parametrize("name", _cases(RUN_HERE))
def test_runs_in_train_and_eval_mode(name):
    model = jaxcnn.create_model(name, num_classes=NUM_CLASSES)
    x = _small_input(name)

    variables = _host_init(model, x)

    @jax.jit
    def run(variables, x):
        eval_logits = model.apply(variables, x, train=False)
        train_logits, updates = model.apply(
            variables, x, train=True, rngs={"dropout": jax.random.key(2)},
            mutable=["batch_stats"],
        )
        return eval_logits, train_logits, updates

    eval_logits, train_logits, updates = run(variables, x)
    for logits in (eval_logits, train_logits):
        assert logits.shape == (2, NUM_CLASSES)
        assert logits.dtype == jnp.float32
        assert np.all(np.isfinite(np.asarray(logits)))

    # BatchNorm statistics move in train mode, and only there: eval needs no mutable state.
    assert_batch_stats_moved(variables.get("batch_stats"), updates)


@pytest.mark.parametrize("name", _cases(ALL))
def test_published_input_in_bfloat16_and_without_the_head(name):
    """At its published input size a variant builds; computing in bfloat16 it keeps float32
    parameters and gives float32 logits of its default number of classes; and without its
    classifier (``num_classes=0``, timm's convention, for use as a backbone) it has the same
    parameters less the head's and returns pooled features. Shapes only (``jax.eval_shape``),
    each network traced once, its init returning its output (an init and an apply traced
    apart: 81 -> 40 s for the 78 cases with ``-n 2``); the headless network is traced with
    XLA's convolution: the head is the subject, and the formulations' shapes are test_conv's
    (SENet-154 traces twice as fast)."""
    info = jaxcnn.model_info(name)
    x = jax.ShapeDtypeStruct((2, *info.input_shape), jnp.float32)
    model = jaxcnn.create_model(name, dtype=jnp.bfloat16)
    logits, variables = jax.eval_shape(
        lambda x: model.init_with_output(_rngs(), x, train=False), x)
    dtypes = {leaf.dtype for leaf in jax.tree_util.tree_leaves(variables["params"])}
    assert dtypes == {jnp.dtype(jnp.float32)}
    assert logits.shape == (2, info.num_classes) and logits.dtype == jnp.float32

    headless = jaxcnn.create_model(name, num_classes=0)
    with conv.policy("xla"):
        feats, backbone = jax.eval_shape(
            lambda x: headless.init_with_output(_rngs(), x, train=False), x)
    assert feats.ndim == 2 and feats.shape[0] == 2 and feats.shape[1] > 0
    assert feats.dtype == jnp.float32

    whole = {k: v.shape for k, v in traverse_util.flatten_dict(variables).items()}
    foreign = {k: v.shape for k, v in traverse_util.flatten_dict(backbone).items()
               if whole.get(k) != v.shape}
    assert not foreign, f"the backbone has arrays the classifier network has not: {foreign}"


@pytest.mark.parametrize("name", ALL)
def test_too_small_input_names_the_minimum(name):
    info = jaxcnn.model_info(name)
    model = jaxcnn.create_model(name)
    m = info.min_size
    x = jax.ShapeDtypeStruct((1, m - 1, m - 1, info.input_shape[-1]), jnp.float32)
    with pytest.raises(jaxcnn.InputShapeError, match=f"{m}x{m}"):
        jax.eval_shape(lambda x: model.init(_rngs(), x, train=False), x)


@pytest.mark.parametrize("name", ALL)
def test_wrong_rank_is_rejected(name):
    info = jaxcnn.model_info(name)
    model = jaxcnn.create_model(name)
    x = jax.ShapeDtypeStruct(info.input_shape, jnp.float32)  # no batch axis
    with pytest.raises(jaxcnn.InputShapeError, match="NHWC"):
        jax.eval_shape(lambda x: model.init(_rngs(), x, train=False), x)


@pytest.mark.parametrize("name", ALL)
def test_channels_first_batch_is_rejected(name):
    """PyTorch's NCHW batch, which most networks would otherwise take silently as a 1- or
    3-pixel-tall image with hundreds of channels."""
    info = jaxcnn.model_info(name)
    model = jaxcnn.create_model(name)
    h, w, c = info.input_shape
    x = jax.ShapeDtypeStruct((2, c, h, w), jnp.float32)
    with pytest.raises(jaxcnn.InputShapeError, match="NCHW"):
        jax.eval_shape(lambda x: model.init(_rngs(), x, train=False), x)
