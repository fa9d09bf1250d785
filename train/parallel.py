"""The device layer: which devices a run uses and how values get onto them.

Data parallelism comes in two forms that compute the same thing:

* :class:`JitParallel` (``--parallel jit``, the default): one ``jax.jit`` program over a ``Mesh``
  of every device; the batch is sharded along the mesh's ``data`` axis, the state replicated.
  BatchNorm statistics are means over the whole (global) batch because the program is written
  for the global batch.
* :class:`PmapParallel` (``--parallel pmap``): ``jax.pmap`` with ``axis_name="batch"``; networks
  are built with ``axis_name="batch"`` so BatchNorm averages its statistics across replicas, and
  gradients and metrics are ``pmean``-ed.

Both place the state, the batches and the checkpoints the same way for the loop
(``init_state``, ``put_batch``, ``compile_train``, ``fetch``, ``to_checkpoint`` ...), so
``train.train`` never asks which one it has. :func:`initialize_distributed` joins the processes
of a multi-host run; :func:`check_divisible` says when a batch cannot be split over them.
"""

from __future__ import annotations

import os
from typing import Any, Callable

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from jaxcnn import conv

from train.configs.default import Config, ConfigError


def _env_int(name: str) -> int | None:
    value = os.environ.get(name)
    return int(value) if value not in (None, "") else None


def initialize_distributed(config: Config) -> bool:
    """Calls ``jax.distributed.initialize`` for multi-process runs; True if it did.

    Flags win over ``$JAX_COORDINATOR_ADDRESS``, ``$JAX_NUM_PROCESSES``, ``$JAX_PROCESS_ID``.
    Must run before anything touches a device.
    """
    coordinator = config.coordinator or os.environ.get("JAX_COORDINATOR_ADDRESS")
    num = config.num_processes if config.num_processes is not None else _env_int(
        "JAX_NUM_PROCESSES")
    pid = config.process_id if config.process_id is not None else _env_int("JAX_PROCESS_ID")
    if coordinator is None and num is None and pid is None:
        return False
    if coordinator is None or num is None or pid is None:
        raise ConfigError(
            "A multi-process run needs all three of --coordinator HOST:PORT, --num-processes N "
            "and --process-id I (or $JAX_COORDINATOR_ADDRESS, $JAX_NUM_PROCESSES, "
            f"$JAX_PROCESS_ID); got coordinator={coordinator!r}, num_processes={num!r}, "
            f"process_id={pid!r}.")
    if not 0 <= pid < num:
        raise ConfigError(f"--process-id must be in [0, {num}); got {pid}.")
    if jax.distributed.is_initialized():
        return True
    # CPU devices need a collectives implementation to talk across processes.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    try:
        jax.distributed.initialize(coordinator_address=coordinator, num_processes=num,
                                   process_id=pid)
    except RuntimeError as err:
        raise ConfigError(
            f"jax.distributed.initialize failed ({err}). It must run before any JAX "
            f"computation, and every process must reach the coordinator at {coordinator}."
        ) from err
    return True


def run_once(jitted: Callable[[], Any]) -> Any:
    """Compiles and runs a function of no arguments that runs once (the initialisation).

    On CPU, LLVM's optimisations take most of the compile time of an initialisation (its many
    random initialisers) and buy nothing for a single run: they are turned off for it.
    """
    options = {"xla_backend_optimization_level": 0} if jax.default_backend() == "cpu" else None
    return jitted.lower().compile(compiler_options=options)()


