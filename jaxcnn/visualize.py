"""Seeing what a network learned: attributions, deconvnet projections, occlusion, top activations.

For any registered network and its variables, unchanged and with no per-family code (the way
Captum treats any torch model). Layers are named as in :mod:`jaxcnn.features`: the top-level
submodules (``conv2``, ``stage3_block2``, ``inception4a``; a layer's output is what its
``__call__`` returns, so ``conv5`` of AlexNet is the convolution before its ReLU while
``block5_conv3`` of VGG includes it).

* :func:`explain`: for a class target (a logit) or a :class:`Unit` (one feature map or one unit
  of a layer): the gradient (Simonyan et al. 2014) and ``saliency`` (its absolute value),
  SmoothGrad (Smilkov et al. 2017), integrated gradients (Sundararajan et al. 2017), the
  deconvnet (Zeiler & Fergus 2014) and guided backpropagation (Springenberg et al. 2015),
  Grad-CAM and guided Grad-CAM at a layer (Selvaraju et al. 2017), and occlusion as a
  per-pixel attribution. The methods asked for are compiled together, once.
* :func:`occlusion_maps`: Zeiler & Fergus' Fig. 7, a grey square slid over the image: the true
  class' probability, the most probable class and the total activation of the layer's
  strongest feature map, per position of the square. Occluded copies go through the network in
  batches (``jax.lax.map`` of a batched call), never one call per window.
* :func:`top_activations`: the k strongest activations of each feature map over a whole data
  split, streamed once (Zeiler & Fergus Fig. 2); :func:`receptive_fields`, :func:`crop` and
  ``explain(..., Unit(...))`` give their input patches and deconvnet projections.
* :func:`first_layer_filters` and :func:`tile` for the filter grid; image helpers for display.

How the deconvnet and guided backpropagation are made, once for every network
----------------------------------------------------------------------------------
The three differ from the gradient only in what a rectifier passes backwards. For a rectifier
``y = max(x, 0)`` and the signal ``g`` arriving at ``y``:

* gradient: ``g * (x > 0)``;
* deconvnet (Zeiler & Fergus sec. 2.1, "rectification"): ``relu(g)``, whatever the forward
  sign;
* guided backpropagation (Springenberg et al. sec. 3.4): ``relu(g) * (x > 0)``.

Everything else passes the backward signal by its own gradient: convolutions by their
transposed filters, as in the deconvnet, and max pooling to the position of each window's
maximum, which is the deconvnet's unpooling through the forward pass's "switches". Networks call
``nn.relu`` or hold it as a default field, so no patching can reach every rectifier; instead
:func:`backward_rule` traces the function to a jaxpr and evaluates it again with each rectifier
replaced by a ``jax.custom_vjp`` carrying the rule, which ``jax.grad`` then differentiates.
A rectifier is a call of ``jax.nn.relu`` or ``jax.nn.relu6`` (``rectifiers=`` chooses which);
the rule applies to the rectifying part, ``max(x, 0)``, so ReLU6's clip at 6 keeps its
gradient. Other activations keep their own gradient: SiLU (EfficientNet) and hard-swish and
hard-sigmoid (MobileNetV3) are not rectifiers, and the ReLU6 inside hard-sigmoid belongs to
that activation, not to the network. In SiLU networks the deconvnet and guided backpropagation
therefore equal the gradient (EfficientNet's squeeze-excitation uses SiLU too). The
interpreter enters jitted and closed calls; a rectifier inside ``lax.scan``, ``cond`` or
``remat`` (no network of the zoo has one) would keep its gradient.

Where Captum differs, and what we follow
----------------------------------------
Captum's ``Deconvolution`` and ``GuidedBackprop`` apply the same rules through ReLU and the
same unpooling through max pooling, but only to ``torch.nn.ReLU`` modules: a functional
``F.relu`` (torchvision's GoogLeNet) and ``nn.ReLU6`` (MobileNetV2) keep the plain gradient
there. We follow the papers, which rectify at every rectifier; ``rectifiers=()`` gives Captum's
behaviour for networks whose rectifiers are all functional. Captum's ``LayerGradCam`` omits
Grad-CAM's final ReLU by default (``relu_attributions=False``); we apply it (Selvaraju et al.
eq. 2) unless ``relu_cam=False``. Captum's ``riemann_trapezoid`` weights sum to (n-1)/n; ours
sum to 1. Guided Grad-CAM upsamples the map bilinearly, as the paper does (Captum: nearest).
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import functools
import math
from typing import Any, Callable, Iterable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.extend import core as jcore

from jaxcnn import conv
from jaxcnn.features import layer_outputs, top_level_layer
from jaxcnn.layers import InputShapeError

RULES = ("gradient", "deconvnet", "guided")
RECTIFIERS = ("relu", "relu6")
METHODS = ("gradient", "saliency", "smoothgrad", "integrated_gradients", "deconvnet",
           "guided_backprop", "grad_cam", "guided_grad_cam", "occlusion")
INTEGRATION = ("riemann_left", "riemann_right", "riemann_middle", "riemann_trapezoid",
               "gausslegendre")
# Methods that need ``layer=`` (a layer with spatial axes).
LAYER_METHODS = ("grad_cam", "guided_grad_cam")

# jax.nn's named functions: a jitted call of one that is not a rectifier is an activation of its
# own (hard_silu contains a relu6) and keeps its gradient.
_JAX_NN = frozenset(n for n in dir(jax.nn) if not n.startswith("_"))
# Activations with flat stretches, where a gradient vanishes; the rectifier-free evaluation that
# measures receptive fields passes straight through them.
_FLAT = frozenset({"relu", "relu6", "hard_sigmoid", "hard_silu", "hard_swish", "hard_tanh"})


class VisualizeError(ValueError):
    """A request that cannot be answered (unknown layer, method that does not apply, target out
    of range); the message names the problem and the fix."""


@dataclasses.dataclass(frozen=True)
class Unit:
    """A target inside the network: feature map ``channel`` of ``layer``, at ``(row, col)``,
    or, without a position, at its strongest activation (what Zeiler & Fergus project).

    ``channel``, ``row`` and ``col`` are ints or one per image. For a layer without spatial
    axes (a dense layer), ``channel`` is the unit.
    """

    layer: str
    channel: Any
    row: Any = None
    col: Any = None


# ---------------------------------------------------------------------------------------------
# Changing what rectifiers pass backwards.


@functools.lru_cache(maxsize=None)
def _rectifier(rule: str) -> Callable[[jax.Array], jax.Array]:
    """``max(x, 0)`` whose backward pass follows ``rule``."""

    @jax.custom_vjp
    def rectify(x):
        return jnp.maximum(x, jnp.zeros((), x.dtype))

    def forward(x):
        return rectify(x), x

    def backward(x, g):
        zero = jnp.zeros((), g.dtype)
        if rule == "deconvnet":
            return (jnp.maximum(g, zero),)
        if rule == "guided":
            return (jnp.where(x > 0, jnp.maximum(g, zero), zero),)
        return (jnp.where(x > 0, g, zero),)

    rectify.defvjp(forward, backward)
    return rectify


def _call_name(eqn: jcore.JaxprEqn) -> str | None:
    """The function name of a ``jit`` or ``custom_jvp_call`` equation (``relu``, ``hard_silu``)."""
    if "name" in eqn.params:
        return eqn.params["name"]
    inner = eqn.params.get("call_jaxpr")
    if inner is not None and len(inner.jaxpr.eqns) == 1:
        return inner.jaxpr.eqns[0].params.get("name")
    return None


def _is_zero(atom: Any) -> bool:
    return isinstance(atom, jcore.Literal) and np.all(np.asarray(atom.val) == 0)


def _straight_through(value: jax.Array, x: jax.Array) -> jax.Array:
    """``value`` forwards, the identity backwards."""
    return x + jax.lax.stop_gradient(value - x)


@dataclasses.dataclass(frozen=True)
class _Interpreter:
    """Evaluates a jaxpr with rectifiers following ``rule``; ``linear`` instead passes straight
    through every activation with flat stretches and sums where max pooling would choose one
    input (the receptive-field evaluation)."""

    rule: str
    rectifiers: tuple[str, ...]
    linear: bool = False

    def run(self, jaxpr: jcore.Jaxpr, consts: Sequence[Any], args: Sequence[Any],
            rectifying: bool = False) -> list[Any]:
        env: dict[Any, Any] = {}

        def read(atom):
            return atom.val if isinstance(atom, jcore.Literal) else env[atom]

        env.update(zip(jaxpr.constvars, consts))
        env.update(zip(jaxpr.invars, args))
        for eqn in jaxpr.eqns:
            outs = self._eqn(eqn, [read(v) for v in eqn.invars], rectifying)
            env.update(zip(eqn.outvars, outs))
        return [read(v) for v in jaxpr.outvars]

    def _eqn(self, eqn: jcore.JaxprEqn, ins: list[Any], rectifying: bool) -> list[Any]:
        prim = eqn.primitive.name
        name = _call_name(eqn) if prim in ("custom_jvp_call", "jit", "pjit") else None
        if self.linear and name in _FLAT and len(ins) == 1:
            return [_straight_through(self._bind(eqn, ins)[0], ins[0])]
        if prim == "custom_jvp_call" and name in self.rectifiers:
            inner = eqn.params["call_jaxpr"]
            return self.run(inner.jaxpr, inner.consts, ins, rectifying=True)
        if prim in ("jit", "pjit", "closed_call") and not (name in _JAX_NN and name not in
                                                           self.rectifiers):
            inner = eqn.params["jaxpr" if prim != "closed_call" else "call_jaxpr"]
            return self.run(inner.jaxpr, inner.consts, ins, rectifying)
        if rectifying and prim == "max" and (_is_zero(eqn.invars[1]) or _is_zero(eqn.invars[0])):
            x = ins[0] if _is_zero(eqn.invars[1]) else ins[1]
            return [_rectifier(self.rule)(x)]
        if self.linear and prim == "reduce_window_max":
            p = eqn.params
            return [jax.lax.reduce_window(ins[0], np.zeros((), ins[0].dtype), jax.lax.add,
                                          p["window_dimensions"], p["window_strides"],
                                          p["padding"], p["base_dilation"],
                                          p["window_dilation"])]
        if self.linear and prim == "reduce_max":
            return [jnp.sum(ins[0], axis=eqn.params["axes"])]
        return self._bind(eqn, ins)

    @staticmethod
    def _bind(eqn: jcore.JaxprEqn, ins: list[Any]) -> list[Any]:
        params = eqn.primitive.get_bind_params(eqn.params)
        with eqn.ctx.manager:
            out = eqn.primitive.bind(*ins, **params)
        return list(out) if eqn.primitive.multiple_results else [out]


def backward_rule(fun: Callable, rule: str, rectifiers: Sequence[str] = RECTIFIERS, *,
                  linear: bool = False) -> Callable:
    """``fun`` with the same values, whose rectifiers pass the backward signal by ``rule``
    (one of :data:`RULES`; see the module's docstring). ``jax.grad`` of the result is the
    deconvnet (``"deconvnet"``) or guided backpropagation (``"guided"``) of ``fun``.
    ``linear=True`` is the rectifier-free evaluation used for receptive fields."""
    if rule not in RULES:
        raise VisualizeError(f"Unknown backward rule {rule!r}; choose one of {', '.join(RULES)}.")
    unknown = sorted(set(rectifiers) - set(RECTIFIERS))
    if unknown:
        raise VisualizeError(f"rectifiers={tuple(rectifiers)}: {unknown} are not rectifiers; "
                             f"choose among {', '.join(RECTIFIERS)}.")
    interpreter = _Interpreter(rule, tuple(rectifiers), linear)

    def modified(*args):
        # The receptive-field evaluation rewrites max pooling, which it must see as XLA's
        # windowed maximum (not the CPU's formulation of it, a custom gradient).
        # A fresh function: JAX would reuse a trace of ``fun`` made under another policy.
        with conv.policy("xla") if linear else contextlib.nullcontext():
            closed, out_shape = jax.make_jaxpr(lambda *a: fun(*a), return_shape=True)(*args)
        outs = interpreter.run(closed.jaxpr, closed.consts, jax.tree.leaves(args))
        return jax.tree.unflatten(jax.tree.structure(out_shape), outs)

    return modified


# ---------------------------------------------------------------------------------------------
# Running a network with access to its layers.


def _run(model: nn.Module, variables: Any, x: jax.Array, layers: Sequence[str] = (),
         shifts: dict[str, jax.Array] | None = None) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Logits and the outputs of ``layers``. ``shifts[layer]`` (zeros) is added to that layer's
    output: the gradient with respect to it is the gradient with respect to the output."""
    shifts = shifts or {}
    wanted = set(layers) | set(shifts)
    seen: dict[str, jax.Array] = {}

    def intercept(next_fun, args, kwargs, context):
        out = next_fun(*args, **kwargs)
        name = top_level_layer(context.module, context.method_name)
        if name in wanted and name not in seen:
            if name in shifts:
                out = out + shifts[name].astype(out.dtype)
            seen[name] = out
        return out

    with nn.intercept_methods(intercept):
        logits = model.apply(variables, x, train=False)
    return _wide(logits), seen


def _wide(a: jax.Array) -> jax.Array:
    """``a`` in float32 at least (bfloat16 networks; float64 ones under ``jax.enable_x64``)."""
    return a.astype(jnp.promote_types(a.dtype, jnp.float32))


def _targets(t: dict[str, jax.Array], logits: jax.Array, acts: dict[str, jax.Array],
             unit: tuple[str, bool] | None) -> jax.Array:
    """The score of each image: its target logit, or its target unit's activation."""
    n = jnp.arange(logits.shape[0])
    if unit is None:
        return logits[n, t["class"]]
    layer, positioned = unit
    a = _wide(acts[layer])
    if a.ndim == 2:
        return a[n, t["channel"]]
    if positioned:
        return a[n, t["row"], t["col"], t["channel"]]
    return jnp.max(a[n, :, :, t["channel"]], axis=(1, 2))


@dataclasses.dataclass(frozen=True)
class _Plan:
    """The static part of an :func:`explain` request (what one compilation serves)."""

    methods: tuple[str, ...]
    layer: str | None
    unit: tuple[str, bool] | None
    rectifiers: tuple[str, ...]
    steps: int
    integration: str
    samples: int
    noise: float
    window: int
    stride: int
    batch_size: int
    relu_cam: bool


def _window_masks(size: int, window: int, stride: int) -> np.ndarray:
    """Captum's sliding windows along one axis: starts 0, stride, ... until the last window
    reaches the end (``1 + ceil((size - window) / stride)`` of them; the last one may be cut)."""
    count = 1 + math.ceil((size - window) / stride)
    starts = np.arange(count)[:, None] * stride
    pixels = np.arange(size)[None, :]
    return ((pixels >= starts) & (pixels < starts + window)).astype(np.float32)


def _occluded(fun: Callable[[jax.Array], Any], x: jax.Array, baseline: jax.Array, window: int,
              stride: int, batch_size: int) -> tuple[Any, np.ndarray, np.ndarray]:
    """``fun`` of every occluded copy of ``x`` (a window of ``baseline`` over all channels),
    stacked as ``(rows, cols, ...)``, with the row and column window masks."""
    rows = _window_masks(x.shape[1], window, stride)
    cols = _window_masks(x.shape[2], window, stride)
    grid = np.stack(np.meshgrid(np.arange(len(rows)), np.arange(len(cols)), indexing="ij"), -1)
    rows_j, cols_j = jnp.asarray(rows, x.dtype), jnp.asarray(cols, x.dtype)

    def at(position):
        mask = (rows_j[position[0]][:, None] * cols_j[position[1]][None, :])[None, :, :, None]
        return fun(x * (1 - mask) + baseline * mask)

    per_call = max(1, batch_size // x.shape[0])
    out = jax.lax.map(at, jnp.asarray(grid.reshape(-1, 2)), batch_size=per_call)
    out = jax.tree.map(lambda o: o.reshape(len(rows), len(cols), *o.shape[1:]), out)
    return out, rows, cols


def quadrature(method: str, steps: int) -> tuple[np.ndarray, np.ndarray]:
    """Points in [0, 1] and weights of the integration rule of integrated gradients.

    The four Riemann sums of ``steps`` points and Gauss-Legendre (``numpy.polynomial``'s nodes
    mapped from [-1, 1]). The trapezoid's weights are ``1 / (steps - 1)``, halved at the ends,
    and sum to 1 (Captum's use ``1 / steps`` and sum to ``(steps - 1) / steps``).
    """
    n = steps
    if method == "gausslegendre":
        nodes, weights = np.polynomial.legendre.leggauss(n)
        return 0.5 * (nodes + 1), 0.5 * weights
    if method == "riemann_trapezoid":
        if n < 2:
            raise VisualizeError("riemann_trapezoid needs steps >= 2.")
        weights = np.full(n, 1.0 / (n - 1))
        weights[[0, -1]] /= 2
        return np.linspace(0.0, 1.0, n), weights
    offset = {"riemann_left": 0.0, "riemann_middle": 0.5, "riemann_right": 1.0}.get(method)
    if offset is None:
        raise VisualizeError(f"Unknown integration {method!r}; choose one of "
                             f"{', '.join(INTEGRATION)}.")
    return (np.arange(n) + offset) / n, np.full(n, 1.0 / n)


@conv.deferred_jit(static_argnames=("model", "plan"))
def _explain(model: nn.Module, plan: _Plan, variables: Any, x: jax.Array,
             t: dict[str, jax.Array], baseline: jax.Array, key: jax.Array) -> dict[str, jax.Array]:
    unit_layers = (plan.unit[0],) if plan.unit else ()

    def score(images, shifts=None):
        logits, acts = _run(model, variables, images, unit_layers + ((plan.layer,) if plan.layer
                                                                     else ()), shifts)
        return _targets(t, logits, acts, plan.unit), acts

    def total(images):
        return jnp.sum(score(images)[0])

    def grad(rule):
        fun = total if rule == "gradient" else backward_rule(total, rule, plan.rectifiers)
        return jax.grad(fun)

    per_call = max(1, plan.batch_size // x.shape[0])
    out: dict[str, jax.Array] = {}
    wanted = set(plan.methods)
    if wanted & {"gradient", "saliency"}:
        g = grad("gradient")(x)
        out.update({"gradient": g, "saliency": jnp.abs(g)})
    if "smoothgrad" in wanted:
        span = jnp.max(x, axis=(1, 2, 3), keepdims=True) - jnp.min(x, axis=(1, 2, 3),
                                                                    keepdims=True)
        noise = jax.random.normal(key, (plan.samples, *x.shape), x.dtype) * (plan.noise * span)
        out["smoothgrad"] = jnp.mean(jax.lax.map(lambda e: grad("gradient")(x + e), noise,
                                                 batch_size=per_call), axis=0)
    if "integrated_gradients" in wanted:
        alphas, weights = quadrature(plan.integration, plan.steps)
        path = jax.lax.map(lambda a: grad("gradient")(baseline + a * (x - baseline)),
                           jnp.asarray(alphas, x.dtype), batch_size=per_call)
        out["integrated_gradients"] = (jnp.tensordot(jnp.asarray(weights, x.dtype), path, 1)
                                       * (x - baseline))
    if "deconvnet" in wanted:
        out["deconvnet"] = grad("deconvnet")(x)
    if wanted & {"guided_backprop", "guided_grad_cam"}:
        out["guided_backprop"] = grad("guided")(x)
    if wanted & {"grad_cam", "guided_grad_cam"}:
        shape = jax.eval_shape(lambda i: score(i)[1][plan.layer], x).shape

        def cam_score(shift):
            s, acts = score(x, {plan.layer: shift})
            return jnp.sum(s), _wide(acts[plan.layer])

        grads, acts = jax.grad(cam_score, has_aux=True)(jnp.zeros(shape, x.dtype))
        cam = jnp.sum(jnp.mean(grads, axis=(1, 2), keepdims=True) * acts, axis=-1)
        out["grad_cam"] = jax.nn.relu(cam) if plan.relu_cam else cam
        if "guided_grad_cam" in wanted:
            up = jax.image.resize(out["grad_cam"], x.shape[:3], "bilinear")
            out["guided_grad_cam"] = out["guided_backprop"] * up[..., None]
    if "occlusion" in wanted:
        base = score(x)[0]
        occluded, rows, cols = _occluded(lambda i: score(i)[0], x, baseline, plan.window,
                                         plan.stride, plan.batch_size)
        drop = base - occluded  # (rows, cols, N)
        counts = rows.sum(0)[:, None] * cols.sum(0)[None, :]
        out["occlusion"] = jnp.einsum("ih,ijn,jw->nhw", rows, drop, cols) / counts
    return {m: out[m] for m in plan.methods}


# ---------------------------------------------------------------------------------------------
# Checking a request before anything runs.


def _check_images(model: nn.Module, variables: Any, x: Any) -> tuple[jax.Array, dict[str, Any],
                                                                    Any]:
    """``x`` as float32 (at least), the layers' output shapes and the logits' shape; a batch the
    network cannot take raises :class:`InputShapeError` with the network's own explanation."""
    x = jnp.asarray(x)
    x = x.astype(jnp.promote_types(x.dtype, jnp.float32))
    if x.ndim != 4:
        hint = " Add a batch axis: x[None]." if x.ndim == 3 else ""
        raise InputShapeError(f"Images must be a batch shaped (N, H, W, C) (NHWC); got shape "
                              f"{tuple(x.shape)}.{hint}")
    leaves, tree = jax.tree.flatten(variables)
    signature = (tree, tuple((np.shape(a), np.result_type(a)) for a in leaves))
    layers, logits = _shapes(model, signature, jax.ShapeDtypeStruct(x.shape, x.dtype))
    return x, layers, logits


@functools.lru_cache(maxsize=64)
def _shapes(model: nn.Module, signature: tuple, x: jax.ShapeDtypeStruct
            ) -> tuple[dict[str, Any], Any]:
    """Layer and logit shapes for variables of this structure: traced once per signature (the
    top-k pass and the command line ask for every batch)."""
    tree, leaves = signature
    variables = jax.tree.unflatten(tree, [jax.ShapeDtypeStruct(s, d) for s, d in leaves])
    try:
        layers = layer_outputs(model, variables, x)
        logits = jax.eval_shape(lambda v, i: model.apply(v, i, train=False), variables, x)
    except InputShapeError:
        raise
    except Exception as err:  # noqa: BLE001 - a shape the weights do not fit, in Flax's words
        cause = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise InputShapeError(
            f"{type(model).__name__} cannot take images shaped {tuple(x.shape)} with these "
            f"weights ({cause}). Give images of the size and channels the network was trained "
            f"on.") from err
    return layers, logits


def _layer(layers: dict[str, Any], name: str, model: nn.Module) -> Any:
    if name not in layers:
        close = difflib.get_close_matches(name, list(layers), n=3, cutoff=0.5)
        hint = f" Did you mean {' or '.join(close)}?" if close else ""
        raise VisualizeError(f"{type(model).__name__} has no layer {name!r}.{hint} Its layers, "
                             f"in call order: {', '.join(layers)}.")
    shape = layers[name]
    if not isinstance(shape, jax.ShapeDtypeStruct):
        raise VisualizeError(f"Layer {name!r} returns {type(shape).__name__}, not one array; "
                             f"choose another layer.")
    return shape


def _spatial_layer(layers: dict[str, Any], name: str | None, model: nn.Module, method: str
                   ) -> None:
    spatial = [n for n, s in layers.items() if isinstance(s, jax.ShapeDtypeStruct)
               and len(s.shape) == 4]
    if name is None:
        raise VisualizeError(f"{method} needs a layer (layer=...); {type(model).__name__}'s "
                             f"layers with spatial axes: {', '.join(spatial)}.")
    shape = _layer(layers, name, model).shape
    if len(shape) != 4:
        raise VisualizeError(
            f"{method} needs a layer with spatial axes (N, H, W, C); {name} gives {shape}. "
            f"Choose a convolutional layer, e.g. {spatial[-1] if spatial else 'none here'}.")


def _per_image(value: Any, n: int, what: str) -> jax.Array:
    arr = np.asarray(value)
    if arr.dtype.kind not in "iu":
        raise VisualizeError(f"{what} must be integers; got {value!r}.")
    if arr.ndim == 0:
        arr = np.full(n, int(arr))
    if arr.shape != (n,):
        raise VisualizeError(f"{what} must be one int or one per image ({n}); got shape "
                             f"{arr.shape}.")
    return jnp.asarray(arr, jnp.int32)


def _in_range(values: jax.Array, size: int, what: str, owner: str, noun: str) -> None:
    values = np.asarray(values)
    bad = values[(values < 0) | (values >= size)]
    if bad.size:
        raise VisualizeError(f"{what} {int(bad[0])} is out of range: {owner} has {size} {noun} "
                             f"(0 to {size - 1}).")


def _target_arrays(target: Any, n: int, layers: dict[str, Any], logits: Any, model: nn.Module
                   ) -> tuple[dict[str, jax.Array], tuple[str, bool] | None]:
    if isinstance(target, Unit):
        shape = _layer(layers, target.layer, model).shape
        if len(shape) not in (2, 4):
            raise VisualizeError(f"Layer {target.layer} gives {shape}; a unit target needs "
                                 f"(N, C) or (N, H, W, C).")
        t = {"channel": _per_image(target.channel, n, "Unit channel")}
        _in_range(t["channel"], shape[-1], "Feature map", target.layer, "feature maps")
        positioned = target.row is not None or target.col is not None
        if positioned and len(shape) == 4:
            if target.row is None or target.col is None:
                raise VisualizeError("A unit's position needs both row and col.")
            t["row"] = _per_image(target.row, n, "Unit row")
            t["col"] = _per_image(target.col, n, "Unit col")
            _in_range(t["row"], shape[1], "Row", target.layer, "rows")
            _in_range(t["col"], shape[2], "Column", target.layer, "columns")
        return t, (target.layer, positioned and len(shape) == 4)
    classes = logits.shape[-1]
    t = {"class": _per_image(target, n, "The target class")}
    _in_range(t["class"], classes, "Target class", type(model).__name__, "classes")
    return t, None


# ---------------------------------------------------------------------------------------------
# The public methods.


def explain(model: nn.Module, variables: Any, x: Any, target: Any,
            methods: Sequence[str] = ("gradient",), *, layer: str | None = None,
            rectifiers: Sequence[str] = RECTIFIERS, baseline: Any = 0.0, steps: int = 50,
            integration: str = "gausslegendre", samples: int = 25, noise: float = 0.15,
            key: jax.Array | None = None,
            window: int = 8, stride: int = 4, batch_size: int = 64, relu_cam: bool = True
            ) -> dict[str, jax.Array]:
    """Attributions of ``target`` for the images ``x`` (NHWC), by each of ``methods``.

    ``target``: a class (an int, or one per image) whose logit is explained, or a
    :class:`Unit`. Returns ``{method: array}``: shaped like ``x`` for ``gradient``,
    ``saliency`` (``|gradient|``, Captum's ``Saliency``), ``smoothgrad`` (the mean gradient of
    ``samples`` copies with Gaussian noise of ``noise`` times each image's range, drawn from
    ``key``; Smilkov et al. recommend 10-20%), ``integrated_gradients`` (from
    ``baseline`` in ``steps`` points of ``integration``, one of :data:`INTEGRATION`),
    ``deconvnet``, ``guided_backprop`` and ``guided_grad_cam``; ``(N, h, w)`` at ``layer``'s
    resolution for ``grad_cam`` (with its final ReLU unless ``relu_cam=False``); ``(N, H, W)``
    for ``occlusion``: Captum's ``Occlusion`` with a ``window`` x ``window`` square of
    ``baseline`` over all channels moved by ``stride``, each pixel getting the mean drop of the
    score over the windows covering it. ``rectifiers``: see the module's docstring.
    ``batch_size`` bounds the images per network call of the methods that evaluate many copies.
    """
    unknown = [m for m in methods if m not in METHODS]
    if unknown or not methods:
        raise VisualizeError(f"Unknown method(s) {unknown}; choose among {', '.join(METHODS)}.")
    x, layers, logits = _check_images(model, variables, x)
    t, unit = _target_arrays(target, x.shape[0], layers, logits, model)
    needs_layer = [m for m in methods if m in LAYER_METHODS]
    if needs_layer:
        _spatial_layer(layers, layer, model, needs_layer[0])
    elif layer is not None:
        _layer(layers, layer, model)
    if "integrated_gradients" in methods:
        quadrature(integration, steps)
        if steps < 1:
            raise VisualizeError(f"steps={steps}: integrated gradients need at least 1.")
    if "occlusion" in methods:
        _check_window(x.shape, window, stride)
    if "smoothgrad" in methods and samples < 1:
        raise VisualizeError(f"samples={samples}: SmoothGrad needs at least 1.")
    backward_rule(lambda: None, "gradient", rectifiers)  # checks the rectifiers' names
    plan = _Plan(methods=tuple(methods), layer=layer if needs_layer else None, unit=unit,
                 rectifiers=tuple(rectifiers), steps=steps, integration=integration,
                 samples=samples, noise=noise, window=window, stride=stride, batch_size=batch_size,
                 relu_cam=relu_cam)
    key = jax.random.key(0) if key is None else key
    return _explain(model, plan, variables, x, t, jnp.asarray(baseline, x.dtype), key)


def _check_window(shape: tuple[int, ...], window: int, stride: int) -> None:
    if not 1 <= window <= min(shape[1:3]):
        raise VisualizeError(f"Occlusion window {window} does not fit the {shape[1]}x{shape[2]} "
                             f"images; use 1 to {min(shape[1:3])}.")
    if not 1 <= stride <= window:
        raise VisualizeError(f"Occlusion stride {stride} must be between 1 and the window "
                             f"({window}), or some pixels are never occluded.")


def occlusion_maps(model: nn.Module, variables: Any, x: Any, labels: Any, *, window: int,
                   stride: int, baseline: Any = 0.0, layer: str | None = None,
                   batch_size: int = 64) -> dict[str, np.ndarray]:
    """Zeiler & Fergus' occlusion sensitivity (Fig. 7) of the images ``x`` of classes ``labels``.

    A ``window`` x ``window`` square of ``baseline`` (0: the mean image, for normalised inputs)
    moves by ``stride``; for each of its positions (rows, cols, as :func:`explain`'s
    ``occlusion``): ``probability``, the softmax probability of the true class;
    ``most_probable``, the predicted class; and with ``layer``, ``feature_map``, the total
    activation of ``strongest_channel``, the feature map of ``layer`` whose strongest
    activation in the unoccluded image is the largest.
    """
    x, layers, logits = _check_images(model, variables, x)
    t, _ = _target_arrays(labels, x.shape[0], layers, logits, model)
    if layer is not None:
        _spatial_layer(layers, layer, model, "occlusion_maps' feature_map")
    _check_window(x.shape, window, stride)
    out = _occlusion_maps(model, variables, x, t["class"], jnp.asarray(baseline, x.dtype),
                          window=window, stride=stride, layer=layer, batch_size=batch_size)
    return {k: np.asarray(v) for k, v in out.items()}


@conv.deferred_jit(inference=True, static_argnames=("model", "window", "stride", "layer",
                                                     "batch_size"))
def _occlusion_maps(model, variables, x, labels, baseline, *, window, stride, layer, batch_size):
    layers = (layer,) if layer else ()
    strongest = None
    if layer:
        acts = _run(model, variables, x, layers)[1][layer]
        strongest = jnp.argmax(jnp.max(acts, axis=(1, 2)), axis=-1)

    def measure(images):
        logits, acts = _run(model, variables, images, layers)
        n = jnp.arange(images.shape[0])
        found = {"probability": jax.nn.softmax(logits)[n, labels],
                 "most_probable": jnp.argmax(logits, -1)}
        if layer:
            maps = _wide(acts[layer])[n, :, :, strongest]
            found["feature_map"] = jnp.sum(maps, axis=(1, 2))
        return found

    grids, _, _ = _occluded(measure, x, baseline, window, stride, batch_size)
    out = {k: jnp.moveaxis(v, -1, 0) for k, v in grids.items()}  # (N, rows, cols)
    if layer:
        out["strongest_channel"] = strongest
    return out


# ---------------------------------------------------------------------------------------------
# Receptive fields, top activations, filters.


def receptive_fields(model: nn.Module, variables: Any, image_shape: Sequence[int], layer: str,
                     rows: Any, cols: Any, channels: Any = 0, *, batch_size: int = 64
                     ) -> np.ndarray:
    """The input box ``(top, left, bottom, right)`` (bottom and right exclusive, clipped to the
    image) that each unit ``(rows[i], cols[i])`` of ``layer`` sees.

    Measured, not derived per family: the support of the unit's gradient in a rectifier-free
    evaluation of the network (rectifiers and other flat activations pass everything back, max
    pooling sums its window), taken at a zero image. That support is every pixel the unit
    depends on through convolutions, pooling windows and padding. (Pooling written as a
    gather of the window's maximum, as in the what-where auto-encoder, is not widened.)
    """
    rows, cols = np.atleast_1d(rows), np.atleast_1d(cols)
    channels = np.broadcast_to(np.asarray(channels), rows.shape)
    h, w, c = image_shape
    boxes = []
    for start in range(0, len(rows), batch_size):
        part = slice(start, start + batch_size)
        m = len(rows[part])
        x = jnp.zeros((m, h, w, c), jnp.float32)
        target = Unit(layer, channels[part], rows[part], cols[part])
        _, layers, logits = _check_images(model, variables, x)
        t, unit = _target_arrays(target, m, layers, logits, model)
        support = np.asarray(_support(model, variables, x, t, unit))
        boxes.append(_boxes(support))
    return np.concatenate(boxes)


@conv.deferred_jit(static_argnames=("model", "unit"))
def _support(model, variables, x, t, unit):
    def total(images):
        logits, acts = _run(model, variables, images, (unit[0],))
        return jnp.sum(_targets(t, logits, acts, unit))

    g = jax.grad(backward_rule(total, "gradient", RECTIFIERS, linear=True))(x)
    return jnp.any(g != 0, axis=-1)


def _boxes(support: np.ndarray) -> np.ndarray:
    """``(top, left, bottom, right)`` of the True pixels of each ``(N, H, W)`` mask."""
    out = np.zeros((len(support), 4), np.int32)
    for i, mask in enumerate(support):
        ys, xs = np.nonzero(mask.any(1))[0], np.nonzero(mask.any(0))[0]
        if ys.size:
            out[i] = (ys[0], xs[0], ys[-1] + 1, xs[-1] + 1)
    return out


@dataclasses.dataclass
class TopActivations:
    """The ``k`` strongest activations of each chosen feature map of ``layer`` over a stream of
    images, strongest first (ties: the earlier image). ``index[c, j]`` is the image's position
    in the stream (-1 where fewer than ``k`` images were seen), ``row``/``col`` the unit's
    position in the map (0 for layers without spatial axes), ``images[c, j]`` the image."""

    layer: str
    channels: np.ndarray  # (C,)
    values: np.ndarray  # (C, k)
    index: np.ndarray  # (C, k)
    row: np.ndarray  # (C, k)
    col: np.ndarray  # (C, k)
    images: np.ndarray  # (C, k, H, W, channels)


@conv.deferred_jit(inference=True, static_argnames=("model", "layer"))
def _strongest(model, variables, x, channels, *, layer):
    a = _wide(_run(model, variables, x, (layer,))[1][layer])[..., channels]
    if a.ndim == 2:
        zeros = jnp.zeros(a.shape, jnp.int32)
        return a, zeros, zeros
    n, h, w, c = a.shape
    flat = a.reshape(n, h * w, c)
    where = jnp.argmax(flat, axis=1)
    return jnp.max(flat, axis=1), (where // w).astype(jnp.int32), (where % w).astype(jnp.int32)


def top_activations(model: nn.Module, variables: Any, batches: Iterable[Any], layer: str, *,
                    k: int = 9, channels: Sequence[int] | None = None, progress: bool = False,
                    total: int | None = None) -> TopActivations:
    """The ``k`` images that activate each feature map of ``layer`` most (Zeiler & Fergus
    Fig. 2), streaming ``batches`` once: arrays ``(B, H, W, C)`` or dicts with ``image`` and an
    optional ``mask`` of real examples. A feature map's activation is its strongest unit.
    ``channels`` restricts the maps (default: all); the kept images number at most
    ``len(channels) * k``. ``progress`` shows a tqdm bar (images/s) over ``total`` images.
    """
    if k < 1:
        raise VisualizeError(f"k={k}: ask for at least one image per feature map.")
    bar = _progress_bar(progress, total, f"top-{k} {layer}")
    kept: dict[int, np.ndarray] = {}
    top = None
    seen = 0
    try:
        for batch in batches:
            images, mask = ((batch["image"], batch.get("mask")) if isinstance(batch, dict)
                            else (batch, None))
            images = np.asarray(images, np.float32)
            mask = np.ones(len(images), bool) if mask is None else np.asarray(mask, bool)
            if top is None:
                x, layers, _ = _check_images(model, variables, images)
                shape = _layer(layers, layer, model).shape
                if len(shape) not in (2, 4):
                    raise VisualizeError(f"Layer {layer} gives {shape}; top activations need "
                                         f"feature maps (N, H, W, C) or units (N, C).")
                chosen = np.arange(shape[-1]) if channels is None else np.asarray(channels)
                _in_range(chosen, shape[-1], "Feature map", layer, "feature maps")
                top = _empty_top(layer, chosen, k, images.shape[1:])
            values, rows, cols = map(np.asarray, _strongest(
                model, variables, jnp.asarray(images), jnp.asarray(top.channels), layer=layer))
            index = seen + np.arange(len(images))
            values = np.where(mask[:, None], values, -np.inf)
            _merge(top, values.T, np.broadcast_to(index, values.T.shape), rows.T, cols.T)
            wanted = set(top.index[top.index >= 0].ravel().tolist())
            kept = {i: img for i, img in kept.items() if i in wanted}
            kept.update({int(i): images[j] for j, i in enumerate(index) if int(i) in wanted
                         and int(i) not in kept})
            seen += int(len(images))
            bar.update(int(mask.sum()))
    finally:
        bar.close()
    if top is None:
        raise VisualizeError("No images were given to rank.")
    for (c, j), i in np.ndenumerate(top.index):
        if i >= 0:
            top.images[c, j] = kept[int(i)]
    return top


def _empty_top(layer: str, channels: np.ndarray, k: int, image_shape: tuple[int, ...]
               ) -> TopActivations:
    shape = (len(channels), k)
    return TopActivations(layer=layer, channels=channels, values=np.full(shape, -np.inf),
                          index=np.full(shape, -1), row=np.zeros(shape, np.int32),
                          col=np.zeros(shape, np.int32),
                          images=np.zeros((*shape, *image_shape), np.float32))


def _merge(top: TopActivations, values: np.ndarray, index: np.ndarray, rows: np.ndarray,
           cols: np.ndarray) -> None:
    """Keeps the ``k`` largest of the current and new candidates of each map, strongest first,
    the earlier image first among equals; entries of -inf are no candidates."""
    k = top.values.shape[1]
    vals = np.concatenate([top.values, values], axis=1)
    idx = np.concatenate([top.index, index], axis=1)
    order = np.lexsort((np.where(idx < 0, np.iinfo(np.int64).max, idx), -vals), axis=1)[:, :k]
    take = functools.partial(np.take_along_axis, indices=order, axis=1)
    top.values = take(vals)
    top.index = np.where(np.isfinite(top.values), take(idx), -1)
    top.row = take(np.concatenate([top.row, rows], axis=1))
    top.col = take(np.concatenate([top.col, cols], axis=1))


def _progress_bar(enabled: bool, total: int | None, desc: str):
    if not enabled:
        return _Silent()
    from tqdm.auto import tqdm  # the train extra: the library itself needs only jax and flax

    return tqdm(total=total, desc=desc, unit="img", unit_scale=True, dynamic_ncols=True)


class _Silent:
    def update(self, n: int = 1) -> None:
        pass

    def close(self) -> None:
        pass


def project_top(model: nn.Module, variables: Any, top: TopActivations, *,
                method: str = "deconvnet", rectifiers: Sequence[str] = RECTIFIERS,
                batch_size: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """Each top activation projected to pixels by ``method`` (``deconvnet``, as in Zeiler &
    Fergus Fig. 2, ``guided_backprop`` or ``gradient``) and its receptive field: arrays
    ``(C, k, H, W, channels)`` and boxes ``(C, k, 4)`` (zeros where no image was ranked)."""
    if method not in ("deconvnet", "guided_backprop", "gradient"):
        raise VisualizeError(f"Projections use deconvnet, guided_backprop or gradient, not "
                             f"{method!r}.")
    valid = np.argwhere(top.index >= 0)
    projections = np.zeros_like(top.images)
    boxes = np.zeros((*top.index.shape, 4), np.int32)
    for start in range(0, len(valid), batch_size):
        part = valid[start:start + batch_size]
        c, j = part[:, 0], part[:, 1]
        unit = Unit(top.layer, top.channels[c], top.row[c, j], top.col[c, j])
        out = explain(model, variables, top.images[c, j], unit, (method,),
                      rectifiers=rectifiers)
        projections[c, j] = np.asarray(out[method])
        boxes[c, j] = receptive_fields(model, variables, top.images.shape[2:], top.layer,
                                       top.row[c, j], top.col[c, j], top.channels[c],
                                       batch_size=batch_size)
    return projections, boxes


def crop(images: np.ndarray, boxes: np.ndarray, size: int | None = None,
         fill: float = 0.0) -> np.ndarray:
    """The boxes' patches of ``images`` (``(..., H, W, C)`` with boxes ``(..., 4)``), each
    placed at the top left of a ``size`` x ``size`` patch (default: the largest box) filled with
    ``fill``."""
    lead = images.shape[:-3]
    flat_images = images.reshape(-1, *images.shape[-3:])
    flat_boxes = boxes.reshape(-1, 4)
    size = size or int(max(1, (flat_boxes[:, 2:] - flat_boxes[:, :2]).max(initial=1)))
    out = np.full((len(flat_images), size, size, images.shape[-1]), fill, images.dtype)
    for i, (top_, left, bottom, right) in enumerate(flat_boxes):
        patch = flat_images[i, top_:bottom, left:right][:size, :size]
        out[i, :patch.shape[0], :patch.shape[1]] = patch
    return out.reshape(*lead, size, size, images.shape[-1])


def first_layer_filters(model: nn.Module, variables: Any, x: Any) -> np.ndarray:
    """The kernels ``(kh, kw, in, out)`` of the first layer, in call order, holding a
    convolution (the first four-dimensional parameter under it)."""
    x = jnp.asarray(x, jnp.float32)
    params = variables["params"]
    for name in layer_outputs(model, variables, x):
        kernels = [leaf for leaf in jax.tree.leaves(params.get(name, {})) if np.ndim(leaf) == 4]
        if kernels:
            return np.asarray(kernels[0])
    raise VisualizeError(f"{type(model).__name__} has no convolution to show.")


# ---------------------------------------------------------------------------------------------
# Display helpers (NumPy; drawing is the caller's, e.g. matplotlib's imshow).


def unit_range(a: Any, axes: tuple[int, ...] = (-3, -2, -1), symmetric: bool = False
               ) -> np.ndarray:
    """``a`` scaled to [0, 1] over ``axes`` (per image by default); ``symmetric`` keeps 0 at
    0.5 (for signed maps: gradients, projections)."""
    a = np.asarray(a, np.float32)
    if symmetric:
        scale = np.max(np.abs(a), axis=axes, keepdims=True)
        return 0.5 + 0.5 * a / np.where(scale > 0, scale, 1)
    low = np.min(a, axis=axes, keepdims=True)
    span = np.max(a, axis=axes, keepdims=True) - low
    return (a - low) / np.where(span > 0, span, 1)


def pixel_map(attribution: Any) -> np.ndarray:
    """An ``(N, H, W, C)`` attribution as one value per pixel: the largest absolute value over
    the channels (Simonyan et al. 2014, sec. 3.1); ``(N, H, W)`` maps pass unchanged."""
    a = np.asarray(attribution)
    return np.max(np.abs(a), axis=-1) if a.ndim == 4 else a


def tile(images: Any, columns: int | None = None, pad: int = 1, fill: float = 1.0
         ) -> np.ndarray:
    """Images ``(M, h, w[, c])`` as one grid image, ``columns`` wide (default: square)."""
    images = np.asarray(images, np.float32)
    if images.ndim == 3:
        images = images[..., None]
    m, h, w, c = images.shape
    columns = columns or math.ceil(math.sqrt(m))
    rows = math.ceil(m / columns)
    grid = np.full((rows * (h + pad) + pad, columns * (w + pad) + pad, c), fill, np.float32)
    for i, image in enumerate(images):
        r, q = divmod(i, columns)
        grid[pad + r * (h + pad):pad + r * (h + pad) + h,
             pad + q * (w + pad):pad + q * (w + pad) + w] = image
    return grid


def filter_images(kernels: Any) -> np.ndarray:
    """Kernels ``(kh, kw, in, out)`` as ``out`` images ``(kh, kw, 3 or 1)`` in [0, 1], each
    scaled on its own, as Zeiler & Fergus show them (3 input channels: RGB; otherwise the
    first)."""
    k = np.moveaxis(np.asarray(kernels, np.float32), -1, 0)
    k = k if k.shape[-1] == 3 else k[..., :1]
    return unit_range(k, symmetric=True)
