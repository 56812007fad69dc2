"""Differentiable Gauss-Newton bundle adjustment over poses and patch inverse depths (DPVO-style).

The problem: every edge ``e`` predicts that patch ``kk[e]`` (from frame ``ii[e]``) appears in frame
``jj[e]`` with its centre at ``target[e]``. The solver minimises

    sum_e  sum_axis  weight[e, axis] * (target[e, axis] - centre_e(poses, inverse_depths)[axis])^2

over the free poses (indices ``first_free_pose <= i < last_free_pose``, left updates
``T <- exp(xi) * T``) and one inverse depth per patch touched by an edge. Each iteration linearises
the residuals, assembles the normal equations blockwise

    [ B   E ] [dxi]   [v]
    [ E^T C ] [dz ] = [w]

(B: 6x6 pose blocks, E: pose-depth columns, C: diagonal depth block), eliminates the depths with
the Schur complement ``S = B - E C^-1 E^T``, solves ``S`` by Cholesky and back-substitutes
``dz = C^-1 (w - E^T dxi)``.

With ``config.trust_region`` each iteration becomes a Levenberg-Marquardt step: ``B`` and ``C``
get ``lambda * diag`` added before the elimination, a step is kept only if it lowers the cost, and
``lambda`` shrinks after a kept step and grows after a rejected one. With
``config.reset_bound_depths`` an inverse depth that reaches a bound moves to the median of its
source frame. Both are inference options; training takes every Gauss-Newton step as DPVO does.

Everything is plain torch, so autograd differentiates the result with respect to ``target`` and
``weight`` (training), and the same code runs under ``torch.no_grad()`` at inference. The
pose-depth block is stored densely as ``(6 * free poses, touched patches)``: with about 10-30 free
poses and a few thousand patches this is well under a million entries. Poses outside the free range
are never materialised in the system.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from vo_node.config import BAConfig
from vo_node.geometry import se3
from vo_node.geometry.projection import reproject

logger = logging.getLogger(__name__)

POSE_DOF = 6
"""Tangent dimension of a pose ``[v, w]``."""
CONVERGED_COST_CHANGE = 1e-6
"""A rejected step that changes the cost by less than this fraction ends the iteration's trials:
the estimate has converged to the resolution of a float32 cost."""
MIN_MARQUARDT_DAMPING = 1e-8
"""Lower bound of the adaptive Levenberg-Marquardt damping, so it can grow back quickly."""


@dataclass
class BAResult:
    """Output of :func:`bundle_adjust`, in the dtype the solver worked in."""

    poses_cw: torch.Tensor
    """(N, 7) updated world-to-camera poses; poses outside the free range are returned unchanged."""
    patches: torch.Tensor
    """(M, 3, P, P) patches with updated inverse depths (pixel coordinates unchanged)."""
    pose_covariance: torch.Tensor | None
    """(6, 6) marginal covariance of the newest free pose, or None when not requested or singular.

    Tangent coordinates ``[v, w]`` of a left update, at the returned estimate. It is in scene units
    (monocular scale) and radians, and it is a covariance only when ``weight`` contains inverse
    variances (1 / pixel^2)."""
    num_valid: int
    """Residuals (edges) that passed the masks at the returned estimate."""
    initial_cost: float
    """Weighted cost ``sum weight * residual^2`` over valid residuals before the first step."""
    final_cost: float
    """The same cost at the returned estimate."""
    cholesky_failed: bool
    """True when a Cholesky factorisation failed, so that iteration's step was zero and the solver
    stopped early."""
    iterations: int
    """Steps that were applied (with ``trust_region``, the accepted ones)."""
    final_weight_sum: float = 0.0
    """Sum of the weights of the valid residuals at the returned estimate (both axes)."""


@dataclass
class _EdgeIndex:
    """Edge-to-variable maps, fixed for the whole solve."""

    free_i: torch.Tensor
    """(E,) row of pose ``ii`` among the free poses, or ``num_free`` (a discarded slot) if fixed."""
    free_j: torch.Tensor
    """(E,) the same for pose ``jj``."""
    depth_of_edge: torch.Tensor
    """(E,) column of the edge's patch among the depth variables."""
    depth_patches: torch.Tensor
    """(K,) patch index of each depth variable (the patches touched by edges)."""
    depth_is_free: torch.Tensor
    """(K,) bool, False for patches held fixed by ``fixed_patches``."""
    depth_frame: torch.Tensor
    """(K,) source frame of each depth variable (``ii`` of its edges)."""
    num_free: int


