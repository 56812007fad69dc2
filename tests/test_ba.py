"""Bundle adjustment on synthetic scenes: convergence, noise, masks, fixed variables, gradients,
Cholesky failure and the pose covariance."""

import logging
from dataclasses import dataclass, replace

import pytest
import torch

from vo_node.ba import bundle_adjust
from vo_node.config import BAConfig
from vo_node.geometry import se3
from vo_node.geometry.projection import reproject

DOUBLE = torch.float64
PATCH = 3
HEIGHT, WIDTH = 120, 160
INTRINSICS = torch.tensor([100.0, 100.0, 80.0, 60.0], dtype=DOUBLE)
CHI2_6DOF_999 = 22.458
"""0.999 quantile of the chi-square distribution with 6 degrees of freedom."""

@pytest.fixture(scope="module", autouse=True)
def single_thread():
    """Small tensors run faster on one thread, and the suite shares two cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


EXACT = BAConfig(iterations=10, pose_damping=1e-8, pose_damping_relative=0.0, depth_damping=1e-10)
"""Nearly undamped solver settings for convergence tests."""


@dataclass
class Scene:
    poses: torch.Tensor  # (N, 7) ground-truth T_cam_world
    patches: torch.Tensor  # (M, 3, P, P) ground-truth patches
    ii: torch.Tensor
    jj: torch.Tensor
    kk: torch.Tensor
    target: torch.Tensor  # (E, 2) noise-free centre reprojections


def _make_scene(num_poses=6, per_frame=40, seed=0, dtype=DOUBLE):
    """Cameras moving 0.15 units along x with small rotations, patches at depths 2 to 6.

    Every patch has an edge to every other frame.
    """
    generator = torch.Generator().manual_seed(seed)
    tangent = torch.zeros(num_poses, 6, dtype=DOUBLE)
    tangent[:, 3:] = 0.02 * torch.randn(num_poses, 3, generator=generator, dtype=DOUBLE)
    camera_to_world = se3.exp(tangent)
    camera_to_world[:, 0] = 0.15 * torch.arange(num_poses, dtype=DOUBLE)
    camera_to_world[:, 1] = 0.03 * torch.randn(num_poses, generator=generator, dtype=DOUBLE)
    poses = se3.invert(camera_to_world)

    count = num_poses * per_frame
    size = torch.tensor([WIDTH - 20.0, HEIGHT - 20.0], dtype=DOUBLE)
    centres = torch.rand(count, 2, generator=generator, dtype=DOUBLE) * size + 10.0
    depth = 2.0 + 4.0 * torch.rand(count, generator=generator, dtype=DOUBLE)
    offsets = torch.arange(PATCH, dtype=DOUBLE) - PATCH // 2
    u = centres[:, 0, None, None] + offsets[None, None, :].expand(count, PATCH, PATCH)
    v = centres[:, 1, None, None] + offsets[None, :, None].expand(count, PATCH, PATCH)
    inverse_depth = (1.0 / depth)[:, None, None].expand(count, PATCH, PATCH)
    patches = torch.stack([u, v, inverse_depth], dim=1)

    source = torch.arange(num_poses).repeat_interleave(per_frame)
    ii = source.repeat_interleave(num_poses)
    jj = torch.arange(num_poses).repeat(count)
    kk = torch.arange(count).repeat_interleave(num_poses)
    keep = ii != jj
    ii, jj, kk = ii[keep], jj[keep], kk[keep]
    target = reproject(poses, patches, INTRINSICS, ii, jj, kk).coords[:, :, 1, 1]
    return Scene(poses.to(dtype), patches.to(dtype), ii, jj, kk, target.to(dtype))


def _perturb(scene, first_free=2, seed=1, pose_sigma=0.01, depth_sigma=0.1):
    generator = torch.Generator().manual_seed(seed)
    dtype = scene.poses.dtype
    poses = scene.poses.clone()
    noise = pose_sigma * torch.randn(len(poses) - first_free, 6, generator=generator, dtype=DOUBLE)
    poses[first_free:] = se3.retract(scene.poses[first_free:], noise.to(dtype))
    patches = scene.patches.clone()
    scale = 1.0 + depth_sigma * torch.randn(len(patches), 1, 1, generator=generator, dtype=DOUBLE)
    patches[:, 2] = patches[:, 2] * scale.to(dtype)
    return poses, patches


def _run(scene, poses, patches, target=None, weight=None, config=EXACT, first_free=2, **kwargs):
    target = scene.target if target is None else target
    weight = torch.ones_like(target) if weight is None else weight
    return bundle_adjust(
        poses, patches, INTRINSICS.to(poses.dtype), target, weight, scene.ii, scene.jj, scene.kk,
        first_free_pose=first_free, config=config, image_size=(HEIGHT, WIDTH), **kwargs,
    )


def _pose_errors(estimate, truth):
    """Left-update tangent errors ``log(T_est * T_true^-1)``, (N, 6)."""
    return se3.log(se3.compose(estimate, se3.invert(truth)))


def test_recovers_exact_solution_float64():
    scene = _make_scene()
    poses, patches = _perturb(scene)
    result = _run(scene, poses, patches)
    assert not result.cholesky_failed
    assert result.iterations == EXACT.iterations
    assert result.num_valid == len(scene.ii)
    assert result.initial_cost > 1.0
    assert result.final_cost < 1e-12
    assert _pose_errors(result.poses_cw, scene.poses).abs().max() < 1e-5
    assert (result.patches[:, 2] - scene.patches[:, 2]).abs().max() < 1e-5
    torch.testing.assert_close(result.patches[:, :2], scene.patches[:, :2], atol=0, rtol=0)


def test_recovers_solution_float32():
    scene = _make_scene(dtype=torch.float32)
    poses, patches = _perturb(scene)
    result = _run(scene, poses, patches)
    assert result.poses_cw.dtype == torch.float32
    assert result.patches.dtype == torch.float32
    assert _pose_errors(result.poses_cw.double(), scene.poses.double()).abs().max() < 1e-3
    assert (result.patches[:, 2] - scene.patches[:, 2]).abs().max() < 1e-3


def test_same_result_without_autograd():
    scene = _make_scene()
    poses, patches = _perturb(scene)
    config = replace(EXACT, iterations=2)
    with_grad = _run(scene, poses, patches, config=config)
    with torch.no_grad():
        without_grad = _run(scene, poses, patches, config=config)
    torch.testing.assert_close(without_grad.poses_cw, with_grad.poses_cw, atol=0, rtol=0)
    torch.testing.assert_close(without_grad.patches, with_grad.patches, atol=0, rtol=0)


@pytest.mark.parametrize("seed", [3, 4, 5])
def test_noisy_targets_within_predicted_covariance(seed):
    """With target noise sigma, the newest pose's error must fit the solver's own covariance.

    Weights are 1 / sigma^2, so the returned covariance is the linearised estimator covariance. The
    squared Mahalanobis error is chi-square with 6 degrees of freedom, so it exceeds the 0.999
    quantile (22.46) with probability 0.001 per seed, and each component stays within 5 predicted
    standard deviations. With sigma = 0.5 px the predicted translation deviation is about 9e-3
    scene units per axis (cameras 0.15 units apart, points at depths 2 to 6).
    """
    sigma = 0.5
    scene = _make_scene()
    generator = torch.Generator().manual_seed(seed)
    noise = sigma * torch.randn(scene.target.shape, generator=generator, dtype=DOUBLE)
    weight = torch.full_like(scene.target, 1.0 / sigma**2)
    poses, patches = _perturb(scene, seed=seed)
    result = _run(scene, poses, patches, scene.target + noise, weight, compute_covariance=True)
    error = _pose_errors(result.poses_cw[-1], scene.poses[-1])
    mahalanobis = error @ torch.linalg.solve(result.pose_covariance, error)
    assert mahalanobis < CHI2_6DOF_999
    deviation = result.pose_covariance.diagonal().sqrt()
    assert bool((error.abs() < 5 * deviation).all())
    assert deviation[:3].max() < 2e-2
    # The weighted cost at the optimum is close to its expectation, the degrees of freedom.
    degrees = 2 * len(scene.ii) - 6 * 4 - len(scene.patches)
    assert 0.8 * degrees < result.final_cost < 1.2 * degrees


def test_fixed_poses_do_not_move():
    scene = _make_scene()
    poses, patches = _perturb(scene)
    poses[5] = se3.retract(scene.poses[5], torch.full((6,), 0.01, dtype=DOUBLE))
    result = _run(scene, poses, patches, first_free=2, last_free_pose=5)
    torch.testing.assert_close(result.poses_cw[:2], poses[:2], atol=0, rtol=0)
    torch.testing.assert_close(result.poses_cw[5:], poses[5:], atol=0, rtol=0)
    assert (result.poses_cw[2:5] - poses[2:5]).abs().max() > 1e-4


def test_fixed_patches_keep_inverse_depth():
    scene = _make_scene()
    poses, patches = _perturb(scene)
    fixed = torch.zeros(len(patches), dtype=torch.bool)
    fixed[::3] = True
    result = _run(scene, poses, patches, config=replace(EXACT, iterations=2), fixed_patches=fixed)
    torch.testing.assert_close(result.patches[fixed], patches[fixed], atol=0, rtol=0)
    assert (result.patches[~fixed, 2] - patches[~fixed, 2]).abs().min() > 0


def test_masked_edges_change_nothing():
    scene = _make_scene(num_poses=8)
    # Frame 6 is frame 0 turned 180 degrees about y, so every point is behind it. Frame 7 is frame
    # 0 shifted 20 units sideways, so every point projects far outside the image. Both frames stay
    # fixed (last_free_pose=6).
    poses = scene.poses.clone()
    poses[6] = se3.compose(torch.tensor([0, 0, 0, 0, 1.0, 0, 0], dtype=DOUBLE), poses[0])
    shift = torch.tensor([20.0, 0, 0, 0, 0, 0, 1.0], dtype=DOUBLE)
    poses[7] = se3.compose(shift, poses[0])
    base = (scene.ii < 6) & (scene.jj < 6)
    ii, jj, kk, target = scene.ii[base], scene.jj[base], scene.kk[base], scene.target[base]
    start_poses, patches = _perturb(Scene(poses, scene.patches, ii, jj, kk, target))

    source = torch.arange(12)  # patches of frames 0 and 1 (per_frame = 40)
    behind = reproject(poses, scene.patches, INTRINSICS, 0 * source, 0 * source + 6, source)
    outside = reproject(poses, scene.patches, INTRINSICS, 0 * source, 0 * source + 7, source)
    assert not bool(behind.valid[:, 1, 1].any())
    assert bool(outside.valid[:, 1, 1].all())
    assert bool((outside.coords[:, 0, 1, 1] > WIDTH + EXACT.image_margin).all())
    far = reproject(poses, scene.patches, INTRINSICS, ii[:12], jj[:12], kk[:12]).coords[:, :, 1, 1]

    extra_ii = torch.cat([0 * source, 0 * source, ii[:12]])
    extra_jj = torch.cat([0 * source + 6, 0 * source + 7, jj[:12]])
    extra_kk = torch.cat([source, source, kk[:12]])
    extra_target = torch.cat(
        [
            torch.full((12, 2), 50.0, dtype=DOUBLE),  # behind the camera
            outside.coords[:, :, 1, 1] + 1.0,  # small residual but far outside the image
            far + EXACT.max_residual,  # residual norm above max_residual
        ]
    )
    config = replace(EXACT, iterations=3)
    kwargs = dict(first_free_pose=2, last_free_pose=6, config=config, image_size=(HEIGHT, WIDTH))
    weight = torch.ones_like(target)
    reference = bundle_adjust(
        start_poses, patches, INTRINSICS, target, weight, ii, jj, kk, **kwargs
    )
    with_masked = bundle_adjust(
        start_poses, patches, INTRINSICS,
        torch.cat([target, extra_target]), torch.ones(len(target) + 36, 2, dtype=DOUBLE),
        torch.cat([ii, extra_ii]), torch.cat([jj, extra_jj]), torch.cat([kk, extra_kk]),
        **kwargs,
    )
    assert with_masked.num_valid == reference.num_valid
    # The summed weight counts valid residuals only: both axes of each, weight 1.
    assert with_masked.final_weight_sum == pytest.approx(2.0 * reference.num_valid)
    assert reference.final_weight_sum == pytest.approx(2.0 * reference.num_valid)
    torch.testing.assert_close(with_masked.poses_cw, reference.poses_cw, atol=1e-12, rtol=0)
    torch.testing.assert_close(with_masked.patches, reference.patches, atol=1e-12, rtol=0)


def _tiny_problem():
    scene = _make_scene(num_poses=3, per_frame=2, seed=7)
    poses, patches = _perturb(scene, first_free=1, seed=8)
    return scene, poses, patches


def test_gradcheck_through_target_and_weight():
    scene, poses, patches = _tiny_problem()
    config = BAConfig(iterations=2, pose_damping=1e-2, pose_damping_relative=1e-4)
    generator = torch.Generator().manual_seed(9)
    noise = torch.randn(scene.target.shape, generator=generator, dtype=DOUBLE)
    target = scene.target + 0.3 * noise
    weight = 0.5 + torch.rand(scene.target.shape, generator=generator, dtype=DOUBLE)

    def solve(target, weight):
        result = _run(scene, poses, patches, target, weight, config=config, first_free=1)
        return result.poses_cw[1:], result.patches[:, 2, 1, 1]

    inputs = (target.requires_grad_(), weight.requires_grad_())
    assert torch.autograd.gradcheck(solve, inputs, eps=1e-6, atol=1e-6, rtol=1e-4)


def test_gradients_reach_target_and_weight():
    scene, poses, patches = _tiny_problem()
    target = scene.target.clone().requires_grad_()
    weight = torch.ones_like(target).requires_grad_()
    config = BAConfig(iterations=2)
    result = _run(scene, poses, patches, target, weight, config=config, first_free=1)
    (result.poses_cw[1:, :3].sum() + result.patches[:, 2].sum()).backward()
    assert torch.isfinite(target.grad).all()
    assert target.grad.abs().max() > 0
    assert torch.isfinite(weight.grad).all()
    assert weight.grad.abs().max() > 0


def test_cholesky_failure_returns_zero_step(caplog):
    scene = _make_scene()
    poses, patches = _perturb(scene)
    config = BAConfig(iterations=2, pose_damping=0.0, pose_damping_relative=0.0, depth_damping=0.0)
    weight = torch.zeros_like(scene.target)
    with caplog.at_level(logging.WARNING, logger="vo_node.ba.solver"):
        result = _run(scene, poses, patches, weight=weight, config=config)
    assert result.cholesky_failed
    assert result.iterations == 0
    torch.testing.assert_close(result.poses_cw, poses, atol=0, rtol=0)
    torch.testing.assert_close(result.patches, patches, atol=0, rtol=0)
    assert "Cholesky failed" in caplog.text
    assert "not positive definite" in caplog.text


def test_covariance_symmetric_positive_and_shrinks():
    scene = _make_scene()
    poses, patches = _perturb(scene)
    weight = torch.ones_like(scene.target)
    low = _run(scene, poses, patches, weight=weight, compute_covariance=True).pose_covariance
    high = _run(scene, poses, patches, weight=4 * weight, compute_covariance=True).pose_covariance
    assert low.shape == (6, 6)
    torch.testing.assert_close(low, low.T, atol=0, rtol=0)
    assert torch.linalg.eigvalsh(low).min() > 0
    assert torch.linalg.eigvalsh(low - high).min() > 0
    # Both runs converge to the exact solution, so four times the weight gives a quarter.
    torch.testing.assert_close(high, low / 4, atol=1e-12, rtol=1e-6)


def test_covariance_matches_dense_inverse():
    """The newest pose block equals the block of the full (poses + depths) normal-equation inverse.

    Two fixed poses fix the monocular scale, so the full system is well conditioned.
    """
    scene = _make_scene(num_poses=4, per_frame=3, seed=10)
    poses, patches = _perturb(scene, first_free=2, seed=11)
    config = replace(EXACT, pose_damping_relative=0.0)
    result = _run(scene, poses, patches, config=config, first_free=2, compute_covariance=True)
    # Dense Jacobian of all centre residuals w.r.t. [free poses (left updates), inverse depths].
    projected = reproject(
        result.poses_cw, result.patches, INTRINSICS, scene.ii, scene.jj, scene.kk,
        with_jacobians=True,
    )
    num_edges, num_patches = len(scene.ii), len(patches)
    jacobian = torch.zeros(num_edges, 2, 6 * 2 + num_patches, dtype=DOUBLE)
    for edge in range(num_edges):
        roles = ((scene.ii[edge], projected.Ji[edge]), (scene.jj[edge], projected.Jj[edge]))
        for frame, block in roles:
            if frame >= 2:
                jacobian[edge, :, 6 * (frame - 2) : 6 * (frame - 1)] += block
        jacobian[edge, :, 12 + scene.kk[edge]] = projected.Jz[edge, :, 0]
    jacobian = jacobian.reshape(2 * num_edges, -1)
    information = jacobian.T @ jacobian
    information[12:, 12:] += config.depth_damping * torch.eye(num_patches, dtype=DOUBLE)
    expected = torch.linalg.inv(information)[6:12, 6:12]
    torch.testing.assert_close(result.pose_covariance, expected, atol=1e-10, rtol=1e-6)


def test_rejects_bad_inputs():
    scene = _make_scene(num_poses=3, per_frame=2)
    poses, patches = scene.poses, scene.patches
    weight = torch.ones_like(scene.target)
    with pytest.raises(ValueError, match="first_free_pose"):
        _run(scene, poses, patches, first_free=4)
    with pytest.raises(ValueError, match="weight"):
        _run(scene, poses, patches, weight=weight[:-1])
    with pytest.raises(ValueError, match="out of range"):
        bad = Scene(poses, patches, scene.ii, scene.jj + 5, scene.kk, scene.target)
        _run(bad, poses, patches)


def _random_depth_start(scene, seed):
    """Poses 2.. at the identity and inverse depths uniform in (0, 1), as DPVO initialises
    patches: far from the solution, so plain Gauss-Newton steps raise the cost at times."""
    generator = torch.Generator().manual_seed(seed)
    poses = scene.poses.clone()
    poses[2:] = se3.identity((len(poses) - 2,), dtype=poses.dtype)
    patches = scene.patches.clone()
    inverse_depth = torch.rand(len(patches), 1, 1, generator=generator, dtype=patches.dtype)
    patches[:, 2] = inverse_depth.expand(-1, PATCH, PATCH)
    return poses, patches


def _cost_changes(scene, poses, patches, config, steps):
    """Run ``steps`` one-iteration solves; return each one's (initial, final) cost."""
    changes = []
    for _ in range(steps):
        result = _run(scene, poses, patches, config=replace(config, iterations=1))
        changes.append((result.initial_cost, result.final_cost))
        poses, patches = result.poses_cw, result.patches
    return changes


