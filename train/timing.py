"""Timing steps of several frameworks fairly in one process.

A :class:`Runner` is one compiled step of one framework. :func:`time_interleaved` times all the
runners of a comparison window by window in turn (jaxcnn's window, then PyTorch's, then
jaxcnn's again ...), so a machine that gets busier or quieter during the run slows every side
alike and their ratio holds; each side's figure is the median over its windows. Each window
starts with one untimed step (:data:`LEAD_IN_STEPS`).
"""

from __future__ import annotations

import dataclasses
import math
import os
import platform
import resource
import statistics
import time
from typing import Any, Callable, Mapping


@dataclasses.dataclass
class Runner:
    """One step of one framework: ``step()`` runs it (asynchronously where the framework
    does), ``sync(out)`` waits until ``out`` is computed, ``enter()`` runs before each timed
    window (a torch network switching between train and eval mode); ``compile_s`` is what the
    first call took."""

    step: Callable[[], Any]
    sync: Callable[[Any], None]
    compile_s: float
    enter: Callable[[], Any] = lambda: None


MAX_STEPS_PER_WINDOW = 10_000

LEAD_IN_STEPS = 1
"""Untimed steps that start every window: the first step after the other side's window pays
for the pause, not for the framework. A step's memory that lay unused for a few seconds costs
much more to touch again than memory a step freed just before, most of all in a virtual
machine that hands free memory back to its host: EfficientNet-B0's train step at 224 px
(batch 32, 2-core AVX-512 VM, 2026-12-04) took 1.26-1.49 s in a run of steps and 5.0, 5.8 and
9.4 s as the first after 3, 6 and 10 s of pause, the next ones 1.3 s again. Training runs its
steps back to back, so that first step is not what a user waits for; a window of two steps
that includes it read 13 images/s where steps in a row give 24."""


def _run(runner: Runner, steps: int) -> float:
    """Seconds that ``steps`` steps of ``runner`` take, waited for."""
    start = time.perf_counter()
    out = None
    for _ in range(steps):
        out = runner.step()
    runner.sync(out)
    return time.perf_counter() - start


def time_interleaved(runners: Mapping[str, Runner], *, steps: int, windows: int,
                     batch_size: int, warmup: int = 2, min_window_s: float = 0.0
                     ) -> dict[str, dict[str, Any]]:
    """images/s and ms per step of each runner: the median over ``windows`` windows of
    ``steps // windows`` steps, the runners' windows taken in turn.

    With ``min_window_s``, a runner whose steps are so short that its window would last less
    takes more steps a window (up to :data:`MAX_STEPS_PER_WINDOW`), from its time over three
    steps after the warm-up (where the warm-up's steps were short), and first runs one such
    window untimed: a window of a few 1-ms steps times the dispatch of the first call after a
    wait as much as the steps, and a warm-up of a step or two leaves them cold (LeNet-5 on 2
    cores: 0.63x of PyTorch eager with 2 steps a window after one, 1.08x with 100 after 20).
    Every window starts with :data:`LEAD_IN_STEPS` untimed steps."""
    base = max(1, steps // windows)
    per_window: dict[str, int] = {}
    for name, runner in runners.items():
        runner.enter()
        warm_step_s = _run(runner, warmup) / max(warmup, 1)
        per_window[name] = base
        # Steps whose warm-up already fills a window (a first call is no faster than the
        # next) are not timed again: three more of a 25-s step would cost over a minute.
        if min_window_s > 0 and base * warm_step_s < min_window_s:
            step_s = max(_run(runner, 3) / 3, 1e-9)
            per_window[name] = min(MAX_STEPS_PER_WINDOW,
                                   max(base, math.ceil(min_window_s / step_s)))
            if per_window[name] > base:  # and one untimed window of them, to warm up as long
                _run(runner, per_window[name])
    seconds: dict[str, list[float]] = {name: [] for name in runners}
    for _ in range(windows):
        for name, runner in runners.items():
            runner.enter()
            _run(runner, LEAD_IN_STEPS)
            seconds[name].append(_run(runner, per_window[name]))
    return {name: {
        "images_per_sec": statistics.median(per_window[name] * batch_size / s for s in spent),
        "step_ms": statistics.median(1000 * s / per_window[name] for s in spent),
        "windows_images_per_sec": [per_window[name] * batch_size / s for s in spent],
        "steps_per_window": per_window[name],
        "compile_s": runners[name].compile_s,
    } for name, spent in seconds.items()}


def usable_cores() -> int:
    """The cores this process may run on (its affinity where the OS has one)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


# The widest vector extension, by the flag /proc/cpuinfo lists for it (x86 "flags", Arm
# "Features"): XLA's CPU kernels run several times faster with AVX-512 than with AVX2 alone.
_VECTOR_FLAGS = (("avx512f", "AVX-512"), ("avx2", "AVX2"), ("avx", "AVX"), ("sve", "SVE"),
                 ("asimd", "NEON"))


def cpu_description(cpuinfo: str = "/proc/cpuinfo") -> str:
    """The processor as benchmarks name it: ``"AMD EPYC, AVX2"`` (model and widest vector
    extension, from /proc/cpuinfo where there is one), else ``platform.processor()`` or the
    machine type."""
    from jaxcnn.conv import read_cpuinfo

    model, flags = read_cpuinfo(cpuinfo)
    model = model or platform.processor() or platform.machine()
    vector = next((name for flag, name in _VECTOR_FLAGS if flag in flags), None)
    return f"{model}, {vector}" if vector else model


def peak_rss_bytes() -> int:
    """The process's peak resident memory (``ru_maxrss``: KiB on Linux, bytes on macOS)."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(rss if platform.system() == "Darwin" else rss * 1024)
