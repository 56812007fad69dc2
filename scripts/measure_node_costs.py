"""Time two per-frame costs that the node moves off the path to the published pose.

1. The engine's keyframe upkeep (removal and edge retirement), with ``track(...,
   defer_upkeep=True)`` and a timed ``upkeep()``, on the first frames of a sequence.
2. Building and publishing a ``nav_msgs/Path`` of 1,000 poses with no subscriber.

Run it inside the private network namespace, because part 2 starts DDS::

    bash scripts/netns_run.sh .venv/bin/python scripts/measure_node_costs.py \
        ../shared/data/euroc_MH_05_difficult --frames 150
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch

PATH_POSES = 1000
PATH_REPEATS = 30
WARMUP_FRAMES = 40


def upkeep_milliseconds(sequence_path: str, frames: int) -> list[float]:
    """Return the ``upkeep()`` times (ms) of the tracked frames after the warm-up."""
    from vo_node.io.sequence import open_sequence
    from vo_node.odometry.frontend import VisualOdometry
    from vo_node.run import load_engine

    engine = VisualOdometry(*load_engine("small", [], None, "cpu"))
    sequence = open_sequence(sequence_path, 1, frames)
    intrinsics = sequence.camera.intrinsics
    times = []
    for index, frame in enumerate(sequence):
        engine.track(frame.image, frame.timestamp_ns, intrinsics, defer_upkeep=True)
        started = time.perf_counter()
        engine.upkeep()
        if index >= WARMUP_FRAMES:
            times.append(1e3 * (time.perf_counter() - started))
    return times


def path_milliseconds() -> list[float]:
    """Return the times (ms) to build and publish a 1,000-pose path with no subscriber."""
    import rclpy
    from nav_msgs.msg import Path as PathMessage

    from vo_node.ros.messages import make_path, make_pose_stamped, ns_to_stamp

    rclpy.init()
    try:
        node = rclpy.create_node("measure_node_costs")
        publisher = node.create_publisher(PathMessage, "path", 1)
        poses = [make_pose_stamped(np.eye(4), ns_to_stamp(i), "odom") for i in range(PATH_POSES)]
        times = []
        for _ in range(PATH_REPEATS):
            started = time.perf_counter()
            publisher.publish(make_path(poses, ns_to_stamp(PATH_POSES), "odom"))
            times.append(1e3 * (time.perf_counter() - started))
        node.destroy_node()
    finally:
        rclpy.shutdown()
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sequence", help="sequence folder, e.g. ../shared/data/euroc_MH_05_difficult")
    parser.add_argument("--frames", type=int, default=150, help="frames to track (default 150)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    upkeep = upkeep_milliseconds(args.sequence, args.frames)
    print(f"upkeep: median {statistics.median(upkeep):.2f} ms over {len(upkeep)} frames "
          f"(one torch thread)")
    path = path_milliseconds()
    print(f"path of {PATH_POSES} poses: median {statistics.median(path):.2f} ms to build and "
          f"publish ({PATH_REPEATS} repeats)")


if __name__ == "__main__":
    main()
