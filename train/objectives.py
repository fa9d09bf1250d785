"""What a network is trained for: objectives as data that the train step takes.

A registered network names its objective (``jaxcnn.model_info(arch).objective``); ``--objective``
may pick another that the network admits. An :class:`Objective` is everything the train step
needs to know about it, so that the step has no ``if arch == ...`` branches:

* ``loss(outputs, collections, images, labels)``: the scalar to minimise and the metrics to
  report, from the network's output, the collections it sowed or updated, and the batch;
* ``collections``: the mutable collections the step must ask ``apply`` for (besides
  ``batch_stats``), e.g. ``intermediates`` for the reconstructions of SWWAE;
* ``shown``: the metrics that the progress bar and the log lines show, in order;
* ``FLAGS``: the options it declares (fields of :class:`train.configs.default.Config`), with
  their defaults and valid ranges. :func:`resolve_objective` fills them in and refuses a flag
  that the objective of the run does not declare, naming what applies instead.

Objectives:

* ``classification``: softmax cross-entropy on the labels (``--label-smoothing``), plus
  ``--aux-weight`` times that of each auxiliary classifier of the networks that have them
  (GoogLeNet, Inception v3). Reports ``loss`` (the main classifier's cross-entropy) and
  ``accuracy``, and ``total_loss`` with auxiliary classifiers.
* ``swwae``: the stacked what-where auto-encoder's objective (Zhao et al. 2016,
  :func:`jaxcnn.whatwhere.whatwhere_loss`), ``NLL + lambda_rec * L2rec + lambda_mid * L2M``,
  for networks that sow ``reconstruction`` and ``middle_reconstructions``. ``--labelled N``
  keeps the labels of N training images (stratified by class, chosen by ``--seed``): the others
  carry label -1 and count only in the reconstruction terms, the paper's semi-supervised
  training. Reports ``loss`` (the NLL over the labelled images of the batch),
  ``reconstruction``, ``middle``, ``total_loss`` and ``accuracy`` (on the labelled images).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, ClassVar, Mapping

import jax
import jax.numpy as jnp
import numpy as np
import optax

import jaxcnn
from jaxcnn import whatwhere
from train import metrics as metrics_lib
from train.configs.default import Config, ConfigError


def cross_entropy(logits: jax.Array, labels: jax.Array, num_classes: int,
                  label_smoothing: float = 0.0) -> jax.Array:
    """Per-example softmax cross-entropy in float32; ``labels`` are ints or soft targets."""
    targets = (jax.nn.one_hot(labels, num_classes) if labels.ndim == 1
               else labels.astype(jnp.float32))
    if label_smoothing:
        targets = targets * (1.0 - label_smoothing) + label_smoothing / num_classes
    return optax.softmax_cross_entropy(logits.astype(jnp.float32), targets)


@dataclasses.dataclass(frozen=True)
class Flag:
    """An option an objective declares: a :class:`Config` field, its default, its valid range.

    ``minimum``/``maximum`` bound the value (``None``: unbounded); ``default`` is the value a
    run gets when the flag is left out (``None``: off). The field's help (the flag's
    documentation) states the same default.
    """

    field: str
    default: float | int | None
    minimum: float | None = None
    maximum: float | None = None

    @property
    def option(self) -> str:
        return "--" + self.field.replace("_", "-")


@dataclasses.dataclass(frozen=True)
class Shown:
    """A metric of the progress bar and the log lines: key, label, and whether a percentage."""

    key: str
    label: str
    percent: bool = False

    def bar(self, value: float) -> str:
        return f"{100 * value:.1f}%" if self.percent else f"{value:.4f}"

    def line(self, value: float) -> str:
        return f"{100 * value:.2f}%" if self.percent else f"{value:.4f}"


class Objective:
    """What a network is trained for; subclasses are frozen dataclasses of their settings."""

    NAME: ClassVar[str]
    FLAGS: ClassVar[tuple[Flag, ...]] = ()
    shown: ClassVar[tuple[Shown, ...]] = (Shown("loss", "loss"),
                                          Shown("accuracy", "acc", percent=True))

    @classmethod
    def from_config(cls, config: Config) -> "Objective":
        raise NotImplementedError

    @property
    def collections(self) -> tuple[str, ...]:
        """Mutable collections ``apply`` must return besides ``batch_stats``."""
        return ()

    @property
    def terms(self) -> tuple[str, ...]:
        """The metrics beyond loss and accuracy, drawn in a panel of their own."""
        return tuple(m.key for m in self.shown if m.key not in ("loss", "accuracy"))

    figure: ClassVar[str | None] = None
    """The name of the figure :meth:`draw` makes after each epoch (None: none)."""

    def draw(self, apply_fn: Callable[..., Any], variables: Any, images: np.ndarray, path: str,
             title: str) -> None:
        """Draws the figure of the network (``apply_fn(variables, images, train=False,
        mutable=...)``) on a few eval ``images`` into the PNG ``path``."""
        raise NotImplementedError

    def loss(self, outputs: Any, collections: Mapping[str, Any], images: jax.Array,
             labels: jax.Array) -> tuple[jax.Array, dict[str, jax.Array]]:
        """``(loss to minimise, metrics)``; the metrics hold at least ``loss`` and
        ``accuracy``."""
        raise NotImplementedError

    def data_options(self, config: Config) -> dict[str, Any]:
        """Keyword arguments the run adds to ``train_iterator`` (none by default)."""
        del config
        return {}

    def check(self, config: Config) -> None:
        """Refuses settings of a resolved ``config`` that cannot work with this objective."""
        del config


@dataclasses.dataclass(frozen=True)
class Classification(Objective):
    """Cross-entropy on the labels, and the auxiliary classifiers' with ``aux_weight``."""

    NAME: ClassVar[str] = "classification"

    num_classes: int
    label_smoothing: float = 0.0
    aux_weight: float = 0.0

    @classmethod
    def from_config(cls, config: Config) -> "Classification":
        return cls(num_classes=config.num_classes, label_smoothing=config.label_smoothing or 0.0,
                   aux_weight=config.aux_weight or 0.0)

    @property
    def collections(self) -> tuple[str, ...]:
        return ("aux_logits",) if self.aux_weight else ()

    def loss(self, outputs, collections, images, labels):
        del images
        logits = outputs
        ce = cross_entropy(logits, labels, self.num_classes, self.label_smoothing).mean()
        loss = ce
        for aux in jax.tree.leaves(collections.get("aux_logits", {})):
            loss = loss + self.aux_weight * cross_entropy(
                aux, labels, self.num_classes, self.label_smoothing).mean()
        target = labels if labels.ndim == 1 else jnp.argmax(labels, -1)
        metrics = {"loss": ce, "accuracy": jnp.mean(jnp.argmax(logits, -1) == target)}
        if self.aux_weight:
            metrics["total_loss"] = loss
        return loss, metrics


