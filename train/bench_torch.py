"""The PyTorch side of ``python -m train.bench --compare torch``.

The network is the reference a variant declares for its weights (its torchvision or timm
converter, built with the converter's arguments), so both sides run the same layers; LeNet-5,
which has no reference to convert from, is written out here in the twelve lines its layer
table takes. The train step is the one a PyTorch user writes: forward, cross-entropy, backward,
SGD with momentum and weight decay on the kernels only (as our Optax mask), in the resolved
config's dtype (bfloat16 through ``torch.autocast``, parameters float32, as ours). Inference is
the eval-mode forward under ``torch.inference_mode``. ``torch.compile`` compiles the network
(forward and backward), the optimizer step stays eager.

Each step is returned as a :class:`train.timing.Runner`; :func:`train.timing.time_interleaved`
times both frameworks window by window in one process.
"""

from __future__ import annotations

import time
from typing import Any, Callable

from train.timing import Runner, usable_cores

MODES = ("eager", "compile")


def missing() -> str | None:
    """Why ``--compare torch`` cannot run here (PyTorch is not installed), or None."""
    import importlib.util

    if importlib.util.find_spec("torch") is None:
        return ("--compare torch needs PyTorch, which is not installed here: "
                "pip install -e '.[parity]' (torch and torchvision, pinned).")
    return None


class NoReference(LookupError):
    """The variant has no PyTorch network to compare with."""


def _lenet5(num_classes: int, channels: int):
    """The modern LeNet-5 of :class:`jaxcnn.lenet.LeNet5` (ReLU, max pooling, no padding)."""
    from torch import nn

    return nn.Sequential(
        nn.Conv2d(channels, 6, 5), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(6, 16, 5), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
        nn.Linear(400, 120), nn.ReLU(), nn.Linear(120, 84), nn.ReLU(),
        nn.Linear(84, num_classes))


# torch constructors that take ``aux_logits``: the comparison runs both sides without them.
_AUX = {"googlenet", "inception_v3"}


def reference_name(arch: str) -> str:
    """``"torchvision resnet18"``, ``"timm legacy_seresnet50"``, ... for ``arch``; raises
    :class:`NoReference` when it has none."""
    import jaxcnn

    info = jaxcnn.model_info(arch)
    if info.name == "lenet5":
        return "torch LeNet-5 (train.bench_torch)"
    for c in info.converters:
        if c.source in ("torchvision", "timm"):
            return f"{c.source} {c.reference}"
    raise NoReference(f"{info.name} has no torchvision or timm reference to compare with")


def build_reference(arch: str, num_classes: int, channels: int):
    """The torch network of :func:`reference_name`, freshly initialised."""
    import jaxcnn

    info = jaxcnn.model_info(arch)
    if info.name == "lenet5":
        return _lenet5(num_classes, channels)
    for c in info.converters:
        kwargs = dict(c.reference_kwargs)
        if c.source == "torchvision":
            import torchvision

            if c.reference in _AUX:
                kwargs["aux_logits"] = False
                kwargs.setdefault("init_weights", True)
            return getattr(torchvision.models, c.reference)(num_classes=num_classes, **kwargs)
        if c.source == "timm":
            import timm

            kwargs.pop("aux_logits", None)
            return timm.create_model(c.reference, pretrained=False, num_classes=num_classes,
                                     **kwargs)
    raise NoReference(f"{info.name} has no torchvision or timm reference to compare with")


def set_threads() -> int:
    """Lets torch use every core this process may run on (XLA does by default)."""
    import torch

    cores = usable_cores()
    torch.set_num_threads(cores)
    return cores


def prepare(arch: str, *, batch_size: int, image_size: int, channels: int, num_classes: int,
            dtype: str, lr: float, momentum: float, weight_decay: float, mode: str,
            inference: bool = True, seed: int = 0) -> dict[str, Runner]:
    """The torch train (and inference) step of ``arch``, warmed up: ``{"train": Runner, ...}``.

    ``mode`` is ``"eager"`` or ``"compile"`` (``torch.compile`` of the network; its
    ``compile_s`` is the first step's seconds, which include compiling).
    """
    import torch

    if mode not in MODES:
        raise ValueError(f"torch mode {mode!r} is not one of {', '.join(MODES)}")
    set_threads()
    torch.manual_seed(seed)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = build_reference(arch, num_classes, channels).to(device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    decay = [p for p in model.parameters() if p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.ndim <= 1]
    opt = torch.optim.SGD([{"params": decay, "weight_decay": weight_decay},
                           {"params": no_decay, "weight_decay": 0.0}], lr=lr,
                          momentum=momentum)
    net = torch.compile(model) if mode == "compile" else model
    autocast_dtype = {"bfloat16": torch.bfloat16, "float32": None}[dtype]

    gen = torch.Generator().manual_seed(seed)
    images = torch.randn(batch_size, channels, image_size, image_size, generator=gen)
    labels = torch.randint(0, num_classes, (batch_size,), generator=gen)
    images, labels = images.to(device), labels.to(device)
    if device.type == "cuda":
        images = images.contiguous(memory_format=torch.channels_last)

    def autocast():
        return torch.autocast(device.type, dtype=autocast_dtype,
                              enabled=autocast_dtype is not None)

    def train_step():
        opt.zero_grad(set_to_none=True)
        with autocast():
            logits = net(images)
        loss = torch.nn.functional.cross_entropy(logits.float(), labels)
        loss.backward()
        opt.step()
        return loss

    def infer_step():
        with torch.inference_mode(), autocast():
            return net(images)

    def sync(_: Any) -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    def runner(step: Callable[[], Any], enter: Callable[[], Any]) -> Runner:
        enter()
        start = time.perf_counter()
        sync(step())
        return Runner(step, sync, time.perf_counter() - start, enter)

    runners = {"train": runner(train_step, model.train)}
    if inference:
        runners["inference"] = runner(infer_step, model.eval)
    return runners


def reset_peak_memory() -> None:
    """Starts the CUDA allocator's peak afresh (each network of a sweep has its own)."""
    import torch

    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()


def peak_memory_bytes() -> int | None:
    """The CUDA allocator's peak since :func:`reset_peak_memory`; None on CPU (one process
    holds both frameworks' memory there)."""
    import torch

    return int(torch.cuda.max_memory_allocated()) if torch.cuda.is_available() else None
