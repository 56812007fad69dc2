"""Input and output: sequence readers, calibration, undistortion and trajectory files."""

from vo_node.io.camera import CalibrationError, PinholeCamera, Undistorter, load_camera
from vo_node.io.sequence import Frame, Sequence, SequenceError, open_sequence
from vo_node.io.trajectory import Trajectory, TrajectoryError, read_tum, write_tum

__all__ = [
    "CalibrationError",
    "Frame",
    "PinholeCamera",
    "Sequence",
    "SequenceError",
    "Trajectory",
    "TrajectoryError",
    "Undistorter",
    "load_camera",
    "open_sequence",
    "read_tum",
    "write_tum",
]
