"""AlexNet/ZFNet: torchvision parity, the paper's two-tower shapes, minimum sizes."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxcnn


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


def _from_torchvision(tv):
    sd = {k: v.detach().numpy() for k, v in tv.state_dict().items()}

    def conv(i):
        return {"kernel": sd[f"features.{i}.weight"].transpose(2, 3, 1, 0),
                "bias": sd[f"features.{i}.bias"]}

    def dense(i, chw=None):
        w = sd[f"classifier.{i}.weight"]
        if chw is not None:  # torchvision flattens CHW, we flatten HWC
            w = w.reshape(w.shape[0], *chw).transpose(0, 2, 3, 1).reshape(w.shape[0], -1)
        return {"kernel": w.T, "bias": sd[f"classifier.{i}.bias"]}

    params = {f"conv{n + 1}": conv(i) for n, i in enumerate((0, 3, 6, 8, 10))}
    params.update(fc6=dense(1, (256, 6, 6)), fc7=dense(4, None), head=dense(6, None))
    return {"params": params}


@pytest.mark.parametrize("size", [63, 100])
def test_matches_torchvision_alexnet(size):
    torch = pytest.importorskip("torch")
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    tv = torchvision.models.alexnet(num_classes=10).eval()
    model = jaxcnn.create_model("alexnet", num_classes=10)
    variables = _from_torchvision(tv)
    expected = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, size, size, 3))))
    assert jax.tree_util.tree_map(lambda a: a.shape, variables) == \
        jax.tree_util.tree_map(lambda a: a.shape, expected)
    x = np.random.default_rng(0).normal(size=(2, size, size, 3)).astype(np.float32)
    with torch.no_grad():
        want = tv(torch.from_numpy(x.transpose(0, 3, 1, 2))).numpy()
    got = model.apply(variables, jnp.asarray(x))
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
