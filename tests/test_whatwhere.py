"""What-where auto-encoder: pooling switches, unpooling, the model's two outputs, its loss."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxcnn
from jaxcnn.layers import (
    max_pool, max_pool_with_switches, max_unpool, soft_pool_with_positions, soft_unpool,
)
from jaxcnn.whatwhere import LossWeights, WhatWhereAutoencoder, whatwhere_loss


def _hand_made():
    """A 4x6 image, 2 channels, whose 2x2-window maxima sit at chosen places."""
    x = np.zeros((1, 4, 6, 2), np.float32)
    x[..., 0] = -1.0  # channel 0: negative background, so zeros in the output are the fill
    x[..., 1] = 0.5
    # (row, col) of each window's maximum and its value, windows in row-major order.
    maxima = {
        0: [((0, 0), 3.0), ((1, 3), 4.0), ((0, 5), 5.0), ((3, 1), 6.0), ((2, 2), 7.0),
            ((3, 4), 8.0)],
        1: [((1, 1), 2.0), ((0, 2), 2.5), ((1, 4), 3.5), ((2, 0), 1.5), ((3, 3), 9.0),
            ((2, 5), 1.0)],
    }
    for c, entries in maxima.items():
        for (r, col), value in entries:
            x[0, r, col, c] = value
    return x, maxima


def test_switches_point_at_the_maxima_and_unpooling_puts_values_back():
    x, maxima = _hand_made()
    pooled, switches = max_pool_with_switches(jnp.asarray(x), 2)
    assert pooled.shape == switches.shape == (1, 2, 3, 2)
    assert switches.dtype == jnp.int32
    for c, entries in maxima.items():
        values = [v for _, v in entries]
        flat = [r * 6 + col for (r, col), _ in entries]
        np.testing.assert_array_equal(np.asarray(pooled[0, :, :, c]).ravel(), values)
        np.testing.assert_array_equal(np.asarray(switches[0, :, :, c]).ravel(), flat)

    restored = np.asarray(max_unpool(pooled, switches, (4, 6)))
    expected = np.zeros_like(x)
    for c, entries in maxima.items():
        for (r, col), value in entries:
            expected[0, r, col, c] = value
    np.testing.assert_array_equal(restored, expected)


def test_ties_pick_the_first_maximum_in_row_major_order():
    x = jnp.full((1, 2, 2, 1), 1.0)
    _, switches = max_pool_with_switches(x, 2)
    assert int(switches[0, 0, 0, 0]) == 0


def test_odd_sizes_unpool_to_the_given_size():
    x = jax.random.normal(jax.random.key(0), (2, 5, 7, 3))
    pooled, switches = max_pool_with_switches(x, 2)
    assert pooled.shape == (2, 2, 3, 3)
    np.testing.assert_array_equal(pooled, max_pool(x, 2, 2))
    restored = max_unpool(pooled, switches, (5, 7))
    assert restored.shape == x.shape
    kept = np.asarray(restored) != 0
    np.testing.assert_array_equal(np.asarray(restored)[kept], np.asarray(x)[kept])
    assert kept.sum() == pooled.size  # one survivor per window, the last row/column dropped
    assert not kept[:, 4].any() and not kept[:, :, 6].any()


def test_gradient_goes_to_the_switch_only():
    x = jnp.array([[1.0, 3.0], [3.0, 2.0]])[None, :, :, None]  # a tie: the first 3 wins
    grad = jax.grad(lambda x: jnp.sum(max_pool_with_switches(x, 2)[0]))(x)
    np.testing.assert_array_equal(grad[0, :, :, 0], [[0.0, 1.0], [0.0, 0.0]])


@pytest.mark.parity
@pytest.mark.parametrize("size,window,stride,padding,ceil_mode", [
    ((8, 8), 2, 2, 0, False),
    ((13, 12), 3, 2, 0, True),  # overlapping windows, as in AlexNet/ZFNet (deconvnet tool)
    ((14, 14), 3, 2, 1, True),
    ((10, 11), 3, 1, 1, False),
])
def test_matches_torch_return_indices_and_max_unpool(size, window, stride, padding, ceil_mode):
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    x = np.random.default_rng(0).standard_normal((2, *size, 3)).astype(np.float32)
    pooled, switches = max_pool_with_switches(jnp.asarray(x), window, stride, padding,
                                              ceil_mode=ceil_mode)
    pooled_t, switches_t = F.max_pool2d(torch.from_numpy(x).permute(0, 3, 1, 2), window, stride,
                                        padding, ceil_mode=ceil_mode, return_indices=True)
    np.testing.assert_allclose(pooled, pooled_t.permute(0, 2, 3, 1).numpy())
    np.testing.assert_array_equal(switches, switches_t.permute(0, 2, 3, 1).numpy())
    restored_t = F.max_unpool2d(pooled_t, switches_t, window, stride, padding, output_size=size)
    np.testing.assert_allclose(max_unpool(pooled, switches, size),
                               restored_t.permute(0, 2, 3, 1).numpy())


def test_reconstruct_returns_logits_and_a_reconstruction_of_the_input():
    model = jaxcnn.create_model("whatwhere_mnist")
    x = jax.random.normal(jax.random.key(1), (2, 13, 13, 1))  # odd: pooling floors 13 -> 6 -> 3

    @jax.jit
    def run(x):
        variables = model.init(jax.random.key(0), x)
        logits = model.apply(variables, x)
        (logits2, recon), state = model.apply(variables, x, method="reconstruct",
                                              mutable=["intermediates"])
        return logits, logits2, recon, state["intermediates"]

    logits, logits2, recon, sown = run(x)
    assert logits.shape == (2, 10) and recon.shape == x.shape and recon.dtype == jnp.float32
    np.testing.assert_allclose(logits, logits2)
    np.testing.assert_allclose(sown["reconstruction"][0], recon)
    (pair,) = sown["middle_reconstructions"][0]
    encoded, decoded = pair
    assert encoded.shape == decoded.shape == (2, 6, 6, 16)


def _labels_and_images(n=4, size=12):
    images = jax.random.uniform(jax.random.key(2), (n, size, size, 1))
    labels = jnp.arange(n) % 10
    return labels, images


@pytest.mark.slow
def test_a_gradient_step_lowers_the_reconstruction_loss():
    model = WhatWhereAutoencoder()
    labels, images = _labels_and_images()
    weights = LossWeights(classification=0.0, reconstruction=1.0, middle=0.0)

    def loss(params):
        (logits, recon), state = model.apply({"params": params}, images, method="reconstruct",
                                             mutable=["intermediates"])
        middle = state["intermediates"]["middle_reconstructions"][0]
        return whatwhere_loss(logits, labels, recon, images, middle, weights)

    @jax.jit
    def step():
        params = model.init(jax.random.key(0), images)["params"]
        (before, parts), grads = jax.value_and_grad(loss, has_aux=True)(params)
        params = jax.tree_util.tree_map(lambda p, g: p - 0.05 * g, params, grads)
        after, _ = loss(params)
        return before, parts, after

    before, parts, after = step()
    assert np.isfinite(before) and parts["classification"] > 0 and parts["middle"] > 0
    np.testing.assert_allclose(before, parts["reconstruction"])  # only that term is weighted
    assert after < before


def test_loss_ignores_unlabelled_images_and_sums_weighted_terms():
    logits = jnp.array([[2.0, 0.0], [0.0, 5.0], [9.0, -9.0]])
    images = jnp.ones((3, 2, 2, 1))
    recon = jnp.zeros((3, 2, 2, 1))
    middle = [(jnp.ones((3, 1, 1, 2)), jnp.full((3, 1, 1, 2), 3.0))]
    labels = jnp.array([0, -1, 1])  # the middle image is unlabelled
    total, parts = whatwhere_loss(logits, labels, recon, images, middle,
                                  LossWeights(classification=2.0, reconstruction=0.5, middle=0.25))
    expected_nll = (-jax.nn.log_softmax(logits[0])[0] - jax.nn.log_softmax(logits[2])[1]) / 2
    np.testing.assert_allclose(parts["classification"], expected_nll, rtol=1e-6)
    np.testing.assert_allclose(parts["reconstruction"], 1.0)
    np.testing.assert_allclose(parts["middle"], 4.0)
    np.testing.assert_allclose(total, 2.0 * expected_nll + 0.5 + 1.0, rtol=1e-6)

    unsupervised, parts = whatwhere_loss(logits, None, recon, images)
    assert parts["classification"] == 0 and unsupervised == parts["reconstruction"]


def test_soft_pooling_by_hand():
    """One 2x2 window [[0, ln 3], [0, 0]] at beta 1: softmax weights 1/6, 1/2, 1/6, 1/6."""
    x = jnp.array([[0.0, np.log(3.0)], [0.0, 0.0]])[None, :, :, None]

    @jax.jit
    def pool_and_spread(x):
        pooled, where = soft_pool_with_positions(x, 2, beta=1.0)
        return pooled, where, soft_unpool(jnp.full((1, 1, 1, 1), 9.0), where, (3, 2), 2)

    pooled, where, spread = pool_and_spread(x)
    np.testing.assert_allclose(pooled[0, 0, 0, 0], np.log(3.0) / 2, rtol=1e-6)
    np.testing.assert_allclose(where[0, 0, 0, 0], [1 / 3, 2 / 3], rtol=1e-6)  # (row, col)
    # Unpooling shares a value bilinearly: rows (2/3, 1/3) times columns (1/3, 2/3).
    np.testing.assert_allclose(spread[0, :, :, 0], [[2.0, 4.0], [1.0, 2.0], [0.0, 0.0]],
                               rtol=1e-5)


def test_soft_pooling_becomes_the_hard_switches_as_beta_grows():
    # Distinct values at least 0.1 apart, odd sizes (the last row and column are dropped).
    x = jax.random.permutation(jax.random.key(3), 0.1 * jnp.arange(2 * 7 * 9 * 3))
    x = x.reshape(2, 7, 9, 3)

    @jax.jit
    def both(x):
        hard, switches = max_pool_with_switches(x, 2)
        soft, where = soft_pool_with_positions(x, 2, beta=1e3)
        return (hard, max_unpool(hard, switches, (7, 9)),
                soft, soft_unpool(soft, where, (7, 9), 2))

    hard, hard_unpooled, soft, soft_unpooled = both(x)
    np.testing.assert_allclose(soft, hard, atol=1e-5)
    np.testing.assert_allclose(soft_unpooled, hard_unpooled, atol=1e-5)


@pytest.mark.slow
def test_soft_variant_passes_gradients_to_every_value_of_a_window():
    model = jaxcnn.create_model("whatwhere_mnist_soft")
    assert model.soft_pool_beta is not None
    x = jax.random.normal(jax.random.key(4), (1, 8, 8, 1))
    # Soft pooling has no parameters: the same shapes as the hard variant's.
    shapes = jax.eval_shape(model.init, jax.random.key(0), x)
    hard = jax.eval_shape(jaxcnn.create_model("whatwhere_mnist").init, jax.random.key(0), x)
    assert jax.tree.map(lambda a: a.shape, shapes) == jax.tree.map(lambda a: a.shape, hard)

    @jax.jit
    def input_gradient(x):
        variables = model.init(jax.random.key(0), x)
        return jax.grad(
            lambda x: jnp.sum(model.apply(variables, x, method="reconstruct")[1] ** 2))(x)

    grad = input_gradient(x)
    assert np.all(np.asarray(grad) != 0)  # hard switches would zero most of the input
