"""Training clips: sources (built-in generator, TartanAir, TUM RGB-D), sampling and augmentation.

A training sample is one clip of ``n_frames`` frames picked from a longer sequence. The mean
optical flow between consecutive picked frames should lie in a configured range: DPVO's rule of
10..75 pixels for 640-pixel-wide images, scaled to the source width. Each sample is a dict:

- ``images``: (N, 3, H, W) uint8 RGB;
- ``depths``: (N, H, W) float32 depth in normalised scene units, 0 where unknown;
- ``poses_cw``: (N, 7) float32 world-to-camera poses ``T_cam_world`` in the same units;
- ``intrinsics``: (4,) float32 ``[fx, fy, cx, cy]`` in pixels of the (H, W) images;
- ``frames``: (N,) int64 indices of the picked frames in their source sequence (decreasing
  in a clip played backwards, ``data.reverse_p``);
- ``scale``: float64 scalar, the factor the metric translations were multiplied by.

Sample ``index`` of rank ``rank`` depends only on ``(seed, rank, index)``, so a run resumes at
any step by restarting the index sequence there, and worker processes may load in any order.
Real datasets under the shared evaluation data folder are rejected: they are for evaluation only.
"""

from __future__ import annotations

import logging
import math
import os
import signal
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Protocol

import cv2
import numpy as np
import torch

from vo_node.geometry import se3
from vo_node.train.config import AugmentConfig, DataConfig

logger = logging.getLogger(__name__)

SHARED_DATA_DIR = Path(__file__).resolve().parents[3] / "shared" / "data"
"""The evaluation data folder next to the repository (overridable by ``VO_NODE_DATA``)."""
FLOW_GRID_STRIDE = 8
"""Pixel spacing of the grid on which the mean flow between two frames is measured."""
FLOW_MIN_DEPTH = 0.05
"""Points closer than this fraction of the median depth after the transform count as invalid."""
FLOW_LOOKAHEAD = 10
"""The next clip frame is searched among at most this many following frames."""
START_MARGIN = 4
"""A clip starts at least this many frames per clip frame before the end of its sequence."""
TUM_DEPTH_SCALE = 5000.0
"""TUM RGB-D depth PNGs store depth in units of 1/5000 m."""
TUM_MAX_TIME_DIFFERENCE_S = 0.02
TUM_INTRINSICS = {
    "freiburg1": (517.3, 516.5, 318.6, 255.3),
    "freiburg2": (520.9, 521.0, 325.1, 249.7),
    "freiburg3": (535.4, 539.2, 320.1, 247.6),
}
"""Pinhole intrinsics of the TUM RGB-D cameras (the dataset's published calibration)."""
TUM_DEFAULT_INTRINSICS = (525.0, 525.0, 319.5, 239.5)
TARTANAIR_INTRINSICS = (320.0, 320.0, 320.0, 240.0)
NED_TO_OPTICAL = [1, 2, 0]
"""Optical (x right, y down, z forward) axes are NED body axes (y, z, x)."""
SEED_MODULUS = 2**31 - 1
SOURCE_FRAMES_PER_CLIP_FRAME = 2
"""Default length of a generated sequence, in frames per clip frame (``data.source_frames: 0``)."""
TRAIN_STREAM, VALIDATION_STREAM = 0, 1


class DatasetError(ValueError):
    """A dataset folder or file is missing or malformed; the message names the path and fix."""


# -------------------------------------------------------------------------------------------
# Sequences
# -------------------------------------------------------------------------------------------


@dataclass
class SequenceFrames:
    """Frames of one sequence at source resolution (all arrays share the frame axis N)."""

    images: np.ndarray
    """(N, h, w, 3) uint8 RGB."""
    depths: np.ndarray
    """(N, h, w) float32 metric depth, 0 where unknown."""
    poses_wc: np.ndarray
    """(N, 7) float64 camera-to-world poses ``T_world_cam`` (optical camera axes)."""
    intrinsics: np.ndarray
    """(4,) float64 ``[fx, fy, cx, cy]`` in source pixels."""


