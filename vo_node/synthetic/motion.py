"""Smooth random camera paths, sampled as ``T_world_cam`` poses, and frame timestamps.

A path is a sum of a constant velocity, sinusoids and (for orbits) a circle in position, and a
base heading plus sinusoids in yaw, pitch and roll. Everything is a closed-form function of time,
so poses at jittered timestamps stay exactly on the path. The path is then scaled and shifted to
fit the layout's camera region, which keeps the camera inside the room and away from its walls.

Motion families (:data:`MOTION_FAMILIES`):

- ``forward``: translation along the viewing direction, which follows the velocity.
- ``lateral``: translation sideways, perpendicular to a roughly fixed viewing direction.
- ``rotation``: panning and tilting with little translation.
- ``shake``: forward or lateral motion plus hand-held jitter (2-8 Hz, small amplitude).
- ``orbit``: a circular arc around a point, looking at it.
- ``demo`` (not drawn at random): an elliptic loop through the room, so the camera moves
  forward, sideways and back while it turns steadily (the demo's default sequence).

Quaternions are ``[qx, qy, qz, qw]`` (Hamilton, scalar last) and poses ``[tx, ty, tz, qx, qy,
qz, qw]`` as everywhere in vo_node. Camera axes are optical: x right, y down, z forward. World z
is up.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

from vo_node.synthetic.scene import Layout

MOTION_FAMILIES = ("forward", "lateral", "rotation", "shake", "orbit")
"""Families drawn at random; ``demo`` can be requested by name as well."""
ALL_MOTIONS = MOTION_FAMILIES + ("demo",)

NOMINAL_RATE_HZ = 20.0
"""Nominal frame rate of the generated clips."""
TIMESTAMP_JITTER_NS = 500_000
"""Standard deviation of the timestamp jitter, nanoseconds (clipped at three times this)."""
NANOSECONDS_PER_SECOND = 1_000_000_000
MAX_PITCH = 1.2
"""Largest absolute pitch of the viewing direction, radians (keeps the camera off the zenith)."""
FIT_SAMPLES_PER_SECOND = 100.0
DEMO_PERIOD_S = 8.0
"""Duration of one loop of the demo path, seconds."""
DEMO_INWARD_YAW = 0.5
"""Angle (radians) from the demo camera's direction of travel to its view, towards the inside."""


# ----------------------------------------------------------------------------------------------
# Quaternion and pose helpers


