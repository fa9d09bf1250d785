"""The side-by-side benchmark: both frameworks timed in one run, sweeps, tables, the pipeline.

Timings are never asserted (the suite runs on busy machines); what is checked is that each side
ran, the report says what ran, and the tables say what the reports say.
"""

import json
import os
import statistics

import pytest

from train import bench, timing


@pytest.mark.slow
@pytest.mark.parity
def test_compare_torch_times_both_sides_in_one_run(capsys):
    rc = bench.main(["--arch", "lenet5", "--batch-size", "8", "--steps", "2", "--windows", "2",
                     "--warmup", "1", "--num-classes", "10", "--compare", "torch",
                     "--torch-modes", "eager"])
    out = capsys.readouterr().out
    report = json.loads(out[:out.index("\n\n|")])
    assert rc == 0 and report["optimizer"] == "sgd"  # both sides train with SGD
    assert report["torch_reference"] == "torch LeNet-5 (train.bench_torch)"
    for part in ("train", "inference"):
        theirs = report["torch"]["eager"][part]
        assert theirs["images_per_sec"] > 0 and len(theirs["windows_images_per_sec"]) == 2
        assert report["ratios"][f"{part}_vs_torch_eager"] == pytest.approx(
            report[part]["images_per_sec"] / theirs["images_per_sec"])
    assert "| `lenet5` | 32 |" in out and "torch eager train" in out


@pytest.mark.parity
def test_the_torch_network_is_the_variants_reference():
    from train import bench_torch

    assert bench_torch.reference_name("resnet18") == "torchvision resnet18"
    assert bench_torch.reference_name("senet") == "timm legacy_seresnet50"
    # LeNet-5 has no reference to convert from: the one written in bench_torch has the modern
    # LeNet-5's 61,706 parameters (docs/sources.md sec. 3.6).
    lenet = bench_torch.build_reference("lenet5", num_classes=10, channels=1)
    assert sum(p.numel() for p in lenet.parameters()) == 61_706
    with pytest.raises(bench_torch.NoReference, match="nin_cifar10 has no torchvision"):
        bench_torch.reference_name("nin_cifar10")


# The families that issue 12 names for the CPU table, in its words.
ISSUE_FAMILIES = {"LeNet": "lenet5", "AlexNet": "alexnet", "VGG": "vgg", "GoogLeNet": "googlenet",
                  "Inception v3": "inception_v3", "ResNet": "resnet", "ResNeXt": "resnext",
                  "SE-ResNet": "seresnet", "MobileNet v1": "mobilenet_v1",
                  "MobileNet v2": "mobilenet_v2", "MobileNet v3": "mobilenet_v3",
                  "EfficientNet": "efficientnet", "DenseNet": "densenet"}


@pytest.mark.parity
def test_the_cpu_suite_covers_every_family_with_a_torch_reference():
    from train import bench_torch

    args = bench.parse_args(["--suite", "cpu"])
    for family, prefix in ISSUE_FAMILIES.items():
        assert any(a.startswith(prefix) for a in args.arch), family
    for arch in args.arch:
        bench_torch.reference_name(arch)  # raises NoReference where PyTorch has none
    assert (args.batch_size, args.dtype, args.compare, args.torch_modes, args.isolate) == (
        32, "float32", "torch", ["eager"], 2)
    assert bench.sweep_rows(args.arch, args.image_size)[:4] == [
        ("lenet5", 32), ("alexnet", 63), ("alexnet", 64), ("alexnet", 224)]


def test_flags_given_with_a_suite_win():
    args = bench.parse_args(["--suite", "cpu", "--arch", "resnet18", "--isolate", "0"])
    assert (args.arch, args.isolate, args.image_size) == (["resnet18"], 0, [32, 64, 224])
    assert bench.parse_args(["--suite", "gpu", "--batch-size", "8"]).batch_size == 8


def test_sweep_rows_raise_sizes_to_each_networks_minimum():
    # Inception v3 admits 75x75 at the least (torchvision's own check); LeNet-5 takes 32x32
    # only, whatever the sweep's sizes.
    rows = bench.sweep_rows(bench.expand_archs(["lenet5", "inception_v3"]), [32, 224])
    assert rows == [("lenet5", 32), ("inception_v3", 75), ("inception_v3", 224)]
    assert bench.expand_archs(["resnet1*"]) == ["resnet101", "resnet101_keras",
                                                "resnet101_v2", "resnet152", "resnet152_keras",
                                                "resnet152_v2", "resnet18"]


