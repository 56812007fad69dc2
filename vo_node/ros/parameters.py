"""ROS parameters of the vo_node node: one table with types, defaults, units and checks.

Every parameter is declared once with a ``ParameterDescriptor`` carrying its description and unit.
Values given at start-up (``--params-file``, ``-p``) are checked by :func:`declare_parameters`,
which raises :class:`ParameterError` naming each invalid value. It also checks that the model
file exists, the engine configuration loads, a ``cuda`` device is visible and the
``trajectory_file`` can be written, and :func:`load_model_file` reads the model. So these fail
before the node creates its topics. Later ``set_parameters`` requests
pass through :func:`validate_update` (registered with ``add_on_set_parameters_callback``). Only
the parameters marked dynamic can change while the node runs; the others are read-only.
"""

from __future__ import annotations

import array
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from rcl_interfaces.msg import ParameterDescriptor, SetParametersResult
from rclpy.exceptions import ParameterException, ParameterUninitializedException
from rclpy.parameter import Parameter
import yaml

from vo_node.io.atomic import output_file_problem
from vo_node.ros.tf import DEFAULT_CAMERA_TO_BASE, check_transform

IMAGE_TRANSPORTS = ("raw", "compressed")
IMAGE_QOS_CHOICES = ("sensor_data", "reliable", "system_default")
MODEL_DEVICES = ("auto", "cpu", "cuda")
COVARIANCE_SIZE = 6
INTRINSICS_SIZE = 4
QOS_OVERRIDES_PREFIX = "qos_overrides."
ROS_ARGUMENTS_FLAG = "--ros-args"
ROS_ARGUMENTS_END = "--"
PARAMETER_FLAGS = ("-p", "--param")
RCLPY_PARAMETER_TYPES = {
    "use_sim_time": "true or false",
    "start_type_description_service": "true or false",
}
"""Parameters that ``rclpy.node.Node.__init__`` declares itself (Jazzy), with their expected form."""
RCL_TRUE_SPELLINGS = frozenset(
    {"y", "Y", "yes", "Yes", "YES", "true", "True", "TRUE", "on", "On", "ON"}
)
RCL_FALSE_SPELLINGS = frozenset(
    {"n", "N", "no", "No", "NO", "false", "False", "FALSE", "off", "Off", "OFF"}
)
"""Plain YAML scalars that rcl reads as a bool (``get_value`` in rcl_yaml_param_parser)."""
RCL_SPECIAL_DOUBLES = {
    **dict.fromkeys((".nan", ".NaN", ".NAN"), math.nan),
    **dict.fromkeys((".inf", ".Inf", ".INF", "+.inf", "+.Inf", "+.INF"), math.inf),
    **dict.fromkeys(("-.inf", "-.Inf", "-.INF"), -math.inf),
}
"""YAML spellings of NaN and infinity that rcl reads as doubles besides what strtod accepts."""
STRTOL_PATTERN = re.compile(r"([+-]?)(0[xX][0-9a-fA-F]+|0[0-7]*|[1-9][0-9]*)")
"""Text that C ``strtol`` with base 0 reads completely: sign, then hex, octal or decimal."""
HEX_DOUBLE_PATTERN = re.compile(
    r"[+-]?0[xX]([0-9a-fA-F]+\.?[0-9a-fA-F]*|\.[0-9a-fA-F]+)([pP][+-]?[0-9]+)?"
)
"""Hexadecimal floating-point text that C ``strtod`` reads, such as 0x1.8p3."""
TRAIN_COMMAND = "python -m vo_node.train --config config/train_small.yaml"


class ParameterError(ValueError):
    """One or more parameter values are invalid; the message names each value and the fix."""