@dataclass
class _Linearization:
    residual: torch.Tensor
    """(E, 2) ``target - centre``, zero where masked."""
    weight: torch.Tensor
    """(E, 2) weight, zero where masked."""
    ji: torch.Tensor | None = None
    jj: torch.Tensor | None = None
    jz: torch.Tensor | None = None
    raw_residual: torch.Tensor | None = None
    """(E, 2) ``target - centre`` before masking."""
    in_front: torch.Tensor | None = None
    """(E,) bool, the centre's homogeneous depth is above ``config.min_depth``."""


@dataclass
class _NormalEquations:
    """Blocks of the undamped normal equations ``[B E; E^T C] [dxi; dz] = [v; w]``."""

    pose_pose: torch.Tensor
    """(6F, 6F) ``B``."""
    pose_depth: torch.Tensor
    """(6F, K) ``E``."""
    depth_diagonal: torch.Tensor
    """(K,) ``C``."""
    pose_gradient: torch.Tensor
    """(6F,) ``v``."""
    depth_gradient: torch.Tensor
    """(K,) ``w``."""


@dataclass
class _ReducedSystem:
    schur: torch.Tensor
    """(6F, 6F) undamped ``S = B - E C^-1 E^T``."""
    rhs: torch.Tensor
    """(6F,) ``v - E C^-1 w``."""
    pose_depth: torch.Tensor
    """(6F, K) pose-depth block ``E``."""
    depth_inverse: torch.Tensor
    """(K,) ``1 / (C + depth_damping)``, zero for fixed or unconstrained depths."""
    depth_gradient: torch.Tensor
    """(K,) ``w``."""


@dataclass
class _Problem:
    """The data that stay fixed during one solve: measurements, edges and settings."""

    intrinsics: torch.Tensor
    target: torch.Tensor
    weight: torch.Tensor
    ii: torch.Tensor
    jj: torch.Tensor
    kk: torch.Tensor
    index: _EdgeIndex
    config: BAConfig
    image_size: tuple[int, int]

    @property
    def rounding_cost(self) -> float:
        """Cost that rounding of the pixel coordinates alone produces: every residual off by
        one unit in the last place of the largest target coordinate."""
        eps = torch.finfo(self.target.dtype).eps
        largest = float(self.target.detach().abs().max()) if self.target.numel() else 0.0
        return float(self.weight.detach().sum()) * (largest * eps) ** 2

    def linearize(
        self, poses_cw: torch.Tensor, patches: torch.Tensor, with_jacobians: bool = True
    ) -> _Linearization:
        return _linearize(
            poses_cw, patches, self.intrinsics, self.target, self.weight, self.ii, self.jj,
            self.kk, self.index, self.config, self.image_size, with_jacobians,
        )


@dataclass
class _StepOutcome:
    """Result of one iteration's step computation."""

    poses_cw: torch.Tensor
    patches: torch.Tensor
    accepted: bool
    """False when the estimate stays as it was (no cost-lowering step, or a failed solve)."""
    cholesky_failed: bool = False
    system: _ReducedSystem | None = None
    """The system whose factorisation failed, for the warning."""
    marquardt: float = 0.0
    """Marquardt damping to start the next iteration with."""
    linearization: "_Linearization | None" = None
    """Linearisation at the accepted estimate when the step already computed it, else None."""


