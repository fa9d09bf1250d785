"""Spatial transformer: grid generator, sampler, the wrapper module and the tutorial network."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxcnn
from jaxcnn.stn import LocalizationNet, SpatialTransformer, affine_grid, bilinear_sample


def _identity(n):
    return jnp.tile(jnp.eye(2, 3)[None], (n, 1, 1))


def _random_case(seed, n=3, h=9, w=11, c=4):
    rng = np.random.default_rng(seed)
    # Around the identity, with enough spread that some positions fall outside the image.
    theta = (np.eye(2, 3)[None] + 0.6 * rng.standard_normal((n, 2, 3))).astype(np.float32)
    images = rng.standard_normal((n, h, w, c)).astype(np.float32)
    return theta, images


def test_identity_theta_returns_the_input():
    images = jax.random.normal(jax.random.key(0), (2, 7, 10, 3))
    out = jax.jit(lambda x: bilinear_sample(x, affine_grid(_identity(2), x.shape)))(images)
    np.testing.assert_allclose(out, images, atol=1e-5)


def test_grid_of_identity_is_the_pixel_centres():
    grid = affine_grid(_identity(1), (2, 4))
    np.testing.assert_allclose(grid[0, 0, :, 0], [-0.75, -0.25, 0.25, 0.75])
    np.testing.assert_allclose(grid[0, :, 0, 1], [-0.5, 0.5])


def test_translation_by_one_pixel_shifts_and_fills_zeros():
    images = jax.random.normal(jax.random.key(1), (1, 5, 8, 2))
    theta = jnp.array([[[1.0, 0.0, 2 / 8], [0.0, 1.0, 0.0]]])  # x moves by one pixel (2/W)
    out = jax.jit(lambda x: bilinear_sample(x, affine_grid(theta, x.shape)))(images)
    np.testing.assert_allclose(out[:, :, :-1], images[:, :, 1:], atol=1e-5)
    np.testing.assert_allclose(out[:, :, -1], 0.0)


def test_bad_shapes_are_rejected():
    with pytest.raises(ValueError, match=r"\(N, 2, 3\)"):
        affine_grid(jnp.zeros((2, 6)), (4, 4))
    with pytest.raises(ValueError, match="batch"):
        affine_grid(_identity(2), (3, 4, 4, 1))
    with pytest.raises(ValueError, match="grid"):
        bilinear_sample(jnp.zeros((1, 4, 4, 1)), jnp.zeros((1, 4, 4, 3)))


def test_gradients_flow_to_theta():
    theta, images = _random_case(2)

    def loss(theta):
        out = bilinear_sample(jnp.asarray(images), affine_grid(theta, images.shape))
        return jnp.sum(out ** 2)

    grad = jax.jit(jax.grad(loss))(jnp.asarray(theta))
    assert grad.shape == theta.shape
    assert np.all(np.isfinite(grad))
    assert np.all(np.abs(grad).sum(axis=(1, 2)) > 0)


@pytest.mark.parity
@pytest.mark.parametrize("seed,out_hw", [(0, (9, 11)), (1, (6, 13))])
def test_matches_torch_affine_grid_and_grid_sample(seed, out_hw):
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    theta, images = _random_case(seed)
    n, _, _, c = images.shape
    out_shape = (n, *out_hw, c)

    grid = affine_grid(jnp.asarray(theta), out_shape)
    theta_t = torch.from_numpy(theta)
    grid_t = F.affine_grid(theta_t, (n, c, *out_hw), align_corners=False)
    np.testing.assert_allclose(grid, grid_t.numpy(), atol=1e-6)

    images_t = torch.from_numpy(images).permute(0, 3, 1, 2).requires_grad_(True)
    grid_t = grid_t.detach().requires_grad_(True)
    out_t = F.grid_sample(images_t, grid_t, mode="bilinear", padding_mode="zeros",
                          align_corners=False)
    out = bilinear_sample(jnp.asarray(images), grid)
    np.testing.assert_allclose(out, out_t.permute(0, 2, 3, 1).detach().numpy(), atol=1e-5)

    # Gradients too: the sampler's derivative in the positions is what trains the localiser.
    weights = np.random.default_rng(seed + 10).standard_normal(out.shape).astype(np.float32)
    (out_t * torch.from_numpy(weights).permute(0, 3, 1, 2)).sum().backward()
    g_images, g_grid = jax.jit(jax.grad(lambda i, g: jnp.sum(bilinear_sample(i, g) * weights),
                                        argnums=(0, 1)))(jnp.asarray(images), grid)
    np.testing.assert_allclose(g_images, images_t.grad.permute(0, 2, 3, 1).numpy(), atol=1e-4)
    np.testing.assert_allclose(g_grid, grid_t.grad.numpy(), atol=1e-3)


def test_transformer_starts_as_identity_and_resamples_to_output_size():
    x = jax.random.normal(jax.random.key(3), (2, 28, 28, 1))
    stn = SpatialTransformer(localization=LocalizationNet())
    variables = jax.jit(stn.init)(jax.random.key(0), x)
    out, state = jax.jit(lambda v, x: stn.apply(v, x, mutable=["intermediates"]))(variables, x)
    np.testing.assert_allclose(out, x, atol=1e-4)
    np.testing.assert_allclose(state["intermediates"]["theta"][0], _identity(2))

    smaller = SpatialTransformer(localization=LocalizationNet(), output_size=(14, 20))
    assert jax.eval_shape(smaller.apply, variables, x).shape == (2, 14, 20, 1)


class _DropoutLocalizer(nn.Module):
    @nn.compact
    def __call__(self, x, *, train=False):
        x = nn.Dense(16)(jnp.mean(x, axis=(1, 2)))
        return nn.Dropout(0.5, deterministic=not train)(x)


class _StnThenLinear(nn.Module):
    @nn.compact
    def __call__(self, x, *, train=False):
        x = SpatialTransformer(localization=_DropoutLocalizer(parent=None), name="stn")(
            x, train=train)
        return nn.Dense(3, name="head")(x.reshape(x.shape[0], -1))


def test_transformer_wraps_any_localizer_in_front_of_any_network():
    x = jax.random.normal(jax.random.key(4), (2, 12, 12, 3))
    model = _StnThenLinear()
    variables = jax.jit(model.init)(jax.random.key(0), x)
    assert set(variables["params"]["stn"]) == {"localization", "fc_theta"}
    # ``train`` reaches the localiser: dropout needs its rng in train mode only.
    jax.eval_shape(lambda v, x: model.apply(v, x, train=False), variables, x)
    with pytest.raises(Exception, match="dropout"):
        jax.eval_shape(lambda v, x: model.apply(v, x, train=True), variables, x)
    out = jax.eval_shape(lambda v, x: model.apply(v, x, train=True,
                                                  rngs={"dropout": jax.random.key(1)}),
                         variables, x)
    assert out.shape == (2, 3)


def test_stn_mnist_parts_match_the_tutorial():
    variables = jaxcnn.init_shapes("stn_mnist")
    params = variables["params"]
    stn = jaxcnn.count_params({"params": params["stn"]})
    assert stn == 5_520  # conv 1->8 (7x7), conv 8->10 (5x5), fc 90->32, fc 32->6
    assert jaxcnn.count_params(variables) - stn == 21_840  # the PyTorch MNIST example net
    assert params["fc1"]["kernel"].shape == (320, 50)
    assert params["stn"]["localization"]["fc"]["kernel"].shape == (90, 32)


@pytest.mark.slow
def test_stn_mnist_runs_and_trains_the_localizer():
    model = jaxcnn.create_model("stn_mnist")
    x = jax.random.normal(jax.random.key(5), (2, 28, 28, 1))
    labels = jnp.array([3, 7])
    variables = jax.jit(model.init)(jax.random.key(0), x)

    def loss(params):
        logits = model.apply({"params": params}, x, train=True,
                             rngs={"dropout": jax.random.key(1)})
        return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), labels[:, None], 1))

    grads = jax.jit(jax.grad(loss))(variables["params"])
    theta_grad = grads["stn"]["fc_theta"]["kernel"]
    assert np.all(np.isfinite(theta_grad)) and np.any(theta_grad != 0)


def test_distorted_digits_cnns_have_the_counts_of_their_layers():
    """By hand, at the 42x42 RTS canvas (valid 5x5 convs, floored 2x2 pools: 42 -> 38 -> 19
    -> 15 -> 7). CNN: conv 1->16 (416), conv 16->32 (12,832), fc 7*7*32->64 (100,416), fc
    64->10 (650). Localisation: conv 1->8 (208), conv 8->16 (3,216), fc 7*7*16->32 (25,120),
    theta 32->6 (198)."""
    x = jax.ShapeDtypeStruct((1, 42, 42, 1), jnp.float32)
    cnn = jaxcnn.count_params(jax.eval_shape(jaxcnn.create_model("cnn_mnist").init,
                                             jax.random.key(0), x))
    stn = jaxcnn.count_params(jax.eval_shape(jaxcnn.create_model("stn_cnn_mnist").init,
                                             jax.random.key(0), x))
    assert cnn == 416 + 12_832 + 100_416 + 650 == 114_314
    assert stn - cnn == 208 + 3_216 + 25_120 + 198


@pytest.mark.parametrize("name, size", [("stn_cnn_mnist", 42), ("stn_mnist", 42)])
def test_localisation_starts_at_the_identity_on_the_rts_canvas(name, size):
    """Before training, the transformer passes the image through: theta is the identity."""
    model = jaxcnn.create_model(name)
    x = jax.random.normal(jax.random.key(6), (2, size, size, 1))

    @jax.jit
    def theta_and_logits(x):
        variables = model.init(jax.random.key(0), x)
        logits, sown = model.apply(variables, x, mutable=["intermediates"])
        return sown["intermediates"]["stn"]["theta"][0], logits

    theta, logits = theta_and_logits(x)
    np.testing.assert_allclose(theta, _identity(2), atol=1e-6)
    assert logits.shape == (2, 10)


def test_gradient_scale_slows_the_transformer_only():
    """``gradient_scale`` 0.1 leaves the output and multiplies the localiser's gradient by 0.1."""
    x = jax.random.normal(jax.random.key(7), (2, 12, 12, 1))

    def grads(scale):
        stn = SpatialTransformer(localization=_DropoutLocalizer(parent=None),
                                 gradient_scale=scale)
        variables = stn.init(jax.random.key(0), x)
        # A theta away from the identity, so that the sampler's gradient is not degenerate.
        variables = jax.tree.map(lambda p: p + 0.05, variables)
        return stn.apply(variables, x), jax.grad(
            lambda v: jnp.sum(stn.apply(v, x) * jnp.arange(144.0).reshape(1, 12, 12, 1)))(
                variables)

    (out_1, g_1), (out_01, g_01) = jax.jit(lambda: (grads(1.0), grads(0.1)))()
    np.testing.assert_allclose(out_01, out_1, rtol=1e-6)
    for a, b in zip(jax.tree.leaves(g_01), jax.tree.leaves(g_1)):
        np.testing.assert_allclose(a, 0.1 * b, rtol=1e-4, atol=1e-7)
    assert any(np.any(np.asarray(b) != 0) for b in jax.tree.leaves(g_1))
