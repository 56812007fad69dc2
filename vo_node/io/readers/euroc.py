"""EuRoC MAV (ASL layout): ``mav0/cam0/{data.csv, data/*.png, sensor.yaml}`` and ground truth.

Images are unrectified (radial-tangential distortion) and get undistorted. Ground truth in
``mav0/state_groundtruth_estimate0/data.csv`` is the pose of the body (IMU) frame ``S`` in the
world ``R`` with quaternion order ``w x y z``; the camera pose is
``T_world_cam = T_world_body @ T_body_cam`` with ``T_body_cam`` = ``T_BS`` of the camera's
``sensor.yaml``, interpolated at the image timestamps.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import yaml

from vo_node.io.camera import CalibrationError, camera_from_euroc_sensor, euroc_body_from_sensor
from vo_node.io.readers.poses import (
    check_quaternions,
    interpolated_trajectory,
    matrices_to_poses,
    parse_finite_floats,
    poses_to_matrices,
)
from vo_node.io.sequence import ImageFileSequence, SequenceError
from vo_node.io.trajectory import Trajectory

GROUND_TRUTH_FOLDER = "state_groundtruth_estimate0"
GROUND_TRUTH_COLUMNS = 8
"""Leading columns of a ground-truth row that the reader uses: timestamp, position, quaternion."""
MAX_GROUND_TRUTH_GAP_NS = 50_000_000
"""Largest distance (ns) from an image to its neighbouring ground-truth samples (200 Hz: 5 ms)."""


class EurocSequence(ImageFileSequence):
    """One camera of an EuRoC MAV sequence folder (the folder holding ``mav0``)."""

    layout = "euroc"
    DESCRIPTION = "EuRoC MAV: mav0/cam0/data.csv, mav0/cam0/data/*.png, mav0/cam0/sensor.yaml"
    OPTIONS: tuple[str, ...] = ()

    def __init__(
        self, root: str | Path, camera_name: str = "cam0", stride: int = 1,
        max_frames: int | None = None,
    ) -> None:
        root = Path(root)
        self.mav = root / "mav0" if (root / "mav0").is_dir() else root
        self.camera_folder = self.mav / camera_name
        sensor = _read_sensor_yaml(self.camera_folder / "sensor.yaml")
        camera = camera_from_euroc_sensor(sensor, source=str(self.camera_folder / "sensor.yaml"))
        self.T_body_cam = euroc_body_from_sensor(sensor, source=str(self.camera_folder / "sensor.yaml"))
        timestamps, self.files = _read_image_list(self.camera_folder)
        name = self.mav.parent.name if self.mav.name == "mav0" else self.mav.name
        super().__init__(self.mav.parent, name, camera, timestamps, stride, max_frames)

    @classmethod
    def detect(cls, path: Path) -> bool:
        return (path / "mav0" / "cam0" / "data.csv").is_file() or (path / "cam0" / "data.csv").is_file()

    def _load_ground_truth(self, timestamps_ns: np.ndarray) -> Trajectory | None:
        path = self.mav / GROUND_TRUTH_FOLDER / "data.csv"
        if not path.is_file():
            return None
        stamps, body_poses = read_euroc_ground_truth(path)
        body = interpolated_trajectory(stamps, body_poses, timestamps_ns, MAX_GROUND_TRUTH_GAP_NS)
        camera_poses = matrices_to_poses(poses_to_matrices(body.poses) @ self.T_body_cam)
        return Trajectory(body.timestamps_ns, camera_poses)


def _read_sensor_yaml(path: Path) -> dict:
    if not path.is_file():
        raise CalibrationError(
            f"calibration file {path} not found; an EuRoC camera folder needs its sensor.yaml"
        )
    try:
        document = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise CalibrationError(f"calibration file {path} is not valid YAML: {error}") from None
    if not isinstance(document, dict):
        raise CalibrationError(f"calibration file {path} must contain a YAML mapping")
    return document


def _read_image_list(camera_folder: Path) -> tuple[np.ndarray, list[Path]]:
    """Read ``data.csv`` rows ``timestamp [ns], filename`` into stamps and image paths."""
    csv_path = camera_folder / "data.csv"
    stamps: list[int] = []
    files: list[Path] = []
    with csv_path.open(newline="") as handle:
        for number, row in enumerate(csv.reader(handle), start=1):
            if not row or row[0].lstrip().startswith("#"):
                continue
            if len(row) < 2:
                raise SequenceError(
                    f"{csv_path}:{number}: expected 'timestamp [ns],filename', got {row}"
                )
            try:
                stamps.append(int(row[0].strip()))
            except ValueError:
                raise SequenceError(
                    f"{csv_path}:{number}: timestamp {row[0]!r} is not an integer of nanoseconds"
                ) from None
            files.append(camera_folder / "data" / row[1].strip())
    if not files:
        raise SequenceError(f"{csv_path} lists no images; the EuRoC folder {camera_folder} is empty")
    return np.array(stamps, dtype=np.int64), files


def read_euroc_ground_truth(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Read EuRoC ``state_groundtruth_estimate0/data.csv``.

    Returns:
        ``(M,)`` int64 timestamps in ns and ``(M, 7)`` ``T_world_body`` poses (``q`` reordered to
        ``x y z w``).

    Raises:
        SequenceError: a row is not ``timestamp [ns]`` followed by at least seven finite numbers,
            a quaternion has zero norm, or the file has no rows. The message names the line.
    """
    stamps: list[int] = []
    rows: list[list[float]] = []
    lines: list[int] = []
    fix = (
        f"correct or delete that line, or move {path.parent.name} out of the sequence folder to "
        "run without ground truth"
    )
    with path.open(newline="") as handle:
        for number, row in enumerate(csv.reader(handle), start=1):
            if not row or row[0].lstrip().startswith("#"):
                continue
            if len(row) < GROUND_TRUTH_COLUMNS:
                raise SequenceError(
                    f"ground-truth file {path} line {number} has {len(row)} values; expected "
                    f"at least {GROUND_TRUTH_COLUMNS} (timestamp [ns], p_RS_R x y z, "
                    f"q_RS w x y z); {fix}"
                )
            where = f"ground-truth file {path} line {number}"
            try:
                stamp = int(row[0].strip())
            except ValueError:
                raise SequenceError(
                    f"{where} is invalid: expected an integer timestamp in nanoseconds, got "
                    f"{','.join(row)[:80]!r}; {fix}"
                ) from None
            values = parse_finite_floats(row[1:GROUND_TRUTH_COLUMNS], where, ",".join(row), fix)
            stamps.append(stamp)
            rows.append(values)
            lines.append(number)
    if not rows:
        raise SequenceError(
            f"ground-truth file {path} contains no poses; add its rows, or move "
            f"{path.parent.name} out of the sequence folder to run without ground truth"
        )
    table = np.array(rows, dtype=np.float64)
    stamps_array = np.array(stamps, dtype=np.int64)
    check_quaternions(table[:, 3:7], lines, f"ground-truth file {path}", fix)
    order = np.argsort(stamps_array, kind="stable")
    positions = table[order, 0:3]
    quaternions_wxyz = table[order, 3:7]
    quaternions_xyzw = quaternions_wxyz[:, [1, 2, 3, 0]]
    return stamps_array[order], np.concatenate([positions, quaternions_xyzw], axis=1)
