"""Create networks by name.

Each family module exports ``MODELS``, a plain dict of variant names to :class:`ModelSpec`; this
module merges them explicitly (no import-time decorators), so the whole registry reads in one
place below.
"""

from __future__ import annotations

import dataclasses
import difflib
import fnmatch
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from jaxcnn import (
    alexnet, allcnn, densenet, efficientnet, googlenet, inception, lenet, mobilenet, nin,
    resnet, squeezenet, stn, vgg, whatwhere,
)
from jaxcnn.spec import Converter, ModelSpec, Published

_FAMILIES = (
    lenet, alexnet, vgg, googlenet, inception, resnet, mobilenet, efficientnet, nin, allcnn,
    squeezenet, densenet, stn, whatwhere,
)

# Short names people type, mapped to the variant they mean.
ALIASES: dict[str, str] = {
    # Hu et al. call the whole family SENet; SE-ResNet-50 is the network of their main tables
    # and the one that trains in reasonable time (SENet-154 is registered as ``senet154``).
    "senet": "seresnet50",
    "inception_v1": "googlenet",
    "mobilenet": "mobilenet_v1",
    "resnext50": "resnext50_32x4d",
}


def _merge() -> dict[str, ModelSpec]:
    merged: dict[str, ModelSpec] = {}
    for family in _FAMILIES:
        for name, spec in family.MODELS.items():
            if name in merged:
                raise RuntimeError(f"variant {name!r} is registered twice ({family.__name__})")
            merged[name] = spec
    return merged


_REGISTRY: dict[str, ModelSpec] = _merge()


class UnknownModelError(ValueError):
    """A name that is neither a registered variant nor an alias."""


def resolve(name: str) -> str:
    """The registered variant a name or alias means (case and ``-``/``_`` do not matter);
    an unknown name raises :class:`UnknownModelError` listing the close names."""
    key = name.lower().replace("-", "_")
    key = ALIASES.get(key, key)
    if key in _REGISTRY:
        return key
    choices = sorted(_REGISTRY) + sorted(ALIASES)
    close = difflib.get_close_matches(key, choices, n=5, cutoff=0.5)
    close += [c for c in choices if key and key in c and c not in close][: 5 - len(close)]
    hint = f" Did you mean: {', '.join(close)}?" if close else ""
    raise UnknownModelError(
        f"Unknown architecture {name!r}.{hint} jaxcnn.list_models() lists all "
        f"{len(_REGISTRY)} variants."
    )


def list_models(pattern: str | None = None) -> list[str]:
    """Registered variant names, sorted; ``pattern`` is a shell wildcard such as ``"resnet*"``."""
    names = sorted(_REGISTRY)
    return [n for n in names if pattern is None or fnmatch.fnmatch(n, pattern)]


@dataclasses.dataclass(frozen=True)
class ModelInfo:
    """What :func:`model_info` returns: timm's ``default_cfg`` plus the published figures and
    the reference implementations whose weights the variant reads."""

    name: str
    input_shape: tuple[int, int, int]
    num_classes: int
    reference: str
    published: tuple[Published, ...]
    module: str
    min_size: int
    converters: tuple[Converter, ...] = ()
    objective: str = "classification"


def model_info(name: str) -> ModelInfo:
    """Default input (H, W, C), number of classes, the reference followed, published figures,
    converters, the objective it trains for."""
    key = resolve(name)
    spec = _REGISTRY[key]
    module = getattr(spec.builder, "func", spec.builder)
    return ModelInfo(
        name=key,
        input_shape=spec.input_shape,
        num_classes=spec.num_classes,
        reference=spec.reference,
        published=spec.published,
        module=f"{module.__module__}.{module.__qualname__}",
        min_size=spec.builder(num_classes=spec.num_classes).min_size,
        converters=spec.converters,
        objective=spec.objective,
    )


def create_model(
    name: str, *, num_classes: int | None = None, dtype: Any = jnp.float32, **overrides: Any
) -> nn.Module:
    """Builds the variant ``name`` (any registered name or alias).

    ``num_classes`` defaults to the variant's own (1000 for ImageNet networks); ``dtype`` is the
    computation dtype (parameters stay float32); ``overrides`` set other fields of the module,
    e.g. ``aux_logits=True`` or ``axis_name="batch"`` for cross-replica BatchNorm under pmap.
    """
    key = resolve(name)
    spec = _REGISTRY[key]
    kwargs = {"num_classes": spec.num_classes if num_classes is None else num_classes,
              "dtype": dtype, **overrides}
    try:
        return spec.builder(**kwargs)
    except TypeError as err:
        cls = getattr(spec.builder, "func", spec.builder)
        fields = sorted(f.name for f in dataclasses.fields(cls)
                        if f.name not in ("parent", "name")) if dataclasses.is_dataclass(cls) else []
        raise TypeError(
            f"{key}: cannot build with {sorted(kwargs)}: {err}. Fields this model accepts: "
            f"{', '.join(fields)}."
        ) from err
