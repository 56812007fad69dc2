"""Frontend pieces without a network: patch-graph bookkeeping, image preparation, motion model,
the rebuilding of dropped frames' poses and the estimate of the initial window."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np
import pytest
import torch

from vo_node.ba.solver import bundle_adjust
from vo_node.config import BAConfig, ConfigError, EngineConfig, FrontendConfig, NetworkConfig
from vo_node.geometry import se3
from vo_node.geometry.projection import reproject
from vo_node.odometry.frontend import (
    MAX_TIMESTAMP_RATIO,
    mean_patch_flow,
    mean_patch_flows,
    predict_pose,
)
from vo_node.odometry.graph import PatchGraph
from vo_node.odometry.image import prepare_image
from vo_node.odometry.initialization import (
    _mirror_depths,
    _relative_pose,
    initialize_window,
    resolve_depth_reversal,
)

M = 4
P = 3


def make_graph(**frontend_overrides) -> PatchGraph:
    values = dict(
        patches_per_frame=M,
        patch_lifetime=3,
        removal_window=5,
        optimization_window=4,
        keyframe_index=2,
        frame_memory=8,
        max_keyframes=4096,
    )
    values.update(frontend_overrides)
    return PatchGraph(FrontendConfig(**values), NetworkConfig(patch_size=P), initial_capacity=4)


def translation_pose(x: float) -> torch.Tensor:
    pose = se3.identity()
    pose[0] = x
    return pose


def add_frame(graph: PatchGraph, frame_id: int, pose=None, with_maps: bool = True) -> int:
    """Add keyframe ``frame_id`` whose patch depths, features and map all equal its frame id."""
    patches = torch.full((M, 3, P, P), float(frame_id))
    features = dict(
        gmap=torch.full((M, 2, P, P), float(frame_id)),
        context=torch.full((M, 5), float(frame_id)),
        fmap_pyramid=[torch.full((2, 4, 4), float(frame_id)), torch.full((2, 1, 1), float(frame_id))],
    )
    index = graph.add_keyframe(
        translation_pose(float(frame_id)) if pose is None else pose,
        patches,
        timestamp_ns=1000 * (frame_id + 1),
        frame_id=frame_id,
        **(features if with_maps else {}),
    )
    ii, jj, kk = graph.new_frame_edges(graph.frontend.patch_lifetime)
    graph.add_edges(ii, jj, kk, hidden_dim=5)
    return index


def edge_frame_ids(graph: PatchGraph) -> set[tuple[int, int, int]]:
    """Edges as (source frame id, target frame id, patch number) triples, free of local indices."""
    ids = graph.frame_ids
    return {
        (int(ids[i]), int(ids[j]), int(k) % M)
        for i, j, k in zip(graph.ii.tolist(), graph.jj.tolist(), graph.kk.tolist())
    }


def assert_edges_consistent(graph: PatchGraph) -> None:
    assert torch.equal(graph.kk // M, graph.ii)
    assert int(graph.ii.max()) < graph.n
    assert int(graph.jj.max()) < graph.n
    assert int(graph.ii.min()) >= 0
    assert int(graph.jj.min()) >= 0
    # Patch depths were set to the frame id, so kk must still point at its source frame's data.
    depths = graph.active_patches[graph.kk, 2, 0, 0]
    assert torch.equal(depths, torch.as_tensor(graph.frame_ids[graph.ii.numpy()], dtype=depths.dtype))
    assert graph.hidden is not None
    assert graph.hidden.shape == (graph.num_edges, 5)


# ---------------------------------------------------------------------------------------------
# Edge formula


@pytest.mark.parametrize("lifetime", [1, 3, 13])
def test_new_frame_edges_match_formula(lifetime):
    graph = make_graph(patch_lifetime=lifetime, removal_window=lifetime + 2, frame_memory=40)
    for frame in range(lifetime + 3):
        before = graph.num_edges
        add_frame(graph, frame)
        newest = graph.n - 1
        previous = min(newest, lifetime - 1)
        expected = previous * M + (previous + 1) * M
        assert graph.num_edges - before == expected

        new = slice(before, None)
        ii, jj = graph.ii[new], graph.jj[new]
        forward = jj == newest
        backward = ii == newest
        assert torch.all(forward | backward)
        # Forward: patches of the previous lifetime-1 frames; backward: to the last lifetime frames.
        assert set(ii[forward & ~backward].tolist()) == set(range(newest - previous, newest))
        assert set(jj[backward].tolist()) == set(range(newest - previous, newest + 1))
        assert int((ii == jj).sum()) == M


def test_full_defaults_give_2400_edges_per_frame():
    frontend = FrontendConfig()
    graph = PatchGraph(frontend, NetworkConfig())
    patches = torch.zeros(frontend.patches_per_frame, 3, 3, 3)
    for frame in range(frontend.patch_lifetime + 1):
        graph.add_keyframe(se3.identity(), patches, timestamp_ns=frame + 1, frame_id=frame)
    ii, _, _ = graph.new_frame_edges(frontend.patch_lifetime)
    assert len(ii) == 2400


def test_new_edges_start_with_zero_hidden_state():
    graph = make_graph()
    add_frame(graph, 0)
    graph.hidden.fill_(7.0)
    add_frame(graph, 1)
    new = graph.hidden[graph.ii == 1]
    assert torch.all(new == 0)
    assert torch.all(graph.hidden[(graph.ii == 0) & (graph.jj == 0)] == 7.0)


# ---------------------------------------------------------------------------------------------
# Keyframe removal and retirement


def test_remove_keyframe_shifts_indices_and_edges():
    graph = make_graph(removal_window=50, frame_memory=60)
    for frame in range(7):
        add_frame(graph, frame)
    expected = {edge for edge in edge_frame_ids(graph) if 3 not in edge[:2]}
    ring_before = {g: graph.fmaps[0][g % 60, 0, 0, 0].item() for g in range(7)}

    graph.remove_keyframe(3)

    assert graph.n == 6
    assert graph.frame_ids[: graph.n].tolist() == [0, 1, 2, 4, 5, 6]
    assert graph.timestamps_ns[: graph.n].tolist() == [1000, 2000, 3000, 5000, 6000, 7000]
    assert edge_frame_ids(graph) == expected
    assert_edges_consistent(graph)
    # Later frames' poses, features and dense maps moved down with them.
    assert graph.active_poses[:, 0].tolist() == [0, 1, 2, 4, 5, 6]
    assert graph.gmap[3, 0, 0, 0, 0].item() == 4.0
    assert graph.context[5, 0, 0].item() == 6.0
    slots = graph.fmap_slots(torch.arange(graph.n))
    assert graph.fmaps[0][slots, 0, 0, 0].tolist() == [ring_before[g] for g in (0, 1, 2, 4, 5, 6)]
    assert graph.fmaps[1][slots[3], 0, 0, 0].item() == 4.0


def test_ring_maps_follow_removals_and_folds():
    # Remove keyframes at random positions, retire edges and fold, as tracking does. Every
    # keyframe that an edge refers to still finds its own dense maps.
    graph = make_graph(frame_memory=8)
    generator = torch.Generator().manual_seed(0)
    for frame in range(60):
        add_frame(graph, frame)
        if graph.n > 4 and bool(torch.rand(1, generator=generator) < 0.6):
            index = int(torch.randint(1, graph.n - 1, (1,), generator=generator))
            graph.remove_keyframe(index)
        graph.retire_edges(graph.frontend.removal_window)
        referenced = torch.unique(torch.cat([graph.ii, graph.jj]))
        expected = graph.frame_ids[referenced.numpy()].astype(float).tolist()
        slots = graph.fmap_slots(referenced)
        assert graph.fmaps[0][slots, 0, 0, 0].tolist() == expected
        assert graph.fmaps[1][slots, 0, 0, 0].tolist() == expected
        assert len(set(slots.tolist())) == len(expected)
    assert graph.num_folded > 0
    assert len(graph.dropped) > 20


def test_remove_keyframe_records_relative_pose():
    graph = make_graph()
    rotation = se3.exp(torch.tensor([0.1, -0.2, 0.3, 0.05, 0.1, -0.2]))
    for frame in range(3):
        pose = se3.compose(rotation, translation_pose(float(frame))) if frame == 1 else None
        add_frame(graph, frame, pose=pose)
    graph.remove_keyframe(1)
    dropped = graph.dropped[1]
    assert dropped.anchor_frame_id == 0
    assert dropped.timestamp_ns == 2000
    rebuilt = se3.compose(torch.from_numpy(dropped.relative_pose).float(), translation_pose(0.0))
    torch.testing.assert_close(rebuilt, se3.compose(rotation, translation_pose(1.0)), atol=1e-6, rtol=0)


def test_remove_first_keyframe_is_rejected():
    graph = make_graph()
    add_frame(graph, 0)
    add_frame(graph, 1)
    with pytest.raises(ValueError, match="keyframe index"):
        graph.remove_keyframe(0)


def test_retire_edges_drops_old_sources():
    graph = make_graph(removal_window=3, patch_lifetime=3)
    for frame in range(8):
        add_frame(graph, frame)
    graph.retire_edges(3)
    assert int(graph.ii.min()) == graph.n - 3
    assert_edges_consistent(graph)
    # Edges with recent sources survive untouched, including backward edges to older targets.
    assert int(graph.jj.min()) == graph.n - 5


# ---------------------------------------------------------------------------------------------
# Capacity: growth and folding


def test_store_grows_beyond_initial_capacity():
    graph = make_graph(removal_window=40, patch_lifetime=3, frame_memory=50)
    assert graph.capacity == 4
    for frame in range(30):
        add_frame(graph, frame)
    assert graph.n == 30
    assert graph.capacity >= 30
    assert graph.num_folded == 0
    assert_edges_consistent(graph)
    assert graph.active_poses[:, 0].tolist() == [float(f) for f in range(30)]


def test_old_keyframes_fold_out_and_memory_stays_bounded():
    graph = make_graph()
    capacities = []
    for frame in range(200):
        add_frame(graph, frame)
        graph.retire_edges(graph.frontend.removal_window)
        capacities.append(graph.capacity)
    assert graph.num_folded > 150
    assert max(capacities) <= 32
    assert_edges_consistent(graph)
    # The ring buffer contains the dense maps of the newest frame_memory keyframes.
    recent = torch.arange(graph.n - graph.frontend.frame_memory, graph.n)
    maps = graph.fmaps[0][graph.fmap_slots(recent), 0, 0, 0]
    assert maps.tolist() == graph.frame_ids[recent.numpy()].astype(float).tolist()

    frame_ids, stamps, poses = graph.trajectory()
    assert frame_ids.tolist() == list(range(200))
    assert stamps.tolist() == [1000 * (f + 1) for f in range(200)]
    np.testing.assert_allclose(poses[:, 0], np.arange(200.0))


def test_full_store_raises_with_fix():
    graph = make_graph(removal_window=5, patch_lifetime=3, max_keyframes=9)
    with pytest.raises(RuntimeError, match="max_keyframes"):
        for frame in range(20):
            add_frame(graph, frame)  # no retirement, so every keyframe stays referenced


def test_frame_memory_must_cover_edge_reach():
    with pytest.raises(ConfigError, match="frame_memory"):
        make_graph(removal_window=10, patch_lifetime=3, frame_memory=12)


# ---------------------------------------------------------------------------------------------
# Trajectory rebuilding (interpolation of non-keyframes)


def test_trajectory_rebuilds_chained_dropped_frames():
    graph = make_graph(removal_window=50, frame_memory=60)
    step = se3.exp(torch.tensor([0.2, 0.0, 0.1, 0.0, 0.05, 0.0]))
    truth = [se3.identity()]
    for _ in range(7):
        truth.append(se3.compose(step, truth[-1]))
    for frame in range(7):
        add_frame(graph, frame, pose=truth[frame])
    graph.remove_keyframe(3)  # anchored to frame 2
    graph.remove_keyframe(2)  # anchored to frame 1, so frame 3 resolves through frame 2
    graph.record_dropped(7, 8000, anchor_frame_id=6, relative_pose=se3.identity().numpy())

    frame_ids, stamps, poses = graph.trajectory()
    assert frame_ids.tolist() == list(range(8))
    assert stamps.tolist() == [1000 * (f + 1) for f in range(8)]
    expected = torch.stack(truth[:7] + [truth[6]]).double().numpy()
    np.testing.assert_allclose(poses, expected, atol=1e-6)


def test_removed_keyframe_follows_both_neighbours():
    """When the BA later moves a removed keyframe's two neighbours apart, its rebuilt pose lies
    between them by timestamp instead of staying fixed to the predecessor."""
    graph = make_graph(removal_window=50, frame_memory=60)
    for frame in range(4):
        add_frame(graph, frame)  # x = frame id at 1000 * (frame + 1) ns
    graph.remove_keyframe(1)  # anchored to frames 0 and 2
    graph.poses[1] = translation_pose(4.0)  # frame 2 moves from x = 2 to x = 4
    graph.poses[2] = translation_pose(5.0)

    frame_ids, _, poses_cw = graph.trajectory()
    assert frame_ids.tolist() == [0, 1, 2, 3]
    # From frame 0 the removed frame would sit at x = 1, from frame 2 at x = 3: halfway is 2.
    np.testing.assert_allclose(poses_cw[1, :3], [2.0, 0.0, 0.0], atol=1e-9)
    np.testing.assert_allclose(poses_cw[1, 3:], [0.0, 0.0, 0.0, 1.0], atol=1e-9)


def test_removed_keyframe_chain_via_successor():
    """A removed keyframe whose successor was removed later resolves through that successor."""
    graph = make_graph(removal_window=50, frame_memory=60)
    for frame in range(5):
        add_frame(graph, frame)
    graph.remove_keyframe(1)  # anchors 0 and 2
    graph.remove_keyframe(1)  # frame 2: anchors 0 and 3
    graph.poses[1] = translation_pose(6.0)  # frame 3 moves from x = 3 to x = 6

    frame_ids, _, poses_cw = graph.trajectory()
    assert frame_ids.tolist() == [0, 1, 2, 3, 4]
    # Frame 2: from 0 at x = 2, from 3 at x = 5, alpha = 2/3, so x = 4. Frame 1: from 0 at
    # x = 1, from frame 2 (x = 4) at x = 3, alpha = 1/2, so x = 2.
    np.testing.assert_allclose(poses_cw[:4, 0], [0.0, 2.0, 4.0, 6.0], atol=1e-9)


def test_removed_keyframes_with_removed_anchors_resolve():
    """A removed keyframe whose predecessor and successor were both removed later resolves
    through both, and a long chain of such frames needs no recursion."""
    graph = make_graph(removal_window=400, frame_memory=410)
    frames = 300
    for frame in range(frames):
        add_frame(graph, frame)
    graph.remove_keyframe(2)  # frame 2: anchors 1 and 3
    graph.remove_keyframe(1)  # frame 1: anchors 0 and 3, so frame 2 has both anchors removed
    while graph.n > 3:
        graph.remove_keyframe(1)  # frames 3, 4, ...: each anchored to 0 and the next frame

    frame_ids, _, poses_cw = graph.trajectory()
    assert frame_ids.tolist() == list(range(frames))
    np.testing.assert_allclose(poses_cw[:, 0], np.arange(frames, dtype=float), atol=1e-9)


def test_static_frames_are_interpolated_by_timestamp():
    graph = make_graph()
    add_frame(graph, 0)  # x = 0 at 1000 ns
    graph.record_dropped(1, 2500, anchor_frame_id=0)
    rotated = se3.compose(se3.exp(torch.tensor([0.0, 0.0, 0.0, 0.0, 0.4, 0.0])), translation_pose(2.0))
    graph.add_keyframe(rotated, torch.zeros(M, 3, P, P), timestamp_ns=4000, frame_id=2)
    graph.record_dropped(3, 5000, anchor_frame_id=2)  # no later frame: copies frame 2

    frame_ids, stamps, poses_cw = graph.trajectory()
    assert frame_ids.tolist() == [0, 1, 2, 3]
    assert stamps.tolist() == [1000, 2500, 4000, 5000]
    poses_wc = se3.invert(torch.from_numpy(poses_cw))
    end_wc = se3.invert(rotated.double())
    start_wc = se3.invert(translation_pose(0.0).double())
    expected = se3.interpolate(start_wc, end_wc, 0.5)
    torch.testing.assert_close(poses_wc[1], expected, atol=1e-6, rtol=0)
    np.testing.assert_allclose(poses_cw[3], poses_cw[2], atol=1e-12)


def test_trajectory_survives_folding_of_anchor():
    graph = make_graph()
    for frame in range(3):
        add_frame(graph, frame)
    graph.remove_keyframe(1)
    for frame in range(3, 60):
        add_frame(graph, frame)
        graph.retire_edges(graph.frontend.removal_window)
    assert graph.num_folded > 0
    frame_ids, _, poses = graph.trajectory()
    assert frame_ids.tolist() == list(range(60))
    np.testing.assert_allclose(poses[:, 0], np.arange(60.0), atol=1e-6)


# ---------------------------------------------------------------------------------------------
# Image preparation


def test_prepare_image_replicates_grey_and_crops():
    image = np.arange(50 * 70, dtype=np.int64).reshape(50, 70).astype(np.uint8)
    tensor, camera = prepare_image(image, [100.0, 90.0, 35.0, 25.0], max_width=0)
    assert tensor.shape == (3, 48, 64)
    assert tensor.dtype == torch.float32
    assert torch.equal(tensor[0], tensor[2])
    # Centre crop removes 1 row on top and 3 columns on the left.
    assert tensor[0, 0, 0].item() == float(image[1, 3])
    np.testing.assert_allclose(camera, [100.0, 90.0, 32.0, 24.0])


def test_prepare_image_grey_equals_replicated_colour():
    grey = np.random.default_rng(5).integers(0, 256, (480, 752), dtype=np.uint8)
    colour = np.repeat(grey[:, :, None], 3, axis=2)
    intrinsics = [458.0, 457.0, 367.0, 248.0]
    expected, expected_camera = prepare_image(colour, intrinsics, max_width=376)
    for image in (grey, grey[:, :, None]):
        tensor, camera = prepare_image(image, intrinsics, max_width=376)
        assert tensor.shape == (3, 240, 368)
        assert tensor.is_contiguous()
        assert torch.equal(tensor, expected)
        np.testing.assert_array_equal(camera, expected_camera)


def test_prepare_image_keeps_colour_channels():
    image = np.zeros((32, 48, 3), dtype=np.uint8)
    image[..., 0] = 10
    image[..., 1] = 20
    image[..., 2] = 30
    tensor, _ = prepare_image(image, [50.0, 50.0, 24.0, 16.0])
    assert tensor[:, 5, 5].tolist() == [10.0, 20.0, 30.0]


def test_prepare_image_downscales_wide_frames():
    image = np.full((480, 752), 128, dtype=np.uint8)
    tensor, camera = prepare_image(image, [458.0, 457.0, 367.0, 248.0], max_width=376)
    assert tensor.shape == (3, 240, 368)
    scale = 0.5
    expected = [458.0 * scale, 457.0 * scale, (367.5 * scale - 0.5) - 4, 248.5 * scale - 0.5]
    np.testing.assert_allclose(camera, expected)
    assert torch.all(tensor == 128.0)


def test_prepare_image_projection_follows_crop():
    """A bright dot at the projection of a 3-D point stays at the new projection after prepare."""
    intrinsics = np.array([300.0, 300.0, 330.0, 245.0])
    point = np.array([0.4, -0.2, 2.0])
    x = intrinsics[0] * point[0] / point[2] + intrinsics[2]
    y = intrinsics[1] * point[1] / point[2] + intrinsics[3]
    image = np.zeros((490, 660), dtype=np.uint8)
    image[int(round(y)) - 4 : int(round(y)) + 5, int(round(x)) - 4 : int(round(x)) + 5] = 255
    tensor, camera = prepare_image(image, intrinsics, max_width=330)
    u = camera[0] * point[0] / point[2] + camera[2]
    v = camera[1] * point[1] / point[2] + camera[3]
    ys, xs = np.nonzero(tensor[0].numpy() > 100)
    assert abs(xs.mean() - u) < 0.6
    assert abs(ys.mean() - v) < 0.6


@pytest.mark.parametrize(
    "image, message",
    [
        (np.zeros((64, 64), dtype=np.float32), "uint8"),
        (np.zeros((64, 64, 4), dtype=np.uint8), "channels"),
        (np.zeros((2, 64, 64, 3), dtype=np.uint8), "shape"),
        (np.zeros((20, 64), dtype=np.uint8), "too small"),
    ],
)
def test_prepare_image_rejects_bad_input(image, message):
    with pytest.raises(ValueError, match=message):
        prepare_image(image, [50.0, 50.0, 32.0, 32.0])


def test_prepare_image_rejects_bad_intrinsics():
    image = np.zeros((64, 64), dtype=np.uint8)
    with pytest.raises(ValueError, match="intrinsics"):
        prepare_image(image, [50.0, 50.0, 32.0])
    with pytest.raises(ValueError, match="focal"):
        prepare_image(image, [0.0, 50.0, 32.0, 32.0])


# ---------------------------------------------------------------------------------------------
# Motion model and keyframe flow


def test_constant_motion_model_copies_last_pose():
    previous = torch.stack([translation_pose(0.0), translation_pose(1.0)])
    predicted = predict_pose(previous, [0, 100, 200], "constant", 0.5)
    torch.testing.assert_close(predicted, translation_pose(1.0))


@pytest.mark.parametrize("gap_ns, expected_x", [(100, 1.5), (200, 2.0), (50, 1.25)])
def test_damped_linear_scales_with_time_gap(gap_ns, expected_x):
    previous = torch.stack([translation_pose(0.0), translation_pose(1.0)])
    predicted = predict_pose(previous, [0, 100, 100 + gap_ns], "damped_linear", 0.5)
    torch.testing.assert_close(predicted, translation_pose(expected_x), atol=1e-6, rtol=0)


def test_damped_linear_extrapolates_rotation():
    step = torch.tensor([0.1, 0.0, -0.2, 0.05, -0.1, 0.2], dtype=torch.float64)
    older = se3.exp(torch.tensor([0.3, 0.1, 0.0, 0.0, 0.2, 0.0], dtype=torch.float64))
    newer = se3.compose(se3.exp(step), older)
    predicted = predict_pose(torch.stack([older, newer]), [0, 10, 20], "damped_linear", 0.5)
    expected = se3.compose(se3.exp(0.5 * step), newer)
    torch.testing.assert_close(predicted, expected, atol=1e-9, rtol=0)


def test_damped_linear_caps_long_gaps_and_ignores_zero_gap():
    previous = torch.stack([translation_pose(0.0), translation_pose(1.0)])
    capped = predict_pose(previous, [0, 100, 100 + 100_000], "damped_linear", 0.5)
    assert capped[0].item() == pytest.approx(1.0 + 0.5 * MAX_TIMESTAMP_RATIO)
    same_time = predict_pose(previous, [100, 100, 200], "damped_linear", 0.5)
    assert same_time[0].item() == pytest.approx(1.5)


def test_unknown_motion_model_is_rejected():
    previous = torch.stack([translation_pose(0.0), translation_pose(1.0)])
    with pytest.raises(ValueError, match="motion model"):
        predict_pose(previous, [0, 1, 2], "spline", 0.5)


def test_mean_patch_flow_of_translation():
    intrinsics = torch.tensor([50.0, 50.0, 20.0, 15.0])
    patches = torch.zeros(2, 3, P, P)
    patches[:, 0] = torch.tensor([10.0, 30.0])[:, None, None]
    patches[:, 1] = 15.0
    patches[:, 2] = torch.tensor([0.5, 0.25])[:, None, None]
    source = se3.identity()
    target = translation_pose(-0.2)  # T_cam_world: the camera moves +0.2 along x
    # Flow of a fronto-parallel point is fx * |tx| * inverse depth, for full and translation-only.
    expected = 50.0 * 0.2 * (0.5 + 0.25) / 2
    assert mean_patch_flow(source, target, patches, intrinsics) == pytest.approx(expected, rel=1e-5)
    assert mean_patch_flow(source, source, patches, intrinsics) == pytest.approx(0.0, abs=1e-6)


def test_mean_patch_flow_discounts_rotation():
    intrinsics = torch.tensor([50.0, 50.0, 20.0, 15.0])
    patches = torch.zeros(1, 3, P, P)
    patches[:, 0], patches[:, 1], patches[:, 2] = 20.0, 15.0, 0.5
    yaw = se3.exp(torch.tensor([0.0, 0.0, 0.0, 0.0, 0.1, 0.0]))
    full_flow = 50.0 * math.tan(0.1)
    flow = mean_patch_flow(se3.identity(), yaw, patches, intrinsics, beta=0.5)
    assert flow == pytest.approx(0.5 * full_flow, rel=1e-4)


def test_mean_patch_flows_match_single_directions():
    """One reprojection for several directions gives each direction's own flow, also with
    different patch counts per direction."""
    intrinsics = torch.tensor([50.0, 50.0, 20.0, 15.0])
    generator = torch.Generator().manual_seed(5)
    first = torch.rand(4, 3, P, P, generator=generator) * 30.0
    second = torch.rand(6, 3, P, P, generator=generator) * 30.0
    first[:, 2], second[:, 2] = 0.4, 0.7
    near = translation_pose(-0.2)
    turned = se3.compose(se3.exp(torch.tensor([0.0, 0.1, 0.0, 0.05, 0.0, 0.02])), near)
    directions = [(near, turned, first), (turned, near, second)]
    flows = mean_patch_flows(directions, intrinsics)
    singles = [mean_patch_flow(source, target, patches, intrinsics)
               for source, target, patches in directions]
    assert len(flows) == 2
    assert flows[0] == pytest.approx(singles[0], rel=1e-6)
    assert flows[1] == pytest.approx(singles[1], rel=1e-6)
    assert flows[0] > 0.5


# ---------------------------------------------------------------------------------------------
# Initial window


WINDOW_INTRINSICS = torch.tensor([60.0, 60.0, 40.0, 30.0], dtype=torch.float64)
WINDOW_SIZE = (60, 80)
"""(height, width) of the 1/4-resolution image of the window tests."""
TRUST_REGION = BAConfig(trust_region=True)


@pytest.fixture
def single_thread():
    """Small tensors run faster on one thread, and the suite shares two cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@dataclass
