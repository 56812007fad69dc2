"""Texture bank: photo crops from scikit-image's bundled images plus procedural textures.

Every texture is a square RGB tile of ``TILE_SIZE`` texels. The tiles are packed into one atlas
image with a mirrored gutter around each tile. The atlas's mip pyramid (each level half the size
of the one before) is laid out side by side in a single image, so the renderer samples any tile
at any level with one ``cv2.remap`` call. Surfaces repeat their tile by mirroring (see
:func:`mirror_coordinates`), so the pattern stays continuous across tile edges.

A second, single-channel ``overlay`` tile of periodic 1/f noise modulates surface brightness at a
coarser scale than the main tile, so that a large wall does not show one repeating pattern.

The bank depends only on its seed: the photos ship with scikit-image (no download), and the
procedural textures use a ``numpy.random.Generator`` seeded from it.

A bank built with ``low_texture=True`` appends low-texture tiles after the standard ones: plain
light surfaces with faint grain, and panels crossed by a few thin joint lines, like the painted
walls and ceiling panels of indoor scenes. They are drawn from a separate generator, so the
standard tiles and the overlay are the same in both banks.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass
from typing import Callable

import cv2
import numpy as np

logger = logging.getLogger(__name__)

TILE_SIZE = 256
"""Side of one texture tile at pyramid level 0, in texels."""
GUTTER = 16
"""Mirrored border around each tile in the atlas, in level-0 texels."""
PYRAMID_LEVELS = 6
"""Mip levels 0..5; level 5 stores each tile as 8x8 texels."""
OVERLAY_SIZE = 256
"""Side of the periodic brightness-overlay tile, in texels."""

PHOTO_NAMES = (
    "astronaut",
    "brick",
    "grass",
    "gravel",
    "coffee",
    "rocket",
    "camera",
    "coins",
    "chelsea",
    "moon",
    "page",
    "text",
    "hubble_deep_field",
    "immunohistochemistry",
    "retina",
    "logo",
)
"""scikit-image sample images tried for the bank; those that need a download are skipped.

``cell``, ``clock`` and ``colorwheel`` are left out: they are mostly flat or smooth."""

CROPS_PER_PHOTO = 2
CROP_TRIES = 8
PROCEDURAL_PER_KIND = 6
DEFAULT_BANK_SEED = 0
GRAIN_RANGE = (0.06, 0.16)
"""Range of the relative amplitude of the fine multiplicative grain added to every tile."""
DETAIL_BLOCK = 8
"""Block side (texels) of the detail score, at 1/4 tile resolution."""
DETAIL_MIN_STD = 6.0
"""Grey-level standard deviation above which a block counts as textured."""
MIN_DETAIL_SCORE = 0.6
"""Photo crops whose best :func:`detail_score` is lower are left out of the bank."""
LOW_TEXTURE_PREFIX = "low_texture:"
"""Name prefix of the low-texture tiles."""
LOW_TEXTURE_PER_KIND = 6
LOW_TEXTURE_SEED_OFFSET = 7919
"""The low-texture tiles use ``default_rng(seed + LOW_TEXTURE_SEED_OFFSET)``."""
LOW_TEXTURE_GRAIN_RANGE = (0.005, 0.03)
"""Relative amplitude of the grain on low-texture tiles (standard tiles: ``GRAIN_RANGE``)."""
PANEL_BASE_RANGE = (150.0, 235.0)
"""Grey level of a low-texture surface before its face's colour gain."""
PANEL_LINE_DARKNESS = (15.0, 70.0)
"""How much darker than the surface a panel joint is, in grey levels."""
PANEL_LINE_WIDTH = (1, 3)
"""Inclusive range of the joint width, level-0 texels."""


