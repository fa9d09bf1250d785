"""GoogLeNet, Inception v3 and DenseNet: what the generic parity test does not cover.

tests/test_parity.py proves each declared converter at one small input, without aux heads. Here:
the aux heads against torchvision (eval, train, aux logits, running means), the paper GoogLeNet
against torchvision's module rewired to the BVLC Caffe prototxt (no Caffe is installed), the
aux_logits collection, the analytic minimum input sizes, and DenseNet's transition computed pool
first.
"""

from __future__ import annotations


import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxcnn
from jaxcnn import convert, googlenet, inception, weights
from conftest import randomize_torch_batchnorm

def _randomize_bn(module):
    """Random BatchNorm state (tests/conftest.py) and no dropout: random masks cannot agree
    across frameworks."""
    import torch

    randomize_torch_batchnorm(module)
    for m in module.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
    return module


def _compare(ours, theirs, rename, size, *, aux, batch=2, atol=1e-4):
    """Eval and train logits, aux logits and running means of ours and of the torch module."""
    torch = pytest.importorskip("torch")
    x = np.random.default_rng(0).normal(size=(batch, size, size, 3)).astype(np.float32)
    xt = torch.from_numpy(x.transpose(0, 3, 1, 2).copy())
    state = {k: v.detach().numpy().copy() for k, v in _randomize_bn(theirs).state_dict().items()}
    converter = weights.Converter("torchvision", type(theirs).__name__, rename)
    variables = weights.convert(state, jaxcnn.init_shapes(ours, x.shape), converter)

    theirs.eval()
    with torch.no_grad():
        want = theirs(xt).numpy()
    got = jax.jit(lambda v, x: ours.apply(v, x, train=False))(variables, x)
    np.testing.assert_allclose(got, want, atol=atol, rtol=1e-4)

    theirs.train()
    with torch.no_grad():
        out = theirs(xt)
    got, new_state = jax.jit(lambda v, x: ours.apply(
        v, x, train=True, mutable=["batch_stats", "aux_logits"]))(variables, x)
    np.testing.assert_allclose(got, out[0].numpy(), atol=atol, rtol=1e-4)
    for name, index in aux:
        np.testing.assert_allclose(new_state["aux_logits"][name][0], out[index].numpy(),
                                   atol=atol, rtol=1e-4)
    if "batch_stats" in new_state:  # running means move as in PyTorch (momentum 0.1 there)
        state = {k: v.detach().numpy() for k, v in theirs.state_dict().items()}
        moved = weights.convert(state, variables, converter)["batch_stats"]
        for (path, want), (_, got) in zip(jax.tree_util.tree_leaves_with_path(moved),
                                          jax.tree_util.tree_leaves_with_path(
                                              new_state["batch_stats"])):
            if path[-1].key == "mean":
                np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-4)


@pytest.mark.parity
def test_googlenet_aux_heads_match_torchvision():
    tv = pytest.importorskip("torchvision")
    theirs = tv.models.GoogLeNet(aux_logits=True, init_weights=True)
    ours = jaxcnn.create_model("googlenet", aux_logits=True, dropout=0.0, aux_dropout=0.0)
    # 97 pixels: odd sizes at every ceil-mode pool, inception4a at 7x7 (not a multiple of 4).
    _compare(ours, theirs, googlenet.torchvision_rename, 97, aux=(("aux1", 2), ("aux2", 1)))


