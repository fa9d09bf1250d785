"""NIN for CIFAR-10 against imgclsmob's nin_cifar10 forward pass, restated with torch ops."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxcnn


def _imgclsmob_forward(torch, params, x):
    """imgclsmob CIFARNIN.forward: conv+ReLU units, padded 3x3/2 max then avg pool, 8x8 pool."""
    F = torch.nn.functional

    def unit(x, name):
        w = torch.from_numpy(np.asarray(params[name]["kernel"]).transpose(3, 2, 0, 1).copy())
        b = torch.from_numpy(np.array(params[name]["bias"]))
        return F.relu(F.conv2d(x, w, b, padding=(w.shape[-1] - 1) // 2))

    for name in ("stage1_unit1", "stage1_unit2", "stage1_unit3"):
        x = unit(x, name)
    x = F.max_pool2d(x, 3, 2, padding=1)
    for name in ("stage2_unit1", "stage2_unit2", "stage2_unit3"):
        x = unit(x, name)
    x = F.avg_pool2d(x, 3, 2, padding=1)
    for name in ("stage3_unit1", "stage3_unit2", "head"):
        x = unit(x, name)
    return F.avg_pool2d(x, 8, 1).flatten(1)


@pytest.mark.parity
def test_matches_imgclsmob_forward():
    torch = pytest.importorskip("torch")
    model = jaxcnn.create_model("nin_cifar10")
    x = np.random.default_rng(0).normal(size=(2, 32, 32, 3)).astype(np.float32)
    variables = model.init(jax.random.key(0), jnp.asarray(x))
    with torch.no_grad():
        want = _imgclsmob_forward(torch, variables["params"],
                                  torch.from_numpy(x.transpose(0, 3, 1, 2))).numpy()
    got = model.apply(variables, jnp.asarray(x))
    assert np.abs(want).max() > 0
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
