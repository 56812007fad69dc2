"""KITTI odometry: ``sequences/XX/{image_0/*.png, calib.txt, times.txt}`` and ``poses/XX.txt``.

Images are rectified, so the camera is ``P0`` (for ``image_0``) without distortion. ``times.txt``
contains seconds from the start of the sequence. The poses file, found at ``../../poses/XX.txt``
relative to the sequence folder, has one row per frame: the 3x4 ``T_world_cam0`` row-major,
whose first pose is the identity.
"""

from __future__ import annotations

import logging
from pathlib import Path
import numpy as np

from vo_node.io.camera import CalibrationError, PinholeCamera
from vo_node.io.readers.poses import matrices_to_poses, read_pose_table, rows_with_poses
from vo_node.io.sequence import (
    ImageFileSequence,
    SequenceError,
    list_dataset_images,
    read_image,
    seconds_to_ns,
)
from vo_node.io.trajectory import Trajectory

logger = logging.getLogger(__name__)

PROJECTION_SIZE = 12


class KittiSequence(ImageFileSequence):
    """One grayscale or colour camera (``image_0`` .. ``image_3``) of a KITTI odometry sequence."""

    layout = "kitti"
    DESCRIPTION = "KITTI odometry: sequences/XX with image_0/*.png, calib.txt, times.txt"
    OPTIONS: tuple[str, ...] = ()

    def __init__(
        self, root: str | Path, image_folder: str = "image_0", stride: int = 1,
        max_frames: int | None = None,
    ) -> None:
        root = Path(root)
        self.image_folder = root / image_folder
        self.files = list_dataset_images(self.image_folder, "KITTI")
        projection = read_kitti_projection(root / "calib.txt", f"P{image_folder[-1]}")
        timestamps, self.rows = _read_times(root / "times.txt", self.files)
        height, width = read_image(self.files[0]).shape[:2]
        camera = PinholeCamera(
            width=width, height=height, fx=projection[0, 0], fy=projection[1, 1],
            cx=projection[0, 2], cy=projection[1, 2],
        )
        self.poses_path = root.parent.parent / "poses" / f"{root.name}.txt"
        super().__init__(root, f"kitti_{root.name}", camera, timestamps, stride, max_frames)

    @classmethod
    def detect(cls, path: Path) -> bool:
        return (path / "calib.txt").is_file() and (path / "times.txt").is_file()

    def _load_ground_truth(self, timestamps_ns: np.ndarray) -> Trajectory | None:
        if not self.poses_path.is_file():
            logger.info("no KITTI poses file at %s; running without ground truth", self.poses_path)
            return None
        matrices = read_kitti_poses(self.poses_path)
        rows = self.rows[self.indices]
        keep = rows_with_poses(rows, len(matrices), self.poses_path)
        poses = matrices_to_poses(matrices[rows[keep]])
        return Trajectory(timestamps_ns[keep], poses)


def read_kitti_projection(path: Path, key: str) -> np.ndarray:
    """Return the ``(3, 4)`` projection matrix ``key`` (``P0``..``P3``) of a KITTI ``calib.txt``."""
    if not path.is_file():
        raise CalibrationError(f"KITTI calibration {path} not found; the sequence needs calib.txt")
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        name, _, values = line.partition(":")
        if name.strip() != key:
            continue
        try:
            numbers = [float(value) for value in values.split()]
        except ValueError:
            raise CalibrationError(f"{path}:{number}: {key} contains a value that is not a number") from None
        if len(numbers) != PROJECTION_SIZE:
            raise CalibrationError(
                f"{path}:{number}: {key} needs 12 values (3x4 row-major), got {len(numbers)}"
            )
        return np.array(numbers).reshape(3, 4)
    raise CalibrationError(f"KITTI calibration {path} has no {key} line")


def _read_times(path: Path, files: list[Path]) -> tuple[np.ndarray, np.ndarray]:
    """Return the ``times.txt`` stamp and line of each image; a numeric file name is its line."""
    if not path.is_file():
        raise SequenceError(f"KITTI timestamps {path} not found; the sequence needs times.txt")
    stamps = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            stamps.append(seconds_to_ns(line))
        except ValueError as error:
            raise SequenceError(
                f"{path} line {number}: {error}; write the image's time in seconds there"
            ) from None
    numbered = all(file.stem.isdigit() for file in files)
    rows = [int(file.stem) for file in files] if numbered else list(range(len(files)))
    if max(rows) >= len(stamps):
        raise SequenceError(
            f"{path} has {len(stamps)} timestamps but image {files[rows.index(max(rows))]} needs "
            f"line {max(rows) + 1}; give one line per image"
        )
    return np.array([stamps[row] for row in rows], dtype=np.int64), np.array(rows, dtype=np.int64)


def read_kitti_poses(path: Path) -> np.ndarray:
    """Read a KITTI poses file into ``(N, 4, 4)`` ``T_world_cam`` matrices."""
    rows = read_pose_table(path, PROJECTION_SIZE, "KITTI poses file", "12 (3x4)")
    matrices = np.tile(np.eye(4), (len(rows), 1, 1))
    matrices[:, :3, :] = rows.reshape(-1, 3, 4)
    return matrices
