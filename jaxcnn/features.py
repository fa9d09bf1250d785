"""Any network as a backbone: intermediate feature maps by stable layer name, and pre-logits.

Layer names are the top-level submodule names of a network (``stem``, ``stage3_block2``,
``inception4a``, ... as printed by :func:`feature_layers`); they are the same names the parameter
tree and the weight converters use, so they are stable across releases.

>>> model = jaxcnn.create_model("resnet50")
>>> feats = extract_features(model, variables, x, layers=("stage2_block4", "stage4_block3"))
>>> feats["pre_logits"].shape   # (N, 2048), the pooled features the classifier sees
"""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp


def top_level_layer(module: nn.Module, method_name: str) -> str | None:
    """The layer name when this is a call of a top-level layer (what this module names a
    layer), else ``None``: how interceptors (:func:`flax.linen.intercept_methods`) find one."""
    if method_name == "__call__" and len(module.path) == 1:
        return module.path[0]
    return None


def _top_level_filter(layers: Sequence[str]):
    wanted = set(layers)

    def keep(module: nn.Module, method_name: str) -> bool:
        return top_level_layer(module, method_name) in wanted

    return keep


def extract_features(
    model: nn.Module,
    variables: Any,
    x: jax.Array,
    layers: Sequence[str] = (),
    *,
    train: bool = False,
    rngs: Any = None,
) -> dict[str, jax.Array]:
    """Returns ``{layer: output}`` for each name in ``layers``, plus ``"pre_logits"`` and
    ``"logits"``. Unknown names raise an error listing the network's layer names."""
    known = feature_layer_names(model, variables, x)
    unknown = [name for name in layers if name not in known]
    if unknown:
        raise KeyError(f"{type(model).__name__} has no layer(s) {unknown}; its layers are: "
                       + ", ".join(known))
    mutable = ["intermediates"] + (["batch_stats"] if train else [])
    logits, state = model.apply(
        variables, x, train=train, rngs=rngs, mutable=mutable,
        capture_intermediates=_top_level_filter(layers),
    )
    inter = state["intermediates"]
    out = {name: inter[name]["__call__"][0] for name in layers}
    if "pre_logits" in inter:
        out["pre_logits"] = inter["pre_logits"][0]
    out["logits"] = logits
    return out


def feature_layer_names(model: nn.Module, variables: Any, x: jax.Array) -> list[str]:
    """The top-level layer names of ``model``, in call order."""
    return list(layer_outputs(model, variables, x))


def layer_outputs(model: nn.Module, variables: Any, x: jax.Array) -> dict[str, Any]:
    """``{layer name: output of its first call}`` for every top-level layer, in call order,
    as shapes (``jax.ShapeDtypeStruct``; nothing runs). Outputs need not be arrays."""
    outputs: dict[str, Any] = {}

    def record(next_fun, args, kwargs, context):
        out = next_fun(*args, **kwargs)
        name = top_level_layer(context.module, context.method_name)
        if name is not None and name not in outputs:
            outputs[name] = out
        return out

    def run(v, x):
        outputs.clear()
        with nn.intercept_methods(record):
            model.apply(v, x, train=False)
        return dict(outputs)

    shapes = jax.eval_shape(run, variables, jax.ShapeDtypeStruct(x.shape, jnp.float32))
    # eval_shape returns dicts with sorted keys; the call order is the recording's.
    return {name: shapes[name] for name in outputs}


def feature_layers(model: nn.Module, variables: Any, x: jax.Array) -> dict[str, tuple[int, ...]]:
    """``{layer name: output shape}`` for every top-level layer (shapes only, nothing runs)."""
    names = feature_layer_names(model, variables, x)

    def run(v, x):
        return extract_features(model, v, x, layers=names)

    shapes = jax.eval_shape(run, variables, jax.ShapeDtypeStruct(x.shape, jnp.float32))
    return {k: tuple(v.shape) for k, v in shapes.items() if hasattr(v, "shape")}
