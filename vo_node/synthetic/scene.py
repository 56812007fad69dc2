"""Random scenes built from textured rectangles, and exact ray casting against them.

A scene is a set of planar rectangular faces. Six of them are the inner faces of an enclosing
box: a room, or for the outdoor variant a large box whose floor is the ground and whose walls and
ceiling are a far backdrop. The others are objects: oriented boxes (six outward faces each) and
free rectangles (two-sided panels and posters). Every camera ray inside the enclosing box hits a
surface, so every pixel has a finite depth.

World axes: x and y horizontal, z up, floor at ``z = 0``. Lengths are scene units.

Ray casting (:func:`intersect`) is exact per face: for a face with corner ``O`` and edge
directions ``a``, ``b`` in the camera frame, the pixel ``p = (u, v, 1)`` sees the plane point
``O + s a + t b`` where ``(s, t, 1) / z = inv(K [a b O]) p``. The third component is the inverse
z-depth, so one 3x3 matrix per face gives depth and texture coordinates for every pixel, and the
nearest hit wins through an inverse-depth buffer. Each face is evaluated only over the image
bounding box of its projection (clipped at a near plane), which keeps the cost near the visible
area instead of faces times pixels.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace

import numpy as np

from vo_node.synthetic.textures import TILE_SIZE

logger = logging.getLogger(__name__)

SCENE_KINDS = ("room", "outdoor")

NEAR_PLANE = 0.02
"""Closest z-depth (scene units) at which a surface is drawn."""
EDGE_TOLERANCE = 1e-3
"""Faces are extended by this much (scene units) so shared edges leave no uncovered pixels."""
CAMERA_CLEARANCE = 0.5
"""Minimum distance (scene units) between any camera centre and any object's bounding sphere."""
OBJECT_PLACEMENT_TRIES = 40
OUTDOOR_MAX_CAMERA_HEIGHT = 3.0
"""Highest camera centre above the ground in outdoor scenes, scene units."""
ROAD_VERGE = 1.0
"""Free space (scene units) between the outdoor camera region and the roadside buildings."""
FLOOR_FACE_INDEX = 5
"""Index of the bottom (-z) face among the six faces :func:`box_faces` returns."""


@dataclass
class FaceSet:
    """Textured rectangles ``origin + s * axis_u + t * axis_v``, ``0 <= s, t <= extents``.

    All arrays have one row per face (``F`` faces); lengths are scene units.

    Attributes:
        origins: ``(F, 3)`` world position of the corner at ``s = t = 0``.
        axes_u: ``(F, 3)`` unit direction of the ``s`` edge.
        axes_v: ``(F, 3)`` unit direction of the ``t`` edge, orthogonal to ``axes_u``.
        extents: ``(F, 2)`` edge lengths along ``axes_u`` and ``axes_v``.
        one_sided: ``(F,)`` True where the face is drawn only from the side its normal
            ``axes_u x axes_v`` points to (box faces); False for two-sided panels.
        texture_ids: ``(F,)`` tile index in the texture bank.
        texels_per_unit: ``(F,)`` texture density, level-0 texels per scene unit.
        texture_angles: ``(F,)`` in-plane rotation of the texture, radians.
        texture_offsets: ``(F, 2)`` texture shift, texels.
        overlay_units: ``(F,)`` side of one brightness-overlay tile, scene units.
        overlay_offsets: ``(F, 2)`` overlay shift, overlay texels.
        overlay_strengths: ``(F,)`` relative brightness variation of the overlay.
        colour_gains: ``(F, 3)`` RGB reflectance multipliers.
    """

    origins: np.ndarray
    axes_u: np.ndarray
    axes_v: np.ndarray
    extents: np.ndarray
    one_sided: np.ndarray
    texture_ids: np.ndarray
    texels_per_unit: np.ndarray
    texture_angles: np.ndarray
    texture_offsets: np.ndarray
    overlay_units: np.ndarray
    overlay_offsets: np.ndarray
    overlay_strengths: np.ndarray
    colour_gains: np.ndarray

    def __len__(self) -> int:
        return len(self.origins)

    @property
    def normals(self) -> np.ndarray:
        """``(F, 3)`` unit normals ``axes_u x axes_v``."""
        return np.cross(self.axes_u, self.axes_v)

    @staticmethod
    def concatenate(parts: list["FaceSet"]) -> "FaceSet":
        """Join face sets in order."""
        fields = FaceSet.__dataclass_fields__
        joined = {name: np.concatenate([getattr(part, name) for part in parts]) for name in fields}
        return FaceSet(**joined)


