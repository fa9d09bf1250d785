"""Checkpoints: keep/best policy, resume equivalence, and clear refusals that change nothing."""

from __future__ import annotations

import hashlib
import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from test_train import ToyData, tiny_factory, toy_config
from train import evaluate as evaluate_lib
from train import train as train_lib
from train.checkpoints import CheckpointError, Checkpoints


def _tree_digest(directory) -> dict[str, str]:
    """Every file under ``directory`` and a hash of its bytes."""
    digest = {}
    for root, _, files in os.walk(directory):
        for name in files:
            path = os.path.join(root, name)
            with open(path, "rb") as f:
                digest[os.path.relpath(path, directory)] = hashlib.sha256(f.read()).hexdigest()
    return digest


def _assert_trees_close(a, b, **tol):
    leaves_a, leaves_b = jax.tree.leaves(a), jax.tree.leaves(b)
    assert len(leaves_a) == len(leaves_b) > 0
    for x, y in zip(leaves_a, leaves_b):
        np.testing.assert_allclose(x, y, **tol)


def test_keeps_the_last_k_and_the_best(tmp_path):
    ckpts = Checkpoints(str(tmp_path / "checkpoints"), keep=2, async_save=False)
    top1 = {1: 0.5, 2: 0.9, 3: None, 4: 0.6, 5: 0.7}
    for step, acc in top1.items():
        state = {"w": jnp.full((3,), float(step))}
        ckpts.save(step, state, {"arch": "tiny", "step": step},
                   metrics=None if acc is None else {"eval_top1": acc})
    ckpts.wait()
    assert ckpts.all_steps() == [2, 4, 5]  # the last two, and the best (0.9 at step 2)
    assert ckpts.best_step() == 2 and ckpts.latest_step() == 5
    restored = ckpts.restore(2, {"w": jax.ShapeDtypeStruct((3,), jnp.float32)})
    np.testing.assert_array_equal(restored["w"], 2.0)
    assert ckpts.stored_config(4) == {"arch": "tiny", "step": 4}
    ckpts.close()
    # Orbax writes into a temporary directory and renames it when complete: a save that died
    # half-way leaves such a directory, which is never taken for a checkpoint.
    os.makedirs(tmp_path / "checkpoints" / "9.orbax-checkpoint-tmp-1234567" / "state")
    assert Checkpoints(str(tmp_path / "checkpoints"), keep=2).latest_step() == 5


class _InterruptedData(ToyData):
    """Raises KeyboardInterrupt (Ctrl-C) when asked for training batch number ``after``."""

    def __init__(self, after: int):
        super().__init__()
        self.after, self.served = after, 0

    def train_iterator(self, *args, **kwargs):
        for batch in super().train_iterator(*args, **kwargs):
            if self.served == self.after:
                raise KeyboardInterrupt
            self.served += 1
            yield batch


@pytest.mark.slow
def test_interrupted_and_resumed_run_matches_an_uninterrupted_one(tmp_path):
    # Dropout, accumulation and an EMA all carry state that a resume must restore exactly;
    # the data order must be re-created too (8 steps per epoch, the cut falls mid-epoch).
    options = dict(epochs=3, grad_accum=2, ema_decay=0.9, checkpoint_every=5)
    whole = train_lib.train_and_evaluate(toy_config(tmp_path / "whole", **options),
                                         data=ToyData(), model_factory=tiny_factory)
    assert whole.step == 24 and whole.resumed_from is None

    config = toy_config(tmp_path / "cut", **options)
    with pytest.raises(KeyboardInterrupt):
        train_lib.train_and_evaluate(config, data=_InterruptedData(after=13),
                                     model_factory=tiny_factory)
    saved = Checkpoints(str(tmp_path / "cut" / "checkpoints")).latest_step()
    assert 8 < saved < 16 and saved % 8 and saved % 2  # mid-epoch, mid-accumulation
    resumed = train_lib.train_and_evaluate(config, data=ToyData(), model_factory=tiny_factory)
    assert resumed.resumed_from == saved and resumed.step == 24
    _assert_trees_close(resumed.params, whole.params, rtol=1e-6, atol=1e-7)
    _assert_trees_close(resumed.batch_stats, whole.batch_stats, rtol=1e-6, atol=1e-7)
    assert resumed.eval_metrics["top1"] == whole.eval_metrics["top1"]
    # The resumed run's metrics continue the interrupted run's without doubling back.
    steps = [json.loads(line)["step"] for line in
             (tmp_path / "cut" / "metrics.jsonl").read_text().splitlines()
             if json.loads(line)["split"] == "train"]
    assert steps == sorted(steps) and steps[-1] == 24


@pytest.fixture(scope="module")
def trained_workdir(tmp_path_factory):
    """A finished one-epoch run of the TinyCNN under the name ``tiny_a``."""
    workdir = tmp_path_factory.mktemp("trained") / "run"
    result = train_lib.train_and_evaluate(toy_config(workdir, arch="tiny_a", epochs=1),
                                          data=ToyData(), model_factory=tiny_factory)
    return workdir, result


def _copy(workdir, tmp_path):
    target = tmp_path / "run"
    shutil.copytree(workdir, target)
    return target


