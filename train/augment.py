"""Image augmentation as TensorFlow ops inside ``tf.data``, on the host CPU (never the accelerator).

Every random op here is *stateless*: it takes a ``seed`` tensor of shape ``[2]`` and the input
pipeline derives one per example (or per batch) from the run's seed, so a run is reproducible.

* ImageNet-style training: random-resized crop (Szegedy et al. 2015: 8%-100% of the area,
  aspect 3/4-4/3, decoded straight from the JPEG bytes where possible) and a horizontal flip;
  evaluation: centre crop of ``size / (size + 32)`` of the shorter side (the 0.875 of 224/256),
  resized to ``size``.
* Small images (MNIST, CIFAR): :func:`fit` brings them to the network's size (zero padding for a
  slight enlargement, as LeNet-5 pads 28x28 digits to 32x32; resizing otherwise), then
  pad-and-crop (pad ``size // 8``, crop ``size``: the 4 pixels of CIFAR ResNets) and a flip.
* Mixup (Zhang et al. 2018) and CutMix (Yun et al. 2019) on whole batches, pairing each example
  with the batch reversed, like timm; targets become mixed one-hot vectors.
* RandAugment (Cubuk et al. 2020): ``num_layers`` ops drawn uniformly from the 15 of timm's
  ``rand`` set, each at ``magnitude`` on the paper's 0-10 scale; magnitude 0 leaves an image
  unchanged for every op that has one (timm's "increasing" level mappings).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable

import tensorflow as tf

# Training augmentations by name; "auto" is resolved by the input pipeline from the data set.
AUGMENTS = ("auto", "none", "crop", "crop_flip", "inception")

_CROP_PADDING = 32  # Eval centre crop: size / (size + 32) of the shorter side (224 of 256).
_FILL = 128  # Grey fill for pixels that geometric RandAugment ops move in from outside.


def split_seed(seed: tf.Tensor, num: int) -> list[tf.Tensor]:
    """``num`` independent ``[2]`` seeds from one."""
    seeds = tf.random.experimental.stateless_split(seed, num=num)
    return [seeds[i] for i in range(num)]


# ---------------------------------------------------------------------------------------------
# Crops, resizing, flips.


def _random_crop_window(shape: tf.Tensor, seed: tf.Tensor, area_range=(0.08, 1.0),
                        aspect_ratio_range=(3 / 4, 4 / 3)) -> tf.Tensor:
    """``[y, x, h, w]`` of an Inception crop; the centre crop of the whole image if none fits."""
    begin, size, _ = tf.image.stateless_sample_distorted_bounding_box(
        shape, bounding_boxes=tf.constant([0.0, 0.0, 1.0, 1.0], tf.float32, [1, 1, 4]),
        seed=seed, min_object_covered=0.1, aspect_ratio_range=aspect_ratio_range,
        area_range=area_range, max_attempts=10, use_image_if_no_bounding_boxes=True)
    return tf.stack([begin[0], begin[1], size[0], size[1]])


def _centre_crop_window(shape: tf.Tensor, image_size: int) -> tf.Tensor:
    """``[y, x, h, w]`` of the square centre crop of ``image_size / (image_size + 32)``."""
    h, w = shape[0], shape[1]
    side = tf.cast(image_size / (image_size + _CROP_PADDING)
                   * tf.cast(tf.minimum(h, w), tf.float32), tf.int32)
    side = tf.maximum(side, 1)
    return tf.stack([(h - side + 1) // 2, (w - side + 1) // 2, side, side])


def _decode_crop(image_bytes: tf.Tensor, window_fn: Callable[[tf.Tensor], tf.Tensor],
                 channels: int) -> tf.Tensor:
    """Decodes only the crop of a JPEG (much faster on ImageNet); other formats fully, then crop."""

    def jpeg():
        window = window_fn(tf.image.extract_jpeg_shape(image_bytes))
        return tf.image.decode_and_crop_jpeg(image_bytes, window, channels=channels)

    def other():
        image = tf.io.decode_image(image_bytes, channels=channels, expand_animations=False)
        window = window_fn(tf.shape(image))
        return image[window[0]:window[0] + window[2], window[1]:window[1] + window[3]]

    image = tf.cond(tf.io.is_jpeg(image_bytes), jpeg, other)
    return tf.ensure_shape(image, [None, None, channels])


def crop(image: tf.Tensor, window: tf.Tensor) -> tf.Tensor:
    return image[window[0]:window[0] + window[2], window[1]:window[1] + window[3]]


def _crop_resized(image: tf.Tensor, window_fn: Callable[[tf.Tensor], tf.Tensor], image_size: int,
                  *, encoded: bool, channels: int) -> tf.Tensor:
    """The window that ``window_fn(shape)`` picks, resized to ``image_size``.

    An encoded image is decoded inside the window only (``_decode_crop``).
    """
    if encoded:
        image = _decode_crop(image, window_fn, channels)
    else:
        image = crop(image, window_fn(tf.shape(image)))
    return resize(image, image_size)


def random_resized_crop(image: tf.Tensor, seed: tf.Tensor, image_size: int, *,
                        encoded: bool, channels: int) -> tf.Tensor:
    """Inception crop, resized to ``image_size`` (float32, pixel values in [0, 255])."""
    return _crop_resized(image, lambda shape: _random_crop_window(shape, seed), image_size,
                         encoded=encoded, channels=channels)


def centre_crop(image: tf.Tensor, image_size: int, *, encoded: bool, channels: int) -> tf.Tensor:
    """Evaluation crop, resized to ``image_size`` (float32, pixel values in [0, 255])."""
    return _crop_resized(image, lambda shape: _centre_crop_window(shape, image_size), image_size,
                         encoded=encoded, channels=channels)


def resize(image: tf.Tensor, image_size: int) -> tf.Tensor:
    """Bilinear resize to a square (antialiased when shrinking); float32 in [0, 255]."""
    image = tf.image.resize(tf.cast(image, tf.float32), [image_size, image_size],
                            method="bilinear", antialias=True)
    return tf.clip_by_value(image, 0.0, 255.0)


def pads_to(native: tuple[int | None, int | None], image_size: int) -> bool:
    """Whether :func:`fit` pads (rather than resizes) images of ``native`` (H, W) size."""
    h, w = native
    if h is None or w is None:
        return False
    # A slight enlargement keeps the pixels as they are: LeNet-5 takes MNIST's 28x28 digits
    # zero-padded to 32x32. Anything bigger (CIFAR at 224) is resized.
    return max(h, w) <= image_size <= max(h, w) * 5 // 4 and (h, w) != (image_size,) * 2


def fit(image: tf.Tensor, image_size: int) -> tf.Tensor:
    """Brings a whole image to ``image_size`` square: zero-pads a slight enlargement, else resizes.

    Returns float32 pixel values in [0, 255].
    """
    h, w = image.shape[0], image.shape[1]
    if (h, w) == (image_size, image_size):
        return tf.cast(image, tf.float32)
    if pads_to((h, w), image_size):
        top, left = (image_size - h) // 2, (image_size - w) // 2
        return tf.cast(tf.pad(image, [[top, image_size - h - top],
                                      [left, image_size - w - left], [0, 0]]), tf.float32)
    return resize(image, image_size)


def pad_and_random_crop(image: tf.Tensor, seed: tf.Tensor, pad: int) -> tf.Tensor:
    """Zero-pads ``pad`` pixels on every side and crops back at a random offset."""
    if pad <= 0:
        return image
    h, w, c = image.shape
    padded = tf.pad(image, [[pad, pad], [pad, pad], [0, 0]])
    return tf.image.stateless_random_crop(padded, [h, w, c], seed=seed)


def random_flip(image: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
    return tf.image.stateless_random_flip_left_right(image, seed=seed)


def to_channels(image: tf.Tensor, channels: int) -> tf.Tensor:
    """1 -> 3 channels by repeating the grey, 3 -> 1 by averaging; others unchanged."""
    have = image.shape[-1]
    if have == channels:
        return image
    if have == 1 and channels == 3:
        return tf.tile(image, [1, 1, 3])
    if have == 3 and channels == 1:
        return tf.reduce_mean(image, axis=-1, keepdims=True)
    raise ValueError(f"cannot convert {have}-channel images to {channels} channels "
                     "(only 1 -> 3 and 3 -> 1 are supported).")


def to_uint8(image: tf.Tensor) -> tf.Tensor:
    return tf.cast(tf.clip_by_value(tf.round(tf.cast(image, tf.float32)), 0, 255), tf.uint8)


# ---------------------------------------------------------------------------------------------
# Mixup and CutMix, on whole batches.


def _sample_beta(seed: tf.Tensor, alpha: float) -> tf.Tensor:
    gammas = tf.random.stateless_gamma([2], seed=seed, alpha=alpha)
    return gammas[0] / tf.maximum(gammas[0] + gammas[1], 1e-12)


def mixup(images: tf.Tensor, targets: tf.Tensor, seed: tf.Tensor, alpha: float):
    """Mixes each example with the batch reversed, ``lam ~ Beta(alpha, alpha)``."""
    lam = _sample_beta(seed, alpha)
    images = lam * images + (1.0 - lam) * tf.reverse(images, [0])
    targets = lam * targets + (1.0 - lam) * tf.reverse(targets, [0])
    return images, targets


def cutmix(images: tf.Tensor, targets: tf.Tensor, seed: tf.Tensor, alpha: float):
    """Pastes a box of the reversed batch into each image; targets weighted by the box's area."""
    lam_seed, y_seed, x_seed = split_seed(seed, 3)
    lam = _sample_beta(lam_seed, alpha)
    h, w = images.shape[1], images.shape[2]
    ratio = tf.sqrt(1.0 - lam)
    cut_h = tf.cast(ratio * h, tf.int32)
    cut_w = tf.cast(ratio * w, tf.int32)
    cy = tf.random.stateless_uniform([], y_seed, 0, h, tf.int32)
    cx = tf.random.stateless_uniform([], x_seed, 0, w, tf.int32)
    y0 = tf.clip_by_value(cy - cut_h // 2, 0, h)
    y1 = tf.clip_by_value(cy + cut_h - cut_h // 2, 0, h)
    x0 = tf.clip_by_value(cx - cut_w // 2, 0, w)
    x1 = tf.clip_by_value(cx + cut_w - cut_w // 2, 0, w)
    rows = tf.range(h)[:, None]
    cols = tf.range(w)[None, :]
    box = (rows >= y0) & (rows < y1) & (cols >= x0) & (cols < x1)  # [h, w]
    images = tf.where(box[None, :, :, None], tf.reverse(images, [0]), images)
    # The clipped box may be smaller than drawn: weight the targets by the area actually pasted.
    lam = 1.0 - tf.cast((y1 - y0) * (x1 - x0), tf.float32) / float(h * w)
    targets = lam * targets + (1.0 - lam) * tf.reverse(targets, [0])
    return images, targets


def mix_batch(images: tf.Tensor, labels: tf.Tensor, seed: tf.Tensor, *, num_classes: int,
              mixup_alpha: float = 0.0, cutmix_alpha: float = 0.0):
    """Mixup or CutMix on a batch (one of the two, at random, when both are on, as timm does).

    Returns the mixed images and float32 targets of shape ``(batch, num_classes)`` summing to 1.
    """
    targets = tf.one_hot(labels, num_classes, dtype=tf.float32)
    choose_seed, mix_seed = split_seed(seed, 2)
    if mixup_alpha > 0 and cutmix_alpha > 0:
        use_cutmix = tf.random.stateless_uniform([], choose_seed) < 0.5
        return tf.cond(use_cutmix,
                       lambda: cutmix(images, targets, mix_seed, cutmix_alpha),
                       lambda: mixup(images, targets, mix_seed, mixup_alpha))
    if cutmix_alpha > 0:
        return cutmix(images, targets, mix_seed, cutmix_alpha)
    if mixup_alpha > 0:
        return mixup(images, targets, mix_seed, mixup_alpha)
    return images, targets


# ---------------------------------------------------------------------------------------------
# RandAugment, on uint8 images of 1 or 3 channels.


@dataclasses.dataclass(frozen=True)
class RandAugment:
    """``num_layers`` ops per image, each at ``magnitude`` (0-10, the paper's scale)."""

    num_layers: int = 2
    magnitude: float = 9.0

    def __post_init__(self):
        if not (isinstance(self.num_layers, int) and self.num_layers >= 1):
            raise ValueError(f"RandAugment num_layers must be a positive integer, "
                             f"got {self.num_layers!r}.")
        if not 0 <= self.magnitude <= 10:
            raise ValueError(f"RandAugment magnitude must be within 0-10 (the paper's scale), "
                             f"got {self.magnitude!r}; 9 is the usual ImageNet setting.")


def parse_randaugment(value: Any) -> RandAugment | None:
    """Reads the ``randaugment`` option: off, a magnitude, ``(num_layers, magnitude)``, or text.

    Off: ``None``, ``False``, ``0``, ``""``, ``"none"``, ``"off"``. A number ``m`` means 2 layers at
    magnitude ``m``; ``True`` means 2 layers at 9. Text is ``"9"`` or ``"2,9"`` (from a flag).
    """
    if isinstance(value, RandAugment) or value is None:
        return value
    if isinstance(value, bool):
        return RandAugment() if value else None
    if isinstance(value, (int, float)):
        return RandAugment(magnitude=float(value)) if value else None
    if isinstance(value, (tuple, list)) and len(value) == 2:
        return RandAugment(num_layers=int(value[0]), magnitude=float(value[1]))
    if isinstance(value, str):
        text = value.strip().lower()
        if text in ("", "none", "off", "false", "0"):
            return None
        try:
            numbers = [float(part) for part in text.split(",")]
        except ValueError:
            numbers = []
        if len(numbers) == 1:
            return RandAugment(magnitude=numbers[0])
        if len(numbers) == 2 and numbers[0].is_integer():
            return RandAugment(num_layers=int(numbers[0]), magnitude=numbers[1])
    raise ValueError(
        f"randaugment={value!r} is not understood: use None (off), a magnitude such as 9, "
        "(num_layers, magnitude) such as (2, 9), or the text '9' or '2,9'."
    )


def _blend(degenerate: tf.Tensor, image: tf.Tensor, factor: tf.Tensor) -> tf.Tensor:
    """``degenerate + factor * (image - degenerate)``: 0 gives ``degenerate``, 1 the image."""
    degenerate = tf.cast(degenerate, tf.float32)
    out = degenerate + factor * (tf.cast(image, tf.float32) - degenerate)
    return to_uint8(out)


def _grey(image: tf.Tensor) -> tf.Tensor:
    """The luminance, with the image's own number of channels (uint8)."""
    if image.shape[-1] == 1:
        return image
    return tf.tile(tf.image.rgb_to_grayscale(image), [1, 1, image.shape[-1]])


def _autocontrast(image: tf.Tensor) -> tf.Tensor:
    """Stretches each channel to span 0-255."""
    x = tf.cast(image, tf.float32)
    lo = tf.reduce_min(x, axis=[0, 1], keepdims=True)
    hi = tf.reduce_max(x, axis=[0, 1], keepdims=True)
    scale = tf.where(hi > lo, 255.0 / tf.maximum(hi - lo, 1.0), 1.0)
    offset = tf.where(hi > lo, lo, 0.0)
    return to_uint8((x - offset) * scale)


def _equalize(image: tf.Tensor) -> tf.Tensor:
    """Histogram equalisation of each channel (PIL's ``ImageOps.equalize``)."""

    def channel(x):
        hist = tf.histogram_fixed_width(x, [0, 255], nbins=256)
        nonzero = tf.boolean_mask(hist, hist > 0)
        step = (tf.reduce_sum(nonzero) - nonzero[-1]) // 255

        def equalised():
            lut = (tf.cumsum(hist) + step // 2) // step
            lut = tf.clip_by_value(tf.concat([[0], lut[:-1]], 0), 0, 255)
            return tf.gather(lut, x)

        return tf.cond(step > 0, equalised, lambda: x)

    x = tf.cast(image, tf.int32)
    channels = [channel(x[..., c]) for c in range(image.shape[-1])]
    return tf.cast(tf.stack(channels, -1), tf.uint8)


def _posterize(image: tf.Tensor, bits: tf.Tensor) -> tf.Tensor:
    shift = tf.cast(8 - bits, tf.uint8)
    return tf.bitwise.left_shift(tf.bitwise.right_shift(image, shift), shift)


def _solarize(image: tf.Tensor, threshold: tf.Tensor) -> tf.Tensor:
    x = tf.cast(image, tf.float32)
    return to_uint8(tf.where(x < threshold, x, 255.0 - x))


def _solarize_add(image: tf.Tensor, addition: tf.Tensor) -> tf.Tensor:
    x = tf.cast(image, tf.float32)
    return to_uint8(tf.where(x < 128.0, x + addition, x))


def _sharpness_degenerate(image: tf.Tensor) -> tf.Tensor:
    """PIL's SMOOTH filter inside, the original pixels on the one-pixel border."""
    c = image.shape[-1]
    kernel = tf.constant([[1, 1, 1], [1, 5, 1], [1, 1, 1]], tf.float32) / 13.0
    kernel = tf.tile(kernel[:, :, None, None], [1, 1, c, 1])
    x = tf.cast(image, tf.float32)[None]
    smooth = tf.nn.depthwise_conv2d(x, kernel, [1, 1, 1, 1], padding="VALID")[0]
    smooth = tf.pad(smooth, [[1, 1], [1, 1], [0, 0]])
    h, w = tf.shape(image)[0], tf.shape(image)[1]
    inner = tf.pad(tf.ones([h - 2, w - 2, c], tf.bool), [[1, 1], [1, 1], [0, 0]])
    return tf.where(inner, smooth, tf.cast(image, tf.float32))


def _transform(image: tf.Tensor, transform: tf.Tensor) -> tf.Tensor:
    """Projective transform (output pixel -> input pixel), nearest neighbour, grey fill."""
    shape = tf.shape(image)
    out = tf.raw_ops.ImageProjectiveTransformV3(
        images=image[None], transforms=tf.cast(transform, tf.float32)[None],
        output_shape=shape[:2], fill_value=float(_FILL), interpolation="NEAREST",
        fill_mode="CONSTANT")
    return out[0]


def _rotate(image: tf.Tensor, degrees: tf.Tensor) -> tf.Tensor:
    h = tf.cast(tf.shape(image)[0], tf.float32) - 1.0
    w = tf.cast(tf.shape(image)[1], tf.float32) - 1.0
    angle = degrees * (math.pi / 180.0)
    cos, sin = tf.cos(angle), tf.sin(angle)
    x_offset = (w - (cos * w - sin * h)) / 2.0
    y_offset = (h - (sin * w + cos * h)) / 2.0
    return _transform(image, tf.stack([cos, -sin, x_offset, sin, cos, y_offset, 0.0, 0.0]))


def _affine(image: tf.Tensor, a: tf.Tensor, b: tf.Tensor, c: tf.Tensor, d: tf.Tensor,
            e: tf.Tensor, f: tf.Tensor) -> tf.Tensor:
    return _transform(image, tf.stack([a, b, c, d, e, f, 0.0, 0.0]))


def randaugment_ops() -> dict[str, Callable[[tf.Tensor, tf.Tensor, tf.Tensor], tf.Tensor]]:
    """The 15 ops of timm's ``rand`` set as ``op(image, level in [0, 1], sign in {-1, 1})``."""
    one, zero = tf.constant(1.0), tf.constant(0.0)
    size = lambda image, axis: tf.cast(tf.shape(image)[axis], tf.float32)  # noqa: E731
    return {
        "auto_contrast": lambda im, lv, sg: _autocontrast(im),
        "equalize": lambda im, lv, sg: _equalize(im),
        "invert": lambda im, lv, sg: 255 - im,
        "rotate": lambda im, lv, sg: _rotate(im, sg * 30.0 * lv),
        "posterize": lambda im, lv, sg: _posterize(im, 8 - tf.cast(tf.round(4.0 * lv), tf.int32)),
        "solarize": lambda im, lv, sg: _solarize(im, 256.0 - 256.0 * lv),
        "solarize_add": lambda im, lv, sg: _solarize_add(im, 110.0 * lv),
        "color": lambda im, lv, sg: _blend(_grey(im), im, 1.0 + sg * 0.9 * lv),
        "contrast": lambda im, lv, sg: _blend(
            tf.fill(tf.shape(im), tf.reduce_mean(tf.cast(_grey(im), tf.float32))), im,
            1.0 + sg * 0.9 * lv),
        "brightness": lambda im, lv, sg: _blend(tf.zeros_like(im), im, 1.0 + sg * 0.9 * lv),
        "sharpness": lambda im, lv, sg: _blend(_sharpness_degenerate(im), im,
                                               1.0 + sg * 0.9 * lv),
        "shear_x": lambda im, lv, sg: _affine(im, one, sg * 0.3 * lv, zero, zero, one, zero),
        "shear_y": lambda im, lv, sg: _affine(im, one, zero, zero, sg * 0.3 * lv, one, zero),
        "translate_x": lambda im, lv, sg: _affine(
            im, one, zero, -sg * 0.45 * lv * size(im, 1), zero, one, zero),
        "translate_y": lambda im, lv, sg: _affine(
            im, one, zero, zero, zero, one, -sg * 0.45 * lv * size(im, 0)),
    }


def randaugment(image: tf.Tensor, seed: tf.Tensor, config: RandAugment) -> tf.Tensor:
    """Applies ``config.num_layers`` random ops at ``config.magnitude`` to a uint8 image."""
    ops = list(randaugment_ops().values())
    level = tf.constant(config.magnitude / 10.0, tf.float32)
    seeds = tf.random.experimental.stateless_split(seed, num=config.num_layers)

    def layer(i, image):
        op_seed, sign_seed = split_seed(seeds[i], 2)
        index = tf.random.stateless_uniform([], op_seed, 0, len(ops), tf.int32)
        sign = tf.where(tf.random.stateless_uniform([], sign_seed) < 0.5, -1.0, 1.0)
        branches = [(lambda op=op: tf.ensure_shape(op(image, level, sign), image.shape))
                    for op in ops]
        return i + 1, tf.switch_case(index, branches)

    # A loop rather than one switch per layer: the 15 ops are traced once, not num_layers times.
    _, image = tf.while_loop(lambda i, _: i < config.num_layers, layer,
                             (tf.constant(0), image))
    return image