class FrameSequence(Protocol):
    """A sequence that loads any subset of its frames, or one depth map for the flow rule."""

    name: str
    poses_wc: np.ndarray
    """(N, 7) float64 ``T_world_cam`` of every frame."""
    intrinsics: np.ndarray
    """(4,) float64 ``[fx, fy, cx, cy]`` in source pixels."""

    def __len__(self) -> int: ...

    def load(self, indices: list[int]) -> SequenceFrames: ...

    def depth(self, index: int) -> np.ndarray: ...


def _evaluation_folders() -> list[Path]:
    """Return the resolved evaluation data folders: ``../shared/data`` and ``$VO_NODE_DATA``."""
    protected = [SHARED_DATA_DIR]
    if os.environ.get("VO_NODE_DATA"):
        protected.append(Path(os.environ["VO_NODE_DATA"]))
    return [folder.resolve() for folder in protected]


def _evaluation_folder_of(path: Path, protected: list[Path]) -> Path | None:
    """Return the evaluation folder that contains ``path`` after resolving links, or None."""
    resolved = path.resolve()
    for folder in protected:
        if resolved == folder or folder in resolved.parents:
            return folder
    return None


def check_not_evaluation_data(root: Path) -> None:
    """Raise DatasetError if ``root`` lies inside the shared evaluation data folder."""
    folder = _evaluation_folder_of(root, _evaluation_folders())
    if folder is not None:
        raise DatasetError(
            f"rejected training root {root}: it lies inside the evaluation data folder {folder}, "
            "which is reserved for evaluation; point data.roots at a separate training copy"
        )


def check_files_not_evaluation_data(sequence: TartanAirSequence | TumSequence) -> None:
    """Raise DatasetError if an image or depth file of ``sequence`` is a link into the
    evaluation data folder, as in a folder of links that replays an evaluation sequence."""
    protected = _evaluation_folders()
    checked_parents: set[Path] = set()
    for path in map(Path, [*sequence.image_paths, *sequence.depth_paths]):
        # A plain file lies where its folder resolves to, so each folder is resolved once.
        if not path.is_symlink():
            if path.parent in checked_parents:
                continue
            checked_parents.add(path.parent)
        folder = _evaluation_folder_of(path, protected)
        if folder is not None:
            raise DatasetError(
                f"rejected training file {path}: it links into the evaluation data folder "
                f"{folder}, which is reserved for evaluation; train on a separate copy"
            )


def _require_folder(path: Path, what: str) -> Path:
    if not path.is_dir():
        raise DatasetError(f"{what} {path} not found; check data.roots and the dataset layout")
    return path


def _read_rows(path: Path, columns: int) -> np.ndarray:
    """Read a whitespace-separated numeric table, skipping ``#`` comments; check column count."""
    rows = []
    with open(path) as handle:
        for number, line in enumerate(handle, start=1):
            text = line.split("#", 1)[0].strip()
            if not text:
                continue
            fields = text.replace(",", " ").split()
            if len(fields) != columns:
                raise DatasetError(
                    f"{path}:{number}: expected {columns} numbers, found {len(fields)}: {line.strip()!r}"
                )
            try:
                rows.append([float(value) for value in fields])
            except ValueError:
                raise DatasetError(f"{path}:{number}: not a number in {line.strip()!r}") from None
    if not rows:
        raise DatasetError(f"{path} contains no data rows")
    return np.asarray(rows, dtype=np.float64)


def _read_image_rgb(path: Path) -> np.ndarray:
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise DatasetError(f"image {path} could not be read")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