def bundle_adjust(
    poses_cw: torch.Tensor,
    patches: torch.Tensor,
    intrinsics: torch.Tensor,
    target: torch.Tensor,
    weight: torch.Tensor,
    ii: torch.Tensor,
    jj: torch.Tensor,
    kk: torch.Tensor,
    *,
    first_free_pose: int,
    config: BAConfig,
    image_size: tuple[int, int],
    last_free_pose: int | None = None,
    fixed_patches: torch.Tensor | None = None,
    compute_covariance: bool = False,
) -> BAResult:
    """Run ``config.iterations`` Gauss-Newton (or Levenberg-Marquardt) steps on poses and depths.

    Args:
        poses_cw: (N, 7) world-to-camera poses ``T_cam_world``.
        patches: (M, 3, P, P) patches ``(u, v, inverse_depth)``; only the centre pixel's inverse
            depth is read, and the update writes it to all ``P * P`` pixels.
        intrinsics: (4,) ``[fx, fy, cx, cy]`` in the pixels of ``target`` (1/4 resolution in the
            engine).
        target: (E, 2) predicted centre of patch ``kk`` in frame ``jj``, pixels.
        weight: (E, 2) per-axis confidence, used as a diagonal information matrix (1 / pixel^2).
        ii, jj, kk: (E,) long source frame, target frame and patch of each edge.
        first_free_pose: poses with a smaller index stay fixed.
        config: damping, masking thresholds, inverse-depth bounds and iteration count.
        image_size: ``(height, width)`` in the pixels of ``intrinsics``, for the image-margin mask.
        last_free_pose: poses with this index or above stay fixed; None means ``N``.
        fixed_patches: optional (M,) bool mask of patches whose inverse depth stays fixed.
        compute_covariance: also return the covariance of the newest free pose.

    Returns:
        A :class:`BAResult`. The solver never raises on a singular system: a failed Cholesky
        factorisation logs a warning, applies a zero step, stops iterating and sets
        ``cholesky_failed``. With ``trust_region`` a failed factorisation is retried with more
        damping, and it counts as a failure only when every trial fails. Iterating also stops
        when no trial lowers the cost, which is convergence rather than failure.

    A residual is masked out when the homogeneous depth of the transformed centre is at most
    ``config.min_depth``, its norm is at least ``config.max_residual``, or the projected centre
    lies more than ``config.image_margin`` outside ``[0, width] x [0, height]``.
    """
    num_poses = poses_cw.shape[0] if poses_cw.dim() == 2 else 0
    last_free_pose = num_poses if last_free_pose is None else last_free_pose
    _check_inputs(poses_cw, patches, intrinsics, target, weight, ii, jj, kk, fixed_patches)
    _check_ranges(num_poses, first_free_pose, last_free_pose, image_size, config)

    dtype = torch.float64 if poses_cw.dtype == torch.float64 else torch.float32
    poses_cw, patches, intrinsics, target, weight = (
        tensor.to(dtype) for tensor in (poses_cw, patches, intrinsics, target, weight)
    )
    if ii.numel() == 0:
        return BAResult(poses_cw, patches, None, 0, 0.0, 0.0, False, 0)
    _check_edge_indices(ii, jj, kk, num_poses, patches.shape[0])

    index = _index_edges(ii, jj, kk, first_free_pose, last_free_pose, fixed_patches, patches)
    problem = _Problem(intrinsics, target, weight, ii, jj, kk, index, config, image_size)
    initial_cost = None
    failed = False
    steps = 0
    marquardt = config.lm_damping
    linearization = None  # at (poses_cw, patches) with Jacobians, when already computed
    for iteration in range(config.iterations):
        if linearization is None:
            linearization = problem.linearize(poses_cw, patches)
        cost = _cost(linearization)
        if initial_cost is None:
            initial_cost = cost
        if config.trust_region:
            # A trial that will be linearised again next (another iteration or the covariance)
            # computes its Jacobians at once, so an accepted trial is not reprojected twice.
            reuse = iteration + 1 < config.iterations or compute_covariance
            outcome = _levenberg_marquardt_step(problem, poses_cw, patches, linearization, cost,
                                                marquardt, first_free_pose, reuse)
            marquardt = outcome.marquardt
        else:
            outcome = _gauss_newton_step(problem, poses_cw, patches, linearization, first_free_pose)
        if outcome.cholesky_failed:
            _warn_cholesky_failure(outcome.system, iteration)
            failed = True
            break
        if not outcome.accepted:
            break
        poses_cw, patches = outcome.poses_cw, outcome.patches
        linearization = outcome.linearization
        if config.reset_bound_depths:
            reset = _reset_bound_depths(patches, index, config)
            linearization = linearization if reset is patches else None
            patches = reset
        steps += 1

    needs_jacobians = compute_covariance and index.num_free > 0
    final = linearization
    if final is None or (needs_jacobians and final.ji is None):
        final = problem.linearize(poses_cw, patches, with_jacobians=needs_jacobians)
    final_cost = _cost(final)
    if initial_cost is None:
        initial_cost = final_cost
    covariance = None
    if compute_covariance:
        covariance = _newest_pose_covariance(final, index, config)

    num_valid = int((final.weight > 0).any(dim=-1).sum().item())
    return BAResult(
        poses_cw, patches, covariance, num_valid, initial_cost, final_cost, failed, steps,
        final_weight_sum=float(final.weight.sum().item()),
    )


# ---------------------------------------------------------------------------------------------
# Input checks
# ---------------------------------------------------------------------------------------------


