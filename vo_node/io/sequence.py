"""Image sequences: frames with nanosecond timestamps, their camera and optional ground truth.

Every dataset layout is a :class:`Sequence` subclass under ``vo_node/io/readers`` (and
``vo_node/io/bag.py``). The base class owns what all of them share: frame selection (``stride``,
``max_frames``), the timestamp check, image checks (readable, 8-bit, calibrated size),
undistortion, and restricting the ground truth to the selected frames. :func:`open_sequence`
detects the layout of a path.
"""

from __future__ import annotations

import abc
import logging
import os
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from functools import cached_property
from pathlib import Path
from typing import Iterator

import cv2
import numpy as np

from vo_node.io.camera import PinholeCamera, Undistorter
from vo_node.io.trajectory import NANOSECONDS_PER_SECOND, Trajectory, TrajectoryError

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".pgm", ".ppm", ".tif", ".tiff")
JPEG_EXTENSIONS = (".jpg", ".jpeg")
JPEG_END_MARKER = b"\xff\xd9"
UINT16_TO_UINT8 = 257.0
"""Divisor that maps 0..65535 onto 0..255."""


class SequenceError(ValueError):
    """A sequence folder, file or frame is invalid; the message names it and the fix."""


@dataclass
class Frame:
    """One input image.

    Attributes:
        image: ``(H, W)`` grayscale or ``(H, W, 3)`` RGB uint8, already undistorted, matching
            the sequence's :attr:`Sequence.camera`.
        timestamp_ns: capture time in nanoseconds.
        index: position of the frame in the full sequence, before ``stride`` and
            ``max_frames`` selection.
    """

    image: np.ndarray
    timestamp_ns: int
    index: int


class Sequence(abc.ABC):
    """A lazily read image sequence with its camera and optional ground truth.

    Subclasses gather the timestamps of all frames and the calibration, call
    ``super().__init__``, and implement :meth:`_read_images` (one image at a time),
    :meth:`describe_frame` and :meth:`_load_ground_truth`.

    Attributes:
        name: short name for logs and output folders.
        root: the folder or file the sequence was opened from.
        layout: dataset layout name (``euroc``, ``kitti``, ...).
    """

    layout: str = "sequence"

    def __init__(
        self,
        root: Path,
        name: str,
        camera: PinholeCamera,
        timestamps_ns: np.ndarray,
        stride: int = 1,
        max_frames: int | None = None,
        new_camera: str = "same",
    ) -> None:
        self.root = Path(root)
        self.name = name
        if stride < 1:
            raise SequenceError(f"stride must be at least 1, got {stride}")
        if max_frames is not None and max_frames < 1:
            raise SequenceError(f"max_frames must be at least 1 (or None for all), got {max_frames}")
        all_timestamps = np.asarray(timestamps_ns, dtype=np.int64).reshape(-1)
        if len(all_timestamps) == 0:
            raise SequenceError(f"sequence {self.root} contains no frames; check the folder")
        self._check_timestamps(all_timestamps)
        self.stride = stride
        self.max_frames = max_frames
        self.indices = np.arange(0, len(all_timestamps), stride)[:max_frames]
        self.timestamps_ns = all_timestamps[self.indices]
        self.total_frames = len(all_timestamps)
        self.raw_camera = camera
        self._undistorter = Undistorter(camera, new_camera)

    @property
    def camera(self) -> PinholeCamera:
        """Camera of the yielded frames (after undistortion, so without a distortion model)."""
        return self._undistorter.camera

    def __len__(self) -> int:
        return len(self.indices)

    def __iter__(self) -> Iterator[Frame]:
        stamps = dict(zip(self.indices.tolist(), self.timestamps_ns.tolist()))
        for index, image in self._read_images(self.indices.tolist()):
            image = self._prepare_image(image, index)
            yield Frame(image=image, timestamp_ns=int(stamps[index]), index=index)

    @cached_property
    def ground_truth(self) -> Trajectory | None:
        """``T_world_cam`` of the selected frames (optical axes, ns), or None when unknown.

        Frames without a ground-truth pose (outside the recorded range or in a gap) are left out.
        Callers read it before tracking, so a malformed ground-truth file stops a run before
        any work is lost.

        Raises:
            SequenceError: the ground truth is malformed; the message names the file or topic.
            TrajectoryError: a TUM ground-truth file is malformed.
        """
        try:
            trajectory = self._load_ground_truth(self.timestamps_ns)
        except (SequenceError, TrajectoryError):
            raise
        except ValueError as error:
            # A check that a reader lacks surfaces here, e.g. scipy's error for a rotation it
            # cannot build, so it still ends in one line that names the sequence.
            raise SequenceError(
                f"the ground truth of {self.root} is invalid ({error}); correct its ground-truth "
                "file or move it away to run without ground truth"
            ) from None
        if trajectory is None or len(trajectory) == 0:
            return None
        if len(trajectory) < len(self):
            logger.warning(
                "%s: ground truth covers %d of %d frames", self.name, len(trajectory), len(self)
            )
        return trajectory

    @abc.abstractmethod
    def _read_images(self, indices: list[int]) -> Iterator[tuple[int, np.ndarray]]:
        """Yield ``(index, image)`` for increasing ``indices``, reading one image at a time.

        Images are ``(H, W)`` or ``(H, W, 3)`` RGB in the source camera's geometry.
        """

    @abc.abstractmethod
    def describe_frame(self, index: int) -> str:
        """Return where frame ``index`` comes from (a file, a message) for error messages."""

    def _load_ground_truth(self, timestamps_ns: np.ndarray) -> Trajectory | None:
        """Return ``T_world_cam`` at (a subset of) ``timestamps_ns``; None without ground truth."""
        return None

    def _check_timestamps(self, timestamps_ns: np.ndarray) -> None:
        steps = np.diff(timestamps_ns)
        if np.any(steps <= 0):
            index = int(np.argmax(steps <= 0)) + 1
            raise SequenceError(
                f"timestamps must increase strictly, but frame {index} ({self.describe_frame(index)},"
                f" {timestamps_ns[index]} ns) does not follow frame {index - 1} "
                f"({timestamps_ns[index - 1]} ns); sort the frames by time and remove duplicates"
            )

    def _prepare_image(self, image: np.ndarray, index: int) -> np.ndarray:
        """Check type and size, convert to uint8, and undistort."""
        image = to_uint8(image, self.describe_frame(index))
        height, width = image.shape[:2]
        if (width, height) != self.raw_camera.size:
            raise SequenceError(
                f"{self.describe_frame(index)} is {width}x{height} pixels but the calibration is "
                f"{self.raw_camera.width}x{self.raw_camera.height}; use the calibration of this "
                "camera at this resolution"
            )
        return self._undistorter(image)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(name={self.name!r}, frames={len(self)}, "
            f"camera={self.camera.width}x{self.camera.height})"
        )


