"""Memory that a CPU process gives back to the kernel after every step, and takes again.

XLA on the CPU allocates each step's buffers with ``malloc`` (its temporaries, hundreds of MiB
for a train step: ResNet-50's at 64 px, batch 32, takes 370 MiB in one block) and frees them at
the step's end. glibc's allocator maps such blocks afresh with ``mmap`` and unmaps them on
``free``: blocks above its threshold (32 MiB at most), and every block above 64 MiB that a
thread other than the main one asks for, whatever the settings (XLA's steps run on its worker
threads). The next step then touches each page for the first time again, and the kernel zeroes
it: ResNet-50's train step at 64 px faulted 400-550 MiB a step, MobileNetV2's 390 MiB, about
0.3-0.4 ms per MiB on the 2-core machine we measure on: 40 % of MobileNetV2's step.

Two cures, measured on that machine:

* **Huge pages** (:func:`huge_pages_env`, the default of ``python -m train.*`` on the CPU).
  glibc 2.35 and later, started with ``GLIBC_TUNABLES=glibc.malloc.hugetlb=1``, asks the kernel
  for transparent huge pages (``madvise``) on the memory it maps: a block is then faulted in 2 MiB
  at a time, one fault where there were 512, and the kernel zeroes it far faster. Memory is still
  given back at every ``free``, so nothing accumulates: ResNet-50's train step at 64 px took 426
  ms against 559 over 240 steps, and the process held 1.1-1.5 GiB against 1.6 GiB. The tunable is
  read when a process starts, so the ``train`` package restarts its own command under it
  (:func:`restart_with_huge_pages`: same process id, arguments and environment plus the tunable)
  before anything else is imported. It needs the kernel's transparent huge pages in ``madvise``
  or ``always`` mode (``/sys/kernel/mm/transparent_hugepage/enabled``).
* **Keeping freed memory** (:func:`keep_freed_memory`, opt-in: ``JAXCNN_MALLOC=keep``): glibc
  keeps what is freed for the next request: one arena for every thread (so that large blocks come
  from the main heap, which can grow without ``mmap``), no ``mmap`` for large blocks, and no
  trimming of the heap's free top. Steps then fault nothing in, but the heap fragments: blocks
  that no longer fit the holes left by the last step grow it. A process running ResNet-50's train
  step at 64 px held 1.8 GiB for 160 steps, then grew to 2.5 GiB by step 200. It must run before
  the process's threads first allocate (glibc fixes the number of arenas then). The same settings
  from the environment: ``MALLOC_ARENA_MAX=1 MALLOC_MMAP_MAX_=0
  MALLOC_TRIM_THRESHOLD_=2147483647``. ``mallopt`` takes the trim threshold as an int, so a
  freed block above 2 GiB is above any threshold it can set: MobileNetV2's train step at 224
  px (4.4 GiB of temporaries) faulted 1.1 million 4-KiB pages a step under it. glibc's tunables
  take a larger threshold, but the step ran slower that way (0.96 s against 0.78 with huge
  pages) in a heap that grew to 14.9 GiB.

``JAXCNN_MALLOC=default`` leaves glibc as it is. Where the environment already tunes ``malloc``
(any of :data:`USER_CHOICES`) or preloads another allocator, neither is applied. PyTorch's CPU
tensors come from the same ``malloc``, so a comparison in one process gives both frameworks the
same allocator.
"""

from __future__ import annotations

import ctypes
import importlib.util
import os
import platform
import sys

M_TRIM_THRESHOLD, M_MMAP_MAX, M_ARENA_MAX = -1, -4, -8  # mallopt's parameters (malloc.h)

SETTINGS = ((M_ARENA_MAX, 1), (M_MMAP_MAX, 0), (M_TRIM_THRESHOLD, 2**31 - 1))