def _bvlc_googlenet():
    """torchvision's GoogLeNet rewired to the BVLC Caffe prototxt (bias, no BN, 5x5, LRN)."""
    torch = pytest.importorskip("torch")
    tv = pytest.importorskip("torchvision")
    from torch import nn as tnn

    model = tv.models.GoogLeNet(aux_logits=True, init_weights=True)

    def plain(basic):
        conv = basic.conv
        new = tnn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride,
                         conv.padding, bias=True)
        with torch.no_grad():
            new.bias.normal_(0, 0.1)
        return tnn.Sequential(new, tnn.ReLU())

    for _, parent in list(model.named_modules()):
        for attr, child in list(parent.named_children()):
            if type(child).__name__ == "BasicConv2d":
                setattr(parent, attr, plain(child))
    for module in model.modules():
        if type(module).__name__ == "Inception":
            old = module.branch3[1][0]
            module.branch3[1][0] = tnn.Conv2d(old.in_channels, old.out_channels, 5, padding=2)
        if type(module).__name__ == "InceptionAux":
            def aux_forward(x, self=module):
                x = tnn.functional.avg_pool2d(x, 5, 3, ceil_mode=True)
                x = torch.flatten(self.conv(x), 1)
                return self.fc2(self.dropout(tnn.functional.relu(self.fc1(x))))
            module.forward = aux_forward
    lrn = tnn.LocalResponseNorm(5, alpha=1e-4, beta=0.75, k=1.0)
    model.maxpool1 = tnn.Sequential(model.maxpool1, lrn)
    model.conv3 = tnn.Sequential(model.conv3, lrn)
    model.maxpool4 = tnn.MaxPool2d(3, 2, ceil_mode=True)
    return model


def _bvlc_rename(key):
    """The rewired module's keys: each conv is entry 0 of a (conv, ReLU) Sequential."""
    key = key.replace("conv3.0.0.", "conv3.0.")
    module, leaf = key.rsplit(".", 1)
    if module.endswith(".0"):
        module = module[: -len(".0")] + ".conv"
    return googlenet.torchvision_rename(f"{module}.{leaf}")


@pytest.mark.parity
def test_googlenet_paper_matches_bvlc_prototxt():
    ours = jaxcnn.create_model("googlenet_paper", aux_logits=True, dropout=0.0, aux_dropout=0.0)
    # At 224 the aux heads see 14x14 and fc1 takes 4x4x128 as in Caffe; pool4's ceil mode
    # matters (14 -> 7).
    _compare(ours, _bvlc_googlenet(), _bvlc_rename, 224, aux=(("aux1", 2), ("aux2", 1)),
             batch=1, atol=2e-4)


@pytest.mark.parity
@pytest.mark.slow
def test_inception_v3_aux_head_matches_torchvision():
    tv = pytest.importorskip("torchvision")
    theirs = tv.models.Inception3(aux_logits=True, init_weights=False)
    ours = jaxcnn.create_model("inception_v3", aux_logits=True, dropout=0.0)
    rename = inception.torch_rename
    # Train-mode float32 results of Inception v3 differ from float64 ones by ~5e-5 in PyTorch
    # itself, hence the tolerance.
    _compare(ours, theirs, rename, 299, aux=(("aux1", 1),), atol=5e-4)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["googlenet", "googlenet_paper", "inception_v3"])
def test_aux_heads_are_sown_in_train_mode_only(name):
    model = jaxcnn.create_model(name, num_classes=5, aux_logits=True)
    x = jax.ShapeDtypeStruct((2, model.min_size, model.min_size, 3), jnp.float32)
    variables = jax.eval_shape(lambda x: model.init(jax.random.key(0), x), x)
    assert "aux_logits" not in variables  # init does not sow: no stale logits to append to
    rngs = {"dropout": jax.random.key(1)}
    _, state = jax.eval_shape(lambda v, x: model.apply(
        v, x, train=True, rngs=rngs, mutable=["batch_stats", "aux_logits"]), variables, x)
    expected = {"aux1", "aux2"} if name.startswith("googlenet") else {"aux1"}
    assert set(state["aux_logits"]) == expected
    for (logits,) in state["aux_logits"].values():
        assert logits.shape == (2, 5) and logits.dtype == jnp.float32
    _, state = jax.eval_shape(lambda v, x: model.apply(
        v, x, train=False, mutable=["aux_logits"]), variables, x)
    assert not state.get("aux_logits")


def _smallest_feature_map(model, size):
    """The smallest spatial extent any layer sees or makes (0 if a stage empties the image)."""
    sizes = []

    def record(next_fun, args, kwargs, context):
        out = next_fun(*args, **kwargs)
        for a in (*args, out):
            if getattr(a, "ndim", 0) == 4:
                sizes.append(min(a.shape[1:3]))
        return out

    x = jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32)
    try:
        with nn.intercept_methods(record):
            jax.eval_shape(lambda x: model.init(jax.random.key(0), x), x)
    except (ValueError, TypeError):
        return 0
    return min(sizes)


