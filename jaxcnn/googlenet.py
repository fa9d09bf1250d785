"""GoogLeNet (Inception v1): Szegedy et al., "Going deeper with convolutions", CVPR 2015
(arXiv:1409.4842).

Nine Inception modules (parallel 1x1, 1x1->3x3, 1x1->5x5 and 3x3-max-pool->1x1 branches,
concatenated) on a conventional stem, global average pooling and one linear classifier. Two
auxiliary classifiers on inception4a and inception4d add to the training loss only.

Two published versions differ, and one class covers both through its fields:

* **Paper / BVLC Caffe** (``googlenet_paper``): no BatchNorm, convolutions with bias, a true 5x5
  kernel in the "5x5" branch, local response normalisation after pool1 and after conv3 (Caffe's
  ``pool1/norm1`` and ``conv2/norm2``, size 5, alpha 1e-4, beta 0.75, k 1), a 3x3/2 pool4, dropout
  0.4 before the classifier. Its aux heads average-pool 5x5/3 (4x4 cells at 224x224 input), so
  their ``fc1`` takes 4*4*128 inputs only at 224x224 (the Caffe net is built for that size).
* **torchvision** (``googlenet``): BatchNorm (eps 1e-3) after every convolution and no conv bias;
  the "5x5" branch really uses a 3x3 kernel (a bug of the original port, kept so that its
  pretrained weights load); a 2x2/2 pool4; no LRN; dropout 0.2; aux heads that pool adaptively to
  4x4, so any input size works. Its pretrained weights (ported from TensorFlow) are loaded with
  ``transform_input=True``, which turns ImageNet mean/std-normalised images back into the
  [-1, 1] range ((x - 0.5) / 0.5 on [0, 1] pixels) those weights expect. That is preprocessing,
  not part of this model: feed converted torchvision weights [-1, 1] images.

Both pool with PyTorch's/Caffe's ``ceil_mode``. ``aux_logits=True`` builds the two aux heads;
they run in train mode (and at init, to create their parameters) and their logits are sown into
the ``aux_logits`` collection as ``aux1`` and ``aux2`` (ask for it with ``mutable``); their
parameters live in ``aux1_head`` and ``aux2_head``.

| variant           | follows                       | params    | with aux_logits=True |
|-------------------|-------------------------------|-----------|----------------------|
| ``googlenet``       | torchvision ``googlenet``       | 6,624,904 | 13,004,888           |
| ``googlenet_paper`` | paper / BVLC Caffe GoogLeNet  | 6,998,552 | 13,378,280           |
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxcnn import layers
from jaxcnn.spec import (
    TORCHVISION_META, Converter, ModelSpec, Published, torch_leaf, torch_parts,
)

# (1x1, 3x3 reduce, 3x3, 5x5 reduce, 5x5, pool proj) per module: the paper's Table 1.
INCEPTION_CONFIG: dict[str, tuple[int, int, int, int, int, int]] = {
    "inception3a": (64, 96, 128, 16, 32, 32),
    "inception3b": (128, 128, 192, 32, 96, 64),
    "inception4a": (192, 96, 208, 16, 48, 64),
    "inception4b": (160, 112, 224, 24, 64, 64),
    "inception4c": (128, 128, 256, 24, 64, 64),
    "inception4d": (112, 144, 288, 32, 64, 64),
    "inception4e": (256, 160, 320, 32, 128, 128),
    "inception5a": (256, 160, 320, 32, 128, 128),
    "inception5b": (384, 192, 384, 48, 128, 128),
}

AUX_POOLS = ("adaptive", "caffe")
_TRUNC_NORMAL = nn.initializers.truncated_normal(0.01)  # torchvision's init for conv and FC


class InceptionModule(nn.Module):
    """Four parallel branches (1x1; 1x1->3x3; 1x1->5x5; 3x3 max pool->1x1), concatenated."""

    ch1x1: int
    ch3x3_reduce: int
    ch3x3: int
    ch5x5_reduce: int
    ch5x5: int
    pool_proj: int
    conv_block: Callable[..., nn.Module]
    branch5x5_kernel: int = 5

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        conv = self.conv_block
        b1 = conv(self.ch1x1, 1, name="branch1x1")(x, train=train)
        b2 = conv(self.ch3x3_reduce, 1, name="branch3x3_reduce")(x, train=train)
        b2 = conv(self.ch3x3, 3, padding=1, name="branch3x3")(b2, train=train)
        b3 = conv(self.ch5x5_reduce, 1, name="branch5x5_reduce")(x, train=train)
        k = self.branch5x5_kernel
        b3 = conv(self.ch5x5, k, padding=k // 2, name="branch5x5")(b3, train=train)
        b4 = layers.max_pool(x, 3, 1, 1, ceil_mode=True)
        b4 = conv(self.pool_proj, 1, name="pool_proj")(b4, train=train)
        return jnp.concatenate([b1, b2, b3, b4], axis=-1)


class AuxClassifier(nn.Module):
    """Auxiliary head: pool to 4x4, 1x1 conv 128, FC 1024 + ReLU, dropout, FC to the classes."""

    num_classes: int
    conv_block: Callable[..., nn.Module]
    pool: str = "adaptive"
    dropout: float = 0.7
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        if self.pool == "caffe":
            x = layers.avg_pool(x, 5, 3, ceil_mode=True)
        else:
            x = layers.adaptive_avg_pool(x, 4)
        x = self.conv_block(128, 1, name="conv")(x, train=train)
        # Flatten in (channel, row, column) order, as torchvision and Caffe do, so that converted
        # fc1 weights need no permutation.
        x = jnp.transpose(x, (0, 3, 1, 2)).reshape((x.shape[0], -1))
        x = nn.relu(nn.Dense(1024, dtype=self.dtype, kernel_init=_TRUNC_NORMAL, name="fc1")(x))
        x = nn.Dropout(self.dropout, deterministic=not train)(x)
        return layers.dense_head(x, self.num_classes, dtype=self.dtype, name="fc2",
                                 kernel_init=_TRUNC_NORMAL)


class GoogLeNet(layers.Classifier):
    """GoogLeNet; the defaults are torchvision's, ``googlenet_paper`` sets the paper's fields.

    ``batch_norm=False`` gives the paper's convolutions with bias and no BatchNorm;
    ``branch5x5_kernel`` is the kernel of the "5x5" branch (3 in torchvision); ``lrn`` adds the
    paper's two LRN layers; ``pool4_window`` is 2 (torchvision) or 3 (paper); ``aux_pool`` is
    ``"adaptive"`` (torchvision: adaptive average pool to 4x4) or ``"caffe"`` (5x5/3 average pool).
    """

    aux_logits: bool = False
    batch_norm: bool = True
    branch5x5_kernel: int = 3
    lrn: bool = False
    pool4_window: int = 2
    aux_pool: str = "adaptive"
    dropout: float = 0.2
    aux_dropout: float = 0.7

    @property
    def min_size(self) -> int:
        # Below these sizes a ceil-mode pool gets a window that starts past the input: 15 when
        # pool4 is 2x2 (torchvision's meta says the same), 31 when it is 3x3; the paper's 5x5/3
        # aux pooling needs inception4a to be at least 3x3 (input 47).
        if self.aux_logits and self.num_classes and self.aux_pool == "caffe":
            return 47
        return 15 if self.pool4_window == 2 else 31

    def _conv_block(self) -> Callable[..., nn.Module]:
        if self.batch_norm:
            norm = self.norm_layer(epsilon=1e-3)
            return functools.partial(layers.ConvBN, norm=norm, use_bias=False, dtype=self.dtype,
                                     kernel_init=_TRUNC_NORMAL)
        return functools.partial(layers.ConvBN, norm=None, use_bias=True, dtype=self.dtype,
                                 kernel_init=nn.initializers.xavier_uniform())

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        x = self.check_input(x, model="GoogLeNet")
        if self.aux_pool not in AUX_POOLS:
            raise ValueError(f"aux_pool must be one of {AUX_POOLS}; got {self.aux_pool!r}.")
        conv = self._conv_block()
        lrn = functools.partial(layers.local_response_norm, size=5, alpha=1e-4, beta=0.75, k=1.0)

        x = conv(64, 7, strides=2, padding=3, name="conv1")(x, train=train)
        x = layers.max_pool(x, 3, 2, ceil_mode=True)
        if self.lrn:
            x = lrn(x)
        x = conv(64, 1, name="conv2")(x, train=train)
        x = conv(192, 3, padding=1, name="conv3")(x, train=train)
        if self.lrn:
            x = lrn(x)
        x = layers.max_pool(x, 3, 2, ceil_mode=True)

        with_aux = self.aux_logits and self.num_classes > 0 and (train or self.is_initializing())
        for name, channels in INCEPTION_CONFIG.items():
            x = InceptionModule(*channels, conv_block=conv, branch5x5_kernel=self.branch5x5_kernel,
                                name=name)(x, train=train)
            if name == "inception3b":
                x = layers.max_pool(x, 3, 2, ceil_mode=True)
            elif name == "inception4e":
                x = layers.max_pool(x, self.pool4_window, 2, ceil_mode=True)
            elif with_aux and name in ("inception4a", "inception4d"):
                aux_name = "aux1" if name == "inception4a" else "aux2"
                aux = AuxClassifier(self.num_classes, conv_block=conv, pool=self.aux_pool,
                                    dropout=self.aux_dropout, dtype=self.dtype,
                                    name=f"{aux_name}_head")(x, train=train)
                # Not sown at init: init would otherwise return a stale aux_logits collection
                # that later applies would append to.
                if not self.is_initializing():
                    self.sow("aux_logits", aux_name, aux)

        return self.forward_head(x, train=train, dropout_rate=self.dropout,
                                 kernel_init=_TRUNC_NORMAL)


# --- Converters: reference array names -> our variable paths ----------------------------------

_TV_BRANCHES = {"branch1": "branch1x1", "branch2.0": "branch3x3_reduce", "branch2.1": "branch3x3",
                "branch3.0": "branch5x5_reduce", "branch3.1": "branch5x5",
                "branch4.1": "pool_proj"}
_TV_TOP = {"fc": "head", "aux1": "aux1_head", "aux2": "aux2_head"}


def torchvision_rename(key: str) -> str | None:
    """torchvision GoogLeNet state-dict keys to our variable paths (``aux1`` -> ``aux1_head``).

    torchvision's pretrained file carries aux heads that were never trained (its loader deletes
    them unless asked for them); the converter declares them optional, so they load into a
    model built with ``aux_logits=True`` and are dropped otherwise.
    """
    path, leaf = torch_parts(key)
    module = ".".join(path)
    for old, new in _TV_BRANCHES.items():
        module = module.replace(f".{old}.", f".{new}.")
    module = "/".join(_TV_TOP.get(part, part) for part in module.split("."))
    return torch_leaf(module, leaf, norm=module.endswith("/bn"))


googlenet_paper = functools.partial(
    GoogLeNet, batch_norm=False, branch5x5_kernel=5, lrn=True, pool4_window=3, aux_pool="caffe",
    dropout=0.4,
)

_TV = TORCHVISION_META.format("GoogLeNet")

MODELS: dict[str, ModelSpec] = {
    "googlenet": ModelSpec(
        builder=GoogLeNet,
        input_shape=(224, 224, 3),
        reference="torchvision.models.googlenet (BatchNorm, 3x3 kernels in the '5x5' branch)",
        published=(
            Published(6_624_904, "params", _TV + " num_params (aux heads dropped)"),
            Published(13_004_888, "params",
                      "computed from torchvision 0.29.1 GoogLeNet(aux_logits=True) "
                      "(docs/sources.md sec. 3.4)",
                      overrides=(("aux_logits", True),)),
            Published(1.498, "gmacs", _TV + " _ops"),
            Published(69.778, "top1", _TV + " acc@1"),
            Published(89.530, "top5", _TV + " acc@5"),
        ),
        converters=(Converter("torchvision", "googlenet", torchvision_rename,
                              optional=("aux1_head", "aux2_head")),),
    ),
    "googlenet_paper": ModelSpec(
        builder=googlenet_paper,
        input_shape=(224, 224, 3),
        reference="Szegedy et al. 2014, Table 1 / BVLC Caffe bvlc_googlenet deploy.prototxt",
        published=(
            Published(6_998_552, "params",
                      "HewlettPackard dlcookbook-dlbs models table (BVLC Caffe GoogLeNet)"),
            Published(13_378_280, "params",
                      "computed from BVLC bvlc_googlenet train_val.prototxt with its loss1 and "
                      "loss2 heads (docs/sources.md sec. 3.4)",
                      overrides=(("aux_logits", True),)),
        ),
    ),
}
