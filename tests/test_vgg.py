"""VGG: the torchvision converter maps every array one to one onto ours (on the meta device).

Outputs with converted weights are compared in tests/test_parity.py (torchvision for all eight
variants, Keras for VGG16/VGG19); this check builds nothing and runs in a fraction of a second.
"""

import numpy as np
import pytest
from flax import traverse_util

import jaxcnn
from jaxcnn import convert, weights
from jaxcnn.spec import NotMine

NAMES = [f"vgg{d}{s}" for d in (11, 13, 16, 19) for s in ("", "_bn")]


def _torch_shape_of(path, shape):
    """The torch layout of one of our variables (HWIO -> OIHW, Dense (in, out) -> (out, in))."""
    if path.endswith("kernel"):
        return tuple(shape[::-1]) if len(shape) == 2 else (shape[3], shape[2], shape[0], shape[1])
    return tuple(shape)


@pytest.mark.parity
@pytest.mark.parametrize("name", NAMES)
def test_torchvision_arrays_rename_one_to_one(name):
    torch = pytest.importorskip("torch")
    torchvision = pytest.importorskip("torchvision")
    with torch.device("meta"):
        tv = getattr(torchvision.models, name)()
    (conv,) = [c for c in convert.converters_for(name) if c.source == "torchvision"]
    template = jaxcnn.init_shapes(name, (1, 32, 32, 3))
    ours = {"/".join(k): v.shape for k, v in traverse_util.flatten_dict(template).items()}
    renamed = {}
    for key, value in tv.state_dict().items():
        if key.rsplit(".", 1)[-1] in weights.DROPPED_LEAVES:  # as the engine does
            continue
        path = conv.rename(key)
        if path is not None:
            assert path not in renamed, (key, path)
            renamed[path] = tuple(value.shape)
    assert sorted(renamed) == sorted(ours)
    for path, shape in renamed.items():
        assert _torch_shape_of(path, ours[path]) == shape, path


@pytest.mark.parametrize("name", ["vgg11", "vgg19_bn"])
def test_min_size(name):
    assert jaxcnn.create_model(name).min_size == 32


def test_fc1_flatten_fix_reorders_chw_to_hwc():
    """Row (c, h, w) of torchvision's fc1 becomes our row (h, w, c)."""
    (conv,) = [c for c in convert.converters_for("vgg11") if c.source == "torchvision"]
    c, h, w = 512, 7, 7
    torch_w = np.arange(2 * c * h * w, dtype=np.float32).reshape(2, c * h * w)
    fixed = conv.fix("classifier.0.weight", torch_w, (c * h * w, 2))
    assert fixed[1, (3 * w + 5) * c + 17] == torch_w[1, 17 * h * w + 3 * w + 5]
    assert conv.fix("classifier.3.weight", torch_w, ()) is torch_w


def test_each_converter_rejects_the_other_frameworks_names():
    """load_pretrained tries vgg16's converters in turn: each must report, not crash on, the
    other's names (torch ``features.0.weight``, Keras ``block1_conv1/kernel``): by raising
    NotMine, the one answer the engine reports as "unexpected"."""
    torch_conv, keras_conv = convert.converters_for("vgg16")
    assert (torch_conv.source, keras_conv.source) == ("torchvision", "keras")
    torch_names = ["features.0.weight", "features.1.running_var", "classifier.6.bias"]
    keras_names = ["block1_conv1/kernel", "fc1/bias", "predictions/kernel"]
    assert keras_conv.rename("block5_conv3/bias") == "params/block5_conv3/conv/bias"
    assert torch_conv.rename("features.28.bias") == "params/block5_conv3/conv/bias"
    for conv, foreign in ((torch_conv, keras_names), (keras_conv, torch_names)):
        for key in foreign:
            with pytest.raises(NotMine):
                conv.rename(key)