@dataclass
class Scene:
    """A renderable scene.

    Attributes:
        kind: ``"room"`` or ``"outdoor"``.
        faces: every surface, the enclosing box first.
        interior_min: ``(3,)`` inner corner of the enclosing box, scene units.
        interior_max: ``(3,)`` opposite inner corner.
        light_position: ``(3,)`` world position of the point light.
        light_range: distance (scene units) at which the light's contribution halves.
        ambient: share of the brightness that does not depend on the light, in ``[0, 1]``.
    """

    kind: str
    faces: FaceSet
    interior_min: np.ndarray
    interior_max: np.ndarray
    light_position: np.ndarray
    light_range: float
    ambient: float


@dataclass(frozen=True)
class Layout:
    """The enclosing box of a scene and the region the camera path may use.

    Attributes:
        kind: scene kind.
        interior_min, interior_max: ``(3,)`` inner corners of the enclosing box.
        camera_min, camera_max: ``(3,)`` corners of the box the camera centres must stay in.
        camera_height: preferred camera height above the floor, scene units.
        main_axis: index (0 or 1) of the longer horizontal axis, along which forward motion runs.
    """

    kind: str
    interior_min: np.ndarray
    interior_max: np.ndarray
    camera_min: np.ndarray
    camera_max: np.ndarray
    camera_height: float
    main_axis: int


@dataclass
class SurfaceHits:
    """Per-pixel result of casting the camera rays of one frame.

    Attributes:
        face_ids: ``(H, W)`` int32 index of the nearest face.
        inverse_depth: ``(H, W)`` float32 inverse z-depth, 1 / scene units.
        s: ``(H, W)`` float32 position along the face's ``axes_u``, scene units.
        t: ``(H, W)`` float32 position along the face's ``axes_v``, scene units.
    """

    face_ids: np.ndarray
    inverse_depth: np.ndarray
    s: np.ndarray
    t: np.ndarray

    @property
    def depth(self) -> np.ndarray:
        """``(H, W)`` float32 z-depth in the camera frame, scene units."""
        return (1.0 / self.inverse_depth).astype(np.float32)


# ----------------------------------------------------------------------------------------------
# Layouts and scene population


def sample_layout(kind: str, rng: np.random.Generator) -> Layout:
    """Draw the enclosing box and camera region for a scene of ``kind``."""
    if kind == "room":
        size = np.array([rng.uniform(7.0, 18.0), rng.uniform(5.0, 11.0), rng.uniform(2.6, 4.5)])
        margin = np.array([0.7, 0.7, 0.5])
        height = rng.uniform(0.9, min(1.8, size[2] - 0.7))
    elif kind == "outdoor":
        size = np.array(
            [rng.uniform(60.0, 120.0), rng.uniform(18.0, 32.0), rng.uniform(20.0, 40.0)]
        )
        margin = np.array([4.0, size[1] / 2.0 - 3.0, 0.6])
        height = rng.uniform(1.0, 2.0)
    else:
        raise ValueError(f"unknown scene kind {kind!r}; use one of {SCENE_KINDS}")
    if rng.random() < 0.5:
        size[[0, 1]] = size[[1, 0]]
        margin[[0, 1]] = margin[[1, 0]]
    interior_min = np.array([-size[0] / 2.0, -size[1] / 2.0, 0.0])
    interior_max = np.array([size[0] / 2.0, size[1] / 2.0, size[2]])
    camera_max = interior_max - margin
    if kind == "outdoor":
        camera_max[2] = min(camera_max[2], OUTDOOR_MAX_CAMERA_HEIGHT)
    return Layout(
        kind=kind,
        interior_min=interior_min,
        interior_max=interior_max,
        camera_min=interior_min + margin,
        camera_max=camera_max,
        camera_height=float(height),
        main_axis=int(np.argmax(size[:2])),
    )