def test_checkpoint_of_another_network_is_refused_and_left_intact(trained_workdir, tmp_path):
    workdir = _copy(trained_workdir[0], tmp_path)
    before = _tree_digest(workdir)
    with pytest.raises(CheckpointError) as err:
        train_lib.train_and_evaluate(toy_config(workdir, arch="tiny_b", epochs=2),
                                     data=ToyData(), model_factory=tiny_factory)
    message = str(err.value)
    assert "written by a different run" in message and "tiny_a" in message
    assert "pass --arch tiny_a" in message and "--workdir" in message
    assert "left untouched" in message
    assert _tree_digest(workdir) == before
    with pytest.raises(CheckpointError, match=r"num_classes: checkpoint 4, this run 6"):
        train_lib.train_and_evaluate(toy_config(workdir, arch="tiny_a", num_classes=6),
                                     data=ToyData(), model_factory=tiny_factory)
    assert _tree_digest(workdir) == before


@pytest.mark.parametrize("part", ["state", "config"])
def test_corrupt_checkpoint_is_refused_and_left_intact(trained_workdir, tmp_path, part):
    workdir = _copy(trained_workdir[0], tmp_path)
    latest = Checkpoints(str(workdir / "checkpoints")).latest_step()
    for root, _, files in os.walk(workdir / "checkpoints" / str(latest) / part):
        for name in files:
            with open(os.path.join(root, name), "wb") as f:
                f.write(b"\x00garbage\xff" * 3)
    before = _tree_digest(workdir)
    with pytest.raises(CheckpointError) as err:
        train_lib.train_and_evaluate(toy_config(workdir, arch="tiny_a", epochs=2),
                                     data=ToyData(), model_factory=tiny_factory)
    message = str(err.value)
    assert f"Cannot read the checkpoint {workdir / 'checkpoints' / str(latest)}" in message
    assert "Delete" in message or "deleting" in message
    assert "Nothing was deleted" in message
    assert _tree_digest(workdir) == before


def test_evaluate_rebuilds_the_network_from_the_stored_config(trained_workdir, tmp_path,
                                                              capsys):
    workdir, result = trained_workdir
    evaluated = evaluate_lib.evaluate_workdir(str(workdir), data=ToyData(),
                                              model_factory=tiny_factory)
    assert evaluated["arch"] == "tiny_a" and evaluated["step"] == result.step
    assert evaluated["images"] == 70
    assert evaluated["top1"] == pytest.approx(result.eval_metrics["top1"])
    assert evaluate_lib.main(["--workdir", str(tmp_path / "nothing")]) == 2
    assert "No checkpoints in" in capsys.readouterr().err


def test_evaluate_restores_a_run_with_frozen_layers_and_a_head_rate(tmp_path):
    """--freeze and --head-lr-multiplier shape the optimizer's state; evaluation rebuilds it."""
    workdir = tmp_path / "frozen"
    result = train_lib.train_and_evaluate(
        toy_config(workdir, freeze="until:conv", head_lr_multiplier=10.0, epochs=1),
        data=ToyData(), model_factory=tiny_factory)
    evaluated = evaluate_lib.evaluate_workdir(str(workdir), data=ToyData(),
                                              model_factory=tiny_factory)
    assert evaluated["step"] == result.step
    assert evaluated["top1"] == pytest.approx(result.eval_metrics["top1"])


# ----------------------------------------------------------------------------------------------
# Nothing silent (issue 13): another batch size, altered files, unreadable metrics.
# ----------------------------------------------------------------------------------------------
def test_another_batch_size_is_refused_on_resume(trained_workdir, tmp_path):
    # A step is one batch: at 16 the 8 saved steps would read as half an epoch.
    workdir = _copy(trained_workdir[0], tmp_path)
    before = _tree_digest(workdir)
    with pytest.raises(CheckpointError, match=r"batch_size: checkpoint 32, this run 16.*"
                                              r"--batch-size 32"):
        train_lib.train_and_evaluate(toy_config(workdir, arch="tiny_a", batch_size=16),
                                     data=ToyData(), model_factory=tiny_factory)
    assert _tree_digest(workdir) == before


def _flip_bytes(path):
    data = bytearray(path.read_bytes())
    for i in range(len(data) // 2, min(len(data), len(data) // 2 + 8)):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))


def test_an_altered_checkpoint_is_refused_on_resume_and_by_evaluate(trained_workdir,
                                                                     tmp_path, capsys):
    workdir = _copy(trained_workdir[0], tmp_path)
    state_files = sorted((workdir / "checkpoints" / "8" / "state").rglob("*"),
                         key=lambda p: p.stat().st_size if p.is_file() else -1)
    _flip_bytes(state_files[-1])  # the largest: the arrays' data, same size after
    before = _tree_digest(workdir)
    with pytest.raises(CheckpointError) as err:
        train_lib.train_and_evaluate(toy_config(workdir, arch="tiny_a", epochs=2),
                                     data=ToyData(), model_factory=tiny_factory)
    message = str(err.value)
    assert "was altered after it was written" in message and "changed" in message
    assert "Nothing was deleted" in message
    assert evaluate_lib.main(["--workdir", str(workdir)]) == 2
    assert "was altered after it was written" in capsys.readouterr().err
    assert _tree_digest(workdir) == before


def test_a_truncated_metrics_file_is_one_clear_error(trained_workdir, tmp_path, capsys):
    workdir = _copy(trained_workdir[0], tmp_path)
    metrics = workdir / "checkpoints" / "8" / "metrics" / "metrics"
    metrics.write_bytes(metrics.read_bytes()[:5])
    before = _tree_digest(workdir)
    with pytest.raises(CheckpointError, match=r"Cannot read .*metrics.*Nothing was deleted"):
        train_lib.train_and_evaluate(toy_config(workdir, arch="tiny_a", epochs=2),
                                     data=ToyData(), model_factory=tiny_factory)
    assert evaluate_lib.main(["--workdir", str(workdir)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: Cannot read") and err.count("\n") == 1
    assert _tree_digest(workdir) == before

