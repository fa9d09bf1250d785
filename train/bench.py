"""Benchmark: ``python -m train.bench --arch resnet50 --batch-size 256 [--dtype bfloat16]``.

Times the real train step (the one ``train.main`` runs: loss, gradients, optimizer, BatchNorm
statistics) and the inference step on synthetic data already on the devices, so the input
pipeline is not measured. Reports compile seconds, images/s (the median over timed windows)
and peak memory (``device.memory_stats()`` where the backend has it, else the process's peak
RSS) as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import sys
import time
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from train.configs.default import DTYPES, OPTIMIZERS, PARALLEL, Config  # noqa: E402
from train.data import DatasetInfo  # noqa: E402


def _peak_memory(devices) -> tuple[int | None, str]:
    peaks = []
    for device in devices:
        try:
            stats = device.memory_stats()
        except Exception:  # noqa: BLE001 - backends without the API raise various errors
            stats = None
        if stats and "peak_bytes_in_use" in stats:
            peaks.append(int(stats["peak_bytes_in_use"]))
    if peaks:
        return max(peaks), "device.memory_stats()['peak_bytes_in_use'] (max over devices)"
    # ru_maxrss is in KiB on Linux, bytes on macOS.
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(rss if platform.system() == "Darwin" else rss * 1024), "peak RSS of the process"


def _time_windows(run_step, steps: int, windows: int, batch_size: int) -> dict[str, Any]:
    per_window = max(1, steps // windows)
    rates, step_ms = [], []
    for _ in range(windows):
        start = time.perf_counter()
        out = None
        for _ in range(per_window):
            out = run_step()
        import jax

        jax.block_until_ready(out)
        seconds = time.perf_counter() - start
        rates.append(per_window * batch_size / seconds)
        step_ms.append(1000 * seconds / per_window)
    return {"images_per_sec": statistics.median(rates), "step_ms": statistics.median(step_ms),
            "windows_images_per_sec": rates, "steps_per_window": per_window}


def run_benchmark(arch: str, *, batch_size: int, image_size: int | None = None,
                  dtype: str = "auto", steps: int = 50, windows: int = 5, warmup: int = 2,
                  num_classes: int = 1000, optimizer: str | None = None,
                  parallel: str = "jit", inference: bool = True) -> dict[str, Any]:
    """Compiles and times the train (and inference) step of ``arch``; returns the report."""
    import jax
    import numpy as np

    import jaxcnn
    from train import train as train_lib
    from train.parallel import make_parallel
    from train.plan import resolve_config

    info_model = jaxcnn.model_info(arch)
    h, w, channels = info_model.input_shape
    size = image_size or h
    info = DatasetInfo(name="synthetic", num_classes=num_classes,
                       image_shape=(size, size, channels), train_split="synthetic",
                       eval_split="synthetic", num_train=batch_size * 1000, num_eval=batch_size,
                       mean=(0.0,), std=(1.0,))
    config = Config(arch=arch, dataset="synthetic", image_size=size, dtype=dtype,
                    batch_size=batch_size, num_classes=num_classes, optimizer=optimizer,
                    parallel=parallel, epochs=1, progress=False)
    plan = resolve_config(config, info)
    c = plan.config
    par = make_parallel(c.parallel)
    setup = train_lib.build(plan, par)
    state = par.init_state(setup.init_fn)
    params = jaxcnn.count_params({"params": par.fetch(state.params)})

    rng = np.random.default_rng(0)
    local = batch_size // jax.process_count()
    host_batch = {
        "image": rng.standard_normal((local, size, size, channels), np.float32),
        "label": rng.integers(0, num_classes, local).astype(np.int32),
    }
    batch = par.put_batch(host_batch)

    report: dict[str, Any] = {
        "arch": c.arch, "batch_size": batch_size, "image_size": size, "channels": channels,
        "num_classes": num_classes, "dtype": c.dtype, "optimizer": c.optimizer,
        "parallel": c.parallel, "params": params, "backend": jax.default_backend(),
        "device": jax.devices()[0].device_kind, "device_count": jax.device_count(),
        "jax": jax.__version__,
    }

    step_fn = setup.train_step
    start = time.perf_counter()
    if c.parallel == "jit":
        step_fn = step_fn.lower(state, batch).compile()
    state, metrics = step_fn(state, batch)
    jax.block_until_ready(metrics)
    compile_s = time.perf_counter() - start
    for _ in range(warmup):
        state, metrics = step_fn(state, batch)
    jax.block_until_ready(metrics)
    holder = {"state": state}

    def train_once():
        holder["state"], m = step_fn(holder["state"], batch)
        return m

    report["train"] = {"compile_s": compile_s, **_time_windows(train_once, steps, windows,
                                                              batch_size)}
    if inference:
        variables = holder["state"].eval_variables()

        def forward(v, x):
            return setup.model.apply(v, x, train=False)

        if c.parallel == "jit":
            infer = jax.jit(forward, in_shardings=(par.replicated, par.data),
                            out_shardings=par.data)
        else:
            infer = jax.pmap(forward, axis_name=par.axis_name)
        images = batch["image"]
        start = time.perf_counter()
        if c.parallel == "jit":
            infer = infer.lower(variables, images).compile()
        jax.block_until_ready(infer(variables, images))
        infer_compile_s = time.perf_counter() - start
        for _ in range(warmup):
            out = infer(variables, images)
        jax.block_until_ready(out)
        report["inference"] = {"compile_s": infer_compile_s, **_time_windows(
            lambda: infer(variables, images), steps, windows, batch_size)}
    peak, source = _peak_memory(jax.local_devices())
    report["peak_memory_bytes"] = peak
    report["peak_memory_gib"] = None if peak is None else round(peak / 2**30, 3)
    report["peak_memory_source"] = source
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m train.bench",
        description="Time the train and inference steps of a network on synthetic data "
                    "(compile seconds, images/s, peak memory) and print JSON.")
    parser.add_argument("--arch", default="resnet50", help="network (default: resnet50)")
    parser.add_argument("--batch-size", type=int, default=256,
                        help="global batch size over all devices (default: 256)")
    parser.add_argument("--image-size", type=int,
                        help="square input size (default: the network's, e.g. 224)")
    parser.add_argument("--dtype", default="auto", choices=DTYPES,
                        help="computation dtype (default: auto: bfloat16 on GPU/TPU, float32 "
                             "on CPU)")
    parser.add_argument("--steps", type=int, default=50,
                        help="timed steps, split over --windows (default: 50)")
    parser.add_argument("--windows", type=int, default=5,
                        help="timed windows; images/s is their median (default: 5)")
    parser.add_argument("--warmup", type=int, default=2,
                        help="untimed steps after compiling (default: 2)")
    parser.add_argument("--num-classes", type=int, default=1000,
                        help="classifier outputs (default: 1000)")
    parser.add_argument("--optimizer", choices=OPTIMIZERS,
                        help="optimizer in the train step (default: the recipe's)")
    parser.add_argument("--parallel", default="jit", choices=PARALLEL,
                        help="data parallelism over the local devices (default: jit)")
    parser.add_argument("--no-inference", dest="inference", action="store_false",
                        help="time the train step only")
    parser.add_argument("--output", help="also write the JSON report to this file")
    args = parser.parse_args(argv)

    from train import train as train_lib

    try:
        report = run_benchmark(args.arch, batch_size=args.batch_size,
                               image_size=args.image_size, dtype=args.dtype, steps=args.steps,
                               windows=args.windows, warmup=args.warmup,
                               num_classes=args.num_classes, optimizer=args.optimizer,
                               parallel=args.parallel, inference=args.inference)
    except train_lib.USER_ERRORS as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    text = json.dumps(report, indent=2)
    print(text)
    if args.output:
        from train.checkpoints import write_json_atomic

        write_json_atomic(args.output, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
