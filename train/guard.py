"""What keeps a training run's work safe: one writer per workdir, a clean stop, finite weights.

The loop in ``train.train`` calls these between steps; each piece answers one way of losing work:

* :class:`WorkdirLock`: two trainers writing one workdir overwrite each other's checkpoints, and
  the first one's printed result then belongs to files that are gone. The run holds an
  exclusive ``fcntl.flock`` on ``WORKDIR/.lock``; the kernel releases it when the process ends,
  however it ends, so a killed run leaves no stale lock behind. A second trainer is refused
  with a message naming the holder. Readers (``train.evaluate``, ``--pretrained WORKDIR``)
  take no lock.
* :class:`StopSignals`: SIGTERM is what a preempted cloud VM or TPU slice gets, with seconds to
  spare; Ctrl-C is SIGINT. Either one only sets a flag, which the loop reads between steps: it
  saves the state of the last finished step and stops (:class:`Stopped`; exit status 128 +
  the signal's number). A flag, not an exception, because Python raises ``KeyboardInterrupt``
  wherever the main thread happens to be, and inside a destructor (TensorFlow runs many) the
  exception is printed and swallowed, so the run went on. A second signal quits at once
  without saving (the checkpoints already written are complete either way). Across
  processes every one must save at the same step, or the collective save hangs: there JAX's
  preemption service (started by ``jax.distributed.initialize``) catches SIGTERM on any host
  and :func:`jax.experimental.multihost_utils.reached_preemption_sync_point` names the step
  at which all of them stop; Ctrl-C is passed to it as a SIGTERM.
* :func:`non_finite` and :func:`all_finite`: a learning rate too high for the network trains
  to NaN, and a NaN checkpoint would rotate the good ones out. The metrics the loop fetches
  anyway are checked (free), and the state before every save (one reduction on the device);
  :class:`Diverged` stops the run before anything non-finite is written and gives the command
  that resumes from the last good checkpoint at a lower learning rate.
"""

from __future__ import annotations

import datetime
import json
import os
import shlex
import signal
import socket
import sys
import threading
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from train.configs.default import Config, ConfigError

try:
    import fcntl
except ImportError:  # Not POSIX: no workdir lock (concurrent runs are not detected).
    fcntl = None

LOCK_FILE = ".lock"
SIGNAL_NAMES = {signal.SIGINT: "Ctrl-C (SIGINT)", signal.SIGTERM: "SIGTERM"}


# --------------------------------------------------------------------------------------------
# One writer per workdir.
# --------------------------------------------------------------------------------------------
class WorkdirBusy(ConfigError):
    """Another training run holds the workdir's lock."""


