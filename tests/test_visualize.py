"""jaxcnn.visualize and python -m train.visualize: checked by hand, against Captum, and on bad input.

Expected values come from outside the code under test: NumPy computations written out step by
step (the deconvnet of Zeiler & Fergus sec. 2.1 and guided backpropagation of Springenberg et
al. sec. 3.4 on a tiny network), receptive fields counted from the layer geometry, a planted
patch, a full sort of the split, the completeness of integrated gradients (Sundararajan et al.
2017, Prop. 1), and Captum 0.9 on converted torchvision/timm networks.
"""

from __future__ import annotations

import contextlib
import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxcnn
from jaxcnn import features
from jaxcnn import visualize as vz


@pytest.fixture(scope="module")
def lenet():
    model = jaxcnn.create_model("lenet5")
    x = jax.random.normal(jax.random.key(0), (3, 32, 32, 1))
    # One compiled init: op by op, each initialiser compiles on its own (seconds).
    return model, jax.jit(lambda x: model.init(jax.random.key(1), x, train=False))(x), x


# ---------------------------------------------------------------------------------------------
# The backward rules, by hand.


class TinyNet(nn.Module):
    """Zeiler & Fergus' layer (2x2 convolution, rectifier, 2x2 max pooling with stride 1), then
    a rectified dense layer of 3 units and 2 classes; ``act`` is the rectifier."""

    act: callable = nn.relu

    @nn.compact
    def __call__(self, x, *, train=False):
        x = nn.max_pool(self.act(nn.Conv(1, (2, 2), padding="VALID", use_bias=False,
                                         name="conv")(x)), (2, 2), (1, 1))
        x = self.act(nn.Dense(3, use_bias=False, name="hidden")(x.reshape(len(x), -1)))
        return nn.Dense(2, use_bias=False, name="head")(x)


X = np.array([[2, 3, 4, 5],
              [0, 0, 4, 5],
              [1, 1, 5, 2],
              [1, 4, 1, 2]], np.float32)
K = np.array([[1, -1],
              [-1, 2]], np.float32)
W1 = np.array([[1, -1, 2], [-2, 1, 1], [1, 1, -1], [-1, 2, 1]], np.float32)  # (4 inputs, 3)
W2 = np.array([[2, -1], [-1, 1], [1, 2]], np.float32)  # (3 hidden, 2 classes)
TINY = {"params": {"conv": {"kernel": K[:, :, None, None]}, "hidden": {"kernel": W1},
                   "head": {"kernel": W2}}}


def tiny_by_hand(rule: str, target: int) -> np.ndarray:
    """The input attribution of class ``target`` under ``rule``, step by step in NumPy."""

    def rectify_backward(g, x):  # what a rectifier with input x passes back of the signal g
        if rule == "gradient":
            return g * (x > 0)
        if rule == "deconvnet":  # Zeiler & Fergus: rectify the signal, whatever the forward sign
            return np.maximum(g, 0)
        return np.maximum(g, 0) * (x > 0)  # guided: both

    z = np.zeros((3, 3))  # the convolution (a correlation, as Flax's and torch's)
    for i in range(3):
        for j in range(3):
            z[i, j] = np.sum(X[i:i + 2, j:j + 2] * K)
    a = np.maximum(z, 0)
    pooled, switches = np.zeros((2, 2)), {}
    for i in range(2):
        for j in range(2):
            window = a[i:i + 2, j:j + 2]
            assert np.sum(window == window.max()) == 1, "a tie would need a tie-breaking rule"
            r, c = np.unravel_index(np.argmax(window), (2, 2))
            pooled[i, j], switches[i, j] = window.max(), (i + r, j + c)
    h = pooled.reshape(-1) @ W1
    # Backwards from the target logit.
    g_hidden = rectify_backward(W2[:, target], h)
    g_pooled = (W1 @ g_hidden).reshape(2, 2)
    g_a = np.zeros((3, 3))
    for (i, j), (r, c) in switches.items():  # unpooling: back to each window's maximum
        g_a[r, c] += g_pooled[i, j]
    g_z = rectify_backward(g_a, z)
    g_x = np.zeros((4, 4))  # the transposed convolution: each signal spreads the filter
    for i in range(3):
        for j in range(3):
            g_x[i:i + 2, j:j + 2] += g_z[i, j] * K
    return g_x


