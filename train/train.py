"""Training library: train state, optimizer, the train and eval steps, and the loop.

``train_and_evaluate(config)`` runs a whole training: ``train.plan.resolve_config`` fills the
config's "auto" fields, :func:`build` makes the network, optimizer, initial state and steps of
the plan (evaluation and the benchmark build through it too), and the loop runs them. Every
piece is importable on its own (``create_optimizer``, ``make_train_step``, ...), as in the Flax
ImageNet example. Devices, processes and the jit/pmap placement are ``train.parallel``'s.

Mixed precision: the network computes in ``config.dtype`` (bfloat16 on accelerators); parameters,
optimizer state, logits and the loss stay float32. The loop never waits for the device except
to fetch metrics every ``log_every`` steps and at evaluations.
"""

from __future__ import annotations

import collections
import dataclasses
import difflib
import importlib
import itertools
import os
import sys
import time
import warnings
from typing import Any, Callable, Iterable, Iterator

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

import jaxcnn
from jaxcnn import conv
from jaxcnn import convert as convert_lib
from jaxcnn import features as features_lib
from jaxcnn import weights as weights_lib
from train import checkpoints as checkpoints_lib
from train import guard as guard_lib
from train import metrics as metrics_lib
from train.configs.default import Config, ConfigError
from train.data import DatasetError
from train.objectives import Objective, Shown, cross_entropy, describe_objective, objective_of
from train.parallel import JitParallel, initialize_distributed, make_parallel
from train.plan import Plan, resolve_config

# A donated buffer that no output can reuse draws this warning at every compilation; it costs
# only that buffer's memory until the step ends.
warnings.filterwarnings("ignore", message="Some donated buffers were not usable")

DTYPES = {"bfloat16": jnp.bfloat16, "float32": jnp.float32}

# Mistakes in what the user asked for (flags, data set, network, workdir): the command lines print
# their one-line message, which names the fix, and exit with status 2.
USER_ERRORS = (ConfigError, DatasetError, checkpoints_lib.CheckpointError,
               jaxcnn.UnknownModelError, jaxcnn.InputShapeError, guard_lib.Diverged)


# --------------------------------------------------------------------------------------------
# Model, state, optimizer.
# --------------------------------------------------------------------------------------------
def build_model(config: Config, *, axis_name: str | None = None,
                model_factory: Callable | None = None) -> nn.Module:
    """The network of a resolved config (with aux heads when ``aux_weight`` > 0)."""
    factory = model_factory or jaxcnn.create_model
    kwargs: dict[str, Any] = {"num_classes": config.num_classes, "dtype": DTYPES[config.dtype]}
    if axis_name is not None:
        kwargs["axis_name"] = axis_name
    if config.aux_weight:
        kwargs["aux_logits"] = True
    return factory(config.arch, **kwargs)


@flax.struct.dataclass
class TrainState:
    """Everything that changes during training (and goes into a checkpoint)."""

    step: jax.Array
    params: Any
    batch_stats: Any
    opt_state: Any
    ema: Any = None  # {"params", "batch_stats"} averaged, or None without an EMA

    def eval_variables(self) -> dict[str, Any]:
        """The variables evaluation uses: the EMA weights when there are some."""
        source = self.ema if self.ema is not None else {"params": self.params,
                                                        "batch_stats": self.batch_stats}
        return {k: v for k, v in source.items() if k == "params" or v}


def decay_mask(params: Any) -> Any:
    """True for the arrays weight decay applies to: kernels, not biases or BatchNorm (1-D)."""
    return jax.tree.map(lambda p: p.ndim > 1, params)


def create_schedule(config: Config, plan_steps_per_epoch: int, num_updates: int) -> optax.Schedule:
    """Linear warm-up from 0 to ``lr``, then cosine/step/exponential/constant, in updates."""
    per_epoch = plan_steps_per_epoch / config.grad_accum  # optimizer updates per epoch
    warmup = int(round(config.warmup_epochs * per_epoch))
    warmup = min(warmup, num_updates - 1) if num_updates > 1 else 0
    peak = config.lr
    if config.schedule == "cosine":
        return optax.warmup_cosine_decay_schedule(0.0, peak, warmup, num_updates, end_value=0.0)
    if config.schedule == "constant":
        after = optax.constant_schedule(peak)
    else:
        every = max(1, int(round(config.lr_decay_epochs * per_epoch)))
        after = optax.exponential_decay(peak, every, config.lr_decay_factor,
                                        staircase=config.schedule == "step")
    if warmup == 0:
        return after
    return optax.join_schedules([optax.linear_schedule(0.0, peak, warmup), after], [warmup])