def test_markdown_shows_ratios_and_what_failed():
    side = {"train": {"images_per_sec": 50.0, "compile_s": 2.0},
            "inference": {"images_per_sec": 200.0}}
    report = {"arch": "resnet18", "image_size": 64, "batch_size": 32, "dtype": "float32",
              "backend": "cpu", "device": "cpu", "cpu": "Test CPU, AVX2", "jax": "0",
              "train_step_memory_gib": 0.5,
              "train": {"images_per_sec": 100.0, "compile_s": 3.0},
              "inference": {"images_per_sec": 100.0},
              "torch": {"eager": side, "compile": {"error": "RuntimeError: no compiler"}},
              "ratios": {"train_vs_torch_eager": 2.0, "inference_vs_torch_eager": 0.5}}
    failed = {"arch": "zfnet", "image_size": 64, "error": "skipped: past the budget"}
    table = bench.markdown([report, failed], detail=True)
    assert "| `resnet18` | 64 | 100 | 100 | 50 | 2.00x | 200 | 0.50x | — | — | — | — |" in table
    assert "| `zfnet` | 64 | skipped: past the budget |" in table
    assert "resnet18 torch compile: RuntimeError: no compiler" in table
    assert "cores, Test CPU, AVX2)" in table


def _recorded(arch, size, train, cpu="AMD EPYC, AVX-512", sweep="", isolated=2):
    """A row as docs/bench_cpu.json records it: the report, and the note of its run."""
    side = {"train": {"images_per_sec": 100.0, "compile_s": 0.1},
            "inference": {"images_per_sec": 400.0}}
    row = {"arch": arch, "image_size": size, "batch_size": 32, "dtype": "float32",
           "backend": "cpu", "device": "cpu", "cpu": cpu, "jax": "0", "sweep": sweep,
           "train": {"images_per_sec": train, "compile_s": 1.0},
           "inference": {"images_per_sec": 400.0}, "torch": {"eager": side},
           "ratios": {"train_vs_torch_eager": train / 100, "inference_vs_torch_eager": 1.0}}
    if isolated:
        row["isolated_rounds"] = isolated
    return row


def test_latest_tables_the_last_isolated_row_of_each_network_and_size(tmp_path, capsys):
    """README's CPU table: per network and size the row recorded last, from runs that timed
    each framework in its own processes on the last such row's processor, in the suite's order
    of networks, each with the day and commit of its run."""
    rows = [_recorded("resnet18", 32, 90.0, sweep="2026-12-05 05:18, AVX-512 machine, dd178ff"),
            _recorded("lenet5", 32, 80.0, sweep="2026-12-05 05:18, AVX-512 machine, dd178ff"),
            _recorded("resnet18", 32, 120.0, sweep="2026-12-06 19:42, AVX-512 machine, 0422d17"),
            _recorded("resnet18", 32, 150.0, sweep="one process", isolated=0),
            _recorded("resnet18", 64, 70.0, cpu="AMD EPYC, AVX2", sweep="2026-12-06, 6493c92"),
            _recorded("lenet5", 32, 110.0, sweep="2026-12-07 05:31, AVX-512 machine, 2db4ac0"),
            _recorded("resnet18", 64, 130.0, sweep="2026-12-07 15:24, AVX-512 machine, 502797e",
                      isolated=4)]
    path = tmp_path / "bench.json"
    path.write_text(json.dumps({"rows": rows}))
    out = tmp_path / "table.md"
    assert bench.main(["--latest", str(path), "--markdown", str(out)]) == 0
    table = out.read_text()
    assert table == capsys.readouterr().out
    lines = [line for line in table.splitlines() if line.startswith("| `")]
    assert lines == [
        "| `lenet5` | 32 | 110 | 400 | 100 | 1.10x | 400 | 1.00x | 1.0 | 0.1 | — | — "
        "| 2026-12-07, 2db4ac0 |",
        "| `resnet18` | 32 | 120 | 400 | 100 | 1.20x | 400 | 1.00x | 1.0 | 0.1 | — | — "
        "| 2026-12-06, 0422d17 |",
        "| `resnet18` | 64 | 130 | 400 | 100 | 1.30x | 400 | 1.00x | 1.0 | 0.1 | — | — "
        "| 2026-12-07, 502797e |"]
    assert "AVX-512" in table and "compare their ratios" in table
    assert "bootstrap" not in table  # no row recorded its windows: no interval, no note
    # A row timed with more rounds than the others says so.
    assert "2 rounds in turn (--isolate; 4 rounds for resnet18 at 64 px)" in table


