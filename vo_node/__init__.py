"""vo_node: learned monocular visual odometry (DPVO-style) in plain torch, with a ROS 2 node."""

__version__ = "0.1.0"
