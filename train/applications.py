"""The Keras Applications table of the zoo, measured, and the Canziani chart.

``python -m train.applications`` measures every registered network (or those ``--arch``
names) and writes, in one run:

* the table between the ``applications-table`` markers of README.md, one row per network, in
  the columns of the keras.io Applications table: weights size, published top-1 and top-5 with
  their source, parameters, depth, GMACs, and *measured* milliseconds per inference step at
  batch 32 (Keras' convention: the mean over 30 batches) on this machine's backend. Results
  are kept per device in ``--results`` (JSON), so a run on a CPU and one on a GPU fill one
  column each;
* the chart of Canziani et al. 2016 (``--chart``, PNG): published top-1 against GMACs with
  bubbles sized by parameters, and top-1 against measured images/s.

Definitions (the table's header says them too):

* **depth**: Keras' convention, the layers that hold weights: convolutions, BatchNorm and
  dense layers (and the input ``Normalization`` of Keras' EfficientNet). It reproduces the
  keras.io table's current revision: VGG16 16, ResNet50 107, MobileNetV2 105, DenseNet121 242,
  InceptionV3 189, EfficientNetB0 132.
* **size (MB)**: the weights as float32 with the BatchNorm statistics (Keras' total), in MiB,
  as keras.io's "Size" (ResNet50: 98).
* **GMACs**: :func:`jaxcnn.macs` at the network's default input, batch 1.

On 2 CPU cores the 73 networks at 30 batches take hours (EfficientNet-B7 at 600 px needs
about a minute a batch): ``--max-seconds`` caps the timed seconds per network (at least 3
batches are always taken) and the table marks every row measured over fewer than 30 batches.
Each network is timed in a process of its own (:func:`time_isolated`; ``--no-isolate`` for
one process).
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import sys
import time
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from train.timing import cpu_description, usable_cores  # noqa: E402

START, END = "<!-- applications-table:start -->", "<!-- applications-table:end -->"
KERAS_BATCHES = 30
BATCH_SIZE = 32
MIN_BATCHES = 3

KERAS_TIMING_SOURCE = (
    "keras.io Applications table (current revision, keras-team/keras-io "
    "templates/api/applications/index.md): ms per inference step at batch 32, the mean of 30 "
    "batches and 10 repetitions, on 'AMD EPYC Processor (with IBPB) (92 core)' and a Tesla A100")
KERAS_MS = {
    # The Keras counterpart of each row, keras.io's figures: (CPU ms, GPU ms) per step.
    "vgg16": (69.5, 4.2), "vgg19": (84.8, 4.4),
    "resnet50_keras": (58.2, 4.6), "resnet101_keras": (89.6, 5.2),
    "resnet152_keras": (127.4, 6.5), "resnet50_v2": (45.6, 4.4),
    "resnet101_v2": (72.7, 5.4), "resnet152_v2": (107.5, 6.6),
    "inception_v3_keras": (42.2, 6.9),
    "mobilenet_v1_keras": (22.6, 3.4), "mobilenet_v2_keras": (25.9, 3.8),
    "densenet121": (77.1, 5.4), "densenet169": (96.4, 6.3), "densenet201": (127.2, 6.7),
    "efficientnet_b0_keras": (46.0, 4.9), "efficientnet_b1_keras": (60.2, 5.6),
    "efficientnet_b2_keras": (80.8, 6.5), "efficientnet_b3_keras": (140.0, 8.8),
    "efficientnet_b4_keras": (308.3, 15.1), "efficientnet_b5_keras": (579.2, 25.3),
    "efficientnet_b6_keras": (958.1, 40.4), "efficientnet_b7_keras": (1578.9, 61.6),
}
"""keras.io's own timings of the same networks, shown beside ours for scale: its machine has 92
cores where ours may have 2, so the two columns are not a ratio of frameworks."""


def published(info: Any, metric: str, source_like: str | None = None
              ) -> tuple[float, str] | None:
    """The variant's published ``metric`` (first without builder overrides), as (value,
    source); with ``source_like``, one from the same publisher first (the top-5 of the
    weights whose top-1 is shown)."""
    figures = [p for p in info.published if p.metric == metric and not p.overrides]
    if source_like:
        prefix = source_like.split(" acc@")[0].split(",")[0]
        figures.sort(key=lambda p: not p.source.startswith(prefix))
    return (figures[0].value, figures[0].source) if figures else None


def static_row(name: str) -> dict[str, Any]:
    """The figures of ``name`` that need no timing: counts, depth, size, GMACs, published."""
    import jaxcnn

    info = jaxcnn.model_info(name)
    rows = jaxcnn.layer_rows(name)
    variables = jaxcnn.init_shapes(name)
    keras_total = jaxcnn.count_params(variables, "keras")
    top1 = published(info, "top1")
    top5 = published(info, "top5", top1[1] if top1 else None)
    return {
        "name": name, "input_shape": list(info.input_shape),
        "params": jaxcnn.count_params(variables, "params"), "keras_total": keras_total,
        "depth": sum(1 for r in rows if r.params or r.state),
        "size_mb": keras_total * 4 / 2**20,
        "gmacs": sum(r.macs for r in rows) / 1e9,
        "top1": top1[0] if top1 else None, "top1_source": top1[1] if top1 else None,
        "top5": top5[0] if top5 else None, "top5_source": top5[1] if top5 else None,
        "family": info.module.split(".")[1],
    }


def time_inference(name: str, *, batch_size: int = BATCH_SIZE, batches: int = KERAS_BATCHES,
                   max_seconds: float | None = None, dtype: str = "auto") -> dict[str, Any]:
    """Milliseconds per inference step of ``name`` at its default input: the mean over
    ``batches`` batches after one untimed call (fewer when they would take longer than
    ``max_seconds``, never fewer than 3)."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    import jaxcnn
    from jaxcnn import conv
    from train.parallel import run_once

    info = jaxcnn.model_info(name)
    if dtype == "auto":
        dtype = "float32" if jax.default_backend() == "cpu" else "bfloat16"
    model = jaxcnn.create_model(name, dtype=jnp.dtype(dtype))
    x = jnp.asarray(np.random.default_rng(0).standard_normal(
        (batch_size, *info.input_shape)), jnp.float32)
    variables = run_once(jax.jit(lambda: model.init(jax.random.key(0), x[:1], train=False)))
    forward = conv.jit(lambda v, x: model.apply(v, x, train=False), inference=True)
    start = time.perf_counter()
    forward = forward.lower(variables, x).compile()
    jax.block_until_ready(forward(variables, x))
    compile_s = time.perf_counter() - start
    jax.block_until_ready(forward(variables, x))
    spent, done = 0.0, 0
    while done < batches and (max_seconds is None or done < MIN_BATCHES or spent < max_seconds):
        begin = time.perf_counter()
        jax.block_until_ready(forward(variables, x))
        spent += time.perf_counter() - begin
        done += 1
    return {"ms_per_step": 1000 * spent / done, "batches": done, "batch_size": batch_size,
            "images_per_sec": done * batch_size / spent, "compile_s": compile_s,
            "dtype": dtype, "pid": os.getpid()}