@dataclass(frozen=True)
class ParameterSpec:
    """Declaration of one parameter: default (or type when unset), description, unit, check."""

    name: str
    default: Any
    """The default value, or a ``Parameter.Type`` for parameters that are unset by default."""
    description: str
    unit: str = ""
    dynamic: bool = False
    """Whether the value may change while the node runs."""
    check: Callable[[Any], str | None] | None = None
    """Return a message naming the problem, or None when the value is valid."""

    def descriptor(self) -> ParameterDescriptor:
        unit = f" [{self.unit}]" if self.unit else ""
        return ParameterDescriptor(
            name=self.name,
            description=self.description + unit,
            read_only=not self.dynamic,
        )


# --------------------------------------------------------------------------------------------
# Checks


def _one_of(choices: Sequence[str]) -> Callable[[Any], str | None]:
    def check(value: Any) -> str | None:
        if value not in choices:
            return f"must be one of {', '.join(choices)}; got {value!r}"
        return None

    return check


def _at_least(minimum: int) -> Callable[[Any], str | None]:
    def check(value: Any) -> str | None:
        if value < minimum:
            return f"must be at least {minimum}; got {value}"
        return None

    return check


def _frame_name(value: Any) -> str | None:
    if not value or value.startswith("/") or any(c.isspace() for c in value):
        return f"must be a non-empty frame id without a leading '/' or spaces; got {value!r}"
    return None


def _optional_frame_name(value: Any) -> str | None:
    return None if value == "" else _frame_name(value)


def _positive_finite(value: Any) -> str | None:
    if not (math.isfinite(value) and value > 0):
        return f"must be a positive finite number; got {value}"
    return None


def _transform(value: Any) -> str | None:
    name = "camera_to_base"
    try:
        check_transform(value, name)
    except ValueError as error:
        # The caller puts the parameter name in front of the message, so it is dropped here.
        return str(error).removeprefix(f"{name} ")
    return None


def _covariance_diagonal(value: Any) -> str | None:
    if value is None:
        return None
    if len(value) != COVARIANCE_SIZE:
        return (
            f"must have {COVARIANCE_SIZE} variances (x, y, z, roll, pitch, yaw); "
            f"got {len(value)}"
        )
    if not all(math.isfinite(v) and v >= 0 for v in value):
        return f"must contain finite non-negative variances; got {list(value)}"
    return None


def _intrinsics(value: Any) -> str | None:
    if value is None:
        return None
    if len(value) != INTRINSICS_SIZE:
        return f"must be [fx, fy, cx, cy] (4 values, pixels); got {len(value)} values"
    fx, fy, cx, cy = value
    if not all(math.isfinite(v) for v in value) or fx <= 0 or fy <= 0:
        return (
            "needs positive finite focal lengths and a finite principal point; "
            f"got {list(value)}"
        )
    return None


def _writable_file(value: Any) -> str | None:
    if not value:
        return None
    return output_file_problem(value, "trajectory.tum")


# --------------------------------------------------------------------------------------------
# The table


