"""Launch vo_node on a full ROS 2 install (needs launch and launch_ros, which PyPI lacks).

Example:
    ros2 launch vo_node vo.launch.py image_topic:=/cam0/image_raw \
        camera_info_topic:=/cam0/camera_info use_sim_time:=true
Without launch_ros, run the node directly: vo_node --ros-args --params-file ... -r image:=...
"""

from pathlib import Path

from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node
from launch_ros.parameter_descriptions import ParameterValue


def _default_params_file() -> str:
    """Return the installed config/vo_node.yaml, or the checkout's when not installed."""
    try:
        from ament_index_python.packages import get_package_share_directory

        return str(Path(get_package_share_directory("vo_node")) / "config" / "vo_node.yaml")
    except (ImportError, LookupError, ValueError, OSError):
        return str(Path(__file__).resolve().parent.parent / "config" / "vo_node.yaml")


def generate_launch_description() -> LaunchDescription:
    arguments = [
        DeclareLaunchArgument("image_topic", default_value="/camera/image_raw",
                              description="sensor_msgs/Image topic remapped to the node's 'image'"),
        DeclareLaunchArgument("camera_info_topic", default_value="/camera/camera_info",
                              description="CameraInfo topic remapped to the node's 'camera_info'"),
        DeclareLaunchArgument("params_file", default_value=_default_params_file(),
                              description="YAML parameter file (keys under /**)"),
        DeclareLaunchArgument("device", default_value="auto",
                              description="inference device: auto, cpu or cuda"),
        DeclareLaunchArgument("model", default_value="",
                              description="model file (.pt); empty uses the shipped model"),
        DeclareLaunchArgument("use_sim_time", default_value="false",
                              description="follow /clock, e.g. during bag playback"),
    ]
    node = Node(
        package="vo_node",
        executable="vo_node",
        name="vo_node",
        output="screen",
        parameters=[
            LaunchConfiguration("params_file"),
            {
                "model.device": LaunchConfiguration("device"),
                "model.weights": ParameterValue(LaunchConfiguration("model"), value_type=str),
                "use_sim_time": ParameterValue(LaunchConfiguration("use_sim_time"), value_type=bool),
            },
        ],
        remappings=[
            ("image", LaunchConfiguration("image_topic")),
            ("camera_info", LaunchConfiguration("camera_info_topic")),
        ],
    )
    return LaunchDescription(arguments + [node])