class TartanAirSequence:
    """One TartanAir trajectory: ``image_left/*.png``, ``depth_left/*.npy``, ``pose_left.txt``.

    Poses in ``pose_left.txt`` are ``tx ty tz qx qy qz qw`` of the camera in a NED world with NED
    camera axes; they are permuted to optical axes. Intrinsics are TartanAir's fixed 320/320/320/240.
    """

    def __init__(self, folder: str | Path):
        self.folder = _require_folder(Path(folder), "TartanAir trajectory folder")
        self.name = str(self.folder)
        image_dir = _require_folder(self.folder / "image_left", "TartanAir image folder")
        depth_dir = _require_folder(self.folder / "depth_left", "TartanAir depth folder")
        self.image_paths = sorted(image_dir.glob("*.png"))
        self.depth_paths = sorted(depth_dir.glob("*.npy"))
        pose_path = self.folder / "pose_left.txt"
        if not pose_path.is_file():
            raise DatasetError(f"pose file {pose_path} not found; a TartanAir trajectory needs it")
        ned = _read_rows(pose_path, 7)
        if not (len(self.image_paths) == len(self.depth_paths) == len(ned)) or not ned.size:
            raise DatasetError(
                f"{self.folder}: {len(self.image_paths)} images, {len(self.depth_paths)} depth maps "
                f"and {len(ned)} poses do not match; every frame needs one of each"
            )
        self.poses_wc = _ned_to_optical(ned)
        self.intrinsics = np.asarray(TARTANAIR_INTRINSICS, dtype=np.float64)

    def __len__(self) -> int:
        return len(self.image_paths)

    def depth(self, index: int) -> np.ndarray:
        depth = np.load(self.depth_paths[index]).astype(np.float32)
        return np.where(np.isfinite(depth), depth, 0.0).astype(np.float32)

    def load(self, indices: list[int]) -> SequenceFrames:
        images = np.stack([_read_image_rgb(self.image_paths[i]) for i in indices])
        depths = np.stack([self.depth(i) for i in indices])
        if depths.shape[1:] != images.shape[1:3]:
            raise DatasetError(
                f"{self.folder}: depth size {depths.shape[1:]} differs from image size "
                f"{images.shape[1:3]}"
            )
        return SequenceFrames(images, depths, self.poses_wc[indices], self.intrinsics)


def _ned_to_optical(ned: np.ndarray) -> np.ndarray:
    """Conjugate NED poses ``(N, 7)`` into optical camera and world axes."""
    order = NED_TO_OPTICAL
    poses = np.concatenate([ned[:, order], ned[:, [3 + k for k in order]], ned[:, 6:7]], axis=1)
    return _normalise_quaternions(poses)


def _normalise_quaternions(poses: np.ndarray) -> np.ndarray:
    poses = poses.copy()
    norms = np.linalg.norm(poses[:, 3:], axis=1, keepdims=True)
    if np.any(norms < 1e-6):
        raise DatasetError("a pose has a zero quaternion; the pose file is malformed")
    poses[:, 3:] /= norms
    return poses


