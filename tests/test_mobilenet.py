"""MobileNet v1/v2/v3 and EfficientNet: figures the shared tables lack, padding, numerics.

The numerical tests convert the weights of a randomly initialised reference network (torchvision,
timm, Keras) with its declared converter and compare logits at small odd sizes, which
exercise the padding conventions (tests/test_parity.py does even sizes).
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxcnn
from jaxcnn import convert, layers, weights
from conftest import keras_calls, numpy_keras_initialisers

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
# Numerical agreement at odd sizes (tests/test_parity.py covers every declared converter at 64
# pixels, an even size; odd sizes exercise the other side of the padding conventions).

ODD_SIZE_CASES = [("mobilenet_v1", 35), ("mobilenet_v2", 35), ("mobilenet_v3_small", 35),
                  ("efficientnet_b0", 35), ("mobilenet_v1_keras", 33),
                  ("mobilenet_v2_keras", 33), ("efficientnet_b0_keras", 35)]


@pytest.mark.parity
@pytest.mark.parametrize("name,size", ODD_SIZE_CASES, ids=[c[0] for c in ODD_SIZE_CASES])
def test_converted_reference_matches_at_odd_sizes(name, size):
    conv = convert.converters_for(name)[0]
    x = np.random.default_rng(1).normal(size=(2, size, size, 3)).astype(np.float32)
    if conv.source == "keras":
        keras = pytest.importorskip("keras")  # on the JAX backend (tests/conftest.py)

        keras.backend.clear_session()
        with numpy_keras_initialisers():  # Keras' own compile once per weight shape
            ref = getattr(keras.applications, conv.reference)(
                weights=None, classes=10, input_shape=(size, size, 3), classifier_activation=None)
        state = {w.path: np.array(w.numpy()) for w in ref.weights}
        [(expected, _)] = keras_calls(ref, x, False)  # compiled: Keras' eager call is 5x slower
        expected = np.asarray(expected)
    else:
        torch = pytest.importorskip("torch")
        if conv.source == "timm":
            ref = pytest.importorskip("timm").create_model(conv.reference, num_classes=10)
        else:
            ref = getattr(pytest.importorskip("torchvision").models, conv.reference)(num_classes=10)
        ref.eval()
        state = {k: v.detach().numpy() for k, v in ref.state_dict().items()}
        with torch.no_grad():
            expected = ref(torch.from_numpy(x.transpose(0, 3, 1, 2).copy())).numpy()
    model = jaxcnn.create_model(name, num_classes=10)
    variables = weights.convert(state, jaxcnn.init_shapes(model, x.shape), conv)
    got = np.asarray(jax.jit(model.apply)(variables, x))
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5 * np.abs(expected).max())
