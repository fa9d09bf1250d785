"""Evaluate a trained workdir: ``python -m train.evaluate --workdir runs/lenet5_mnist_sample``.

The network, dataset and image size come from the config stored beside the checkpoint, so only
the workdir is needed. Prints the eval split's top-1/top-5 and loss as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any, Callable

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from train.configs.default import Config  # noqa: E402


def evaluate_workdir(workdir: str, *, step: int | None = None, best: bool = False,
                     data_dir: str | None = None, batch_size: int | None = None,
                     use_ema: bool = True, data: Any = None,
                     model_factory: Callable | None = None, progress: bool = False
                     ) -> dict[str, Any]:
    """Restores a checkpoint of ``workdir`` (latest, ``best`` or ``step``) and evaluates it."""
    import jax

    from train import checkpoints as checkpoints_lib
    from train import train as train_lib
    from train.parallel import JitParallel
    from train.plan import resolve_config

    ckpts = checkpoints_lib.Checkpoints(os.path.join(workdir, "checkpoints"), read_only=True)
    steps = ckpts.all_steps()
    if not steps:
        raise checkpoints_lib.CheckpointError(
            f"No checkpoints in {ckpts.directory}. Train first (python -m train.main "
            f"--workdir {workdir}) or pass the --workdir of a finished run.")
    if best:
        step = ckpts.best_step()
        if step is None:
            raise checkpoints_lib.CheckpointError(
                f"No checkpoint in {ckpts.directory} has eval metrics to rank, so none is the "
                f"best: its steps {steps} were saved between evaluations (--checkpoint-every, "
                f"or an interrupted run). Evaluate one with --step (the latest: --step "
                f"{max(steps)}), or train on to the next evaluation.")
    elif step is None:
        step = ckpts.latest_step()
    elif step not in steps:
        raise checkpoints_lib.CheckpointError(
            f"No checkpoint at step {step} in {ckpts.directory}; there are {steps}.")
    config = Config.from_dict(ckpts.stored_config(step))
    parallel = JitParallel()
    eval_batch = batch_size or config.eval_batch_size or config.batch_size
    eval_batch = -(-eval_batch // parallel.device_count) * parallel.device_count
    config = config.replace(data_dir=data_dir or config.data_dir, eval_batch_size=eval_batch,
                            parallel="jit", coordinator=None, num_processes=None,
                            process_id=None)
    data = data or train_lib.default_data(config)
    info = data.dataset_info(config.dataset, config.data_dir)
    # The stored config is resolved already; resolving it again derives the plan's numbers and
    # checks the eval batch against this machine's devices.
    plan = resolve_config(config, info, model_factory=model_factory, process_count=1,
                          training=False)
    setup = train_lib.build(plan, parallel, model_factory=model_factory)
    try:
        state = ckpts.restore(step, parallel.abstract_state(setup.init_fn))
    finally:
        ckpts.close()
    if not use_ema:
        state = state.replace(ema=None)
    metrics = train_lib.evaluate(state, setup.eval_step, parallel, data, plan, progress=progress)
    result = {
        "workdir": os.path.abspath(workdir), "step": step, "arch": config.arch,
        "dataset": config.dataset, "split": info.eval_split, "image_size": config.image_size,
        "num_classes": config.num_classes,
        "ema": state.ema is not None, "images": int(metrics["count"]),
        "top1": metrics["top1"], "top5": metrics["top5"], "loss": metrics["loss"],
        "devices": jax.device_count(),
    }
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m train.evaluate",
        description="Evaluate a checkpoint of a training run on its dataset's eval split. The "
                    "network, dataset and image size are read from the checkpoint.")
    parser.add_argument("--workdir", required=True, help="the --workdir of a training run")
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--step", type=int, help="evaluate the checkpoint of this step "
                       "(default: the latest)")
    which.add_argument("--best", action="store_true",
                       help="evaluate the checkpoint with the best eval top-1")
    parser.add_argument("--data-dir", help="TFDS data directory (default: the run's)")
    parser.add_argument("--batch-size", type=int, help="eval batch size (default: the run's)")
    parser.add_argument("--ema", action=argparse.BooleanOptionalAction, default=True,
                        help="use the EMA weights when the run kept some (default: on)")
    parser.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True,
                        help="show a progress bar (default: on)")
    args = parser.parse_args(argv)

    from train import train as train_lib

    try:
        result = evaluate_workdir(args.workdir, step=args.step, best=args.best,
                                  data_dir=args.data_dir, batch_size=args.batch_size,
                                  use_ema=args.ema, progress=args.progress)
    except train_lib.USER_ERRORS as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    top5 = f", top-5 {100 * result['top5']:.2f}%" if result["num_classes"] > 10 else ""
    print(f"{result['arch']} at step {result['step']} on {result['dataset']} "
          f"({result['split']}, {result['images']:,} images): top-1 "
          f"{100 * result['top1']:.2f}%{top5}", file=sys.stderr)
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
