"""Track synthetic clips with the correspondence oracle and print a table of trajectory errors.

With exact correspondences in place of the network, every remaining error comes from the
frontend (initialisation, keyframe policy, motion probe) or the bundle adjustment. Per clip, the
table lists the absolute trajectory error after Sim(3) alignment as a percentage of the
ground-truth path length and the rotation error. Its diagnostics are the largest true rotation
between frames, the frame at which tracking initialised, frames dropped as static, keyframes
kept, patches whose inverse depth sits on the BA's floor, and tracking losses.

Example (the table in the report was produced with this command):

    .venv/bin/python scripts/oracle_table.py --height 240 --width 320 --seeds 0 1

Configuration fields can be overridden like on the runner, e.g. ``--set ba.iterations=4``.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vo_node.config import apply_overrides, load_engine_config, parse_override  # noqa: E402
from vo_node.geometry import se3  # noqa: E402
from vo_node.io.atomic import atomic_write  # noqa: E402
from vo_node.odometry.frontend import VisualOdometry  # noqa: E402
from vo_node.odometry.oracle import CorrespondenceOracle  # noqa: E402
from vo_node.synthetic import MOTION_FAMILIES, SCENE_KINDS, generate_clip  # noqa: E402

logger = logging.getLogger("oracle_table")

PERCENT = 100.0
BOUND_TOLERANCE = 1e-6
"""Relative distance to an inverse-depth bound at which a patch counts as stuck on it."""


@dataclass
class ClipRow:
    """One clip's errors and diagnostics."""

    motion: str
    scene: str
    seed: int
    ate_percent: float
    """RMS position error after Sim(3) alignment, percent of the ground-truth path length."""
    rotation_deg: float
    """RMS angle between estimated and true orientations relative to the first frame, degrees."""
    path_length: float
    max_rotation_step_deg: float
    """Largest true rotation between consecutive frames, degrees (a clip that turns by more
    than the field of view between two frames cannot be tracked)."""
    init_frame: int
    """Input frame at which tracking initialised (-1: never)."""
    static_drops: int
    keyframes: int
    at_floor: float
    """Share of active patches at the minimum inverse depth at the end."""
    at_ceiling: float
    losses: int
    seconds: float


