"""Deep Compression (jaxcnn.compress): Huffman codes against known optima, the relative index
against the paper's figure 2, the centroid gradient against an explicit segment sum, pruning
through momentum and weight decay, k-means against a plain Lloyd, and a network through the
file and back."""

from __future__ import annotations

import functools
import math
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxcnn
from jaxcnn import compress


# ----------------------------------------------------------------------------------------------
# Huffman coding


def _cost(counts, lengths) -> int:
    return int(np.sum(np.asarray(counts) * np.asarray(lengths)))


def test_huffman_gives_dyadic_probabilities_their_information():
    # p = 1/2, 1/4, 1/8, 1/16, 1/16: the optimal code has lengths -log2 p exactly.
    lengths = compress.huffman_lengths(np.array([8, 4, 2, 1, 1]))
    assert lengths.tolist() == [1, 2, 3, 4, 4]


def test_huffman_cost_is_the_textbook_optimum():
    # Cormen, Leiserson, Rivest & Stein, Introduction to Algorithms (3rd ed.), sec. 16.3: the
    # characters a-f with frequencies 45, 13, 12, 16, 9, 5 (thousands) take 224,000 bits with
    # an optimal prefix code.
    counts = np.array([45, 13, 12, 16, 9, 5])
    lengths = compress.huffman_lengths(counts)
    assert _cost(counts, lengths) == 224
    assert np.sum(2.0 ** -lengths) == 1.0  # a complete prefix code (Kraft's equality)


@pytest.mark.parametrize("seed", range(5))
def test_huffman_lies_within_shannons_bounds(seed):
    """Mean length L of an optimal code: H <= L < H + 1 (Shannon's source coding theorem)."""
    counts = np.random.default_rng(seed).integers(1, 1000, size=40)
    p = counts / counts.sum()
    entropy = -np.sum(p * np.log2(p))
    mean = _cost(counts, compress.huffman_lengths(counts)) / counts.sum()
    assert entropy <= mean < entropy + 1


