"""jaxcnn.allocator: huge pages, or glibc keeping what XLA frees, so that a step stops faulting
its buffers in again 4 KiB at a time.

The effect is counted, not timed: the kernel's minor page faults over repeated calls of a jitted
function with a 48 MiB result (the median call), in a fresh process with and without the
settings.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys

import pytest

from conftest import ROOT
from jaxcnn import allocator

glibc_linux = pytest.mark.skipif(
    platform.system() != "Linux" or platform.libc_ver()[0] != "glibc",
    reason="the settings are glibc's")

huge_pages_here = pytest.mark.skipif(
    (allocator.glibc_version() or (0,)) < (2, 35)
    or allocator.transparent_huge_pages() not in ("always", "madvise"),
    reason="needs glibc 2.35+ and the kernel's transparent huge pages (madvise or always)")

PROBE = r"""
import json, resource, sys
import train  # with JAXCNN_MALLOC=keep, the trainer's first act: keep freed memory
import jax, jax.numpy as jnp
from jaxcnn import allocator

@jax.jit
def f(x):  # a new 48 MiB buffer each call
    return x * 2.0

x = jnp.ones((12 << 20,), jnp.float32)
def call():
    y = f(x)
    y.block_until_ready()
    y.delete()  # freed now, not whenever Python and the runtime get to it

for _ in range(48):  # the heap grows to what the calls in flight need, then stays
    call()