def time_isolated(name: str, **options: Any) -> dict[str, Any]:
    """:func:`time_inference` of ``name`` in a Python process of its own, as a user who runs
    only that network would see it. Timed one after another in one process, later networks
    ran slower (ResNet-101, the 38th of the table: 2,690 ms a step there, 2,117 in a process
    of its own; ResNet-101 v2 1,491 against 1,216): what the earlier ones left behind in the
    allocator and the caches is not the network's cost."""
    import subprocess
    import tempfile

    from train.bench import child_env

    with tempfile.TemporaryDirectory(prefix="jaxcnn-applications-") as tmp:
        results = pathlib.Path(tmp) / "timing.json"
        argv = [sys.executable, "-m", "train.applications", "--arch", name, "--no-isolate",
                "--results", str(results), "--readme", "", "--chart", "",
                "--batch-size", str(options["batch_size"]), "--batches", str(options["batches"])]
        if options.get("max_seconds") is not None:
            argv += ["--max-seconds", str(options["max_seconds"])]
        done = subprocess.run(argv, stdout=subprocess.DEVNULL, env=child_env())
        if done.returncode or not results.exists():
            raise RuntimeError(f"the process timing {name} exited with status "
                               f"{done.returncode}; its error is above")
        (timing,) = (t[name] for t in json.loads(results.read_text())["timings"].values())
    return timing