def umeyama_sim3(source: np.ndarray, target: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    """Return scale, rotation and translation minimising ``|s R x + t - y|^2`` over point pairs."""
    source_mean, target_mean = source.mean(axis=0), target.mean(axis=0)
    source_centred, target_centred = source - source_mean, target - target_mean
    covariance = target_centred.T @ source_centred / len(source)
    u, singular, vt = np.linalg.svd(covariance)
    sign = np.eye(3)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        sign[2, 2] = -1.0
    rotation = u @ sign @ vt
    variance = (source_centred**2).sum(axis=1).mean()
    scale = np.trace(np.diag(singular) @ sign) / max(variance, 1e-300)
    translation = target_mean - scale * rotation @ source_mean
    return float(scale), rotation, translation


def ate_percent(estimate_wc: np.ndarray, truth_wc: np.ndarray) -> tuple[float, float]:
    """Return the Sim(3)-aligned RMS position error in percent of the path, and the path length."""
    truth = truth_wc[:, :3]
    scale, rotation, translation = umeyama_sim3(estimate_wc[:, :3], truth)
    aligned = scale * estimate_wc[:, :3] @ rotation.T + translation
    ate = float(np.sqrt(((aligned - truth) ** 2).sum(axis=1).mean()))
    path = float(np.linalg.norm(np.diff(truth, axis=0), axis=1).sum())
    return (PERCENT * ate / path if path > 0 else math.nan), path


def rotation_error_deg(estimate_wc: np.ndarray, truth_wc: np.ndarray) -> float:
    """RMS angle (degrees) between the orientations relative to the first frame."""
    estimate = se3.quaternion_to_matrix(torch.from_numpy(estimate_wc[:, 3:])).numpy()
    truth = se3.quaternion_to_matrix(torch.from_numpy(truth_wc[:, 3:])).numpy()
    estimate_relative = estimate[0].T @ estimate
    truth_relative = truth[0].T @ truth
    difference = np.einsum("nba,nbc->nac", truth_relative, estimate_relative)
    cosine = np.clip((np.trace(difference, axis1=1, axis2=2) - 1.0) / 2.0, -1.0, 1.0)
    return float(np.degrees(np.sqrt((np.arccos(cosine) ** 2).mean())))


def max_rotation_step_deg(truth_wc: np.ndarray) -> float:
    """Largest rotation angle (degrees) between consecutive ground-truth orientations."""
    rotations = se3.quaternion_to_matrix(torch.from_numpy(truth_wc[:, 3:])).numpy()
    steps = np.einsum("nba,nbc->nac", rotations[:-1], rotations[1:])
    cosine = np.clip((np.trace(steps, axis1=1, axis2=2) - 1.0) / 2.0, -1.0, 1.0)
    return float(np.degrees(np.arccos(cosine)).max()) if len(steps) else 0.0


def track_clip(config, clip) -> tuple[np.ndarray, VisualOdometry, list]:
    """Track ``clip`` with the oracle; return ``(N, 7)`` ``T_world_cam``, the odometry, results."""
    oracle = CorrespondenceOracle(clip.depths, clip.poses_wc, clip.intrinsics)
    odometry = VisualOdometry(config, None, "cpu", oracle=oracle)
    results = [
        odometry.track(image, int(stamp), clip.intrinsics)
        for image, stamp in zip(clip.images, clip.timestamps_ns)
    ]
    trajectory = odometry.finish()
    return trajectory.poses, odometry, results


def bound_shares(odometry: VisualOdometry) -> tuple[float, float]:
    """Share of the active patches at the BA's lower and upper inverse-depth bound."""
    graph = odometry.graph
    if graph.n == 0:
        return 0.0, 0.0
    inverse_depth = graph.patches[: graph.n, :, 2].flatten()
    ba = odometry.config.ba
    floor = inverse_depth <= ba.min_inverse_depth * (1 + BOUND_TOLERANCE)
    ceiling = inverse_depth >= ba.max_inverse_depth * (1 - BOUND_TOLERANCE)
    return float(floor.float().mean()), float(ceiling.float().mean())


def evaluate_clip(config, motion: str, scene: str, seed: int, args) -> ClipRow:
    clip = generate_clip(seed, args.frames, args.height, args.width, motion=motion, scene=scene)
    start = time.perf_counter()
    poses_wc, odometry, results = track_clip(config, clip)
    seconds = time.perf_counter() - start
    states = [r.state for r in results]
    init_frame = states.index("tracking") if "tracking" in states else -1
    static = sum(1 for d in odometry.graph.dropped.values() if d.relative_pose is None)
    losses = sum(1 for a, b in zip(states, states[1:]) if b == "lost" and a != "lost")
    ate, path = ate_percent(poses_wc, clip.poses_wc)
    floor, ceiling = bound_shares(odometry)
    return ClipRow(
        motion=motion,
        scene=scene,
        seed=seed,
        ate_percent=ate,
        rotation_deg=rotation_error_deg(poses_wc, clip.poses_wc),
        path_length=path,
        max_rotation_step_deg=max_rotation_step_deg(clip.poses_wc),
        init_frame=init_frame,
        static_drops=static,
        keyframes=odometry.graph.num_frames,
        at_floor=floor,
        at_ceiling=ceiling,
        losses=losses,
        seconds=seconds,
    )


def format_row(row: ClipRow) -> str:
    return (
        f"| {row.motion:8s} | {row.scene:7s} | {row.seed:4d} | {row.ate_percent:8.3f} | "
        f"{row.rotation_deg:7.3f} | {row.path_length:6.2f} | {row.max_rotation_step_deg:7.1f} | "
        f"{row.init_frame:4d} | "
        f"{row.static_drops:6d} | {row.keyframes:4d} | {PERCENT * row.at_floor:5.1f} | "
        f"{row.losses:4d} | {row.seconds:5.1f} |"
    )


HEADER = (
    "| motion   | scene   | seed |   ATE %  | rot deg |   path | stepdeg | init | static |  kfs | "
    "floor% | lost |     s |\n"
    "|----------|---------|------|----------|---------|--------|---------|------|--------|------|"
    "-------|------|-------|"
)


def parse_arguments(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="small", help="preset name or YAML path")
    parser.add_argument("--motions", nargs="+", default=list(MOTION_FAMILIES))
    parser.add_argument("--scenes", nargs="+", default=list(SCENE_KINDS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    parser.add_argument("--frames", type=int, default=50, help="frames per clip")
    parser.add_argument("--height", type=int, default=240, help="image height, pixels")
    parser.add_argument("--width", type=int, default=320, help="image width, pixels")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE",
        help="configuration override, e.g. ba.iterations=4 (repeatable)",
    )
    parser.add_argument("--json", type=Path, help="also write the rows to this JSON file")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_arguments(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    torch.set_num_threads(args.threads)
    config = load_engine_config(args.config)
    config = apply_overrides(config, dict(parse_override(text) for text in args.set))

    print(HEADER, flush=True)
    rows = []
    for motion in args.motions:
        for scene in args.scenes:
            for seed in args.seeds:
                row = evaluate_clip(config, motion, scene, seed, args)
                rows.append(row)
                print(format_row(row), flush=True)
    translation_rows = [r for r in rows if r.motion != "rotation"]
    worst = max((r.ate_percent for r in translation_rows), default=math.nan)
    print(f"\nworst ATE % (translating clips): {worst:.3f}")
    print(f"worst rotation error, degrees: {max(r.rotation_deg for r in rows):.3f}")
    if args.json:
        with atomic_write(args.json) as handle:
            json.dump([asdict(r) for r in rows], handle, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
