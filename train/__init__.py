"""Training for jaxcnn networks, laid out like the Flax ImageNet example.

* ``train.main``: command-line flags only (``python -m train.main --arch senet``).
* ``train.train``: the importable library: train state, jit/pmap train and eval steps, the loop.
* ``train.configs.default``: ``get_config()`` and the per-architecture recipes.
* ``train.input_pipeline``: TFDS input pipelines (the embedded ``mnist_sample`` by default).
* ``train.checkpoints``: Orbax checkpoints with resume; ``train.metrics``: logs and plots.
* ``train.evaluate``: evaluates a trained workdir; ``train.bench``: synthetic-data benchmark.
"""