PARAMETERS: tuple[ParameterSpec, ...] = (
    ParameterSpec(
        "image_transport",
        "raw",
        "Input form: 'raw' subscribes to sensor_msgs/Image on 'image'; 'compressed' subscribes "
        "to sensor_msgs/CompressedImage on 'image/compressed' (JPEG or PNG)",
        check=_one_of(IMAGE_TRANSPORTS),
    ),
    ParameterSpec(
        "image_qos",
        "sensor_data",
        "QoS of the image and camera_info subscriptions: 'sensor_data' (best effort, matches "
        "any publisher), 'reliable' (lossless with reliable publishers, for evaluation) or "
        "'system_default'",
        check=_one_of(IMAGE_QOS_CHOICES),
    ),
    ParameterSpec(
        "queue_depth",
        1,
        "Depth of the image subscription queue; 1 keeps only the newest frame, so a slow model "
        "never processes stale frames",
        unit="messages",
        check=_at_least(1),
    ),
    ParameterSpec("odom_frame", "odom", "Frame id of the odometry pose (REP-105 odom)",
                  check=_frame_name),
    ParameterSpec("base_frame", "base_link", "Frame id of the robot body (child of odom)",
                  check=_frame_name),
    ParameterSpec(
        "camera_frame",
        "",
        "Frame id of the optical camera frame; empty uses the frame_id of the image messages",
        check=_optional_frame_name,
    ),
    ParameterSpec(
        "publish_tf",
        True,
        "Broadcast odom -> base_frame on /tf; turn off when another node (for example "
        "robot_localization) publishes that transform",
        dynamic=True,
    ),
    ParameterSpec(
        "publish_camera_tf",
        True,
        "Publish base_frame -> camera frame from camera_to_base on /tf_static; turn off when "
        "robot_state_publisher provides it",
    ),
    ParameterSpec(
        "camera_to_base",
        list(DEFAULT_CAMERA_TO_BASE),
        "Pose of the optical camera frame in base_frame, T_base_camera as [x, y, z, qx, qy, qz, "
        "qw]; the default places the camera at the body origin looking along body x",
        unit="m, unit quaternion",
        check=_transform,
    ),
    ParameterSpec(
        "path_max_length",
        1000,
        "Number of newest poses kept in the published path; 0 disables the path topic",
        unit="poses",
        dynamic=True,
        check=_at_least(0),
    ),
    ParameterSpec(
        "pose_covariance_diagonal",
        Parameter.Type.DOUBLE_ARRAY,
        "Fixed pose variances (x, y, z, roll, pitch, yaw) that replace the estimated "
        "covariance; unset uses the bundle adjustment covariance when the engine provides one",
        unit="m^2, rad^2",
        dynamic=True,
        check=_covariance_diagonal,
    ),
    ParameterSpec(
        "twist_covariance_diagonal",
        Parameter.Type.DOUBLE_ARRAY,
        "Fixed twist variances (vx, vy, vz, wx, wy, wz); unset uses built-in defaults",
        unit="(m/s)^2, (rad/s)^2",
        dynamic=True,
        check=_covariance_diagonal,
    ),
    ParameterSpec(
        "model.weights",
        "",
        "Model file (.pt) with network weights and engine configuration; empty uses the model "
        "shipped with the package",
        unit="path",
    ),
    ParameterSpec(
        "model.config",
        "",
        "Engine configuration preset name (small, accurate, full) or YAML path whose frontend "
        "and bundle adjustment settings replace the model file's; empty keeps the model file's",
    ),
    ParameterSpec(
        "model.device",
        "auto",
        "Inference device: auto (CUDA when visible, else CPU), cpu or cuda",
        check=_one_of(MODEL_DEVICES),
    ),
    ParameterSpec(
        "model.threads",
        0,
        "CPU threads of the engine's torch operations; 0 picks one fewer than the usable cores "
        "(at least 1), which leaves a core to the executor and the image publisher",
        unit="threads",
        check=_at_least(0),
    ),
    ParameterSpec(
        "encode_ahead",
        False,
        "Run the encoders of the newest waiting frame on a second thread while the worker "
        "tracks the previous frame. It shortens the worker's time per frame, which pays when a "
        "core is free for it; on 2 cores shared with the camera driver the latency did not "
        "improve (docs/benchmarks.md)",
    ),
    ParameterSpec(
        "prefer_fresh_frames",
        True,
        "When the worker becomes free and the waiting frame has waited more than half the "
        "input frame period, wait up to one period for the next frame and track that one "
        "instead. At 30 Hz on 2 cores it took about 15 ms off the median latency and cost "
        "about 5 % of the processed frames (docs/benchmarks.md)",
    ),
    ParameterSpec(
        "intrinsics",
        Parameter.Type.DOUBLE_ARRAY,
        "Pinhole intrinsics [fx, fy, cx, cy] of undistorted images, used until a valid "
        "camera_info arrives or when its size does not match the images; unset waits for "
        "camera_info",
        unit="pixels",
        check=_intrinsics,
    ),
    ParameterSpec(
        "scale",
        1.0,
        "Factor applied to every translation: monocular odometry has no metric scale, so set "
        "the ratio of metres to scene units if it is known",
        unit="m per scene unit",
        check=_positive_finite,
    ),
    ParameterSpec(
        "trajectory_file",
        "",
        "TUM file (timestamp tx ty tz qx qy qz qw, camera optical axes) written atomically on "
        "shutdown, SIGINT or SIGTERM; empty writes none. Missing parent folders are created",
        unit="path",
        check=_writable_file,
    ),
)

