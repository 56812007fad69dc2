"""Tests of the gradient-variance study: the SNR estimator, the writers and the three commands."""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib.axes
import pytest
import torch

from vo_node.study import main
from vo_node.study.plots import (
    DPI,
    PANEL_SIZE_INCHES,
    Panel,
    Series,
    markdown_table,
    plot_panels,
    read_table,
    write_table,
)
from vo_node.study.snr import (
    LOSS_VARIANTS,
    bootstrap_snr_db,
    collect_gradients,
    gradient_snr,
    gradient_variance,
    resolve_parameters,
    study_clips,
)
from vo_node.study.sources import row_cosines
from vo_node.study.speedup import (
    Curve,
    compare_seed,
    first_reaching,
    first_sustained,
    mean_curve,
    plan_runs,
    plot_curves,
    plot_curves_per_seed,
    read_curve,
    summarise,
    validation_interval,
)

REPOSITORY = Path(__file__).resolve().parents[1]
TINY_CONFIG = REPOSITORY / "config" / "train_tiny.yaml"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
FAST_UNROLL = ["unroll.iterations=3", "unroll.init_iterations=2"]
"""Shorter unroll for the command tests: one frame joins and the pose loss starts at iteration 2."""
ONE_THREAD = ["--threads", "1"]


@pytest.fixture(scope="module", autouse=True)
def single_thread():
    """Run torch on one thread (the commands' --threads 1 sets it too) and restore it after."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def expected_chi_mean(dimension: int) -> float:
    """Mean of the chi distribution with ``dimension`` degrees of freedom."""
    return math.sqrt(2.0) * math.exp(math.lgamma((dimension + 1) / 2) - math.lgamma(dimension / 2))


# -------------------------------------------------------------------------------------------
# The estimator
# -------------------------------------------------------------------------------------------


def test_snr_matches_gaussian_closed_form():
    count, dimension, sigma = 4000, 64, 0.5
    generator = torch.Generator().manual_seed(0)
    mu = torch.randn(dimension, generator=generator, dtype=torch.float64)
    mu = 2.0 * mu / mu.norm()
    gradients = mu + sigma * torch.randn(count, dimension, generator=generator, dtype=torch.float64)

    result = gradient_snr(gradients)

    # E||mean||^2 = ||mu||^2 + sigma^2 D / N; each deviation is sigma sqrt((N-1)/N) chi_D.
    expected_norm = math.sqrt(4.0 + sigma**2 * dimension / count)
    expected_deviation = sigma * math.sqrt((count - 1) / count) * expected_chi_mean(dimension)
    assert result.mean_norm == pytest.approx(expected_norm, rel=0.02)
    assert result.mean_deviation == pytest.approx(expected_deviation, rel=0.02)
    assert result.snr == pytest.approx(expected_norm / expected_deviation, rel=0.03)
    assert result.snr_db == pytest.approx(20.0 * math.log10(result.snr), abs=1e-12)


def test_snr_exact_for_symmetric_deviations():
    mu = torch.tensor([3.0, 4.0, 0.0], dtype=torch.float64)  # norm 5
    offsets = torch.tensor([[0.0, 0.0, 2.0], [2.0, 0.0, 0.0]], dtype=torch.float64)  # norm 2
    gradients = torch.cat([mu + offsets, mu - offsets])

    result = gradient_snr(gradients)

    assert result.mean_norm == pytest.approx(5.0, abs=1e-12)
    assert result.mean_deviation == pytest.approx(2.0, abs=1e-12)
    assert result.snr == pytest.approx(2.5, abs=1e-12)
    assert gradient_variance(gradients) == pytest.approx(4.0, abs=1e-12)


@pytest.mark.parametrize("scale", [1e-6, 0.37, 1e5])
def test_snr_invariant_to_scaling(scale):
    generator = torch.Generator().manual_seed(1)
    gradients = torch.randn(50, 20, generator=generator, dtype=torch.float64)
    gradients = gradients + torch.linspace(-1, 1, 20, dtype=torch.float64)
    reference = gradient_snr(gradients)

    scaled = gradient_snr(gradients * scale)

    assert scaled.snr == pytest.approx(reference.snr, rel=1e-9)
    assert scaled.snr_db == pytest.approx(reference.snr_db, abs=1e-9)
    assert scaled.mean_norm == pytest.approx(reference.mean_norm * scale, rel=1e-9)


def test_bootstrap_interval_brackets_estimate():
    generator = torch.Generator().manual_seed(2)
    mu = torch.full((16,), 0.25, dtype=torch.float64)

    def interval(count):
        gradients = mu + torch.randn(count, 16, generator=generator, dtype=torch.float64)
        return gradient_snr(gradients).snr_db, bootstrap_snr_db(gradients, samples=400)

    estimate, (low, high) = interval(32)
    large_estimate, (narrow_low, narrow_high) = interval(512)

    assert low < estimate < high
    assert narrow_low < large_estimate < narrow_high
    assert narrow_high - narrow_low < high - low


def test_snr_edge_cases():
    equal = torch.ones(4, 3)
    assert math.isinf(gradient_snr(equal).snr)
    assert math.isnan(gradient_snr(torch.zeros(4, 3)).snr)
    with pytest.raises(ValueError, match="at least 2"):
        gradient_snr(torch.ones(1, 3))
    with pytest.raises(ValueError, match=r"\(N, D\)"):
        gradient_snr(torch.ones(2, 3, 4))
    with pytest.raises(ValueError, match="NaN or inf"):
        gradient_snr(torch.tensor([[1.0, float("nan")], [0.0, 1.0]]))


def test_row_cosines():
    first = torch.tensor([[1.0, 0.0], [1.0, 1.0], [0.0, 0.0]])
    second = torch.tensor([[2.0, 0.0], [-1.0, -1.0], [1.0, 0.0]])
    cosines = row_cosines(first, second)
    assert cosines.tolist() == pytest.approx([1.0, -1.0, 0.0], abs=1e-12)


# -------------------------------------------------------------------------------------------
# Writers and the speed-up bookkeeping
# -------------------------------------------------------------------------------------------


def test_table_and_plot_writers(tmp_path):
    rows = [{"name": "a", "value": 1.234567, "flag": True}, {"name": "b", "value": float("nan")}]

    csv_path, markdown_path = write_table(rows, tmp_path / "table")
    png = plot_panels([Panel([Series([0, 1], [1.0, 2.0], "line")], "t", "x", "y")],
                      tmp_path / "figure.png")

    assert read_table(csv_path)[0] == {"name": "a", "value": "1.234567", "flag": "True"}
    assert markdown_path.read_text() == markdown_table(rows)
    assert "| a | 1.235 | yes |" in markdown_path.read_text()
    assert png.read_bytes().startswith(PNG_SIGNATURE)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["figure.png", "table.csv", "table.md"]


@pytest.mark.parametrize(("steps", "points", "expected"), [(100, 10, 10), (30, 4, 6), (7, 3, 1)])
def test_validation_interval_divides_steps(steps, points, expected):
    interval = validation_interval(steps, points)
    assert interval == expected
    assert steps % interval == 0


def test_compare_seed_ratios():
    baseline = Curve([10, 20, 30, 40], [1.0, 2.0, 3.0, 4.0], {"pose": [0.9, 0.7, 0.6, 0.5]})
    sigma = Curve([10, 20, 30, 40], [1.5, 3.0, 4.5, 6.0], {"pose": [0.8, 0.45, 0.4, 0.3]})
    never = Curve([10, 20], [1.0, 2.0], {"pose": [0.9, 0.8]})

    row = compare_seed(baseline, sigma, "pose")
    missed = compare_seed(baseline, never, "pose")
    summary = summarise([row, missed])[0]

    assert row["target"] == 0.5
    assert row["baseline_steps"] == 40
    assert row["sigma_steps"] == 20
    assert row["step_ratio"] == pytest.approx(2.0)
    assert row["time_ratio"] == pytest.approx(4.0 / 3.0)
    assert row["baseline_mean"] == pytest.approx(0.675)
    assert row["sigma_mean"] == pytest.approx(0.4875)
    assert missed["sigma_reached"] is False
    assert math.isnan(missed["step_ratio"])
    assert summary["seeds"] == 2
    assert summary["sigma_reached"] == 1
    assert summary["step_ratio_mean"] == pytest.approx(2.0)
    assert missed["step_ratio_bound"] == pytest.approx(40 / 20)
    assert summary["step_ratio_median_bounded"] == pytest.approx(2.0)
    assert row["baseline_steps_sustained"] == 40
    assert row["sigma_steps_sustained"] == 20
    assert row["step_ratio_sustained"] == pytest.approx(2.0)
    assert math.isnan(missed["sigma_steps_sustained"])
    assert summary["sigma_sustained"] == 1
    assert summary["step_ratio_sustained_mean"] == pytest.approx(2.0)


def test_first_sustained_ignores_early_dip():
    curve = Curve([10, 20, 30, 40, 50], [0.0] * 5, {"pose": [0.9, 0.4, 0.8, 0.45, 0.5]})

    assert first_reaching(curve, "pose", 0.5) == (20, 0.0)
    assert first_sustained(curve, "pose", 0.5) == 40
    assert first_sustained(curve, "pose", 0.3) is None
    curve.values["pose"][-1] = float("nan")
    assert first_sustained(curve, "pose", 0.5) is None


def png_size(path: Path) -> tuple[int, int]:
    """Return ``(width, height)`` in pixels from a PNG file's IHDR chunk."""
    header = path.read_bytes()[:24]
    assert header.startswith(PNG_SIGNATURE)
    return int.from_bytes(header[16:20], "big"), int.from_bytes(header[20:24], "big")


