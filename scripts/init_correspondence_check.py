"""Compare the network's patch targets with ground-truth correspondences during initialisation.

For a TartanAir folder, the script tracks the first frames with the shipped (or given) model and,
at every update of the initial window, scores the edges whose source and target frames both have
a ground-truth depth map (``depth_left/NNNNNN_left_depth.npy``). Per update it prints, in
1/4-resolution pixels (the engine's patch-graph pixels):

- the median true flow of those edges and the median distance from the current reprojection and
  from the network's target to the true position;
- the share of targets within 1 px of the truth and the mean confidence weight;
- the weight-averaged target error, current error and |current - target|;

- the median true flow of the 10 % most confident patches.

With ``--dense-search`` it also searches, at the first scored update, the whole 1/4-resolution
matching map of each target frame for the best match of each patch's 3x3 feature crop. No
correlation window limits this search. It prints the share of matches within 2 px of the truth.

Usage::

    .venv/bin/python scripts/init_correspondence_check.py ../shared/data/tartanair_hospital \\
        [--model FILE] [--frames 14] [--dense-search] [--override KEY=VALUE ...]

The script replaces ``VisualOdometry._measure`` on its own instance to observe each update; it
changes no result.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from vo_node.geometry.projection import reproject
from vo_node.config import ConfigError
from vo_node.io.sequence import SequenceError, open_sequence
from vo_node.model.network import ModelFileError
from vo_node.odometry import VisualOdometry
from vo_node.odometry.oracle import CorrespondenceOracle
from vo_node.run import load_engine

DEPTH_PATTERN = "depth_left/{:06d}_left_depth.npy"
CONFIDENT_QUANTILE = 0.9
"""Patches with a mean weight above this quantile count as the most confident."""
CLOSE_PIXELS = 1.0
"""A target within this distance of the truth (1/4-resolution pixels) counts as found."""
DENSE_CLOSE_PIXELS = 2.0
"""A dense-search match within this distance of the truth (1/4-resolution pixels) is correct."""
HEADER = (
    "update  frames  flow_med  current_err_med  target_err_med  found  mean_weight  "
    "w_target_err  w_current_err  w_current_to_target  confident_flow_med"
)


def depth_maps(root: Path, count: int, shape: tuple[int, int]) -> tuple[np.ndarray, list[int]]:
    """Return ``(count, H, W)`` depths (zero where no map exists) and the frames that have one."""
    depths = np.zeros((count, *shape))
    present = []
    for frame in range(count):
        path = root / DEPTH_PATTERN.format(frame)
        if path.is_file():
            depths[frame] = np.load(path)
            present.append(frame)
    return depths, present


def scored_edges(odometry: VisualOdometry, oracle, scored: torch.Tensor):
    """Return the indices of the visible edges between frames listed in ``scored``, their
    patch centres and their true target positions (``(S,)``, ``(S, 2)``, ``(S, 2)``), or None
    when there is no such edge."""
    graph = odometry.graph
    frame_ids = torch.as_tensor(graph.frame_ids[: graph.n])
    source, target_frame = frame_ids[graph.ii.cpu()], frame_ids[graph.jj.cpu()]
    chosen = torch.isin(source, scored) & torch.isin(target_frame, scored) & (source != target_frame)
    if not bool(chosen.any()):
        return None
    centre = graph.patch_size // 2
    index = chosen.nonzero().squeeze(1)
    centres = graph.active_patches[graph.kk[index], :2, centre, centre]
    true, valid = oracle.correspondences(source[index], target_frame[index], centres,
                                         odometry._intrinsics)
    seen = valid[:, 0] > 0
    if not bool(seen.any()):
        return None
    return index[seen], centres[seen], true[seen]


def edge_scores(odometry: VisualOdometry, edges, target, weight):
    """Return one row of figures for ``edges`` (from :func:`scored_edges`)."""
    index, centres, true = edges
    graph = odometry.graph
    centre = graph.patch_size // 2
    coords = reproject(graph.active_poses, graph.active_patches, odometry._intrinsics,
                       graph.ii, graph.jj, graph.kk).coords
    current = coords[index][:, :, centre, centre]
    predicted = target[index]
    weights = weight[index].mean(dim=1)
    target_error = (predicted - true).norm(dim=1)
    current_error = (current - true).norm(dim=1)

    def weighted(values: torch.Tensor) -> float:
        return float((weights * values).sum() / weights.sum())

    flow = (true - centres).norm(dim=1)
    return (
        int(graph.n), float(flow.median()),
        float(current_error.median()), float(target_error.median()),
        float((target_error < CLOSE_PIXELS).float().mean()), float(weights.mean()),
        weighted(target_error), weighted(current_error), weighted((current - predicted).norm(dim=1)),
        float(flow[weights > weights.quantile(CONFIDENT_QUANTILE)].median()),
    )


def dense_search_share(odometry: VisualOdometry, edges) -> float:
    """Return the share of ``edges`` whose best match over the whole target map is correct."""
    index, _, true = edges
    graph = odometry.graph
    centre = graph.patch_size // 2
    crops = graph.gmap[: graph.n].flatten(0, 1)[graph.kk[index]]
    height, width = odometry._graph_image_size()
    maps = graph.fmaps[0][graph.fmap_slots(graph.jj[index])].permute(0, 3, 1, 2)
    border = (maps.shape[2] - height) // 2
    maps = maps[:, :, border : border + height, border : border + width]
    correct = 0
    for crop, fmap, truth in zip(crops, maps, true):
        scores = F.conv2d(fmap[None], crop[None], padding=centre)[0, 0]
        best = int(scores.flatten().argmax())
        match = torch.tensor([best % width, best // width], dtype=truth.dtype)
        correct += int((match - truth).norm() < DENSE_CLOSE_PIXELS)
    return correct / len(index)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sequence", type=Path, help="TartanAir folder with depth_left maps")
    parser.add_argument("--model", type=Path, default=None, help="model file (default: shipped)")
    parser.add_argument("--config", default="small", help="engine preset (default small)")
    parser.add_argument("--frames", type=int, default=14, help="frames to track (default 14)")
    parser.add_argument("--dense-search", action="store_true",
                        help="also score a search over the whole matching map at the first update")
    parser.add_argument("--override", action="append", default=[], metavar="KEY=VALUE",
                        help="configuration override, repeatable")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    try:
        config, network, device = load_engine(args.config, args.override, args.model, "cpu")
        if args.frames < config.frontend.init_frames:
            raise SystemExit(
                f"--frames {args.frames} ends before the initial window of "
                f"{config.frontend.init_frames} frames; pass at least {config.frontend.init_frames}"
            )
        if not (args.sequence / "depth_left").is_dir():
            raise SystemExit(f"{args.sequence} has no depth_left folder; pass a TartanAir folder "
                             "with depth_left/NNNNNN_left_depth.npy maps")
        sequence = open_sequence(args.sequence, max_frames=args.frames)
    except (SequenceError, ConfigError, ModelFileError, FileNotFoundError) as error:
        raise SystemExit(str(error)) from None
    frames = list(sequence)
    depths, present = depth_maps(args.sequence, len(frames), frames[0].image.shape[:2])
    if len(present) < 2:
        raise SystemExit(f"{args.sequence} has depth maps for frames {present} among the first "
                         f"{len(frames)}; at least two are needed, so raise --frames")
    intrinsics = sequence.camera.intrinsics
    oracle = CorrespondenceOracle(depths, sequence.ground_truth.poses[: len(frames)], intrinsics)
    odometry = VisualOdometry(config, network, device)
    scored = torch.as_tensor(present)
    rows = []
    dense_shares = []
    measure = odometry._measure

    def observed_measure(times):
        target, weight = measure(times)
        edges = scored_edges(odometry, oracle, scored)
        if edges is not None:
            rows.append(edge_scores(odometry, edges, target, weight))
            if args.dense_search and not dense_shares:
                dense_shares.append(dense_search_share(odometry, edges))
        return target, weight

    odometry._measure = observed_measure
    for frame in frames:
        odometry.track(frame.image, frame.timestamp_ns, intrinsics)
    print(f"scored frames {present}; pixels are 1/4 of the tracking resolution")
    print(HEADER)
    for index, row in enumerate(rows):
        print(f"{index:6d}  {row[0]:6d}  " + "  ".join(f"{value:8.3f}" for value in row[1:]))
    if dense_shares:
        print(f"dense search at the first update: {dense_shares[0]:.1%} of the scored patches "
              f"matched within {DENSE_CLOSE_PIXELS:g} px of the truth")


if __name__ == "__main__":
    main()
