"""Calibration of the motion probe on synthetic clips: probe flow against true flow.

Before initialisation the frontend skips a frame as static when the *motion probe* (one update
step from a zero hidden state on the previous keyframe's patches) predicts a median flow below
``frontend.motion_probe_threshold``. One update step can only see as far as the correlation
window reaches, so the probe saturates: beyond a few pixels of true flow it no longer grows. A
threshold near the saturation level then marks fast motion as static, and the frontend drops the
very frames it needs to initialise on.

This command renders synthetic clips (never real data), runs the probe from frame 0 to frames at
growing gaps, and prints the probe flow next to the true median flow of the same patch centres.
It also prints the share of pairs each candidate threshold classifies correctly, with "moving"
meaning a true median flow of at least ``--moving-flow`` pixels::

    python -m vo_node.evaluation.probe [--model PATH] [--clips 8] [--output outputs/probe]
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import logging
import sys
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from tqdm import tqdm

from vo_node.config import ConfigError, EngineConfig
from vo_node.io.atomic import atomic_write
from vo_node.model.encoder import FEATURE_STRIDE
from vo_node.model.network import ModelFileError
from vo_node.synthetic.clip import SyntheticClip, generate_clip, induced_flow
from vo_node.synthetic.motion import relative_transform

logger = logging.getLogger(__name__)

CLIP_SEED_OFFSET = 2_000_000_000
"""Clip ``c`` uses generator seed ``CLIP_SEED_OFFSET + c``. Training clips draw their seeds
below 1_000_000_007 (``vo_node.train.data``), so these clips are never trained on."""
FRAME_GAPS = (1, 2, 3, 5, 8, 11)
"""Frame gaps probed from frame 0 of each clip."""
CLIP_HEIGHT, CLIP_WIDTH = 240, 320
STATIC_NOISE_SIGMA = 2.0
"""Grey-level noise (0..255) added to a copy of frame 0 for the static pairs."""
DEFAULT_MOVING_FLOW = 2.0
"""True median flow (1/4-resolution pixels) from which a pair counts as moving."""
CANDIDATE_THRESHOLDS = (0.5, 0.75, 1.0, 1.25, 1.5, 2.0)
EXIT_USAGE = 2


@dataclasses.dataclass
class ProbeSample:
    """One probed frame pair."""

    clip: int
    gap: int
    """Frames between the keyframe and the probed frame; 0 is a noisy copy of the keyframe."""
    true_flow: float
    """Median true flow of the probed patch centres, 1/4-resolution pixels."""
    probe_flow: float
    """Median flow that the probe predicted, 1/4-resolution pixels."""


def probe_pair(
    config: EngineConfig,
    network: torch.nn.Module,
    clip: SyntheticClip,
    first: np.ndarray,
    second: np.ndarray,
    gap: int,
) -> tuple[float, np.ndarray]:
    """Run the probe from image ``first`` to image ``second``, both ``(H, W, 3)`` uint8.

    Return the probe's median flow (1/4-resolution pixels) and the ``(M, 2)`` full-resolution
    centres of the probed patches.
    """
    from vo_node.odometry import VisualOdometry

    odometry = VisualOdometry(config, network, config.device)
    stamps = clip.timestamps_ns
    odometry.track(first, int(stamps[0]), clip.intrinsics)
    odometry.track(second, int(stamps[max(gap, 1)]), clip.intrinsics)
    if odometry.last_probe_flow is None:
        raise RuntimeError(
            "the motion probe did not run, because frontend.init_frames is below 2; set it to 2 or "
            "more"
        )
    patches = odometry.graph.patches[0, :, :2].cpu().numpy()  # (M, 2, P, P)
    centre = patches.shape[-1] // 2
    return odometry.last_probe_flow, patches[:, :, centre, centre] * FEATURE_STRIDE


def true_median_flow(clip: SyntheticClip, gap: int, centres: np.ndarray) -> float:
    """Return the median true flow (1/4-resolution pixels) of ``centres`` from frame 0 to
    frame ``gap``, computed from the rendered depth and poses."""
    if gap == 0:
        return 0.0
    transform = relative_transform(clip.poses_wc, 0, gap)
    flow, valid = induced_flow(clip.depths[0], clip.intrinsics, transform)
    height, width = valid.shape
    columns = np.clip(np.round(centres[:, 0]).astype(int), 0, width - 1)
    rows = np.clip(np.round(centres[:, 1]).astype(int), 0, height - 1)
    keep = valid[rows, columns]
    magnitudes = np.linalg.norm(flow[rows, columns], axis=-1)[keep]
    return float(np.median(magnitudes)) / FEATURE_STRIDE if magnitudes.size else float("inf")


def calibrate(
    config: EngineConfig, network: torch.nn.Module, clips: int, progress: bool = True
) -> list[ProbeSample]:
    """Probe ``clips`` synthetic clips at every gap of :data:`FRAME_GAPS` and at gap 0."""
    samples = []
    noise = np.random.default_rng(0)
    for index in tqdm(range(clips), desc="probe clips", unit="clip", disable=not progress):
        clip = generate_clip(
            CLIP_SEED_OFFSET + index, max(FRAME_GAPS) + 1, CLIP_HEIGHT, CLIP_WIDTH,
            frame_step_range=(1, 3),
        )
        first = clip.images[0]
        static = np.clip(first + noise.normal(0.0, STATIC_NOISE_SIGMA, first.shape), 0, 255)
        pairs = [(0, static.astype(np.uint8))] + [(gap, clip.images[gap]) for gap in FRAME_GAPS]
        for gap, second in pairs:
            probe, centres = probe_pair(config, network, clip, first, second, gap)
            samples.append(ProbeSample(index, gap, true_median_flow(clip, gap, centres), probe))
    return samples


def threshold_accuracy(
    samples: Sequence[ProbeSample], thresholds: Sequence[float], moving_flow: float
) -> list[tuple[float, float, float]]:
    """Return ``(threshold, share of static pairs called static, share of moving pairs called
    moving)`` for each threshold. A pair is moving when its true flow is ``>= moving_flow``."""
    static = [s.probe_flow for s in samples if s.true_flow < moving_flow]
    moving = [s.probe_flow for s in samples if s.true_flow >= moving_flow]
    rows = []
    for threshold in thresholds:
        static_ok = float(np.mean([p < threshold for p in static])) if static else float("nan")
        moving_ok = float(np.mean([p >= threshold for p in moving])) if moving else float("nan")
        rows.append((threshold, static_ok, moving_ok))
    return rows


def write_outputs(samples: Sequence[ProbeSample], folder: Path) -> list[Path]:
    """Write ``samples.csv`` and a scatter plot ``probe.png`` into ``folder``; return the paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder.mkdir(parents=True, exist_ok=True)
    table = folder / "samples.csv"
    with atomic_write(table) as handle:
        writer = csv.writer(handle)
        writer.writerow([field.name for field in dataclasses.fields(ProbeSample)])
        for sample in samples:
            writer.writerow(dataclasses.astuple(sample))

    figure, axes = plt.subplots(figsize=(6.0, 4.5))
    true = np.array([s.true_flow for s in samples])
    probe = np.array([s.probe_flow for s in samples])
    axes.scatter(np.maximum(true, 0.1), probe, s=14)
    axes.set_xscale("log")
    axes.set_xlabel("true median flow (1/4-resolution px, 0 drawn at 0.1)")
    axes.set_ylabel("probe median flow (1/4-resolution px)")
    axes.set_title("motion probe against true flow, synthetic clips")
    axes.grid(True, alpha=0.3)
    plot = folder / "probe.png"
    with atomic_write(plot, "wb") as handle:
        figure.savefig(handle, format="png", dpi=110, bbox_inches="tight")
    plt.close(figure)
    return [table, plot]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m vo_node.evaluation.probe",
        description="Compare the motion probe with the true flow on synthetic clips.",
    )
    parser.add_argument("--config", default="small", help="engine preset name or YAML path")
    parser.add_argument("--model", default=None, help="model file (default: shipped)")
    parser.add_argument("--clips", type=int, default=8, help="synthetic clips to probe")
    parser.add_argument("--moving-flow", type=float, default=DEFAULT_MOVING_FLOW,
                        help="true median flow (1/4-resolution px) from which a pair is moving")
    parser.add_argument("--output", type=Path, default=Path("outputs/probe"),
                        help="folder for samples.csv and probe.png (default: outputs/probe)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from vo_node.run import load_engine

    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for name, value, lowest in (("--clips", args.clips, 1), ("--threads", args.threads, 1)):
        if value is not None and value < lowest:
            print(f"error: {name} must be at least {lowest}, got {value}", file=sys.stderr)
            return EXIT_USAGE
    if not args.moving_flow > 0:
        print(f"error: --moving-flow must be positive, got {args.moving_flow}", file=sys.stderr)
        return EXIT_USAGE
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    try:
        config, network, device = load_engine(args.config, [], args.model, "cpu")
    except (ConfigError, FileNotFoundError, ModelFileError) as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_USAGE
    config = dataclasses.replace(config, device=device)
    samples = calibrate(config, network, args.clips)
    print("clip  gap  true flow  probe flow   (1/4-resolution px, median over the patches)")
    for sample in samples:
        print(f"{sample.clip:4d}  {sample.gap:3d}  {sample.true_flow:9.2f}  "
              f"{sample.probe_flow:10.2f}")
    print(f"threshold  still pairs called still  pairs with >= {args.moving_flow} px true flow "
          "called moving")
    for threshold, static_ok, moving_ok in threshold_accuracy(
        samples, CANDIDATE_THRESHOLDS, args.moving_flow
    ):
        print(f"{threshold:9.2f}  {static_ok:24.0%}  {moving_ok:24.0%}")
    print(f"current frontend.motion_probe_threshold of {config.name}: "
          f"{config.frontend.motion_probe_threshold}")
    for path in write_outputs(samples, args.output):
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
