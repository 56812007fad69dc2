"""The node's frame pipeline with the real engine: initialisation, bad stamps, sizes,
intrinsics, engine errors, resets and tracking loss.

No DDS traffic: the pipeline is the part of the node between the frame slot and the publishers.
The engine runs a freshly initialised ``small`` network on small synthetic frames, with the
motion probe off, ``init_frames`` = 2 and no depth-hypothesis trial, so that it tracks from the
second frame. So these
tests check the handling of each input problem and the continuity of the odometry, not tracking
accuracy.
"""

from __future__ import annotations

from concurrent.futures import Future

import numpy as np
import pytest

from vo_node.io.camera import PinholeCamera
from vo_node.ros.pipeline import (
    CAMERA_INFO_GRACE_S,
    INPUT_TIMEOUT_MIN_S,
    STATE_CHOOSING,
    STATE_INITIALISING,
    DropReporter,
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
INIT_FRAMES = 2
LOW_RATIO = 450.0
"""Variance ratio of the scripted low-confidence results."""
"""The test engine initialises on its second frame after a start or reset."""


@pytest.fixture(scope="module")
def engine():
    try:
        from vo_node.model.network import VONetwork
        from vo_node.odometry.frontend import VisualOdometry
    except ImportError as error:
        pytest.skip(f"the engine is not importable yet: {error}")
    import torch

    from vo_node.config import apply_overrides, load_engine_config

    # A random network predicts almost no flow, so the motion probe would never let it initialise.
    config = apply_overrides(load_engine_config("small"), {
        "frontend.motion_probe_threshold": 0.0, "frontend.init_frames": INIT_FRAMES,
        "frontend.hypothesis_frames": 0,
    })
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
    """A pipeline plus the log lines it produced (warnings in ``messages``, info in ``infos``)."""

    def __init__(self, engine, fallback=None) -> None:
        engine.reset()
        self.messages: list[str] = []
        self.infos: list[str] = []
        self.problems = ProblemReporter(self.messages.append, info=self.infos.append)
        frame = OdometryFrame(pose_to_matrix(DEFAULT_CAMERA_TO_BASE))
        self.pipeline = TrackingPipeline(engine, frame, fallback, self.problems, "/cam/image",
                                         "/cam/camera_info")
        self.stamp = 1_000_000_000

    def track(self, image, stamp=None, camera_model="default", received_s=0.0,
              camera_info_error=None):
        stamp = self.stamp if stamp is None else stamp
        self.stamp = stamp + STEP_NS
        model = camera(image.shape[1], image.shape[0]) if camera_model == "default" else camera_model
        frame = InputFrame(image, stamp, "cam", model, received_s,
                           camera_info_error=camera_info_error)
        return self.pipeline.process(frame)

    def initialise(self, shift: int, height: int = HEIGHT, width: int = WIDTH):
        """Track frames until the engine initialises; return the first published estimate.

        Checks that every frame before it was used for initialisation and published nothing.
        """
        for index in range(INIT_FRAMES - 1):
            outcome, estimate = self.track(textured_frame(shift + index, height, width))
            assert outcome == Outcome.INITIALISING
            assert estimate is None
            assert self.pipeline.state == STATE_INITIALISING
        outcome, estimate = self.track(textured_frame(shift + INIT_FRAMES, height, width))
        assert outcome == Outcome.PUBLISHED
        assert self.pipeline.state == "tracking"
        return estimate


def assert_same_pose(actual, expected) -> None:
    np.testing.assert_allclose(actual.odom_from_base, expected.odom_from_base, atol=1e-9)


def test_first_odometry_after_initialisation(engine):
    # The engine's poses before it initialises are the identity and its first initialised pose
    # lies away from it; the odometry starts at the origin on that first initialised frame.
    harness = Harness(engine)
    outcome, estimate = harness.track(textured_frame(0), stamp=10 * STEP_NS)
    assert outcome == Outcome.INITIALISING
    assert estimate is None
    assert harness.pipeline.state == STATE_INITIALISING
    outcome, first = harness.track(textured_frame(3), stamp=11 * STEP_NS)
    assert outcome == Outcome.PUBLISHED
    np.testing.assert_allclose(first.odom_from_base, np.eye(4), atol=1e-9)
    np.testing.assert_allclose(first.twist, 0.0)
    assert first.stamp_ns == 11 * STEP_NS
    outcome, second = harness.track(textured_frame(6), stamp=12 * STEP_NS)
    assert outcome == Outcome.PUBLISHED
    assert second.stamp_ns == 12 * STEP_NS
    assert harness.problems.counts == {}


def test_pipeline_handles_input_problems(engine):
    # One sequence through every stamp and size problem keeps the number of (slow) engine calls
    # low. After each reset the engine initialises again, and the first pose it then publishes
    # is the last one published before the reset, with zero twist.
    harness = Harness(engine)
    counts = harness.problems.counts
    harness.stamp = 10 * STEP_NS
    harness.initialise(0)
    outcome, second = harness.track(textured_frame(5), stamp=20 * STEP_NS)
    assert outcome == Outcome.PUBLISHED
    assert counts == {}

    outcome, estimate = harness.track(textured_frame(6), stamp=20 * STEP_NS)
    assert outcome == Outcome.SKIPPED
    assert estimate is None
    assert counts == {"duplicate_stamp": 1}
    assert "repeats stamp 1000000000 ns" in harness.messages[-1]
    assert "/cam/image" in harness.messages[-1]

    # A stamp jump back resets the tracker; the new segment starts at the last published pose.
    harness.stamp = 2 * STEP_NS
    restarted = harness.initialise(8)
    assert counts["stamp_backwards"] == 1
    assert_same_pose(restarted, second)
    np.testing.assert_allclose(restarted.twist, 0.0)

    outcome, before_resize = harness.track(textured_frame(11))
    assert outcome == Outcome.PUBLISHED
    resized = harness.initialise(12, height=48, width=80)
    assert counts["image_size_change"] == 1
    assert "from 96x64 to 80x48" in " ".join(harness.messages)
    assert_same_pose(resized, before_resize)

    outcome, _ = harness.track(np.zeros((48, 80, 2), dtype=np.uint8))
    assert outcome == Outcome.FAILED
    assert counts["engine_error"] == 1
    assert "ValueError" in harness.messages[-1]
    recovered = harness.initialise(16, height=48, width=80)
    assert_same_pose(recovered, resized)


def test_reset_continues_from_last_pose(engine):
    # What ~/reset does: the engine initialises again and odom continues without a jump.
    harness = Harness(engine)
    harness.initialise(0)
    outcome, before = harness.track(textured_frame(5))
    assert outcome == Outcome.PUBLISHED
    harness.pipeline.reset()
    assert harness.pipeline.state == STATE_INITIALISING
    after = harness.initialise(7)
    assert_same_pose(after, before)
    np.testing.assert_allclose(after.twist, 0.0)
    outcome, following = harness.track(textured_frame(11))
    assert outcome == Outcome.PUBLISHED
    assert following.stamp_ns > after.stamp_ns


class ScriptedEngine:
    """Engine stand-in that replays ``(state, position)`` results in the engine's contract.

    A tracking loss of the real engine cannot be caused on demand, so this replays the results
    it gives around one: ``lost`` on the failing frame and on every frame until it has
    initialised again, then ``tracking`` with poses of a new segment (a new origin and scale).
    """

    def __init__(self, script) -> None:
        self.script = list(script)
        self.resets = 0
        self.restart_at: set[int] = set()
        """Indices of the scripted results that come with ``restarted`` set."""
        self.trial_at: set[int] = set()
        """Indices of the scripted results that come with ``on_trial`` set."""
        self.low_at: set[int] = set()
        """Indices of the scripted results that come with ``low_confidence`` set."""
        self.scale_ratio_at: dict[int, float] = {}
        """Scripted results with a ``scale_ratio``, by index."""
        self.calls = 0
        self.upkeeps = 0

    def reset(self) -> None:
        self.resets += 1

    def upkeep(self) -> None:
        self.upkeeps += 1

    def track(self, image, stamp_ns, intrinsics, defer_upkeep=False):
        from vo_node.odometry.frontend import TrackResult

        state, position = self.script.pop(0)
        pose = np.array([*position, 0.0, 0.0, 0.0, 1.0])
        restarted = self.calls in self.restart_at
        on_trial = self.calls in self.trial_at
        low_confidence = self.calls in self.low_at
        scale_ratio = self.scale_ratio_at.get(self.calls)
        self.calls += 1
        return TrackResult(timestamp_ns=stamp_ns, pose=pose, is_keyframe=True, state=state,
                           num_edges=0, restarted=restarted, on_trial=on_trial,
                           low_confidence=low_confidence, scale_ratio=scale_ratio,
                           variance_ratio=LOW_RATIO if low_confidence else 1.0)


def test_low_confidence_reported_once_per_run():
    script = [("tracking", (0.0, 0.0, float(step))) for step in range(7)]
    engine = ScriptedEngine(script)
    engine.low_at = {2, 3, 4, 6}
    harness = Harness(engine)

    results = [harness.track(textured_frame(0)) for _ in script]

    estimates = [estimate for _, estimate in results]
    assert [estimate.low_confidence for estimate in estimates] == [
        False, False, True, True, True, False, True,
    ]
    assert estimates[2].variance_ratio == LOW_RATIO
    assert estimates[1].variance_ratio == 1.0
    # One report per run of low-confidence frames, not per frame.
    assert harness.problems.counts == {"low_confidence": 2}
    assert len(harness.messages) == 1
    assert f"{LOW_RATIO:.0f} times its recent median" in harness.messages[0]
    assert harness.pipeline.low_confidence
    # Odometry goes on: every frame is published, in one segment.
    assert [outcome for outcome, _ in results] == [Outcome.PUBLISHED] * len(script)
    assert {estimate.segment for estimate in estimates} == {0}


def test_low_confidence_cleared_by_reset():
    engine = ScriptedEngine([("tracking", (0.0, 0.0, 0.0))])
    engine.low_at = {0}
    harness = Harness(engine)
    harness.track(textured_frame(0))
    assert harness.pipeline.low_confidence
    harness.pipeline.reset()
    assert not harness.pipeline.low_confidence


def test_tracking_loss_continues_from_last_pose():
    script = [
        ("initializing", (0.0, 0.0, 0.0)),
        ("tracking", (0.0, 0.0, 1.0)),
        ("tracking", (0.0, 0.0, 2.0)),
        ("lost", (0.0, 0.0, 2.0)),
        ("lost", (0.0, 0.0, 2.0)),
        ("lost", (0.0, 0.0, 2.0)),
        # The re-initialised segment: another origin and a scale of 10 units per step.
        ("tracking", (5.0, 5.0, 50.0)),
        ("tracking", (5.0, 5.0, 60.0)),
    ]
    engine = ScriptedEngine(script)
    harness = Harness(engine)
    results = [harness.track(textured_frame(0)) for _ in script]
    outcomes = [outcome for outcome, _ in results]
    assert outcomes == [
        Outcome.INITIALISING, Outcome.PUBLISHED, Outcome.PUBLISHED, Outcome.LOST,
        Outcome.INITIALISING, Outcome.INITIALISING, Outcome.PUBLISHED, Outcome.PUBLISHED,
    ]
    assert harness.problems.counts == {"tracking_lost": 1}
    published = [estimate for _, estimate in results if estimate is not None]
    # Optical z forward is body x forward: one unit per step along x, then no jump at the
    # re-initialisation, then the new segment's steps of 10 units.
    x = [estimate.odom_from_base[0, 3] for estimate in published]
    np.testing.assert_allclose(x, [0.0, 1.0, 1.0, 11.0], atol=1e-9)
    np.testing.assert_allclose(published[2].twist, 0.0)
    # The poses after the loss form a second segment, with their own scale.
    assert [estimate.segment for estimate in published] == [0, 0, 1, 1]
    assert harness.pipeline.segments == 2
    # The engine re-initialises by itself; the pipeline does not reset it (one reset: Harness).
    assert engine.resets == 1


def test_hypothesis_switch_continues_from_last_pose():
    # The engine's depth-hypothesis trial switches to the other hypothesis on the third frame:
    # its poses have another origin and scale, and the pipeline must not jump to them.
    script = [
        ("tracking", (0.0, 0.0, 0.0)),
        ("tracking", (0.0, 0.0, 1.0)),
        ("tracking", (3.0, 3.0, -20.0)),
        ("tracking", (3.0, 3.0, -18.0)),
    ]
    engine = ScriptedEngine(script)
    engine.restart_at = {2}
    engine.trial_at = {0, 1, 2}
    harness = Harness(engine)
    results, states = [], []
    for _ in script:
        results.append(harness.track(textured_frame(0)))
        states.append(harness.pipeline.state)
    assert [outcome for outcome, _ in results] == [Outcome.PUBLISHED] * 4
    assert states == [STATE_CHOOSING] * 3 + ["tracking"]
    # The debug image draws the estimate's state, so it shows the trial too.
    assert [estimate.state for _, estimate in results] == states
    x = [estimate.odom_from_base[0, 3] for _, estimate in results]
    np.testing.assert_allclose(x, [0.0, 1.0, 1.0, 3.0], atol=1e-9)
    np.testing.assert_allclose(results[2][1].twist, 0.0)
    assert [estimate.segment for _, estimate in results] == [0, 0, 1, 1]
    assert harness.pipeline.segments == 2
    assert harness.problems.counts == {}


def test_hypothesis_switch_keeps_previous_scale():
    # The new hypothesis moves 2 units per frame where the old one moved 1: its scale ratio 0.5
    # brings its steps back to 1 unit.
    script = [
        ("tracking", (0.0, 0.0, 0.0)),
        ("tracking", (0.0, 0.0, 1.0)),
        ("tracking", (3.0, 3.0, -20.0)),
        ("tracking", (3.0, 3.0, -18.0)),
        ("tracking", (3.0, 3.0, -16.0)),
    ]
    engine = ScriptedEngine(script)
    engine.restart_at = {2}
    engine.trial_at = {0, 1, 2}
    engine.scale_ratio_at = {2: 0.5}
    harness = Harness(engine)

    results = [harness.track(textured_frame(0)) for _ in script]

    x = [estimate.odom_from_base[0, 3] for _, estimate in results]
    np.testing.assert_allclose(x, [0.0, 1.0, 1.0, 2.0, 3.0], atol=1e-9)
    assert [estimate.segment for _, estimate in results] == [0, 0, 1, 1, 1]


def test_switch_without_scale_ratio_keeps_factor(caplog):
    # A first switch halves the scale, and a second one without a ratio keeps that factor.
    script = [("tracking", (0.0, 0.0, float(2 * step))) for step in range(3)]
    script += [("tracking", (9.0, 9.0, float(2 * step))) for step in range(3)]
    engine = ScriptedEngine(script)
    engine.restart_at = {1, 3}
    engine.trial_at = set(range(4))
    engine.scale_ratio_at = {1: 0.5}
    harness = Harness(engine)

    with caplog.at_level("INFO", logger="vo_node.ros.pipeline"):
        results = [harness.track(textured_frame(0)) for _ in script]

    x = [estimate.odom_from_base[0, 3] for _, estimate in results]
    # Segment 1 starts at frame 1 (steps of 2 halved to 1), and segment 2 keeps the factor 0.5.
    np.testing.assert_allclose(x, [0.0, 0.0, 1.0, 1.0, 2.0, 3.0], atol=1e-9)
    assert harness.pipeline.frame.segment_scale == 0.5
    assert "without a scale ratio; the new segment keeps the current scale factor 0.5" in (
        caplog.text)


def test_reset_without_pose_starts_no_segment():
    # A reset before the engine published anything leaves no segment behind: the first
    # published pose is still in segment 0.
    script = [
        ("initializing", (0.0, 0.0, 0.0)),
        ("initializing", (0.0, 0.0, 0.0)),
        ("tracking", (0.0, 0.0, 1.0)),
        ("tracking", (0.0, 0.0, 2.0)),
    ]
    engine = ScriptedEngine(script)
    harness = Harness(engine)
    harness.track(textured_frame(0))
    harness.pipeline.reset()
    results = [harness.track(textured_frame(0)) for _ in script[1:]]
    published = [estimate for _, estimate in results if estimate is not None]
    assert [estimate.segment for estimate in published] == [0, 0]
    assert harness.pipeline.segments == 1


def test_missing_intrinsics_skipped(engine):
    # The first image of a replay often arrives just before its camera_info: that is an info
    # line. Later images without any camera_info get the warning with the remap hint.
    harness = Harness(engine)
    outcome, _ = harness.track(textured_frame(0), camera_model=None, received_s=100.0)
    assert outcome == Outcome.SKIPPED
    assert harness.problems.counts == {"no_intrinsics": 1}
    assert harness.messages == []
    assert len(harness.infos) == 1
    assert "/cam/camera_info" in harness.infos[0]

    late = 100.0 + CAMERA_INFO_GRACE_S + 0.1
    outcome, _ = harness.track(textured_frame(1), camera_model=None, received_s=late)
    assert outcome == Outcome.SKIPPED
    assert harness.problems.counts == {"no_intrinsics": 2}
    assert len(harness.messages) == 1
    warning = harness.messages[0]
    assert "no valid camera_info received on /cam/camera_info" in warning
    assert "-r camera_info:=<topic>" in warning
    assert "-p intrinsics:=[fx, fy, cx, cy]" in warning


def test_invalid_camera_info_names_reason(engine):
    # camera_info arrives on the right topic but its K is all zeros: no remap hint, because the
    # topic is right, and the reason of the bad_camera_info warning is repeated.
    harness = Harness(engine)
    reason = "K has focal lengths fx=0.0, fy=0.0"
    outcome, _ = harness.track(textured_frame(0), camera_model=None, received_s=100.0,
                               camera_info_error=reason)
    assert outcome == Outcome.SKIPPED
    assert harness.problems.counts == {"no_intrinsics": 1}
    assert len(harness.messages) == 1
    warning = harness.messages[0]
    assert "camera_info arrives on /cam/camera_info but is invalid" in warning
    assert reason in warning
    assert "-p intrinsics:=[fx, fy, cx, cy]" in warning
    assert "-r camera_info" not in warning


def test_unset_stamp_names_driver_fix(engine):
    # A driver that leaves header.stamp at 0: the first frame is tracked, because recorded
    # sequences may start at 0, and every later one is skipped with the fix in the message.
    harness = Harness(engine)
    outcome, _ = harness.track(textured_frame(0), stamp=0)
    assert outcome == Outcome.INITIALISING
    outcome, estimate = harness.track(textured_frame(1), stamp=0)
    assert outcome == Outcome.SKIPPED
    assert estimate is None
    assert harness.problems.counts == {"unset_stamp": 1}
    assert "header.stamp 0" in harness.messages[-1]
    assert "Set header.stamp to the capture time in the camera driver" in harness.messages[-1]


def test_stamp_gap_logged_at_info(engine):
    harness = Harness(engine)
    harness.stamp = 10 * STEP_NS
    harness.initialise(0)
    outcome, _ = harness.track(textured_frame(4))
    assert outcome == Outcome.PUBLISHED
    assert harness.problems.counts == {}
    outcome, _ = harness.track(textured_frame(5), stamp=harness.stamp + 10_000_000_000)
    assert outcome == Outcome.PUBLISHED
    assert harness.problems.counts == {"stamp_gap": 1}
    assert harness.messages == []
    assert "jumped 10.05 s ahead" in harness.infos[-1]
    assert f"{INPUT_TIMEOUT_MIN_S:g} s" in harness.infos[-1]


def test_camera_change_message_rounds_floats(engine):
    harness = Harness(engine)
    harness.track(textured_frame(0))
    changed = PinholeCamera(width=WIDTH, height=HEIGHT, fx=275.19239999999996, fy=80.0,
                            cx=47.5, cy=31.5)
    harness.track(textured_frame(1), camera_model=changed)
    assert harness.problems.counts == {"camera_change": 1}
    warning = harness.messages[-1]
    assert "from 96x64, fx=80.00" in warning
    assert "to 96x64, fx=275.19 fy=80.00" in warning
    assert "PinholeCamera(" not in warning


def test_camera_info_size_mismatch_uses_fallback(engine):
    harness = Harness(engine, fallback=INTRINSICS)
    outcome, _ = harness.track(textured_frame(0), camera_model=camera(640, 480))
    assert outcome == Outcome.INITIALISING
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


def test_drop_warning_waits_for_first_frame():
    messages = []
    reporter = DropReporter(messages.append, interval_s=3600.0)
    # At start-up frames replace each other while the engine is built and runs its first frame:
    # counted, not warned.
    assert not reporter.report(dropped=1, input_hz=5.0, processed_hz=0.0, processed=0)
    assert not reporter.report(dropped=21, input_hz=16.5, processed_hz=0.0, processed=1)
    assert messages == []
    assert reporter.report(dropped=3, input_hz=30.0, processed_hz=9.5, processed=4, received=7)
    assert len(messages) == 1
    assert messages[0].startswith("dropped 3 of 7 frames received so far: tracking fell behind")
    assert "Over the last 5.0 s, 30.0 Hz were received and 9.5 Hz taken for tracking" in messages[0]
    # Throttled within the interval.
    assert not reporter.report(dropped=4, input_hz=30.0, processed_hz=9.5, processed=5)
    assert len(messages) == 1


def test_problem_expected_logged_as_info():
    warnings, infos = [], []
    reporter = ProblemReporter(warnings.append, interval_s=3600.0, info=infos.append)
    reporter.report("no_intrinsics", "waiting", expected=True)
    reporter.report("no_intrinsics", "waiting again", expected=True)
    reporter.report("no_intrinsics", "still none")
    assert reporter.counts == {"no_intrinsics": 3}
    assert infos == ["[no_intrinsics] waiting"]
    # The first unexpected occurrence is warned about at once.
    assert warnings == ["[no_intrinsics] still none"]


def test_frame_slot_keeps_newest():
    slot = FrameSlot()
    frames = [InputFrame(np.zeros((2, 2), np.uint8), stamp, "cam", None, 0.0) for stamp in (1, 2)]
    assert slot.put(frames[0]) is None
    assert slot.put(frames[1]) is frames[0]
    assert slot.take(0.01) is frames[1]
    assert slot.take(0.01) is None


def test_frame_slot_replaces_stale_frame():
    import threading
    import time

    slot = FrameSlot()
    now = time.monotonic()
    stale = InputFrame(np.zeros((2, 2), np.uint8), 1, "cam", None, now - 0.05)
    fresh = InputFrame(np.zeros((2, 2), np.uint8), 2, "cam", None, now)
    slot.put(stale)
    replaced: list = []
    timer = threading.Timer(0.05, lambda: replaced.append(slot.put(fresh)))
    timer.start()
    returned = slot.take(0.01, stale_after_s=0.02, replace_within_s=5.0)
    timer.join()
    assert returned is fresh
    assert replaced == [stale]  # handed back to the caller of put() as dropped


def test_frame_slot_returns_unreplaced_stale_frame():
    import time

    slot = FrameSlot()
    stale = InputFrame(np.zeros((2, 2), np.uint8), 1, "cam", None, time.monotonic() - 1.0)
    slot.put(stale)
    started = time.monotonic()
    assert slot.take(0.01, stale_after_s=0.02, replace_within_s=0.05) is stale
    assert time.monotonic() - started >= 0.05
    # A frame younger than the limit is returned at once.
    young = InputFrame(np.zeros((2, 2), np.uint8), 2, "cam", None, time.monotonic())
    slot.put(young)
    started = time.monotonic()
    assert slot.take(0.01, stale_after_s=10.0, replace_within_s=5.0) is young
    assert time.monotonic() - started < 1.0


def test_pipeline_defers_engine_upkeep(engine):
    """The pipeline has the engine leave its keyframe removal until ``upkeep()``."""
    harness = Harness(engine)
    pending = []
    for index in range(INIT_FRAMES + 6):
        harness.track(textured_frame(index))
        pending.append(engine._upkeep_pending)
        harness.pipeline.upkeep()
        assert not engine._upkeep_pending
    assert any(pending), "no frame left upkeep pending"


def test_frame_slot_claim_once_per_frame():
    slot = FrameSlot()
    assert slot.claim(0.01) is None
    first, second = (InputFrame(np.zeros((2, 2), np.uint8), stamp, "cam", None, 0.0)
                     for stamp in (1, 2))
    slot.put(first)
    assert slot.claim(0.01) is first
    assert first.encoding is not None
    assert slot.claim(0.01) is None  # already being encoded
    slot.put(second)  # replaces the claimed frame, which is dropped
    assert slot.claim(0.01) is second
    assert slot.take(0.01) is second


def test_pipeline_encoded_ahead_equals_inline(engine):
    """The same frames give the same poses whether the encoders ran ahead or inline."""
    from vo_node.ros.pipeline import FrameEncoder

    poses = []
    for ahead in (False, True):
        harness = Harness(engine)
        encoder = FrameEncoder(engine, None)
        estimates = []
        for index in range(5):
            frame = InputFrame(textured_frame(2 * index), 1_000 + index * STEP_NS, "cam",
                               camera(), float(index))
            if ahead:
                frame.encoding = Future()
                encoder.encode(frame)
                assert frame.encoding.result() is not None
            outcome, estimate = harness.pipeline.process(frame)
            if estimate is not None:
                estimates.append(estimate.odom_from_base)
        assert len(estimates) == 5 - INIT_FRAMES + 1
        poses.append(np.stack(estimates))
    np.testing.assert_array_equal(poses[0], poses[1])


def test_frame_encoded_before_a_reset_is_encoded_again(engine):
    harness = Harness(engine)
    frame = InputFrame(textured_frame(0), 1_000, "cam", camera(), 0.0)
    frame.encoding = Future()
    from vo_node.ros.pipeline import FrameEncoder

    FrameEncoder(engine, None).encode(frame)
    stale = frame.encoding.result().encoded
    engine.reset()
    assert stale.generation != engine.generation
    with pytest.raises(ValueError, match=r"encoded before the last reset\(\); pass its image"):
        engine.track(None, 1_000, INTRINSICS, encoded=stale)
    result = engine.track(textured_frame(0), 1_000, INTRINSICS, encoded=stale)
    assert result.times.encoders > 0.0
    assert result.times.encoders != stale.seconds


def test_rate_meter_recent_period_follows_rate_change():
    meter = RateMeter(window_s=10.0)
    assert meter.recent_period_s() == 0.0
    for index in range(20):  # 5 Hz, then 30 Hz
        meter.tick(now=index * 0.2)
    for index in range(1, 12):
        meter.tick(now=3.8 + index / 30.0)
    assert meter.recent_period_s() == pytest.approx(1 / 30.0)
    assert meter.rate_hz(now=4.2) < 15.0  # the window average still lags


def test_rate_meter_period_kept_after_silence():
    meter = RateMeter(window_s=1.0)
    assert meter.silence_s(now=0.0) is None
    for index in range(11):
        meter.tick(now=index * 0.05)
    assert meter.rate_hz(now=10.0) == 0.0  # the window is empty
    assert meter.recent_period_s() == pytest.approx(0.05)
    assert meter.silence_s(now=10.0) == pytest.approx(9.5)


def test_rate_meter_window():
    meter = RateMeter(window_s=1.0)
    assert meter.rate_hz(now=1.0) == 0.0
    for index in range(11):
        meter.tick(now=10.0 + index * 0.1)
    assert meter.rate_hz(now=11.0) == pytest.approx(10.0)
    assert meter.rate_hz(now=13.0) == 0.0
    assert meter.count == 11
    assert meter.first_s == 10.0


def test_rate_meter_window_starts_at_first_event():
    # Before the window is full it starts at the first event, which only opens it: two events
    # 0.1 s apart are 10 Hz, not 20 Hz.
    meter = RateMeter(window_s=5.0)
    meter.tick(now=2.0)
    assert meter.rate_hz(now=2.0) == 0.0
    meter.tick(now=2.1)
    assert meter.rate_hz(now=2.1) == pytest.approx(10.0)


def test_processed_rate_never_exceeds_input_rate():
    # A 32-frame bag at 21 Hz: the first 7 frames arrive while the engine starts and replace each
    # other, then every frame is tracked. Each tracked frame ticks at its arrival time, and both
    # meters are read over the same window, as the node does.
    period_s = 1.0 / 21.0
    arrivals = [index * period_s for index in range(32)]
    received, tracked = RateMeter(), RateMeter()
    for index, arrival in enumerate(arrivals):
        received.tick(now=arrival)
        if index >= 7:
            tracked.tick(now=arrival)
    for now in (arrivals[10], arrivals[20], arrivals[-1], arrivals[-1] + 0.01):
        input_hz = received.rate_hz(now, received.first_s)
        processed_hz = tracked.rate_hz(now, received.first_s)
        assert processed_hz < input_hz, now
    now = arrivals[-1]
    assert received.rate_hz(now, received.first_s) == pytest.approx(21.0)
    assert tracked.rate_hz(now, received.first_s) == pytest.approx(21.0 * 25 / 31)


@pytest.mark.parametrize(
    "state, low_confidence, level, words",
    [
        ("tracking", False, "OK", "tracking"),
        ("tracking", True, "WARN", "low confidence"),
        (STATE_INITIALISING, True, "WARN", "initialising"),
    ],
)
def test_node_diagnostics_low_confidence(state, low_confidence, level, words):
    from types import SimpleNamespace

    from diagnostic_msgs.msg import DiagnosticStatus

    from vo_node.ros.node import VONode

    node = SimpleNamespace(
        model_state="ready", fatal_error=None, tracking_state=state,
        low_confidence=low_confidence, outcomes={Outcome.INITIALISING: 3},
        input_rate=RateMeter(), image_topic="/cam/image",
    )
    status_level, message = VONode._diagnostic_level(node)
    assert status_level == getattr(DiagnosticStatus, level)
    assert words in message


def test_node_diagnostics_warn_when_images_stop():
    # 20 Hz images for 1 s, then none: OK within the outage limit of max(1 s, 5 periods), WARN
    # with the silence after it, even though the last tracking state is "tracking".
    from types import SimpleNamespace

    from diagnostic_msgs.msg import DiagnosticStatus

    from vo_node.ros.node import VONode

    meter = RateMeter()
    for index in range(21):
        meter.tick(now=100.0 + index * 0.05)
    node = SimpleNamespace(
        model_state="ready", fatal_error=None, tracking_state="tracking", low_confidence=False,
        outcomes={}, input_rate=meter, image_topic="/cam/image",
    )
    level, message = VONode._diagnostic_level(node, now=101.9)
    assert level == DiagnosticStatus.OK
    assert message == "tracking"
    level, message = VONode._diagnostic_level(node, now=104.0)
    assert level == DiagnosticStatus.WARN
    assert message.startswith("no image on /cam/image for 3.0 s (outage limit 1.0 s)")