@dataclass(frozen=True)
class TextureBank:
    """Texture tiles packed into an atlas mip pyramid.

    Attributes:
        tiles: ``(T, TILE_SIZE, TILE_SIZE, 3)`` uint8 RGB tiles (level 0, without gutter).
        names: ``(T,)`` source of each tile, for example ``"photo:brick"`` or ``"noise"``.
        mip_atlas: uint8 RGB image holding the atlas pyramid side by side: level ``l`` (level 0
            downsampled by ``2**l`` with area averaging) starts at column ``level_columns[l]``,
            row 0.
        level_columns: ``(PYRAMID_LEVELS,)`` float32 first column of each level in ``mip_atlas``.
        tile_origins: ``(T, 2)`` float32 level-0 atlas coordinates ``(x, y)`` of each tile's
            first texel centre.
        overlay: ``(OVERLAY_SIZE, OVERLAY_SIZE)`` float32 periodic noise with zero mean and unit
            standard deviation.
    """

    tiles: np.ndarray
    names: tuple[str, ...]
    mip_atlas: np.ndarray
    level_columns: np.ndarray
    tile_origins: np.ndarray
    overlay: np.ndarray

    @property
    def size(self) -> int:
        """Number of tiles."""
        return len(self.tiles)

    @property
    def standard_count(self) -> int:
        """Number of standard tiles. The low-texture tiles, if any, follow them."""
        return self.size - len(self.low_texture_ids)

    @property
    def low_texture_ids(self) -> np.ndarray:
        """``(L,)`` indices of the low-texture tiles (empty unless built with ``low_texture``)."""
        return np.array(
            [i for i, name in enumerate(self.names) if name.startswith(LOW_TEXTURE_PREFIX)],
            dtype=np.int64,
        )


def mirror_coordinates(x: np.ndarray, size: int = TILE_SIZE) -> np.ndarray:
    """Fold unbounded texel coordinates into ``[0, size - 1]`` by mirrored repetition.

    Texel ``i`` has its centre at coordinate ``i``. The fold is a triangle wave of period
    ``2 * (size - 1)``; it is continuous, so bilinear sampling across a fold shows no seam.
    """
    last = np.float32(size - 1)
    cycles = np.asarray(x, dtype=np.float32) * (np.float32(0.5) / last)
    cycles -= np.floor(cycles)
    return last - np.abs(cycles * (2 * last) - last)


@functools.lru_cache(maxsize=4)
def texture_bank(seed: int = DEFAULT_BANK_SEED, low_texture: bool = False) -> TextureBank:
    """Build (once per process and arguments) the texture bank.

    Args:
        seed: seed of the procedural textures and of the photo crop positions.
        low_texture: append the low-texture tiles (see the module docstring).

    Returns:
        The bank, shared between callers; treat its arrays as read-only.
    """
    rng = np.random.default_rng(seed)
    tiles: list[np.ndarray] = []
    names: list[str] = []
    for name, photo in _load_photos():
        for _ in range(CROPS_PER_PHOTO):
            crop = _best_crop(photo, rng)
            if detail_score(crop) >= MIN_DETAIL_SCORE:
                tiles.append(crop)
                names.append(f"photo:{name}")
    for kind, make in _PROCEDURAL_KINDS.items():
        for _ in range(PROCEDURAL_PER_KIND):
            tiles.append(make(rng))
            names.append(kind)
    standard = [_add_grain(_stretch_contrast(tile), rng) for tile in tiles]
    overlay = periodic_noise(rng, OVERLAY_SIZE, exponent=2.2)
    if low_texture:
        plain_tiles, plain_names = _low_texture_tiles(seed)
        standard += plain_tiles
        names += plain_names
    stacked = np.stack(standard)
    atlas, origins = _pack_atlas(stacked)
    mip_atlas, level_columns = _mip_atlas(atlas)
    logger.debug("texture bank: %d tiles, mip atlas %s", len(stacked), mip_atlas.shape)
    return TextureBank(stacked, tuple(names), mip_atlas, level_columns, origins, overlay)


def _low_texture_tiles(seed: int) -> tuple[list[np.ndarray], list[str]]:
    """Return the low-texture tiles and their names, from their own generator."""
    rng = np.random.default_rng(seed + LOW_TEXTURE_SEED_OFFSET)
    tiles: list[np.ndarray] = []
    names: list[str] = []
    for kind, joints in (("plain", 0), ("panel", 1)):
        for _ in range(LOW_TEXTURE_PER_KIND):
            tile = _panel_texture(rng, joints_per_axis=joints)
            grain = periodic_noise(rng, TILE_SIZE, exponent=rng.uniform(0.5, 1.0))
            amplitude = rng.uniform(*LOW_TEXTURE_GRAIN_RANGE)
            tiles.append(_to_tile(tile * (1.0 + amplitude * grain[..., None])))
            names.append(f"{LOW_TEXTURE_PREFIX}{kind}")
    return tiles, names


