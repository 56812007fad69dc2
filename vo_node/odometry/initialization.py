"""Initial poses and depths for the first joint optimisation of a monocular window.

Starting the bundle adjustment (BA) from identity poses and equal depths works for sideways and
forward motion that is slow, but it falls into local minima in three common cases:

- Rotation with little translation: the BA trades rotation for translation and depth.
- Fast forward motion: from zero translation, the first steps explain the radial flow with a
  sideways translation and never recover.
- Depth reversal. When a camera translates sideways while it turns (an orbit around a point, a
  pan with drift), the image motion of a point is close to ``f * (t * d - w)`` for translation
  ``t``, rotation ``w`` and inverse depth ``d``. A second solution explains that motion almost as
  well: the translation reversed, the rotation changed and every inverse depth mirrored to
  ``c - d``. Only perspective effects separate the two. The mirrored scene has near points far
  and far points near, several degrees of rotation error and a clearly higher BA cost.

:func:`initialize_window` therefore builds two starting points from the measured correspondences.
The rotation start has the rotations that best explain the flow between consecutive frames and no
translation. The two-view start has the relative pose from the essential matrix between the first
frame and the farthest frame that still shares enough patches with it. Each start is refined with
the BA and then checked for depth reversal (:func:`resolve_depth_reversal`), and the result with
the lowest cost wins. Its depth-mirrored twin comes with it: with a network's noisy
correspondences the two costs are often within a few percent, so the frontend tracks both for a
while before it keeps one.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace

import torch

from vo_node.ba.solver import BAResult, bundle_adjust
from vo_node.config import BAConfig
from vo_node.geometry import se3

logger = logging.getLogger(__name__)

MIN_PAIR_EDGES = 16
"""Minimum number of valid correspondences between two frames for estimating their relative
rotation or their essential matrix."""
REFINE_ITERATIONS = 12
"""BA iterations spent on refining each start and each mirrored solution."""
POSE_ONLY_ITERATIONS = 4
"""BA iterations that fit the poses to the mirrored depths before the joint refinement."""
MIN_VALID_SHARE = 0.95
"""The mirrored hypothesis must keep at least this share of the current one's valid residuals,
so it cannot win by pushing measurements out of the masks."""


@dataclass
class ReversalCheck:
    """Outcome of :func:`resolve_depth_reversal`."""

    poses_cw: torch.Tensor
    """(N, 7) poses of the kept hypothesis."""
    patches: torch.Tensor
    """(M, 3, P, P) patches of the kept hypothesis."""
    reversed: bool
    """True when the mirrored hypothesis was kept."""
    current_cost: float
    mirrored_cost: float
    other_poses_cw: torch.Tensor
    """(N, 7) poses of the hypothesis that lost."""
    other_patches: torch.Tensor
    """(M, 3, P, P) patches of the hypothesis that lost."""


def resolve_depth_reversal(
    poses_cw: torch.Tensor,
    patches: torch.Tensor,
    intrinsics: torch.Tensor,
    target: torch.Tensor,
    weight: torch.Tensor,
    ii: torch.Tensor,
    jj: torch.Tensor,
    kk: torch.Tensor,
    *,
    config: BAConfig,
    image_size: tuple[int, int],
    first_free_pose: int = 1,
    refine_current: bool = True,
) -> ReversalCheck:
    """Refine the current and the depth-mirrored solution and return the one with lower cost.

    Args:
        poses_cw: (N, 7) world-to-camera poses after initialisation.
        patches: (M, 3, P, P) patches with their inverse depths.
        intrinsics, target, weight, ii, jj, kk, image_size: the BA problem, as for
            :func:`vo_node.ba.solver.bundle_adjust`.
        config: BA settings; the iteration count is replaced by this module's.
        first_free_pose: poses below this index stay fixed (1 during initialisation).
        refine_current: refine the current solution too; False only evaluates its cost, for a
            caller that has just refined it.
    """
    refine = replace(config, iterations=REFINE_ITERATIONS)

    def solve(start_poses, start_patches, settings, fixed=None) -> BAResult:
        return bundle_adjust(
            start_poses, start_patches, intrinsics, target, weight, ii, jj, kk,
            first_free_pose=first_free_pose, config=settings, image_size=image_size,
            fixed_patches=fixed,
        )

    current = solve(poses_cw, patches, refine if refine_current else replace(config, iterations=0))
    mirrored_patches = _mirror_depths(current.patches, kk, config.min_inverse_depth)
    # The free poses restart at the last fixed pose, as the frontend's motion model starts them.
    anchor = max(first_free_pose - 1, 0)
    start = current.poses_cw.clone()
    start[first_free_pose:] = current.poses_cw[anchor]
    depths_fixed = torch.ones(patches.shape[0], dtype=torch.bool, device=patches.device)
    pose_only = replace(config, iterations=POSE_ONLY_ITERATIONS)
    fitted = solve(start, mirrored_patches, pose_only, depths_fixed)
    mirrored = solve(fitted.poses_cw, fitted.patches, refine)

    keep_mirrored = (
        mirrored.final_cost < current.final_cost
        and mirrored.num_valid >= MIN_VALID_SHARE * current.num_valid
    )
    logger.debug(
        "depth-reversal check: current cost %.4g (%d valid), mirrored cost %.4g (%d valid)",
        current.final_cost, current.num_valid, mirrored.final_cost, mirrored.num_valid,
    )
    winner, other = (mirrored, current) if keep_mirrored else (current, mirrored)
    return ReversalCheck(
        winner.poses_cw, winner.patches, keep_mirrored, current.final_cost, mirrored.final_cost,
        other.poses_cw, other.patches,
    )


def _mirror_depths(patches: torch.Tensor, kk: torch.Tensor, floor: float) -> torch.Tensor:
    """Return patches whose inverse depths ``d`` become ``max(d) - d`` (at least ``floor``).

    The maximum is taken over the patches that edges ``kk`` use; the others keep their depth.
    """
    centre = patches.shape[-1] // 2
    inverse_depth = patches[:, 2, centre, centre]
    used = torch.zeros_like(inverse_depth, dtype=torch.bool)
    used[kk] = True
    mirrored = (inverse_depth[used].max() - inverse_depth).clamp(min=floor)
    mirrored = torch.where(used, mirrored, inverse_depth)
    result = patches.clone()
    result[:, 2] = mirrored[:, None, None]
    return result


@dataclass
class InitialWindow:
    """Outcome of :func:`initialize_window`."""

    poses_cw: torch.Tensor
    """(N, 7) refined poses of the winning start."""
    patches: torch.Tensor
    """(M, 3, P, P) patches with refined inverse depths."""
    start: str
    """``rotation`` or ``two_view``: the start that won."""
    reversed: bool
    """True when the depth-mirrored solution of that start was kept."""
    cost: float
    """BA cost of the result."""
    alternative_poses_cw: torch.Tensor
    """(N, 7) poses of the same start's other depth hypothesis (mirrored when the result is not,
    and the reverse). Its cost is often within a few percent of the result's on real sequences,
    so the frontend may track both for a while before it keeps one."""
    alternative_patches: torch.Tensor
    """(M, 3, P, P) patches of that hypothesis."""
    alternative_cost: float


def initialize_window(
    poses_cw: torch.Tensor,
    patches: torch.Tensor,
    intrinsics: torch.Tensor,
    target: torch.Tensor,
    weight: torch.Tensor,
    ii: torch.Tensor,
    jj: torch.Tensor,
    kk: torch.Tensor,
    *,
    times: torch.Tensor,
    config: BAConfig,
    image_size: tuple[int, int],
    first_free_pose: int = 1,
) -> InitialWindow:
    """Estimate poses and inverse depths of an initialisation window from its correspondences.

    Args:
        poses_cw: (N, 7) current poses; poses below ``first_free_pose`` anchor the window and
            stay fixed, the others are replaced.
        patches: (M, 3, P, P) patches of the N frames (``M / N`` per frame, frame-major).
        intrinsics, target, weight, ii, jj, kk, image_size: the BA problem, as for
            :func:`vo_node.ba.solver.bundle_adjust` (``target`` in the same pixels).
        times: (N,) frame times in any unit; they spread the two-view translation over the
            frames in between.
        config: BA settings; the iteration count is replaced by this module's.
        first_free_pose: poses below this index stay fixed (1 during initialisation).
    """
    anchor = max(first_free_pose - 1, 0)
    valid = (weight > 0).all(dim=-1)
    rotations = _chained_rotations(poses_cw, patches, intrinsics, target, valid, ii, jj, kk, anchor)
    starts = {"rotation": _rotation_start(poses_cw, patches, rotations, anchor, first_free_pose)}
    two_view = _two_view_start(
        poses_cw, patches, intrinsics, target, valid, ii, jj, kk, rotations, times, anchor,
        first_free_pose, config,
    )
    if two_view is not None:
        starts["two_view"] = two_view

    best: InitialWindow | None = None
    for name, (start_poses, start_patches) in starts.items():
        refined = bundle_adjust(
            start_poses, start_patches, intrinsics, target, weight, ii, jj, kk,
            first_free_pose=first_free_pose, config=replace(config, iterations=REFINE_ITERATIONS),
            image_size=image_size,
        )
        check = resolve_depth_reversal(
            refined.poses_cw, refined.patches, intrinsics, target, weight, ii, jj, kk,
            config=config, image_size=image_size, first_free_pose=first_free_pose,
            refine_current=False,
        )
        cost, other_cost = check.current_cost, check.mirrored_cost
        if check.reversed:
            cost, other_cost = other_cost, cost
        logger.debug(
            "initial window from the %s start: cost %.4g (other depth hypothesis %.4g)",
            name, cost, other_cost,
        )
        if best is None or cost < best.cost:
            best = InitialWindow(
                check.poses_cw, check.patches, name, check.reversed, cost,
                check.other_poses_cw, check.other_patches, other_cost,
            )
    assert best is not None
    return best


def _bearings(pixels: torch.Tensor, intrinsics: torch.Tensor) -> torch.Tensor:
    """Return (E, 3) float64 normalised rays ``(x, y, 1)`` of (E, 2) pixels."""
    fx, fy, cx, cy = intrinsics.double()
    pixels = pixels.double()
    x = (pixels[:, 0] - cx) / fx
    y = (pixels[:, 1] - cy) / fy
    return torch.stack([x, y, torch.ones_like(x)], dim=-1)


def _pair_rays(patches, intrinsics, target, valid, ii, jj, kk, source: int, destination: int):
    """Rays of the valid edges from frame ``source`` to ``destination``: (n, 3) each, and the
    patch index of each."""
    centre = patches.shape[-1] // 2
    select = valid & (ii == source) & (jj == destination)
    rays_source = _bearings(patches[kk[select], :2, centre, centre], intrinsics)
    rays_destination = _bearings(target[select], intrinsics)
    return rays_source, rays_destination, kk[select]


def _kabsch(rays_source: torch.Tensor, rays_destination: torch.Tensor) -> torch.Tensor:
    """Return the (3, 3) rotation ``R`` that best maps unit rays ``R a ~ b`` (Kabsch)."""
    a = rays_source / rays_source.norm(dim=-1, keepdim=True)
    b = rays_destination / rays_destination.norm(dim=-1, keepdim=True)
    u, _, vt = torch.linalg.svd(b.T @ a)
    sign = torch.ones(3, dtype=a.dtype, device=a.device)
    sign[2] = torch.sign(torch.det(u @ vt))
    return u @ torch.diag(sign) @ vt


def _chained_rotations(poses_cw, patches, intrinsics, target, valid, ii, jj, kk, anchor):
    """Return (N, 3, 3) float64 rotations ``R_k_anchor`` chained from consecutive frame pairs
    (identity for frames up to the anchor, and a copy of the previous one where a pair shares
    too few correspondences)."""
    count = poses_cw.shape[0]
    rotations = torch.eye(3, dtype=torch.float64, device=poses_cw.device).repeat(count, 1, 1)
    for frame in range(anchor + 1, count):
        rays = _pair_rays(patches, intrinsics, target, valid, ii, jj, kk, frame - 1, frame)
        step = torch.eye(3, dtype=torch.float64, device=poses_cw.device)
        if rays[0].shape[0] >= MIN_PAIR_EDGES:
            step = _kabsch(rays[0], rays[1])
        rotations[frame] = step @ rotations[frame - 1]
    return rotations


def _poses_from_motion(poses_cw, rotations, positions, anchor, first_free_pose):
    """Return (N, 7) poses ``T_k_world = T_k_anchor * T_anchor_world`` from rotations
    ``R_k_anchor`` (N, 3, 3) and camera positions in the anchor frame (N, 3).

    Poses below ``first_free_pose`` keep their values."""
    translation = -(rotations @ positions[:, :, None])[:, :, 0]
    relative = torch.cat([translation, se3.matrix_to_quaternion(rotations)], dim=-1)
    moved = se3.compose(relative.to(poses_cw.dtype), poses_cw[anchor].expand_as(poses_cw))
    return torch.cat([poses_cw[:first_free_pose], moved[first_free_pose:]])


def _rotation_start(poses_cw, patches, rotations, anchor, first_free_pose):
    positions = torch.zeros(rotations.shape[0], 3, dtype=rotations.dtype, device=rotations.device)
    return _poses_from_motion(poses_cw, rotations, positions, anchor, first_free_pose), patches


def _two_view_start(
    poses_cw, patches, intrinsics, target, valid, ii, jj, kk, rotations, times, anchor,
    first_free_pose, config,
):
    """Start from the essential matrix between the anchor and the farthest frame that shares at
    least ``MIN_PAIR_EDGES`` correspondences with it, or None when no frame does.

    The far frame gets the decomposed relative pose (unit baseline). The frames in between and
    after keep their chained rotations and move along the baseline in proportion to their
    times. The anchor's patches in front of both cameras get triangulated inverse depths, the
    other patches their median.
    """
    count = poses_cw.shape[0]
    partner, rays = None, None
    for frame in range(count - 1, anchor, -1):
        candidate = _pair_rays(patches, intrinsics, target, valid, ii, jj, kk, anchor, frame)
        if candidate[0].shape[0] >= MIN_PAIR_EDGES:
            partner, rays = frame, candidate
            break
    if partner is None or rays is None:
        return None
    rotation, translation, inverse_depth = _relative_pose(rays[0], rays[1])
    if inverse_depth is None:
        return None

    rotations = rotations.clone()
    rotations[partner] = rotation
    baseline = -rotation.T @ translation  # far camera's position in the anchor frame
    elapsed = (times.double() - times[anchor].double()).to(rotations.device)
    fraction = elapsed / elapsed[partner].clamp(min=1e-12)
    positions = fraction[:, None] * baseline[None, :]
    poses = _poses_from_motion(poses_cw, rotations, positions, anchor, first_free_pose)

    centre = patches.shape[-1] // 2
    depths = patches[:, 2, centre, centre].clone()
    in_front = inverse_depth > 0
    bounded = inverse_depth[in_front].clamp(config.min_inverse_depth, config.max_inverse_depth)
    depths[:] = bounded.median().to(depths)
    depths[rays[2][in_front]] = bounded.to(depths)
    started = patches.clone()
    started[:, 2] = depths[:, None, None]
    return poses, started


def _relative_pose(rays_source: torch.Tensor, rays_destination: torch.Tensor):
    """Decompose the essential matrix of (n, 3) ray pairs into ``R``, a unit ``t`` and the
    source-frame inverse depths (n,).

    Of the four decompositions, the one with the most points in front of both cameras wins.
    The inverse depths are None when even that one has fewer than half of the points in front.

    The convention is ``X_destination = R X_source + t``, and rays are ``(x, y, 1)``.
    """
    # NOTE: plain linear least squares without outlier rejection: exact for the oracle's
    # correspondences, but untested on a network's, where a robust fit may be needed.
    rows = (rays_destination[:, :, None] * rays_source[:, None, :]).reshape(-1, 9)
    essential = torch.linalg.svd(rows).Vh[-1].reshape(3, 3)
    u, _, vt = torch.linalg.svd(essential)
    u = u * torch.sign(torch.det(u))
    vt = vt * torch.sign(torch.det(vt))
    w = torch.tensor([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]], dtype=u.dtype)
    w = w.to(u.device)
    best = None
    for rotation in (u @ w @ vt, u @ w.T @ vt):
        for translation in (u[:, 2], -u[:, 2]):
            source_depth, destination_depth = _triangulate(
                rays_source, rays_destination, rotation, translation
            )
            in_front = int(((source_depth > 0) & (destination_depth > 0)).sum())
            if best is None or in_front > best[0]:
                best = (in_front, rotation, translation, source_depth)
    assert best is not None
    in_front, rotation, translation, source_depth = best
    if in_front < 0.5 * rays_source.shape[0]:
        return rotation, translation, None
    inverse_depth = torch.where(
        source_depth > 0, 1.0 / source_depth.clamp(min=1e-12), torch.zeros_like(source_depth)
    )
    return rotation, translation, inverse_depth.clamp(min=0.0)


def _triangulate(rays_source, rays_destination, rotation, translation):
    """Return the source and destination depths (n,) of each ray pair's closest point."""
    rotated = rays_source @ rotation.T  # R x_source
    cross_rotated = torch.linalg.cross(rays_destination, rotated, dim=-1)
    cross_translation = torch.linalg.cross(rays_destination, translation.expand_as(rotated), dim=-1)
    denominator = (cross_rotated**2).sum(dim=-1).clamp(min=1e-18)
    source_depth = -(cross_rotated * cross_translation).sum(dim=-1) / denominator
    destination_depth = source_depth * rotated[:, 2] + translation[2]
    return source_depth, destination_depth
