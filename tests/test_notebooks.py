"""The notebooks run top to bottom on the public API, are stored without outputs, and show what
their text says they show."""

import copy
import pathlib
import re
import warnings

import nbformat
import pytest
from nbclient import NotebookClient

from conftest import ROOT, with_root_on_path

NOTEBOOKS = sorted((pathlib.Path(ROOT) / "notebooks").glob("*.ipynb"))

# A notebook that imports a reference framework needs the parity extra, like the parity tests.
_REFERENCE_IMPORT = re.compile(r"^\s*(import|from)\s+(torch|torchvision|timm|keras)\b", re.M)


def _case(path: pathlib.Path):
    """The notebook as a test case: every notebook trains or compiles networks (slow)."""
    source = "\n".join(c.source for c in nbformat.read(path, as_version=4).cells
                       if c.cell_type == "code")
    marks = [pytest.mark.slow]
    if _REFERENCE_IMPORT.search(source):
        marks.append(pytest.mark.parity)
    return pytest.param(path, marks=marks, id=path.stem)


def _printed(nb) -> str:
    """All the text the notebook's cells printed or displayed, in order."""
    parts = []
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            if out.output_type == "stream":
                parts.append(out.text)
            elif "data" in out:
                parts.append(out.data.get("text/plain", ""))
    return "\n".join(parts)


def _images(nb) -> int:
    return sum("image/png" in out.get("data", {}) for cell in nb.cells
               for out in cell.get("outputs", []))


def check_quickstart(nb) -> None:
    text = _printed(nb)
    # torchvision's ResNet-18 has 11,689,512 parameters (its weights' meta); a 10-class head
    # replaces the 512 x 1000 + 1000 = 513,000 of the ImageNet one with 512 x 10 + 10 = 5,130.
    assert "learnable: 11181642" in text
    # torchvision's ResNet50_Weights meta: 25,557,032; Keras' ResNet50 summary: 25,636,712 total.
    assert "ResNet-50 (torchvision): 25557032" in text
    assert "ResNet50 (Keras total): 25636712" in text
    assert "(4, 10) float32 float32" in text  # bfloat16 compute, float32 logits and params
    assert re.search(r"Unknown architecture 'resnet5O'.*resnet50", text, re.S)  # the close name


def check_transfer_learning(nb) -> None:
    finals = re.findall(r"Final test accuracy of resnet18 on mnist_sample .*top-1 ([\d.]+)%",
                        _printed(nb))
    assert len(finals) == 2, finals  # the frozen stage, then the fine-tuned one
    # The notebook's text: fine-tuning the whole network learns the digits (78% after 40
    # steps when it was written); chance is 10%.
    assert float(finals[1]) > 50, finals
    assert _images(nb) == 1  # the accuracy plot


def check_understanding(nb) -> None:
    text = _printed(nb)
    accuracy = re.search(r"Final test accuracy of lenet5 on mnist_sample .*top-1 ([\d.]+)%", text)
    assert accuracy and float(accuracy.group(1)) > 80, text  # three epochs: 95% when written
    assert "(1000, 32, 32, 1) test digits" in text
    assert "conv1 filters: (5, 5, 1, 6)" in text
    # Receptive fields from the geometry: 5x5 convolution; then 2x2 pooling and another 5x5
    # convolution: 5 + 1 + 2 * 4 = 14.
    assert "conv1 receptive field: 5x5 pixels" in text
    assert "conv2 receptive field: 14x14 pixels" in text
    assert "grad_cam (6, 10, 10)" in text and "deconvnet (6, 32, 32, 1)" in text
    # Hiding a corner of a centred digit hardly matters; hiding its strokes does.
    corner, lowest = map(float, re.search(
        r"corner hidden: ([\d.]+); at the most sensitive position: ([\d.]+)", text).groups())
    assert corner > 0.6 and lowest < corner / 2, (corner, lowest)
    assert _images(nb) == 5  # filters, two top-9 grids, the four methods, occlusion


CHECKS = {"quickstart": check_quickstart, "transfer_learning": check_transfer_learning,
          "understanding": check_understanding}


def test_every_notebook_has_a_check():
    assert {p.stem for p in NOTEBOOKS} == set(CHECKS)


@pytest.mark.parametrize("path", [_case(p) for p in NOTEBOOKS])
def test_notebook_runs(path, tmp_path, monkeypatch):
    # The notebooks train for real: their kernel gets XLA's optimisations, which conftest.py
    # switches off for the rest of the suite (ResNet-18 training: 7 min without, ~2 with).
    monkeypatch.delenv("JAX_DISABLE_MOST_OPTIMIZATIONS", raising=False)
    # The trainer is not installed (it runs from the checkout): the kernel, started in
    # tmp_path, finds it through PYTHONPATH, as a Jupyter started with PYTHONPATH=$PWD does.
    monkeypatch.setenv("PYTHONPATH", with_root_on_path()["PYTHONPATH"])
    stored = nbformat.read(path, as_version=4)
    assert all(not c.get("outputs") for c in stored.cells if c.cell_type == "code"), \
        "store notebooks without outputs"
    nb = _executed(stored, tmp_path)
    try:
        CHECKS[path.stem](nb)
    except AssertionError as first:
        # On a loaded CI-like machine (2026-12-02) ipykernel 7.4 once lost one cell's printed
        # line ("conv1 filters" of understanding) while every other output arrived; a stream
        # message that reaches nbclient after the cell's idle status, or under another parent,
        # is dropped. A second execution tells such a race from a regression, which fails twice.
        warnings.warn(f"{path.stem}: the first execution failed its check ({first!s:.200}); "
                      "executing it again")
        nb = _executed(stored, tmp_path)
        CHECKS[path.stem](nb)


def _executed(stored, tmp_path):
    nb = copy.deepcopy(stored)
    NotebookClient(nb, timeout=600, kernel_name="python3",
                   resources={"metadata": {"path": str(tmp_path)}}).execute()
    return nb