def _panel_texture(rng: np.random.Generator, joints_per_axis: int) -> np.ndarray:
    """Draw a light, nearly uniform surface with ``joints_per_axis`` thin dark lines per axis.

    Returns float64 ``(TILE_SIZE, TILE_SIZE, 3)`` grey levels.
    """
    base = rng.uniform(*PANEL_BASE_RANGE)
    image = np.full((TILE_SIZE, TILE_SIZE, 3), base) * (1.0 + rng.uniform(-0.04, 0.04, size=3))
    for axis in (0, 1):
        for position in rng.integers(0, TILE_SIZE, size=joints_per_axis):
            width = int(rng.integers(PANEL_LINE_WIDTH[0], PANEL_LINE_WIDTH[1] + 1))
            band = slice(int(position), int(position) + width)
            darkness = rng.uniform(*PANEL_LINE_DARKNESS)
            if axis == 0:
                image[band, :, :] -= darkness
            else:
                image[:, band, :] -= darkness
    return image


def _load_photos() -> list[tuple[str, np.ndarray]]:
    """Load the bundled sample photos as uint8 RGB, skipping those not available offline."""
    import skimage.data

    photos = []
    for name in PHOTO_NAMES:
        loader = getattr(skimage.data, name, None)
        if loader is None:
            continue
        try:
            image = np.asarray(loader())
        except (ImportError, OSError, ValueError) as error:
            # Some sample images are fetched with pooch on first use; without it they are absent.
            logger.debug("skipping scikit-image sample %s: %s", name, error)
            continue
        photos.append((name, _to_rgb_uint8(image)))
    if not photos:
        logger.warning("no scikit-image sample photos could be loaded; using procedural textures")
    return photos


def _to_rgb_uint8(image: np.ndarray) -> np.ndarray:
    if image.dtype == bool:
        image = image.astype(np.uint8) * 255
    elif image.dtype != np.uint8:
        image = np.clip(image * 255.0 if image.max() <= 1.0 else image, 0, 255).astype(np.uint8)
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=2)
    return np.ascontiguousarray(image[..., :3])