def test_tiny_network_is_set_up_to_tell_the_rules_apart():
    # The hand computation's forward pass: z = [[-1, 7, 5], [1, 5, -2], [7, -6, 6]]; the four
    # windows' maxima are 7 at (0, 1) twice, 7 at (2, 0) and 6 at (2, 2); the hidden
    # pre-activations are [-6, 19, 20]. A negative signal reaches a positive z (the gradient
    # passes it, the deconvnet and guided backpropagation stop it) and a positive one reaches
    # the negative hidden unit (only the deconvnet passes it).
    hand = {rule: tiny_by_hand(rule, 0) for rule in vz.RULES}
    assert not np.allclose(hand["gradient"], hand["deconvnet"])
    assert not np.allclose(hand["deconvnet"], hand["guided"])
    assert not np.allclose(hand["guided"], hand["gradient"])


@pytest.mark.parametrize("target", [0, 1])
def test_deconvnet_and_guided_backprop_equal_the_hand_computation(target):
    out = vz.explain(TinyNet(), TINY, X[None, :, :, None], target,
                     ("gradient", "deconvnet", "guided_backprop"))
    for method, rule in (("gradient", "gradient"), ("deconvnet", "deconvnet"),
                         ("guided_backprop", "guided")):
        np.testing.assert_allclose(out[method][0, :, :, 0], tiny_by_hand(rule, target),
                                   atol=1e-6, err_msg=method)


def test_gradient_rule_is_jax_gradient_and_no_rectifiers_is_the_gradient(lenet):
    model, variables, x = lenet

    def score(images):
        return jnp.sum(model.apply(variables, images)[:, 4])

    def grad(f):  # compiled: op by op, the first gradient of LeNet-5 takes 5 s to dispatch
        return jax.jit(jax.grad(f))(x)

    plain = grad(score)
    np.testing.assert_allclose(grad(vz.backward_rule(score, "gradient")), plain, atol=1e-7)
    np.testing.assert_allclose(grad(vz.backward_rule(score, "deconvnet", ())), plain, atol=1e-7)
    assert not np.allclose(grad(vz.backward_rule(score, "deconvnet")), plain, atol=1e-4)


def test_relu6_gets_the_rule_on_its_rectifying_part():
    x = jnp.array([-2.0, -1.0, 1.0, 3.0, 7.0, 9.0])
    w = jnp.array([1.0, -1.0, -1.0, 2.0, 1.0, -3.0])  # the backward signal at each output

    def f(v):
        return jnp.sum(w * jax.nn.relu6(v))

    inside, below6 = (x > 0) & (x < 6), x < 6  # relu6 = min(max(x, 0), 6)
    expected = {"gradient": w * inside,
                "deconvnet": np.maximum(w, 0) * below6,  # the clip at 6 keeps its gradient
                "guided": np.maximum(w, 0) * inside}
    for rule, value in expected.items():
        np.testing.assert_array_equal(jax.grad(vz.backward_rule(f, rule))(x), value,
                                      err_msg=rule)


def test_hard_swish_and_silu_keep_their_gradient():
    """Not rectifiers: even the relu6 inside jax.nn.hard_sigmoid keeps the plain gradient."""
    x = jnp.linspace(-5.0, 5.0, 11)

    def f(v):
        return jnp.sum(jnp.sin(v) * (jax.nn.hard_swish(v) + jax.nn.silu(v)
                                     + jax.nn.hard_sigmoid(v)))

    for rule in ("deconvnet", "guided"):
        np.testing.assert_allclose(jax.grad(vz.backward_rule(f, rule))(x), jax.grad(f)(x),
                                   atol=1e-7)


# ---------------------------------------------------------------------------------------------
# Occlusion, integrated gradients, Grad-CAM.


class PatchDetector(nn.Module):
    """Class 1 scores the brightest 3x3 patch anywhere (a 3x3 sum, max-pooled), class 0 does not
    look."""

    @nn.compact
    def __call__(self, x, *, train=False):
        sums = nn.Conv(1, (3, 3), padding="VALID", use_bias=False, name="detector")(x)
        score = jnp.max(sums, axis=(1, 2)) - 4.0
        return jnp.concatenate([jnp.zeros_like(score), score], axis=-1)


