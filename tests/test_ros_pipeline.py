"""The node's frame pipeline with the real engine: bad stamps, sizes, intrinsics, engine errors.

No DDS traffic: the pipeline is the part of the node between the frame slot and the publishers.
The engine runs a freshly initialised ``small`` network on small synthetic frames, so these tests
check the handling of each input problem, not tracking accuracy.
"""

from __future__ import annotations

import numpy as np
import pytest

from vo_node.io.camera import PinholeCamera
from vo_node.ros.pipeline import (
    FrameSlot,
    InputFrame,
    Outcome,
    ProblemReporter,
    RateMeter,
    TrackingPipeline,
)
from vo_node.ros.tf import DEFAULT_CAMERA_TO_BASE, OdometryFrame, pose_to_matrix

HEIGHT, WIDTH = 64, 96
INTRINSICS = [80.0, 80.0, 47.5, 31.5]
STEP_NS = 50_000_000


@pytest.fixture(scope="module")
def engine():
    try:
        from vo_node.model.network import VONetwork
        from vo_node.odometry.frontend import VisualOdometry
    except ImportError as error:
        pytest.skip(f"the engine is not importable yet: {error}")
    import torch

    from vo_node.config import load_engine_config

    config = load_engine_config("small")
    torch.manual_seed(0)
    return VisualOdometry(config, VONetwork(config.network).eval(), "cpu")


def textured_frame(shift: int, height: int = HEIGHT, width: int = WIDTH) -> np.ndarray:
    generator = np.random.default_rng(0)
    texture = generator.integers(0, 255, size=(height, width + 64), dtype=np.uint8)
    return np.ascontiguousarray(texture[:, shift:shift + width])


def camera(width: int = WIDTH, height: int = HEIGHT) -> PinholeCamera:
    fx, fy, cx, cy = INTRINSICS
    return PinholeCamera(width=width, height=height, fx=fx, fy=fy, cx=cx, cy=cy)


class Harness:
    """A pipeline plus the log lines it produced."""

    def __init__(self, engine, fallback=None) -> None:
        engine.reset()
        self.messages: list[str] = []
        self.problems = ProblemReporter(self.messages.append)
        frame = OdometryFrame(pose_to_matrix(DEFAULT_CAMERA_TO_BASE))
        self.pipeline = TrackingPipeline(engine, frame, fallback, self.problems, "/cam/image",
                                         "/cam/camera_info")
        self.stamp = 1_000_000_000

    def track(self, image, stamp=None, camera_model="default"):
        stamp = self.stamp if stamp is None else stamp
        self.stamp = stamp + STEP_NS
        model = camera(image.shape[1], image.shape[0]) if camera_model == "default" else camera_model
        return self.pipeline.process(InputFrame(image, stamp, "cam", model, 0.0))


def test_pipeline_handles_input_problems(engine):
    # One sequence through every stamp and size problem keeps the number of (slow) engine calls
    # low: two good frames, a duplicate stamp, a stamp jump back, a size change, an engine error
    # and a recovery.
    harness = Harness(engine)
    counts = harness.problems.counts

    outcome, first = harness.track(textured_frame(0), stamp=10 * STEP_NS)
    assert outcome == Outcome.PUBLISHED
    np.testing.assert_allclose(first.odom_from_base, np.eye(4), atol=1e-9)
    assert first.stamp_ns == 10 * STEP_NS
    outcome, second = harness.track(textured_frame(3), stamp=11 * STEP_NS)
    assert outcome == Outcome.PUBLISHED
    assert second.stamp_ns == 11 * STEP_NS
    assert counts == {}

    outcome, estimate = harness.track(textured_frame(4), stamp=11 * STEP_NS)
    assert outcome == Outcome.SKIPPED
    assert estimate is None
    assert counts == {"duplicate_stamp": 1}
    assert "repeats stamp 550000000 ns" in harness.messages[-1]
    assert "/cam/image" in harness.messages[-1]

    # A stamp jump back resets the tracker; the new segment starts at the last published pose.
    outcome, restarted = harness.track(textured_frame(6), stamp=2 * STEP_NS)
    assert outcome == Outcome.PUBLISHED
    assert counts["stamp_backwards"] == 1
    np.testing.assert_allclose(restarted.odom_from_base, second.odom_from_base, atol=1e-9)
    np.testing.assert_allclose(restarted.twist, 0.0)

    outcome, resized = harness.track(textured_frame(8, height=48, width=80))
    assert outcome == Outcome.PUBLISHED
    assert counts["image_size_change"] == 1
    assert "from 96x64 to 80x48" in harness.messages[-1]
    np.testing.assert_allclose(resized.odom_from_base, restarted.odom_from_base, atol=1e-9)

    outcome, _ = harness.track(np.zeros((48, 80, 2), dtype=np.uint8))
    assert outcome == Outcome.FAILED
    assert counts["engine_error"] == 1
    assert "ValueError" in harness.messages[-1]
    outcome, recovered = harness.track(textured_frame(10, height=48, width=80))
    assert outcome == Outcome.PUBLISHED
    np.testing.assert_allclose(recovered.odom_from_base, resized.odom_from_base, atol=1e-9)


def test_missing_intrinsics_skipped(engine):
    harness = Harness(engine)
    outcome, _ = harness.track(textured_frame(0), camera_model=None)
    assert outcome == Outcome.SKIPPED
    assert harness.problems.counts == {"no_intrinsics": 1}
    assert "/cam/camera_info" in harness.messages[0]


def test_camera_info_size_mismatch_uses_fallback(engine):
    harness = Harness(engine, fallback=INTRINSICS)
    outcome, _ = harness.track(textured_frame(0), camera_model=camera(640, 480))
    assert outcome == Outcome.PUBLISHED
    assert harness.problems.counts == {"camera_info_size": 1}
    assert "640x480" in harness.messages[0]
    assert "using the intrinsics parameter" in harness.messages[0]


def test_problem_log_is_throttled():
    messages = []
    reporter = ProblemReporter(messages.append, interval_s=3600.0)
    for _ in range(5):
        reporter.report("bad_image", "broken")
    reporter.report("duplicate_stamp", "again")
    assert reporter.counts == {"bad_image": 5, "duplicate_stamp": 1}
    assert messages == ["[bad_image] broken", "[duplicate_stamp] again"]
    reporter._last_logged["bad_image"] = -1e9
    reporter.report("bad_image", "broken")
    assert messages[-1] == "[bad_image] broken (4 more since the last report)"


def test_frame_slot_keeps_newest():
    slot = FrameSlot()
    frames = [InputFrame(np.zeros((2, 2), np.uint8), stamp, "cam", None, 0.0) for stamp in (1, 2)]
    assert slot.put(frames[0]) is None
    assert slot.put(frames[1]) is frames[0]
    assert slot.take(0.01) is frames[1]
    assert slot.take(0.01) is None


def test_rate_meter_window():
    meter = RateMeter(window_s=1.0)
    for index in range(11):
        meter.tick(now=10.0 + index * 0.1)
    assert meter.rate_hz(now=11.0) == pytest.approx(10.0)
    assert meter.rate_hz(now=13.0) == 0.0
    assert meter.count == 11
