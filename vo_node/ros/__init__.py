"""ROS 2 layer of vo_node: the node, message conversions, TF publishing and bag replay.

Importing a submodule imports rclpy and the ROS message packages; the engine never imports this
package.
"""