PARAMETERS_BY_NAME = {spec.name: spec for spec in PARAMETERS}


@dataclass
class NodeParameters:
    """Values of the node's parameters after validation."""

    image_transport: str
    image_qos: str
    queue_depth: int
    odom_frame: str
    base_frame: str
    camera_frame: str
    publish_tf: bool
    publish_camera_tf: bool
    camera_to_base: list[float]
    path_max_length: int
    pose_covariance_diagonal: list[float] | None
    twist_covariance_diagonal: list[float] | None
    model_weights: str
    model_config: str
    model_device: str
    model_threads: int
    encode_ahead: bool
    prefer_fresh_frames: bool
    intrinsics: list[float] | None
    scale: float
    trajectory_file: str

    def update(self, name: str, value: Any) -> None:
        """Set the field of parameter ``name`` (dots become underscores)."""
        setattr(self, name.replace(".", "_"), _plain(value))


def declare_parameters(node) -> NodeParameters:
    """Declare every parameter on ``node``, read the values and check them.

    Raises:
        ParameterError: listing every invalid value with the problem and the expected form.
    """
    values: dict[str, Any] = {}
    problems: list[str] = []
    for spec in PARAMETERS:
        try:
            node.declare_parameter(spec.name, spec.default, spec.descriptor())
        except (ParameterException, TypeError, ValueError) as error:
            # A value of the wrong type given with -p or in a parameter file.
            problems.append(f"{spec.name}: {error} (expected {_type_name(spec)})")
            values[spec.name] = None if isinstance(spec.default, Parameter.Type) else spec.default
            continue
        values[spec.name] = _read(node, spec.name)
    for name, value in values.items():
        message = check_value(name, value)
        if message:
            problems.append(f"{name} {message}")
    problems += frame_problems(values["odom_frame"], values["base_frame"], values["camera_frame"])
    if not problems:
        # Checked only once the values are well formed, and before any model is loaded.
        problems += model_parameter_problems(
            values["model.weights"], values["model.config"], values["model.device"]
        )
    if problems:
        raise ParameterError("invalid parameter values:\n  " + "\n  ".join(problems))
    return NodeParameters(**{name.replace(".", "_"): value for name, value in values.items()})


def frame_problems(odom_frame: str, base_frame: str, camera_frame: str) -> list[str]:
    """Return one message per pair of frame parameters that name the same frame.

    The node publishes ``odom_frame -> base_frame`` and ``base_frame -> camera_frame``, and tf2
    rejects a transform from a frame to itself, so these frames must differ.
    """
    pairs = [("odom_frame", odom_frame, "base_frame", base_frame)]
    if camera_frame:
        pairs += [
            ("camera_frame", camera_frame, "base_frame", base_frame),
            ("camera_frame", camera_frame, "odom_frame", odom_frame),
        ]
    return [
        f"{name} and {other_name} are both {value!r}, but the node publishes the transform "
        f"between them and tf2 rejects a transform from a frame to itself; give {name} "
        "another frame id"
        for name, value, other_name, other_value in pairs
        if value and value == other_value
    ]


