"""The benchmarks' shared scaffolding (benchmarks/common.py) and references (references.py)."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import numpy as np
import pytest
import torch

import common
import losses_augment
import metrics
import tiling
from pixelwise.losses import weight_map
from pixelwise.tiling import predict
from references import voronoi_cells, weight_map_bruteforce, whole_image_probs


def _training_parser():
    parser = common.make_parser("Recipe: a test.\n\nMore text.", quick="a tiny run")
    common.add_training_options(parser, name="demo", data="the data folder", minutes=5.0)
    return parser


def test_training_options_and_their_defaults():
    parser = _training_parser()
    assert parser.description == "Recipe: a test."
    args = common.parse_args(parser, ["data"])
    assert (args.data, args.out, args.minutes, args.seed, args.quick) == (
        Path("data"),
        Path("bench-results/demo"),
        5.0,
        0,
        False,
    )
    args = common.parse_args(parser, ["d", "--quick", "--minutes", "2.5", "--seed", "3"])
    assert (args.quick, args.minutes, args.seed) == (True, 2.5, 3)


@pytest.mark.parametrize("minutes", ["0", "-1", "nan"])
def test_minutes_must_be_positive(minutes, capsys):
    with pytest.raises(SystemExit):
        common.parse_args(_training_parser(), ["data", "--minutes", minutes])
    assert "--minutes must be > 0, got" in capsys.readouterr().err


def test_run_header_names_machine_command_and_details():
    run = common.Run("demo", ["data dir", "--quick"])
    lines = run.header("Demo recipe", "data: 3 images").splitlines()
    assert lines[0].startswith("Demo recipe: total ") and "load average" in lines[0]
    assert lines[1].startswith("machine: ") and f"torch {torch.__version__}" in lines[1]
    for flag in ("avx2", "avx512", "avx512_bf16", "amx"):
        assert f"{flag} yes" in lines[1] or f"{flag} no" in lines[1]
    assert lines[2] == "command: python benchmarks/demo.py 'data dir' --quick"
    assert lines[3:] == ["data: 3 images"]


def test_time_calls_warms_up_untimed_and_returns_the_last_result():
    calls = []
    timing = common.time_calls(lambda: calls.append(len(calls)) or len(calls), repeats=3, warmup=2)
    assert len(calls) == 5 and timing.result == 5
    assert timing.seconds >= 0
    assert common.median_seconds(lambda: None, repeats=1, warmup=0) >= 0


def test_write_results_writes_both_files_readable_by_others(tmp_path):
    old = os.umask(0o022)
    try:
        common.write_results(tmp_path / "out", "| a |\n", {"x": [1, 2], "quick": True})
    finally:
        os.umask(old)
    assert (tmp_path / "out" / "results.md").read_text() == "| a |\n"
    assert json.loads((tmp_path / "out" / "results.json").read_text()) == {
        "x": [1, 2],
        "quick": True,
    }
    for name in ("results.md", "results.json"):
        assert stat.S_IMODE((tmp_path / "out" / name).stat().st_mode) == 0o644
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["results.json", "results.md"]


def test_voronoi_cells_worked_example_and_tiling():
    class TwoSeeds:  # the rng draw of the docstring's example: seeds (0, 0) and (0, 3)
        def integers(self, low, high, size):
            return np.array([[0, 0], [0, 3]])

    np.testing.assert_array_equal(voronoi_cells((1, 4), 2, TwoSeeds()), [[1, 1, 2, 2]])
    cells = voronoi_cells((40, 56), 9, np.random.default_rng(0))
    assert cells.shape == (40, 56) and cells.dtype == np.int32
    assert cells.min() >= 1 and cells.max() <= 9  # no background: the cells tile the image
    np.testing.assert_array_equal(cells, voronoi_cells((40, 56), 9, np.random.default_rng(0)))


def test_benchmark_inputs_have_touching_cells_gaps_and_membranes():
    cells = losses_augment.gapped_cells(128, 30, seed=2)
    assert (cells == 0).any() and len(np.unique(cells)) > 10
    gt, prob = metrics.isbi_like(64, 16, seed=1)
    assert gt.dtype == bool and gt.any() and not gt.all()
    assert prob.shape == gt.shape and prob.min() >= 0 and prob.max() <= 1


def test_weight_map_bruteforce_agrees_with_the_fast_one():
    cells = losses_augment.gapped_cells(64, 10, seed=0)
    np.testing.assert_allclose(weight_map(cells), weight_map_bruteforce(cells), atol=1e-3)


@pytest.mark.parametrize("padding", ["valid", "same"])
def test_whole_image_probs_is_what_tiled_prediction_reproduces(padding, tiny_unet):
    model = tiny_unet(padding=padding)
    image = np.random.default_rng(0).standard_normal((45, 61)).astype(np.float32)
    whole = whole_image_probs(model, image)
    assert whole.shape == (3, 45, 61)
    np.testing.assert_allclose(whole.sum(0), 1.0, atol=1e-5)
    if padding == "valid":  # valid convolutions: tiles reproduce the whole image exactly
        np.testing.assert_allclose(predict(model, image, channels_last=False), whole, atol=1e-5)


def test_tiling_worker_runs_in_a_subprocess_with_the_shared_modules(tmp_path):
    """One small whole-image and one tiled measurement through benchmarks/tiling.py --worker."""
    arch = {"base_channels": 2, "depth": 3, "padding": "valid"}
    state = tiling._save_model(arch, tmp_path / "m.pt")
    np.save(tmp_path / "img.npy", tiling._smooth_image(96, seed=0))
    base = {"arch": arch, "state": state, "image": str(tmp_path / "img.npy")}
    whole = tiling._run({**base, "kind": "whole", "result": str(tmp_path / "whole.npy")})
    tiled = tiling._run({**base, "kind": "predict", "result": str(tmp_path / "tiled.npy")})
    assert whole["seconds"] > 0 and tiled["gflops"] > 0 and "×" in tiled["calls"]
    deviation = tiling._deviation(str(tmp_path / "tiled.npy"), str(tmp_path / "whole.npy"))
    assert deviation["max_dev"] <= 1e-4 and deviation["agree"] == 1.0
