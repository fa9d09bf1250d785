"""Data parallelism on simulated CPU devices, and a real two-process run over gloo.

Each case runs in subprocesses (this file is also their script), because the device count
(``XLA_FLAGS=--xla_force_host_platform_device_count``) and ``jax.distributed`` must be set up
before JAX starts, and must not leak into other tests.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

from conftest import ROOT, with_root_on_path


def _run_worker(args: list[str], devices: int, timeout: int = 400) -> subprocess.Popen:
    env = with_root_on_path()  # the script's own folder, tests/, comes first as for any script
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
    env["JAX_PLATFORMS"] = "cpu"
    for name in ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID"):
        env.pop(name, None)
    return subprocess.Popen([sys.executable, os.path.abspath(__file__), *args], cwd=ROOT,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _finish(proc: subprocess.Popen, timeout: int = 400) -> str:
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
        pytest.fail(f"worker timed out; output:\n{out[-4000:]}")
    assert proc.returncode == 0, f"worker failed (exit {proc.returncode}):\n{out[-6000:]}"
    return out


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


# ----------------------------------------------------------------------------------------------
# What the subprocesses run.
# ----------------------------------------------------------------------------------------------
def _one_step_each_way(out_path: str) -> None:
    """One train step jit-sharded over 8 devices, pmap-ed over 8, and on a single device."""
    import jax

    from test_train import TinyCNN, ToyData, toy_config
    from train import parallel as parallel_lib
    from train import plan as plan_lib
    from train import train as train_lib
    from train.configs.default import ConfigError

    assert jax.device_count() == 8
    data = ToyData()

    def factory(arch, **kw):
        # Dropout masks depend on how the batch is split (per-replica keys under pmap), so
        # the three ways are compared without it; BatchNorm is what must agree.
        return TinyCNN(dropout_rate=0.0, **kw)

    plan = plan_lib.resolve_config(toy_config("/unused", label_smoothing=0.1, weight_decay=1e-3,
                                              ema_decay=0.9),
                                   data.info, model_factory=factory)
    batch = next(data.train_iterator("toy", data_dir=None, global_batch_size=32, image_size=8,
                                     seed=0))
    results = {}
    for name, parallel in (("single", parallel_lib.JitParallel([jax.devices()[0]])),
                           ("jit", parallel_lib.JitParallel()),
                           ("pmap", parallel_lib.PmapParallel())):
        setup = train_lib.build(plan, parallel, model_factory=factory)
        state = parallel.init_state(setup.init_fn)
        state, metrics = setup.train_step(state, parallel.put_batch(batch))
        if name == "jit":
            sharding = state.params["conv"]["kernel"].sharding
            assert sharding.is_fully_replicated and len(sharding.device_set) == 8
        host = parallel.fetch({"params": state.params, "batch_stats": state.batch_stats,
                               "ema": state.ema, "metrics": metrics})
        results[name] = jax.tree.map(lambda x: np.asarray(x).tolist(), host)
    try:
        train_lib.train_and_evaluate(toy_config("/unused", batch_size=30), data=data,
                                     model_factory=factory)
        results["error"] = None
    except ConfigError as err:
        results["error"] = str(err)
    with open(out_path, "w") as f:
        json.dump(results, f)


def _train_few_steps(out_path: str, workdir: str, process_id: int, num_processes: int,
                     port: int) -> None:
    """A short run with jit and with pmap; writes checksums of the final weights."""
    import jax

    from test_train import ToyData, tiny_factory_no_dropout, toy_config
    from train import train as train_lib

    results = {}
    for parallel in ("jit", "pmap"):
        config = toy_config(os.path.join(workdir, parallel), parallel=parallel, epochs=1,
                            max_steps=6, log_every=2, weight_decay=1e-3)
        if num_processes > 1:
            config = config.replace(coordinator=f"localhost:{port}",
                                    num_processes=num_processes, process_id=process_id)
        result = train_lib.train_and_evaluate(config, data=ToyData(),
                                              model_factory=tiny_factory_no_dropout)
        leaves = [np.asarray(x, np.float64) for x in
                  jax.tree.leaves((result.params, result.batch_stats))]
        results[parallel] = {
            "abs_sum": float(sum(np.abs(x).sum() for x in leaves)),
            "weighted": float(sum((x.ravel() * np.arange(1, x.size + 1)).sum() for x in leaves)),
            "step": result.step, "top1": result.eval_metrics["top1"],
            "count": result.eval_metrics["count"], "devices": jax.device_count(),
            "processes": jax.process_count(),
        }
    with open(out_path, "w") as f:
        json.dump(results, f)


def _preempted(out_path: str, workdir: str, process_id: int, port: int) -> None:
    """Two processes train; process 1 alone gets SIGTERM (a preempted host) at its batch 3.
    Writes how the run ended and the checkpoints this process sees."""
    import signal
    import time

    from test_train import ToyData, tiny_factory_no_dropout, toy_config
    from train import guard as guard_lib
    from train import train as train_lib

    class PreemptedData(ToyData):
        def train_iterator(self, *args, process_index=0, **kwargs):
            batches = super().train_iterator(*args, process_index=process_index, **kwargs)
            for served, batch in enumerate(batches):
                if process_index == 1 and served == 3:
                    os.kill(os.getpid(), signal.SIGTERM)
                if process_index == 1 and served >= 3:
                    # The notice reaches the other host asynchronously; slow steps (both hosts
                    # wait on each other's gradients) leave it time to arrive before the run ends.
                    time.sleep(0.2)
                yield batch

    config = toy_config(workdir, epochs=3, coordinator=f"localhost:{port}", num_processes=2,
                        process_id=process_id)
    try:
        train_lib.train_and_evaluate(config, data=PreemptedData(),
                                     model_factory=tiny_factory_no_dropout)
        ended = {"exit_code": 0}
    except guard_lib.Stopped as stopped:
        ended = {"exit_code": stopped.exit_code, "saved": stopped.saved}
    ended["checkpoints"] = sorted(int(n) for n in os.listdir(os.path.join(workdir,
                                                                          "checkpoints"))
                                  if n.isdigit())
    with open(out_path, "w") as f:
        json.dump(ended, f)


# ----------------------------------------------------------------------------------------------
# The tests.
# ----------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_jit_pmap_and_single_device_take_the_same_step(tmp_path):
    out = tmp_path / "step.json"
    _finish(_run_worker(["one_step", str(out)], devices=8))
    results = json.loads(out.read_text())
    single = results["single"]
    for name in ("jit", "pmap"):
        other = results[name]
        for key in ("params", "batch_stats", "ema", "metrics"):
            for a, b in zip(_leaves(single[key]), _leaves(other[key])):
                np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6, err_msg=f"{name} {key}")
    # The step moved the BatchNorm statistics away from their initial values (global batch).
    assert any(np.any(np.asarray(x) != 0) for x in _leaves(single["batch_stats"]))
    assert results["error"] and "--batch-size 30 cannot be split evenly over the 8 devices" \
        in results["error"]


def _leaves(tree):
    if isinstance(tree, dict):
        return [leaf for key in sorted(tree) for leaf in _leaves(tree[key])]
    return [np.asarray(tree, np.float64)]


@pytest.mark.slow
def test_two_processes_agree_with_one_process(tmp_path):
    """2 processes x 2 devices (gloo) against 1 process x 4 devices, same global batches."""
    port = _free_port()
    workers = [
        _run_worker(["train", str(tmp_path / f"multi_{i}.json"), str(tmp_path / "multi"), str(i),
                     "2", str(port)], devices=2)
        for i in range(2)
    ]
    single = _run_worker(["train", str(tmp_path / "single.json"), str(tmp_path / "single"), "0",
                          "1", "0"], devices=4)
    for proc in workers:
        _finish(proc)
    _finish(single)
    reference = json.loads((tmp_path / "single.json").read_text())
    for i in range(2):
        multi = json.loads((tmp_path / f"multi_{i}.json").read_text())
        for parallel in ("jit", "pmap"):
            a, b = multi[parallel], reference[parallel]
            assert (a["devices"], a["processes"]) == (4, 2)
            assert (b["devices"], b["processes"]) == (4, 1)
            assert a["step"] == b["step"] == 6 and a["count"] == b["count"] == 70
            assert a["abs_sum"] == pytest.approx(b["abs_sum"], rel=1e-5)
            assert a["weighted"] == pytest.approx(b["weighted"], rel=1e-5)
            assert a["top1"] == pytest.approx(b["top1"])
    # Only process 0 logs; both took part in saving the same checkpoints.
    assert (tmp_path / "multi" / "jit" / "metrics.jsonl").exists()
    assert sorted(os.listdir(tmp_path / "multi" / "jit" / "checkpoints")) == \
        sorted(os.listdir(tmp_path / "single" / "jit" / "checkpoints"))


@pytest.mark.slow
def test_sigterm_on_one_host_saves_the_same_step_on_every_host(tmp_path):
    """JAX's preemption sync point: the host that got SIGTERM and the one that did not stop
    at the same step and save it together (a collective save on different steps hangs)."""
    port = _free_port()
    workers = [_run_worker(["preempted", str(tmp_path / f"{i}.json"), str(tmp_path / "run"),
                            str(i), str(port)], devices=1) for i in range(2)]
    for proc in workers:
        _finish(proc)
    ended = [json.loads((tmp_path / f"{i}.json").read_text()) for i in range(2)]
    assert ended[0] == ended[1]
    assert ended[0]["exit_code"] == 128 + 15 and ended[0]["saved"]
    # The hosts agree on the stop step asynchronously (JAX's coordination service), so on a busy
    # machine it can fall after the end of the first epoch (8 steps of 32 of 256 examples): the
    # epoch's own checkpoint then precedes it. The run stopped before its 24 steps were done.
    *epoch_ends, stop = ended[0]["checkpoints"]
    assert stop < 24 and all(step % 8 == 0 and step < stop for step in epoch_ends)


if __name__ == "__main__":
    command, *rest = sys.argv[1:]
    if command == "one_step":
        _one_step_each_way(rest[0])
    elif command == "train":
        out_path, workdir, pid, nproc, port = rest
        _train_few_steps(out_path, workdir, int(pid), int(nproc), int(port))
    elif command == "preempted":
        out_path, workdir, pid, port = rest
        _preempted(out_path, workdir, int(pid), int(port))
    else:
        raise SystemExit(f"unknown worker command {command!r}")
