"""SE(3) poses as quaternion-translation tensors, in plain differentiable torch.

Conventions used everywhere in vo_node:

- A pose is a ``(..., 7)`` tensor ``[tx, ty, tz, qx, qy, qz, qw]``: a translation and a unit
  quaternion (Hamilton product, scalar last). ``T_a_b`` maps coordinates in frame ``b`` into
  frame ``a``: ``p_a = R_a_b p_b + t_a_b``. Poses compose as ``T_a_c = compose(T_a_b, T_b_c)``.
- A tangent vector is a ``(..., 6)`` tensor ``xi = [v, w]``: translation part ``v`` first, rotation
  part ``w`` (axis times angle, radians) second. ``exp(xi)`` is the 4x4 matrix exponential of
  ``[[skew(w), v], [0, 0]]``, so its translation is ``V(w) v`` with the left Jacobian ``V``.
- Updates are applied on the left: ``retract(T, xi) = exp(xi) * T``. The adjoint matches this
  ordering: ``exp(adjoint(T) @ xi) * T == T * exp(xi)``.

Every function broadcasts over leading dimensions, runs in float32 and float64 on any device, and
is differentiable with autograd. ``exp`` and ``log`` switch to Taylor series at small angles, so
gradients stay finite at exactly zero rotation.
"""

from __future__ import annotations

import torch

SMALL_ANGLE_SQUARED = 1e-2
"""Squared angle (rad^2) below which ``exp`` and ``log`` use Taylor series.

At this bound the first dropped series term is below 1e-16, so float64 stays exact."""

SLERP_LINEAR_DOT = 0.9995
"""Quaternion dot product above which ``interpolate`` falls back to normalised linear blending."""


def _coefficient(theta_sq: torch.Tensor, exact, series: tuple[float, ...]) -> torch.Tensor:
    """Evaluate ``exact(theta_sq)`` away from zero and the power series in ``theta_sq`` near it.

    The exact branch only receives angles above the threshold, so its gradient cannot be NaN at
    zero even though ``torch.where`` differentiates both branches.
    """
    small = theta_sq < SMALL_ANGLE_SQUARED
    safe_sq = torch.where(small, torch.ones_like(theta_sq), theta_sq)
    taylor = torch.zeros_like(theta_sq)
    power = torch.ones_like(theta_sq)
    for coefficient in series:
        taylor = taylor + coefficient * power
        power = power * theta_sq
    return torch.where(small, taylor, exact(safe_sq))


def skew(w: torch.Tensor) -> torch.Tensor:
    """Return the cross-product matrices ``(..., 3, 3)`` of vectors ``w`` ``(..., 3)``."""
    x, y, z = w.unbind(-1)
    zero = torch.zeros_like(x)
    rows = [
        torch.stack([zero, -z, y], dim=-1),
        torch.stack([z, zero, -x], dim=-1),
        torch.stack([-y, x, zero], dim=-1),
    ]
    return torch.stack(rows, dim=-2)


# ---------------------------------------------------------------------------------------------
# Quaternions (..., 4) [qx, qy, qz, qw]
# ---------------------------------------------------------------------------------------------


def normalize_quaternion(q: torch.Tensor) -> torch.Tensor:
    """Scale quaternions ``(..., 4)`` to unit norm."""
    return q / q.norm(dim=-1, keepdim=True)


def normalize(poses: torch.Tensor) -> torch.Tensor:
    """Return poses ``(..., 7)`` with their quaternions rescaled to unit norm."""
    return torch.cat([poses[..., :3], normalize_quaternion(poses[..., 3:])], dim=-1)


def quaternion_multiply(q1: torch.Tensor, q2: torch.Tensor) -> torch.Tensor:
    """Return the Hamilton product ``q1 * q2`` of quaternions ``(..., 4)`` (scalar last)."""
    v1, w1 = q1[..., :3], q1[..., 3:]
    v2, w2 = q2[..., :3], q2[..., 3:]
    vector = w1 * v2 + w2 * v1 + torch.linalg.cross(v1, v2, dim=-1)
    scalar = w1 * w2 - (v1 * v2).sum(dim=-1, keepdim=True)
    return torch.cat([vector, scalar], dim=-1)


def quaternion_conjugate(q: torch.Tensor) -> torch.Tensor:
    """Return the conjugate (the inverse, for unit quaternions) of quaternions ``(..., 4)``."""
    return torch.cat([-q[..., :3], q[..., 3:]], dim=-1)