def test_per_seed_plot_panel_count(tmp_path):
    curve = Curve([10, 20], [1.0, 2.0], {"pose": [0.5, 0.4]})
    curves = {("baseline", 0): curve, ("sigma", 0): curve, ("baseline", 2): curve,
              ("sigma", 2): curve, ("baseline", 5): curve}

    path = plot_curves_per_seed(curves, "pose", tmp_path / "per_seed.png")

    width, height = png_size(path)
    assert width == round(3 * PANEL_SIZE_INCHES[0] * DPI)
    assert height == round(PANEL_SIZE_INCHES[1] * DPI)


def test_mean_curve_uses_shared_steps():
    first = Curve([10, 20, 30], [1.0, 2.0, 3.0], {"pose": [0.6, 0.4, math.nan]})
    second = Curve([10, 20, 30], [3.0, 4.0, 5.0], {"pose": [0.2, 0.2, 0.1]})
    mean = mean_curve([first, second], "pose")
    assert mean.steps == [10, 20], "step 30 has no finite value in the first run"
    assert mean.metric("pose") == pytest.approx([0.4, 0.3])
    assert mean.times_s == pytest.approx([2.0, 3.0])
    assert mean_curve([Curve([10], [1.0], {"pose": [0.5]}), Curve([20], [1.0], {"pose": [0.5]})],
                      "pose") is None


