"""The distorted digits of the spatial transformer experiments (``mnist_sample/r``, ``/rts``,
``/p``, ``/e``): fixed by their seed, unlike the plain digits, geometrically what they say."""

from __future__ import annotations

import numpy as np
import pytest

from train.data import DatasetError
from train.datasets import mnist_sample
from train.datasets.mnist_sample import DISTORTIONS, distort


@pytest.fixture(scope="module")
def digits():
    images, labels = mnist_sample.load_source()
    rows = np.arange(12)
    return images[rows], rows


class _Fixed:
    """A stand-in generator whose uniform draws are the given numbers, in order."""

    def __init__(self, *values):
        self.values = list(values)

    def uniform(self, low, high, size=None):
        value = self.values.pop(0)
        assert low <= np.min(value) and np.max(value) <= high
        return np.asarray(value, np.float64) if size is not None else value


def _centre_of_mass(image):
    ys, xs = np.mgrid[0:image.shape[0], 0:image.shape[1]]
    mass = image.astype(np.float64)
    return np.array([np.sum(ys * mass), np.sum(xs * mass)]) / mass.sum()


@pytest.mark.parametrize("name", ["r", "rts", "p", "e"])
def test_distortions_are_fixed_by_the_seed_and_differ_from_the_digits(digits, name):
    images, rows = digits
    first = distort(name, images, rows)
    canvas = DISTORTIONS[name].canvas
    assert first.shape == (len(rows), canvas, canvas, 1) and first.dtype == np.uint8
    np.testing.assert_array_equal(first, distort(name, images, rows))  # the same bytes
    # Each digit is drawn by its own row's generator: the same digit under another row differs.
    assert not np.array_equal(distort(name, images[:1], rows[1:2]), first[:1])
    if canvas == 28:
        assert np.mean([not np.array_equal(a, b) for a, b in zip(first, images)]) == 1.0
    # Still digits: the ink scales with the area. RTS scales by 0.7-1.2 (area 0.49-1.44); P by
    # 0.75-1 (0.56-1) and then moves each corner by about 5 of 28 pixels, which can take the
    # area down to about a quarter ((18 / 28)^2 * 0.56 = 0.23).
    ink = first.reshape(len(rows), -1).sum(1) / images.reshape(len(rows), -1).sum(1)
    low = 0.15 if name == "p" else 0.3
    assert np.all(ink > low) and np.all(ink < 1.6), ink
    assert distort("plain", images, rows) is images


def test_rotation_turns_the_top_to_the_right():
    """A blob above the centre, rotated by +90 degrees (x right, y down), goes right of it."""
    blob = np.zeros((28, 28), np.uint8)
    blob[4:7, 12:16] = 255  # centre of mass (5, 13.5); the image's centre is (13.5, 13.5)
    turned = mnist_sample.rotate(blob, _Fixed(90.0))
    np.testing.assert_allclose(_centre_of_mass(turned), [13.5, 22.0], atol=0.05)


def test_rts_scales_about_the_centre_and_moves_within_the_canvas():
    blob = np.zeros((28, 28), np.uint8)
    blob[10:18, 10:18] = 255  # an 8x8 square on the centre
    # No rotation, scale 1, shift (+5, -3) pixels (x, y): the square lands at row 10.5 + 7 - 3.
    moved = mnist_sample.rotate_scale_translate(blob, _Fixed(0.0, 1.0, np.array([5.0, -3.0])))
    np.testing.assert_allclose(_centre_of_mass(moved), [20.5 - 3, 20.5 + 5], atol=0.05)
    assert moved.sum() == pytest.approx(blob.sum(), rel=0.01)
    half = mnist_sample.rotate_scale_translate(blob, _Fixed(0.0, 0.7, np.zeros(2)))
    # Scaled by 0.7 about the canvas centre 20.5, the bilinear profile of the square is 1 on
    # [18.05, 22.95] and falls to 0 at 17.35 and 23.65: the samples 19-22 read 1 and 18 and 23
    # read 0.65 / 0.7 each (rounded: 237 = 0.929 * 255 on the sides, 220 in the corners).
    assert half.sum() == 16 * 255 + 16 * 237 + 4 * 220
    assert half.sum() == pytest.approx(0.49 * blob.sum(), rel=0.1)  # about the area, 0.7^2
    with pytest.raises(AssertionError):  # the translation range keeps the 28x28 box inside
        mnist_sample.rotate_scale_translate(blob, _Fixed(0.0, 1.2, np.array([5.0, 0.0])))


def test_an_unknown_config_names_the_configs(tmp_path):
    from train import input_pipeline

    with pytest.raises(DatasetError, match=r"mnist_sample/rts.*mnist_sample/e"):
        input_pipeline.prepare_embedded(str(tmp_path), "mnist_sample/rst")


@pytest.mark.slow
def test_prepared_rts_digits_are_the_distortion_of_the_source(tmp_path):
    """The records of mnist_sample/rts are the digits distorted by their rows' generators."""
    import tensorflow_datasets as tfds

    from train import input_pipeline

    info = input_pipeline.dataset_info("mnist_sample/rts", str(tmp_path))
    assert info.image_shape == (42, 42, 1) and (info.num_train, info.num_eval) == (4000, 1000)
    assert info.mean == (13.82,)  # its own statistics, not the plain digits' 33.56
    builder = tfds.builder("mnist_sample/rts", data_dir=str(tmp_path))
    test = list(tfds.as_numpy(builder.as_dataset(split="test", shuffle_files=False)))[:20]
    images, labels = mnist_sample.load_source()
    rows = mnist_sample.split_indices(labels)["test"]
    expected = {bytes(distort("rts", images[[r]], np.array([r]))[0].tobytes()): int(labels[r])
                for r in rows}
    for example in test:
        assert expected[example["image"].tobytes()] == example["label"]
