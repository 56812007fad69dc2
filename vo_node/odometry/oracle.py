"""Correspondence oracle: ground-truth patch motion in place of the network's ``(delta, weight)``.

With an oracle the frontend and the bundle adjustment can be checked without a trained network.
For each edge the oracle back-projects the patch centre with the ground-truth depth of its source
frame, moves the point with the ground-truth poses into the target frame and projects it. The
update then moves the reprojected centre exactly onto that position (``delta = true - current``)
with weight 1, or weight 0 where the point is out of view, behind the camera, occluded or has no
valid depth.
"""

from __future__ import annotations

import numpy as np
import torch

from vo_node.geometry import se3

OCCLUSION_TOLERANCE = 0.03
"""A point is occluded when its depth in the target frame exceeds the target's ground-truth depth
at that pixel by more than this fraction."""
DEPTH_EDGE_RATIO = 1.05
"""Neighbouring depths that differ by more than this ratio form a depth edge. The oracle takes the
nearest depth sample there instead of interpolating across the edge."""
MIN_TARGET_DEPTH = 1e-3
"""Points closer than this to the target camera plane (ground-truth units) are invalid."""


class CorrespondenceOracle:
    """Ground-truth correspondences of one sequence, indexed by input frame number.

    Args:
        depths: ``(N, H, W)`` z-depth of every input frame in ground-truth units; zero, negative
            or non-finite values mark pixels without depth.
        poses_wc: ``(N, 7)`` ground-truth ``T_world_cam`` of every input frame.
        intrinsics: ``[fx, fy, cx, cy]`` of the input images (pixels of ``depths``).
    """

    def __init__(
        self,
        depths: np.ndarray | torch.Tensor,
        poses_wc: np.ndarray | torch.Tensor,
        intrinsics: np.ndarray | torch.Tensor,
    ) -> None:
        # Depth maps stay float32 (the renderer's precision); samples are promoted to float64.
        depths = torch.as_tensor(np.asarray(depths), dtype=torch.float32)
        poses_wc = torch.as_tensor(np.asarray(poses_wc), dtype=torch.float64)
        intrinsics = torch.as_tensor(np.asarray(intrinsics), dtype=torch.float64).reshape(-1)
        if depths.dim() != 3:
            raise ValueError(f"depths must have shape (N, H, W), got {tuple(depths.shape)}")
        if poses_wc.shape != (depths.shape[0], 7):
            raise ValueError(
                f"poses_wc must have shape ({depths.shape[0]}, 7) to match the depth maps, "
                f"got {tuple(poses_wc.shape)}"
            )
        if intrinsics.shape != (4,):
            raise ValueError(f"intrinsics must be [fx, fy, cx, cy], got {intrinsics.tolist()}")
        valid = torch.isfinite(depths) & (depths > 0)
        self.depths = torch.where(valid, depths, torch.zeros_like(depths))
        self.inverse_depths = torch.where(valid, 1.0 / depths, torch.zeros_like(depths))
        self.poses_cw = se3.invert(poses_wc)
        self.poses_wc = poses_wc
        self.intrinsics = intrinsics

    @property
    def num_frames(self) -> int:
        return int(self.depths.shape[0])

    def correspondences(
        self,
        source_frames: torch.Tensor,
        target_frames: torch.Tensor,
        centres: torch.Tensor,
        intrinsics: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Return the true target positions ``(E, 2)`` and weights ``(E, 2)`` of patch centres.

        Args:
            source_frames, target_frames: ``(E,)`` input frame numbers of each edge.
            centres: ``(E, 2)`` patch centres ``(u, v)`` in the source frame, in pixels of the
                camera ``intrinsics`` describes (the frontend passes 1/4-resolution pixels).
            intrinsics: ``[fx, fy, cx, cy]`` of ``centres``' pixels; the oracle converts through
                normalised coordinates, so that camera may be a scaled or cropped input camera.

        Returns:
            Positions in the same pixels as ``centres`` (equal to ``centres`` where the weight is
            0) and weights of 1 (visible) or 0, on the device of ``centres``.
        """
        if centres.dim() != 2 or centres.shape[1] != 2 or len(centres) != len(source_frames):
            raise ValueError(
                f"centres must have shape (E, 2) with E = {len(source_frames)} edges, "
                f"got {tuple(centres.shape)}"
            )
        device, dtype = centres.device, centres.dtype
        source = source_frames.long().cpu()
        target = target_frames.long().cpu()
        self._check_frames(source, target)
        camera = torch.as_tensor(intrinsics, dtype=torch.float64).reshape(-1).cpu()
        uv = centres.detach().double().cpu()

        rays = torch.stack(
            [(uv[:, 0] - camera[2]) / camera[0], (uv[:, 1] - camera[3]) / camera[1]], dim=-1
        )
        source_depth = self._sample_depth(source, self._to_input_pixels(rays))
        points = torch.cat([rays, torch.ones_like(rays[:, :1])], dim=-1) * source_depth[:, None]
        relative = se3.compose(self.poses_cw[target], self.poses_wc[source])  # T_target_source
        moved = se3.transform_points(relative, points)

        depth = moved[:, 2]
        in_front = depth > MIN_TARGET_DEPTH
        safe_depth = torch.where(in_front, depth, torch.ones_like(depth))
        target_rays = moved[:, :2] / safe_depth[:, None]
        target_pixels = self._to_input_pixels(target_rays)
        visible = in_front & (source_depth > 0) & self._inside(target_pixels)
        visible &= ~self._occluded(target, target_pixels, depth, visible)

        true = torch.stack(
            [camera[0] * target_rays[:, 0] + camera[2], camera[1] * target_rays[:, 1] + camera[3]],
            dim=-1,
        )
        true = torch.where(visible[:, None], true, uv)
        weight = visible.to(torch.float64)[:, None].expand(-1, 2)
        return true.to(device=device, dtype=dtype), weight.to(device=device, dtype=dtype)

    def _check_frames(self, source: torch.Tensor, target: torch.Tensor) -> None:
        for name, frames in (("source", source), ("target", target)):
            if frames.numel() and (int(frames.min()) < 0 or int(frames.max()) >= self.num_frames):
                raise IndexError(
                    f"{name} frame {int(frames.max())} is outside the oracle's "
                    f"{self.num_frames} ground-truth frames; give the oracle every input frame"
                )

    def _to_input_pixels(self, rays: torch.Tensor) -> torch.Tensor:
        fx, fy, cx, cy = self.intrinsics
        return torch.stack([fx * rays[:, 0] + cx, fy * rays[:, 1] + cy], dim=-1)

    def _inside(self, pixels: torch.Tensor) -> torch.Tensor:
        height, width = self.depths.shape[1:]
        x, y = pixels[:, 0], pixels[:, 1]
        return (x >= 0) & (x <= width - 1) & (y >= 0) & (y <= height - 1)

    def _sample_depth(self, frames: torch.Tensor, pixels: torch.Tensor) -> torch.Tensor:
        """Depth ``(E,)`` at sub-pixel positions; 0 where unknown or outside the image.

        Inverse depth is interpolated bilinearly, which is exact on planes. Across a depth edge, or
        next to a pixel without depth, the nearest sample is used instead.
        """
        height, width = self.depths.shape[1:]
        x = pixels[:, 0].clamp(0, width - 1)
        y = pixels[:, 1].clamp(0, height - 1)
        x0 = x.floor().long().clamp(max=width - 2)
        y0 = y.floor().long().clamp(max=height - 2)
        fx, fy = x - x0, y - y0

        corners = torch.stack(
            [
                self.inverse_depths[frames, y0, x0],
                self.inverse_depths[frames, y0, x0 + 1],
                self.inverse_depths[frames, y0 + 1, x0],
                self.inverse_depths[frames, y0 + 1, x0 + 1],
            ],
            dim=-1,
        ).double()
        weights = torch.stack([(1 - fx) * (1 - fy), fx * (1 - fy), (1 - fx) * fy, fx * fy], dim=-1)
        blended = (corners * weights).sum(dim=-1)

        low, high = corners.min(dim=-1).values, corners.max(dim=-1).values
        smooth = (low > 0) & (high <= low * DEPTH_EDGE_RATIO)
        nearest = self.inverse_depths[frames, y.round().long(), x.round().long()].double()
        inverse = torch.where(smooth, blended, nearest)
        depth = torch.where(inverse > 0, 1.0 / inverse.clamp(min=1e-12), torch.zeros_like(inverse))
        return torch.where(self._inside(pixels), depth, torch.zeros_like(depth))

    def _occluded(
        self, frames: torch.Tensor, pixels: torch.Tensor, depth: torch.Tensor, visible: torch.Tensor
    ) -> torch.Tensor:
        """Return True where the target frame's ground-truth surface is closer than the point."""
        surface = self._sample_depth(frames, pixels)
        return visible & (surface > 0) & (depth > surface * (1 + OCCLUSION_TOLERANCE))
