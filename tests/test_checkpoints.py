"""Checkpoints: keep/best policy, resume equivalence, and clear refusals that change nothing."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import with_root_on_path
from test_train import ToyData, tiny_factory, toy_config
from train import checkpoints as checkpoints_lib
from train import evaluate as evaluate_lib
from train import guard as guard_lib
from train import train as train_lib
from train.checkpoints import CheckpointError, Checkpoints
from train.configs.default import ConfigError
from train.guard import LOCK_FILE


def _tree_digest(directory) -> dict[str, str]:
    """Every file under ``directory`` and a hash of its bytes (but the lock, which records
    the last run that opened the workdir)."""
    digest = {}
    for root, _, files in os.walk(directory):
        for name in files:
            if name == LOCK_FILE:
                continue
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


def _refused_resume(workdir, error=CheckpointError, **changes) -> str:
    """Resumes the TinyCNN run ``tiny_a`` in ``workdir`` with ``changes``; asserts that it
    raises ``error`` and leaves the checkpoints as they were; returns the message."""
    before = _tree_digest(workdir / "checkpoints")
    with pytest.raises(error) as err:
        train_lib.train_and_evaluate(toy_config(workdir, **{"arch": "tiny_a", **changes}),
                                     data=ToyData(), model_factory=tiny_factory)
    assert _tree_digest(workdir / "checkpoints") == before
    return str(err.value)


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
# Nothing lost, nothing silent (issue 13): signals, divergence, shared workdirs, disk, digests.
# ----------------------------------------------------------------------------------------------
class _SignalledData(ToyData):
    """Sends ``signum`` to this process when asked for training batch number ``after``; with
    ``in_destructor`` the signal arrives inside a ``__del__``, as in TensorFlow's destructors,
    where an exception raised by a handler is printed and swallowed."""

    def __init__(self, after: int, signum: int, in_destructor: bool = False):
        super().__init__()
        self.after, self.signum, self.in_destructor, self.served = after, signum, in_destructor, 0

    def train_iterator(self, *args, **kwargs):
        signum = self.signum

        class _Destructor:
            def __del__(self):
                os.kill(os.getpid(), signum)

        for batch in super().train_iterator(*args, **kwargs):
            if self.served == self.after:
                if self.in_destructor:
                    _Destructor()  # dies at once: __del__ runs the handler
                else:
                    os.kill(os.getpid(), signum)
            self.served += 1
            yield batch


@pytest.mark.parametrize("signum,in_destructor", [(signal.SIGTERM, False),
                                                  (signal.SIGINT, True)])
def test_a_signal_saves_the_last_step_and_stops(tmp_path, capsys, signum, in_destructor):
    # One epoch is 8 steps; the signal arrives while batch 3 is fetched, and the loop saves the
    # step it has made before making the next (previously: SIGTERM saved nothing, and Ctrl-C
    # inside a destructor was swallowed, so the run went on to the end).
    workdir = tmp_path / "run"
    before = signal.getsignal(signal.SIGINT)  # (pytest-xdist's workers ignore SIGINT)
    with pytest.raises(guard_lib.Stopped) as err:
        train_lib.train_and_evaluate(toy_config(workdir, epochs=2),
                                     data=_SignalledData(3, signum, in_destructor),
                                     model_factory=tiny_factory)
    assert err.value.exit_code == 128 + signum and err.value.saved
    # The trainer fetches batches ahead of the step it runs: it stops at the step it has made.
    stopped = re.search(r"stopped at step (\d+), checkpoint saved", capsys.readouterr().out)
    step = int(stopped.group(1))
    assert 1 <= step <= 3
    ckpts = Checkpoints(str(workdir / "checkpoints"), read_only=True)
    assert ckpts.all_steps() == [step]  # that step, and no further training
    assert signal.getsignal(signal.SIGINT) is before  # handlers restored
    # That checkpoint carries no eval metrics: --best refuses rather than silently evaluating
    # the latest one.
    with pytest.raises(CheckpointError, match=rf"none is the best.*--step {step}"):
        evaluate_lib.evaluate_workdir(str(workdir), best=True, data=ToyData(),
                                      model_factory=tiny_factory)


def test_divergence_stops_before_saving_and_keeps_the_good_checkpoint(trained_workdir,
                                                                       tmp_path):
    # Nothing written, nothing rotated out (_refused_resume compares the checkpoints).
    message = _refused_resume(_copy(trained_workdir[0], tmp_path), guard_lib.Diverged,
                              epochs=3, lr=1e30)
    assert "training diverged at step" in message and "not finite" in message
    assert "last good checkpoint is step 8" in message and "--lr 1e+29" in message


def test_another_batch_size_is_refused_on_resume(trained_workdir, tmp_path):
    # A step is one batch: at 16 the 8 saved steps would read as half an epoch.
    message = _refused_resume(_copy(trained_workdir[0], tmp_path), batch_size=16)
    assert re.search(r"batch_size: checkpoint 32, this run 16.*--batch-size 32", message)


def test_a_second_writer_is_refused_and_readers_are_not(trained_workdir, tmp_path):
    workdir = _copy(trained_workdir[0], tmp_path)
    # Another process holds the lock; once it is killed (-9, no cleanup) the lock is free.
    holder = subprocess.Popen(
        [sys.executable, "-c", "import fcntl, os, sys, time; "
         "fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT); fcntl.flock(fd, fcntl.LOCK_EX); "
         "os.write(fd, b'{\"pid\": 1, \"host\": \"h\", \"started\": \"t\", \"command\": \"c\"}');"
         " print('locked', flush=True); time.sleep(60)", str(workdir / LOCK_FILE)],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(guard_lib.WorkdirBusy, match=r"in use by another training run"):
            train_lib.train_and_evaluate(toy_config(workdir, arch="tiny_a", epochs=2),
                                         data=ToyData(), model_factory=tiny_factory)
        evaluated = evaluate_lib.evaluate_workdir(str(workdir), data=ToyData(),
                                                  model_factory=tiny_factory)
        assert evaluated["step"] == 8
    finally:
        holder.kill()
        holder.wait()
    guard_lib.WorkdirLock(str(workdir)).acquire().release()  # the stale lock is free


def test_a_workdir_that_is_a_file_is_one_clear_error(tmp_path):
    path = tmp_path / "file"
    path.write_text("x")
    with pytest.raises(ConfigError, match=r"--workdir .*file is a file, not a directory"):
        guard_lib.WorkdirLock(str(path)).acquire()
    with pytest.raises(ConfigError, match=r"cannot be created: .*file is a file"):
        guard_lib.WorkdirLock(str(path / "run")).acquire()


@pytest.mark.slow  # ~7 s: four epochs
def test_a_failed_save_stops_the_run_at_once_and_keeps_the_earlier_ones(tmp_path, monkeypatch):
    """A full disk, simulated: the second save's write raises ENOSPC in the background."""
    workdir = tmp_path / "run"
    real, calls = checkpoints_lib.write_digest, []

    def full_disk(step_dir):
        calls.append(step_dir)
        if len(calls) > 1:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC),
                          os.path.join(step_dir, "SHA256SUMS"))
        real(step_dir)

    monkeypatch.setattr(checkpoints_lib, "write_digest", full_disk)
    with pytest.raises(CheckpointError) as err:
        train_lib.train_and_evaluate(toy_config(workdir, epochs=4),
                                     data=ToyData(), model_factory=tiny_factory)
    message = str(err.value)
    assert "\n" not in message
    assert "Could not save the checkpoint of step 16" in message
    assert "No space left on device (writing " in message and "SHA256SUMS" in message
    assert "step 8) is intact" in message
    # Surfaced within the epoch after the failed save, not at the end of the run.
    steps = [json.loads(line)["step"] for line in
             (workdir / "metrics.jsonl").read_text().splitlines()]
    assert max(steps) <= 24
    ckpts = Checkpoints(str(workdir / "checkpoints"), read_only=True)
    assert ckpts.all_steps() == [8]
    ckpts.verify(8)


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
    message = _refused_resume(workdir, epochs=2)
    assert "was altered after it was written" in message and "changed" in message
    assert "Nothing was deleted" in message
    before = _tree_digest(workdir)
    assert evaluate_lib.main(["--workdir", str(workdir)]) == 2
    assert "was altered after it was written" in capsys.readouterr().err
    assert _tree_digest(workdir) == before