def rclpy_parameter_error(error: Exception) -> ParameterError:
    """Return a :class:`ParameterError` for ``error``, which ``rclpy.node.Node.__init__`` raised
    for a wrong-typed value of a parameter that rclpy declares itself, such as use_sim_time."""
    message = str(error)
    # rclpy's ParameterException messages end with ": <parameter name>", which the line below
    # already starts with.
    detail, _, name = message.rpartition(": ")
    expected = RCLPY_PARAMETER_TYPES.get(name)
    hint = f" (expected {expected})" if expected else ""
    return ParameterError(f"invalid parameter values:\n  {name}: {detail or message}{hint}")


def model_parameter_problems(weights: str, config: str, device: str) -> list[str]:
    """Check the model parameters before any model loads; return one message per problem.

    The problems are a missing model file, an engine configuration that does not load, and
    ``cuda`` without a visible CUDA device. Each message names the value and the fix.
    """
    problems = []
    try:
        resolve_model_weights(weights)
    except FileNotFoundError as error:
        problems.append(f"model.weights: {error}")
    if config:
        from vo_node.config import ConfigError, load_engine_config

        try:
            load_engine_config(config)
        except ConfigError as error:
            problems.append(
                f"model.config {config!r} is invalid: {error}. Pass an engine preset name "
                "(small, accurate, full) or an engine YAML path with -p model.config:=NAME"
            )
    if device == "cuda":
        import torch

        if not torch.cuda.is_available():
            problems.append(
                "model.device is 'cuda' but no CUDA device is visible; use "
                "-p model.device:=cpu or -p model.device:=auto"
            )
    return problems


def load_model_file(weights: str) -> tuple[Any, Any]:
    """Read and check the model file on the CPU; return ``(VONetwork, EngineConfig)``.

    The node calls this at start-up, so an unreadable file stops it before it subscribes.

    Raises:
        ParameterError: the file is missing, is not a vo_node model or does not match its stored
            configuration. The message names the file and how to make one.
    """
    from vo_node.config import ConfigError
    from vo_node.model.network import ModelFileError, load_model

    try:
        return load_model(resolve_model_weights(weights), "cpu")
    except FileNotFoundError as error:
        problem = str(error)
    except (ModelFileError, ConfigError) as error:
        problem = f"{error}. Pass a vo_node model file with -p model.weights:=PATH"
    raise ParameterError(f"invalid parameter values:\n  model.weights: {problem}")


def engine_threads(requested: int) -> int:
    """Return the torch CPU threads for ``model.threads``: ``requested``, or for 0 one fewer
    than the cores this process may use, at least 1.

    On 2 cores, with images published at 30 Hz from another process, 1 thread gave a median
    engine time of 67 ms against 76 ms for 2 (docs/benchmarks.md). A second torch thread
    competes with the executor and the publisher for the same cores.
    """
    if requested > 0:
        return requested
    return max(1, len(os.sched_getaffinity(0)) - 1)


def resolve_model_weights(weights: str) -> str:
    """Return the model file to load: ``weights``, or the shipped model when it is empty.

    Raises:
        FileNotFoundError: the file does not exist; the message names it and the fix.
    """
    from vo_node.model.network import default_model_path

    if weights:
        if not os.path.isfile(weights):
            raise FileNotFoundError(
                f"model file {weights} not found; pass an existing model file with "
                "-p model.weights:=PATH"
            )
        return weights
    try:
        return str(default_model_path())
    except FileNotFoundError as error:
        # Keep "default model ... not found (looked in ...)" and replace the generic fix.
        searched = str(error).split("; ")[0]
        raise FileNotFoundError(
            f"{searched}; pass a model file with -p model.weights:=PATH, or train one "
            f"with `{TRAIN_COMMAND}`"
        ) from None


def unknown_parameter_overrides(node) -> list[str]:
    """Return the names given with ``-p`` or ``--params-file`` that the node never declared.

    rclpy ignores such values silently, so a misspelt name (``path_max_lenght``) would leave the
    default in place without a word. ``qos_overrides.*`` names are left out because publishers
    declare them only when they use them.
    """
    return sorted(
        name for name in _parameter_overrides(node)
        if not node.has_parameter(name) and not name.startswith(QOS_OVERRIDES_PREFIX)
    )