def test_curve_plot_legend_lists_variants(tmp_path, monkeypatch):
    # Twenty runs must not give twenty legend entries: one mean line per variant has one.
    curves = {(variant, seed): Curve([10, 20], [1.0, 2.0], {"pose": [0.5, 0.4 - 0.01 * seed]})
              for variant in ("baseline", "sigma") for seed in range(10)}
    legends = []
    original = matplotlib.axes.Axes.legend

    def record(axis, *args, **kwargs):
        legend = original(axis, *args, **kwargs)
        legends.append([text.get_text() for text in legend.get_texts()])
        return legend

    monkeypatch.setattr(matplotlib.axes.Axes, "legend", record)
    path = plot_curves(curves, "pose", tmp_path / "curves.png")
    assert path.read_bytes().startswith(PNG_SIGNATURE)
    assert legends == [["baseline, mean of 10 seeds", "sigma, mean of 10 seeds"]] * 2


def test_read_curve_sums_wall_time(tmp_path):
    header = "step,split,loss,pose_translation,steps_per_s,ate\n"
    lines = ["2,train,1,,0.5,\n", "4,train,1,,2.0,\n", "4,val,1,0.3,,\n", "6,train,1,,1.0,\n",
             "6,val,1,0.2,,1.5\n"]
    (tmp_path / "metrics.csv").write_text(header + "".join(lines))

    curve = read_curve(tmp_path)

    assert curve.steps == [4, 6]
    assert curve.times_s == pytest.approx([4.0 + 1.0, 4.0 + 1.0 + 2.0])
    assert curve.metric("pose_translation") == pytest.approx([0.3, 0.2])
    assert math.isnan(curve.metric("ate")[0])


def test_read_curve_prefers_logged_wall_time(tmp_path):
    header = "step,split,loss,pose_translation,steps_per_s,ate,wall_s\n"
    lines = ["2,train,1,,0.5,,3.5\n", "4,train,1,,2.0,,4.25\n", "4,val,1,0.3,,,4.25\n",
             "6,train,1,,1.0,,6.0\n", "6,val,1,0.2,,1.5,6.0\n"]
    (tmp_path / "metrics.csv").write_text(header + "".join(lines))

    curve = read_curve(tmp_path)

    # wall_s excludes validation passes, so it is taken as logged, not summed from steps_per_s.
    assert curve.steps == [4, 6]
    assert curve.times_s == pytest.approx([4.25, 6.0])