def test_rounds_note_names_the_rows_of_each_other_count_together():
    rows = [{"arch": arch, "image_size": size, "isolated_rounds": n}
            for arch, size, n in [("lenet5", 32, 4), ("alexnet", 63, 2), ("vgg16", 32, 2),
                                  ("resnet18", 64, 4), ("resnet50", 32, 3)]]
    assert bench._rounds(rows) == ("2 rounds in turn (--isolate; 3 rounds for resnet50 at 32 px; "
                                   "4 rounds for lenet5 at 32 px and resnet18 at 64 px)")


def test_ratio_intervals_cover_what_resampling_the_windows_can_give():
    """The interval printed after a ratio: the ratio of the sides' medians over windows drawn
    again from each side's own. Steady windows give the ratio itself; windows that spread give
    an interval inside the spread of their ratios, around the printed one."""
    assert bench.ratio_interval([200.0] * 4, [100.0] * 6) == (2.0, 2.0)
    ours, theirs = [90.0, 100.0, 110.0, 120.0, 130.0, 140.0], [100.0, 100.0, 105.0]
    low, high = bench.ratio_interval(ours, theirs)
    point = 115.0 / 100.0  # the medians: 115 and 100
    assert 90 / 105 <= low < point < high <= 140 / 100
    assert bench.ratio_interval(ours, theirs) == (low, high)  # the same table each time
    assert bench.ratio_interval(ours, theirs, level=0.5)[1] <= high
    assert bench.ratio_interval([100.0], theirs) is None


def test_latest_prints_each_ratio_with_its_interval(tmp_path, capsys):
    row = _recorded("resnet18", 64, 120.0, sweep="2026-12-07 15:24, AVX-512 machine, 502797e")
    row["train"]["windows_images_per_sec"] = [110.0, 120.0, 130.0]
    row["torch"]["eager"]["train"]["windows_images_per_sec"] = [95.0, 100.0, 105.0]
    path = tmp_path / "bench.json"
    path.write_text(json.dumps({"rows": [row]}))
    assert bench.main(["--latest", str(path)]) == 0
    table = capsys.readouterr().out
    low, high = bench.ratio_interval([110.0, 120.0, 130.0], [95.0, 100.0, 105.0])
    assert f"| 1.20x ({low:.2f}-{high:.2f}) |" in table
    assert "| 1.00x |" in table  # inference: no windows recorded, no interval
    assert "90% bootstrap interval" in table


def test_latest_says_what_a_file_lacks(tmp_path, capsys):
    path = tmp_path / "bench.json"
    path.write_text(json.dumps({"rows": [_recorded("lenet5", 32, 80.0, isolated=0)]}))
    assert bench.main(["--latest", str(path)]) == 2
    assert "no row timed each framework in its own processes" in capsys.readouterr().err
    assert bench.main(["--latest", str(tmp_path / "missing.json")]) == 2
    assert "pass a JSON report written by --output" in capsys.readouterr().err
    nameless = _recorded("lenet5", 32, 80.0)
    del nameless["arch"]
    path.write_text(json.dumps({"rows": [nameless]}))
    assert bench.main(["--latest", str(path)]) == 2
    assert "a row lacks the field 'arch'" in capsys.readouterr().err


def test_rates_below_ten_keep_a_decimal():
    # VGG-16 trains at 3-4 images/s at 224 px on 2 cores: "3" and "4" would hide a 1.13x.
    assert [bench._fmt(v) for v in (3.42, 12.4, 1234.4, None)] == ["3.4", "12", "1,234", "—"]
    assert bench._fmt(0.4, 2) == "0.40"


@pytest.mark.parametrize("lines, expected", [
    (["model name\t: AMD EPYC 9B14", "flags\t\t: fpu sse2 avx avx2 fma avx512f avx512bw"],
     "AMD EPYC 9B14, AVX-512"),
    (["model name\t: AMD EPYC", "flags\t\t: fpu sse2 avx avx2 fma", "model name\t: AMD EPYC",
      "flags\t\t: fpu sse2 avx avx2 fma"], "AMD EPYC, AVX2"),
    (["processor\t: 0", "Features\t: fp asimd evtstrm aes sve"], None),
])
def test_the_machine_is_named_with_its_widest_vector_extension(tmp_path, lines, expected):
    # XLA's CPU kernels run several times faster with AVX-512 than with AVX2 alone, so the
    # benchmarks' footnotes say which one the figures were measured with.
    info = tmp_path / "cpuinfo"
    info.write_text("\n".join(lines) + "\n")
    found = timing.cpu_description(str(info))
    if expected is None:  # an Arm cpuinfo names no model: the machine type stands in for it
        assert found.endswith(", SVE") and found != ", SVE"
    else:
        assert found == expected


