"""python -m train.experiments: its table cells and its refusal of unknown settings (the runs
themselves are the experiments; README shows what they produced)."""

from __future__ import annotations

import pytest

from train import experiments


def test_a_cell_is_the_mean_and_sample_standard_deviation_over_the_seeds():
    # By hand: mean of 1 and 2 is 1.5; sample standard deviation sqrt(0.5) = 0.71.
    assert experiments.cell([1.0, 2.0]) == "1.50 ± 0.71"
    assert experiments.cell([6.5]) == "6.50"  # one seed: no spread to show


def test_an_unknown_distortion_is_refused_before_any_run(tmp_path):
    with pytest.raises(SystemExit, match=r"--distortions: q unknown; use some of r, rts, p, e"):
        experiments.main(["stn", "--distortions", "r,q", "--out", str(tmp_path)])
    assert not (tmp_path / "runs").exists()
