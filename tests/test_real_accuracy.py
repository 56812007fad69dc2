"""The shipped model on real sequences, in runs that the depth-hypothesis trial decided.

With the depth hypothesis chosen at initialisation (``frontend.hypothesis_frames: 0``), the
EuRoC run ends at 7.8 % of the path with the shipped step-10,000 model. The KITTI runs failed
that way with the step-7,000 model (15.5 %, and 6.7 and 18.6 % when forced onto the other
hypothesis, ``docs/benchmarks.md``); with step 10,000 they pass either way and guard against
regressions. Each run must stay within the product's goal of 5 %. The sequences are read from
``../shared/data`` (or ``$VO_NODE_DATA``), never from the repository, and the tests skip when
they are absent.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

from vo_node.accuracy import data_root
from vo_node.io.sequence import open_sequence
from vo_node.run import evaluate_run, load_engine, run_sequence

GOAL_PERCENT = 5.0
"""The product's accuracy goal: ATE after Sim(3) alignment, in percent of the path length."""
CASES = [
    ("kitti_odometry_07", 0),
    ("kitti_odometry_07", 1),
    ("kitti_odometry_07", 2),
    ("euroc_MH_05_difficult", 1),
]


@pytest.fixture(scope="module")
def engine():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield load_engine("small", [], None, "cpu")
    torch.set_num_threads(threads)


@pytest.mark.parametrize("name, seed", CASES, ids=[f"{name}-seed{seed}" for name, seed in CASES])
def test_shipped_model_meets_goal(engine, name, seed):
    path = data_root() / name
    if not path.exists():
        pytest.skip(f"real sequence {path} is absent (set VO_NODE_DATA)")
    config, network, device = engine
    sequence = open_sequence(path)
    result = run_sequence(
        sequence, dataclasses.replace(config, seed=seed), network, device, progress=False
    )
    metrics = evaluate_run(result, sequence.ground_truth)
    assert metrics is not None
    assert metrics.associated_poses == len(sequence)
    assert metrics.ate_percent < GOAL_PERCENT
    assert metrics.standstill_ate_percent > 5 * GOAL_PERCENT