def test_a_truncated_metrics_file_is_one_clear_error(trained_workdir, tmp_path, capsys):
    workdir = _copy(trained_workdir[0], tmp_path)
    metrics = workdir / "checkpoints" / "8" / "metrics" / "metrics"
    metrics.write_bytes(metrics.read_bytes()[:5])
    assert re.search(r"Cannot read .*metrics.*Nothing was deleted", _refused_resume(workdir))
    before = _tree_digest(workdir)
    assert evaluate_lib.main(["--workdir", str(workdir)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: Cannot read") and err.count("\n") == 1
    assert _tree_digest(workdir) == before


@pytest.mark.slow  # ~30 s: a real LeNet-5 run on the embedded digits, in its own process
def test_sigterm_to_the_command_line_saves_and_exits_143(tmp_path):
    """What a preempted VM does: SIGTERM to ``python -m train.main``, mid-epoch."""
    workdir = tmp_path / "run"
    env = with_root_on_path()
    run = subprocess.Popen([sys.executable, "-m", "train.main", "--arch", "lenet5", "--epochs",
                            "2", "--no-progress", "--workdir", str(workdir)],
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    try:
        lines = []
        for line in run.stdout:  # the first step has run: the loop is under way
            lines.append(line)
            if line.startswith("compiled and ran the first step"):
                run.send_signal(signal.SIGTERM)
                break
        out = "".join(lines) + run.stdout.read()
        assert run.wait(timeout=120) == 128 + signal.SIGTERM, out
    finally:
        run.kill()
        run.wait()
    stopped = re.search(r"SIGTERM: stopped at step (\d+), checkpoint saved", out)
    assert stopped, out
    ckpts = Checkpoints(str(workdir / "checkpoints"), read_only=True)
    assert ckpts.all_steps() == [int(stopped.group(1))]
    ckpts.verify(int(stopped.group(1)))