USER_CHOICES = ("MALLOC_ARENA_MAX", "MALLOC_MMAP_MAX_", "MALLOC_TRIM_THRESHOLD_",
                "MALLOC_MMAP_THRESHOLD_", "GLIBC_TUNABLES")
"""Environment variables that tune glibc's malloc: where one is set, the user has chosen."""

HUGE_PAGES = "glibc.malloc.hugetlb=1"
"""The glibc tunable that has ``malloc`` advise transparent huge pages on what it maps."""

THP_MODE = "/sys/kernel/mm/transparent_hugepage/enabled"

RESTARTED = "JAXCNN_HUGE_PAGES_RESTART"
"""Set in the environment of the process that :func:`restart_with_huge_pages` starts."""

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
    if glibc_version() is None or users_choice():
        return False
    global kept
    libc = ctypes.CDLL(None)
    kept = all(libc.mallopt(option, value) == 1 for option, value in SETTINGS)
    return kept


def users_choice() -> bool:
    """Whether the environment tunes glibc's ``malloc`` itself or preloads another one."""
    return any(name in os.environ for name in USER_CHOICES) or \
        "malloc" in os.environ.get("LD_PRELOAD", "")


def glibc_version() -> tuple[int, ...] | None:
    """glibc's version on Linux (``(2, 36)``); None off Linux/glibc."""
    name, version = platform.libc_ver()
    if platform.system() != "Linux" or name != "glibc" or not version:
        return None
    return tuple(int(part) for part in version.split(".")[:2] if part.isdigit())


def transparent_huge_pages(path: str = THP_MODE) -> str | None:
    """The kernel's transparent-huge-page mode (``always``, ``madvise`` or ``never``: the
    bracketed word of ``path``); None where the file is absent or unreadable."""
    try:
        with open(path) as f:
            words = f.read().split()
    except OSError:
        return None
    return next((w[1:-1] for w in words if w.startswith("[") and w.endswith("]")), None)


def huge_pages_env() -> dict[str, str] | None:
    """The environment under which glibc's ``malloc`` uses transparent huge pages: this one
    plus ``GLIBC_TUNABLES=glibc.malloc.hugetlb=1``. None where it would not apply or is not
    ours to set: glibc older than 2.35 (no such tunable) or not glibc, the kernel's huge pages
    off or absent, ``JAXCNN_MALLOC`` set (``keep`` or ``default``), the environment already
    tuning ``malloc``, or this process being the restarted one (:data:`RESTARTED`, a guard
    against a loop should the tunable not reach the new process's environment)."""
    version = glibc_version()
    if version is None or version < (2, 35) or os.environ.get("JAXCNN_MALLOC") or \
            users_choice() or RESTARTED in os.environ:
        return None
    if transparent_huge_pages() not in ("always", "madvise"):
        return None
    return {**os.environ, "GLIBC_TUNABLES": HUGE_PAGES, RESTARTED: "1"}


def restart_with_huge_pages() -> None:
    """Replaces this process by its own command line under :func:`huge_pages_env` (same
    process id, interpreter, options and arguments: ``sys.orig_argv``); returns without doing
    anything where that is None. For a program's entry, before it imports JAX: the ``train``
    package calls it when run as ``python -m train.<module>`` on the CPU."""
    env = huge_pages_env()
    if env is None:
        return
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], env)


def malloc_setting() -> str:
    """How this process's ``malloc`` is set, in words, for benchmark reports."""
    if glibc_version() is None:
        return "the system's"
    if kept:
        return "kept"
    if "malloc" in os.environ.get("LD_PRELOAD", ""):
        return f"preloaded ({os.environ['LD_PRELOAD']})"
    chosen = [f"{name}={os.environ[name]}" for name in USER_CHOICES if name in os.environ]
    if chosen == [f"GLIBC_TUNABLES={HUGE_PAGES}"] and \
            transparent_huge_pages() in ("always", "madvise"):
        return "glibc, huge pages"
    return "glibc, " + " ".join(chosen) if chosen else "glibc default"