def device_label() -> str:
    """``"CPU: 2 cores, AMD EPYC"``, ``"GPU: NVIDIA H100 80GB HBM3"``, ..."""
    import jax

    device = jax.devices()[0]
    if jax.default_backend() == "cpu":
        return f"CPU: {usable_cores()} cores, {cpu_description()}"
    return f"{jax.default_backend().upper()}: {device.device_kind}"


# ---------------------------------------------------------------------------------------------
# The table.


def _num(value: float | None, fmt: str) -> str:
    return "" if value is None else format(value, fmt)


def markdown_table(rows: list[dict[str, Any]], timings: dict[str, dict[str, Any]]) -> str:
    """The Applications table: one row per network, one timing column per device."""
    devices = sorted(timings)
    head = ["network", "input", "size (MB)", "top-1 %", "top-5 %", "params", "depth", "GMACs"]
    head += [f"ms/step, {d}" for d in devices] + ["keras.io ms/step, CPU / GPU"]
    lines = ["| " + " | ".join(head) + " |", "|---|---|" + "---:|" * (len(head) - 2)]
    sources: dict[str, int] = {}

    def cite(source: str | None) -> str:
        if source is None:
            return ""
        sources.setdefault(source, len(sources) + 1)
        return f"<sup>{sources[source]}</sup>"

    short = False
    for r in rows:
        h, w, c = r["input_shape"]
        cells = [f"`{r['name']}`", f"{h}x{w}x{c}", f"{r['size_mb']:.1f}",
                 _num(r["top1"], ".1f") + cite(r["top1_source"]),
                 _num(r["top5"], ".1f") + cite(r["top5_source"]),
                 f"{r['params']:,}", str(r["depth"]), f"{r['gmacs']:.3f}"]
        for device in devices:
            t = timings[device].get(r["name"])
            if t is None or "error" in t:
                cells.append("" if t is None else "failed")
                continue
            mark = "" if t["batches"] >= KERAS_BATCHES else f" ({t['batches']})"
            short = short or bool(mark)
            cells.append(f"{t['ms_per_step']:,.1f}{mark}")
        keras = KERAS_MS.get(r["name"])
        cells.append(f"{keras[0]:,.1f} / {keras[1]:,.1f}" + cite(KERAS_TIMING_SOURCE)
                     if keras else "")
        lines.append("| " + " | ".join(cells) + " |")
    notes = [
        "",
        f"ms/step: one inference step at batch {BATCH_SIZE} at the network's input size, "
        f"the mean over {KERAS_BATCHES} batches after one untimed call (Keras' convention), "
        "float32 on CPU and bfloat16 on GPU, measured by `python -m train.applications`"
        + ("; (n): measured over n batches only, to keep the whole table within its time "
           "budget (`--max-seconds`)" if short else "") + ".",
        "size: float32 weights with BatchNorm statistics, MiB (keras.io's 'Size'). depth: "
        "layers holding weights (convolutions, BatchNorm, dense: Keras' convention). GMACs: "
        "`jaxcnn.macs`, batch 1. top-1/top-5: ImageNet accuracy of the weights the source "
        "publishes:",
        "",
    ]
    notes += [f"{i}. {source}" for source, i in sources.items()]
    return "\n".join(lines + notes)


def update_readme(path: str | pathlib.Path, table: str) -> None:
    """Replaces what stands between the markers in ``path`` with ``table``."""
    path = pathlib.Path(path)
    text = path.read_text()
    if START not in text or END not in text:
        raise SystemExit(f"error: {path} has no {START} ... {END} markers; add them where the "
                         f"table should go.")
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    path.write_text(f"{head}{START}\n{table}\n{END}{tail}")


# ---------------------------------------------------------------------------------------------
# The chart.