def test_trust_region_never_raises_cost():
    scene = _make_scene()
    poses, patches = _random_depth_start(scene, seed=2)
    plain = _cost_changes(scene, poses, patches, BAConfig(), steps=8)
    assert any(final > initial for initial, final in plain), "the start is too easy for this test"
    damped = _cost_changes(scene, poses, patches, BAConfig(trust_region=True), steps=8)
    assert all(final <= initial for initial, final in damped)
    # From this start the damped solver stalls with a few patches on the inverse-depth floor,
    # which plain steps happen to jump past. The frontend's initialisation avoids such starts.
    assert damped[-1][1] < 0.1 * damped[0][0]


def test_trust_region_recovers_exact_solution():
    scene = _make_scene()
    poses, patches = _perturb(scene)
    result = _run(scene, poses, patches, config=replace(EXACT, trust_region=True))
    assert not result.cholesky_failed
    assert result.final_cost < 1e-12
    assert _pose_errors(result.poses_cw, scene.poses).abs().max() < 1e-5
    assert (result.patches[:, 2] - scene.patches[:, 2]).abs().max() < 1e-5


def test_trust_region_steps_past_image_margin():
    # With no margin and the image edge 8 pixels inside the scene, the step towards the solution
    # moves some valid residuals past the edge. They keep their small actual residuals in the
    # trial cost, so the step is taken (charged max_residual, every step was rejected).
    scene = _make_scene()
    poses, patches = _perturb(scene, pose_sigma=0.02)
    image_size = (HEIGHT, WIDTH - 8)
    start = reproject(poses, patches, INTRINSICS, scene.ii, scene.jj, scene.kk).coords[:, 0, 1, 1]
    crossing = (start < image_size[1]) & (scene.target[:, 0] >= image_size[1])
    assert int(crossing.sum()) > 0, "no residual crosses the image edge: the test is too easy"
    config = replace(EXACT, trust_region=True, image_margin=0.0)
    result = bundle_adjust(
        poses, patches, INTRINSICS, scene.target, torch.ones_like(scene.target), scene.ii,
        scene.jj, scene.kk, first_free_pose=2, config=config, image_size=image_size,
    )
    assert result.iterations >= 2
    assert result.final_cost < 1e-9 * result.initial_cost
    assert _pose_errors(result.poses_cw, scene.poses).abs().max() < 1e-5