def test_plan_runs_adds_ablation_arms(tmp_path):
    runs = plan_runs([0, 1], 40, tmp_path, validation_points=4, ablations=True)
    assert [(run.variant, run.seed) for run in runs[:4]] == [
        ("baseline", 0), ("sigma", 0), ("sigma_only", 0), ("balance_only", 0)]
    assert len(runs) == 8
    settings = {run.variant: (run.overrides["loss.flow_weighting"], run.overrides["balance.enabled"])
                for run in runs}
    assert settings == {"baseline": ("none", "false"), "sigma": ("sigma", "true"),
                        "sigma_only": ("sigma", "false"), "balance_only": ("none", "true")}
    assert {run.overrides["optim.steps"] for run in runs} == {"40"}
    assert runs[2].folder == tmp_path / "sigma_only" / "seed0"


def test_summarise_groups_rows_by_arm():
    baseline = Curve([10, 20, 30, 40], [1.0, 2.0, 3.0, 4.0], {"pose": [0.9, 0.7, 0.6, 0.5]})
    fast = Curve([10, 20, 30, 40], [1.0, 2.0, 3.0, 4.0], {"pose": [0.8, 0.45, 0.4, 0.3]})
    slow = Curve([10, 20, 30, 40], [1.0, 2.0, 3.0, 4.0], {"pose": [0.9, 0.8, 0.5, 0.5]})
    rows = [
        {"seed": 0, "arm": "sigma", **compare_seed(baseline, fast, "pose")},
        {"seed": 0, "arm": "balance_only", **compare_seed(baseline, slow, "pose")},
    ]
    summary = {entry["arm"]: entry for entry in summarise(rows)}
    assert summary["sigma"]["step_ratio_mean"] == pytest.approx(40 / 20)
    assert summary["balance_only"]["step_ratio_mean"] == pytest.approx(40 / 30)
    assert summary["sigma"]["seeds"] == 1


def test_plan_runs_uses_equal_budgets(tmp_path):
    runs = plan_runs([0, 3], 40, tmp_path, validation_points=4)

    assert [(run.variant, run.seed) for run in runs] == [
        ("baseline", 0), ("sigma", 0), ("baseline", 3), ("sigma", 3)]
    assert runs[0].overrides["loss.flow_weighting"] == "none"
    assert runs[0].overrides["balance.enabled"] == "false"
    assert runs[1].overrides["loss.flow_weighting"] == "sigma"
    assert runs[1].overrides["balance.enabled"] == "true"
    assert {run.overrides["optim.steps"] for run in runs} == {"40"}
    assert {run.overrides["validation.every"] for run in runs} == {"10"}
    assert runs[2].folder == tmp_path / "baseline" / "seed3"


# -------------------------------------------------------------------------------------------
# The commands on the tiny recipe
# -------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_checkpoints(tmp_path_factory):
    """Two checkpoints of the tiny network (steps 0 and 5, the second with perturbed weights)."""
    from vo_node.config import parse_override
    from vo_node.train.config import load_train_config
    from vo_node.train.trainer import Trainer

    folder = tmp_path_factory.mktemp("tiny_run")
    config = load_train_config(TINY_CONFIG, dict(parse_override(t) for t in FAST_UNROLL))
    trainer = Trainer(config, folder)
    first = trainer.save("first.pt")
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for parameter in trainer.network.parameters():
            parameter.add_(0.05 * torch.randn(parameter.shape, generator=generator))
    trainer.step = 5
    second = trainer.save("second.pt")
    trainer.metrics.close()
    return config, trainer.network, [first, second]


def _numbers(rows, skip=()):
    """Yield every numeric cell of CSV rows (strings) that parses as a float."""
    for row in rows:
        for key, text in row.items():
            if key in skip:
                continue
            try:
                yield key, float(text)
            except ValueError:
                continue


def test_collect_gradients_shapes(tiny_checkpoints):
    config, network, _ = tiny_checkpoints
    clips = study_clips(config, 2)

    sigma = collect_gradients(network, clips, ["weight_head", "delta_head"], "sigma", config)
    plain = collect_gradients(network, clips, ["delta_head"], "none", config)

    expected = resolve_parameters(network, ["weight_head"])["weight_head"].numel()
    assert sigma["weight_head"].shape == (2, expected)
    assert plain["delta_head"].shape == (2, expected)
    assert bool(torch.isfinite(sigma["delta_head"]).all())
    assert float(sigma["delta_head"].norm()) > 0.0
    assert not torch.allclose(sigma["delta_head"], plain["delta_head"])