def test_occlusion_is_lowest_where_the_planted_patch_is():
    rng = np.random.default_rng(0)
    image = rng.uniform(0, 0.3, (1, 16, 16, 1)).astype(np.float32)
    image[0, 9:12, 4:7] = 1.0  # the discriminative patch: rows 9-11, columns 4-6
    variables = {"params": {"detector": {"kernel": np.ones((3, 3, 1, 1), np.float32)}}}
    maps = vz.occlusion_maps(PatchDetector(), variables, image, [1], window=4, stride=2)
    # Windows start at 0, 2, ..., 12; only the one at (8, 4) covers the whole patch.
    assert maps["probability"].shape == (1, 7, 7)
    assert np.unravel_index(np.argmin(maps["probability"][0]), (7, 7)) == (4, 2)
    assert maps["most_probable"][0, 4, 2] == 0 and np.sum(maps["most_probable"] == 0) == 1
    # The per-pixel map (Captum's Occlusion) puts the largest drop of the score on the patch.
    pixels = vz.explain(PatchDetector(), variables, image, 1, ("occlusion",), window=4,
                        stride=2)["occlusion"][0]
    top = np.unravel_index(np.argmax(pixels), pixels.shape)
    assert 9 <= top[0] <= 11 and 4 <= top[1] <= 6


def test_occlusion_strongest_feature_map(lenet):
    model, variables, x = lenet
    maps = vz.occlusion_maps(model, variables, x[:2], [1, 2], window=8, stride=8, layer="conv2")
    conv2 = features.extract_features(model, variables, x[:2], layers=("conv2",))["conv2"]
    np.testing.assert_array_equal(maps["strongest_channel"],
                                  np.argmax(np.max(conv2, axis=(1, 2)), axis=-1))
    assert maps["feature_map"].shape == maps["probability"].shape == (2, 4, 4)
    np.testing.assert_array_less(maps["probability"], 1.0)


@pytest.mark.parametrize("points", ["gausslegendre", "riemann_trapezoid", "riemann_middle"])
def test_quadrature_integrates_what_it_should(points):
    nodes, weights = vz.quadrature(points, 5)
    assert np.all((nodes >= 0) & (nodes <= 1)) and np.isclose(weights.sum(), 1.0)
    # Gauss-Legendre with n points is exact for polynomials of degree 2n - 1: int x^9 = 1/10;
    # the trapezoid and midpoint rules are exact for straight lines: int (3x + 1) = 2.5.
    if points == "gausslegendre":
        assert np.isclose(np.sum(weights * nodes ** 9), 0.1)
    assert np.isclose(np.sum(weights * (3 * nodes + 1)), 2.5)


def test_integrated_gradients_add_up_to_the_score_difference(lenet):
    model, variables, x = lenet
    baseline = 0.5
    ig = vz.explain(model, variables, x, 7, ("integrated_gradients",), steps=32,
                    baseline=baseline)["integrated_gradients"]
    logits = model.apply(variables, jnp.concatenate([x, jnp.full_like(x[:1], baseline)]))
    difference = logits[:3, 7] - logits[3, 7]
    # Completeness (Sundararajan et al. 2017, Prop. 1), up to the integration error.
    np.testing.assert_allclose(np.sum(ig, axis=(1, 2, 3)), difference,
                               rtol=0.02, atol=0.02 * float(np.max(np.abs(difference))))


def test_grad_cam_weights_each_map_by_its_mean_gradient(lenet):
    model, variables, x = lenet
    out = vz.explain(model, variables, x, [1, 2, 3], ("grad_cam",), layer="conv2",
                     relu_cam=False)["grad_cam"]
    # Selvaraju et al. eq. 1-2 written out: logits = f(conv2) for the layers after conv2.
    conv2 = features.extract_features(model, variables, x, layers=("conv2",))["conv2"]

    def rest(maps, n):  # the network after conv2, as LeNet5.__call__ writes it
        p = variables["params"]
        h = nn.max_pool(nn.relu(maps), (2, 2), (2, 2)).reshape(len(maps), -1)
        h = nn.relu(h @ p["fc1"]["kernel"] + p["fc1"]["bias"])
        h = nn.relu(h @ p["fc2"]["kernel"] + p["fc2"]["bias"])
        return jnp.sum((h @ p["head"]["kernel"] + p["head"]["bias"])[jnp.arange(3), n])

    grads = jax.grad(rest)(conv2, jnp.array([1, 2, 3]))
    alphas = grads.mean(axis=(1, 2), keepdims=True)
    np.testing.assert_allclose(out, np.sum(alphas * conv2, axis=-1), atol=1e-5)