def create_optimizer(config: Config, schedule: optax.Schedule,
                     param_labels: Callable[[Any], Any] | None = None
                     ) -> optax.GradientTransformation:
    """The Optax chain: clipping, the optimizer with masked weight decay, accumulation.

    ``param_labels(params)`` (see :func:`make_param_labels`) splits the parameters into
    ``frozen`` (never updated, not even by weight decay), ``backbone`` (``schedule``) and
    ``head`` (``schedule`` x ``config.head_lr_multiplier``) with ``optax.multi_transform``.
    """
    core = _optimizer(config, schedule)
    if param_labels is not None:
        multiplier = config.head_lr_multiplier

        def head_schedule(count):
            return schedule(count) * multiplier

        core = optax.multi_transform(
            {"frozen": optax.set_to_zero(), "backbone": core,
             "head": _optimizer(config, head_schedule)}, param_labels)
    if config.grad_clip:
        core = optax.chain(optax.clip_by_global_norm(config.grad_clip), core)
    if config.grad_accum > 1:
        return optax.MultiSteps(core, every_k_schedule=config.grad_accum)
    return core


def _optimizer(config: Config, schedule: optax.Schedule) -> optax.GradientTransformation:
    """The optimizer of ``config`` with its masked weight decay, at the rate ``schedule``."""
    name, wd, eps, momentum = (config.optimizer, config.weight_decay, config.opt_eps,
                               config.momentum)
    if name in ("sgd", "nesterov"):
        core = optax.chain(optax.add_decayed_weights(wd, decay_mask),
                           optax.sgd(schedule, momentum=momentum or None,
                                     nesterov=name == "nesterov"))
    elif name == "rmsprop":
        # TF's RMSProp (MobileNet/EfficientNet): eps inside the root, squares start at 1.
        core = optax.chain(optax.add_decayed_weights(wd, decay_mask),
                           optax.rmsprop(schedule, decay=0.9, eps=eps, initial_scale=1.0,
                                         momentum=momentum or None))
    elif name == "adamw":
        core = optax.adamw(schedule, b1=momentum, eps=eps, weight_decay=wd, mask=decay_mask)
    elif name == "lars":
        core = optax.lars(schedule, weight_decay=wd, weight_decay_mask=decay_mask,
                          trust_ratio_mask=decay_mask, momentum=momentum)
    elif name == "lamb":
        core = optax.lamb(schedule, b1=momentum, eps=eps, weight_decay=wd, mask=decay_mask)
    else:
        raise ConfigError(f"unknown optimizer {name!r}")
    return core


# --------------------------------------------------------------------------------------------
# Transfer learning: pretrained weights, frozen layers, the head's own learning rate.
# --------------------------------------------------------------------------------------------
def layer_order(model: nn.Module, config: Config) -> list[str]:
    """The top-level layers that hold variables, in call order: the classifier comes last."""
    x = jnp.zeros((1, config.image_size, config.image_size, config.channels), jnp.float32)
    variables = jax.eval_shape(lambda: model.init(
        {"params": jax.random.key(0), "dropout": jax.random.key(1)}, x, train=False))
    held = set(variables.get("params", {})) | set(variables.get("batch_stats", {}))
    return [n for n in features_lib.feature_layer_names(model, variables, x) if n in held]


def frozen_layers(freeze: str, order: list[str], top_level: Iterable[str] = ()) -> frozenset:
    """The top-level layer names that ``--freeze`` keeps fixed.

    ``backbone``: every layer but the classifier (the last layer of ``order``; ``top_level``
    adds layers that the eval-mode call skips, such as auxiliary heads). ``until:LAYER``: the
    layers of ``order`` up to and including LAYER.
    """
    if freeze == "none":
        return frozenset()
    if freeze == "backbone":
        return frozenset(order[:-1]) | (frozenset(top_level) - {order[-1]})
    layer = freeze.removeprefix("until:")
    if layer not in order:
        close = difflib.get_close_matches(layer, order, n=3, cutoff=0.5)
        hint = f" Did you mean {' or '.join(close)}?" if close else ""
        raise ConfigError(f"--freeze until:{layer}: the network has no top-level layer "
                          f"{layer!r}.{hint} Its layers in call order: {', '.join(order)}.")
    return frozenset(order[:order.index(layer) + 1])


def make_param_labels(frozen: frozenset, head: str) -> Callable[[Any], Any]:
    """``params -> labels`` for :func:`create_optimizer`: frozen, head or backbone."""

    def labels(params: Any) -> Any:
        def label(path, _):
            name = path[0].key
            return "frozen" if name in frozen else "head" if name == head else "backbone"

        return jax.tree_util.tree_map_with_path(label, params)

    return labels


def keep_frozen(new: Any, old: Any, frozen: frozenset) -> Any:
    """``new`` with the top-level entries of the ``frozen`` layers taken from ``old``."""
    if not frozen or not new:
        return new
    return {k: old[k] if k in frozen else v for k, v in new.items()}


