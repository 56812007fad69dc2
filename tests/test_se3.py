"""SE(3) helpers against 4x4 matrix algebra and closed forms, in float64 and float32."""

import math

import pytest
import torch

from vo_node.geometry import se3

DOUBLE = torch.float64


def _generator(seed=0):
    return torch.Generator().manual_seed(seed)


def _random_tangent(count, max_angle=3.0, seed=0, dtype=DOUBLE):
    """Tangent vectors with rotation angles uniform in [0, max_angle)."""
    generator = _generator(seed)
    v = torch.randn(count, 3, generator=generator, dtype=dtype)
    axis = torch.randn(count, 3, generator=generator, dtype=dtype)
    axis = torch.nn.functional.normalize(axis, dim=-1)
    angle = torch.rand(count, 1, generator=generator, dtype=dtype) * max_angle
    return torch.cat([v, axis * angle], dim=-1)


def _random_poses(count, seed=0):
    return se3.exp(_random_tangent(count, seed=seed))


def _hat(xi):
    """The 4x4 Lie-algebra matrix of tangent vectors ``[v, w]``."""
    matrix = torch.zeros(*xi.shape[:-1], 4, 4, dtype=xi.dtype)
    matrix[..., :3, :3] = se3.skew(xi[..., 3:])
    matrix[..., :3, 3] = xi[..., :3]
    return matrix


def _rodrigues(w):
    """Closed-form rotation matrix of axis-angle vectors ``(..., 3)``."""
    angle = w.norm(dim=-1)[..., None, None]
    k = se3.skew(w / w.norm(dim=-1, keepdim=True))
    eye = torch.eye(3, dtype=w.dtype)
    return eye + torch.sin(angle) * k + (1 - torch.cos(angle)) * k @ k


def test_exp_matches_matrix_exponential():
    xi = _random_tangent(200)
    expected = torch.linalg.matrix_exp(_hat(xi))
    torch.testing.assert_close(se3.to_matrix(se3.exp(xi)), expected, atol=1e-12, rtol=0)


def test_quaternion_matrix_matches_rodrigues():
    xi = _random_tangent(200)
    rotation = se3.quaternion_to_matrix(se3.exp(xi)[:, 3:])
    torch.testing.assert_close(rotation, _rodrigues(xi[:, 3:]), atol=1e-12, rtol=0)


def test_exp_is_unit_quaternion():
    q = se3.exp(_random_tangent(100, max_angle=10.0))[:, 3:]
    torch.testing.assert_close(q.norm(dim=-1), torch.ones(100, dtype=DOUBLE))


def test_compose_invert_transform_match_matrices():
    a, b = _random_poses(50, seed=1), _random_poses(50, seed=2)
    points = torch.randn(50, 3, generator=_generator(3), dtype=DOUBLE)
    ma, mb = se3.to_matrix(a), se3.to_matrix(b)
    torch.testing.assert_close(se3.to_matrix(se3.compose(a, b)), ma @ mb, atol=1e-12, rtol=0)
    inverse = se3.to_matrix(se3.invert(a))
    torch.testing.assert_close(inverse, torch.linalg.inv(ma), atol=1e-12, rtol=0)
    expected = (ma[:, :3, :3] @ points[:, :, None])[..., 0] + ma[:, :3, 3]
    torch.testing.assert_close(se3.transform_points(a, points), expected, atol=1e-12, rtol=0)


def test_compose_associative_and_inverse():
    a, b, c = (_random_poses(30, seed=s) for s in (4, 5, 6))
    left = se3.compose(se3.compose(a, b), c)
    right = se3.compose(a, se3.compose(b, c))
    torch.testing.assert_close(se3.to_matrix(left), se3.to_matrix(right), atol=1e-12, rtol=0)
    eye = se3.to_matrix(se3.compose(a, se3.invert(a)))
    torch.testing.assert_close(eye, torch.eye(4, dtype=DOUBLE).expand(30, 4, 4), atol=1e-12, rtol=0)


