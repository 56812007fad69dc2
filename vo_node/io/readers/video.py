"""A video file read with ``cv2.VideoCapture`` and a camera YAML.

Timestamps are the decoder's ``CAP_PROP_POS_MSEC`` of each frame. Only when the decoder reports no
strictly increasing times does frame ``i`` get ``i / fps``, with the given ``fps`` or else the
container's frame rate; a given ``fps`` is ignored with a warning when the decoder's times
increase. Opening scans the file once (``grab`` without colour conversion) to count frames and
collect timestamps.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Iterator

import cv2
import numpy as np

from vo_node.io.readers.folder import check_fps, find_camera, frame_times, warn_fps_ignored
from vo_node.io.sequence import Sequence, SequenceError, to_rgb

logger = logging.getLogger(__name__)

VIDEO_EXTENSIONS = (".mp4", ".avi", ".mkv", ".mov", ".webm", ".m4v", ".mpg", ".mpeg")
NANOSECONDS_PER_MILLISECOND = 1_000_000


class VideoSequence(Sequence):
    """Frames of one video file."""

    layout = "video"
    DESCRIPTION = f"video file ({', '.join(VIDEO_EXTENSIONS)}) with <name>.yaml, camera.yaml or --camera"
    OPTIONS = ("camera_path", "fps")

    def __init__(
        self, path: str | Path, camera_path: str | Path | None = None, fps: float | None = None,
        stride: int = 1, max_frames: int | None = None,
    ) -> None:
        self.path = Path(path)
        check_fps(fps)
        camera = find_camera(self.path.parent, camera_path, video=self.path)
        stamps_ms, container_fps = self._scan()
        timestamps = np.round(np.asarray(stamps_ms) * NANOSECONDS_PER_MILLISECOND).astype(np.int64)
        if len(timestamps) > 1 and np.any(np.diff(timestamps) <= 0):
            timestamps = frame_times(len(stamps_ms), self._fallback_fps(fps, container_fps))
        elif fps is not None:
            warn_fps_ignored(self.path, "the decoder's frame times", fps)
        super().__init__(self.path, self.path.stem, camera, timestamps, stride, max_frames)

    @classmethod
    def detect(cls, path: Path) -> bool:
        return path.is_file() and path.suffix.lower() in VIDEO_EXTENSIONS

    @classmethod
    def open(
        cls, path: Path, stride: int = 1, max_frames: int | None = None,
        camera_path: str | Path | None = None, fps: float | None = None,
    ) -> "VideoSequence":
        return cls(path, camera_path=camera_path, fps=fps, stride=stride, max_frames=max_frames)

    def _fallback_fps(self, fps: float | None, container_fps: float) -> float:
        """Return the frame rate for a video whose decoder times do not increase."""
        if fps is not None:
            logger.warning("%s: the decoder's frame times do not increase; using fps %g",
                           self.path, fps)
            return fps
        if not container_fps > 0:
            raise SequenceError(
                f"video {self.path}: the decoder's frame times do not increase and the container "
                f"reports frame rate {container_fps}; pass the frame rate in Hz with --fps"
            )
        logger.warning(
            "%s: the decoder's frame times do not increase; using %.3f fps from the container",
            self.path, container_fps,
        )
        return container_fps

    def describe_frame(self, index: int) -> str:
        return f"frame {index} of video {self.path}"

    def _open_capture(self) -> cv2.VideoCapture:
        capture = cv2.VideoCapture(str(self.path))
        if not capture.isOpened():
            raise SequenceError(
                f"video {self.path} could not be opened; check that the file is complete and "
                "its codec is supported by OpenCV"
            )
        return capture

    def _scan(self) -> tuple[list[float], float]:
        capture = self._open_capture()
        try:
            stamps: list[float] = []
            while capture.grab():
                stamps.append(capture.get(cv2.CAP_PROP_POS_MSEC))
            container_fps = capture.get(cv2.CAP_PROP_FPS)
        finally:
            capture.release()
        if not stamps:
            raise SequenceError(f"video {self.path} contains no decodable frames")
        return stamps, container_fps

    def _read_images(self, indices: list[int]) -> Iterator[tuple[int, np.ndarray]]:
        selected = set(indices)
        last = max(indices)
        capture = self._open_capture()
        try:
            for index in range(last + 1):
                if not capture.grab():
                    raise SequenceError(f"{self.describe_frame(index)} could not be decoded")
                if index not in selected:
                    continue
                ok, image = capture.retrieve()
                if not ok or image is None:
                    raise SequenceError(f"{self.describe_frame(index)} could not be decoded")
                yield index, to_rgb(image)
        finally:
            capture.release()
