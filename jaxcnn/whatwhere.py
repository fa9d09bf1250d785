"""Stacked what-where auto-encoders (Zhao, Mathieu, Goroshin, LeCun; arXiv 1506.02351, 2015,
ICLR 2016 workshop track).

A convolutional encoder and a mirrored "deconvolutional" decoder, trained together. Every
max-pooling of the encoder splits its input in two: the *what* (the pooled values), which goes
up to the next layer, and the *where* (the switches, the position of each maximum), which goes
across to the decoder layer at the same depth. The decoder unpools (puts each value back where
its maximum was, zeros elsewhere) and convolves, so it can redraw details that pooling alone
would have lost. A classifier sits on the top *what*. The one objective

    L = L_NLL + lambda_L2rec * ||x - x_rec||^2 + lambda_L2M * sum_l ||x_l - x_rec_l||^2

covers supervised (all three terms), semi-supervised (the classification term on the labelled
part of a batch only) and unsupervised (no classification term) training; the "middle" terms
tie each intermediate decoder state to the encoder's *what* at the same depth.
:func:`whatwhere_loss` computes it.

The paper describes its networks in a compact notation ("(16)5c" is a 5x5 convolution to 16
maps, "2p" a 2x2 max-pooling, "10fc" a fully connected layer) and publishes no parameter
counts. ``whatwhere_mnist`` is a small network in that style, (16)5c-2p-(32)5c-2p-10fc on
28x28 MNIST, with "same" padding so that pooling and unpooling line up (28 -> 14 -> 7). It is a
configuration chosen for this library, not one of the paper's tables. Further choices, all
within the paper's description: ReLU after every convolution of the encoder and of the decoder
except the last decoder layer, which is linear so that it can reconstruct normalised (signed)
pixels; the decoder starts from the top pooled maps, and its convolutions are ordinary
stride-1 convolutions (a stride-1 transposed convolution is one, with a flipped kernel); no
batch normalisation or dropout.

The paper pools in two ways. With *hard* switches (``whatwhere_mnist``) the what is the maximum
of each window and the where its position, and unpooling puts the value back there. Its *soft*
variant (``whatwhere_mnist_soft``, field ``soft_pool_beta``) weighs each window by
``softmax(beta * z)``: the what is the weighted mean of the values, the where the weighted mean
of the positions (a soft argmax, between pixels), and unpooling shares the value bilinearly
among the pixels around that position (:func:`jaxcnn.layers.soft_pool_with_positions`,
:func:`jaxcnn.layers.soft_unpool`). Both tend to the hard switches as ``beta`` grows; the soft
ones pass gradients to every value of a window and to the positions themselves.

===============  =========================  ========  ===============================
variant          encoder                    input     params (no published figure)
===============  =========================  ========  ===============================
whatwhere_mnist  (16)5c-2p-(32)5c-2p-10fc   28x28x1   42,155 (encoder 28,938, decoder
                                                      13,217)
whatwhere_mnist  the same, soft pooling     28x28x1   42,155 (soft pooling has no
_soft            (beta 1)                             parameters)
===============  =========================  ========  ===============================

The classifier flattens the top maps, so the count depends on the input size; any input of at
least ``2 ** len(features)`` pixels a side works.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import NamedTuple, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxcnn.layers import (
    Classifier, Conv, check_image, max_pool_with_switches, max_unpool, pair_padding,
    soft_pool_with_positions, soft_unpool,
)
from jaxcnn.spec import ModelSpec


class WhatWhereAutoencoder(Classifier):
    """Conv/ReLU/max-pool encoder, classifier on top, unpool/conv decoder fed the switches.

    ``__call__`` returns the logits (the pre-logits features when ``num_classes=0``) and sows
    in ``intermediates``: ``reconstruction`` (the input's, float32) and
    ``middle_reconstructions``, a tuple of ``(encoder_what, decoder_what)`` pairs from the
    bottom layer up (float32), the operands of the middle losses.

    ``soft_pool_beta``: ``None`` pools with hard switches (max pooling and its argmax); a
    number pools softly at that inverse temperature (the paper's soft variant).
    """

    features: tuple[int, ...] = (16, 32)
    kernel_size: int = 5
    pool_size: int = 2
    soft_pool_beta: float | None = None
    num_classes: int = dataclasses.field(default=10, kw_only=True)

    @property
    def min_size(self) -> int:
        """Every pooling must leave at least one pixel."""
        return self.pool_size ** len(self.features)

    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        check_image(x, min_size=self.min_size, model="What-where auto-encoder")
        return self._forward(x, train)[0]

    def reconstruct(self, x: jax.Array, *, train: bool = False) -> tuple[jax.Array, jax.Array]:
        """Returns ``(logits, reconstruction)``; use with ``apply(..., method="reconstruct")``."""
        check_image(x, min_size=self.min_size, model="What-where auto-encoder")
        return self._forward(x, train)

    @nn.compact
    def _forward(self, x: jax.Array, train: bool) -> tuple[jax.Array, jax.Array]:
        in_channels = x.shape[-1]
        x = x.astype(self.dtype)
        conv = functools.partial(
            Conv, kernel_size=(self.kernel_size, self.kernel_size),
            padding=pair_padding(self.kernel_size // 2), dtype=self.dtype,
        )

        k, beta = self.pool_size, self.soft_pool_beta
        if beta is None:
            pool, unpool = functools.partial(max_pool_with_switches, window=k), max_unpool
        else:
            pool = functools.partial(soft_pool_with_positions, window=k, beta=beta)
            unpool = functools.partial(soft_unpool, window=k)

        whats, wheres, sizes = [], [], []
        what = x
        for i, f in enumerate(self.features, 1):
            h = nn.relu(conv(f, name=f"conv{i}")(what))
            sizes.append(h.shape[1:3])
            what, where = pool(h)
            whats.append(what)
            wheres.append(where)

        logits = self.forward_head(what.reshape(what.shape[0], -1), train=train, pool=False)

        # Decoder, top down: layer i undoes pool i with its switches, then conv i.
        decoded = what
        middle = []
        for i in reversed(range(len(self.features))):
            decoded = unpool(decoded, wheres[i], sizes[i])
            out_channels = self.features[i - 1] if i > 0 else in_channels
            decoded = conv(out_channels, name=f"deconv{i + 1}")(decoded)
            if i > 0:
                decoded = nn.relu(decoded)
                middle.append((whats[i - 1].astype(jnp.float32), decoded.astype(jnp.float32)))
        reconstruction = decoded.astype(jnp.float32)
        self.sow("intermediates", "reconstruction", reconstruction)
        self.sow("intermediates", "middle_reconstructions", tuple(reversed(middle)))
        return logits, reconstruction


class LossWeights(NamedTuple):
    """The weights of the three terms: classification (NLL), input and middle reconstruction."""

    classification: float = 1.0
    reconstruction: float = 1.0  # the paper's lambda_L2rec
    middle: float = 1.0  # the paper's lambda_L2M


def whatwhere_loss(
    logits: jax.Array,
    labels: jax.Array | None,
    reconstruction: jax.Array,
    images: jax.Array,
    middle: Sequence[tuple[jax.Array, jax.Array]] = (),
    weights: LossWeights = LossWeights(),
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """The SWWAE objective: returns ``(total, {"classification", "reconstruction", "middle"})``.

    ``labels`` are integer classes; a negative label marks an unlabelled image (semi-supervised
    batches), which only the reconstruction terms see; ``labels=None`` is unsupervised training.
    ``middle`` holds ``(encoder_what, decoder_what)`` pairs (the sown
    ``middle_reconstructions``). The squared errors are means over all elements, so the weights
    do not depend on the image size; the classification term is the mean cross-entropy over
    the labelled images. Use with ``jax.value_and_grad(..., has_aux=True)``.
    """
    logits = logits.astype(jnp.float32)
    if labels is None:
        nll = jnp.zeros((), jnp.float32)
    else:
        labelled = labels >= 0
        log_probs = jax.nn.log_softmax(logits)
        picked = jnp.take_along_axis(log_probs, jnp.where(labelled, labels, 0)[:, None], axis=1)
        nll = -jnp.sum(picked[:, 0] * labelled) / jnp.maximum(jnp.sum(labelled), 1)
    rec = jnp.mean(jnp.square(reconstruction.astype(jnp.float32) - images.astype(jnp.float32)))
    mid = sum((jnp.mean(jnp.square(a.astype(jnp.float32) - b.astype(jnp.float32)))
               for a, b in middle), jnp.zeros((), jnp.float32))
    total = weights.classification * nll + weights.reconstruction * rec + weights.middle * mid
    return total, {"classification": nll, "reconstruction": rec, "middle": mid}


MODELS: dict[str, ModelSpec] = {
    "whatwhere_mnist": ModelSpec(
        builder=WhatWhereAutoencoder,
        input_shape=(28, 28, 1),
        reference="Zhao et al. 2015 (SWWAE), (16)5c-2p-(32)5c-2p-10fc in the paper's notation; "
                  "no reference implementation",
        num_classes=10,
        objective="swwae",
    ),
    "whatwhere_mnist_soft": ModelSpec(
        builder=functools.partial(WhatWhereAutoencoder, soft_pool_beta=1.0),
        input_shape=(28, 28, 1),
        reference="Zhao et al. 2015 (SWWAE), soft pooling, (16)5c-2p-(32)5c-2p-10fc in the "
                  "paper's notation; no reference implementation",
        num_classes=10,
        objective="swwae",
    ),
}
