"""The Applications table: its definitions against keras.io's figures, its rendering, the chart."""

import json
import os

import jax
import pytest

import jaxcnn
from train import applications

# Depth in Keras' convention (layers holding weights), keras.io Applications table, current
# revision (the one with the 'Depth' column filled: VGG16 16, ResNet50 107, ...).
KERAS_DEPTH = {
    "vgg16": 16,
    "mobilenet_v1_keras": 55,
    "mobilenet_v2_keras": 105,
    "resnet50_keras": 107,
    "resnet50_v2": 103,
    "inception_v3_keras": 189,
    "densenet121": 242,
    "efficientnet_b0_keras": 132,
}
QUICK = ("vgg16",)


@pytest.mark.parametrize("name", [
    pytest.param(n, marks=() if n in QUICK else pytest.mark.slow) for n in KERAS_DEPTH])
def test_depth_is_keras_depth(name):
    assert applications.static_row(name)["depth"] == KERAS_DEPTH[name]


@pytest.mark.slow
def test_row_figures_follow_keras_and_the_publishers():
    row = applications.static_row("resnet50_keras")
    # keras.io: ResNet50 '98 MB', top-1 74.9 / top-5 92.1 (exact-integer revision: 0.749, 0.921)
    assert round(row["size_mb"]) == 98
    assert (row["top1"], row["top5"]) == (74.9, 92.1)
    assert row["top5_source"].startswith("keras.io Applications table")
    row = applications.static_row("resnet50")
    # torchvision 0.29.1 ResNet50_Weights.IMAGENET1K_V1 meta: acc@1 76.13, acc@5 92.862,
    # _ops 4.089 GMACs.
    assert (row["top1"], row["top5"]) == (76.13, 92.862)
    assert row["top5_source"].endswith("acc@5") and row["gmacs"] == pytest.approx(4.089, abs=5e-3)


def test_every_published_top5_exceeds_its_top1():
    for name in jaxcnn.list_models():
        info = jaxcnn.model_info(name)
        top1 = applications.published(info, "top1")
        top5 = applications.published(info, "top5", top1[1] if top1 else None)
        if top5:
            assert top1 and top5[0] > top1[0], name


@pytest.mark.slow
def test_time_inference_takes_keras_batches_within_its_budget():
    full = applications.time_inference("lenet5", batch_size=4, batches=5)
    capped = applications.time_inference("lenet5", batch_size=4, batches=5, max_seconds=0.0)
    assert full["batches"] == 5 and full["ms_per_step"] > 0
    assert capped["batches"] == applications.MIN_BATCHES
    assert full["dtype"] == ("float32" if jax.default_backend() == "cpu" else "bfloat16")


@pytest.mark.slow
def test_each_network_is_timed_in_a_process_of_its_own(tmp_path):
    results = tmp_path / "timings.json"
    assert applications.main(["--arch", "lenet5", "lenet_300_100", "--batches", "3",
                              "--batch-size", "2", "--results", str(results), "--readme", "",
                              "--chart", ""]) == 0
    (timings,) = json.loads(results.read_text())["timings"].values()
    pids = {timings[name]["pid"] for name in ("lenet5", "lenet_300_100")}
    assert len(pids) == 2 and os.getpid() not in pids
    assert all(timings[name]["batches"] == 3 for name in ("lenet5", "lenet_300_100"))


def _rows():
    row = {"name": "resnet50", "input_shape": [224, 224, 3], "size_mb": 97.8, "top1": 76.13,
           "top1_source": "torchvision meta acc@1", "top5": 92.862,
           "top5_source": "torchvision meta acc@5", "params": 25_557_032, "depth": 107,
           "gmacs": 4.089, "family": "resnet"}
    bare = {**row, "name": "lenet5", "top1": None, "top1_source": None, "top5": None,
            "top5_source": None, "family": "lenet"}
    return [row, bare]


def test_table_marks_short_measurements_and_cites_sources(tmp_path):
    timings = {"CPU: 2 cores": {"resnet50": {"ms_per_step": 1234.5, "batches": 3,
                                             "images_per_sec": 25.9},
                                "lenet5": {"ms_per_step": 1.0, "batches": 30,
                                           "images_per_sec": 32000}}}
    table = applications.markdown_table(_rows(), timings)
    assert ("| `resnet50` | 224x224x3 | 97.8 | 76.1<sup>1</sup> | 92.9<sup>2</sup> | "
            "25,557,032 | 107 | 4.089 | 1,234.5 (3) |") in table
    assert "| `lenet5` | 224x224x3 | 97.8 |  |  |" in table and "| 1.0 |" in table
    assert "1. torchvision meta acc@1" in table and "(n): measured over n batches" in table

    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{applications.START}\nstale row\n{applications.END}\noutro\n")
    applications.update_readme(readme, table)
    text = readme.read_text()
    assert "stale row" not in text and text.startswith("intro\n") and text.endswith("outro\n")
    (tmp_path / "bare.md").write_text("no markers")
    with pytest.raises(SystemExit, match="no <!-- applications-table:start -->"):
        applications.update_readme(tmp_path / "bare.md", table)


def test_keras_timings_belong_to_the_keras_networks():
    # keras.io times its own networks: each row that shows its figures must be the network whose
    # Keras total keras.io publishes (resnet50_keras, not torchvision's resnet50).
    for name in applications.KERAS_MS:
        sources = [p.source for p in jaxcnn.model_info(name).published
                   if p.metric == "keras_total"]
        assert any(s.startswith("keras.io Applications table") for s in sources), name
    assert "resnet50" not in applications.KERAS_MS


def test_table_shows_keras_timings_beside_ours():
    rows = [{**_rows()[0], "name": "resnet50_keras"}, _rows()[1]]
    timings = {"CPU: 2 cores": {"resnet50_keras": {"ms_per_step": 900.0, "batches": 30}}}
    table = applications.markdown_table(rows, timings)
    # keras.io, current revision: ResNet50 58.2 ms (CPU) and 4.6 ms (GPU) per step.
    assert "| 900.0 | 58.2 / 4.6<sup>3</sup> |" in table
    assert "3. keras.io Applications table (current revision" in table
    assert table.splitlines()[3].endswith("|  |  |")  # lenet5: neither ours nor keras.io's


@pytest.mark.slow
def test_chart_is_a_png(tmp_path):
    timings = {"CPU": {"resnet50": {"images_per_sec": 25.9}}}
    applications.chart(_rows(), timings, str(tmp_path / "chart.png"))
    assert (tmp_path / "chart.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
