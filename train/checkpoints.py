"""Orbax checkpoints of a training run: save, keep, resume, and refuse the wrong ones clearly.

Layout of a workdir::

    WORKDIR/config.json                  the resolved config of the run (for people)
    WORKDIR/checkpoints/STEP/state/      the train state (Orbax PyTree, OCDBT)
    WORKDIR/checkpoints/STEP/config/     the resolved config (arch, classes, dataset, image size)
    WORKDIR/checkpoints/STEP/metrics/    eval metrics of that step (ranks the best checkpoint)

Orbax writes each step into a temporary directory and renames it when complete, so an
interrupted save never leaves a checkpoint that looks finished. The manager keeps the last
``keep`` checkpoints plus the best one by eval top-1. Nothing here ever deletes or rewrites an
existing checkpoint in response to an error: errors explain the problem and the fix, and the
checkpoints stay as they were.
"""

from __future__ import annotations

import json
import os
import tempfile
from typing import Any

import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers

# Fields that must agree between a checkpoint and a run that resumes from it: they change the
# shapes of the parameters or of the optimizer state. Other fields (epochs, learning rate, ...)
# may change on resume.
STRUCTURAL_FIELDS = ("arch", "num_classes", "channels", "dataset", "optimizer", "grad_accum",
                     "ema", "aux", "freeze", "param_groups")
BEST_METRIC = "eval_top1"


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used; the message says why and what to do."""


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
        options = ocp.CheckpointManagerOptions(
            preservation_policy=checkpoint_managers.AnyPreservationPolicy(policies),
            best_fn=lambda m: m[BEST_METRIC],
            best_mode="max",
            create=not read_only,
            read_only=read_only,
            enable_async_checkpointing=async_save,
        )
        if read_only and not os.path.isdir(self.directory):
            raise CheckpointError(
                f"No checkpoints in {self.directory}: the directory does not exist. Pass the "
                f"--workdir of a training run (its checkpoints are in WORKDIR/checkpoints).")
        self._manager = ocp.CheckpointManager(self.directory, options=options,
                                              item_names=("state", "config"))
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

    def stored_config(self, step: int) -> dict[str, Any]:
        """The resolved config saved with ``step``; :class:`CheckpointError` if unreadable."""
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
        self._saved.add(step)
        self._manager.save(
            step,
            args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                    config=ocp.args.JsonSave(config)),
            metrics=metrics,
            force=True,
        )

    def restore(self, step: int, abstract_state: Any) -> Any:
        """Restores ``step`` into the structure, dtypes and shardings of ``abstract_state``."""
        try:
            restored = self._manager.restore(
                step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state)))
        except Exception as err:  # noqa: BLE001
            raise self._corrupt(step, err, mismatch=True) from err
        return restored.state

    def restore_variables(self, step: int) -> dict[str, Any]:
        """The ``params`` and ``batch_stats`` saved at ``step`` (the EMA's when the run kept
        one, as evaluated), without rebuilding the optimizer state they were saved with."""
        try:
            restored = self._manager.restore(
                step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))
            state = restored.state
            source = state.get("ema") or state
            return {"params": source["params"], "batch_stats": source.get("batch_stats") or {}}
        except Exception as err:  # noqa: BLE001
            raise self._corrupt(step, err) from err

    def wait(self) -> None:
        self._manager.wait_until_finished()

    def close(self) -> None:
        """Waits for pending saves and releases the manager (idempotent)."""
        if self._manager is not None:
            self._manager.wait_until_finished()
            self._manager.close()
            self._manager = None

    def _corrupt(self, step: int, err: Exception, mismatch: bool = False) -> CheckpointError:
        others = [s for s in self.all_steps() if s != step]
        previous = (f" The other checkpoints here are at steps {others}: deleting "
                    f"{self._step_dir(step)} makes the run resume from step {max(others)}."
                    if others else
                    f" Delete {self._step_dir(step)} (or the whole {self.directory}) to start "
                    f"over.")
        cause = str(err).strip().splitlines()[0][:300] if str(err).strip() else ""
        kind = ("is corrupt, incomplete, or does not match the network being trained"
                if mismatch else "is corrupt or incomplete")
        return CheckpointError(
            f"Cannot read the checkpoint {self._step_dir(step)}: it {kind} "
            f"({type(err).__name__}: {cause}).{previous} Or pass another --workdir to train "
            f"from scratch. Nothing was deleted.")
