"""SqueezeNet 1.0/1.1: minimum sizes, and torchvision's outputs at those sizes.

The converted torchvision weights are compared at the parity test's input (64) in
tests/test_parity.py; here at the smallest inputs torchvision accepts, where the last
ceil-mode pool's window hangs over the edge of a 2x2 or 3x3 map.
"""

import jax.numpy as jnp
import numpy as np
import pytest

import jaxcnn
from jaxcnn import convert, weights

# torchvision's smallest admissible inputs (PyTorch raises below these).
MIN_SIZES = {"squeezenet1_0": 21, "squeezenet1_1": 17}


@pytest.mark.parametrize("name", sorted(MIN_SIZES))
def test_min_size_is_torchvisions(name):
    assert jaxcnn.create_model(name).min_size == MIN_SIZES[name]


@pytest.mark.parity
@pytest.mark.parametrize("name", sorted(MIN_SIZES))
def test_converted_torchvision_weights_at_min_size(name):
    torch = pytest.importorskip("torch")
    torchvision = pytest.importorskip("torchvision")
    size = MIN_SIZES[name]
    (conv,) = convert.converters_for(name)
    torch.manual_seed(0)
    tv = getattr(torchvision.models, name)(num_classes=10).eval()
    with torch.no_grad():  # torchvision's own head init gives mostly-dead ReLU logits
        tv.classifier[1].weight.normal_(0, 0.05)
        tv.classifier[1].bias.uniform_(0, 0.1)
    x = np.random.default_rng(0).normal(size=(2, size, size, 3)).astype(np.float32)
    with torch.no_grad():
        want = tv(torch.from_numpy(x.transpose(0, 3, 1, 2))).numpy()
    model = jaxcnn.create_model(name, num_classes=10)
    state = weights.load_state_dict(tv.state_dict())
    variables = weights.convert(state, jaxcnn.init_shapes(model, x.shape), conv)
    got = model.apply(variables, jnp.asarray(x))
    assert np.abs(want).max() > 0
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