def load_pretrained_variables(config: Config, fresh: dict[str, Any]
                              ) -> tuple[dict[str, Any], list[str], str]:
    """``fresh`` (a new network's variables) with everything but the classifier from
    ``config.pretrained``; also returns the names left at their initial value and a
    description of the source."""
    src = config.pretrained
    if os.path.isdir(os.path.join(src, "checkpoints")):  # the --workdir of a training run
        ckpts = checkpoints_lib.Checkpoints(os.path.join(src, "checkpoints"), read_only=True)
        try:
            step = ckpts.best_step() or ckpts.latest_step()
            if step is None:
                raise ConfigError(f"--pretrained {src}: that training run saved no checkpoint "
                                  f"yet; train it first, or pass another source.")
            stored = ckpts.stored_config(step)
            variables = ckpts.restore_variables(step)
        finally:
            ckpts.close()
        if stored.get("arch") != config.arch:
            raise ConfigError(
                f"--pretrained {src} trained {stored.get('arch')}, not --arch {config.arch}: "
                f"pass --arch {stored.get('arch')}.")
        what = f"{stored['arch']} weights of step {step} of the run in {src}"
    elif os.path.isdir(src):
        try:
            variables, meta = convert_lib.load_converted(src)
        except convert_lib.LOAD_ERRORS as err:
            raise ConfigError(f"--pretrained: {err}") from err
        if meta.get("arch") != config.arch:
            raise ConfigError(
                f"--pretrained {src} holds weights of {meta.get('arch')}, not of --arch "
                f"{config.arch}: pass --arch {meta.get('arch')}, or weights converted for "
                f"{config.arch}.")
        what = f"{meta['arch']} weights converted from {meta.get('source', '?')}"
    elif os.path.isfile(src):
        try:  # at the variant's own number of classes: the head is replaced below
            variables = convert_lib.load_pretrained(config.arch, src)
        except weights_lib.WeightMismatchError as err:
            raise ConfigError(f"--pretrained {src} does not fit {config.arch}: {err}") from err
        except convert_lib.LOAD_ERRORS as err:
            raise ConfigError(f"--pretrained: {err}") from err
        what = f"{config.arch} weights converted from {src}"
    else:
        raise ConfigError(f"--pretrained {src}: no such file or directory (pass a directory "
                          f"written by python -m jaxcnn.convert, or a weights file).")
    pretrained = {k: variables[k] for k in ("params", "batch_stats") if variables.get(k)}
    try:
        merged, left = convert_lib.transfer(pretrained, fresh, config.num_classes)
    except weights_lib.WeightMismatchError as err:
        raise ConfigError(
            f"--pretrained {src}: {err} (Layers after a flatten also depend on --image-size, "
            f"here {config.image_size}.)") from err
    merged = jax.tree.map(lambda m, f: np.asarray(m, dtype=np.asarray(f).dtype), merged,
                          {k: v for k, v in fresh.items() if k in merged})
    return {"batch_stats": {}, **merged}, left, what


def make_init_fn(model: nn.Module, tx: optax.GradientTransformation, config: Config
                 ) -> Callable[[], TrainState]:
    """A function of nothing that builds the initial state (jit it with output shardings)."""

    def init_fn() -> TrainState:
        key = jax.random.fold_in(jax.random.key(config.seed), 0)
        params_key, dropout_key = jax.random.split(key)
        x = jnp.zeros((1, config.image_size, config.image_size, config.channels), jnp.float32)
        variables = model.init({"params": params_key, "dropout": dropout_key}, x, train=False)
        return new_state(variables["params"], variables.get("batch_stats", {}), tx, config)

    return init_fn


def new_state(params: Any, batch_stats: Any, tx: optax.GradientTransformation,
              config: Config) -> TrainState:
    """The state at step 0 with these variables."""
    ema = {"params": params, "batch_stats": batch_stats} if config.ema_decay else None
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, batch_stats=batch_stats,
                      opt_state=tx.init(params), ema=ema)


# --------------------------------------------------------------------------------------------
# Steps.
# --------------------------------------------------------------------------------------------
def adapt_channels(images: jax.Array, channels: int) -> jax.Array:
    """Grayscale -> RGB by repetition, RGB -> grayscale by the mean, else unchanged."""
    have = images.shape[-1]
    if have == channels:
        return images
    if have == 1:
        return jnp.broadcast_to(images, (*images.shape[:-1], channels))
    return jnp.mean(images, axis=-1, keepdims=True)