def test_time_interleaved_takes_the_sides_in_turn():
    calls = []

    def runner(name):
        return timing.Runner(lambda: calls.append(name), lambda _: None, 0.0,
                             enter=lambda: calls.append(f"enter {name}"))

    result = timing.time_interleaved({"a": runner("a"), "b": runner("b")}, steps=4, windows=2,
                                     batch_size=8, warmup=1)
    # Warm-up of each, then windows of an untimed step and 2 timed ones, a and b alternating.
    assert calls == ["enter a", "a", "enter b", "b",
                     "enter a", "a", "a", "a", "enter b", "b", "b", "b",
                     "enter a", "a", "a", "a", "enter b", "b", "b", "b"]
    assert result["a"]["steps_per_window"] == 2 and len(result["b"]["windows_images_per_sec"]) == 2


@pytest.mark.slow
def test_input_pipeline_throughput_is_reported():
    result = bench.time_input_pipeline(batch_size=8, batches=2, images=16)
    assert result["images_per_sec"] > 0 and result["image_size"] == 224
    assert result["images_per_sec_per_core"] == pytest.approx(
        result["images_per_sec"] / result["cores"])


@pytest.mark.slow
@pytest.mark.parity
def test_isolate_times_each_framework_in_processes_of_its_own(capsys):
    rc = bench.main(["--arch", "lenet5", "--batch-size", "8", "--steps", "2", "--windows", "2",
                     "--warmup", "1", "--num-classes", "10", "--compare", "torch",
                     "--torch-modes", "eager", "--isolate", "2"])
    out = capsys.readouterr().out
    report = json.loads(out[:out.index("\n\n|")])
    assert rc == 0 and report["isolated_rounds"] == 2
    pids = report["pids"]["jaxcnn"] + report["pids"]["torch eager"]
    assert len(set(pids)) == 4 and os.getpid() not in pids  # four processes, none this one
    for part in ("train", "inference"):
        ours, theirs = report[part], report["torch"]["eager"][part]
        for side in (ours, theirs):  # every window of both rounds, pooled
            assert side["processes"] == 2 and len(side["windows_images_per_sec"]) == 4
            assert len(side["steps_per_window"]) == 2  # each process sizes its own windows
            assert side["images_per_sec"] == pytest.approx(
                statistics.median(side["windows_images_per_sec"]))
        assert report["ratios"][f"{part}_vs_torch_eager"] == pytest.approx(
            ours["images_per_sec"] / theirs["images_per_sec"])
    assert "each framework in its own processes, 2 rounds in turn" in out


def test_isolate_needs_a_comparison(capsys):
    assert bench.main(["--arch", "lenet5", "--isolate", "2"]) == 2
    assert "add --compare torch" in capsys.readouterr().err


def test_isolate_needs_a_number_of_rounds(capsys):
    assert bench.main(["--arch", "lenet5", "--isolate", "-1", "--compare", "torch"]) == 2
    assert "--isolate -1: give a number of rounds" in capsys.readouterr().err


def test_a_sweep_row_that_fails_keeps_the_others(monkeypatch):
    """A failure inside one row (a bug, not a user error) is recorded with its type; the
    rows after it still run."""
    from train import bench

    def run(arch, image_size, **kwargs):
        if arch == "broken":
            raise ValueError("Linearization failed")
        return {"arch": arch, "image_size": image_size}

    monkeypatch.setattr(bench, "run_benchmark", run)
    reports = bench.sweep([("lenet5", 32), ("broken", 64), ("resnet18", 64)])
    assert reports[1] == {"arch": "broken", "image_size": 64,
                          "error": "ValueError: Linearization failed"}
    assert reports[2] == {"arch": "resnet18", "image_size": 64}


def test_aux_heads_are_left_out_below_the_size_they_need(capsys):
    """Inception v3 runs from 75 px, its recipe's aux head only from 299 (torchvision's rule):
    below it the benchmark times the network without the head, and says so."""
    from train.configs.default import Config

    config = Config(arch="inception_v3", dataset="synthetic", aux_weight=0.4, dtype="float32",
                    num_classes=1000)
    assert bench.fit_aux_heads(config, 299).aux_weight == 0.4
    assert bench.fit_aux_heads(config, 75).aux_weight == 0.0
    assert "need 299x299 px" in capsys.readouterr().err
    plain = Config(arch="inception_v3", dataset="synthetic", aux_weight=0.0)
    assert bench.fit_aux_heads(plain, 75) is plain


