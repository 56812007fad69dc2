"""Random synthetic clips with exact depth and poses, and the optical flow they induce."""

from __future__ import annotations

import logging
import numbers
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from vo_node.synthetic.motion import (
    ALL_MOTIONS,
    NANOSECONDS_PER_SECOND,
    pose_to_matrix,
    relative_transform,
    sample_path,
    sample_timestamps,
)
from vo_node.synthetic.render import Renderer, apply_camera_effects, sample_camera_effects
from vo_node.synthetic.scene import SCENE_KINDS, build_scene, sample_layout, with_low_texture
from vo_node.synthetic.textures import texture_bank

logger = logging.getLogger(__name__)

MOTION_WEIGHTS = {"forward": 0.25, "lateral": 0.2, "rotation": 0.2, "shake": 0.2, "orbit": 0.15}
"""Probability of each motion family when ``motion`` is not given."""
SCENE_WEIGHTS = {"room": 0.7, "outdoor": 0.3}
"""Probability of each scene kind when ``scene`` is not given."""
FOCAL_RANGE = (0.6, 1.2)
"""Range of ``fx`` as a multiple of the image width."""
PRINCIPAL_POINT_SPREAD = 0.03
"""Largest offset of the principal point from the image centre, as a share of the image size."""
BLUR_FLOW_STRIDE = 8
"""Pixel stride of the depth samples used to estimate a frame's mean image motion."""


@dataclass
class SyntheticClip:
    """A rendered clip with ground truth.

    Attributes:
        images: ``(N, H, W, 3)`` uint8 RGB.
        depths: ``(N, H, W)`` float32 z-depth in the camera frame, scene units.
        poses_wc: ``(N, 7)`` float64 ``T_world_cam`` ``[tx, ty, tz, qx, qy, qz, qw]``.
        intrinsics: ``(4,)`` float64 ``[fx, fy, cx, cy]`` in pixels; pixel centres are at
            integer coordinates.
        timestamps_ns: ``(N,)`` int64 nanoseconds, strictly increasing.
        metadata: seed, motion family, scene kind, frame step and other drawn settings.
    """

    images: np.ndarray
    depths: np.ndarray
    poses_wc: np.ndarray
    intrinsics: np.ndarray
    timestamps_ns: np.ndarray
    metadata: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.images)


