"""Patch graph state of the incremental frontend: keyframes, patches, edges and ring buffers.

Indices. Active keyframes have *local* indices ``0 .. n-1`` (oldest first); edges store local
frame indices ``ii`` (source) and ``jj`` (target) and the local patch index ``kk = ii * M + m``.
Every input frame also has a *frame id*, its 0-based position in the input stream, which the
trajectory uses.

Memory. Only recent keyframes take part in the optimisation: edges retire once their source
frame is older than the removal window, and every edge's target lies within the patch lifetime of
its source. Older keyframes are *folded out*: their poses are final and move to a small archive,
and their patches and features are released. The active store therefore grows in chunks until it
covers the working window and then stays at that size, so long sequences need no buffer tuning.

Removed keyframes keep their pose relative to the keyframes before and after them,
``T_cam_anchor``, and frames skipped as static keep only their timestamp.
:meth:`PatchGraph.trajectory` rebuilds both at the end: a removed keyframe from both neighbours,
blended by timestamp, and a static frame by interpolation between its neighbours.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch

from vo_node.config import ConfigError, FrontendConfig, NetworkConfig
from vo_node.geometry import se3
from vo_node.model.correlation import GridProducts

logger = logging.getLogger(__name__)

GROWTH_CHUNK = 16
"""Keyframes added to the store's capacity when it is full and too little can be folded out."""
MIN_FOLD = 8
"""Fold out old keyframes only when at least this many can go, so copies happen rarely."""
DEPTH_INIT_FRAMES = 3
"""New patch depths start at the median inverse depth of this many newest keyframes."""


@dataclass
class DroppedFrame:
    """An input frame that is not an active keyframe, stored relative to an anchor frame."""

    timestamp_ns: int
    anchor_frame_id: int
    relative_pose: np.ndarray | None
    """``(7,)`` float64 ``T_cam_anchor``: the frame's pose is ``relative_pose * T_anchor_world``.
    None: interpolate the pose by timestamp between the neighbouring frames."""
    successor_frame_id: int | None = None
    """A second, later anchor frame (a removed keyframe's successor), or None."""
    successor_relative_pose: np.ndarray | None = None
    """``(7,)`` float64 ``T_cam_successor``, set together with ``successor_frame_id``."""