def build_scene(
    layout: Layout,
    rng: np.random.Generator,
    camera_positions: np.ndarray,
    texture_count: int,
) -> Scene:
    """Populate ``layout`` with objects that keep clear of the camera path.

    Args:
        layout: the enclosing box.
        rng: random generator for object placement and materials.
        camera_positions: ``(N, 3)`` world camera centres the objects must avoid.
        texture_count: number of tiles in the texture bank.
    """
    parts = [_enclosure_faces(layout, rng, texture_count)]
    if layout.kind == "room":
        parts += _room_objects(layout, rng, camera_positions, texture_count)
    else:
        parts += _outdoor_objects(layout, rng, camera_positions, texture_count)
    faces = FaceSet.concatenate(parts)
    size = layout.interior_max - layout.interior_min
    light = layout.interior_min + size * rng.uniform([0.2, 0.2, 0.85], [0.8, 0.8, 0.95])
    if layout.kind == "outdoor":
        light[2] = layout.interior_max[2] * 2.0  # a distant, sun-like light
    return Scene(
        kind=layout.kind,
        faces=faces,
        interior_min=layout.interior_min,
        interior_max=layout.interior_max,
        light_position=light,
        light_range=float(np.linalg.norm(size) * rng.uniform(0.5, 1.0)),
        ambient=float(rng.uniform(0.35, 0.6)),
    )


def _enclosure_faces(layout: Layout, rng: np.random.Generator, texture_count: int) -> FaceSet:
    """Inner faces of the enclosing box; walls use coarser textures outdoors (a far backdrop)."""
    centre = (layout.interior_min + layout.interior_max) / 2.0
    half = (layout.interior_max - layout.interior_min) / 2.0
    tile_units = (1.0, 4.0) if layout.kind == "room" else (6.0, 30.0)
    geometry = box_faces(centre, np.eye(3), half, inward=True)
    faces = _with_materials(geometry, rng, texture_count, tile_units, one_sided=True)
    if layout.kind == "outdoor":
        ground_units = rng.uniform(1.5, 5.0)
        faces.texels_per_unit[FLOOR_FACE_INDEX] = TILE_SIZE / ground_units
        faces.overlay_units[FLOOR_FACE_INDEX] = ground_units * rng.uniform(3.0, 8.0)
    return faces


def _room_objects(
    layout: Layout, rng: np.random.Generator, camera_positions: np.ndarray, texture_count: int
) -> list[FaceSet]:
    """Boxes standing on the floor, floating rotated boxes, wall posters and free panels."""
    parts: list[FaceSet] = []
    placed: list[tuple[np.ndarray, float]] = []
    for _ in range(int(rng.integers(10, 25))):
        choice = rng.random()
        for _ in range(OBJECT_PLACEMENT_TRIES):
            if choice < 0.45:
                candidate = _standing_box(layout, rng, size_range=(0.2, 1.6))
            elif choice < 0.7:
                candidate = _floating_box(layout, rng)
            elif choice < 0.85:
                candidate = _wall_poster(layout, rng)
            else:
                candidate = _free_panel(layout, rng)
            geometry, centre, radius, one_sided = candidate
            if _clear_of_path(centre, radius, camera_positions, placed):
                placed.append((centre, radius))
                parts.append(_with_materials(geometry, rng, texture_count, (0.4, 2.5), one_sided))
                break
    return parts


