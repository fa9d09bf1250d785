"""Orbax checkpoints of a training run: save, keep, resume, and refuse the wrong ones clearly.

Layout of a workdir::

    WORKDIR/config.json                  the resolved config of the run (for people)
    WORKDIR/checkpoints/STEP/state/      the train state (Orbax PyTree, OCDBT)
    WORKDIR/checkpoints/STEP/config/     the resolved config (arch, classes, dataset, image size)
    WORKDIR/checkpoints/STEP/metrics/    eval metrics of that step (ranks the best checkpoint)
    WORKDIR/checkpoints/STEP/SHA256SUMS  digests of the state and config files, as written

Orbax writes each step into a temporary directory and renames it when complete, so an
interrupted save never leaves a checkpoint that looks finished. The manager keeps the last
``keep`` checkpoints plus the best one by eval top-1. Nothing here ever deletes or rewrites an
existing checkpoint in response to an error: errors explain the problem and the fix, and the
checkpoints stay as they were.

Two failures that Orbax leaves silent or buries are made loud here:

* A file altered after it was written (a flipped bit, a bad disk or copy) restores as garbage
  weights without an error. ``SHA256SUMS`` (``sha256sum -c`` reads it) is written into the
  step's temporary directory once its files are final and before Orbax renames it, so every
  finished step carries its digests; reading a step checks them first.
* An asynchronous save that fails (a full disk) raises only at the next save, an epoch later,
  under pages of traceback. :meth:`Checkpoints.poll` (called between steps) surfaces it as soon
  as the background thread ends, as one :class:`CheckpointError` that names the cause and the
  path. Orbax deletes old checkpoints only after a save succeeds, so the earlier ones remain.

Orbax's own log lines are hidden: every failure reaches the trainer as an exception and is
reported once, in one line.
"""

from __future__ import annotations

import glob
import hashlib
import json
import logging
import os
import re
import sys
import tempfile
from typing import Any

import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers

# Fields that must agree between a checkpoint and a run that resumes from it: they change the
# shapes of the parameters or of the optimizer state, or (batch_size) what a step is. A step is
# one batch: at another batch size the saved step would stand for another number of examples,
# so the resumed run would skip or repeat data and move along its schedule by the wrong amount.
# A change is refused, with the flag that resumes, rather than converted. Other fields (epochs,
# learning rate, ...) may change on resume.
STRUCTURAL_FIELDS = ("arch", "num_classes", "channels", "dataset", "optimizer", "grad_accum",
                     "ema", "aux", "freeze", "param_groups", "batch_size")
