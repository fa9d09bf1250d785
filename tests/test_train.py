"""Tests of the training package: flags, config resolution, optimizers, steps, real runs.

``ToyData`` and ``TinyCNN`` (below) are small stand-ins for the input pipeline and a network,
following the same interfaces; test_checkpoints.py and test_distributed.py import them. The
real pipeline and the registered networks are tested here too: a short LeNet-5 run on the
embedded digits, and one train step of several families under ``tfds.testing.mock_data``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxcnn
from conftest import with_root_on_path
from train import main as main_lib
from train import parallel as parallel_lib
from train import plan as plan_lib
from train import train as train_lib
from train.configs.default import OPTIMIZERS, SCHEDULES, Config, ConfigError, get_config
from train.data import DatasetInfo


# ----------------------------------------------------------------------------------------------
# Stand-ins shared with the other training tests.
# ----------------------------------------------------------------------------------------------
def toy_info(**changes) -> DatasetInfo:
    """A small data set's info: 4 classes of 8x8 grey images, 256 train / 70 test."""
    fields = dict(name="toy", num_classes=4, image_shape=(8, 8, 1), train_split="train",
                  eval_split="test", num_train=256, num_eval=70, mean=(0.0,), std=(1.0,))
    return DatasetInfo(**{**fields, **changes})


def _toy_examples(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    templates = np.random.default_rng(123).normal(size=(4, 8, 8, 1)).astype(np.float32)
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 4, n).astype(np.int32)
    images = templates[labels] + 0.7 * rng.normal(size=(n, 8, 8, 1)).astype(np.float32)
    return images, labels