def _outdoor_objects(
    layout: Layout, rng: np.random.Generator, camera_positions: np.ndarray, texture_count: int
) -> list[FaceSet]:
    """Buildings lining the road, small boxes, poles and billboards scattered over the ground."""
    parts: list[FaceSet] = []
    placed: list[tuple[np.ndarray, float]] = []
    for _ in range(int(rng.integers(20, 45))):
        choice = rng.random()
        for _ in range(OBJECT_PLACEMENT_TRIES):
            if choice < 0.4:
                candidate = _roadside_building(layout, rng)
                tile_units = (2.0, 8.0)
            elif choice < 0.75:
                candidate = _standing_box(layout, rng, size_range=(0.3, 1.8))
                tile_units = (0.5, 2.5)
            elif choice < 0.9:
                candidate = _pole(layout, rng)
                tile_units = (0.5, 2.0)
            else:
                candidate = _free_panel(layout, rng, size_range=(1.0, 5.0))
                tile_units = (1.0, 5.0)
            geometry, centre, radius, one_sided = candidate
            if _clear_of_path(centre, radius, camera_positions, placed):
                placed.append((centre, radius))
                parts.append(_with_materials(geometry, rng, texture_count, tile_units, one_sided))
                break
    return parts


_FaceGeometry = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]
_Candidate = tuple[list[_FaceGeometry], np.ndarray, float, bool]
"""An object proposal: its faces, bounding-sphere centre and radius, and whether it is closed."""


def _random_floor_point(layout: Layout, rng: np.random.Generator, inset: float) -> np.ndarray:
    low = layout.interior_min[:2] + inset
    high = layout.interior_max[:2] - inset
    return rng.uniform(low, np.maximum(high, low + 1e-6))


def _standing_box(
    layout: Layout, rng: np.random.Generator, size_range: tuple[float, float]
) -> _Candidate:
    half = rng.uniform(*size_range, size=3) / 2.0
    half[2] = min(half[2], (layout.interior_max[2] - 0.1) / 2.0)
    xy = _random_floor_point(layout, rng, float(np.max(half[:2])))
    centre = np.array([xy[0], xy[1], half[2]])
    rotation = rotation_about_z(rng.uniform(0.0, np.pi))
    return box_faces(centre, rotation, half), centre, float(np.linalg.norm(half)), True


def _roadside_building(layout: Layout, rng: np.random.Generator) -> _Candidate:
    """Propose a building-sized box beside the road (the camera region), roughly aligned with it."""
    half = rng.uniform(2.0, 10.0, size=3) / 2.0
    half[2] = min(half[2], (layout.interior_max[2] - 0.1) / 2.0)
    along, across = layout.main_axis, 1 - layout.main_axis
    road_half_width = (layout.camera_max[across] - layout.camera_min[across]) / 2.0 + ROAD_VERGE
    centre = np.zeros(3)
    centre[along] = rng.uniform(layout.interior_min[along], layout.interior_max[along])
    side = 1.0 if rng.random() < 0.5 else -1.0
    reach = np.linalg.norm(half[:2])
    limit = max(road_half_width + reach, layout.interior_max[across] - reach)
    centre[across] = side * rng.uniform(road_half_width + reach, limit)
    centre[2] = half[2]
    rotation = rotation_about_z(along * np.pi / 2 + rng.uniform(-0.2, 0.2))
    return box_faces(centre, rotation, half), centre, float(np.linalg.norm(half)), True


def _floating_box(layout: Layout, rng: np.random.Generator) -> _Candidate:
    half = rng.uniform(0.15, 0.8, size=3) / 2.0
    radius = float(np.linalg.norm(half))
    xy = _random_floor_point(layout, rng, radius)
    z_low = radius + 0.05
    z_high = max(z_low, layout.interior_max[2] - radius - 0.05)
    centre = np.array([xy[0], xy[1], rng.uniform(z_low, z_high)])
    rotation = random_rotation(rng)
    return box_faces(centre, rotation, half), centre, radius, True


