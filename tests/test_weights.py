"""The converter machinery on a small network: formats, layouts, and mismatch errors."""

import subprocess
import sys

import jax
import numpy as np
import pytest
from flax import linen as nn

import jaxcnn
from jaxcnn import convert, inception, weights
from jaxcnn.spec import NotMine, torch_parts
from jaxcnn.weights import Converter, WeightMismatchError


class Tiny(nn.Module):
    @nn.compact
    def __call__(self, x, *, train=False):
        x = nn.Conv(4, (3, 3), padding=((1, 1), (1, 1)), use_bias=False, name="conv")(x)
        x = nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5, name="bn")(x)
        x = nn.relu(x).mean(axis=(1, 2))
        return nn.Dense(3, name="fc")(x)


TORCH_NAMES = {"0": "conv", "1": "bn", "2": "fc"}
BN = {"weight": "params/bn/scale", "bias": "params/bn/bias", "running_mean": "batch_stats/bn/mean",
      "running_var": "batch_stats/bn/var"}


def _rename(key):
    """A rename as the families write them; ``num_batches_tracked`` never reaches it."""
    assert not key.endswith("num_batches_tracked"), "the engine drops it"
    (layer,), leaf = torch_parts(key, 2)
    if layer not in TORCH_NAMES and layer != "1":
        raise NotMine(key)
    if layer == "1":
        return BN[leaf]
    return f"params/{TORCH_NAMES[layer]}/{'kernel' if leaf == 'weight' else 'bias'}"


CONV = Converter(source="torchvision", reference="tiny", rename=_rename)


def _template():
    return jax.eval_shape(lambda: Tiny().init(jax.random.key(0), np.zeros((1, 8, 8, 2)), train=False))


def _state(rng):
    return {
        "0.weight": rng.standard_normal((4, 2, 3, 3)).astype(np.float32),
        "1.weight": rng.standard_normal(4).astype(np.float32),
        "1.bias": rng.standard_normal(4).astype(np.float32),
        "1.running_mean": rng.standard_normal(4).astype(np.float32),
        "1.running_var": rng.random(4).astype(np.float32) + 0.5,
        "1.num_batches_tracked": np.array(3),
        "2.weight": rng.standard_normal((3, 4)).astype(np.float32),
        "2.bias": rng.standard_normal(3).astype(np.float32),
    }


@pytest.mark.parity
def test_torch_layouts_match_pytorch_outputs():
    torch = pytest.importorskip("torch")
    ref = torch.nn.Sequential(torch.nn.Conv2d(2, 4, 3, padding=1, bias=False),
                              torch.nn.BatchNorm2d(4))
    fc = torch.nn.Linear(4, 3)
    state = {**{k: v.numpy() for k, v in ref.state_dict().items()},
             **{f"2.{k}": v.detach().numpy() for k, v in fc.state_dict().items()}}
    with torch.no_grad():
        ref[1].running_mean.normal_()
        ref[1].running_var.uniform_(0.5, 1.5)
        state.update({k: v.numpy() for k, v in ref.state_dict().items()})
        x = np.random.default_rng(0).standard_normal((2, 8, 8, 2)).astype(np.float32)
        ref.eval()
        out = fc(torch.relu(ref(torch.from_numpy(x.transpose(0, 3, 1, 2)))).mean(dim=(2, 3)))
    variables = weights.convert(state, _template(), CONV)
    ours = Tiny().apply(variables, x, train=False)
    np.testing.assert_allclose(ours, out.numpy(), rtol=1e-5, atol=1e-6)


def test_missing_unexpected_and_misshapen_arrays_are_all_named():
    state = _state(np.random.default_rng(0))
    del state["1.running_var"]
    state["2.weight"] = np.zeros((5, 4), np.float32)
    state["9.weight"] = np.zeros(3, np.float32)
    TORCH_NAMES["9"] = "extra"
    try:
        with pytest.raises(WeightMismatchError) as err:
            weights.convert(state, _template(), CONV)
    finally:
        del TORCH_NAMES["9"]
    text = str(err.value)
    assert "batch_stats/bn/var" in text  # missing
    assert "1.num_batches_tracked" not in text  # dropped by the engine, not unexpected
    assert "9.weight" in text  # unexpected
    assert "2.weight (5, 4)" in text  # wrong shape
    assert "params/fc/kernel" in text  # its target is then missing too


