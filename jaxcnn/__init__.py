"""jaxcnn: the classic convolutional networks as pure-functional Flax modules.

>>> import jax, jax.numpy as jnp, jaxcnn
>>> model = jaxcnn.create_model("resnet50", num_classes=10)
>>> variables = model.init(jax.random.key(0), jnp.zeros((1, 224, 224, 3)), train=False)
>>> logits = model.apply(variables, jnp.zeros((1, 224, 224, 3)), train=False)
"""

from jaxcnn.layers import InputShapeError
from jaxcnn.registry import (
    ALIASES, ModelInfo, UnknownModelError, create_model, list_models, model_info,
)
from jaxcnn.spec import ModelSpec, Published
from jaxcnn.summary import count_params, init_shapes, layer_rows, macs, param_count, summary

__version__ = "0.1.0"

__all__ = [
    "ALIASES", "InputShapeError", "ModelInfo", "ModelSpec", "Published", "UnknownModelError",
    "count_params", "create_model", "init_shapes", "layer_rows", "list_models", "macs",
    "model_info", "param_count", "summary",
]