# ---------------------------------------------------------------------------------------------
# Top activations, receptive fields, filters.


def test_top_k_streaming_equals_sorting_the_whole_split(lenet):
    model, variables, _ = lenet
    images = np.asarray(jax.random.normal(jax.random.key(5), (14, 32, 32, 1)))
    padded = np.concatenate([images, np.zeros((1, 32, 32, 1), np.float32)])
    batches = [padded[0:5], {"image": padded[5:10]},
               {"image": padded[10:15], "mask": np.arange(5) < 4}]  # the last row is padding
    channels = [0, 3, 7, 15]
    top = vz.top_activations(model, variables, batches, "conv2", k=4, channels=channels)
    conv2 = np.asarray(features.extract_features(model, variables, images,
                                                 layers=("conv2",))["conv2"])
    for i, c in enumerate(channels):
        strongest = conv2[..., c].reshape(14, -1).max(axis=1)
        order = np.argsort(-strongest, kind="stable")[:4]
        np.testing.assert_array_equal(top.index[i], order)
        np.testing.assert_allclose(top.values[i], strongest[order], rtol=1e-6)
        where = conv2[order, :, :, c].reshape(4, -1).argmax(axis=1)
        np.testing.assert_array_equal(top.row[i], where // 10)
        np.testing.assert_array_equal(top.col[i], where % 10)
        np.testing.assert_array_equal(top.images[i], images[order])


def test_top_k_with_fewer_images_than_k(lenet):
    model, variables, x = lenet
    top = vz.top_activations(model, variables, [np.asarray(x[:2])], "fc1", k=3, channels=[5])
    assert sorted(top.index[0, :2].tolist()) == [0, 1] and top.index[0, 2] == -1
    projections, boxes = vz.project_top(model, variables, top)
    assert np.all(projections[0, 2] == 0) and np.all(boxes[0, 2] == 0)
    assert tuple(boxes[0, 0]) == (0, 0, 32, 32)  # a dense unit sees the whole image


def test_receptive_fields_follow_the_layer_geometry(lenet):
    model, variables, _ = lenet
    # LeNet-5: 5x5 convolution, 2x2 max pooling, 5x5 convolution: conv2's unit (r, c) sees
    # 5 + 2 * (5 - 1) + 1 = 14 pixels a side starting at (2r, 2c).
    boxes = vz.receptive_fields(model, variables, (32, 32, 1), "conv2", [0, 3, 9], [0, 5, 9])
    np.testing.assert_array_equal(boxes, [[0, 0, 14, 14], [6, 10, 20, 24], [18, 18, 32, 32]])
    # All-CNN-C: two 3x3 convolutions (padding 1), then a 3x3 one of stride 2 (padding 1):
    # conv3's unit r sees rows 2r - 3 to 2r + 3, cut at the image border.
    allcnn = jaxcnn.create_model("allcnn_c", num_classes=10)
    v = allcnn.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
    boxes = vz.receptive_fields(allcnn, v, (32, 32, 3), "conv3", [0, 5, 15], [1, 5, 15])
    np.testing.assert_array_equal(boxes, [[0, 0, 4, 6], [7, 7, 14, 14], [27, 27, 32, 32]])


@pytest.mark.slow
def test_projections_and_patches_of_top_activations(lenet):
    model, variables, x = lenet
    top = vz.top_activations(model, variables, [np.asarray(x)], "conv2", k=2, channels=[1, 2])
    projections, boxes = vz.project_top(model, variables, top)
    for c in range(2):
        for j in range(2):
            r, q = top.row[c, j], top.col[c, j]
            np.testing.assert_array_equal(boxes[c, j], [2 * r, 2 * q, 2 * r + 14, 2 * q + 14])
            # The projection lies inside the unit's receptive field.
            outside = projections[c, j].copy()
            outside[2 * r:2 * r + 14, 2 * q:2 * q + 14] = 0
            assert np.all(outside == 0) and np.any(projections[c, j] != 0)
    patches = vz.crop(top.images, boxes)
    assert patches.shape == (2, 2, 14, 14, 1)
    r, q = top.row[0, 0], top.col[0, 0]
    np.testing.assert_array_equal(patches[0, 0], top.images[0, 0, 2 * r:2 * r + 14,
                                                             2 * q:2 * q + 14])


def test_first_layer_filters(lenet):
    model, variables, x = lenet
    np.testing.assert_array_equal(vz.first_layer_filters(model, variables, x),
                                  variables["params"]["conv1"]["kernel"])
    grid = vz.tile(vz.filter_images(variables["params"]["conv1"]["kernel"]), columns=3)
    assert grid.shape == (2 * 5 + 3, 3 * 5 + 4, 1) and grid.min() >= 0 and grid.max() <= 1


# ---------------------------------------------------------------------------------------------
# Bad input: one clear error naming the problem and the fix.


@pytest.mark.parametrize("request_,message", [
    (dict(target=vz.Unit("conv9", 0)), r"no layer 'conv9'.*conv1, conv2, fc1, fc2, head"),
    (dict(target=1, methods=("grad_cam",), layer="fc1"),
     r"grad_cam needs a layer with spatial axes.*fc1 gives \(3, 120\).*e\.g\. conv2"),
    (dict(target=1, methods=("grad_cam",)), r"grad_cam needs a layer.*conv1, conv2"),
    (dict(target=10), r"Target class 10 is out of range: LeNet5 has 10 classes \(0 to 9\)"),
    (dict(target=[1, 2]), r"one per image \(3\)"),
    (dict(target=vz.Unit("conv2", 16)), r"Feature map 16 is out of range: conv2 has 16"),
    (dict(target=vz.Unit("conv2", 0, 10, 0)), r"Row 10 is out of range: conv2 has 10 rows"),
    (dict(target=1, methods=("occlusion",), window=40), r"window 40 does not fit"),
    (dict(target=1, methods=("integrated_gradients",), integration="simpson"),
     r"Unknown integration 'simpson'"),
    (dict(target=1, methods=("lime",)), r"Unknown method.*lime"),
    (dict(target=1, rectifiers=("silu",)), r"not rectifiers"),
])
def test_bad_requests_name_the_problem(lenet, request_, message):
    model, variables, x = lenet
    kwargs = {"methods": ("gradient",), **request_}
    with pytest.raises(vz.VisualizeError, match=message):
        vz.explain(model, variables, x, **kwargs)


@pytest.mark.parametrize("shape,message", [
    ((32, 32, 1), r"batch shaped \(N, H, W, C\).*x\[None\]"),
    ((1, 28, 28, 1), r"exactly 32x32"),
    ((1, 32, 32, 3), r"cannot take images shaped \(1, 32, 32, 3\).*\(5, 5, 1, 6\)"),
])
def test_images_of_the_wrong_shape(lenet, shape, message):
    model, variables, _ = lenet
    with pytest.raises(jaxcnn.InputShapeError, match=message):
        vz.explain(model, variables, np.zeros(shape, np.float32), 1)


# ---------------------------------------------------------------------------------------------
# The command line.


@pytest.fixture(scope="module")
def converted(tmp_path_factory, lenet):
    from jaxcnn import convert

    model, variables, _ = lenet
    directory = tmp_path_factory.mktemp("weights") / "lenet5"
    convert.save_converted(directory, variables, arch="lenet5", source="test", num_classes=10)
    images = tmp_path_factory.mktemp("images")
    np.save(images / "good.npy", np.asarray(lenet[2]))
    np.save(images / "small.npy", np.zeros((2, 28, 28, 1), np.float32))
    return str(directory), images


@pytest.mark.parametrize("args,message", [
    (["--method", "grad_cam", "--layer", "conv9"], "no layer 'conv9'"),
    (["--method", "grad_cam", "--layer", "fc2"], "needs a layer with spatial axes"),
    (["--target", "12"], "Target class 12 is out of range"),
    (["--target", "label"], "--target label needs labelled images"),
    (["--small"], r"holds shape \(2, 28, 28, 1\).*\(N, 32, 32, 1\)"),
    (["--method", "top_activations"], "streams a data set split: pass --dataset"),
])
def test_command_line_errors_write_nothing(converted, tmp_path, capsys, args, message):
    from train import visualize as cli

    weights, images = converted
    picture = images / ("small.npy" if "--small" in args else "good.npy")
    args = [a for a in args if a != "--small"]
    out = tmp_path / "out"
    code = cli.main(["--arch", "lenet5", "--weights", weights, "--images", str(picture),
                     "--out", str(out), "--no-progress", *args])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("error: ")
    assert re.search(message, err[0]), err[0]
    assert not out.exists()


def test_command_line_draws_and_saves(converted, tmp_path, capsys):
    from train import visualize as cli

    weights, images = converted
    out = tmp_path / "out"
    assert cli.main(["--arch", "lenet5", "--weights", weights, "--images",
                     str(images / "good.npy"), "--out", str(out), "--method", "guided_backprop",
                     "--target", "3"]) == 0
    saved = np.load(out / "guided_backprop.npy")
    assert saved.shape == (3, 32, 32, 1)
    assert (out / "guided_backprop.png").stat().st_size > 1000
    np.testing.assert_array_equal(np.load(out / "guided_backprop_targets.npy"), [3, 3, 3])
    # Asked again, it refuses to overwrite.
    assert cli.main(["--arch", "lenet5", "--weights", weights, "--images",
                     str(images / "good.npy"), "--out", str(out), "--method",
                     "guided_backprop"]) == 2
    assert "exists" in capsys.readouterr().err


def test_command_line_explains_the_predicted_class(converted, lenet, tmp_path):
    """``--target predicted``: each image's attribution is for the class the network ranks
    first (its logits computed here by ``model.apply``)."""
    from train import visualize as cli

    model, variables, x = lenet
    weights, images = converted
    out = tmp_path / "out"
    assert cli.main(["--arch", "lenet5", "--weights", weights, "--images",
                     str(images / "good.npy"), "--out", str(out), "--method", "saliency",
                     "--target", "predicted", "--no-progress"]) == 0
    want = np.argmax(model.apply(variables, x, train=False), axis=-1)
    np.testing.assert_array_equal(np.load(out / "saliency_targets.npy"), want)


@pytest.mark.slow
def test_command_line_on_a_training_run(tmp_path):
    from train import train as train_lib
    from train import visualize as cli
    from train.configs.default import get_config

    workdir = tmp_path / "run"
    train_lib.train_and_evaluate(get_config().replace(
        arch="lenet5", max_steps=2, batch_size=32, workdir=str(workdir)), print_fn=lambda s: None)
    for method in ("overview", "top_activations", "filters", "occlusion_maps"):
        extra = (["--limit", "40", "--k", "2", "--channels", "0-1"]
                 if method == "top_activations" else [])
        assert cli.main(["--workdir", str(workdir), "--method", method, "--count", "2",
                         "--no-progress", *extra]) == 0, method
        assert (workdir / "visualize" / f"{method}.png").exists()
    patches = np.load(workdir / "visualize" / "top_activations_patches.npy")
    assert patches.shape[:2] == (2, 2)


# ---------------------------------------------------------------------------------------------
# Captum on converted torchvision/timm networks.

# Input size (odd, and as small as gives Grad-CAM a 2x2 map), our layer for Grad-CAM and the
# reference module with the same output. AlexNet's smallest input is 63, VGG's 32.
CAPTUM_CASES = {"alexnet": (63, "conv5", "features.10"),
                "vgg16": (33, "block5_conv3", "features.29"),
                "resnet50": (19, "stage3_block6", "layer3.5"),
                "googlenet": (19, "inception4e", "inception4e"),
                "mobilenet_v2": (19, "stage5_block3", "features.13"),
                "seresnet50": (19, "stage3_block6", "layer3.5")}
# Their 4096-wide dense layers in float64 take the time of these cases, not compiling: they run
# with XLA's optimisation passes on (conftest.xla_optimized). 2-core AMD EPYC with AVX-512,
# 2026-12-07, alone: VGG-16 100 -> 40 s, AlexNet 60 -> 12 s. The other cases' networks run at
# 19 px and compile longer than they run: 88 s for the four unoptimised, 105 s optimised.
CAPTUM_RUN_BOUND = frozenset({"alexnet", "vgg16"})
CAPTUM_METHODS = ("saliency", "integrated_gradients", "guided_backprop", "deconvnet", "grad_cam",
                  "occlusion")


def rectifier_modules(model):
    """``model`` with a ``torch.nn.ReLU`` module at every rectifier, where Captum's hooks see
    them: in-place ReLUs made out-of-place (Captum's hooks need the input), torchvision's
    functional ``F.relu`` of GoogLeNet's BasicConv2d given a module, and ReLU6 written as a
    ReLU module followed by the clip at 6. The values are unchanged."""
    import torch

    class ClipAt6(torch.nn.Module):
        def forward(self, x):
            return torch.clamp(x, max=6.0)

    def basic_conv_forward(module):
        return lambda x: module.relu(module.bn(module.conv(x)))

    for module in list(model.modules()):
        if isinstance(module, torch.nn.ReLU):
            module.inplace = False
        if type(module).__name__ == "BasicConv2d":
            module.relu = torch.nn.ReLU()
            module.forward = basic_conv_forward(module)
        for name, child in list(module.named_children()):
            if isinstance(child, torch.nn.ReLU6):
                setattr(module, name, torch.nn.Sequential(torch.nn.ReLU(), ClipAt6()))
    return model


@pytest.mark.parity
@pytest.mark.slow
@pytest.mark.parametrize("name", list(CAPTUM_CASES))
def test_attributions_match_captum(name):
    """Saliency, IntegratedGradients (Gauss-Legendre, 2 steps, baseline 0), GuidedBackprop,
    Deconvolution, LayerGradCam (without its final ReLU, Captum's default) and Occlusion
    (12x12 window, stride 8, baseline 0: the second window is cut at the border) on the
    converted network, relative error < 1e-4.

    The reference: conftest's :func:`torch_reference` (test_parity's random weights and
    BatchNorm), with the running statistics of every network calibrated on other random images
    (otherwise the logits of GoogLeNet and MobileNetV2 hardly depend on the input: gradients of
    1e-14), adapted by :func:`rectifier_modules` so that Captum's rules reach every rectifier
    as ours do (the papers' scope; the difference of scopes is tested on a tiny network
    below). Both sides
    compute in float64: at random weights the gradient is ill-conditioned (mixed signs cancel),
    so torch's own float32 saliency differs from its float64 by 2.7e-3 on ResNet-50 and 2e-2 on
    GoogLeNet, and a float32 comparison could not tell a wrong definition from rounding. The
    converted float32 weights are those of the float64 reference, and the forward pass's
    float32 parity is test_parity's. Inputs are odd-sized and small (CAPTUM_CASES).
    """
    torch = pytest.importorskip("torch")
    captum_attr = pytest.importorskip("captum.attr")
    from jaxcnn import convert
    from conftest import (CALIBRATION_BATCH, NUM_CLASSES, random_images, torch_reference,
                          xla_optimized)

    size, layer, module = CAPTUM_CASES[name]
    conv = convert.converters_for(name)[0]
    ref = torch_reference(conv, random_images(2, CALIBRATION_BATCH, size, False))
    state = {k: v.detach().numpy().copy() for k, v in ref.state_dict().items()}
    ref = rectifier_modules(ref).double().eval()
    x = random_images(1, 2, size, False).astype(np.float64)
    target = [3, 7]

    variables = convert.load_pretrained(name, state, input_shape=(1, size, size, 3),
                                        num_classes=NUM_CLASSES)
    optimized = xla_optimized() if name in CAPTUM_RUN_BOUND else contextlib.nullcontext()
    with jax.enable_x64(True), optimized:
        model = jaxcnn.create_model(name, num_classes=NUM_CLASSES, dtype=jnp.float64)
        variables = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), variables)
        ours = vz.explain(model, variables, x, np.array(target), CAPTUM_METHODS, layer=layer,
                          steps=2, integration="gausslegendre", window=12, stride=8,
                          relu_cam=False)
        ours = {k: np.asarray(v) for k, v in ours.items()}

    xt = torch.from_numpy(x.transpose(0, 3, 1, 2).copy()).requires_grad_()
    tt = torch.tensor(target)

    def nhwc(a):
        return a.detach().numpy().transpose(0, 2, 3, 1)

    reference = {
        "saliency": nhwc(captum_attr.Saliency(ref).attribute(xt, target=tt, abs=True)),
        "integrated_gradients": nhwc(captum_attr.IntegratedGradients(ref).attribute(
            xt, baselines=0.0, target=tt, n_steps=2, method="gausslegendre")),
        "guided_backprop": nhwc(captum_attr.GuidedBackprop(ref).attribute(xt, target=tt)),
        "deconvnet": nhwc(captum_attr.Deconvolution(ref).attribute(xt, target=tt)),
        "grad_cam": captum_attr.LayerGradCam(ref, ref.get_submodule(module)).attribute(
            xt, target=tt).detach().numpy()[:, 0],
        "occlusion": captum_attr.Occlusion(ref).attribute(
            xt, sliding_window_shapes=(3, 12, 12), strides=(3, 8, 8), baselines=0.0,
            target=tt, perturbations_per_eval=4).detach().numpy()[:, 0],
    }
    errors = {k: float(np.max(np.abs(ours[k] - reference[k])) / np.max(np.abs(reference[k])))
              for k in CAPTUM_METHODS}
    print(f"{name} vs Captum, max relative error: "
          + ", ".join(f"{k} {v:.1e}" for k, v in errors.items()))
    assert all(v < 1e-4 for v in errors.values()), errors


