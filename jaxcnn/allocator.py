"""Memory that a CPU process gives back to the kernel after every step, and takes again.

XLA on the CPU allocates each step's buffers with ``malloc`` (its temporaries, hundreds of MiB
for a train step: ResNet-50's at 64 px, batch 32, takes 370 MiB in one block) and frees them at
the step's end. glibc's allocator maps such blocks afresh with ``mmap`` and unmaps them on
``free``: blocks above its threshold (32 MiB at most), and every block above 64 MiB that a
thread other than the main one asks for, whatever the settings (XLA's steps run on its worker
threads). The next step then touches each page for the first time again, and the kernel zeroes
it: ResNet-50's train step at 64 px faulted 400-550 MiB a step, MobileNetV2's 390 MiB, about
0.3-0.4 ms per MiB on the 2-core machine we measure on: 40 % of MobileNetV2's step.

:func:`keep_freed_memory` makes glibc keep what is freed for the next request: one arena for
every thread (so that large blocks come from the main heap, which can grow without ``mmap``),
no ``mmap`` for large blocks, and no trimming of the heap's free top. Steps then fault nothing
in, but the heap fragments: blocks that no longer fit the holes left by the last step grow it.
A process running ResNet-50's train step at 64 px held 1.8 GiB for 160 steps, then grew to
2.5 GiB by step 200; under glibc's defaults a process running the same step (and
inference) held 1.4 GiB over 80 steps. So it is not the default: the
``train`` package applies it as its first statement when ``JAXCNN_MALLOC=keep`` is set and JAX
runs on the CPU (benchmarks and short runs: the steps' time without the kernel's page zeroing),
and a long run that can spare the memory may too. PyTorch's CPU tensors come from the same
``malloc``, so a comparison in one process gives both frameworks the same allocator.

It must run before the process's threads first allocate (glibc fixes the number of arenas
then). The same settings from the environment: ``MALLOC_ARENA_MAX=1 MALLOC_MMAP_MAX_=0
MALLOC_TRIM_THRESHOLD_=2147483647``.
"""

from __future__ import annotations

import ctypes
import importlib.util
import os
import platform

M_TRIM_THRESHOLD, M_MMAP_MAX, M_ARENA_MAX = -1, -4, -8  # mallopt's parameters (malloc.h)

SETTINGS = ((M_ARENA_MAX, 1), (M_MMAP_MAX, 0), (M_TRIM_THRESHOLD, 2**31 - 1))

USER_CHOICES = ("MALLOC_ARENA_MAX", "MALLOC_MMAP_MAX_", "MALLOC_TRIM_THRESHOLD_",
                "MALLOC_MMAP_THRESHOLD_", "GLIBC_TUNABLES")
"""Environment variables that tune glibc's malloc: where one is set, the user has chosen."""

kept = False
"""Whether :func:`keep_freed_memory` applied its settings in this process."""


def runs_on_cpu() -> bool:
    """Whether JAX will compute on the CPU, decided without starting a backend: JAX_PLATFORMS
    names the CPU first, or no GPU or TPU plugin is installed."""
    platforms = os.environ.get("JAX_PLATFORMS", "")
    if platforms:
        return platforms.split(",")[0].strip() == "cpu"
    return importlib.util.find_spec("jax_plugins") is None and \
        importlib.util.find_spec("libtpu") is None


def keep_freed_memory() -> bool:
    """Has glibc's ``malloc`` keep freed memory for the next allocation instead of returning
    it to the kernel (see the module's text: faster steps, a heap that fragments). Returns
    whether the settings were applied: not off Linux/glibc, and not where the environment
    already tunes ``malloc`` or preloads another allocator."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    if any(name in os.environ for name in USER_CHOICES) or \
            "malloc" in os.environ.get("LD_PRELOAD", ""):
        return False
    global kept
    libc = ctypes.CDLL(None)
    kept = all(libc.mallopt(option, value) == 1 for option, value in SETTINGS)
    return kept
