"""MobileNet v1/v2/v3 and EfficientNet: figures the shared tables lack, padding, numerics.

The numerical tests load the weights of a randomly initialised reference network (torchvision,
timm, Keras) into ours, matching layers by call order, and compare logits at small odd and even
inputs, which exercise the padding conventions.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxcnn
from jaxcnn import efficientnet, layers

# Keras' MobileNet at the released alphas other than 1.0: only rounded figures are published
# (Howard et al. 2017, Table 6: 2.6M, 1.3M, 0.5M). These exact totals and trainable counts were
# computed by building keras.applications.MobileNet(alpha=alpha, weights=None) with Keras 3.15.1.
KERAS_MOBILENET_ALPHAS = [
    # (variant, Keras total, Keras trainable, paper params in millions)
    ("mobilenet_v1_075_keras", 2_601_976, 2_585_560, 2.6),
    ("mobilenet_v1_050_keras", 1_342_536, 1_331_592, 1.3),
    ("mobilenet_v1_025_keras", 475_544, 470_072, 0.5),
]


@pytest.mark.parametrize("name,total,trainable,paper_m", KERAS_MOBILENET_ALPHAS,
                         ids=[r[0] for r in KERAS_MOBILENET_ALPHAS])
def test_keras_mobilenet_alphas_match_keras_counts(name, total, trainable, paper_m):
    shape = (1, *jaxcnn.model_info(name).input_shape)
    assert jaxcnn.param_count(name, shape, convention="keras") == total
    assert jaxcnn.param_count(name, shape) == trainable
    assert round(trainable / 1e6, 1) == paper_m


@pytest.mark.parametrize("size", range(1, 40))
@pytest.mark.parametrize("kernel", [3, 5])
def test_keras_correct_pad_is_tensorflow_same_at_stride_2(size, kernel):
    same = jax.lax.padtype_to_pads((size, size), (kernel, kernel), (2, 2), "SAME")
    assert layers.keras_correct_pad((size, size), kernel) == tuple(map(tuple, same))


def test_keras_mobilenet_v1_needs_31_pixels():
    """Keras pads only bottom/right before its four stride-2 depthwise convs: 31 -> 16 -> 8 ..."""
    assert jaxcnn.model_info("mobilenet_v1_keras").min_size == 31
    assert jaxcnn.model_info("mobilenet_v1").min_size == 1
    model = jaxcnn.create_model("mobilenet_v1_keras")
    x = jax.ShapeDtypeStruct((1, 31, 31, 3), jnp.float32)
    variables = jax.eval_shape(lambda x: model.init(jax.random.key(0), x), x)
    with pytest.raises(jaxcnn.InputShapeError, match="31x31"):
        jax.eval_shape(lambda v: model.apply(v, jnp.zeros((1, 30, 31, 3))), variables)


def test_drop_path_drops_whole_samples():
    block = layers.InvertedResidual(8, 16, drop_path_rate=0.5)
    x = jax.random.normal(jax.random.key(0), (64, 4, 4, 8))

    @jax.jit
    def run(x):
        variables = block.init(jax.random.key(1), x)
        out, _ = block.apply(variables, x, train=True, rngs={"dropout": jax.random.key(2)},
                             mutable=["batch_stats"])
        return block.apply(variables, x) - x, out  # eval mode keeps every branch

    branch, out = run(x)
    # Train mode uses batch statistics, so compare each sample's branch with zero, not with eval.
    train_branch = np.asarray(out - x).reshape(64, -1)
    dropped = np.all(train_branch == 0, axis=1)
    assert 10 < dropped.sum() < 54
    assert np.all(np.abs(train_branch[~dropped]).max(axis=1) > 0)
    assert np.abs(np.asarray(branch)).max() > 0


def test_stochastic_depth_grows_linearly_over_the_blocks():
    model = jaxcnn.create_model("efficientnet_b0")
    rates = []

    def record(next_fun, args, kwargs, context):
        block = context.module
        if isinstance(block, layers.InvertedResidual) and context.method_name == "__call__":
            rates.append(block.drop_path_rate)
        return next_fun(*args, **kwargs)

    with nn.intercept_methods(record):
        jax.eval_shape(lambda x: model.init(jax.random.key(0), x),
                       jax.ShapeDtypeStruct((1, 32, 32, 3), jnp.float32))
    assert len(rates) == 16
    np.testing.assert_allclose(rates, [0.2 * i / 16 for i in range(16)])


def test_keras_efficientnet_keeps_its_input_normalization_as_state():
    model = jaxcnn.create_model("efficientnet_b0_keras")
    variables = jax.eval_shape(lambda x: model.init(jax.random.key(0), x),
                               jax.ShapeDtypeStruct((1, 32, 32, 3), jnp.float32))
    stats = variables["batch_stats"]["normalization"]
    assert {k: v.shape for k, v in stats.items()} == {"mean": (3,), "variance": (3,), "count": ()}
    assert "normalization" not in variables["params"]


def test_pre_logits_are_sown():
    model = jaxcnn.create_model("mobilenet_v3_small", num_classes=5)
    x = jax.ShapeDtypeStruct((1, 32, 32, 3), jnp.float32)
    variables = jax.eval_shape(lambda x: model.init(jax.random.key(0), x), x)
    _, state = jax.eval_shape(lambda v, x: model.apply(v, x, mutable=["intermediates"]),
                              variables, x)
    assert state["intermediates"]["pre_logits"][0].shape == (1, 1024)


# ---------------------------------------------------------------------------------------------
# Numerical agreement with the reference implementations


def _call_order(model, x, kinds):
    """Zero variables for ``model`` and the paths of its ``kinds`` leaf modules in call order.

    Every array is then overwritten with the reference's, so nothing needs initialising.
    """
    order = []

    def record(next_fun, args, kwargs, context):
        out = next_fun(*args, **kwargs)
        if isinstance(context.module, kinds) and context.module.path not in order:
            order.append(context.module.path)
        return out

    with nn.intercept_methods(record):
        shapes = jax.eval_shape(lambda x: model.init(jax.random.key(0), x), x)
    return jax.tree_util.tree_map(lambda s: np.zeros(s.shape, s.dtype), shapes), order


def _at(tree, path):
    for key in path:
        tree = tree[key]
    return tree


def _bn_values(rng, n):
    """Non-trivial BatchNorm scale, bias, mean, variance, so eval mode exercises them."""
    return [rng.uniform(0.5, 1.5, n), rng.normal(0, 0.1, n), rng.normal(0, 0.1, n),
            rng.uniform(0.5, 1.5, n)]


TORCH_CASES = [
    ("mobilenet_v1", "timm", "mobilenetv1_100"),
    ("mobilenet_v2", "torchvision", "mobilenet_v2"),
    ("mobilenet_v3_small", "torchvision", "mobilenet_v3_small"),
    ("efficientnet_b0", "torchvision", "efficientnet_b0"),
]


@pytest.mark.parametrize("name,library,reference", TORCH_CASES, ids=[c[0] for c in TORCH_CASES])
def test_matches_pytorch_reference(name, library, reference):
    torch = pytest.importorskip("torch")
    if library == "timm":
        timm = pytest.importorskip("timm")
        ref_model = timm.create_model(reference)
    else:
        torchvision = pytest.importorskip("torchvision")
        ref_model = getattr(torchvision.models, reference)()
    ref_model.eval()
    size = 35
    model = jaxcnn.create_model(name)
    variables, order = _call_order(model, jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32),
                                   (nn.Conv, nn.Dense, nn.BatchNorm))
    ref_layers = [m for m in ref_model.modules()
                  if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear, torch.nn.BatchNorm2d))]
    assert len(ref_layers) == len(order)
    rng = np.random.default_rng(0)
    with torch.no_grad():
        for layer, path in zip(ref_layers, order):
            params = _at(variables["params"], path)
            if isinstance(layer, torch.nn.BatchNorm2d):
                values = _bn_values(rng, layer.num_features)
                for buf, v in zip((layer.weight, layer.bias, layer.running_mean, layer.running_var),
                                  values):
                    buf.copy_(torch.from_numpy(v))
                params["scale"], params["bias"] = values[0], values[1]
                stats = _at(variables["batch_stats"], path)
                stats["mean"], stats["var"] = values[2], values[3]
                continue
            weight = layer.weight.numpy()
            kernel = weight.T if weight.ndim == 2 else weight.transpose(2, 3, 1, 0)
            assert kernel.shape == params["kernel"].shape, path
            params["kernel"] = kernel
            if layer.bias is not None:
                params["bias"] = layer.bias.numpy()
        x = np.random.default_rng(1).normal(size=(2, size, size, 3)).astype(np.float32)
        expected = ref_model(torch.from_numpy(x.transpose(0, 3, 1, 2))).numpy()
    got = np.asarray(jax.jit(model.apply)(variables, x))
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5 * np.abs(expected).max())


# Sizes cover even and odd feature maps before the stride-2 convolutions (34 -> 17 -> 9 ...).
KERAS_CASES = [
    ("mobilenet_v1_keras", "MobileNet", 1.0, 32),
    ("mobilenet_v2_keras", "MobileNetV2", 1.0, 33),
    ("efficientnet_b0_keras", "EfficientNetB0", 255.0, 34),
]


@pytest.fixture(scope="module")
def keras():
    return pytest.importorskip("keras")  # on the JAX backend (tests/conftest.py)


@pytest.mark.parametrize("name,application,scale,size", KERAS_CASES,
                         ids=[c[0] for c in KERAS_CASES])
def test_matches_keras_reference(keras, name, application, scale, size):
    kl = keras.layers
    ref_model = getattr(keras.applications, application)(
        input_shape=(size, size, 3), weights=None, classifier_activation=None)
    model = jaxcnn.create_model(name)
    variables, order = _call_order(model, jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32),
                                   (nn.Conv, nn.Dense, nn.BatchNorm,
                                    efficientnet.InputNormalization))
    kinds = (kl.Conv2D, kl.DepthwiseConv2D, kl.Dense, kl.BatchNormalization, kl.Normalization)
    ref_layers = [layer for layer in ref_model.layers if isinstance(layer, kinds)]
    assert len(ref_layers) == len(order)
    rng = np.random.default_rng(0)
    for layer, path in zip(ref_layers, order):
        weights = [np.asarray(w) for w in layer.get_weights()]
        if isinstance(layer, kl.Normalization):
            mean, variance = np.array([0.48, 0.45, 0.4]), np.array([0.05, 0.06, 0.055])
            layer.set_weights([mean, variance, weights[2]])
            layer.finalize_state()  # as Keras' weight loading does; set_weights alone does not
            stats = _at(variables["batch_stats"], path)
            stats["mean"], stats["variance"] = mean, variance
            continue
        params = _at(variables["params"], path)
        if isinstance(layer, kl.BatchNormalization):
            values = [v.astype(np.float32) for v in _bn_values(rng, weights[0].shape[0])]
            layer.set_weights(values)
            params["scale"], params["bias"] = values[0], values[1]
            stats = _at(variables["batch_stats"], path)
            stats["mean"], stats["var"] = values[2], values[3]
            continue
        kernel = weights[0]
        if isinstance(layer, kl.DepthwiseConv2D):  # (kh, kw, C, 1) -> grouped (kh, kw, 1, C)
            kernel = kernel.transpose(0, 1, 3, 2)
        params["kernel"] = kernel.reshape(params["kernel"].shape)  # Keras' 1x1 conv_preds: Dense
        assert kernel.shape[-1] == params["kernel"].shape[-1], path
        if len(weights) > 1:
            params["bias"] = weights[1]
    x = np.random.default_rng(1).uniform(0, scale, size=(2, size, size, 3)).astype(np.float32)
    expected = ref_model.predict(x, verbose=0)  # one compiled call; eager runs op by op
    got = np.asarray(jax.jit(model.apply)(variables, x))
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5 * np.abs(expected).max())