def _check_inputs(poses_cw, patches, intrinsics, target, weight, ii, jj, kk, fixed_patches):
    if poses_cw.dim() != 2 or poses_cw.shape[1] != 7:
        raise ValueError(f"poses_cw must have shape (N, 7), got {tuple(poses_cw.shape)}")
    if patches.dim() != 4 or patches.shape[1] != 3 or patches.shape[2] != patches.shape[3]:
        raise ValueError(f"patches must have shape (M, 3, P, P), got {tuple(patches.shape)}")
    if intrinsics.shape != (4,):
        raise ValueError(f"intrinsics must have shape (4,), got {tuple(intrinsics.shape)}")
    num_edges = ii.shape[0] if ii.dim() == 1 else -1
    for name, indices in (("ii", ii), ("jj", jj), ("kk", kk)):
        if indices.dim() != 1 or indices.shape[0] != num_edges:
            raise ValueError(f"{name} must have shape (E,) like ii, got {tuple(indices.shape)}")
        if indices.dtype not in (torch.int64, torch.int32):
            raise ValueError(f"{name} must be an integer tensor, got {indices.dtype}")
    for name, values in (("target", target), ("weight", weight)):
        if values.shape != (num_edges, 2):
            raise ValueError(
                f"{name} must have shape (E, 2) = ({num_edges}, 2), got {tuple(values.shape)}"
            )
    if fixed_patches is not None and (
        fixed_patches.shape != (patches.shape[0],) or fixed_patches.dtype != torch.bool
    ):
        raise ValueError(
            f"fixed_patches must be a bool tensor of shape (M,) = ({patches.shape[0]},), "
            f"got {fixed_patches.dtype} {tuple(fixed_patches.shape)}"
        )


def _check_ranges(num_poses, first_free_pose, last_free_pose, image_size, config):
    if not 0 <= first_free_pose <= last_free_pose <= num_poses:
        raise ValueError(
            "free pose range must satisfy 0 <= first_free_pose <= last_free_pose <= N; got "
            f"first_free_pose={first_free_pose}, last_free_pose={last_free_pose}, N={num_poses}"
        )
    if len(image_size) != 2 or min(image_size) <= 0:
        raise ValueError(
            f"image_size must be (height, width) with positive sizes, got {image_size}"
        )
    if config.iterations < 0:
        raise ValueError(f"config.iterations must be non-negative, got {config.iterations}")


def _check_edge_indices(ii, jj, kk, num_poses, num_patches):
    """Check index ranges with a single device-to-host transfer."""
    bounds = torch.stack([ii.min(), jj.min(), kk.min(), ii.max(), jj.max(), kk.max()]).tolist()
    if min(bounds[:3]) < 0 or max(bounds[3], bounds[4]) >= num_poses or bounds[5] >= num_patches:
        raise ValueError(
            f"edge indices out of range: ii, jj must lie in [0, {num_poses}) and kk in "
            f"[0, {num_patches}); got ii in [{bounds[0]}, {bounds[3]}], jj in "
            f"[{bounds[1]}, {bounds[4]}], kk in [{bounds[2]}, {bounds[5]}]"
        )


# ---------------------------------------------------------------------------------------------
# Linearisation and the reduced system
# ---------------------------------------------------------------------------------------------


def _index_edges(ii, jj, kk, first_free, last_free, fixed_patches, patches) -> _EdgeIndex:
    num_free = last_free - first_free

    def free_row(frames: torch.Tensor) -> torch.Tensor:
        row = frames - first_free
        is_free = (frames >= first_free) & (frames < last_free)
        return torch.where(is_free, row, torch.full_like(row, num_free))

    depth_patches, depth_of_edge = torch.unique(kk, return_inverse=True)
    if fixed_patches is None:
        depth_is_free = torch.ones_like(depth_patches, dtype=torch.bool)
    else:
        depth_is_free = ~fixed_patches.to(kk.device)[depth_patches]
    depth_frame = torch.zeros_like(depth_patches).scatter(0, depth_of_edge, ii.to(kk.dtype))
    return _EdgeIndex(
        free_row(ii), free_row(jj), depth_of_edge, depth_patches, depth_is_free, depth_frame,
        num_free,
    )