@dataclasses.dataclass(frozen=True)
class Swwae(Objective):
    """Zhao et al.'s objective: NLL on the labelled images, input and middle reconstructions."""

    NAME: ClassVar[str] = "swwae"
    FLAGS: ClassVar[tuple[Flag, ...]] = (
        Flag("lambda_rec", 1.0, minimum=0.0),
        Flag("lambda_mid", 1.0, minimum=0.0),
        Flag("labelled", None, minimum=1),
    )
    shown: ClassVar[tuple[Shown, ...]] = (
        Shown("loss", "nll"), Shown("reconstruction", "rec"), Shown("middle", "mid"),
        Shown("accuracy", "acc", percent=True))

    lambda_rec: float = 1.0
    lambda_mid: float = 1.0
    labelled: int | None = None
    seed: int = 0

    @classmethod
    def from_config(cls, config: Config) -> "Swwae":
        return cls(lambda_rec=config.lambda_rec, lambda_mid=config.lambda_mid,
                   labelled=config.labelled, seed=config.seed)

    @property
    def collections(self) -> tuple[str, ...]:
        return ("intermediates",)

    def loss(self, outputs, collections, images, labels):
        logits = outputs
        sown = collections["intermediates"]
        weights = whatwhere.LossWeights(classification=1.0, reconstruction=self.lambda_rec,
                                        middle=self.lambda_mid)
        total, parts = whatwhere.whatwhere_loss(
            logits, labels, sown["reconstruction"][0], images,
            sown["middle_reconstructions"][0], weights)
        labelled = labels >= 0
        hits = (jnp.argmax(logits, -1) == labels) & labelled
        accuracy = jnp.sum(hits) / jnp.maximum(jnp.sum(labelled), 1)
        return total, {"loss": parts["classification"], "reconstruction": parts["reconstruction"],
                       "middle": parts["middle"], "total_loss": total, "accuracy": accuracy}

    figure: ClassVar[str | None] = "reconstructions"

    def draw(self, apply_fn, variables, images, path, title):
        _, sown = apply_fn(variables, images, train=False, mutable=("intermediates",))
        recon = np.asarray(sown["intermediates"]["reconstruction"][0])
        metrics_lib.draw_image_rows(
            path, [("input", np.asarray(images)), ("reconstruction", recon)], title)

    def data_options(self, config: Config) -> dict[str, Any]:
        if self.labelled is None:
            return {}
        return {"labelled": self.labelled, "labelled_seed": self.seed}

    def check(self, config: Config) -> None:
        for name in ("mixup", "cutmix", "label_smoothing"):
            if getattr(config, name):
                raise ConfigError(
                    f"--{name.replace('_', '-')} {getattr(config, name)}: the swwae objective "
                    f"takes one integer label per image (-1 for the unlabelled); omit it.")