def quaternion_rotate(q: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """Rotate points ``(..., 3)`` by unit quaternions ``(..., 4)`` (broadcast)."""
    vector, scalar = q[..., :3], q[..., 3:]
    if q.shape[:-1] != points.shape[:-1]:
        # torch.broadcast_shapes takes about 7 us (scripts/profile_kernels.py --steps overhead).
        shape = torch.broadcast_shapes(q.shape[:-1], points.shape[:-1])
        vector, scalar = vector.expand(*shape, 3), scalar.expand(*shape, 1)
        points = points.expand(*shape, 3)
    twice_cross = 2.0 * torch.linalg.cross(vector, points, dim=-1)
    return points + scalar * twice_cross + torch.linalg.cross(vector, twice_cross, dim=-1)



def quaternion_to_matrix(q: torch.Tensor) -> torch.Tensor:
    """Return the rotation matrices ``(..., 3, 3)`` of unit quaternions ``(..., 4)``."""
    x, y, z, w = q.unbind(-1)
    rows = [
        torch.stack([1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)], dim=-1),
        torch.stack([2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)], dim=-1),
        torch.stack([2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)], dim=-1),
    ]
    return torch.stack(rows, dim=-2)


def matrix_to_quaternion(matrix: torch.Tensor) -> torch.Tensor:
    """Convert rotation matrices ``(..., 3, 3)`` to unit quaternions ``(..., 4)`` with ``qw >= 0``.

    Shepperd's method: of the four algebraically equal formulas, each element uses the one whose
    square-root argument (``1 + trace`` or ``1 + 2 R_ii - trace``) is largest, which keeps the
    division well conditioned for every rotation including 180 degrees.
    """
    m = matrix
    m00, m11, m22 = m[..., 0, 0], m[..., 1, 1], m[..., 2, 2]
    trace = m00 + m11 + m22
    # Four times the square of w, x, y, z respectively; at least one is >= 1.
    squares = torch.stack(
        [1 + trace, 1 + 2 * m00 - trace, 1 + 2 * m11 - trace, 1 + 2 * m22 - trace], dim=-1
    )
    best = squares.argmax(dim=-1, keepdim=True)
    # The largest of the four is at least 1, so the clamp only keeps unused candidates finite.
    roots = 2.0 * squares.clamp(min=0.25).sqrt()  # (..., 4): 4*w, 4*x, 4*y, 4*z candidates
    d21 = m[..., 2, 1] - m[..., 1, 2]
    d02 = m[..., 0, 2] - m[..., 2, 0]
    d10 = m[..., 1, 0] - m[..., 0, 1]
    s01 = m[..., 0, 1] + m[..., 1, 0]
    s02 = m[..., 0, 2] + m[..., 2, 0]
    s12 = m[..., 1, 2] + m[..., 2, 1]
    # Each candidate as [x, y, z, w] divided by its own root (4 * the chosen component).
    candidates = torch.stack(
        [
            torch.stack([d21, d02, d10, squares[..., 0]], -1),
            torch.stack([squares[..., 1], s01, s02, d21], -1),
            torch.stack([s01, squares[..., 2], s12, d02], -1),
            torch.stack([s02, s12, squares[..., 3], d10], -1),
        ],
        dim=-2,
    ) / roots[..., :, None]
    index = best[..., None].expand(*best.shape[:-1], 1, 4)
    q = candidates.gather(-2, index).squeeze(-2)
    q = torch.where(q[..., 3:] < 0, -q, q)
    return normalize_quaternion(q)


# ---------------------------------------------------------------------------------------------
# Poses (..., 7)
# ---------------------------------------------------------------------------------------------


