"""Transfer learning in train/: --pretrained, --freeze and --head-lr-multiplier.

Fast: LeNet-5 (no BatchNorm) and the TinyCNN stand-in of test_train.py (with BatchNorm) on its
toy data, a few steps each. Converted checkpoints are made from randomly initialised networks
with ``jaxcnn.convert.save_converted``: the loading path is the one real weights take.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import traverse_util

import jaxcnn
from jaxcnn import convert
from tests.test_train import ToyData, tiny_factory_no_dropout, toy_config
from train import train as train_lib
from train.configs.default import ConfigError


def _flat(tree) -> dict[str, np.ndarray]:
    return {"/".join(k): np.asarray(v) for k, v in traverse_util.flatten_dict(tree).items()}


def _converted(tmp_path, arch="lenet5", num_classes=10, seed=7):
    """A converted-weights directory of a randomly initialised ``arch``: (dir, variables)."""
    model = jaxcnn.create_model(arch, num_classes=num_classes)
    x = jnp.zeros((1, *jaxcnn.model_info(arch).input_shape))
    variables = jax.jit(lambda: model.init(jax.random.key(seed), x, train=False))()
    variables = jax.tree.map(np.asarray, dict(variables))
    directory = convert.save_converted(tmp_path / f"{arch}_converted", variables, arch=arch,
                                       source="random init", num_classes=num_classes)
    return str(directory), variables


def _run(tmp_path, name="run", **changes):
    lines = []
    config = toy_config(tmp_path / name, **{"arch": "lenet5", "epochs": 1, "max_steps": 3,
                                            **changes})
    result = train_lib.train_and_evaluate(config, data=ToyData(), print_fn=lines.append)
    return result, "\n".join(lines)


@pytest.mark.slow
def test_converted_checkpoint_loads_with_only_the_head_new(tmp_path):
    directory, pretrained = _converted(tmp_path)
    result, log = _run(tmp_path, pretrained=directory, freeze="backbone")
    assert result.config.num_classes == 4  # the toy data's, not the checkpoint's 10
    assert ("left at their initial value (the new classifier): params/head/bias, "
            "params/head/kernel") in log
    assert "frozen (--freeze backbone): conv1, conv2, fc1, fc2" in log
    old, new = _flat(pretrained["params"]), _flat(result.params)
    assert new["head/kernel"].shape == (84, 4) and old["head/kernel"].shape == (84, 10)
    for name in old:
        if not name.startswith("head/"):
            np.testing.assert_array_equal(new[name], old[name], err_msg=name)  # bit-identical


@pytest.mark.slow
def test_pretrained_is_ignored_when_resuming(tmp_path):
    directory, _ = _converted(tmp_path)
    first, _ = _run(tmp_path, name="resume", max_steps=2)
    second, log = _run(tmp_path, name="resume", max_steps=4, pretrained=directory)
    assert second.resumed_from == 2 and "is not used: the run resumes" in log
    assert "left at their initial value" not in log


def test_mismatched_arch_is_refused_clearly(tmp_path):
    directory, _ = _converted(tmp_path, arch="lenet5")
    with pytest.raises(ConfigError, match=r"holds weights of lenet5, not of --arch "
                                          r"lenet5_1998: pass --arch lenet5"):
        _run(tmp_path, arch="lenet5_1998", pretrained=directory)
    with pytest.raises(ConfigError, match="no such file or directory"):
        _run(tmp_path, pretrained=str(tmp_path / "missing"))


def test_freeze_until_names_the_layers_in_call_order():
    model = jaxcnn.create_model("lenet5", num_classes=10)
    config = train_lib.Config(arch="lenet5", image_size=32, channels=1)
    order = train_lib.layer_order(model, config)
    assert order == ["conv1", "conv2", "fc1", "fc2", "head"]
    assert train_lib.frozen_layers("until:conv2", order) == {"conv1", "conv2"}
    assert train_lib.frozen_layers("backbone", order) == {"conv1", "conv2", "fc1", "fc2"}
    assert train_lib.frozen_layers("none", order) == set()
    with pytest.raises(ConfigError, match=r"no top-level layer 'conv3'.*Did you mean conv2 or "
                                          r"conv1\?.*conv1, conv2, fc1, fc2, head"):
        train_lib.frozen_layers("until:conv3", order)
    with pytest.raises(ConfigError, match="none, backbone or until:LAYER"):
        config.replace(freeze="head").validate()


def test_freeze_until_layer_trains_exactly_the_layers_after_it(tmp_path):
    directory, pretrained = _converted(tmp_path, num_classes=4)
    result, _ = _run(tmp_path, pretrained=directory, freeze="until:conv2", weight_decay=0.1)
    old, new = _flat(pretrained["params"]), _flat(result.params)
    for name in old:
        same = np.array_equal(new[name], old[name])
        assert same == name.startswith(("conv1/", "conv2/")), name


def _steps(freeze: str, optimizer: str, n: int = 3):
    """``n`` train steps of TinyCNN (conv, bn, head) with --freeze: (before, after) states."""
    data = ToyData()
    config = toy_config("unused", freeze=freeze, optimizer=optimizer, weight_decay=0.5,
                        lr=0.1, batch_size=32)
    plan = train_lib.resolve_config(config, data.info, model_factory=tiny_factory_no_dropout)
    c = plan.config
    model = train_lib.build_model(c, model_factory=tiny_factory_no_dropout)
    order = train_lib.layer_order(model, c)
    assert order == ["conv", "bn", "head"]
    frozen = train_lib.frozen_layers(c.freeze, order)
    schedule = optax.constant_schedule(c.lr)
    tx = train_lib.create_optimizer(c, schedule, train_lib.make_param_labels(frozen, "head"))
    state = jax.jit(train_lib.make_init_fn(model, tx, c))()
    before = jax.device_get(state)
    step = jax.jit(train_lib.make_train_step(model, tx, schedule, c, frozen=frozen))
    batches = data.train_iterator("toy", data_dir=None, global_batch_size=32,
                                  image_size=c.image_size, seed=0)
    for _ in range(n):
        state, _ = step(state, next(batches))
    return before, jax.device_get(state)


@pytest.mark.parametrize("optimizer", ["nesterov", "adamw"])
def test_frozen_params_and_batchnorm_statistics_stay_bit_identical(optimizer):
    before, after = _steps("backbone", optimizer)
    b, a = _flat(before.params), _flat(after.params)
    for name in ("conv/kernel", "conv/bias", "bn/scale", "bn/bias"):
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)  # weight decay too
    assert not np.array_equal(a["head/kernel"], b["head/kernel"])
    for name, value in _flat(after.batch_stats).items():
        np.testing.assert_array_equal(value, _flat(before.batch_stats)[name], err_msg=name)
    # Without freezing, the same steps do move them: the check above means something.
    before, after = _steps("none", optimizer)
    assert not np.array_equal(after.params["conv"]["kernel"], before.params["conv"]["kernel"])
    assert not np.array_equal(after.batch_stats["bn"]["mean"], before.batch_stats["bn"]["mean"])


def test_freeze_until_bn_keeps_conv_and_bn_and_trains_the_head():
    before, after = _steps("until:bn", "nesterov")
    np.testing.assert_array_equal(after.params["conv"]["kernel"], before.params["conv"]["kernel"])
    np.testing.assert_array_equal(after.batch_stats["bn"]["var"], before.batch_stats["bn"]["var"])
    assert not np.array_equal(after.params["head"]["kernel"], before.params["head"]["kernel"])


def test_head_lr_multiplier_scales_only_the_head_updates():
    config = toy_config("unused", optimizer="sgd", momentum=0.0, weight_decay=0.0,
                        head_lr_multiplier=10.0)
    params = {"conv": {"kernel": jnp.ones((3, 3))}, "head": {"kernel": jnp.ones((3, 3))}}
    grads = jax.tree.map(jnp.ones_like, params)
    labels = train_lib.make_param_labels(frozenset(), "head")
    tx = train_lib.create_optimizer(config, optax.constant_schedule(0.01), labels)
    updates, _ = tx.update(grads, tx.init(params), params)
    np.testing.assert_allclose(updates["conv"]["kernel"], -0.01)
    np.testing.assert_allclose(updates["head"]["kernel"], -0.1)
    with pytest.raises(ConfigError, match="--head-lr-multiplier must be positive"):
        config.replace(head_lr_multiplier=0.0).validate()


@pytest.mark.slow
def test_a_later_stage_starts_from_an_earlier_runs_workdir(tmp_path):
    # The two-stage recipe: train (here from scratch), then start a new run from that run's
    # weights with other freeze settings. Same classes: the head is carried over too.
    first, _ = _run(tmp_path, name="stage1", max_steps=3)
    second, log = _run(tmp_path, name="stage2", max_steps=2, freeze="backbone",
                       pretrained=str(tmp_path / "stage1"))
    assert second.resumed_from is None
    assert f"loaded lenet5 weights of step 3 of the run in {tmp_path / 'stage1'}" in log
    assert "left at their initial value (the new classifier): nothing" in log
    old, new = _flat(first.params), _flat(second.params)
    for name in old:
        if name.startswith("head/"):  # loaded, then trained further
            assert not np.array_equal(new[name], old[name]), name
        else:  # loaded and frozen
            np.testing.assert_array_equal(new[name], old[name], err_msg=name)


def test_resuming_with_other_freeze_settings_is_refused_with_the_way_forward(tmp_path):
    from train.checkpoints import CheckpointError

    _run(tmp_path, name="run", max_steps=2)
    before = sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir())
    with pytest.raises(CheckpointError, match=r"freeze: checkpoint 'none', this run 'backbone'"
                                              r".*pass --freeze none.*--pretrained "):
        _run(tmp_path, name="run", max_steps=4, freeze="backbone")
    with pytest.raises(CheckpointError, match=r"pass --head-lr-multiplier 1.0"):
        _run(tmp_path, name="run", max_steps=4, head_lr_multiplier=10.0)
    assert sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir()) == before


@pytest.mark.parity
def test_a_weights_file_is_converted_on_the_fly(tmp_path):
    # A torchvision state dict saved as safetensors, passed straight to --pretrained.
    tv = pytest.importorskip("torchvision")
    safetensors_numpy = pytest.importorskip("safetensors.numpy")
    state = {k: v.numpy() for k, v in tv.models.squeezenet1_1(weights=None).state_dict().items()}
    path = tmp_path / "squeezenet1_1.safetensors"
    safetensors_numpy.save_file(state, str(path))

    result, log = _run(tmp_path, arch="squeezenet1_1", pretrained=str(path), freeze="backbone",
                       max_steps=2)
    assert f"loaded squeezenet1_1 weights converted from {path}" in log
    loaded = _flat(jaxcnn.convert.load_pretrained("squeezenet1_1", path)["params"])
    trained = _flat(result.params)
    kept = [n for n in loaded if loaded[n].shape == trained[n].shape]
    assert len(kept) == len(loaded) - 2  # all but the 1000-class classifier's kernel and bias
    for name in kept:
        np.testing.assert_array_equal(trained[name], loaded[name], err_msg=name)