class ToyData:
    """The input pipeline's interface over 4 classes of noisy 8x8 templates (deterministic).

    A training batch is the same global batch whatever the number of processes: process ``p``
    gets rows ``[p * local, (p + 1) * local)`` of it. Eval shares are even splits of the eval
    set, padded (``mask`` False) to the same number of batches on every process.
    """

    def __init__(self, num_train: int = 256, num_eval: int = 70):
        self.info = toy_info(num_train=num_train, num_eval=num_eval)
        self.train = _toy_examples(num_train, 1)
        self.eval = _toy_examples(num_eval, 2)

    def dataset_info(self, name, data_dir=None):
        if name != "toy":
            raise ValueError(f"ToyData only has 'toy', not {name!r}")
        return self.info

    @staticmethod
    def _resize(x, size):
        idx = np.arange(size) * x.shape[1] // size
        return x[:, idx][:, :, idx]

    def train_iterator(self, name, *, data_dir, global_batch_size, image_size, seed,
                       augment="auto", mixup=0.0, cutmix=0.0, randaugment=None,
                       process_index=0, process_count=1):
        rng = np.random.default_rng(seed)
        local = global_batch_size // process_count
        x, y = self.train
        while True:
            perm = rng.permutation(len(y))
            for i in range(len(y) // global_batch_size):
                rows = perm[i * global_batch_size:(i + 1) * global_batch_size]
                rows = rows[process_index * local:(process_index + 1) * local]
                yield {"image": self._resize(x[rows], image_size), "label": y[rows]}

    def eval_iterator(self, name, *, data_dir, global_batch_size, image_size, process_index=0,
                      process_count=1):
        x, y = self.eval
        n = len(y)
        local = global_batch_size // process_count
        sizes = [n // process_count + (p < n % process_count) for p in range(process_count)]
        start = sum(sizes[:process_index])
        steps = math.ceil(max(sizes) / local)
        for i in range(steps):
            idx = start + np.arange(i * local, (i + 1) * local)
            mask = idx < start + sizes[process_index]
            idx = np.where(mask, idx, 0)
            yield {"image": self._resize(x[idx], image_size), "label": y[idx], "mask": mask}


class TinyCNN(nn.Module):
    """Conv, BatchNorm, ReLU, dropout, dense: the model interface of jaxcnn at toy size."""

    num_classes: int = 4
    dtype: object = jnp.float32
    axis_name: str | None = None
    dropout_rate: float = 0.1
    use_bn: bool = True

    @nn.compact
    def __call__(self, x, *, train: bool = False):
        x = nn.Conv(8, (3, 3), dtype=self.dtype, name="conv")(x)
        if self.use_bn:
            x = nn.BatchNorm(use_running_average=not train, axis_name=self.axis_name,
                             momentum=0.9, dtype=self.dtype, name="bn")(x)
        x = nn.relu(x).reshape(x.shape[0], -1)
        x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
        return nn.Dense(self.num_classes, dtype=self.dtype, name="head")(x).astype(jnp.float32)


def tiny_factory(arch, **kwargs):
    """A ``model_factory`` for train_and_evaluate: every arch name is the TinyCNN."""
    return TinyCNN(**kwargs)


def tiny_factory_no_dropout(arch, **kwargs):
    return TinyCNN(dropout_rate=0.0, **kwargs)


def toy_config(workdir, **changes) -> Config:
    defaults = dict(arch="tiny", dataset="toy", epochs=2, batch_size=32, lr=0.1,
                    optimizer="nesterov", progress=False, tensorboard=False, log_every=4)
    return get_config().replace(**{**defaults, "workdir": str(workdir), **changes})


# An info like the embedded data set's, so that config tests need no TensorFlow.
DIGITS = toy_info(name="mnist_sample", num_classes=10, image_shape=(28, 28, 1), num_train=4000,
                  num_eval=1000)


# ----------------------------------------------------------------------------------------------
# Flags and configuration.
# ----------------------------------------------------------------------------------------------
def test_every_config_field_is_a_documented_flag():
    help_text = main_lib.build_parser().format_help()
    for field in dataclasses.fields(Config):
        flag = "--" + field.name.replace("_", "-")
        assert flag in help_text, f"{flag} missing from --help"
        assert field.metadata.get("help"), f"{field.name} has no help text"
    for flag in ("--lr", "--optimizer", "--schedule", "--warmup-epochs", "--weight-decay",
                 "--label-smoothing", "--grad-clip", "--grad-accum", "--ema-decay", "--dtype",
                 "--parallel", "--image-size", "--data-dir", "--seed", "--log-every",
                 "--checkpoint-every", "--keep", "--num-classes", "--coordinator",
                 "--num-processes", "--process-id"):
        assert flag in help_text


@pytest.mark.slow  # ~40 s: two LeNet-5 runs of two steps, each in a process of its own
def test_a_second_run_loads_its_programs_from_the_compilation_cache(tmp_path):
    """``--compilation-cache DIR``: the first run writes its compiled programs there, a second
    run of the same command compiles none of them again (it writes no entry and rewrites
    none). jax's threshold is lowered to 0 s here: LeNet-5's steps compile faster than the
    1 s that jax waits for by default."""
    cache = tmp_path / "xla"
    env = {**with_root_on_path(), "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0"}

    def run(workdir):
        out = subprocess.run([sys.executable, "-m", "train.main", "--arch", "lenet5",
                              "--max-steps", "2", "--no-progress", "--no-tensorboard",
                              "--workdir", str(tmp_path / workdir), "--compilation-cache",
                              str(cache)], env=env, capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, out.stdout + out.stderr
        return {f.name: f.stat().st_mtime_ns for f in cache.iterdir()}

    first = run("a")
    assert any(name.startswith("jit_") for name in first), first
    assert run("b") == first


def test_flags_parse_into_the_config():
    config = main_lib.parse_config([
        "--arch", "resnet18", "--batch-size", "32", "--lr", "0.3", "--optimizer", "lamb",
        "--no-progress", "--ema-decay", "0.99", "--parallel", "pmap"])
    assert config.arch == "resnet18" and config.batch_size == 32 and config.lr == 0.3
    assert config.optimizer == "lamb" and config.progress is False
    assert config.ema_decay == 0.99 and config.parallel == "pmap"
    assert config.dataset == "mnist_sample"  # the default data set is the embedded one
    with pytest.raises(SystemExit):
        main_lib.parse_config(["--optimizer", "adam"])  # not a choice


def test_lenet5_and_senet_defaults_on_the_digits():
    lenet = plan_lib.resolve_config(get_config(), DIGITS, device_count=1, process_count=1)
    c = lenet.config
    assert (c.arch, c.image_size, c.channels, c.num_classes) == ("lenet5", 32, 1, 10)
    assert c.optimizer == "nesterov" and c.batch_size == 64 and c.epochs == 10
    assert c.lr == pytest.approx(0.2 * 64 / 256)
    assert lenet.steps_per_epoch == 4000 // 64 and lenet.eval_steps == math.ceil(1000 / 64)

    senet = plan_lib.resolve_config(get_config().replace(arch="senet"), DIGITS,
                                     device_count=1, process_count=1).config
    assert senet.arch == "seresnet50"  # the alias, resolved
    assert (senet.image_size, senet.channels) == (32, 3)  # 28x28x1 digits run at 32x32x3


def test_recipes_follow_the_architecture():
    def resolved(arch, **kw):
        return plan_lib.resolve_config(get_config().replace(arch=arch, **kw), DIGITS,
                                        device_count=1, process_count=1).config

    eff = resolved("efficientnet_b0")
    assert eff.optimizer == "rmsprop" and eff.ema_decay == 0.9999
    assert eff.label_smoothing == 0.1 and eff.schedule == "exponential"
    assert resolved("googlenet").aux_weight == 0.3
    # Caffe's lenet_solver.prototxt: SGD, momentum 0.9, 0.01 at batch 64, weight decay 5e-4.
    caffe = resolved("lenet5_caffe")
    assert (caffe.optimizer, caffe.batch_size, caffe.weight_decay) == ("sgd", 64, 5e-4)
    assert caffe.lr == pytest.approx(0.01) and resolved("lenet_300_100").optimizer == "nesterov"
    assert resolved("inception_v3").image_size == 75  # its smallest admissible input
    # An optimizer picked against the recipe gets its own rate, not the recipe's SGD rate.
    adamw = resolved("resnet18", optimizer="adamw", batch_size=256)
    assert adamw.lr == pytest.approx(1e-3) and adamw.weight_decay == 0.05
    assert resolved("resnet18", batch_size=512, grad_accum=2).lr == pytest.approx(0.4)


def test_bad_configs_name_the_problem_and_the_fix():
    def resolve(**kw):
        return plan_lib.resolve_config(get_config().replace(**kw), DIGITS, device_count=8,
                                        process_count=1)

    with pytest.raises(ConfigError, match=r"--image-size 16 .*32x32 minimum.*lenet5"):
        resolve(image_size=16, batch_size=64)
    with pytest.raises(ConfigError, match=r"--batch-size 30 cannot be split evenly over the 8 "
                                          r"devices.*multiple of 8 such as 24 or 32"):
        resolve(batch_size=30)
    with pytest.raises(ConfigError, match=r"--num-classes 5 .*10 classes"):
        resolve(num_classes=5, batch_size=64)
    with pytest.raises(ConfigError, match=r"--batch-size 8192 is larger than the 4,000"):
        resolve(batch_size=8192)
    with pytest.raises(ConfigError, match=r"--optimizer 'adam'.*adamw"):
        resolve(optimizer="adam")
    with pytest.raises(ConfigError, match=r"--label-smoothing"):
        resolve(label_smoothing=1.5)
    with pytest.raises(jaxcnn.UnknownModelError, match=r"resnet18"):
        resolve(arch="resnet19")
    with pytest.raises(ConfigError, match=r"--coordinator.*--num-processes.*--process-id"):
        parallel_lib.initialize_distributed(get_config().replace(num_processes=2))


def test_flags_and_the_network_are_checked_before_any_data_is_read():
    def unreadable():
        raise AssertionError("the data set was read before the flags and the network's name")

    with pytest.raises(jaxcnn.UnknownModelError, match=r"resnet50"):
        plan_lib.resolve_config(get_config().replace(arch="resnt50"), unreadable,
                                device_count=1, process_count=1)
    with pytest.raises(ConfigError, match=r"--optimizer 'adam'"):
        plan_lib.resolve_config(get_config().replace(optimizer="adam"), unreadable,
                                device_count=1, process_count=1)


def test_unknown_arch_and_dataset_on_the_command_line(capsys, tmp_path):
    rc = main_lib.main(["--arch", "resnt50", "--workdir", str(tmp_path)])
    err = capsys.readouterr().err
    assert rc == 2 and "Unknown architecture 'resnt50'" in err and "resnet50" in err
    rc = main_lib.main(["--dataset", "mnist_smaple", "--workdir", str(tmp_path)])
    err = capsys.readouterr().err
    assert rc == 2 and "mnist_sample" in err and "Traceback" not in err
    assert not os.listdir(tmp_path)  # nothing was written


# ----------------------------------------------------------------------------------------------
# Optimizers, schedules, losses.
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("schedule", SCHEDULES)
def test_schedules_warm_up_then_decay(schedule):
    config = toy_config("/unused", schedule=schedule, epochs=9, warmup_epochs=1.0, lr=0.5,
                        lr_decay_factor=0.1, lr_decay_epochs=3.0)
    fn = train_lib.create_schedule(config, 10, 90)
    assert float(fn(0)) == 0.0
    assert float(fn(5)) == pytest.approx(0.25)  # linear warm-up over 10 updates
    assert float(fn(10)) == pytest.approx(0.5)  # the peak
    late = float(fn(89))
    if schedule == "cosine":
        assert late < 0.01
    elif schedule == "step":
        assert float(fn(39)) == pytest.approx(0.5) and float(fn(41)) == pytest.approx(0.05)
        assert late == pytest.approx(0.005)
    elif schedule == "exponential":
        assert float(fn(40)) == pytest.approx(0.05, rel=1e-3)  # smooth: x0.1 per 30 updates
    else:
        assert late == pytest.approx(0.5)


@pytest.mark.parametrize("optimizer", OPTIMIZERS)
def test_weight_decay_skips_biases_and_batchnorm(optimizer):
    params = {"conv": {"kernel": jnp.ones((3, 3, 1, 4)), "bias": jnp.ones(4)},
              "bn": {"scale": jnp.ones(4), "bias": jnp.ones(4)}}
    config = toy_config("/unused", optimizer=optimizer, lr=0.1, weight_decay=0.1,
                        opt_eps=1e-8, grad_clip=1.0)
    tx = train_lib.create_optimizer(config, optax.constant_schedule(0.1))
    zero_grads = jax.tree.map(jnp.zeros_like, params)
    updates, _ = tx.update(zero_grads, tx.init(params), params)
    new = optax.apply_updates(params, updates)
    # With no gradient, only weight decay moves a parameter: kernels shrink, 1-D arrays don't.
    assert float(jnp.max(new["conv"]["kernel"])) < 1.0
    for leaf in (new["conv"]["bias"], new["bn"]["scale"], new["bn"]["bias"]):
        np.testing.assert_array_equal(leaf, 1.0)


def test_cross_entropy_label_smoothing_and_soft_targets():
    logits = jnp.array([[2.0, 0.0, -1.0]])
    p = jax.nn.log_softmax(logits)[0]
    hard = train_lib.cross_entropy(logits, jnp.array([0]), 3)
    assert float(hard[0]) == pytest.approx(-float(p[0]), rel=1e-6)
    smooth = train_lib.cross_entropy(logits, jnp.array([0]), 3, label_smoothing=0.3)
    target = np.array([0.8, 0.1, 0.1])
    assert float(smooth[0]) == pytest.approx(-float(np.dot(target, p)), rel=1e-6)
    soft = train_lib.cross_entropy(logits, jnp.array([[0.5, 0.5, 0.0]]), 3)
    assert float(soft[0]) == pytest.approx(-0.5 * float(p[0] + p[1]), rel=1e-6)


def _one_device_steps(config, factory, batches):
    """Runs make_train_step on one device over ``batches``; returns (state, metrics)."""
    parallel = parallel_lib.JitParallel([jax.devices()[0]])
    model = train_lib.build_model(config, model_factory=factory)
    schedule = optax.constant_schedule(config.lr)
    tx = train_lib.create_optimizer(config, schedule)
    state = parallel.init_state(train_lib.make_init_fn(model, tx, config))
    step = parallel.compile_train(train_lib.make_train_step(model, tx, schedule, config))
    metrics = None
    for batch in batches:
        state, metrics = step(state, parallel.put_batch(batch))
    return state, parallel.fetch(metrics)


@pytest.mark.slow
def test_gradient_accumulation_equals_the_big_batch():
    data = ToyData()
    batch = next(data.train_iterator("toy", data_dir=None, global_batch_size=32, image_size=8,
                                     seed=0))
    halves = [{k: v[:16] for k, v in batch.items()}, {k: v[16:] for k, v in batch.items()}]

    def factory(arch, **kw):
        return TinyCNN(dropout_rate=0.0, use_bn=False, **kw)

    base = toy_config("/unused", optimizer="sgd", weight_decay=1e-3, image_size=8, channels=1,
                      num_classes=4, dtype="float32", label_smoothing=0.0, ema_decay=0.5,
                      aux_weight=0.0, grad_clip=0.0)
    big, _ = _one_device_steps(base, factory, [batch])
    accumulated, _ = _one_device_steps(base.replace(grad_accum=2), factory, halves)
    assert int(accumulated.step) == 2 and int(big.step) == 1
    for a, b in zip(jax.tree.leaves(big.params), jax.tree.leaves(accumulated.params)):
        np.testing.assert_allclose(a, b, rtol=2e-5, atol=1e-7)
    # The EMA moves once per real update: after one update, decay min(0.5, 1/10) = 0.1.
    init, _ = _one_device_steps(base, factory, [])
    for e, p0, p1 in zip(jax.tree.leaves(accumulated.ema["params"]),
                         jax.tree.leaves(init.params), jax.tree.leaves(accumulated.params)):
        np.testing.assert_allclose(e, 0.1 * p0 + 0.9 * p1, rtol=1e-5, atol=1e-7)
    assert accumulated.eval_variables()["params"] is accumulated.ema["params"]


@pytest.mark.slow
def test_bfloat16_compute_keeps_float32_parameters_and_loss():
    config = plan_lib.resolve_config(
        get_config().replace(dtype="bfloat16", batch_size=8, lr=0.01), DIGITS,
        device_count=1, process_count=1).config
    rng = np.random.default_rng(0)
    batch = {"image": rng.normal(size=(8, 28, 28, 1)).astype(np.float32),
             "label": rng.integers(0, 10, 8).astype(np.int32)}
    batch["image"] = np.pad(batch["image"], ((0, 0), (2, 2), (2, 2), (0, 0)))
    state, metrics = _one_device_steps(config, None, [batch])
    assert {leaf.dtype for leaf in jax.tree.leaves(state.params)} == {jnp.dtype(jnp.float32)}
    assert metrics["loss"].dtype == np.float32 and np.isfinite(metrics["loss"])
    model = train_lib.build_model(config)
    assert model.dtype == jnp.bfloat16
    logits = model.apply({"params": state.params}, jnp.asarray(batch["image"]), train=False)
    assert logits.dtype == jnp.float32


def test_training_curves_leave_pyplot_alone(tmp_path):
    """The PNG of a run is drawn without switching pyplot's backend: a notebook that trains
    (whose backend is the inline one) still shows its own plots afterwards."""
    import matplotlib

    from train import metrics as metrics_lib

    writer = metrics_lib.MetricWriter(str(tmp_path), tensorboard=False)
    for step in (1, 2, 3, 4):
        writer.write(step, "train", {"loss": 2.0 / step, "accuracy": 0.2 * step, "lr": 0.1},
                     epoch=step / 2)
    writer.write(4, "eval", {"loss": 0.7, "top1": 0.8, "top5": 0.95}, epoch=2.0)
    writer.close()
    before = matplotlib.get_backend()
    matplotlib.use("svg")  # any backend but Agg, which plotting used to force
    try:
        path = metrics_lib.plot_curves(str(tmp_path), title="toy")
        assert matplotlib.get_backend() == "svg"
    finally:
        matplotlib.use(before)
    with open(path, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"


# ----------------------------------------------------------------------------------------------
# Real runs.
# ----------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_lenet5_learns_the_embedded_digits(tmp_path, capsys):
    """A short real run: LeNet-5, the real input pipeline, the embedded MNIST sample."""
    from train import evaluate as evaluate_lib
    from train import metrics as metrics_lib

    workdir = tmp_path / "lenet5"
    config = get_config().replace(epochs=2, workdir=str(workdir), log_every=20)
    result = train_lib.train_and_evaluate(config)
    out = capsys.readouterr()
    assert result.config.image_size == 32 and result.step == 2 * (4000 // 64)
    assert result.eval_metrics["count"] == 1000  # every test digit once
    assert result.eval_metrics["top1"] > 0.70, result.eval_metrics  # chance is 0.10
    final = out.out.strip().splitlines()[-1]
    assert final.startswith("Final test accuracy of lenet5") and "top-1" in final
    assert "top-5" not in final  # only shown with more than 10 classes
    assert "epoch   2/2" in out.out and "img/s" in out.out
    assert "img/s" in out.err  # the progress bar
    records = metrics_lib.read_metrics(str(workdir))
    assert {r["split"] for r in records} == {"train", "eval"}
    assert all(np.isfinite(r["loss"]) for r in records)
    assert (workdir / "curves.png").stat().st_size > 10_000
    events = [p.name for p in (workdir / "tensorboard").iterdir()]
    assert any(name.startswith("events.out.tfevents") for name in events)
    stored = json.loads((workdir / "config.json").read_text())
    assert stored["arch"] == "lenet5" and stored["image_size"] == 32

    evaluated = evaluate_lib.evaluate_workdir(str(workdir))
    assert evaluated["step"] == result.step
    assert evaluated["top1"] == pytest.approx(result.eval_metrics["top1"])


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["lenet5", "resnet18", "googlenet"])  # plain, BatchNorm, aux heads
def test_one_train_step_under_mock_data(arch):
    """One real train step of a family on (mocked) CIFAR-10 through the real input pipeline."""
    import tensorflow_datasets as tfds

    from train import input_pipeline

    if arch not in jaxcnn.list_models():
        pytest.skip(f"{arch} is not registered yet")
    with tfds.testing.mock_data(num_examples=16):
        info = input_pipeline.dataset_info("cifar10")
        plan = plan_lib.resolve_config(
            get_config().replace(arch=arch, dataset="cifar10", batch_size=4, image_size=32,
                                 warmup_epochs=0.0),  # a warm-up's first rate is 0
            info, device_count=1, process_count=1)
        c = plan.config
        batch = next(input_pipeline.train_iterator(
            "cifar10", data_dir=None, global_batch_size=4, image_size=32, seed=0))
    assert c.aux_weight == (0.3 if arch == "googlenet" else 0.0)
    parallel = parallel_lib.JitParallel([jax.devices()[0]])
    setup = train_lib.build(plan, parallel)  # what train_and_evaluate builds
    state = parallel.init_state(setup.init_fn)
    before = parallel.fetch(state)
    batch = parallel.put_batch(batch)
    # The step that train.main runs, compiled without LLVM's optimisations: it runs once here.
    step = setup.train_step.lower(state, batch).compile(
        compiler_options={"xla_backend_optimization_level": 0})
    state, metrics = step(state, batch)
    metrics, after = parallel.fetch(metrics), parallel.fetch(state)
    assert np.isfinite(metrics["loss"]) and metrics["loss"] > 0
    assert int(after.step) == 1
    moved = [not np.allclose(a, b) for a, b in zip(jax.tree.leaves(before.params),
                                                     jax.tree.leaves(after.params))]
    assert sum(moved) > len(moved) // 2
    if jax.tree.leaves(before.batch_stats):
        assert any(not np.allclose(a, b) for a, b in zip(jax.tree.leaves(before.batch_stats),
                                                         jax.tree.leaves(after.batch_stats)))
    if c.aux_weight:
        assert metrics["total_loss"] > metrics["loss"]  # the aux classifiers add their losses


def test_bench_reports_compile_time_throughput_and_memory(capsys):
    from train import bench

    rc = bench.main(["--arch", "lenet5", "--batch-size", "8", "--steps", "4", "--windows", "2",
                     "--warmup", "1", "--num-classes", "10"])
    report = json.loads(capsys.readouterr().out)
    assert rc == 0 and report["arch"] == "lenet5" and report["params"] == 61_706
    for part in ("train", "inference"):
        assert report[part]["compile_s"] > 0 and report[part]["images_per_sec"] > 0
        assert len(report[part]["windows_images_per_sec"]) == 2
    assert report["peak_memory_bytes"] > 0 and report["peak_memory_source"]
    assert bench.main(["--arch", "lenet9"]) == 2
    assert "lenet5" in capsys.readouterr().err