def identity(
    shape: tuple[int, ...] | torch.Size = (),
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Return identity poses of shape ``(*shape, 7)``."""
    poses = torch.zeros(*shape, 7, dtype=dtype, device=device)
    poses[..., 6] = 1.0
    return poses


def compose(first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
    """Return ``first * second`` for poses ``(..., 7)`` (broadcast): ``T_a_c = T_a_b * T_b_c``."""
    first, second = torch.broadcast_tensors(first, second)
    translation = quaternion_rotate(first[..., 3:], second[..., :3]) + first[..., :3]
    rotation = quaternion_multiply(first[..., 3:], second[..., 3:])
    return torch.cat([translation, rotation], dim=-1)


def invert(poses: torch.Tensor) -> torch.Tensor:
    """Return the inverse poses ``(..., 7)``: ``invert(T_a_b) = T_b_a``."""
    q_inverse = quaternion_conjugate(poses[..., 3:])
    translation = -quaternion_rotate(q_inverse, poses[..., :3])
    return torch.cat([translation, q_inverse], dim=-1)


def transform_points(poses: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """Map points ``(..., 3)`` through poses ``(..., 7)`` (broadcast): ``R p + t``."""
    return quaternion_rotate(poses[..., 3:], points) + poses[..., :3]


def to_matrix(poses: torch.Tensor) -> torch.Tensor:
    """Return homogeneous matrices ``(..., 4, 4)`` of poses ``(..., 7)``."""
    rotation = quaternion_to_matrix(poses[..., 3:])
    top = torch.cat([rotation, poses[..., :3, None]], dim=-1)
    bottom = torch.zeros_like(top[..., :1, :])
    bottom[..., 0, 3] = 1.0
    return torch.cat([top, bottom], dim=-2)


def from_matrix(matrix: torch.Tensor) -> torch.Tensor:
    """Return poses ``(..., 7)`` of homogeneous matrices ``(..., 4, 4)`` (or ``(..., 3, 4)``)."""
    quaternion = matrix_to_quaternion(matrix[..., :3, :3])
    return torch.cat([matrix[..., :3, 3], quaternion], dim=-1)


def _left_jacobian_coefficients(theta_sq: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Return ``A = (1 - cos t) / t^2`` and ``B = (t - sin t) / t^3`` of ``V = I + A W + B W^2``."""

    def exact_a(sq: torch.Tensor) -> torch.Tensor:
        half = 0.5 * sq.sqrt()
        return 2.0 * torch.sin(half) ** 2 / sq  # no 1 - cos cancellation

    def exact_b(sq: torch.Tensor) -> torch.Tensor:
        theta = sq.sqrt()
        return (theta - torch.sin(theta)) / (sq * theta)

    a = _coefficient(theta_sq, exact_a, (1 / 2, -1 / 24, 1 / 720, -1 / 40320, 1 / 3628800))
    b = _coefficient(theta_sq, exact_b, (1 / 6, -1 / 120, 1 / 5040, -1 / 362880, 1 / 39916800))
    return a, b


def exp(xi: torch.Tensor) -> torch.Tensor:
    """Return the SE(3) exponential ``(..., 7)`` of tangent vectors ``xi = [v, w]`` ``(..., 6)``."""
    v, w = xi[..., :3], xi[..., 3:]
    theta_sq = (w * w).sum(dim=-1)

    def exact_half_sinc(sq: torch.Tensor) -> torch.Tensor:
        theta = sq.sqrt()
        return torch.sin(0.5 * theta) / theta

    def exact_cos_half(sq: torch.Tensor) -> torch.Tensor:
        return torch.cos(0.5 * sq.sqrt())

    # sin(t/2)/t and cos(t/2) as series in t^2 near zero, so autograd never differentiates sqrt(0).
    half_sinc = _coefficient(theta_sq, exact_half_sinc, (1 / 2, -1 / 48, 1 / 3840, -1 / 645120))
    cos_half = _coefficient(theta_sq, exact_cos_half, (1.0, -1 / 8, 1 / 384, -1 / 46080))
    quaternion = torch.cat([half_sinc[..., None] * w, cos_half[..., None]], dim=-1)

    a, b = _left_jacobian_coefficients(theta_sq)
    w_cross_v = torch.linalg.cross(w, v, dim=-1)
    w_cross_w_cross_v = torch.linalg.cross(w, w_cross_v, dim=-1)
    translation = v + a[..., None] * w_cross_v + b[..., None] * w_cross_w_cross_v
    return torch.cat([translation, quaternion], dim=-1)


def log(poses: torch.Tensor) -> torch.Tensor:
    """Return the tangent vectors ``[v, w]`` ``(..., 6)`` of poses ``(..., 7)``.

    The rotation angle is in ``[0, pi]`` because the quaternion is flipped to ``qw >= 0`` first.
    """
    q = poses[..., 3:]
    q = torch.where(q[..., 3:] < 0, -q, q)
    vector, scalar = q[..., :3], q[..., 3]
    sin_sq = (vector * vector).sum(dim=-1)  # sin^2(theta / 2) for a unit quaternion

    def exact_angle_ratio(sq: torch.Tensor) -> torch.Tensor:
        sin_half = sq.sqrt()
        return 2.0 * torch.atan2(sin_half, scalar) / sin_half

    # theta / sin(theta/2) = 2 atan(s/c)/s = (2/c)(1 - s^2/(3c^2) + s^4/(5c^4) - ...) near zero.
    small = sin_sq < SMALL_ANGLE_SQUARED
    ratio_sq = sin_sq / (scalar * scalar)
    series = 2.0 / scalar * (1 - ratio_sq / 3 + ratio_sq**2 / 5 - ratio_sq**3 / 7 + ratio_sq**4 / 9)
    safe_sq = torch.where(small, torch.ones_like(sin_sq), sin_sq)
    angle_ratio = torch.where(small, series, exact_angle_ratio(safe_sq))
    w = angle_ratio[..., None] * vector

    theta_sq = (w * w).sum(dim=-1)

    def exact_d(sq: torch.Tensor) -> torch.Tensor:
        # (1 - (t/2) cot(t/2)) / t^2 with cot(t/2) = c / s, well conditioned up to t = pi.
        theta = sq.sqrt()
        sin_half = torch.sin(0.5 * theta)
        return (1.0 - 0.5 * theta * torch.cos(0.5 * theta) / sin_half) / sq

    # V^-1 = I - W/2 + D W^2.
    d = _coefficient(theta_sq, exact_d, (1 / 12, 1 / 720, 1 / 30240, 1 / 1209600, 1 / 47900160))
    t = poses[..., :3]
    w_cross_t = torch.linalg.cross(w, t, dim=-1)
    v = t - 0.5 * w_cross_t + d[..., None] * torch.linalg.cross(w, w_cross_t, dim=-1)
    return torch.cat([v, w], dim=-1)


def retract(poses: torch.Tensor, xi: torch.Tensor) -> torch.Tensor:
    """Apply left updates ``exp(xi) * poses`` to poses ``(..., 7)`` with ``xi`` ``(..., 6)``."""
    return compose(exp(xi), poses)


def adjoint(poses: torch.Tensor) -> torch.Tensor:
    """Return adjoint matrices ``(..., 6, 6)`` with ``exp(Ad_T xi) * T == T * exp(xi)``.

    For the ``[v, w]`` ordering, ``Ad_T = [[R, skew(t) R], [0, R]]``.
    """
    rotation = quaternion_to_matrix(poses[..., 3:])
    top = torch.cat([rotation, skew(poses[..., :3]) @ rotation], dim=-1)
    bottom = torch.cat([torch.zeros_like(rotation), rotation], dim=-1)
    return torch.cat([top, bottom], dim=-2)


def interpolate(
    start: torch.Tensor, end: torch.Tensor, alpha: torch.Tensor | float
) -> torch.Tensor:
    """Blend poses ``(..., 7)``: slerp on the rotation, linear on the translation.

    ``alpha`` (a float or a tensor broadcasting to ``(...)``) is 0 at ``start`` and 1 at ``end``;
    values outside [0, 1] extrapolate. The rotation takes the shorter arc.
    """
    alpha = torch.as_tensor(alpha, dtype=start.dtype, device=start.device)[..., None]
    start, end = torch.broadcast_tensors(start, end)
    translation = start[..., :3] + alpha * (end[..., :3] - start[..., :3])
    q0, q1 = start[..., 3:], end[..., 3:]
    dot = (q0 * q1).sum(dim=-1, keepdim=True)
    q1 = torch.where(dot < 0, -q1, q1)
    dot = dot.abs().clamp(max=1.0)

    near = dot > SLERP_LINEAR_DOT
    angle = torch.acos(torch.where(near, torch.zeros_like(dot), dot))
    sin_angle = torch.sin(angle)
    safe_sin = torch.where(near, torch.ones_like(sin_angle), sin_angle)
    weight0 = torch.where(near, 1 - alpha, torch.sin((1 - alpha) * angle) / safe_sin)
    weight1 = torch.where(near, alpha, torch.sin(alpha * angle) / safe_sin)
    rotation = normalize_quaternion(weight0 * q0 + weight1 * q1)
    shape = torch.broadcast_shapes(translation.shape[:-1], rotation.shape[:-1])
    return torch.cat([translation.expand(*shape, 3), rotation.expand(*shape, 4)], dim=-1)