def command_line_parameters(arguments: Sequence[str]) -> dict[str, str]:
    """Return the ``-p NAME:=VALUE`` (or ``--param``) values in the ROS arguments of
    ``arguments`` as text, keyed by NAME.

    ROS arguments follow ``--ros-args`` and end at ``--``. A later value of a name wins. NAME
    keeps a node name prefix (``vo_node:scale``) as given.
    """
    values: dict[str, str] = {}
    in_ros_arguments = False
    tokens = list(arguments)
    for index, token in enumerate(tokens):
        if token == ROS_ARGUMENTS_FLAG:
            in_ros_arguments = True
        elif token == ROS_ARGUMENTS_END:
            in_ros_arguments = False
        elif in_ros_arguments and token in PARAMETER_FLAGS and index + 1 < len(tokens):
            name, separator, text = tokens[index + 1].partition(":=")
            if separator:
                values[name] = text
    return values


def lost_override_problems(
    node, arguments: Sequence[str], skipped_names: Sequence[str] = ()
) -> list[str]:
    """Return one message per ``-p`` value in ``arguments`` that rclpy did not apply to ``node``.

    rcl (Jazzy 9.2, as installed from PyPI here) merges a ``-p`` value into a parameter that a
    parameter file or an earlier ``-p`` already set, but it keeps the old value of another
    type beside the new one. rclpy then reads the first of them in the order bool, integer,
    double, string. So with ``--params-file config/vo_node.yaml -p model.threads:=two`` the
    node would read 0 from the file, and the type check would never reject ``two``.
    A ``-p`` value counts as lost when rcl would not read its text as the value rclpy holds.
    Only the parameters of this node and of rclpy (``use_sim_time``) are checked. A ``-p`` with
    a node name prefix other than this node's name (a wildcard such as ``*:``) is skipped, and
    so are ``skipped_names``, the names of values passed to ``Node`` as ``parameter_overrides``.
    """
    overrides = _parameter_overrides(node)
    problems = []
    for argument_name, text in command_line_parameters(arguments).items():
        prefix, _, name = argument_name.rpartition(":")
        if prefix and prefix not in (node.get_name(), node.get_fully_qualified_name()):
            continue
        parameter = overrides.get(name)
        expected = _expected_form(name)
        if parameter is None or expected is None or name in skipped_names:
            continue
        if rcl_reads_as(text, parameter.value):
            continue
        problems.append(
            f"{name}: the -p value {text!r} was ignored because a parameter file or an earlier "
            f"-p sets {name} to {_plain(parameter.value)!r}, a value of another type, and "
            f"rclpy reads that one (expected {expected})"
        )
    return problems


def rcl_reads_as(text: str, value: Any) -> bool:
    """Return whether rcl reads the ``-p`` value ``text`` as ``value``, a parameter value.

    rcl parses the text as YAML and types each scalar with ``get_value`` in
    rcl_yaml_param_parser/src/parse.c of ros2/rcl. A quoted scalar is a string. A plain one is
    the first that fits of a bool spelling, a C ``strtol`` integer (base 0, so 0x1F and 017
    too), a C ``strtod`` double (1e-3, 0x1p3, .inf, nan) and a string. A flow sequence is an
    array of one element type. Text that rcl would reject, an empty sequence and nested values
    count as read, so that only a value known to differ is reported.
    """
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError:
        return True
    if isinstance(node, yaml.ScalarNode):
        return _rcl_scalar_reads_as(node, value)
    if not isinstance(node, yaml.SequenceNode):
        return True
    if not node.value or not all(isinstance(item, yaml.ScalarNode) for item in node.value):
        return True
    if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple, array.array)):
        return False
    return len(node.value) == len(value) and all(
        _rcl_scalar_reads_as(item, element) for item, element in zip(node.value, value)
    )