class PatchGraph:
    """Keyframe poses, patches, per-patch features, the dense-map ring buffer and the edges.

    Attributes (``C`` capacity, ``M`` patches per frame, ``P`` patch size, ``E`` edges):
        poses: ``(C, 7)`` float32 ``T_cam_world`` of the active keyframes (rows ``< n`` valid).
        patches: ``(C, M, 3, P, P)`` float32 ``(u, v, inverse depth)``, 1/4-resolution pixels.
        gmap: ``(C, M, F, P, P)`` matching-feature crops, or None without a network.
        context: ``(C, M, D)`` context vectors, or None without a network.
        timestamps_ns, frame_ids: ``(C,)`` int64 numpy arrays.
        fmaps: dense matching maps per pyramid level, ``(frame_memory, F, h_l, w_l)`` each, or
            None without a network. Keyframe ``g`` (global index) has ring position
            ``g % frame_memory``, and :meth:`fmap_slots` maps that position to its slot in
            ``fmaps``. Removing a keyframe permutes this table instead of moving maps.
        ii, jj, kk: ``(E,)`` int64 edge indices; hidden: ``(E, D)`` per-edge state or None.
        grid_products: the edges' correlation products kept for reuse, one row per edge, or
            None until the frontend first correlates the edges.
    """

    def __init__(
        self,
        frontend: FrontendConfig,
        network: NetworkConfig,
        device: torch.device | str = "cpu",
        initial_capacity: int = GROWTH_CHUNK * 2,
    ) -> None:
        self.frontend = frontend
        self.patches_per_frame = frontend.patches_per_frame
        self.patch_size = network.patch_size
        self.device = torch.device(device)
        needed = frontend.removal_window + frontend.patch_lifetime
        if frontend.frame_memory < needed:
            raise ConfigError(
                f"frontend.frame_memory ({frontend.frame_memory}) must be at least "
                f"removal_window + patch_lifetime ({needed}): edges reach that far back"
            )
        if frontend.max_keyframes < needed + 1:
            raise ConfigError(
                f"frontend.max_keyframes ({frontend.max_keyframes}) must exceed "
                f"removal_window + patch_lifetime ({needed})"
            )
        self.keep_recent = max(
            frontend.optimization_window + 1, frontend.keyframe_index + 2, DEPTH_INIT_FRAMES
        )
        self._initial_capacity = min(max(initial_capacity, 2), frontend.max_keyframes)
        self.clear()

    # -----------------------------------------------------------------------------------------
    # State

    def clear(self) -> None:
        """Forget every keyframe, edge, archived pose and dropped frame."""
        self._allocate(self._initial_capacity)
        self.archive_frame_ids: list[int] = []
        self.archive_timestamps_ns: list[int] = []
        self.archive_poses: list[np.ndarray] = []
        self.dropped: dict[int, DroppedFrame] = {}
        self.num_folded = 0

    def _allocate(self, capacity: int) -> None:
        M, P = self.patches_per_frame, self.patch_size
        self.n = 0
        self.capacity = capacity
        self.poses = se3.identity((capacity,), device=self.device)
        self.patches = torch.zeros(capacity, M, 3, P, P, device=self.device)
        self.gmap: torch.Tensor | None = None
        self.context: torch.Tensor | None = None
        self.fmaps: list[torch.Tensor] | None = None
        self._ring_slots = list(range(self.frontend.frame_memory))
        self._ring_table = torch.arange(self.frontend.frame_memory, device=self.device)
        self.timestamps_ns = np.zeros(capacity, dtype=np.int64)
        self.frame_ids = np.zeros(capacity, dtype=np.int64)
        self.ii = torch.zeros(0, dtype=torch.long, device=self.device)
        self.jj = torch.zeros_like(self.ii)
        self.kk = torch.zeros_like(self.ii)
        self.hidden: torch.Tensor | None = None
        self.grid_products: GridProducts | None = None

    @property
    def num_edges(self) -> int:
        return int(self.ii.numel())

    @property
    def num_frames(self) -> int:
        """Keyframes ever added and not removed: folded-out ones plus the active ``n``."""
        return self.num_folded + self.n

    @property
    def active_poses(self) -> torch.Tensor:
        """``(n, 7)`` view of the active ``T_cam_world`` poses."""
        return self.poses[: self.n]

    @property
    def active_patches(self) -> torch.Tensor:
        """``(n * M, 3, P, P)`` view of the active patches, indexed by ``kk``."""
        return self.patches[: self.n].flatten(0, 1)

    def fmap_slots(self, frames: torch.Tensor) -> torch.Tensor:
        """Ring-buffer slots ``(E,)`` of local keyframe indices ``frames`` ``(E,)``."""
        return self._ring_table[(frames + self.num_folded) % self.frontend.frame_memory]

    def last_frame_id(self) -> int | None:
        """Frame id of the newest keyframe (active or archived), None when there is none."""
        if self.n > 0:
            return int(self.frame_ids[self.n - 1])
        if self.archive_frame_ids:
            return self.archive_frame_ids[-1]
        return None

    # -----------------------------------------------------------------------------------------
    # Keyframes

    def add_keyframe(
        self,
        pose_cw: torch.Tensor,
        patches: torch.Tensor,
        timestamp_ns: int,
        frame_id: int,
        gmap: torch.Tensor | None = None,
        context: torch.Tensor | None = None,
        fmap_pyramid: list[torch.Tensor] | None = None,
    ) -> int:
        """Append a keyframe and return its local index.

        Args:
            pose_cw: ``(7,)`` initial ``T_cam_world``.
            patches: ``(M, 3, P, P)`` patches with their initial inverse depths.
            timestamp_ns, frame_id: input timestamp and 0-based input position.
            gmap: ``(M, F, P, P)`` matching crops; context: ``(M, D)`` context vectors.
            fmap_pyramid: dense matching maps, one ``(F, h_l, w_l)`` tensor per pyramid level.
        """
        self._reserve_one()
        index = self.n
        self.poses[index] = pose_cw
        self.patches[index] = patches
        self.timestamps_ns[index] = timestamp_ns
        self.frame_ids[index] = frame_id
        if gmap is not None and context is not None:
            self._store_features(index, gmap, context)
        if fmap_pyramid is not None:
            self._store_fmaps(self.num_folded + index, fmap_pyramid)
        self.n += 1
        return index

    def pop_newest(self) -> None:
        """Remove the newest keyframe, which must not have edges yet (a rejected new frame)."""
        if self.n == 0:
            raise ValueError("no keyframe to remove: the patch graph is empty")
        newest = self.n - 1
        if self.num_edges and bool(((self.ii == newest) | (self.jj == newest)).any()):
            raise ValueError(f"newest keyframe {newest} still has edges; remove them first")
        self.n -= 1

    def _store_features(self, index: int, gmap: torch.Tensor, context: torch.Tensor) -> None:
        if self.gmap is None or self.context is None:
            self.gmap = gmap.new_zeros(self.capacity, *gmap.shape)
            self.context = context.new_zeros(self.capacity, *context.shape)
        self.gmap[index] = gmap
        self.context[index] = context

    def _store_fmaps(self, global_index: int, pyramid: list[torch.Tensor]) -> None:
        if self.fmaps is None:
            memory = self.frontend.frame_memory
            self.fmaps = [level.new_zeros(memory, *level.shape) for level in pyramid]
        slot = self._ring_slots[global_index % self.frontend.frame_memory]
        for store, level in zip(self.fmaps, pyramid):
            store[slot] = level

    def _reserve_one(self) -> None:
        """Make room for one more keyframe: fold out old keyframes or grow the store."""
        if self.n < self.capacity:
            return
        foldable = self.foldable_count()
        if foldable >= MIN_FOLD or (foldable > 0 and self.capacity >= self.frontend.max_keyframes):
            self.fold(foldable)
            return
        if self.capacity >= self.frontend.max_keyframes:
            raise RuntimeError(
                f"patch graph full: {self.n} active keyframes are all still referenced; "
                f"raise frontend.max_keyframes (now {self.frontend.max_keyframes})"
            )
        self._grow(min(self.capacity + GROWTH_CHUNK, self.frontend.max_keyframes))

    def _grow(self, capacity: int) -> None:
        extra = capacity - self.capacity
        logger.debug("growing patch graph from %d to %d keyframes", self.capacity, capacity)
        self.poses = torch.cat([self.poses, se3.identity((extra,), device=self.device)])
        self.patches = torch.cat([self.patches, self.patches.new_zeros(extra, *self.patches.shape[1:])])
        if self.gmap is not None and self.context is not None:
            self.gmap = torch.cat([self.gmap, self.gmap.new_zeros(extra, *self.gmap.shape[1:])])
            self.context = torch.cat(
                [self.context, self.context.new_zeros(extra, *self.context.shape[1:])]
            )
        self.timestamps_ns = np.concatenate([self.timestamps_ns, np.zeros(extra, np.int64)])
        self.frame_ids = np.concatenate([self.frame_ids, np.zeros(extra, np.int64)])
        self.capacity = capacity

    def foldable_count(self) -> int:
        """Number of oldest keyframes that no edge and no frontend window refers to."""
        lowest = self.n - self.keep_recent
        if self.num_edges:
            lowest = min(lowest, int(torch.minimum(self.ii.min(), self.jj.min())))
        return max(0, lowest)

    def fold(self, count: int) -> None:
        """Move the ``count`` oldest active keyframes to the archive; their poses become final."""
        if count <= 0:
            return
        if count > self.n:
            raise ValueError(f"cannot fold {count} keyframes, only {self.n} are active")
        poses = self.poses[:count].detach().double().cpu().numpy()
        self.archive_frame_ids.extend(int(f) for f in self.frame_ids[:count])
        self.archive_timestamps_ns.extend(int(t) for t in self.timestamps_ns[:count])
        self.archive_poses.extend(poses)
        self._shift_down(count, 0)
        self.num_folded += count

    def fold_all(self) -> None:
        """Archive every active keyframe and drop all edges (used to restart after a loss)."""
        self.remove_edges(torch.ones_like(self.ii, dtype=torch.bool))
        # Folding shifts the ring buffer's global index; the maps of the archived frames are no
        # longer needed, so no ring slots have to move.
        self.fold(self.n)

    def _shift_down(self, count: int, start: int) -> None:
        """Delete local keyframes ``start .. start+count-1`` and shift the later ones down.

        Edges must not refer to the deleted keyframes; later edge indices move down with them.
        """
        stop = self.n
        keep = slice(start + count, stop)
        target = slice(start, stop - count)
        self.poses[target] = self.poses[keep].clone()
        self.patches[target] = self.patches[keep].clone()
        if self.gmap is not None and self.context is not None:
            self.gmap[target] = self.gmap[keep].clone()
            self.context[target] = self.context[keep].clone()
        self.timestamps_ns[target] = self.timestamps_ns[keep].copy()
        self.frame_ids[target] = self.frame_ids[keep].copy()
        self.n -= count

        later = self.ii >= start + count
        self.ii = torch.where(later, self.ii - count, self.ii)
        self.kk = torch.where(later, self.kk - count * self.patches_per_frame, self.kk)
        self.jj = torch.where(self.jj >= start + count, self.jj - count, self.jj)

    def remove_keyframe(self, index: int) -> None:
        """Remove active keyframe ``index`` (not the first), keeping its pose relative to its
        predecessor and successor so the trajectory can be rebuilt; its edges go, later
        keyframes shift down.

        Both anchors matter when the predecessor is much older, as when slow motion removes
        every new keyframe. The BA may later move the two anchors apart. A pose kept relative
        to the old predecessor alone would then jump away from the frames after it.
        """
        if not 0 < index < self.n:
            raise ValueError(f"keyframe index must be in 1..{self.n - 1}, got {index}")
        frame_id = int(self.frame_ids[index])
        successor = index + 1 if index + 1 < self.n else None
        self.dropped[frame_id] = DroppedFrame(
            timestamp_ns=int(self.timestamps_ns[index]),
            anchor_frame_id=int(self.frame_ids[index - 1]),
            relative_pose=self._relative_pose(index, index - 1),
            successor_frame_id=None if successor is None else int(self.frame_ids[successor]),
            successor_relative_pose=None if successor is None else self._relative_pose(
                index, successor
            ),
        )
        self.remove_edges((self.ii == index) | (self.jj == index))
        if self.fmaps is not None:
            self._shift_fmaps(self.num_folded + index, self.num_folded + self.n)
        self._shift_down(1, index)

    def _relative_pose(self, index: int, anchor: int) -> np.ndarray:
        """Return ``T_cam_anchor`` ``(7,)`` float64: active keyframe ``index`` relative to keyframe
        ``anchor``."""
        relative = se3.compose(
            self.poses[index].double(), se3.invert(self.poses[anchor].double())
        )
        return relative.cpu().numpy()

    def _shift_fmaps(self, start: int, stop: int) -> None:
        """Give global keyframes ``start+1 .. stop-1`` the ring positions one lower.

        The maps stay where they are: the table of ring positions rotates, and the slot of
        keyframe ``start`` (removed) becomes the slot of position ``stop - 1``, the next one
        written. Only the newest ``frame_memory`` positions take part, because older ones have
        been overwritten.
        """
        memory = self.frontend.frame_memory
        positions = [index % memory for index in range(max(start, stop - memory), stop)]
        if len(positions) < 2:
            return
        slots = [self._ring_slots[position] for position in positions]
        for position, slot in zip(positions, slots[1:] + slots[:1]):
            self._ring_slots[position] = slot
        self._ring_table = torch.tensor(self._ring_slots, device=self.device)

    def record_dropped(
        self,
        frame_id: int,
        timestamp_ns: int,
        anchor_frame_id: int,
        relative_pose: np.ndarray | None = None,
    ) -> None:
        """Keep an input frame that is not a keyframe, as a pose ``T_cam_anchor`` relative to
        an anchor frame, or (None) to be interpolated between its neighbours by timestamp."""
        if relative_pose is not None:
            relative_pose = np.asarray(relative_pose, dtype=np.float64)
        self.dropped[frame_id] = DroppedFrame(int(timestamp_ns), int(anchor_frame_id), relative_pose)

    # -----------------------------------------------------------------------------------------
    # Edges

    def new_frame_edges(self, lifetime: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Edges of the newest keyframe ``t = n - 1`` as ``(ii, jj, kk)``, each ``(E_new,)``.

        Forward: every patch of keyframes ``max(0, t - lifetime + 1) .. t - 1`` into ``t``.
        Backward: every patch of ``t`` into keyframes ``max(0, t - lifetime + 1) .. t``.
        Without truncation that is ``(2 * lifetime - 1) * M`` edges.
        """
        M = self.patches_per_frame
        newest = self.n - 1
        first = max(0, newest - lifetime + 1)
        device = self.device

        forward_kk = torch.arange(first * M, newest * M, device=device)
        forward_jj = torch.full_like(forward_kk, newest)

        new_kk = torch.arange(newest * M, (newest + 1) * M, device=device)
        targets = torch.arange(first, newest + 1, device=device)
        backward_kk = new_kk.repeat_interleave(len(targets))
        backward_jj = targets.repeat(M)

        kk = torch.cat([forward_kk, backward_kk])
        jj = torch.cat([forward_jj, backward_jj])
        return kk // M, jj, kk

    def add_edges(
        self, ii: torch.Tensor, jj: torch.Tensor, kk: torch.Tensor, hidden_dim: int | None
    ) -> None:
        """Append edges with a zero hidden state (``hidden_dim`` channels; None: no state)."""
        self.ii = torch.cat([self.ii, ii.to(self.device)])
        self.jj = torch.cat([self.jj, jj.to(self.device)])
        self.kk = torch.cat([self.kk, kk.to(self.device)])
        if hidden_dim is not None:
            zeros = torch.zeros(len(ii), hidden_dim, device=self.device)
            if self.hidden is not None:
                zeros = zeros.to(self.hidden.dtype)
                self.hidden = torch.cat([self.hidden, zeros])
            else:
                self.hidden = zeros
        if self.grid_products is not None:
            self.grid_products.append(len(ii))

    def remove_edges(self, mask: torch.Tensor) -> None:
        """Drop the edges where ``mask`` ``(E,)`` is True."""
        if not bool(mask.any()):
            return
        keep = ~mask
        self.ii = self.ii[keep]
        self.jj = self.jj[keep]
        self.kk = self.kk[keep]
        if self.hidden is not None:
            self.hidden = self.hidden[keep]
        if self.grid_products is not None:
            self.grid_products.keep(keep)

    def retire_edges(self, removal_window: int) -> None:
        """Drop edges whose source keyframe is older than ``n - removal_window``."""
        self.remove_edges(self.ii < self.n - removal_window)

    # -----------------------------------------------------------------------------------------
    # Trajectory

    def trajectory(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Return frame ids ``(N,)``, timestamps ``(N,)`` ns and ``T_cam_world`` ``(N, 7)`` float64
        of every input frame seen, sorted by frame id.

        Keyframes (archived and active) keep their poses. Removed keyframes are rebuilt from
        their relative pose to their anchor. Frames dropped without a relative pose (static
        frames) are interpolated by timestamp between the nearest rebuilt frames before and after
        them, or take the pose of the frame before when none follows.
        """
        known: dict[int, np.ndarray] = {}
        stamps: dict[int, int] = {}
        for frame_id, stamp, pose in zip(
            self.archive_frame_ids, self.archive_timestamps_ns, self.archive_poses
        ):
            known[frame_id] = pose
            stamps[frame_id] = stamp
        active = self.active_poses.detach().double().cpu().numpy()
        for index in range(self.n):
            known[int(self.frame_ids[index])] = active[index]
            stamps[int(self.frame_ids[index])] = int(self.timestamps_ns[index])

        for frame_id, dropped in self.dropped.items():
            stamps[frame_id] = dropped.timestamp_ns
        for frame_id, dropped in self.dropped.items():
            if dropped.relative_pose is not None:
                self._resolve(frame_id, known, stamps)
        self._interpolate_static(known, stamps)

        order = sorted(known)
        return (
            np.array(order, dtype=np.int64),
            np.array([stamps[f] for f in order], dtype=np.int64),
            np.stack([known[f] for f in order]) if order else np.zeros((0, 7)),
        )

    def _resolve(
        self, frame_id: int, known: dict[int, np.ndarray], stamps: dict[int, int]
    ) -> np.ndarray:
        """Compute a dropped frame's pose from its anchors, resolving dropped anchors first.

        A depth-first walk with an explicit stack, so long chains of removed keyframes need no
        recursion. Anchors are keyframes that were active when the frame was removed, so the
        walk always ends at active or archived keyframes.
        """
        stack = [frame_id]  # a path: each entry is an anchor of the one below it
        on_stack = {frame_id}
        while stack:
            current = stack[-1]
            if current in known:
                on_stack.discard(stack.pop())
                continue
            dropped = self.dropped.get(current)
            if dropped is None or dropped.relative_pose is None:
                raise RuntimeError(f"frame {frame_id} has no pose: anchor {current} is unknown")
            anchors = [dropped.anchor_frame_id]
            if dropped.successor_frame_id is not None:
                anchors.append(dropped.successor_frame_id)
            missing = [anchor for anchor in anchors if anchor not in known]
            if missing:
                if missing[0] in on_stack:
                    raise RuntimeError(f"frame {frame_id} has no pose: its anchors form a cycle")
                stack.append(missing[0])
                on_stack.add(missing[0])
                continue
            known[current] = _pose_from_anchors(dropped, known, stamps)
            on_stack.discard(stack.pop())
        return known[frame_id]

    def _interpolate_static(self, known: dict[int, np.ndarray], stamps: dict[int, int]) -> None:
        """Fill in frames dropped without a relative pose; see :meth:`trajectory`."""
        static = sorted(f for f, d in self.dropped.items() if d.relative_pose is None)
        if not static:
            return
        resolved = np.array(sorted(known), dtype=np.int64)
        if len(resolved) == 0:
            raise RuntimeError("static frames were dropped but no keyframe pose exists")
        frames = np.array(static, dtype=np.int64)
        after = np.searchsorted(resolved, frames)
        before = np.clip(after - 1, 0, len(resolved) - 1)
        has_next = after < len(resolved)
        after = np.clip(after, 0, len(resolved) - 1)

        stamp_of = np.vectorize(lambda frame: stamps[int(frame)], otypes=[np.int64])
        start_ns = stamp_of(resolved[before])
        end_ns = stamp_of(resolved[after])
        span = np.maximum(end_ns - start_ns, 1)
        alpha = np.where(has_next, (stamp_of(frames) - start_ns) / span, 0.0)

        # Interpolate camera-to-world poses so camera centres move on straight lines.
        start = se3.invert(torch.from_numpy(np.stack([known[int(f)] for f in resolved[before]])))
        end = se3.invert(torch.from_numpy(np.stack([known[int(f)] for f in resolved[after]])))
        blended = se3.invert(se3.interpolate(start, end, torch.from_numpy(alpha)))
        for frame, pose in zip(static, blended.numpy()):
            known[frame] = pose


def _pose_from_anchors(
    dropped: DroppedFrame, known: dict[int, np.ndarray], stamps: dict[int, int]
) -> np.ndarray:
    """Return the ``T_cam_world`` ``(7,)`` of a dropped frame whose anchors are ``known``.

    With a successor the poses implied by the two anchors are blended by timestamp, in
    camera-to-world form as for static frames, so each anchor counts more the closer it is.
    """
    relative = torch.from_numpy(dropped.relative_pose)
    from_predecessor = se3.compose(relative, torch.from_numpy(known[dropped.anchor_frame_id]))
    if dropped.successor_frame_id is None or dropped.successor_relative_pose is None:
        return from_predecessor.numpy()
    successor = torch.from_numpy(known[dropped.successor_frame_id])
    from_successor = se3.compose(torch.from_numpy(dropped.successor_relative_pose), successor)
    start_ns = stamps[dropped.anchor_frame_id]
    end_ns = stamps[dropped.successor_frame_id]
    alpha = (dropped.timestamp_ns - start_ns) / max(end_ns - start_ns, 1)
    blended = se3.interpolate(
        se3.invert(from_predecessor), se3.invert(from_successor), min(max(alpha, 0.0), 1.0)
    )
    return se3.invert(blended).numpy()
