"""The demo's default input: a synthetic sequence with ground truth, rendered on demand.

:func:`render_demo_sequence` writes an image folder that the image-folder reader opens directly:

- ``000000.png``, ``000001.png``, ...: 8-bit RGB frames (PNG),
- ``camera.yaml``: the pinhole camera as a ROS ``camera_info`` YAML with zero distortion,
- ``times.txt``: one timestamp per line, seconds with 9 decimals, 20 Hz,
- ``groundtruth.tum``: ``T_world_cam`` per frame as TUM lines (``t tx ty tz qx qy qz qw``),
- ``synthetic_parameters.json``: the generator parameters, used to reuse a complete folder.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import cv2
import numpy as np

from vo_node.io.atomic import atomic_write, replace_folder, staging_folder
from vo_node.io.camera import PinholeCamera, undistorted_camera_info
from vo_node.io.trajectory import NANOSECONDS_PER_SECOND, Trajectory, write_tum
from vo_node.synthetic.clip import SyntheticClip, generate_clip

logger = logging.getLogger(__name__)

DEMO_SEED = 2024
"""Seed of the default demo sequence."""
GENERATOR_VERSION = 1
"""Bump when the generator's output changes, so stale demo folders are rendered again."""
PARAMETERS_FILE = "synthetic_parameters.json"
CAMERA_FILE = "camera.yaml"
TIMES_FILE = "times.txt"
GROUND_TRUTH_FILE = "groundtruth.tum"
CAMERA_NAME = "vo_node_synthetic"


DEMO_FOCAL_PER_WIDTH = 1.0
"""Focal length of the demo camera as a multiple of the image width (a 53 degree field of view)."""


def demo_intrinsics(height: int, width: int) -> np.ndarray:
    """``(4,)`` ``[fx, fy, cx, cy]`` of the demo camera: square pixels, centred principal point."""
    focal = DEMO_FOCAL_PER_WIDTH * width
    return np.array([focal, focal, (width - 1) / 2.0, (height - 1) / 2.0])


def demo_clip(
    num_frames: int = 120, height: int = 240, width: int = 320, seed: int = DEMO_SEED
) -> SyntheticClip:
    """Render the demo clip: the ``demo`` loop through a room with camera effects, exact 20 Hz."""
    return generate_clip(
        seed, num_frames, height, width, motion="demo", scene="room", timestamp_jitter=False,
        intrinsics=demo_intrinsics(height, width),
    )


def render_demo_sequence(
    folder: str | Path,
    num_frames: int = 120,
    height: int = 240,
    width: int = 320,
    seed: int = DEMO_SEED,
) -> Path:
    """Write the demo sequence to ``folder`` unless it already contains the same one.

    The folder is rendered into a temporary sibling folder and renamed into place, so a reader
    never sees a partial sequence. An existing ``folder`` is replaced only when it was written by
    this function (it contains ``synthetic_parameters.json``) or is empty.

    Args:
        folder: output folder.
        num_frames: number of frames.
        height, width: image size in pixels.
        seed: generator seed.

    Returns:
        ``folder`` as a :class:`~pathlib.Path`.

    Raises:
        FileExistsError: ``folder`` exists and contains files this function did not write.
    """
    folder = Path(folder)
    parameters = {
        "generator_version": GENERATOR_VERSION,
        "seed": int(seed),
        "num_frames": int(num_frames),
        "height": int(height),
        "width": int(width),
    }
    if _is_complete(folder, parameters):
        logger.info("demo sequence %s is up to date", folder)
        return folder
    _check_replaceable(folder)

    staging = staging_folder(folder)
    try:
        logger.info("rendering %d demo frames (%dx%d) into %s", num_frames, width, height, folder)
        write_sequence(staging, demo_clip(num_frames, height, width, seed), parameters)
        replace_folder(staging, folder)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return folder


def write_sequence(folder: Path, clip: SyntheticClip, parameters: dict) -> None:
    """Write ``clip`` as an image folder with calibration, timestamps and ground truth.

    The parameters file is written last, so its presence marks a complete folder.
    """
    for index, image in enumerate(clip.images):
        path = folder / f"{index:06d}.png"
        if not cv2.imwrite(str(path), cv2.cvtColor(image, cv2.COLOR_RGB2BGR)):
            raise OSError(f"failed to write image {path}")
    height, width = clip.images.shape[1:3]
    with atomic_write(folder / CAMERA_FILE) as handle:
        handle.write(camera_info_yaml(clip.intrinsics, width, height))
    with atomic_write(folder / TIMES_FILE) as handle:
        for stamp in clip.timestamps_ns:
            seconds, remainder = divmod(int(stamp), NANOSECONDS_PER_SECOND)
            handle.write(f"{seconds}.{remainder:09d}\n")
    write_tum(folder / GROUND_TRUTH_FILE, Trajectory(clip.timestamps_ns, clip.poses_wc))
    with atomic_write(folder / PARAMETERS_FILE) as handle:
        json.dump(parameters, handle, indent=2, sort_keys=True)


def camera_info_yaml(intrinsics: np.ndarray, width: int, height: int) -> str:
    """Return a ROS ``camera_info`` YAML for an undistorted pinhole camera.

    ``intrinsics`` is ``(4,)`` ``[fx, fy, cx, cy]`` in pixels of a ``width`` x ``height`` image.
    """
    info = undistorted_camera_info(PinholeCamera(width, height, *intrinsics))

    def matrix(rows: int, columns: int, values: list[float]) -> str:
        data = ", ".join(repr(float(value)) for value in values)
        return f"\n  rows: {rows}\n  cols: {columns}\n  data: [{data}]"

    return (
        f"image_width: {info['width']}\n"
        f"image_height: {info['height']}\n"
        f"camera_name: {CAMERA_NAME}\n"
        f"camera_matrix:{matrix(3, 3, info['k'])}\n"
        f"distortion_model: {info['distortion_model']}\n"
        f"distortion_coefficients:{matrix(1, len(info['d']), info['d'])}\n"
        f"rectification_matrix:{matrix(3, 3, info['r'])}\n"
        f"projection_matrix:{matrix(3, 4, info['p'])}\n"
    )


def _is_complete(folder: Path, parameters: dict) -> bool:
    """Check that ``folder`` contains every file of a sequence rendered with ``parameters``."""
    try:
        stored = json.loads((folder / PARAMETERS_FILE).read_text())
    except (OSError, ValueError):
        return False
    if stored != parameters:
        return False
    names = [f"{index:06d}.png" for index in range(parameters["num_frames"])]
    names += [CAMERA_FILE, TIMES_FILE, GROUND_TRUTH_FILE]
    return all((folder / name).is_file() for name in names)


def _check_replaceable(folder: Path) -> None:
    if not folder.exists():
        return
    if not folder.is_dir():
        raise FileExistsError(f"{folder} exists and is not a folder; choose another output folder")
    if (folder / PARAMETERS_FILE).is_file() or not any(folder.iterdir()):
        return
    raise FileExistsError(
        f"{folder} already contains files that are not a synthetic demo sequence; "
        "choose another output folder or empty it"
    )
