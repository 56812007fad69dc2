"""Flow and pose losses on hand-made tensors, and the stop-gradient of the Sigma weighting."""

import math

import pytest
import torch

from vo_node.config import NetworkConfig
from vo_node.geometry import se3
from vo_node.model.correlation import correlation_dim
from vo_node.model.network import VONetwork
from vo_node.train.losses import edge_mask, flow_loss, pose_loss, umeyama_scale

PATCH = 3


def edges_with_pixel_errors(pixel_errors: list[list[tuple[float, float]]]) -> tuple:
    """Build (coords, coords_gt) whose residual at pixel p of edge e is pixel_errors[e][p]."""
    count = len(pixel_errors)
    coords_gt = torch.arange(count * 2 * PATCH * PATCH, dtype=torch.float64)
    coords_gt = coords_gt.reshape(count, 2, PATCH, PATCH)
    residual = torch.zeros_like(coords_gt)
    for edge, errors in enumerate(pixel_errors):
        for pixel, (dx, dy) in enumerate(errors):
            residual[edge, 0, pixel // PATCH, pixel % PATCH] = dx
            residual[edge, 1, pixel // PATCH, pixel % PATCH] = dy
    return coords_gt + residual, coords_gt


def uniform_error(dx: float, dy: float, best: tuple[float, float] | None = None) -> list:
    errors = [(dx, dy)] * (PATCH * PATCH)
    if best is not None:
        errors = errors[:4] + [best] + errors[5:]
    return errors


def test_flow_loss_takes_min_over_pixels():
    coords, coords_gt = edges_with_pixel_errors(
        [uniform_error(30.0, 40.0, best=(3.0, 4.0)), uniform_error(6.0, 8.0)]
    )
    ii = torch.tensor([0, 0])
    jj = torch.tensor([1, 2])
    valid = torch.tensor([True, True])
    loss = flow_loss(coords, coords_gt, valid, ii, jj, edges="adjacent")
    assert float(loss) == pytest.approx((5.0 + 10.0) / 2)


def test_flow_loss_edge_sets_and_mask():
    coords, coords_gt = edges_with_pixel_errors(
        [uniform_error(1.0, 0.0), uniform_error(2.0, 0.0), uniform_error(4.0, 0.0),
         uniform_error(8.0, 0.0), uniform_error(16.0, 0.0)]
    )
    ii = torch.tensor([0, 0, 0, 0, 3])
    jj = torch.tensor([0, 1, 2, 3, 2])
    valid = torch.tensor([True, True, True, True, False])
    assert edge_mask(ii, jj, "adjacent").tolist() == [False, True, True, False, True]
    adjacent = flow_loss(coords, coords_gt, valid, ii, jj, edges="adjacent")
    assert float(adjacent) == pytest.approx((2.0 + 4.0) / 2)  # the |i-j| = 1 edge is invalid
    every = flow_loss(coords, coords_gt, valid, ii, jj, edges="all")
    assert float(every) == pytest.approx((1.0 + 2.0 + 4.0 + 8.0) / 4)


def test_flow_loss_without_selected_edges_is_zero():
    coords, coords_gt = edges_with_pixel_errors([uniform_error(1.0, 1.0)])
    coords.requires_grad_(True)
    loss = flow_loss(coords, coords_gt, torch.tensor([False]), torch.tensor([0]), torch.tensor([1]))
    assert float(loss.detach()) == 0.0
    loss.backward()
    assert torch.all(coords.grad == 0)


def test_sigma_weights_each_axis_before_the_norm():
    coords, coords_gt = edges_with_pixel_errors([uniform_error(3.0, 4.0)])
    weight = torch.tensor([[2.0, 0.5]], dtype=torch.float64, requires_grad=True)
    loss = flow_loss(coords, coords_gt, torch.tensor([True]), torch.tensor([0]), torch.tensor([1]),
                     weight=weight)
    assert float(loss) == pytest.approx(math.hypot(6.0, 2.0))
    assert _grad_or_zero(loss, weight) == 0.0


def _grad_or_zero(loss: torch.Tensor, tensor: torch.Tensor) -> float:
    if not loss.requires_grad:
        return 0.0
    (gradient,) = torch.autograd.grad(loss, tensor, allow_unused=True)
    return 0.0 if gradient is None else float(gradient.abs().sum())


def test_flow_loss_gradient_matches_finite_differences():
    torch.manual_seed(0)
    coords_gt = torch.randn(4, 2, PATCH, PATCH, dtype=torch.float64)
    coords = (coords_gt + torch.randn_like(coords_gt)).requires_grad_(True)
    weight = torch.rand(4, 2, dtype=torch.float64) + 0.5
    ii = torch.tensor([0, 1, 2, 0])
    jj = torch.tensor([1, 2, 0, 3])
    valid = torch.tensor([True, True, True, False])

    def function(x: torch.Tensor) -> torch.Tensor:
        return flow_loss(x, coords_gt, valid, ii, jj, weight=weight, edges="all")

    assert torch.autograd.gradcheck(function, (coords,))


def random_trajectory(count: int, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    xi = torch.randn(count, 6, generator=generator, dtype=torch.float64) * 0.3
    return se3.exp(xi)


def scaled(poses_wc: torch.Tensor, scale: float) -> torch.Tensor:
    return torch.cat([poses_wc[:, :3] * scale, poses_wc[:, 3:]], dim=1)


def test_umeyama_recovers_scale():
    generator = torch.Generator().manual_seed(1)
    source = torch.randn(20, 3, generator=generator, dtype=torch.float64)
    rotation = se3.quaternion_to_matrix(se3.normalize_quaternion(torch.randn(4, generator=generator,
                                                                             dtype=torch.float64)))
    target = 2.5 * source @ rotation.T + torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
    assert float(umeyama_scale(source, target)) == pytest.approx(2.5, rel=1e-9)


@pytest.mark.parametrize("scale", [0.2, 1.0, 7.0])
def test_pose_loss_zero_for_scaled_truth(scale):
    gt_wc = random_trajectory(6)
    predicted_cw = se3.invert(scaled(gt_wc, scale))
    translation, rotation = pose_loss(predicted_cw, se3.invert(gt_wc))
    assert float(translation) == pytest.approx(0.0, abs=1e-9)
    assert float(rotation) == pytest.approx(0.0, abs=1e-9)


def test_pose_loss_positive_for_wrong_trajectory():
    gt_wc = random_trajectory(6)
    wrong_wc = se3.compose(random_trajectory(6, seed=5), gt_wc)
    translation, rotation = pose_loss(se3.invert(wrong_wc), se3.invert(gt_wc))
    assert float(translation) > 0.01
    assert float(rotation) > 0.01


def test_pose_loss_scale_clamp():
    gt_wc = random_trajectory(5)
    # The aligning scale would be 100; clamped to 10, a residual translation error remains.
    translation, rotation = pose_loss(se3.invert(scaled(gt_wc, 0.01)), se3.invert(gt_wc))
    assert float(translation) > 0.1
    assert float(rotation) == pytest.approx(0.0, abs=1e-9)


def test_pose_loss_gradient_matches_finite_differences():
    gt_cw = se3.invert(random_trajectory(4))
    # With the scale clamped (true alignment scale 100 > 10), the detached scale is constant, so
    # finite differences and autograd see the same function.
    start_wc = se3.compose(random_trajectory(4, seed=3), random_trajectory(4))
    start_cw = se3.invert(scaled(start_wc, 0.01))
    xi = torch.zeros(4, 6, dtype=torch.float64, requires_grad=True)

    def function(delta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return pose_loss(se3.retract(start_cw, delta), gt_cw)

    assert torch.autograd.gradcheck(function, (xi,))


def test_sigma_weight_gets_no_flow_gradient():
    torch.manual_seed(0)
    config = NetworkConfig(matching_dim=16, context_dim=32, encoder_dim=8)
    network = VONetwork(config)
    operator = network.update_operator
    edges, patches = 12, 4
    corr = torch.randn(edges, correlation_dim(config.correlation_radius,
                                              config.correlation_levels, config.patch_size))
    context = torch.randn(patches, config.context_dim)
    ii = torch.tensor([0, 0, 1, 1, 2, 2, 0, 1, 2, 0, 1, 2])
    jj = torch.tensor([1, 2, 0, 2, 0, 1, 1, 2, 0, 2, 0, 1])
    kk = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3, 3, 0, 1, 2])
    coords_gt = torch.randn(edges, 2, PATCH, PATCH) * 3.0
    valid = torch.ones(edges, dtype=torch.bool)

    def head_gradients(weighting: str) -> tuple[torch.Tensor, torch.Tensor | None]:
        network.zero_grad(set_to_none=True)
        _, delta, weight = network.update(torch.zeros(edges, config.context_dim), context, corr,
                                          ii, jj, kk)
        coords = delta[:, :, None, None].expand(-1, -1, PATCH, PATCH)
        loss = flow_loss(coords, coords_gt, valid, ii, jj,
                         weight=weight if weighting == "sigma" else None, edges="all")
        loss.backward()
        weight_grad = operator.weight_head[1].weight.grad
        return operator.delta_head[1].weight.grad.clone(), weight_grad

    delta_sigma, weight_sigma = head_gradients("sigma")
    delta_plain, _ = head_gradients("none")
    assert weight_sigma is None or torch.all(weight_sigma == 0)
    assert delta_sigma.abs().sum() > 0
    assert not torch.allclose(delta_sigma, delta_plain)
