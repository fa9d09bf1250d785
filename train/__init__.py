"""Training for jaxcnn networks, laid out like the Flax ImageNet example.

Imports run one way, from the ground up:

* ``train.configs.default``: ``get_config()``, the per-architecture recipes and every
  optimizer and learning-rate default (``apply_recipe``).
* ``train.data``: ``DatasetInfo`` and ``DatasetError``, without TensorFlow.
* ``train.parallel``: devices and processes; jit (sharded) or pmap placement.
* ``train.plan``: ``resolve_config``, the one owner of "auto": a config and a data set become a
  ``Plan``.
* ``train.train``: the importable library: ``build(plan, parallel)`` (network, optimizer, state,
  steps), the train and eval steps, the loop.
* ``train.input_pipeline``: TFDS input pipelines (the embedded ``mnist_sample`` by default).
* ``train.checkpoints``: Orbax checkpoints with resume; ``train.metrics``: logs and plots.
* ``train.main``: command-line flags only (``python -m train.main --arch senet``);
  ``train.evaluate``: evaluates a trained workdir; ``train.bench``: synthetic-data benchmark.

With ``JAXCNN_MALLOC=keep`` on the CPU the package's first act is
:func:`jaxcnn.allocator.keep_freed_memory`: glibc then keeps the memory XLA frees after each
step instead of mapping it afresh for the next (faster steps; a heap that fragments, so it is
not the default).

The trainer runs from a checkout (``python -m train.main`` in the repository root); it is not
part of the ``jaxcnn`` wheel, so that no installed package claims the top-level name ``train``.
"""

import os

from jaxcnn.allocator import keep_freed_memory, runs_on_cpu

_MALLOC = os.environ.get("JAXCNN_MALLOC")
if _MALLOC == "keep" and runs_on_cpu():
    keep_freed_memory()  # first, before any thread allocates: see jaxcnn/allocator.py
elif _MALLOC not in (None, "", "keep"):
    import warnings

    warnings.warn(f"JAXCNN_MALLOC={_MALLOC!r} is not a setting: 'keep' keeps freed memory "
                  "(jaxcnn/allocator.py); unset it for glibc's defaults", stacklevel=2)