def _rcl_scalar_reads_as(node: yaml.ScalarNode, value: Any) -> bool:
    if node.style in ("'", '"'):
        return isinstance(value, str) and node.value == value
    text = node.value
    if isinstance(value, bool):
        spellings = RCL_TRUE_SPELLINGS if value else RCL_FALSE_SPELLINGS
        return text in spellings
    if isinstance(value, int):
        return _rcl_integer(text) == value
    if isinstance(value, float):
        number = _rcl_double(text)
        if number is None:
            return False
        return number == value or (math.isnan(number) and math.isnan(value))
    if isinstance(value, str):
        return text == value
    return False


def _rcl_integer(text: str) -> int | None:
    """Return ``text`` read like C ``strtol(text, &end, 0)`` that consumes all of it, or None."""
    match = STRTOL_PATTERN.fullmatch(text)
    if match is None:
        return None
    digits = match.group(2)
    if digits[:2] in ("0x", "0X"):
        number = int(digits[2:], 16)
    elif digits.startswith("0"):
        number = int(digits, 8)
    else:
        number = int(digits)
    number = -number if match.group(1) == "-" else number
    # strtol sets ERANGE outside the 64-bit long of Linux, and rcl then tries a double.
    return number if -(2**63) <= number < 2**63 else None


def _rcl_double(text: str) -> float | None:
    """Return ``text`` read like rcl reads a double (C ``strtod``), or None."""
    if text in RCL_SPECIAL_DOUBLES:
        return RCL_SPECIAL_DOUBLES[text]
    if "_" in text:
        # Python's float() accepts digit separators, which strtod does not.
        return None
    try:
        return float(text)
    except ValueError:
        pass
    if HEX_DOUBLE_PATTERN.fullmatch(text):
        return float.fromhex(text)
    return None


def _expected_form(name: str) -> str | None:
    if name in PARAMETERS_BY_NAME:
        return _type_name(PARAMETERS_BY_NAME[name])
    return RCLPY_PARAMETER_TYPES.get(name)


def _parameter_overrides(node) -> dict[str, Parameter]:
    # NOTE: rclpy has no public accessor for the overrides. Jazzy's rclpy.node.Node keeps them
    # in _parameter_overrides, and an rclpy without that attribute yields no overrides here.
    return getattr(node, "_parameter_overrides", {})


def check_value(name: str, value: Any) -> str | None:
    """Return the problem with ``value`` for parameter ``name``, or None when it is valid."""
    spec = PARAMETERS_BY_NAME[name]
    if spec.check is None:
        return None
    return spec.check(_plain(value))


def validate_update(parameters: list[Parameter]) -> SetParametersResult:
    """Accept or reject a ``set_parameters`` request; the reason names each invalid value."""
    problems = []
    for parameter in parameters:
        if parameter.name not in PARAMETERS_BY_NAME:
            continue
        message = check_value(parameter.name, parameter.value)
        if message:
            problems.append(f"{parameter.name} {message}")
    if problems:
        return SetParametersResult(successful=False, reason="; ".join(problems))
    return SetParametersResult(successful=True)


def _type_name(spec: ParameterSpec) -> str:
    if isinstance(spec.default, Parameter.Type):
        return "a list of numbers such as [1.0, 2.0]"
    if isinstance(spec.default, bool):
        return "true or false"
    if isinstance(spec.default, int):
        return "an integer"
    if isinstance(spec.default, float):
        return "a floating-point number written with a decimal point, such as 2.0"
    if isinstance(spec.default, list):
        return "a list of floating-point numbers such as [0.0, 1.0]"
    return "a string"


def _read(node, name: str) -> Any:
    try:
        return _plain(node.get_parameter(name).value)
    except ParameterUninitializedException:
        return None


def _plain(value: Any) -> Any:
    """Convert array parameter values (``array.array``) to lists."""
    if value is None or isinstance(value, (str, bool, int, float)):
        return value
    return list(value)