@pytest.mark.parity
@pytest.mark.parametrize("functional", [True, False], ids=["F.relu", "nn.ReLU"])
def test_captum_rectifies_only_relu_modules_the_papers_every_rectifier(functional):
    """Where Captum's Deconvolution and GuidedBackprop differ from the papers: a rectifier
    written as ``F.relu`` gets no hook and passes the plain gradient. On the tiny network, ours
    follows the papers (the hand computation) whatever the rectifier is written as, and
    ``rectifiers=()`` reproduces Captum's result for the functional one."""
    torch = pytest.importorskip("torch")
    captum_attr = pytest.importorskip("captum.attr")

    class TorchTiny(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(1, 1, 2, bias=False)
            self.hidden = torch.nn.Linear(4, 3, bias=False)
            self.head = torch.nn.Linear(3, 2, bias=False)
            self.relu1, self.relu2 = torch.nn.ReLU(), torch.nn.ReLU()

        def forward(self, x):
            act1 = torch.nn.functional.relu if functional else self.relu1
            act2 = torch.nn.functional.relu if functional else self.relu2
            x = torch.nn.functional.max_pool2d(act1(self.conv(x)), 2, 1)
            return self.head(act2(self.hidden(x.flatten(1))))

    net = TorchTiny().double()
    with torch.no_grad():
        net.conv.weight.copy_(torch.from_numpy(K[None, None]))
        net.hidden.weight.copy_(torch.from_numpy(W1.T.copy()))
        net.head.weight.copy_(torch.from_numpy(W2.T.copy()))
    xt = torch.from_numpy(X[None, None].astype(np.float64)).requires_grad_()
    theirs = {"deconvnet": captum_attr.Deconvolution(net).attribute(xt, target=0),
              "guided": captum_attr.GuidedBackprop(net).attribute(xt, target=0)}
    for method, rule in (("deconvnet", "deconvnet"), ("guided_backprop", "guided")):
        captum = theirs[rule].detach().numpy()[0, 0]
        hand = tiny_by_hand(rule, 0)
        paper = vz.explain(TinyNet(), TINY, X[None, :, :, None], 0, (method,))[method]
        np.testing.assert_allclose(paper[0, :, :, 0], hand, atol=1e-6)
        if functional:
            np.testing.assert_allclose(captum, tiny_by_hand("gradient", 0), atol=1e-12)
            scoped = vz.explain(TinyNet(), TINY, X[None, :, :, None], 0, (method,),
                                rectifiers=())[method]
            np.testing.assert_allclose(scoped[0, :, :, 0], captum, atol=1e-6)
        else:
            np.testing.assert_allclose(captum, hand, atol=1e-12)


def test_rectifier_free_evaluation_traces_afresh_after_a_jit_of_the_same_function():
    """The receptive-field evaluation (``linear=True``) must see max pooling as XLA's windowed
    maximum. A function the caller has already jitted on the CPU holds a trace with jaxcnn's
    formulation of it, which JAX would hand back for the same function and shapes whatever
    the policy; the evaluation traces afresh and gives what it gives for a new function."""
    x = jnp.asarray(np.random.default_rng(0).standard_normal((1, 8, 8, 2)), jnp.float32)

    def pooled_sum():
        return lambda images: jnp.sum(jaxcnn.layers.max_pool(images, 3, 2, 1))

    def support(f):
        return jax.grad(vz.backward_rule(f, "gradient", vz.RECTIFIERS, linear=True))(x)

    jitted = pooled_sum()
    jax.jit(jitted)(x)  # the caller's own compiled call, under the automatic policy
    np.testing.assert_array_equal(support(jitted), support(pooled_sum()))
