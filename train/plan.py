"""The one owner of "auto": a :class:`Config` and a data set become a :class:`Plan`.

:func:`resolve_config` fills every field left at ``None`` ("auto") and checks what no flag can
check alone. What an architecture's published recipe decides (optimizer, learning rate,
schedule, epochs ...) is :func:`train.configs.default.apply_recipe`'s; what the data set, the
network and the devices decide (classes, image size, channels, dtype, eval batch, the objective
and its flags: ``train.objectives``) is here, with the numbers derived from both (steps per
epoch, the schedule's length). Training, evaluation and the benchmark all resolve through it,
then build through :func:`train.train.build`.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Callable

import jax

import jaxcnn
from train.configs.default import Config, ConfigError, apply_recipe
from train.data import DatasetInfo
from train.objectives import resolve_objective
from train.parallel import check_divisible


@dataclasses.dataclass(frozen=True)
class Plan:
    """A resolved config and the numbers derived from it and the dataset."""

    config: Config
    info: DatasetInfo
    steps_per_epoch: int
    total_steps: int  # the schedule's length in batches: epochs x steps_per_epoch
    last_step: int  # where this run stops: total_steps or --max-steps
    eval_steps: int  # eval batches covering the eval split once
    data_channels: int

    @property
    def num_updates(self) -> int:
        return max(1, self.total_steps // self.config.grad_accum)


def eval_steps_for(num_eval: int, global_batch_size: int, process_count: int) -> int:
    """Eval batches per process: the largest even share of the split, in local batches."""
    largest_share = -(-num_eval // process_count)
    return -(-largest_share // (global_batch_size // process_count))


def supports_aux(config: Config, model_factory: Callable | None = None) -> bool:
    """Whether the network has optional auxiliary classifiers (an ``aux_logits`` field)."""
    model = (model_factory or jaxcnn.create_model)(config.arch, num_classes=config.num_classes)
    return dataclasses.is_dataclass(model) and any(
        f.name == "aux_logits" for f in dataclasses.fields(model))


def resolve_config(config: Config, info: DatasetInfo | Callable[[], DatasetInfo], *,
                   model_factory: Callable | None = None, device_count: int | None = None,
                   process_count: int | None = None, training: bool = True) -> Plan:
    """Fills every "auto" (``None``) field from the dataset, the network and its recipe.

    ``info`` may be a function that reads the data set's info: it is called once the flags and
    the network's name are known to be good, so that a typo fails before any data is read.
    ``model_factory(arch, **kwargs)`` stands for a network outside the registry (no recipe
    lookup by name, no minimum size). ``training=False`` (evaluating a stored run) leaves out
    the checks of the training batch, which is not split over these devices.
    """
    config.validate()
    # The registry's facts about the network; raises UnknownModelError listing close names.
    minfo = None if model_factory is not None else jaxcnn.model_info(config.arch)
    if callable(info):
        info = info()
    device_count = device_count or jax.device_count()
    process_count = process_count or jax.process_count()
    # Aliases resolve (senet -> seresnet50) before the recipe is looked up by name.
    c = apply_recipe(config.replace(arch=minfo.name if minfo else config.arch))
    arch = c.arch

    num_classes = c.num_classes or info.num_classes
    if num_classes < info.num_classes:
        raise ConfigError(f"--num-classes {num_classes} is fewer than the {info.num_classes} "
                          f"classes of {c.dataset}; omit it or pass at least {info.num_classes}.")
    data_h, data_w, data_c = info.image_shape
    channels = c.channels or (minfo.input_shape[2] if minfo else data_c)
    if channels != data_c and {channels, data_c} != {1, 3}:
        raise ConfigError(f"--channels {channels} cannot be made from {c.dataset}'s {data_c}-"
                          f"channel images (only grayscale <-> RGB is converted).")
    min_size = minfo.min_size if minfo else 1
    native = max(data_h or 0, data_w or 0) or (minfo.input_shape[0] if minfo else 224)
    auto_size = max(native, min_size)
    default = minfo.input_shape[0] if minfo else 0
    if native < default and default >= 64 and default % 32 == 0:
        # Small images for a 224x224 network (total stride 32): 28x28 digits run at 32x32.
        auto_size = -(-auto_size // 32) * 32
    image_size = c.image_size or auto_size
    if image_size < min_size:
        raise ConfigError(
            f"--image-size {image_size} is smaller than the {min_size}x{min_size} minimum that "
            f"{arch} admits (its downsampling would shrink the image to nothing); pass "
            f"--image-size {min_size} or more, or omit it to use {auto_size}.")

    dtype = c.dtype
    if dtype == "auto":
        dtype = "float32" if jax.default_backend() == "cpu" else "bfloat16"
    batch_size = c.batch_size
    eval_batch_size = c.eval_batch_size or batch_size
    if training:
        check_divisible(batch_size, "--batch-size", device_count, process_count)
    if c.eval_batch_size is None and eval_batch_size % device_count:
        eval_batch_size = -(-eval_batch_size // device_count) * device_count
    check_divisible(eval_batch_size, "--eval-batch-size", device_count, process_count)

    resolved = c.replace(
        num_classes=num_classes,
        image_size=image_size,
        channels=channels,
        dtype=dtype,
        eval_batch_size=eval_batch_size,
        workdir=c.workdir or os.path.join("runs", f"{arch}_{c.dataset}"),
    )
    if resolved.aux_weight and not supports_aux(resolved, model_factory):
        if config.aux_weight:
            raise ConfigError(f"--aux-weight {config.aux_weight}: {arch} has no auxiliary "
                              f"classifiers; omit the flag.")
        resolved = resolved.replace(aux_weight=0.0)  # the recipe's, for a variant without them
    resolved = resolve_objective(
        resolved, network_objective=minfo.objective if minfo else "classification",
        num_train=info.num_train, num_classes=num_classes)

    steps_per_epoch = info.num_train // batch_size
    if steps_per_epoch < 1:
        if training:
            raise ConfigError(f"--batch-size {batch_size} is larger than the "
                              f"{info.num_train:,} training images of {c.dataset}; pass a "
                              f"smaller one.")
        steps_per_epoch = 1
    total_steps = c.epochs * steps_per_epoch
    last_step = min(total_steps, c.max_steps) if c.max_steps else total_steps
    return Plan(config=resolved, info=info, steps_per_epoch=steps_per_epoch,
                total_steps=total_steps, last_step=last_step,
                eval_steps=eval_steps_for(info.num_eval, eval_batch_size, process_count),
                data_channels=data_c)
