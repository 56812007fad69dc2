"""Pinhole cameras with lens distortion, calibration files, and undistortion maps.

Two calibration formats are read:

* the ROS ``camera_info`` YAML written by ``camera_calibration`` and ``camera_info_manager``
  (``image_width``, ``image_height``, ``camera_matrix``, ``distortion_model``,
  ``distortion_coefficients``), with or without a leading ``---`` document marker;
* the EuRoC / Kalibr ``sensor.yaml`` (``resolution``, ``intrinsics: [fu, fv, cu, cv]``,
  ``distortion_model``, ``distortion_coefficients``).

Distortion models follow OpenCV: ``plumb_bob`` and ``radtan`` are the same radial-tangential
model ``(k1, k2, p1, p2[, k3[, k4, k5, k6]])`` of ``cv2.undistort``, and ``equidistant`` is the
``cv2.fisheye`` model ``(k1, k2, k3, k4)``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Mapping

import cv2
import numpy as np
import yaml

logger = logging.getLogger(__name__)

DISTORTION_MODELS = ("none", "plumb_bob", "radtan", "equidistant")
RADIAL_TANGENTIAL_MODELS = ("plumb_bob", "radtan")
RADIAL_TANGENTIAL_COEFFICIENT_COUNTS = (4, 5, 8)
"""Coefficient counts that ``cv2.undistort`` accepts for the radial-tangential model."""
EQUIDISTANT_COEFFICIENT_COUNT = 4
DISTORTION_FIX = (
    "List the calibrated coefficients in that order, or set distortion_model to the model "
    "they belong to."
)

CAMERA_MATRIX_LAYOUT = "the row-major 3x3 camera matrix [fx, 0, cx, 0, fy, cy, 0, 0, 1]"
T_BS_LAYOUT = "the row-major 4x4 transform from sensor to body, last row [0, 0, 0, 1]"
EUROC_INTRINSICS_LAYOUT = "[fu, fv, cu, cv]: focal lengths and principal point in pixels"
EUROC_RESOLUTION_LAYOUT = "[width, height] in pixels"

MODEL_ALIASES = {
    "": "none",
    "none": "none",
    "pinhole": "none",
    "plumb_bob": "plumb_bob",
    "radtan": "radtan",
    "radial-tangential": "radtan",
    "radial_tangential": "radtan",
    # OpenCV's rational model is the radial-tangential model with 8 coefficients.
    "rational_polynomial": "plumb_bob",
    "equidistant": "equidistant",
    "fisheye": "equidistant",
}

NEW_CAMERA_CHOICES = ("same", "optimal")


class CalibrationError(ValueError):
    """A calibration file or value is invalid; the message names it and the fix."""


@dataclass(frozen=True)
class PinholeCamera:
    """A pinhole camera with an optional lens distortion model.

    Attributes:
        width, height: image size in pixels.
        fx, fy, cx, cy: focal lengths and principal point in pixels; pixel centres sit at
            integer coordinates (the OpenCV convention).
        distortion_model: one of ``none``, ``plumb_bob``, ``radtan``, ``equidistant``.
        coefficients: distortion coefficients in the OpenCV order of that model.
    """

    width: int
    height: int
    fx: float
    fy: float
    cx: float
    cy: float
    distortion_model: str = "none"
    coefficients: tuple[float, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        for name in ("width", "height"):
            object.__setattr__(self, name, int(getattr(self, name)))
        for name in ("fx", "fy", "cx", "cy"):
            object.__setattr__(self, name, float(getattr(self, name)))
        object.__setattr__(self, "coefficients", tuple(float(c) for c in self.coefficients))
        if self.width <= 0 or self.height <= 0:
            raise CalibrationError(
                f"image size must be positive, got {self.width}x{self.height}; "
                "check image_width and image_height in the calibration"
            )
        if not (self.fx > 0 and self.fy > 0):
            raise CalibrationError(
                f"focal lengths must be positive, got fx={self.fx}, fy={self.fy}; "
                "check the camera matrix in the calibration"
            )
        if self.distortion_model not in DISTORTION_MODELS:
            raise CalibrationError(
                f"distortion model {self.distortion_model!r} is not supported; "
                f"use one of {', '.join(DISTORTION_MODELS)}"
            )
        _check_coefficient_count(self.distortion_model, self.coefficients)

    @property
    def intrinsics(self) -> np.ndarray:
        """``(4,)`` float64 ``[fx, fy, cx, cy]`` in pixels."""
        return np.array([self.fx, self.fy, self.cx, self.cy], dtype=np.float64)

    @property
    def matrix(self) -> np.ndarray:
        """``(3, 3)`` float64 camera matrix ``K``."""
        return np.array(
            [[self.fx, 0.0, self.cx], [0.0, self.fy, self.cy], [0.0, 0.0, 1.0]], dtype=np.float64
        )

    @property
    def size(self) -> tuple[int, int]:
        """Image size as ``(width, height)`` in pixels."""
        return (self.width, self.height)

    @property
    def is_distorted(self) -> bool:
        """Whether the model has a non-zero distortion coefficient."""
        return self.distortion_model != "none" and any(c != 0.0 for c in self.coefficients)

    def undistorted(self) -> "PinholeCamera":
        """Return this camera without its distortion model."""
        return replace(self, distortion_model="none", coefficients=())

    def scaled(self, factor: float) -> "PinholeCamera":
        """Return the camera of this image resized by ``factor`` (``cv2.resize`` convention).

        The new size is rounded to whole pixels and each axis uses its own exact ratio
        ``new_width / width``. Pixel centres stay at integer coordinates, so the principal point
        maps as ``(c + 0.5) * ratio - 0.5``. Distortion coefficients act on normalised
        coordinates and are kept unchanged.
        """
        if factor <= 0:
            raise CalibrationError(f"scale factor must be positive, got {factor}")
        width = max(1, int(round(self.width * factor)))
        height = max(1, int(round(self.height * factor)))
        ratio_x = width / self.width
        ratio_y = height / self.height
        return replace(
            self,
            width=width,
            height=height,
            fx=self.fx * ratio_x,
            fy=self.fy * ratio_y,
            cx=(self.cx + 0.5) * ratio_x - 0.5,
            cy=(self.cy + 0.5) * ratio_y - 0.5,
        )


def _check_coefficient_count(
    model: str, coefficients: tuple[float, ...], key: str = "coefficients"
) -> None:
    """Raise :class:`CalibrationError` when ``model`` does not take this many coefficients.

    ``key`` names the coefficients in the message, such as ``distortion_coefficients.data``.
    """
    count = len(coefficients)
    if model == "none" and count and any(coefficients):
        raise CalibrationError(
            f"{key} {list(coefficients)} are non-zero, but the distortion model is 'none'. Set "
            "distortion_model to the calibration's model or remove the coefficients."
        )
    if model in RADIAL_TANGENTIAL_MODELS and count not in RADIAL_TANGENTIAL_COEFFICIENT_COUNTS:
        raise CalibrationError(
            f"{key} has {count} values, but distortion model {model!r} needs 4, 5 or 8 "
            f"coefficients (k1 k2 p1 p2 [k3 [k4 k5 k6]]): {list(coefficients)}. {DISTORTION_FIX}"
        )
    if model == "equidistant" and count != EQUIDISTANT_COEFFICIENT_COUNT:
        raise CalibrationError(
            f"{key} has {count} values, but distortion model 'equidistant' needs 4 coefficients "
            f"(k1 k2 k3 k4): {list(coefficients)}. {DISTORTION_FIX}"
        )


# --------------------------------------------------------------------------------------------
# Calibration files


PLUMB_BOB_COEFFICIENTS = 5


def undistorted_camera_info(camera: PinholeCamera) -> dict[str, Any]:
    """Return the ROS ``sensor_msgs/CameraInfo`` fields of ``camera`` without distortion.

    Returns:
        ``width``, ``height`` (pixels), ``distortion_model`` (``plumb_bob``), ``d`` (5 zeros),
        ``k`` (3x3 row-major), ``r`` (3x3 identity) and ``p`` (3x4 row-major, no baseline) as
        lists of floats, keyed by the message's field names. ``camera``'s own distortion model
        is left out, so the result describes frames that are already undistorted.
    """
    fx, fy, cx, cy = camera.fx, camera.fy, camera.cx, camera.cy
    return {
        "width": camera.width,
        "height": camera.height,
        "distortion_model": "plumb_bob",
        "d": [0.0] * PLUMB_BOB_COEFFICIENTS,
        "k": [fx, 0.0, cx, 0.0, fy, cy, 0.0, 0.0, 1.0],
        "r": [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0],
        "p": [fx, 0.0, cx, 0.0, 0.0, fy, cy, 0.0, 0.0, 0.0, 1.0, 0.0],
    }


def load_camera(path: str | Path, distortion_model: str | None = None) -> PinholeCamera:
    """Load a camera from a ROS ``camera_info`` YAML or an EuRoC ``sensor.yaml``.

    Args:
        path: the YAML file.
        distortion_model: replaces the model named in the file (for example ``equidistant`` for
            a file from an older ROS fisheye calibrator that labels its ``k1..k4`` as
            ``plumb_bob``).

    Raises:
        CalibrationError: the file is missing, is not YAML, or lacks a required field.
    """
    path = Path(path)
    document = _read_yaml_document(path)
    if "camera_matrix" in document or "image_width" in document:
        camera = camera_from_camera_info(document, source=str(path), model_override=distortion_model)
    elif "intrinsics" in document:
        camera = camera_from_euroc_sensor(document, source=str(path), model_override=distortion_model)
    else:
        raise CalibrationError(
            f"{path}: not a camera calibration: expected a ROS camera_info YAML (image_width, "
            "image_height, camera_matrix, distortion_model, distortion_coefficients) or an EuRoC "
            f"sensor.yaml (resolution, intrinsics); found keys {sorted(document)}"
        )
    logger.debug("loaded camera %s from %s", camera, path)
    return camera


def _read_yaml_document(path: Path) -> dict[str, Any]:
    """Return the one non-empty YAML mapping in ``path`` (a leading ``---`` is allowed)."""
    if not path.is_file():
        raise CalibrationError(
            f"calibration file {path} not found; pass the camera YAML (ROS camera_info format)"
        )
    try:
        documents = [
            d for d in yaml.safe_load_all(path.read_text(encoding="utf-8")) if d is not None
        ]
    except UnicodeDecodeError:
        raise CalibrationError(
            f"calibration file {path} is not a text file (not valid UTF-8); pass the camera YAML "
            "(ROS camera_info format), not an image or another binary file"
        ) from None
    except yaml.YAMLError as error:
        raise CalibrationError(f"calibration file {path} is not valid YAML: {error}") from None
    if len(documents) != 1:
        raise CalibrationError(
            f"calibration file {path} must contain exactly one YAML mapping, found "
            f"{len(documents)} documents; keep one camera_info block in the file"
        )
    if not isinstance(documents[0], dict):
        kind = {list: "a list", str: "plain text"}.get(type(documents[0]), "a single value")
        raise CalibrationError(
            f"calibration file {path} must contain a YAML mapping of camera_info keys "
            f"(image_width: ..., camera_matrix: ...), but it contains {kind}; write one key: "
            "value per line"
        )
    return documents[0]


def camera_from_camera_info(
    document: Mapping[str, Any], source: str = "camera_info", model_override: str | None = None
) -> PinholeCamera:
    """Build a camera from a ROS ``camera_info`` mapping (YAML file or message fields).

    Accepts the YAML keys (``camera_matrix: {data: [...]}``) and the message field names
    (``k``/``K``, ``d``/``D``, ``width``, ``height``). A ``plumb_bob`` model with 4 coefficients
    is read as OpenCV reads it: ``k1 k2 p1 p2`` with ``k3 = 0``. Older ROS fisheye calibrators
    wrote equidistant ``k1..k4`` under that label, so a warning is logged, and
    ``model_override="equidistant"`` reads them as fisheye coefficients instead.
    """
    width = _require(document, ("image_width", "width"), source)
    height = _require(document, ("image_height", "height"), source)
    matrix_key, matrix_node = _require_field(document, ("camera_matrix", "k", "K"), source)
    matrix = _matrix_values(matrix_node, source, matrix_key, 9, CAMERA_MATRIX_LAYOUT)
    distortion_key, coefficients = _optional_values(
        document, ("distortion_coefficients", "d", "D"), source
    )
    model_name = model_override or str(document.get("distortion_model", "") or "")
    model = _normalise_model(model_name, source)
    if model == "none" and not any(coefficients):
        coefficients = []
    if not coefficients:
        # An empty D lists no distortion, and the node reads camera_info messages the same way.
        model = "none"
    if not model_override and model == "plumb_bob" and len(coefficients) == 4:
        logger.warning(
            "%s: plumb_bob with 4 coefficients, read as k1 k2 p1 p2 with k3 = 0. If the file "
            "comes from a ROS fisheye calibrator, these are equidistant k1..k4: pass "
            "distortion_model='equidistant'",
            source,
        )
    _check_distortion(model, coefficients, distortion_key, source)
    return _make_camera(width, height, matrix[0], matrix[4], matrix[2], matrix[5], model,
                        coefficients, source)


def camera_from_euroc_sensor(
    document: Mapping[str, Any], source: str = "sensor.yaml", model_override: str | None = None
) -> PinholeCamera:
    """Build a camera from an EuRoC / Kalibr ``sensor.yaml`` mapping."""
    resolution = _matrix_values(
        _require(document, ("resolution",), source), source, "resolution", 2,
        EUROC_RESOLUTION_LAYOUT,
    )
    if not all(value.is_integer() for value in resolution):
        raise CalibrationError(
            f"{source}: resolution must be whole numbers ({EUROC_RESOLUTION_LAYOUT}), "
            f"got {resolution}. Write the image size, such as [752, 480]."
        )
    intrinsics = _matrix_values(
        _require(document, ("intrinsics",), source), source, "intrinsics", 4,
        EUROC_INTRINSICS_LAYOUT,
    )
    camera_model = str(document.get("camera_model", "pinhole"))
    if camera_model != "pinhole":
        raise CalibrationError(
            f"{source}: camera_model {camera_model!r} is not supported; only pinhole cameras are"
        )
    model = _normalise_model(model_override or str(document.get("distortion_model", "")), source)
    distortion_key, coefficients = _optional_values(document, ("distortion_coefficients",), source)
    _check_distortion(model, coefficients, distortion_key, source)
    fu, fv, cu, cv = intrinsics
    return _make_camera(resolution[0], resolution[1], fu, fv, cu, cv, model, coefficients, source)


def euroc_body_from_sensor(document: Mapping[str, Any], source: str = "sensor.yaml") -> np.ndarray:
    """Return the ``(4, 4)`` extrinsic ``T_BS`` (sensor to body) of an EuRoC ``sensor.yaml``."""
    values = _matrix_values(_require(document, ("T_BS",), source), source, "T_BS", 16, T_BS_LAYOUT)
    transform = np.asarray(values, dtype=np.float64).reshape(4, 4)
    if not np.allclose(transform[3], [0.0, 0.0, 0.0, 1.0]):
        raise CalibrationError(f"{source}: the last row of T_BS must be [0, 0, 0, 1]")
    return transform


def _make_camera(
    width: Any, height: Any, fx: Any, fy: Any, cx: Any, cy: Any, model: str,
    coefficients: list[float], source: str,
) -> PinholeCamera:
    try:
        return PinholeCamera(
            width=int(width), height=int(height), fx=float(fx), fy=float(fy), cx=float(cx),
            cy=float(cy), distortion_model=model, coefficients=tuple(coefficients),
        )
    except (TypeError, ValueError) as error:
        raise CalibrationError(f"{source}: {error}") from None


def _normalise_model(name: str, source: str) -> str:
    key = name.strip().lower()
    if key not in MODEL_ALIASES:
        raise CalibrationError(
            f"{source}: distortion model {name!r} is not supported; use one of "
            f"{', '.join(sorted(k for k in MODEL_ALIASES if k))}"
        )
    return MODEL_ALIASES[key]


def _check_distortion(model: str, coefficients: list[float], key: str, source: str) -> None:
    """Raise :class:`CalibrationError` naming ``source`` and ``key`` on a wrong coefficient count."""
    try:
        _check_coefficient_count(model, tuple(coefficients), key)
    except CalibrationError as error:
        raise CalibrationError(f"{source}: {error}") from None


def _require(document: Mapping[str, Any], keys: tuple[str, ...], source: str) -> Any:
    return _require_field(document, keys, source)[1]


def _require_field(
    document: Mapping[str, Any], keys: tuple[str, ...], source: str
) -> tuple[str, Any]:
    """Return the first of ``keys`` present in ``document`` (not null) and its value."""
    for key in keys:
        if key in document and document[key] is not None:
            return key, document[key]
    raise CalibrationError(
        f"{source}: missing field {keys[0]!r}; a camera calibration needs it (see the ROS "
        "camera_info YAML format)"
    )


def _optional_values(
    document: Mapping[str, Any], keys: tuple[str, ...], source: str
) -> tuple[str, list[float]]:
    """Return the label and values of the first of ``keys`` present, else ``(keys[0], [])``."""
    for key in keys:
        if key in document and document[key] is not None:
            node = document[key]
            return _field_label(key, node), _matrix_values(node, source, key)
    return keys[0], []


def _field_label(key: str, node: Any) -> str:
    """Return how a message names the list of ``key``: ``camera_matrix.data`` or ``k``."""
    return f"{key}.data" if isinstance(node, Mapping) else key


def _matrix_values(
    node: Any, source: str, key: str, expected: int | None = None, layout: str | None = None
) -> list[float]:
    """Read ``{rows, cols, data}`` or a plain list as floats, checking the count.

    Args:
        node: the value of ``key`` in the calibration.
        source: the file or topic, which starts every message.
        key: the field's name; messages name ``key.data`` for the ``{rows, cols, data}`` form.
        expected: the number of values, or None for any number.
        layout: what the values are, in order, for the messages.
    """
    label = _field_label(key, node)
    described = f" ({layout})" if layout else ""
    data = node.get("data") if isinstance(node, Mapping) else node
    if not isinstance(data, (list, tuple)):
        raise CalibrationError(
            f"{source}: {label} must be a list of numbers{described}, got {node!r}"
        )
    try:
        values = [float(value) for value in data]
    except (TypeError, ValueError):
        raise CalibrationError(
            f"{source}: {label} contains a value that is not a number: {list(data)!r}. Write "
            f"each value as a number{described}."
        ) from None
    if expected is not None and len(values) != expected:
        count = f"{len(values)} value" if len(values) == 1 else f"{len(values)} values"
        raise CalibrationError(
            f"{source}: {label} has {count}, expected {expected}{described}: {values}. Write "
            f"all {expected} values in that order."
        )
    if not all(np.isfinite(values)):
        raise CalibrationError(
            f"{source}: {label} contains a non-finite value: {values}. Replace it with the "
            "calibrated number."
        )
    return values


# --------------------------------------------------------------------------------------------
# Undistortion


class Undistorter:
    """Precomputed remap from a distorted camera to a pinhole camera of the same image size.

    The output camera matrix is chosen by ``new_camera``:

    * ``same`` (default): ``K`` itself, as DPVO does for EuRoC. Focal lengths and principal
      point stay as calibrated, so the output intrinsics are the familiar numbers. With barrel
      distortion every output pixel maps inside the input image; with strong pincushion
      distortion the corners may be black.
    * ``optimal``: ``cv2.getOptimalNewCameraMatrix(alpha=0)`` for the radial-tangential model and
      ``cv2.fisheye.estimateNewCameraMatrixForUndistortRectify(balance=0)`` for the equidistant
      one, which crop to valid pixels only.
    """

    def __init__(self, camera: PinholeCamera, new_camera: str = "same") -> None:
        if new_camera not in NEW_CAMERA_CHOICES:
            raise CalibrationError(
                f"new_camera must be one of {', '.join(NEW_CAMERA_CHOICES)}, got {new_camera!r}"
            )
        self.source = camera
        self.enabled = camera.is_distorted
        if not self.enabled:
            self.camera = camera.undistorted()
            self._maps = None
            return
        new_matrix = self._new_matrix(camera, new_camera)
        self.camera = replace(
            camera.undistorted(),
            fx=float(new_matrix[0, 0]),
            fy=float(new_matrix[1, 1]),
            cx=float(new_matrix[0, 2]),
            cy=float(new_matrix[1, 2]),
        )
        self._maps = self._build_maps(camera, new_matrix)

    @staticmethod
    def _new_matrix(camera: PinholeCamera, new_camera: str) -> np.ndarray:
        matrix = camera.matrix
        if new_camera == "same":
            return matrix
        coefficients = np.asarray(camera.coefficients, dtype=np.float64)
        if camera.distortion_model == "equidistant":
            return cv2.fisheye.estimateNewCameraMatrixForUndistortRectify(
                matrix, coefficients, camera.size, np.eye(3), balance=0.0
            )
        new_matrix, _ = cv2.getOptimalNewCameraMatrix(matrix, coefficients, camera.size, 0.0)
        return new_matrix

    @staticmethod
    def _build_maps(camera: PinholeCamera, new_matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        coefficients = np.asarray(camera.coefficients, dtype=np.float64)
        if camera.distortion_model == "equidistant":
            return cv2.fisheye.initUndistortRectifyMap(
                camera.matrix, coefficients, np.eye(3), new_matrix, camera.size, cv2.CV_16SC2
            )
        return cv2.initUndistortRectifyMap(
            camera.matrix, coefficients, None, new_matrix, camera.size, cv2.CV_16SC2
        )

    def __call__(self, image: np.ndarray) -> np.ndarray:
        """Undistort ``image`` ``(H, W)`` or ``(H, W, C)`` of the source camera's size."""
        height, width = image.shape[:2]
        if (width, height) != self.source.size:
            raise CalibrationError(
                f"image is {width}x{height} but the calibration is "
                f"{self.source.width}x{self.source.height}; use the calibration of this camera"
            )
        if self._maps is None:
            return image
        return cv2.remap(
            image, self._maps[0], self._maps[1], cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT
        )