def generate_clip(
    seed: int,
    num_frames: int,
    height: int = 240,
    width: int = 320,
    motion: str | None = None,
    scene: str | None = None,
    frame_step_range: tuple[int, int] = (1, 1),
    *,
    photometric: bool = True,
    timestamp_jitter: bool = True,
    intrinsics: np.ndarray | None = None,
    low_texture: float = 0.0,
) -> SyntheticClip:
    """Render a random clip; the same arguments always give identical arrays.

    Args:
        seed: seed of every random choice (scene, path, intrinsics, effects).
        num_frames: number of frames, at least 1.
        height, width: image size in pixels, at least 16 each.
        motion: motion family from :data:`vo_node.synthetic.motion.ALL_MOTIONS`; drawn from
            :data:`MOTION_WEIGHTS` when None.
        scene: scene kind from :data:`vo_node.synthetic.scene.SCENE_KINDS`; drawn from
            :data:`SCENE_WEIGHTS` when None.
        frame_step_range: inclusive range ``(low, high)`` of the number of nominal 20 Hz periods
            between consecutive frames; one value is drawn per clip. Larger steps give larger
            image motion between frames.
        photometric: apply exposure drift, noise and motion blur (False keeps a constant
            exposure and no noise or blur, for exact photometric checks).
        timestamp_jitter: add sub-millisecond jitter to the timestamps.
        intrinsics: ``(4,)`` ``[fx, fy, cx, cy]`` in pixels to use instead of random ones.
        low_texture: probability in [0, 1] that a surface gets a low-texture material (plain
            or panelled, :mod:`vo_node.synthetic.textures`). At 0 the clip is the same as
            before the option existed.
    """
    _check_arguments(num_frames, height, width, motion, scene, frame_step_range)
    if isinstance(low_texture, bool) or not isinstance(low_texture, numbers.Real):
        raise TypeError(f"low_texture must be a number in [0, 1], got {low_texture!r}")
    if not 0.0 <= low_texture <= 1.0:
        raise ValueError(
            f"low_texture must lie in [0, 1], got {low_texture}; it is the probability that a "
            "surface gets a low-texture material (0: fully textured scenes)"
        )
    # A SeedSequence child depends only on its index, so the first six streams match those of
    # the six-stream generator and clips without low texture stay unchanged.
    streams = [np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(7)]
    choice_rng, intrinsics_rng, layout_rng, path_rng, object_rng, effects_rng = streams[:6]
    low_texture_rng = streams[6]

    motion = motion or str(choice_rng.choice(list(MOTION_WEIGHTS), p=list(MOTION_WEIGHTS.values())))
    scene = scene or str(choice_rng.choice(list(SCENE_WEIGHTS), p=list(SCENE_WEIGHTS.values())))
    frame_step = int(choice_rng.integers(frame_step_range[0], frame_step_range[1] + 1))
    drawn_intrinsics = sample_intrinsics(intrinsics_rng, height, width)
    intrinsics = drawn_intrinsics if intrinsics is None else _checked_intrinsics(intrinsics)

    timestamps_ns = sample_timestamps(path_rng, num_frames, frame_step, jitter=timestamp_jitter)
    times_s = timestamps_ns / NANOSECONDS_PER_SECOND
    layout = sample_layout(scene, layout_rng)
    path = sample_path(motion, path_rng, layout, float(times_s[-1]))
    poses_wc = path.poses(times_s)

    bank = texture_bank(low_texture=low_texture > 0.0)
    dense_positions = path.positions(np.linspace(0.0, times_s[-1], 4 * num_frames))
    avoided = np.vstack([dense_positions, poses_wc[:, :3]])
    built = build_scene(layout, object_rng, avoided, bank.standard_count)
    if low_texture > 0.0:
        built = with_low_texture(built, bank.low_texture_ids, low_texture, low_texture_rng)
    renderer = Renderer(built, bank, intrinsics, height, width)
    images, depths = _render_frames(renderer, poses_wc, intrinsics, effects_rng, photometric)

    metadata = {
        "seed": int(seed),
        "motion": motion,
        "scene": scene,
        "frame_step": frame_step,
        "photometric": photometric,
        "path_scale": float(path.scale),
        "num_faces": len(built.faces),
        "low_texture": float(low_texture),
    }
    return SyntheticClip(images, depths, poses_wc, intrinsics, timestamps_ns, metadata)


def _check_arguments(
    num_frames: int,
    height: int,
    width: int,
    motion: str | None,
    scene: str | None,
    frame_step_range: tuple[int, int],
) -> None:
    if num_frames < 1:
        raise ValueError(f"num_frames must be at least 1, got {num_frames}")
    if height < 16 or width < 16:
        raise ValueError(f"image size {height}x{width} is too small; use at least 16x16 pixels")
    if motion is not None and motion not in ALL_MOTIONS:
        raise ValueError(f"unknown motion family {motion!r}; use one of {ALL_MOTIONS} or None")
    if scene is not None and scene not in SCENE_KINDS:
        raise ValueError(f"unknown scene kind {scene!r}; use one of {SCENE_KINDS} or None")
    low, high = frame_step_range
    if not 1 <= low <= high:
        raise ValueError(
            f"frame_step_range {frame_step_range} is invalid; give integers 1 <= low <= high"
        )


def _checked_intrinsics(intrinsics: np.ndarray) -> np.ndarray:
    values = np.asarray(intrinsics, dtype=np.float64).reshape(-1)
    if values.shape != (4,) or not np.all(np.isfinite(values)) or np.any(values[:2] <= 0):
        raise ValueError(
            f"intrinsics {intrinsics!r} are invalid; "
            "give [fx, fy, cx, cy] in pixels with fx, fy > 0"
        )
    return values


