"""jaxcnn.allocator: glibc keeps what XLA frees, so a step stops faulting its buffers in again.

The effect is counted, not timed: the kernel's minor page faults over repeated calls of a jitted
function with a 48 MiB result, in a fresh process with and without the settings.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys

import pytest

from jaxcnn import allocator

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # where `import train` works

glibc_linux = pytest.mark.skipif(
    platform.system() != "Linux" or platform.libc_ver()[0] != "glibc",
    reason="the settings are glibc's")

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
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(16):
    call()
faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
print(json.dumps({"kept": allocator.kept, "mib_per_call": faults * 4096 / 2**20 / 16}))
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


def test_an_unknown_setting_is_named():
    out = subprocess.run([sys.executable, "-W", "always", "-c", "import train"],
                         env={**os.environ, "JAXCNN_MALLOC": "kept"}, capture_output=True,
                         text=True, timeout=120,
                         cwd=ROOT)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "JAXCNN_MALLOC='kept' is not a setting: 'keep' keeps freed memory" in out.stderr


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
