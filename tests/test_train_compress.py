"""python -m train.compress: the stages on a toy run (resumed, never touching the source), the
file against the network the optimizer state holds, and the bad inputs that exit with 2."""

from __future__ import annotations

import hashlib
import json
import os
import re

import jax
import numpy as np
import pytest

from jaxcnn import compress as compress_lib
from test_train import ToyData, tiny_factory_no_dropout, toy_config
from train import compress
from train import train as train_lib


def _digest(directory) -> str:
    """A hash of every file's path and bytes under ``directory``."""
    h = hashlib.sha256()
    for root, _, files in sorted(os.walk(directory)):
        for name in sorted(files):
            path = os.path.join(root, name)
            h.update(path.encode())
            with open(path, "rb") as f:
                h.update(f.read())
    return h.hexdigest()


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """A finished toy training run (TinyCNN: a 3x3 conv kernel, BatchNorm, a 512x4 head)."""
    workdir = tmp_path_factory.mktemp("source")
    train_lib.train_and_evaluate(toy_config(workdir, epochs=2), data=ToyData(),
                                 model_factory=tiny_factory_no_dropout, print_fn=lambda *_: None)
    return str(workdir)


FLAGS = ["--sparsity", "conv=0.5,fc=0.8", "--bits", "4", "--index-bits", "conv=3,fc=4",
         "--prune-rounds", "2", "--retrain-epochs", "1", "--finetune-epochs", "1",
         "--no-progress"]


def _run(source, out, flags=FLAGS):
    args = compress.build_parser().parse_args(["--workdir", source, "--out", str(out), *flags])
    lines = []
    runner = compress.Compressor(source, str(out), args, data=ToyData(),
                                 model_factory=tiny_factory_no_dropout, print_fn=lines.append)
    return runner, runner.run(), lines


def _kernel(workdir, layer):
    ckpts = train_lib.checkpoints_lib.Checkpoints(os.path.join(workdir, "checkpoints"),
                                                  read_only=True)
    try:
        step = ckpts.best_step() or ckpts.latest_step()
        return np.asarray(ckpts.restore_variables(step)["params"][layer]["kernel"])
    finally:
        ckpts.close()


@pytest.mark.slow
def test_compression_end_to_end_and_resumed(source, tmp_path):
    untouched = _digest(source)
    out = tmp_path / "deep"
    runner, report, lines = _run(source, out)
    assert _digest(source) == untouched  # the source run is only read

    # Round 1 keeps 0.5 ** (1/2) of the conv kernel's 72 weights, round 2 half of them; the fc
    # kernel ends with round(0.2 x 2048) = 410. What a round pruned stays pruned.
    conv1, conv2 = _kernel(out / "prune1", "conv"), _kernel(out / "prune2", "conv")
    assert np.count_nonzero(conv1) == 72 - round((1 - 0.5 ** 0.5) * 72)
    assert np.count_nonzero(conv2) == 36 and np.all(conv2[conv1 == 0] == 0)
    assert np.count_nonzero(_kernel(out / "prune2", "head")) == 410

    # The file is the network the optimizer state holds: codebook[indices], exactly.
    variables, shared, _ = runner.quantized_network()
    decoded, stats = compress_lib.read(report["file"]["path"])
    for a, b in zip(jax.tree.leaves(decoded), jax.tree.leaves(variables)):
        assert np.array_equal(a, np.asarray(b))
    head = decoded["params"]["head"]["kernel"]
    assert np.all(head[_kernel(out / "prune2", "head") == 0] == 0)
    assert len(np.unique(head[head != 0])) <= 2 ** 4 - 1
    assert os.path.getsize(report["file"]["path"]) == report["file"]["bytes"]
    stages = json.loads((out / "compress.json").read_text())["stages"]
    assert stages["encode"]["accuracy_decoded"] == stages["quantize"]["accuracy_finetuned"]
    rows = {row["layer"]: row for row in report["layers"]}
    assert rows["conv"]["index_bits"] == 3 and rows["head"]["weight_bits"] == 4
    assert any("uncompressed" in line and "compressed" in line for line in lines)
    assert (out / "report.png").stat().st_size > 10_000

    # Run again: every stage is found done, nothing is retrained.
    trained = _digest(out / "prune1") + _digest(out / "quantize")
    _, again, _ = _run(source, out)
    assert _digest(out / "prune1") + _digest(out / "quantize") == trained
    assert again["file"]["bytes"] == report["file"]["bytes"]
    # Other settings into the same --out are refused, not mixed in.
    with pytest.raises(compress_lib.CompressionError, match="pass another --out"):
        _run(source, out, [*FLAGS, "--bits", "3"])


