"""Render images and z-depth of a synthetic scene, then apply per-frame camera effects.

Rendering a frame takes three steps:

1. Ray casting (:func:`vo_node.synthetic.scene.intersect`) gives each pixel its nearest face,
   inverse depth and in-plane coordinates ``(s, t)``.
2. Texturing: ``(s, t)`` map to texel coordinates of the face's tile (rotated, shifted, mirrored
   repetition), which are sampled bilinearly from the atlas mip pyramid. The mip level follows
   the texel footprint of a pixel (depth, focal length and surface slant), blended linearly
   between the two nearest levels so that far or slanted surfaces do not alias.
3. Shading: a static point light (Lambertian term with a distance falloff) plus ambient light,
   times the face's colour gains and a coarse brightness overlay. Shading depends only on the
   world point, so a surface looks the same from every pose before the camera effects.

Camera effects (:func:`apply_camera_effects`) act per frame: exposure gain that drifts over the
clip, optional small motion blur along the frame's mean image motion, and Gaussian noise.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import cv2
import numpy as np

from vo_node.synthetic.motion import quaternion_to_matrix
from vo_node.synthetic.scene import Scene, SurfaceHits, intersect
from vo_node.synthetic.textures import OVERLAY_SIZE, PYRAMID_LEVELS, TextureBank, mirror_coordinates

logger = logging.getLogger(__name__)

LIGHT_GAIN = 2.0
"""Scale of the point light's Lambertian term before the ambient share is mixed in."""
MIN_SLANT_COSINE = 0.1
"""Lower bound of ``|cos|`` between ray and normal when choosing the mip level."""
OVERLAY_RANGE = (0.3, 1.7)
"""Clip range of the multiplicative brightness overlay."""
MAX_BLUR_LENGTH_PX = 31.0
"""Maximum motion-blur streak length (pixels). Longer image motion is blurred by this much."""


@dataclass
class CameraEffects:
    """Per-clip settings of the camera effects.

    Attributes:
        exposure: ``(N,)`` per-frame gain applied to the rendered radiance.
        noise_sigma: standard deviation of the additive Gaussian noise, in 8-bit intensity levels.
        blur_fraction: share of each frame's mean image motion smeared into motion blur
            (0 disables blur).
    """

    exposure: np.ndarray
    noise_sigma: float
    blur_fraction: float


