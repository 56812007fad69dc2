"""Pinhole projection of inverse-depth patches and its analytic Jacobians.

A patch pixel ``(u, v)`` with inverse depth ``d`` becomes the homogeneous point
``X = (x_n, y_n, 1, d)`` with normalised coordinates ``x_n = (u - cx) / fx``. It represents the 3-D
point ``(x_n, y_n, 1) / d``. A pose acts on it homogeneously, ``X' = (R X_xyz + t d, d)``, which
scales the 3-D point by ``d`` and so leaves its projection unchanged. The third coordinate ``Z'`` of
the transformed point is the depth in the target frame times the inverse depth in the source
frame. This ratio of the two depths does not depend on the monocular scale. Residuals are masked
on it.

Jacobians are taken with respect to left updates ``T <- exp(xi) * T`` of the world-to-camera poses,
with tangent ordering ``[v, w]`` (see :mod:`vo_node.geometry.se3`).
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from vo_node.geometry import se3

DEFAULT_MIN_DEPTH = 0.2
"""Default threshold on the transformed homogeneous depth ``Z'`` for a valid reprojection (DPVO)."""

PROJECTION_DEPTH_EPS = 1e-4
"""Depths ``|Z|`` below this are replaced by it (keeping the sign) before dividing.

This keeps projections and Jacobians of points at or behind the camera finite, so masked entries
never turn into NaN gradients."""


class Reprojection(NamedTuple):
    """Patches reprojected along edges; ``E`` edges, patch side ``P``."""

    coords: torch.Tensor
    """(E, 2, P, P) pixel coordinates ``(u, v)`` of each edge's patch in its target frame ``jj``."""
    depth: torch.Tensor
    """(E, P, P) homogeneous depth ``Z'`` of the transformed points, a depth ratio (module doc)."""
    valid: torch.Tensor
    """(E, P, P) bool, ``depth > min_depth``."""
    Ji: torch.Tensor | None = None
    """(E, 2, 6) Jacobian of the patch-centre pixel w.r.t. a left update of pose ``ii``."""
    Jj: torch.Tensor | None = None
    """(E, 2, 6) Jacobian of the patch-centre pixel w.r.t. a left update of pose ``jj``."""
    Jz: torch.Tensor | None = None
    """(E, 2, 1) Jacobian of the patch-centre pixel w.r.t. the patch inverse depth."""


def _safe_depth(z: torch.Tensor) -> torch.Tensor:
    sign = torch.where(z < 0, -torch.ones_like(z), torch.ones_like(z))
    return torch.where(z.abs() < PROJECTION_DEPTH_EPS, sign * PROJECTION_DEPTH_EPS, z)


def inverse_project(patches: torch.Tensor, intrinsics: torch.Tensor) -> torch.Tensor:
    """Lift patches to homogeneous points in normalised coordinates.

    Args:
        patches: (..., 3, P, P) grids of ``(u, v, inverse_depth)``, pixels and 1/scene units.
        intrinsics: (..., 4) ``[fx, fy, cx, cy]`` in the same pixels, broadcasting with the
            leading dimensions of ``patches``.

    Returns:
        (..., 4, P, P) points ``(x_n, y_n, 1, inverse_depth)``.
    """
    fx, fy, cx, cy = intrinsics[..., None, None].unbind(dim=-3)
    u, v, inverse_depth = patches.unbind(dim=-3)
    x = (u - cx) / fx
    y = (v - cy) / fy
    x, y, inverse_depth = torch.broadcast_tensors(x, y, inverse_depth)
    return torch.stack([x, y, torch.ones_like(x), inverse_depth], dim=-3)


def project(points: torch.Tensor, intrinsics: torch.Tensor) -> torch.Tensor:
    """Project homogeneous points to pixels: ``(fx X / Z + cx, fy Y / Z + cy)``.

    Args:
        points: (..., 4, P, P) homogeneous points ``(X, Y, Z, W)``. ``W`` does not affect pixels.
        intrinsics: (..., 4) ``[fx, fy, cx, cy]`` broadcasting with the leading dimensions.

    Returns:
        (..., 2, P, P) pixels. Points with ``|Z| < PROJECTION_DEPTH_EPS`` are projected as if at
        that depth, so the result stays finite; callers mask them on depth.
    """
    fx, fy, cx, cy = intrinsics[..., None, None].unbind(dim=-3)
    x, y, z = points[..., 0, :, :], points[..., 1, :, :], _safe_depth(points[..., 2, :, :])
    return torch.stack([fx * x / z + cx, fy * y / z + cy], dim=-3)


def _per_edge_intrinsics(intrinsics: torch.Tensor, frames: torch.Tensor) -> torch.Tensor:
    if intrinsics.dim() == 1:
        return intrinsics.expand(frames.shape[0], 4)
    return intrinsics[frames]


def _check_reproject_inputs(
    poses_cw: torch.Tensor, patches: torch.Tensor, intrinsics: torch.Tensor, ii, jj, kk
) -> None:
    if poses_cw.dim() != 2 or poses_cw.shape[-1] != 7:
        raise ValueError(f"poses_cw must have shape (N, 7), got {tuple(poses_cw.shape)}")
    if patches.dim() != 4 or patches.shape[1] != 3 or patches.shape[2] != patches.shape[3]:
        raise ValueError(f"patches must have shape (M, 3, P, P), got {tuple(patches.shape)}")
    if intrinsics.shape not in ((4,), (poses_cw.shape[0], 4)):
        raise ValueError(
            f"intrinsics must have shape (4,) or (N, 4) = ({poses_cw.shape[0]}, 4), "
            f"got {tuple(intrinsics.shape)}"
        )
    if not (ii.shape == jj.shape == kk.shape) or ii.dim() != 1:
        raise ValueError(
            "edge indices ii, jj, kk must be 1-D with equal length, got "
            f"{tuple(ii.shape)}, {tuple(jj.shape)}, {tuple(kk.shape)}"
        )


