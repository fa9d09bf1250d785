"""Deep Compression: pruning, trained quantisation and Huffman coding of any registered network.

S. Han, H. Mao, W. J. Dally, "Deep Compression: Compressing Deep Neural Networks with Pruning,
Trained Quantization and Huffman Coding", ICLR 2016 (and S. Han et al., "Learning both Weights
and Connections for Efficient Neural Networks", NIPS 2015, for the pruning).

The layers compressed are the kernels (every parameter of rank 2 or more: convolutions ``conv``,
dense layers ``fc``); biases, BatchNorm parameters and statistics stay dense float32, as in the
paper, and their bytes are counted in the file. A layer is named by its parameter path without
the final ``kernel`` (``conv1``, ``block3_conv2/conv``, ``head``).

1. **Pruning** (:func:`magnitude_masks`): per layer, the weights of smallest magnitude go, either
   a target fraction of them (``sparsity``, exact by rank) or those below ``quality`` times the
   standard deviation of the layer's weights (Han et al. 2015's rule). :func:`keep_pruned` is
   the Optax transformation that holds the masks in the optimizer state (so they are
   checkpointed and placed with it) and, last in the chain, turns the update of every pruned
   weight into ``-w``: the weight is exactly zero after every step, whatever momentum or
   (coupled or decoupled) weight decay computed for it.
2. **Trained quantisation** (:func:`quantize`, :func:`share_weights`): per layer, 1-D k-means
   over the surviving weights, centroids initialised linearly between the weights' min and max
   (the paper's best, sec. 3.2), ``2**bits - 1`` of them: index 0 of every codebook is the
   literal zero of the pruned weights and of the relative index's fillers. The network's weights
   are then ``codebook[indices]``; :func:`share_weights` wraps the trainer's optimizer so that
   it steps the codebooks, each centroid with the sum of its weights' gradients (eq. 3, the
   gradient of the gather), and keeps the indices and codebooks in its state.
3. **Huffman coding** (:func:`save`): the non-zero weights are stored in the paper's CSR with
   *relative* indices (fig. 2): each entry's gap to the previous one in ``index_bits``, with a
   filler entry (weight index 0) wherever a gap exceeds ``2**index_bits``. Both the weight-index
   stream and the gap stream are Huffman coded (canonical codes, at most 24 bits long), or
   stored at fixed width where that is smaller (tiny layers, whose code table would cost more
   than it saves).

The file (:func:`save`, :func:`load`, :func:`read`) accounts for every byte: a 17-byte header
(magic, version, payload length, CRC-32 of the payload), a JSON line of metadata, then one
record per variable: its path and shape, and either float32 data or the layer's codebook (the
centroids it uses, float32), its two streams and their code tables. Decoding gives back exactly
the quantised weights; a truncated or altered file fails its length or checksum test with a
:class:`CompressedFileError` that says so.

``python -m jaxcnn.compress inspect FILE`` prints a file's per-layer table;
``python -m jaxcnn.compress scale`` prunes, quantises and codes AlexNet and VGG-16 (random
weights, no retraining) at the paper's rates and reports their sizes and the k-means time.
The retraining stages need the trainer: ``python -m train.compress``.
"""

from __future__ import annotations

import argparse
import dataclasses
import heapq
import json
import math
import os
import struct
import sys
import time
import zlib
from typing import Any, Callable, Iterable, Mapping, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxcnn.summary import init_shapes

MAX_BITS = 16
MAX_CODE_LENGTH = 24  # Huffman codes are limited to this length (read through 32-bit windows)
DEFAULT_BITS = {"conv": 8, "fc": 5}  # sec. 3: 256 shared weights per conv layer, 32 per fc
DEFAULT_INDEX_BITS = {"conv": 8, "fc": 5}  # sec. 2: relative index in 8 bits (conv), 5 (fc)


class CompressionError(ValueError):
    """A compression setting that cannot work (bit width, sparsity, layer name)."""


class CompressedFileError(ValueError):
    """A file that is not a complete, intact jaxcnn compressed network."""


# ----------------------------------------------------------------------------------------------
# Layers and per-layer settings


def layer_name(path: tuple[str, ...]) -> str:
    """``("fc1", "kernel")`` -> ``"fc1"``: the layer a kernel belongs to."""
    return "/".join(path[:-1] if path[-1] == "kernel" and len(path) > 1 else path)


def _keys(path) -> tuple[str, ...]:
    return tuple(str(getattr(k, "key", getattr(k, "name", k))) for k in path)


def layer_kind(shape: tuple[int, ...]) -> str:
    """``"fc"`` for a dense kernel (rank 2), ``"conv"`` for a convolution's (rank 3 or 4)."""
    return "fc" if len(shape) == 2 else "conv"


def compressible_layers(params: Any) -> dict[str, tuple[int, ...]]:
    """Layer name -> kernel shape, in the order of the parameter tree: every parameter of rank 2
    or more (the arrays the trainer's weight decay applies to)."""
    return {name: tuple(kernel.shape) for name, kernel in kernels(params).items()}


def kernels(params: Any) -> dict[str, Any]:
    """Layer name -> kernel, for every compressible layer of ``params``."""
    return {layer_name(_keys(path)): leaf
            for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]
            if len(leaf.shape) >= 2}


def per_layer(spec: Any, layers: Mapping[str, tuple[int, ...]], what: str) -> dict[str, Any]:
    """A setting for every layer from ``spec``: one value for all, or a mapping whose keys are
    layer names, ``"conv"``, ``"fc"`` or ``"*"`` (a layer's own name wins over its kind, its kind
    over ``"*"``). A layer the mapping does not reach is left out."""
    if not isinstance(spec, Mapping):
        return {name: spec for name in layers}
    unknown = sorted(set(spec) - set(layers) - {"conv", "fc", "*"})
    if unknown:
        raise CompressionError(
            f"{what}: the network has no layer {', '.join(map(repr, unknown))}; its layers are "
            f"{', '.join(layers)} (or say conv, fc or *).")
    out = {}
    for name, shape in layers.items():
        for key in (name, layer_kind(shape), "*"):
            if key in spec:
                out[name] = spec[key]
                break
    return out


def check_bits(bits: Mapping[str, int], what: str = "bits") -> None:
    """Raises :class:`CompressionError` unless every width is a whole number of 1 to 16."""
    for name, b in bits.items():
        if isinstance(b, bool) or not isinstance(b, (int, np.integer)) or not 1 <= b <= MAX_BITS:
            raise CompressionError(f"{what} of {name} must be a whole number from 1 to "
                                   f"{MAX_BITS}; got {b!r}.")


def check_fractions(values: Mapping[str, float], what: str = "sparsity") -> None:
    """Raises :class:`CompressionError` unless every fraction is in [0, 1)."""
    for name, s in values.items():
        if not (isinstance(s, (int, float, np.floating)) and 0 <= s < 1):
            raise CompressionError(f"{what} of {name} must be in [0, 1) (the fraction of its "
                                   f"weights removed); got {s!r}.")