class Renderer:
    """Renders one scene with fixed intrinsics and image size.

    Args:
        scene: the scene.
        bank: texture bank the scene's ``texture_ids`` refer to.
        intrinsics: ``(4,)`` ``[fx, fy, cx, cy]`` in pixels.
        height, width: image size in pixels.
    """

    def __init__(
        self, scene: Scene, bank: TextureBank, intrinsics: np.ndarray, height: int, width: int
    ) -> None:
        if np.max(scene.faces.texture_ids) >= bank.size:
            raise ValueError(
                f"scene uses texture {int(np.max(scene.faces.texture_ids))} but the bank has "
                f"{bank.size} tiles; build the scene with texture_count={bank.size}"
            )
        self.scene = scene
        self.bank = bank
        self.intrinsics = np.asarray(intrinsics, dtype=np.float64)
        self.height = height
        self.width = width
        fx, fy, cx, cy = self.intrinsics
        columns = (np.arange(width, dtype=np.float32) - np.float32(cx)) / np.float32(fx)
        rows = (np.arange(height, dtype=np.float32) - np.float32(cy)) / np.float32(fy)
        self._ray_x = np.ascontiguousarray(np.broadcast_to(columns[None, :], (height, width)))
        self._ray_y = np.ascontiguousarray(np.broadcast_to(rows[:, None], (height, width)))
        self._ray_norm_squared = self._ray_x**2 + self._ray_y**2 + np.float32(1.0)
        self._ray_norm = np.sqrt(self._ray_norm_squared)
        self._mean_focal = float(np.sqrt(fx * fy))
        self._face_table = self._build_face_table()
        self._level_scales = (0.5 ** np.arange(PYRAMID_LEVELS + 1)).astype(np.float32)
        self._level_columns = np.append(bank.level_columns, bank.level_columns[-1])

    def _build_face_table(self) -> np.ndarray:
        """``(len(_FACE_COLUMNS), F)`` float32 per-face constants, gathered per pixel."""
        faces, scene = self.scene.faces, self.scene
        density = faces.texels_per_unit
        origins = self.bank.tile_origins[faces.texture_ids]
        # n . (L - P) is the same for every point P of a plane, so the Lambertian numerator is
        # a per-face constant.
        to_light = scene.light_position - faces.origins
        light_offset = np.abs(np.einsum("fi,fi->f", faces.normals, to_light))
        columns = {
            "cos": density * np.cos(faces.texture_angles),
            "sin": density * np.sin(faces.texture_angles),
            "offset_x": faces.texture_offsets[:, 0],
            "offset_y": faces.texture_offsets[:, 1],
            "origin_x": origins[:, 0],
            "origin_y": origins[:, 1],
            "density": density,
            "overlay_density": OVERLAY_SIZE / faces.overlay_units,
            "overlay_x": faces.overlay_offsets[:, 0],
            "overlay_y": faces.overlay_offsets[:, 1],
            "overlay_strength": faces.overlay_strengths,
            "light_offset": light_offset,
            "gain_r": faces.colour_gains[:, 0],
            "gain_g": faces.colour_gains[:, 1],
            "gain_b": faces.colour_gains[:, 2],
        }
        return np.stack([np.asarray(columns[name], dtype=np.float32) for name in _FACE_COLUMNS])

    def render(self, pose_wc: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Render the radiance image and z-depth seen from ``pose_wc``.

        Args:
            pose_wc: ``(7,)`` pose ``T_world_cam`` ``[t, q]``.

        Returns:
            ``radiance`` ``(H, W, 3)`` float32 linear RGB on the 8-bit scale (0-255 before
            exposure, may exceed 255), and ``depth`` ``(H, W)`` float32 z-depth in scene units.
        """
        rotation_wc = quaternion_to_matrix(np.asarray(pose_wc[3:], dtype=np.float64))
        centre = np.asarray(pose_wc[:3], dtype=np.float64)
        hits = intersect(
            self.scene.faces, rotation_wc, centre, self.intrinsics, self.height, self.width
        )
        depth = hits.depth
        per_pixel = dict(zip(_FACE_COLUMNS, np.take(self._face_table, hits.face_ids, axis=1)))
        albedo = self._sample_texture(hits, depth, centre, per_pixel)
        light = self._light(depth, rotation_wc, centre, per_pixel)
        light *= self._overlay(hits, per_pixel)
        gains = np.stack([per_pixel["gain_r"], per_pixel["gain_g"], per_pixel["gain_b"]], axis=-1)
        return albedo * (light[..., None] * gains), depth

    def _sample_texture(
        self, hits: SurfaceHits, depth: np.ndarray, centre: np.ndarray, per_pixel: dict
    ) -> np.ndarray:
        """Sample each pixel's tile with trilinear mip filtering; returns ``(H, W, 3)`` float32."""
        cos, sin = per_pixel["cos"], per_pixel["sin"]
        texel_x = cos * hits.s - sin * hits.t + per_pixel["offset_x"]
        texel_y = sin * hits.s + cos * hits.t + per_pixel["offset_y"]
        atlas_x = per_pixel["origin_x"] + mirror_coordinates(texel_x) + np.float32(0.5)
        atlas_y = per_pixel["origin_y"] + mirror_coordinates(texel_y) + np.float32(0.5)

        level = self._mip_level(hits, depth, centre, per_pixel)
        lower = level.astype(np.int32)
        fraction = (level - lower.astype(np.float32))[..., None]
        finer = self._sample_level(atlas_x, atlas_y, lower)
        coarser = self._sample_level(atlas_x, atlas_y, lower + 1)
        return finer + (coarser - finer) * fraction

    def _sample_level(
        self, atlas_x: np.ndarray, atlas_y: np.ndarray, level: np.ndarray
    ) -> np.ndarray:
        """Bilinearly sample the mip atlas at per-pixel integer ``level``; ``(H, W, 3)`` float32."""
        # Level l stores the level-0 texel at x at column (x + 0.5) / 2**l - 0.5 of its block.
        # atlas_x and atlas_y already include the + 0.5.
        scale = self._level_scales[level]
        map_x = atlas_x * scale + (self._level_columns[level] - np.float32(0.5))
        map_y = atlas_y * scale - np.float32(0.5)
        sampled = cv2.remap(
            self.bank.mip_atlas, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101
        )
        return sampled.astype(np.float32)

    def _mip_level(
        self, hits: SurfaceHits, depth: np.ndarray, centre: np.ndarray, per_pixel: dict
    ) -> np.ndarray:
        """``(H, W)`` float32 mip level: log2 of texels per pixel, clipped to the pyramid."""
        faces = self.scene.faces
        # n . X is constant over a plane, and X = z * ray, so |cos| = |n . X| / (z * |ray|).
        plane_distance = np.abs(np.einsum("fi,fi->f", faces.normals, faces.origins - centre))
        cosine = np.take(plane_distance.astype(np.float32), hits.face_ids) * hits.inverse_depth
        cosine = np.maximum(cosine / self._ray_norm, np.float32(MIN_SLANT_COSINE))
        # Geometric mean of the footprint along and across the slant direction.
        # NOTE: isotropic filtering; grazing ground planes still alias a little along the slant.
        footprint = per_pixel["density"] * depth / (np.float32(self._mean_focal) * np.sqrt(cosine))
        level = np.log2(np.maximum(footprint, np.float32(1.0)))
        return np.minimum(level, np.float32(PYRAMID_LEVELS - 1))

    def _light(
        self, depth: np.ndarray, rotation_wc: np.ndarray, centre: np.ndarray, per_pixel: dict
    ) -> np.ndarray:
        """``(H, W)`` float32 ambient plus point-light brightness of each pixel."""
        scene = self.scene
        to_light_world = scene.light_position - centre
        to_light = (rotation_wc.T @ to_light_world).astype(np.float32)
        # |L - z * ray|^2 expanded, with L the light in camera coordinates.
        along = self._ray_x * to_light[0] + self._ray_y * to_light[1] + to_light[2]
        squared = np.float32(to_light_world @ to_light_world) - 2 * depth * along
        squared += depth * depth * self._ray_norm_squared
        squared = np.maximum(squared, np.float32(1e-6))
        lambert = per_pixel["light_offset"] / np.sqrt(squared)
        falloff = 1.0 / (1.0 + squared * np.float32(1.0 / scene.light_range**2))
        share = np.float32((1.0 - scene.ambient) * LIGHT_GAIN)
        return np.float32(scene.ambient) + share * lambert * falloff

    def _overlay(self, hits: SurfaceHits, per_pixel: dict) -> np.ndarray:
        """``(H, W)`` float32 coarse multiplicative brightness variation from the overlay tile."""
        density = per_pixel["overlay_density"]
        overlay_x = _wrap(hits.s * density + per_pixel["overlay_x"], OVERLAY_SIZE)
        overlay_y = _wrap(hits.t * density + per_pixel["overlay_y"], OVERLAY_SIZE)
        noise = cv2.remap(
            self.bank.overlay, overlay_x, overlay_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_WRAP
        )
        overlay = 1.0 + per_pixel["overlay_strength"] * noise
        return np.clip(overlay, *OVERLAY_RANGE)


_FACE_COLUMNS = (
    "cos",
    "sin",
    "offset_x",
    "offset_y",
    "origin_x",
    "origin_y",
    "density",
    "overlay_density",
    "overlay_x",
    "overlay_y",
    "overlay_strength",
    "light_offset",
    "gain_r",
    "gain_g",
    "gain_b",
)
"""Rows of the per-face table that :class:`Renderer` gathers for every pixel."""


def _wrap(values: np.ndarray, period: float) -> np.ndarray:
    """Reduce ``values`` into ``[0, period)`` (a fast float32 modulo)."""
    cycles = values * np.float32(1.0 / period)
    return (cycles - np.floor(cycles)) * np.float32(period)


def sample_camera_effects(
    rng: np.random.Generator, num_frames: int, first_mean_radiance: float, enabled: bool
) -> CameraEffects:
    """Draw exposure, noise and blur settings for a clip.

    The first frame's exposure brings its mean brightness to a random target (auto-exposure).
    With ``enabled`` False the exposure stays at that value and there is no noise or blur.
    """
    target_mean = rng.uniform(90.0, 140.0)
    base = target_mean / max(first_mean_radiance, 1e-3)
    drift_step = rng.uniform(0.0, 0.03)
    steps = rng.standard_normal(num_frames) * drift_step
    steps[0] = 0.0
    drift = np.clip(np.exp(np.cumsum(steps)), 0.7, 1.4)
    noise_sigma = rng.uniform(0.5, 4.0)
    blur_fraction = rng.uniform(0.1, 0.5) if rng.random() < 0.25 else 0.0
    if not enabled:
        return CameraEffects(np.full(num_frames, base), 0.0, 0.0)
    return CameraEffects(base * drift, float(noise_sigma), float(blur_fraction))


def apply_camera_effects(
    radiance: np.ndarray,
    frame: int,
    effects: CameraEffects,
    image_motion: np.ndarray,
    rng: np.random.Generator,
) -> np.ndarray:
    """Turn one frame's radiance into an 8-bit RGB image.

    Args:
        radiance: ``(H, W, 3)`` float32 output of :meth:`Renderer.render`.
        frame: frame index into ``effects.exposure``.
        effects: the clip's settings.
        image_motion: ``(2,)`` mean image motion ``(du, dv)`` in pixels since the previous
            frame; blur smears ``effects.blur_fraction`` of it.
        rng: generator for the noise.

    Returns:
        ``(H, W, 3)`` uint8 RGB image.
    """
    image = radiance * np.float32(effects.exposure[frame])
    blur_length = effects.blur_fraction * float(np.hypot(*image_motion))
    if not np.isfinite(blur_length):
        blur_length = 0.0
    blur_length = min(blur_length, MAX_BLUR_LENGTH_PX)
    if blur_length >= 1.5:
        image = cv2.filter2D(image, -1, _line_kernel(image_motion, blur_length),
                             borderType=cv2.BORDER_REFLECT_101)
    if effects.noise_sigma > 0.0:
        # cv2.randn is several times faster than numpy's normal sampler; seeding OpenCV's
        # thread-local generator from rng keeps the result deterministic.
        noise = np.empty((image.shape[0], image.shape[1] * image.shape[2]), np.float32)
        cv2.setRNGSeed(int(rng.integers(0, 2**31 - 1)))
        cv2.randn(noise, 0.0, effects.noise_sigma)
        image = image + noise.reshape(image.shape)
    return np.clip(np.rint(image), 0.0, 255.0).astype(np.uint8)


def _line_kernel(direction: np.ndarray, length: float) -> np.ndarray:
    """Normalised kernel of a centred line segment of ``length`` pixels along ``direction``."""
    size = int(np.ceil(length)) | 1
    kernel = np.zeros((size, size), np.float32)
    unit = np.asarray(direction, dtype=np.float64) / max(float(np.hypot(*direction)), 1e-9)
    half = (length - 1.0) / 2.0
    centre = size // 2
    for fraction in np.linspace(-half, half, 4 * size):
        x = int(round(centre + fraction * unit[0]))
        y = int(round(centre + fraction * unit[1]))
        kernel[y, x] = 1.0
    return kernel / kernel.sum()
