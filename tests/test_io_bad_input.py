"""Bad input: each error names the file or value and gives the fix.

Everything is built in ``tmp_path``; the real samples are copied from, never changed.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from rosbags.rosbag2 import StoragePlugin, Writer
from rosbags.typesys import Stores, get_typestore

from vo_node.io import CalibrationError, PinholeCamera, SequenceError, load_camera, open_sequence
from vo_node.io.bag import BagSequence
from vo_node.io.trajectory import TrajectoryError
from vo_node.run import DEFAULT_PRESET, SIGNAL_EXIT_BASE, StopRequest, build_parser, main

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("VO_NODE_DATA", REPO.parent / "shared" / "data"))
EUROC = DATA / "euroc_MH_05_difficult"
WIDTH, HEIGHT = 64, 48
needs_euroc = pytest.mark.skipif(not EUROC.exists(), reason=f"sample data {EUROC} is absent (set VO_NODE_DATA)")


def write_camera_yaml(path: Path, width: int = WIDTH, height: int = HEIGHT) -> Path:
    path.write_text(
        f"image_width: {width}\nimage_height: {height}\n"
        "camera_matrix: {rows: 3, cols: 3, data: [60.0, 0, 32.0, 0, 60.0, 24.0, 0, 0, 1]}\n"
        "distortion_model: plumb_bob\n"
        "distortion_coefficients: {rows: 1, cols: 5, data: [0, 0, 0, 0, 0]}\n"
    )
    return path


def image_folder(root: Path, count: int = 3, suffix: str = ".png") -> Path:
    root.mkdir(parents=True, exist_ok=True)
    generator = np.random.default_rng(0)
    for index in range(count):
        image = generator.integers(0, 256, size=(HEIGHT, WIDTH), dtype=np.uint8)
        cv2.imwrite(str(root / f"frame_{index:03d}{suffix}"), image)
    write_camera_yaml(root / "camera.yaml")
    return root


def truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


# --------------------------------------------------------------------------------------------
# Images


@pytest.mark.parametrize("suffix", [".png", ".jpg"])
def test_truncated_image_names_file(tmp_path, suffix):
    root = image_folder(tmp_path / "images", suffix=suffix)
    broken = root / f"frame_001{suffix}"
    truncate(broken)
    sequence = open_sequence(root)
    with pytest.raises(SequenceError) as error:
        list(sequence)
    assert str(broken) in str(error.value)
    assert "truncated" in str(error.value)
    assert "re-extract" in str(error.value)


def test_unreadable_image_names_file(tmp_path):
    root = image_folder(tmp_path / "images")
    broken = root / "frame_002.png"
    broken.write_text("not an image")
    with pytest.raises(SequenceError, match="could not be decoded") as error:
        list(open_sequence(root))
    assert str(broken) in str(error.value)


def test_frames_before_bad_image_are_yielded(tmp_path):
    root = image_folder(tmp_path / "images", count=4)
    truncate(root / "frame_002.png")
    frames = []
    with pytest.raises(SequenceError):
        for frame in open_sequence(root):
            frames.append(frame.index)
    assert frames == [0, 1]


def test_size_mismatch_names_both_sizes(tmp_path):
    root = image_folder(tmp_path / "images")
    write_camera_yaml(root / "camera.yaml", width=640, height=480)
    with pytest.raises(SequenceError) as error:
        next(iter(open_sequence(root)))
    message = str(error.value)
    assert "64x48" in message
    assert "640x480" in message
    assert "frame_000.png" in message
    assert "calibration of this camera" in message


@needs_euroc
def test_euroc_copy_with_truncated_png(tmp_path):
    root = _small_euroc_copy(tmp_path, frames=4)
    broken = sorted((root / "mav0" / "cam0" / "data").iterdir())[2]
    truncate(broken)
    sequence = open_sequence(root)
    assert len(sequence) == 4
    with pytest.raises(SequenceError, match=broken.name):
        list(sequence)


@needs_euroc
def test_euroc_image_that_is_folder(tmp_path):
    root = _small_euroc_copy(tmp_path, frames=3)
    broken = sorted((root / "mav0" / "cam0" / "data").iterdir())[1]
    broken.unlink()
    broken.mkdir()
    with pytest.raises(SequenceError) as error:
        list(open_sequence(root))
    assert f"image file {broken} is a folder, not an image" in str(error.value)


def _small_euroc_copy(tmp_path: Path, frames: int) -> Path:
    root = tmp_path / "euroc"
    source = EUROC / "mav0" / "cam0"
    target = root / "mav0" / "cam0"
    (target / "data").mkdir(parents=True)
    shutil.copy(source / "sensor.yaml", target / "sensor.yaml")
    lines = source.joinpath("data.csv").read_text().splitlines()
    selected_lines = [lines[0]] + lines[1 : frames + 1]
    (target / "data.csv").write_text("\n".join(selected_lines) + "\n")
    for line in selected_lines[1:]:
        name = line.split(",")[1].strip()
        shutil.copy(source / "data" / name, target / "data" / name)
    return root


# --------------------------------------------------------------------------------------------
# Calibration


def test_missing_calibration_names_folder_and_fix(tmp_path):
    root = image_folder(tmp_path / "images")
    (root / "camera.yaml").unlink()
    with pytest.raises(CalibrationError) as error:
        open_sequence(root)
    assert "missing calibration" in str(error.value)
    assert str(root / "camera.yaml") in str(error.value)
    assert "--camera" in str(error.value)


@needs_euroc
def test_euroc_missing_sensor_yaml(tmp_path):
    root = _small_euroc_copy(tmp_path, frames=2)
    (root / "mav0" / "cam0" / "sensor.yaml").unlink()
    with pytest.raises(CalibrationError, match="sensor.yaml not found"):
        open_sequence(root)


@pytest.mark.parametrize(
    "text,expected",
    [
        ("image_width: [unclosed\n", "not valid YAML"),
        ("image_width: 64\nimage_height: 48\n", "missing field 'camera_matrix'"),
        (
            "image_width: 64\nimage_height: 48\ncamera_matrix: {data: [1, 2, 3]}\n",
            "camera_matrix.data has 3 values, expected 9",
        ),
        (
            "image_width: 64\nimage_height: 48\ncamera_matrix: {data: [60, 0, 32, 0, 60, 24, 0, 0, 1]}\n"
            "distortion_model: plumb_bob\ndistortion_coefficients: {data: [0.1, 0.2, 0.3]}\n",
            "needs 4, 5 or 8 coefficients",
        ),
        (
            "image_width: 64\nimage_height: 48\ncamera_matrix: {data: [-60, 0, 32, 0, 60, 24, 0, 0, 1]}\n",
            "focal lengths must be positive",
        ),
        (
            "image_width: 64\nimage_height: 48\ncamera_matrix: {data: [60, 0, 32, 0, 60, 24, 0, 0, 1]}\n"
            "distortion_model: kannala\n",
            "distortion model 'kannala' is not supported",
        ),
        ("image_width: 64\n---\nimage_width: 32\n", "exactly one YAML mapping"),
        ("some_key: 1\n", "not a camera calibration"),
        (
            "image_width: 64\nimage_height: 48\ncamera_matrix: {data: [60, 0, 32, 0, x, 24, 0, 0, 1]}\n",
            "not a number",
        ),
    ],
)
def test_malformed_calibration(tmp_path, text, expected):
    path = tmp_path / "camera.yaml"
    path.write_text(text)
    with pytest.raises(CalibrationError, match=expected) as error:
        load_camera(path)
    assert str(path) in str(error.value)


CAMERA_INFO_HEAD = "image_width: 64\nimage_height: 48\n"
CAMERA_MATRIX = "camera_matrix: {rows: 3, cols: 3, data: [60, 0, 32, 0, 60, 24, 0, 0, 1]}\n"
EUROC_HEAD = "camera_model: pinhole\nresolution: [752, 480]\n"
EUROC_INTRINSICS = "intrinsics: [458.654, 457.296, 367.215, 248.375]\n"


@pytest.mark.parametrize(
    "text,expected",
    [
        (
            CAMERA_INFO_HEAD + "camera_matrix: {data: [60, 0, 32, 0, 60, 24, 0, 1]}\n",
            [
                "camera_matrix.data has 8 values, expected 9",
                "row-major 3x3 camera matrix [fx, 0, cx, 0, fy, cy, 0, 0, 1]",
                "Write all 9 values in that order.",
            ],
        ),
        (
            CAMERA_INFO_HEAD + "k: [60, 0, 32, 0, 60, 24, 0, 1]\n",
            ["k has 8 values, expected 9", "[fx, 0, cx, 0, fy, cy, 0, 0, 1]"],
        ),
        (
            CAMERA_INFO_HEAD + "camera_matrix: {data: [60, 0, 32, 0, .nan, 24, 0, 0, 1]}\n",
            ["camera_matrix.data contains a non-finite value", "Replace it with the calibrated"],
        ),
        (
            CAMERA_INFO_HEAD + "camera_matrix: {rows: 3, cols: 3}\n",
            ["camera_matrix.data must be a list of numbers", "[fx, 0, cx, 0, fy, cy, 0, 0, 1]"],
        ),
        (
            CAMERA_INFO_HEAD + CAMERA_MATRIX + "distortion_model: plumb_bob\n"
            "distortion_coefficients: {rows: 1, cols: 3, data: [0.1, 0.2, 0.3]}\n",
            [
                "distortion_coefficients.data has 3 values",
                "'plumb_bob' needs 4, 5 or 8 coefficients (k1 k2 p1 p2 [k3 [k4 k5 k6]])",
                "or set distortion_model to the model they belong to.",
            ],
        ),
        (
            CAMERA_INFO_HEAD + CAMERA_MATRIX + "distortion_model: equidistant\n"
            "distortion_coefficients: {rows: 1, cols: 5, data: [0.1, 0.2, 0.3, 0.4, 0.5]}\n",
            [
                "distortion_coefficients.data has 5 values",
                "'equidistant' needs 4 coefficients (k1 k2 k3 k4)",
            ],
        ),
        (
            CAMERA_INFO_HEAD + CAMERA_MATRIX + "distortion_model: none\n"
            "distortion_coefficients: {rows: 1, cols: 4, data: [0.1, 0, 0, 0]}\n",
            ["distortion_coefficients.data [0.1, 0.0, 0.0, 0.0] are non-zero", "Set distortion_model"],
        ),
        (
            EUROC_HEAD + "intrinsics: [458.654, 457.296, 367.215]\n",
            [
                "intrinsics has 3 values, expected 4",
                "[fu, fv, cu, cv]: focal lengths and principal point in pixels",
            ],
        ),
        (
            EUROC_HEAD + "intrinsics: [458.654, fv, 367.215, 248.375]\n",
            ["intrinsics contains a value that is not a number", "[fu, fv, cu, cv]"],
        ),
        (
            "resolution: [752]\n" + EUROC_INTRINSICS,
            ["resolution has 1 value, expected 2", "[width, height] in pixels"],
        ),
        (
            "resolution: [752.5, 480]\n" + EUROC_INTRINSICS,
            ["resolution must be whole numbers", "such as [752, 480]"],
        ),
        (
            EUROC_HEAD + EUROC_INTRINSICS + "distortion_model: radial-tangential\n"
            "distortion_coefficients: [-0.28, 0.07]\n",
            ["distortion_coefficients has 2 values", "'radtan' needs 4, 5 or 8 coefficients"],
        ),
    ],
)
def test_calibration_list_errors_name_key(tmp_path, text, expected):
    """Each list-valued key with the wrong values is named in the error with its layout."""
    path = tmp_path / "camera.yaml"
    path.write_text(text)
    with pytest.raises(CalibrationError) as error:
        load_camera(path)
    message = str(error.value)
    assert message.startswith(f"{path}: ")
    for part in expected:
        assert part in message, message


def test_euroc_t_bs_error_names_key():
    from vo_node.io.camera import euroc_body_from_sensor

    document = {"T_BS": {"rows": 4, "cols": 4, "data": [1.0] * 15}}
    with pytest.raises(CalibrationError) as error:
        euroc_body_from_sensor(document, source="sensor.yaml")
    message = str(error.value)
    assert message.startswith("sensor.yaml: T_BS.data has 15 values, expected 16")
    assert "row-major 4x4 transform from sensor to body" in message


def test_malformed_calibration_in_image_folder(tmp_path):
    root = image_folder(tmp_path / "images")
    (root / "camera.yaml").write_text("image_width: 64\n")
    with pytest.raises(CalibrationError, match="missing field 'image_height'"):
        open_sequence(root)


def test_camera_rejects_bad_values():
    with pytest.raises(CalibrationError, match="equidistant' needs 4 coefficients"):
        PinholeCamera(64, 48, 60.0, 60.0, 32.0, 24.0, "equidistant", (0.1, 0.2))
    with pytest.raises(CalibrationError, match="image size must be positive"):
        PinholeCamera(0, 48, 60.0, 60.0, 32.0, 24.0)
    with pytest.raises(CalibrationError, match="scale factor must be positive"):
        PinholeCamera(64, 48, 60.0, 60.0, 32.0, 24.0).scaled(0.0)


def test_kitti_calibration_without_p0(tmp_path):
    root = tmp_path / "sequences" / "07"
    image_folder(root / "image_0")
    (root / "calib.txt").write_text("P1: " + " ".join(["1.0"] * 12) + "\n")
    (root / "times.txt").write_text("0.0\n0.1\n0.2\n")
    with pytest.raises(CalibrationError, match="has no P0 line"):
        open_sequence(root)


# --------------------------------------------------------------------------------------------
# Layout, empty input, timestamps


def test_empty_folder_names_folder_and_layouts(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(SequenceError) as error:
        open_sequence(empty)
    message = str(error.value)
    assert f"sequence folder {empty} is empty" in message
    for layout in ("EuRoC", "KITTI", "TartanAir", "TUM RGB-D", "image folder", "video", "ROS 2 bag"):
        assert layout in message


def test_unknown_layout_lists_layouts(tmp_path):
    (tmp_path / "notes.txt").write_text("nothing to see")
    with pytest.raises(SequenceError, match="matches no supported sequence layout") as error:
        open_sequence(tmp_path)
    assert "mav0/cam0/data.csv" in str(error.value)


def test_missing_path(tmp_path):
    with pytest.raises(SequenceError, match="does not exist"):
        open_sequence(tmp_path / "missing")


def test_empty_image_folder_of_layout(tmp_path):
    (tmp_path / "image_left").mkdir()
    (tmp_path / "pose_left.txt").write_text("")
    with pytest.raises(SequenceError, match="image_left contains no images"):
        open_sequence(tmp_path)


def test_non_monotonic_times_name_frame_and_fix(tmp_path):
    root = image_folder(tmp_path / "images")
    (root / "times.txt").write_text("0.0\n0.2\n0.1\n")
    with pytest.raises(SequenceError) as error:
        open_sequence(root)
    message = str(error.value)
    assert "frame 2" in message
    assert "frame_002.png" in message
    assert "sort the frames by time" in message


@needs_euroc
def test_euroc_duplicate_timestamp(tmp_path):
    root = _small_euroc_copy(tmp_path, frames=3)
    csv = root / "mav0" / "cam0" / "data.csv"
    lines = csv.read_text().splitlines()
    first_stamp = lines[1].split(",")[0]
    lines[2] = first_stamp + "," + lines[2].split(",")[1]
    csv.write_text("\n".join(lines) + "\n")
    with pytest.raises(SequenceError, match="timestamps must increase strictly") as error:
        open_sequence(root)
    assert first_stamp in str(error.value)


def test_times_file_with_wrong_count(tmp_path):
    root = image_folder(tmp_path / "images")
    (root / "times.txt").write_text("0.0\n0.1\n")
    with pytest.raises(SequenceError, match="2 timestamps for 3 images"):
        open_sequence(root)


def test_invalid_stride_and_max_frames(tmp_path):
    root = image_folder(tmp_path / "images")
    with pytest.raises(SequenceError, match="stride must be at least 1"):
        open_sequence(root, stride=0)
    with pytest.raises(SequenceError, match="max_frames must be at least 1"):
        open_sequence(root, max_frames=0)


def test_option_not_taken_by_layout(tmp_path):
    root = image_folder(tmp_path / "images")
    with pytest.raises(SequenceError, match="do not take image_topic"):
        open_sequence(root, image_topic="/camera/image")


# --------------------------------------------------------------------------------------------
# ROS 2 bags

TYPESTORE = get_typestore(Stores.ROS2_JAZZY)
Time = TYPESTORE.types["builtin_interfaces/msg/Time"]
Header = TYPESTORE.types["std_msgs/msg/Header"]
Image = TYPESTORE.types["sensor_msgs/msg/Image"]
String = TYPESTORE.types["std_msgs/msg/String"]
START_NS = 1_700_000_000_000_000_000


def _image(stamp_ns: int, step: int = WIDTH, size: int = WIDTH * HEIGHT) -> object:
    header = Header(stamp=Time(sec=stamp_ns // 10**9, nanosec=stamp_ns % 10**9), frame_id="cam")
    return Image(header=header, height=HEIGHT, width=WIDTH, encoding="mono8", is_bigendian=0, step=step,
                 data=np.zeros(size, np.uint8))


def _bag(path: Path, topics: dict[str, list[object]]) -> Path:
    with Writer(path, version=9, storage_plugin=StoragePlugin.SQLITE3) as writer:
        for topic, messages in topics.items():
            connection = writer.add_connection(topic, messages[0].__msgtype__, typestore=TYPESTORE)
            for index, message in enumerate(messages):
                writer.write(connection, START_NS + index, TYPESTORE.serialize_cdr(message, message.__msgtype__))
    return path


def test_bag_with_two_image_topics_lists_them(tmp_path):
    bag = _bag(tmp_path / "bag", {"/left/image": [_image(START_NS)], "/right/image": [_image(START_NS)]})
    with pytest.raises(SequenceError) as error:
        open_sequence(bag, camera_path=write_camera_yaml(tmp_path / "camera.yaml"))
    message = str(error.value)
    assert "2 image topics" in message
    assert "/left/image (sensor_msgs/msg/Image)" in message
    assert "/right/image" in message
    assert "--image-topic" in message


def test_bag_topic_errors(tmp_path):
    bag = _bag(tmp_path / "bag", {"/image": [_image(START_NS)], "/chatter": [String(data="hi")]})
    camera = write_camera_yaml(tmp_path / "camera.yaml")
    with pytest.raises(SequenceError, match="topic /missing not found.*/chatter"):
        BagSequence(bag, image_topic="/missing", camera_path=camera)
    with pytest.raises(SequenceError, match="has type std_msgs/msg/String"):
        BagSequence(bag, image_topic="/chatter", camera_path=camera)
    with pytest.raises(CalibrationError, match="0 CameraInfo topics.*--camera"):
        BagSequence(bag)


def test_bag_corrupt_image_message(tmp_path):
    bag = _bag(tmp_path / "bag", {"/image": [_image(START_NS, size=100)]})
    sequence = open_sequence(bag, camera_path=write_camera_yaml(tmp_path / "camera.yaml"))
    with pytest.raises(SequenceError, match="message 0 on /image.*corrupt"):
        list(sequence)


def test_bag_non_monotonic_stamps(tmp_path):
    bag = _bag(tmp_path / "bag", {"/image": [_image(START_NS + 10), _image(START_NS + 5)]})
    with pytest.raises(SequenceError, match="message 1 on /image"):
        open_sequence(bag, camera_path=write_camera_yaml(tmp_path / "camera.yaml"))


def test_bag_file_without_metadata(tmp_path):
    bare = tmp_path / "recording.mcap"
    bare.write_bytes(b"\x89MCAP0\r\n")
    with pytest.raises(SequenceError, match="metadata.yaml is missing.*ros2 bag reindex"):
        open_sequence(bare)


# --------------------------------------------------------------------------------------------
# Runner arguments and error paths (no engine needed)


def test_run_missing_sequence_exits_2(tmp_path, caplog):
    missing = tmp_path / "no_such_sequence"
    assert main([str(missing), "--output", str(tmp_path / "out")]) == 2
    assert f"sequence path {missing} does not exist" in caplog.text
    assert not (tmp_path / "out").exists()


def test_run_missing_sequence_process_exit_code(tmp_path):
    missing = tmp_path / "no_such_sequence"
    completed = subprocess.run(
        [sys.executable, "-m", "vo_node.run", str(missing)], cwd=REPO, capture_output=True, text=True,
        timeout=120,
    )
    assert completed.returncode == 2
    assert "does not exist" in completed.stderr


def test_run_missing_model_exits_2(tmp_path, caplog):
    root = image_folder(tmp_path / "images")
    status = main([str(root), "--model", str(tmp_path / "missing.pt"), "--device", "cpu"])
    assert status == 2
    assert "missing.pt not found" in caplog.text


@pytest.mark.parametrize(
    "override,expected",
    [("frontend.no_such_key=1", "unknown configuration key"), ("ba.iterations", "must look like key=value")],
)
def test_run_bad_override_exits_2(tmp_path, caplog, override, expected):
    root = image_folder(tmp_path / "images")
    assert main([str(root), "--override", override, "--device", "cpu"]) == 2
    assert expected in caplog.text


def test_run_calibration_error_exits_2(tmp_path, caplog):
    root = image_folder(tmp_path / "images")
    (root / "camera.yaml").unlink()
    assert main([str(root)]) == 2
    assert "missing calibration" in caplog.text


def test_run_parser_values():
    args = build_parser().parse_args(
        ["seq", "--stride", "2", "--max-frames", "5", "--override", "a.b=1", "c.d=2", "--override", "e=3"]
    )
    assert args.stride == 2
    assert args.max_frames == 5
    assert args.override == ["a.b=1", "c.d=2", "e=3"]
    assert args.config == DEFAULT_PRESET
    assert args.device is None


@pytest.mark.parametrize("argv", [["seq", "--stride", "0"], ["seq", "--max-frames", "x"], ["seq", "--device", "tpu"], []])
def test_run_parser_rejects(argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args(argv)
    assert exit_info.value.code == 2


def test_run_restores_signal_handlers(tmp_path):
    before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    main([str(tmp_path / "missing")])
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before


def test_stop_request_signals(caplog):
    stop = StopRequest()
    assert not stop()
    stop._handle(signal.SIGTERM, None)
    assert stop()
    assert SIGNAL_EXIT_BASE + stop.signal_number == 143
    assert "received SIGTERM: finishing the frames tracked so far" in caplog.text
    with pytest.raises(SystemExit) as exit_info:
        stop._handle(signal.SIGINT, None)
    assert exit_info.value.code == 130
    assert ("received SIGINT again: exiting at once with status 130: the remaining outputs are "
            "not written") in caplog.text


# --------------------------------------------------------------------------------------------
# Malformed ground truth: read when the sequence opens, named by file and line


def _kitti_folder(root: Path, poses: str) -> Path:
    sequence = root / "sequences" / "07"
    image_folder(sequence / "image_0", count=3)
    (sequence / "image_0" / "camera.yaml").unlink()
    (sequence / "calib.txt").write_text("P0: 60 0 32 0 0 60 24 0 0 0 1 0\n")
    (sequence / "times.txt").write_text("0.0\n0.1\n0.2\n")
    (root / "poses").mkdir()
    (root / "poses" / "07.txt").write_text(poses)
    return sequence


def _tartanair_folder(root: Path, poses: str) -> Path:
    (root / "image_left").mkdir(parents=True)
    for index in range(3):
        cv2.imwrite(str(root / "image_left" / f"{index:06d}_left.png"), np.zeros((8, 8), np.uint8))
    (root / "pose_left.txt").write_text(poses)
    return root


def _tum_folder(root: Path, ground_truth: str) -> Path:
    image_folder(root / "rgb", count=3)
    (root / "rgb.txt").write_text("".join(f"1.{i} rgb/frame_{i:03d}.png\n" for i in range(3)))
    (root / "groundtruth.txt").write_text(ground_truth)
    return root


IDENTITY = "0 0 0 0 0 0 1"
KITTI_IDENTITY = "1 0 0 0 0 1 0 0 0 0 1 0"
MALFORMED_GROUND_TRUTH = [
    ("kitti", f"{KITTI_IDENTITY}\n{KITTI_IDENTITY}\ngarbage line\n", "poses/07.txt line 3"),
    ("kitti", f"{KITTI_IDENTITY}\n1 0 0 nan 0 1 0 0 0 0 1 0\n", "poses/07.txt line 2"),
    ("tartanair", f"{IDENTITY}\ngarbage line\n", "pose_left.txt line 2"),
    ("tartanair", f"{IDENTITY}\n0 0 0 x 0 0 1\n", "pose_left.txt line 2"),
    ("tartanair", f"{IDENTITY}\n0 0 0 0 0 0 0\n", "pose_left.txt line 2"),
    ("tum", f"1.0 {IDENTITY}\ngarbage,line\n", "groundtruth.txt:2"),
    ("tum", f"1.0 {IDENTITY}\n1.1 0 0 0 0 0 0 nan\n", "groundtruth.txt:2"),
    ("tum", f"1.0 {IDENTITY}\n1.1 0 0 0 0 0 0 0\n", "groundtruth.txt line 2"),
    ("images", f"0.0 {IDENTITY}\ngarbage,line\n", "groundtruth.tum:2"),
    ("images", f"0.0 {IDENTITY}\n0.05 0 nan 0 0 0 0 1\n", "groundtruth.tum:2"),
]


def _folder_with_ground_truth(tmp_path: Path, layout: str, text: str) -> Path:
    if layout == "kitti":
        return _kitti_folder(tmp_path / "kitti", text)
    if layout == "tartanair":
        return _tartanair_folder(tmp_path / "tartanair", text)
    if layout == "tum":
        return _tum_folder(tmp_path / "tum", text)
    root = image_folder(tmp_path / "images")
    (root / "groundtruth.tum").write_text(text)
    return root


@pytest.mark.parametrize("layout, text, location", MALFORMED_GROUND_TRUTH)
def test_malformed_ground_truth_names_line(tmp_path, layout, text, location):
    sequence = open_sequence(_folder_with_ground_truth(tmp_path, layout, text))
    with pytest.raises((SequenceError, TrajectoryError)) as raised:
        sequence.ground_truth
    message = str(raised.value)
    assert location in message
    assert "correct" in message


@pytest.mark.parametrize("layout, text, location", MALFORMED_GROUND_TRUTH)
def test_run_malformed_ground_truth_exits_2_early(tmp_path, caplog, layout, text, location):
    root = _folder_with_ground_truth(tmp_path, layout, text)
    output = tmp_path / "out"
    # The image size does not matter: the ground truth fails before any frame is read.
    arguments = [str(root), "--device", "cpu", "--no-progress", "--output", str(output)]
    if layout == "tartanair":
        arguments += ["--max-frames", "2"]
    assert main(arguments) == 2
    assert location in caplog.text
    assert "tracked" not in caplog.text
    assert not output.exists()


@needs_euroc
def test_euroc_garbage_ground_truth_row(tmp_path, caplog):
    root = _small_euroc_copy(tmp_path, frames=3)
    source = EUROC / "mav0" / "state_groundtruth_estimate0" / "data.csv"
    folder = root / "mav0" / "state_groundtruth_estimate0"
    folder.mkdir()
    lines = source.read_text().splitlines()[:50]
    (folder / "data.csv").write_text("\n".join(lines) + "\ngarbage,line\n")
    sequence = open_sequence(root)
    with pytest.raises(SequenceError) as raised:
        sequence.ground_truth
    message = str(raised.value)
    assert f"ground-truth file {folder / 'data.csv'} line 51 has 2 values" in message
    assert "correct or delete that line" in message

    output = tmp_path / "out"
    assert main([str(root), "--device", "cpu", "--no-progress", "--output", str(output)]) == 2
    assert "line 51 has 2 values" in caplog.text
    assert not output.exists()


def test_bag_ground_truth_with_nan_pose(tmp_path):
    PoseStamped = TYPESTORE.types["geometry_msgs/msg/PoseStamped"]
    Pose = TYPESTORE.types["geometry_msgs/msg/Pose"]
    Point = TYPESTORE.types["geometry_msgs/msg/Point"]
    Quaternion = TYPESTORE.types["geometry_msgs/msg/Quaternion"]

    def pose(stamp_ns: int, x: float) -> object:
        header = Header(stamp=Time(sec=stamp_ns // 10**9, nanosec=stamp_ns % 10**9), frame_id="w")
        return PoseStamped(
            header=header,
            pose=Pose(position=Point(x=x, y=0.0, z=0.0),
                      orientation=Quaternion(x=0.0, y=0.0, z=0.0, w=1.0)),
        )

    bag = _bag(tmp_path / "bag", {
        "/image": [_image(START_NS), _image(START_NS + 10**8)],
        "/pose": [pose(START_NS, 0.0), pose(START_NS + 10**8, float("nan"))],
    })
    camera = write_camera_yaml(tmp_path / "camera.yaml")
    sequence = open_sequence(bag, camera_path=camera, groundtruth_topic="/pose")
    with pytest.raises(SequenceError) as raised:
        sequence.ground_truth
    message = str(raised.value)
    assert "message 2 of ground-truth topic /pose" in message
    assert "--groundtruth-topic" in message


# --------------------------------------------------------------------------------------------
# Wording of input errors, and --fps on layouts with their own timestamps


def test_times_file_nan_names_line(tmp_path):
    root = image_folder(tmp_path / "images")
    (root / "times.txt").write_text("0.0\nnan\n0.2\n")
    with pytest.raises(SequenceError) as raised:
        open_sequence(root)
    message = str(raised.value)
    assert f"{root / 'times.txt'} line 2" in message
    assert "not a finite number of seconds" in message
    assert "NaN to integer" not in message


def test_binary_calibration_names_file(tmp_path):
    root = image_folder(tmp_path / "images")
    (root / "camera.yaml").unlink()
    binary = root / "frame_000.png"
    with pytest.raises(CalibrationError) as raised:
        open_sequence(root, camera_path=binary)
    assert f"calibration file {binary} is not a text file" in str(raised.value)


def test_calibration_list_says_mapping(tmp_path):
    path = tmp_path / "camera.yaml"
    path.write_text("- image_width\n- image_height\n")
    with pytest.raises(CalibrationError) as raised:
        load_camera(path)
    message = str(raised.value)
    assert "must contain a YAML mapping" in message
    assert "it contains a list" in message
    assert "document(s)" not in message


def test_option_not_taken_names_flag(tmp_path):
    root = image_folder(tmp_path / "images")
    with pytest.raises(SequenceError) as raised:
        open_sequence(root, T_body_cam=np.eye(4))
    message = str(raised.value)
    assert "(--groundtruth-extrinsic)" in message
    assert "they accept --camera, --fps" in message
    (root / "camera.yaml").unlink()
    with pytest.raises(CalibrationError) as raised:
        open_sequence(root)
    assert "camera_path" not in str(raised.value)
    assert "--camera" in str(raised.value)


@pytest.mark.parametrize("layout", ["kitti", "tartanair", "tum"])
def test_fps_on_timestamped_layout_warns(tmp_path, caplog, layout):
    text = {"kitti": f"{KITTI_IDENTITY}\n" * 3, "tartanair": f"{IDENTITY}\n" * 3,
            "tum": f"1.0 {IDENTITY}\n"}[layout]
    root = _folder_with_ground_truth(tmp_path, layout, text)
    expected = open_sequence(root).timestamps_ns
    sequence = open_sequence(root, fps=30.0)
    np.testing.assert_array_equal(sequence.timestamps_ns, expected)
    assert "fps 30 (--fps) is ignored" in caplog.text


def test_run_invalid_config_value_exits_2_without_output(tmp_path, caplog):
    root = image_folder(tmp_path / "images")
    for override in ("frontend.frame_memory=0", "frontend.max_keyframes=0",
                     "max_image_width=-100", "max_image_width=8", "ba.pose_damping=nan",
                     "frontend=3"):
        caplog.clear()
        output = tmp_path / "out"
        argv = [str(root), "--override", override, "--device", "cpu", "--output", str(output)]
        assert main(argv) == 2, override
        assert override.split("=")[0] in caplog.text
        assert not output.exists(), override