faults = []
for _ in range(16):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    call()
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
# The median call: on a loaded machine an odd call can find its freed block taken by another
# allocation and grow the heap once; what matters is that the typical call faults nothing in.
print(json.dumps({"kept": allocator.kept,
                  "mib_per_call": sorted(faults)[len(faults) // 2] * 4096 / 2**20,
                  "faults": faults}))
"""


def probe(**env: str) -> dict:
    clean = {k: v for k, v in os.environ.items()
             if k not in allocator.USER_CHOICES and k != "JAXCNN_MALLOC"}
    out = subprocess.run([sys.executable, "-c", PROBE], env={**clean, "JAX_PLATFORMS": "cpu",
                                                             **env},
                         capture_output=True, text=True, timeout=300,
                         cwd=ROOT)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.slow  # two fresh processes that import the trainer
@glibc_linux
def test_kept_memory_is_not_faulted_in_again_each_call():
    default = probe()
    kept = probe(JAXCNN_MALLOC="keep")
    assert not default["kept"] and kept["kept"]
    # Without the settings each call maps its 48 MiB afresh and touches every page.
    assert default["mib_per_call"] > 40, default
    assert kept["mib_per_call"] < 10, kept


@pytest.mark.slow
@glibc_linux
def test_the_environment_settings_do_the_same():
    """The module's text gives the environment variables for processes that do not import
    ``train``; they must give the same effect (and the function then leaves them alone)."""
    kept = probe(JAXCNN_MALLOC="keep", MALLOC_ARENA_MAX="1", MALLOC_MMAP_MAX_="0",
                 MALLOC_TRIM_THRESHOLD_=str(2**31 - 1))
    assert not kept["kept"]  # the user's own settings win
    assert kept["mib_per_call"] < 10, kept


@pytest.mark.slow
@huge_pages_here
def test_huge_pages_fault_a_block_in_2_mib_at_a_time():
    default = probe(JAXCNN_MALLOC="default")
    huge = probe(GLIBC_TUNABLES=allocator.HUGE_PAGES)
    assert default["mib_per_call"] > 40, default  # 12,288 faults of 4 KiB a call
    # One fault per 2 MiB page: 24 for the 48 MiB, counted here as 24 x 4 KiB = 0.1 MiB.
    assert huge["mib_per_call"] < 10, huge


RESTART = r"""
import os, sys
print("start", os.getpid(), os.environ.get("GLIBC_TUNABLES"), flush=True)
sys.addaudithook(lambda event, args: event == "os.exec" and print(
    "exec", "jax" in sys.modules, "flax" in sys.modules, flush=True))
sys.argv = ["-m"]  # as while `python -m train.main` imports its package
import train
print("running", os.getpid(), os.environ.get("GLIBC_TUNABLES"), flush=True)
"""


def run_restart(**env: str) -> list[list[str]]:
    clean = {k: v for k, v in os.environ.items()
             if k not in (*allocator.USER_CHOICES, "JAXCNN_MALLOC", allocator.RESTARTED)}
    out = subprocess.run([sys.executable, "-c", RESTART],
                         env={**clean, "JAX_PLATFORMS": "cpu", **env},
                         capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-3000:]
    return [line.split() for line in out.stdout.splitlines()]


@pytest.mark.slow  # fresh processes that import the trainer
@huge_pages_here
def test_the_trainer_restarts_its_command_with_huge_pages_before_importing_jax():
    (start, first_pid, none), exec_, (again, pid, tunable), (running, last_pid, still) = \
        run_restart()
    assert (start, again, running) == ("start", "start", "running")
    assert none == "None" and tunable == still == allocator.HUGE_PAGES
    assert first_pid == pid == last_pid  # replaced in place: a launcher's child stays its child
    # JAX and Flax (jaxcnn/__init__) are imported once, by the process that runs the command.
    assert exec_ == ["exec", "False", "False"], exec_


@pytest.mark.slow
@glibc_linux
@pytest.mark.parametrize("env", [{"JAXCNN_MALLOC": "default"}, {"JAXCNN_MALLOC": "keep"},
                                 {"GLIBC_TUNABLES": "glibc.malloc.arena_max=2"}])
def test_the_trainer_does_not_restart_where_told_otherwise(env):
    lines = run_restart(**env)
    assert [line[0] for line in lines] == ["start", "running"], lines
    assert lines[1][2] == env.get("GLIBC_TUNABLES", "None")


@pytest.mark.parametrize("version, mode, env, applies", [
    ((2, 36), "madvise", {}, True), ((2, 39), "always", {}, True),
    ((2, 34), "madvise", {}, False),  # no hugetlb tunable before glibc 2.35
    (None, "madvise", {}, False), ((2, 36), "never", {}, False), ((2, 36), None, {}, False),
    ((2, 36), "madvise", {"JAXCNN_MALLOC": "default"}, False),
    ((2, 36), "madvise", {"GLIBC_TUNABLES": allocator.HUGE_PAGES}, False),  # restarted already
    ((2, 36), "madvise", {"MALLOC_ARENA_MAX": "2"}, False),
    ((2, 36), "madvise", {allocator.RESTARTED: "1"}, False),  # never a second time
])
def test_when_huge_pages_apply(monkeypatch, version, mode, env, applies):
    for name in (*allocator.USER_CHOICES, "JAXCNN_MALLOC", "LD_PRELOAD", allocator.RESTARTED):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(allocator, "glibc_version", lambda: version)
    monkeypatch.setattr(allocator, "transparent_huge_pages", lambda: mode)
    got = allocator.huge_pages_env()
    assert (got is not None) is applies
    if applies:
        assert got["GLIBC_TUNABLES"] == allocator.HUGE_PAGES and got["PATH"] == os.environ["PATH"]


@pytest.mark.parametrize("text, mode", [
    ("always [madvise] never\n", "madvise"), ("[always] madvise never", "always"),
    ("always madvise [never]", "never"), ("", None),
])
def test_transparent_huge_pages_mode(tmp_path, text, mode):
    path = tmp_path / "enabled"
    path.write_text(text)
    assert allocator.transparent_huge_pages(str(path)) == mode
    assert allocator.transparent_huge_pages(str(tmp_path / "absent")) is None


@pytest.mark.parametrize("env, kept, label", [
    ({}, False, "glibc default"), ({}, True, "kept"),
    ({"GLIBC_TUNABLES": allocator.HUGE_PAGES}, False, "glibc, huge pages"),
    ({"MALLOC_ARENA_MAX": "2"}, False, "glibc, MALLOC_ARENA_MAX=2"),
    ({"LD_PRELOAD": "/usr/lib/libtcmalloc.so"}, False, "preloaded (/usr/lib/libtcmalloc.so)"),
])
def test_the_benchmark_names_the_setting(monkeypatch, env, kept, label):
    for name in (*allocator.USER_CHOICES, "LD_PRELOAD"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(allocator, "kept", kept)
    monkeypatch.setattr(allocator, "glibc_version", lambda: (2, 36))
    monkeypatch.setattr(allocator, "transparent_huge_pages", lambda: "madvise")
    assert allocator.malloc_setting() == label


def test_an_unknown_setting_is_named():
    out = subprocess.run([sys.executable, "-W", "always", "-c", "import train"],
                         env={**os.environ, "JAXCNN_MALLOC": "kept"}, capture_output=True,
                         text=True, timeout=120,
                         cwd=ROOT)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "JAXCNN_MALLOC='kept' is not a setting: 'keep' keeps freed memory, 'default' " \
        "leaves glibc's defaults" in out.stderr


@pytest.mark.parametrize("env", [
    {"MALLOC_ARENA_MAX": "4"}, {"GLIBC_TUNABLES": "x"},
    {"LD_PRELOAD": "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2"},
])
def test_a_users_choice_is_left_alone(monkeypatch, env):
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert allocator.keep_freed_memory() is False


@pytest.mark.parametrize("platforms, plugins, expected", [
    ("cpu", True, True), ("cuda,cpu", False, False), ("", False, True), ("", True, False),
])
def test_runs_on_cpu(monkeypatch, platforms, plugins, expected):
    monkeypatch.setenv("JAX_PLATFORMS", platforms)
    real = allocator.importlib.util.find_spec
    monkeypatch.setattr(allocator.importlib.util, "find_spec",
                        lambda name: object() if plugins and name == "jax_plugins"
                        else None if name in ("jax_plugins", "libtpu") else real(name))
    assert allocator.runs_on_cpu() is expected