@pytest.mark.parametrize("name,aux,size", [
    ("googlenet", True, 15), ("googlenet_paper", False, 31), ("googlenet_paper", True, 47),
    ("inception_v3", False, 75), ("inception_v3", True, 299), ("densenet121", False, 29),
])
@pytest.mark.slow
def test_min_size_is_tight(name, aux, size, monkeypatch):
    """At min_size every stage keeps a pixel; one pixel less empties one (the check aside)."""
    model = jaxcnn.create_model(name, num_classes=3, **({"aux_logits": True} if aux else {}))
    assert model.min_size == size
    x = jax.ShapeDtypeStruct((1, size - 1, size - 1, 3), jnp.float32)
    with pytest.raises(jaxcnn.InputShapeError, match=f"{size}x{size}"):
        jax.eval_shape(lambda x: model.init(jax.random.key(0), x), x)
    monkeypatch.setattr(jaxcnn.layers, "check_image", lambda *args, **kwargs: None)
    assert _smallest_feature_map(model, size) >= 1
    assert _smallest_feature_map(model, size - 1) == 0



@pytest.mark.parity
@pytest.mark.parametrize("name,heads", [("googlenet", ("aux1", "aux2")),
                                        ("inception_v3", ("AuxLogits",))])
def test_declared_converter_loads_aux_heads_only_into_a_model_that_has_them(name, heads):
    tv = pytest.importorskip("torchvision")
    builder = getattr(tv.models, name)
    state = {k: v.numpy() for k, v in builder(weights=None, aux_logits=True,
                                              init_weights=False).state_dict().items()}
    ours = {"aux1": "aux1_head", "aux2": "aux2_head", "AuxLogits": "aux_head"}

    with_aux = convert.load_pretrained(name, state, from_="torchvision", aux_logits=True)
    for head in heads:
        fc = "fc2" if name == "googlenet" else "fc"
        np.testing.assert_array_equal(with_aux["params"][ours[head]][fc]["bias"],
                                      state[f"{head}.{fc}.bias"])
    without = convert.load_pretrained(name, state, from_="torchvision")
    assert not {ours[h] for h in heads} & set(without["params"])

    # A file without the aux heads cannot fill a model built with them: the error names them.
    bare = {k: v for k, v in state.items() if not k.startswith(heads)}
    with pytest.raises(weights.WeightMismatchError, match=ours[heads[0]]):
        convert.load_pretrained(name, bare, from_="torchvision", aux_logits=True)


@pytest.mark.parametrize("size", [(7, 9), (8, 8)])
def test_densenet_transition_pools_before_its_convolution_with_the_same_maps(size):
    """The transition's 1x1 conv and 2x2/2 average pool, run in the other order, give the maps
    and gradients of the order the paper writes (XLA's convolution, then the pool), odd sizes
    too; the summary still counts the convolution at its input's resolution."""
    from jaxcnn import densenet, layers

    x = jax.random.normal(jax.random.key(0), (2, *size, 6))
    layer = densenet.ConvAvgPool(4, (1, 1), use_bias=False)
    params = layer.init(jax.random.key(1), x)["params"]

    def ours(kernel, x):
        return layer.apply({"params": {"kernel": kernel}}, x)

    def written(kernel, x):
        y = jax.lax.conv_general_dilated(x, kernel, (1, 1), "VALID",
                                         dimension_numbers=("NHWC", "HWIO", "NHWC"))
        return layers.avg_pool(y, 2, 2)

    cotangent = jax.random.normal(jax.random.key(2), (2, size[0] // 2, size[1] // 2, 4))
    got, got_vjp = jax.vjp(ours, params["kernel"], x)
    want, want_vjp = jax.vjp(written, params["kernel"], x)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    for g, w in zip(got_vjp(cotangent), want_vjp(cotangent)):
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6)
    transition = densenet.Transition(4, layers.batch_norm())
    norm, conv = jaxcnn.layer_rows(transition, x.shape)
    assert conv.output_shape == (1, size[0] // 2, size[1] // 2, 4)
    assert conv.macs == size[0] * size[1] * 6 * 4
