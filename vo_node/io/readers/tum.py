"""TUM RGB-D: ``rgb.txt`` (``timestamp filename``), ``rgb/*.png`` and ``groundtruth.txt``.

``groundtruth.txt`` lines are ``timestamp tx ty tz qx qy qz qw``, the pose of the colour
camera's optical centre in the motion-capture world. They come at the capture system's rate
(100 Hz) and are interpolated at the image timestamps. The camera comes from ``camera_path``, else ``camera.yaml`` in the
folder, else the published calibration of the Kinect named in the folder name (``freiburg1``,
``freiburg2``, ``freiburg3``), else ``freiburg1`` with a warning.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from vo_node.io.camera import PinholeCamera, load_camera
from vo_node.io.readers.poses import (
    check_quaternions,
    interpolated_trajectory,
    parse_finite_floats,
)
from vo_node.io.sequence import ImageFileSequence, SequenceError, seconds_to_ns
from vo_node.io.trajectory import Trajectory

logger = logging.getLogger(__name__)

TUM_IMAGE_WIDTH = 640
TUM_IMAGE_HEIGHT = 480
FREIBURG_CAMERAS = {
    # Calibrations published with the TUM RGB-D benchmark for the colour camera of each Kinect;
    # freiburg3 images are already undistorted.
    "freiburg1": PinholeCamera(
        TUM_IMAGE_WIDTH, TUM_IMAGE_HEIGHT, 517.306408, 516.469215, 318.643040, 255.313989,
        "plumb_bob", (0.262383, -0.953104, -0.005358, 0.002628, 1.163314),
    ),
    "freiburg2": PinholeCamera(
        TUM_IMAGE_WIDTH, TUM_IMAGE_HEIGHT, 520.908620, 521.007327, 325.141442, 249.701764,
        "plumb_bob", (0.231222, -0.784899, -0.003257, -0.000105, 0.917205),
    ),
    "freiburg3": PinholeCamera(TUM_IMAGE_WIDTH, TUM_IMAGE_HEIGHT, 535.4, 539.2, 320.1, 247.6),
}
DEFAULT_FREIBURG = "freiburg1"
MAX_GROUND_TRUTH_GAP_NS = 50_000_000
"""Largest distance (ns) from an image to its neighbouring ground-truth samples (100 Hz: 10 ms)."""


class TumSequence(ImageFileSequence):
    """The colour images of a TUM RGB-D sequence folder."""

    layout = "tum"
    DESCRIPTION = "TUM RGB-D: rgb.txt, rgb/*.png, optional groundtruth.txt and camera.yaml"
    OPTIONS = ("camera_path",)

    def __init__(
        self, root: str | Path, camera_path: str | Path | None = None, stride: int = 1,
        max_frames: int | None = None,
    ) -> None:
        root = Path(root)
        timestamps, self.files = read_tum_list(root / "rgb.txt", root)
        camera = _tum_camera(root, camera_path)
        self.groundtruth_path = root / "groundtruth.txt"
        super().__init__(root, root.name, camera, timestamps, stride, max_frames)

    @classmethod
    def detect(cls, path: Path) -> bool:
        return (path / "rgb.txt").is_file()

    @classmethod
    def open(
        cls, path: Path, stride: int = 1, max_frames: int | None = None,
        camera_path: str | Path | None = None,
    ) -> "TumSequence":
        return cls(path, camera_path=camera_path, stride=stride, max_frames=max_frames)

    def _load_ground_truth(self, timestamps_ns: np.ndarray) -> Trajectory | None:
        if not self.groundtruth_path.is_file():
            return None
        stamps, poses = read_tum_poses(self.groundtruth_path)
        return interpolated_trajectory(stamps, poses, timestamps_ns, MAX_GROUND_TRUTH_GAP_NS)


def _tum_camera(root: Path, camera_path: str | Path | None) -> PinholeCamera:
    if camera_path is not None:
        return load_camera(camera_path)
    if (root / "camera.yaml").is_file():
        return load_camera(root / "camera.yaml")
    for name, camera in FREIBURG_CAMERAS.items():
        if name in root.name:
            logger.info("%s: using the published %s colour camera calibration", root, name)
            return camera
    logger.warning(
        "%s: no camera.yaml and no freiburg1/2/3 in the folder name; assuming the %s "
        "calibration. Pass the calibration with --camera if that is wrong",
        root, DEFAULT_FREIBURG,
    )
    return FREIBURG_CAMERAS[DEFAULT_FREIBURG]


def _read_stamped_lines(
    path: Path, expected_fields: int, field_names: str
) -> list[tuple[int, int, list[str]]]:
    """Return ``(line number, timestamp_ns, other fields)`` per non-comment line of a TUM file."""
    if not path.is_file():
        raise SequenceError(f"TUM file {path} not found")
    rows: list[tuple[int, int, list[str]]] = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        fields = line.split()
        if not fields or fields[0].startswith("#"):
            continue
        if len(fields) != expected_fields:
            raise SequenceError(
                f"{path}:{number}: expected {expected_fields} fields ({field_names}), got "
                f"{len(fields)}; correct or delete that line"
            )
        try:
            rows.append((number, seconds_to_ns(fields[0]), fields[1:]))
        except ValueError as error:
            raise SequenceError(f"{path}:{number}: {error}; correct or delete that line") from None
    return rows


def read_tum_list(path: Path, root: Path) -> tuple[np.ndarray, list[Path]]:
    """Read ``rgb.txt`` into ``(N,)`` int64 ns timestamps and image paths."""
    rows = _read_stamped_lines(path, 2, "timestamp filename")
    if not rows:
        raise SequenceError(f"{path} lists no images; the TUM folder {root} is empty")
    stamps = np.array([stamp for _, stamp, _ in rows], dtype=np.int64)
    return stamps, [root / fields[0] for _, _, fields in rows]


def read_tum_poses(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Read a TUM pose file into ``(M,)`` int64 ns timestamps and ``(M, 7)`` poses.

    Raises:
        SequenceError: a line has another number of fields, a value that is not a finite number
            or a zero quaternion. The message names the line.
    """
    rows = _read_stamped_lines(path, 8, "timestamp tx ty tz qx qy qz qw")
    fix = "correct or delete that line, or move the file away to run without ground truth"
    poses = []
    for number, _, fields in rows:
        poses.append(parse_finite_floats(fields, f"{path}:{number}:", " ".join(fields), fix))
    table = np.array(poses, dtype=np.float64).reshape(-1, 7)
    check_quaternions(table[:, 3:], [number for number, _, _ in rows], f"TUM pose file {path}", fix)
    stamps = np.array([stamp for _, stamp, _ in rows], dtype=np.int64)
    order = np.argsort(stamps, kind="stable")
    return stamps[order], table[order]
