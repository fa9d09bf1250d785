"""LeNet-5 (1998) against the paper: Table I, per-layer counts, fixed RBF output; modern LeNet-5."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxcnn
from jaxcnn import lenet

# Table I of LeCun et al. 1998 as printed: one row per S2 map, one column per C3 map, X = used.
PAPER_TABLE_I = """
X...XXX..XXXX.XX
XX...XXX..XXXX.X
XXX...XXX..X.XXX
.XXX..XXXX..X.XX
..XXX..XXXX.XX.X
...XXX..XXXX.XXX
"""


def _init(model, shape=(2, 32, 32, 1)):
    # One compiled init: op by op, each initialiser compiles on its own (seconds).
    return jax.jit(lambda x: model.init(jax.random.key(0), x, train=False))(jnp.zeros(shape))


def test_c3_table_is_table_one_of_the_paper():
    rows = PAPER_TABLE_I.split()
    from_paper = tuple(tuple(i for i, row in enumerate(rows) if row[j] == "X") for j in range(16))
    assert lenet.C3_TABLE == from_paper


def test_c3_connections_per_map():
    """Six maps take 3 contiguous S2 maps, six take 4 contiguous, three 4 others, one all 6."""
    sizes = [len(inputs) for inputs in lenet.C3_TABLE]
    assert sizes == [3] * 6 + [4] * 9 + [6]
    contiguous = [{(s + i) % 6 for i in range(n)} for n in (3, 4) for s in range(6)]
    assert [set(t) for t in lenet.C3_TABLE[:12]] == contiguous
    assert all(set(t) not in contiguous for t in lenet.C3_TABLE[12:15])
    # Every S2 map feeds ten C3 maps, so no S2 map is favoured.
    assert [sum(i in t for t in lenet.C3_TABLE) for i in range(6)] == [10] * 6


def test_per_layer_counts_match_the_paper():
    params = jax.eval_shape(lambda: _init(lenet.LeNet5_1998()))["params"]
    counts = {name: sum(a.size for a in jax.tree_util.tree_leaves(p)) for name, p in params.items()}
    assert counts == {"c1": 156, "s2": 12, "c3": 1_516, "s4": 32, "c5": 48_120, "f6": 10_164}
    assert sum(counts.values()) == 60_000


def test_rbf_prototypes_are_fixed_and_not_parameters():
    model = lenet.LeNet5_1998()
    variables = _init(model)
    assert set(variables) == {"params"}
    shapes = {a.shape for a in jax.tree_util.tree_leaves(variables)}
    assert (10, 84) not in shapes and (84, 10) not in shapes
    centres = lenet.rbf_prototypes(10)
    assert centres.shape == (10, 84) and set(np.unique(centres)) == {-1.0, 1.0}
    assert len({c.tobytes() for c in centres}) == 10
    # Each digit is a 7x12 bitmap.
    assert all(len(b.split("|")) == 12 and {len(r) for r in b.split("|")} == {7}
               for b in lenet.DIGIT_BITMAPS)
    # More classes than digits get further fixed codes; fewer take the first digits.
    assert np.array_equal(lenet.rbf_prototypes(12)[:10], centres)
    assert np.array_equal(lenet.rbf_prototypes(12), lenet.rbf_prototypes(12))
    assert np.array_equal(lenet.rbf_prototypes(7), centres[:7])


def test_output_is_negative_squared_distance_to_the_prototypes():
    model = lenet.LeNet5_1998()
    x = jax.random.normal(jax.random.key(1), (3, 32, 32, 1))
    variables = _init(model)
    logits, state = model.apply(variables, x, mutable=["intermediates"])
    f6 = state["intermediates"]["pre_logits"][0]
    assert f6.shape == (3, 84) and np.all(np.abs(f6) <= 1.7159)
    expected = -np.sum((np.asarray(f6)[:, None] - lenet.rbf_prototypes(10)[None]) ** 2, -1)
    np.testing.assert_allclose(logits, expected, rtol=1e-5)


def test_partial_convolution_matches_per_map_correlation():
    scipy_signal = pytest.importorskip("scipy.signal")
    layer = lenet.PartialConv(lenet.C3_TABLE)
    x = np.random.default_rng(0).normal(size=(1, 14, 14, 6)).astype(np.float32)
    variables = layer.init(jax.random.key(0), jnp.asarray(x))
    got = np.asarray(layer.apply(variables, jnp.asarray(x)))
    kernel = np.asarray(variables["params"]["kernel"])
    bias = np.asarray(variables["params"]["bias"])
    column = 0
    for j, inputs in enumerate(lenet.C3_TABLE):
        want = np.full((10, 10), bias[j], np.float32)
        for i in inputs:
            want += scipy_signal.correlate2d(x[0, :, :, i], kernel[:, :, column], mode="valid")
            column += 1
        np.testing.assert_allclose(got[0, :, :, j], want, rtol=1e-4, atol=1e-5)


def test_trainable_subsampling_is_coefficient_times_window_sum_plus_bias():
    layer = lenet.TrainableSubsampling()
    x = np.random.default_rng(0).normal(size=(2, 4, 6, 3)).astype(np.float32)
    variables = layer.init(jax.random.key(0), jnp.asarray(x))
    coefficient = np.asarray(variables["params"]["coefficient"])
    bias = np.asarray(variables["params"]["bias"])
    sums = x.reshape(2, 2, 2, 3, 2, 3).sum(axis=(2, 4))
    np.testing.assert_allclose(layer.apply(variables, jnp.asarray(x)), sums * coefficient + bias,
                               rtol=1e-5, atol=1e-6)


def test_scaled_tanh_maps_one_to_one():
    np.testing.assert_allclose(lenet.scaled_tanh(jnp.array([-1.0, 0.0, 1.0])), [-1, 0, 1],
                               atol=1e-4)


def test_1998_network_takes_exactly_32x32():
    model = lenet.LeNet5_1998()
    with pytest.raises(jaxcnn.InputShapeError, match="exactly 32x32"):
        _init(model, (1, 28, 28, 1))


@pytest.mark.parametrize("padding,size", [(0, 32), (2, 28)])
@pytest.mark.parametrize("activation", [jax.nn.relu, jnp.tanh])
def test_modern_lenet5_on_mnist_and_32x32(padding, size, activation):
    model = jaxcnn.create_model("lenet5", padding=padding, activation=activation)
    assert model.min_size == size
    assert jaxcnn.param_count(model, (1, size, size, 1)) == 61_706
    logits = model.apply(_init(model, (2, size, size, 1)), jnp.ones((2, size, size, 1)))
    assert logits.shape == (2, 10) and logits.dtype == jnp.float32
    with pytest.raises(jaxcnn.InputShapeError, match=f"exactly {size}x{size}"):
        _init(model, (1, size + 4, size + 4, 1))


def test_modern_lenet5_on_cifar_counts_like_the_pytorch_tutorial():
    assert jaxcnn.param_count("lenet5", (1, 32, 32, 3)) == 62_006


def _layer_counts(name):
    params = jaxcnn.init_shapes(name)["params"]
    return {layer: sum(a.size for a in jax.tree_util.tree_leaves(p)) for layer, p in params.items()}


def test_caffe_lenet5_has_the_four_layers_of_han_et_al():
    # Caffe examples/mnist/lenet_train_test.prototxt: conv1 20x5x5, conv2 50x5x5, ip1 500, ip2 10;
    # Deep Compression Table 3 lists conv1 0.5K, conv2 25K, ip1 400K, ip2 5K weights.
    assert _layer_counts("lenet5_caffe") == {"conv1": 20 * 26, "conv2": 50 * (25 * 20 + 1),
                                             "fc1": 500 * (4 * 4 * 50 + 1), "head": 10 * 501}


def test_lenet_300_100_is_784_300_100_10_and_takes_only_28x28x1():
    assert _layer_counts("lenet_300_100") == {"fc1": 300 * 785, "fc2": 100 * 301, "head": 10 * 101}
    model = jaxcnn.create_model("lenet_300_100")
    variables = jax.eval_shape(lambda: _init(model, (1, 28, 28, 1)))
    for shape in ((1, 32, 32, 1), (1, 28, 28, 3)):
        with pytest.raises(jaxcnn.InputShapeError, match="28x28|channel"):
            model.apply(variables, jnp.zeros(shape))