class TumSequence:
    """One TUM RGB-D sequence: ``rgb.txt``, ``depth.txt``, ``groundtruth.txt`` and the PNGs.

    Colour frames are associated with the nearest depth frame and ground-truth pose within 20 ms;
    frames without both are skipped. Intrinsics come from ``intrinsics.txt`` (``fx fy cx cy``) in
    the folder if present, else from the freiburg1/2/3 name, else the 525/525/319.5/239.5 default.
    Lens distortion is ignored (it is small for these cameras).
    """

    def __init__(self, folder: str | Path):
        self.folder = _require_folder(Path(folder), "TUM RGB-D sequence folder")
        self.name = str(self.folder)
        rgb = self._read_list("rgb.txt")
        depth = self._read_list("depth.txt")
        ground_truth = _read_rows(self._require_file("groundtruth.txt"), 8)
        self.image_paths, self.depth_paths, poses = [], [], []
        depth_times = np.asarray([stamp for stamp, _ in depth])
        for stamp, name in rgb:
            d = int(np.abs(depth_times - stamp).argmin())
            g = int(np.abs(ground_truth[:, 0] - stamp).argmin())
            if abs(depth_times[d] - stamp) > TUM_MAX_TIME_DIFFERENCE_S:
                continue
            if abs(ground_truth[g, 0] - stamp) > TUM_MAX_TIME_DIFFERENCE_S:
                continue
            self.image_paths.append(self.folder / name)
            self.depth_paths.append(self.folder / depth[d][1])
            poses.append(ground_truth[g, 1:])
        if len(self.image_paths) < 2:
            raise DatasetError(
                f"{self.folder}: fewer than 2 colour frames have a depth frame and a pose within "
                f"{TUM_MAX_TIME_DIFFERENCE_S * 1000:.0f} ms; check rgb.txt, depth.txt and "
                "groundtruth.txt"
            )
        self.poses_wc = _normalise_quaternions(np.asarray(poses))
        self.intrinsics = self._intrinsics()

    def _require_file(self, name: str) -> Path:
        path = self.folder / name
        if not path.is_file():
            raise DatasetError(f"{path} not found; a TUM RGB-D sequence folder needs {name}")
        return path

    def _read_list(self, name: str) -> list[tuple[float, str]]:
        path = self._require_file(name)
        entries = []
        for number, line in enumerate(path.read_text().splitlines(), start=1):
            text = line.split("#", 1)[0].strip()
            if not text:
                continue
            fields = text.split()
            try:
                entries.append((float(fields[0]), fields[1]))
            except (ValueError, IndexError):
                raise DatasetError(
                    f"{path}:{number}: expected 'timestamp filename', found {line.strip()!r}"
                ) from None
        if not entries:
            raise DatasetError(f"{path} lists no frames")
        return entries

    def _intrinsics(self) -> np.ndarray:
        path = self.folder / "intrinsics.txt"
        if path.is_file():
            return _read_rows(path, 4)[0]
        for key, values in TUM_INTRINSICS.items():
            if key in self.folder.name:
                return np.asarray(values, dtype=np.float64)
        return np.asarray(TUM_DEFAULT_INTRINSICS, dtype=np.float64)

    def __len__(self) -> int:
        return len(self.image_paths)

    def depth(self, index: int) -> np.ndarray:
        raw = cv2.imread(str(self.depth_paths[index]), cv2.IMREAD_UNCHANGED)
        if raw is None:
            raise DatasetError(f"depth image {self.depth_paths[index]} could not be read")
        return raw.astype(np.float32) / TUM_DEPTH_SCALE

    def load(self, indices: list[int]) -> SequenceFrames:
        images = np.stack([_read_image_rgb(self.image_paths[i]) for i in indices])
        depths = np.stack([self.depth(i) for i in indices])
        return SequenceFrames(images, depths, self.poses_wc[indices], self.intrinsics)


def discover_sequences(source: str, roots: list[str]) -> list[FrameSequence]:
    """Find every sequence of layout ``source`` (``tartanair`` or ``tum``) under ``roots``."""
    marker = {"tartanair": "pose_left.txt", "tum": "groundtruth.txt"}[source]
    factory = {"tartanair": TartanAirSequence, "tum": TumSequence}[source]
    sequences: list[FrameSequence] = []
    for root in map(Path, roots):
        _require_folder(root, f"{source} dataset root")
        check_not_evaluation_data(root)
        folders = sorted({path.parent for path in root.rglob(marker)})
        if not folders:
            raise DatasetError(
                f"no {source} sequence found under {root} (looked for {marker}); check data.source "
                "and data.roots"
            )
        for folder in folders:
            sequence = factory(folder)
            check_files_not_evaluation_data(sequence)
            sequences.append(sequence)
    logger.info("found %d %s sequences under %s", len(sequences), source, ", ".join(roots))
    return sequences


