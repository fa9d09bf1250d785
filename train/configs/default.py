"""The default training configuration and the per-architecture recipes.

``get_config()`` returns a :class:`Config` with every option. Fields left at ``None`` mean
"auto". The published recipes live here too: :func:`apply_recipe` fills the fields that an
architecture's :class:`Recipe` decides (optimizer, learning rate scaled to the batch, schedule,
decay, epochs ...), and :func:`train.plan.resolve_config` the ones that the dataset, the network
and the devices decide. The resolved config is what runs and what is stored beside every
checkpoint.

``train.main`` turns each field into a flag (``batch_size`` -> ``--batch-size``); the ``help``
metadata below is the flag's documentation, so ``--help`` always lists every option.
"""

from __future__ import annotations

import dataclasses
import difflib
import fnmatch
import re
import shlex
from typing import Any

OPTIMIZERS = ("sgd", "nesterov", "adamw", "rmsprop", "lars", "lamb")
SCHEDULES = ("cosine", "step", "exponential", "constant")
DTYPES = ("auto", "bfloat16", "float32")
PARALLEL = ("jit", "pmap")
AUGMENTS = ("auto", "none", "crop", "crop_flip", "inception")  # train.augment.AUGMENTS


class ConfigError(ValueError):
    """An option value that cannot work; the message names the option and the fix."""


def _f(default: Any, help: str, choices: tuple[str, ...] | None = None, flag: str | None = None):
    meta = {"help": help}
    if choices:
        meta["choices"] = choices
    if flag:
        meta["flag"] = flag
    return dataclasses.field(default=default, metadata=meta)


