"""The convolution survey: shapes collected from the networks, classed, timed, summarised."""

import dataclasses
import json

import pytest

from jaxcnn import conv
from train import convbench


def test_lenet5_convolutions_are_collected_and_classed():
    # LeNet-5 (modern): 32x32x1 -> conv 5x5 (6) -> pool -> conv 5x5 (16) on 14x14x6.
    found = convbench.collect(["lenet5"], [32], batch=2)
    classes = sorted(convbench.shape_class(k) for k in found)
    assert classes == ["5x5 9-16 s1 valid", "stem 5x5 17-32 s1 valid"]


@pytest.mark.slow
def test_a_timed_shape_reports_every_formulation_and_a_summary_without_typical_says_so():
    key = convbench.ConvKey(4, 4, 8, 3, 3, 8, (1, 1), ((1, 1), (1, 1)), 1)
    row = convbench.time_shape(key, batch=2, rounds=1)
    assert set(row["formulations"]) == {"xla", "im2col", "shifted", "flipped", "tapwise",
                                        "spread"}  # stride 1
    assert all(f["error"] < 1e-5 for f in row["formulations"].values())
    table = convbench.format_table(convbench.summarise([row]))
    assert "3x3 3-4 s1 pad" in table and "unknown" in table  # 0.0001 GFLOP: no typical figure


def test_summary_only_without_a_survey_says_what_to_run(tmp_path, capsys):
    assert convbench.main(["--summary-only", "--output", str(tmp_path / "none.json")]) == 2
    assert "run the survey with --output first" in capsys.readouterr().err
    other = tmp_path / "notes.json"
    for text in ("not json", '{"results": []}'):
        other.write_text(text)
        assert convbench.main(["--summary-only", "--output", str(other)]) == 2
        assert "is not a survey written by python -m train.convbench" in capsys.readouterr().err
        # --resume reads --output the same way (it raised a JSONDecodeError traceback).
        assert convbench.main(["--arch", "lenet5", "--resume", "--output", str(other)]) == 2
        assert "is not a survey written by python -m train.convbench" in capsys.readouterr().err


def _row(key, ms):
    """A survey row of ``key`` with the given milliseconds of each formulation (same for all
    three passes)."""
    gflop = key.shape(32).flops / 1e9
    return {"class": convbench.shape_class(key), "shape": dataclasses.asdict(key), "batch": 32,
            "gflop": gflop, "formulations": {
                name: {f"{p}_{unit}": (t if unit == "ms" else gflop / t * 1e3)
                       for p in convbench.PASSES for unit in ("ms", "gflops")}
                for name, t in ms.items()}}


def test_the_summary_lists_routed_passes_slower_than_xla_on_the_surveyed_machine():
    # A 1x1 convolution is routed through im2col in every pass; a 3x3 on a 16x16 map at
    # stride 1 onto 32 channels stays with XLA on every host. Timings made up: im2col twice
    # as slow as XLA on the 1x1.
    one = convbench.ConvKey(16, 16, 64, 1, 1, 256, (1, 1), ((0, 0), (0, 0)), 1)
    three = convbench.ConvKey(16, 16, 64, 3, 3, 32, (1, 1), ((1, 1), (1, 1)), 1)
    assert conv.choose(one.shape(32), "cpu").passes() == {"im2col"}
    assert conv.choose(three.shape(32), "cpu").passes() == {"xla"}
    rows = [_row(one, {"xla": 1.0, "im2col": 2.0, "shifted": 3.0}),
            _row(three, {"xla": 5.0, "im2col": 1.0, "shifted": 1.0})]
    summary = convbench.summarise(rows)
    assert summary["routed_passes"] == 3  # the 1x1's three passes; the 3x3 is not routed
    assert [e["pass"] for e in summary["routed_slower"]] == list(convbench.PASSES)
    assert summary["total_xla_ms"] == 3 * 1.0 + 3 * 5.0
    assert summary["total_routed_ms"] == 3 * 2.0 + 3 * 5.0
    table = convbench.format_table(summary)
    assert "more than 1.2x slower than XLA's on the same shape: 3 of 3:" in table
    assert "16x16x64 -> 256, kernel grad: im2col 2.00 ms, XLA 1.00 ms" in table

    rows[0] = _row(one, {"xla": 2.0, "im2col": 1.0, "shifted": 3.0})
    assert convbench.summarise(rows)["routed_slower"] == []


def test_resuming_one_class_keeps_the_others_in_the_survey(tmp_path, capsys):
    # Both of LeNet-5's convolutions already timed (made-up figures); a resumed run of one
    # class has nothing to time and must not drop the other class's row from --output.
    found = convbench.collect(["lenet5"], [32], batch=32)
    survey = tmp_path / "conv.json"
    survey.write_text(json.dumps({
        "collected": [[dataclasses.asdict(k), nets] for k, nets in found.items()],
        "shapes": [_row(k, {"xla": 1.0, "im2col": 2.0}) for k in found]}))
    args = ["--arch", "lenet5", "--sizes", "32", "--resume", "--class", "stem",
            "--output", str(survey)]
    assert convbench.main(args) == 0
    kept = json.loads(survey.read_text())["shapes"]
    assert sorted(r["class"] for r in kept) == ["5x5 9-16 s1 valid", "stem 5x5 17-32 s1 valid"]
    assert "5x5 9-16 s1 valid" in capsys.readouterr().out