def _wall_poster(layout: Layout, rng: np.random.Generator) -> _Candidate:
    """Propose a rectangle just in front of one wall (a poster or window), facing into the room."""
    axis = int(rng.integers(0, 2))
    side = 1.0 if rng.random() < 0.5 else -1.0
    half = np.array([rng.uniform(0.3, 1.5), rng.uniform(0.2, 1.0)])
    centre = _random_floor_point(layout, rng, float(half[0]))
    height = rng.uniform(half[1] + 0.1, layout.interior_max[2] - half[1] - 0.1)
    centre = np.array([centre[0], centre[1], height])
    wall = layout.interior_max[axis] if side > 0 else layout.interior_min[axis]
    centre[axis] = wall - side * 0.02
    normal = np.zeros(3)
    normal[axis] = -side
    up = np.array([0.0, 0.0, 1.0])
    across = np.cross(up, normal)
    rotation = np.stack([across, up, normal], axis=1)
    return [rectangle_face(centre, rotation, half)], centre, float(np.linalg.norm(half)), True


def _free_panel(
    layout: Layout, rng: np.random.Generator, size_range: tuple[float, float] = (0.3, 1.5)
) -> _Candidate:
    """Propose a two-sided rectangle with a random orientation, standing or floating."""
    half = rng.uniform(*size_range, size=2) / 2.0
    radius = float(np.linalg.norm(half))
    xy = _random_floor_point(layout, rng, radius)
    z_high = max(radius + 0.05, min(layout.interior_max[2] - radius - 0.05, 3.0 * radius + 2.0))
    centre = np.array([xy[0], xy[1], rng.uniform(radius + 0.05, z_high)])
    rotation = random_rotation(rng)
    return [rectangle_face(centre, rotation, half)], centre, radius, False


def _pole(layout: Layout, rng: np.random.Generator) -> _Candidate:
    half = np.array([rng.uniform(0.05, 0.2), rng.uniform(0.05, 0.2), rng.uniform(1.5, 4.0)])
    xy = _random_floor_point(layout, rng, 0.5)
    centre = np.array([xy[0], xy[1], half[2]])
    rotation = rotation_about_z(rng.uniform(0.0, np.pi))
    return box_faces(centre, rotation, half), centre, float(np.linalg.norm(half[:2])) + 0.2, True


def _clear_of_path(
    centre: np.ndarray,
    radius: float,
    camera_positions: np.ndarray,
    placed: list[tuple[np.ndarray, float]],
) -> bool:
    """Check clearance from the camera path and keep objects from interpenetrating much."""
    distances = np.linalg.norm(camera_positions - centre, axis=1)
    if np.any(distances < radius + CAMERA_CLEARANCE):
        return False
    return all(np.linalg.norm(centre - other) > 0.5 * (radius + other_radius)
               for other, other_radius in placed)


# ----------------------------------------------------------------------------------------------
# Geometry helpers


def rotation_about_z(angle: float) -> np.ndarray:
    """``(3, 3)`` rotation by ``angle`` radians about the world z axis."""
    cosine, sine = np.cos(angle), np.sin(angle)
    return np.array([[cosine, -sine, 0.0], [sine, cosine, 0.0], [0.0, 0.0, 1.0]])


def random_rotation(rng: np.random.Generator) -> np.ndarray:
    """``(3, 3)`` rotation drawn uniformly: the Q factor of a Gaussian matrix, signs fixed."""
    q, r = np.linalg.qr(rng.standard_normal((3, 3)))
    q = q * np.sign(np.diag(r))
    if np.linalg.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return q


def box_faces(
    centre: np.ndarray, rotation: np.ndarray, half_sizes: np.ndarray, inward: bool = False
) -> list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]:
    """Six faces ``(origin, axis_u, axis_v, extents)`` of an oriented box.

    The face normals ``axis_u x axis_v`` point out of the box, or into it with ``inward``.
    Faces come in the order +x, +y, +z, -x, -y, -z of the box frame, so for an axis-aligned
    box index :data:`FLOOR_FACE_INDEX` is the bottom face.
    """
    faces = []
    for sign in (1.0, -1.0):
        for axis in range(3):
            first, second = (axis + 1) % 3, (axis + 2) % 3
            if (sign < 0) != inward:
                first, second = second, first
            direction_u, direction_v = rotation[:, first], rotation[:, second]
            origin = (
                centre
                + sign * half_sizes[axis] * rotation[:, axis]
                - half_sizes[first] * direction_u
                - half_sizes[second] * direction_v
            )
            extents = np.array([2.0 * half_sizes[first], 2.0 * half_sizes[second]])
            faces.append((origin, direction_u, direction_v, extents))
    return faces