def _linearize(
    poses_cw, patches, intrinsics, target, weight, ii, jj, kk, index, config, image_size,
    with_jacobians: bool = True,
) -> _Linearization:
    """Reproject the patch centres, mask residuals and (optionally) return the Jacobians."""
    centre = patches.shape[-1] // 2
    centres = patches[:, :, centre : centre + 1, centre : centre + 1]  # (M, 3, 1, 1)
    projected = reproject(
        poses_cw, centres, intrinsics, ii, jj, kk, with_jacobians, min_depth=config.min_depth
    )
    coords = projected.coords[:, :, 0, 0]
    residual = target - coords

    height, width = image_size
    margin = config.image_margin
    inside = (
        (coords[:, 0] > -margin)
        & (coords[:, 0] < width + margin)
        & (coords[:, 1] > -margin)
        & (coords[:, 1] < height + margin)
    )
    small = (residual.detach() ** 2).sum(dim=-1) < config.max_residual**2
    valid = projected.valid[:, 0, 0] & inside & small

    raw_residual = residual
    in_front = projected.valid[:, 0, 0]
    residual = torch.where(valid[:, None], residual, torch.zeros_like(residual))
    masked_weight = torch.where(valid[:, None], weight, torch.zeros_like(weight))
    if not with_jacobians:
        return _Linearization(residual, masked_weight, raw_residual=raw_residual, in_front=in_front)

    depth_free_of_edge = index.depth_is_free[index.depth_of_edge]
    jz = projected.Jz
    jz = torch.where(depth_free_of_edge[:, None, None], jz, torch.zeros_like(jz))
    return _Linearization(
        residual, masked_weight, projected.Ji, projected.Jj, jz, raw_residual, in_front
    )


def _cost(linearization: _Linearization) -> float:
    return float((linearization.weight * linearization.residual**2).sum().item())


def _reduce(linearization: _Linearization, index: _EdgeIndex, config: BAConfig) -> _ReducedSystem:
    """Assemble the normal equations blockwise and eliminate the inverse depths."""
    return _eliminate(_assemble(linearization, index), index, config, marquardt=0.0)


def _assemble(linearization: _Linearization, index: _EdgeIndex) -> _NormalEquations:
    """Accumulate the blocks ``B``, ``E``, ``C``, ``v`` and ``w`` over the edges."""
    num_free = index.num_free
    slots = num_free + 1  # the last slot collects fixed poses and is dropped
    num_depths = index.depth_patches.shape[0]
    residual, weight = linearization.residual, linearization.weight
    ji, jj, jz = linearization.ji, linearization.jj, linearization.jz
    dtype, device = residual.dtype, residual.device

    weighted_ji = weight[:, :, None] * ji  # (E, 2, 6)
    weighted_jj = weight[:, :, None] * jj
    weighted_jz = weight * jz[:, :, 0]  # (E, 2)

    # Pose-pose blocks B: (slots * slots, 6, 6), one flat block index row * slots + column.
    row_i, row_j = index.free_i, index.free_j
    block_ii = _outer_sum(ji, weighted_ji)
    block_ij = _outer_sum(ji, weighted_jj)
    block_jj = _outer_sum(jj, weighted_jj)
    blocks = torch.zeros(slots * slots, POSE_DOF, POSE_DOF, dtype=dtype, device=device)
    blocks = blocks.index_add(0, row_i * slots + row_i, block_ii)
    blocks = blocks.index_add(0, row_i * slots + row_j, block_ij)
    blocks = blocks.index_add(0, row_j * slots + row_i, block_ij.transpose(1, 2))
    blocks = blocks.index_add(0, row_j * slots + row_j, block_jj)
    pose_pose = blocks.view(slots, slots, POSE_DOF, POSE_DOF).permute(0, 2, 1, 3)
    pose_pose = pose_pose.reshape(slots * POSE_DOF, slots * POSE_DOF)
    size = num_free * POSE_DOF
    pose_pose = pose_pose[:size, :size]

    # Pose-depth block E: one 6-vector per (pose, patch) pair, laid out as (6F, K).
    column = index.depth_of_edge
    pair_i = _sum_axes(ji * weighted_jz[:, :, None])  # (E, 6) = Ji^T W Jz
    pair_j = _sum_axes(jj * weighted_jz[:, :, None])
    pairs = torch.zeros(slots * num_depths, POSE_DOF, dtype=dtype, device=device)
    pairs = pairs.index_add(0, row_i * num_depths + column, pair_i)
    pairs = pairs.index_add(0, row_j * num_depths + column, pair_j)
    pose_depth = pairs.view(slots, num_depths, POSE_DOF).permute(0, 2, 1)
    pose_depth = pose_depth.reshape(slots * POSE_DOF, num_depths)[:size]

    # Depth diagonal C and the gradients v (poses) and w (depths).
    depth_diagonal = torch.zeros(num_depths, dtype=dtype, device=device)
    depth_diagonal = depth_diagonal.index_add(0, column, (weighted_jz * jz[:, :, 0]).sum(dim=1))
    depth_gradient = torch.zeros(num_depths, dtype=dtype, device=device)
    depth_gradient = depth_gradient.index_add(0, column, (weighted_jz * residual).sum(dim=1))
    gradient_i = _sum_axes(weighted_ji * residual[:, :, None])  # (E, 6) = Ji^T W r
    gradient_j = _sum_axes(weighted_jj * residual[:, :, None])
    pose_gradient = torch.zeros(slots, POSE_DOF, dtype=dtype, device=device)
    pose_gradient = pose_gradient.index_add(0, row_i, gradient_i).index_add(0, row_j, gradient_j)
    pose_gradient = pose_gradient.reshape(-1)[:size]
    return _NormalEquations(pose_pose, pose_depth, depth_diagonal, pose_gradient, depth_gradient)