@dataclasses.dataclass
class Config:
    """Every option of a training run (``None``: chosen automatically, see each help)."""

    # What to train, on what.
    arch: str = _f("lenet5", "network to train: any name of jaxcnn.list_models() or an alias "
                   "(senet, mobilenet, inception_v1, resnext50)")
    dataset: str = _f("mnist_sample", "TFDS dataset name; the default is the embedded sample of "
                      "5,000 real MNIST digits (4,000 train / 1,000 test), nothing to download")
    data_dir: str | None = _f(None, "TFDS data directory (default: TFDS's own, "
                              "~/tensorflow_datasets or $TFDS_DATA_DIR)")
    skip_bad_images: bool = _f(False, "image folders (--dataset folder:...): leave out the "
                               "images that cannot be decoded, listed when the run starts "
                               "(default: stop at the first one, naming every such file)")
    num_classes: int | None = _f(None, "classifier outputs (default: the dataset's classes)")
    image_size: int | None = _f(None, "square training/eval image size (default: the larger of "
                                "the dataset's image size and the smallest input the network "
                                "admits, rounded up to a multiple of 32 for 224x224 networks "
                                "on small images: 32 for LeNet-5 or SE-ResNet-50 on 28x28 "
                                "digits; the network's own size for ImageNet-sized data)")
    channels: int | None = _f(None, "image channels fed to the network (default: the network's "
                              "own; grayscale data is repeated to RGB for 3-channel networks)")
    dtype: str = _f("auto", "computation dtype (parameters and loss stay float32); auto: "
                    "bfloat16 on GPU/TPU, float32 on CPU", DTYPES)
    aux_weight: float | None = _f(None, "loss weight of the auxiliary classifiers of networks "
                                  "that have them (default: 0.3 for GoogLeNet, 0.4 for Inception "
                                  "v3, 0 elsewhere; 0 builds the network without them)")
    objective: str | None = _f(None, "what to train the network for (train/objectives.py): "
                               "classification, or swwae (classification and reconstruction "
                               "terms, Zhao et al. 2016); default: the one the network "
                               "declares, swwae for whatwhere_*, classification elsewhere")
    lambda_rec: float | None = _f(None, "swwae objective: weight of the input reconstruction "
                                  "term, the mean of (x - x_rec)^2 (default: 1)")
    lambda_mid: float | None = _f(None, "swwae objective: weight of the middle reconstruction "
                                  "terms, the sum over layers of the mean of (x_l - x_rec_l)^2 "
                                  "(default: 1)")
    labelled: int | None = _f(None, "swwae objective: keep the labels of this many training "
                              "images (stratified by class, chosen by --seed); the others only "
                              "count in the reconstruction terms: semi-supervised training "
                              "(default: every label)")

    # Transfer learning.
    pretrained: str | None = _f(None, "start from pretrained weights: a directory written by "
                                "python -m jaxcnn.convert, a weights file (.pth/.pt/"
                                ".safetensors/.npz/.h5) converted on the fly, or the --workdir "
                                "of an earlier training run (its best checkpoint; e.g. to "
                                "fine-tune after a frozen-backbone stage). Everything is loaded "
                                "but a classifier of another width, which keeps its new "
                                "initialisation. Only for a fresh run: a checkpoint in the "
                                "workdir takes precedence")
    freeze: str = _f("none", "parameters the optimizer leaves untouched: none; backbone "
                     "(everything but the classifier); until:LAYER (the top-level layers in "
                     "call order up to and including LAYER, e.g. until:stage2_block2). Frozen "
                     "BatchNorm statistics are kept as they were")
    head_lr_multiplier: float = _f(1.0, "learning rate of the classifier relative to --lr (the "
                                   "backbone's): e.g. 10 to fine-tune a pretrained backbone "
                                   "slowly under a new head")

    # How long, how big.
    epochs: int | None = _f(None, "training epochs (default: 10 on MNIST-sized data sets, the "
                            "recipe's ImageNet schedule otherwise)")
    max_steps: int | None = _f(None, "stop after this many training steps, whatever --epochs says "
                               "(the schedule still spans --epochs); handy for smoke tests")
    batch_size: int | None = _f(None, "global training batch size over all devices and processes "
                                "(default: the recipe's, 64 for LeNet-5, 128 otherwise)")
    eval_batch_size: int | None = _f(None, "global eval batch size (default: --batch-size)")

    # Optimisation.
    optimizer: str | None = _f(None, "optimizer (default: the recipe's: nesterov for LeNet, sgd "
                               "for ResNets/VGG, rmsprop for MobileNet/EfficientNet/Inception)",
                               OPTIMIZERS)
    lr: float | None = _f(None, "peak learning rate (default: the recipe's rate per 256 images, "
                          "scaled linearly to --batch-size x --grad-accum)")
    momentum: float = _f(0.9, "momentum of sgd/nesterov/rmsprop/lars; beta1 of adamw/lamb")
    opt_eps: float | None = _f(None, "epsilon of adamw/rmsprop/lamb (default: 1e-8 adamw, 1e-3 "
                               "rmsprop as in the TF EfficientNet recipe, 1e-6 lamb)")
    schedule: str | None = _f(None, "learning-rate schedule after the warm-up (default: the "
                              "recipe's)", SCHEDULES)
    warmup_epochs: float | None = _f(None, "linear warm-up from 0 to the peak rate (default: the "
                                     "recipe's, at most a tenth of the run)")
    lr_decay_factor: float | None = _f(None, "step/exponential schedules: multiply the rate by "
                                       "this (default: 0.1 step, 0.97 exponential)")
    lr_decay_epochs: float | None = _f(None, "step/exponential schedules: every this many epochs "
                                       "(default: a third of the run for step, i.e. 30 of 90; "
                                       "2.4 for exponential, as in EfficientNet)")
    weight_decay: float | None = _f(None, "weight decay (default: the recipe's); never applied "
                                    "to biases and BatchNorm parameters (1-D arrays); coupled L2 "
                                    "for sgd/nesterov/rmsprop, decoupled for adamw/lars/lamb")
    label_smoothing: float | None = _f(None, "label smoothing (default: the recipe's, 0.1 for "
                                       "Inception/MobileNet/EfficientNet)")
    grad_clip: float = _f(0.0, "clip gradients to this global norm (0: no clipping)")
    grad_accum: int = _f(1, "accumulate gradients over this many batches per update "
                         "(optax.MultiSteps); the effective batch is --batch-size x this")
    ema_decay: float | None = _f(None, "exponential moving average of the weights, used for "
                                 "evaluation (0: off; default: 0.9999 for EfficientNet, off "
                                 "elsewhere)")

    # Data augmentation (handed to the input pipeline).
    augment: str = _f("auto", "augmentation: inception (random-resized crop + flip), crop_flip "
                      "(pad-and-crop + flip), crop, none; auto picks inception for large images, "
                      "crop for digits (a mirrored digit is another symbol), crop_flip otherwise",
                      AUGMENTS)
    mixup: float = _f(0.0, "mixup alpha (0: off)")
    cutmix: float = _f(0.0, "cutmix alpha (0: off)")
    randaugment: str | None = _f(None, "RandAugment: a magnitude ('9': 2 layers at 9) or "
                                 "'LAYERS,MAGNITUDE' ('2,9') (default: off)")

    # Devices and processes.
    parallel: str = _f("jit", "data parallelism: jit (a Mesh over all devices, batch sharded, "
                       "parameters replicated) or pmap (axis 'batch', cross-replica BatchNorm)",
                       PARALLEL)
    coordinator: str | None = _f(None, "multi-process: coordinator host:port for "
                                 "jax.distributed.initialize (or $JAX_COORDINATOR_ADDRESS)")
    num_processes: int | None = _f(None, "multi-process: number of processes "
                                   "(or $JAX_NUM_PROCESSES)")
    process_id: int | None = _f(None, "multi-process: this process's index (or $JAX_PROCESS_ID)")

    # Bookkeeping.
    workdir: str | None = _f(None, "directory for checkpoints, metrics and plots; a run resumes "
                             "from its latest checkpoint (default: runs/ARCH_DATASET)")
    seed: int = _f(0, "random seed (initialisation, dropout and data order)")
    log_every: int = _f(50, "fetch and log training metrics every this many steps")
    eval_every: int = _f(1, "evaluate every this many epochs (and at the end)")
    checkpoint_every: int = _f(0, "also save a checkpoint every this many steps (0: only at each "
                               "evaluation and at the end)")
    keep: int = _f(3, "keep the last this many checkpoints (plus the best one by eval accuracy)")
    compilation_cache: str | None = _f(None, "directory where XLA keeps compiled programs "
                                       "(jax's persistent compilation cache): a later run of "
                                       "the same network, sizes and settings loads its steps "
                                       "instead of compiling them; off by default")
    progress: bool = _f(True, "show a progress bar (--no-progress hides it)")
    tensorboard: bool = _f(True, "also write TensorBoard events to WORKDIR/tensorboard "
                           "(--no-tensorboard skips them and TensorFlow's start-up time)")

    def replace(self, **changes: Any) -> "Config":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def command_line(self, **changes: Any) -> str:
        """The ``python -m train.main`` command that asks for this config with ``changes``: the
        flags whose values differ from the defaults (what ``train.main`` parses back)."""
        config, defaults = self.replace(**changes), get_config()
        words = ["python", "-m", "train.main"]
        for field in dataclasses.fields(config):
            value = getattr(config, field.name)
            if value is None or value == getattr(defaults, field.name):
                continue
            flag = field.name.replace("_", "-")
            if isinstance(value, bool):
                words.append(f"--{flag}" if value else f"--no-{flag}")
            else:
                words += [f"--{flag}", str(value)]
        return shlex.join(words)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "Config":
        """Builds a config from a stored dict; keys this version does not know are ignored."""
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in known})

    def validate(self) -> None:
        """Checks the values that need no dataset or network; raises :class:`ConfigError`."""
        for name, choices in (("optimizer", OPTIMIZERS), ("schedule", SCHEDULES),
                              ("dtype", DTYPES), ("parallel", PARALLEL),
                              ("augment", AUGMENTS)):
            value = getattr(self, name)
            if value is not None and value not in choices:
                close = difflib.get_close_matches(str(value), choices, n=3, cutoff=0.4)
                hint = f" Did you mean {' or '.join(close)}?" if close else ""
                raise ConfigError(f"--{name.replace('_', '-')} {value!r} is not one of "
                                  f"{', '.join(choices)}.{hint}")
        positive = ("epochs", "max_steps", "batch_size", "eval_batch_size", "grad_accum",
                    "log_every", "eval_every", "keep", "image_size", "num_classes", "channels")
        for name in positive:
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be at least 1; got {value}.")
        for name in ("lr", "weight_decay", "grad_clip", "mixup", "cutmix", "checkpoint_every",
                     "warmup_epochs", "aux_weight"):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise ConfigError(f"--{name.replace('_', '-')} cannot be negative; got {value}.")
        if self.freeze not in ("none", "backbone") and not (
                self.freeze.startswith("until:") and len(self.freeze) > len("until:")):
            raise ConfigError(f"--freeze {self.freeze!r} is not one of none, backbone or "
                              f"until:LAYER (e.g. until:conv2).")
        if self.head_lr_multiplier <= 0:
            raise ConfigError(f"--head-lr-multiplier must be positive; got "
                              f"{self.head_lr_multiplier}.")
        for name in ("label_smoothing", "ema_decay"):
            value = getattr(self, name)
            if value is not None and not 0 <= value < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be in [0, 1); got {value}.")