def make_workdir(workdir: str) -> None:
    """Creates ``workdir``; :class:`ConfigError` in one line when that cannot be done."""
    if os.path.exists(workdir) and not os.path.isdir(workdir):
        raise ConfigError(f"--workdir {workdir} is a file, not a directory: pass a directory "
                          f"for the run's checkpoints and logs (it is created if missing).")
    try:
        os.makedirs(workdir, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        blocker = workdir
        while blocker and not os.path.exists(blocker):
            blocker = os.path.dirname(blocker)
        raise ConfigError(f"--workdir {workdir} cannot be created: {blocker} is a file, not a "
                          f"directory. Pass a path under a directory.") from None
    except OSError as err:
        raise ConfigError(f"--workdir {workdir} cannot be created: {err.strerror} "
                          f"({err.filename}). Pass a directory you can write to.") from None


class WorkdirLock:
    """An exclusive lock on ``WORKDIR/.lock`` for as long as a run writes the workdir."""

    def __init__(self, workdir: str):
        self.workdir = workdir
        self.path = os.path.join(workdir, LOCK_FILE)
        self._fd: int | None = None

    def acquire(self) -> "WorkdirLock":
        """Takes the lock, or raises :class:`WorkdirBusy` naming the run that holds it."""
        make_workdir(self.workdir)
        if fcntl is None:
            return self
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = _read_holder(fd)
            os.close(fd)
            raise WorkdirBusy(
                f"--workdir {self.workdir} is in use by another training run ({holder}). Two "
                f"runs writing one workdir overwrite each other's checkpoints: wait for that "
                f"run to end (or stop it), or pass another --workdir. Reading it meanwhile is "
                f"fine (python -m train.evaluate --workdir {self.workdir}).") from None
        record = {"pid": os.getpid(), "host": socket.gethostname(),
                  "started": datetime.datetime.now().isoformat(timespec="seconds"),
                  "command": shlex.join(["python", *sys.orig_argv[1:]])}
        os.ftruncate(fd, 0)
        os.write(fd, (json.dumps(record) + "\n").encode())
        self._fd = fd
        return self

    def release(self) -> None:
        """Releases the lock (idempotent). The file stays: removing it would let a third run
        lock a new file while a second one waits on the old."""
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None


def _read_holder(fd: int) -> str:
    try:
        record = json.loads(os.pread(fd, 4096, 0).decode())
        return (f"pid {record['pid']} on {record['host']}, started {record['started']}: "
                f"{record['command']}")
    except (OSError, ValueError, KeyError, TypeError):
        return "its description in .lock is unreadable"


# --------------------------------------------------------------------------------------------
# Signals: stop between steps.
# --------------------------------------------------------------------------------------------
class Stopped(KeyboardInterrupt):
    """The run stopped on a signal (after saving, unless ``saved`` is False).

    A ``KeyboardInterrupt``, so that callers that stop on Ctrl-C stop on it too;
    ``exit_code`` is the shell's convention for a signal: 128 + its number.
    """

    def __init__(self, signum: int, saved: bool):
        super().__init__(SIGNAL_NAMES.get(signum, f"signal {signum}"))
        self.signum, self.saved = signum, saved
        self.exit_code = 128 + signum


class StopSignals:
    """SIGINT and SIGTERM as a request to stop at the next step boundary (see the module)."""

    def __init__(self):
        self.signum: int | None = None  # the first signal received
        self._previous: dict[int, Any] = {}
        self._multi = jax.process_count() > 1

    def install(self) -> "StopSignals":
        """Installs the handlers (only the main thread can; elsewhere signals act as before)."""
        if threading.current_thread() is not threading.main_thread():
            return self
        if self._multi:
            # SIGTERM belongs to JAX's preemption notifier (a C++ handler that Python does not
            # see); Ctrl-C is handed to it so that all processes agree on the step.
            self._previous[signal.SIGINT] = signal.signal(signal.SIGINT, self._forward)
        else:
            for signum in (signal.SIGINT, signal.SIGTERM):
                self._previous[signum] = signal.signal(signum, self._request)
        return self

    def uninstall(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous = {}

    def _request(self, signum: int, frame: Any) -> None:
        self.signum = signum
        for other in self._previous:
            signal.signal(other, self._force)
        # os.write: the handler may run in the middle of a print to the same stream.
        os.write(2, f"\n{SIGNAL_NAMES[signum]}: stopping after this step to save a checkpoint "
                    f"(press Ctrl-C again to quit at once without saving)\n".encode())

    def _force(self, signum: int, frame: Any) -> None:
        self.uninstall()
        os.write(2, f"\n{SIGNAL_NAMES[signum]} again: quitting without saving (the checkpoints "
                    f"already written are complete)\n".encode())
        raise Stopped(signum, saved=False)

    def _forward(self, signum: int, frame: Any) -> None:
        signal.signal(signal.SIGINT, self._force)
        os.write(2, b"\nCtrl-C: every process stops at the next step they all reach, after "
                    b"saving a checkpoint (press Ctrl-C again to quit at once without saving)\n")
        os.kill(os.getpid(), signal.SIGTERM)

    def should_stop(self, step: int) -> bool:
        """Whether to save and stop now, after ``step`` steps; call it at every step (all
        processes, with the same steps)."""
        if not self._multi:
            return self.signum is not None
        from jax.experimental import multihost_utils

        try:
            reached = multihost_utils.reached_preemption_sync_point(step)
        except RuntimeError:  # jax_enable_preemption_service is off: signals act as before
            return False
        if reached:
            self.signum = signal.SIGTERM
        return reached


# --------------------------------------------------------------------------------------------
# Divergence.
# --------------------------------------------------------------------------------------------
class Diverged(RuntimeError):
    """Training produced non-finite numbers; nothing non-finite was saved."""


def non_finite(values: dict[str, Any]) -> list[str]:
    """The names in ``values`` (fetched metrics, any names) whose numbers are not all finite."""
    bad = []
    for name, value in values.items():
        array = np.asarray(value)
        if np.issubdtype(array.dtype, np.inexact) and not np.isfinite(array).all():
            bad.append(name)
    return bad


@jax.jit
def all_finite(tree: Any) -> jax.Array:
    """True when every floating-point number of ``tree`` is finite (one reduction on device)."""
    checks = [jnp.isfinite(x).all() for x in jax.tree.leaves(tree)
              if jnp.issubdtype(x.dtype, jnp.inexact)]
    return jnp.stack(checks).all() if checks else jnp.asarray(True)


def describe_values(values: dict[str, Any], names: list[str]) -> str:
    """``loss nan, grad_norm inf``: the last value of each named metric."""
    return ", ".join(f"{n} {np.ravel(np.asarray(values[n]))[-1]:g}" for n in names)


class RunGuard:
    """The safety of one training run: its workdir lock, its signals, its divergence checks.

    ``config`` is the run as asked for (its flags, with the workdir filled in: the recovery
    advice repeats them), ``lr`` the learning rate it resolved to. Only the process that writes the logs (``lock``)
    takes the workdir's lock: the processes of one multi-host run share it.
    """

    def __init__(self, config: Config, *, lr: float, lock: bool = True):
        self.config, self.lr = config, lr
        self.lock = WorkdirLock(config.workdir).acquire() if lock else None
        self.signals = StopSignals().install()

    def close(self) -> None:
        self.signals.uninstall()
        if self.lock is not None:
            self.lock.release()

    def should_stop(self, step: int) -> bool:
        return self.signals.should_stop(step)

    def stopped(self, saved: bool) -> Stopped:
        return Stopped(self.signals.signum or signal.SIGINT, saved=saved)

    def check_metrics(self, step: int, values: dict[str, Any], last_good: int | None,
                      directory: str) -> None:
        """Raises :class:`Diverged` if a fetched metric is not finite."""
        bad = non_finite(values)
        if bad:
            raise self._diverged(step, f"the training metrics are not finite "
                                       f"({describe_values(values, bad)})", last_good, directory)

    def check_state(self, step: int, state: Any, last_good: int | None, directory: str) -> None:
        """Raises :class:`Diverged` instead of saving a state with non-finite numbers."""
        # One scalar whatever the layout (pmap's stacked replicas reduce to it too); read the
        # local copy, as a global replicated array may not be fully addressable here.
        if not np.asarray(all_finite(state).addressable_data(0)).all():
            raise self._diverged(step, "the weights or optimizer state hold non-finite numbers",
                                 last_good, directory)

    def _diverged(self, step: int, what: str, last_good: int | None,
                  directory: str) -> Diverged:
        lower = self.config.command_line(lr=float(f"{self.lr / 10:.3g}"))
        where = (f"The last good checkpoint is step {last_good} in {directory}; to resume from "
                 f"it" if last_good is not None else "No checkpoint was saved yet; to start again")
        return Diverged(
            f"training diverged at step {step}: {what}; the run stopped before saving anything "
            f"non-finite. {where} with a 10x lower learning rate (--grad-clip 1 or a longer "
            f"--warmup-epochs may help too), run:\n    {lower}")
