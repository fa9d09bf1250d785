"""Metrics of a run: JSON lines, TensorBoard events, and a PNG of the training curves.

``WORKDIR/metrics.jsonl`` holds one JSON object per logged point: ``{"step", "epoch", "split",
...scalars}``, ``split`` being ``"train"`` or ``"eval"``. TensorBoard events go to
``WORKDIR/tensorboard`` (``tensorboard --logdir WORKDIR``), and ``WORKDIR/curves.png`` is drawn
from the JSON lines at the end of a run. Only the process that logs (process 0) writes.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from typing import Any, Sequence

METRICS_FILE = "metrics.jsonl"
CURVES_FILE = "curves.png"


def read_metrics(workdir: str) -> list[dict[str, Any]]:
    """The records of ``WORKDIR/metrics.jsonl`` (a torn last line from a crash is skipped)."""
    path = os.path.join(workdir, METRICS_FILE)
    if not os.path.exists(path):
        return []
    records = []
    with open(path) as f:
        for line in f:
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return records


def _scalar_metadata():
    from tensorflow.core.framework import summary_pb2

    return summary_pb2.SummaryMetadata(
        plugin_data=summary_pb2.SummaryMetadata.PluginData(plugin_name="scalars"))


class MetricWriter:
    """Appends scalars to the JSON lines file and to TensorBoard (no-op when not ``enabled``).

    ``resume_step``: records after this step (from a run that died after its last checkpoint)
    are dropped, so that a resumed run's curves do not double back.
    """

    def __init__(self, workdir: str, *, enabled: bool = True, resume_step: int = 0,
                 tensorboard: bool = True):
        self.enabled = enabled
        self.workdir = workdir
        self._tb = None if tensorboard else False
        self._file = None
        if not enabled:
            return
        os.makedirs(workdir, exist_ok=True)
        path = os.path.join(workdir, METRICS_FILE)
        kept = [r for r in read_metrics(workdir) if r.get("step", 0) <= resume_step]
        fd, tmp = tempfile.mkstemp(dir=workdir, prefix=".tmp-", suffix=".jsonl")
        with os.fdopen(fd, "w") as f:
            for record in kept:
                f.write(json.dumps(record) + "\n")
        os.replace(tmp, path)
        self._file = open(path, "a", buffering=1)

    def write(self, step: int, split: str, scalars: dict[str, float], **extra: Any) -> None:
        if not self.enabled:
            return
        values = {k: float(v) for k, v in scalars.items()}
        record = {"step": int(step), "split": split, **extra, **values, "time": time.time()}
        self._file.write(json.dumps(record) + "\n")
        tb = self._writer()
        if tb is not None:
            import tensorflow as tf

            with tb.as_default(step=int(step)):
                for name, value in values.items():
                    # tf.summary.scalar needs the tensorboard package; this raw write with the
                    # scalars plugin's metadata is what it does, with TensorFlow alone.
                    tf.summary.write(f"{split}/{name}", tf.constant(value, tf.float32),
                                     metadata=_scalar_metadata())

    def _writer(self):
        if self._tb is None:
            try:
                import tensorflow as tf
            except ImportError:  # TensorBoard events are optional; the JSON lines are not.
                self._tb = False
                return None
            self._tb = tf.summary.create_file_writer(os.path.join(self.workdir, "tensorboard"))
        return self._tb or None

    def flush(self) -> None:
        if self._file:
            self._file.flush()
        if self._tb:
            self._tb.flush()

    def close(self) -> None:
        if self._file:
            self._file.close()
            self._file = None
        if self._tb:
            self._tb.close()
            self._tb = None


def plot_curves(workdir: str, path: str | None = None, title: str | None = None,
                top5: bool = True, terms: Sequence[str] = ()) -> str | None:
    """Draws loss, accuracy and learning rate against epochs into a PNG; returns its path.

    ``terms`` are further training metrics (an objective's, such as SWWAE's reconstruction
    terms), drawn in a fourth panel."""
    records = read_metrics(workdir)
    train = [r for r in records if r.get("split") == "train"]
    evals = [r for r in records if r.get("split") == "eval"]
    if not train and not evals:
        return None
    # A Figure of its own, drawn without pyplot: switching pyplot's backend here (to Agg) would
    # silence the plots of a notebook that trains.
    from matplotlib.figure import Figure

    def xs(rs):
        return [r.get("epoch", r["step"]) for r in rs]

    terms = [t for t in terms if any(t in r for r in train)]
    fig = Figure(figsize=(20 if terms else 15, 4))
    axes = fig.subplots(1, 4 if terms else 3)
    ax = axes[0]
    ax.plot(xs(train), [r["loss"] for r in train], label="train")
    if evals:
        ax.plot(xs(evals), [r["loss"] for r in evals], "o-", label="eval")
    ax.set_title("loss")
    ax = axes[1]
    ax.plot(xs(train), [100 * r["accuracy"] for r in train], label="train top-1")
    if evals:
        ax.plot(xs(evals), [100 * r["top1"] for r in evals], "o-", label="eval top-1")
        if top5 and all("top5" in r for r in evals):
            ax.plot(xs(evals), [100 * r["top5"] for r in evals], "s--", label="eval top-5")
    ax.set_title("accuracy (%)")
    ax = axes[2]
    ax.plot(xs(train), [r["lr"] for r in train])
    ax.set_title("learning rate")
    if terms:
        ax = axes[3]
        for term in terms:
            ax.plot(xs(train), [r.get(term, float("nan")) for r in train], label=term)
        ax.set_title("objective terms (train)")
        ax.legend()
    for ax in axes:
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    axes[0].legend()
    axes[1].legend()
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return save_figure(fig, path or os.path.join(workdir, CURVES_FILE))


def save_figure(fig: Any, path: str, dpi: int = 100) -> str:
    """Writes a Matplotlib figure to the PNG ``path`` atomically (its folder is made);
    returns ``path``."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, suffix=".png")
    os.close(fd)
    try:
        fig.savefig(tmp, dpi=dpi)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


def draw_image_rows(path: str, rows: Sequence[tuple[str, Any]], title: str = "") -> str:
    """Draws rows of images side by side into the PNG ``path``; returns ``path``.

    ``rows`` are ``(label, images)`` with images (N, H, W, C), grey or RGB, in any units: each
    row is scaled to its own range, so rows of different units (inputs and reconstructions,
    digits before and after a transform) compare by shape.
    """
    import numpy as np
    from matplotlib.figure import Figure  # no pyplot: a notebook's backend stays as it is

    count = max(len(images) for _, images in rows)
    fig = Figure(figsize=(1.1 * count + 1.2, 1.2 * len(rows) + (0.4 if title else 0.1)))
    axes = np.asarray(fig.subplots(len(rows), count, squeeze=False))
    for (label, images), row in zip(rows, axes):
        images = np.asarray(images, np.float32)
        low, high = float(images.min()), float(images.max())
        for i, ax in enumerate(row):
            ax.set_xticks([])
            ax.set_yticks([])
            if i >= len(images):
                ax.axis("off")
                continue
            image = (images[i] - low) / max(high - low, 1e-8)
            ax.imshow(image[..., 0] if image.shape[-1] == 1 else image, cmap="gray",
                      vmin=0.0, vmax=1.0, interpolation="nearest")
        row[0].set_ylabel(label, fontsize=9)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return save_figure(fig, path, dpi=80)
