"""scripts/initial_window_oracle.py: ground-truth window poses at the estimate's scale."""

import numpy as np
import pytest
import torch

from tests.conftest import SCRIPTS_DIR, load_module_from_file
from vo_node.geometry import se3
from vo_node.io.sequence import SequenceError
from vo_node.io.trajectory import Trajectory

DOUBLE = torch.float64


@pytest.fixture(scope="module")
def oracle():
    return load_module_from_file(SCRIPTS_DIR / "initial_window_oracle.py", "initial_window_oracle")


def random_poses(count, seed, step):
    generator = torch.Generator().manual_seed(seed)
    tangent = 0.05 * torch.randn(count, 6, generator=generator, dtype=DOUBLE)
    tangent[:, :3] += step * torch.arange(count, dtype=DOUBLE)[:, None]
    return se3.exp(tangent)


def test_true_window_keeps_motion_and_estimate_scale(oracle):
    stamps = np.arange(6, dtype=np.int64) * 100_000_000
    true_wc = random_poses(6, seed=0, step=0.3)
    ground_truth = Trajectory(stamps, true_wc.numpy())
    estimated_cw = se3.invert(random_poses(6, seed=1, step=0.05))

    window_cw = oracle.true_window_poses(estimated_cw, stamps, ground_truth)

    torch.testing.assert_close(window_cw[0], estimated_cw[0])
    # Relative rotations are the true ones.
    true_cw = se3.invert(true_wc)
    true_relative = se3.compose(true_cw, se3.invert(true_cw[:1]).expand_as(true_cw))
    window_relative = se3.compose(window_cw, se3.invert(window_cw[:1]).expand_as(window_cw))
    torch.testing.assert_close(
        se3.to_matrix(window_relative)[:, :3, :3], se3.to_matrix(true_relative)[:, :3, :3]
    )
    # Translations are the true ones times one scale: the estimate's largest centre distance.
    scale = window_relative[1:, :3].norm(dim=1) / true_relative[1:, :3].norm(dim=1)
    torch.testing.assert_close(scale, scale[0].expand_as(scale))
    centres = se3.invert(window_cw)[:, :3]
    estimated_centres = se3.invert(estimated_cw)[:, :3]
    assert float((centres - centres[0]).norm(dim=1).max()) == pytest.approx(
        float((estimated_centres - estimated_centres[0]).norm(dim=1).max())
    )


def test_missing_ground_truth_stamp_is_named(oracle):
    stamps = np.arange(3, dtype=np.int64)
    ground_truth = Trajectory(stamps, random_poses(3, seed=0, step=0.3).numpy())
    with pytest.raises(SequenceError, match="no ground-truth pose"):
        oracle.true_window_poses(se3.invert(random_poses(3, seed=1, step=0.1)), stamps + 7,
                                 ground_truth)