def test_compose_broadcasts():
    a = _random_poses(4, seed=7)
    b = _random_poses(5, seed=8)
    result = se3.compose(a[:, None], b[None, :])
    assert result.shape == (4, 5, 7)
    torch.testing.assert_close(result[2, 3], se3.compose(a[2], b[3]))


def test_identity_is_neutral():
    poses = _random_poses(10)
    eye = se3.identity((10,), dtype=DOUBLE)
    assert eye.shape == (10, 7)
    torch.testing.assert_close(se3.compose(eye, poses), poses)
    torch.testing.assert_close(se3.exp(torch.zeros(10, 6, dtype=DOUBLE)), eye)


def test_log_inverts_exp():
    xi = _random_tangent(500, max_angle=math.pi - 1e-3)
    torch.testing.assert_close(se3.log(se3.exp(xi)), xi, atol=1e-10, rtol=0)


@pytest.mark.parametrize(
    "angle", [0.0, 1e-12, 1e-8, 1e-4, 0.0999, 0.1001, 1.0, 3.0, math.pi - 1e-6]
)
def test_log_exp_round_trip_at_angle(angle):
    xi = _random_tangent(20, seed=11)
    xi[:, 3:] = torch.nn.functional.normalize(xi[:, 3:], dim=-1) * angle
    torch.testing.assert_close(se3.log(se3.exp(xi)), xi, atol=1e-9, rtol=0)
    single = se3.log(se3.exp(xi.float()))
    torch.testing.assert_close(single, xi.float(), atol=2e-5, rtol=1e-5)


def test_exp_log_round_trip_on_poses():
    poses = _random_poses(200, seed=12)
    torch.testing.assert_close(se3.to_matrix(se3.exp(se3.log(poses))), se3.to_matrix(poses))


def test_log_at_exactly_pi():
    xi = torch.tensor([[0.3, -0.2, 0.5, 0.0, 0.0, math.pi]], dtype=DOUBLE)
    recovered = se3.log(se3.exp(xi))
    # At pi the axis sign is ambiguous, the rotation is not.
    torch.testing.assert_close(recovered[:, 5].abs(), xi[:, 5], atol=1e-12, rtol=0)
    torch.testing.assert_close(se3.to_matrix(se3.exp(recovered)), se3.to_matrix(se3.exp(xi)))


def test_adjoint_moves_update_across_pose():
    poses = _random_poses(50, seed=13)
    xi = _random_tangent(50, max_angle=1.0, seed=14)
    left = se3.compose(se3.exp((se3.adjoint(poses) @ xi[:, :, None])[..., 0]), poses)
    right = se3.compose(poses, se3.exp(xi))
    torch.testing.assert_close(se3.to_matrix(left), se3.to_matrix(right), atol=1e-12, rtol=0)


def test_retract_is_left_update():
    poses = _random_poses(10, seed=15)
    xi = _random_tangent(10, seed=16)
    expected = torch.linalg.matrix_exp(_hat(xi)) @ se3.to_matrix(poses)
    torch.testing.assert_close(se3.to_matrix(se3.retract(poses, xi)), expected, atol=1e-12, rtol=0)


def test_matrix_to_quaternion_round_trip_near_half_turns():
    angles = torch.tensor([0.0, 1e-9, 0.5, math.pi - 1e-9, math.pi], dtype=DOUBLE)
    axes = torch.randn(5, 3, generator=_generator(17), dtype=DOUBLE)
    axes = torch.nn.functional.normalize(axes, dim=-1)
    w = (axes[:, None, :] * angles[None, :, None]).reshape(-1, 3)
    xi = torch.cat([torch.zeros_like(w), w], dim=-1)
    rotation = se3.quaternion_to_matrix(se3.exp(xi)[:, 3:])
    q = se3.matrix_to_quaternion(rotation)
    torch.testing.assert_close(q.norm(dim=-1), torch.ones(len(q), dtype=DOUBLE))
    assert bool((q[:, 3] >= 0).all())
    torch.testing.assert_close(se3.quaternion_to_matrix(q), rotation, atol=1e-12, rtol=0)


