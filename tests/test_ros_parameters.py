"""Node parameters (start-up and runtime checks), namespaces, remaps, the YAML and launch files."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
import time

import pytest
import torch
import yaml
from rclpy.executors import SingleThreadedExecutor
from rclpy.node import Node
from rclpy.parameter import Parameter
from test_ros_support import (
    NETWORK_ISOLATED,
    NOT_A_MODEL,
    NOT_ISOLATED_REASON,
    REPO,
    model_parameter,
    ros_context,
    spin_until,
)

from vo_node.ros.parameters import PARAMETERS_BY_NAME, ParameterError

pytestmark = pytest.mark.skipif(not NETWORK_ISOLATED, reason=NOT_ISOLATED_REASON)



def wait_for_graph(query, expected: set[str], timeout_s: float = 5.0) -> dict[str, list[str]]:
    """Poll a graph query (the graph cache fills asynchronously) until ``expected`` names appear."""
    deadline = time.monotonic() + timeout_s
    while True:
        names = dict(query())
        if expected <= set(names) or time.monotonic() > deadline:
            return names
        time.sleep(0.02)


def make_node(context):
    from vo_node.ros.node import VONode

    return VONode(context=context)


@pytest.mark.parametrize(
    "argument, message",
    [
        ("image_qos:=best", "image_qos must be one of sensor_data, reliable, system_default"),
        ("image_transport:=theora", "image_transport must be one of raw, compressed"),
        ("queue_depth:=0", "queue_depth must be at least 1; got 0"),
        ("odom_frame:=/odom", "odom_frame must be a non-empty frame id without a leading '/'"),
        ("camera_to_base:=[0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.5]", "has norm 0.500000"),
        ("camera_to_base:=[0.0, 0.0, 1.0]", "must have 7 values"),
        ("path_max_length:=-5", "path_max_length must be at least 0; got -5"),
        ("pose_covariance_diagonal:=[0.1, 0.1]", "must have 6 variances"),
        ("twist_covariance_diagonal:=[0.1, 0.1, 0.1, 0.1, 0.1, -1.0]", "non-negative variances"),
        ("intrinsics:=[400.0, 0.0, 320.0, 240.0]", "needs positive finite focal lengths"),
        ("intrinsics:=[400.0, 400.0]", "must be [fx, fy, cx, cy]"),
        ("scale:=0.0", "scale must be a positive finite number; got 0.0"),
        ("scale:=2", "expected a floating-point number written with a decimal point"),
        ("model.device:=tpu", "model.device must be one of auto, cpu, cuda; got 'tpu'"),
        ("model.threads:=-1", "model.threads must be at least 0; got -1"),
        ("model.config:=no_such_preset", "model.config 'no_such_preset' is invalid"),
        ("model.config:=/nonexistent/engine.yaml", "configuration file /nonexistent/engine.yaml"),
        ("model.config:=no_such_preset", "engine YAML path with -p model.config:=NAME"),
        ("odom_frame:=base_link", "odom_frame and base_frame are both 'base_link'"),
        ("camera_frame:=base_link", "camera_frame and base_frame are both 'base_link'"),
        ("camera_frame:=odom", "camera_frame and odom_frame are both 'odom'"),
        ("use_sim_time:=maybe", "use_sim_time: Trying to set parameter 'use_sim_time' to 'maybe'"),
        ("use_sim_time:=1", "expecting type 'BOOL' (expected true or false)"),
        ("start_type_description_service:=2", "start_type_description_service: Trying to set"),
    ],
)
def test_invalid_start_up_value_rejected(tiny_model, argument, message):
    with ros_context(["-p", model_parameter(tiny_model), "-p", argument]) as context:
        with pytest.raises(ParameterError) as error:
            make_node(context)
    assert message in str(error.value)


def test_engine_threads_leave_a_core_to_the_executor(monkeypatch):
    from vo_node.ros.parameters import engine_threads

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3})
    assert engine_threads(0) == 3
    assert engine_threads(2) == 2
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0})
    assert engine_threads(0) == 1


def test_shutdown_joins_the_encoder_thread(tiny_model):
    """A thread left inside torch while the interpreter exits aborts the process."""
    with ros_context(["-p", model_parameter(tiny_model), "-p", "model.device:=cpu",
                      "-p", "encode_ahead:=true"]) as context:
        node = make_node(context)
        try:
            assert node.wait_until_ready(60.0)
            encoder = node._encoder
            assert encoder is not None
            assert encoder.is_alive()
        finally:
            node.shutdown()
            node.destroy_node()
    assert not encoder.is_alive()


def test_command_line_rejects_and_exits_2():
    command = [sys.executable, "-m", "vo_node.node", "--ros-args", "-p", "queue_depth:=0",
               "-p", "image_qos:=fast"]
    completed = subprocess.run(command, capture_output=True, text=True, timeout=60, cwd=REPO)
    output = completed.stdout + completed.stderr
    assert completed.returncode == 2, output
    assert "queue_depth must be at least 1; got 0" in output
    assert "image_qos must be one of sensor_data, reliable, system_default; got 'fast'" in output


PARAMS_FILE = REPO / "config" / "vo_node.yaml"
"""Sets every parameter but the intrinsics and covariances, so a -p value meets a file value."""
VALID_OVERRIDES = [
    ("scale:=1e-3", "scale", 1e-3),
    ("scale:=2.0e3", "scale", 2000.0),
    ("scale:=.5", "scale", 0.5),
    ("pose_covariance_diagonal:=[1e-4,1e-4,1e-4,1e-6,1e-6,1e-6]", "pose_covariance_diagonal",
     [1e-4, 1e-4, 1e-4, 1e-6, 1e-6, 1e-6]),
    ("camera_to_base:=[0.1, -0.2, -1.5, -0.5, 0.5, -0.5, 0.5]", "camera_to_base",
     [0.1, -0.2, -1.5, -0.5, 0.5, -0.5, 0.5]),
    ("publish_tf:=y", "publish_tf", True),
    ("publish_tf:=n", "publish_tf", False),
    ("publish_tf:=True", "publish_tf", True),
    ("publish_tf:=false", "publish_tf", False),
    ("publish_tf:=off", "publish_tf", False),
    ("encode_ahead:=true", "encode_ahead", True),
    ("model.threads:=3", "model_threads", 3),
    ("path_max_length:=0x10", "path_max_length", 16),
    ("queue_depth:=+2", "queue_depth", 2),
    ("odom_frame:='42'", "odom_frame", "42"),
    ('base_frame:="base"', "base_frame", "base"),
    ("image_qos:=reliable", "image_qos", "reliable"),
]
"""-p values of the right type, with the value the node reads. rcl types ``y``, ``0x10`` and
``1e-3`` differently from YAML 1.1 (PyYAML), and a quoted scalar is always a string."""


@pytest.mark.parametrize("with_params_file", [False, True], ids=["alone", "after_params_file"])
@pytest.mark.parametrize("argument, attribute, expected", VALID_OVERRIDES)
def test_valid_override_accepted(tiny_model, with_params_file, argument, attribute, expected):
    arguments = ["--params-file", str(PARAMS_FILE)] if with_params_file else []
    arguments += ["-p", model_parameter(tiny_model), "-p", argument]
    with ros_context(arguments) as context:
        node = make_node_with_arguments(["--ros-args", *arguments], context)
        try:
            value = getattr(node.params, attribute)
        finally:
            node.shutdown()
            node.destroy_node()
    assert type(value) is type(expected)
    assert value == expected


WRONG_TYPED_OVERRIDES = [
    ("model.threads:=two", "'two'", "an integer"),
    ("queue_depth:=1.5", "'1.5'", "an integer"),
    ("path_max_length:=1000.0", "'1000.0'", "an integer"),
    ("publish_tf:=yes please", "'yes please'", "true or false"),
    ("publish_tf:=1", "'1'", "true or false"),
    ("scale:=two", "'two'", "a floating-point number"),
    ("scale:=2", "'2'", "a floating-point number"),
    ("image_qos:=1", "'1'", "a string"),
    ("odom_frame:=y", "'True'", "a string"),
    ("pose_covariance_diagonal:=[a, b, c, d, e, f]", "'a'", "a list of numbers"),
]
"""-p values whose type differs from the parameter's, with the value and expected form that the
error shows: the -p text when the params file's value won, else the value as rcl typed it. The
params file sets each of these parameters except pose_covariance_diagonal."""


@pytest.mark.parametrize("with_params_file", [False, True], ids=["alone", "after_params_file"])
@pytest.mark.parametrize("argument, value, expected", WRONG_TYPED_OVERRIDES)
def test_wrong_type_rejected(tiny_model, with_params_file, argument, value, expected):
    # After the params file, rcl keeps the file's value beside a -p value of another type, and
    # rclpy reads the first of bool, integer, double and string, which may be the file's.
    name = argument.partition(":=")[0]
    arguments = ["--params-file", str(PARAMS_FILE)] if with_params_file else []
    arguments += ["-p", model_parameter(tiny_model), "-p", argument]
    with ros_context(arguments) as context:
        with pytest.raises(ParameterError) as error:
            make_node_with_arguments(["--ros-args", *arguments], context)
    message = str(error.value)
    assert f"{name}: " in message
    assert value in message
    assert f"(expected {expected}" in message


def make_node_with_arguments(arguments, context):
    from vo_node.ros.node import VONode

    return VONode(ros_arguments=arguments, context=context)


def test_params_file_wrong_type_exits_2(tiny_model):
    command = [sys.executable, "-m", "vo_node.node", "--ros-args",
               "--params-file", str(REPO / "config" / "vo_node.yaml"),
               "-p", model_parameter(tiny_model), "-p", "model.threads:=two"]
    completed = subprocess.run(command, capture_output=True, text=True, timeout=60, cwd=REPO)
    output = completed.stdout + completed.stderr
    assert completed.returncode == 2, output
    assert "model.threads: the -p value 'two' was ignored" in output
    assert "sets model.threads to 0, a value of another type" in output
    assert "(expected an integer)" in output
    assert "CPU threads" not in output


def test_command_line_parameters_parse_ros_arguments():
    from vo_node.ros.parameters import command_line_parameters

    arguments = ["prog", "-p", "ignored:=1", "--ros-args", "-p", "a:=two", "--param", "b:=2",
                 "-r", "x:=y", "-p", "c:=[1.0, 2.0]", "-p", "a:=3", "--", "-p", "d:=4"]
    assert command_line_parameters(arguments) == {"a": "3", "b": "2", "c": "[1.0, 2.0]"}


@pytest.mark.parametrize(
    "text, value, read",
    [
        ("y", True, True), ("Off", False, True), ("yes please", True, False), ("1", True, False),
        ("3", 3, True), ("-5", -5, True), ("0x1F", 31, True), ("017", 15, True),
        ("1.5", 1, False), ("two", 0, False), ("1e-3", 1e-3, True), ("-2.0e3", -2000.0, True),
        ("0x1.8p1", 3.0, True), (".inf", float("inf"), True), ("08", 8.0, True),
        ("1_000", 1000.0, False), ("'3'", "3", True), ("'3'", 3, False), ("odom", "odom", True),
        ("[1e-4, -2.0]", [1e-4, -2.0], True), ("[1e-4, x]", [1e-4, 0.0], False),
        ("[1.0, 2.0]", [1.0], False), ("[1.0]", 1.0, False),
    ],
)
def test_rcl_reads_as_types_like_rcl(text, value, read):
    from vo_node.ros.parameters import rcl_reads_as

    assert rcl_reads_as(text, value) is read


def test_same_type_override_left_alone(tiny_model):
    arguments = ["--params-file", str(REPO / "config" / "vo_node.yaml"),
                 "-p", model_parameter(tiny_model), "-p", "model.threads:=3"]
    with ros_context(arguments) as context:
        node = make_node_with_arguments(["--ros-args", *arguments], context)
        try:
            threads = node.params.model_threads
        finally:
            node.shutdown()
            node.destroy_node()
    assert threads == 3


def test_bad_use_sim_time_exits_2():
    # rclpy declares use_sim_time itself, inside Node.__init__, before the node's own checks.
    command = [sys.executable, "-m", "vo_node.node", "--ros-args", "-p", "use_sim_time:=maybe"]
    completed = subprocess.run(command, capture_output=True, text=True, timeout=60, cwd=REPO)
    output = completed.stdout + completed.stderr
    assert completed.returncode == 2, output
    assert "use_sim_time: Trying to set parameter 'use_sim_time' to 'maybe'" in output
    assert "(expected true or false)" in output
    assert "Traceback" not in output


def test_runtime_updates_checked_and_applied(tiny_model):
    with ros_context(["-p", model_parameter(tiny_model)]) as context:
        node = make_node(context)
        try:
            rejected = node.set_parameters([Parameter("path_max_length", value=-1)])[0]
            read_only = node.set_parameters([Parameter("image_qos", value="reliable")])[0]
            accepted = node.set_parameters(
                [Parameter("publish_tf", value=False), Parameter("path_max_length", value=3),
                 Parameter("pose_covariance_diagonal", value=[0.5] * 6)]
            )
            params = node.params
        finally:
            node.shutdown()
            node.destroy_node()
    assert not rejected.successful
    assert "path_max_length must be at least 0; got -1" in rejected.reason
    assert not read_only.successful
    assert "read-only" in read_only.reason
    assert all(result.successful for result in accepted)
    assert params.publish_tf is False
    assert params.path_max_length == 3
    assert params.pose_covariance_diagonal == [0.5] * 6


def test_parameter_service_rejects_with_reason(tiny_model):
    from rclpy.parameter_client import AsyncParameterClient

    with ros_context(["-p", model_parameter(tiny_model)]) as context:
        node = make_node(context)
        client_node = Node("parameter_client", context=context)
        executor = SingleThreadedExecutor(context=context)
        executor.add_node(node)
        executor.add_node(client_node)
        client = AsyncParameterClient(client_node, "/vo_node")
        assert spin_until(executor, lambda: client.services_are_ready(), 5.0)
        future = client.set_parameters([Parameter("path_max_length", value=-2)])
        assert spin_until(executor, future.done, 5.0)
        results = future.result().results
        node.shutdown()
        executor.shutdown()
        node.destroy_node()
    assert not results[0].successful
    assert "path_max_length must be at least 0; got -2" in results[0].reason


def test_namespace_remaps_and_params_file(tmp_path, tiny_model):
    override = tmp_path / "robot.yaml"
    override.write_text(yaml.safe_dump({"/**": {"ros__parameters": {"odom_frame": "robot1_odom"}}}))
    arguments = [
        "--params-file", str(REPO / "config" / "vo_node.yaml"),
        "--params-file", str(override),
        "-p", model_parameter(tiny_model),
        "-r", "__ns:=/robot1",
        "-r", "image:=/cam0/image_raw",
        "-r", "odom:=/vo/odom",
    ]
    with ros_context(arguments) as context:
        node = make_node(context)
        try:
            publishers = wait_for_graph(
                lambda: node.get_publisher_names_and_types_by_node("vo_node", "/robot1"),
                {"/vo/odom", "/robot1/path", "/robot1/debug/points", "/diagnostics"},
            )
            subscriptions = wait_for_graph(
                lambda: node.get_subscriber_names_and_types_by_node("vo_node", "/robot1"),
                {"/cam0/image_raw", "/robot1/camera_info"},
            )
            services = wait_for_graph(
                lambda: node.get_service_names_and_types_by_node("vo_node", "/robot1"),
                {"/robot1/vo_node/reset"},
            )
            odom_frame = node.params.odom_frame
            path_max_length = node.params.path_max_length
        finally:
            node.shutdown()
            node.destroy_node()
    assert "/vo/odom" in publishers
    assert "/robot1/path" in publishers
    assert "/robot1/debug/points" in publishers
    assert "/diagnostics" in publishers
    assert "/cam0/image_raw" in subscriptions
    assert "/robot1/camera_info" in subscriptions
    assert "/robot1/vo_node/reset" in services
    assert odom_frame == "robot1_odom"
    assert path_max_length == 1000


def test_compressed_transport_subscribes_to_compressed_topic(tiny_model):
    # A node name of its own, so a vo_node left over from another test in the same ROS domain
    # cannot be the one the graph query returns.
    name = "vo_node_compressed_test"
    arguments = ["-r", f"__node:={name}", "-p", model_parameter(tiny_model),
                 "-p", "image_transport:=compressed"]
    with ros_context(arguments) as context:
        node = make_node(context)
        subscriptions = wait_for_graph(
            lambda: node.get_subscriber_names_and_types_by_node(name, "/"),
            {"/image/compressed", "/camera_info"},
        )
        node.shutdown()
        node.destroy_node()
    assert subscriptions["/image/compressed"] == ["sensor_msgs/msg/CompressedImage"]
    assert "/image" not in subscriptions


def test_yaml_file_sets_only_declared_parameters():
    document = yaml.safe_load((REPO / "config" / "vo_node.yaml").read_text())
    values = document["/**"]["ros__parameters"]
    names = set()
    for key, value in values.items():
        if isinstance(value, dict):
            names.update(f"{key}.{inner}" for inner in value)
        else:
            names.add(key)
    assert names <= set(PARAMETERS_BY_NAME)
    assert names == {spec.name for spec in PARAMETERS_BY_NAME.values()
                     if not isinstance(spec.default, Parameter.Type)}


def test_launch_file_matches_node():
    path = REPO / "launch" / "vo.launch.py"
    try:
        import launch_ros  # noqa: F401
    except ImportError:
        launch_ros = None
    if launch_ros is not None:
        from tests.conftest import load_module_from_file

        module = load_module_from_file(path, "vo_launch")
        description = module.generate_launch_description()
        arguments = {a.name for a in description.get_launch_arguments()}
        assert arguments == {"image_topic", "camera_info_topic", "params_file", "device",
                             "model", "use_sim_time"}
        return

    tree = ast.parse(path.read_text())
    declared = {
        node.args[0].value
        for node in ast.walk(tree)
        if isinstance(node, ast.Call) and getattr(node.func, "id", "") == "DeclareLaunchArgument"
    }
    assert declared == {"image_topic", "camera_info_topic", "params_file", "device", "model",
                        "use_sim_time"}
    parameter_names = {
        key.value
        for node in ast.walk(tree)
        if isinstance(node, ast.Dict)
        for key in node.keys
        if isinstance(key, ast.Constant)
    }
    assert parameter_names
    assert parameter_names <= set(PARAMETERS_BY_NAME) | {"use_sim_time"}
    remapped = {
        element.elts[0].value
        for node in ast.walk(tree)
        if isinstance(node, ast.keyword) and node.arg == "remappings"
        for element in node.value.elts
    }
    assert remapped == {"image", "camera_info"}


def test_camera_to_base_error_names_parameter_once(tiny_model):
    arguments = ["-p", model_parameter(tiny_model), "-p", "camera_to_base:=[0.0, 0.0, 1.0]"]
    with ros_context(arguments) as context:
        with pytest.raises(ParameterError) as error:
            make_node(context)
    message = str(error.value)
    assert "camera_to_base must have 7 values [x, y, z, qx, qy, qz, qw], got 3" in message
    assert "camera_to_base camera_to_base" not in message


def test_misspelt_parameter_is_reported(tiny_model):
    from vo_node.ros.parameters import unknown_parameter_overrides

    arguments = ["-p", model_parameter(tiny_model), "-p", "path_max_lenght:=5",
                 "-p", "use_sim_time:=true"]
    with ros_context(arguments) as context:
        node = make_node(context)
        try:
            unknown = unknown_parameter_overrides(node)
        finally:
            node.shutdown()
            node.destroy_node()
    assert unknown == ["path_max_lenght"]


def test_missing_model_rejected_at_start_up():
    missing = "/nonexistent/vo_test_model.pt"
    with ros_context(["-p", f"model.weights:={missing}"]) as context:
        with pytest.raises(ParameterError) as error:
            make_node(context)
    message = str(error.value)
    assert f"model file {missing} not found" in message
    assert "-p model.weights:=PATH" in message
    assert "--model" not in message


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error without a CUDA device")
def test_cuda_device_rejected_without_gpu(tiny_model):
    with ros_context(["-p", model_parameter(tiny_model), "-p", "model.device:=cuda"]) as context:
        with pytest.raises(ParameterError) as error:
            make_node(context)
    assert "model.device is 'cuda' but no CUDA device is visible" in str(error.value)
    assert "-p model.device:=cpu" in str(error.value)


def test_bad_model_config_exits_2_before_loading(tiny_model):
    command = [sys.executable, "-m", "vo_node.node", "--ros-args",
               "-p", model_parameter(tiny_model), "-p", "model.config:=no_such_preset"]
    completed = subprocess.run(command, capture_output=True, text=True, timeout=60, cwd=REPO)
    output = completed.stdout + completed.stderr
    assert completed.returncode == 2, output
    assert "model.config 'no_such_preset' is invalid" in output
    assert "loading model" not in output
    assert "Traceback" not in output


@pytest.mark.parametrize("content", [None, "/**:\n  ros__parameters: [unclosed\n"])
def test_bad_params_file_exits_2(tmp_path, content):
    path = tmp_path / "params.yaml"
    if content is not None:
        path.write_text(content)
    command = [sys.executable, "-m", "vo_node.node", "--ros-args", "--params-file", str(path)]
    completed = subprocess.run(command, capture_output=True, text=True, timeout=60, cwd=REPO)
    output = completed.stdout + completed.stderr
    assert completed.returncode == 2, output
    assert str(path) in output
    assert "Traceback" not in output


def test_missing_default_model_error_names_parameter(tmp_path, monkeypatch):
    from vo_node.model import network

    monkeypatch.setattr(network, "MODELS_DIR", tmp_path)
    with ros_context(["-p", "model.weights:=''", "-p", "model.device:=cpu"]) as context:
        with pytest.raises(ParameterError) as error:
            make_node(context)
    message = str(error.value)
    assert f"default model vo_small.pt not found (looked in {tmp_path / 'vo_small.pt'}" in message
    assert "-p model.weights:=PATH" in message
    assert message.count("train one") == 1


@pytest.mark.parametrize("content", ["hello", "this is not a model file", None])
def test_unreadable_model_rejected_at_start_up(tmp_path, content):
    path = NOT_A_MODEL
    if content is not None:
        path = tmp_path / "model.pt"
        path.write_text(content)
    with ros_context(["-p", model_parameter(path)]) as context:
        with pytest.raises(ParameterError) as error:
            make_node(context)
    message = str(error.value)
    assert f"model.weights: {path} is not a vo_node model file" in message
    assert "python -m vo_node.train --export" in message
    assert "-p model.weights:=PATH" in message


def test_unreadable_model_exits_2_before_subscribing(tmp_path):
    path = tmp_path / "notes.pt"
    path.write_text("this is not a model file")
    command = [sys.executable, "-m", "vo_node.node", "--ros-args", "-p", model_parameter(path)]
    completed = subprocess.run(command, capture_output=True, text=True, timeout=60, cwd=REPO)
    output = completed.stdout + completed.stderr
    assert completed.returncode == 2, output
    assert f"{path} is not a vo_node model file" in output
    assert "tracking images from" not in output
    assert "Traceback" not in output


@pytest.mark.parametrize("kind", ["parent_is_file", "folder", "ancestor_is_file"])
def test_unwritable_trajectory_file_rejected(tiny_model, tmp_path, kind):
    blocker = tmp_path / "outfile"
    blocker.write_text("a regular file")
    path, reason = {
        "parent_is_file": (blocker / "x.tum", f"{blocker} is not a folder"),
        "ancestor_is_file": (blocker / "deeper" / "x.tum", f"{blocker} is not a folder"),
        "folder": (tmp_path, "is a folder; give a file path such as"),
    }[kind]
    arguments = ["-p", model_parameter(tiny_model), "-p", f"trajectory_file:={path}"]
    with ros_context(arguments) as context:
        with pytest.raises(ParameterError) as error:
            make_node(context)
    message = str(error.value)
    assert f"trajectory_file {str(path)!r}" in message
    assert reason in message


def test_trajectory_file_in_new_folder_accepted(tiny_model, tmp_path):
    path = tmp_path / "runs" / "today" / "vo.tum"
    arguments = ["-p", model_parameter(tiny_model), "-p", f"trajectory_file:={path}"]
    with ros_context(arguments) as context:
        node = make_node(context)
        node.shutdown()
        node.destroy_node()
    assert node.params.trajectory_file == str(path)
    # Nothing was published, so nothing is written and no folder is created at start-up.
    assert not (tmp_path / "runs").exists()


def test_unwritable_trajectory_file_exits_2(tiny_model, tmp_path):
    (tmp_path / "outfile").write_text("a regular file")
    path = tmp_path / "outfile" / "x.tum"
    command = [sys.executable, "-m", "vo_node.node", "--ros-args", "-p", model_parameter(tiny_model),
               "-p", f"trajectory_file:={path}"]
    completed = subprocess.run(command, capture_output=True, text=True, timeout=60, cwd=REPO)
    output = completed.stdout + completed.stderr
    assert completed.returncode == 2, output
    assert f"trajectory_file {str(path)!r} cannot be written" in output
    assert "choose a file path in a writable folder" in output
    assert "Traceback" not in output