@pytest.mark.parity
@pytest.mark.parametrize("key", [
    # ResNet's 3x3 at stride 2 onto an 8x8 map; TensorFlow's SAME at stride 2 (asymmetric);
    # a grouped 3x3 (ResNeXt); a grey 5x5 stem without padding (LeNet's C1).
    convbench.ConvKey(8, 8, 6, 3, 3, 8, (2, 2), ((1, 1), (1, 1)), 1),
    convbench.ConvKey(9, 9, 4, 3, 3, 6, (2, 2), ((0, 1), (0, 1)), 1),
    convbench.ConvKey(5, 5, 8, 3, 3, 8, (1, 1), ((1, 1), (1, 1)), 4),
    convbench.ConvKey(12, 12, 1, 5, 5, 6, (1, 1), ((0, 0), (0, 0)), 1),
], ids=["strided", "same-asymmetric", "grouped", "grey-stem"])
def test_torch_side_times_the_same_convolution_and_both_gradients(key):
    import jax
    import numpy as np

    x, w, g = convbench.operands(key, batch=2)

    def lax_conv(x, w):
        return jax.lax.conv_general_dilated(x, w, key.strides, key.pads,
                                            dimension_numbers=conv.NHWC,
                                            feature_group_count=key.groups)

    want_y, vjp = jax.vjp(lax_conv, x, w)
    want_dx, want_dw = vjp(g)
    got = {p: fn().numpy() for p, fn in convbench.torch_passes(key, x, w, g).items()}
    np.testing.assert_allclose(got["forward"].transpose(0, 2, 3, 1), want_y,
                               rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(got["input_grad"].transpose(0, 2, 3, 1), want_dx,
                               rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(got["kernel_grad"].transpose(2, 3, 1, 0), want_dw,
                               rtol=1e-5, atol=1e-5)


@pytest.mark.parity
def test_compare_torch_times_the_routed_formulations_beside_pytorch(tmp_path):
    out = tmp_path / "survey.json"
    assert convbench.main(["--arch", "lenet5", "--sizes", "32", "--batch-size", "2",
                           "--rounds", "1", "--compare", "torch", "--output", str(out)]) == 0
    rows = json.loads(out.read_text())["shapes"]
    assert sorted(r["class"] for r in rows) == ["5x5 9-16 s1 valid", "stem 5x5 17-32 s1 valid"]
    for r in rows:
        key = convbench.ConvKey.from_dict(r["shape"])
        assert sorted(r["formulations"]) == convbench.routed(key, batch=2)
        assert all(r["torch"][f"{p}_ms"] > 0 for p in convbench.PASSES)
    table = convbench.format_torch_table(convbench.summarise_torch(rows))
    assert "| stem 5x5 17-32 s1 valid | 1 |" in table


def test_compare_torch_without_torch_says_how_to_install_it(monkeypatch, capsys):
    import importlib.util

    from train import bench

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "torch" else real(name, *a))
    assert convbench.main(["--arch", "lenet5", "--compare", "torch"]) == 2
    assert "pip install -e '.[parity]'" in capsys.readouterr().err
    assert bench.main(["--arch", "lenet5", "--compare", "torch"]) == 2
    assert "pip install -e '.[parity]'" in capsys.readouterr().err


def test_plot_draws_the_comparison_and_refuses_a_survey_without_pytorch(tmp_path, capsys):
    def timed(gflops):  # 1 GFLOP at this rate, every pass
        return {k: v for p in convbench.PASSES
                for k, v in ((f"{p}_ms", 1e3 / gflops), (f"{p}_gflops", gflops))}

    def row(cls, key, ours, theirs):
        return {"class": cls, "gflop": 1.0, "batch": 32, "shape": dataclasses.asdict(key),
                "formulations": {"xla": timed(ours)}, "torch": timed(theirs)}

    dense = convbench.ConvKey(8, 8, 16, 3, 3, 16, (1, 1), ((1, 1), (1, 1)), 1)
    stem = convbench.ConvKey(224, 224, 3, 3, 3, 32, (2, 2), ((0, 1), (0, 1)), 1)
    survey = tmp_path / "survey.json"
    survey.write_text(json.dumps({"shapes": [row("3x3 5-8 s1 pad", dense, 200, 100),
                                             row("stem 3x3 >64 s2 pad", stem, 30, 100)]}))
    png = tmp_path / "compare.png"
    assert convbench.main(["--summary-only", "--output", str(survey), "--plot", str(png)]) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    plain = json.loads(survey.read_text())
    for r in plain["shapes"]:
        del r["torch"]
    survey.write_text(json.dumps(plain))
    assert convbench.main(["--summary-only", "--output", str(survey), "--plot", str(png)]) == 2
    assert "run with --compare torch" in capsys.readouterr().err
    # Asked to time a survey it could not draw, it says so before timing anything.
    assert convbench.main(["--arch", "lenet5", "--plot", str(png)]) == 2
    assert "run with --compare torch" in capsys.readouterr().err