def _sum_axes(terms: torch.Tensor) -> torch.Tensor:
    """Return the sum ``(E, 6)`` of the two pixel axes of ``terms`` ``(E, 2, 6)``.

    Equal to ``terms.sum(dim=1)`` bit for bit, and about a third of its time for 3,648 edges on
    two threads, because torch 2.13 reduces a short middle axis slowly
    (``scripts/profile_kernels.py --steps overhead``).
    """
    return terms[:, 0] + terms[:, 1]


def _outer_sum(left: torch.Tensor, right: torch.Tensor) -> torch.Tensor:
    """Return ``left^T @ right`` ``(E, 6, 6)`` for ``(E, 2, 6)`` Jacobians.

    Elementwise products take about 0.6 of the time of ``bmm`` for 6528 edges on one CPU
    thread (torch 2.13), because ``bmm`` handles each tiny 6x2 by 2x6 product separately.
    """
    return left[:, 0, :, None] * right[:, 0, None, :] + left[:, 1, :, None] * right[:, 1, None, :]


def _eliminate(
    normal: _NormalEquations, index: _EdgeIndex, config: BAConfig, marquardt: float
) -> _ReducedSystem:
    """Eliminate the inverse depths with the Schur complement.

    ``marquardt`` adds ``marquardt * diag`` to ``B`` and ``C`` first (Levenberg-Marquardt); 0
    gives the plain Gauss-Newton system. ``config.depth_damping`` is always added to ``C``.
    """
    pose_pose, depth_diagonal = normal.pose_pose, normal.depth_diagonal
    if marquardt > 0.0:
        pose_pose = pose_pose + torch.diag_embed(marquardt * torch.diagonal(pose_pose))
        depth_diagonal = depth_diagonal * (1.0 + marquardt)
    depth_inverse = _safe_reciprocal(depth_diagonal + config.depth_damping, index.depth_is_free)
    scaled = normal.pose_depth * depth_inverse  # E C^-1, (6F, K)
    schur = pose_pose - scaled @ normal.pose_depth.T
    rhs = normal.pose_gradient - scaled @ normal.depth_gradient
    return _ReducedSystem(schur, rhs, normal.pose_depth, depth_inverse, normal.depth_gradient)


