"""Parameter counts and per-layer summaries, computed from shapes only (``jax.eval_shape``).

Two counting conventions are in use for the same network:

* ``"params"``: learnable parameters, what torchvision's ``num_params``, timm, Cadene and
  imgclsmob report. In Flax, the size of the ``params`` collection.
* ``"keras"``: Keras' "Total params", which adds the non-trainable BatchNorm moving mean and
  variance (and, in Keras' EfficientNet, the 7 numbers of its input ``Normalization`` layer).
  In Flax, ``params`` plus every other collection of state (``batch_stats``).

Multiply-accumulates (MACs) count convolutions and matrix products only, batch 1, as
torchvision's ``_ops`` does (its "GFLOPS" column is really GMACs), for the network as written: a
layer that computes the same maps with fewer (DenseNet's transition pools before its 1x1
convolution) reports the written figure through a ``nominal_macs(inputs, kernel)`` method.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxcnn import registry

CONVENTIONS = ("params", "keras")
STATE_COLLECTIONS = ("batch_stats",)


def _size(tree: Any) -> int:
    return sum(math.prod(leaf.shape) for leaf in jax.tree_util.tree_leaves(tree))


def count_params(variables: Any, convention: str = "params") -> int:
    """Counts the variables of a model in one of :data:`CONVENTIONS`."""
    if convention not in CONVENTIONS:
        raise ValueError(f"Unknown convention {convention!r}; choose one of {CONVENTIONS}.")
    total = _size(variables.get("params", {}))
    if convention == "keras":
        total += sum(_size(variables.get(c, {})) for c in STATE_COLLECTIONS)
    return total


def _as_model(model: nn.Module | str, overrides: dict[str, Any]) -> tuple[nn.Module, str | None]:
    if isinstance(model, str):
        return registry.create_model(model, **overrides), model
    if overrides:
        raise TypeError("overrides are only accepted with a model name")
    return model, None


def _default_shape(name: str | None, input_shape: tuple[int, ...] | None) -> tuple[int, ...]:
    if input_shape is not None:
        return tuple(input_shape)
    if name is None:
        raise ValueError("input_shape is needed when a module (not a name) is given")
    return (1, *registry.model_info(name).input_shape)


def init_shapes(
    model: nn.Module | str, input_shape: tuple[int, ...] | None = None, **overrides: Any
) -> Any:
    """The variables a model would have, as shapes (nothing is computed or allocated)."""
    module, name = _as_model(model, overrides)
    shape = _default_shape(name, input_shape)
    x = jax.ShapeDtypeStruct(shape, jnp.float32)
    rngs = {"params": jax.random.key(0), "dropout": jax.random.key(1)}
    return jax.eval_shape(lambda r, x: module.init(r, x, train=False), rngs, x)


def param_count(
    model: nn.Module | str,
    input_shape: tuple[int, ...] | None = None,
    convention: str = "params",
    **overrides: Any,
) -> int:
    """Parameters of a model (by name, with ``overrides``, or as a module) in ``convention``."""
    return count_params(init_shapes(model, input_shape, **overrides), convention)


@dataclasses.dataclass(frozen=True)
class LayerRow:
    """One leaf layer of a summary."""

    path: str
    kind: str
    output_shape: tuple[int, ...]
    params: int
    state: int
    macs: int


def _macs(module: nn.Module, inputs: tuple, output: Any, variables: dict) -> int:
    kernel = variables.get("params", {}).get("kernel")
    if kernel is None or not hasattr(output, "shape"):
        return 0
    nominal = getattr(module, "nominal_macs", None)
    if nominal is not None:
        return nominal(inputs[0], kernel)
    out_per_image = math.prod(output.shape[1:])
    if isinstance(module, nn.Dense):
        return out_per_image * kernel.shape[0]
    if isinstance(module, nn.ConvTranspose):
        x = inputs[0]
        return math.prod(x.shape[1:]) * math.prod(kernel.shape[:-2]) * kernel.shape[-1]
    if isinstance(module, nn.Conv):
        # kernel is (kh, kw, in/groups, out): each output element costs kh*kw*in/groups MACs.
        return out_per_image * math.prod(kernel.shape[:-1])
    return 0


def layer_rows(
    model: nn.Module | str, input_shape: tuple[int, ...] | None = None, **overrides: Any
) -> list[LayerRow]:
    """Per-leaf-layer rows (output shape, parameters, state, MACs) in call order, batch 1."""
    return _trace(model, input_shape, overrides)[0]


def _trace(model, input_shape, overrides) -> tuple[list[LayerRow], Any]:
    module, name = _as_model(model, overrides)
    shape = (1, *_default_shape(name, input_shape)[1:])
    rows: list[LayerRow] = []
    seen: set[str] = set()
    running: set[str] = set()

    def interceptor(next_fun, args, kwargs, context):
        mod = context.module
        path = "/".join(mod.path)
        # A layer's row shows its outermost call: the input it was given, not the one a
        # subclass passes on to its parent's ``__call__`` (see ``nominal_macs``).
        if context.method_name != "__call__" or path in running or path in seen:
            return next_fun(*args, **kwargs)
        running.add(path)
        try:
            out = next_fun(*args, **kwargs)
        finally:
            running.discard(path)
        # A leaf layer has no submodules (its children are only variable names).
        if any(isinstance(c, nn.Module) for c in mod._state.children.values()):
            return out
        seen.add(path)
        variables = mod.variables if mod.scope is not None else {}
        variables = {k: dict(v) for k, v in variables.items()}
        rows.append(LayerRow(
            path=path,
            kind=type(mod).__name__,
            output_shape=tuple(getattr(out, "shape", ())),
            params=_size(variables.get("params", {})),
            state=sum(_size(variables.get(c, {})) for c in STATE_COLLECTIONS),
            macs=_macs(mod, args, out, variables),
        ))
        return out

    def run(rng, x):
        with nn.intercept_methods(interceptor):
            return module.init(rng, x, train=False)

    variables = jax.eval_shape(run, {"params": jax.random.key(0), "dropout": jax.random.key(1)},
                               jax.ShapeDtypeStruct(shape, jnp.float32))
    return rows, variables


def macs(model: nn.Module | str, input_shape: tuple[int, ...] | None = None,
         **overrides: Any) -> int:
    """Multiply-accumulates of one image (convolutions and matrix products only)."""
    return sum(r.macs for r in layer_rows(model, input_shape, **overrides))


def summary(
    model: nn.Module | str,
    input_shape: tuple[int, ...] | None = None,
    *,
    print_fn: Any = print,
    **overrides: Any,
) -> str:
    """A table of every leaf layer: output shape, parameters and MACs, with totals.

    ``model`` is a registered name (its default input is used when ``input_shape`` is None) or a
    module with an ``input_shape`` (N, H, W, C). Returns the text and prints it with ``print_fn``.
    """
    rows, variables = _trace(model, input_shape, overrides)
    header = ("layer", "type", "output shape", "params", "MACs")
    table = [header] + [
        (r.path, r.kind, str(r.output_shape), f"{r.params:,}", f"{r.macs:,}") for r in rows
    ]
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    lines = []
    for i, row in enumerate(table):
        lines.append("  ".join(
            cell.ljust(w) if j < 3 else cell.rjust(w) for j, (cell, w) in enumerate(zip(row, widths))
        ))
        if i == 0:
            lines.append("-" * len(lines[0]))
    # Totals come from the whole variable tree: a module may also own parameters directly
    # (LeNet-5's trainable subsampling coefficients), which no leaf row shows.
    params = count_params(variables, "params")
    keras_total = count_params(variables, "keras")
    total_macs = sum(r.macs for r in rows)
    lines.append("-" * len(lines[0]))
    lines.append(f"params (learnable): {params:,}")
    lines.append(f"Keras total (params + BatchNorm statistics): {keras_total:,}")
    lines.append(f"MACs per image: {total_macs:,} ({total_macs / 1e9:.3f} G)")
    text = "\n".join(lines)
    if print_fn is not None:
        print_fn(text)
    return text
