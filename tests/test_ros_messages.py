"""Image, CameraInfo and pose conversions of vo_node.ros.messages (no DDS traffic)."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from rclpy.serialization import deserialize_message, serialize_message
from sensor_msgs.msg import CameraInfo, CompressedImage, Image

from vo_node.ros.messages import (
    ENCODINGS,
    CameraInfoError,
    ImageConversionError,
    array_to_image,
    camera_from_info,
    compressed_to_tracking_array,
    image_to_array,
    image_to_tracking_array,
    make_odometry,
    make_point_cloud,
    make_transform,
    ns_to_stamp,
    pose_msg_to_matrix,
    stamp_to_ns,
)
from vo_node.ros.tf import pose_to_matrix

HEIGHT, WIDTH = 6, 10
PADDING = 7
"""Extra bytes at the end of each row, so every test also exercises step padding."""


def raw_image(pixels: np.ndarray, encoding: str, padding: int = PADDING, big_endian=False) -> Image:
    """Build an Image whose rows carry ``padding`` junk bytes, through a CDR round trip."""
    array = np.ascontiguousarray(pixels)
    if big_endian:
        array = array.astype(array.dtype.newbyteorder(">"))
    rows = array.reshape(array.shape[0], -1).view(np.uint8)
    junk = np.full((rows.shape[0], padding), 0xAB, dtype=np.uint8)
    data = np.concatenate([rows, junk], axis=1)
    message = Image(
        height=array.shape[0],
        width=array.shape[1],
        encoding=encoding,
        is_bigendian=big_endian,
        step=data.shape[1],
        data=data.tobytes(),
    )
    return deserialize_message(serialize_message(message), Image)


def random_pixels(channels: int, dtype, seed: int = 0) -> np.ndarray:
    generator = np.random.default_rng(seed)
    high = np.iinfo(dtype).max
    shape = (HEIGHT, WIDTH) if channels == 1 else (HEIGHT, WIDTH, channels)
    return generator.integers(0, high, size=shape, endpoint=True).astype(dtype)


@pytest.mark.parametrize("encoding", sorted(ENCODINGS))
def test_image_to_array_every_encoding(encoding):
    layout = ENCODINGS[encoding]
    pixels = random_pixels(layout.channels, layout.dtype)
    decoded = image_to_array(raw_image(pixels, encoding))
    assert decoded.dtype == layout.dtype
    np.testing.assert_array_equal(decoded, pixels)


def test_image_to_array_big_endian_mono16():
    pixels = random_pixels(1, np.uint16, seed=3)
    decoded = image_to_array(raw_image(pixels, "mono16", big_endian=True))
    assert decoded.dtype == np.uint16
    np.testing.assert_array_equal(decoded, pixels)


@pytest.mark.parametrize(
    "encoding, expected",
    [
        ("mono8", lambda p: p),
        ("8UC1", lambda p: p),
        ("rgb8", lambda p: p),
        ("bgr8", lambda p: p[..., ::-1]),
        ("8UC3", lambda p: p[..., ::-1]),
        ("rgba8", lambda p: p[..., :3]),
        ("bgra8", lambda p: p[..., 2::-1]),
        ("mono16", lambda p: (p >> 8).astype(np.uint8)),
        ("rgb16", lambda p: (p >> 8).astype(np.uint8)),
        ("bgra16", lambda p: (p[..., 2::-1] >> 8).astype(np.uint8)),
    ],
)
def test_tracking_array_channel_order(encoding, expected):
    layout = ENCODINGS[encoding]
    pixels = random_pixels(layout.channels, layout.dtype, seed=1)
    converted = image_to_tracking_array(raw_image(pixels, encoding))
    assert converted.dtype == np.uint8
    np.testing.assert_array_equal(converted, expected(pixels))


@pytest.mark.parametrize("pattern, code", [
    ("rggb", cv2.COLOR_BayerBG2RGB),
    ("bggr", cv2.COLOR_BayerRG2RGB),
    ("gbrg", cv2.COLOR_BayerGR2RGB),
    ("grbg", cv2.COLOR_BayerGB2RGB),
])
def test_tracking_array_bayer(pattern, code):
    raw = random_pixels(1, np.uint8, seed=2)
    converted = image_to_tracking_array(raw_image(raw, f"bayer_{pattern}8"))
    assert converted.shape == (HEIGHT, WIDTH, 3)
    np.testing.assert_array_equal(converted, cv2.cvtColor(raw, code))


def test_bayer_rggb_red_pixel_is_red():
    # A uniform red scene seen through an RGGB mosaic: only the top-left site of each 2x2
    # block is lit, so the demosaiced interior must be red.
    raw = np.zeros((8, 8), dtype=np.uint8)
    raw[0::2, 0::2] = 200
    converted = image_to_tracking_array(raw_image(raw, "bayer_rggb8"))
    interior = converted[2:-2, 2:-2].reshape(-1, 3).mean(axis=0)
    assert interior[0] > 150
    assert interior[1] < 50
    assert interior[2] < 50


def test_tracking_array_yuv422_matches_rosbags_image():
    from rosbags.image import message_to_cvimage

    generator = np.random.default_rng(4)
    uyvy = generator.integers(16, 235, size=(HEIGHT, WIDTH, 2), dtype=np.uint8)
    # rosbags-image ignores row padding, so the reference comparison uses unpadded rows.
    message = raw_image(uyvy, "yuv422", padding=0)
    converted = image_to_tracking_array(message)
    padded = image_to_tracking_array(raw_image(uyvy, "yuv422"))
    np.testing.assert_array_equal(padded, converted)
    reference = message_to_cvimage(message, "rgb8")
    assert converted.shape == (HEIGHT, WIDTH, 3)
    np.testing.assert_array_equal(converted, reference)


def test_compressed_png_and_jpeg():
    pixels = random_pixels(3, np.uint8, seed=5)
    ok, png = cv2.imencode(".png", pixels[..., ::-1])
    assert ok
    decoded = compressed_to_tracking_array(CompressedImage(format="png", data=png.tobytes()))
    np.testing.assert_array_equal(decoded, pixels)

    grey = np.tile(np.arange(WIDTH * 8, dtype=np.uint8), (HEIGHT * 8, 1))
    ok, jpeg = cv2.imencode(".jpg", grey, [cv2.IMWRITE_JPEG_QUALITY, 95])
    decoded = compressed_to_tracking_array(
        CompressedImage(format="mono8; jpeg compressed mono8", data=jpeg.tobytes())
    )
    assert decoded.shape == grey.shape
    assert np.abs(decoded.astype(int) - grey).max() <= 4


@pytest.mark.parametrize(
    "change, match",
    [
        (dict(encoding="weird8"), "unsupported image encoding 'weird8'"),
        (dict(step=WIDTH * 3 - 1), "step 29 is smaller than width"),
        (dict(height=HEIGHT + 1), "but height \\* step"),
        (dict(width=0), "size must be positive"),
    ],
)
def test_malformed_image_rejected(change, match):
    message = raw_image(random_pixels(3, np.uint8), "rgb8", padding=0)
    for key, value in change.items():
        setattr(message, key, value)
    with pytest.raises(ImageConversionError, match=match):
        image_to_tracking_array(message)


def test_truncated_data_rejected():
    message = raw_image(random_pixels(1, np.uint8), "mono8")
    message.data = message.data[:-1]
    with pytest.raises(ImageConversionError, match="truncated"):
        image_to_array(message)


def test_corrupt_compressed_rejected():
    with pytest.raises(ImageConversionError, match="could not decode"):
        compressed_to_tracking_array(CompressedImage(format="jpeg", data=b"not a jpeg"))
    with pytest.raises(ImageConversionError, match="no data"):
        compressed_to_tracking_array(CompressedImage(format="jpeg", data=b""))
    with pytest.raises(ImageConversionError, match="depth"):
        compressed_to_tracking_array(CompressedImage(format="16UC1; compressedDepth", data=b"x"))


@pytest.mark.parametrize("encoding, channels, dtype", [
    ("mono8", 1, np.uint8), ("rgb8", 3, np.uint8), ("mono16", 1, np.uint16),
])
def test_array_to_image_round_trip(encoding, channels, dtype):
    pixels = random_pixels(channels, dtype, seed=6)
    message = array_to_image(pixels, encoding, ns_to_stamp(1_500_000_001), "cam")
    message = deserialize_message(serialize_message(message), Image)
    assert message.header.frame_id == "cam"
    assert stamp_to_ns(message.header.stamp) == 1_500_000_001
    np.testing.assert_array_equal(image_to_array(message), pixels)


def test_array_to_image_shape_mismatch():
    with pytest.raises(ImageConversionError, match="needs 3 channel"):
        array_to_image(np.zeros((4, 4), np.uint8), "rgb8")


def camera_info(**fields) -> CameraInfo:
    message = CameraInfo(width=752, height=480, distortion_model="plumb_bob")
    message.k = [458.654, 0.0, 367.215, 0.0, 457.296, 248.375, 0.0, 0.0, 1.0]
    message.d = [-0.28340811, 0.07395907, 0.00019359, 1.76187114e-05, 0.0]
    for key, value in fields.items():
        setattr(message, key, value)
    return message


def test_camera_info_plumb_bob():
    camera = camera_from_info(camera_info())
    np.testing.assert_allclose(camera.intrinsics, [458.654, 457.296, 367.215, 248.375])
    assert camera.size == (752, 480)
    assert camera.distortion_model == "plumb_bob"
    assert camera.is_distorted


def test_camera_info_zero_distortion_is_pinhole():
    camera = camera_from_info(camera_info(d=[0.0] * 5))
    assert camera.distortion_model == "none"
    assert not camera.is_distorted


def test_camera_info_binning_and_roi():
    roi_info = camera_info(d=[])
    roi_info.roi.x_offset, roi_info.roi.y_offset = 100, 40
    roi_info.roi.width, roi_info.roi.height = 400, 300
    roi_info.binning_x = roi_info.binning_y = 2
    camera = camera_from_info(roi_info)
    assert camera.size == (200, 150)
    np.testing.assert_allclose(
        camera.intrinsics, [458.654 / 2, 457.296 / 2, (367.215 - 100) / 2, (248.375 - 40) / 2]
    )


def test_camera_info_zero_focal_rejected():
    with pytest.raises(CameraInfoError, match="fx=0.0"):
        camera_from_info(camera_info(k=[0.0] * 9))


def test_camera_info_unknown_model_rejected():
    with pytest.raises(CameraInfoError, match="'kannala'"):
        camera_from_info(camera_info(distortion_model="kannala"))


def test_camera_info_wrong_coefficient_count_rejected():
    with pytest.raises(CameraInfoError, match="4, 5 or 8 coefficients"):
        camera_from_info(camera_info(d=[0.1, 0.2, 0.0]))


def test_stamp_round_trip():
    for nanoseconds in (0, 1, 999_999_999, 1_403_638_543_577_829_376):
        assert stamp_to_ns(ns_to_stamp(nanoseconds)) == nanoseconds


def test_odometry_and_transform_builders():
    matrix = pose_to_matrix([1.0, -2.0, 0.5, 0.1, 0.2, 0.3, 0.927362])
    covariance = np.arange(36, dtype=float).reshape(6, 6)
    stamp = ns_to_stamp(42)
    odometry = make_odometry(matrix, [1, 2, 3, 4, 5, 6], covariance, np.eye(6), stamp, "odom",
                             "base_link")
    assert odometry.header.frame_id == "odom"
    assert odometry.child_frame_id == "base_link"
    assert stamp_to_ns(odometry.header.stamp) == 42
    np.testing.assert_allclose(pose_msg_to_matrix(odometry.pose.pose), matrix, atol=1e-12)
    np.testing.assert_array_equal(np.array(odometry.pose.covariance).reshape(6, 6), covariance)
    assert odometry.twist.twist.angular.z == 6.0

    transform = make_transform(matrix, stamp, "odom", "base_link")
    assert transform.child_frame_id == "base_link"
    assert transform.transform.translation.y == -2.0
    assert transform.transform.rotation.w > 0


def test_point_cloud_layout():
    points = np.array([[1.0, 2.0, 3.0], [-4.0, 5.5, 6.0]])
    cloud = make_point_cloud(points, ns_to_stamp(7), "odom")
    assert cloud.width == 2
    assert cloud.point_step == 12
    decoded = np.frombuffer(bytes(cloud.data), dtype="<f4").reshape(-1, 3)
    np.testing.assert_array_equal(decoded, points.astype(np.float32))