class SyntheticSequence:
    """A sequence rendered by the built-in generator (``vo_node.synthetic.generate_clip``)."""

    def __init__(
        self,
        seed: int,
        num_frames: int,
        height: int,
        width: int,
        frame_steps: tuple[int, int],
        low_texture: float = 0.0,
    ):
        from vo_node.synthetic import generate_clip

        clip = generate_clip(
            seed, num_frames, height, width, frame_step_range=frame_steps, low_texture=low_texture
        )
        self.name = f"synthetic-{seed}"
        self.frames = SequenceFrames(
            np.asarray(clip.images, dtype=np.uint8),
            np.asarray(clip.depths, dtype=np.float32),
            np.asarray(clip.poses_wc, dtype=np.float64),
            np.asarray(clip.intrinsics, dtype=np.float64),
        )

        self.poses_wc = self.frames.poses_wc
        self.intrinsics = self.frames.intrinsics

    def __len__(self) -> int:
        return len(self.frames.images)

    def depth(self, index: int) -> np.ndarray:
        return self.frames.depths[index]

    def load(self, indices: list[int]) -> SequenceFrames:
        f = self.frames
        return SequenceFrames(f.images[indices], f.depths[indices], f.poses_wc[indices], f.intrinsics)


# -------------------------------------------------------------------------------------------
# Frame selection by flow
# -------------------------------------------------------------------------------------------