def test_trust_region_keeps_gradients():
    scene, poses, patches = _tiny_problem()
    target = scene.target.clone().requires_grad_()
    weight = torch.ones_like(target).requires_grad_()
    config = BAConfig(iterations=2, trust_region=True)
    result = _run(scene, poses, patches, target, weight, config=config, first_free=1)
    (result.poses_cw[1:, :3].sum() + result.patches[:, 2].sum()).backward()
    assert torch.isfinite(target.grad).all()
    assert target.grad.abs().max() > 0


def test_trust_region_reports_cholesky_failure(caplog):
    scene = _make_scene()
    poses, patches = _perturb(scene)
    config = BAConfig(
        iterations=2, pose_damping=0.0, pose_damping_relative=0.0, depth_damping=0.0,
        trust_region=True,
    )
    # Only edges between the two fixed poses carry weight, so the free poses are unconstrained
    # while the cost stays positive; Marquardt damping scales a zero diagonal to zero.
    weight = ((scene.ii < 2) & (scene.jj < 2)).double()[:, None].expand(-1, 2)
    with caplog.at_level(logging.WARNING, logger="vo_node.ba.solver"):
        result = _run(scene, poses, patches, weight=weight, config=config)
    assert result.initial_cost > 0
    assert result.cholesky_failed
    assert result.iterations == 0
    torch.testing.assert_close(result.poses_cw, poses, atol=0, rtol=0)


