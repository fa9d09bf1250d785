"""Bad input to the command lines: one clear line (exit status 2), never a traceback.

Weights files for ``python -m jaxcnn.convert`` and ``--pretrained``.
"""

from __future__ import annotations

import os

import numpy as np
import pytest

from jaxcnn import convert
from train import train as train_lib
from train.configs.default import ConfigError, get_config


def _convert(capsys, *argv) -> str:
    """Runs the convert CLI; asserts status 2 and one ``error:`` message, which it returns."""
    assert convert.main([str(a) for a in argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Traceback" not in err
    return err


def test_convert_refuses_bad_input_in_one_line(tmp_path, capsys):
    from safetensors.numpy import save_file

    good = tmp_path / "w.safetensors"
    save_file({"fc.weight": np.zeros((3, 4), np.float32)}, str(good))
    truncated = tmp_path / "cut.safetensors"
    truncated.write_bytes(good.read_bytes()[:40])
    out = tmp_path / "out"
    assert "resnet_nope" in _convert(capsys, good, "--arch", "resnet_nope", "--out", out)
    assert "No weights file at" in _convert(capsys, tmp_path / "nope.safetensors", "--arch",
                                            "resnet18", "--out", out)
    message = _convert(capsys, truncated, "--arch", "resnet18", "--out", out)
    assert "truncated or corrupt" in message and "cut.safetensors" in message
    assert message.count("\n") == 1
    assert "is a directory" in _convert(capsys, tmp_path, "--arch", "resnet18", "--out", out)
    odd = tmp_path / "w.txt"
    odd.write_text("x")
    assert "Unknown weights format" in _convert(capsys, odd, "--arch", "resnet18", "--out", out)
    # Weights of another network: the engine's WeightMismatchError, without its traceback.
    other = tmp_path / "other.npz"
    np.savez(other, **{"features.0.weight": np.zeros((64, 3, 11, 11), np.float32)})
    assert "features.0.weight" in _convert(capsys, other, "--arch", "resnet18", "--out", out)
    out.mkdir()
    assert "exists; choose a new --out" in _convert(capsys, good, "--arch", "resnet18",
                                                    "--out", out)
    assert os.listdir(out) == []


class _Payload:
    """Something a pickle names and that loading it would build (run its code)."""


@pytest.mark.parity  # needs torch
def test_a_pickle_that_would_run_code_is_refused_with_the_reason(tmp_path, capsys):
    import torch

    path = tmp_path / "evil.pth"
    torch.save({"model": _Payload()}, str(path))
    message = _convert(capsys, path, "--arch", "resnet18", "--out", tmp_path / "out")
    assert "could run arbitrary code" in message and "_Payload" in message
    assert ".safetensors" in message and "weights_only=False" not in message
    assert not (tmp_path / "out").exists()


def test_pretrained_with_a_bad_file_is_a_config_error(tmp_path):
    bad = tmp_path / "cut.safetensors"
    bad.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{")
    config = get_config().replace(arch="resnet18", pretrained=str(bad), num_classes=10)
    with pytest.raises(ConfigError, match=r"--pretrained: Cannot read .*truncated or corrupt"):
        train_lib.load_pretrained_variables(config, None)
    not_converted = tmp_path / "dir"
    not_converted.mkdir()
    config = config.replace(pretrained=str(not_converted))
    with pytest.raises(ConfigError, match=r"not a converted-weights directory"):
        train_lib.load_pretrained_variables(config, None)
