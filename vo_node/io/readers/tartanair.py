"""TartanAir: ``image_left/NNNNNN_left.png``, ``pose_left.txt`` (NED) and the left camera.

``pose_left.txt`` has one line ``tx ty tz qx qy qz qw`` per frame: the camera body pose in a
north-east-down world, where the body axes are x forward, y right, z down. The optical camera
axes (x right, y down, z forward) relate to the body axes by the permutation ``M`` with
``p_body = M @ p_optical``::

    M = [[0, 0, 1],    body x (forward) = optical z
         [1, 0, 0],    body y (right)   = optical x
         [0, 1, 0]]    body z (down)    = optical y

The reader returns ``T_world_cam = M^T @ T_ned_body @ M``. The right factor turns the body frame
into the optical camera frame. The left factor re-expresses the world in the same permuted axes
(x east, y down, z north), so a level camera facing north looks along world +z with gravity
along +y.
This equals the ``[ty, tz, tx, qy, qz, qx, qw]`` reordering DPVO applies to these files.

TartanAir has no timestamps; frames are 10 Hz, so frame ``i`` gets ``i * 100 ms``.
"""

from __future__ import annotations

import logging
from pathlib import Path
import numpy as np

from vo_node.io.camera import PinholeCamera, load_camera
from vo_node.io.readers.poses import (
    POSE_SIZE,
    check_quaternions,
    matrices_to_poses,
    poses_to_matrices,
    read_pose_table,
    rows_with_poses,
)
from vo_node.io.sequence import ImageFileSequence, SequenceError, list_dataset_images
from vo_node.io.trajectory import Trajectory

logger = logging.getLogger(__name__)

FRAME_PERIOD_NS = 100_000_000
"""TartanAir frames are rendered at a nominal 10 Hz."""
DEFAULT_CAMERA = PinholeCamera(width=640, height=480, fx=320.0, fy=320.0, cx=320.0, cy=240.0)
"""The fixed TartanAir v1 intrinsics (640x480, 90 degree horizontal field of view)."""
NED_BODY_FROM_OPTICAL = np.array([[0.0, 0.0, 1.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
"""``M`` above: maps optical camera coordinates to NED body coordinates."""


class TartanAirSequence(ImageFileSequence):
    """The left (or right) camera of one TartanAir trajectory folder."""

    layout = "tartanair"
    DESCRIPTION = "TartanAir: image_left/*_left.png, pose_left.txt (NED), camera_info_left.yaml"
    OPTIONS: tuple[str, ...] = ()

    def __init__(
        self, root: str | Path, side: str = "left", stride: int = 1, max_frames: int | None = None
    ) -> None:
        root = Path(root)
        self.image_folder = root / f"image_{side}"
        self.files = list_dataset_images(self.image_folder, "TartanAir")
        self.rows = np.array([_frame_number(path) for path in self.files], dtype=np.int64)
        calibration = root / f"camera_info_{side}.yaml"
        if calibration.is_file():
            camera = load_camera(calibration)
        else:
            logger.info("no %s; using the TartanAir intrinsics fx=fy=320, cx=320, cy=240", calibration)
            camera = DEFAULT_CAMERA
        self.poses_path = root / f"pose_{side}.txt"
        super().__init__(root, root.name, camera, self.rows * FRAME_PERIOD_NS, stride, max_frames)

    @classmethod
    def detect(cls, path: Path) -> bool:
        return (path / "image_left").is_dir() and (path / "pose_left.txt").is_file()

    def _load_ground_truth(self, timestamps_ns: np.ndarray) -> Trajectory | None:
        if not self.poses_path.is_file():
            return None
        ned_poses = read_tartanair_poses(self.poses_path)
        rows = self.rows[self.indices]
        keep = rows_with_poses(rows, len(ned_poses), self.poses_path)
        return Trajectory(timestamps_ns[keep], ned_to_optical(ned_poses[rows[keep]]))


def _frame_number(path: Path) -> int:
    prefix = path.stem.split("_")[0]
    if not prefix.isdigit():
        raise SequenceError(
            f"TartanAir image {path} does not start with a frame number (NNNNNN_left.png)"
        )
    return int(prefix)


def read_tartanair_poses(path: Path) -> np.ndarray:
    """Read ``pose_left.txt`` into ``(N, 7)`` NED body poses ``[t, q_xyzw]``.

    Raises:
        SequenceError: as :func:`read_pose_table`, or a quaternion has zero norm.
    """
    lines: list[int] = []
    layout = "7 (tx ty tz qx qy qz qw)"
    poses = read_pose_table(path, POSE_SIZE, "TartanAir pose file", layout, lines)
    check_quaternions(
        poses[:, 3:], lines, f"TartanAir pose file {path}",
        "correct that line: each line needs a unit quaternion qx qy qz qw",
    )
    return poses


def ned_to_optical(ned_poses: np.ndarray) -> np.ndarray:
    """Convert ``(N, 7)`` NED body poses to optical ``T_world_cam`` poses (see module docstring)."""
    permutation = np.eye(4)
    permutation[:3, :3] = NED_BODY_FROM_OPTICAL
    matrices = permutation.T @ poses_to_matrices(ned_poses) @ permutation
    return matrices_to_poses(matrices)