def test_bound_depths_reset_to_frame_median():
    scene = _make_scene()
    config = replace(EXACT, iterations=1, reset_bound_depths=True)
    patches = scene.patches.clone()
    per_frame = len(patches) // len(scene.poses)
    stuck = torch.tensor([3, 2 * per_frame + 5])  # one patch of frame 0, one of frame 2
    patches[stuck, 2] = config.min_inverse_depth
    # Without measurements a stuck patch gets a zero step, so only the reset can move it.
    weight = torch.ones_like(scene.target)
    weight[torch.isin(scene.kk, stuck)] = 0.0
    result = _run(scene, scene.poses, patches, weight=weight, config=config)
    for patch in stuck.tolist():
        frame = patch // per_frame
        others = torch.arange(frame * per_frame, (frame + 1) * per_frame)
        others = others[others != patch]
        expected = scene.patches[others, 2, 1, 1].median()
        torch.testing.assert_close(result.patches[patch, 2], expected.expand(PATCH, PATCH))
    untouched = torch.ones(len(patches), dtype=torch.bool)
    untouched[stuck] = False
    torch.testing.assert_close(
        result.patches[untouched, 2], scene.patches[untouched, 2], atol=1e-9, rtol=0
    )


def test_bound_depths_stay_without_reset():
    scene = _make_scene()
    config = replace(EXACT, iterations=1)
    patches = scene.patches.clone()
    patches[3, 2] = config.min_inverse_depth
    weight = torch.ones_like(scene.target)
    weight[scene.kk == 3] = 0.0
    result = _run(scene, scene.poses, patches, weight=weight, config=config)
    assert float(result.patches[3, 2, 1, 1]) == pytest.approx(config.min_inverse_depth)


