"""Convolution shapes of the zoo, timed in each formulation: ``python -m train.convbench``.

Collects every convolution the registered networks run at the given image sizes (batch 32,
forward of the train step), groups them into shape classes (stem, 1x1, spatial kxk, grouped,
depthwise; by map size, stride and padding), and times a sample of each class forward and
backward (gradients with respect to the input and the kernel) in every formulation of
:mod:`jaxcnn.conv` that computes it, interleaved in one process so that the ratios hold on a
busy machine. Prints one line per class: XLA's GFLOP/s, the best formulation's, and what
:func:`jaxcnn.conv.choose` picks ("auto"); writes every measurement as JSON.

XLA's "typical" throughput is the median forward GFLOP/s of its dense (ungrouped) convolutions
of at least 0.1 GFLOP in the sample; a class below half of it is flagged.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import json
import os
import statistics
import sys
import time
from typing import Any, Iterable

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import jaxcnn  # noqa: E402
from jaxcnn import conv  # noqa: E402
from train import bench_torch  # noqa: E402
from train.bench import sweep_rows  # noqa: E402
from train.timing import cpu_description  # noqa: E402

DEFAULT_SIZES = (32, 64, 224)
MAX_PATCH_BYTES = 1 << 29  # im2col's stacked patches beyond this are not tried


@dataclasses.dataclass(frozen=True)
class ConvKey:
    """A convolution without its batch: what makes two layers the same shape."""

    height: int
    width: int
    in_channels: int
    kh: int
    kw: int
    out_channels: int
    strides: tuple[int, int]
    pads: tuple[tuple[int, int], tuple[int, int]]
    groups: int

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ConvKey":
        return cls(**{**d, "strides": tuple(d["strides"]),
                      "pads": tuple(tuple(p) for p in d["pads"])})

    def shape(self, batch: int) -> conv.Shape:
        return conv.Shape((batch, self.height, self.width, self.in_channels),
                          (self.kh, self.kw, self.in_channels // self.groups,
                           self.out_channels), self.strides, self.pads, self.groups)


def shape_class(key: ConvKey) -> str:
    """``kind map stride pad``: e.g. ``3x3 2x2 s1 pad``, ``depthwise 5x5 8x8 s2 pad``."""
    if key.groups > 1:
        kind = ("depthwise" if key.groups == key.in_channels == key.out_channels
                else "grouped") + f" {key.kh}x{key.kw}"
    elif key.kh == key.kw == 1:
        kind = "1x1"
    elif key.in_channels <= 4:
        kind = f"stem {key.kh}x{key.kw}"
    else:
        kind = f"{key.kh}x{key.kw}" if key.kh == key.kw else "1xk/kx1"
    side = key.height
    band = next(f"{b}x{b}" if a == b else f"{a}-{b}"
                for a, b in ((1, 1), (2, 2), (3, 4), (5, 8), (9, 16), (17, 32), (33, 64),
                             (65, 10**6)) if a <= side <= b).replace("65-1000000", ">64")
    pad = "pad" if any(p for pair in key.pads for p in pair) else "valid"
    return f"{kind} {band} s{key.strides[0]} {pad}"


def _conv_eqns(jaxpr: Any) -> Iterable[Any]:
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "conv_general_dilated":
            yield eqn
        for value in eqn.params.values():
            inner = getattr(value, "jaxpr", value)
            if hasattr(inner, "eqns"):
                yield from _conv_eqns(inner)


def network_sizes(name: str, sizes: Iterable[int]) -> list[int]:
    """The sizes a network runs at: those of a sweep of ``python -m train.bench``."""
    return [size for _, size in sweep_rows([name], list(sizes))]


def collect(names: Iterable[str], sizes: Iterable[int], batch: int = 32
            ) -> dict[ConvKey, list[str]]:
    """Every convolution in the train-mode forward pass: key -> ``["net@size", ...]``."""
    found: dict[ConvKey, list[str]] = collections.defaultdict(list)
    for name in names:
        model = jaxcnn.create_model(name)
        channels = jaxcnn.model_info(name).input_shape[2]
        for size in network_sizes(name, sizes):
            x = jax.ShapeDtypeStruct((batch, size, size, channels), jnp.float32)
            rngs = {"params": jax.random.key(0), "dropout": jax.random.key(1)}
            with conv.policy("xla"):  # the convolutions themselves, not their rewriting
                variables = jax.eval_shape(lambda x: model.init(rngs, x, train=False), x)
                jaxpr = jax.make_jaxpr(lambda v, x: model.apply(
                    v, x, train=True, mutable=["batch_stats"], rngs=rngs))(variables, x)
            for eqn in _conv_eqns(jaxpr.jaxpr):
                lhs, rhs, p = eqn.invars[0].aval, eqn.invars[1].aval, eqn.params
                if (p["dimension_numbers"] != conv.NHWC
                        or any(d != 1 for d in (*p["lhs_dilation"], *p["rhs_dilation"]))):
                    continue
                key = ConvKey(lhs.shape[1], lhs.shape[2], lhs.shape[3], rhs.shape[0],
                              rhs.shape[1], rhs.shape[3], tuple(p["window_strides"]),
                              tuple(tuple(q) for q in p["padding"]),
                              p["feature_group_count"])
                found[key].append(f"{name}@{size}")
    return dict(found)


def sample(keys: Iterable[ConvKey], per_class: int, batch: int = 32) -> list[ConvKey]:
    """Up to ``per_class`` keys of each class, spread over its range of FLOPs (the largest
    always in); ``per_class=0`` keeps every key."""
    by_class: dict[str, list[ConvKey]] = collections.defaultdict(list)
    for key in keys:
        by_class[shape_class(key)].append(key)
    chosen = []
    for members in by_class.values():
        members.sort(key=lambda k: k.shape(batch).flops)
        if per_class and len(members) > per_class:
            picks = np.linspace(0, len(members) - 1, per_class).round().astype(int)
            members = [members[i] for i in sorted(set(picks.tolist()))]
        chosen += members
    return chosen


def _timer(fn, args, rounds_s: float = 0.05, sync: Any = jax.block_until_ready):
    """A callable returning one timing (seconds per call) of ``fn(*args)``: enough calls to
    fill ``rounds_s``, so short convolutions are not lost in the call overhead. ``sync``
    waits for a result (PyTorch's CPU calls return finished: pass ``lambda out: None``)."""
    start = time.perf_counter()
    sync(fn(*args))
    calls = max(1, int(rounds_s / max(time.perf_counter() - start, 1e-6)))

    def once() -> float:
        begin = time.perf_counter()
        for _ in range(calls):
            out = fn(*args)
        sync(out)
        return (time.perf_counter() - begin) / calls

    return once


def _relative_error(got: Any, want: Any) -> float:
    return max(float(jnp.max(jnp.abs(a - b)) / (jnp.max(jnp.abs(b)) + 1e-30))
               for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)))