class ImageFileSequence(Sequence):
    """A sequence stored as one image file per frame, listed in ``self.files`` in frame order.

    Subclasses set ``files`` and call ``super().__init__``. :meth:`open` passes only ``stride``
    and ``max_frames``, so a layout with further options overrides it.
    """

    files: list[Path]

    @classmethod
    def open(cls, path: Path, stride: int = 1, max_frames: int | None = None) -> "ImageFileSequence":
        """Open the sequence at ``path`` with the layout's default camera and options."""
        return cls(path, stride=stride, max_frames=max_frames)

    def describe_frame(self, index: int) -> str:
        return f"image {self.files[index]}"

    def _read_images(self, indices: list[int]) -> Iterator[tuple[int, np.ndarray]]:
        for index in indices:
            yield index, read_image(self.files[index])


# --------------------------------------------------------------------------------------------
# Helpers for readers


def read_image(path: Path) -> np.ndarray:
    """Read an image file as ``(H, W)`` grayscale or ``(H, W, 3)`` RGB (uint8 or uint16).

    Raises:
        SequenceError: the file is missing, a folder, not readable, empty, truncated or not an
            image.
    """
    fix = "re-extract or re-copy the file, or remove it from the sequence"
    if path.is_dir():
        raise SequenceError(f"image file {path} is a folder, not an image; {fix}")
    if not path.is_file():
        raise SequenceError(f"image file {path} not found; {fix}")
    if not os.access(path, os.R_OK):
        raise SequenceError(
            f"image file {path} is not readable (permission denied); make it readable with chmod"
        )
    if path.suffix.lower() in JPEG_EXTENSIONS and not _jpeg_is_complete(path):
        raise SequenceError(f"image file {path} is truncated (no JPEG end marker); {fix}")
    image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if image is None:
        raise SequenceError(f"image file {path} could not be decoded (truncated or not an image); {fix}")
    return to_rgb(image)


def _jpeg_is_complete(path: Path) -> bool:
    with path.open("rb") as handle:
        handle.seek(0, 2)
        if handle.tell() < len(JPEG_END_MARKER):
            return False
        handle.seek(-len(JPEG_END_MARKER), 2)
        return handle.read() == JPEG_END_MARKER


def to_rgb(image: np.ndarray) -> np.ndarray:
    """Convert an OpenCV image (gray, BGR or BGRA) to gray ``(H, W)`` or RGB ``(H, W, 3)``."""
    if image.ndim == 3 and image.shape[2] == 1:
        return image[:, :, 0]
    if image.ndim == 3 and image.shape[2] == 3:
        return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    if image.ndim == 3 and image.shape[2] == 4:
        return cv2.cvtColor(image, cv2.COLOR_BGRA2RGB)
    return image


def to_uint8(image: np.ndarray, source: str) -> np.ndarray:
    """Return ``image`` as uint8, scaling 16-bit images; raise on other types or shapes."""
    if image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[2] != 3):
        raise SequenceError(
            f"{source} has shape {image.shape}; expected (H, W) grayscale or (H, W, 3) RGB"
        )
    if image.dtype == np.uint8:
        return image
    if image.dtype == np.uint16:
        return np.round(image / UINT16_TO_UINT8).astype(np.uint8)
    raise SequenceError(f"{source} has pixel type {image.dtype}; expected 8- or 16-bit images")