def test_training_defaults_take_plain_steps():
    from vo_node.train.config import TrainBAConfig

    for config in (BAConfig(), TrainBAConfig()):
        assert not config.trust_region
        assert not config.reset_bound_depths


def test_trust_region_reprojects_accepted_trial_once(monkeypatch):
    """An accepted trial's linearisation serves the next iteration and the covariance. With three
    accepted steps and the covariance, the solver reprojects once per trial plus once at the start."""
    import vo_node.ba.solver as solver

    scene = _make_scene()
    poses, patches = _perturb(scene)
    calls = []

    def counting_reproject(*args, **kwargs):
        calls.append(args[-1] if len(args) > 6 else kwargs.get("with_jacobians", False))
        return reproject(*args, **kwargs)

    monkeypatch.setattr(solver, "reproject", counting_reproject)
    config = BAConfig(iterations=3, trust_region=True)
    result = _run(scene, poses, patches, config=config, compute_covariance=True)
    assert result.iterations == 3
    assert len(calls) == 4
    assert result.pose_covariance is not None

    # The same estimate and covariance as a fresh linearisation at the returned estimate.
    monkeypatch.setattr(solver, "reproject", reproject)
    fresh = _run(
        scene, result.poses_cw, result.patches, config=replace(config, iterations=0),
        compute_covariance=True,
    )
    assert torch.equal(fresh.pose_covariance, result.pose_covariance)
    assert fresh.final_cost == result.final_cost