def test_huffman_lengths_are_limited_and_still_a_prefix_code():
    # Fibonacci counts give the deepest Huffman tree: 30 symbols need a 29-bit code unlimited.
    fib = [1, 1]
    while len(fib) < 30:
        fib.append(fib[-1] + fib[-2])
    counts = np.array(fib)
    lengths = compress.huffman_lengths(counts)
    assert lengths.max() <= compress.MAX_CODE_LENGTH
    assert np.sum(2.0 ** -lengths.astype(float)) <= 1.0
    symbols = np.repeat(np.arange(30), counts // 50 + 1)
    data, chunks = compress.huffman_encode(symbols, lengths)
    assert np.array_equal(compress.huffman_decode(data, symbols.size, lengths, chunks), symbols)


@pytest.mark.parametrize("size", [0, 1, compress.CHUNK - 1, compress.CHUNK, 3 * compress.CHUNK + 5])
@pytest.mark.parametrize("alphabet", [1, 32, 1 << 16])
def test_huffman_decodes_what_it_encodes(size, alphabet):
    rng = np.random.default_rng(size + alphabet)
    symbols = np.minimum(rng.geometric(0.1, size) - 1, alphabet - 1)  # skewed, some absent
    lengths = compress.huffman_lengths(np.bincount(symbols, minlength=alphabet))
    data, chunks = compress.huffman_encode(symbols, lengths)
    assert len(data) == -(-int(np.sum(lengths[symbols])) // 8)
    assert np.array_equal(compress.huffman_decode(data, size, lengths, chunks), symbols)


def test_canonical_codes_are_deflates():
    # RFC 1951 (DEFLATE), sec. 3.2.2: the alphabet ABCDEFGH with code lengths (3, 3, 3, 3, 3,
    # 2, 4, 4) has the canonical codes below.
    lengths = np.array([3, 3, 3, 3, 3, 2, 4, 4])
    codes = compress.canonical_codes(lengths)
    words = [format(int(c), f"0{n}b") for c, n in zip(codes, lengths)]
    assert words == ["010", "011", "100", "101", "110", "00", "1110", "1111"]


# ----------------------------------------------------------------------------------------------
# The relative index


def test_relative_index_is_figure_two_of_the_paper():
    # Entries at 1, 4 and 15 with 3 bits: gaps 2, 3 and 11; 11 exceeds the 8 that 3 bits hold,
    # so a filler jumps 8 and the entry follows 3 later. Stored: gap - 1.
    codes, filler = compress.relative_index(np.array([1, 4, 15]), 3)
    assert codes.tolist() == [1, 2, 7, 2] and filler.tolist() == [False, False, True, False]
    # A gap of 41 from the start: five fillers of 8, then 1.
    codes, filler = compress.relative_index(np.array([40]), 3)
    assert codes.tolist() == [7, 7, 7, 7, 7, 0] and filler.tolist() == [True] * 5 + [False]


@pytest.mark.parametrize("bits", [1, 3, 5, 8])
def test_relative_index_round_trips_with_long_gaps(bits):
    rng = np.random.default_rng(bits)
    dense = rng.random(5000) < 0.03  # gaps well beyond 2**bits for small widths
    dense[:200] = False  # a first entry far from the start
    dense[-1] = True
    positions = np.flatnonzero(dense)
    codes, filler = compress.relative_index(positions, bits)
    assert codes.max() < 2 ** bits
    assert np.array_equal(compress.absolute_positions(codes)[~filler], positions)
    assert filler.sum() == np.sum((np.diff(np.concatenate([[-1], positions])) - 1) // 2 ** bits)


# ----------------------------------------------------------------------------------------------
# Pruning


def test_sparsity_prunes_exactly_that_many_of_the_smallest():
    w = np.random.default_rng(0).normal(size=(40, 25)).astype(np.float32)
    mask = compress.prune_mask(w, sparsity=0.92)
    assert mask.sum() == 1000 - 920
    assert np.abs(w[mask]).min() > np.abs(w[~mask]).max()


def test_quality_prunes_below_quality_times_the_standard_deviation():
    # Mean 1/3; squared deviations sum to 15.833, so the standard deviation is 1.6245: with
    # quality 1 only 3.0 and -2.0 stay, with quality 0.6 (threshold 0.975) 1.5 and -1.0 too.
    w = np.array([[3.0, -1.0], [0.5, -2.0], [0.0, 1.5]], np.float32)
    assert compress.prune_mask(w, quality=1.0).tolist() == [[True, False], [False, True],
                                                            [False, False]]
    assert compress.prune_mask(w, quality=0.6).tolist() == [[True, True], [False, True],
                                                            [False, True]]


@functools.lru_cache(maxsize=None)
def _lenet5_params():
    model = jaxcnn.create_model("lenet5")
    return jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, 32, 32, 1)))["params"]


def _params():
    """LeNet-5's parameters (NumPy): five kernels, conv and fc, and their biases."""
    return jax.tree.map(np.asarray, _lenet5_params())


OPTIMIZERS = {
    "sgd_momentum_coupled_decay": lambda: optax.chain(
        optax.add_decayed_weights(5e-4), optax.sgd(0.05, momentum=0.9, nesterov=True)),
    "adamw_decoupled_decay": lambda: optax.adamw(1e-2, weight_decay=0.1),
}


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_pruned_weights_stay_exactly_zero_through_momentum_and_decay(name):
    params = _params()
    rules = {"conv": 0.5, "fc": 0.9}
    pruned_tx = optax.chain(OPTIMIZERS[name](), compress.keep_pruned(sparsity=rules))
    plain_tx = OPTIMIZERS[name]()

    def run(tx):
        @jax.jit
        def step(p, s, g):
            updates, s = tx.update(g, s, p)
            return optax.apply_updates(p, updates), s

        state, p = tx.init(params), params
        rng = np.random.default_rng(0)
        for _ in range(6):  # grads everywhere, pruned weights included: momentum builds up
            grads = jax.tree.map(lambda x: rng.normal(size=x.shape).astype(np.float32), p)
            p, state = step(p, state, grads)
        return p, state

    pruned, state = run(pruned_tx)
    plain, _ = run(plain_tx)
    masks = state[1].masks
    for layer in ("conv1", "fc1", "head"):
        mask = np.asarray(masks[layer]["kernel"])
        kernel = np.asarray(pruned[layer]["kernel"])
        expected = 0.5 if layer.startswith("conv") else 0.9
        assert np.mean(~mask) == pytest.approx(expected, abs=1 / mask.size)
        assert np.all(kernel[~mask] == 0.0)  # exactly, not nearly
        # The surviving weights move as the optimizer alone moves them.
        np.testing.assert_allclose(kernel[mask], np.asarray(plain[layer]["kernel"])[mask],
                                   rtol=1e-6, atol=1e-7)
    assert np.asarray(masks["fc1"]["bias"]).shape == ()  # biases are not pruned


