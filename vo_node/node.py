"""Entry point ``python -m vo_node.node``: the ROS 2 node, same as ``vo_node.ros.node``."""

import sys

from vo_node.ros.node import VONode, main

__all__ = ["VONode", "main"]

if __name__ == "__main__":
    sys.exit(main())
