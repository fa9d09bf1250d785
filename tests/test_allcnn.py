"""All-CNN-C: the spatial sizes of the paper's Table 2 and its minimum input."""

import jax
import jax.numpy as jnp

import jaxcnn


def test_layer_sizes_match_the_paper():
    """32x32 input: strided convs give 16 and 8; the unpadded 3x3 leaves 6x6 for the average."""
    model = jaxcnn.create_model("allcnn_c")
    x = jnp.zeros((1, 32, 32, 3))
    variables = jax.eval_shape(lambda: model.init(jax.random.key(0), x))
    _, state = jax.eval_shape(
        lambda v: model.apply(v, x, capture_intermediates=True, mutable=["intermediates"]),
        variables)
    sizes = {name: out["__call__"][0].shape[1:] for name, out in state["intermediates"].items()
             if name.startswith(("conv", "head"))}
    assert sizes == {
        "conv1": (32, 32, 96), "conv2": (32, 32, 96), "conv3": (16, 16, 96),
        "conv4": (16, 16, 192), "conv5": (16, 16, 192), "conv6": (8, 8, 192),
        "conv7": (6, 6, 192), "conv8": (6, 6, 192), "head": (6, 6, 10),
    }


def test_min_size():
    assert jaxcnn.create_model("allcnn_c").min_size == 9