def test_masks_are_made_inside_jit_and_under_eval_shape():
    params = _params()
    tx = compress.keep_pruned(sparsity=0.75)
    shapes = jax.eval_shape(tx.init, params)
    assert shapes.masks["conv2"]["kernel"].shape == (5, 5, 6, 16)
    masks = jax.jit(tx.init)(params).masks
    assert float(jnp.mean(masks["fc1"]["kernel"])) == pytest.approx(0.25, abs=1e-4)


# ----------------------------------------------------------------------------------------------
# Trained quantisation


def _lloyd(values, k, iterations=300):
    """Plain Lloyd in O(n k) per step from the linear initialisation: the reference."""
    centroids = np.linspace(values.min(), values.max(), k).astype(np.float64)
    for _ in range(iterations):
        labels = np.argmin(np.abs(values[:, None] - centroids[None]), axis=1)
        new = np.array([values[labels == j].mean() if np.any(labels == j) else centroids[j]
                        for j in range(k)])
        if np.allclose(new, centroids, rtol=0, atol=1e-12):
            break
        centroids = new
    return np.sort(centroids), labels


def test_kmeans_agrees_with_plain_lloyd():
    rng = np.random.default_rng(3)
    values = np.concatenate([rng.normal(-0.08, 0.015, 3000), rng.normal(0.09, 0.02, 2000)])
    values = values.astype(np.float32)
    centroids, labels = compress.kmeans_1d(values, 16)
    expected, _ = _lloyd(values.astype(np.float64), 16)
    np.testing.assert_allclose(centroids, expected, rtol=1e-5, atol=1e-6)
    # Every value sits with its nearest centroid.
    nearest = np.argmin(np.abs(values[:, None] - centroids[None]), axis=1)
    assert np.array_equal(centroids[labels], centroids[nearest])


def test_quantizing_a_quantized_layer_changes_nothing():
    w = np.random.default_rng(0).normal(size=(30, 20)).astype(np.float32)
    w[np.abs(w) < 0.8] = 0
    first = compress.quantize_layer(w, 3)
    quantized = first.codebook[first.indices]
    second = compress.quantize_layer(quantized, 3)
    assert np.array_equal(second.codebook[second.indices], quantized)
    assert np.all((first.indices == 0) == (w == 0))  # index 0 is the pruned weights' zero
    assert first.codebook[0] == 0 and len(first.codebook) == 8


def test_centroid_gradient_is_the_segment_sum_of_its_weights_gradients():
    rng = np.random.default_rng(1)
    indices = rng.integers(0, 8, size=(20, 30))
    codebook = jnp.asarray(rng.normal(size=8), jnp.float32)
    x = jnp.asarray(rng.normal(size=(5, 20)), jnp.float32)

    def loss_of_weights(w):
        return jnp.sum(jnp.tanh(x @ w) ** 2)

    weights = codebook[indices]
    weight_grads = np.asarray(jax.grad(loss_of_weights)(weights))
    # Autodiff of the gather (eq. 3 of the paper) ...
    through_gather = np.asarray(jax.grad(lambda c: loss_of_weights(c[indices]))(codebook))
    # ... and the explicit segment sum of each centroid's member gradients.
    explicit = np.zeros(8)
    np.add.at(explicit, indices.ravel(), weight_grads.ravel())
    np.testing.assert_allclose(through_gather, explicit, rtol=1e-5, atol=1e-6)
    ours = np.asarray(compress.centroid_gradients(jnp.asarray(weight_grads),
                                                  jnp.asarray(indices), 8))
    np.testing.assert_allclose(ours[1:], explicit[1:], rtol=1e-5, atol=1e-6)
    assert ours[0] == 0  # entry 0 is the pruned weights' zero: never trained


