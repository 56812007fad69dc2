"""Track a sequence and print how many correlation products the engine reused.

At inference the engine keeps each edge's integer-grid correlation products and computes them
again only when the edge's grid corners move (``frontend.reuse_correlation``). This script
tracks a sequence and prints, per pyramid level, the share of edges inside the map whose
products were reused, counted by the kept patch graph's store::

    .venv/bin/python scripts/correlation_reuse.py ../shared/data/euroc_MH_05_difficult \
        --config accurate
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence as TypingSequence

import torch

from vo_node.config import ConfigError
from vo_node.io.sequence import SequenceError, open_sequence
from vo_node.odometry.frontend import VisualOdometry
from vo_node.run import load_engine


def reuse_shares(sequence_path: str, config_name: str, max_frames: int | None) -> list[float]:
    """Track ``sequence_path`` and return the reused share of each pyramid level (0 to 1)."""
    config, network, device = load_engine(config_name, [], None, "cpu")
    if not config.frontend.reuse_correlation:
        raise ConfigError(
            f"frontend.reuse_correlation is off in {config_name!r}. Set it to true to count reuse"
        )
    sequence = open_sequence(sequence_path, max_frames=max_frames)
    odometry = VisualOdometry(config, network, device)
    with torch.no_grad():
        for frame in sequence:
            odometry.track(frame.image, frame.timestamp_ns, sequence.camera.intrinsics)
    store = odometry.graph.grid_products
    if store is None:
        raise RuntimeError(f"{sequence_path}: the engine never correlated the graph's edges")
    return [
        reused / max(1, reused + computed)
        for reused, computed in zip(store.reused, store.computed)
    ]


def main(argv: TypingSequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sequence", help="sequence folder, bag or video")
    parser.add_argument("--config", default="small", help="preset name or YAML path")
    parser.add_argument("--max-frames", type=int, default=None, help="frames to track")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        shares = reuse_shares(args.sequence, args.config, args.max_frames)
    except (ConfigError, SequenceError, RuntimeError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    for level, share in enumerate(shares):
        print(f"level {level}: {100 * share:.1f} % of the edges inside the map reused")
    return 0


if __name__ == "__main__":
    sys.exit(main())
