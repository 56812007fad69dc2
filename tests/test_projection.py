"""Patch projection: round trips, self edges and Jacobians against float64 finite differences."""

import pytest
import torch

from vo_node.geometry import projection, se3

DOUBLE = torch.float64
PATCH = 3
INTRINSICS = torch.tensor([120.0, 110.0, 64.0, 48.0], dtype=DOUBLE)
FD_STEP = 1e-6


def _generator(seed=0):
    return torch.Generator().manual_seed(seed)


def _poses(count, seed=0, scale=0.2):
    xi = scale * torch.randn(count, 6, generator=_generator(seed), dtype=DOUBLE)
    return se3.exp(xi)


def _patches(count, seed=1):
    """Patches near the image centre with inverse depths in [0.3, 1.0]."""
    generator = _generator(seed)
    centres = torch.rand(count, 2, generator=generator, dtype=DOUBLE) * torch.tensor(
        [80.0, 60.0], dtype=DOUBLE
    ) + torch.tensor([24.0, 18.0], dtype=DOUBLE)
    offsets = torch.arange(PATCH, dtype=DOUBLE) - PATCH // 2
    u = centres[:, 0, None, None] + offsets[None, None, :].expand(count, PATCH, PATCH)
    v = centres[:, 1, None, None] + offsets[None, :, None].expand(count, PATCH, PATCH)
    inverse_depth = 0.3 + 0.7 * torch.rand(count, 1, 1, generator=generator, dtype=DOUBLE)
    return torch.stack([u, v, inverse_depth.expand(count, PATCH, PATCH)], dim=1)


def _edges():
    """Edges over 4 poses and 5 patches: shared poses, reversed pairs and self edges."""
    ii = torch.tensor([0, 0, 1, 2, 3, 1, 2, 0])
    jj = torch.tensor([1, 2, 0, 3, 1, 1, 2, 3])
    kk = torch.tensor([0, 1, 2, 3, 4, 2, 3, 1])
    return ii, jj, kk