def test_snr_command_writes_table_and_plot(tiny_checkpoints, tmp_path):
    _, _, checkpoints = tiny_checkpoints
    code = main(["snr", "--checkpoints", *map(str, checkpoints), "--clips", "2", "--config",
                 str(TINY_CONFIG), "--output", str(tmp_path), *ONE_THREAD, "--set", *FAST_UNROLL])
    assert code == 0

    rows = read_table(tmp_path / "snr.csv")
    assert len(rows) == 2 * len(LOSS_VARIANTS) * 2
    assert {row["step"] for row in rows} == {"0", "5"}
    assert {row["variant"] for row in rows} == set(LOSS_VARIANTS)
    for key, value in _numbers(rows):
        assert math.isfinite(value), key
    assert (tmp_path / "snr.md").is_file()
    assert (tmp_path / "snr.png").read_bytes().startswith(PNG_SIGNATURE)


def test_sources_command_writes_three_studies(tiny_checkpoints, tmp_path):
    _, _, checkpoints = tiny_checkpoints
    code = main(["sources", "--checkpoint", str(checkpoints[1]), "--clips", "2", "--output",
                 str(tmp_path), "--ba-iterations", "1", "2", "--pose-damping", "10",
                 "--noise-levels", "1.0", "--noise-trials", "2", *ONE_THREAD, "--set",
                 *FAST_UNROLL])

    assert code == 0
    for name in ("interference", "ba_linearisation", "residual_noise"):
        rows = read_table(tmp_path / f"{name}.csv")
        assert rows, name
        for key, value in _numbers(rows, skip=("snr_vs_clean_db",)):
            assert math.isfinite(value), (name, key)
        assert (tmp_path / f"{name}.png").read_bytes().startswith(PNG_SIGNATURE)
    noise = read_table(tmp_path / "residual_noise.csv")
    assert sorted({float(row["noise_px"]) for row in noise}) == [0.0, 1.0]
    assert {int(row["samples"]) for row in noise if float(row["noise_px"]) == 1.0} == {4}
    assert {int(row["samples"]) for row in noise if float(row["noise_px"]) == 0.0} == {2}
    for row in noise:
        deviation = float(row["relative_deviation"])
        assert deviation == 0.0 if float(row["noise_px"]) == 0.0 else deviation > 0.0
    ba = read_table(tmp_path / "ba_linearisation.csv")
    assert {row["variant"] for row in ba} == {"sigma", "none", "pose"}


def test_speedup_command_trains_and_reports(tmp_path):
    arguments = ["speedup", "--config", str(TINY_CONFIG), "--seeds", "0", "--steps", "3",
                 "--validation-points", "1", "--output", str(tmp_path), *ONE_THREAD, "--set",
                 *FAST_UNROLL, "validation.clips=1"]
    assert main(arguments) == 0

    rows = read_table(tmp_path / "speedup.csv")
    assert len(rows) == 1
    assert float(rows[0]["baseline_steps"]) <= 3
    reached = rows[0]["sigma_reached"] == "True"
    skip = () if reached else ("sigma_steps", "sigma_time_s", "step_ratio", "time_ratio")
    for key, value in _numbers(rows, skip=skip):
        assert math.isfinite(value), key
    assert (tmp_path / "validation_pose_translation.png").read_bytes().startswith(PNG_SIGNATURE)
    assert png_size(tmp_path / "validation_pose_translation_per_seed.png")[0] == round(
        PANEL_SIZE_INCHES[0] * DPI)
    for variant in ("baseline", "sigma"):
        assert (tmp_path / variant / "seed0" / "model.pt").is_file()

    stamp = (tmp_path / "sigma" / "seed0" / "model.pt").stat().st_mtime_ns
    assert main(arguments) == 0  # finished runs are skipped, not retrained
    assert (tmp_path / "sigma" / "seed0" / "model.pt").stat().st_mtime_ns == stamp

    pose_table = (tmp_path / "speedup.csv").read_bytes()
    assert main([*arguments, "--report-only", "--metric", "flow_epe"]) == 0
    assert (tmp_path / "speedup.csv").read_bytes() == pose_table
    assert read_table(tmp_path / "speedup_flow_epe.csv")[0]["metric"] == "flow_epe"
    assert (tmp_path / "speedup_flow_epe_summary.md").is_file()