class JitParallel:
    """``jax.jit`` over a ``Mesh`` of all devices: batch sharded on ``data``, state replicated."""

    name = "jit"
    axis_name = None

    def __init__(self, devices: list[jax.Device] | None = None):
        self.devices = list(devices or jax.devices())
        self.mesh = Mesh(np.asarray(self.devices), ("data",))
        self.replicated = NamedSharding(self.mesh, P())
        self.data = NamedSharding(self.mesh, P("data"))

    @property
    def device_count(self) -> int:
        return len(self.devices)

    def init_state(self, init_fn: Callable[[], Any]) -> Any:
        return run_once(jax.jit(init_fn, out_shardings=self.replicated))

    def place(self, host_tree: Any) -> Any:
        """A state built on the host -> replicated on the devices, like :meth:`init_state`."""
        return jax.device_put(host_tree, self.replicated)

    def abstract_state(self, init_fn: Callable[[], Any]) -> Any:
        """Shapes, dtypes and the replicated sharding of the state, for restoring into."""
        shapes = jax.eval_shape(init_fn)
        return jax.tree.map(
            lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=self.replicated), shapes)

    def put_batch(self, batch: dict[str, np.ndarray]) -> dict[str, jax.Array]:
        """This process's share of a global batch -> one global array sharded over ``data``."""
        return {k: jax.make_array_from_process_local_data(self.data, np.asarray(v))
                for k, v in batch.items()}

    def compile_train(self, step_fn: Callable) -> Callable:
        return conv.jit(step_fn, in_shardings=(self.replicated, self.data),
                        out_shardings=(self.replicated, self.replicated), donate_argnums=(0,))

    def compile_eval(self, eval_fn: Callable) -> Callable:
        return conv.jit(eval_fn, inference=True, in_shardings=(self.replicated, self.data),
                        out_shardings=self.replicated)

    def fetch(self, tree: Any) -> Any:
        """Replicated device values -> NumPy (one copy, the local one)."""
        return jax.tree.map(lambda x: np.asarray(x.addressable_data(0)), tree)

    def to_checkpoint(self, state: Any) -> Any:
        return state

    def from_checkpoint(self, state: Any) -> Any:
        return state


class PmapParallel(JitParallel):
    """``jax.pmap`` with ``axis_name="batch"`` over this process's devices (all of them)."""

    name = "pmap"
    axis_name = "batch"

    def __init__(self, devices: list[jax.Device] | None = None):
        super().__init__(devices)
        self.local_devices = [d for d in self.devices if d.process_index == jax.process_index()]
        self.stacked = NamedSharding(Mesh(np.asarray(self.local_devices), ("devices",)),
                                     P("devices"))

    def _replicate(self, host_tree: Any) -> Any:
        n = len(self.local_devices)
        return jax.tree.map(
            lambda x: jax.device_put(np.stack([np.asarray(x)] * n), self.stacked), host_tree)

    def init_state(self, init_fn: Callable[[], Any]) -> Any:
        return self._replicate(jax.device_get(run_once(jax.jit(init_fn))))

    def place(self, host_tree: Any) -> Any:
        return self._replicate(jax.device_get(host_tree))

    def put_batch(self, batch: dict[str, np.ndarray]) -> dict[str, jax.Array]:
        n = len(self.local_devices)
        return {k: jax.device_put(np.asarray(v).reshape(n, -1, *v.shape[1:]), self.stacked)
                for k, v in batch.items()}

    def compile_train(self, step_fn: Callable) -> Callable:
        return conv.pmap(step_fn, axis_name=self.axis_name, donate_argnums=(0,))

    def compile_eval(self, eval_fn: Callable) -> Callable:
        return conv.pmap(eval_fn, inference=True, axis_name=self.axis_name)

    def fetch(self, tree: Any) -> Any:
        # Every replica holds the same value (pmean-ed); take this process's first.
        return jax.tree.map(lambda x: np.asarray(x.addressable_data(0))[0], tree)

    def to_checkpoint(self, state: Any) -> Any:
        """Stacked replicas -> one global array replicated over all devices (what jit uses)."""
        host = self.fetch(state)
        return jax.tree.map(
            lambda x: jax.make_array_from_callback(x.shape, self.replicated, lambda i: x[i]), host)

    def from_checkpoint(self, state: Any) -> Any:
        return self._replicate(jax.tree.map(lambda x: np.asarray(x.addressable_data(0)), state))


def make_parallel(name: str) -> JitParallel:
    return {"jit": JitParallel, "pmap": PmapParallel}[name]()


def check_divisible(batch_size: int, flag: str, device_count: int, process_count: int) -> None:
    """Raises :class:`ConfigError` unless ``batch_size`` splits evenly over the devices."""
    for count, what in ((device_count, f"{device_count} devices (jax.device_count())"),
                        (process_count, f"{process_count} processes")):
        if batch_size % count:
            lower = batch_size // count * count
            options = " or ".join(str(b) for b in (lower, lower + count) if b > 0)
            raise ConfigError(
                f"{flag} {batch_size} cannot be split evenly over the {what}: pass a multiple "
                f"of {count} such as {options}.")