def get_config() -> Config:
    """The default configuration: LeNet-5 on the embedded MNIST sample."""
    return Config()


@dataclasses.dataclass(frozen=True)
class Recipe:
    """A published training recipe (ImageNet), the source of every "auto" default.

    ``base_lr`` is the peak rate for 256 images per update; ``epochs`` is the ImageNet schedule.
    """

    optimizer: str = "sgd"
    base_lr: float = 0.1
    weight_decay: float = 1e-4
    schedule: str = "cosine"
    warmup_epochs: float = 5.0
    epochs: int = 90
    batch_size: int = 128
    label_smoothing: float = 0.0
    ema_decay: float = 0.0
    aux_weight: float = 0.0


# RMSProp(decay 0.9, momentum 0.9, eps 1e-3), 0.016 per 256 images, exponential decay 0.97 every
# 2.4 epochs, label smoothing 0.1 and a weight EMA: the TF MobileNet/EfficientNet recipe (timm's
# rmsproptf numbers).
_RMSPROP = dict(optimizer="rmsprop", base_lr=0.016, weight_decay=1e-5, schedule="exponential",
                warmup_epochs=3.0, label_smoothing=0.1)

# First matching pattern wins.
RECIPES: tuple[tuple[str, Recipe], ...] = (
    # Caffe's examples/mnist/lenet_solver.prototxt: SGD, momentum 0.9, 0.01 at batch 64, decay
    # 5e-4. Its convolutions have no activation, and diverge at the other LeNets' Nesterov 0.2.
    ("lenet5_caffe", Recipe(base_lr=0.04, weight_decay=5e-4, warmup_epochs=0.0, epochs=20,
                            batch_size=64)),
    # LeCun et al. trained with plain SGD; Nesterov momentum with a cosine decay gets there in a
    # few epochs on the digits.
    ("lenet*", Recipe(optimizer="nesterov", base_lr=0.2, weight_decay=5e-4, warmup_epochs=0.0,
                      epochs=20, batch_size=64)),
    # Krizhevsky et al. and Simonyan & Zisserman: SGD 0.01 (batch 128/256), decay 5e-4, /10 steps.
    ("alexnet*", Recipe(base_lr=0.02, weight_decay=5e-4, schedule="step", warmup_epochs=0.0)),
    ("vgg*", Recipe(base_lr=0.02, weight_decay=5e-4, schedule="step", warmup_epochs=0.0,
                    epochs=74)),
    ("googlenet*", Recipe(base_lr=0.1, weight_decay=1e-4, aux_weight=0.3)),
    ("inception*", Recipe(**{**_RMSPROP, "base_lr": 0.045 * 256 / 32 / 8, "weight_decay": 4e-5},
                          epochs=100, aux_weight=0.4)),
    # Goyal et al.: 0.1 per 256 images, 5 warm-up epochs; He et al.'s 90 epochs.
    ("resnet*", Recipe()),
    ("resnext*", Recipe()),
    ("wide_resnet*", Recipe()),
    ("seresnet*", Recipe()),
    ("senet*", Recipe()),
    ("densenet*", Recipe(schedule="step", warmup_epochs=0.0)),
    ("mobilenet_v1*", Recipe(**{**_RMSPROP, "weight_decay": 4e-5}, epochs=150)),
    ("mobilenet*", Recipe(**{**_RMSPROP, "weight_decay": 4e-5}, epochs=300)),
    ("efficientnet*", Recipe(**_RMSPROP, epochs=350, ema_decay=0.9999)),
    ("squeezenet*", Recipe(base_lr=0.04, weight_decay=2e-4, warmup_epochs=0.0)),
    # The what-where autoencoders: with SGD 0.05 and momentum 0.9 (the default) their ReLUs die
    # in the first epoch (training accuracy at chance, middle terms at 0); Adam at Kingma & Ba's
    # 1e-3 (at batch 128) trains them.
    ("whatwhere*", Recipe(optimizer="adamw", base_lr=2e-3, weight_decay=1e-4,
                          warmup_epochs=0.0)),
    ("*", Recipe()),
)