def make_train_step(model: nn.Module, tx: optax.GradientTransformation,
                    schedule: optax.Schedule, config: Config, *, axis_name: str | None = None,
                    frozen: frozenset = frozenset(), objective: Objective | None = None
                    ) -> Callable[[TrainState, dict], tuple[TrainState, dict]]:
    """One training step on a batch (the global batch under jit, a replica's under pmap).

    ``objective`` (default: the config's, see ``train.objectives``) computes the loss and the
    metrics from the network's output and the collections it asks for. The top-level layers in
    ``frozen`` get no gradient (nor its cost), and keep their parameters and BatchNorm
    statistics bit for bit.
    """
    k = config.grad_accum
    objective = objective or objective_of(config)
    mutable = ["batch_stats", *objective.collections]
    dropout_root = jax.random.fold_in(jax.random.key(config.seed), 1)

    def train_step(state: TrainState, batch: dict) -> tuple[TrainState, dict]:
        images = adapt_channels(batch["image"], config.channels)
        labels = batch["label"]
        # Per-step (and per-replica) dropout keys: a resumed run draws the same masks.
        key = jax.random.fold_in(dropout_root, state.step)
        if axis_name is not None:
            key = jax.random.fold_in(key, jax.lax.axis_index(axis_name))

        def loss_fn(params):
            if frozen:
                params = jax.tree_util.tree_map_with_path(
                    lambda path, p: jax.lax.stop_gradient(p) if path[0].key in frozen else p,
                    params)
            variables = {"params": params}
            if state.batch_stats:
                variables["batch_stats"] = state.batch_stats
            outputs, new_vars = model.apply(variables, images, train=True,
                                            rngs={"dropout": key}, mutable=mutable)
            loss, metrics = objective.loss(outputs, new_vars, images, labels)
            return loss, (metrics, new_vars.get("batch_stats", {}))

        (_, (objective_metrics, batch_stats)), grads = jax.value_and_grad(
            loss_fn, has_aux=True)(state.params)
        if axis_name is not None:
            grads = jax.lax.pmean(grads, axis_name)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        # The optimizer gives frozen layers zero updates; keeping them also keeps a -0.0.
        params = keep_frozen(params, state.params, frozen)
        # Frozen layers still normalise with batch statistics in training; their running
        # averages are put back so that evaluation sees the pretrained ones.
        batch_stats = keep_frozen(batch_stats, state.batch_stats, frozen)

        ema = state.ema
        if ema is not None:
            n = (state.step // k).astype(jnp.float32)  # updates before this one
            decay = jnp.minimum(config.ema_decay, (1.0 + n) / (10.0 + n))
            new = {"params": params, "batch_stats": batch_stats}
            averaged = jax.tree.map(lambda e, p: decay * e + (1.0 - decay) * p, ema, new)
            if k > 1:  # only when MultiSteps really updated the weights
                updated = tx.has_updated(opt_state)
                averaged = jax.tree.map(lambda a, e: jnp.where(updated, a, e), averaged, ema)
            ema = averaged

        metrics = {**objective_metrics, "lr": schedule(state.step // k),
                   "grad_norm": optax.global_norm(grads)}
        if axis_name is not None:
            metrics = jax.lax.pmean(metrics, axis_name)
        new_state = state.replace(step=state.step + 1, params=params, batch_stats=batch_stats,
                                  opt_state=opt_state, ema=ema)
        return new_state, metrics

    return train_step


def make_eval_step(model: nn.Module, config: Config, *, axis_name: str | None = None
                   ) -> Callable[[dict, dict], dict]:
    """Sums of loss, top-1 and top-5 hits and real examples (``mask``) over a batch."""
    top = min(5, config.num_classes)

    def eval_step(variables: dict, batch: dict) -> dict:
        images = adapt_channels(batch["image"], config.channels)
        logits = model.apply(variables, images, train=False).astype(jnp.float32)
        labels = batch["label"]
        mask = batch["mask"].astype(jnp.float32)
        ce = cross_entropy(logits, labels, config.num_classes)
        top1 = jnp.argmax(logits, -1) == labels
        topk = jnp.any(jax.lax.top_k(logits, top)[1] == labels[:, None], axis=-1)
        sums = {"loss": jnp.sum(ce * mask), "top1": jnp.sum(top1 * mask),
                "top5": jnp.sum(topk * mask), "count": jnp.sum(mask)}
        if axis_name is not None:
            sums = jax.lax.psum(sums, axis_name)
        return sums

    return eval_step


# --------------------------------------------------------------------------------------------
# A plan, built.
# --------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Setup:
    """What :func:`build` makes of a plan; training, evaluation and the benchmark share it."""

    model: nn.Module
    schedule: optax.Schedule
    tx: optax.GradientTransformation  # with the frozen layers and the head's own rate
    init_fn: Callable[[], TrainState]  # the initial state: parallel.init_state(init_fn)
    train_step: Callable  # (state, batch) -> (state, metrics), jitted or pmapped by parallel
    eval_step: Callable  # (variables, batch) -> sums of loss, top-1, top-5 and count
    frozen: frozenset  # the top-level layers that --freeze keeps fixed
    layer_order: list[str]  # the top-level layers in call order, when freezing asked for it
    objective: Objective  # what the train step minimises and reports


def build(plan: Plan, parallel: JitParallel, *,
          model_factory: Callable[..., nn.Module] | None = None,
          wrap_optimizer: Callable[[optax.GradientTransformation],
                                   optax.GradientTransformation] | None = None) -> Setup:
    """The network, schedule, optimizer, initial state and steps of ``plan`` on ``parallel``.

    The steps are wrapped for ``parallel`` (``compile_train``/``compile_eval``) and compile on
    their first call. A run's checkpoint restores only into the state of the same build: the
    frozen layers and the head's rate shape the optimizer's state. ``wrap_optimizer(tx)``
    returns the transformation that runs instead of the recipe's ``tx`` (``train.compress``
    chains its pruning masks after it, or trains shared weights through it); its state is part
    of the checkpoints.
    """
    c = plan.config
    axis_name = parallel.axis_name
    model = build_model(c, axis_name=axis_name, model_factory=model_factory)
    schedule = create_schedule(c, plan.steps_per_epoch, plan.num_updates)
    frozen, labels, order = frozenset(), None, []
    if c.freeze != "none" or c.head_lr_multiplier != 1:
        order = layer_order(model, c)
        top_level = jax.eval_shape(make_init_fn(model, optax.identity(), c)).params
        frozen = frozen_layers(c.freeze, order, top_level)
        labels = make_param_labels(frozen, head=order[-1])
    tx = create_optimizer(c, schedule, labels)
    if wrap_optimizer is not None:
        tx = wrap_optimizer(tx)
    objective = objective_of(c)
    return Setup(
        model=model, schedule=schedule, tx=tx, init_fn=make_init_fn(model, tx, c),
        train_step=parallel.compile_train(make_train_step(
            model, tx, schedule, c, axis_name=axis_name, frozen=frozen, objective=objective)),
        eval_step=parallel.compile_eval(make_eval_step(model, c, axis_name=axis_name)),
        frozen=frozen, layer_order=order, objective=objective)


# --------------------------------------------------------------------------------------------
# Data.
# --------------------------------------------------------------------------------------------
def default_data(config: Config | None = None):
    """The input pipeline (``train.input_pipeline``), as ``config`` asks to read image folders."""
    pipeline = importlib.import_module("train.input_pipeline")
    if config is not None and config.skip_bad_images:
        return pipeline.skipping_bad_images()
    return pipeline


def epoch_seed(seed: int, epoch: int) -> int:
    """The data seed of an epoch: resuming at any step re-creates the same batches."""
    return int(np.random.SeedSequence([seed, epoch]).generate_state(1)[0])


def prefetch(iterator: Iterable, put: Callable, size: int = 2) -> Iterator:
    """Places batches on the devices ``size`` steps ahead of their use."""
    queue: collections.deque = collections.deque()
    for item in iterator:
        queue.append(put(item))
        if len(queue) > size:
            yield queue.popleft()
    while queue:
        yield queue.popleft()


def _empty_batch(plan: Plan) -> dict[str, np.ndarray]:
    """A fully masked eval batch of this process's shape."""
    c = plan.config
    local = c.eval_batch_size // jax.process_count()
    return {"image": np.zeros((local, c.image_size, c.image_size, plan.data_channels),
                              np.float32),
            "label": np.zeros((local,), np.int32), "mask": np.zeros((local,), bool)}


def evaluate(state: TrainState, eval_step: Callable, parallel: JitParallel, data: Any,
             plan: Plan, *, progress: bool = False) -> dict[str, float]:
    """Loss, top-1 and top-5 over the eval split (each example once, padding masked out)."""
    c = plan.config
    iterator = data.eval_iterator(
        c.dataset, data_dir=c.data_dir, global_batch_size=c.eval_batch_size,
        image_size=c.image_size, process_index=jax.process_index(),
        process_count=jax.process_count())
    variables = state.eval_variables()
    sums = []
    multi = jax.process_count() > 1
    bar = _bar(progress, plan.eval_steps * c.eval_batch_size, "eval", leave=False)
    for batch in iterator:
        if multi and len(sums) == plan.eval_steps:
            # Every process must run the same number of (collective) steps; a longer share
            # than the even split of num_eval would hang or drop examples: refuse it.
            if np.any(batch["mask"]):
                raise RuntimeError(
                    f"eval_iterator gave process {jax.process_index()} more than the "
                    f"{plan.eval_steps} batches that {plan.info.num_eval} eval examples split "
                    f"evenly over {jax.process_count()} processes need.")
            continue
        sums.append(eval_step(variables, parallel.put_batch(batch)))
        bar.update(c.eval_batch_size)
    if multi:  # a shorter share: pad with fully masked batches
        for _ in range(plan.eval_steps - len(sums)):
            sums.append(eval_step(variables, parallel.put_batch(_empty_batch(plan))))
    bar.close()
    total = {k: float(sum(v)) for k, v in _stack(parallel.fetch(sums)).items()}
    count = max(total.pop("count"), 1.0)
    return {k: v / count for k, v in total.items()} | {"count": count}


def _stack(records: list[dict]) -> dict[str, np.ndarray]:
    return {k: np.asarray([r[k] for r in records]) for k in (records[0] if records else {})}


# --------------------------------------------------------------------------------------------
# The loop.
# --------------------------------------------------------------------------------------------
class _NoBar:
    def update(self, n=1):
        pass

    def set_postfix(self, *args, **kwargs):
        pass

    def close(self):
        pass


def _bar(enabled: bool, total: int, desc: str, initial: int = 0, leave: bool = False):
    if not enabled:
        return _NoBar()
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc=desc, unit="img", unit_scale=True,
                leave=leave, dynamic_ncols=True, file=sys.stderr)


def _printer(print_fn: Callable[[str], None], progress: bool) -> Callable[[str], None]:
    """``print_fn`` that clears the progress bars around what it prints."""
    if not progress:
        return print_fn
    from tqdm.auto import tqdm

    def say(text: str) -> None:
        with tqdm.external_write_mode(file=sys.stderr):
            print_fn(text)

    return say


@dataclasses.dataclass
class TrainResult:
    """What :func:`train_and_evaluate` returns."""

    config: Config  # resolved
    step: int
    eval_metrics: dict[str, float]
    params: Any  # NumPy copies of the final weights
    batch_stats: Any
    workdir: str
    resumed_from: int | None


def _format_eval(m: dict[str, float], num_classes: int) -> str:
    text = f"eval loss {m['loss']:.4f} top-1 {100 * m['top1']:.2f}%"
    if num_classes > 10:
        text += f" top-5 {100 * m['top5']:.2f}%"
    return text


def train_and_evaluate(config: Config, *, data: Any = None,
                       model_factory: Callable[..., nn.Module] | None = None,
                       print_fn: Callable[[str], None] = print,
                       wrap_optimizer: Callable[[optax.GradientTransformation],
                                                optax.GradientTransformation] | None = None
                       ) -> TrainResult:
    """Trains ``config.arch`` on ``config.dataset``, evaluating, logging and checkpointing.

    ``data`` is a module or object with ``dataset_info``, ``train_iterator`` and
    ``eval_iterator`` (default: ``train.input_pipeline``); ``model_factory(arch, **kwargs)``
    replaces ``jaxcnn.create_model`` (for networks outside the registry); ``wrap_optimizer``
    goes to :func:`build`. A workdir with checkpoints resumes from the latest one.
    """
    initialize_distributed(config)
    data = data or default_data(config)
    plan = resolve_config(config, lambda: data.dataset_info(config.dataset, config.data_dir),
                          model_factory=model_factory)
    c, info = plan.config, plan.info
    is_main = jax.process_index() == 0
    progress = c.progress and is_main
    say = _printer(print_fn, progress) if is_main else (lambda *_: None)

    parallel = make_parallel(c.parallel)
    setup = build(plan, parallel, model_factory=model_factory, wrap_optimizer=wrap_optimizer)
    stored = c.to_dict()

    # One writer per workdir, signals that stop between steps, no non-finite checkpoint.
    guard = guard_lib.RunGuard(config.replace(workdir=c.workdir), lr=c.lr, lock=is_main)
    ckpts = writer = None
    try:
        # Look at existing checkpoints before writing anything into the workdir.
        ckpts = checkpoints_lib.Checkpoints(os.path.join(c.workdir, "checkpoints"), keep=c.keep)
        start_step = ckpts.latest_step()
        try:
            if start_step is not None:
                ckpts.check_compatible(start_step, stored)
                state = parallel.from_checkpoint(
                    ckpts.restore(start_step, parallel.abstract_state(setup.init_fn)))
            else:
                state = parallel.init_state(setup.init_fn)
                if c.pretrained:
                    fresh = parallel.fetch({"params": state.params,
                                            "batch_stats": state.batch_stats})
                    variables, left, what = load_pretrained_variables(c, fresh)
                    state = parallel.place(new_state(variables["params"],
                                                     variables["batch_stats"], setup.tx, c))
                    say(f"loaded {what}; left at their initial value (the new classifier): "
                        f"{', '.join(left) or 'nothing'}")
        except jaxcnn.InputShapeError as err:
            raise ConfigError(f"{err} (set by --image-size {c.image_size})") from err
        start_step = start_step or 0
        writer = metrics_lib.MetricWriter(c.workdir, enabled=is_main, resume_step=start_step,
                                          tensorboard=c.tensorboard)
        if is_main:
            checkpoints_lib.write_json_atomic(os.path.join(c.workdir, "config.json"), stored)
        say(_describe_run(plan, parallel, start_step))
        if setup.frozen:
            order = setup.layer_order
            names = [n for n in order if n in setup.frozen] + sorted(setup.frozen - set(order))
            say(f"frozen (--freeze {c.freeze}): {', '.join(names)}")
        if start_step and c.pretrained:
            say(f"--pretrained {c.pretrained} is not used: the run resumes from its checkpoint")
        loop = _Loop(plan, parallel, data, ckpts, writer, say, progress, stored, guard,
                     setup.objective, epoch_end=_epoch_figures(setup, plan, parallel, data,
                                                               is_main, say))
        state, step, eval_metrics = loop.run(state, start_step, setup.train_step, setup.eval_step)
    finally:
        try:
            if ckpts is not None:
                ckpts.close()  # waits for the asynchronous saves
        finally:
            if writer is not None:
                writer.close()
            guard.close()

    if is_main:
        png = metrics_lib.plot_curves(c.workdir, title=f"{c.arch} on {c.dataset}",
                                      top5=c.num_classes > 10,
                                      terms=setup.objective.terms)
        if png:
            say(f"training curves: {png}")
    final = parallel.fetch({"params": state.params, "batch_stats": state.batch_stats})
    top5 = (f", top-5 {100 * eval_metrics['top5']:.2f}%" if c.num_classes > 10 else "")
    say(f"Final test accuracy of {c.arch} on {c.dataset} ({info.eval_split}, "
        f"{int(eval_metrics['count']):,} images, step {step}): top-1 "
        f"{100 * eval_metrics['top1']:.2f}%{top5}")
    return TrainResult(config=c, step=step, eval_metrics=eval_metrics, params=final["params"],
                       batch_stats=final["batch_stats"], workdir=c.workdir,
                       resumed_from=start_step or None)


@dataclasses.dataclass
class _Loop:
    """The epochs of a run: train steps, metric fetches, evaluations, checkpoints."""

    plan: Plan
    parallel: JitParallel
    data: Any
    ckpts: checkpoints_lib.Checkpoints
    writer: metrics_lib.MetricWriter
    say: Callable[[str], None]
    progress: bool
    stored: dict[str, Any]
    guard: guard_lib.RunGuard
    objective: Objective
    # Called with the state and the number of epochs done after each epoch's line (figures).
    epoch_end: Callable[[TrainState, int], None] | None = None

    def save(self, step: int, state: TrainState, eval_metrics: dict | None = None) -> None:
        self.guard.check_state(step, state, self.ckpts.latest_step(), self.ckpts.directory)
        metrics = (None if eval_metrics is None
                   else {checkpoints_lib.BEST_METRIC: eval_metrics["top1"]})
        self.ckpts.save(step, self.parallel.to_checkpoint(state), self.stored, metrics=metrics)

    def evaluate(self, state: TrainState, eval_step: Callable, step: int) -> dict[str, float]:
        metrics = evaluate(state, eval_step, self.parallel, self.data, self.plan,
                           progress=self.progress)
        self.writer.write(step, "eval", metrics, epoch=step / self.plan.steps_per_epoch)
        self.save(step, state, metrics)
        return metrics

    def run(self, state: TrainState, start_step: int, train_step: Callable,
            eval_step: Callable) -> tuple[TrainState, int, dict[str, float]]:
        plan, c, parallel = self.plan, self.plan.config, self.parallel
        spe, gbs = plan.steps_per_epoch, c.batch_size
        step, eval_metrics, evaluated_at = start_step, {}, None
        t_start = time.time()
        try:
            while step < plan.last_step:
                epoch = step // spe
                skip = step - epoch * spe
                epoch_end = min((epoch + 1) * spe, plan.last_step)
                iterator = self.data.train_iterator(
                    c.dataset, data_dir=c.data_dir, global_batch_size=gbs,
                    image_size=c.image_size, seed=epoch_seed(c.seed, epoch), augment=c.augment,
                    mixup=c.mixup, cutmix=c.cutmix, randaugment=c.randaugment,
                    process_index=jax.process_index(), process_count=jax.process_count(),
                    **self.objective.data_options(c))
                # A resumed run skips the batches of the epoch it already trained on, so it
                # sees exactly the batches an uninterrupted run would.
                batches = prefetch(itertools.islice(iterator, skip, skip + epoch_end - step),
                                   parallel.put_batch)
                bar = _bar(self.progress, (epoch_end - epoch * spe) * gbs,
                           f"epoch {epoch + 1}/{c.epochs}", initial=skip * gbs)
                pending, logged = [], []
                t_epoch = t_window = time.time()
                epoch_start = window_start = step
                for batch in batches:
                    self.between_steps(step, state, start_step)
                    state, step_metrics = train_step(state, batch)
                    pending.append(step_metrics)
                    step += 1
                    bar.update(gbs)
                    if step == start_step + 1:
                        jax.block_until_ready(step_metrics)  # once: tells compile time apart
                        self.say(f"compiled and ran the first step in "
                                 f"{time.time() - t_start:.1f}s")
                        t_window, window_start = time.time(), step
                    if step % c.log_every == 0 or step == epoch_end:
                        # The only wait for the device inside an epoch: fetch what is pending.
                        values = _stack(parallel.fetch(pending))
                        self.guard.check_metrics(step, values, self.ckpts.latest_step(),
                                                 self.ckpts.directory)
                        pending = []
                        now = time.time()
                        rate = (step - window_start) * gbs / max(now - t_window, 1e-9)
                        t_window, window_start = now, step
                        means = {k: float(v.mean()) for k, v in values.items()}
                        means["lr"] = float(values["lr"][-1])
                        logged.append((len(values["loss"]), means))
                        self.writer.write(step, "train", {**means, "images_per_sec": rate},
                                          epoch=step / spe)
                        bar.set_postfix({m.label: m.bar(means[m.key])
                                         for m in self.objective.shown}, refresh=False)
                    if (c.checkpoint_every and step % c.checkpoint_every == 0
                            and not self.evaluates_at(step)):  # that save carries eval metrics
                        self.save(step, state)
                bar.close()
                if step == epoch_start:
                    raise RuntimeError(
                        f"{c.dataset}: train_iterator yielded no batch for epoch {epoch + 1}; "
                        f"it must be endless.")
                seconds = time.time() - t_epoch
                line = (f"epoch {epoch + 1:>3}/{c.epochs} | step {step:>6} | "
                        f"{_format_train(logged, self.objective.shown)} | "
                        f"{(step - epoch_start) * gbs / max(seconds, 1e-9):,.0f} img/s | "
                        f"{seconds:.1f}s")
                if self.evaluates_at(step):
                    eval_metrics = self.evaluate(state, eval_step, step)
                    evaluated_at = step
                    line += " | " + _format_eval(eval_metrics, c.num_classes)
                self.say(line)
                if self.epoch_end is not None:
                    self.epoch_end(state, epoch + 1)
                self.writer.flush()
        except guard_lib.Stopped:
            raise
        except (KeyboardInterrupt, DatasetError) as err:
            # Ctrl-C raised by code (no handler outside the main thread), or bad data met
            # mid-run (an image that cannot be decoded): the state is that of a finished step.
            if jax.process_count() == 1 and step > start_step:
                self.save(step, state)
                self.ckpts.wait()
                what = "interrupted" if isinstance(err, KeyboardInterrupt) else "stopped"
                self.say(f"\n{what} at step {step}: checkpoint saved in "
                         f"{self.ckpts.directory}; run the same command again to resume.")
            raise
        if evaluated_at != step:  # resumed a finished run: evaluate it again
            eval_metrics = self.evaluate(state, eval_step, step)
        return state, step, eval_metrics

    def evaluates_at(self, step: int) -> bool:
        """Whether the run evaluates after ``step`` steps (and saves with the eval metrics)."""
        spe = self.plan.steps_per_epoch
        return step >= self.plan.last_step or (
            step % spe == 0 and (step // spe) % self.plan.config.eval_every == 0)

    def between_steps(self, step: int, state: TrainState, start_step: int) -> None:
        """Stops the run here, after ``step`` steps, if a save failed or a signal asked to."""
        self.ckpts.poll()
        if not self.guard.should_stop(step):
            return
        stopped = self.guard.stopped(saved=step > start_step)
        if stopped.saved:
            self.save(step, state)
            self.ckpts.wait()
            self.say(f"{stopped}: stopped at step {step}, checkpoint saved in "
                     f"{self.ckpts.directory}; run the same command again to resume.")
        else:
            self.say(f"{stopped}: stopped at step {step}, before training further; nothing new "
                     f"to save.")
        raise stopped


FIGURE_IMAGES = 8  # eval images an objective's figure shows


def _epoch_figures(setup: Setup, plan: Plan, parallel: JitParallel, data: Any, is_main: bool,
                   say: Callable[[str], None]) -> Callable[[TrainState, int], None] | None:
    """After each epoch, the objective's figure (SWWAE: inputs and reconstructions) of the first
    eval images, into ``WORKDIR/<figure>/epoch_NNN.png``; None when it draws none."""
    objective, c = setup.objective, plan.config
    if not is_main or objective.figure is None:
        return None
    folder = os.path.join(c.workdir, objective.figure)
    apply_fn = conv.jit(setup.model.apply, inference=True,
                        static_argnames=("train", "mutable"))
    images = []

    def draw(state: TrainState, epoch: int) -> None:
        if not images:
            batch = next(data.eval_iterator(
                c.dataset, data_dir=c.data_dir, global_batch_size=c.eval_batch_size,
                image_size=c.image_size, process_index=jax.process_index(),
                process_count=jax.process_count()))
            images.append(np.asarray(adapt_channels(batch["image"][:FIGURE_IMAGES], c.channels)))
            say(f"{objective.figure} of {len(images[0])} test images after each epoch: "
                f"{folder}/epoch_NNN.png")
        path = os.path.join(folder, f"epoch_{epoch:03d}.png")
        objective.draw(apply_fn, parallel.fetch(state.eval_variables()), images[0], path,
                       title=f"{c.arch} on {c.dataset}, epoch {epoch}")

    return draw


def _format_train(logged: list[tuple[int, dict[str, float]]], shown: tuple[Shown, ...]) -> str:
    """The epoch's means of the ``shown`` metrics, weighted by the steps of each fetch."""
    if not logged:
        return "no steps"
    n = sum(count for count, _ in logged)
    means = " ".join(f"{m.label} {m.line(sum(count * r[m.key] for count, r in logged) / n)}"
                     for m in shown)
    return f"train {means} | lr {logged[-1][1]['lr']:.4g}"


def _describe_run(plan: Plan, parallel: JitParallel, start_step: int) -> str:
    c = plan.config
    lines = [
        f"{c.arch} on {c.dataset}: {plan.info.num_train:,} train / {plan.info.num_eval:,} "
        f"{plan.info.eval_split} images at {c.image_size}x{c.image_size}x{c.channels} "
        f"({plan.data_channels} channel(s) in the data), {c.num_classes} classes",
        f"{c.epochs} epochs x {plan.steps_per_epoch} steps of {c.batch_size} images"
        + (f" (x{c.grad_accum} accumulated)" if c.grad_accum > 1 else "")
        + (f", stopping at step {plan.last_step}" if plan.last_step < plan.total_steps else "")
        + f"; {c.optimizer} lr {c.lr:.4g} {c.schedule} (warm-up {c.warmup_epochs:g} epochs), "
        f"weight decay {c.weight_decay:g}, label smoothing {c.label_smoothing:g}"
        + (f", EMA {c.ema_decay:g}" if c.ema_decay else "")
        + (f", aux weight {c.aux_weight:g}" if c.aux_weight else "")
        + (f", head lr x{c.head_lr_multiplier:g}" if c.head_lr_multiplier != 1 else ""),
        *filter(None, [describe_objective(c)]),
        f"{parallel.device_count} {jax.default_backend()} device(s) in {jax.process_count()} "
        f"process(es), parallel={c.parallel}, dtype={c.dtype}; workdir {c.workdir}",
    ]
    if start_step:
        lines.append(f"resuming from the checkpoint at step {start_step} "
                     f"(epoch {start_step / plan.steps_per_epoch:.2f})")
    return "\n".join(lines)
