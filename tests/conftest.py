"""Test-wide settings: Keras runs on the JAX backend (no TensorFlow graph needed)."""

import os

os.environ.setdefault("KERAS_BACKEND", "jax")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