def test_trial_cost_behind_camera_keeps_value():
    """A residual that a trial moves behind the camera keeps its current squared value: it can
    neither lower the trial cost nor veto the step with the max_residual cap."""
    import vo_node.ba.solver as solver

    scene = _make_scene(num_poses=3, per_frame=2)
    config = BAConfig(trust_region=True)
    index = solver._index_edges(scene.ii, scene.jj, scene.kk, 1, 3, None, scene.patches)
    problem = solver._Problem(
        INTRINSICS, scene.target, torch.ones_like(scene.target), scene.ii, scene.jj, scene.kk,
        index, config, (HEIGHT, WIDTH),
    )
    count = scene.ii.shape[0]
    current = solver._Linearization(
        residual=torch.full((count, 2), 2.0, dtype=DOUBLE),
        weight=torch.ones(count, 2, dtype=DOUBLE),
    )
    trial_residual = torch.full((count, 2), 1.0, dtype=DOUBLE)
    in_front = torch.ones(count, dtype=torch.bool)
    in_front[0] = False
    trial = solver._Linearization(
        residual=trial_residual, weight=torch.ones(count, 2, dtype=DOUBLE),
        raw_residual=trial_residual, in_front=in_front,
    )
    cost = solver._trial_cost(problem, current, trial)
    # Edge 0 keeps 2^2 per axis, every other edge has 1^2 per axis.
    assert cost == pytest.approx(2 * 4.0 + (count - 1) * 2 * 1.0)
    assert cost < solver._cost(current)


