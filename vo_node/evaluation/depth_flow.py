"""Ground-truth depth and optical flow of the frames of a TartanAir folder that carry depth maps.

For each ``depth_left/NNNNNN_left_depth.npy`` whose frame has a successor with a pose, the
command prints the depth percentiles of that frame and the flow of its pixels into the next
frame. The flow comes from the depth and the ground-truth poses, so it measures the motion the
tracker has to follow, independent of any model::

    python -m vo_node.evaluation.depth_flow TARTANAIR_FOLDER [--width 376] [--output FILE.csv]

Every pixel with a positive, finite depth is back-projected, moved by the relative pose into the
next camera and projected. Pixels that land behind the next camera are left out. Flow is given
in pixels of the input images and, with ``--width``, scaled to the width the engine tracks at.
Depth and step lengths are in the ground truth's units (metres for TartanAir).
"""

from __future__ import annotations

import argparse
import csv
import logging
import sys
from dataclasses import astuple, dataclass, fields
from pathlib import Path
from typing import Sequence

import numpy as np

from vo_node.io.atomic import atomic_write, output_file_problem
from vo_node.io.camera import load_camera
from vo_node.io.readers.poses import poses_to_matrices
from vo_node.io.readers.tartanair import (
    DEFAULT_CAMERA,
    ned_to_optical,
    read_tartanair_poses,
)

logger = logging.getLogger(__name__)

DEPTH_FOLDER = "depth_left"
DEPTH_SUFFIX = "_left_depth.npy"
PERCENTILES = (10.0, 50.0, 90.0)
"""Depth and flow percentiles reported per frame."""
EXIT_OK, EXIT_USAGE = 0, 2


@dataclass
class FrameMotion:
    """Depth and ground-truth flow of one frame into the next.

    Attributes:
        frame: frame number of the depth map.
        depth_p10, depth_median, depth_p90: depth percentiles, ground-truth units.
        step: camera translation to the next frame, ground-truth units.
        flow_mean, flow_median, flow_p90: flow magnitude into the next frame, input pixels.
            The trainer samples clips by the mean (``data.min_flow``, ``data.max_flow``).
        flow_median_tracked, flow_p90_tracked: the same at the tracking width.
        pixels: pixels that entered the flow statistics.
    """

    frame: int
    depth_p10: float
    depth_median: float
    depth_p90: float
    step: float
    flow_mean: float
    flow_median: float
    flow_p90: float
    flow_median_tracked: float
    flow_p90_tracked: float
    pixels: int


def flow_into_next(
    depth: np.ndarray, camera_from_world_next: np.ndarray, world_from_camera: np.ndarray,
    intrinsics: Sequence[float],
) -> np.ndarray:
    """Return the flow magnitudes ``(K,)`` (pixels) of the valid pixels of ``depth`` ``(H, W)``.

    Args:
        depth: z-depth of the source frame; non-positive or non-finite values are left out.
        camera_from_world_next: ``(4, 4)`` ``T_cam_world`` of the next frame.
        world_from_camera: ``(4, 4)`` ``T_world_cam`` of the source frame.
        intrinsics: ``[fx, fy, cx, cy]`` of the images, pixels.
    """
    fx, fy, cx, cy = (float(value) for value in intrinsics)
    height, width = depth.shape
    v, u = np.mgrid[0:height, 0:width].astype(np.float64)
    z = depth.astype(np.float64)
    valid = np.isfinite(z) & (z > 0)
    u, v, z = u[valid], v[valid], z[valid]
    points = np.stack([(u - cx) / fx * z, (v - cy) / fy * z, z, np.ones_like(z)])  # (4, K)
    moved = (camera_from_world_next @ world_from_camera @ points)[:3]
    in_front = moved[2] > 0
    moved, u, v = moved[:, in_front], u[in_front], v[in_front]
    u_next = fx * moved[0] / moved[2] + cx
    v_next = fy * moved[1] / moved[2] + cy
    return np.hypot(u_next - u, v_next - v)