def detail_score(tile: np.ndarray) -> float:
    """Share of blocks with visible texture, measured on the tile downsampled 4 times.

    A block of ``DETAIL_BLOCK`` texels counts when its grey-level standard deviation exceeds
    ``DETAIL_MIN_STD``; 1.0 means no flat area at the scale a distant surface shows.
    """
    small = cv2.resize(tile, (TILE_SIZE // 4, TILE_SIZE // 4), interpolation=cv2.INTER_AREA)
    grey = cv2.cvtColor(small, cv2.COLOR_RGB2GRAY).astype(np.float32)
    count = grey.shape[0] // DETAIL_BLOCK
    blocks = grey[: count * DETAIL_BLOCK, : count * DETAIL_BLOCK]
    blocks = blocks.reshape(count, DETAIL_BLOCK, count, DETAIL_BLOCK)
    return float((blocks.std(axis=(1, 3)) > DETAIL_MIN_STD).mean())


def _best_crop(photo: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Return the most textured of ``CROP_TRIES`` random crops (by :func:`detail_score`)."""
    crops = [_random_crop(photo, rng) for _ in range(CROP_TRIES)]
    return max(crops, key=detail_score)


def _stretch_contrast(tile: np.ndarray) -> np.ndarray:
    """Stretch grey levels linearly so the 2nd-98th percentiles span at least 20-235."""
    low, high = np.percentile(tile, [2.0, 98.0])
    if high - low >= 215.0:
        return tile
    gain = 215.0 / max(high - low, 1.0)
    middle = (low + high) / 2.0
    return _to_tile((tile.astype(np.float32) - middle) * gain + 127.5)


def _add_grain(tile: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Multiply by fine 1/f noise, so even flat regions carry texture up close."""
    grain = periodic_noise(rng, TILE_SIZE, exponent=rng.uniform(0.5, 1.0))
    amplitude = rng.uniform(*GRAIN_RANGE)
    return _to_tile(tile.astype(np.float32) * (1.0 + amplitude * grain[..., None]))


def _random_crop(photo: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Crop a random square of 40-100 % of the short side and resize it to one tile."""
    short_side = min(photo.shape[:2])
    side = max(16, int(short_side * rng.uniform(0.4, 1.0)))
    top = int(rng.integers(0, photo.shape[0] - side + 1))
    left = int(rng.integers(0, photo.shape[1] - side + 1))
    crop = photo[top : top + side, left : left + side]
    interpolation = cv2.INTER_AREA if side > TILE_SIZE else cv2.INTER_CUBIC
    return cv2.resize(crop, (TILE_SIZE, TILE_SIZE), interpolation=interpolation)


def periodic_noise(rng: np.random.Generator, size: int, exponent: float) -> np.ndarray:
    """Return ``(size, size)`` float32 periodic noise with a ``1/f**exponent`` amplitude spectrum.

    The noise is white noise filtered in the Fourier domain, so it tiles seamlessly. It is
    normalised to zero mean and unit standard deviation.
    """
    white = rng.standard_normal((size, size))
    frequency_y = np.fft.fftfreq(size)[:, None]
    frequency_x = np.fft.rfftfreq(size)[None, :]
    radius = np.hypot(frequency_y, frequency_x)
    radius[0, 0] = 1.0
    spectrum = np.fft.rfft2(white) / radius**exponent
    spectrum[0, 0] = 0.0
    noise = np.fft.irfft2(spectrum, s=(size, size))
    return ((noise - noise.mean()) / (noise.std() + 1e-12)).astype(np.float32)


def _random_colours(rng: np.random.Generator, count: int) -> np.ndarray:
    return rng.uniform(20.0, 235.0, size=(count, 3))


def _to_tile(image: np.ndarray) -> np.ndarray:
    return np.clip(image, 0.0, 255.0).astype(np.uint8)


def _noise_texture(rng: np.random.Generator) -> np.ndarray:
    """Fractal noise, each channel a different blend of three noise fields."""
    fields = np.stack(
        [periodic_noise(rng, TILE_SIZE, rng.uniform(0.8, 1.8)) for _ in range(3)], axis=-1
    )
    mixing = rng.uniform(-1.0, 1.0, size=(3, 3)) + np.eye(3)
    contrast = rng.uniform(25.0, 55.0)
    return _to_tile(128.0 + contrast * (fields @ mixing.T) / np.sqrt(3.0))


def _checker_texture(rng: np.random.Generator) -> np.ndarray:
    """Checkerboard with random colours and cell size, plus fine noise."""
    cell = int(rng.integers(8, 64))
    index = (np.arange(TILE_SIZE) // cell) % 2
    board = (index[:, None] ^ index[None, :]).astype(np.float64)
    colours = _random_colours(rng, 2)
    image = colours[0] + board[..., None] * (colours[1] - colours[0])
    detail = periodic_noise(rng, TILE_SIZE, 1.0)[..., None]
    return _to_tile(image + rng.uniform(10.0, 25.0) * detail)


def _stripe_texture(rng: np.random.Generator) -> np.ndarray:
    """Stripes at a random angle with two or three periods superposed."""
    y, x = np.mgrid[0:TILE_SIZE, 0:TILE_SIZE].astype(np.float64)
    image = np.full((TILE_SIZE, TILE_SIZE, 3), 128.0)
    for _ in range(int(rng.integers(2, 4))):
        angle = rng.uniform(0.0, np.pi)
        period = rng.uniform(6.0, 80.0)
        phase = (x * np.cos(angle) + y * np.sin(angle)) * 2.0 * np.pi / period
        wave = np.sign(np.sin(phase)) if rng.random() < 0.5 else np.sin(phase)
        image += wave[..., None] * rng.uniform(-50.0, 50.0, size=3)
    detail = periodic_noise(rng, TILE_SIZE, 1.0)[..., None]
    return _to_tile(image + rng.uniform(5.0, 15.0) * detail)


def _rectangle_texture(rng: np.random.Generator) -> np.ndarray:
    """Filled rectangles of many sizes (4 to 128 texels, log-uniform) in random colours."""
    image = np.empty((TILE_SIZE, TILE_SIZE, 3), np.uint8)
    image[:] = _random_colours(rng, 1)[0].astype(np.uint8)
    for _ in range(int(rng.integers(60, 160))):
        width, height = np.exp(rng.uniform(np.log(4.0), np.log(128.0), size=2)).astype(int)
        left, top = rng.integers(-16, TILE_SIZE, size=2)
        colour = tuple(float(value) for value in _random_colours(rng, 1)[0])
        cv2.rectangle(image, (int(left), int(top)), (int(left + width), int(top + height)),
                      colour, thickness=-1)
    return image


def _blob_texture(rng: np.random.Generator) -> np.ndarray:
    """Filled ellipses of many sizes in random colours, slightly blurred."""
    image = np.empty((TILE_SIZE, TILE_SIZE, 3), np.uint8)
    image[:] = _random_colours(rng, 1)[0].astype(np.uint8)
    for _ in range(int(rng.integers(60, 160))):
        axes = np.exp(rng.uniform(np.log(2.0), np.log(60.0), size=2)).astype(int)
        centre = rng.integers(0, TILE_SIZE, size=2)
        colour = tuple(float(value) for value in _random_colours(rng, 1)[0])
        cv2.ellipse(image, (int(centre[0]), int(centre[1])), (int(axes[0]), int(axes[1])),
                    float(rng.uniform(0.0, 180.0)), 0.0, 360.0, colour, thickness=-1)
    return cv2.GaussianBlur(image, (3, 3), 0)


def _noisy_photo_like_texture(rng: np.random.Generator) -> np.ndarray:
    """Noise-modulated colour gradient with sharp random lines (an irregular, photo-like mix)."""
    base = _noise_texture(rng).astype(np.float64)
    for _ in range(int(rng.integers(10, 40))):
        start = tuple(int(value) for value in rng.integers(0, TILE_SIZE, size=2))
        end = tuple(int(value) for value in rng.integers(0, TILE_SIZE, size=2))
        colour = tuple(float(value) for value in _random_colours(rng, 1)[0])
        cv2.line(base, start, end, colour, thickness=int(rng.integers(1, 5)))
    return _to_tile(base)


_PROCEDURAL_KINDS: dict[str, Callable[[np.random.Generator], np.ndarray]] = {
    "noise": _noise_texture,
    "checker": _checker_texture,
    "stripes": _stripe_texture,
    "rectangles": _rectangle_texture,
    "blobs": _blob_texture,
    "lines": _noisy_photo_like_texture,
}


def _pack_atlas(tiles: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Place tiles on a square grid, each with a mirrored gutter of ``GUTTER`` texels."""
    count = len(tiles)
    columns = int(np.ceil(np.sqrt(count)))
    rows = int(np.ceil(count / columns))
    pitch = TILE_SIZE + 2 * GUTTER
    atlas = np.zeros((rows * pitch, columns * pitch, 3), np.uint8)
    origins = np.zeros((count, 2), np.float32)
    for index, tile in enumerate(tiles):
        row, column = divmod(index, columns)
        padded = cv2.copyMakeBorder(tile, GUTTER, GUTTER, GUTTER, GUTTER, cv2.BORDER_REFLECT_101)
        atlas[row * pitch : (row + 1) * pitch, column * pitch : (column + 1) * pitch] = padded
        origins[index] = (column * pitch + GUTTER, row * pitch + GUTTER)
    return atlas, origins


def _mip_atlas(atlas: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Lay the atlas's ``PYRAMID_LEVELS`` mip levels side by side in one image."""
    levels = [atlas]
    for _ in range(1, PYRAMID_LEVELS):
        previous = levels[-1]
        size = (previous.shape[1] // 2, previous.shape[0] // 2)
        levels.append(cv2.resize(previous, size, interpolation=cv2.INTER_AREA))
    widths = [level.shape[1] for level in levels]
    columns = np.concatenate([[0], np.cumsum(widths)[:-1]]).astype(np.float32)
    mip_atlas = np.zeros((atlas.shape[0], sum(widths), 3), np.uint8)
    for level, column in zip(levels, columns.astype(int)):
        mip_atlas[: level.shape[0], column : column + level.shape[1]] = level
    return mip_atlas, columns
