"""Backbone use: features by layer name, pre-logits, and moving weights to a new head."""

import jax
import numpy as np
import pytest

import jaxcnn
from jaxcnn import convert, features
from jaxcnn.weights import WeightMismatchError


@pytest.fixture(scope="module")
def lenet():
    model = jaxcnn.create_model("lenet5")
    x = jax.random.normal(jax.random.key(0), (2, 32, 32, 1))
    return model, model.init(jax.random.key(1), x, train=False), x


def test_layer_names_and_shapes(lenet):
    model, variables, x = lenet
    shapes = features.feature_layers(model, variables, x)
    assert list(shapes)[:2] == ["conv1", "conv2"]
    assert shapes["conv1"] == (2, 28, 28, 6)  # 5x5 valid convolution on 32x32
    assert shapes["pre_logits"] == (2, 84) and shapes["logits"] == (2, 10)


def test_features_are_the_layer_outputs(lenet):
    model, variables, x = lenet
    out = features.extract_features(model, variables, x, layers=("conv2", "fc1"))
    assert out["fc1"].shape == (2, 120)
    # The pre-logits are what the classifier multiplies: logits = pre_logits @ W + b.
    head = variables["params"]["head"]
    np.testing.assert_allclose(out["pre_logits"] @ head["kernel"] + head["bias"], out["logits"],
                               rtol=1e-5, atol=1e-5)


def test_unknown_layer_lists_the_names(lenet):
    model, variables, x = lenet
    with pytest.raises(KeyError, match="conv1"):
        features.extract_features(model, variables, x, layers=("conv9",))


def test_transfer_keeps_all_but_the_classifier():
    """Parameters and BatchNorm statistics come from the pretrained network, the classifier of
    another width keeps its new initial value (the one copy of this check; tests/
    test_transfer.py covers the trainer's --pretrained on top of it)."""
    old = jaxcnn.init_shapes("resnet18", (1, 64, 64, 3))
    new = jaxcnn.init_shapes(jaxcnn.create_model("resnet18", num_classes=5), (1, 64, 64, 3))
    to_np = lambda t, v: jax.tree_util.tree_map(lambda s: np.full(s.shape, v, np.float32), t)
    merged, fresh = convert.transfer(to_np(old, 1.0), to_np(new, 0.0), num_classes=5)
    assert sorted(fresh) == ["params/head/bias", "params/head/kernel"]
    leaves = {jax.tree_util.keystr(p): v for p, v in jax.tree_util.tree_leaves_with_path(merged)}
    assert any("batch_stats" in path for path in leaves)
    for path, value in leaves.items():
        assert np.all(value == (0.0 if "'head'" in path else 1.0)), path


def test_transfer_refuses_another_architecture():
    old = jaxcnn.init_shapes("resnet34", (1, 64, 64, 3))
    new = jaxcnn.init_shapes("resnet18", (1, 64, 64, 3))
    to_np = lambda t: jax.tree_util.tree_map(lambda s: np.zeros(s.shape, np.float32), t)
    with pytest.raises(WeightMismatchError, match="--arch"):
        convert.transfer(to_np(old), to_np(new), num_classes=1000)


@pytest.mark.parity
def test_convert_command_writes_a_checkpoint_the_library_loads(tmp_path, capsys):
    """torchvision state dict -> safetensors -> python -m jaxcnn.convert -> Orbax -> variables."""
    torch = pytest.importorskip("torch")
    torchvision = pytest.importorskip("torchvision")
    from safetensors.torch import save_file

    ref = torchvision.models.squeezenet1_1(weights=None).eval()
    src = tmp_path / "squeezenet1_1.safetensors"
    save_file({k: v.contiguous() for k, v in ref.state_dict().items()}, str(src))
    convert.main([str(src), "--arch", "squeezenet1_1", "--out", str(tmp_path / "ckpt")])
    variables, meta = convert.load_converted(tmp_path / "ckpt")
    assert meta["arch"] == "squeezenet1_1" and meta["num_classes"] == 1000
    x = np.random.default_rng(0).standard_normal((1, 64, 64, 3)).astype(np.float32)
    with torch.no_grad():
        expected = ref(torch.from_numpy(x.transpose(0, 3, 1, 2))).numpy()
    got = jaxcnn.create_model("squeezenet1_1").apply(variables, x, train=False)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())
    # A second conversion to the same --out is one line and exit status 2, the first kept.
    capsys.readouterr()
    assert convert.main([str(src), "--arch", "squeezenet1_1", "--out", str(tmp_path / "ckpt")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "exists; choose a new --out" in err
    assert convert.load_converted(tmp_path / "ckpt")[1]["arch"] == "squeezenet1_1"
