"""The quickstart demo: real ImageNet weights, converted once and reused, classify correctly."""

import os

from effdr_tf import demo


def test_demo_classifies_sample_photographs(tmp_path, capsys):
    results = demo.run(str(tmp_path))
    assert results["chelsea"][0] == 285 and results["coffee"][0] == 967
    weights = tmp_path / "lite0_imagenet.weights.h5"
    assert weights.exists()
    stamp = os.stat(weights).st_mtime_ns
    demo.run(str(tmp_path))  # second run reuses the converted file
    assert os.stat(weights).st_mtime_ns == stamp
    assert "using" in capsys.readouterr().out