def _main(capsys, *argv) -> str:
    assert compress.main(list(argv)) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and len(err.splitlines()) == 1, err
    return err


@pytest.mark.parametrize("flags,message", [
    (["--sparsity", "0.5", "--bits", "0"], "from 1 to 16"),
    (["--sparsity", "0.5", "--bits", "fc=17"], "from 1 to 16"),
    (["--sparsity", "0.5", "--index-bits", "2.5"], "--index-bits"),
    (["--sparsity", "1.0"], r"in \[0, 1\)"),
    (["--sparsity", "conv=-0.1"], r"in \[0, 1\)"),
    (["--sparsity", "conv9=0.5"], "no layer 'conv9'"),
    (["--sparsity", "0.5", "--quality", "1"], "one of them"),
])
def test_bad_settings_exit_2_with_one_line(source, tmp_path, capsys, flags, message):
    untouched = _digest(source)
    err = _main(capsys, "--workdir", source, "--out", str(tmp_path / "o"), *flags)
    assert re.search(message, err), err
    assert _digest(source) == untouched and not (tmp_path / "o").exists()


def test_a_workdir_without_a_checkpoint_exits_2(tmp_path, capsys):
    err = _main(capsys, "--workdir", str(tmp_path / "nothing"), "--out", str(tmp_path / "o"))
    assert "No checkpoints" in err and "--workdir" in err
    (tmp_path / "empty" / "checkpoints").mkdir(parents=True)
    err = _main(capsys, "--workdir", str(tmp_path / "empty"), "--out", str(tmp_path / "o"))
    assert "No checkpoint in" in err and "Train it first" in err


def test_out_inside_the_source_is_refused(source, capsys):
    err = _main(capsys, "--workdir", source, "--out", os.path.join(source, "deep"))
    assert "never written to" in err


def test_the_paper_settings_need_a_network_of_the_paper(source, tmp_path, capsys):
    err = _main(capsys, "--workdir", source, "--out", str(tmp_path / "o"))
    assert "no table for tiny" in err and "lenet_300_100" in err


@pytest.mark.slow
def test_lenet_300_100_on_the_embedded_digits(tmp_path):
    """The real pipeline at a tiny budget: a registered network, the embedded digits, the
    paper's rates and the default command line."""
    from train import main as train_main

    source = str(tmp_path / "lenet_300_100")
    assert train_main.main(["--arch", "lenet_300_100", "--workdir", source, "--epochs", "1",
                            "--no-progress", "--no-tensorboard"]) == 0
    out = tmp_path / "deep"
    assert compress.main(["--workdir", source, "--out", str(out), "--prune-rounds", "1",
                          "--retrain-epochs", "1", "--finetune-epochs", "1",
                          "--no-progress"]) == 0
    report = json.loads((out / "report.json").read_text())
    kept = {row["layer"]: row["kept_fraction"] for row in report["layers"]}
    # The paper's rates (Table 2), exactly by rank: 18,816 + 2,700 + 260 of 266,200 weights.
    assert kept == pytest.approx({"fc1": 0.08, "fc2": 0.09, "head": 0.26,
                                  "total": 21_776 / 266_200}, abs=1e-6)
    assert report["file"]["ratio"] > 30
    assert report["accuracy"]["encode"]["accuracy_decoded"] > 50