def test_from_matrix_inverts_to_matrix():
    poses = _random_poses(100, seed=18)
    recovered = se3.from_matrix(se3.to_matrix(poses))
    # q and -q are the same rotation; from_matrix returns qw >= 0.
    sign = torch.where(poses[:, 6:] < 0, -1.0, 1.0).to(DOUBLE)
    torch.testing.assert_close(recovered[:, :3], poses[:, :3])
    torch.testing.assert_close(recovered[:, 3:], poses[:, 3:] * sign)


def test_interpolate_endpoints_and_midpoint():
    start = _random_poses(10, seed=19)
    xi = _random_tangent(10, max_angle=2.0, seed=20)
    end = se3.retract(start, xi)
    at_start = se3.interpolate(start, end, 0.0)
    at_end = se3.interpolate(start, end, 1.0)
    torch.testing.assert_close(se3.to_matrix(at_start), se3.to_matrix(start))
    torch.testing.assert_close(se3.to_matrix(at_end), se3.to_matrix(end))
    middle = se3.interpolate(start, end, 0.5)
    torch.testing.assert_close(middle[:, :3], 0.5 * (start[:, :3] + end[:, :3]))
    # The rotation halfway along the geodesic: R_mid = exp(w/2) R_start.
    half_step = torch.cat([torch.zeros_like(xi[:, :3]), xi[:, 3:] / 2], dim=-1)
    half_rotation = se3.quaternion_to_matrix(se3.exp(half_step)[:, 3:])
    expected = half_rotation @ se3.quaternion_to_matrix(start[:, 3:])
    middle_rotation = se3.quaternion_to_matrix(middle[:, 3:])
    torch.testing.assert_close(middle_rotation, expected, atol=1e-12, rtol=0)


def test_interpolate_takes_short_arc_and_nearly_equal():
    start = _random_poses(3, seed=21)
    flipped = torch.cat([start[:, :3], -start[:, 3:]], dim=-1)
    torch.testing.assert_close(
        se3.to_matrix(se3.interpolate(start, flipped, 0.3)), se3.to_matrix(start)
    )
    alpha = torch.tensor([0.25, 0.5, 0.75], dtype=DOUBLE)
    tiny = se3.retract(start, torch.full((3, 6), 1e-9, dtype=DOUBLE))
    result = se3.interpolate(start, tiny, alpha)
    assert torch.isfinite(result).all()
    torch.testing.assert_close(result, start, atol=1e-8, rtol=0)


def test_gradcheck_exp_and_log():
    xi = _random_tangent(4, max_angle=2.0, seed=22).requires_grad_()
    assert torch.autograd.gradcheck(se3.exp, (xi,))
    poses = _random_poses(4, seed=23).requires_grad_()
    assert torch.autograd.gradcheck(se3.log, (poses,))


def test_gradcheck_exp_small_angle_branch():
    xi = _random_tangent(4, max_angle=0.05, seed=24).requires_grad_()
    assert torch.autograd.gradcheck(se3.exp, (xi,))


def test_gradcheck_transform_points():
    poses = _random_poses(3, seed=25).requires_grad_()
    points = torch.randn(3, 3, generator=_generator(26), dtype=DOUBLE, requires_grad=True)
    assert torch.autograd.gradcheck(se3.transform_points, (poses, points))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_gradients_finite_at_zero(dtype):
    xi = torch.zeros(2, 6, dtype=dtype, requires_grad=True)
    se3.log(se3.exp(xi)).sum().backward()
    assert torch.isfinite(xi.grad).all()
    # d log(exp(xi)) / d xi is the identity at zero.
    torch.testing.assert_close(xi.grad, torch.ones_like(xi))
    poses = se3.identity((2,), dtype=dtype).requires_grad_()
    se3.log(poses).sum().backward()
    assert torch.isfinite(poses.grad).all()


def test_exp_small_angle_float32_matches_float64():
    xi = _random_tangent(100, max_angle=0.2, seed=27)
    torch.testing.assert_close(se3.exp(xi.float()).double(), se3.exp(xi), atol=1e-6, rtol=0)