def seconds_to_ns(text: str) -> int:
    """Convert decimal seconds text (``1403638538.577829``, ``1.038752e-01``) to nanoseconds.

    Decimal arithmetic keeps epoch timestamps exact to the nanosecond, which float64 does not.
    """
    try:
        value = Decimal(text.strip()) * NANOSECONDS_PER_SECOND
    except InvalidOperation:
        raise ValueError(f"not a number of seconds: {text!r}") from None
    if not value.is_finite():
        raise ValueError(f"not a finite number of seconds: {text.strip()!r}")
    return int(value.to_integral_value())


def list_images(folder: Path) -> list[Path]:
    """Return the image files directly in ``folder``, sorted by name."""
    return sorted(
        p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
    )


def list_dataset_images(folder: Path, dataset: str) -> list[Path]:
    """Return the images of a dataset's image folder, sorted by name.

    Raises:
        SequenceError: the folder does not exist or contains no images; the message starts with
            ``dataset`` (``KITTI``, ``TartanAir``).
    """
    if not folder.is_dir():
        raise SequenceError(f"{dataset} image folder {folder} not found")
    files = list_images(folder)
    if not files:
        raise SequenceError(f"{dataset} image folder {folder} contains no images")
    return files


OPTION_FLAGS = {
    "camera_path": "--camera",
    "fps": "--fps",
    "image_topic": "--image-topic",
    "groundtruth_topic": "--groundtruth-topic",
    "T_body_cam": "--groundtruth-extrinsic",
}
"""Command-line option of ``python -m vo_node.run`` for each reader option, named in errors."""


def open_sequence(
    path: str | Path,
    stride: int = 1,
    max_frames: int | None = None,
    *,
    camera_path: str | Path | None = None,
    fps: float | None = None,
    image_topic: str | None = None,
    groundtruth_topic: str | None = None,
    T_body_cam: np.ndarray | None = None,
) -> Sequence:
    """Open ``path`` with the reader of its layout, detected from the folder contents.

    Args:
        path: a dataset folder, an image folder, a video file or a ROS 2 bag folder. A folder
            that contains exactly one sequence of a dataset layout one or two levels down (a
            KITTI odometry root with ``sequences/07``) opens that sequence.
        stride: keep every ``stride``-th frame.
        max_frames: keep at most this many frames (after ``stride``); None keeps all.
        camera_path: calibration YAML for layouts that carry none (image folder, video) or to
            replace the one they carry (TUM RGB-D, ROS 2 bag).
        fps: frame rate for image folders without timestamps and for videos without them.
            Layouts with their own timestamps (EuRoC, KITTI, TartanAir, TUM RGB-D, ROS 2 bags)
            ignore it with a warning.
        image_topic: image topic of a ROS 2 bag with more than one.
        groundtruth_topic: pose topic of a ROS 2 bag to use as ground truth.
        T_body_cam: ``(4, 4)`` camera pose in the body frame whose pose ``groundtruth_topic``
            carries (ROS 2 bags); None when the topic carries the camera pose itself.

    Raises:
        SequenceError: the path does not exist, matches no supported layout (the message lists
            the layouts) or contains several sequences (the message lists them).
    """
    from vo_node.io.readers import detect_reader, resolve_sequence_path

    path = Path(path)
    if not path.exists():
        raise SequenceError(f"sequence path {path} does not exist; check the path")
    path = resolve_sequence_path(path)
    reader = detect_reader(path)
    options = {
        "camera_path": camera_path, "fps": fps, "image_topic": image_topic,
        "groundtruth_topic": groundtruth_topic, "T_body_cam": T_body_cam,
    }
    accepted = {key: value for key, value in options.items() if value is not None}
    if "fps" in accepted and "fps" not in reader.OPTIONS:
        # Every layout without the fps option has its own frame times, and the help of --fps
        # promises a warning for those rather than an error.
        logger.warning(
            "%s is a %s sequence with its own timestamps, so they are used and fps %g (--fps) "
            "is ignored; fps applies only to image folders and videos without timestamps",
            path, reader.layout, accepted.pop("fps"),
        )
    unsupported = sorted(set(accepted) - set(reader.OPTIONS))
    if unsupported:
        rejected = ", ".join(f"{name} ({OPTION_FLAGS[name]})" for name in unsupported)
        allowed = ", ".join(OPTION_FLAGS[name] for name in reader.OPTIONS)
        raise SequenceError(
            f"{reader.layout} sequences do not take {rejected}; leave it out (they accept "
            f"{allowed or 'no extra options'})"
        )
    sequence = reader.open(path, stride=stride, max_frames=max_frames, **accepted)
    logger.info("opened %s sequence %s: %d frames", reader.layout, path, len(sequence))
    return sequence