@pytest.mark.parametrize("factor", [0.25, 4.0])
def test_cost_per_weight_ignores_a_common_weight_scale(factor):
    """Scaling every weight scales the cost and the summed weight alike, so the frontend's
    hypothesis score (their ratio) does not change, while the cost per residual does."""
    scene = _make_scene(seed=2)
    poses, patches = _perturb(scene)
    generator = torch.Generator().manual_seed(3)
    target = scene.target + 0.5 * torch.randn(scene.target.shape, generator=generator, dtype=DOUBLE)
    weight = 0.1 + torch.rand(scene.target.shape, generator=generator, dtype=DOUBLE)
    config = replace(EXACT, iterations=2)
    plain = _run(scene, poses, patches, target=target, weight=weight, config=config)
    scaled = _run(scene, poses, patches, target=target, weight=factor * weight, config=config)
    assert plain.final_weight_sum == pytest.approx(float(weight.sum()), rel=1e-12)
    assert scaled.final_weight_sum == pytest.approx(factor * plain.final_weight_sum, rel=1e-12)
    assert scaled.final_cost == pytest.approx(factor * plain.final_cost, rel=1e-6)
    assert scaled.final_cost / scaled.final_weight_sum == pytest.approx(
        plain.final_cost / plain.final_weight_sum, rel=1e-6
    )
    assert scaled.final_cost / scaled.num_valid != pytest.approx(
        plain.final_cost / plain.num_valid, rel=0.1
    )