BEST_METRIC = "eval_top1"
DIGEST_FILE = "SHA256SUMS"
DIGESTED_ITEMS = ("state", "config")  # what a restore reads; metrics are checked by parsing
_MARKERS = ("commit_success.txt",)  # empty files Orbax may add after the digest is taken


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used; the message says why and what to do."""


class DigestMismatch(ValueError):
    """Files of a checkpoint differ from the digests recorded when it was written."""


def _digested_files(step_dir: str) -> list[str]:
    files = []
    for item in DIGESTED_ITEMS:
        for root, _, names in os.walk(os.path.join(step_dir, item)):
            files += [os.path.relpath(os.path.join(root, n), step_dir) for n in names
                      if n not in _MARKERS]
    return sorted(files)


def _sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_digest(step_dir: str) -> None:
    """Records the SHA-256 of the state and config files of ``step_dir`` in ``SHA256SUMS``."""
    lines = [f"{_sha256(os.path.join(step_dir, name))}  {name}\n"
             for name in _digested_files(step_dir)]
    path = os.path.join(step_dir, DIGEST_FILE)
    with open(path + ".tmp", "w") as f:
        f.writelines(lines)
    os.replace(path + ".tmp", path)


def verify_digest(step_dir: str) -> bool:
    """Checks ``step_dir`` against its ``SHA256SUMS``; False when it has none (written before
    digests were kept, or killed between Orbax's rename and the digest of a synchronous save).
    Raises :class:`DigestMismatch` naming the files that differ."""
    path = os.path.join(step_dir, DIGEST_FILE)
    if not os.path.exists(path):
        return False
    with open(path) as f:
        recorded = dict(reversed(line.rstrip("\n").split("  ", 1)) for line in f if line.strip())
    bad = []
    for name, digest in recorded.items():
        file = os.path.join(step_dir, name)
        if not os.path.exists(file):
            bad.append(f"{name} is missing")
        elif _sha256(file) != digest:
            bad.append(f"{name} changed")
    bad += [f"{name} is new" for name in sorted(set(_digested_files(step_dir)) - set(recorded))]
    if bad:
        more = f" and {len(bad) - 3} more" if len(bad) > 3 else ""
        raise DigestMismatch(f"its files differ from the SHA-256 digests in {DIGEST_FILE}, "
                             f"recorded when it was written: {', '.join(bad[:3])}{more}")
    return True


class _QuietOrbax(logging.Filter):
    """Drops Orbax's log records below ERROR and those that carry a traceback: the trainer
    reports every Orbax failure itself, once (see the module docstring)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if f"{os.sep}orbax{os.sep}" not in record.pathname:
            return True
        return record.levelno >= logging.ERROR and not record.exc_info


def _quiet_orbax() -> None:
    absl_logger = logging.getLogger("absl")  # Orbax logs through absl.logging
    if not any(isinstance(f, _QuietOrbax) for f in absl_logger.filters):
        absl_logger.addFilter(_QuietOrbax())
    if not getattr(sys.unraisablehook, "quiet_orbax", False):
        sys.unraisablehook = _skip_closed_loop(sys.unraisablehook)


def _skip_closed_loop(hook):
    """``hook`` but for "Event loop is closed": when one write of a save fails, Orbax closes
    its event loop and the writes still running report that, each with a traceback."""
    def skip(unraisable):
        if not (isinstance(unraisable.exc_value, RuntimeError)
                and str(unraisable.exc_value) == "Event loop is closed"):
            hook(unraisable)

    skip.quiet_orbax = True
    return skip


def failure_cause(err: BaseException) -> tuple[str, str | None]:
    """The root cause of a failed write and the path it names, from Orbax's chain of errors.

    TensorStore reports the system's error inside its message (``Failed writing: "PATH": ...
    No space left on device [os_error_code='28']``); Python writers raise an ``OSError``.
    """
    chain, seen = [], set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        chain.append(err)
        err = err.__cause__ or err.__context__
    for e in chain:
        if isinstance(e, OSError) and e.errno:
            return os.strerror(e.errno), e.filename
    for e in chain:
        text = str(e)
        code = re.search(r"os_error_code='?(\d+)", text)
        path = re.search(r'Failed writing: "([^"]+)"', text)
        if code:
            return os.strerror(int(code.group(1))), path.group(1) if path else None
    text = str(chain[-1]).strip() or type(chain[-1]).__name__
    return f"{type(chain[-1]).__name__}: {text.splitlines()[0][:300]}", None


def write_json_atomic(path: str, value: Any) -> None:
    """Writes JSON to ``path`` through a temporary file and a rename (never half-written)."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=".json")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(value, f, indent=2, sort_keys=True)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def _structural(config: dict[str, Any], key: str) -> Any:
    # An EMA or aux heads change the state's structure by being there, not by their values.
    if key == "ema":
        return bool(config.get("ema_decay"))
    if key == "aux":
        return bool(config.get("aux_weight"))
    if key == "freeze":
        return config.get("freeze") or "none"
    if key == "param_groups":  # the optimizer state splits by layer group when this is not 1
        return config.get("head_lr_multiplier", 1.0) != 1.0
    return config.get(key)


def _flag_for(config: dict[str, Any], key: str) -> str:
    """The command-line flag that reproduces ``config``'s structural field ``key``."""
    name = {"ema": "ema_decay", "aux": "aux_weight",
            "param_groups": "head_lr_multiplier"}.get(key, key)
    return f"--{name.replace('_', '-')} {config.get(name)}"


def _describe(config: dict[str, Any]) -> str:
    return (f"{config.get('arch')} ({config.get('num_classes')} classes, "
            f"{config.get('dataset')}, {config.get('image_size')}px)")


class Checkpoints:
    """The checkpoints of one workdir (an Orbax ``CheckpointManager`` with clear errors)."""

    def __init__(self, directory: str, *, keep: int = 3, keep_best: int = 1,
                 read_only: bool = False, async_save: bool = True):
        self.directory = os.path.abspath(directory)
        policies = [checkpoint_managers.LatestN(n=keep)]
        if keep_best:
            # Ascending sort by top-1; BestN keeps the last n, i.e. the highest.
            policies.append(checkpoint_managers.BestN(
                get_metric_fn=lambda m: m[BEST_METRIC], n=keep_best,
                keep_checkpoints_without_metrics=False))
        _quiet_orbax()
        self._writing: int | None = None  # the step of a save not yet known to have finished
        self._failure: CheckpointError | None = None  # a failed save, reported once
        self._verified: set[int] = set()
        self._async = async_save and not read_only
        options = ocp.CheckpointManagerOptions(
            preservation_policy=checkpoint_managers.AnyPreservationPolicy(policies),
            best_fn=lambda m: m[BEST_METRIC],
            best_mode="max",
            create=not read_only,
            read_only=read_only,
            enable_async_checkpointing=self._async,
            # Runs in Orbax's background thread, on the primary process, once every process
            # has written its files and before the temporary directory is renamed.
            async_options=(ocp.AsyncOptions(post_finalization_callback=self._digest_writing)
                           if self._async else None),
        )
        if read_only and not os.path.isdir(self.directory):
            raise CheckpointError(
                f"No checkpoints in {self.directory}: the directory does not exist. Pass the "
                f"--workdir of a training run (its checkpoints are in WORKDIR/checkpoints).")
        try:
            self._manager = ocp.CheckpointManager(self.directory, options=options,
                                                  item_names=("state", "config"))
        except Exception as err:  # noqa: BLE001 - Orbax reads every step's metrics here
            raise self._unreadable_metrics(err) from err
        # Steps saved or found: kept here rather than re-listed from the directory, so that
        # every process of a multi-process run makes the same decision (saves are collective).
        self._saved = set(self._manager.all_steps())

    # What is there.
    def all_steps(self) -> list[int]:
        return list(self._manager.all_steps())

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def best_step(self) -> int | None:
        return self._manager.best_step()

    def _step_dir(self, step: int) -> str:
        return os.path.join(self.directory, str(step))

    def verify(self, step: int) -> None:
        """Raises :class:`CheckpointError` if ``step``'s files differ from their digests."""
        if step in self._verified:
            return
        try:
            verify_digest(self._step_dir(step))
        except DigestMismatch as err:
            raise self._corrupt(step, err, altered=True) from None
        except OSError as err:
            raise self._corrupt(step, err) from None
        self._verified.add(step)

    def stored_config(self, step: int) -> dict[str, Any]:
        """The resolved config saved with ``step``; :class:`CheckpointError` if unreadable."""
        self.verify(step)
        try:
            restored = self._manager.restore(
                step, args=ocp.args.Composite(config=ocp.args.JsonRestore()))
            config = restored.config
        except Exception as err:  # noqa: BLE001 - any failure here means an unreadable checkpoint
            raise self._corrupt(step, err) from err
        if not isinstance(config, dict) or "arch" not in config:
            raise self._corrupt(step, ValueError(f"its config item holds {config!r}"))
        return config

    def check_compatible(self, step: int, config: dict[str, Any]) -> dict[str, Any]:
        """Raises :class:`CheckpointError` unless ``step`` was written by a run like ``config``.

        Returns the stored config. Only :data:`STRUCTURAL_FIELDS` must agree.
        """
        stored = self.stored_config(step)
        diffs = [(k, a, b) for k in STRUCTURAL_FIELDS
                 if (a := _structural(stored, k)) != (b := _structural(config, k))]
        if diffs:
            what = "; ".join(f"{k}: checkpoint {a!r}, this run {b!r}" for k, a, b in diffs)
            fix = "pass " + " ".join(_flag_for(stored, k) for k, _, _ in diffs)
            if any(k == "batch_size" for k, _, _ in diffs):
                what += ("; a step is one batch, so the steps saved would not count the "
                         "examples seen at the new size")
            workdir = os.path.dirname(self.directory)
            raise CheckpointError(
                f"{self._step_dir(step)} was written by a different run: {_describe(stored)}, "
                f"and this run is {_describe(config)} ({what}). To resume that run, {fix}; "
                f"to start a new one from its weights (e.g. to fine-tune after training with "
                f"a frozen backbone), pass another --workdir and --pretrained {workdir}; to "
                f"start afresh, pass another --workdir (or delete {self.directory}). "
                f"The existing checkpoints were left untouched.")
        return stored

    # Save and restore.
    def save(self, step: int, state: Any, config: dict[str, Any],
             metrics: dict[str, float] | None = None) -> None:
        """Saves ``state`` at ``step`` (asynchronously; :meth:`wait` blocks until written)."""
        if step in self._saved:
            return  # already saved (e.g. the final save right after an epoch-end save)
        if self._writing is not None:
            self.wait()  # Orbax would wait too; this way its failure names the right step
        self._saved.add(step)
        self._writing = step
        try:
            self._manager.save(
                step,
                args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                        config=ocp.args.JsonSave(config)),
                metrics=metrics,
                force=True,
            )
            if not self._async:
                write_digest(self._step_dir(step))
                self._writing = None
        except Exception as err:  # noqa: BLE001 - Orbax raises many kinds; all mean "not saved"
            raise self._save_failed(step, err) from None

    def poll(self) -> None:
        """Raises :class:`CheckpointError` if an asynchronous save has failed; costs nothing
        while it runs. Call it between steps, so that a failure stops the run at once."""
        if self._failure is not None:
            raise self._failure
        if self._writing is None or self._manager.is_saving_in_progress():
            return
        try:
            self._manager.wait_until_finished()  # finished: returns, or raises its error
        except Exception as err:  # noqa: BLE001
            raise self._save_failed(self._writing, err) from None
        self._writing = None

    def _digest_writing(self) -> None:
        # Orbax names the temporary directory STEP.orbax-checkpoint-tmp[-TIMESTAMP].
        found = glob.glob(os.path.join(self.directory, f"{self._writing}.orbax-checkpoint-tmp*"))
        if len(found) != 1:
            raise RuntimeError(f"cannot tell which directory holds step {self._writing} to "
                               f"record its digests: found {found}")
        write_digest(found[0])

    def _save_failed(self, step: int, err: BaseException) -> CheckpointError:
        cause, path = failure_cause(err)
        kept = sorted(int(n) for n in os.listdir(self.directory) if n.isdigit() and int(n) != step)
        if kept:
            earlier = (f"The checkpoint{'s' if len(kept) > 1 else ''} saved before "
                       f"({'steps' if len(kept) > 1 else 'step'} {', '.join(map(str, kept))}) "
                       f"{'are' if len(kept) > 1 else 'is'} intact: once that is fixed, run the "
                       f"same command again to resume from step {kept[-1]}")
        else:
            earlier = "No checkpoint was saved before: once that is fixed, run it again"
        if "space" in cause.lower() or "quota" in cause.lower():
            earlier += (f" (free some space, the unfinished {step}.orbax-checkpoint-tmp* there "
                        f"included, or pass a --workdir on another disk)")
        self._writing = None
        self._failure = CheckpointError(
            f"Could not save the checkpoint of step {step} in {self.directory}: {cause}"
            + (f" (writing {path})" if path else "") + f". {earlier}.")
        return self._failure

    def restore(self, step: int, abstract_state: Any) -> Any:
        """Restores ``step`` into the structure, dtypes and shardings of ``abstract_state``."""
        self.verify(step)
        try:
            restored = self._manager.restore(
                step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state)))
        except Exception as err:  # noqa: BLE001
            raise self._corrupt(step, err, mismatch=True) from err
        return restored.state

    def restore_variables(self, step: int) -> dict[str, Any]:
        """The ``params`` and ``batch_stats`` saved at ``step`` (the EMA's when the run kept
        one, as evaluated), without rebuilding the optimizer state they were saved with."""
        self.verify(step)
        try:
            restored = self._manager.restore(
                step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))
            state = restored.state
            source = state.get("ema") or state
            return {"params": source["params"], "batch_stats": source.get("batch_stats") or {}}
        except Exception as err:  # noqa: BLE001
            raise self._corrupt(step, err) from err

    def wait(self) -> None:
        """Blocks until the pending save is written; :class:`CheckpointError` if it failed."""
        if self._failure is not None:
            raise self._failure
        try:
            self._manager.wait_until_finished()
        except Exception as err:  # noqa: BLE001
            if self._writing is None:
                raise
            raise self._save_failed(self._writing, err) from None
        self._writing = None

    def close(self) -> None:
        """Waits for pending saves and releases the manager (idempotent). Raises a failed
        save's :class:`CheckpointError` unless it was raised already."""
        if self._manager is None:
            return
        reported = self._failure is not None
        try:
            self.wait()
        except CheckpointError:
            if not reported:
                raise
        finally:
            manager, self._manager = self._manager, None
            try:
                manager.close()
            except Exception:  # noqa: BLE001 - the failure was reported above
                pass

    def _unreadable_metrics(self, err: Exception) -> CheckpointError:
        """The error for a manager that cannot open the directory: names a step whose
        metrics file does not parse (Orbax reads them all to rank the best)."""
        for path in sorted(glob.glob(os.path.join(self.directory, "*", "metrics", "metrics"))):
            try:
                with open(path) as f:
                    json.load(f)
            except (OSError, ValueError) as bad:
                metrics_dir = os.path.dirname(path)
                return CheckpointError(
                    f"Cannot read {path}, the eval metrics of the checkpoint "
                    f"{os.path.dirname(metrics_dir)}: it is corrupt or incomplete "
                    f"({type(bad).__name__}: {bad}). Deleting {metrics_dir} keeps that "
                    f"checkpoint without its eval score (it can then no longer be chosen as "
                    f"the best one). Nothing was deleted.")
        cause = str(err).strip().splitlines()[0][:300] if str(err).strip() else ""
        return CheckpointError(f"Cannot open the checkpoints in {self.directory} "
                               f"({type(err).__name__}: {cause}). Nothing was deleted.")

    def _corrupt(self, step: int, err: Exception, mismatch: bool = False,
                 altered: bool = False) -> CheckpointError:
        others = [s for s in self.all_steps() if s != step]
        previous = (f" The other checkpoints here are at steps {others}: deleting "
                    f"{self._step_dir(step)} makes the run resume from step {max(others)}."
                    if others else
                    f" Delete {self._step_dir(step)} (or the whole {self.directory}) to start "
                    f"over.")
        cause = str(err).strip().splitlines()[0][:300] if str(err).strip() else ""
        kind = ("was altered after it was written" if altered else
                "is corrupt, incomplete, or does not match the network being trained"
                if mismatch else "is corrupt or incomplete")
        return CheckpointError(
            f"Cannot read the checkpoint {self._step_dir(step)}: it {kind} "
            f"({type(err).__name__}: {cause}).{previous} Or pass another --workdir to train "
            f"from scratch. Nothing was deleted.")
