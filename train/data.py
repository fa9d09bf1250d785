"""What a data set is, without TensorFlow: :class:`DatasetInfo` and :class:`DatasetError`.

The planner (``train.plan``), the benchmark and the command lines need these two names but not
the pipelines that read the data (``train.input_pipeline``, which imports TensorFlow and TFDS),
so they live here, where importing them costs nothing.
"""

from __future__ import annotations

import dataclasses


class DatasetError(ValueError):
    """A data set that cannot be used as asked: unknown, unprepared, or of the wrong kind."""


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
    """What a data set is, for choosing the network, batch and schedule.

    ``image_shape`` is the native (H, W, C); H and W are ``None`` where images vary in size
    (ImageNet, image folders). ``mean`` and ``std`` are per native channel, in [0, 255] pixel
    units. ``class_names`` are the label names where the data set has them.
    """

    name: str
    num_classes: int
    image_shape: tuple[int | None, int | None, int]
    train_split: str
    eval_split: str
    num_train: int
    num_eval: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    class_names: tuple[str, ...] = ()