# Short schedules for the small data sets (an ImageNet recipe's 90+ epochs would overtrain them).
DATASET_EPOCHS: dict[str, int] = {
    "mnist_sample": 10, "mnist": 10, "fashion_mnist": 20, "kmnist": 20, "emnist": 10,
    "cifar10": 60, "cifar100": 60, "svhn_cropped": 20,
}


def recipe_for(arch: str) -> Recipe:
    """The recipe of the first pattern of :data:`RECIPES` that matches ``arch``."""
    for pattern, recipe in RECIPES:
        if fnmatch.fnmatch(arch, pattern):
            return recipe
    raise AssertionError("the catch-all recipe always matches")


# Peak rate per 256 images and weight decay of an optimizer picked against the recipe's
# (e.g. --optimizer adamw for a ResNet): the recipe's numbers belong to its own optimizer.
OPTIMIZER_DEFAULTS: dict[str, tuple[float, float]] = {
    "sgd": (0.1, 1e-4),
    "nesterov": (0.1, 1e-4),
    "rmsprop": (0.016, 1e-5),
    "adamw": (1e-3, 0.05),
    "lars": (0.3, 1e-6),
    "lamb": (1e-3, 0.05),
}
# Epsilon of the optimizers that have one (rmsprop's 1e-3: the TF EfficientNet recipe).
OPTIMIZER_EPS: dict[str, float] = {"adamw": 1e-8, "rmsprop": 1e-3, "lamb": 1e-6}


