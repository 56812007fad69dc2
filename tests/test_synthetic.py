"""Tests of the synthetic-sequence generator: determinism, ground-truth consistency, demo folder."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from vo_node.demo_data import DEMO_SEED, PARAMETERS_FILE, demo_clip, render_demo_sequence
from vo_node.io.trajectory import read_tum
from vo_node.synthetic import (
    MOTION_FAMILIES,
    SyntheticClip,
    generate_clip,
    mean_flow,
    mean_flow_matrix,
)
from vo_node.synthetic.scene import build_scene, sample_layout, with_low_texture
from vo_node.synthetic.textures import LOW_TEXTURE_GRAIN_RANGE, detail_score, texture_bank
from vo_node.synthetic.motion import (
    look_rotations,
    matrix_to_quaternion,
    pose_to_matrix,
    quaternion_to_matrix,
)

HEIGHT, WIDTH = 96, 128
WARP_CASES = [
    (11, "forward", "room"),
    (12, "lateral", "room"),
    (13, "rotation", "room"),
    (14, "shake", "room"),
    (15, "orbit", "room"),
    (16, "forward", "outdoor"),
]


def _small_clip(seed: int, **options) -> SyntheticClip:
    return generate_clip(seed, 4, height=HEIGHT, width=WIDTH, **options)


def _warp(clip, source: int, target: int, identity: bool = False):
    """Sample image ``target`` at the reprojection of every pixel of image ``source``.

    Written independently of the generator's own flow code: 4x4 matrices and cv2.remap.
    Returns the warped image (float32), and a mask of pixels that land inside the target image,
    in front of it and unoccluded (target depth agrees with the reprojected depth within 2 %).
    """
    fx, fy, cx, cy = clip.intrinsics
    height, width = clip.depths.shape[1:]
    v, u = np.mgrid[0:height, 0:width].astype(np.float64)
    z = clip.depths[source].astype(np.float64)
    points = np.stack([(u - cx) / fx * z, (v - cy) / fy * z, z, np.ones_like(z)], axis=-1)
    world_source = pose_to_matrix(clip.poses_wc[source])
    world_target = pose_to_matrix(clip.poses_wc[target])
    transform = np.eye(4) if identity else np.linalg.inv(world_target) @ world_source
    moved = points @ transform.T
    depth_target = moved[..., 2]
    u_target = fx * moved[..., 0] / depth_target + cx
    v_target = fy * moved[..., 1] / depth_target + cy
    map_x, map_y = u_target.astype(np.float32), v_target.astype(np.float32)
    warped = cv2.remap(clip.images[target].astype(np.float32), map_x, map_y, cv2.INTER_LINEAR)
    sampled_depth = cv2.remap(clip.depths[target], map_x, map_y, cv2.INTER_NEAREST)
    inside = (u_target >= 1) & (u_target <= width - 2) & (v_target >= 1) & (v_target <= height - 2)
    visible = inside & (depth_target > 0.05)
    visible &= np.abs(sampled_depth - depth_target) < 0.02 * depth_target
    return warped, visible


def _photometric_error(clip, source: int, target: int, identity: bool = False):
    """Mean absolute RGB difference over visible pixels, and the visible share of pixels."""
    warped, visible = _warp(clip, source, target, identity)
    residual = np.abs(warped - clip.images[source].astype(np.float32)).mean(axis=-1)
    return float(residual[visible].mean()), float(visible.mean())


def test_same_seed_gives_identical_clip():
    first = _small_clip(3)
    second = _small_clip(3)
    for name in ("images", "depths", "poses_wc", "intrinsics", "timestamps_ns"):
        assert np.array_equal(getattr(first, name), getattr(second, name)), name
    assert first.metadata == second.metadata


def test_different_seeds_differ():
    first = _small_clip(3)
    second = _small_clip(4)
    assert not np.array_equal(first.images, second.images)
    assert not np.array_equal(first.poses_wc, second.poses_wc)
    assert not np.array_equal(first.intrinsics, second.intrinsics)


def test_clip_shapes_and_dtypes():
    clip = generate_clip(5, 6, height=HEIGHT, width=WIDTH, frame_step_range=(2, 2))
    assert clip.images.shape == (6, HEIGHT, WIDTH, 3)
    assert clip.images.dtype == np.uint8
    assert clip.depths.shape == (6, HEIGHT, WIDTH)
    assert clip.depths.dtype == np.float32
    assert clip.poses_wc.shape == (6, 7)
    assert clip.poses_wc.dtype == np.float64
    assert clip.intrinsics.shape == (4,)
    assert clip.timestamps_ns.dtype == np.int64
    assert clip.metadata["frame_step"] == 2
    assert clip.metadata["seed"] == 5
    periods = np.diff(clip.timestamps_ns)
    assert np.all(np.abs(periods - 100_000_000) < 5_000_000)


@pytest.mark.parametrize("seed", range(8))
def test_ground_truth_is_valid(seed):
    clip = _small_clip(seed)
    assert np.all(np.isfinite(clip.depths))
    assert clip.depths.min() > 0.0
    norms = np.linalg.norm(clip.poses_wc[:, 3:], axis=1)
    np.testing.assert_allclose(norms, 1.0, atol=1e-12)
    fx = clip.intrinsics[0]
    assert 0.6 * WIDTH <= fx <= 1.2 * WIDTH
    assert abs(clip.intrinsics[2] - (WIDTH - 1) / 2) <= 0.03 * WIDTH + 1e-9
    assert np.all(np.diff(clip.timestamps_ns) > 0)


def test_camera_stays_inside_scene():
    for seed in range(6):
        clip = _small_clip(seed)
        # Depth of at least 0.3 scene units everywhere means no surface touches the camera.
        assert clip.depths.min() > 0.3, (seed, clip.metadata)


@pytest.mark.parametrize("seed,motion,scene", WARP_CASES)
def test_warp_with_ground_truth_matches(seed, motion, scene):
    clip = generate_clip(seed, 3, height=120, width=160, motion=motion, scene=scene,
                         photometric=False)
    error, coverage = _photometric_error(clip, 0, 2)
    identity_error, _ = _photometric_error(clip, 0, 2, identity=True)
    assert coverage > 0.3, coverage
    assert error < 8.0, error
    assert error < 0.35 * identity_error, (error, identity_error)


def test_warp_error_grows_with_wrong_pose():
    clip = generate_clip(21, 3, height=120, width=160, motion="lateral", scene="room",
                         photometric=False)
    correct, _ = _photometric_error(clip, 0, 2)
    perturbed = clip.poses_wc.copy()
    perturbed[2, :3] += 0.05 * np.linalg.norm(clip.poses_wc[2, :3] - clip.poses_wc[0, :3]) + 0.02
    clip.poses_wc = perturbed
    wrong, _ = _photometric_error(clip, 0, 2)
    assert wrong > 1.5 * correct, (correct, wrong)


def test_mean_flow_matches_warp_flow():
    clip = generate_clip(31, 4, height=120, width=160, motion="forward", scene="room")
    fx, fy, cx, cy = clip.intrinsics
    v, u = np.mgrid[0:120, 0:160].astype(np.float64)
    z = clip.depths[0].astype(np.float64)
    points = np.stack([(u - cx) / fx * z, (v - cy) / fy * z, z, np.ones_like(z)], axis=-1)
    transform = np.linalg.inv(pose_to_matrix(clip.poses_wc[3])) @ pose_to_matrix(clip.poses_wc[0])
    moved = points @ transform.T
    flow_u = fx * moved[..., 0] / moved[..., 2] + cx - u
    flow_v = fy * moved[..., 1] / moved[..., 2] + cy - v
    expected = float(np.hypot(flow_u, flow_v).mean())
    assert expected > 1.0
    assert mean_flow(clip, 0, 3, stride=1) == pytest.approx(expected, rel=1e-6)
    assert mean_flow(clip, 0, 3) == pytest.approx(expected, rel=0.05)
    matrix = mean_flow_matrix(clip, stride=4)
    assert matrix.shape == (4, 4)
    assert np.all(np.diag(matrix) == 0.0)
    assert matrix[0, 3] == pytest.approx(mean_flow(clip, 0, 3, stride=4), rel=1e-9)


def test_motion_families_all_render():
    for index, motion in enumerate(MOTION_FAMILIES):
        clip = generate_clip(40 + index, 2, height=48, width=64, motion=motion)
        assert clip.metadata["motion"] == motion
        assert np.all(np.isfinite(clip.depths))


def test_quaternion_round_trip():
    rng = np.random.default_rng(0)
    quaternions = rng.standard_normal((50, 4))
    quaternions /= np.linalg.norm(quaternions, axis=1, keepdims=True)
    quaternions *= np.sign(quaternions[:, 3:])
    matrices = quaternion_to_matrix(quaternions)
    products = matrices @ np.swapaxes(matrices, 1, 2)
    np.testing.assert_allclose(products, np.tile(np.eye(3), (50, 1, 1)), atol=1e-12)
    np.testing.assert_allclose(np.linalg.det(matrices), 1.0, atol=1e-12)
    np.testing.assert_allclose(matrix_to_quaternion(matrices), quaternions, atol=1e-12)


def test_look_rotation_axes():
    rotation = look_rotations(np.array([0.0]), np.array([0.0]), np.array([0.0]))[0]
    # Looking along world +x with z up: camera x (right) is world -y, camera y (down) is -z.
    np.testing.assert_allclose(rotation[:, 2], [1.0, 0.0, 0.0], atol=1e-12)
    np.testing.assert_allclose(rotation[:, 0], [0.0, -1.0, 0.0], atol=1e-12)
    np.testing.assert_allclose(rotation[:, 1], [0.0, 0.0, -1.0], atol=1e-12)
    assert np.linalg.det(rotation) == pytest.approx(1.0)


def test_invalid_arguments_raise():
    with pytest.raises(ValueError, match="motion"):
        generate_clip(0, 2, motion="spin")
    with pytest.raises(ValueError, match="scene"):
        generate_clip(0, 2, scene="cave")
    with pytest.raises(ValueError, match="frame_step_range"):
        generate_clip(0, 2, frame_step_range=(3, 1))
    with pytest.raises(ValueError, match="num_frames"):
        generate_clip(0, 0)


def test_demo_folder_contents(tmp_path):
    folder = render_demo_sequence(tmp_path / "demo", num_frames=6, height=60, width=80)
    images = sorted(folder.glob("*.png"))
    assert [path.name for path in images] == [f"{index:06d}.png" for index in range(6)]
    first = cv2.imread(str(images[0]))
    assert first.shape == (60, 80, 3)
    times = (folder / "times.txt").read_text().split()
    assert len(times) == 6
    assert float(times[1]) - float(times[0]) == pytest.approx(0.05, abs=1e-9)
    assert all(len(value.split(".")[1]) == 9 for value in times)
    trajectory = read_tum(folder / "groundtruth.tum")
    assert len(trajectory) == 6
    np.testing.assert_allclose(np.linalg.norm(trajectory.poses[:, 3:], axis=1), 1.0, atol=1e-6)

    camera = (folder / "camera.yaml").read_text()
    import yaml

    calibration = yaml.safe_load(camera)
    assert calibration["image_width"] == 80
    assert calibration["image_height"] == 60
    assert calibration["distortion_model"] == "plumb_bob"
    assert calibration["camera_matrix"]["rows"] == 3
    assert len(calibration["camera_matrix"]["data"]) == 9
    assert calibration["distortion_coefficients"]["data"] == [0.0] * 5
    assert len(calibration["projection_matrix"]["data"]) == 12
    parameters = json.loads((folder / PARAMETERS_FILE).read_text())
    assert parameters["seed"] == DEMO_SEED
    assert parameters["num_frames"] == 6


def test_demo_folder_is_reused(tmp_path):
    folder = render_demo_sequence(tmp_path / "demo", num_frames=3, height=48, width=64)
    stamp = (folder / "000000.png").stat().st_mtime_ns
    again = render_demo_sequence(tmp_path / "demo", num_frames=3, height=48, width=64)
    assert again == folder
    assert (folder / "000000.png").stat().st_mtime_ns == stamp
    changed = render_demo_sequence(tmp_path / "demo", num_frames=4, height=48, width=64)
    assert len(sorted(changed.glob("*.png"))) == 4
    assert not list(tmp_path.glob(".demo*"))


def test_demo_refuses_foreign_folder(tmp_path):
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="mine"):
        render_demo_sequence(folder, num_frames=2, height=48, width=64)
    assert (folder / "notes.txt").read_text() == "keep me"


def test_demo_flow_is_moderate():
    clip = demo_clip(num_frames=120, height=60, width=80)
    flows = np.array([mean_flow(clip, index, index + 1) for index in range(119)]) * 4.0
    # Flow at the full 320-pixel width, in pixels per frame.
    assert 8.0 < np.median(flows) < 20.0, np.percentile(flows, [0, 50, 100])
    assert flows.max() < 40.0, flows.max()
    assert flows.min() > 2.0, flows.min()


@pytest.mark.parametrize("motion", [(1e5, 0.0), (np.nan, 1.0), (np.inf, 0.0)])
def test_blur_bounded_for_extreme_motion(motion):
    from vo_node.synthetic.render import MAX_BLUR_LENGTH_PX, CameraEffects, apply_camera_effects

    radiance = np.full((48, 64, 3), 100.0, np.float32)
    radiance[:, 32:] = 200.0
    effects = CameraEffects(np.ones(2), 0.0, 0.5)
    image = apply_camera_effects(radiance, 1, effects, np.array(motion), np.random.default_rng(0))
    assert image.shape == (48, 64, 3)
    assert image.dtype == np.uint8
    # The step edge at column 32 stays sharp outside the longest allowed streak.
    half = int(MAX_BLUR_LENGTH_PX) // 2 + 1
    assert np.all(image[:, : 32 - half] == 100)
    assert np.all(image[:, 32 + half :] == 200)


# ----------------------------------------------------------------------------------------------
# Low-texture surfaces


def test_low_texture_bank_keeps_standard_tiles():
    standard = texture_bank()
    extended = texture_bank(low_texture=True)
    assert standard.low_texture_ids.size == 0
    assert extended.standard_count == standard.size
    assert np.array_equal(extended.tiles[: standard.size], standard.tiles)
    assert np.array_equal(extended.overlay, standard.overlay)
    assert extended.low_texture_ids.tolist() == list(range(standard.size, extended.size))


def test_low_texture_tiles_are_flat_with_thin_joints():
    bank = texture_bank(low_texture=True)
    standard_scores = [detail_score(tile) for tile in bank.tiles[: bank.standard_count]]
    for index in bank.low_texture_ids:
        tile = bank.tiles[index].astype(np.float64).mean(axis=2)
        name = bank.names[index]
        # Away from the joints the surface is nearly uniform: its median deviation stays
        # within the grain amplitude.
        grain_bound = LOW_TEXTURE_GRAIN_RANGE[1] * np.median(tile)
        assert np.median(np.abs(tile - np.median(tile))) < grain_bound, name
        assert detail_score(bank.tiles[index]) < min(standard_scores), name
        darkest_line = min(tile.mean(axis=0).min(), tile.mean(axis=1).min())
        if name.endswith("panel"):
            assert darkest_line < np.median(tile) - 10.0, name
        else:
            assert darkest_line > np.median(tile) - 5.0, name


def test_low_texture_share_changes_materials_not_geometry():
    plain = _small_clip(21)
    assert plain.metadata["low_texture"] == 0.0
    lowered = _small_clip(21, low_texture=1.0)
    assert np.array_equal(lowered.depths, plain.depths)
    assert np.array_equal(lowered.poses_wc, plain.poses_wc)
    # Less image gradient: the mean absolute horizontal difference drops.
    def gradient(clip):
        return np.abs(np.diff(clip.images.astype(np.float64), axis=2)).mean()
    assert gradient(lowered) < 0.7 * gradient(plain)
    # The same seed and share give the same clip.
    assert np.array_equal(_small_clip(21, low_texture=1.0).images, lowered.images)


def test_low_texture_share_sets_face_fraction():
    rng = np.random.default_rng(0)
    clip_bank = texture_bank(low_texture=True)
    layout = sample_layout("room", rng)
    scene = build_scene(layout, rng, np.zeros((1, 3)), clip_bank.standard_count)
    shares = []
    for seed in range(20):
        lowered = with_low_texture(
            scene, clip_bank.low_texture_ids, 0.4, np.random.default_rng(seed)
        )
        chosen = np.isin(lowered.faces.texture_ids, clip_bank.low_texture_ids)
        assert np.all(lowered.faces.overlay_strengths[~chosen] == scene.faces.overlay_strengths[~chosen])
        assert np.all(lowered.faces.overlay_strengths[chosen] < scene.faces.overlay_strengths[chosen])
        shares.append(chosen.mean())
    assert abs(np.mean(shares) - 0.4) < 0.05


@pytest.mark.parametrize("share", [-0.1, 1.5, float("nan")])
def test_low_texture_share_out_of_range_is_named(share):
    with pytest.raises(ValueError, match="low_texture must lie in"):
        _small_clip(1, low_texture=share)


@pytest.mark.parametrize("share", ["0.5", None, True])
def test_low_texture_share_not_a_number_is_named(share):
    with pytest.raises(TypeError, match="low_texture must be a number in"):
        _small_clip(1, low_texture=share)