class PaperRow(NamedTuple):
    """A row of the paper's Tables 2-5: the layer's name there, the fraction of its weights
    kept, weight bits after quantisation (P+Q) and Huffman coding (P+Q+H), index bits likewise,
    and its size after P+Q and P+Q+H over its dense size."""

    name: str
    kept: float
    weight_bits: int
    coded_weight_bits: float
    index_bits: int
    coded_index_bits: float
    rate_quantized: float
    rate_coded: float


@dataclasses.dataclass(frozen=True)
class PaperTable:
    """One of the paper's per-layer tables, by our layer names, with its total row and the
    network's sizes (MB) and compression of its Table 1."""

    table: str
    layers: dict[str, PaperRow]
    total: PaperRow
    dense_mb: float
    compressed_mb: float
    ratio: float

    @property
    def sparsity(self) -> dict[str, float]:
        return {name: round(1.0 - row.kept, 4) for name, row in self.layers.items()}

    def rows_rate(self, weights: Mapping[str, int]) -> float:
        """The P+Q+H rate the table's rows add up to over layers of these sizes (Table 3's
        rows give 2.73%, its total row says 2.55%)."""
        return (sum(row.rate_coded * weights[name] for name, row in self.layers.items())
                / sum(weights[name] for name in self.layers))

    @property
    def bits(self) -> dict[str, int]:
        return {name: row.weight_bits for name, row in self.layers.items()}

    @property
    def index_bits(self) -> dict[str, int]:
        return {name: row.index_bits for name, row in self.layers.items()}


def _rows(names: list[str], rows: str) -> dict[str, PaperRow]:
    """Our layer names and the paper's rows, typed as printed: name, kept %, weight bits P+Q
    and P+Q+H, index bits P+Q and P+Q+H, rate P+Q and P+Q+H (%)."""
    out = {}
    for ours, line in zip(names, rows.strip().splitlines(), strict=True):
        name, kept, wb, cwb, ib, cib, rq, rc = line.split()
        out[ours] = PaperRow(name, float(kept) / 100, int(wb), float(cwb), int(ib), float(cib),
                             float(rq) / 100, float(rc) / 100)
    return out


_VGG16 = [f"block{b}_conv{c}/conv" for b, n in ((1, 2), (2, 2), (3, 3), (4, 3), (5, 3))
          for c in range(1, n + 1)] + ["fc1", "fc2", "head"]
DC = "Han, Mao & Dally 2016, Deep Compression"
PAPER: dict[str, PaperTable] = {
    "lenet_300_100": PaperTable(f"{DC}, Table 2", _rows(["fc1", "fc2", "head"], """
        ip1 8 6 4.4 5 3.7 3.1 2.32
        ip2 9 6 4.4 5 4.3 3.8 3.04
        ip3 26 6 4.3 5 3.2 15.7 12.70"""),
        PaperRow("total", .08, 6, 5.1, 5, 3.7, .031, .0249), 1.070, 0.027, 40),
    "lenet5_caffe": PaperTable(f"{DC}, Table 3", _rows(["conv1", "conv2", "fc1", "head"], """
        conv1 66 8 7.2 5 1.5 78.5 67.45
        conv2 12 8 7.2 5 3.9 6.0 5.28
        ip1 8 5 4.5 5 4.5 2.7 2.45
        ip2 19 5 5.2 5 3.7 6.9 6.13"""),
        PaperRow("total", .08, 5.3, 4.1, 5, 4.4, .0305, .0255), 1.720, 0.044, 39),
    "alexnet_paper": PaperTable(f"{DC}, Table 4", _rows(
        ["conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7", "head"], """
        conv1 84 8 6.3 4 1.2 32.6 20.53
        conv2 38 8 5.5 4 2.3 14.5 9.43
        conv3 35 8 5.1 4 2.6 13.1 8.44
        conv4 37 8 5.2 4 2.5 14.1 9.11
        conv5 37 8 5.6 4 2.5 14.0 9.43
        fc6 9 5 3.9 4 3.2 3.0 2.39
        fc7 9 5 3.6 4 3.7 3.0 2.46
        fc8 25 5 4 4 3.2 7.3 5.85"""),
        PaperRow("total", .11, 5.4, 4, 4, 3.2, .037, .0288), 240, 6.9, 35),
    "vgg16": PaperTable(f"{DC}, Table 5", _rows(_VGG16, """
        conv1_1 58 8 6.8 5 1.7 40.0 29.97
        conv1_2 22 8 6.5 5 2.6 9.8 6.99
        conv2_1 34 8 5.6 5 2.4 14.3 8.91
        conv2_2 36 8 5.9 5 2.3 14.7 9.31
        conv3_1 53 8 4.8 5 1.8 21.7 11.15
        conv3_2 24 8 4.6 5 2.9 9.7 5.67
        conv3_3 42 8 4.6 5 2.2 17.0 8.96
        conv4_1 32 8 4.6 5 2.6 13.1 7.29
        conv4_2 27 8 4.2 5 2.9 10.9 5.93
        conv4_3 34 8 4.4 5 2.5 14.0 7.47
        conv5_1 35 8 4.7 5 2.5 14.3 8.00
        conv5_2 29 8 4.6 5 2.7 11.7 6.52
        conv5_3 36 8 4.6 5 2.3 14.8 7.79
        fc6 4 5 3.6 5 3.5 1.6 1.10
        fc7 4 5 4 5 4.3 1.5 1.25
        fc8 23 5 4 5 3.4 7.1 5.24"""),
        PaperRow("total", .075, 6.4, 4.1, 5, 3.1, .032, .0205), 552, 11.3, 49),
}
"""The networks of the paper's tables, by our variant name (Caffe's AlexNet, with its two
groups, is ``alexnet_paper``; the paper's LeNet-5 is Caffe's, ``lenet5_caffe``)."""


# ----------------------------------------------------------------------------------------------
# Pruning


def prune_mask(weights: np.ndarray, *, sparsity: float | None = None,
               quality: float | None = None) -> np.ndarray:
    """True for the weights that stay. ``sparsity``: exactly ``round(sparsity * n)`` weights of
    smallest magnitude go (ties broken by position); ``quality``: those with ``|w| <= quality *
    std(w)``, the standard deviation taken over the whole layer, zeros included."""
    signed = np.asarray(weights, np.float32).ravel()
    w = np.abs(signed)
    if sparsity is not None:
        check_fractions({"the layer": sparsity})
        drop = int(round(sparsity * w.size))
        keep = np.ones(w.size, bool)
        if drop:
            keep[np.argpartition(w, drop - 1, kind="introselect")[:drop]] = False
        return keep.reshape(np.shape(weights))
    if quality is None or quality < 0:
        raise CompressionError(f"pruning needs a sparsity in [0, 1) or a quality >= 0; got "
                               f"sparsity={sparsity!r}, quality={quality!r}.")
    return (w > quality * float(np.std(signed, dtype=np.float64))).reshape(np.shape(weights))