def sample_intrinsics(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """Draw ``(4,)`` ``[fx, fy, cx, cy]``: ``fx`` in ``FOCAL_RANGE * width``, near-square pixels."""
    fx = rng.uniform(*FOCAL_RANGE) * width
    fy = fx * rng.uniform(0.98, 1.02)
    cx = (width - 1) / 2.0 + rng.uniform(-1.0, 1.0) * PRINCIPAL_POINT_SPREAD * width
    cy = (height - 1) / 2.0 + rng.uniform(-1.0, 1.0) * PRINCIPAL_POINT_SPREAD * height
    return np.array([fx, fy, cx, cy], dtype=np.float64)


def _render_frames(
    renderer: Renderer,
    poses_wc: np.ndarray,
    intrinsics: np.ndarray,
    rng: np.random.Generator,
    photometric: bool,
) -> tuple[np.ndarray, np.ndarray]:
    """Render every pose and turn its radiance into an 8-bit image with the camera effects."""
    count = len(poses_wc)
    images = np.empty((count, renderer.height, renderer.width, 3), np.uint8)
    depths = np.empty((count, renderer.height, renderer.width), np.float32)
    effects = None
    for index, pose in enumerate(poses_wc):
        radiance, depths[index] = renderer.render(pose)
        if effects is None:
            effects = sample_camera_effects(rng, count, float(radiance.mean()), photometric)
        motion = np.zeros(2)
        if effects.blur_fraction > 0.0 and index > 0:
            motion = _mean_flow_vector(depths[index], intrinsics, poses_wc, index, index - 1)
        images[index] = apply_camera_effects(radiance, index, effects, motion, rng)
    return images, depths


def induced_flow(
    depth: np.ndarray, intrinsics: np.ndarray, transform_target_source: np.ndarray, stride: int = 1
) -> tuple[np.ndarray, np.ndarray]:
    """Optical flow of a static scene from a source frame's depth and the relative pose.

    Args:
        depth: ``(H, W)`` z-depth of the source frame, scene units.
        intrinsics: ``(4,)`` ``[fx, fy, cx, cy]`` in pixels.
        transform_target_source: ``(4, 4)`` ``T_target_source`` (source camera to target camera).
        stride: evaluate every ``stride``-th pixel in each direction.

    Returns:
        ``flow`` ``(h, w, 2)`` float64 displacement ``(du, dv)`` in pixels of each sampled source
        pixel, and ``valid`` ``(h, w)`` bool, False where the point is behind the target camera.
    """
    fx, fy, cx, cy = intrinsics
    rows, columns = np.mgrid[0 : depth.shape[0] : stride, 0 : depth.shape[1] : stride]
    z = depth[::stride, ::stride].astype(np.float64)
    points = np.stack([(columns - cx) / fx * z, (rows - cy) / fy * z, z], axis=-1)
    moved = points @ transform_target_source[:3, :3].T + transform_target_source[:3, 3]
    valid = moved[..., 2] > 1e-6
    safe_z = np.where(valid, moved[..., 2], 1.0)
    u = fx * moved[..., 0] / safe_z + cx
    v = fy * moved[..., 1] / safe_z + cy
    flow = np.stack([u - columns, v - rows], axis=-1)
    return flow, valid


def mean_flow(clip: SyntheticClip, i: int, j: int, stride: int = 4) -> float:
    """Mean optical-flow magnitude (pixels) from frame ``i`` to frame ``j`` of ``clip``.

    Uses the depth of frame ``i`` at every ``stride``-th pixel. Points that end up behind
    camera ``j`` are left out, and the result is ``inf`` if all of them are.
    """
    transform = relative_transform(clip.poses_wc, i, j)
    flow, valid = induced_flow(clip.depths[i], clip.intrinsics, transform, stride)
    if not valid.any():
        return float("inf")
    return float(np.linalg.norm(flow[valid], axis=-1).mean())


def mean_flow_matrix(clip: SyntheticClip, stride: int = 8) -> np.ndarray:
    """Return the ``(N, N)`` matrix of :func:`mean_flow` for every frame pair (diagonal 0)."""
    count = len(clip)
    matrices = pose_to_matrix(clip.poses_wc)
    inverses = np.linalg.inv(matrices)
    result = np.zeros((count, count))
    for i in range(count):
        for j in range(count):
            if i == j:
                continue
            transform = inverses[j] @ matrices[i]
            flow, valid = induced_flow(clip.depths[i], clip.intrinsics, transform, stride)
            magnitude = np.linalg.norm(flow[valid], axis=-1)
            result[i, j] = magnitude.mean() if valid.any() else np.inf
    return result


def _mean_flow_vector(
    depth: np.ndarray, intrinsics: np.ndarray, poses_wc: np.ndarray, frame: int, previous: int
) -> np.ndarray:
    """Return the ``(2,)`` median image motion of frame ``frame`` since ``previous`` (signed, pixels)."""
    transform = relative_transform(poses_wc, frame, previous)
    flow, valid = induced_flow(depth, intrinsics, transform, BLUR_FLOW_STRIDE)
    if not valid.any():
        return np.zeros(2)
    # Flow from frame to previous points backwards in time; the blur is symmetric either way.
    # The median ignores the few points near the previous camera's plane, whose flow explodes.
    return -np.median(flow[valid], axis=0)