def test_shared_weights_step_as_sgd_on_the_centroids():
    params = _params()
    params = compress.replace_layers(params, {"fc1": np.where(
        np.abs(params["fc1"]["kernel"]) > 0.05, params["fc1"]["kernel"], 0)})
    lr = 0.01
    tx = compress.share_weights(optax.sgd(lr, momentum=0.9), {"fc1": 3})
    state = tx.init(params)
    codebook = np.asarray(state.codebooks["fc1"]["kernel"])
    indices = np.asarray(state.indices["fc1"]["kernel"])
    assert codebook.shape == (8,) and np.all((indices == 0) == (params["fc1"]["kernel"] == 0))
    assert np.asarray(state.codebooks["conv1"]["kernel"]).shape == ()  # not quantised
    grads = jax.tree.map(lambda p: np.random.default_rng(2).normal(size=p.shape), params)
    updates, state = jax.jit(tx.update)(grads, state, params)
    summed = np.zeros(8)
    np.add.at(summed, indices.ravel(), grads["fc1"]["kernel"].ravel())
    summed[0] = 0
    new_codebook = np.asarray(state.codebooks["fc1"]["kernel"])
    np.testing.assert_allclose(new_codebook, codebook - lr * summed, rtol=1e-5, atol=1e-6)
    new = optax.apply_updates(params, updates)
    kernel = np.asarray(new["fc1"]["kernel"])
    assert np.all(kernel[indices == 0] == 0.0)
    np.testing.assert_allclose(kernel, new_codebook[indices], rtol=1e-6, atol=1e-7)
    # Parameters that are not shared step as the optimizer says.
    np.testing.assert_allclose(np.asarray(new["fc1"]["bias"]),
                               params["fc1"]["bias"] - lr * grads["fc1"]["bias"], rtol=1e-6)


# ----------------------------------------------------------------------------------------------
# Settings


@pytest.mark.parametrize("bits", [0, 17, 2.5, True])
def test_bit_widths_outside_1_to_16_are_refused(bits):
    with pytest.raises(compress.CompressionError, match="from 1 to 16"):
        compress.quantize(_params(), bits)


@pytest.mark.parametrize("sparsity", [1.0, -0.1, 1.5])
def test_sparsity_outside_0_1_is_refused(sparsity):
    with pytest.raises(compress.CompressionError, match=r"in \[0, 1\)"):
        compress.magnitude_masks(_params(), sparsity={"fc": sparsity})


def test_an_unknown_layer_is_named_with_the_layers_there_are():
    with pytest.raises(compress.CompressionError, match="no layer 'fc9'.*conv1, conv2, fc1"):
        compress.per_layer({"fc9": 3}, compress.compressible_layers(_params()), "bits")


def test_layer_settings_by_name_then_kind_then_all():
    layers = compress.compressible_layers(_params())
    assert compress.per_layer({"head": 2, "fc": 5, "*": 8}, layers, "bits") == {
        "conv1": 8, "conv2": 8, "fc1": 5, "fc2": 5, "head": 2}


@pytest.mark.parametrize("arch", sorted(compress.PAPER))
def test_the_paper_tables_name_our_layers(arch):
    """Each table's layers are the network's kernels, of the sizes the paper lists (its
    #Weights column, rounded there to K or M)."""
    paper = compress.PAPER[arch]
    layers = compress.compressible_layers(jaxcnn.init_shapes(arch)["params"])
    assert list(paper.layers) == list(layers)
    # Deep Compression Tables 2-5, #Weights of the first and the largest layer.
    first_and_largest = {"lenet_300_100": (235e3, 235e3), "lenet5_caffe": (0.5e3, 400e3),
                         "alexnet_paper": (35e3, 38e6), "vgg16": (2e3, 103e6)}[arch]
    sizes = [math.prod(s) for s in layers.values()]
    assert sizes[0] == pytest.approx(first_and_largest[0], rel=0.15)
    assert max(sizes) == pytest.approx(first_and_largest[1], rel=0.03)


# ----------------------------------------------------------------------------------------------
# The file


class _SmallNet(nn.Module):
    """Conv, BatchNorm, dense: kernels to code, a bias, and BatchNorm state kept dense."""

    @nn.compact
    def __call__(self, x, *, train: bool = False):
        x = nn.Conv(8, (3, 3), name="conv")(x)
        x = nn.BatchNorm(use_running_average=not train, name="bn")(x)
        x = nn.relu(x).reshape(x.shape[0], -1)
        return nn.Dense(10, name="head")(x)