def map_layers(fn: Callable[..., Any], tree: Any, *others: Any) -> Any:
    """``fn(layer, leaf, *leaves of others)`` over the leaves of ``tree``: ``layer`` is the
    name of a compressible layer's kernel (rank 2 or more), ``None`` for any other leaf.
    ``others`` are trees with ``tree``'s structure (their leaves may have other shapes)."""
    leaves, treedef = jax.tree_util.tree_flatten_with_path(tree)
    flat_others = [treedef.flatten_up_to(other) for other in others]
    return treedef.unflatten([
        fn(layer_name(_keys(path)) if len(leaf.shape) >= 2 else None, leaf,
           *(other[i] for other in flat_others))
        for i, (path, leaf) in enumerate(leaves)])


def magnitude_masks(params: Any, *, sparsity: Mapping[str, float] | float | None = None,
                    quality: Mapping[str, float] | float | None = None) -> Any:
    """A tree like ``params`` of bool masks (True: the weight stays) for the layers that
    ``sparsity`` or ``quality`` (see :func:`per_layer`) reach; every other leaf gets a scalar
    True."""
    layers = compressible_layers(params)
    rates = per_layer(sparsity, layers, "sparsity") if sparsity is not None else {}
    qualities = per_layer(quality, layers, "quality") if quality is not None else {}
    check_fractions(rates)

    def mask(name: str | None, p: Any) -> np.ndarray:
        if name in rates:
            return prune_mask(np.asarray(p), sparsity=rates[name])
        if name in qualities:
            return prune_mask(np.asarray(p), quality=qualities[name])
        return np.ones((), bool)

    return map_layers(mask, params)


class PruneState(NamedTuple):
    """The pruning masks: a tree like the parameters (scalar True where nothing is pruned)."""

    masks: Any


def keep_pruned(sparsity: Mapping[str, float] | float | None = None,
                quality: Mapping[str, float] | float | None = None
                ) -> optax.GradientTransformation:
    """Prunes the weights it is initialised with (:func:`magnitude_masks`) and keeps them
    pruned: chain it *last*, after the optimizer. Its update of a pruned weight is ``-w``, so
    ``w + update`` is exactly 0.0, at the first step (which prunes) and at every later one;
    updates of the surviving weights pass unchanged.

    The masks are computed on the host (exact ranks, as for a 100M-weight layer) through
    ``jax.pure_callback``, so ``init`` also runs inside ``jit`` and under ``eval_shape``.
    """
    if sparsity is None and quality is None:
        raise CompressionError("keep_pruned needs a sparsity or a quality.")

    def host_masks(params):
        return magnitude_masks(params, sparsity=sparsity, quality=quality)

    def init(params):
        reached = set(per_layer(sparsity if sparsity is not None else quality,
                                compressible_layers(params), "pruning"))
        shapes = map_layers(lambda name, p: jax.ShapeDtypeStruct(
            p.shape if name in reached else (), jnp.bool_), params)
        return PruneState(jax.pure_callback(host_masks, shapes, params))

    def update(updates, state, params=None):
        if params is None:
            raise ValueError("keep_pruned needs the parameters: call update(g, s, params).")
        updates = jax.tree.map(lambda u, m, p: jnp.where(m, u, -p).astype(u.dtype),
                               updates, state.masks, params)
        return updates, state

    return optax.GradientTransformation(init, update)


# ----------------------------------------------------------------------------------------------
# Trained quantisation


class Shared(NamedTuple):
    """A quantised layer: its weights are ``codebook[indices]``. ``codebook[0]`` is the zero of
    the pruned weights; the other ``2**bits - 1`` entries are the shared weights."""

    codebook: np.ndarray  # (2**bits,) float32
    indices: np.ndarray  # the kernel's shape, int32


def kmeans_1d(values: np.ndarray, clusters: int, *, max_iter: int = 2000
              ) -> tuple[np.ndarray, np.ndarray]:
    """Lloyd's k-means in one dimension with linear initialisation: ``(centroids, labels)``,
    the centroids sorted, float32.

    The values are sorted once; then every cluster is a run of the sorted values between two
    midpoints of consecutive centroids, found by binary search, and its sum comes from float64
    prefix sums, so that a Lloyd step costs O(k log n) rather than O(n k) (Lloyd may need
    hundreds of steps). A centroid left with no member keeps its place. Stops when no boundary
    moves, or after ``max_iter`` steps."""
    values = np.asarray(values, np.float32).ravel()
    if values.size == 0:
        return np.zeros(clusters, np.float32), np.zeros(0, np.int32)
    ordered = np.sort(values)
    distinct = ordered[np.concatenate([[True], ordered[1:] != ordered[:-1]])]
    if distinct.size <= clusters:
        # Already shared (a quantised layer, quantised again): the values are the optimum;
        # Lloyd from a linear start might merge two of them.
        centroids = np.concatenate([distinct, np.repeat(distinct[-1:], clusters - distinct.size)])
        return centroids, np.searchsorted(distinct, values).astype(np.int32)
    prefix = np.concatenate([[0.0], np.cumsum(ordered, dtype=np.float64)])
    centroids = np.linspace(float(ordered[0]), float(ordered[-1]), clusters)
    bounds = None
    for _ in range(max_iter):
        midpoints = ((centroids[1:] + centroids[:-1]) / 2).astype(np.float32)
        new_bounds = np.concatenate([[0], np.searchsorted(ordered, midpoints, side="right"),
                                     [ordered.size]])
        if bounds is not None and np.array_equal(new_bounds, bounds):
            break
        bounds = new_bounds
        counts = np.diff(bounds)
        sums = prefix[bounds[1:]] - prefix[bounds[:-1]]
        centroids = np.sort(np.where(counts > 0, sums / np.maximum(counts, 1), centroids))
    centroids = centroids.astype(np.float32)
    midpoints = ((centroids[1:].astype(np.float64) + centroids[:-1]) / 2).astype(np.float32)
    return centroids, np.searchsorted(midpoints, values, side="right").astype(np.int32)


def quantize_layer(weights: np.ndarray, bits: int) -> Shared:
    """k-means of the non-zero weights of one layer into ``2**bits - 1`` shared weights."""
    check_bits({"the layer": bits})
    weights = np.asarray(weights, np.float32)
    flat = weights.ravel()
    alive = np.flatnonzero(flat)
    centroids, labels = kmeans_1d(flat[alive], 2 ** bits - 1)
    indices = np.zeros(flat.size, np.int32)
    indices[alive] = labels + 1
    return Shared(np.concatenate([[0.0], centroids]).astype(np.float32),
                  indices.reshape(weights.shape))


def quantize(params: Any, bits: Mapping[str, int] | int,
             progress: Callable[[Iterable], Iterable] = lambda it: it) -> dict[str, Shared]:
    """Every layer that ``bits`` reaches (:func:`per_layer`), quantised: layer name -> Shared.
    ``progress`` wraps the iteration over the layers (a tqdm, for big networks)."""
    layers = kernels(params)
    widths = per_layer(bits, compressible_layers(params), "bits")
    check_bits(widths)
    return {name: quantize_layer(np.asarray(layers[name]), b)
            for name, b in progress(list(widths.items()))}