def test_a_stopped_sweep_keeps_its_finished_rows_and_a_missing_pipeline_loses_nothing(
        monkeypatch, tmp_path, capsys):
    """--output is rewritten after every row (a sweep killed at a time limit, on a lent GPU
    say, keeps what it timed), and where TensorFlow is missing (an accelerator's own image)
    the input pipeline is reported as not timed instead of failing the finished run."""
    out = tmp_path / "sweep.json"
    seen = []

    def run(arch, image_size, **kwargs):
        if arch == "vgg16":  # the row the time limit kills: what was written before it stays
            seen.append(json.loads(out.read_text()))
            raise KeyboardInterrupt
        return {"arch": arch, "image_size": image_size, "train": {"images_per_sec": 1.0}}

    monkeypatch.setattr(bench, "run_benchmark", run)
    with pytest.raises(KeyboardInterrupt):
        bench.main(["--arch", "lenet5", "resnet18", "vgg16", "--image-size", "64",
                    "--output", str(out)])
    assert seen[0]["partial"] is True
    assert [r["arch"] for r in seen[0]["rows"]] == ["lenet5", "resnet18"]

    def no_tensorflow(**kwargs):
        raise ImportError("No module named 'tensorflow'")

    monkeypatch.setattr(bench, "time_input_pipeline", no_tensorflow)
    assert bench.main(["--arch", "lenet5", "resnet18", "--image-size", "64", "--output",
                       str(out), "--input-pipeline"]) == 0
    report = json.loads(out.read_text())
    assert "partial" not in report and len(report["rows"]) == 2
    assert report["input_pipeline"] == {"error": "not timed: No module named 'tensorflow'"}
    assert "input pipeline not timed" in capsys.readouterr().err


def test_short_steps_fill_a_window_of_the_minimum_length():
    """A window of a few 2-ms steps is stretched to ``min_window_s`` (more steps, the same
    images/s formula); a 60-ms step keeps the steps the caller asked for."""
    import time

    def runner(seconds):
        return timing.Runner(lambda: time.sleep(seconds), lambda _: None, 0.0)

    fast, slow = runner(0.002), runner(0.06)
    plain = timing.time_interleaved({"fast": fast}, steps=2, windows=2, batch_size=4, warmup=1)
    assert plain["fast"]["steps_per_window"] == 1
    timed = timing.time_interleaved({"fast": fast, "slow": slow}, steps=2, windows=2,
                                    batch_size=4, warmup=1, min_window_s=0.05)
    assert 10 <= timed["fast"]["steps_per_window"] <= 25  # 0.05 s / 2 ms, less the overhead
    assert timed["slow"]["steps_per_window"] == 1
    for side, step_s in (("fast", 0.002), ("slow", 0.06)):
        assert timed[side]["images_per_sec"] == pytest.approx(4 / step_s, rel=0.3)


def test_long_steps_are_not_timed_again_to_size_the_window():
    """A step whose warm-up already fills the minimum window runs only the steps asked for:
    no three extra steps to estimate it (a 25-s train step would pay over a minute)."""
    import time

    calls = []

    def step():
        calls.append(1)
        time.sleep(0.03)

    timing.time_interleaved({"slow": timing.Runner(step, lambda _: None, 0.0)}, steps=4,
                            windows=2, batch_size=1, warmup=1, min_window_s=0.05)
    assert len(calls) == 1 + 2 * (1 + 2)  # the warm-up, two windows of a lead-in and two steps


def test_the_first_step_after_the_other_sides_window_is_not_timed():
    """A step that is slow only as the first after the other side's window (memory touched
    again after a pause) does not count in either side's figure."""
    import time

    last = []

    def runner(name):
        def step():
            slow = bool(last) and last[-1] != name
            last.append(name)
            time.sleep(0.06 if slow else 0.005)
        return timing.Runner(step, lambda _: None, 0.0)

    timed = timing.time_interleaved({"a": runner("a"), "b": runner("b")}, steps=4, windows=2,
                                    batch_size=1, warmup=1)
    for side in "ab":
        assert timed[side]["step_ms"] == pytest.approx(5, rel=0.5)


@pytest.mark.parametrize("flag,value", [("--windows", "0"), ("--steps", "0"), ("--warmup", "-1")])
def test_counts_below_their_minimum_get_one_line(flag, value, capsys):
    with pytest.raises(SystemExit) as stop:
        bench.main(["--arch", "lenet5", flag, value])
    assert stop.value.code == 2
    assert f"argument {flag}: '{value}': give a whole number of at least" in capsys.readouterr().err
