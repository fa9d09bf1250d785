"""Seeing what a trained network learned: ``python -m train.visualize --workdir RUN``.

Pictures of :mod:`jaxcnn.visualize` for a training run's checkpoint (``--workdir``, the network,
data set and image size read from the config stored beside it) or for converted weights
(``--arch`` with ``--weights``), on images of a data set split or image files::

    python -m train.visualize --workdir runs/lenet5_mnist_sample            # the overview
    python -m train.visualize --workdir runs/lenet5_mnist_sample --method top_activations \\
        --layer conv2
    python -m train.visualize --arch resnet50 --weights weights/resnet50 --images cat.jpg \\
        --method grad_cam --layer stage4_block3

``--method``: ``overview`` (input, gradient, deconvnet, guided backpropagation, Grad-CAM and
occlusion side by side), any method of :func:`jaxcnn.visualize.explain`, ``occlusion_maps``
(Zeiler & Fergus Fig. 7), ``top_activations`` (Fig. 2: the top-k images of each feature map
over the whole split, their receptive fields and deconvnet projections), ``filters`` (the first
layer's filters) or ``evolution`` (Fig. 4: a feature map's strongest projection at every
checkpoint of the run). Each writes ``METHOD.png`` and its arrays as ``.npy`` to ``--out``.
Mistakes in the request (an unknown layer, Grad-CAM on a layer without spatial axes, a target
out of range, images of the wrong shape) print one line and exit with status 2, having written
nothing.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from typing import Any, Callable

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

from jaxcnn import visualize as vz  # noqa: E402
from train.configs.default import Config, ConfigError  # noqa: E402

EXTRA_METHODS = ("overview", "occlusion_maps", "top_activations", "filters", "evolution")
METHODS = EXTRA_METHODS + vz.METHODS
OVERVIEW = ("gradient", "deconvnet", "guided_backprop", "grad_cam", "occlusion")
TITLES = {"gradient": "gradient", "saliency": "saliency", "smoothgrad": "SmoothGrad",
          "integrated_gradients": "integrated gradients", "deconvnet": "deconvnet",
          "guided_backprop": "guided backprop", "grad_cam": "Grad-CAM",
          "guided_grad_cam": "guided Grad-CAM", "occlusion": "occlusion"}


@dataclasses.dataclass
class Subject:
    """The network looked at, and where its images come from."""

    model: Any
    variables: Any
    config: Config  # resolved: arch, dataset, image size, channels, classes
    describe: str
    class_names: tuple[str, ...] = ()
    checkpoints: Any = None  # the run's Checkpoints (evolution), when read from a workdir
    steps: tuple[int, ...] = ()


def load_subject(args: argparse.Namespace) -> Subject:
    """The network of ``--workdir`` (a checkpoint) or ``--arch`` with ``--weights``, in float32
    (gradients of a bfloat16 network are too coarse to look at)."""
    from train import checkpoints as checkpoints_lib
    from train import train as train_lib

    if args.workdir:
        ckpts = checkpoints_lib.Checkpoints(os.path.join(args.workdir, "checkpoints"),
                                            read_only=True)
        steps = ckpts.all_steps()
        if not steps:
            raise checkpoints_lib.CheckpointError(
                f"No checkpoints in {ckpts.directory}. Train first (python -m train.main "
                f"--workdir {args.workdir}) or pass the --workdir of a finished run.")
        step = args.step if args.step is not None else (
            (ckpts.best_step() if args.best else None) or ckpts.latest_step())
        if step not in steps:
            raise checkpoints_lib.CheckpointError(
                f"No checkpoint at step {step} in {ckpts.directory}; there are {steps}.")
        config = Config.from_dict(ckpts.stored_config(step)).replace(dtype="float32")
        variables = ckpts.restore_variables(step)
        model = train_lib.build_model(config)
        return Subject(model, variables, config, f"{config.arch} at step {step} of {args.workdir}",
                       checkpoints=ckpts, steps=tuple(sorted(steps)))
    return _converted_subject(args, train_lib)


def _converted_subject(args: argparse.Namespace, train_lib: Any) -> Subject:
    import jaxcnn
    from jaxcnn import convert as convert_lib
    from jaxcnn.weights import WeightMismatchError

    if not args.weights:
        raise ConfigError("--arch needs --weights: a directory written by python -m "
                          "jaxcnn.convert or a weights file (random weights show nothing).")
    info = jaxcnn.model_info(args.arch)
    try:
        if os.path.isdir(args.weights):
            variables, meta = convert_lib.load_converted(args.weights)
            if meta.get("arch") != info.name:
                raise ConfigError(f"--weights {args.weights} holds {meta.get('arch')}, not "
                                  f"--arch {info.name}: pass --arch {meta.get('arch')}.")
            num_classes = meta["num_classes"]
        elif os.path.isfile(args.weights):
            variables = convert_lib.load_pretrained(info.name, args.weights)
            num_classes = info.num_classes
        else:
            raise ConfigError(f"--weights {args.weights}: no such file or directory.")
    except (FileNotFoundError, WeightMismatchError) as err:
        raise ConfigError(f"--weights: {err}") from err
    size = args.image_size or info.input_shape[0]
    config = Config(arch=info.name, dataset=args.dataset or "", data_dir=args.data_dir,
                    num_classes=num_classes, image_size=size, channels=info.input_shape[2],
                    dtype="float32")
    return Subject(train_lib.build_model(config), variables, config,
                   f"{info.name} with the weights of {args.weights}")


def load_images(args: argparse.Namespace, subject: Subject) -> tuple[np.ndarray, np.ndarray | None]:
    """The images to explain and their labels (None for image files)."""
    c = subject.config
    expected = (c.image_size, c.image_size, c.channels)
    if args.images:
        arrays = [p for p in args.images if p.endswith(".npy")]
        if arrays and len(arrays) != len(args.images):
            raise ConfigError("--images: give either .npy arrays or image files, not both.")
        if arrays:
            images = np.concatenate([_array_images(p, expected) for p in arrays])
        else:
            from train import input_pipeline  # TensorFlow: only for image files and data sets

            images = input_pipeline.read_images(args.images, image_size=c.image_size,
                                                channels=c.channels, name=c.dataset or None,
                                                data_dir=c.data_dir)
        return images[:args.count] if args.count else images, None
    if not c.dataset:
        raise ConfigError("No images: pass --images FILE... or --dataset NAME.")
    images, labels = [], []
    for batch in _batches(args, subject, args.count):
        keep = batch["mask"]
        images.append(batch["image"][keep])
        labels.append(batch["label"][keep])
        if sum(map(len, images)) >= args.count:
            break
    return np.concatenate(images)[:args.count], np.concatenate(labels)[:args.count]


def _array_images(path: str, expected: tuple[int, int, int]) -> np.ndarray:
    try:
        images = np.load(path)
    except (OSError, ValueError) as err:
        raise ConfigError(f"--images {path}: not a NumPy array file ({err}).") from err
    images = images[None] if images.ndim == 3 else images
    if images.ndim != 4 or tuple(images.shape[1:]) != expected:
        raise ConfigError(
            f"--images {path} holds shape {images.shape}; the network takes preprocessed "
            f"images shaped (N, {expected[0]}, {expected[1]}, {expected[2]}) (NHWC, normalised "
            f"as its data set). Pass image files instead to have them preprocessed.")
    return images.astype(np.float32)


def _batches(args: argparse.Namespace, subject: Subject, limit: int | None):
    """Batches of the data set split (unaugmented, in order), up to ``limit`` images."""
    from train import input_pipeline

    c = subject.config
    iterator = input_pipeline.eval_iterator(
        c.dataset, data_dir=c.data_dir, global_batch_size=args.batch_size,
        image_size=c.image_size, channels=c.channels, split=args.split)
    seen = 0
    for batch in iterator:
        if limit is not None and seen >= limit:
            return
        if limit is not None and seen + len(batch["mask"]) > limit:
            batch = dict(batch, mask=batch["mask"] & (np.arange(len(batch["mask"]))
                                                      < limit - seen))
        seen += len(batch["mask"])
        yield batch


def _split_size(args: argparse.Namespace, subject: Subject) -> int:
    from train import input_pipeline

    info = input_pipeline.dataset_info(subject.config.dataset, subject.config.data_dir)
    total = info.num_train if args.split == info.train_split else info.num_eval
    return min(total, args.limit) if args.limit else total


# ---------------------------------------------------------------------------------------------
# What each method computes: arrays, and a function that draws them.


def parse_target(text: str, layer: str | None) -> Any:
    """``predicted``, ``label``, a class index, or ``channel:C`` (feature map C of --layer)."""
    if text in ("predicted", "label"):
        return text
    if text.startswith("channel:"):
        if layer is None:
            raise ConfigError("--target channel:C needs --layer (the layer of that channel).")
        try:
            return vz.Unit(layer, int(text.split(":", 1)[1]))
        except ValueError:
            raise ConfigError(f"--target {text}: write channel:C with an integer C.") from None
    try:
        return int(text)
    except ValueError:
        raise ConfigError(f"--target {text!r}: use predicted, label, a class index, or "
                          f"channel:C.") from None


def resolve_target(target: Any, subject: Subject, images: np.ndarray,
                   labels: np.ndarray | None) -> Any:
    if target == "label":
        if labels is None:
            raise ConfigError("--target label needs labelled images (--dataset, not --images); "
                              "use --target predicted or a class index.")
        return labels
    if target == "predicted":
        from jaxcnn import conv

        predict = conv.jit(lambda v, x: subject.model.apply(v, x, train=False).argmax(-1),
                           inference=True)
        return np.asarray(predict(subject.variables, images))
    return target


def default_layer(subject: Subject, images: np.ndarray) -> str:
    """The last layer with spatial axes (where Grad-CAM is usually taken)."""
    from jaxcnn.features import layer_outputs

    outputs = layer_outputs(subject.model, subject.variables, images[:1])
    spatial = [n for n, s in outputs.items() if getattr(s, "ndim", 0) == 4]
    if not spatial:
        raise ConfigError(f"{subject.config.arch} has no layer with spatial axes to show.")
    return spatial[-1]


def compute(args: argparse.Namespace, subject: Subject) -> tuple[dict[str, np.ndarray],
                                                                 Callable[[str], None]]:
    """The arrays of ``args.method`` and a function drawing them to a PNG path."""
    method = args.method
    if method == "filters":
        images, _ = _probe(subject)
        kernels = vz.first_layer_filters(subject.model, subject.variables, images)
        return {"filters": kernels}, lambda path: _draw_filters(path, kernels, subject)
    if method in ("top_activations", "evolution"):
        return _ranked(args, subject)
    images, labels = load_images(args, subject)
    layer = args.layer
    target = parse_target(args.target, layer)
    if method in ("overview", "grad_cam", "guided_grad_cam", "occlusion_maps") and not layer:
        layer = default_layer(subject, images)
    if method == "occlusion_maps":
        truth = resolve_target(target if not isinstance(target, vz.Unit) else "predicted",
                               subject, images, labels)
        maps = vz.occlusion_maps(subject.model, subject.variables, images, truth,
                                 window=args.window, stride=args.stride,
                                 baseline=args.baseline, layer=layer,
                                 batch_size=args.batch_size)
        arrays = {"inputs": images, "targets": np.asarray(truth), **maps}
        return arrays, lambda path: _draw_occlusion_maps(path, images, maps, truth, subject)
    methods = OVERVIEW if method == "overview" else (method,)
    resolved = resolve_target(target, subject, images, labels)
    out = vz.explain(subject.model, subject.variables, images, resolved, methods, layer=layer,
                     rectifiers=args.rectifiers, baseline=args.baseline, steps=args.steps,
                     integration=args.integration, samples=args.samples, window=args.window,
                     stride=args.stride, batch_size=args.batch_size)
    out = {k: np.asarray(v) for k, v in out.items()}
    arrays = {"inputs": images, "targets": _target_array(resolved, len(images)), **out}
    return arrays, lambda path: _draw_attributions(path, images, out, methods, resolved,
                                                   subject, layer)


def _target_array(target: Any, n: int) -> np.ndarray:
    if isinstance(target, vz.Unit):
        return np.broadcast_to(np.asarray(target.channel), (n,))
    return np.broadcast_to(np.asarray(target), (n,))


def _probe(subject: Subject) -> tuple[np.ndarray, None]:
    c = subject.config
    return np.zeros((1, c.image_size, c.image_size, c.channels), np.float32), None


def _channels(text: str | None, count: int) -> list[int]:
    if text is None:
        return list(range(min(16, count)))
    if text == "all":
        return list(range(count))
    try:
        chosen = []
        for part in text.split(","):
            lo, _, hi = part.partition("-")
            chosen += list(range(int(lo), int(hi or lo) + 1))
    except ValueError:
        raise ConfigError(f"--channels {text!r}: write e.g. 0-7,12 or all.") from None
    outside = [c for c in chosen if not 0 <= c < count]
    if outside or not chosen:
        raise ConfigError(f"--channels {text}: the layer has feature maps 0 to {count - 1}.")
    return chosen


def _ranked(args: argparse.Namespace, subject: Subject) -> tuple[dict[str, np.ndarray],
                                                                 Callable[[str], None]]:
    """Top activations over the split (Fig. 2), or one map's strongest projection at every
    checkpoint (Fig. 4)."""
    from jaxcnn.features import layer_outputs

    if not subject.config.dataset:
        raise ConfigError(f"--method {args.method} streams a data set split: pass --dataset.")
    probe, _ = _probe(subject)
    layer = args.layer or default_layer(subject, probe)
    outputs = layer_outputs(subject.model, subject.variables, probe)
    if layer not in outputs:
        vz.explain(subject.model, subject.variables, probe, 0, layer=layer)  # names the layers
    channels = _channels(args.channels, outputs[layer].shape[-1])
    total = _split_size(args, subject)
    if args.method == "top_activations":
        top = vz.top_activations(subject.model, subject.variables,
                                 _batches(args, subject, args.limit), layer, k=args.k,
                                 channels=channels, progress=args.progress, total=total)
        projections, boxes = vz.project_top(subject.model, subject.variables, top,
                                            rectifiers=args.rectifiers)
        arrays = {"values": top.values, "index": top.index, "channels": top.channels,
                  "boxes": boxes, "patches": vz.crop(top.images, boxes),
                  "projections": vz.crop(projections, boxes)}
        return arrays, lambda path: _draw_top(path, arrays, layer, subject)
    if subject.checkpoints is None:
        raise ConfigError("--method evolution reads the checkpoints of a run: pass --workdir.")
    if args.channels is None:
        channels = channels[:4]
    columns, steps = [], []
    for step in subject.steps:
        variables = subject.checkpoints.restore_variables(step)
        top = vz.top_activations(subject.model, variables, _batches(args, subject, args.limit),
                                 layer, k=1, channels=channels, progress=args.progress,
                                 total=total)
        projections, boxes = vz.project_top(subject.model, variables, top,
                                            rectifiers=args.rectifiers)
        columns.append(vz.crop(projections, boxes)[:, 0])
        steps.append(step)
    size = max(c.shape[1] for c in columns)
    stacked = np.stack([np.pad(c, ((0, 0), (0, size - c.shape[1]), (0, size - c.shape[2]),
                                   (0, 0))) for c in columns], axis=1)
    arrays = {"projections": stacked, "steps": np.asarray(steps),
              "channels": np.asarray(channels)}
    return arrays, lambda path: _draw_evolution(path, arrays, layer, subject)


# ---------------------------------------------------------------------------------------------
# Drawing (matplotlib, Agg).


def _pyplot():
    import matplotlib

    if matplotlib.get_backend().lower() != "agg" and "pyplot" not in sys.modules:
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _show_input(image: np.ndarray) -> np.ndarray:
    shown = vz.unit_range(image)
    return shown[..., 0] if shown.shape[-1] == 1 else shown


def _display_map(name: str, values: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """One value per pixel in [0, 1] for the heat map of ``name``."""
    import jax

    if name in ("grad_cam", "occlusion"):
        values = np.asarray(jax.image.resize(values, size, "bilinear"))
        return vz.unit_range(values, axes=(-2, -1), symmetric=name == "occlusion")
    return vz.unit_range(vz.pixel_map(values[None])[0], axes=(-2, -1))


def _label(subject: Subject, cls: Any) -> str:
    if isinstance(cls, (int, np.integer)) and int(cls) < len(subject.class_names):
        return subject.class_names[int(cls)]
    return str(cls)


def _draw_attributions(path, images, out, methods, target, subject, layer) -> None:
    plt = _pyplot()
    single = len(methods) == 1
    columns = ["input"] + ([TITLES[methods[0]], "overlay"] if single
                           else [TITLES[m] for m in methods])
    n = len(images)
    fig, axes = plt.subplots(n, len(columns), figsize=(1.6 * len(columns), 1.6 * n + 0.5),
                             squeeze=False)
    for i in range(n):
        shown = _show_input(images[i])
        cells = [(shown, "gray" if shown.ndim == 2 else None)]
        for m in methods:
            heat = _display_map(m, out[m][i], images.shape[1:3])
            cmap = "RdBu_r" if m == "occlusion" else "inferno"
            cells.append((heat, cmap))
            if single:
                cells.append(("overlay", heat))
        for j, (cell, cmap) in enumerate(cells):
            ax = axes[i, j]
            if isinstance(cell, str):
                ax.imshow(shown, cmap="gray" if shown.ndim == 2 else None)
                ax.imshow(cmap, cmap="inferno", alpha=0.55)
            else:
                ax.imshow(cell, cmap=cmap)
            ax.set_xticks([])
            ax.set_yticks([])
        what = (f"map {target.channel} of {target.layer}" if isinstance(target, vz.Unit)
                else f"class {_label(subject, np.broadcast_to(target, (n,))[i])}")
        axes[i, 0].set_ylabel(what, fontsize=7)
    for j, title in enumerate(columns):
        axes[0, j].set_title(title, fontsize=8)
    where = f"; Grad-CAM at {layer}" if layer and any("cam" in m for m in methods) else ""
    fig.suptitle(f"{subject.describe}{where}", fontsize=8)
    _save(fig, path)


def _draw_occlusion_maps(path, images, maps, truth, subject) -> None:
    plt = _pyplot()
    keys = [k for k in ("probability", "most_probable", "feature_map") if k in maps]
    titles = {"probability": "p(true class)", "most_probable": "most probable class",
              "feature_map": "strongest map"}
    fig, axes = plt.subplots(len(images), 1 + len(keys),
                             figsize=(1.8 * (1 + len(keys)), 1.7 * len(images) + 0.5),
                             squeeze=False)
    for i, image in enumerate(images):
        shown = _show_input(image)
        axes[i, 0].imshow(shown, cmap="gray" if shown.ndim == 2 else None)
        axes[i, 0].set_ylabel(f"class {_label(subject, truth[i])}", fontsize=7)
        for j, k in enumerate(keys, start=1):
            if k == "most_probable":
                shown_map = axes[i, j].imshow(maps[k][i], cmap="tab10", vmin=0, vmax=9)
                for (r, c), v in np.ndenumerate(maps[k][i]):
                    axes[i, j].text(c, r, str(v), ha="center", va="center", fontsize=4)
            else:
                shown_map = axes[i, j].imshow(maps[k][i], cmap="viridis")
            del shown_map
    for ax in axes.ravel():
        ax.set_xticks([])
        ax.set_yticks([])
    axes[0, 0].set_title("input", fontsize=8)
    for j, k in enumerate(keys, start=1):
        axes[0, j].set_title(titles[k], fontsize=8)
    fig.suptitle(f"occlusion: {subject.describe}", fontsize=8)
    _save(fig, path)


def _draw_top(path, arrays, layer, subject) -> None:
    plt = _pyplot()
    patches, projections = arrays["patches"], arrays["projections"]
    channels, k = patches.shape[0], patches.shape[1]
    left = vz.tile(vz.unit_range(projections.reshape(-1, *projections.shape[2:]),
                                 symmetric=True), columns=k)
    right = vz.tile(vz.unit_range(patches.reshape(-1, *patches.shape[2:])), columns=k)
    fig, axes = plt.subplots(1, 2, figsize=(8, 4 * channels / max(k, 1) + 0.6))
    for ax, grid, title in ((axes[0], left, "deconvnet projections"),
                            (axes[1], right, "input patches")):
        ax.imshow(grid[..., 0] if grid.shape[-1] == 1 else grid,
                  cmap="gray" if grid.shape[-1] == 1 else None)
        ax.set_title(title, fontsize=8)
        ax.set_xticks([])
        ax.set_yticks([])
    axes[0].set_ylabel(f"feature maps {', '.join(map(str, arrays['channels']))}"
                       f" of {layer}, top {k} each", fontsize=7)
    fig.suptitle(f"top activations: {subject.describe}", fontsize=8)
    _save(fig, path)


def _draw_filters(path, kernels, subject) -> None:
    plt = _pyplot()
    grid = vz.tile(vz.filter_images(kernels))
    fig, ax = plt.subplots(figsize=(4, 4))
    ax.imshow(grid[..., 0] if grid.shape[-1] == 1 else grid,
              cmap="gray" if grid.shape[-1] == 1 else None)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(f"first-layer filters {kernels.shape[0]}x{kernels.shape[1]}, "
                 f"{kernels.shape[3]} of them: {subject.describe}", fontsize=7)
    _save(fig, path)


def _draw_evolution(path, arrays, layer, subject) -> None:
    plt = _pyplot()
    projections = arrays["projections"]  # (channels, steps, s, s, c)
    grid = vz.tile(vz.unit_range(projections.reshape(-1, *projections.shape[2:]),
                                 symmetric=True), columns=projections.shape[1])
    fig, ax = plt.subplots(figsize=(1.2 * projections.shape[1] + 1,
                                    1.2 * projections.shape[0] + 0.6))
    ax.imshow(grid[..., 0] if grid.shape[-1] == 1 else grid,
              cmap="gray" if grid.shape[-1] == 1 else None)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_xlabel("steps " + ", ".join(map(str, arrays["steps"])), fontsize=7)
    ax.set_ylabel(f"maps {', '.join(map(str, arrays['channels']))} of {layer}",
                  fontsize=7)
    ax.set_title(f"strongest projection at each checkpoint: {subject.config.arch} in "
                 f"{subject.checkpoints.directory}", fontsize=7)
    _save(fig, path)


def _save(fig, path: str) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    _pyplot().close(fig)


# ---------------------------------------------------------------------------------------------
# Command line.


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m train.visualize",
        description="Pictures of what a network learned (jaxcnn.visualize): attributions, "
                    "deconvnet projections, occlusion, top activations, filters.",
        epilog="examples:\n"
               "  python -m train.visualize --workdir runs/lenet5_mnist_sample\n"
               "  python -m train.visualize --workdir runs/lenet5_mnist_sample --method "
               "top_activations --layer conv2\n"
               "  python -m train.visualize --workdir runs/lenet5_mnist_sample --method "
               "occlusion_maps --window 8 --stride 2\n"
               "  python -m train.visualize --arch resnet50 --weights weights/resnet50 "
               "--images cat.jpg --method grad_cam",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--workdir", help="a training run: its checkpoint and stored config")
    source.add_argument("--arch", help="a registered network, with --weights")
    parser.add_argument("--weights", help="with --arch: a directory written by python -m "
                        "jaxcnn.convert, or a weights file")
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--step", type=int, help="the checkpoint of this step (default: latest)")
    which.add_argument("--best", action="store_true", help="the checkpoint with the best top-1")
    parser.add_argument("--images", nargs="+", help="image files (JPEG/PNG), or .npy arrays of "
                        "preprocessed images (N, H, W, C)")
    parser.add_argument("--dataset", help="data set to take images from (default: the run's)")
    parser.add_argument("--data-dir", help="TFDS data directory (default: the run's)")
    parser.add_argument("--split", help="the split to read: train or the evaluation split "
                        "(default: evaluation)")
    parser.add_argument("--image-size", type=int, help="with --arch: input size (default: the "
                        "network's)")
    parser.add_argument("--count", type=int, default=6, help="images to explain (default: 6)")
    parser.add_argument("--method", choices=METHODS, default="overview",
                        help="what to draw (default: overview)")
    parser.add_argument("--layer", help="layer of Grad-CAM, occlusion maps, top activations and "
                        "channel targets (default: the last layer with spatial axes)")
    parser.add_argument("--target", default="predicted", help="predicted (default), label, a "
                        "class index, or channel:C (feature map C of --layer)")
    parser.add_argument("--k", type=int, default=9, help="top activations per feature map")
    parser.add_argument("--channels", help="feature maps for top_activations/evolution, e.g. "
                        "0-7,12 or all (default: the first 16; evolution: 4)")
    parser.add_argument("--limit", type=int, help="images of the split to stream at most "
                        "(default: all)")
    parser.add_argument("--window", type=int, default=8, help="occlusion square (pixels)")
    parser.add_argument("--stride", type=int, default=4, help="occlusion stride (pixels)")
    parser.add_argument("--baseline", type=float, default=0.0, help="occluder and integrated "
                        "gradients baseline, in normalised units (0: the data set's mean)")
    parser.add_argument("--steps", type=int, default=50, help="integrated gradients steps")
    parser.add_argument("--integration", choices=vz.INTEGRATION, default="gausslegendre")
    parser.add_argument("--samples", type=int, default=25, help="SmoothGrad samples")
    parser.add_argument("--rectifiers", type=lambda s: tuple(filter(None, s.split(","))),
                        default=vz.RECTIFIERS, help="activations given the deconvnet/guided rule "
                        "(default: relu,relu6)")
    parser.add_argument("--batch-size", type=int, default=64, help="images per network call")
    parser.add_argument("--out", help="output directory (default: WORKDIR/visualize or "
                        "./visualize)")
    parser.add_argument("--arrays", action=argparse.BooleanOptionalAction, default=True,
                        help="save the arrays as .npy beside the picture (default: on)")
    parser.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True,
                        help="progress bar over the split (default: on)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from train import train as train_lib

    errors = train_lib.USER_ERRORS + (vz.VisualizeError,)
    try:
        subject = load_subject(args)
        c = subject.config
        overrides = {k: v for k, v in (("dataset", args.dataset), ("data_dir", args.data_dir))
                     if v}
        if overrides:
            subject.config = c.replace(**overrides)
        if subject.config.dataset:
            from train import input_pipeline

            info = input_pipeline.dataset_info(subject.config.dataset, subject.config.data_dir)
            subject.class_names = info.class_names
        out_dir = args.out or os.path.join(args.workdir or ".", "visualize")
        png = os.path.join(out_dir, f"{args.method}.png")
        if os.path.exists(png):
            raise ConfigError(f"{png} exists; pass another --out (nothing was overwritten).")
        arrays, draw = compute(args, subject)
    except errors as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    os.makedirs(out_dir, exist_ok=True)
    names = [args.method if name == args.method else f"{args.method}_{name}" for name in arrays]
    names = names if args.arrays else []
    for name, array in zip(names, arrays.values()):
        np.save(os.path.join(out_dir, f"{name}.npy"), np.asarray(array))
    draw(png)
    print(f"wrote {png}" + "".join(f", {n}.npy" for n in names), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