def centroid_gradients(grads: jax.Array, indices: jax.Array, size: int) -> jax.Array:
    """Each shared weight's gradient, the sum of its weights' gradients (eq. 3); entry 0 (the
    pruned weights' zero) gets none."""
    summed = jax.ops.segment_sum(grads.ravel(), indices.ravel(), num_segments=size)
    return summed.at[0].set(0.0)


def replace_layers(params: Any, layers: Mapping[str, Any]) -> Any:
    """``params`` with the kernels of ``layers`` (layer name -> array) replaced."""
    return map_layers(lambda name, p: layers.get(name, p) if name else p, params)


class SharedState(NamedTuple):
    """Trees like the parameters: the codebooks and indices of the quantised layers (scalars
    elsewhere), and the wrapped optimizer's state over the compact tree (codebooks in place of
    the quantised kernels)."""

    codebooks: Any
    indices: Any
    inner: Any


def shared_layers(params: Any, state: SharedState) -> dict[str, Shared]:
    """The quantised layers a :func:`share_weights` state holds, by layer name (NumPy)."""
    found = {}

    def collect(name: str | None, p: Any, codebook: Any, indices: Any) -> Any:
        if name is not None and np.ndim(indices):
            found[name] = Shared(np.asarray(codebook), np.asarray(indices))
        return p

    map_layers(collect, params, state.codebooks, state.indices)
    return found


def share_weights(inner: optax.GradientTransformation, bits: Mapping[str, int] | int
                  ) -> optax.GradientTransformation:
    """Trained quantisation around an optimizer (sec. 3.3, fig. 3).

    ``init`` quantises the parameters it is given (:func:`quantize`: k-means over the non-zero
    weights of every layer ``bits`` reaches). Each ``update`` hands ``inner`` the compact tree:
    for a quantised layer its codebook, with each centroid's gradient the sum of its weights'
    gradients (:func:`centroid_gradients`); other parameters (biases, BatchNorm) as they are. The
    centroids step as ``inner`` says (momentum, Adam and the rest act on them as on any
    parameter; weight decay skips them, being 1-D), and the update of each weight takes it to
    its centroid's new value: the network stays ``codebook[indices]``, pruned weights zero.
    """
    def widths_of(params):
        return per_layer(bits, compressible_layers(params), "bits")

    def host_quantize(params):
        shared = quantize(params, bits)
        return (map_layers(lambda n, p: shared[n].codebook if n in shared
                           else np.zeros((), np.float32), params),
                map_layers(lambda n, p: shared[n].indices if n in shared
                           else np.zeros((), np.int32), params))

    def compact(params, codebooks, widths):
        return map_layers(lambda n, p, c: c if n in widths else p, params, codebooks)

    def init(params):
        widths = widths_of(params)
        check_bits(widths)
        shapes = (map_layers(lambda n, p: jax.ShapeDtypeStruct(
                      (2 ** widths[n],) if n in widths else (), jnp.float32), params),
                  map_layers(lambda n, p: jax.ShapeDtypeStruct(
                      p.shape if n in widths else (), jnp.int32), params))
        codebooks, indices = jax.pure_callback(host_quantize, shapes, params)
        return SharedState(codebooks, indices, inner.init(compact(params, codebooks, widths)))

    def update(grads, state, params=None):
        if params is None:
            raise ValueError("share_weights needs the parameters: call update(g, s, params).")
        widths = widths_of(params)
        compact_grads = map_layers(
            lambda n, g, c, i: centroid_gradients(g, i, c.shape[0]) if n in widths else g,
            grads, state.codebooks, state.indices)
        steps, inner_state = inner.update(compact_grads, state.inner,
                                          compact(params, state.codebooks, widths))
        codebooks = map_layers(lambda n, p, c, s: (c + s).at[0].set(0.0) if n in widths else c,
                               params, state.codebooks, steps)
        updates = map_layers(lambda n, p, s, c, i: c[i] - p if n in widths else s,
                             params, steps, codebooks, state.indices)
        return updates, SharedState(codebooks, state.indices, inner_state)

    return optax.GradientTransformation(init, update)



# ----------------------------------------------------------------------------------------------
# Huffman coding and bit streams


def huffman_lengths(counts: np.ndarray, limit: int = MAX_CODE_LENGTH) -> np.ndarray:
    """The code length of every symbol (0 for a symbol that never occurs) of a Huffman code
    for ``counts``; a lone symbol gets 1 bit. Were a code longer than ``limit`` (only for
    counts as skewed as the Fibonacci numbers), the counts are halved and the code rebuilt
    until none is: the zlib way out, optimal unless it was needed."""
    counts = np.asarray(counts, np.int64)
    lengths = np.zeros(counts.size, np.int64)
    present = np.flatnonzero(counts)
    if present.size == 1:
        lengths[present] = 1
    if present.size < 2:
        return lengths
    weights = counts[present].copy()
    while True:
        # Each heap entry: (weight, tie-breaker, symbols below it); merging deepens them all.
        heap = [(int(w), i, [i]) for i, w in enumerate(weights)]
        heapq.heapify(heap)
        depth = np.zeros(present.size, np.int64)
        tie = present.size
        while len(heap) > 1:
            w1, _, a = heapq.heappop(heap)
            w2, _, b = heapq.heappop(heap)
            depth[a] += 1
            depth[b] += 1
            heapq.heappush(heap, (w1 + w2, tie, a + b))
            tie += 1
        if depth.max() <= limit:
            lengths[present] = depth
            return lengths
        weights = (weights + 1) // 2


def canonical_codes(lengths: np.ndarray) -> np.ndarray:
    """The canonical prefix code of the given lengths (DEFLATE's rule: shorter codes first,
    ties by symbol): symbol -> code, right-aligned in a uint32."""
    lengths = np.asarray(lengths, np.int64)
    codes = np.zeros(lengths.size, np.uint32)
    code, previous = 0, 0
    for symbol in sorted(np.flatnonzero(lengths), key=lambda s: (lengths[s], s)):
        code <<= int(lengths[symbol]) - previous
        previous = int(lengths[symbol])
        codes[symbol] = code
        code += 1
    return codes


def pack_bits(values: np.ndarray, widths: np.ndarray | int) -> bytes:
    """The ``widths[i]`` low bits of each ``values[i]``, most significant first, concatenated
    and zero-padded to whole bytes. Widths up to 32."""
    values = np.asarray(values, np.uint64).ravel()
    widths = np.broadcast_to(np.asarray(widths, np.int64), values.shape)
    pieces = []
    for start in range(0, values.size, 1 << 20):  # 32 MB of bits at a time
        v, w = values[start:start + (1 << 20)], widths[start:start + (1 << 20)]
        aligned = ((v << (32 - w).astype(np.uint64)) & 0xFFFFFFFF).astype(">u4")
        bits = np.unpackbits(aligned.view(np.uint8).reshape(-1, 4), axis=1)
        pieces.append(bits[np.arange(32) < w[:, None]])
    return np.packbits(np.concatenate(pieces) if pieces else np.zeros(0, np.uint8)).tobytes()


