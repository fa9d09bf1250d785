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

On the CPU the package's first act sets how glibc's ``malloc`` serves the memory XLA allocates
and frees at every step (jaxcnn/allocator.py): run as ``python -m train.<module>``, it restarts
the command with transparent huge pages for ``malloc``
(:func:`jaxcnn.allocator.restart_with_huge_pages`; ResNet-50's train step at 64 px 1.3x faster);
with ``JAXCNN_MALLOC=keep`` it keeps freed memory instead
(:func:`jaxcnn.allocator.keep_freed_memory`: no page faults, but a heap that fragments);
``JAXCNN_MALLOC=default`` leaves glibc's defaults.

The trainer runs from a checkout (``python -m train.main`` in the repository root); it is not
part of the ``jaxcnn`` wheel, so that no installed package claims the top-level name ``train``.
"""

import importlib.util
import os
import sys


def _allocator_alone():
    """jaxcnn/allocator.py loaded by its path, apart from the package: it imports only the
    standard library, where ``import jaxcnn.allocator`` would first run jaxcnn/__init__, which
    imports JAX and Flax (2.3 s on the 2-core machine) in a process about to be replaced."""
    package = importlib.util.find_spec("jaxcnn")
    path = os.path.join(package.submodule_search_locations[0], "allocator.py")
    spec = importlib.util.spec_from_file_location("jaxcnn_allocator_alone", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_MALLOC = os.environ.get("JAXCNN_MALLOC")
if sys.argv[:1] == ["-m"]:  # imported to run `python -m train.<module>`
    _alone = _allocator_alone()
    if _alone.runs_on_cpu():  # returns where they do not apply (JAXCNN_MALLOC set, restarted)
        _alone.restart_with_huge_pages()

try:
    from jaxcnn.allocator import keep_freed_memory, runs_on_cpu
except ValueError as err:  # jaxcnn refuses a misspelt JAXCNN_CONV when imported (conv.py)
    if sys.argv[:1] != ["-m"] or os.environ.get("JAXCNN_CONV") is None:
        raise
    print(f"error: {err}; set one of those or unset it", file=sys.stderr)  # as train.main does
    sys.exit(2)

if _MALLOC not in (None, "", "keep", "default"):
    import warnings

    warnings.warn(f"JAXCNN_MALLOC={_MALLOC!r} is not a setting: 'keep' keeps freed memory, "
                  "'default' leaves glibc's defaults (jaxcnn/allocator.py); unset, the trainer's "
                  "commands use huge pages", stacklevel=2)
elif _MALLOC == "keep" and runs_on_cpu():
    keep_freed_memory()  # first, before any thread allocates: see jaxcnn/allocator.py