@pytest.mark.parametrize("suffix", [pytest.param(".safetensors", marks=pytest.mark.parity),
                                    ".npz"])  # safetensors comes with the parity extra
def test_files_read_without_torch(tmp_path, suffix):
    """safetensors and npz files are read in a process where importing torch fails."""
    state = _state(np.random.default_rng(1))
    path = tmp_path / f"w{suffix}"
    if suffix == ".npz":
        np.savez(path, **state)
    else:
        from safetensors.numpy import save_file

        save_file(state, str(path))
    code = (
        "import sys; sys.modules['torch'] = None\n"
        "from jaxcnn import weights\n"
        f"s = weights.load_state_dict({str(path)!r})\n"
        "print(sorted(s), s['0.weight'].shape)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "'2.bias'" in out.stdout and "(4, 2, 3, 3)" in out.stdout


@pytest.mark.parity
def test_torch_file_and_wrapped_checkpoint(tmp_path):
    torch = pytest.importorskip("torch")
    state = _state(np.random.default_rng(2))
    path = tmp_path / "w.pth"
    torch.save({"state_dict": {f"module.{k}": torch.from_numpy(np.asarray(v))
                               for k, v in state.items()}}, path)
    loaded = weights.load_state_dict(path)
    assert sorted(loaded) == sorted(state)
    np.testing.assert_array_equal(loaded["0.weight"], state["0.weight"])


@pytest.mark.parity
@pytest.mark.parametrize("legacy", [False, True])
def test_keras_weights_files_read_in_both_formats(tmp_path, legacy):
    h5py = pytest.importorskip("h5py")
    rng = np.random.default_rng(3)
    arrays = {"c1/kernel": rng.standard_normal((3, 3, 2, 4)), "c1/bias": rng.standard_normal(4),
              "bn/gamma": rng.standard_normal(4), "bn/beta": rng.standard_normal(4),
              "bn/moving_mean": rng.standard_normal(4), "bn/moving_variance": rng.random(4),
              "dw/depthwise_kernel": rng.standard_normal((3, 3, 4, 1))}
    path = tmp_path / ("legacy.h5" if legacy else "w.weights.h5")
    with h5py.File(path, "w") as f:
        if legacy:  # keras.applications download layout
            f.attrs["layer_names"] = [b"c1", b"bn", b"dw"]
            for layer in ("c1", "bn", "dw"):
                names = [k for k in arrays if k.startswith(layer + "/")]
                g = f.create_group(layer)
                g.attrs["weight_names"] = [f"{n}:0".encode() for n in names]
                for n in names:
                    g[f"{n}:0"] = arrays[n]
        else:  # Keras 3 model.save_weights layout: groups by layer type, real name in attrs
            for group, layer, names in (
                ("conv2d", "c1", ["kernel", "bias"]),
                ("batch_normalization", "bn", ["gamma", "beta", "moving_mean", "moving_variance"]),
                ("depthwise_conv2d", "dw", ["depthwise_kernel"]),
            ):
                v = f.create_group(f"layers/{group}/vars")
                v.attrs["name"] = layer
                for i, n in enumerate(names):
                    v[str(i)] = arrays[f"{layer}/{n}"]
    loaded = weights.load_keras_weights(str(path))
    assert sorted(loaded) == sorted(arrays)
    for k, v in arrays.items():
        np.testing.assert_array_equal(loaded[k], v)


def test_unknown_format_is_named(tmp_path):
    path = tmp_path / "w.onnx"
    path.write_bytes(b"x")
    with pytest.raises(ValueError, match="safetensors"):
        weights.load_state_dict(path)


# ---------------------------------------------------------------------------------------------
# One rule for "not mine": renames raise NotMine for names outside their scheme, the engine
# reports exactly those as unexpected, and every other error reaches the caller unchanged.


def test_a_foreign_name_is_reported_as_unexpected():
    state = {**_state(np.random.default_rng(4)), "layer1.0.conv1.weight": np.zeros(3, np.float32),
             "block1_conv1/kernel": np.zeros(3, np.float32)}
    with pytest.raises(WeightMismatchError, match="2 source array.s. have no place") as err:
        weights.convert(state, _template(), CONV)
    assert "layer1.0.conv1.weight" in str(err.value) and "block1_conv1/kernel" in str(err.value)


def test_any_other_error_of_a_rename_is_not_swallowed():
    def broken(key):
        raise KeyError(f"a bug in the rename, not a foreign name: {key}")

    with pytest.raises(KeyError, match="a bug in the rename"):
        weights.convert(_state(np.random.default_rng(5)), _template(),
                        Converter("torchvision", "tiny", broken))


def _keras_inception_converter():
    (conv,) = convert.converters_for("inception_v3_keras")
    assert conv.rename is inception.keras_rename
    return conv


def test_inception_session_numbering_error_reaches_the_user():
    """A Keras InceptionV3 saved from a session that had built layers before numbers its
    unnamed layers past the model's 94 convolutions; the rename's explanation (and its fix)
    must reach the user, not vanish into a list of unexpected names."""
    conv = _keras_inception_converter()
    state = {"conv2d_94/kernel": np.zeros((3, 3, 3, 32), np.float32)}
    with pytest.raises(WeightMismatchError, match=r"per session.*clear_session\(\)"):
        weights.convert(state, _template(), conv)
    with pytest.raises(WeightMismatchError, match=r"per session.*clear_session\(\)"):
        convert.load_pretrained("inception_v3_keras", state, input_shape=(1, 75, 75, 3))


# Names of every scheme the converters read (torchvision, timm, Cadene, Keras), and some of
# none: each converter must map them, drop them, or raise NotMine.
TORCH_KEYS = [
    "conv1.weight", "bn1.running_mean", "fc.bias", "layer1.0.conv1.weight", "layer0.conv1.weight",
    "layer1.0.downsample.1.weight", "layer2.0.se_module.fc1.bias", "last_linear.weight",
    "features.0.weight", "features.0.0.weight", "features.1.conv.0.0.weight",
    "features.2.conv.3.running_var", "features.1.0.block.0.0.weight",
    "features.3.block.1.fc1.weight", "features.denseblock1.denselayer1.norm1.weight",
    "features.3.squeeze.weight", "classifier.0.weight", "classifier.1.weight",
    "classifier.6.bias", "Conv2d_1a_3x3.conv.weight", "Mixed_5b.branch1x1.bn.weight",
    "AuxLogits.fc.weight", "inception3a.branch2.0.conv.weight", "aux1.fc2.weight",
    "conv_stem.weight", "blocks.0.0.conv_dw.weight", "head.fc.weight", "stem.0.weight",
    "layer9.0.conv1.weight", "features.99.0.weight", "features.1.conv.7.weight",
    "classifier.9.weight", "blocks.9.9.conv_pw.weight", "layerx.0.conv1.weight", "x.weight",
    "module", "features..weight",
]
KERAS_KEYS = [
    "conv1/kernel", "conv1_bn/gamma", "conv1_conv/kernel", "conv2_block1_0_bn/moving_mean",
    "conv2_block1_preact_bn/beta", "post_bn/gamma", "predictions/kernel", "fc1/bias",
    "block1_conv1/kernel", "conv2d/kernel", "conv2d_93/kernel", "batch_normalization_5/beta",
    "conv_dw_1/depthwise_kernel", "conv_pw_13_bn/moving_variance", "conv_preds/bias",
    "Conv1/kernel", "bn_Conv1/gamma", "expanded_conv_depthwise/depthwise_kernel",
    "block_16_project_BN/beta", "Conv_1_bn/gamma", "stem_conv/kernel",
    "block1a_dwconv/depthwise_kernel", "block7a_se_reduce/bias", "top_bn/gamma",
    "normalization/mean", "normalization/count", "bn/gamma", "pool2_conv/kernel",
    "conv5_block16_2_conv/kernel", "block9z_foo/kernel", "conv9_block1_9_conv/kernel",
    "dense/kernel", "a/b/c", "nokernel", "normalization/foo",
]
CONVERTERS = [(name, conv) for name in jaxcnn.list_models()
              for conv in convert.converters_for(name)]


@pytest.mark.parametrize("name,conv", CONVERTERS, ids=[f"{n}-{c.source}" for n, c in CONVERTERS])
def test_every_rename_says_not_mine_one_way(name, conv):
    for key in TORCH_KEYS + KERAS_KEYS:
        try:
            path = conv.rename(key)
        except NotMine:
            continue
        assert path is None or path.startswith(("params/", "batch_stats/")), (key, path)