def reproject(
    poses_cw: torch.Tensor,
    patches: torch.Tensor,
    intrinsics: torch.Tensor,
    ii: torch.Tensor,
    jj: torch.Tensor,
    kk: torch.Tensor,
    with_jacobians: bool = False,
    *,
    min_depth: float = DEFAULT_MIN_DEPTH,
) -> Reprojection:
    """Reproject patch ``kk[e]`` from its source frame ``ii[e]`` into target frame ``jj[e]``.

    Args:
        poses_cw: (N, 7) world-to-camera poses ``T_cam_world``.
        patches: (M, 3, P, P) patches ``(u, v, inverse_depth)`` in pixels of their source frame.
        intrinsics: (4,) shared or (N, 4) per-frame ``[fx, fy, cx, cy]`` in the same pixels.
        ii, jj, kk: (E,) long source-frame, target-frame and patch indices.
        with_jacobians: also return the patch-centre Jacobians ``Ji``, ``Jj``, ``Jz``.
        min_depth: threshold on the homogeneous depth ``Z'`` for ``valid``.

    Returns:
        A :class:`Reprojection`. The relative pose is ``T_j_i = T_j_w * T_i_w^-1``; when
        ``ii == jj`` it is the identity and the coordinates equal the patch's own pixels.
    """
    _check_reproject_inputs(poses_cw, patches, intrinsics, ii, jj, kk)
    pair_source, pair_target, pair_of_edge = frame_pairs(ii, jj, poses_cw.shape[0])
    relative = se3.compose(poses_cw[pair_target], se3.invert(poses_cw[pair_source]))  # (Q, 7)
    points = inverse_project(patches[kk], _per_edge_intrinsics(intrinsics, ii))  # (E, 4, P, P)
    rotation = se3.quaternion_to_matrix(relative[:, 3:])[pair_of_edge]  # (E, 3, 3)
    translation = relative[pair_of_edge, :3]

    xyz = torch.einsum("eab,ebpq->eapq", rotation, points[:, :3])
    xyz = xyz + translation[:, :, None, None] * points[:, 3:4]
    transformed = torch.cat([xyz, points[:, 3:4]], dim=1)

    target_intrinsics = _per_edge_intrinsics(intrinsics, jj)
    coords = project(transformed, target_intrinsics)
    depth = transformed[:, 2]
    valid = depth > min_depth
    if not with_jacobians:
        return Reprojection(coords, depth, valid)

    centre = patches.shape[-1] // 2
    ji, jj_jacobian, jz = _centre_jacobians(
        transformed[:, :, centre, centre], relative, pair_of_edge, target_intrinsics
    )
    return Reprojection(coords, depth, valid, ji, jj_jacobian, jz)


def frame_pairs(
    ii: torch.Tensor, jj: torch.Tensor, num_poses: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Return the distinct ``(source, target)`` frame pairs of the edges and each edge's pair.

    Args:
        ii, jj: (E,) long source and target frames.
        num_poses: number of poses ``N``; frames lie in ``[0, N)``.

    Returns:
        ``source`` and ``target`` (Q,) of the ``Q`` distinct pairs, and ``of_edge`` (E,), the
        pair of each edge. In the engine's patch graph every patch of a source frame has one
        edge to each target, so a pair serves ``patches_per_frame`` edges, and relative poses
        and their adjoints are computed once per pair.
    """
    pair_ids, of_edge = torch.unique(jj * num_poses + ii, return_inverse=True)
    return pair_ids % num_poses, pair_ids // num_poses, of_edge


def _centre_jacobians(
    point: torch.Tensor,
    relative: torch.Tensor,
    pair_of_edge: torch.Tensor,
    intrinsics: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Return ``Ji, Jj`` (E, 2, 6) and ``Jz`` (E, 2, 1) of the pixel of ``point`` (E, 4).

    ``relative`` (Q, 7) holds the relative pose ``T_j_i`` of each frame pair and
    ``pair_of_edge`` (E,) the pair of each edge.

    With ``X' = T_j_i X``: a left update of pose ``jj`` moves ``X'`` by ``[W I, -skew(X'_xyz)] xi``.
    A left update of pose ``ii`` right-multiplies ``T_j_i`` by ``exp(-xi)``, which equals
    ``exp(-Ad(T_j_i) xi) * T_j_i``, so ``Ji = -Jj Ad(T_j_i)``. The inverse depth ``W`` enters
    through ``t W``, so ``dX'/dW = t``.
    """
    x, y, z, w = point.unbind(dim=-1)
    z = _safe_depth(z)
    fx, fy = intrinsics[:, 0], intrinsics[:, 1]
    zero = torch.zeros_like(x)

    # d(u, v) / d(X, Y, Z): (E, 2, 3)
    inverse_z = 1.0 / z
    projection_jacobian = torch.stack(
        [
            torch.stack([fx * inverse_z, zero, -fx * x * inverse_z * inverse_z], dim=-1),
            torch.stack([zero, fy * inverse_z, -fy * y * inverse_z * inverse_z], dim=-1),
        ],
        dim=-2,
    )

    # dX'_xyz / d(left update of pose jj): (E, 3, 6)
    eye = torch.eye(3, dtype=point.dtype, device=point.device)
    point_jacobian = torch.cat([w[:, None, None] * eye, -se3.skew(point[:, :3])], dim=-1)

    jj_jacobian = projection_jacobian @ point_jacobian
    ji = -jj_jacobian @ se3.adjoint(relative)[pair_of_edge]
    jz = projection_jacobian @ relative[pair_of_edge, :3, None]
    return ji, jj_jacobian, jz
