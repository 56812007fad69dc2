"""Pose helpers shared by the readers: 4x4 matrices, ``[t, q_xyzw]`` rows and interpolation.

Poses follow the project convention: ``(N, 7)`` float64 ``[tx, ty, tz, qx, qy, qz, qw]``
(Hamilton, scalar last) and ``(N, 4, 4)`` homogeneous matrices ``T_a_b`` mapping frame ``b`` to
frame ``a``.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np
from scipy.spatial.transform import Rotation

from vo_node.io.sequence import SequenceError
from vo_node.io.trajectory import Trajectory

logger = logging.getLogger(__name__)

POSE_SIZE = 7
MIN_QUATERNION_NORM = 1e-6
"""Quaternions shorter than this cannot be normalised into a rotation."""


def matrices_to_poses(matrices: np.ndarray) -> np.ndarray:
    """Convert ``(N, 4, 4)`` (or ``(N, 3, 4)``) transforms to ``(N, 7)`` pose rows."""
    matrices = np.asarray(matrices, dtype=np.float64)
    rotations = Rotation.from_matrix(matrices[:, :3, :3])
    quaternions = rotations.as_quat()
    # One sign per rotation: keep qw >= 0 so equal rotations give equal rows.
    quaternions *= np.where(quaternions[:, 3:4] < 0.0, -1.0, 1.0)
    return np.concatenate([matrices[:, :3, 3], quaternions], axis=1)


def poses_to_matrices(poses: np.ndarray) -> np.ndarray:
    """Convert ``(N, 7)`` pose rows to ``(N, 4, 4)`` transforms (quaternions are normalised)."""
    poses = np.asarray(poses, dtype=np.float64).reshape(-1, POSE_SIZE)
    matrices = np.tile(np.eye(4), (len(poses), 1, 1))
    matrices[:, :3, :3] = Rotation.from_quat(poses[:, 3:]).as_matrix()
    matrices[:, :3, 3] = poses[:, :3]
    return matrices


EDGE_TOLERANCE_NS = 1_000_000
"""Queries this close (ns) outside the sampled range take the first or last sample."""


def interpolate_poses(
    source_ns: np.ndarray,
    source_poses: np.ndarray,
    query_ns: np.ndarray,
    max_gap_ns: int,
    edge_tolerance_ns: int = EDGE_TOLERANCE_NS,
) -> tuple[np.ndarray, np.ndarray]:
    """Interpolate poses at query times: linear in translation, slerp in rotation.

    Args:
        source_ns: ``(M,)`` increasing int64 sample times in nanoseconds.
        source_poses: ``(M, 7)`` poses at those times.
        query_ns: ``(N,)`` int64 query times in nanoseconds.
        max_gap_ns: a query gets a pose only when both neighbouring samples lie within this
            many nanoseconds of it, so gaps in the source are never bridged.
        edge_tolerance_ns: a query at most this far before the first or after the last sample
            takes that sample (images and ground truth from different clocks rarely line up to
            the nanosecond at the ends).

    Returns:
        ``valid`` ``(N,)`` bool and ``poses`` ``(valid.sum(), 7)`` for the valid queries.
    """
    source_ns = np.asarray(source_ns, dtype=np.int64)
    source_poses = np.asarray(source_poses, dtype=np.float64)
    query_ns = np.asarray(query_ns, dtype=np.int64)
    if len(source_ns) == 0 or len(query_ns) == 0:
        return np.zeros(len(query_ns), dtype=bool), np.zeros((0, POSE_SIZE))
    near_start = (query_ns < source_ns[0]) & (source_ns[0] - query_ns <= edge_tolerance_ns)
    near_end = (query_ns > source_ns[-1]) & (query_ns - source_ns[-1] <= edge_tolerance_ns)
    query_ns = np.where(near_start, source_ns[0], np.where(near_end, source_ns[-1], query_ns))
    upper = np.clip(np.searchsorted(source_ns, query_ns, side="left"), 0, len(source_ns) - 1)
    exact = source_ns[upper] == query_ns
    lower = np.where(exact, upper, np.clip(upper - 1, 0, len(source_ns) - 1))
    inside = (source_ns[lower] <= query_ns) & (query_ns <= source_ns[upper])
    close = (query_ns - source_ns[lower] <= max_gap_ns) & (source_ns[upper] - query_ns <= max_gap_ns)
    valid = inside & close
    if not valid.any():
        return valid, np.zeros((0, POSE_SIZE))
    lower, upper, query = lower[valid], upper[valid], query_ns[valid]

    span = (source_ns[upper] - source_ns[lower]).astype(np.float64)
    fraction = np.divide(
        (query - source_ns[lower]).astype(np.float64), span, out=np.zeros_like(span), where=span > 0
    )
    translation = source_poses[lower, :3] + fraction[:, None] * (
        source_poses[upper, :3] - source_poses[lower, :3]
    )
    start = Rotation.from_quat(source_poses[lower, 3:])
    end = Rotation.from_quat(source_poses[upper, 3:])
    step = (start.inv() * end).as_rotvec()
    rotation = start * Rotation.from_rotvec(step * fraction[:, None])
    quaternions = rotation.as_quat()
    quaternions *= np.where(quaternions[:, 3:4] < 0.0, -1.0, 1.0)
    return valid, np.concatenate([translation, quaternions], axis=1)


def parse_finite_floats(values: list[str], where: str, text: str, fix: str) -> list[float]:
    """Parse the fields ``values`` of one line as finite floats.

    Raises:
        SequenceError: a field is not a number or not finite. The message starts with ``where``
            (the file and line), quotes ``text`` (the line) and ends with ``fix``.
    """
    try:
        numbers = [float(value) for value in values]
    except ValueError:
        raise SequenceError(
            f"{where} contains a value that is not a number: {text[:80]!r}; {fix}"
        ) from None
    if not all(math.isfinite(number) for number in numbers):
        raise SequenceError(f"{where} contains a non-finite value: {text[:80]!r}; {fix}")
    return numbers


def read_pose_table(
    path: Path, columns: int, description: str, expected: str, lines: list[int] | None = None
) -> np.ndarray:
    """Read a whitespace-separated table with ``columns`` numbers per line as ``(N, columns)``.

    Blank lines and lines starting with ``#`` are skipped.

    Args:
        description: the file's name in messages, e.g. ``KITTI poses file``.
        expected: the expected line layout in messages, e.g. ``12 (3x4)``.
        lines: when given, receives the line number (counted from 1) of each row.

    Raises:
        SequenceError: the file has no pose, a value is not a finite number, or a line has
            another number of values. The message names the line (counted from 1).
    """
    rows = []
    fix = f"correct that line to {expected} numbers"
    for number, line in enumerate(Path(path).read_text().splitlines(), start=1):
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        values = text.split()
        if len(values) != columns:
            raise SequenceError(
                f"{description} {path} line {number} has {len(values)} values; expected "
                f"{expected}; {fix}"
            )
        rows.append(parse_finite_floats(values, f"{description} {path} line {number}", text, fix))
        if lines is not None:
            lines.append(number)
    if not rows:
        raise SequenceError(f"{description} {path} is empty; expected lines of {expected}")
    return np.array(rows, dtype=np.float64)


def check_quaternions(
    quaternions: np.ndarray, lines: list[int], source: str, fix: str
) -> None:
    """Raise :class:`SequenceError` naming the line of the first quaternion of zero norm.

    Args:
        quaternions: ``(N, 4)`` quaternions in any component order.
        lines: the file line (counted from 1) of each quaternion.
        source: the file's description and path for the message.
        fix: what to do, the end of the message.
    """
    norms = np.linalg.norm(quaternions, axis=1)
    if np.any(norms < MIN_QUATERNION_NORM):
        row = int(np.argmax(norms < MIN_QUATERNION_NORM))
        raise SequenceError(
            f"{source} line {lines[row]}, pose {row + 1} has a zero quaternion "
            f"{quaternions[row].tolist()}; "
            f"{fix}"
        )


def rows_with_poses(rows: np.ndarray, pose_count: int, poses_path: Path) -> np.ndarray:
    """Return which frame ``rows`` (line numbers of a pose file) have a pose; warn about the rest.

    Args:
        rows: ``(N,)`` int64 zero-based pose-file lines of the selected frames.
        pose_count: number of poses in the file.
        poses_path: the pose file, named in the warning.
    """
    keep = rows < pose_count
    if not keep.all():
        logger.warning(
            "%s has %d poses, so %d selected frames have no ground truth",
            poses_path, pose_count, int((~keep).sum()),
        )
    return keep


def interpolated_trajectory(
    source_ns: np.ndarray, source_poses: np.ndarray, query_ns: np.ndarray, max_gap_ns: int
) -> Trajectory:
    """Return the poses interpolated at the ``query_ns`` that :func:`interpolate_poses` covers."""
    valid, poses = interpolate_poses(source_ns, source_poses, query_ns, max_gap_ns)
    return Trajectory(np.asarray(query_ns)[valid], poses)
