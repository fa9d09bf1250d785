"""Test-wide settings.

Keras runs on the JAX backend (no TensorFlow graph needed). XLA's optimisation passes are
switched off: the tests run each network once at a tiny input, where compile time dominates and
optimised code would buy nothing (results are the same to float32 rounding).
"""

import os

os.environ.setdefault("KERAS_BACKEND", "jax")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("JAX_DISABLE_MOST_OPTIMIZATIONS", "1")

# Importing torchvision (which loads triton) after TensorFlow crashes the process with a
# segmentation fault; the other order is fine. Each test worker therefore loads the reference
# frameworks first, when they are installed.
try:
    import torch  # noqa: F401
    import torchvision  # noqa: F401
    import timm  # noqa: F401
except ImportError:
    pass