def apply_recipe(config: Config) -> Config:
    """``config`` with every "auto" field that the recipe of ``config.arch`` decides filled in.

    The peak rate follows the linear scaling rule (Goyal et al.): the recipe's rate per 256
    images times the images per update (``batch_size x grad_accum``). The warm-up is at most a
    tenth of the run; step schedules divide the rate by 10 every third of the run (30 of He et
    al.'s 90 epochs), the others decay by 0.97 every 2.4 epochs (EfficientNet).
    """
    c = config
    recipe = recipe_for(c.arch)
    optimizer = c.optimizer or recipe.optimizer
    base_lr, weight_decay = ((recipe.base_lr, recipe.weight_decay) if optimizer == recipe.optimizer
                             else OPTIMIZER_DEFAULTS[optimizer])
    batch_size = c.batch_size or recipe.batch_size
    # A data set's configs and versions (mnist_sample/rts, cifar10:3.0.2) share its schedule.
    epochs = c.epochs or DATASET_EPOCHS.get(re.split(r"[:/]", c.dataset)[0], recipe.epochs)
    schedule = c.schedule or recipe.schedule

    def auto(value: Any, default: Any) -> Any:
        return default if value is None else value

    return c.replace(
        epochs=epochs,
        batch_size=batch_size,
        optimizer=optimizer,
        lr=auto(c.lr, base_lr * batch_size * c.grad_accum / 256),
        opt_eps=auto(c.opt_eps, OPTIMIZER_EPS.get(optimizer)),
        schedule=schedule,
        warmup_epochs=auto(c.warmup_epochs, min(recipe.warmup_epochs, epochs / 10)),
        lr_decay_factor=c.lr_decay_factor or (0.1 if schedule == "step" else 0.97),
        lr_decay_epochs=c.lr_decay_epochs or (epochs / 3 if schedule == "step" else 2.4),
        weight_decay=auto(c.weight_decay, weight_decay),
        label_smoothing=auto(c.label_smoothing, recipe.label_smoothing),
        ema_decay=auto(c.ema_decay, recipe.ema_decay),
        aux_weight=auto(c.aux_weight, recipe.aux_weight),
    )