def frame_motions(folder: str | Path, tracked_width: int | None = None) -> list[FrameMotion]:
    """Return the :class:`FrameMotion` of every depth frame of ``folder`` that has a successor.

    Raises:
        FileNotFoundError: the folder lacks ``pose_left.txt`` or depth maps.
        ValueError: ``tracked_width`` exceeds the image width, a depth map is misnamed, cannot
            be read, is not of the camera's size or has no usable pixel, or the pose file is
            invalid (``SequenceError``).
    """
    folder = Path(folder)
    poses_path = folder / "pose_left.txt"
    if not poses_path.is_file():
        raise FileNotFoundError(
            f"{poses_path} not found; pass a TartanAir trajectory folder (image_left, "
            "depth_left, pose_left.txt)"
        )
    depth_files = sorted((folder / DEPTH_FOLDER).glob(f"*{DEPTH_SUFFIX}"))
    if not depth_files:
        raise FileNotFoundError(
            f"no {DEPTH_FOLDER}/*{DEPTH_SUFFIX} in {folder}; this command needs depth maps"
        )
    calibration = folder / "camera_info_left.yaml"
    camera = load_camera(calibration) if calibration.is_file() else DEFAULT_CAMERA
    if tracked_width is not None and not 0 < tracked_width <= camera.width:
        raise ValueError(
            f"--width {tracked_width} is outside 1..{camera.width}: the engine tracks at the "
            "image width or below it, never above"
        )
    intrinsics = [camera.fx, camera.fy, camera.cx, camera.cy]
    world_from_camera = poses_to_matrices(ned_to_optical(read_tartanair_poses(poses_path)))
    scale = tracked_width / camera.width if tracked_width else 1.0
    motions = []
    for path in depth_files:
        frame = _frame_number(path)
        if frame + 1 >= len(world_from_camera):
            logger.info("%s has no next pose; left out", path.name)
            continue
        try:
            depth = np.load(path)
        except (OSError, ValueError, EOFError) as error:
            raise ValueError(
                f"cannot read the depth map {path}: {error}; replace it with a float .npy array"
            ) from error
        if depth.shape != (camera.height, camera.width):
            raise ValueError(
                f"{path} has shape {depth.shape}, expected ({camera.height}, {camera.width}) "
                "from the camera; check the folder's camera_info_left.yaml"
            )
        next_camera_from_world = np.linalg.inv(world_from_camera[frame + 1])
        flow = flow_into_next(depth, next_camera_from_world, world_from_camera[frame], intrinsics)
        if flow.size == 0:
            raise ValueError(
                f"{path} has no pixel with a positive, finite depth that stays in front of the "
                "next camera; check the depth map and the poses"
            )
        valid_depth = depth[np.isfinite(depth) & (depth > 0)]
        step = np.linalg.norm(world_from_camera[frame + 1][:3, 3] - world_from_camera[frame][:3, 3])
        depth_p10, depth_median, depth_p90 = np.percentile(valid_depth, PERCENTILES)
        _, flow_median, flow_p90 = np.percentile(flow, PERCENTILES)
        motions.append(FrameMotion(
            frame, float(depth_p10), float(depth_median), float(depth_p90), float(step),
            float(flow.mean()), float(flow_median), float(flow_p90), float(flow_median * scale),
            float(flow_p90 * scale), int(flow.size),
        ))
    return motions


def _frame_number(path: Path) -> int:
    prefix = path.name[: -len(DEPTH_SUFFIX)]
    if not prefix.isdigit():
        raise ValueError(
            f"depth map {path} does not start with a frame number; name it "
            f"NNNNNN{DEPTH_SUFFIX} after its image"
        )
    return int(prefix)


def format_motions(motions: Sequence[FrameMotion], tracked_width: int | None) -> list[str]:
    """Return a text table of ``motions``."""
    header = (
        f"{'frame':>5}  {'depth p10 m':>11}  {'median':>7}  {'p90':>7}  {'step m':>7}  "
        f"{'flow mean px':>12}  {'median':>7}  {'p90':>7}"
    )
    if tracked_width:
        header += f"  flow median / p90 px at width {tracked_width}"
    lines = [header]
    for motion in motions:
        line = (
            f"{motion.frame:>5}  {motion.depth_p10:>11.3f}  {motion.depth_median:>7.3f}  "
            f"{motion.depth_p90:>7.3f}  {motion.step:>7.3f}  {motion.flow_mean:>12.1f}  "
            f"{motion.flow_median:>7.1f}  {motion.flow_p90:>7.1f}"
        )
        if tracked_width:
            line += f"  {motion.flow_median_tracked:.1f} / {motion.flow_p90_tracked:.1f}"
        lines.append(line)
    return lines


def write_motions(motions: Sequence[FrameMotion], path: Path) -> None:
    """Write ``motions`` as CSV to ``path``, atomically."""
    with atomic_write(path) as handle:
        writer = csv.writer(handle)
        writer.writerow([field.name for field in fields(FrameMotion)])
        for motion in motions:
            writer.writerow(astuple(motion))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m vo_node.evaluation.depth_flow",
        description="Ground-truth depth and flow of the depth frames of a TartanAir folder.",
    )
    parser.add_argument("folder", help="TartanAir trajectory folder with depth_left/*.npy")
    parser.add_argument("--width", type=int, default=None,
                        help="also give the flow at this tracking width, pixels (e.g. 376)")
    parser.add_argument("--output", type=Path, default=None, help="CSV file for the table")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.width is not None and args.width <= 0:
        print(f"error: --width must be a positive pixel count, got {args.width}", file=sys.stderr)
        return EXIT_USAGE
    problem = None if args.output is None else output_file_problem(args.output, "depth_flow.csv")
    if problem:
        print(f"error: --output {problem}", file=sys.stderr)
        return EXIT_USAGE
    try:
        motions = frame_motions(args.folder, args.width)
    except (FileNotFoundError, ValueError) as error:  # reader errors are ValueErrors too
        print(f"error: {error}", file=sys.stderr)
        return EXIT_USAGE
    print("\n".join(format_motions(motions, args.width)))
    if args.output is not None:
        try:
            write_motions(motions, args.output)
        except OSError as error:
            print(f"error: cannot write --output {args.output}: {error}", file=sys.stderr)
            return EXIT_USAGE
        print(f"table: {args.output}")
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