def mean_flow(
    depth: np.ndarray,
    pose_wc_i: np.ndarray,
    pose_wc_j: np.ndarray,
    intrinsics: np.ndarray,
    stride: int = FLOW_GRID_STRIDE,
) -> float:
    """Return the mean reprojection flow (pixels) of frame i's pixels into frame j.

    Args:
        depth: (h, w) depth of frame i, 0 where unknown.
        pose_wc_i, pose_wc_j: (7,) ``T_world_cam`` of both frames.
        intrinsics: (4,) ``[fx, fy, cx, cy]``.
    Returns ``inf`` when no grid point has a valid depth in both frames.
    """
    fx, fy, cx, cy = intrinsics
    v, u = np.mgrid[stride // 2 : depth.shape[0] : stride, stride // 2 : depth.shape[1] : stride]
    z = depth[v, u].astype(np.float64)
    keep = np.isfinite(z) & (z > 0)
    if not keep.any():
        return math.inf
    u, v, z = u[keep], v[keep], z[keep]
    points = np.stack([(u - cx) / fx * z, (v - cy) / fy * z, z], axis=-1)
    poses = torch.from_numpy(np.stack([pose_wc_i, pose_wc_j]))
    relative = se3.compose(se3.invert(poses[1]), poses[0])  # T_j_i
    matrix = se3.to_matrix(relative).numpy()
    moved = points @ matrix[:3, :3].T + matrix[:3, 3]
    front = moved[:, 2] > FLOW_MIN_DEPTH * np.median(z)
    if not front.any():
        return math.inf
    moved = moved[front]
    u1 = fx * moved[:, 0] / moved[:, 2] + cx
    v1 = fy * moved[:, 1] / moved[:, 2] + cy
    return float(np.hypot(u1 - u[front], v1 - v[front]).mean())


class _FlowCache:
    """Mean flow between frames of one sequence; depth maps are read once, on demand."""

    def __init__(self, sequence: FrameSequence):
        self.sequence = sequence
        self.depths: dict[int, np.ndarray] = {}

    def depth(self, index: int) -> np.ndarray:
        if index not in self.depths:
            self.depths[index] = self.sequence.depth(index)
        return self.depths[index]

    def flow(self, i: int, j: int) -> float:
        poses = self.sequence.poses_wc
        return mean_flow(self.depth(i), poses[i], poses[j], self.sequence.intrinsics)


def select_frames(
    length: int,
    n_frames: int,
    flow: Callable[[int, int], float],
    flow_range: tuple[float, float],
    rng: np.random.Generator,
    lookahead: int = FLOW_LOOKAHEAD,
) -> list[int]:
    """Pick ``n_frames`` increasing indices of a ``length``-frame sequence by DPVO's flow rule.

    The clip starts at a random frame at least ``START_MARGIN * n_frames`` frames before the end
    (or at 0 in shorter sequences). Each next frame is drawn uniformly among the following
    ``lookahead`` frames whose mean flow ``flow(current, candidate)`` (pixels) lies inside
    ``flow_range``, never jumping so far that the remaining frames would not fit; without such a
    candidate the next frame in time is taken.
    """
    if length < n_frames:
        raise DatasetError(
            f"a sequence of {length} frames is too short for clips of {n_frames} frames; lower "
            "data.n_frames or remove the sequence"
        )
    low, high = flow_range
    current = int(rng.integers(0, max(0, length - START_MARGIN * n_frames) + 1))
    picked = [current]
    while len(picked) < n_frames:
        remaining = n_frames - len(picked)
        furthest = min(current + lookahead, length - remaining)
        candidates = [j for j in range(current + 1, furthest + 1) if low < flow(current, j) < high]
        current = int(rng.choice(candidates)) if candidates else current + 1
        picked.append(current)
    return picked


# -------------------------------------------------------------------------------------------
# Augmentation and normalisation (torch, float32, channels first)
# -------------------------------------------------------------------------------------------


GRAY_WEIGHTS = (0.299, 0.587, 0.114)


def _grayscale(images: torch.Tensor) -> torch.Tensor:
    weights = images.new_tensor(GRAY_WEIGHTS).view(1, 3, 1, 1)
    return (images * weights).sum(dim=1, keepdim=True)


def _rotate_hue(images: torch.Tensor, turns: float) -> torch.Tensor:
    """Rotate hue by ``turns`` of the full circle in YIQ space (images (N, 3, H, W), 0..255)."""
    to_yiq = images.new_tensor(
        [[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]]
    )
    angle = 2.0 * math.pi * turns
    cos, sin = math.cos(angle), math.sin(angle)
    rotation = images.new_tensor([[1.0, 0.0, 0.0], [0.0, cos, -sin], [0.0, sin, cos]])
    transform = torch.linalg.inv(to_yiq) @ rotation @ to_yiq
    return torch.einsum("ab,nbhw->nahw", transform, images)


def augment_colour(images: torch.Tensor, config: AugmentConfig, rng: np.random.Generator) -> torch.Tensor:
    """Apply one draw of colour jitter, grayscale and invert to all frames (N, 3, H, W) 0..255."""
    if rng.random() >= config.color_p:
        return images
    brightness = rng.uniform(1 - config.brightness, 1 + config.brightness)
    contrast = rng.uniform(1 - config.contrast, 1 + config.contrast)
    saturation = rng.uniform(1 - config.saturation, 1 + config.saturation)
    hue = rng.uniform(-config.hue, config.hue)
    grayscale = rng.random() < config.grayscale_p
    invert = rng.random() < config.invert_p

    images = (images * brightness).clamp(0, 255)
    mean = _grayscale(images).mean(dim=(1, 2, 3), keepdim=True)
    images = (mean + contrast * (images - mean)).clamp(0, 255)
    gray = _grayscale(images)
    images = (gray + saturation * (images - gray)).clamp(0, 255)
    images = _rotate_hue(images, hue).clamp(0, 255)
    if grayscale:
        images = _grayscale(images).expand(-1, 3, -1, -1).contiguous()
    if invert:
        images = 255.0 - images
    return images


def resize_and_crop(
    images: torch.Tensor,
    depths: torch.Tensor,
    intrinsics: torch.Tensor,
    size: tuple[int, int],
    zoom: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Scale frames to cover ``size`` (times ``zoom`` >= 1) and centre-crop to ``size``.

    Args:
        images: (N, 3, h, w) float; depths: (N, h, w); intrinsics: (4,) in source pixels.
        size: target ``(H, W)``.
    Returns the cropped images (N, 3, H, W), depths (N, H, W) and intrinsics (4,).
    """
    height, width = size
    source_h, source_w = images.shape[-2:]
    scale = max(height / source_h, width / source_w) * zoom
    scaled_h = max(height, int(math.ceil(source_h * scale - 1e-6)))
    scaled_w = max(width, int(math.ceil(source_w * scale - 1e-6)))
    if (scaled_h, scaled_w) != (source_h, source_w):
        images = torch.nn.functional.interpolate(
            images, size=(scaled_h, scaled_w), mode="bilinear", align_corners=False
        )
        depths = torch.nn.functional.interpolate(
            depths[:, None], size=(scaled_h, scaled_w), mode="nearest"
        )[:, 0]
    scale_x, scale_y = scaled_w / source_w, scaled_h / source_h
    top, left = (scaled_h - height) // 2, (scaled_w - width) // 2
    fx, fy, cx, cy = intrinsics.tolist()
    # Pixel centres: u' + 0.5 = (u + 0.5) * s, then shift by the crop offset.
    cropped_intrinsics = intrinsics.new_tensor(
        [fx * scale_x, fy * scale_y, (cx + 0.5) * scale_x - 0.5 - left, (cy + 0.5) * scale_y - 0.5 - top]
    )
    images = images[..., top : top + height, left : left + width]
    depths = depths[..., top : top + height, left : left + width]
    return images.contiguous(), depths.contiguous(), cropped_intrinsics


def normalise_scale(
    depths: torch.Tensor, poses_wc: torch.Tensor, percentile: float, factor: float
) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Rescale depths and translations so ``factor * percentile`` of inverse depth becomes 1.

    Inverse depth is divided by ``s = factor * percentile(1 / depth)`` over valid pixels, so depths
    and translations are multiplied by ``s``. Returns ``(depths, poses_wc, s)``.
    """
    valid = depths > 0
    if not valid.any():
        raise DatasetError("a clip has no pixel with a valid depth; cannot normalise its scale")
    inverse = 1.0 / depths[valid].double().numpy()
    scale = factor * float(np.percentile(inverse, percentile))
    poses_wc = poses_wc.clone()
    poses_wc[:, :3] *= scale
    return depths * scale, poses_wc, scale


# -------------------------------------------------------------------------------------------
# The dataset
# -------------------------------------------------------------------------------------------


def sample_rng(seed: int, stream: int, rank: int, index: int) -> np.random.Generator:
    """Return the generator of one sample: a pure function of its seed, stream, rank and index."""
    return np.random.default_rng(np.random.SeedSequence([seed, stream, rank, index]))


class ClipDataset(torch.utils.data.Dataset):
    """Procedural clip dataset: item ``index`` is a reproducible clip for this rank.

    ``synthetic`` renders a fresh sequence per item with a generator seed below
    ``validation_seed``; ``tartanair`` and ``tum`` pick a sequence and a clip at random.
    """

    def __init__(
        self,
        config: DataConfig,
        seed: int,
        rank: int = 0,
        augment: bool = True,
        validation_seed: int = 1_000_000_007,
        length: int = 2**62,
    ):
        self.config = config
        self.seed = seed
        self.rank = rank
        self.augment = augment and config.augment.enabled
        self.validation_seed = validation_seed
        self.length = length
        self.sequences: list[FrameSequence] | None = None
        if config.source != "synthetic":
            self.sequences = discover_sequences(config.source, list(config.roots))

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        rng = sample_rng(self.seed, TRAIN_STREAM, self.rank, index)
        if self.sequences is None:
            generator_seed = int(rng.integers(0, self.validation_seed))
            sequence = self._synthetic(generator_seed)
        else:
            sequence = self.sequences[int(rng.integers(0, len(self.sequences)))]
        return make_clip(sequence, self.config, rng, self.augment)

    def _synthetic(self, generator_seed: int) -> SyntheticSequence:
        return synthetic_sequence(self.config, generator_seed)


def synthetic_sequence(config: DataConfig, generator_seed: int) -> SyntheticSequence:
    """Render the source sequence of one synthetic clip at the training resolution."""
    frames = config.source_frames or SOURCE_FRAMES_PER_CLIP_FRAME * config.n_frames
    low, high = config.synthetic_frame_steps
    return SyntheticSequence(
        generator_seed, frames, config.height, config.width, (low, high), config.low_texture
    )


def validation_clips(config: DataConfig, seed: int, count: int) -> list[dict[str, torch.Tensor]]:
    """Return ``count`` held-out synthetic clips (generator seeds ``seed + i``, no augmentation)."""
    clips = []
    for index in range(count):
        rng = sample_rng(seed, VALIDATION_STREAM, 0, index)
        sequence = synthetic_sequence(config, seed + index)
        clips.append(make_clip(sequence, config, rng, augment=False))
    return clips


def make_clip(
    sequence: FrameSequence, config: DataConfig, rng: np.random.Generator, augment: bool
) -> dict[str, torch.Tensor]:
    """Pick, load, augment and normalise one clip of ``sequence`` (see the module docstring)."""
    cache = _FlowCache(sequence)
    source_width = cache.depth(0).shape[1]
    flow_scale = source_width / config.flow_reference_width
    flow_range = (config.min_flow * flow_scale, config.max_flow * flow_scale)
    indices = select_frames(len(sequence), config.n_frames, cache.flow, flow_range, rng)
    # Drawn only when enabled, so recipes without reversal keep their random stream.
    if config.reverse_p > 0 and rng.random() < config.reverse_p:
        indices = indices[::-1]
    frames = sequence.load(indices)

    images = torch.from_numpy(frames.images).permute(0, 3, 1, 2).float()
    depths = torch.from_numpy(frames.depths).float()
    intrinsics = torch.from_numpy(frames.intrinsics).float()
    zoom = 1.0
    if augment:
        images = augment_colour(images, config.augment, rng)
        if rng.random() < config.augment.scale_p:
            zoom = 2.0 ** rng.uniform(0.0, config.augment.max_scale_log2)
    images, depths, intrinsics = resize_and_crop(
        images, depths, intrinsics, (config.height, config.width), zoom
    )
    poses_wc = torch.from_numpy(frames.poses_wc)
    depths, poses_wc, scale = normalise_scale(
        depths, poses_wc, config.depth_percentile, config.depth_percentile_scale
    )
    return {
        "images": images.round().clamp(0, 255).to(torch.uint8),
        "depths": depths.float(),
        "poses_cw": se3.invert(poses_wc).float(),
        "intrinsics": intrinsics,
        "frames": torch.as_tensor(indices, dtype=torch.int64),
        "scale": torch.tensor(scale, dtype=torch.float64),
    }


# -------------------------------------------------------------------------------------------
# Loading
# -------------------------------------------------------------------------------------------


class IndexSampler(torch.utils.data.Sampler):
    """Yields ``start, start + 1, ...`` up to ``stop``: a sampler that resumes at any step."""

    def __init__(self, start: int, stop: int):
        self.start, self.stop = start, stop

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.start, self.stop))

    def __len__(self) -> int:
        return max(0, self.stop - self.start)


