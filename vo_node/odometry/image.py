"""Image preparation for tracking: channel replication, downscaling and a crop to multiples of 16.

The network downsamples by 4 twice inside its encoders and pools the matching map by 4 for the
correlation pyramid, so the frontend needs frame sizes divisible by 16. Cropping (rather than
padding) keeps every pixel real; the crop is centred and the principal point follows it.
"""

from __future__ import annotations

from typing import Sequence

import cv2
import numpy as np
import torch

SIZE_MULTIPLE = 16
"""Prepared frames have heights and widths divisible by this many pixels."""
MIN_PREPARED_SIZE = 32
"""Smallest prepared height or width (pixels): 8 pixels at 1/4 resolution, room for 3x3 patches."""


def prepare_image(
    image: np.ndarray, intrinsics: Sequence[float] | np.ndarray, max_width: int = 0
) -> tuple[torch.Tensor, np.ndarray]:
    """Convert a camera frame to the network's input and adjust the intrinsics to match.

    Args:
        image: ``(H, W)`` grey, ``(H, W, 1)`` grey or ``(H, W, 3)`` colour frame, ``uint8``. The
            channel order is kept as given.
        intrinsics: ``[fx, fy, cx, cy]`` in pixels of ``image``.
        max_width: frames wider than this many pixels are downscaled (aspect ratio kept, area
            interpolation) before cropping; 0 keeps the size.

    Returns:
        ``(3, H', W')`` float32 CPU tensor with values 0..255, ``H'`` and ``W'`` multiples of 16,
        and the ``(4,)`` float64 intrinsics of that tensor.

    Raises:
        ValueError: on a wrong dtype, shape or channel count, invalid intrinsics, a negative
            ``max_width``, or a frame too small to track.
    """
    pixels = _check_image(image)
    camera = _check_intrinsics(intrinsics)
    if max_width < 0:
        raise ValueError(f"max_width must be 0 (keep size) or positive, got {max_width}")

    if max_width and pixels.shape[1] > max_width:
        pixels, camera = _downscale(pixels, camera, max_width)
    pixels, camera = _center_crop(pixels, camera, SIZE_MULTIPLE)

    tensor = torch.from_numpy(np.ascontiguousarray(pixels)).permute(2, 0, 1).float()
    if tensor.shape[0] == 1:
        # Grey frames are resized and cropped as one channel and replicated afterwards. Area
        # interpolation treats channels independently, so the result is the same.
        tensor = tensor.expand(3, -1, -1).contiguous()
    return tensor, camera


def _check_image(image: np.ndarray) -> np.ndarray:
    """Return ``image`` as ``(H, W, 1)`` or ``(H, W, 3)`` uint8 or raise a ValueError naming
    the problem."""
    if not isinstance(image, np.ndarray):
        raise ValueError(f"image must be a numpy array, got {type(image).__name__}")
    if image.dtype != np.uint8:
        raise ValueError(
            f"image must have dtype uint8, got {image.dtype}; convert 16-bit or float frames "
            "to 8-bit (0..255) before tracking"
        )
    if image.ndim == 2:
        image = image[:, :, None]
    if image.ndim != 3:
        raise ValueError(f"image must have shape (H, W) or (H, W, C), got {image.shape}")
    channels = image.shape[2]
    if channels not in (1, 3):
        raise ValueError(
            f"image must have 1 or 3 channels, got {channels}; drop the alpha channel of "
            "RGBA/BGRA frames first"
        )
    return image


def _check_intrinsics(intrinsics: Sequence[float] | np.ndarray) -> np.ndarray:
    camera = np.asarray(intrinsics, dtype=np.float64).reshape(-1)
    if camera.shape != (4,):
        raise ValueError(f"intrinsics must be [fx, fy, cx, cy], got {len(camera)} values")
    if not np.all(np.isfinite(camera)) or camera[0] <= 0 or camera[1] <= 0:
        raise ValueError(
            f"intrinsics must be finite with positive focal lengths, got {camera.tolist()}"
        )
    return camera


def _downscale(
    pixels: np.ndarray, camera: np.ndarray, max_width: int
) -> tuple[np.ndarray, np.ndarray]:
    """Resize to ``max_width`` pixels wide; pixel centres map as ``x' = (x + 0.5) s - 0.5``."""
    height, width = pixels.shape[:2]
    new_width = max_width
    new_height = max(1, int(round(height * max_width / width)))
    resized = cv2.resize(pixels, (new_width, new_height), interpolation=cv2.INTER_AREA)
    if resized.ndim == 2:
        resized = resized[:, :, None]  # cv2 drops a single channel axis
    scale_x = new_width / width
    scale_y = new_height / height
    fx, fy, cx, cy = camera
    scaled = np.array(
        [fx * scale_x, fy * scale_y, (cx + 0.5) * scale_x - 0.5, (cy + 0.5) * scale_y - 0.5]
    )
    return resized, scaled


def _center_crop(
    pixels: np.ndarray, camera: np.ndarray, multiple: int
) -> tuple[np.ndarray, np.ndarray]:
    """Crop equal margins so both sides become multiples of ``multiple``; shift the centre."""
    height, width = pixels.shape[:2]
    new_height = height - height % multiple
    new_width = width - width % multiple
    if min(new_height, new_width) < MIN_PREPARED_SIZE:
        raise ValueError(
            f"image of {width}x{height} pixels is too small to track: after cropping to "
            f"multiples of {multiple} it must be at least {MIN_PREPARED_SIZE}x{MIN_PREPARED_SIZE}"
        )
    top = (height - new_height) // 2
    left = (width - new_width) // 2
    cropped = pixels[top : top + new_height, left : left + new_width]
    shifted = camera.copy()
    shifted[2] -= left
    shifted[3] -= top
    return cropped, shifted