def rectangle_face(
    centre: np.ndarray, rotation: np.ndarray, half_sizes: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Return the rectangle spanned by ``rotation``'s first two columns around ``centre``.

    Its normal is the third column.
    """
    direction_u, direction_v = rotation[:, 0], rotation[:, 1]
    origin = centre - half_sizes[0] * direction_u - half_sizes[1] * direction_v
    return origin, direction_u, direction_v, 2.0 * np.asarray(half_sizes, dtype=np.float64)


def _with_materials(
    geometry: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]],
    rng: np.random.Generator,
    texture_count: int,
    tile_units: tuple[float, float],
    one_sided: bool,
) -> FaceSet:
    """Attach a random material to each face: texture, scale, rotation, overlay and colour."""
    count = len(geometry)
    origins, axes_u, axes_v, extents = (np.array(values) for values in zip(*geometry))
    units = np.exp(rng.uniform(np.log(tile_units[0]), np.log(tile_units[1]), size=count))
    brightness = rng.uniform(0.6, 1.25, size=(count, 1))
    tint = 1.0 + rng.uniform(-0.25, 0.25, size=(count, 3))
    return FaceSet(
        origins=origins,
        axes_u=axes_u,
        axes_v=axes_v,
        extents=extents,
        one_sided=np.full(count, one_sided),
        texture_ids=rng.integers(0, texture_count, size=count),
        texels_per_unit=TILE_SIZE / units,
        texture_angles=rng.uniform(0.0, 2.0 * np.pi, size=count),
        texture_offsets=rng.uniform(0.0, 2.0 * TILE_SIZE, size=(count, 2)),
        overlay_units=units * rng.uniform(2.0, 6.0, size=count),
        overlay_offsets=rng.uniform(0.0, TILE_SIZE, size=(count, 2)),
        overlay_strengths=rng.uniform(0.1, 0.35, size=count),
        colour_gains=brightness * tint,
    )


LOW_TEXTURE_OVERLAY_SCALE = 0.3
"""Low-texture faces keep this fraction of their overlay strength: smooth shading, no pattern."""


def with_low_texture(
    scene: Scene, texture_ids: np.ndarray, share: float, rng: np.random.Generator
) -> Scene:
    """Return ``scene`` with each face, with probability ``share``, on a low-texture tile.

    Args:
        scene: the scene; it is not modified.
        texture_ids: ``(L,)`` bank indices of the low-texture tiles (``TextureBank.low_texture_ids``).
        share: probability in [0, 1] that a face is redrawn with one of them.
        rng: random generator for the choice of faces and tiles.
    """
    if not 0.0 <= share <= 1.0:
        raise ValueError(f"low-texture share must lie in [0, 1], got {share}")
    if share > 0.0 and len(texture_ids) == 0:
        raise ValueError(
            f"low-texture share {share} needs low-texture tiles, but texture_ids is empty; "
            "build the bank with texture_bank(low_texture=True)"
        )
    faces = scene.faces
    chosen = rng.random(len(faces)) < share
    ids = faces.texture_ids.copy()
    ids[chosen] = rng.choice(np.asarray(texture_ids), size=int(chosen.sum()))
    strengths = faces.overlay_strengths.copy()
    strengths[chosen] *= LOW_TEXTURE_OVERLAY_SCALE
    return replace(scene, faces=replace(faces, texture_ids=ids, overlay_strengths=strengths))


# ----------------------------------------------------------------------------------------------
# Ray casting


def intersect(
    faces: FaceSet,
    rotation_wc: np.ndarray,
    centre_w: np.ndarray,
    intrinsics: np.ndarray,
    height: int,
    width: int,
) -> SurfaceHits:
    """Cast one ray per pixel and keep the nearest face hit.

    Args:
        faces: the scene's faces.
        rotation_wc: ``(3, 3)`` rotation of ``T_world_cam`` (camera axes x right, y down,
            z forward).
        centre_w: ``(3,)`` camera centre in the world frame, scene units.
        intrinsics: ``(4,)`` ``[fx, fy, cx, cy]`` in pixels; pixel ``(u, v)`` has its centre at
            integer coordinates.
        height, width: image size in pixels.

    Returns:
        The per-pixel hits. Pixels that no face covers (which a closed scene does not have)
        take the values of their nearest covered neighbour to the left or above.
    """
    fx, fy, cx, cy = (float(value) for value in intrinsics)
    camera = _faces_in_camera(faces, rotation_wc, centre_w)
    calibration = np.array([[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]])
    columns = np.arange(width, dtype=np.float32)[None, :]
    rows = np.arange(height, dtype=np.float32)[:, None]

    inverse_depth = np.zeros((height, width), np.float32)
    face_ids = np.full((height, width), -1, np.int32)
    s_buffer = np.zeros((height, width), np.float32)
    t_buffer = np.zeros((height, width), np.float32)
    visible = _visible_faces(faces, camera)
    origins, axes_u, axes_v = (values[visible] for values in camera)
    extents = faces.extents[visible]
    boxes = _pixel_bounds(origins, axes_u, axes_v, extents, calibration, height, width)
    plane_to_pixel = calibration @ np.stack([axes_u, axes_v, origins], axis=-1)
    keep = boxes[:, 0] >= 0
    pixel_to_planes = np.linalg.inv(plane_to_pixel[keep]).astype(np.float32)
    for index, box, pixel_to_plane in zip(visible[keep], boxes[keep], pixel_to_planes):
        top, bottom, left, right = (int(value) for value in box)
        u, v = columns[:, left:right], rows[top:bottom]
        weight = pixel_to_plane[2, 0] * u + pixel_to_plane[2, 1] * v + pixel_to_plane[2, 2]
        depth_buffer = inverse_depth[top:bottom, left:right]
        with np.errstate(divide="ignore", invalid="ignore"):
            scale = 1.0 / weight
            s = (pixel_to_plane[0, 0] * u + pixel_to_plane[0, 1] * v + pixel_to_plane[0, 2]) * scale
            t = (pixel_to_plane[1, 0] * u + pixel_to_plane[1, 1] * v + pixel_to_plane[1, 2]) * scale
        extent_s, extent_t = faces.extents[index]
        hit = (weight > depth_buffer) & (weight < 1.0 / NEAR_PLANE)
        hit &= (s >= -EDGE_TOLERANCE) & (s <= extent_s + EDGE_TOLERANCE)
        hit &= (t >= -EDGE_TOLERANCE) & (t <= extent_t + EDGE_TOLERANCE)
        np.copyto(depth_buffer, weight, where=hit)
        np.copyto(face_ids[top:bottom, left:right], index, where=hit)
        np.copyto(s_buffer[top:bottom, left:right], s, where=hit)
        np.copyto(t_buffer[top:bottom, left:right], t, where=hit)
    hits = SurfaceHits(face_ids, inverse_depth, s_buffer, t_buffer)
    _fill_uncovered(hits)
    return hits


def _faces_in_camera(
    faces: FaceSet, rotation_wc: np.ndarray, centre_w: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Face origins and edge directions in the camera frame, ``(F, 3)`` each."""
    rotation_cw = rotation_wc.T
    origins = (faces.origins - centre_w) @ rotation_cw.T
    return origins, faces.axes_u @ rotation_cw.T, faces.axes_v @ rotation_cw.T


def _visible_faces(faces: FaceSet, camera: tuple[np.ndarray, np.ndarray, np.ndarray]) -> np.ndarray:
    """Indices of faces not culled: one-sided faces seen from behind and edge-on planes go."""
    origins, axes_u, axes_v = camera
    normals = np.cross(axes_u, axes_v)
    # The camera sits at the origin, so n . (0 - origin) > 0 means it is on the front side.
    facing = -np.einsum("fi,fi->f", normals, origins)
    keep = np.abs(facing) > 1e-9
    keep &= ~faces.one_sided | (facing > 0.0)
    return np.flatnonzero(keep)


def _pixel_bounds(
    origins: np.ndarray,
    axes_u: np.ndarray,
    axes_v: np.ndarray,
    extents: np.ndarray,
    calibration: np.ndarray,
    height: int,
    width: int,
) -> np.ndarray:
    """Return ``(V, 4)`` int image bounds ``(top, bottom, left, right)`` each face may cover.

    Bounds are end-exclusive. Corners are given in the camera frame, ``(V, 3)`` each. A face
    that crosses the plane ``z = NEAR_PLANE`` is clipped against it before projection. Rows of
    faces entirely behind that plane or outside the image are ``-1``.
    """
    edge_u = axes_u * extents[:, :1]
    edge_v = axes_v * extents[:, 1:]
    corners = np.stack([origins, origins + edge_u, origins + edge_u + edge_v, origins + edge_v], 1)
    in_front = corners[..., 2] >= NEAR_PLANE
    boxes = np.full((len(origins), 4), -1, dtype=np.int64)
    low = np.zeros((len(origins), 2))
    high = np.zeros((len(origins), 2))
    whole = in_front.all(axis=1)
    projected = corners[whole] @ calibration.T
    pixels = projected[..., :2] / projected[..., 2:3]
    low[whole], high[whole] = pixels.min(axis=1), pixels.max(axis=1)
    partial = np.flatnonzero(in_front.any(axis=1) & ~whole)
    for index in partial:
        polygon = np.array(_clip_near(list(corners[index]))) @ calibration.T
        polygon_pixels = polygon[:, :2] / polygon[:, 2:3]
        low[index], high[index] = polygon_pixels.min(axis=0), polygon_pixels.max(axis=0)
    margin = 2.0
    left = np.maximum(0, np.floor(low[:, 0] - margin)).astype(np.int64)
    right = np.minimum(width, np.ceil(np.minimum(high[:, 0], 1e9) + margin) + 1).astype(np.int64)
    top = np.maximum(0, np.floor(low[:, 1] - margin)).astype(np.int64)
    bottom = np.minimum(height, np.ceil(np.minimum(high[:, 1], 1e9) + margin) + 1).astype(np.int64)
    usable = in_front.any(axis=1) & (left < right) & (top < bottom)
    boxes[usable] = np.stack([top, bottom, left, right], axis=1)[usable]
    return boxes


def _clip_near(corners: list[np.ndarray]) -> list[np.ndarray]:
    """Clip a convex polygon against ``z >= NEAR_PLANE`` (Sutherland-Hodgman, one plane)."""
    clipped = []
    count = len(corners)
    for index in range(count):
        current, following = corners[index], corners[(index + 1) % count]
        current_inside = current[2] >= NEAR_PLANE
        following_inside = following[2] >= NEAR_PLANE
        if current_inside:
            clipped.append(current)
        if current_inside != following_inside:
            fraction = (NEAR_PLANE - current[2]) / (following[2] - current[2])
            clipped.append(current + fraction * (following - current))
    return clipped


def _fill_uncovered(hits: SurfaceHits) -> None:
    """Copy each uncovered pixel's values from the previous covered pixel in raster order."""
    covered = (hits.face_ids >= 0).reshape(-1)
    if covered.all():
        return
    if not covered.any():
        raise RuntimeError(
            "no face is visible from this camera pose; check that the camera is inside the scene"
        )
    logger.debug("%d pixels hit no face; filling them from neighbours", int((~covered).sum()))
    source = np.maximum.accumulate(np.where(covered, np.arange(covered.size), -1))
    source[source < 0] = int(np.argmax(covered))
    for name in ("face_ids", "inverse_depth", "s", "t"):
        values = getattr(hits, name).reshape(-1)
        values[~covered] = values[source[~covered]]