PASSES = ("forward", "input_grad", "kernel_grad")
"""The three passes of a convolution in training: the forward pass and the gradients with
respect to its input and its kernel (each costs the forward's FLOPs). The first layer of a
network needs no input gradient."""


def operands(key: ConvKey, batch: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The input (NHWC), kernel (HWIO) and output gradient every timing of ``key`` uses."""
    s = key.shape(batch)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((batch, key.height, key.width, key.in_channels), np.float32)
    w = (rng.standard_normal((key.kh, key.kw, s.group_in, key.out_channels), np.float32)
         / np.float32(np.sqrt(s.taps * s.group_in)))
    g = rng.standard_normal((batch, s.out_h, s.out_w, key.out_channels), np.float32)
    return x, w, g


def routed(key: ConvKey, batch: int = 32) -> list[str]:
    """The formulations :func:`jaxcnn.conv.choose` picks on the CPU for the three passes."""
    route = conv.choose(key.shape(batch), "cpu")
    return sorted({getattr(route, p) for p in PASSES})


def time_shape(key: ConvKey, batch: int = 32, rounds: int = 3,
               formulations: Iterable[str] = conv.FORMULATIONS) -> dict[str, Any]:
    """Seconds of each pass of ``key`` in every formulation that computes it (the best of
    ``rounds`` interleaved rounds), their GFLOP/s, and their error against XLA's (against
    the first formulation where XLA's is not timed). Each is compiled by
    :func:`jaxcnn.conv.jit`, as the networks' steps are: surveys before 2026-12-04 timed
    XLA's convolution as YNNPACK ran it (jax.jit's defaults)."""
    s = key.shape(batch)
    x, w, g = (jnp.asarray(a) for a in operands(key, batch))
    names = [f for f in formulations if conv.applies(f, s)
             and not (f == "im2col" and s.taps > 1 and s.patch_bytes > MAX_PATCH_BYTES
                      and f not in routed(key, batch))]
    timers, results = {}, {}
    for name in names:
        impl = conv.implementation(name)
        steps = {
            "forward": (lambda x, w, g, impl=impl: impl(x, w, s)),
            "input_grad": (lambda x, w, g, impl=impl: jax.vjp(
                lambda x: impl(x, w, s), x)[1](g)[0]),
            "kernel_grad": (lambda x, w, g, impl=impl: jax.vjp(
                lambda w: impl(x, w, s), w)[1](g)[0]),
        }
        for pass_, fn in steps.items():
            jitted = conv.jit(fn)  # compiled as the networks' steps are
            results[(name, pass_)] = jitted(x, w, g)
            timers[(name, pass_)] = _timer(jitted, (x, w, g))
    best: dict[tuple[str, str], float] = {}
    for _ in range(rounds):
        for which, timer in timers.items():
            best[which] = min(best.get(which, float("inf")), timer())
    report = {"class": shape_class(key), "shape": dataclasses.asdict(key), "batch": batch,
              "gflop": s.flops / 1e9, "formulations": {}}
    for name in names:
        entry = {}
        for pass_ in PASSES:
            seconds = best[(name, pass_)]
            entry[f"{pass_}_ms"] = 1e3 * seconds
            entry[f"{pass_}_gflops"] = s.flops / seconds / 1e9
        entry["error"] = max(_relative_error(results[(name, p)], results[(names[0], p)])
                             for p in PASSES)
        report["formulations"][name] = entry
    return report


def torch_passes(key: ConvKey, x: np.ndarray, w: np.ndarray, g: np.ndarray
                 ) -> dict[str, Any]:
    """PyTorch's three passes of ``key`` on the operands of :func:`operands` (NHWC, HWIO),
    as a PyTorch user's channels-last network runs them on the CPU (oneDNN): pass name ->
    a callable of no arguments returning the pass's result (NCHW; the kernel gradient
    OIHW). Asymmetric padding (TensorFlow's "SAME" at stride 2) is applied to the input
    beforehand, and the input gradient is the padded input's, cropped."""
    import torch

    last = torch.channels_last
    (top, bottom), (left, right) = key.pads
    symmetric = top == bottom and left == right
    xt = torch.from_numpy(x).permute(0, 3, 1, 2).contiguous(memory_format=last)
    if not symmetric:
        xt = torch.nn.functional.pad(xt, (left, right, top, bottom)).contiguous(
            memory_format=last)
    wt = torch.from_numpy(w).permute(3, 2, 0, 1).contiguous(memory_format=last)
    gt = torch.from_numpy(g).permute(0, 3, 1, 2).contiguous(memory_format=last)
    padding = [top, left] if symmetric else [0, 0]
    common = (list(key.strides), padding, [1, 1], False, [0, 0], key.groups)

    def forward():
        with torch.no_grad():
            return torch.nn.functional.conv2d(xt, wt, None, key.strides, padding, 1,
                                              key.groups)

    def input_grad():
        dx = torch.ops.aten.convolution_backward(gt, xt, wt, None, *common,
                                                 [True, False, False])[0]
        return dx if symmetric else dx[:, :, top:top + key.height, left:left + key.width]

    def kernel_grad():
        return torch.ops.aten.convolution_backward(gt, xt, wt, None, *common,
                                                   [False, True, False])[1]

    return {"forward": forward, "input_grad": input_grad, "kernel_grad": kernel_grad}


def _torch_worker() -> int:
    """``--torch-worker``: times PyTorch's passes of each shape asked for on stdin (one JSON
    line: shape, batch, rounds) and answers on stdout (one JSON line of milliseconds), in a
    process of its own so that neither framework's threads slow the other's."""
    import torch

    bench_torch.set_threads()
    for line in sys.stdin:
        ask = json.loads(line)
        key = ConvKey.from_dict(ask["shape"])
        passes = torch_passes(key, *operands(key, ask["batch"]))
        timers = {p: _timer(fn, (), sync=lambda out: None) for p, fn in passes.items()}
        best: dict[str, float] = {}
        for _ in range(ask["rounds"]):
            for pass_, timer in timers.items():
                best[pass_] = min(best.get(pass_, float("inf")), timer())
        print(json.dumps({"version": torch.__version__,
                          **{f"{p}_ms": 1e3 * best[p] for p in PASSES}}), flush=True)
    return 0


class TorchSide:
    """A ``--torch-worker`` process: ``time(key, batch, rounds)`` -> PyTorch's ms and
    GFLOP/s of each pass, and its version."""

    def __init__(self) -> None:
        import subprocess

        from train.bench import child_env

        self.proc = subprocess.Popen([sys.executable, "-m", "train.convbench", "--torch-worker"],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                     env=child_env())

    def time(self, key: ConvKey, batch: int, rounds: int) -> dict[str, float]:
        assert self.proc.stdin and self.proc.stdout
        self.proc.stdin.write(json.dumps({"shape": dataclasses.asdict(key), "batch": batch,
                                          "rounds": rounds}) + "\n")
        self.proc.stdin.flush()
        answer = self.proc.stdout.readline()
        if not answer:
            raise RuntimeError("the PyTorch side (python -m train.convbench --torch-worker) "
                               "stopped; its error is above. --compare torch needs the "
                               "[parity] extra: pip install -e '.[parity]'.")
        times = json.loads(answer)
        flops = key.shape(batch).flops
        return {**times, **{f"{p}_gflops": flops / times[f"{p}_ms"] / 1e6 for p in PASSES}}

    def close(self) -> None:
        if self.proc.stdin:
            self.proc.stdin.close()
        self.proc.wait()


def _auto(row: dict[str, Any], pass_: str) -> str:
    """The formulation :func:`jaxcnn.conv.choose` picks today for this pass of the row's
    shape (XLA's where the survey did not time it: patches too large to try)."""
    key = ConvKey.from_dict(row["shape"])
    name = getattr(conv.choose(key.shape(row["batch"]), "cpu"), pass_)
    return name if name in row["formulations"] else "xla"


def _typical(rows: list[dict[str, Any]], forward_gflops: Any) -> float | None:
    """The median of ``forward_gflops(row)`` over the dense (ungrouped) convolutions of 0.1
    GFLOP or more: a framework's typical throughput; None where there is none."""
    dense = [forward_gflops(r) for r in rows
             if r["gflop"] >= 0.1 and not r["class"].startswith(("grouped", "depthwise"))]
    return statistics.median(dense) if dense else None


def _by_class(rows: list[dict[str, Any]]) -> Iterable[tuple[str, list[dict[str, Any]]]]:
    """Each class of the rows, in order, with its rows."""
    for cls in sorted({r["class"] for r in rows}):
        yield cls, [r for r in rows if r["class"] == cls]


def _rate(members: list[dict[str, Any]], pass_: str, timing: Any) -> float:
    """The FLOP-weighted GFLOP/s of ``pass_`` over the members, each timed by
    ``timing(row)`` (a dict of ``<pass>_ms``)."""
    return sum(r["gflop"] for r in members) / sum(timing(r)[f"{pass_}_ms"] / 1e3
                                                   for r in members)


def _slow(cls: str, entry: dict[str, Any], which: str, typical: float | None) -> list[str]:
    """The passes of the class's ``<pass>_<which>`` rates below half of ``typical``
    (depthwise convolutions are memory-bound everywhere, and never counted)."""
    return [p for p in PASSES if typical is not None and not cls.startswith("depthwise")
            and entry[f"{p}_{which}"] < typical / 2]


def summarise(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Per class and pass, the FLOP-weighted GFLOP/s of XLA, of the best formulation of each
    shape and of the one :func:`jaxcnn.conv.choose` picks today (so a survey's figures show
    a change of the routing without timing again); XLA's typical throughput."""
    typical = _typical(rows, lambda r: r["formulations"]["xla"]["forward_gflops"])
    classes: dict[str, dict[str, Any]] = {}
    for cls, members in _by_class(rows):
        entry: dict[str, Any] = {"shapes": len(members)}
        for pass_ in PASSES:
            def rate(pick, pass_=pass_) -> float:
                return _rate(members, pass_, pick)

            entry[f"{pass_}_xla"] = rate(lambda r: r["formulations"]["xla"])
            entry[f"{pass_}_auto"] = rate(lambda r, p=pass_: r["formulations"][_auto(r, p)])
            entry[f"{pass_}_best"] = rate(lambda r, p=pass_: min(
                r["formulations"].values(), key=lambda f: f[f"{p}_ms"]))
            entry[f"{pass_}_fastest"] = collections.Counter(
                min(r["formulations"], key=lambda f, r=r, p=pass_: r["formulations"][f][f"{p}_ms"])
                for r in members).most_common()
        entry["slow"] = bool(_slow(cls, entry, "xla", typical))
        entry["slow_routed"] = bool(_slow(cls, entry, "auto", typical))
        classes[cls] = entry
    return {"typical_xla_forward_gflops": typical, "classes": classes, **_routing_check(rows)}


ROUTED_SLOWER = 1.2
"""A routed pass that takes more than this times XLA's on the same shape is listed by the
summary: a rule made on one machine that does not hold on the one surveyed."""


def _routing_check(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Every pass routed away from XLA today against XLA's time on the same shape; the
    survey's total time with XLA everywhere and with today's routing."""
    routed, slower, xla_ms, auto_ms = 0, [], 0.0, 0.0
    for r in rows:
        for pass_ in PASSES:
            name = _auto(r, pass_)
            x, y = (r["formulations"][f][f"{pass_}_ms"] for f in ("xla", name))
            xla_ms, auto_ms = xla_ms + x, auto_ms + y
            if name == "xla":
                continue
            routed += 1
            if y > ROUTED_SLOWER * x:
                sh = r["shape"]
                slower.append({"class": r["class"], "pass": pass_, "formulation": name,
                               "xla_ms": x, "routed_ms": y,
                               "shape": f"{sh['height']}x{sh['width']}x{sh['in_channels']}"
                                        f" -> {sh['out_channels']}"})
    return {"routed_passes": routed, "routed_slower": sorted(
                slower, key=lambda e: e["routed_ms"] - e["xla_ms"], reverse=True),
            "total_xla_ms": xla_ms, "total_routed_ms": auto_ms}


def format_table(summary: dict[str, Any]) -> str:
    """The per-class summary as a Markdown table: GFLOP/s of XLA -> auto (best) per pass."""
    typical = summary["typical_xla_forward_gflops"]
    typical = "unknown (no dense convolution of 0.1 GFLOP timed)" if typical is None else \
        f"{typical:.1f} GFLOP/s (median, dense convolutions >= 0.1 GFLOP)"
    lines = [f"XLA's typical forward throughput: {typical}. GFLOP/s per pass: XLA -> "
             "jaxcnn.conv's choice (best formulation).", "",
             "| class | shapes | forward | input grad | kernel grad | fastest (fwd / dx / dw) |",
             "|---|---:|---:|---:|---:|---|"]
    for cls, e in summary["classes"].items():
        flag = (" **slow**" if e["slow"] else "") + (" (still, routed)"
                                                     if e.get("slow_routed") else "")
        cells = [f"{e[f'{p}_xla']:.1f} -> {e[f'{p}_auto']:.1f} ({e[f'{p}_best']:.1f})"
                 for p in PASSES]
        fastest = " / ".join(",".join(f"{n}:{c}" for n, c in e[f"{p}_fastest"]) for p in PASSES)
        lines.append(f"| {cls}{flag} | {e['shapes']} | " + " | ".join(cells) + f" | {fastest} |")
    if "routed_passes" in summary:
        slower = summary["routed_slower"]
        lines += ["", f"Every timed pass once, XLA everywhere: {summary['total_xla_ms'] / 1e3:,.1f}"
                      f" s; with jaxcnn.conv's choice: {summary['total_routed_ms'] / 1e3:,.1f} s. "
                      f"Routed passes more than {ROUTED_SLOWER}x slower than XLA's on the same "
                      f"shape: {len(slower)} of {summary['routed_passes']}" + (":" if slower else
                                                                                 ".")]
        lines += [f"- {e['class']} {e['shape']}, {e['pass'].replace('_', ' ')}: "
                  f"{e['formulation']} {e['routed_ms']:.2f} ms, XLA {e['xla_ms']:.2f} ms"
                  for e in slower]
    return "\n".join(lines)


def summarise_torch(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """For rows timed with ``--compare torch``: per class and pass, the FLOP-weighted GFLOP/s
    of the formulation :func:`jaxcnn.conv.choose` picks and of PyTorch's; each framework's
    typical forward throughput (as :func:`summarise`'s); which classes have a pass below
    half of it, in jaxcnn and in PyTorch."""
    rows = [r for r in rows if "torch" in r]
    ours = _typical(rows, lambda r: r["formulations"][_auto(r, "forward")]["forward_gflops"])
    theirs = _typical(rows, lambda r: r["torch"]["forward_gflops"])
    classes: dict[str, dict[str, Any]] = {}
    for cls, members in _by_class(rows):
        entry: dict[str, Any] = {"shapes": len(members)}
        for pass_ in PASSES:
            entry[f"{pass_}_auto"] = _rate(members, pass_,
                                           lambda r, p=pass_: r["formulations"][_auto(r, p)])
            entry[f"{pass_}_torch"] = _rate(members, pass_, lambda r: r["torch"])
        for side, level in (("auto", ours), ("torch", theirs)):
            entry[f"slow_{side}"] = _slow(cls, entry, side, level)
        classes[cls] = entry
    return {"typical_auto_forward_gflops": ours, "typical_torch_forward_gflops": theirs,
            "classes": classes}


def format_torch_table(summary: dict[str, Any]) -> str:
    """:func:`summarise_torch` as a Markdown table: GFLOP/s jaxcnn / PyTorch per pass."""
    def level(value: float | None) -> str:
        return "unknown" if value is None else f"{value:.1f} GFLOP/s"

    lines = [f"Typical forward throughput (median, dense convolutions >= 0.1 GFLOP): jaxcnn "
             f"{level(summary['typical_auto_forward_gflops'])}, PyTorch "
             f"{level(summary['typical_torch_forward_gflops'])}. GFLOP/s per pass, jaxcnn.conv's "
             "choice / PyTorch (ratio); below half of its framework's typical: slow passes "
             "(f forward, x input grad, w kernel grad).", "",
             "| class | shapes | forward | input grad | kernel grad | slow: jaxcnn / PyTorch |",
             "|---|---:|---:|---:|---:|---|"]
    short = {"forward": "f", "input_grad": "x", "kernel_grad": "w"}
    for cls, e in summary["classes"].items():
        cells = [f"{e[f'{p}_auto']:.1f} / {e[f'{p}_torch']:.1f} "
                 f"({e[f'{p}_auto'] / e[f'{p}_torch']:.2f}x)" for p in PASSES]
        slow = " / ".join("".join(short[p] for p in e[f"slow_{side}"]) or "-"
                          for side in ("auto", "torch"))
        lines.append(f"| {cls} | {e['shapes']} | " + " | ".join(cells) + f" | {slow} |")
    return "\n".join(lines)


def _kind(cls: str) -> str:
    """The kind of convolution a class name starts with: stem, grouped, depthwise, 1x1, or
    dense (a spatial kernel onto 5 channels or more)."""
    first = cls.split()[0]
    return first if first in ("stem", "grouped", "depthwise", "1x1") else "dense"


LABELLED = 4
"""Classes named in each panel of :func:`plot_torch`: the furthest behind PyTorch."""


def plot_torch(summary: dict[str, Any], path: str) -> None:
    """:func:`summarise_torch` drawn: one panel per pass, each class a point at PyTorch's
    GFLOP/s (x) and jaxcnn's (y), log scales, the diagonal where they are level and the lines
    where one is twice the other; the :data:`LABELLED` classes furthest behind are named."""
    # A Figure of its own, without pyplot, so that the caller's backend stays as it is.
    from matplotlib.figure import Figure

    kinds = ["dense", "1x1", "stem", "grouped", "depthwise"]
    colours = dict(zip(kinds, ["tab:blue", "tab:green", "tab:orange", "tab:red", "tab:purple"]))
    classes = summary["classes"]
    values = [e[f"{p}_{side}"] for e in classes.values() for p in PASSES
              for side in ("auto", "torch")]
    low, high = min(values) / 1.5, max(values) * 1.5
    fig = Figure(figsize=(16, 5.8), constrained_layout=True)
    axes = fig.subplots(1, 3)
    for ax, pass_ in zip(axes, PASSES):
        ax.plot([low, high], [low, high], color="black", linewidth=0.8)
        for factor in (0.5, 2):
            ax.plot([low, high], [low * factor, high * factor], color="grey", linewidth=0.6,
                    linestyle="--")
        for cls, e in classes.items():
            ax.scatter(e[f"{pass_}_torch"], e[f"{pass_}_auto"], s=12 + 6 * e["shapes"],
                       color=colours[_kind(cls)], alpha=0.7, edgecolors="black",
                       linewidths=0.3)
        behind = sorted(classes, key=lambda c: classes[c][f"{pass_}_auto"]
                        / classes[c][f"{pass_}_torch"])[:LABELLED]
        for i, cls in enumerate(behind):  # stacked in the empty corner, with arrows
            e = classes[cls]
            ax.annotate(cls, (e[f"{pass_}_torch"], e[f"{pass_}_auto"]), fontsize=6,
                        xytext=(0.5, 0.04 + 0.045 * i), textcoords="axes fraction",
                        arrowprops={"arrowstyle": "-", "linewidth": 0.4, "color": "grey"})
        ax.set(xscale="log", yscale="log", xlim=(low, high), ylim=(low, high),
               title=pass_.replace("_", " "), xlabel="PyTorch (oneDNN), GFLOP/s",
               ylabel="jaxcnn.conv's choice, GFLOP/s")
        ax.grid(True, alpha=0.3, which="both")
    for kind in kinds:
        axes[0].scatter([], [], color=colours[kind], label=kind, s=30)
    axes[0].legend(fontsize=8, loc="upper left", title="shape class (dashed: 2x apart)",
                   title_fontsize=8)
    fig.suptitle("Every convolution shape class of the zoo, batch 32, float32: jaxcnn against "
                 "PyTorch on the same passes (above the diagonal: jaxcnn faster)")
    fig.savefig(path, dpi=90)


def _shape_id(shape: dict[str, Any]) -> str:
    """A survey row's shape (a :class:`ConvKey` as a dict) as a key that JSON round-trips."""
    return json.dumps(shape, sort_keys=True)


def _read_survey(path: str) -> dict[str, Any] | None:
    """The survey that ``--output`` wrote to ``path``, or None after saying on stderr why the
    file is not one (for --summary-only and --resume alike)."""
    try:
        with open(path) as f:
            survey = json.load(f)
        survey["shapes"]
    except (ValueError, KeyError, TypeError) as err:
        print(f"error: {path} is not a survey written by python -m train.convbench "
              f"--output ({type(err).__name__}: {err}); run the survey with --output, or "
              "pass the JSON it wrote.", file=sys.stderr)
        return None
    return survey


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m train.convbench",
        description="Time every convolution shape class of the zoo in each formulation of "
                    "jaxcnn.conv (GFLOP/s forward and backward, batch 32, float32).")
    parser.add_argument("--arch", nargs="*", default=["*"],
                        help="networks (shell wildcards; default: all registered)")
    parser.add_argument("--sizes", nargs="*", type=int, default=list(DEFAULT_SIZES),
                        help="image sizes of the ImageNet networks (default: 32 64 224)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--per-class", type=int, default=3,
                        help="shapes timed per class, spread over its FLOPs (0: all)")
    parser.add_argument("--rounds", type=int, default=3,
                        help="interleaved timing rounds; the best is kept (default: 3)")
    parser.add_argument("--class", dest="only", nargs="*",
                        help="time only classes containing one of these words")
    parser.add_argument("--output", help="write every measurement and the summary as JSON "
                                         "(after each shape)")
    parser.add_argument("--resume", action="store_true",
                        help="reuse the shapes and timings already in --output (those outside "
                             "--class are kept)")
    parser.add_argument("--compare", choices=["torch"],
                        help="time PyTorch's convolution (channels-last, oneDNN) beside the "
                             "formulations jaxcnn.conv picks, in a process of its own; needs "
                             "the [parity] extra")
    parser.add_argument("--plot", metavar="PNG",
                        help="with --compare torch (or --summary-only of its JSON): draw each "
                             "class's GFLOP/s, jaxcnn against PyTorch, into this PNG")
    parser.add_argument("--torch-worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--summary-only", action="store_true",
                        help="time nothing: summarise the shapes already in --output with "
                             "today's routing")
    args = parser.parse_args(argv)
    if args.torch_worker:
        return _torch_worker()
    if args.summary_only:
        if not (args.output and os.path.exists(args.output)):
            print(f"error: --summary-only reads the survey in --output; {args.output!r} "
                  "does not exist (run the survey with --output first).", file=sys.stderr)
            return 2
        survey = _read_survey(args.output)
        if survey is None:
            return 2
        print(f"Surveyed on {survey.get('cpu', 'an unnamed CPU')}, {survey.get('cpu_count')} "
              f"cores, jax {survey.get('jax')}: {len(survey['shapes'])} shapes.\n")
        print(_tables(survey["shapes"]))
        return _plot(survey["shapes"], args.plot)

    if args.plot and not args.compare:  # say so before the survey, not after its minutes
        print(f"error: {PLOT_NEEDS_TORCH}", file=sys.stderr)
        return 2
    why = bench_torch.missing() if args.compare else None
    if why:
        print(f"error: {why}", file=sys.stderr)
        return 2
    names = sorted({n for pattern in args.arch for n in jaxcnn.list_models(pattern)})
    if not names:
        print(f"error: no network matches {' '.join(args.arch)}; see jaxcnn.list_models().",
              file=sys.stderr)
        return 2
    from tqdm import tqdm

    from train.checkpoints import write_json_atomic

    # A run that stops (or is stopped) keeps what it measured: --resume reads the shapes and
    # the timings back from --output and times only what is missing.
    previous = {}
    if args.resume and args.output and os.path.exists(args.output):
        previous = _read_survey(args.output)
        if previous is None:
            return 2
    if previous.get("collected"):
        found = {ConvKey.from_dict(k): nets for k, nets in previous["collected"]}
    else:
        found = collect(tqdm(names, desc="collecting shapes", leave=False), args.sizes,
                        args.batch_size)
    keys = sample(found, args.per_class, args.batch_size)
    if args.only:
        keys = [k for k in keys if any(word in shape_class(k) for word in args.only)]
    done = {_shape_id(r["shape"]): r for r in previous.get("shapes", [])}
    # Shapes resumed from --output that this run does not time (another --class) stay in it.
    chosen = {_shape_id(dataclasses.asdict(k)) for k in keys}
    others = [r for name, r in done.items() if name not in chosen]
    report = {"jax": jax.__version__, "backend": jax.default_backend(),
              "device": jax.devices()[0].device_kind, "cpu": cpu_description(),
              "cpu_count": os.cpu_count(),
              "batch": args.batch_size, "sizes": args.sizes,
              "collected": [[dataclasses.asdict(k), nets] for k, nets in found.items()]}
    rows = []
    torch_side = TorchSide() if args.compare else None
    try:
        for key in tqdm(keys, desc="timing shapes"):
            row = done.get(_shape_id(dataclasses.asdict(key)))
            if row is None or (torch_side and "torch" not in row):
                # Compared with PyTorch, only the formulations jaxcnn runs are timed: XLA's
                # own takes 30 s a call on some shapes it is routed away from.
                row = time_shape(key, args.batch_size, args.rounds,
                                 routed(key, args.batch_size) if torch_side
                                 else conv.FORMULATIONS)
                if torch_side:
                    row["torch"] = torch_side.time(key, args.batch_size, args.rounds)
                row["networks"] = sorted(set(found[key]))
            rows.append(row)
            if args.output:
                write_json_atomic(args.output, {**report, "shapes": rows + others})
    finally:
        if torch_side:
            torch_side.close()
    print(_tables(rows + others))
    if args.output:
        summary = (summarise_torch if args.compare else summarise)(rows + others)
        write_json_atomic(args.output, {**report, "summary": summary, "shapes": rows + others})
    return _plot(rows + others, args.plot)


PLOT_NEEDS_TORCH = ("--plot draws the comparison with PyTorch; run with --compare torch (or "
                    "--summary-only of a survey that ran with it).")


def _plot(rows: list[dict[str, Any]], path: str | None) -> int:
    """--plot: the comparison with PyTorch drawn into ``path``; 2 where nothing was timed
    against PyTorch."""
    if not path:
        return 0
    if not any("torch" in r for r in rows):
        print(f"error: {PLOT_NEEDS_TORCH}", file=sys.stderr)
        return 2
    plot_torch(summarise_torch(rows), path)
    print(f"plot: {path}")
    return 0


def _tables(rows: list[dict[str, Any]]) -> str:
    """The summary of a survey (against XLA's convolution where every formulation was
    timed) and, where PyTorch was timed, the comparison with it."""
    tables = []
    if all("xla" in r["formulations"] for r in rows):
        tables.append(format_table(summarise(rows)))
    if any("torch" in r for r in rows):
        tables.append(format_torch_table(summarise_torch(rows)))
    return "\n\n".join(tables)


if __name__ == "__main__":
    sys.exit(main())
