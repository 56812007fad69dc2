"""Sequence readers, calibration loading and undistortion on the real samples and synthetic data.

Tests that use the real samples skip when the data folder (``../shared/data`` from the repository
root, or ``$VO_NODE_DATA``) is absent. Synthetic data is written to ``tmp_path``.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import cv2
import numpy as np
import pytest
from rosbags.rosbag2 import StoragePlugin, Writer
from rosbags.typesys import Stores, get_typestore

from vo_node.io import PinholeCamera, SequenceError, Undistorter, load_camera, open_sequence
from vo_node.io.bag import BagSequence
from vo_node.io.readers import (
    EurocSequence,
    ImageFolderSequence,
    KittiSequence,
    TartanAirSequence,
    TumSequence,
    VideoSequence,
)
from vo_node.io.readers.euroc import read_euroc_ground_truth
from vo_node.io.readers.poses import interpolate_poses, matrices_to_poses, poses_to_matrices
from vo_node.io.readers.tartanair import read_tartanair_poses
from vo_node.io.readers.tum import FREIBURG_CAMERAS

DATA = Path(os.environ.get("VO_NODE_DATA", Path(__file__).resolve().parents[1].parent / "shared" / "data"))
EUROC = DATA / "euroc_MH_05_difficult"
KITTI = DATA / "kitti_odometry_07" / "sequences" / "07"
TARTANAIR = DATA / "tartanair_hospital"
BAG = DATA / "ros2_bags" / "euroc_MH_05_cam0_derived"
EXAMPLES = DATA / "camera_info_examples"

EUROC_K = (458.654, 457.296, 367.215, 248.375)
EUROC_DISTORTION = (-0.28340811, 0.07395907, 0.00019359, 1.76187114e-05)
EUROC_FIRST_NS = 1403638538577829376
EUROC_LAST_NS = 1403638553527829504
BAG_FIRST_NS = 1403638543577829376
BAG_LAST_NS = 1403638545127829504
KITTI_P0 = (707.0912, 707.0912, 601.8873, 183.1104)


def needs(path: Path) -> pytest.MarkDecorator:
    return pytest.mark.skipif(not path.exists(), reason=f"sample data {path} is absent (set VO_NODE_DATA)")


def write_camera_yaml(path: Path, width: int, height: int, k: tuple[float, ...], model: str = "plumb_bob",
                      d: tuple[float, ...] = (0.0, 0.0, 0.0, 0.0, 0.0)) -> Path:
    fx, fy, cx, cy = k
    path.write_text(
        f"image_width: {width}\nimage_height: {height}\ncamera_name: test\n"
        f"camera_matrix: {{rows: 3, cols: 3, data: [{fx}, 0, {cx}, 0, {fy}, {cy}, 0, 0, 1]}}\n"
        f"distortion_model: {model}\n"
        f"distortion_coefficients: {{rows: 1, cols: {len(d)}, data: {list(d)}}}\n"
    )
    return path


def textured_image(height: int, width: int, seed: int, channels: int = 0) -> np.ndarray:
    generator = np.random.default_rng(seed)
    small = generator.integers(0, 256, size=(height // 4 + 1, width // 4 + 1) + ((channels,) if channels else ()))
    image = cv2.resize(small.astype(np.uint8), (width, height), interpolation=cv2.INTER_LINEAR)
    return image


# --------------------------------------------------------------------------------------------
# Calibration files and undistortion


@needs(EXAMPLES)
def test_camera_info_with_document_marker():
    camera = load_camera(EXAMPLES / "image_common_test_calibration.yaml")
    assert camera.size == (640, 480)
    assert camera.distortion_model == "plumb_bob"
    np.testing.assert_allclose(camera.intrinsics, [1168.68, 1169.01, 295.015, 252.247])
    assert camera.coefficients == (-1.04482, 1.59252, -0.0196308, 0.0287906, 0.0)


@needs(EXAMPLES)
def test_camera_info_plumb_bob_four_coefficients(caplog):
    path = EXAMPLES / "image_pipeline_fisheye_mono_ost.yaml"
    with caplog.at_level(logging.WARNING):
        camera = load_camera(path)
    assert camera.distortion_model == "plumb_bob"
    assert len(camera.coefficients) == 4
    assert "equidistant" in caplog.text
    fisheye = load_camera(path, distortion_model="equidistant")
    assert fisheye.distortion_model == "equidistant"
    assert fisheye.coefficients == camera.coefficients
    assert (fisheye.width, fisheye.height) == (800, 503)


@needs(EUROC)
def test_euroc_sensor_yaml_matches_camera_info():
    sensor = load_camera(EUROC / "mav0" / "cam0" / "sensor.yaml")
    info = load_camera(EUROC / "camera_info_cam0.yaml")
    assert sensor.distortion_model == "radtan"
    np.testing.assert_allclose(sensor.intrinsics, EUROC_K)
    np.testing.assert_allclose(sensor.coefficients, EUROC_DISTORTION)
    np.testing.assert_allclose(info.intrinsics, sensor.intrinsics)
    np.testing.assert_allclose(info.coefficients[:4], sensor.coefficients)


def test_camera_scaled_follows_resize_convention():
    camera = PinholeCamera(752, 480, 458.0, 457.0, 367.0, 248.0)
    half = camera.scaled(0.5)
    assert half.size == (376, 240)
    assert half.fx == pytest.approx(229.0)
    assert half.fy == pytest.approx(228.5)
    assert half.cx == pytest.approx((367.0 + 0.5) * 0.5 - 0.5)
    assert half.cy == pytest.approx((248.0 + 0.5) * 0.5 - 0.5)
    # A point drawn at a pixel stays at the scaled pixel after cv2.resize (area average).
    image = np.zeros((480, 752), np.float32)
    image[200:204, 300:304] = 1.0
    resized = cv2.resize(image, half.size, interpolation=cv2.INTER_AREA)
    rows, cols = np.nonzero(resized)
    centre_full = np.array([301.5, 201.5])
    centre_half = np.array([np.average(cols, weights=resized[rows, cols]),
                            np.average(rows, weights=resized[rows, cols])])
    np.testing.assert_allclose(centre_half, (centre_full + 0.5) * 0.5 - 0.5, atol=1e-6)


def _ramp(height: int, width: int) -> np.ndarray:
    v, u = np.mgrid[0:height, 0:width].astype(np.float32)
    return u + 1000.0 * v


@pytest.mark.parametrize(
    "model,coefficients",
    [("radtan", EUROC_DISTORTION), ("plumb_bob", (-0.1, 0.02, 0.001, -0.002, 0.0)),
     ("equidistant", (-0.01, 0.003, -0.001, 0.0002))],
)
@pytest.mark.parametrize("new_camera", ["same", "optimal"])
def test_undistorter_samples_distorted_pixel(model, coefficients, new_camera):
    camera = PinholeCamera(320, 240, 200.0, 201.0, 161.0, 119.0, model, coefficients)
    undistorter = Undistorter(camera, new_camera)
    assert undistorter.camera.distortion_model == "none"
    assert undistorter.camera.size == camera.size
    output = undistorter(_ramp(240, 320))
    # Output pixel -> ray of the new camera -> distorted pixel of the source camera.
    pixels = np.array([[40.0, 30.0], [160.0, 120.0], [250.0, 200.0], [300.0, 20.0]])
    rays = (pixels - undistorter.camera.intrinsics[2:]) / undistorter.camera.intrinsics[:2]
    points = np.concatenate([rays, np.ones((len(rays), 1))], axis=1)[:, None, :]
    distortion = np.asarray(coefficients)
    if model == "equidistant":
        projected, _ = cv2.fisheye.projectPoints(points, np.zeros(3), np.zeros(3), camera.matrix, distortion)
    else:
        projected, _ = cv2.projectPoints(points, np.zeros(3), np.zeros(3), camera.matrix, distortion)
    projected = projected.reshape(-1, 2)
    checked = 0
    for (u, v), (x, y) in zip(pixels.astype(int), projected):
        if 1 <= x < 318 and 1 <= y < 238:
            # CV_16SC2 maps keep 1/32-pixel precision.
            assert output[v, u] == pytest.approx(x + 1000.0 * y, abs=1000.0 / 32 + 1.0)
            checked += 1
    assert checked >= 3


def test_undistorter_optimal_has_no_empty_pixels():
    camera = PinholeCamera(320, 240, 200.0, 200.0, 160.0, 120.0, "plumb_bob", (0.2, 0.05, 0.0, 0.0, 0.0))
    output = Undistorter(camera, "optimal")(np.full((240, 320), 255, np.uint8))
    assert output[2:-2, 2:-2].min() == 255
    same = Undistorter(camera, "same")(np.full((240, 320), 255, np.uint8))
    assert same.min() == 0  # pincushion distortion leaves empty corners with K itself


def test_undistorter_without_distortion_is_identity():
    camera = PinholeCamera(64, 48, 50.0, 50.0, 32.0, 24.0, "plumb_bob", (0.0,) * 5)
    image = textured_image(48, 64, seed=1)
    undistorter = Undistorter(camera)
    assert not undistorter.enabled
    np.testing.assert_array_equal(undistorter(image), image)


# --------------------------------------------------------------------------------------------
# Pose helpers


def test_interpolate_poses_linear_and_slerp():
    angle = np.pi / 2
    source = np.array([[0, 0, 0, 0, 0, 0, 1], [2, 4, 0, 0, 0, np.sin(angle / 2), np.cos(angle / 2)]], float)
    valid, poses = interpolate_poses(
        np.array([0, 100]), source, np.array([-1, 0, 25, 100, 101]), 1000, edge_tolerance_ns=0
    )
    np.testing.assert_array_equal(valid, [False, True, True, True, False])
    np.testing.assert_allclose(poses[1, :3], [0.5, 1.0, 0.0])
    np.testing.assert_allclose(poses[1, 3:], [0, 0, np.sin(angle / 8), np.cos(angle / 8)], atol=1e-12)
    np.testing.assert_allclose(poses[2], source[1], atol=1e-12)


def test_interpolate_poses_edge_tolerance():
    source = np.array([[0, 0, 0, 0, 0, 0, 1], [1, 0, 0, 0, 0, 0, 1.0]])
    queries = np.array([1000, 1000 - 256, 2000 + 256, 2000 + 5000])
    valid, poses = interpolate_poses(np.array([1000, 2000]), source, queries, 10_000, edge_tolerance_ns=1000)
    np.testing.assert_array_equal(valid, [True, True, True, False])
    np.testing.assert_allclose(poses[:, 0], [0.0, 0.0, 1.0])


def test_interpolate_poses_rejects_gaps():
    source = np.tile([0, 0, 0, 0, 0, 0, 1.0], (2, 1))
    valid, poses = interpolate_poses(np.array([0, 1000]), source, np.array([500]), max_gap_ns=400)
    assert not valid.any()
    assert poses.shape == (0, 7)


def test_matrices_round_trip():
    generator = np.random.default_rng(3)
    quaternions = generator.normal(size=(5, 4))
    quaternions /= np.linalg.norm(quaternions, axis=1, keepdims=True)
    quaternions *= np.sign(quaternions[:, 3:])
    poses = np.concatenate([generator.normal(size=(5, 3)), quaternions], axis=1)
    np.testing.assert_allclose(matrices_to_poses(poses_to_matrices(poses)), poses, atol=1e-12)


# --------------------------------------------------------------------------------------------
# Real samples


@needs(EUROC)
def test_euroc_sample():
    sequence = open_sequence(EUROC)
    assert isinstance(sequence, EurocSequence)
    assert len(sequence) == 300
    assert sequence.timestamps_ns[0] == EUROC_FIRST_NS
    assert sequence.timestamps_ns[-1] == EUROC_LAST_NS
    assert sequence.raw_camera.distortion_model == "radtan"
    np.testing.assert_allclose(sequence.camera.intrinsics, EUROC_K)
    assert sequence.camera.distortion_model == "none"
    frame = next(iter(sequence))
    assert frame.image.shape == (480, 752)
    assert frame.image.dtype == np.uint8
    assert frame.timestamp_ns == EUROC_FIRST_NS
    raw = cv2.imread(str(EUROC / "mav0" / "cam0" / "data" / f"{EUROC_FIRST_NS}.png"), cv2.IMREAD_UNCHANGED)
    assert np.abs(frame.image.astype(int) - raw).mean() > 1.0  # undistortion moved pixels


@needs(EUROC)
def test_euroc_ground_truth_in_camera_frame():
    sequence = open_sequence(EUROC)
    ground_truth = sequence.ground_truth
    assert ground_truth is not None
    assert len(ground_truth) == 300
    np.testing.assert_array_equal(ground_truth.timestamps_ns, sequence.timestamps_ns)
    assert ground_truth.path_length() == pytest.approx(13.8, abs=0.1)
    # Frame 0 has a ground-truth row within 1 us: T_world_cam = T_world_body @ T_BS.
    stamps, body = read_euroc_ground_truth(EUROC / "mav0" / "state_groundtruth_estimate0" / "data.csv")
    row = int(np.argmin(np.abs(stamps - EUROC_FIRST_NS)))
    assert abs(stamps[row] - EUROC_FIRST_NS) < 1000
    expected = poses_to_matrices(body[row : row + 1])[0] @ sequence.T_body_cam
    np.testing.assert_allclose(poses_to_matrices(ground_truth.poses[:1])[0], expected, atol=1e-5)
    # The camera looks roughly horizontal at take-off: its optical z axis has little world z.
    assert abs(expected[2, 2]) < 0.5


@needs(EUROC)
def test_stride_and_max_frames():
    strided = open_sequence(EUROC, stride=3)
    assert len(strided) == 100
    np.testing.assert_array_equal(strided.indices[:3], [0, 3, 6])
    limited = open_sequence(EUROC, max_frames=10)
    assert len(limited) == 10
    assert [frame.index for frame in limited] == list(range(10))
    both = open_sequence(EUROC, stride=2, max_frames=7)
    frames = list(both)
    assert [frame.index for frame in frames] == [0, 2, 4, 6, 8, 10, 12]
    assert frames[-1].timestamp_ns == open_sequence(EUROC).timestamps_ns[12]
    assert len(both.ground_truth) == 7
    np.testing.assert_array_equal(both.ground_truth.timestamps_ns, both.timestamps_ns)


@needs(EUROC)
def test_open_sequence_accepts_mav0_folder():
    sequence = open_sequence(EUROC / "mav0", max_frames=2)
    assert isinstance(sequence, EurocSequence)
    assert sequence.timestamps_ns[0] == EUROC_FIRST_NS


@needs(KITTI)
def test_kitti_sample():
    sequence = open_sequence(KITTI)
    assert isinstance(sequence, KittiSequence)
    assert len(sequence) == 160
    assert sequence.timestamps_ns[0] == 0
    last_line = (KITTI / "times.txt").read_text().split()[159]
    assert sequence.timestamps_ns[-1] == round(float(last_line) * 1e9)
    np.testing.assert_allclose(sequence.camera.intrinsics, KITTI_P0)
    assert sequence.camera.size == (1226, 370)
    ground_truth = sequence.ground_truth
    assert len(ground_truth) == 160
    np.testing.assert_allclose(ground_truth.poses[0], [0, 0, 0, 0, 0, 0, 1], atol=1e-6)
    assert ground_truth.path_length() == pytest.approx(90.6, abs=0.2)
    # The car drives forward: mostly along the camera's optical z axis.
    displacement = ground_truth.positions[10] - ground_truth.positions[0]
    assert displacement[2] > 0.9 * np.linalg.norm(displacement)


@needs(TARTANAIR)
def test_tartanair_sample():
    sequence = open_sequence(TARTANAIR)
    assert isinstance(sequence, TartanAirSequence)
    assert len(sequence) == 100
    assert sequence.timestamps_ns[0] == 0
    assert sequence.timestamps_ns[-1] == 99 * 100_000_000
    np.testing.assert_allclose(sequence.camera.intrinsics, [320, 320, 320, 240])
    frame = next(iter(sequence))
    assert frame.image.shape == (480, 640, 3)
    bgr = cv2.imread(str(TARTANAIR / "image_left" / "000000_left.png"))
    np.testing.assert_array_equal(frame.image, bgr[:, :, ::-1])
    ground_truth = sequence.ground_truth
    assert len(ground_truth) == 100
    assert ground_truth.path_length() == pytest.approx(6.65, abs=0.05)


def _photometric_error(images, depth, intrinsics, T_target_source):
    """Mean |I_target(warp(p)) - I_source(p)| over pixels that land inside the target."""
    source, target = images
    height, width = depth.shape
    fx, fy, cx, cy = intrinsics
    v, u = np.mgrid[0:height, 0:width].astype(np.float64)
    points = np.stack([(u - cx) / fx * depth, (v - cy) / fy * depth, depth], axis=-1).reshape(-1, 3)
    moved = points @ T_target_source[:3, :3].T + T_target_source[:3, 3]
    x = (fx * moved[:, 0] / moved[:, 2] + cx).reshape(height, width).astype(np.float32)
    y = (fy * moved[:, 1] / moved[:, 2] + cy).reshape(height, width).astype(np.float32)
    warped = cv2.remap(target.astype(np.float32), x, y, cv2.INTER_LINEAR,
                       borderMode=cv2.BORDER_CONSTANT, borderValue=np.nan)
    valid = np.isfinite(warped).all(axis=-1) & (moved[:, 2].reshape(height, width) > 0)
    assert valid.mean() > 0.5
    return float(np.abs(warped - source.astype(np.float32))[valid].mean())


@needs(TARTANAIR)
@pytest.mark.parametrize("first", [0, 50])
def test_tartanair_poses_warp_with_depth(first):
    sequence = open_sequence(TARTANAIR)
    frames = {frame.index: frame for frame in sequence if frame.index in (first, first + 1)}
    images = (frames[first].image, frames[first + 1].image)
    depth = np.load(TARTANAIR / "depth_left" / f"{first:06d}_left_depth.npy").astype(np.float64)
    poses = poses_to_matrices(sequence.ground_truth.poses)
    relative = np.linalg.inv(poses[first + 1]) @ poses[first]
    ned = poses_to_matrices(read_tartanair_poses(TARTANAIR / "pose_left.txt"))
    relative_without_axis_change = np.linalg.inv(ned[first + 1]) @ ned[first]
    intrinsics = sequence.camera.intrinsics
    with_poses = _photometric_error(images, depth, intrinsics, relative)
    identity = _photometric_error(images, depth, intrinsics, np.eye(4))
    unconverted = _photometric_error(images, depth, intrinsics, relative_without_axis_change)
    assert with_poses < 0.7 * identity
    assert with_poses < 0.7 * unconverted


@needs(BAG)
def test_bag_sample_matches_euroc():
    sequence = open_sequence(BAG)
    assert isinstance(sequence, BagSequence)
    assert len(sequence) == 32
    assert sequence.image_topic == "/cam0/image_raw"
    assert sequence.timestamps_ns[0] == BAG_FIRST_NS
    assert sequence.timestamps_ns[-1] == BAG_LAST_NS
    assert sequence.raw_camera.distortion_model == "plumb_bob"
    np.testing.assert_allclose(sequence.camera.intrinsics, EUROC_K)
    assert sequence.ground_truth is None
    frames = list(open_sequence(BAG, max_frames=3))
    euroc_raw = load_camera(EUROC / "mav0" / "cam0" / "sensor.yaml")
    undistort = Undistorter(euroc_raw)
    for frame in frames:
        png = EUROC / "mav0" / "cam0" / "data" / f"{frame.timestamp_ns}.png"
        np.testing.assert_array_equal(frame.image, undistort(cv2.imread(str(png), cv2.IMREAD_UNCHANGED)))


@needs(BAG)
def test_bag_ground_truth_with_body_extrinsic():
    euroc = open_sequence(EUROC)
    sequence = BagSequence(BAG, groundtruth_topic="/groundtruth/imu_pose", T_body_cam=euroc.T_body_cam)
    ground_truth = sequence.ground_truth
    assert len(ground_truth) == 32
    reference = euroc.ground_truth
    rows = np.searchsorted(reference.timestamps_ns, ground_truth.timestamps_ns)
    np.testing.assert_array_equal(reference.timestamps_ns[rows], ground_truth.timestamps_ns)
    np.testing.assert_allclose(ground_truth.poses, reference.poses[rows], atol=1e-5)


@needs(BAG)
def test_bag_file_path_opens_its_folder():
    sequence = open_sequence(BAG / "euroc_MH_05_cam0_derived.db3", max_frames=1)
    assert sequence.path == BAG


# --------------------------------------------------------------------------------------------
# Synthetic bags


TYPESTORE = get_typestore(Stores.ROS2_JAZZY)
Time = TYPESTORE.types["builtin_interfaces/msg/Time"]
Header = TYPESTORE.types["std_msgs/msg/Header"]
Image = TYPESTORE.types["sensor_msgs/msg/Image"]
CompressedImage = TYPESTORE.types["sensor_msgs/msg/CompressedImage"]
CameraInfo = TYPESTORE.types["sensor_msgs/msg/CameraInfo"]
RegionOfInterest = TYPESTORE.types["sensor_msgs/msg/RegionOfInterest"]
PoseStamped = TYPESTORE.types["geometry_msgs/msg/PoseStamped"]
Pose = TYPESTORE.types["geometry_msgs/msg/Pose"]
Point = TYPESTORE.types["geometry_msgs/msg/Point"]
Quaternion = TYPESTORE.types["geometry_msgs/msg/Quaternion"]
START_NS = 1_700_000_000_123_456_789
PERIOD_NS = 50_000_000


def header(stamp_ns: int, frame_id: str = "cam") -> object:
    return Header(stamp=Time(sec=stamp_ns // 10**9, nanosec=stamp_ns % 10**9), frame_id=frame_id)


def image_message(image: np.ndarray, encoding: str, stamp_ns: int) -> object:
    channels = 1 if image.ndim == 2 else image.shape[2]
    return Image(header=header(stamp_ns), height=image.shape[0], width=image.shape[1], encoding=encoding,
                 is_bigendian=0, step=image.shape[1] * channels * image.itemsize,
                 data=image.reshape(-1).view(np.uint8))


def compressed_message(image: np.ndarray, stamp_ns: int) -> object:
    ok, data = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 95])
    assert ok
    return CompressedImage(header=header(stamp_ns), format="jpeg", data=data.reshape(-1))


def camera_info_message(width: int, height: int, stamp_ns: int) -> object:
    k = np.array([80.0, 0, 32.0, 0, 81.0, 24.0, 0, 0, 1.0])
    p = np.array([80.0, 0, 32.0, 0, 0, 81.0, 24.0, 0, 0, 0, 1.0, 0])
    return CameraInfo(header=header(stamp_ns), height=height, width=width, distortion_model="plumb_bob",
                      d=np.zeros(5), k=k, r=np.eye(3).reshape(-1), p=p, binning_x=0, binning_y=0,
                      roi=RegionOfInterest(x_offset=0, y_offset=0, height=0, width=0, do_rectify=False))


def pose_message(stamp_ns: int, x: float) -> object:
    pose = Pose(position=Point(x=x, y=0.0, z=0.0), orientation=Quaternion(x=0.0, y=0.0, z=0.0, w=1.0))
    return PoseStamped(header=header(stamp_ns, "world"), pose=pose)


def write_bag(path: Path, topics: dict[str, list[tuple[int, object]]], storage: StoragePlugin) -> Path:
    """Write ``{topic: [(receive_ns, message)]}`` as a ROS 2 bag folder."""
    with Writer(path, version=9, storage_plugin=storage) as writer:
        connections = {
            topic: writer.add_connection(topic, messages[0][1].__msgtype__, typestore=TYPESTORE)
            for topic, messages in topics.items()
        }
        records = sorted(
            (stamp, topic, message) for topic, messages in topics.items() for stamp, message in messages
        )
        for stamp, topic, message in records:
            data = TYPESTORE.serialize_cdr(message, message.__msgtype__)
            writer.write(connections[topic], stamp, data)
    return path


@pytest.mark.parametrize("storage", [StoragePlugin.SQLITE3, StoragePlugin.MCAP])
@pytest.mark.parametrize("kind", ["mono8", "rgb8", "bgr8", "jpeg_gray", "jpeg_color"])
def test_synthetic_bag_round_trip(tmp_path, storage, kind):
    color = kind in ("rgb8", "bgr8", "jpeg_color")
    images = [textured_image(48, 64, seed=index, channels=3 if color else 0) for index in range(4)]
    stamps = [START_NS + index * PERIOD_NS for index in range(4)]
    if kind == "jpeg_gray" or kind == "jpeg_color":
        messages = [compressed_message(image, stamp) for image, stamp in zip(images, stamps)]
        topic = "/camera/image_raw/compressed"
    else:
        messages = [image_message(image, kind, stamp) for image, stamp in zip(images, stamps)]
        topic = "/camera/image_raw"
    # Receive times lag the header stamps: the reader must use header.stamp.
    topics = {
        topic: [(stamp + 7_000_000, message) for stamp, message in zip(stamps, messages)],
        "/camera/camera_info": [(stamps[0], camera_info_message(64, 48, stamps[0]))],
        "/ground_truth": [(START_NS + i * 10_000_000, pose_message(START_NS + i * 10_000_000, 0.01 * i))
                          for i in range(20)],
    }
    bag = write_bag(tmp_path / "bag", topics, storage)

    body_to_camera = np.eye(4)
    body_to_camera[:3, 3] = [0.0, 0.5, 0.0]
    sequence = BagSequence(bag, groundtruth_topic="/ground_truth", T_body_cam=body_to_camera)
    assert sequence.image_topic == topic
    np.testing.assert_array_equal(sequence.timestamps_ns, stamps)
    np.testing.assert_allclose(sequence.camera.intrinsics, [80.0, 81.0, 32.0, 24.0])

    frames = list(sequence)
    assert len(frames) == 4
    for frame, image in zip(frames, images):
        assert frame.image.dtype == np.uint8
        if kind == "mono8" or kind == "rgb8":
            np.testing.assert_array_equal(frame.image, image)
        elif kind == "bgr8":
            np.testing.assert_array_equal(frame.image, image[:, :, ::-1])
        elif kind == "jpeg_gray":
            assert frame.image.shape == (48, 64)
            assert np.abs(frame.image.astype(int) - image).mean() < 4.0
        else:
            # The JPEG held the array as BGR; decoding returns it as RGB.
            assert frame.image.shape == (48, 64, 3)
            error = np.abs(frame.image.astype(int) - image[:, :, ::-1]).mean()
            swapped = np.abs(frame.image.astype(int) - image).mean()
            assert error < 10.0
            assert error < 0.5 * swapped

    ground_truth = sequence.ground_truth
    assert len(ground_truth) == 4
    # Body moves 1 m/s along x from START_NS; the camera sits 0.5 m along body y.
    np.testing.assert_allclose(ground_truth.positions[:, 0], np.arange(4) * 0.05, atol=1e-9)
    np.testing.assert_allclose(ground_truth.positions[:, 1], 0.5, atol=1e-12)


def test_synthetic_bag_padded_rows(tmp_path):
    image = textured_image(48, 64, seed=5)
    padded = np.zeros((48, 80), np.uint8)
    padded[:, :64] = image
    message = Image(header=header(START_NS), height=48, width=64, encoding="mono8", is_bigendian=0,
                    step=80, data=padded.reshape(-1))
    info = camera_info_message(64, 48, START_NS)
    bag = write_bag(tmp_path / "bag", {"/cam/image": [(START_NS, message)], "/cam/camera_info": [(START_NS, info)]},
                    StoragePlugin.SQLITE3)
    frame = next(iter(open_sequence(bag)))
    np.testing.assert_array_equal(frame.image, image)


def test_synthetic_bag_selects_topic_and_camera_yaml(tmp_path):
    image = textured_image(48, 64, seed=2)
    topics = {
        "/left/image": [(START_NS + i * PERIOD_NS, image_message(image, "mono8", START_NS + i * PERIOD_NS)) for i in range(3)],
        "/right/image": [(START_NS, image_message(image, "mono8", START_NS))],
    }
    bag = write_bag(tmp_path / "bag", topics, StoragePlugin.MCAP)
    camera = write_camera_yaml(tmp_path / "camera.yaml", 64, 48, (70.0, 71.0, 31.5, 23.5))
    sequence = open_sequence(bag, image_topic="/left/image", camera_path=camera)
    assert len(sequence) == 3
    np.testing.assert_allclose(sequence.camera.intrinsics, [70.0, 71.0, 31.5, 23.5])


# --------------------------------------------------------------------------------------------
# Small folders built in tmp_path


def make_tum_folder(root: Path, frames: int = 6) -> Path:
    (root / "rgb").mkdir(parents=True)
    lines = ["# color images", "# file: test", "# timestamp filename"]
    for index in range(frames):
        stamp = f"1305031102.{175304 + index * 33333:06d}"
        cv2.imwrite(str(root / "rgb" / f"{stamp}.png"), textured_image(480, 640, index, channels=3))
        lines.append(f"{stamp} rgb/{stamp}.png")
    (root / "rgb.txt").write_text("\n".join(lines) + "\n")
    # Ground truth at 100 Hz moving 1 m/s along x, starting 0.05 s before the first image.
    gt_lines = ["# ground truth trajectory", "# timestamp tx ty tz qx qy qz qw"]
    for step in range(40):
        seconds = 1305031102.125304 + step * 0.01
        gt_lines.append(f"{seconds:.6f} {step * 0.01:.6f} 0 0 0 0 0 1")
    (root / "groundtruth.txt").write_text("\n".join(gt_lines) + "\n")
    return root


def test_tum_folder(tmp_path, caplog):
    root = make_tum_folder(tmp_path / "rgbd_dataset_test")
    with caplog.at_level(logging.WARNING):
        sequence = open_sequence(root)
    assert isinstance(sequence, TumSequence)
    assert "freiburg1" in caplog.text
    assert len(sequence) == 6
    assert sequence.timestamps_ns[0] == 1305031102175304000
    assert sequence.raw_camera == FREIBURG_CAMERAS["freiburg1"]
    frame = next(iter(sequence))
    assert frame.image.shape == (480, 640, 3)
    ground_truth = sequence.ground_truth
    assert len(ground_truth) == 6
    expected_x = (sequence.timestamps_ns - 1305031102125304000) / 1e9
    np.testing.assert_allclose(ground_truth.positions[:, 0], expected_x, atol=1e-6)


def test_tum_camera_from_folder_name_and_yaml(tmp_path):
    root = make_tum_folder(tmp_path / "rgbd_dataset_freiburg3_test", frames=2)
    assert open_sequence(root).raw_camera == FREIBURG_CAMERAS["freiburg3"]
    write_camera_yaml(root / "camera.yaml", 640, 480, (500.0, 500.0, 320.0, 240.0))
    np.testing.assert_allclose(open_sequence(root).camera.intrinsics, [500, 500, 320, 240])


def test_image_folder_fps_default(tmp_path):
    for index in range(5):
        cv2.imwrite(str(tmp_path / f"frame_{index:04d}.png"), textured_image(48, 64, index))
    write_camera_yaml(tmp_path / "camera.yaml", 64, 48, (60.0, 60.0, 32.0, 24.0))
    sequence = open_sequence(tmp_path)
    assert isinstance(sequence, ImageFolderSequence)
    np.testing.assert_array_equal(sequence.timestamps_ns, np.arange(5) * 50_000_000)
    assert [frame.index for frame in sequence] == list(range(5))
    np.testing.assert_array_equal(open_sequence(tmp_path, fps=10).timestamps_ns, np.arange(5) * 100_000_000)
    assert sequence.ground_truth is None


def test_image_folder_times_and_names(tmp_path):
    stamped = tmp_path / "stamped"
    stamped.mkdir()
    for index in range(3):
        cv2.imwrite(str(stamped / f"{EUROC_FIRST_NS + index * PERIOD_NS}.png"), textured_image(48, 64, index))
    camera = write_camera_yaml(tmp_path / "camera.yaml", 64, 48, (60.0, 60.0, 32.0, 24.0))
    sequence = open_sequence(stamped, camera_path=camera)
    np.testing.assert_array_equal(sequence.timestamps_ns, EUROC_FIRST_NS + np.arange(3) * PERIOD_NS)
    (stamped / "times.txt").write_text("1.5\n1.6\n1.75\n")
    sequence = open_sequence(stamped, camera_path=camera)
    np.testing.assert_array_equal(sequence.timestamps_ns, [1_500_000_000, 1_600_000_000, 1_750_000_000])


@pytest.mark.parametrize("with_times_file", [False, True])
def test_image_folder_keeps_timestamps_over_fps(tmp_path, caplog, with_times_file):
    for index in range(3):
        cv2.imwrite(str(tmp_path / f"{EUROC_FIRST_NS + index * PERIOD_NS}.png"), textured_image(48, 64, index))
    write_camera_yaml(tmp_path / "camera.yaml", 64, 48, (60.0, 60.0, 32.0, 24.0))
    expected = EUROC_FIRST_NS + np.arange(3) * PERIOD_NS
    source = "the file names (nanoseconds)"
    if with_times_file:
        (tmp_path / "times.txt").write_text("1.5\n1.6\n1.75\n")
        expected = np.array([1_500_000_000, 1_600_000_000, 1_750_000_000])
        source = "times.txt"
    with caplog.at_level(logging.WARNING):
        sequence = open_sequence(tmp_path, fps=10)
    np.testing.assert_array_equal(sequence.timestamps_ns, expected)
    assert f"has timestamps in {source}" in caplog.text
    assert "fps 10 (--fps) is ignored" in caplog.text


@pytest.mark.parametrize("fps", [0.0, -5.0, float("nan")])
def test_image_folder_rejects_nonpositive_fps(tmp_path, fps):
    for index in range(2):
        cv2.imwrite(str(tmp_path / f"frame_{index:04d}.png"), textured_image(48, 64, index))
    write_camera_yaml(tmp_path / "camera.yaml", 64, 48, (60.0, 60.0, 32.0, 24.0))
    with pytest.raises(SequenceError, match=f"fps must be positive, got {fps}"):
        open_sequence(tmp_path, fps=fps)


def test_video_file(tmp_path):
    path = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 20.0, (64, 48))
    assert writer.isOpened()
    images = [textured_image(48, 64, index, channels=3) for index in range(6)]
    for image in images:
        writer.write(image)
    writer.release()
    write_camera_yaml(tmp_path / "clip.yaml", 64, 48, (60.0, 60.0, 32.0, 24.0))
    sequence = open_sequence(path, stride=2)
    assert isinstance(sequence, VideoSequence)
    assert sequence.total_frames == 6
    np.testing.assert_array_equal(sequence.timestamps_ns, [0, 100_000_000, 200_000_000])
    frames = list(sequence)
    assert [frame.index for frame in frames] == [0, 2, 4]
    assert frames[1].image.shape == (48, 64, 3)
    errors = [np.abs(frames[1].image.astype(int) - image[:, :, ::-1]).mean() for image in images]
    assert int(np.argmin(errors)) == 2
    assert errors[2] < 15.0
    assert errors[2] < 0.5 * np.abs(frames[1].image.astype(int) - images[2]).mean()



def test_video_keeps_frame_times_over_fps(tmp_path, caplog):
    path = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 20.0, (64, 48))
    for index in range(3):
        writer.write(textured_image(48, 64, index, channels=3))
    writer.release()
    write_camera_yaml(tmp_path / "clip.yaml", 64, 48, (60.0, 60.0, 32.0, 24.0))
    with caplog.at_level(logging.WARNING):
        sequence = open_sequence(path, fps=10)
    np.testing.assert_array_equal(sequence.timestamps_ns, [0, 50_000_000, 100_000_000])
    assert "fps 10 (--fps) is ignored" in caplog.text
    assert "decoder's frame times" in caplog.text


def test_image_folder_reads_groundtruth_tum(tmp_path):
    from vo_node.demo_data import render_demo_sequence
    from vo_node.io.trajectory import read_tum

    folder = render_demo_sequence(tmp_path / "demo", num_frames=6, height=48, width=64)
    sequence = open_sequence(folder)
    reference = read_tum(folder / "groundtruth.tum")
    assert sequence.ground_truth is not None
    np.testing.assert_array_equal(sequence.ground_truth.timestamps_ns, sequence.timestamps_ns)
    np.testing.assert_allclose(sequence.ground_truth.poses, reference.poses, atol=1e-9)


# --------------------------------------------------------------------------------------------
# Dataset roots above a sequence folder


def make_kitti_sequence(root: Path, name: str, frames: int = 3) -> Path:
    """Write a tiny KITTI odometry sequence ``root/sequences/<name>`` with 64x48 images."""
    folder = root / "sequences" / name
    (folder / "image_0").mkdir(parents=True)
    for index in range(frames):
        cv2.imwrite(str(folder / "image_0" / f"{index:06d}.png"), textured_image(48, 64, index))
    (folder / "calib.txt").write_text("P0: 60.0 0 32.0 0 0 60.0 24.0 0 0 0 1 0\n")
    (folder / "times.txt").write_text("".join(f"{0.1 * index:.1f}\n" for index in range(frames)))
    return folder


def test_kitti_dataset_root_opens_only_sequence(tmp_path):
    folder = make_kitti_sequence(tmp_path, "07")
    for path in (tmp_path, tmp_path / "sequences"):
        sequence = open_sequence(path)
        assert isinstance(sequence, KittiSequence)
        assert sequence.root == folder
        assert len(sequence) == 3


@needs(KITTI)
def test_kitti_shared_dataset_root():
    sequence = open_sequence(KITTI.parents[1], max_frames=2)
    assert isinstance(sequence, KittiSequence)
    assert sequence.root == KITTI
    assert sequence.ground_truth is not None


def test_dataset_root_with_several_sequences_lists_them(tmp_path):
    first = make_kitti_sequence(tmp_path, "00")
    second = make_kitti_sequence(tmp_path, "07")
    with pytest.raises(SequenceError) as error:
        open_sequence(tmp_path)
    message = str(error.value)
    assert f"{tmp_path} contains 2 sequences" in message
    assert f"{first} (kitti)" in message
    assert f"{second} (kitti)" in message
    assert "pass one of them" in message


def test_nested_image_folder_is_not_a_sequence(tmp_path):
    # A folder of images below the given path is not taken as the sequence: many dataset
    # layouts keep their images in such folders next to files the image-folder reader ignores.
    images = tmp_path / "images"
    images.mkdir()
    cv2.imwrite(str(images / "000000.png"), textured_image(48, 64, 0))
    with pytest.raises(SequenceError, match="matches no supported sequence layout"):
        open_sequence(tmp_path)


@needs(BAG)
@needs(EUROC)
def test_open_sequence_passes_bag_ground_truth():
    euroc = open_sequence(EUROC)
    sequence = open_sequence(BAG, max_frames=4, groundtruth_topic="/groundtruth/imu_pose",
                             T_body_cam=euroc.T_body_cam)
    assert isinstance(sequence, BagSequence)
    ground_truth = sequence.ground_truth
    assert ground_truth is not None
    np.testing.assert_array_equal(ground_truth.timestamps_ns, sequence.timestamps_ns)
    rows = np.searchsorted(euroc.ground_truth.timestamps_ns, ground_truth.timestamps_ns)
    np.testing.assert_allclose(ground_truth.poses, euroc.ground_truth.poses[rows], atol=1e-5)


@needs(BAG)
def test_bag_lists_pose_topics():
    sequence = open_sequence(BAG, max_frames=1)
    assert sequence.pose_topics == ["/groundtruth/imu_pose"]
    assert sequence.ground_truth is None


def test_ground_truth_topic_rejected_by_image_folder(tmp_path):
    for index in range(2):
        cv2.imwrite(str(tmp_path / f"{index:06d}.png"), textured_image(48, 64, index))
    write_camera_yaml(tmp_path / "camera.yaml", 64, 48, (60.0, 60.0, 32.0, 24.0))
    with pytest.raises(SequenceError, match="images sequences do not take groundtruth_topic"):
        open_sequence(tmp_path, groundtruth_topic="/pose")
