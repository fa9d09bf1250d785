"""Benchmark: ``python -m train.bench --arch resnet50 --batch-size 256 [--compare torch]``.

Times the real train step (the one ``train.main`` runs: loss, gradients, optimizer, BatchNorm
statistics) and the inference step on synthetic data already on the devices, so the input
pipeline is not measured. Reports compile seconds, images/s (the median over timed windows)
and peak memory (``device.memory_stats()`` where the backend has it, else the process's peak
RSS) as JSON.

``--compare torch`` times the same network in PyTorch in the same process (the torchvision or
timm reference the variant's converter names; eager, and ``torch.compile`` unless
``--torch-modes eager``), with the same batch, image size, dtype and train step (SGD with
momentum 0.9 and the recipe's weight decay on both sides; no label smoothing, EMA or auxiliary
heads), window by window in turn (:mod:`train.timing`), and prints the ratios as a Markdown
table after the JSON. Several ``--arch`` names or wildcards and several ``--image-size``
values make a sweep: one row per network and size, written whole to ``--output`` (JSON) and
``--markdown``. ``--suite gpu`` is the GPU comparison of the issue in one call (five networks
at 224, bfloat16, batch 256, against ``torch.compile``), ``--suite cpu`` the CPU one (every
family at 32, 64 and 224 px, float32, batch 32, against PyTorch eager). ``--input-pipeline``
adds the images/s of the TFDS input pipeline (JPEG decoding, random-resized crop and flip at
224) on synthetic JPEGs of ImageNet's typical size. ``--latest FILE`` times nothing: it prints
the table of the last row of each network and size recorded in ``FILE`` (README's CPU table,
from docs/bench_cpu.json), each ratio with its bootstrap interval over the timed windows.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import gc
import json
import os
import platform
import re
import sys
import tempfile
import time
from typing import Any, Callable

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from jaxcnn.conv import FORMULATIONS  # noqa: E402
from train.configs.default import DTYPES, OPTIMIZERS, PARALLEL, Config  # noqa: E402
from train.data import DatasetInfo  # noqa: E402
from train.timing import (  # noqa: E402
    Runner, cpu_description, peak_rss_bytes, time_interleaved, usable_cores,
)

MIN_WINDOW_S = 0.2
"""Each timed window lasts at least this long: steps shorter than ``0.2 s / (steps //
windows)`` are taken more times a window (:func:`train.timing.time_interleaved`)."""

COMPARE_SETTINGS = {"ema_decay": 0.0, "label_smoothing": 0.0, "aux_weight": 0.0}
"""What both sides of ``--compare torch`` train with (and SGD): the plain step a PyTorch user
writes."""

GPU_SUITE = {"arch": ["resnet50", "efficientnet_b0", "mobilenet_v2", "seresnet50", "vgg16"],
             "image_size": [224], "batch_size": 256, "dtype": "bfloat16", "compare": "torch",
             "torch_modes": ["compile"], "steps": 30, "windows": 3}
"""``--suite gpu``: the issue's GPU table. Designed for 8 minutes on an H100; on an H200
(2026-12-04) its first three rows took 2:24, 4:38 and 3:50, mostly compiling (README).
Flags given with it win (``--suite gpu --batch-size 8 --image-size 64`` checks it on a CPU)."""

CPU_SUITE = {"arch": ["lenet5", "alexnet", "vgg16", "googlenet", "inception_v3", "resnet18",
                      "resnet50", "resnext50_32x4d", "seresnet50", "mobilenet_v1", "mobilenet_v2",
                      "mobilenet_v3_large", "efficientnet_b0", "densenet121"],
             "image_size": [32, 64, 224], "batch_size": 32, "dtype": "float32",
             "compare": "torch", "torch_modes": ["eager"], "isolate": 2, "steps": 6,
             "windows": 3, "warmup": 1}
"""``--suite cpu``: every family of the canon at 32, 64 and 224 px (raised to a network's
minimum; LeNet-5 at its own 32), batch 32, float32, against PyTorch eager, each framework in
processes of its own, two rounds in turn: the CPU table in README (1.5-2 hours on 2 cores; on
2026-12-07 the 32-px rows took 16 minutes, the 64-px 24, and the 224-px rows up to ResNet-50
48, VGG-16's alone 22)."""

SUITES = {"gpu": GPU_SUITE, "cpu": CPU_SUITE}


def restrict_cores(count: int) -> None:
    """Pins the process to ``count`` of its cores before any framework starts its threads (XLA
    and PyTorch size their pools from the cores the process may use)."""
    if not hasattr(os, "sched_setaffinity"):
        raise SystemExit("error: --threads needs an OS that pins processes to cores (Linux).")
    allowed = sorted(os.sched_getaffinity(0))
    if not 1 <= count <= len(allowed):
        raise SystemExit(f"error: --threads {count}: this process may use {len(allowed)} "
                         f"cores; pass 1 to {len(allowed)}.")
    os.sched_setaffinity(0, allowed[:count])


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
    return peak_rss_bytes(), "peak RSS of the process"


def _compiled_memory_gib(compiled: Any) -> float | None:
    """What XLA's memory analysis of a compiled step says it needs at its peak (arguments,
    outputs and temporaries, less what the outputs reuse of the arguments), in GiB: a figure
    per network, where the device's peak is the whole process's so far."""
    try:
        m = compiled.memory_analysis()
        need = (m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes
                - m.alias_size_in_bytes)
    except Exception:  # noqa: BLE001 - backends without the analysis
        return None
    return round(need / 2**30, 3)


def fit_aux_heads(config: Config, size: int) -> Config:
    """``config`` without its recipe's auxiliary classifiers when they cannot run at ``size``
    (Inception v3's needs 299 px, the network itself 75): the benchmark times the network at
    the size asked for, and says so on stderr."""
    from train.train import build_model

    if not config.aux_weight:
        return config
    needs = getattr(build_model(config), "min_size", 0)
    if needs <= size:
        return config
    print(f"{config.arch}: timing without the auxiliary classifiers (--aux-weight "
          f"{config.aux_weight}), which need {needs}x{needs} px; pass --image-size {needs} to "
          f"include them", file=sys.stderr)
    return config.replace(aux_weight=0.0)


def resolve(arch: str, *, batch_size: int, image_size: int | None = None, dtype: str = "auto",
            num_classes: int = 1000, optimizer: str | None = None, parallel: str = "jit",
            **config_fields: Any) -> Any:
    """The training plan both sides of a comparison follow (network, size, dtype, SGD's
    settings) for a synthetic data set, without building anything."""
    import jaxcnn
    from train.plan import resolve_config

    h, _, channels = jaxcnn.model_info(arch).input_shape
    size = image_size or h
    info = DatasetInfo(name="synthetic", num_classes=num_classes,
                       image_shape=(size, size, channels), train_split="synthetic",
                       eval_split="synthetic", num_train=batch_size * 1000, num_eval=batch_size,
                       mean=(0.0,), std=(1.0,))
    config = Config(arch=arch, dataset="synthetic", image_size=size, dtype=dtype,
                    batch_size=batch_size, num_classes=num_classes, optimizer=optimizer,
                    parallel=parallel, epochs=1, progress=False, **config_fields)
    plan = resolve_config(config, info)
    return dataclasses.replace(plan, config=fit_aux_heads(plan.config, size))


def prepare(arch: str, *, batch_size: int, image_size: int | None = None, dtype: str = "auto",
            num_classes: int = 1000, optimizer: str | None = None, parallel: str = "jit",
            inference: bool = True, **config_fields: Any
            ) -> tuple[dict[str, Any], dict[str, Runner], Any]:
    """jaxcnn's compiled train (and inference) step of ``arch`` on a synthetic batch.

    Returns the report's header (the resolved network, batch, dtype ...), the runners and the
    resolved config. ``config_fields`` are further :class:`Config` fields (``COMPARE_SETTINGS``).
    """
    import jax
    import numpy as np

    import jaxcnn
    from jaxcnn import allocator, conv
    from train import train as train_lib
    from train.parallel import make_parallel

    plan = resolve(arch, batch_size=batch_size, image_size=image_size, dtype=dtype,
                   num_classes=num_classes, optimizer=optimizer, parallel=parallel,
                   **config_fields)
    c = plan.config
    h, _, channels = jaxcnn.model_info(arch).input_shape
    size = image_size or h
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
    header: dict[str, Any] = {
        "arch": c.arch, "batch_size": batch_size, "image_size": size, "channels": channels,
        "num_classes": num_classes, "dtype": c.dtype, "optimizer": c.optimizer,
        "parallel": c.parallel, "params": params, "backend": jax.default_backend(),
        "device": jax.devices()[0].device_kind, "device_count": jax.device_count(),
        "cpu": cpu_description(),
        "jax": jax.__version__, "malloc": allocator.malloc_setting(),
    }

    step_fn = setup.train_step
    start = time.perf_counter()
    if c.parallel == "jit":
        step_fn = step_fn.lower(state, batch).compile()
        header["train_step_memory_gib"] = _compiled_memory_gib(step_fn)
    state, metrics = step_fn(state, batch)
    jax.block_until_ready(metrics)
    holder = {"state": state}

    def train_once():
        holder["state"], m = step_fn(holder["state"], batch)
        return m

    runners = {"train": Runner(train_once, jax.block_until_ready,
                               time.perf_counter() - start)}
    if inference:
        # A copy: the train step donates the state it is given, and the two steps alternate.
        variables = jax.tree.map(lambda a: a.copy(), holder["state"].eval_variables())

        def forward(v, x):
            return setup.model.apply(v, x, train=False)

        if c.parallel == "jit":
            infer = conv.jit(forward, inference=True,
                             in_shardings=(par.replicated, par.data), out_shardings=par.data)
        else:
            infer = conv.pmap(forward, inference=True, axis_name=par.axis_name)
        images = batch["image"]
        start = time.perf_counter()
        if c.parallel == "jit":
            infer = infer.lower(variables, images).compile()
        jax.block_until_ready(infer(variables, images))
        runners["inference"] = Runner(lambda: infer(variables, images), jax.block_until_ready,
                                      time.perf_counter() - start)
    return header, runners, c


def run_benchmark(arch: str, *, batch_size: int, image_size: int | None = None,
                  dtype: str = "auto", steps: int = 50, windows: int = 5, warmup: int = 2,
                  num_classes: int = 1000, optimizer: str | None = None,
                  parallel: str = "jit", inference: bool = True, compare: str | None = None,
                  torch_modes: tuple[str, ...] = ("eager", "compile"),
                  conv_policies: tuple[str, ...] = (), isolate: int = 0,
                  side: str | None = None) -> dict[str, Any]:
    """Compiles and times the train (and inference) step of ``arch``; returns the report.

    ``compare="torch"`` also times the PyTorch reference in each of ``torch_modes``, in turn
    with ours (:func:`train.timing.time_interleaved`), and adds ``torch`` (its figures, or the
    error that stopped a mode) and ``ratios`` (ours over theirs, images/s) to the report.
    ``conv_policies`` (e.g. ``("xla",)``) also times our steps built with those
    :func:`jaxcnn.conv.policy` settings, in the same turns: the figures under ``conv`` and
    ``ratios`` of the default (``auto``) over each. ``isolate=n`` times each framework in a
    process of its own instead, ``n`` rounds in turn (:func:`run_isolated`); ``side``
    (``"jaxcnn"`` or ``"torch"``) builds and times one framework only, as each of those
    processes does.
    """
    import jax

    from jaxcnn import conv

    if isolate < 0:
        raise ValueError(f"--isolate {isolate}: give a number of rounds, e.g. --isolate 2 "
                         "(0, the default: both frameworks in one process)")
    if isolate:
        if not compare:
            raise ValueError("--isolate times the frameworks of --compare torch in processes "
                             "of their own; add --compare torch")
        return run_isolated(arch, rounds=isolate, batch_size=batch_size,
                            image_size=image_size, dtype=dtype, steps=steps, windows=windows,
                            warmup=warmup, num_classes=num_classes, optimizer=optimizer,
                            parallel=parallel, inference=inference, torch_modes=torch_modes,
                            conv_policies=conv_policies)
    fields = dict(COMPARE_SETTINGS) if compare else {}
    if compare and optimizer not in (None, "sgd"):
        raise ValueError("--compare torch trains both sides with SGD; omit --optimizer")
    optimizer = "sgd" if compare else optimizer
    options = dict(batch_size=batch_size, image_size=image_size, dtype=dtype,
                   num_classes=num_classes, optimizer=optimizer, parallel=parallel, **fields)
    parts = ("train", "inference") if inference else ("train",)
    all_runners: dict[tuple[str, str], Runner] = {}
    if side != "torch":
        header, runners, c = prepare(arch, inference=inference, **options)
        all_runners.update({("jaxcnn", part): r for part, r in runners.items()})
        for name in conv_policies:
            with conv.policy(name):  # the steps are traced and compiled inside prepare
                _, theirs, _ = prepare(arch, inference=inference, **options)
            all_runners.update({(f"jaxcnn_conv_{name}", part): r for part, r in theirs.items()})
    else:  # PyTorch alone: the plan ours would follow, nothing of ours built
        import jaxcnn
        from jaxcnn import allocator

        c = resolve(arch, **options).config
        h, _, channels = jaxcnn.model_info(arch).input_shape
        header = {"arch": c.arch, "batch_size": batch_size, "image_size": image_size or h,
                  "channels": channels, "num_classes": num_classes, "dtype": c.dtype,
                  "optimizer": c.optimizer, "malloc": allocator.malloc_setting()}
    report = dict(header)
    if side:
        report["pid"] = os.getpid()
    errors: dict[str, str] = {}
    if compare and side != "jaxcnn":
        from train import bench_torch

        try:
            report["torch_reference"] = bench_torch.reference_name(c.arch)
        except bench_torch.NoReference as err:
            report["torch_reference"] = None
            errors = {mode: str(err) for mode in torch_modes}
        bench_torch.reset_peak_memory()
        for mode in torch_modes:
            if mode in errors:
                continue
            try:
                theirs = bench_torch.prepare(
                    c.arch, batch_size=batch_size, image_size=header["image_size"],
                    channels=header["channels"], num_classes=num_classes, dtype=c.dtype,
                    lr=c.lr, momentum=c.momentum, weight_decay=c.weight_decay, mode=mode,
                    inference=inference)
            except Exception as err:  # noqa: BLE001 - a mode that fails is reported, not fatal
                errors[mode] = f"{type(err).__name__}: {str(err).splitlines()[0][:300]}"
                continue
            all_runners.update({(f"torch_{mode}", part): r for part, r in theirs.items()})

    timed = time_interleaved({f"{who}/{part}": r for (who, part), r in all_runners.items()},
                             steps=steps, windows=windows, batch_size=batch_size, warmup=warmup,
                             min_window_s=MIN_WINDOW_S)
    if side != "torch":
        for part in parts:
            report[part] = timed[f"jaxcnn/{part}"]
        if conv_policies:
            report["conv"] = {name: {part: timed[f"jaxcnn_conv_{name}/{part}"]
                                     for part in parts} for name in conv_policies}
        peak, source = _peak_memory(jax.local_devices())
        report["peak_memory_bytes"] = peak
        report["peak_memory_gib"] = None if peak is None else round(peak / 2**30, 3)
        report["peak_memory_source"] = source
    if compare and side != "jaxcnn":
        from train import bench_torch

        report["torch"] = {mode: {"error": errors[mode]} if mode in errors else {
            part: timed[f"torch_{mode}/{part}"] for part in parts} for mode in torch_modes}
        torch_peak = bench_torch.peak_memory_bytes()
        if torch_peak is not None:
            report["torch_peak_memory_gib"] = round(torch_peak / 2**30, 3)
    return _with_ratios(report)


def _with_ratios(report: dict[str, Any]) -> dict[str, Any]:
    """``report`` with ``ratios``: ours (the default routing) over each forced convolution
    formulation and each PyTorch mode timed, images/s, part by part."""
    ratios = {}
    parts = [p for p in ("train", "inference") if p in report]
    for name, figures in report.get("conv", {}).items():
        ratios.update({f"{part}_vs_conv_{name}": report[part]["images_per_sec"]
                       / figures[part]["images_per_sec"] for part in parts})
    for mode, figures in report.get("torch", {}).items():
        if "error" not in figures:
            ratios.update({f"{part}_vs_torch_{mode}": report[part]["images_per_sec"]
                           / figures[part]["images_per_sec"] for part in parts})
    report.pop("ratios", None)
    if ratios:
        report["ratios"] = ratios
    return report


def child_env() -> dict[str, str]:
    """This process's environment with the project root first on ``PYTHONPATH``, so that a
    child ``python -m train...`` finds ``train/`` from any working directory."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # where train/ is
    return dict(os.environ, PYTHONPATH=os.pathsep.join(
        [root] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]))


def run_isolated(arch: str, *, rounds: int, image_size: int | None,
                 torch_modes: tuple[str, ...], **options: Any) -> dict[str, Any]:
    """``run_benchmark(compare="torch")`` with each framework in a process of its own, as a
    user runs one of them: ``rounds`` rounds of ``python -m train.bench --side ...`` (jaxcnn,
    then each torch mode, then jaxcnn again ...), so a machine that gets busier or quieter
    slows every side alike. Each side's images/s is the median over all its processes'
    windows; its compile seconds the median of its processes'; memory the largest peak.

    Timed in one process, the frameworks slow each other down (ResNet-50 at 64 px on the
    2-core CPU of README: 410-550 ms a train step alone, 520-1,150 ms alternating with
    PyTorch's); apart, neither's threads, caches or allocator share a process."""
    import subprocess

    sides = [("jaxcnn", None)] + [("torch", mode) for mode in torch_modes]
    env = child_env()
    runs: dict[tuple[str, str | None], list[dict[str, Any]]] = {s: [] for s in sides}
    with tempfile.TemporaryDirectory(prefix="jaxcnn-bench-") as tmp:
        for round_ in range(rounds):
            for who, mode in sides:
                path = os.path.join(tmp, f"{who}-{mode}-{round_}.json")
                argv = [sys.executable, "-m", "train.bench", *_row_flags(
                    arch, image_size, **options), "--side", who, "--output", path]
                if mode:
                    argv += ["--torch-modes", mode]
                done = subprocess.run(argv, stdout=subprocess.DEVNULL, env=env)
                if done.returncode or not os.path.exists(path):
                    name = f"{who} {mode}" if mode else who
                    raise RuntimeError(f"the {name} process of {arch} exited with status "
                                       f"{done.returncode}; its error is above")
                with open(path) as f:
                    runs[(who, mode)].append(json.load(f))
    ours = runs[("jaxcnn", None)]
    report = dict(ours[0])
    report.pop("pid")
    report["pids"] = {" ".join(filter(None, side)): [r["pid"] for r in reports]
                      for side, reports in runs.items()}
    for part in ("train", "inference"):
        if part in report:
            report[part] = _pooled([r[part] for r in ours], options["batch_size"])
    for name in report.get("conv", {}):
        report["conv"][name] = {part: _pooled([r["conv"][name][part] for r in ours],
                                              options["batch_size"])
                                for part in report["conv"][name]}
    peaks = [r["peak_memory_bytes"] for r in ours if r.get("peak_memory_bytes") is not None]
    if peaks:
        report["peak_memory_bytes"] = max(peaks)
        report["peak_memory_gib"] = round(max(peaks) / 2**30, 3)
    report["torch"] = {}
    for mode in torch_modes:
        theirs = runs[("torch", mode)]
        report["torch_reference"] = theirs[0].get("torch_reference")
        figures = [r["torch"][mode] for r in theirs]
        failed = next((f for f in figures if "error" in f), None)
        report["torch"][mode] = failed or {
            part: _pooled([f[part] for f in figures], options["batch_size"])
            for part in figures[0]}
        torch_peaks = [r["torch_peak_memory_gib"] for r in theirs
                       if r.get("torch_peak_memory_gib") is not None]
        if torch_peaks:
            report["torch_peak_memory_gib"] = max(
                torch_peaks + [report.get("torch_peak_memory_gib") or 0.0])
    report["isolated_rounds"] = rounds
    return _with_ratios(report)


def _row_flags(arch: str, image_size: int | None, *, batch_size: int, dtype: str, steps: int,
               windows: int, warmup: int, num_classes: int, optimizer: str | None,
               parallel: str, inference: bool, conv_policies: tuple[str, ...]) -> list[str]:
    """The command-line flags that time one row as :func:`run_isolated` was asked to."""
    flags = ["--arch", arch, "--batch-size", str(batch_size), "--dtype", dtype,
             "--steps", str(steps), "--windows", str(windows), "--warmup", str(warmup),
             "--num-classes", str(num_classes), "--parallel", parallel, "--compare", "torch"]
    if image_size:
        flags += ["--image-size", str(image_size)]
    if optimizer:
        flags += ["--optimizer", optimizer]
    if not inference:
        flags.append("--no-inference")
    if conv_policies:
        flags += ["--conv-policies", *conv_policies]
    return flags


def _pooled(figures: list[dict[str, Any]], batch_size: int) -> dict[str, Any]:
    """One side's timings from several processes as one: the median over all their windows.
    ``steps_per_window`` lists each process's: each sizes its windows from its own steps."""
    import statistics

    windows = [w for f in figures for w in f["windows_images_per_sec"]]
    return {"images_per_sec": statistics.median(windows),
            "step_ms": statistics.median(1000 * batch_size / w for w in windows),
            "windows_images_per_sec": windows,
            "steps_per_window": [f["steps_per_window"] for f in figures],
            "compile_s": statistics.median(f["compile_s"] for f in figures),
            "processes": len(figures)}


# ---------------------------------------------------------------------------------------------
# The input pipeline.


def _synthetic_jpegs(root: str, count: int, seed: int = 0) -> None:
    """An ImageFolder of ``count`` JPEGs of 500x375, ImageNet's typical size (smooth random
    colours plus noise, so they compress to about the size of a photograph)."""
    import numpy as np
    import tensorflow as tf

    rng = np.random.default_rng(seed)
    for split, n in (("train", count), ("test", 2)):
        for i in range(n):
            folder = os.path.join(root, split, f"class{i % 2}")
            os.makedirs(folder, exist_ok=True)
            coarse = rng.uniform(0, 255, (12, 16, 3)).astype(np.float32)
            image = tf.image.resize(coarse, (375, 500), method="bicubic").numpy()
            image += rng.normal(0, 12, image.shape)
            data = tf.io.encode_jpeg(np.clip(image, 0, 255).astype(np.uint8), quality=90)
            with open(os.path.join(folder, f"{i:05d}.jpg"), "wb") as f:
                f.write(data.numpy())


def time_input_pipeline(image_size: int = 224, batch_size: int = 128, batches: int = 20,
                        images: int = 256) -> dict[str, Any]:
    """images/s of the training input pipeline (:func:`train.input_pipeline.train_iterator`,
    ``augment="inception"``: JPEG decoding of the crop, random-resized crop, flip,
    normalisation) over every core, and per core."""
    from train import input_pipeline

    cores = usable_cores()
    with tempfile.TemporaryDirectory() as root:
        _synthetic_jpegs(root, images)
        size = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(root) for f in fs)
        it = input_pipeline.train_iterator(f"folder:{root}", data_dir=None,
                                           global_batch_size=batch_size, image_size=image_size,
                                           seed=0, augment="inception")
        for _ in range(3):  # the pipeline's buffers fill, its threads start
            next(it)
        start = time.perf_counter()
        for _ in range(batches):
            next(it)
        seconds = time.perf_counter() - start
        # Stop the pipeline's reader threads before the folder goes: left running, they log
        # a NotFoundError for each JPEG they reach after it is deleted.
        it.close()
    rate = batches * batch_size / seconds
    return {"image_size": image_size, "augment": "inception (decode crop, resize, flip)",
            "source_jpeg_kb": round(size / (images + 2) / 1024, 1), "cores": cores,
            "images_per_sec": rate, "images_per_sec_per_core": rate / cores}


# ---------------------------------------------------------------------------------------------
# Sweeps and tables.


def _fmt(value: float | None, digits: int = 0) -> str:
    """``value`` with ``digits`` decimals; whole numbers below 10 keep one (VGG-16's 3.4
    train images/s at 224 px on 2 cores, not 3)."""
    if value is None:
        return "—"
    return f"{value:,.{1 if digits == 0 and abs(value) < 10 else digits}f}"


def _ratio(value: float | None, interval: tuple[float, float] | None = None) -> str:
    if value is None:
        return "—"
    return f"{value:.2f}x" + (f" ({interval[0]:.2f}-{interval[1]:.2f})" if interval else "")


INTERVAL_LEVEL = 0.9
"""The coverage of the interval the tables print after each ratio against PyTorch."""

INTERVAL_RESAMPLES = 2000
"""How many times :func:`ratio_interval` draws each side's windows again."""


def ratio_interval(ours: list[float], theirs: list[float], level: float = INTERVAL_LEVEL,
                   resamples: int = INTERVAL_RESAMPLES,
                   seed: int = 0) -> tuple[float, float] | None:
    """The ``level`` bootstrap interval of ``median(ours) / median(theirs)``, the ratio the
    tables print: each side's timed windows drawn again with replacement ``resamples`` times,
    the interval between the percentiles of the resampled ratios (a fixed seed, so a table
    prints the same each time). None where a side has fewer than two windows. On a host whose
    speed moves between windows, it says which ratios the noise could put on either side of
    1.00x."""
    import numpy as np

    if len(ours) < 2 or len(theirs) < 2:
        return None
    rng = np.random.default_rng(seed)
    a = np.median(rng.choice(np.asarray(ours, float), (resamples, len(ours))), axis=1)
    b = np.median(rng.choice(np.asarray(theirs, float), (resamples, len(theirs))), axis=1)
    low, high = np.quantile(a / b, [(1 - level) / 2, (1 + level) / 2])
    return float(low), float(high)


def _run(report: dict[str, Any]) -> str:
    """The day and commit of the run that wrote ``report``, from the ``sweep`` note a row
    gets when it is recorded in docs/bench_cpu.json."""
    note = report.get("sweep", "")
    day = re.search(r"\d{4}-\d{2}-\d{2}", note)
    commit = re.search(r"\b[0-9a-f]{7}\b", note)
    return ", ".join(m.group() for m in (day, commit) if m) or "—"


def latest(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The last row of each network and size among ``rows`` (in the order they were recorded)
    that timed both frameworks in processes of their own (``--isolate``) on the processor of
    the last such row, in the CPU suite's order of networks."""
    isolated = [r for r in rows if r.get("isolated_rounds") and "train" in r and r.get("torch")]
    cpu = isolated[-1].get("cpu") if isolated else None
    last = {(r["arch"], r["image_size"]): r for r in isolated if r.get("cpu") == cpu}
    order = {arch: i for i, arch in enumerate(CPU_SUITE["arch"])}
    return sorted(last.values(),
                  key=lambda r: (order.get(r["arch"], len(order)), r["arch"], r["image_size"]))


def _rounds(reports: list[dict[str, Any]]) -> str:
    """How many rounds in turn the rows' frameworks were timed in: the most common count, and
    the rows that took another (a row of ``--latest`` may come from a run with more)."""
    def plural(n: int) -> str:
        return f"{n} round{'s' if n > 1 else ''}"

    counts = [r["isolated_rounds"] for r in reports if r.get("isolated_rounds")]
    usual = max(set(counts), key=counts.count)
    rows_by_count: dict[int, list[str]] = {}
    for r in reports:
        if r.get("isolated_rounds", usual) != usual:
            rows_by_count.setdefault(r["isolated_rounds"], []).append(
                f"{r['arch']} at {r['image_size']} px")
    others = [f"{plural(n)} for {' and '.join(rows)}" for n, rows in sorted(rows_by_count.items())]
    return f"{plural(usual)} in turn (--isolate{'; ' if others else ''}{'; '.join(others)})"


def markdown(reports: list[dict[str, Any]], *, pipeline: dict[str, Any] | None = None,
             detail: bool = False, runs: bool = False) -> str:
    """The comparison as a Markdown table: images/s of each side and their ratios, each ratio
    against PyTorch with its :func:`ratio_interval` where both sides recorded their windows;
    ``detail`` adds the train step's compile seconds and memory of each side, ``runs`` the day
    and commit of the run each row comes from."""
    modes = sorted({m for r in reports for m in r.get("torch", {})},
                   key=("eager", "compile").index)
    policies = sorted({p for r in reports for p in r.get("conv", {})})
    head = ["network", "size", "jaxcnn train", "jaxcnn infer"]
    for p in policies:
        head += [f"{p} conv train", "ratio", f"{p} conv infer", "ratio"]
    for mode in modes:
        head += [f"torch {mode} train", "ratio", f"torch {mode} infer", "ratio"]
    if detail:
        head += ["jaxcnn compile s"] + [f"torch {m} compile s" for m in modes]
        head += ["jaxcnn GiB", "torch GiB"]
    if runs:
        head.append("run")
    lines = ["| " + " | ".join(head) + " |", "|---|---:|" + "---:|" * (len(head) - 2)]
    shown = False
    for r in reports:
        if "train" not in r:
            lines.append(f"| `{r['arch']}` | {r['image_size']} | {r.get('error')} |")
            continue
        row = [f"`{r['arch']}`", str(r["image_size"]), _fmt(r["train"]["images_per_sec"]),
               _fmt(r.get("inference", {}).get("images_per_sec"))]
        for p in policies:
            side = r.get("conv", {}).get(p, {})
            for part in ("train", "inference"):
                row += [_fmt(side.get(part, {}).get("images_per_sec")),
                        _ratio(r.get("ratios", {}).get(f"{part}_vs_conv_{p}"))]
        for mode in modes:
            side = r.get("torch", {}).get(mode, {})
            for part in ("train", "inference"):
                interval = ratio_interval(
                    r.get(part, {}).get("windows_images_per_sec", []),
                    side.get(part, {}).get("windows_images_per_sec", []))
                shown = shown or interval is not None
                row += [_fmt(side.get(part, {}).get("images_per_sec")),
                        _ratio(r.get("ratios", {}).get(f"{part}_vs_torch_{mode}"), interval)]
        if detail:
            row.append(_fmt(r["train"]["compile_s"], 1))
            row += [_fmt(r.get("torch", {}).get(m, {}).get("train", {}).get("compile_s"), 1)
                    for m in modes]
            row += [_fmt(r.get("train_step_memory_gib"), 2),
                    _fmt(r.get("torch_peak_memory_gib"), 2)]
        if runs:
            row.append(_run(r))
        lines.append("| " + " | ".join(row) + " |")
    first = next((r for r in reports if "train" in r), {})
    lines += ["", f"images/s, batch {first.get('batch_size')}, {first.get('dtype')}, "
                  f"{first.get('backend')} ({first.get('device')}, "
                  f"{usable_cores()} cores, {first.get('cpu') or platform.machine()}), "
                  f"jax {first.get('jax')}, malloc {first.get('malloc')}; "
                  f"ratio = jaxcnn / the column before it (above 1: jaxcnn faster)"
                  + ("; 'xla conv': jaxcnn with XLA's convolution and max pooling everywhere "
                     "(JAXCNN_CONV=xla)" if policies else "")
                  + (f"; each framework in its own processes, {_rounds(reports)}"
                     if first.get("isolated_rounds") else
                     "; the frameworks in one process, window by window in turn" if modes
                     else "") + "."]
    errors = {f"{r['arch']} torch {m}: {side['error']}" for r in reports
              for m, side in r.get("torch", {}).items() if "error" in side}
    lines += sorted(errors)
    if shown:
        lines.append(f"(a-b) after a ratio: its {INTERVAL_LEVEL:.0%} bootstrap interval over "
                     f"each side's timed windows (resampled {INTERVAL_RESAMPLES:,} times): how "
                     "far the host's noise moves it.")
    if detail:
        lines.append("compile s: the train step's first call. GiB: XLA's memory analysis of the "
                     "compiled train step; torch: the CUDA allocator's peak over the row.")
    if pipeline:
        lines.append(f"Input pipeline ({pipeline['augment']}, {pipeline['image_size']} px): "
                     f"{pipeline['images_per_sec']:,.0f} images/s on {pipeline['cores']} "
                     f"cores, {pipeline['images_per_sec_per_core']:,.0f} per core.")
    return "\n".join(lines)


def expand_archs(patterns: list[str]) -> list[str]:
    """Names and shell wildcards (``resnet*``, ``all``) as registered names, in order."""
    import jaxcnn

    names: list[str] = []
    for pattern in patterns:
        if pattern == "all":
            pattern = "*"
        found = jaxcnn.list_models(pattern) if any(ch in pattern for ch in "*?[") else [
            jaxcnn.model_info(pattern).name]
        names += [n for n in found if n not in names]
    if not names:
        raise ValueError(f"no network matches {' '.join(patterns)}; see jaxcnn.list_models()")
    return names


def _release() -> None:
    """Frees what one row of a sweep compiled before the next."""
    import jax

    jax.clear_caches()
    # Only where a row compiled with torch.compile: importing torch here would load triton
    # after TensorFlow, which crashes the process, and costs seconds for nothing.
    dynamo = sys.modules.get("torch._dynamo")
    if dynamo is not None:
        with contextlib.suppress(Exception):
            dynamo.reset()
    gc.collect()


def sweep_rows(archs: list[str], sizes: list[int | None]) -> list[tuple[str, int]]:
    """(network, size) pairs of a sweep: ``sizes`` raised to each network's minimum (None: its
    default); networks of one small input (LeNet-5, the MNIST/CIFAR networks) at their own."""
    import jaxcnn

    rows = []
    for arch in archs:
        info = jaxcnn.model_info(arch)
        own = info.input_shape[0]
        arch_sizes = [own] if own < 64 else sorted({max(s or own, info.min_size)
                                                    for s in sizes})
        rows += [(arch, size) for size in arch_sizes]
    return rows


def sweep(rows: list[tuple[str, int]], *, budget_minutes: float | None = None,
          progress: Callable[[str], None] = lambda _: None,
          on_row: Callable[[list[dict[str, Any]]], None] = lambda _: None, **kwargs: Any
          ) -> list[dict[str, Any]]:
    """:func:`run_benchmark` for every (network, size) of ``rows``. A row that fails records
    its error; rows past ``budget_minutes`` are skipped and say so. ``on_row`` gets the
    reports so far after each row (the command line writes them, so that a sweep stopped
    halfway keeps its finished rows)."""
    from train import train as train_lib

    start = time.perf_counter()
    reports = []
    for arch, size in rows:
        progress(f"{arch} at {size}x{size}")
        if budget_minutes is not None and time.perf_counter() - start > 60 * budget_minutes:
            reports.append({"arch": arch, "image_size": size,
                            "error": f"skipped: past the {budget_minutes:g}-minute budget"})
            continue
        try:
            reports.append(run_benchmark(arch, image_size=size, **kwargs))
        except Exception as err:  # noqa: BLE001  (one failing row must not lose the others)
            kind = "" if isinstance(err, train_lib.USER_ERRORS + (LookupError,)) else \
                f"{type(err).__name__}: "
            reports.append({"arch": arch, "image_size": size, "error": f"{kind}{err}"})
        _release()
        on_row(reports)
    return reports


def _count(minimum: int) -> Callable[[str], int]:
    """argparse type: an integer of at least ``minimum``, else argparse's one-line error."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or value < minimum:
            raise argparse.ArgumentTypeError(f"{text!r}: give a whole number of at least "
                                             f"{minimum}")
        return value
    return parse


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line, a ``--suite``'s settings under the flags given with it."""
    parser = argparse.ArgumentParser(
        prog="python -m train.bench",
        description="Time the train and inference steps of a network on synthetic data "
                    "(compile seconds, images/s, peak memory) and print JSON; optionally "
                    "against PyTorch in the same run, over several networks and sizes.")
    parser.add_argument("--arch", nargs="+", default=["resnet50"],
                        help="network(s): names, aliases or wildcards ('resnet*', 'all'); "
                             "several make a sweep (default: resnet50)")
    parser.add_argument("--batch-size", type=int, default=256,
                        help="global batch size over all devices (default: 256)")
    parser.add_argument("--image-size", type=int, nargs="+",
                        help="square input size(s) (default: the network's, e.g. 224)")
    parser.add_argument("--dtype", default="auto", choices=DTYPES,
                        help="computation dtype (default: auto: bfloat16 on GPU/TPU, float32 "
                             "on CPU)")
    parser.add_argument("--steps", type=_count(1), default=50,
                        help="timed steps, split over --windows; a window of steps "
                             f"shorter than {MIN_WINDOW_S:g} s takes more of them (default: 50)")
    parser.add_argument("--windows", type=_count(1), default=5,
                        help="timed windows; images/s is their median (default: 5)")
    parser.add_argument("--warmup", type=_count(0), default=2,
                        help="untimed steps after compiling (default: 2)")
    parser.add_argument("--num-classes", type=int, default=1000,
                        help="classifier outputs (default: 1000)")
    parser.add_argument("--optimizer", choices=OPTIMIZERS,
                        help="optimizer in the train step (default: the recipe's; sgd with "
                             "--compare)")
    parser.add_argument("--parallel", default="jit", choices=PARALLEL,
                        help="data parallelism over the local devices (default: jit)")
    parser.add_argument("--no-inference", dest="inference", action="store_false",
                        help="time the train step only")
    parser.add_argument("--compare", choices=("torch",),
                        help="also time the PyTorch reference network in the same run")
    parser.add_argument("--torch-modes", nargs="+", default=["eager", "compile"],
                        choices=("eager", "compile"),
                        help="PyTorch eager and/or torch.compile (default: both)")
    parser.add_argument("--conv-policies", nargs="+", default=[], choices=FORMULATIONS,
                        help="also time our steps with these jaxcnn.conv formulations forced "
                             "(xla: XLA's convolution and max pooling everywhere, i.e. "
                             "jaxcnn before its routing), in the same run")
    parser.add_argument("--isolate", type=int, default=0, metavar="ROUNDS",
                        help="with --compare: time each framework in a process of its own, "
                             "ROUNDS rounds in turn (e.g. 2), instead of both in one process")
    parser.add_argument("--side", choices=("jaxcnn", "torch"), help=argparse.SUPPRESS)
    parser.add_argument("--input-pipeline", action="store_true",
                        help="also time the TFDS input pipeline at 224 px (images/s per core)")
    parser.add_argument("--suite", choices=tuple(SUITES),
                        help="gpu: ResNet-50, EfficientNet-B0, MobileNetV2, SE-ResNet-50, "
                             "VGG-16 at 224, bfloat16, batch 256, against torch.compile; "
                             "cpu: every family at 32, 64 and 224 px, float32, batch 32, "
                             "against PyTorch eager (--isolate 2); flags given with it win")
    parser.add_argument("--budget-minutes", type=float,
                        help="sweeps: start no row after this many minutes")
    parser.add_argument("--threads", type=int,
                        help="run on this many cores only (both frameworks; e.g. 1 on a "
                             "machine busy with other work, where threads that wait for each "
                             "other lose their time slices)")
    parser.add_argument("--latest", metavar="FILE",
                        help="time nothing: the table of the last row of each network and size "
                             "in FILE (a JSON report or docs/bench_cpu.json) that timed each "
                             "framework in its own processes, on the processor of its last row, "
                             "each ratio with its 90%% interval over the timed windows")
    parser.add_argument("--output", help="also write the JSON report to this file")
    parser.add_argument("--markdown", help="also write the Markdown table to this file")
    args = parser.parse_args(argv)
    if args.suite:  # the suite's settings, under any flag given on the command line
        parser.set_defaults(**SUITES[args.suite], input_pipeline=True)
        args = parser.parse_args(argv)
    return args


def emit_table(table: str, markdown_path: str | None) -> None:
    """Prints a Markdown table and writes it to ``markdown_path`` when one is given."""
    print(table)
    if markdown_path:
        with open(markdown_path, "w") as f:
            f.write(table + "\n")


def print_latest(path: str, markdown_path: str | None = None) -> int:
    """``--latest``: the table of :func:`latest`'s rows of the JSON report at ``path``."""
    try:
        with open(path) as f:
            rows = latest(json.load(f).get("rows", []))
        table = markdown(rows, detail=True, runs=True) if rows else None
    except KeyError as err:
        print(f"error: --latest {path}: a row lacks the field {err}; pass a JSON report "
              "written by --output.", file=sys.stderr)
        return 2
    except (OSError, ValueError, AttributeError, TypeError) as err:
        print(f"error: --latest {path}: {err}; pass a JSON report written by --output.",
              file=sys.stderr)
        return 2
    if table is None:
        print(f"error: --latest {path}: no row timed each framework in its own processes "
              "(--isolate); pass a report of --suite cpu.", file=sys.stderr)
        return 2
    emit_table(table + f"\nEach row is the last of its network and size in "
               f"{os.path.basename(path)}; rows of different runs ran at different speeds of "
               "the host: compare their ratios, not their images/s.", markdown_path)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.latest:
        return print_latest(args.latest, args.markdown)
    if args.threads:
        restrict_cores(args.threads)
    if args.compare and not args.side:
        from train.bench_torch import missing

        why = missing()
        if why:
            print(f"error: {why}", file=sys.stderr)
            return 2
    if args.compare or args.suite:
        # Two frameworks share the accelerator: XLA must not take most of its memory up front.
        os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    from train import train as train_lib
    from train.checkpoints import write_json_atomic

    options = dict(batch_size=args.batch_size, dtype=args.dtype, steps=args.steps,
                   windows=args.windows, warmup=args.warmup, num_classes=args.num_classes,
                   optimizer=args.optimizer, parallel=args.parallel, inference=args.inference,
                   compare=args.compare, torch_modes=tuple(args.torch_modes),
                   conv_policies=tuple(args.conv_policies), isolate=args.isolate,
                   side=args.side)
    sizes = args.image_size or [None]
    try:
        archs = expand_archs(args.arch)
        if len(archs) == 1 and len(sizes) == 1 and not args.suite:
            result: Any = run_benchmark(archs[0], image_size=sizes[0], **options)
            reports = [result]
        else:
            from tqdm import tqdm

            rows = sweep_rows(archs, sizes)
            bar = tqdm(total=len(rows), desc="sweep", unit="row")

            def progress(text: str) -> None:
                bar.set_postfix_str(text, refresh=False)
                bar.update()

            def keep(done: list[dict[str, Any]]) -> None:
                if args.output:
                    write_json_atomic(args.output, {"rows": done, "partial": True})

            reports = sweep(rows, budget_minutes=args.budget_minutes, progress=progress,
                            on_row=keep, **options)
            bar.close()
            result = {"rows": reports}
    except (train_lib.USER_ERRORS + (ValueError, LookupError)) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    pipeline = None
    if args.input_pipeline:
        try:
            pipeline = time_input_pipeline()
        except ImportError as err:  # no TensorFlow here (an accelerator's own image, say)
            print(f"warning: input pipeline not timed: {err}; install jaxcnn[train] to time "
                  "it", file=sys.stderr)
            result["input_pipeline"] = {"error": f"not timed: {err}"}
    if pipeline:
        result["input_pipeline"] = pipeline
    print(json.dumps(result, indent=2))
    table = markdown(reports, pipeline=pipeline, detail=bool(args.suite)) if (
        args.compare or args.conv_policies or len(reports) > 1 or pipeline) else None
    if args.output:
        write_json_atomic(args.output, result)
    if table:
        print()
        emit_table(table, args.markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