def _safe_reciprocal(values: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """Return ``1 / values`` where ``keep`` and ``values > 0``, else 0, with finite gradients."""
    usable = keep & (values > 0)
    safe = torch.where(usable, values, torch.ones_like(values))
    return torch.where(usable, 1.0 / safe, torch.zeros_like(values))


# ---------------------------------------------------------------------------------------------
# Solve and update
# ---------------------------------------------------------------------------------------------


def _gauss_newton_step(
    problem: _Problem,
    poses_cw: torch.Tensor,
    patches: torch.Tensor,
    linearization: _Linearization,
    first_free: int,
) -> _StepOutcome:
    """Take the full Gauss-Newton step (the DPVO and training behaviour)."""
    config = problem.config
    system = _reduce(linearization, problem.index, config)
    pose_step = _solve_poses(system, config.pose_damping, config.pose_damping_relative)
    if pose_step is None:
        return _StepOutcome(poses_cw, patches, False, cholesky_failed=True, system=system)
    depth_step = _back_substitute(system, pose_step)
    poses_cw, patches = _apply_step(
        poses_cw, patches, pose_step, depth_step, problem.index, first_free, config
    )
    return _StepOutcome(poses_cw, patches, True)


def _levenberg_marquardt_step(
    problem: _Problem,
    poses_cw: torch.Tensor,
    patches: torch.Tensor,
    linearization: _Linearization,
    cost: float,
    marquardt: float,
    first_free: int,
    with_jacobians: bool = False,
) -> _StepOutcome:
    """Try steps with growing Marquardt damping until one lowers the cost.

    An accepted step divides the damping by ``lm_damping_factor`` for the next iteration. When
    ``lm_max_trials`` steps all fail, the estimate stays and ``accepted`` is False. A failed
    Cholesky factorisation counts as a failed trial, because more damping can repair it. It is
    reported as a failure only when every trial fails that way. With ``with_jacobians`` each trial
    is linearised with its Jacobians, and an accepted step returns that linearisation.
    """
    config = problem.config
    if cost <= problem.rounding_cost:
        return _StepOutcome(poses_cw, patches, False, marquardt=marquardt)  # converged
    normal = _assemble(linearization, problem.index)
    factor = config.lm_damping_factor
    system = None
    factorized = False
    for _ in range(config.lm_max_trials):
        system = _eliminate(normal, problem.index, config, marquardt)
        pose_step = _solve_poses(system, config.pose_damping, config.pose_damping_relative)
        if pose_step is not None:
            factorized = True
            depth_step = _back_substitute(system, pose_step)
            trial_poses, trial_patches = _apply_step(
                poses_cw, patches, pose_step, depth_step, problem.index, first_free, config
            )
            trial = problem.linearize(trial_poses, trial_patches, with_jacobians)
            trial_cost = _trial_cost(problem, linearization, trial)
            if trial_cost < cost:
                next_damping = max(marquardt / factor, MIN_MARQUARDT_DAMPING)
                return _StepOutcome(
                    trial_poses, trial_patches, True, marquardt=next_damping, linearization=trial
                )
            if abs(trial_cost - cost) <= CONVERGED_COST_CHANGE * cost:
                break  # converged: more damping only shortens a step that changes nothing
        marquardt *= factor
    return _StepOutcome(
        poses_cw, patches, False, cholesky_failed=not factorized, system=system,
        marquardt=marquardt,
    )


def _trial_cost(problem: _Problem, current: _Linearization, trial: _Linearization) -> float:
    """Cost of a trial estimate (its linearisation ``trial``) over the residuals that are valid
    at the current estimate.

    Each residual counts with its squared value capped at ``max_residual**2`` per axis. A
    residual whose centre the trial moves behind the camera (or to a non-finite value) keeps its
    value at the current estimate. So no step can lower the cost by invalidating measurements,
    and a few such residuals cannot veto a step either. Charging them the cap made every step
    look worse than none when two of 2800 patches crossed the camera plane, and the newest pose
    then stopped moving for dozens of frames (seen on TartanAir hospital). A residual that the
    trial moves past the image margin keeps its actual value for the same reason (seen on EuRoC
    MH_05).
    """
    counted = current.weight > 0  # (E, 2)
    cap = problem.config.max_residual**2
    usable = trial.in_front[:, None] & torch.isfinite(trial.raw_residual)
    squared = torch.where(
        usable, trial.raw_residual.square().clamp(max=cap), current.residual.square()
    )
    return float((current.weight * torch.where(counted, squared, 0.0)).sum().item())


def _reset_bound_depths(
    patches: torch.Tensor, index: _EdgeIndex, config: BAConfig
) -> torch.Tensor:
    """Move free inverse depths that sit on a bound to their source frame's median.

    The median is taken over the frame's patches in the problem that are not on a bound, or over
    all such patches when none of the frame's is left.
    """
    centre = patches.shape[-1] // 2
    values = patches[index.depth_patches, 2, centre, centre]  # (K,)
    on_bound = (values <= config.min_inverse_depth) | (values >= config.max_inverse_depth)
    to_reset = on_bound & index.depth_is_free
    if not bool(to_reset.any()) or bool(on_bound.all()):
        return patches
    fallback = values[~on_bound].median()
    reset = values.clone()
    for frame in index.depth_frame[to_reset].unique().tolist():
        same_frame = index.depth_frame == frame
        inside = same_frame & ~on_bound
        reference = values[inside].median() if bool(inside.any()) else fallback
        reset = torch.where(same_frame & to_reset, reference, reset)
    depth_plane = reset[:, None, None].expand(-1, *patches.shape[-2:])
    patches = patches.clone()
    patches[index.depth_patches, 2] = depth_plane
    return patches


def _damp(schur: torch.Tensor, constant: float, relative: float) -> torch.Tensor:
    diagonal = torch.diagonal(schur)
    return schur + torch.diag_embed(constant + relative * diagonal)


def _solve_poses(
    system: _ReducedSystem, constant: float, relative: float
) -> torch.Tensor | None:
    """Return the (F, 6) pose step, or None when the damped Schur complement is not factorable."""
    size = system.rhs.shape[0]
    if size == 0:
        return system.rhs.view(0, POSE_DOF)
    damped = _damp(system.schur, constant, relative)
    factor, info = torch.linalg.cholesky_ex(damped)
    # One host transfer decides success: a non-finite system can factor "successfully" into NaNs.
    ok = (info == 0) & torch.isfinite(factor).all() & torch.isfinite(system.rhs).all()
    if not bool(ok.item()):
        return None
    step = torch.cholesky_solve(system.rhs[:, None], factor)
    return step.view(-1, POSE_DOF)


def _warn_cholesky_failure(system: _ReducedSystem, iteration: int) -> None:
    if not torch.isfinite(system.schur).all() or not torch.isfinite(system.rhs).all():
        reason = "the reduced system contains NaN or infinite values"
    else:
        eigenvalues = torch.linalg.eigvalsh(system.schur.detach())
        reason = (
            "the damped reduced pose system is not positive definite (smallest undamped "
            f"eigenvalue {eigenvalues[0].item():.3e}); raise ba.pose_damping or check the weights"
        )
    logger.warning(
        "Bundle adjustment Cholesky failed at iteration %d: %s. Applying a zero step and stopping.",
        iteration,
        reason,
    )


def _back_substitute(system: _ReducedSystem, pose_step: torch.Tensor) -> torch.Tensor:
    """Return the (K,) inverse-depth step ``C^-1 (w - E^T dxi)``."""
    coupling = system.pose_depth.T @ pose_step.reshape(-1)
    return system.depth_inverse * (system.depth_gradient - coupling)


def _apply_step(poses_cw, patches, pose_step, depth_step, index, first_free, config):
    """Retract the free poses on the left and add the clamped inverse-depth step."""
    last_free = first_free + index.num_free
    moved = se3.retract(poses_cw[first_free:last_free], pose_step)
    poses_cw = torch.cat([poses_cw[:first_free], moved, poses_cw[last_free:]], dim=0)

    num_patches = patches.shape[0]
    centre = patches.shape[-1] // 2
    inverse_depth = patches[:, 2, centre, centre]
    free_depth = index.depth_patches[index.depth_is_free]
    # Fixed depths have a zero step because their C^-1 entry is zero.
    step = torch.zeros_like(inverse_depth).index_add(0, index.depth_patches, depth_step)
    updated = torch.zeros(num_patches, dtype=torch.bool, device=patches.device)
    updated[free_depth] = True
    clamped = (inverse_depth + step).clamp(config.min_inverse_depth, config.max_inverse_depth)
    inverse_depth = torch.where(updated, clamped, inverse_depth)
    depth_plane = inverse_depth[:, None, None, None].expand(num_patches, 1, *patches.shape[-2:])
    patches = torch.cat([patches[:, :2], depth_plane], dim=1)
    return poses_cw, patches


# ---------------------------------------------------------------------------------------------
# Covariance
# ---------------------------------------------------------------------------------------------


def _newest_pose_covariance(
    linearization: _Linearization, index: _EdgeIndex, config: BAConfig
) -> torch.Tensor | None:
    """Return the (6, 6) block of ``S^-1`` for the newest free pose, or None if ``S`` is singular.

    ``S`` is the reduced system at the returned estimate with the depth damping of ``config`` and,
    of the pose damping, only the relative part ``config.pose_damping_relative * diag(S)``. A
    direction the measurements do not constrain (the monocular scale when fewer than two poses
    are fixed) therefore shows up as a large but finite variance of order
    ``1 / (pose_damping_relative * diag(S))``.
    """
    if index.num_free == 0:
        logger.warning("Pose covariance requested but no pose is free; returning None.")
        return None
    system = _reduce(linearization, index, config)
    damped = _damp(system.schur, 0.0, config.pose_damping_relative)
    factor, info = torch.linalg.cholesky_ex(damped)
    if int(info.item()) != 0 or not bool(torch.isfinite(factor).all().item()):
        logger.warning(
            "Pose covariance unavailable: the reduced pose system is singular (Cholesky failed at "
            "minor %d); returning None.",
            int(info.item()),
        )
        return None
    size = system.rhs.shape[0]
    columns = torch.eye(size, dtype=damped.dtype, device=damped.device)[:, -POSE_DOF:]
    block = torch.cholesky_solve(columns, factor)[-POSE_DOF:]
    return 0.5 * (block + block.T)
