"""Benchmark of jaxcnn.visualize: ``python -m train.bench_visualize [--quick]``.

Two figures the issue asks for, measured in one run so that their ratio holds on a busy
machine:

* an occlusion map (Zeiler & Fergus Fig. 7; Captum's ``Occlusion``) of one ``--size`` image,
  ``--window`` square moved by ``--stride`` (224, 32 and 8: 25 x 25 = 625 occluded copies), by
  :func:`jaxcnn.visualize.explain` (windows in batches of ``--batch-size`` under one jit) and by
  Captum on the torch reference (torchvision's network with the same weights) with
  ``perturbations_per_eval`` = ``--batch-size`` and = 1 (Captum's default), all float32; the
  two maps are compared too;
* the throughput of the top-k pass (:func:`jaxcnn.visualize.top_activations`) over synthetic
  batches, in images/s after the first (compiling) batch.

Prints JSON. Needs the parity extra (torch, torchvision, captum). ``--quick`` runs a tiny
version (64x64 ResNet-18) to check that everything works.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def _seconds(fn) -> tuple[float, Any]:
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def occlusion(arch: str, size: int, window: int, stride: int, batch_size: int,
              captum_default: bool) -> dict[str, Any]:
    """Our occlusion map against Captum's on the torchvision network with the same weights."""
    import jax
    import numpy as np
    import torch
    import torchvision
    from captum.attr import Occlusion

    import jaxcnn
    from jaxcnn import convert
    from jaxcnn import visualize as vz

    torch.manual_seed(0)
    reference = getattr(torchvision.models, arch)(weights=None).eval()
    state = {k: v.detach().numpy() for k, v in reference.state_dict().items()}
    variables = convert.load_pretrained(arch, state, input_shape=(1, size, size, 3))
    model = jaxcnn.create_model(arch)
    image = np.random.default_rng(0).standard_normal((1, size, size, 3)).astype(np.float32)
    target = 1

    def ours():
        out = vz.explain(model, variables, image, target, ("occlusion",), window=window,
                         stride=stride, batch_size=batch_size)["occlusion"]
        return np.asarray(jax.block_until_ready(out))

    first, _ = _seconds(ours)
    ours_s, ours_map = _seconds(ours)
    x = torch.from_numpy(image.transpose(0, 3, 1, 2).copy())
    occluder = Occlusion(reference)

    def captum(per_eval):
        with torch.no_grad():
            return occluder.attribute(x, sliding_window_shapes=(3, window, window),
                                      strides=(3, stride, stride), baselines=0.0,
                                      target=target, perturbations_per_eval=per_eval)

    captum_s, captum_map = _seconds(lambda: captum(batch_size))
    captum_map = captum_map.numpy()[0, 0]
    windows = (1 + -(-(size - window) // stride)) ** 2
    report = {
        "arch": arch, "size": size, "window": window, "stride": stride, "windows": windows,
        "batch_size": batch_size, "ours_s": ours_s, "ours_first_call_s": first,
        "captum_batched_s": captum_s, "captum_batched_over_ours": captum_s / ours_s,
        "max_relative_difference": float(np.max(np.abs(ours_map[0] - captum_map))
                                         / np.max(np.abs(captum_map))),
    }
    if captum_default:
        default_s, _ = _seconds(lambda: captum(1))
        report.update(captum_default_s=default_s, captum_default_over_ours=default_s / ours_s)
    return report


def top_k_throughput(arch: str, size: int, layer: str | None, batch_size: int, batches: int,
                     k: int, channels: int) -> dict[str, Any]:
    """Images/s of the top-k pass over synthetic batches, after the compiling first batch."""
    import jax
    import numpy as np

    import jaxcnn
    from jaxcnn import visualize as vz
    from jaxcnn.features import layer_outputs

    model = jaxcnn.create_model(arch)
    x = np.zeros((batch_size, size, size, jaxcnn.model_info(arch).input_shape[2]), np.float32)
    variables = jax.jit(lambda: model.init(jax.random.key(0), x[:1], train=False))()
    spatial = [n for n, s in layer_outputs(model, variables, x[:1]).items()
               if getattr(s, "ndim", 0) == 4]
    layer = layer or spatial[-1]
    rng = np.random.default_rng(0)
    data = [rng.standard_normal(x.shape).astype(np.float32) for _ in range(batches + 1)]
    chosen = list(range(channels))
    first, _ = _seconds(lambda: vz.top_activations(model, variables, data[:1], layer, k=k,
                                                   channels=chosen))
    seconds, _ = _seconds(lambda: vz.top_activations(model, variables, data, layer, k=k,
                                                     channels=chosen))
    # The timed pass repeats the first batch's (now compiled) work: subtract none of it.
    images = batch_size * (batches + 1)
    return {"arch": arch, "size": size, "layer": layer, "k": k, "channels": channels,
            "batch_size": batch_size, "images": images, "first_batch_s": first,
            "images_per_s": images / seconds}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m train.bench_visualize",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", default="resnet50", help="a torchvision-convertible network")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--window", type=int, default=32)
    parser.add_argument("--stride", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=32,
                        help="occluded copies per network call (ours and Captum's batched run)")
    parser.add_argument("--topk-batches", type=int, default=8)
    parser.add_argument("--topk-channels", type=int, default=64)
    parser.add_argument("--no-captum-default", action="store_true",
                        help="skip Captum with perturbations_per_eval=1 (its slowest run)")
    parser.add_argument("--quick", action="store_true",
                        help="a tiny run (ResNet-18 at 64x64) that checks everything works")
    args = parser.parse_args(argv)
    if args.quick:
        args.arch, args.size, args.window, args.stride = "resnet18", 64, 16, 16
        args.batch_size, args.topk_batches, args.topk_channels = 8, 2, 8

    import jax

    report = {
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                    "backend": jax.default_backend(), "devices": jax.device_count()},
        "occlusion": occlusion(args.arch, args.size, args.window, args.stride, args.batch_size,
                               not args.no_captum_default),
        "top_k": top_k_throughput(args.arch, args.size, None, args.batch_size,
                                  args.topk_batches, 9, args.topk_channels),
    }
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