def read_bits(buffer: np.ndarray, positions: np.ndarray, width: int) -> np.ndarray:
    """The ``width``-bit numbers (``width`` <= 25) that start at the bit ``positions`` of
    ``buffer`` (uint8, followed by at least 4 padding bytes)."""
    byte = positions >> 3
    word = ((buffer[byte].astype(np.uint64) << 24) | (buffer[byte + 1].astype(np.uint64) << 16)
            | (buffer[byte + 2].astype(np.uint64) << 8) | buffer[byte + 3].astype(np.uint64))
    word = (word << (positions & 7).astype(np.uint64)) & 0xFFFFFFFF
    return (word >> np.uint64(32 - width)).astype(np.int64)


CHUNK = 4096
"""Symbols per independently decodable chunk of a Huffman stream: the file stores where each
chunk starts, so that all chunks decode side by side (one vectorised step per symbol of a
chunk, not one Python step per symbol of the stream)."""


def huffman_encode(symbols: np.ndarray, lengths: np.ndarray) -> tuple[bytes, np.ndarray]:
    """The bit stream of ``symbols`` and the length in bits of each chunk of :data:`CHUNK`."""
    symbols = np.asarray(symbols, np.int64)
    widths = np.asarray(lengths, np.int64)[symbols]
    ends = np.cumsum(widths)
    chunk_ends = ends[np.minimum(np.arange(CHUNK, symbols.size + CHUNK, CHUNK), symbols.size) - 1]
    chunk_bits = np.diff(np.concatenate([[0], chunk_ends])) if symbols.size else np.zeros(0)
    return pack_bits(canonical_codes(lengths)[symbols], widths), chunk_bits.astype(np.int64)


def huffman_decode(data: bytes, count: int, lengths: np.ndarray, chunk_bits: np.ndarray
                   ) -> np.ndarray:
    """The ``count`` symbols of a :func:`huffman_encode` stream."""
    if count == 0:
        return np.zeros(0, np.int64)
    lengths = np.asarray(lengths, np.int64)
    order = sorted(np.flatnonzero(lengths), key=lambda s: (lengths[s], s))
    order_lengths = lengths[order]
    window = int(order_lengths.max())
    # Canonical codes, left-aligned to the window, increase in code order: a binary search of
    # the next ``window`` bits finds the code that starts there.
    starts = (canonical_codes(lengths)[order].astype(np.int64) << (window - order_lengths))
    buffer = np.frombuffer(data + b"\0" * 8, np.uint8)
    position = np.concatenate([[0], np.cumsum(chunk_bits)[:-1]]).astype(np.int64)
    end = int(np.sum(chunk_bits))
    out = np.empty((position.size, CHUNK), np.int64)
    order, order_lengths = np.asarray(order), np.asarray(order_lengths)
    for step in range(min(CHUNK, count)):
        code = np.searchsorted(starts, read_bits(buffer, position, window), side="right") - 1
        out[:, step] = order[code]
        position = np.minimum(position + order_lengths[code], end)
    return out.ravel()[:count]


def relative_index(positions: np.ndarray, index_bits: int) -> tuple[np.ndarray, np.ndarray]:
    """The paper's relative index (fig. 2) of the sorted flat ``positions`` of the non-zero
    weights: per entry, its gap to the previous entry minus 1 (the first gap counts from -1),
    each in ``index_bits``; where a gap exceeds ``2**index_bits``, filler entries each jump the
    whole range first. Returns ``(gap codes, filler)``, ``filler`` True for the fillers."""
    span = 1 << index_bits
    gaps = np.diff(np.concatenate([[-1], np.asarray(positions, np.int64)]))
    fillers = (gaps - 1) // span
    entry_of = np.repeat(np.arange(gaps.size), fillers + 1)  # each filler precedes its entry
    is_last = np.concatenate([entry_of[1:] != entry_of[:-1], [True]]) if entry_of.size else \
        np.zeros(0, bool)
    codes = np.where(is_last, (gaps - fillers * span)[entry_of] - 1, span - 1)
    return codes.astype(np.int64), ~is_last


def absolute_positions(codes: np.ndarray) -> np.ndarray:
    """The flat position of every entry (fillers included) of a relative index."""
    return np.cumsum(np.asarray(codes, np.int64) + 1) - 1


# ----------------------------------------------------------------------------------------------
# The compressed file

MAGIC = b"JXDC"
VERSION = 1
_HEADER = struct.Struct("<4sBQI")  # magic, version, payload bytes, CRC-32 of the payload
FIXED, HUFFMAN = 0, 1


def _width(values: int) -> int:
    """Bits that hold the numbers 0 .. values - 1 (at least 1)."""
    return max(1, int(values - 1).bit_length())


def _stream(symbols: np.ndarray, alphabet: int) -> tuple[bytes, int]:
    """A symbol stream as stored, Huffman coded or at fixed width, whichever is smaller, and its
    data bits (the table excluded)."""
    width = _width(alphabet)
    fixed = bytes([FIXED]) + pack_bits(symbols, width)
    lengths = huffman_lengths(np.bincount(symbols, minlength=alphabet))
    data, chunk_bits = huffman_encode(symbols, lengths)
    length_width = _width(int(lengths.max(initial=0)) + 1)
    chunk_width = _width(int(chunk_bits.max(initial=0)) + 1)
    coded = (bytes([HUFFMAN, length_width]) + pack_bits(lengths, length_width)
             + bytes([chunk_width]) + pack_bits(chunk_bits, chunk_width) + data)
    if len(coded) < len(fixed):
        return coded, int(chunk_bits.sum())
    return fixed, symbols.size * width