def _centre(poses, patches, ii, jj, kk, intrinsics=INTRINSICS):
    coords = projection.reproject(poses, patches, intrinsics, ii, jj, kk).coords
    return coords[:, :, PATCH // 2, PATCH // 2]


def _numeric_pose_jacobian(poses, patches, ii, jj, kk, role):
    """Central differences of each edge's centre w.r.t. a left update of its ``role`` pose.

    Only that role's pose is perturbed: the other role reads an untouched copy of the poses, so
    self edges (``ii == jj``) give the partial derivative, as the analytic ``Ji`` / ``Jj`` do.
    """
    count = ii.shape[0]
    jacobian = torch.zeros(count, 2, 6, dtype=DOUBLE)
    fixed = poses.clone()
    for axis in range(6):
        delta = torch.zeros(6, dtype=DOUBLE)
        delta[axis] = FD_STEP
        results = []
        for sign in (1.0, -1.0):
            moved = se3.retract(poses, sign * delta)
            stacked = torch.cat([fixed, moved], dim=0)
            shift = poses.shape[0]
            if role == "i":
                results.append(_centre(stacked, patches, ii + shift, jj, kk))
            else:
                results.append(_centre(stacked, patches, ii, jj + shift, kk))
        jacobian[:, :, axis] = (results[0] - results[1]) / (2 * FD_STEP)
    return jacobian


def test_inverse_project_then_project_is_identity():
    patches = _patches(6)
    points = projection.inverse_project(patches, INTRINSICS)
    assert points.shape == (6, 4, PATCH, PATCH)
    torch.testing.assert_close(points[:, 2], torch.ones(6, PATCH, PATCH, dtype=DOUBLE))
    torch.testing.assert_close(points[:, 3], patches[:, 2])
    torch.testing.assert_close(projection.project(points, INTRINSICS), patches[:, :2])


def test_project_homogeneous_scale_invariant():
    points = torch.randn(5, 4, 2, 2, generator=_generator(2), dtype=DOUBLE)
    points[:, 2] = points[:, 2].abs() + 1.0
    torch.testing.assert_close(
        projection.project(3.5 * points, INTRINSICS), projection.project(points, INTRINSICS)
    )


def test_reproject_matches_metric_points():
    poses = _poses(4)
    patches = _patches(5)
    ii, jj, kk = _edges()
    result = projection.reproject(poses, patches, INTRINSICS, ii, jj, kk)
    assert result.coords.shape == (8, 2, PATCH, PATCH)
    assert result.depth.shape == (8, PATCH, PATCH)
    # Reference: lift to a metric 3-D point, go through the world frame, project.
    points = projection.inverse_project(patches[kk], INTRINSICS)
    metric = (points[:, :3] / points[:, 3:4]).permute(0, 2, 3, 1)  # (E, P, P, 3)
    world = se3.transform_points(se3.invert(poses[ii])[:, None, None], metric)
    camera = se3.transform_points(poses[jj][:, None, None], world)
    fx, fy, cx, cy = INTRINSICS
    expected = torch.stack(
        [fx * camera[..., 0] / camera[..., 2] + cx, fy * camera[..., 1] / camera[..., 2] + cy], 1
    )
    torch.testing.assert_close(result.coords, expected)
    # Homogeneous depth = target depth * source inverse depth.
    torch.testing.assert_close(result.depth, camera[..., 2] * patches[kk][:, 2])


def test_self_edges_return_own_pixels():
    poses = _poses(3)
    patches = _patches(4)
    ii = torch.tensor([0, 1, 2, 2])
    kk = torch.tensor([0, 1, 2, 3])
    result = projection.reproject(poses, patches, INTRINSICS, ii, ii, kk)
    torch.testing.assert_close(result.coords, patches[kk, :2])
    torch.testing.assert_close(result.depth, torch.ones_like(result.depth))
    assert bool(result.valid.all())


@pytest.mark.parametrize("role", ["i", "j"])
def test_pose_jacobians_match_finite_differences(role):
    poses = _poses(4)
    patches = _patches(5)
    ii, jj, kk = _edges()
    result = projection.reproject(poses, patches, INTRINSICS, ii, jj, kk, with_jacobians=True)
    analytic = result.Ji if role == "i" else result.Jj
    assert analytic.shape == (8, 2, 6)
    numeric = _numeric_pose_jacobian(poses, patches, ii, jj, kk, role)
    torch.testing.assert_close(analytic, numeric, atol=1e-6, rtol=1e-6)


def test_self_edge_total_pose_derivative_is_zero():
    poses = _poses(2)
    patches = _patches(2)
    ii = jj = torch.tensor([0, 1])
    kk = torch.tensor([0, 1])
    result = projection.reproject(poses, patches, INTRINSICS, ii, jj, kk, with_jacobians=True)
    torch.testing.assert_close(result.Ji + result.Jj, torch.zeros(2, 2, 6, dtype=DOUBLE))
    assert result.Jj.abs().max() > 1.0  # the partial derivatives themselves are not zero


def test_depth_jacobian_matches_finite_differences():
    poses = _poses(4)
    patches = _patches(5)
    ii, jj, kk = _edges()
    result = projection.reproject(poses, patches, INTRINSICS, ii, jj, kk, with_jacobians=True)
    assert result.Jz.shape == (8, 2, 1)
    numeric = torch.zeros(8, 2, 1, dtype=DOUBLE)
    for sign in (1.0, -1.0):
        moved = patches.clone()
        moved[:, 2] += sign * FD_STEP
        numeric[:, :, 0] += sign * _centre(poses, moved, ii, jj, kk) / (2 * FD_STEP)
    torch.testing.assert_close(result.Jz, numeric, atol=1e-6, rtol=1e-6)


def test_per_frame_intrinsics():
    poses = _poses(4)
    patches = _patches(5)
    ii, jj, kk = _edges()
    per_frame = INTRINSICS.expand(4, 4).clone()
    per_frame[2] = torch.tensor([90.0, 95.0, 60.0, 50.0], dtype=DOUBLE)
    result = projection.reproject(poses, patches, per_frame, ii, jj, kk, with_jacobians=True)
    # Reference through metric points with each frame's own intrinsics.
    points = projection.inverse_project(patches[kk], per_frame[ii])
    metric = (points[:, :3] / points[:, 3:4]).permute(0, 2, 3, 1)
    relative = se3.compose(poses[jj], se3.invert(poses[ii]))
    camera = se3.transform_points(relative[:, None, None], metric)
    fx, fy, cx, cy = per_frame[jj].T[..., None, None]
    u = fx * camera[..., 0] / camera[..., 2] + cx
    v = fy * camera[..., 1] / camera[..., 2] + cy
    torch.testing.assert_close(result.coords, torch.stack([u, v], dim=1))
    numeric = _numeric_pose_jacobian_with(poses, patches, ii, jj, kk, per_frame)
    torch.testing.assert_close(result.Jj, numeric, atol=1e-6, rtol=1e-6)


def _numeric_pose_jacobian_with(poses, patches, ii, jj, kk, intrinsics):
    jacobian = torch.zeros(ii.shape[0], 2, 6, dtype=DOUBLE)
    shift = poses.shape[0]
    stacked_intrinsics = torch.cat([intrinsics, intrinsics], dim=0)
    for axis in range(6):
        delta = torch.zeros(6, dtype=DOUBLE)
        delta[axis] = FD_STEP
        plus = torch.cat([poses, se3.retract(poses, delta)], dim=0)
        minus = torch.cat([poses, se3.retract(poses, -delta)], dim=0)
        difference = _centre(plus, patches, ii, jj + shift, kk, stacked_intrinsics)
        difference = difference - _centre(minus, patches, ii, jj + shift, kk, stacked_intrinsics)
        jacobian[:, :, axis] = difference / (2 * FD_STEP)
    return jacobian


def test_points_behind_camera_are_invalid_and_finite():
    poses = torch.stack([se3.identity((), dtype=DOUBLE), se3.identity((), dtype=DOUBLE)])
    # Camera 1 is turned 180 degrees about y, so points in front of camera 0 are behind it.
    poses[1, 2] = -5.0
    poses[1, 3:] = torch.tensor([0.0, 1.0, 0.0, 0.0], dtype=DOUBLE)
    patches = _patches(2)
    ii, jj, kk = torch.tensor([0, 0]), torch.tensor([1, 0]), torch.tensor([0, 1])
    result = projection.reproject(poses, patches, INTRINSICS, ii, jj, kk, with_jacobians=True)
    assert not bool(result.valid[0].any())
    assert bool(result.valid[1].all())
    for tensor in (result.coords, result.Ji, result.Jj, result.Jz):
        assert torch.isfinite(tensor).all()


def test_reproject_rejects_bad_shapes():
    poses = _poses(2)
    patches = _patches(2)
    edges = torch.tensor([0]), torch.tensor([1]), torch.tensor([0])
    with pytest.raises(ValueError, match="poses_cw"):
        projection.reproject(poses[:, :6], patches, INTRINSICS, *edges)
    with pytest.raises(ValueError, match="intrinsics"):
        projection.reproject(poses, patches, INTRINSICS[:3], *edges)
    with pytest.raises(ValueError, match="patches"):
        projection.reproject(poses, patches[:, :2], INTRINSICS, *edges)


def test_frame_pairs_match_per_edge_poses():
    """Relative poses computed once per frame pair give bit-identical coordinates and Jacobians
    to computing them for every edge, with many edges per pair and reversed pairs."""
    poses = _poses(4, seed=7)
    patches = _patches(6, seed=8)
    generator = _generator(9)
    ii = torch.randint(0, 4, (40,), generator=generator)
    jj = torch.randint(0, 4, (40,), generator=generator)
    kk = torch.randint(0, 6, (40,), generator=generator)
    shared = projection.reproject(poses, patches, INTRINSICS, ii, jj, kk, with_jacobians=True)

    source, target, of_edge = projection.frame_pairs(ii, jj, poses.shape[0])
    assert source.shape[0] < ii.shape[0]
    assert torch.equal(source[of_edge], ii)
    assert torch.equal(target[of_edge], jj)

    # Per-edge reference: every edge its own pair.
    per_edge = torch.arange(ii.shape[0])
    relative = se3.compose(poses[jj], se3.invert(poses[ii]))
    rotation = se3.quaternion_to_matrix(relative[:, 3:])
    points = projection.inverse_project(patches[kk], INTRINSICS.expand(ii.shape[0], 4))
    xyz = torch.einsum("eab,ebpq->eapq", rotation, points[:, :3])
    xyz = xyz + relative[:, :3, None, None] * points[:, 3:4]
    transformed = torch.cat([xyz, points[:, 3:4]], dim=1)
    coords = projection.project(transformed, INTRINSICS.expand(ii.shape[0], 4))
    jacobians = projection._centre_jacobians(
        transformed[:, :, 1, 1], relative, per_edge, INTRINSICS.expand(ii.shape[0], 4)
    )
    assert torch.equal(shared.coords, coords)
    for got, expected in zip((shared.Ji, shared.Jj, shared.Jz), jacobians):
        assert torch.equal(got, expected)


def test_reproject_gradcheck_shared_pairs():
    """Gradients reach every pose through the per-pair relative poses (float64 gradcheck)."""
    poses = _poses(3, seed=3).requires_grad_()
    patches = _patches(3, seed=4)
    ii = torch.tensor([0, 0, 1, 2, 0, 1])
    jj = torch.tensor([1, 1, 2, 0, 2, 2])
    kk = torch.tensor([0, 1, 2, 0, 1, 2])

    def centres(pose_values):
        return _centre(pose_values, patches, ii, jj, kk)

    assert torch.autograd.gradcheck(centres, (poses,), eps=1e-6, atol=1e-5)
