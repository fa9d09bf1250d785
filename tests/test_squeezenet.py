"""SqueezeNet 1.0/1.1 against torchvision: outputs with copied weights, minimum sizes."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxcnn

# torchvision's smallest admissible inputs (PyTorch raises below these).
MIN_SIZES = {"squeezenet1_0": 21, "squeezenet1_1": 17}


def _from_torchvision(tv, model):
    sd = {k: v.detach().numpy() for k, v in tv.state_dict().items()}

    def conv(prefix):
        return {"kernel": sd[f"{prefix}.weight"].transpose(2, 3, 1, 0),
                "bias": sd[f"{prefix}.bias"]}

    params = {"conv1": conv("features.0"), "head": conv("classifier.1")}
    fire_indices = [i for i, m in enumerate(tv.features) if type(m).__name__ == "Fire"]
    for number, i in enumerate(fire_indices, start=2):
        params[f"fire{number}"] = {
            part: conv(f"features.{i}.{part}") for part in ("squeeze", "expand1x1", "expand3x3")
        }
    return {"params": params}


@pytest.mark.parametrize("name", sorted(MIN_SIZES))
def test_min_size_is_torchvisions(name):
    assert jaxcnn.create_model(name).min_size == MIN_SIZES[name]


@pytest.mark.parametrize("name", sorted(MIN_SIZES))
@pytest.mark.parametrize("size", [None, 50])
def test_matches_torchvision(name, size):
    torch = pytest.importorskip("torch")
    torchvision = pytest.importorskip("torchvision")
    size = MIN_SIZES[name] if size is None else size
    torch.manual_seed(0)
    tv = getattr(torchvision.models, name)(num_classes=10).eval()
    with torch.no_grad():  # torchvision's own head init gives mostly-dead ReLU logits
        tv.classifier[1].weight.normal_(0, 0.05)
        tv.classifier[1].bias.uniform_(0, 0.1)
    model = jaxcnn.create_model(name, num_classes=10)
    variables = _from_torchvision(tv, model)
    x = np.random.default_rng(0).normal(size=(2, size, size, 3)).astype(np.float32)
    expected = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.asarray(x)))
    assert jax.tree_util.tree_map(lambda a: a.shape, variables) == \
        jax.tree_util.tree_map(lambda a: a.shape, expected)
    with torch.no_grad():
        want = tv(torch.from_numpy(x.transpose(0, 3, 1, 2))).numpy()
    got = model.apply(variables, jnp.asarray(x))
    assert np.abs(want).max() > 0
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
