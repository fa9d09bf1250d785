"""Bad input to the command lines: one clear line (exit status 2), never a traceback.

Weights files for ``python -m jaxcnn.convert`` and ``--pretrained``; image folders with a
corrupt image, an empty class, a single class, or a test class that train/ lacks; a
``--compilation-cache`` that is not a directory one can write to; a misspelt ``JAXCNN_CONV``.
"""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import ROOT
from jaxcnn import convert
from test_input_pipeline import _write_folder
from train import input_pipeline as ip
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


# ---------------------------------------------------------------------------------------------
# Image folders.
def _folder(tmp_path, train, test):
    rng = np.random.default_rng(0)
    _write_folder(tmp_path, "train", train, rng)
    _write_folder(tmp_path, "test", test, rng)
    return f"folder:{tmp_path}"


@pytest.mark.slow  # ~8 s: TensorFlow pipelines over the folder
def test_a_corrupt_image_is_named_and_can_be_skipped(tmp_path, capsys):
    name = _folder(tmp_path, {"a": 3, "b": 3}, {"a": 1, "b": 1})
    bad = tmp_path / "train" / "b" / "001.png"
    bad.write_bytes(bad.read_bytes()[:30])  # a truncated PNG: same name, cannot be decoded
    batches = ip.train_iterator(name, data_dir=None, global_batch_size=2, image_size=16, seed=0)
    with pytest.raises(ip.DatasetError) as err:
        for _ in range(6):
            next(batches)
    message = str(err.value)
    assert "1 image(s)" in message and os.path.join("train", "b", "001.png") in message
    assert "--skip-bad-images" in message
    assert ip.dataset_info(name, skip_bad_images=True).num_train == 5
    assert "left out 1 image(s)" in capsys.readouterr().err
    batches = ip.train_iterator(name, data_dir=None, global_batch_size=2, image_size=16, seed=0,
                                skip_bad_images=True)
    assert all(next(batches)["image"].shape == (2, 16, 16, 3) for _ in range(6))


def test_folders_a_network_cannot_learn_are_refused(tmp_path, capsys):
    name = _folder(tmp_path / "one", {"a": 2}, {"a": 1})
    with pytest.raises(ip.DatasetError, match=r"training images of 1 class.*at least two"):
        ip.dataset_info(name)
    name = _folder(tmp_path / "empty", {"a": 2, "b": 2}, {"a": 1, "b": 1})
    os.makedirs(tmp_path / "empty" / "train" / "c")
    with pytest.raises(ip.DatasetError, match=r"class\(es\) c have no images"):
        ip.dataset_info(name)
    name = _folder(tmp_path / "extra", {"a": 2, "b": 2}, {"a": 1, "b": 1, "c": 1})
    assert ip.dataset_info(name).num_classes == 3
    assert "test/ has images of class(es) c that train/ lacks" in capsys.readouterr().err


def test_an_unusable_compilation_cache_is_one_line(tmp_path, capsys):
    """``--compilation-cache`` naming a file (or a directory that cannot be written): status 2
    and one line that names the option and the fix, before any training."""
    from train import main as main_lib

    not_a_directory = tmp_path / "cache"
    not_a_directory.write_text("")
    workdir = tmp_path / "run"
    assert main_lib.main(["--arch", "lenet5", "--max-steps", "1", "--no-progress",
                          "--workdir", str(workdir), "--compilation-cache",
                          str(not_a_directory)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: --compilation-cache {not_a_directory}: cannot keep")
    assert "pass a directory you can write to" in err and err.count("\n") == 1
    assert not workdir.exists()


def test_a_misspelt_jaxcnn_conv_stops_the_trainer_in_one_line():
    # jaxcnn refuses the name at import (tests/test_conv.py); the trainer's commands import it
    # before their own error handling exists, and used to show the import's traceback.
    env = {**os.environ, "JAXCNN_CONV": "spreadd", "JAXCNN_MALLOC": "default"}
    run = subprocess.run([sys.executable, "-m", "train.main", "--help"], env=env, text=True,
                         capture_output=True, timeout=300,
                         cwd=ROOT)
    assert run.returncode == 2 and "Traceback" not in run.stderr, run.stderr
    assert run.stderr.startswith("error: environment variable JAXCNN_CONV 'spreadd' is not")
    assert len(run.stderr.splitlines()) == 1
