"""`supsup-hf capacity` and capacity.measure_capacity."""
import json

import numpy as np
import pytest
from click.testing import CliRunner

from supsup_hopfield.cli.main import app
from supsup_hopfield.capacity import CapacityConfig, flip_bits, measure_capacity


def test_flip_bits_flips_exactly_k():
    Z = np.ones((5, 40), np.int8)
    out = flip_bits(Z, 0.25, np.random.default_rng(0))
    assert ((out == -1).sum(axis=1) == 10).all() and (Z == 1).all()


def test_curve_shape_and_known_limits():
    res = measure_capacity(CapacityConfig(dim=64, rule="projection", max_patterns=70, step=10, noise=0.0))
    pts = res.points
    assert [p["patterns"] for p in pts] == [10, 20, 30, 40, 50, 60, 70]
    assert all(p["stable_fraction"] == 1.0 for p in pts)
    assert all(p["recall_exact_fraction"] == 1.0 for p in pts)  # noise 0: cues are the patterns
    assert pts[0]["random_stable_fraction"] == 0.0 and pts[-1]["random_stable_fraction"] == 1.0  # Ψ = I
    heb = measure_capacity(CapacityConfig(dim=128, rule="hebbian", max_patterns=60, step=5, noise=0.1))
    assert heb.points[0]["stable_fraction"] == 1.0 and heb.points[-1]["stable_fraction"] < 1.0
    assert 5 <= heb.max_all_stable < 60
    assert heb.theoretical_capacity == pytest.approx(128 / (2 * np.log(128)))


def test_cli_table_json_plot(tmp_path):
    plot = tmp_path / "cap.png"
    r = CliRunner().invoke(app, ["capacity", "--dim", "100", "--rule", "storkey", "--max-patterns", "30",
                                 "--step", "10", "--json", "--plot", str(plot)])
    assert r.exit_code == 0, r.output
    d = json.loads(r.output)
    assert d["rule"] == "storkey" and d["dim"] == 100 and len(d["points"]) == 3
    assert {"patterns", "stable_fraction", "recall_exact_fraction", "mean_hamming"} <= set(d["points"][0])
    import matplotlib.image

    img = matplotlib.image.imread(plot)
    assert img.shape[:2] == (504, 840) and img[..., :3].std() > 0.05  # 7 x 4.2 inches at 120 dpi, not blank
    r = CliRunner().invoke(app, ["capacity", "--dim", "100", "--max-patterns", "20"])
    assert r.exit_code == 0 and "fixed points" in r.output and "theoretical capacity 33" in r.output  # 100/sqrt(2 ln 100)


@pytest.mark.parametrize("args,msg", [
    (["--dim", "1", "--max-patterns", "5"], "dim: expected an integer >= 2, got 1"),
    (["--dim", "8", "--max-patterns", "0"], "max_patterns: expected >= 1, got 0"),
    (["--dim", "8", "--max-patterns", "5", "--noise", "1.5"], "noise: expected a fraction in [0, 1], got 1.5"),
    (["--dim", "8", "--max-patterns", "5", "--bias", "-0.1"], "bias: expected a fraction"),
    (["--dim", "8", "--max-patterns", "5", "--rule", "oja"], "'oja' is not one of"),
    (["--dim", "x", "--max-patterns", "5"], "'x' is not a valid integer"),
])
def test_cli_errors_one_line_exit_2(args, msg):
    r = CliRunner().invoke(app, ["capacity", *args])
    assert r.exit_code == 2
    lines = r.output.strip().splitlines()
    assert len(lines) == 1 and msg in lines[0] and lines[0].startswith("Error: ")
