"""A folder of images sorted by name with a ROS ``camera_info`` YAML.

Timestamps come from the first of these that applies:

1. ``times.txt``, one line of seconds per image in name order;
2. the file names, when every name is a timestamp. ``1403638538.5778.png`` is read as seconds,
   and an 18- or 19-digit integer name like ``1403638538577829376.png`` as nanoseconds (the
   EuRoC and ROS convention);
3. ``index / fps``, with ``fps`` defaulting to 20 Hz.

``fps`` applies only to the third case: a folder with its own timestamps keeps them, and a
given ``fps`` is ignored with a warning.

An optional ``groundtruth.tum`` (TUM lines of ``T_world_cam``) gives the ground truth; its poses
are interpolated to the image timestamps.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import numpy as np

from vo_node.io.camera import CalibrationError, PinholeCamera, load_camera
from vo_node.io.readers.poses import interpolated_trajectory
from vo_node.io.sequence import (
    IMAGE_EXTENSIONS,
    NANOSECONDS_PER_SECOND,
    ImageFileSequence,
    SequenceError,
    list_images,
    seconds_to_ns,
)
from vo_node.io.trajectory import Trajectory, read_tum

logger = logging.getLogger(__name__)

DEFAULT_FPS = 20.0
CAMERA_FILE = "camera.yaml"
TIMES_FILE = "times.txt"
GROUND_TRUTH_FILE = "groundtruth.tum"
GROUND_TRUTH_MAX_GAP_NS = NANOSECONDS_PER_SECOND // 2
"""Image times farther than this from the nearest ground-truth samples get no pose."""
SECONDS_NAME = re.compile(r"^\d+\.\d+$")
NANOSECONDS_NAME = re.compile(r"^\d{18,19}$")


class ImageFolderSequence(ImageFileSequence):
    """Images in one folder, sorted by file name."""

    layout = "images"
    DESCRIPTION = "image folder: *.png/*.jpg sorted by name, camera.yaml (or --camera), optional times.txt"
    OPTIONS = ("camera_path", "fps")

    def __init__(
        self, root: str | Path, camera_path: str | Path | None = None, fps: float | None = None,
        stride: int = 1, max_frames: int | None = None,
    ) -> None:
        root = Path(root)
        if not root.is_dir():
            raise SequenceError(f"image folder {root} not found")
        self.files = list_images(root)
        if not self.files:
            raise SequenceError(f"image folder {root} contains no images ({', '.join(IMAGE_EXTENSIONS)})")
        check_fps(fps)
        camera = find_camera(root, camera_path)
        timestamps = self._timestamps(root, fps)
        super().__init__(root, root.name, camera, timestamps, stride, max_frames)

    @classmethod
    def detect(cls, path: Path) -> bool:
        return path.is_dir() and bool(list_images(path))

    @classmethod
    def open(
        cls, path: Path, stride: int = 1, max_frames: int | None = None,
        camera_path: str | Path | None = None, fps: float | None = None,
    ) -> "ImageFolderSequence":
        return cls(path, camera_path=camera_path, fps=fps, stride=stride, max_frames=max_frames)

    def _load_ground_truth(self, timestamps_ns: np.ndarray) -> Trajectory | None:
        path = self.root / GROUND_TRUTH_FILE
        if not path.is_file():
            return None
        reference = read_tum(path)
        return interpolated_trajectory(
            reference.timestamps_ns, reference.poses, timestamps_ns, GROUND_TRUTH_MAX_GAP_NS
        )

    def _timestamps(self, root: Path, fps: float | None) -> np.ndarray:
        stamps, source = self._recorded_timestamps(root)
        if stamps is None:
            return frame_times(len(self.files), DEFAULT_FPS if fps is None else fps)
        if fps is not None:
            warn_fps_ignored(root, source, fps)
        return stamps

    def _recorded_timestamps(self, root: Path) -> tuple[np.ndarray | None, str]:
        """Return the timestamps from ``times.txt`` or the file names and their source name."""
        times = root / TIMES_FILE
        if times.is_file():
            return _read_times(times, len(self.files)), TIMES_FILE
        stems = [path.stem for path in self.files]
        if all(SECONDS_NAME.match(stem) for stem in stems):
            stamps = np.array([seconds_to_ns(stem) for stem in stems], dtype=np.int64)
            return stamps, "the file names (seconds)"
        if all(NANOSECONDS_NAME.match(stem) for stem in stems):
            stamps = np.array([int(stem) for stem in stems], dtype=np.int64)
            return stamps, "the file names (nanoseconds)"
        return None, ""


def check_fps(fps: float | None) -> None:
    """Raise :class:`SequenceError` unless ``fps`` is None or a positive frame rate in Hz."""
    if fps is not None and not fps > 0:
        raise SequenceError(
            f"fps must be positive, got {fps}; pass the frame rate in Hz (--fps) or leave it "
            "out to use the input's own timestamps"
        )


def warn_fps_ignored(source_path: Path, source: str, fps: float) -> None:
    """Log that ``fps`` is ignored because ``source_path`` has timestamps in ``source``."""
    logger.warning(
        "%s has timestamps in %s, so they are used and fps %g (--fps) is ignored; fps applies "
        "only to inputs without timestamps", source_path, source, fps,
    )


def frame_times(count: int, fps: float) -> np.ndarray:
    """Return ``(count,)`` int64 timestamps ``i / fps`` in nanoseconds."""
    check_fps(fps)
    return np.round(np.arange(count) * (NANOSECONDS_PER_SECOND / fps)).astype(np.int64)


def find_camera(folder: Path, camera_path: str | Path | None, video: Path | None = None) -> PinholeCamera:
    """Load ``camera_path``, else ``<video>.yaml``, else ``camera.yaml`` in ``folder``."""
    if camera_path is not None:
        return load_camera(camera_path)
    candidates = ([video.with_suffix(".yaml")] if video is not None else []) + [folder / CAMERA_FILE]
    for candidate in candidates:
        if candidate.is_file():
            return load_camera(candidate)
    raise CalibrationError(
        f"missing calibration for {video or folder}: none of {', '.join(map(str, candidates))} "
        "exists; write the camera as a ROS camera_info YAML there or pass its path with "
        "--camera"
    )


def _read_times(path: Path, count: int) -> np.ndarray:
    numbered = [
        (number, line) for number, line in enumerate(path.read_text().splitlines(), start=1)
        if line.strip() and not line.startswith("#")
    ]
    if len(numbered) != count:
        raise SequenceError(
            f"{path} has {len(numbered)} timestamps for {count} images; give one line of seconds "
            "per image (in file name order), or delete it to take the times from the file names "
            "or --fps"
        )
    stamps = []
    for number, line in numbered:
        try:
            stamps.append(seconds_to_ns(line.split()[0]))
        except ValueError as error:
            raise SequenceError(
                f"{path} line {number}: {error}; write the image's time in seconds there, or "
                "delete the file to take the times from the file names or --fps"
            ) from None
    return np.array(stamps, dtype=np.int64)
