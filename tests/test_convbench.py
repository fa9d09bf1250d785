"""The convolution survey: shapes collected from the networks, classed, timed, summarised."""

import pytest

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
    assert set(row["formulations"]) == {"xla", "im2col", "shifted"}
    assert all(f["error"] < 1e-5 for f in row["formulations"].values())
    table = convbench.format_table(convbench.summarise([row]))
    assert "3x3 3-4 s1 pad" in table and "unknown" in table  # 0.0001 GFLOP: no typical figure


def test_summary_only_without_a_survey_says_what_to_run(tmp_path, capsys):
    assert convbench.main(["--summary-only", "--output", str(tmp_path / "none.json")]) == 2
    assert "run the survey with --output first" in capsys.readouterr().err