def chart(rows: list[dict[str, Any]], timings: dict[str, dict[str, Any]], path: str) -> None:
    """Canziani et al. 2016's comparison: top-1 against GMACs (bubble area ~ parameters), and
    top-1 against measured images/s on the first device with timings."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    ranked = [r for r in rows if r["top1"] is not None]
    families = sorted({r["family"] for r in ranked})
    colours = {f: plt.get_cmap("tab20")(i % 20) for i, f in enumerate(families)}
    device = next(iter(sorted(timings)), None)
    fig, axes = plt.subplots(1, 2, figsize=(15, 6.5), constrained_layout=True)
    panels = [(axes[0], lambda r: r["gmacs"], "GMACs per image (log scale)")]
    if device:
        panels.append((axes[1], lambda r: timings[device].get(r["name"], {}).get(
            "images_per_sec"), f"measured images/s, batch {BATCH_SIZE} ({device}; log scale)"))
    else:
        axes[1].set_visible(False)
    for ax, x_of, label in panels:
        for r in ranked:
            x = x_of(r)
            if not x:
                continue
            ax.scatter(x, r["top1"], s=r["params"] / 1e5, color=colours[r["family"]],
                       alpha=0.55, edgecolors="black", linewidths=0.4)
            ax.annotate(r["name"], (x, r["top1"]), fontsize=6, ha="center", va="center")
        ax.set_xscale("log")
        ax.set_xlabel(label)
        ax.set_ylabel("published ImageNet top-1 (%)")
        ax.grid(True, alpha=0.3)
    for f in families:
        axes[0].scatter([], [], color=colours[f], label=f, s=40)
    axes[0].legend(fontsize=7, loc="lower right", title="family (bubble area ~ parameters)",
                   title_fontsize=7)
    fig.suptitle("Top-1 accuracy against operations and measured speed "
                 "(after Canziani et al. 2016)")
    fig.savefig(path, dpi=90)
    plt.close(fig)


# ---------------------------------------------------------------------------------------------
# The command.


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m train.applications",
        description="Measure the Keras Applications table of the zoo (ms per inference step "
                    "at batch 32) and draw the Canziani chart.")
    parser.add_argument("--arch", nargs="+", default=["all"],
                        help="networks: names or wildcards (default: all)")
    parser.add_argument("--batches", type=int, default=KERAS_BATCHES,
                        help=f"timed batches per network (default: {KERAS_BATCHES}, Keras')")
    parser.add_argument("--batch-size", type=int, default=BATCH_SIZE)
    parser.add_argument("--max-seconds", type=float,
                        help="stop timing a network after this many seconds (at least "
                             f"{MIN_BATCHES} batches); the table marks it")
    parser.add_argument("--no-isolate", dest="isolate", action="store_false",
                        help="time every network in this process instead of one process "
                             "each (faster to start; later networks then run slower)")
    parser.add_argument("--no-measure", dest="measure", action="store_false",
                        help="draw the table and chart from --results only")
    parser.add_argument("--results", default="docs/applications.json",
                        help="timings per device, read and updated (default: "
                             "docs/applications.json)")
    parser.add_argument("--readme", default="README.md",
                        help="write the table between its markers here ('' to skip)")
    parser.add_argument("--chart", default="docs/canziani.png",
                        help="write the chart here ('' to skip)")
    args = parser.parse_args(argv)

    import jax
    from tqdm import tqdm

    from train.bench import expand_archs
    from train.checkpoints import write_json_atomic

    try:
        names = expand_archs(args.arch)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    results_path = pathlib.Path(args.results) if args.results else None
    stored = json.loads(results_path.read_text()) if results_path and results_path.exists() \
        else {}
    timings: dict[str, dict[str, Any]] = stored.get("timings", {})
    rows = [static_row(n) for n in tqdm(names, desc="counting", leave=False)]
    if args.measure:
        device = device_label()
        mine = timings.setdefault(device, {})
        bar = tqdm(names, desc=f"timing on {device}", unit="net")
        for name in bar:
            bar.set_postfix_str(name, refresh=True)
            timer = time_isolated if args.isolate else time_inference
            try:
                mine[name] = timer(name, batch_size=args.batch_size, batches=args.batches,
                                   max_seconds=args.max_seconds)
            except Exception as err:  # noqa: BLE001 - one network's failure is recorded
                mine[name] = {"error": f"{type(err).__name__}: {str(err).splitlines()[0]}"}
            if not args.isolate:  # the next network compiles in this process
                jax.clear_caches()
            if results_path:  # after every network: a stopped run keeps what it measured
                write_json_atomic(str(results_path), {"timings": timings})
    table = markdown_table(rows, timings)
    print(table)
    if args.readme:
        update_readme(args.readme, table)
    if args.chart:
        pathlib.Path(args.chart).parent.mkdir(parents=True, exist_ok=True)
        chart(rows, timings, args.chart)
    return 0


if __name__ == "__main__":
    sys.exit(main())