def quaternion_to_matrix(quaternions: np.ndarray) -> np.ndarray:
    """Convert ``(..., 4)`` quaternions ``[x, y, z, w]`` (normalised here) to ``(..., 3, 3)``."""
    q = np.asarray(quaternions, dtype=np.float64)
    q = q / np.linalg.norm(q, axis=-1, keepdims=True)
    x, y, z, w = q[..., 0], q[..., 1], q[..., 2], q[..., 3]
    rows = [
        [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
        [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
        [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
    ]
    return np.stack([np.stack(row, axis=-1) for row in rows], axis=-2)


def matrix_to_quaternion(matrices: np.ndarray) -> np.ndarray:
    """Convert ``(..., 3, 3)`` rotation matrices to unit quaternions ``(..., 4)`` with ``w >= 0``.

    Uses the largest of the four ``|component|`` candidates to stay accurate near 180 degrees.
    """
    m = np.asarray(matrices, dtype=np.float64)
    batch = m.shape[:-2]
    m = m.reshape(-1, 3, 3)
    trace = m[:, 0, 0] + m[:, 1, 1] + m[:, 2, 2]
    candidates = np.stack(
        [
            1 + 2 * m[:, 0, 0] - trace,
            1 + 2 * m[:, 1, 1] - trace,
            1 + 2 * m[:, 2, 2] - trace,
            1 + trace,
        ],
        axis=-1,
    )
    best = np.argmax(candidates, axis=-1)
    quaternions = np.empty((len(m), 4))
    for index in range(len(m)):
        r = m[index]
        if best[index] == 3:
            w = np.sqrt(max(candidates[index, 3], 0.0)) / 2
            q = [(r[2, 1] - r[1, 2]) / (4 * w), (r[0, 2] - r[2, 0]) / (4 * w),
                 (r[1, 0] - r[0, 1]) / (4 * w), w]
        elif best[index] == 0:
            x = np.sqrt(max(candidates[index, 0], 0.0)) / 2
            q = [x, (r[0, 1] + r[1, 0]) / (4 * x), (r[0, 2] + r[2, 0]) / (4 * x),
                 (r[2, 1] - r[1, 2]) / (4 * x)]
        elif best[index] == 1:
            y = np.sqrt(max(candidates[index, 1], 0.0)) / 2
            q = [(r[0, 1] + r[1, 0]) / (4 * y), y, (r[1, 2] + r[2, 1]) / (4 * y),
                 (r[0, 2] - r[2, 0]) / (4 * y)]
        else:
            z = np.sqrt(max(candidates[index, 2], 0.0)) / 2
            q = [(r[0, 2] + r[2, 0]) / (4 * z), (r[1, 2] + r[2, 1]) / (4 * z), z,
                 (r[1, 0] - r[0, 1]) / (4 * z)]
        quaternions[index] = q
    quaternions /= np.linalg.norm(quaternions, axis=-1, keepdims=True)
    quaternions *= np.where(quaternions[:, 3:] < 0, -1.0, 1.0)
    return quaternions.reshape(*batch, 4)


def pose_to_matrix(poses: np.ndarray) -> np.ndarray:
    """Convert ``(..., 7)`` poses ``[t, q]`` to ``(..., 4, 4)`` homogeneous matrices."""
    poses = np.asarray(poses, dtype=np.float64)
    matrices = np.zeros(poses.shape[:-1] + (4, 4))
    matrices[..., :3, :3] = quaternion_to_matrix(poses[..., 3:])
    matrices[..., :3, 3] = poses[..., :3]
    matrices[..., 3, 3] = 1.0
    return matrices


def matrix_to_pose(matrices: np.ndarray) -> np.ndarray:
    """Convert ``(..., 4, 4)`` rigid transforms to ``(..., 7)`` poses ``[t, q]``."""
    matrices = np.asarray(matrices, dtype=np.float64)
    return np.concatenate(
        [matrices[..., :3, 3], matrix_to_quaternion(matrices[..., :3, :3])], axis=-1
    )


def relative_transform(poses_wc: np.ndarray, source: int, target: int) -> np.ndarray:
    """Return the ``(4, 4)`` transform ``T_target_source`` between two frames of a clip.

    It maps points in camera ``source`` coordinates to camera ``target`` coordinates:
    ``inv(T_world_target) @ T_world_source``.
    """
    world_source = pose_to_matrix(poses_wc[source])
    world_target = pose_to_matrix(poses_wc[target])
    return np.linalg.inv(world_target) @ world_source


def look_rotations(yaw: np.ndarray, pitch: np.ndarray, roll: np.ndarray) -> np.ndarray:
    """Build ``(N, 3, 3)`` rotations ``R_world_cam`` from viewing angles (radians).

    The optical axis points along ``(cos pitch cos yaw, cos pitch sin yaw, sin pitch)`` in the
    world (z up). With zero roll the camera x axis is horizontal (pointing right) and its y axis
    points down. Roll turns x and y about the optical axis.
    """
    forward = np.stack(
        [np.cos(pitch) * np.cos(yaw), np.cos(pitch) * np.sin(yaw), np.sin(pitch)], axis=-1
    )
    right = np.stack([np.sin(yaw), -np.cos(yaw), np.zeros_like(yaw)], axis=-1)
    down = np.cross(forward, right)
    cosine, sine = np.cos(roll)[:, None], np.sin(roll)[:, None]
    rolled_right = cosine * right + sine * down
    rolled_down = -sine * right + cosine * down
    return np.stack([rolled_right, rolled_down, forward], axis=-1)


# ----------------------------------------------------------------------------------------------
# Paths


def _empty_waves() -> np.ndarray:
    return np.zeros((0, 3))


@dataclass
class CameraPath:
    """A smooth camera path; positions are ``origin + scale * offset(t)``.

    Attributes:
        family: motion family name.
        velocity: ``(3,)`` constant part of the offset velocity, scene units per second.
        position_waves: ``(K, 3)`` sinusoid amplitudes of the offset, scene units.
        position_frequencies, position_phases: ``(K,)`` in Hz and radians.
        orbit_axes: ``(2, 3)`` semi-axes of the elliptic part of the offset,
            ``cos(angle) * axes[0] + sin(angle) * axes[1]`` (zeros for none), scene units.
        orbit_start, orbit_rate: start angle (radians) and angular rate (radians per second).
        heading: ``"velocity"`` (look along the motion), ``"fixed"`` or ``"target"`` (look at
            ``target_offset``).
        yaw, pitch: constant viewing angles added to the heading, radians.
        yaw_rate: steady panning rate, radians per second.
        angle_waves: ``(M, 3)`` sinusoid amplitudes of yaw, pitch and roll, radians.
        angle_frequencies, angle_phases: ``(M,)`` in Hz and radians.
        target_offset: ``(3,)`` looked-at point in offset coordinates.
        origin: ``(3,)`` world position of offset zero, set by :func:`fit_path`.
        scale: factor on offsets, set by :func:`fit_path` (at most 1).
    """

    family: str
    velocity: np.ndarray = field(default_factory=lambda: np.zeros(3))
    position_waves: np.ndarray = field(default_factory=_empty_waves)
    position_frequencies: np.ndarray = field(default_factory=lambda: np.zeros(0))
    position_phases: np.ndarray = field(default_factory=lambda: np.zeros(0))
    orbit_axes: np.ndarray = field(default_factory=lambda: np.zeros((2, 3)))
    orbit_start: float = 0.0
    orbit_rate: float = 0.0
    heading: str = "fixed"
    yaw: float = 0.0
    pitch: float = 0.0
    yaw_rate: float = 0.0
    angle_waves: np.ndarray = field(default_factory=_empty_waves)
    angle_frequencies: np.ndarray = field(default_factory=lambda: np.zeros(0))
    angle_phases: np.ndarray = field(default_factory=lambda: np.zeros(0))
    target_offset: np.ndarray = field(default_factory=lambda: np.zeros(3))
    origin: np.ndarray = field(default_factory=lambda: np.zeros(3))
    scale: float = 1.0

    def offsets(self, times_s: np.ndarray) -> np.ndarray:
        """``(N, 3)`` unscaled offsets at ``times_s`` (seconds)."""
        t = np.asarray(times_s, dtype=np.float64)[:, None]
        offsets = self.velocity * t
        angle = 2 * np.pi * self.position_frequencies * t + self.position_phases
        offsets = offsets + np.sin(angle) @ self.position_waves
        theta = self.orbit_start + self.orbit_rate * t
        return offsets + np.cos(theta) * self.orbit_axes[0] + np.sin(theta) * self.orbit_axes[1]

    def offset_velocities(self, times_s: np.ndarray) -> np.ndarray:
        """``(N, 3)`` time derivative of :meth:`offsets`, scene units per second."""
        t = np.asarray(times_s, dtype=np.float64)[:, None]
        omega = 2 * np.pi * self.position_frequencies
        wave_velocities = (np.cos(omega * t + self.position_phases) * omega) @ self.position_waves
        velocities = self.velocity + wave_velocities
        theta = self.orbit_start + self.orbit_rate * t
        tangent = -np.sin(theta) * self.orbit_axes[0] + np.cos(theta) * self.orbit_axes[1]
        return velocities + self.orbit_rate * tangent

    def positions(self, times_s: np.ndarray) -> np.ndarray:
        """``(N, 3)`` world camera centres at ``times_s``, scene units."""
        return self.origin + self.scale * self.offsets(times_s)

    def rotations(self, times_s: np.ndarray) -> np.ndarray:
        """``(N, 3, 3)`` rotations ``R_world_cam`` at ``times_s``."""
        t = np.asarray(times_s, dtype=np.float64)
        if self.heading == "velocity":
            direction = self.offset_velocities(t)
        elif self.heading == "target":
            direction = self.target_offset - self.offsets(t)
        else:
            direction = np.tile([1.0, 0.0, 0.0], (len(t), 1))
        base_yaw = np.arctan2(direction[:, 1], direction[:, 0])
        base_pitch = np.arctan2(direction[:, 2], np.hypot(direction[:, 0], direction[:, 1]))
        angle = 2 * np.pi * self.angle_frequencies * t[:, None] + self.angle_phases
        waves = np.sin(angle) @ self.angle_waves
        yaw = base_yaw + self.yaw + self.yaw_rate * t + waves[:, 0]
        pitch = np.clip(base_pitch + self.pitch + waves[:, 1], -MAX_PITCH, MAX_PITCH)
        return look_rotations(yaw, pitch, waves[:, 2])

    def poses(self, times_s: np.ndarray) -> np.ndarray:
        """``(N, 7)`` float64 poses ``T_world_cam`` at ``times_s``."""
        return np.concatenate(
            [self.positions(times_s), matrix_to_quaternion(self.rotations(times_s))], axis=-1
        )


def sample_path(
    family: str, rng: np.random.Generator, layout: Layout, duration_s: float
) -> CameraPath:
    """Draw a path of ``family`` and fit it into the layout's camera region.

    Args:
        family: one of :data:`ALL_MOTIONS`.
        rng: random generator.
        layout: scene layout; the path stays inside ``layout.camera_min/max``.
        duration_s: time span the path must cover, seconds.
    """
    samplers = {
        "forward": _forward,
        "lateral": _lateral,
        "rotation": _rotation,
        "shake": _shake,
        "orbit": _orbit,
        "demo": _demo,
    }
    if family not in samplers:
        raise ValueError(f"unknown motion family {family!r}; use one of {ALL_MOTIONS}")
    speed_scale = 5.0 if layout.kind == "outdoor" else 1.0
    path = samplers[family](rng, layout, speed_scale)
    return fit_path(path, layout, rng, duration_s)


def _main_heading(rng: np.random.Generator, layout: Layout) -> float:
    """Yaw (radians) of the room's long axis, in a random direction."""
    return layout.main_axis * np.pi / 2 + (np.pi if rng.random() < 0.5 else 0.0)


def _waves(
    rng: np.random.Generator, count: int, amplitude: tuple, frequency: tuple
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Random sinusoids: ``(count, 3)`` amplitudes (per-axis ranges), frequencies, phases."""
    low, high = np.broadcast_to(amplitude[0], 3), np.broadcast_to(amplitude[1], 3)
    amplitudes = rng.uniform(low, high, size=(count, 3)) * rng.choice([-1.0, 1.0], size=(count, 3))
    frequencies = rng.uniform(*frequency, size=count)
    phases = rng.uniform(0.0, 2 * np.pi, size=count)
    return amplitudes, frequencies, phases


def _gentle_angles(rng: np.random.Generator) -> dict:
    """Slow yaw, pitch and roll sinusoids of a few degrees."""
    waves, frequencies, phases = _waves(rng, 2, ((0.0, 0.0, 0.0), (0.12, 0.06, 0.04)), (0.1, 0.6))
    return {"angle_waves": waves, "angle_frequencies": frequencies, "angle_phases": phases}


def _forward(rng: np.random.Generator, layout: Layout, speed_scale: float) -> CameraPath:
    heading = _main_heading(rng, layout) + rng.uniform(-0.35, 0.35)
    speed = rng.uniform(0.6, 2.5) * speed_scale
    frequencies = rng.uniform(0.1, 0.6, size=2)
    amplitudes = rng.uniform(0.0, 0.3, size=(2, 1)) * speed / (2 * np.pi * frequencies[:, None])
    directions = np.array([[-np.sin(heading), np.cos(heading), 0.0], [0.0, 0.0, 0.3]])
    return CameraPath(
        family="forward",
        velocity=speed * np.array([np.cos(heading), np.sin(heading), 0.0]),
        position_waves=amplitudes * directions,
        position_frequencies=frequencies,
        position_phases=rng.uniform(0.0, 2 * np.pi, size=2),
        heading="velocity",
        yaw=rng.uniform(-0.2, 0.2),
        pitch=rng.uniform(-0.15, 0.1),
        **_gentle_angles(rng),
    )


def _lateral(rng: np.random.Generator, layout: Layout, speed_scale: float) -> CameraPath:
    look = _main_heading(rng, layout) + np.pi / 2 + rng.uniform(-0.3, 0.3)
    right = np.array([np.sin(look), -np.cos(look), 0.0])
    speed = rng.uniform(0.4, 2.0) * speed_scale * rng.choice([-1.0, 1.0])
    waves, frequencies, phases = _waves(rng, 2, ((0.0, 0.0, 0.0), (0.1, 0.1, 0.05)), (0.1, 0.5))
    return CameraPath(
        family="lateral",
        velocity=speed * right,
        position_waves=waves,
        position_frequencies=frequencies,
        position_phases=phases,
        heading="fixed",
        yaw=look,
        pitch=rng.uniform(-0.15, 0.1),
        **_gentle_angles(rng),
    )


def _rotation(rng: np.random.Generator, layout: Layout, speed_scale: float) -> CameraPath:
    drift_heading = rng.uniform(0.0, 2 * np.pi)
    drift_direction = np.array([np.cos(drift_heading), np.sin(drift_heading), 0.0])
    drift = rng.uniform(0.0, 0.3) * speed_scale * drift_direction
    panning = rng.random() < 0.5
    yaw_rate = rng.uniform(0.3, 1.2) * rng.choice([-1.0, 1.0]) if panning else 0.0
    yaw_amplitude = (0.05, 0.3) if panning else (0.3, 0.9)
    waves, frequencies, phases = _waves(
        rng, 2, ((yaw_amplitude[0], 0.05, 0.0), (yaw_amplitude[1], 0.3, 0.1)), (0.15, 0.6)
    )
    return CameraPath(
        family="rotation",
        velocity=drift,
        heading="fixed",
        yaw=rng.uniform(0.0, 2 * np.pi),
        pitch=rng.uniform(-0.2, 0.15),
        yaw_rate=yaw_rate,
        angle_waves=waves,
        angle_frequencies=frequencies,
        angle_phases=phases,
    )


def _shake(rng: np.random.Generator, layout: Layout, speed_scale: float) -> CameraPath:
    base_sampler = _forward if rng.random() < 0.5 else _lateral
    base = base_sampler(rng, layout, speed_scale)
    position_waves, position_frequencies, position_phases = _waves(
        rng, 3, (0.003, 0.02), (2.0, 7.0)
    )
    angle_waves, angle_frequencies, angle_phases = _waves(rng, 3, (0.005, 0.03), (2.0, 8.0))
    return replace(
        base,
        family="shake",
        position_waves=np.concatenate([base.position_waves, position_waves]),
        position_frequencies=np.concatenate([base.position_frequencies, position_frequencies]),
        position_phases=np.concatenate([base.position_phases, position_phases]),
        angle_waves=np.concatenate([base.angle_waves, angle_waves]),
        angle_frequencies=np.concatenate([base.angle_frequencies, angle_frequencies]),
        angle_phases=np.concatenate([base.angle_phases, angle_phases]),
    )


def _orbit(rng: np.random.Generator, layout: Layout, speed_scale: float) -> CameraPath:
    radius = rng.uniform(1.5, 4.0) * (1.0 if layout.kind == "room" else 2.0)
    arc_speed = rng.uniform(0.5, 2.5) * speed_scale
    waves, frequencies, phases = _waves(rng, 1, ((0.0, 0.0, 0.0), (0.0, 0.0, 0.1)), (0.2, 0.6))
    return CameraPath(
        family="orbit",
        orbit_axes=np.array([[radius, 0.0, 0.0], [0.0, radius, 0.0]]),
        orbit_start=rng.uniform(0.0, 2 * np.pi),
        orbit_rate=arc_speed / radius * rng.choice([-1.0, 1.0]),
        position_waves=waves,
        position_frequencies=frequencies,
        position_phases=phases,
        heading="target",
        target_offset=np.array([0.0, 0.0, rng.uniform(-0.6, 0.2)]),
        **_gentle_angles(rng),
    )


def _demo(rng: np.random.Generator, layout: Layout, speed_scale: float) -> CameraPath:
    """Elliptic loop (forward, sideways and back) looking inwards, with slow nodding and roll.

    The view follows the direction of travel turned towards the loop's inside, so the camera
    turns steadily at about one revolution per ``DEMO_PERIOD_S`` while it translates.
    """
    heading = _main_heading(rng, layout)
    forward = np.array([np.cos(heading), np.sin(heading), 0.0])
    side = np.array([-np.sin(heading), np.cos(heading), 0.0])
    return CameraPath(
        family="demo",
        orbit_axes=np.stack([2.5 * speed_scale * forward, 1.5 * speed_scale * side]),
        orbit_start=-np.pi / 2,
        orbit_rate=2 * np.pi / DEMO_PERIOD_S,
        position_waves=np.array([[0.0, 0.0, 0.15]]),
        position_frequencies=np.array([0.3]),
        position_phases=np.array([0.0]),
        heading="velocity",
        yaw=DEMO_INWARD_YAW,
        pitch=-0.05,
        angle_waves=np.array([[0.0, 0.08, 0.03]]),
        angle_frequencies=np.array([0.25]),
        angle_phases=np.array([0.0]),
    )


def fit_path(
    path: CameraPath, layout: Layout, rng: np.random.Generator, duration_s: float
) -> CameraPath:
    """Scale (down only) and shift ``path`` so it stays in the layout's camera region.

    The looked-at point of an orbit counts as part of the path, so it also lies in the region.
    The path keeps its height close to ``layout.camera_height`` where the region allows.
    """
    count = max(2, int(np.ceil(duration_s * FIT_SAMPLES_PER_SECOND)) + 1)
    offsets = path.offsets(np.linspace(0.0, duration_s, count))
    if path.heading == "target":
        offsets = np.vstack([offsets, path.target_offset])
    low, high = offsets.min(axis=0), offsets.max(axis=0)
    extent = high - low
    available = layout.camera_max - layout.camera_min
    ratios = np.where(extent > 1e-9, available / np.maximum(extent, 1e-9), np.inf)
    scale = float(min(1.0, ratios.min()))

    slack = available - scale * extent
    origin = layout.camera_min - scale * low + rng.uniform(0.0, 1.0, size=3) * slack
    middle_height = scale * (low[2] + high[2]) / 2.0
    lowest = layout.camera_min[2] - scale * low[2]
    highest = layout.camera_max[2] - scale * high[2]
    origin[2] = np.clip(layout.camera_height - middle_height, lowest, max(lowest, highest))
    return replace(path, origin=origin, scale=scale)


def sample_timestamps(
    rng: np.random.Generator, num_frames: int, frame_step: int, jitter: bool = True
) -> np.ndarray:
    """Return ``(num_frames,)`` int64 nanosecond timestamps starting at 0.

    Frames are ``frame_step`` nominal periods (``1 / NOMINAL_RATE_HZ``) apart. With ``jitter``
    every timestamp after the first moves by Gaussian noise of ``TIMESTAMP_JITTER_NS``
    (clipped at three standard deviations, far below one period, so order is kept).
    """
    period_ns = NANOSECONDS_PER_SECOND / NOMINAL_RATE_HZ
    stamps = np.arange(num_frames) * frame_step * period_ns
    if jitter and num_frames > 1:
        noise = rng.standard_normal(num_frames - 1) * TIMESTAMP_JITTER_NS
        stamps[1:] += np.clip(noise, -3 * TIMESTAMP_JITTER_NS, 3 * TIMESTAMP_JITTER_NS)
    return np.round(stamps).astype(np.int64)
