"""VGG: every parameter lines up one to one with torchvision's (built on the meta device)."""

import jax
import jax.numpy as jnp
import pytest

import jaxcnn

NAMES = [f"vgg{d}{s}" for d in (11, 13, 16, 19) for s in ("", "_bn")]


def _torch_layout_of_ours(name):
    """Our variables in torchvision's order, with kernels transposed to torch's layout."""
    model = jaxcnn.create_model(name)
    x = jax.ShapeDtypeStruct((1, 32, 32, 3), jnp.float32)
    variables = jax.eval_shape(lambda x: model.init(jax.random.key(0), x), x)
    params, stats = variables["params"], variables.get("batch_stats", {})
    shapes = []
    blocks = sorted((k for k in params if k.startswith("block")),
                    key=lambda k: tuple(int(p) for p in k[5:].split("_conv")))
    for block in blocks:
        kh, kw, cin, cout = params[block]["conv"]["kernel"].shape
        shapes += [(cout, cin, kh, kw), (cout,)]
        if "bn" in params[block]:
            bn = params[block]["bn"]
            shapes += [bn["scale"].shape, bn["bias"].shape,
                       stats[block]["bn"]["mean"].shape, stats[block]["bn"]["var"].shape]
    for dense in ("fc1", "fc2", "head"):
        k = params[dense]["kernel"].shape
        shapes += [k[::-1], params[dense]["bias"].shape]
    return shapes


@pytest.mark.parametrize("name", NAMES)
def test_parameters_line_up_with_torchvision(name):
    torch = pytest.importorskip("torch")
    torchvision = pytest.importorskip("torchvision")
    with torch.device("meta"):
        tv = getattr(torchvision.models, name)()
    want = [tuple(v.shape) for k, v in tv.state_dict().items() if "num_batches" not in k]
    assert _torch_layout_of_ours(name) == want


@pytest.mark.parametrize("name", ["vgg11", "vgg19_bn"])
def test_min_size(name):
    assert jaxcnn.create_model(name).min_size == 32