class Window:
    poses_cw: torch.Tensor  # (N, 7) true poses
    patches: torch.Tensor  # (M, 3, P, P) true patches
    ii: torch.Tensor
    jj: torch.Tensor
    kk: torch.Tensor
    target: torch.Tensor  # (E, 2) exact projections
    weight: torch.Tensor  # (E, 2) 1 where the projection is in view


def _look_at(position: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``T_world_cam`` of a camera at ``position`` looking at ``target`` (world z up)."""
    forward = (target - position) / (target - position).norm()
    right = torch.linalg.cross(torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64), forward)
    right = right / right.norm()
    down = torch.linalg.cross(forward, right)
    rotation = torch.stack([right, down, forward], dim=1)
    return torch.cat([position, se3.matrix_to_quaternion(rotation)])


def _window(orbit: bool, frames: int = 8, per_frame: int = 48, seed: int = 0) -> Window:
    """Build eight frames that orbit a point 4 units away while looking at it (``orbit``) or
    turn on the spot by the same angles.

    Patches lie at depths 2.5 to 6.5, and every patch has an edge to every frame, with weight 1
    where it projects into the image."""
    generator = torch.Generator().manual_seed(seed)
    radius, step = 4.0, math.radians(4.0)
    poses_wc = []
    for frame in range(frames):
        angle = step * frame
        if orbit:
            position = torch.tensor([radius * math.cos(angle), radius * math.sin(angle), 0.3])
            target = torch.tensor([0.0, 0.0, 0.3])
        else:
            position = torch.tensor([radius, 0.0, 0.3])
            target = position - radius * torch.tensor([math.cos(angle), math.sin(angle), 0.0])
        poses_wc.append(_look_at(position.double(), target.double()))
    poses_cw = se3.invert(torch.stack(poses_wc))

    count = frames * per_frame
    height, width = WINDOW_SIZE
    border = 4.0
    size = torch.tensor([width - 2 * border, height - 2 * border], dtype=torch.float64)
    centres = torch.rand(count, 2, generator=generator, dtype=torch.float64) * size + border
    inverse_depth = 1.0 / (2.5 + 4.0 * torch.rand(count, generator=generator, dtype=torch.float64))
    offsets = torch.arange(P, dtype=torch.float64) - P // 2
    u = centres[:, 0, None, None] + offsets[None, None, :].expand(count, P, P)
    v = centres[:, 1, None, None] + offsets[None, :, None].expand(count, P, P)
    patches = torch.stack([u, v, inverse_depth[:, None, None].expand(count, P, P)], dim=1)

    source = torch.arange(frames).repeat_interleave(per_frame)
    ii = source.repeat_interleave(frames)
    jj = torch.arange(frames).repeat(count)
    kk = torch.arange(count).repeat_interleave(frames)
    projected = reproject(poses_cw, patches, WINDOW_INTRINSICS, ii, jj, kk)
    target = projected.coords[:, :, P // 2, P // 2]
    inside = (
        (target[:, 0] > 0) & (target[:, 0] < width) & (target[:, 1] > 0) & (target[:, 1] < height)
    )
    visible = inside & projected.valid[:, P // 2, P // 2]
    weight = visible.double()[:, None].expand(-1, 2).clone()
    return Window(poses_cw, patches, ii, jj, kk, target, weight)


def _max_rotation_error_deg(estimate: torch.Tensor, truth: torch.Tensor) -> float:
    relative = se3.compose(estimate, se3.invert(truth))
    angle = 2 * torch.atan2(relative[:, 3:6].norm(dim=-1), relative[:, 6].abs())
    return float(angle.max()) * 180.0 / math.pi


def _depth_correlation(patches: torch.Tensor, truth: torch.Tensor) -> float:
    centre = P // 2
    pair = torch.stack([patches[:, 2, centre, centre], truth[:, 2, centre, centre]])
    return float(torch.corrcoef(pair)[0, 1])


def _start_at_anchor(window: Window) -> tuple[torch.Tensor, torch.Tensor]:
    """Every pose at the first frame's, every inverse depth 1: the frontend's start."""
    poses = window.poses_cw[:1].repeat(len(window.poses_cw), 1)
    patches = window.patches.clone()
    patches[:, 2] = 1.0
    return poses, patches


def _initialize(window: Window, poses: torch.Tensor, patches: torch.Tensor):
    times = torch.arange(len(poses), dtype=torch.float64) * 0.05
    return initialize_window(
        poses, patches, WINDOW_INTRINSICS, window.target, window.weight, window.ii, window.jj,
        window.kk, times=times, config=TRUST_REGION, image_size=WINDOW_SIZE,
    )


@pytest.mark.parametrize("orbit", [True, False], ids=["orbit", "rotation"])
def test_initial_window_recovers_poses(orbit, single_thread):
    window = _window(orbit)
    poses, patches = _start_at_anchor(window)
    result = _initialize(window, poses, patches)
    assert result.start == ("two_view" if orbit else "rotation")
    assert result.cost < 1e-12
    assert _max_rotation_error_deg(result.poses_cw, window.poses_cw) < 1e-4
    torch.testing.assert_close(result.poses_cw[0], window.poses_cw[0], atol=0, rtol=0)
    if orbit:  # without translation the depths are unobservable
        assert _depth_correlation(result.patches, window.patches) > 0.999


def test_relative_pose_from_essential_matrix(single_thread):
    window = _window(orbit=True)
    last = len(window.poses_cw) - 1
    select = (window.ii == 0) & (window.jj == last) & (window.weight[:, 0] > 0)
    centre = P // 2
    pixels = window.patches[window.kk[select], :2, centre, centre]
    fx, fy, cx, cy = WINDOW_INTRINSICS
    rays_source = torch.stack(
        [(pixels[:, 0] - cx) / fx, (pixels[:, 1] - cy) / fy, torch.ones(len(pixels))], dim=-1
    )
    target = window.target[select]
    rays_target = torch.stack(
        [(target[:, 0] - cx) / fx, (target[:, 1] - cy) / fy, torch.ones(len(target))], dim=-1
    )
    rotation, translation, inverse_depth = _relative_pose(rays_source, rays_target)

    truth = se3.compose(window.poses_cw[last], se3.invert(window.poses_cw[0]))
    torch.testing.assert_close(rotation, se3.quaternion_to_matrix(truth[3:]), atol=1e-9, rtol=0)
    torch.testing.assert_close(translation, truth[:3] / truth[:3].norm(), atol=1e-9, rtol=0)
    assert inverse_depth is not None
    true_inverse_depth = window.patches[window.kk[select], 2, centre, centre]
    torch.testing.assert_close(
        inverse_depth, true_inverse_depth * truth[:3].norm(), atol=1e-9, rtol=1e-7
    )


def test_depth_reversal_check_restores_mirrored_scene(single_thread):
    window = _window(orbit=True)
    args = (WINDOW_INTRINSICS, window.target, window.weight, window.ii, window.jj, window.kk)
    # Mirror the true depths, fit the poses to them and refine: a local minimum with the near
    # patches far, the far ones near and tens of degrees of rotation error.
    mirrored = _mirror_depths(window.patches, window.kk, TRUST_REGION.min_inverse_depth)
    all_fixed = torch.ones(len(mirrored), dtype=torch.bool)
    poses = window.poses_cw[:1].repeat(len(window.poses_cw), 1)
    config = replace(TRUST_REGION, iterations=12)
    fitted = bundle_adjust(
        poses, mirrored, *args, first_free_pose=1, config=config, image_size=WINDOW_SIZE,
        fixed_patches=all_fixed,
    )
    trapped = bundle_adjust(
        fitted.poses_cw, fitted.patches, *args, first_free_pose=1, config=config,
        image_size=WINDOW_SIZE,
    )
    assert _depth_correlation(trapped.patches, window.patches) < -0.5
    assert _max_rotation_error_deg(trapped.poses_cw, window.poses_cw) > 10.0

    check = resolve_depth_reversal(
        trapped.poses_cw, trapped.patches, *args, config=TRUST_REGION, image_size=WINDOW_SIZE
    )
    assert check.reversed
    assert check.mirrored_cost < 1e-6 * check.current_cost
    assert _max_rotation_error_deg(check.poses_cw, window.poses_cw) < 1e-4
    assert _depth_correlation(check.patches, window.patches) > 0.999


def test_depth_reversal_check_keeps_true_solution(single_thread):
    window = _window(orbit=True)
    check = resolve_depth_reversal(
        window.poses_cw, window.patches, WINDOW_INTRINSICS, window.target, window.weight,
        window.ii, window.jj, window.kk, config=TRUST_REGION, image_size=WINDOW_SIZE,
    )
    assert not check.reversed
    assert _max_rotation_error_deg(check.poses_cw, window.poses_cw) < 1e-6


def test_initial_depth_choice_is_validated():
    config = EngineConfig()
    assert config.frontend.initial_depth == "constant"
    config.frontend.initial_depth = "median"
    with pytest.raises(ConfigError, match="initial_depth"):
        config.validate()


def test_negative_threshold_reference_width_is_rejected():
    config = EngineConfig()
    config.frontend.threshold_reference_width = -1.0
    with pytest.raises(ConfigError, match="threshold_reference_width"):
        config.validate()


def test_initial_window_offers_the_mirrored_alternative(single_thread):
    window = _window(orbit=True)
    poses, patches = _start_at_anchor(window)
    result = _initialize(window, poses, patches)
    assert not result.reversed
    assert _depth_correlation(result.patches, window.patches) > 0.999
    assert _depth_correlation(result.alternative_patches, window.patches) < -0.5
    assert result.alternative_cost > 1e6 * result.cost
    assert result.alternative_poses_cw.shape == result.poses_cw.shape
