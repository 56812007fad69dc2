"""scripts/frame_variants.py: ground-truth motion prior and more updates per frame."""

import re

import numpy as np
import pytest
import torch

from tests.conftest import SCRIPTS_DIR, load_module_from_file
from tests.test_initial_window_oracle import random_poses as random_poses_wc
from vo_node.config import ConfigError
from vo_node.demo_data import render_demo_sequence
from vo_node.geometry import se3
from vo_node.io.trajectory import Trajectory
from vo_node.odometry import frontend

FAST_OVERRIDES = [
    "max_image_width=128",
    "frontend.motion_probe_threshold=0",
    "frontend.patches_per_frame=16",
    "frontend.init_frames=4",
    "frontend.init_iterations=2",
    "frontend.final_iterations=2",
    "frontend.hypothesis_frames=0",
]
MEDIAN_LINE = re.compile(r"median ATE, (\S+): (\d+\.\d+) % over 1 runs")


@pytest.fixture(scope="module")
def variants():
    return load_module_from_file(SCRIPTS_DIR / "frame_variants.py", "frame_variants")


def similarity_of(poses_wc, scale, world_from_true_wc):
    """The same trajectory in another world frame and at ``scale`` times its size."""
    moved = se3.compose(world_from_true_wc.expand_as(poses_wc), poses_wc).clone()
    moved[:, :3] *= scale
    return moved


def test_true_prior_matches_scaled_truth(variants):
    stamps = np.arange(6, dtype=np.int64) * 50_000_000
    true_wc = random_poses_wc(6, seed=0, step=0.3)
    ground_truth = Trajectory(stamps, true_wc.numpy())
    world_from_true = random_poses_wc(1, seed=3, step=0.0)
    estimated_cw = se3.invert(similarity_of(true_wc, 0.37, world_from_true))

    prior = variants.true_motion_prior(estimated_cw[:5].float(), stamps[:5], stamps[5],
                                       ground_truth)

    expected = estimated_cw[5]
    torch.testing.assert_close(se3.to_matrix(prior.double()), se3.to_matrix(expected),
                               atol=1e-5, rtol=1e-5)
    assert prior.dtype == torch.float32


def test_true_prior_missing_stamp_is_none(variants):
    stamps = np.arange(4, dtype=np.int64)
    ground_truth = Trajectory(stamps, random_poses_wc(4, seed=0, step=0.3).numpy())
    estimated_cw = se3.invert(random_poses_wc(3, seed=1, step=0.1))
    assert variants.true_motion_prior(estimated_cw, stamps[:3], 99, ground_truth) is None


def test_true_prior_static_camera_scale_one(variants):
    stamps = np.arange(4, dtype=np.int64)
    true_wc = random_poses_wc(4, seed=0, step=0.3)
    true_wc[:3] = true_wc[0]
    ground_truth = Trajectory(stamps, true_wc.numpy())
    estimated_cw = se3.invert(true_wc[:3])
    prior = variants.true_motion_prior(estimated_cw, stamps[:3], 3, ground_truth)
    torch.testing.assert_close(se3.to_matrix(prior), se3.to_matrix(se3.invert(true_wc[3:]))[0])


@pytest.mark.parametrize("text", ["updates-1", "updates-9", "updates-x", "truth", ""])
def test_check_variant_rejects_invalid(variants, text):
    with pytest.raises(ConfigError, match="true-prior or updates-N"):
        variants.check_variant(text)


def test_variant_removed_after_error(variants):
    predict, optimize = frontend.VisualOdometry._predict_pose, frontend.VisualOdometry._optimize
    ground_truth = Trajectory(np.arange(2, dtype=np.int64), random_poses_wc(2, 0, 0.1).numpy())
    for name in ("true-prior", "updates-3"):
        with pytest.raises(RuntimeError, match="inside"):
            with variants.variant_installed(name, ground_truth):
                prior_installed = frontend.VisualOdometry._predict_pose is not predict
                updates_installed = frontend.VisualOdometry._optimize is not optimize
                assert prior_installed == (name == "true-prior")
                assert updates_installed == (name == "updates-3")
                raise RuntimeError("inside")
        assert frontend.VisualOdometry._predict_pose is predict
        assert frontend.VisualOdometry._optimize is optimize


def test_updates_variant_iterations(variants, monkeypatch):
    calls = []
    monkeypatch.setattr(frontend.VisualOdometry, "_optimize",
                        lambda self, iterations, *rest, **kw: calls.append(iterations))
    ground_truth = Trajectory(np.arange(2, dtype=np.int64), random_poses_wc(2, 0, 0.1).numpy())
    with variants.variant_installed("updates-3", ground_truth):
        frontend.VisualOdometry._optimize(None, 1, None, True)
        frontend.VisualOdometry._optimize(None, 12, None, True)
    assert calls == [3, 12]


@pytest.mark.parametrize("variant", ["true-prior", "updates-2"])
def test_script_end_to_end_demo(variants, tmp_path, capsys, monkeypatch, variant):
    sequence = render_demo_sequence(tmp_path / "demo", num_frames=14, height=96, width=128)
    priors = []
    original = variants.true_motion_prior

    def counted(*args):
        pose = original(*args)
        priors.append(pose is not None)
        return pose

    monkeypatch.setattr(variants, "true_motion_prior", counted)
    overrides = [item for text in FAST_OVERRIDES for item in ("--override", text)]
    assert variants.main([str(sequence), "--variant", variant, "--runs", "1", *overrides]) == 0

    medians = dict(MEDIAN_LINE.findall(capsys.readouterr().out))
    assert set(medians) == {"engine", variant}
    assert all(np.isfinite(float(value)) for value in medians.values())
    if variant == "true-prior":
        assert sum(priors) >= 5, "the ground-truth prior was not used after initialisation"
    else:
        assert not priors


def test_script_rejects_bad_arguments(variants, tmp_path, capsys):
    assert variants.main([str(tmp_path), "--variant", "sideways"]) == 2
    assert "invalid --variant 'sideways'" in capsys.readouterr().err
    assert variants.main([str(tmp_path), "--variant", "true-prior", "--runs", "0"]) == 2
    assert "--runs must be at least 1, got 0" in capsys.readouterr().err
