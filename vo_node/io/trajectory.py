"""Camera trajectories with nanosecond timestamps, and TUM-format files.

A TUM line is ``timestamp_s tx ty tz qx qy qz qw``: the pose ``T_world_cam`` of the camera at that
time, seconds as a decimal number.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vo_node.io.atomic import atomic_write

NANOSECONDS_PER_SECOND = 1_000_000_000


MAX_TUM_STAMP_NS = 9 * 10**18
"""Largest timestamp read from a TUM file: 9e9 s (Unix time in the year 2255), inside int64."""


class TrajectoryError(ValueError):
    """A trajectory or trajectory file is invalid; the message names the file and the fix."""


@dataclass
class Trajectory:
    """Poses over time.

    Attributes:
        timestamps_ns: ``(N,)`` int64, strictly increasing, nanoseconds.
        poses: ``(N, 7)`` float64 ``T_world_cam`` as ``[tx, ty, tz, qx, qy, qz, qw]``.
    """

    timestamps_ns: np.ndarray
    poses: np.ndarray

    def __post_init__(self) -> None:
        self.timestamps_ns = np.asarray(self.timestamps_ns, dtype=np.int64).reshape(-1)
        self.poses = np.asarray(self.poses, dtype=np.float64)
        if self.poses.ndim != 2 or self.poses.shape[1] != 7:
            raise TrajectoryError(f"poses must have shape (N, 7), got {self.poses.shape}")
        if len(self.timestamps_ns) != len(self.poses):
            raise TrajectoryError(
                f"{len(self.timestamps_ns)} timestamps but {len(self.poses)} poses; "
                "give one timestamp per pose"
            )
        if len(self.timestamps_ns) > 1 and np.any(np.diff(self.timestamps_ns) <= 0):
            index = int(np.argmax(np.diff(self.timestamps_ns) <= 0)) + 1
            raise TrajectoryError(
                f"timestamps must increase strictly; entry {index} "
                f"({self.timestamps_ns[index]} ns) does not follow {self.timestamps_ns[index - 1]} ns"
            )

    def __len__(self) -> int:
        return len(self.timestamps_ns)

    @property
    def timestamps_s(self) -> np.ndarray:
        """``(N,)`` float64 seconds."""
        return self.timestamps_ns / NANOSECONDS_PER_SECOND

    @property
    def positions(self) -> np.ndarray:
        """``(N, 3)`` camera centres in the world frame."""
        return self.poses[:, :3]

    def path_length(self) -> float:
        """Sum of the distances between consecutive positions, in trajectory units."""
        if len(self) < 2:
            return 0.0
        return float(np.linalg.norm(np.diff(self.positions, axis=0), axis=1).sum())


def write_tum(path: str | Path, trajectory: Trajectory) -> Path:
    """Write ``trajectory`` as a TUM file atomically and return the path."""
    path = Path(path)
    with atomic_write(path) as handle:
        for stamp_ns, pose in zip(trajectory.timestamps_ns, trajectory.poses):
            seconds, remainder = divmod(int(stamp_ns), NANOSECONDS_PER_SECOND)
            # Adding 0.0 turns the -0.0 that tiny negative values round to into 0.0.
            values = " ".join(f"{round(float(value), 9) + 0.0:.9f}" for value in pose)
            handle.write(f"{seconds}.{remainder:09d} {values}\n")
    return path


def read_tum(path: str | Path) -> Trajectory:
    """Read a TUM file (``#`` comments allowed) into a :class:`Trajectory`."""
    path = Path(path)
    if not path.is_file():
        raise TrajectoryError(f"trajectory file {path} not found")
    stamps: list[int] = []
    poses: list[list[float]] = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        fields = line.replace(",", " ").split()
        if len(fields) != 8:
            raise TrajectoryError(
                f"{path}:{number}: expected 8 values (timestamp tx ty tz qx qy qz qw), "
                f"found {len(fields)}; correct or delete that line"
            )
        try:
            stamps.append(_seconds_text_to_ns(fields[0]))
            poses.append([float(value) for value in fields[1:]])
        except ValueError:
            raise TrajectoryError(
                f"{path}:{number}: not a number in {line!r}; correct or delete that line"
            ) from None
        if not all(math.isfinite(value) for value in poses[-1]):
            raise TrajectoryError(
                f"{path}:{number}: a pose value is not a finite number in {line!r}; correct or "
                "delete that line"
            )
        if abs(stamps[-1]) > MAX_TUM_STAMP_NS:
            raise TrajectoryError(
                f"{path}:{number}: timestamp {fields[0]} is not in seconds; TUM files give "
                "seconds (divide nanosecond stamps by 1e9)"
            )
    if not stamps:
        raise TrajectoryError(f"trajectory file {path} contains no poses")
    return Trajectory(np.array(stamps, dtype=np.int64), np.array(poses))


def _seconds_text_to_ns(text: str) -> int:
    """Convert decimal seconds text to integer nanoseconds without float rounding."""
    whole, _, fraction = text.partition(".")
    fraction = (fraction + "000000000")[:9]
    sign = -1 if whole.startswith("-") else 1
    return int(whole) * NANOSECONDS_PER_SECOND + sign * int(fraction or 0)