def _compressed(tmp_path):
    model = _SmallNet()
    x = jax.random.normal(jax.random.key(1), (4, 8, 8, 1))
    variables = jax.tree.map(np.asarray, jax.jit(model.init)(jax.random.key(0), x))
    variables["batch_stats"]["bn"]["mean"] = np.linspace(-1, 1, 8).astype(np.float32)
    masks = compress.magnitude_masks(variables["params"], sparsity={"conv": 0.3, "fc": 0.9})
    pruned = jax.tree.map(lambda p, m: p * m, variables["params"], masks)
    shared = compress.quantize(pruned, {"conv": 4, "fc": 3})
    quantized = {**variables, "params": compress.replace_layers(
        pruned, {n: s.codebook[s.indices] for n, s in shared.items()})}
    path = tmp_path / "small.jxdc"
    stats = compress.save(path, quantized, shared, index_bits={"conv": 4, "fc": 3},
                          meta={"arch": "small"})
    return model, x, quantized, path, stats


def test_a_network_loads_back_with_the_quantized_networks_logits(tmp_path):
    model, x, quantized, path, stats = _compressed(tmp_path)
    loaded = compress.load(path)
    assert jax.tree.structure(loaded) == jax.tree.structure(quantized)
    for a, b in zip(jax.tree.leaves(loaded), jax.tree.leaves(quantized)):
        assert a.dtype == np.float32 and np.array_equal(a, b)
    np.testing.assert_array_equal(np.asarray(model.apply(loaded, x)),
                                  np.asarray(model.apply(quantized, x)))
    # The size the report claims is the size on disk, every byte accounted for.
    assert os.path.getsize(path) == stats.file_bytes == (
        stats.header_bytes + stats.dense_bytes + sum(layer.bytes for layer in stats.layers))
    assert stats.meta == {"arch": "small"}
    head = {layer.name: layer for layer in stats.layers}["head"]
    assert head.kept == round(0.1 * 512 * 10) and head.weight_bits == 3 and head.index_bits == 3
    assert stats.dense_values == 8 + 10 + 4 * 8  # biases, BatchNorm scale/bias/mean/var


def test_the_table_shows_every_layer_and_the_file(tmp_path):
    *_, stats = _compressed(tmp_path)
    table = compress.format_table(stats)
    assert "conv" in table and "head" in table and f"{stats.file_bytes:,} bytes" in table
    rows = compress.table_rows(stats)
    assert [r["layer"] for r in rows] == ["conv", "head", "total"]


@pytest.mark.parametrize("damage", ["truncate", "flip", "extend", "magic"])
def test_a_damaged_file_is_refused_with_what_is_wrong(tmp_path, damage):
    *_, path, _ = _compressed(tmp_path)
    data = bytearray(path.read_bytes())
    if damage == "truncate":
        data = data[:len(data) // 2]
    elif damage == "flip":
        data[len(data) // 2] ^= 0x10
    elif damage == "extend":
        data += b"\0"
    else:
        data[:4] = b"PK\x03\x04"
    path.write_bytes(bytes(data))
    message = {"truncate": "truncated", "flip": "corrupt", "extend": "extra bytes",
               "magic": "not a jaxcnn compressed"}[damage]
    with pytest.raises(compress.CompressedFileError, match=message):
        compress.load(path)


def test_inspect_prints_the_table_and_refuses_a_bad_file(tmp_path, capsys):
    *_, path, stats = _compressed(tmp_path)
    assert compress.main(["inspect", str(path)]) == 0
    assert f"{stats.file_bytes:,} bytes" in capsys.readouterr().out
    path.write_bytes(path.read_bytes()[:-3])
    assert compress.main(["inspect", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "truncated" in err and len(err.splitlines()) == 1


def test_the_paper_pipeline_at_small_scale(tmp_path):
    """compress_at_scale on the paper's LeNet-5 (random weights): the file decodes exactly and
    lands near the paper's size, which its P+Q column matches (Table 3: 3.05%)."""
    result = compress.compress_at_scale("lenet5_caffe", str(tmp_path), dense_kmeans=False,
                                        print_fn=lambda *_: None)
    assert result["decoded_exactly"]
    total = result["layers"][-1]
    assert total["kept_fraction"] == pytest.approx(0.084, abs=0.002)  # the paper's 8%
    assert total["rate_quantized"] == pytest.approx(0.0305, rel=0.05)
    assert result["ratio"] > 30