class _Reader:
    """Reads the payload front to back; running past its end means a malformed file."""

    def __init__(self, data: bytes, path: str):
        self.data, self.at, self.path = data, 0, path

    def take(self, n: int) -> bytes:
        if n < 0 or self.at + n > len(self.data):
            raise CompressedFileError(f"{self.path}: malformed (a record runs past the end of "
                                      f"the payload); the file was not written by "
                                      f"jaxcnn.compress.save or is damaged.")
        self.at += n
        return self.data[self.at - n:self.at]

    def number(self, fmt: str) -> int:
        return struct.unpack("<" + fmt, self.take(struct.calcsize(fmt)))[0]

    def stream(self, count: int, alphabet: int) -> tuple[np.ndarray, int]:
        coding = self.number("B")
        if coding == FIXED:
            width = _width(alphabet)
            buffer = np.frombuffer(self.take(-(-count * width // 8)) + b"\0" * 8, np.uint8)
            return read_bits(buffer, np.arange(count, dtype=np.int64) * width, width), count * width
        if coding != HUFFMAN:
            raise CompressedFileError(f"{self.path}: malformed (unknown stream coding {coding}).")
        length_width = self.number("B")
        lengths = self._packed(alphabet, length_width)
        chunk_width = self.number("B")
        chunk_bits = self._packed(-(-count // CHUNK), chunk_width)
        bits = int(chunk_bits.sum())
        return huffman_decode(self.take(-(-bits // 8)), count, lengths, chunk_bits), bits

    def _packed(self, count: int, width: int) -> np.ndarray:
        buffer = np.frombuffer(self.take(-(-count * width // 8)) + b"\0" * 8, np.uint8)
        return read_bits(buffer, np.arange(count, dtype=np.int64) * width, width)


@dataclasses.dataclass(frozen=True)
class LayerStats:
    """One quantised layer as stored: what the paper's per-layer table reports."""

    name: str
    shape: tuple[int, ...]
    weight_bits: int  # bits of an index into the codebook before Huffman coding (P+Q)
    index_bits: int  # bits of a relative index before Huffman coding (P+Q)
    kept: int  # non-zero weights
    entries: int  # stored entries: the non-zero weights and the fillers
    weight_stream_bits: int  # the coded weight indices (their code table excluded)
    index_stream_bits: int  # the coded relative indices (their code table excluded)
    bytes: int  # the layer's record in the file, everything included

    @property
    def weights(self) -> int:
        return math.prod(self.shape)

    @property
    def kept_fraction(self) -> float:
        return self.kept / max(self.weights, 1)

    @property
    def coded_weight_bits(self) -> float:
        """Mean stored bits per entry of the weight indices (P+Q+H)."""
        return self.weight_stream_bits / max(self.entries, 1)

    @property
    def coded_index_bits(self) -> float:
        """Mean stored bits per entry of the relative indices (P+Q+H)."""
        return self.index_stream_bits / max(self.entries, 1)

    @property
    def rate_quantized(self) -> float:
        """Size after pruning and quantisation over the dense float32 size, counted as the
        paper does: every entry in ``weight_bits + index_bits``, plus a codebook of
        ``2**weight_bits`` float32 (eq. 1)."""
        bits = self.entries * (self.weight_bits + self.index_bits) + 32 * 2 ** self.weight_bits
        return bits / (32 * self.weights)

    @property
    def rate_coded(self) -> float:
        """The layer's bytes in the file over its dense float32 size (P+Q+H)."""
        return self.bytes / (4 * self.weights)


@dataclasses.dataclass(frozen=True)
class FileStats:
    """Where every byte of a compressed file goes."""

    layers: tuple[LayerStats, ...]
    dense_values: int  # float32 values stored as they are: biases, BatchNorm, other arrays
    dense_bytes: int  # their records, paths and shapes included
    header_bytes: int  # the fixed header, the metadata line and the record count
    file_bytes: int
    meta: dict[str, Any]

    @property
    def values(self) -> int:
        """Every number of the network's variables (what a float32 copy stores)."""
        return self.dense_values + sum(layer.weights for layer in self.layers)

    @property
    def ratio(self) -> float:
        """The float32 size of all the variables over the file's size."""
        return 4 * self.values / self.file_bytes

    def totals(self) -> dict[str, float]:
        """The "Total" row of the paper's tables, over the compressed layers."""
        weights = sum(layer.weights for layer in self.layers)
        entries = max(sum(layer.entries for layer in self.layers), 1)

        def mean(attribute: str) -> float:
            return sum(getattr(layer, attribute) * layer.entries for layer in self.layers) / entries

        quantized = sum(layer.rate_quantized * layer.weights for layer in self.layers)
        return {
            "weights": weights,
            "kept_fraction": sum(layer.kept for layer in self.layers) / max(weights, 1),
            "weight_bits": mean("weight_bits"), "coded_weight_bits": mean("coded_weight_bits"),
            "index_bits": mean("index_bits"), "coded_index_bits": mean("coded_index_bits"),
            "rate_quantized": quantized / max(weights, 1),
            "rate_coded": sum(layer.bytes for layer in self.layers) / max(4 * weights, 1),
        }


def _flat_variables(variables: Mapping[str, Any]) -> list[tuple[tuple[str, ...], np.ndarray]]:
    return [(_keys(path), np.asarray(leaf))
            for path, leaf in jax.tree_util.tree_flatten_with_path(dict(variables))[0]]


def save(path: str | os.PathLike, variables: Mapping[str, Any], shared: Mapping[str, Shared],
         *, index_bits: Mapping[str, int] | int, meta: Mapping[str, Any] | None = None
         ) -> FileStats:
    """Writes ``variables`` with the kernels of ``shared`` (layer name -> :class:`Shared`, as
    :func:`quantize` returns) coded, everything else float32; returns :func:`read`'s stats.

    ``index_bits`` (:func:`per_layer`) is the width of the relative index of each layer. The
    file is written to a temporary name and renamed, so it is whole or absent."""
    widths = per_layer(index_bits, compressible_layers(variables.get("params", {})),
                       "index bits")
    check_bits(widths, "index bits")
    missing = sorted(set(shared) - set(widths))
    if missing:
        raise CompressionError(f"index bits: no width for the layers {', '.join(missing)}.")
    records = [struct.pack("<I", len(_flat_variables(variables)))]
    for keys, array in _flat_variables(variables):
        name = "/".join(keys)
        head = struct.pack("<B", len(name.encode())) + name.encode()
        dims = struct.pack(f"<B{array.ndim}I", array.ndim, *array.shape)
        layer = layer_name(keys[1:]) if keys[0] == "params" and array.ndim >= 2 else None
        if layer not in shared:
            records.append(head + bytes([0]) + dims + array.astype("<f4").tobytes())
            continue
        codebook, indices = shared[layer]
        if indices.shape != array.shape:
            raise CompressionError(f"{layer}: indices of shape {indices.shape} for a kernel of "
                                   f"shape {array.shape}.")
        flat = np.asarray(indices).ravel()
        positions = np.flatnonzero(flat)
        gap_codes, filler = relative_index(positions, widths[layer])
        used = np.unique(flat[positions])
        symbols = np.zeros(gap_codes.size, np.int64)
        symbols[~filler] = np.searchsorted(used, flat[positions]) + 1
        weight_stream, _ = _stream(symbols, used.size + 1)
        index_stream, _ = _stream(gap_codes, 1 << widths[layer])
        records.append(
            head + bytes([1]) + dims
            + struct.pack("<BBIH", _width(np.asarray(codebook).size), widths[layer],
                          gap_codes.size, used.size)
            + np.asarray(codebook, "<f4")[used].tobytes() + weight_stream + index_stream)
    meta_bytes = json.dumps(dict(meta or {}), separators=(",", ":"), sort_keys=True).encode()
    payload = struct.pack("<H", len(meta_bytes)) + meta_bytes + b"".join(records)
    header = _HEADER.pack(MAGIC, VERSION, len(payload), zlib.crc32(payload))
    path = os.fspath(path)
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "wb") as f:
        f.write(header + payload)
    os.replace(tmp, path)
    return read(path)[1]


def read(path: str | os.PathLike) -> tuple[dict[str, Any], FileStats]:
    """The variables of a compressed file (NumPy float32, nested like ``model.init``'s) and
    where its bytes go; :class:`CompressedFileError` for anything but an intact file."""
    path = os.fspath(path)
    with open(path, "rb") as f:
        data = f.read()
    if len(data) < _HEADER.size or data[:4] != MAGIC:
        raise CompressedFileError(f"{path} is not a jaxcnn compressed network (it does not "
                                  f"begin with {MAGIC!r}); write one with jaxcnn.compress.save.")
    _, version, length, checksum = _HEADER.unpack_from(data)
    if version != VERSION:
        raise CompressedFileError(f"{path}: format version {version}, but this jaxcnn reads "
                                  f"version {VERSION}; compress the network again.")
    payload = data[_HEADER.size:]
    if len(payload) != length:
        raise CompressedFileError(
            f"{path} is truncated or has extra bytes: its header announces {length:,} bytes "
            f"after the header, the file has {len(payload):,}. Copy or write it again.")
    if zlib.crc32(payload) != checksum:
        raise CompressedFileError(f"{path} is corrupt: its CRC-32 does not match its "
                                  f"contents. Copy or write it again.")
    reader = _Reader(payload, path)
    try:
        meta = json.loads(reader.take(reader.number("H")).decode())
        count = reader.number("I")
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CompressedFileError(f"{path}: malformed metadata ({err}).") from err
    header_bytes = _HEADER.size + reader.at
    variables: dict[str, Any] = {}
    layers, dense_values, dense_bytes = [], 0, 0
    for _ in range(count):
        start = reader.at
        name = reader.take(reader.number("B")).decode()
        kind = reader.number("B")
        shape = tuple(reader.number("I") for _ in range(reader.number("B")))
        size = math.prod(shape)
        if kind == 0:
            array = np.frombuffer(reader.take(4 * size), "<f4").astype(np.float32)
            dense_values += size
            dense_bytes += reader.at - start
        elif kind == 1:
            weight_bits, index_bits, entries, used = struct.unpack("<BBIH", reader.take(8))
            centroids = np.frombuffer(reader.take(4 * used), "<f4").astype(np.float32)
            symbols, weight_stream_bits = reader.stream(entries, used + 1)
            gap_codes, index_stream_bits = reader.stream(entries, 1 << index_bits)
            positions = absolute_positions(gap_codes)
            if entries and (positions[-1] >= size or symbols.max() > used):
                raise CompressedFileError(f"{path}: malformed layer {name} (an entry outside "
                                          f"the kernel or the codebook).")
            array = np.zeros(size, np.float32)
            array[positions] = np.concatenate([[0.0], centroids]).astype(np.float32)[symbols]
            layers.append(LayerStats(
                name=layer_name(tuple(name.split("/"))[1:]), shape=shape,
                weight_bits=weight_bits, index_bits=index_bits,
                kept=int(np.count_nonzero(symbols)), entries=entries,
                weight_stream_bits=weight_stream_bits, index_stream_bits=index_stream_bits,
                bytes=reader.at - start))
        else:
            raise CompressedFileError(f"{path}: malformed (record kind {kind}).")
        node = variables
        *parents, leaf = name.split("/")
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = array.reshape(shape)
    if reader.at != len(payload):
        raise CompressedFileError(f"{path}: malformed ({len(payload) - reader.at} bytes after "
                                  f"the last record).")
    return variables, FileStats(tuple(layers), dense_values, dense_bytes, header_bytes,
                                len(data), meta)


def load(path: str | os.PathLike) -> dict[str, Any]:
    """The variables stored in a compressed file, ready for ``model.apply``: the quantised
    kernels decoded exactly, the rest as stored. :class:`CompressedFileError` if the file is
    truncated, corrupt or not one."""
    return read(path)[0]


# ----------------------------------------------------------------------------------------------
# The paper's per-layer table


def table_rows(stats: FileStats, paper: PaperTable | None = None) -> list[dict[str, Any]]:
    """One row per compressed layer and a total, with the columns of the paper's Tables 2-5,
    and the paper's own row (``"paper"``) where ``paper`` has the layer."""
    rows = []
    for layer in stats.layers:
        row = paper.layers.get(layer.name) if paper else None
        rows.append({
            "layer": layer.name, "weights": layer.weights, "kept_fraction": layer.kept_fraction,
            "weight_bits": layer.weight_bits, "coded_weight_bits": layer.coded_weight_bits,
            "index_bits": layer.index_bits, "coded_index_bits": layer.coded_index_bits,
            "rate_quantized": layer.rate_quantized, "rate_coded": layer.rate_coded,
            "bytes": layer.bytes, "paper": row._asdict() if row else None})
    rows.append({"layer": "total", **stats.totals(),
                 "bytes": sum(layer.bytes for layer in stats.layers),
                 "paper": paper.total._asdict() if paper else None})
    return rows


def _table_cells(rows: list[dict[str, Any]]) -> list[tuple[str, ...]]:
    """The header and one line of cells per row of :func:`table_rows` (the paper's figure in
    brackets where the row has it)."""

    def cell(row: dict[str, Any], key: str, form: Callable[[float], str],
             paper_key: str | None = None) -> str:
        ours = form(row[key])
        return f"{ours} ({form(row['paper'][paper_key or key])})" if row["paper"] else ours

    def percent(x: float) -> str:
        return f"{100 * x:.3g}"

    def bits(x: float) -> str:
        return f"{x:.2g}" if x < 10 else f"{x:.0f}"

    def rate(x: float) -> str:
        return f"{100 * x:.2f}% {1 / x:.0f}x" if x else "-"

    lines = [("layer", "weights", "kept %", "weight bits P+Q", "+H", "index bits P+Q", "+H",
              "rate P+Q", "rate P+Q+H")]
    for row in rows:
        paper_name = row["paper"]["name"] if row["paper"] else row["layer"]
        lines.append((
            row["layer"] + (f" ({paper_name})" if paper_name != row["layer"] else ""),
            f"{row['weights']:,}", cell(row, "kept_fraction", percent, "kept"),
            cell(row, "weight_bits", bits), cell(row, "coded_weight_bits", bits),
            cell(row, "index_bits", bits), cell(row, "coded_index_bits", bits),
            cell(row, "rate_quantized", rate), cell(row, "rate_coded", rate)))
    return lines


def _table_notes(stats: FileStats, paper: PaperTable | None) -> list[str]:
    """Where the file's other bytes go, and the paper's sizes."""
    layer_bytes = sum(layer.bytes for layer in stats.layers)
    notes = []
    if paper:
        rows_rate = paper.rows_rate({layer.name: layer.weights for layer in stats.layers})
        notes.append(f"In brackets: {paper.table}; its per-layer rates add up to "
                     f"{100 * rows_rate:.2f}% ({1 / rows_rate:.1f}x) over these layers.")
    notes += [
        f"Kernels, coded: {layer_bytes:,} bytes; biases and other dense variables "
        f"({stats.dense_values:,} float32): {stats.dense_bytes:,} bytes; header and "
        f"metadata: {stats.header_bytes:,} bytes.",
        f"File: {stats.file_bytes:,} bytes for {stats.values:,} numbers "
        f"({4 * stats.values:,} bytes as float32): {stats.ratio:.1f}x smaller"
        + (f" (paper: {paper.dense_mb:g} MB -> {paper.compressed_mb:g} MB, {paper.ratio:g}x)."
           if paper else "."),
    ]
    return notes


def format_table(stats: FileStats, paper: PaperTable | None = None) -> str:
    """The paper's per-layer table of a compressed file, aligned for a terminal, then where the
    rest of the file's bytes go."""
    lines = _table_cells(table_rows(stats, paper))
    widths = [max(len(line[i]) for line in lines) for i in range(len(lines[0]))]
    text = ["  ".join(cell.ljust(w) if i == 0 else cell.rjust(w)
                      for i, (cell, w) in enumerate(zip(line, widths))) for line in lines]
    rule = "-" * len(text[0])
    return "\n".join([text[0], rule, *text[1:-1], rule, text[-1], *_table_notes(stats, paper)])


def markdown_table(stats: FileStats, paper: PaperTable | None = None) -> str:
    """:func:`format_table` in Markdown, for a README."""
    lines = _table_cells(table_rows(stats, paper))
    text = ["| " + " | ".join(line) + " |" for line in lines]
    text.insert(1, "|" + "|".join(["---"] + ["---:"] * (len(lines[0]) - 1)) + "|")
    text[-1] = "| " + " | ".join(f"**{c}**" for c in lines[-1]) + " |"
    return "\n".join(text + [""] + _table_notes(stats, paper))


# ----------------------------------------------------------------------------------------------
# Command line: a file's table, and the paper's ImageNet networks at full size


def random_variables(arch: str, seed: int = 0) -> dict[str, Any]:
    """Random float32 variables of a registered network, made in NumPy (a 138M-parameter
    network in seconds): kernels He-normal, the rest zero. Their magnitudes have the bell shape
    of trained weights but none of their structure."""
    rng = np.random.default_rng(seed)

    def make(shape: jax.ShapeDtypeStruct) -> np.ndarray:
        if len(shape.shape) < 2:
            return np.zeros(shape.shape, np.float32)
        fan_in = math.prod(shape.shape[:-1])
        return rng.standard_normal(shape.shape, np.float32) * np.float32(math.sqrt(2 / fan_in))

    return jax.tree.map(make, dict(init_shapes(arch)))


def compress_at_scale(arch: str, out: str, *, seed: int = 0, dense_kmeans: bool = True,
                      progress: Callable[[Iterable], Iterable] = lambda it: it,
                      print_fn: Callable[[str], None] = print) -> dict[str, Any]:
    """The paper's pipeline without retraining on a network of :data:`PAPER` with random
    weights: prune at the paper's rates, quantise at its bits, code at its index bits, decode
    and compare. Returns the sizes, the file's table and the wall time of each stage."""
    paper = PAPER[arch]
    variables = random_variables(arch, seed)
    params = variables["params"]
    times: dict[str, float] = {}
    t = time.perf_counter()
    masks = magnitude_masks(params, sparsity=paper.sparsity)
    pruned = jax.tree.map(lambda p, m: p * m, params, masks)
    times["prune_s"] = time.perf_counter() - t
    t = time.perf_counter()
    shared = quantize(pruned, paper.bits, progress=progress)
    times["kmeans_s"] = time.perf_counter() - t
    kept = sum(int(np.count_nonzero(s.indices)) for s in shared.values())
    path = os.path.join(out, f"{arch}.jxdc")
    t = time.perf_counter()
    stats = save(path, {**variables, "params": pruned}, shared, index_bits=paper.index_bits,
                 meta={"arch": arch, "weights": "random (He normal), not trained"})
    times["encode_and_read_s"] = time.perf_counter() - t
    t = time.perf_counter()
    decoded = load(path)["params"]
    times["decode_s"] = time.perf_counter() - t
    expected = replace_layers(pruned, {n: s.codebook[s.indices] for n, s in shared.items()})
    exact = all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(decoded),
                                                     jax.tree.leaves(expected)))
    result = {
        "arch": arch, "paper": dataclasses.asdict(paper), "file": path,
        "file_bytes": stats.file_bytes, "dense_bytes": 4 * stats.values, "ratio": stats.ratio,
        "kept_weights": kept, "decoded_exactly": exact, **times,
        "layers": table_rows(stats, paper),
    }
    if dense_kmeans:  # the k-means benchmark over every weight, as without pruning
        weights = sum(math.prod(np.shape(p)) for p in jax.tree.leaves(params) if np.ndim(p) >= 2)
        t = time.perf_counter()
        quantize(params, paper.bits, progress=progress)
        result.update(dense_kmeans_s=time.perf_counter() - t, dense_kmeans_weights=weights)
    print_fn(f"\n{arch} (random weights, pruned at the paper's rates, no retraining):")
    print_fn(format_table(stats, paper))
    print_fn(f"k-means over the {kept:,} surviving weights: {times['kmeans_s']:.1f} s"
             + (f"; over all {result['dense_kmeans_weights']:,} weights: "
                f"{result['dense_kmeans_s']:.1f} s" if dense_kmeans else "")
             + f"; decoded exactly: {exact}")
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m jaxcnn.compress",
        description="Deep Compression files: print a file's per-layer table, or compress the "
                    "paper's ImageNet networks (random weights, no retraining) at its rates. "
                    "Compressing a trained network (pruning and quantisation with retraining) "
                    "is python -m train.compress.")
    commands = parser.add_subparsers(dest="command", required=True)
    inspect = commands.add_parser("inspect", help="the per-layer table of a compressed file")
    inspect.add_argument("file")
    scale = commands.add_parser(
        "scale", help="AlexNet and VGG-16 at the paper's rates: sizes and k-means time")
    scale.add_argument("--arch", nargs="+", default=["alexnet_paper", "vgg16"],
                       choices=sorted(PAPER))
    scale.add_argument("--out", default="runs/deep_compression_scale",
                       help="where the compressed files and scale.json go")
    scale.add_argument("--seed", type=int, default=0)
    scale.add_argument("--dense-kmeans", action=argparse.BooleanOptionalAction, default=True,
                       help="also time k-means over every weight, as without pruning")
    args = parser.parse_args(argv)
    try:
        if args.command == "inspect":
            _, stats = read(args.file)
            paper = PAPER.get(stats.meta.get("arch", ""))
            print(f"{args.file}: {json.dumps(stats.meta)}")
            print(format_table(stats, paper))
            return 0
        os.makedirs(args.out, exist_ok=True)
        from tqdm.auto import tqdm

        results = []
        for arch in args.arch:
            results.append(compress_at_scale(
                arch, args.out, seed=args.seed, dense_kmeans=args.dense_kmeans,
                progress=lambda it, arch=arch: tqdm(it, desc=f"k-means {arch}", unit="layer",
                                                    file=sys.stderr, leave=False)))
        with open(os.path.join(args.out, "scale.json"), "w") as f:
            json.dump(results, f, indent=2)
        print(f"\nwritten: {os.path.join(args.out, 'scale.json')}")
    except (CompressionError, CompressedFileError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