OBJECTIVES: dict[str, type[Objective]] = {
    objective.NAME: objective for objective in (Classification, Swwae)}


def objective_flags() -> dict[str, list[str]]:
    """Each objective flag's field -> the objectives that declare it."""
    declared: dict[str, list[str]] = {}
    for name, objective in OBJECTIVES.items():
        for flag in objective.FLAGS:
            declared.setdefault(flag.field, []).append(name)
    return declared


def resolve_objective(config: Config, *, network_objective: str, num_train: int,
                      num_classes: int) -> Config:
    """``config`` with its objective and that objective's flags resolved and checked.

    ``network_objective`` is the one the network declares (``ModelSpec.objective``); every
    network also trains as a classifier. A flag of another objective, a value out of its range,
    ``--labelled`` above the ``num_train`` training images or below the ``num_classes``
    classes: :class:`ConfigError` naming what applies.
    """
    arch = config.arch
    name = config.objective or network_objective
    admitted = list(dict.fromkeys([network_objective, Classification.NAME]))
    if name not in OBJECTIVES:
        raise ConfigError(f"--objective {name!r} is not one of {', '.join(OBJECTIVES)}.")
    if name not in admitted:
        raise ConfigError(
            f"--objective {name}: {arch} does not produce what {name} trains (its networks "
            f"declare it: jaxcnn.model_info(arch).objective); {arch} trains with "
            f"{' or '.join(admitted)}.")
    objective = OBJECTIVES[name]
    own = {flag.field: flag for flag in objective.FLAGS}
    changes: dict[str, Any] = {"objective": name}
    for field, owners in objective_flags().items():
        value = getattr(config, field)
        flag = own.get(field)
        if flag is None:
            if value is not None:
                option = "--" + field.replace("_", "-")
                applies = ", ".join(f.option for f in objective.FLAGS) or "none"
                raise ConfigError(
                    f"{option} applies to the {' and '.join(owners)} objective, not to {name}, "
                    f"which {arch} trains with. Options of {name}: {applies}. Omit {option}, or "
                    f"train a network that declares {owners[0]} "
                    f"(e.g. {_example_network(owners[0])}).")
            continue
        if value is None:
            changes[field] = flag.default
            continue
        if ((flag.minimum is not None and value < flag.minimum)
                or (flag.maximum is not None and value > flag.maximum)):
            bounds = (f"at least {flag.minimum:g}" if flag.maximum is None
                      else f"in [{flag.minimum:g}, {flag.maximum:g}]")
            raise ConfigError(f"{flag.option} must be {bounds}; got {value}.")
    labelled = changes.get("labelled", config.labelled) if "labelled" in own else None
    if labelled is not None and not num_classes <= labelled <= num_train:
        raise ConfigError(
            f"--labelled {labelled}: keep between {num_classes} (one label per class) and "
            f"{num_train:,} (every training image of {config.dataset}) labels.")
    resolved = config.replace(**changes)
    objective.from_config(resolved).check(resolved)
    return resolved


def _example_network(objective: str) -> str:
    return next((n for n in jaxcnn.list_models() if jaxcnn.model_info(n).objective == objective),
                "none registered")


def describe_objective(config: Config) -> str:
    """``"objective swwae (lambda_rec 1, lambda_mid 1, labelled 100)"``; empty for plain
    classification, whose settings the run's description already gives."""
    name = config.objective or Classification.NAME
    if name == Classification.NAME:
        return ""
    values = [f"{f.field} {getattr(config, f.field):g}" for f in OBJECTIVES[name].FLAGS
              if getattr(config, f.field) is not None]
    return f"objective {name} ({', '.join(values)})" if values else f"objective {name}"


def objective_of(config: Config) -> Objective:
    """The objective of a resolved ``config`` (classification when it names none)."""
    return OBJECTIVES[config.objective or Classification.NAME].from_config(config)