def _first_item(batch: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    return batch[0]


def _seed_worker(worker_id: int) -> None:
    """Seed python, numpy and torch in a worker from the loader's per-worker torch seed, and
    leave SIGINT and SIGTERM to the main process.

    Ctrl-C in a terminal, ``timeout`` and service managers signal the whole process group. A
    worker ended by SIGTERM made the main process fail in the middle of a step. With the signal
    ignored here, the main process saves its checkpoint and then shuts the workers down.
    """
    import random

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    seed = torch.initial_seed() % SEED_MODULUS
    random.seed(seed)
    np.random.seed(seed)


def make_loader(
    dataset: ClipDataset, start: int, stop: int, num_workers: int, prefetch_factor: int, seed: int
) -> torch.utils.data.DataLoader:
    """Return a batch-size-1 loader over sample indices ``start .. stop - 1``."""
    generator = torch.Generator().manual_seed(seed)
    extra = {"prefetch_factor": prefetch_factor, "persistent_workers": False} if num_workers else {}
    return torch.utils.data.DataLoader(
        dataset,
        batch_size=1,
        sampler=IndexSampler(start, stop),
        num_workers=num_workers,
        collate_fn=_first_item,
        worker_init_fn=_seed_worker,
        generator=generator,
        **extra,
    )
