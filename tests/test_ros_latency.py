"""The node latency tool: 3 warm-up frames, then 15 frames at 10 Hz from a publisher process.

The run uses a tiny rendered sequence and a randomly initialised network of tiny sizes, so it
checks the bookkeeping (counts from the publisher, the node and the recorder agree, the JSON is
complete and finite), never timing.
"""

from __future__ import annotations

import dataclasses
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from test_ros_support import NETWORK_ISOLATED, NOT_ISOLATED_REASON, REPO

from vo_node.config import NetworkConfig, load_engine_config
from vo_node.demo_data import render_demo_sequence
from vo_node.model.network import VONetwork, save_model
from vo_node.ros.latency import MAX_BACKLOG

pytestmark = pytest.mark.skipif(not NETWORK_ISOLATED, reason=NOT_ISOLATED_REASON)

FRAMES = 15
WARMUP = 3
RATE_HZ = 10.0
TINY_NETWORK = NetworkConfig(matching_dim=16, context_dim=32, encoder_dim=8)
COMMAND_TIMEOUT_S = 300
NUMBER_FIELDS = (
    "rate_hz", "input_rate_hz", "processed_rate_hz", "drop_ratio", "latency_median_ms",
    "latency_p95_ms", "latency_max_ms", "node_latency_median_ms", "node_latency_p95_ms",
    "engine_time_median_ms", "engine_time_p95_ms", "outside_engine_median_ms", "frame_period_ms",
    "publish_late_p95_ms",
)


@pytest.fixture(scope="module")
def latency_report(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, str]:
    folder = tmp_path_factory.mktemp("latency")
    config = dataclasses.replace(load_engine_config("small"), network=TINY_NETWORK)
    torch.manual_seed(0)
    model = folder / "random_tiny.pt"
    save_model(model, VONetwork(TINY_NETWORK), config, {"note": "random weights for tests"})
    sequence = render_demo_sequence(folder / "sequence", num_frames=WARMUP + FRAMES, height=64,
                                    width=96)
    output = folder / "latency.json"
    # The motion probe off, two initialisation frames and no depth-hypothesis trial let the
    # random network initialise during the warm-up, so the timed frames are tracked and give
    # odometry.
    command = [sys.executable, "-m", "vo_node.ros.latency", str(sequence), "--rate", str(RATE_HZ),
               "--frames", str(FRAMES), "--warmup", str(WARMUP), "--model", str(model),
               "--device", "cpu", "--output", str(output),
               "--override", "frontend.motion_probe_threshold=0",
               "--override", "frontend.init_frames=2",
               "--override", "frontend.hypothesis_frames=0"]
    completed = subprocess.run(command, cwd=REPO, capture_output=True, text=True,
                               timeout=COMMAND_TIMEOUT_S)
    assert completed.returncode == 0, completed.stderr[-3000:]
    return json.loads(Path(output).read_text()), completed.stdout


def test_latency_counts_consistent(latency_report):
    report, _ = latency_report
    # Warm-up frames are left out of every count.
    assert report["warmup_frames"] == WARMUP
    assert report["frames_published"] == FRAMES
    assert report["frames_received"] <= report["frames_published"]
    assert report["frames_received"] >= report["frames_processed"]
    assert report["frames_processed"] + report["frames_dropped"] == report["frames_published"]
    assert report["frames_dropped"] == (
        report["frames_dropped_in_slot"] + report["frames_rejected"]
        + report["frames_not_received"]
    )
    assert report["odometry_published"] <= report["frames_processed"]
    assert report["odometry_received"] == report["odometry_published"]
    assert report["odometry_received"] >= 1
    assert len(report["latencies_ms"]) == report["odometry_received"]
    assert report["drop_ratio"] == pytest.approx(report["frames_dropped"] / FRAMES)


def test_latency_numbers_finite(latency_report):
    report, _ = latency_report
    for name in NUMBER_FIELDS:
        value = report[name]
        assert isinstance(value, (int, float)) and math.isfinite(value), (name, value)
    assert all(math.isfinite(value) and value > 0 for value in report["latencies_ms"])
    assert report["latency_p95_ms"] >= report["latency_median_ms"]
    # The engine runs between the publish and the receipt, so latency exceeds its time.
    assert report["outside_engine_median_ms"] > 0
    assert report["frame_period_ms"] == pytest.approx(1000.0 / RATE_HZ)
    assert set(report["engine_stage_median_ms"]) >= {"encoders", "update", "ba"}
    assert report["machine"]["cores"] >= 1
    frames = report["engine_frames"]
    assert len(frames) == report["frames_processed"]
    assert all(frame["wall_ms"] >= sum(frame["stages_ms"].values()) - 1.0 for frame in frames)
    median_wall = float(np.median([frame["wall_ms"] for frame in frames]))
    assert median_wall == pytest.approx(report["engine_time_median_ms"])


def test_latency_queue_bounded(latency_report):
    report, _ = latency_report
    queue = report["queue"]
    assert len(queue) >= 2
    times = [sample["time_s"] for sample in queue]
    assert times == sorted(times)
    assert all(0 <= sample["backlog"] <= MAX_BACKLOG for sample in queue)
    assert report["backlog_max"] == max(sample["backlog"] for sample in queue)
    final = queue[-1]
    assert report["backlog_final"] == final["backlog"] == 0
    assert final["received"] == report["frames_received"]
    assert final["processed"] == report["frames_processed"]


def test_latency_summary_printed(latency_report):
    _, stdout = latency_report
    lines = stdout.splitlines()
    assert any(line.startswith("latency image stamp -> odometry receipt: median") for line in lines)
    assert any(line.startswith("processed rate: ") for line in lines)
    assert any(line.startswith("frames published / received / processed / dropped: "
                               f"{FRAMES} / ") for line in lines)


def test_latency_missing_sequence_exits_2(tmp_path):
    missing = tmp_path / "no_such_sequence"
    output = tmp_path / "latency.json"
    command = [sys.executable, "-m", "vo_node.ros.latency", str(missing), "--output", str(output)]
    completed = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert completed.returncode == 2, completed.stderr
    assert f"sequence path {missing} does not exist" in completed.stderr
    assert "Traceback" not in completed.stderr
    assert not output.exists()
