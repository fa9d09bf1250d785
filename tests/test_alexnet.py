"""AlexNet/ZFNet: the paper's two-tower shapes, layer sizes, minimum sizes, fc6's flatten order.

The converted torchvision weights are compared at the parity test's small input in
tests/test_parity.py; here only at 224, where the flatten order matters position by position.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxcnn
from jaxcnn import convert, weights


def _shapes(name, size, **overrides):
    model = jaxcnn.create_model(name, **overrides)
    x = jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32)
    return jax.eval_shape(lambda x: model.init(jax.random.key(0), x), x)["params"]


def _conv5_shape(name, size):
    model = jaxcnn.create_model(name)
    x = jnp.zeros((1, size, size, 3))
    variables = jax.eval_shape(lambda: model.init(jax.random.key(0), x))
    _, state = jax.eval_shape(
        lambda v: model.apply(v, x, capture_intermediates=True, mutable=["intermediates"]),
        variables)
    return state["intermediates"]["conv5"]["__call__"][0].shape


def test_paper_alexnet_is_two_towers():
    params = _shapes("alexnet_paper", 227)
    kernels = {name: params[name]["kernel"].shape for name in params}
    # Grouped layers see half of the previous layer's maps: 48 of 96, 192 of 384.
    assert kernels["conv2"] == (5, 5, 48, 256)
    assert kernels["conv3"] == (3, 3, 256, 384)
    assert kernels["conv4"] == (3, 3, 192, 384)
    assert kernels["conv5"] == (3, 3, 192, 256)
    assert kernels["fc6"] == (6 * 6 * 256, 4096)


@pytest.mark.parametrize("size", [224, 227])
def test_paper_sizes_reach_13x13_before_the_last_pool(size):
    """The paper's 224 and Caffe's 227 both give 13x13 conv5 maps (pooled to 6x6)."""
    assert _conv5_shape("alexnet_paper", size) == (1, 13, 13, 256)


def test_zfnet_layer_sizes_match_the_paper():
    """Zeiler & Fergus, Fig. 3: 110x110 after conv1, 26x26 after conv2, 13x13 at conv5."""
    assert _conv5_shape("zfnet", 224) == (1, 13, 13, 256)


@pytest.mark.parametrize("name,size", [("alexnet", 63), ("alexnet_paper", 39), ("zfnet", 47)])
def test_minimum_sizes(name, size):
    assert jaxcnn.create_model(name).min_size == size


@pytest.mark.parity
def test_converted_torchvision_weights_at_224():
    """At 224 the conv5 maps are 6x6 (not 1x1 as at the parity test's 64), so the reordering of
    fc6's inputs from torchvision's CHW flatten to our HWC flatten is checked position by position.
    """
    torch = pytest.importorskip("torch")
    torchvision = pytest.importorskip("torchvision")
    (conv,) = convert.converters_for("alexnet")
    torch.manual_seed(0)
    tv = torchvision.models.alexnet(num_classes=10).eval()
    x = np.random.default_rng(0).normal(size=(2, 224, 224, 3)).astype(np.float32)
    with torch.no_grad():
        want = tv(torch.from_numpy(x.transpose(0, 3, 1, 2))).numpy()
    model = jaxcnn.create_model("alexnet", num_classes=10)
    state = weights.load_state_dict(tv.state_dict())
    variables = weights.convert(state, jaxcnn.init_shapes(model, x.shape), conv)
    got = model.apply(variables, jnp.asarray(x))
    assert np.abs(want).max() > 0
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5 * np.abs(want).max())
