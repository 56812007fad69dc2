"""The unrolled training forward: one clip streamed into a dense patch graph (DPVO's recipe).

Random patches are cut from every frame. The first ``init_frames`` frames start densely connected
(every patch to every one of those frames, its own included), all poses at the identity and all
patch inverse depths random. From iteration ``init_iterations`` on, one frame joins per iteration.
Its pose is copied from the previous frame and its patches start at the median inverse depth of
the previous two frames. New edges connect every older patch to it and its patches to every
frame so far. Each iteration then runs

    reproject -> correlation -> update operator -> target = centre + delta -> BA

and records the post-BA reprojections, that iteration's weight and the ground-truth
reprojections. Poses and patch depths are detached at the start of every iteration, so gradients
reach the network through one BA call at a time; the hidden state is not detached, so gradients
also flow back through the recurrent state.
"""

from __future__ import annotations

import logging
from typing import Callable

import torch
from torch import Tensor, nn

from vo_node.ba.solver import bundle_adjust
from vo_node.config import BAConfig
from vo_node.geometry import se3
from vo_node.geometry.projection import reproject
from vo_node.model.correlation import correlate
from vo_node.model.network import VONetwork
from vo_node.train.config import LossConfig, UnrollConfig
from vo_node.train.losses import IterationRecord, compute_losses, flow_epe, pose_loss

logger = logging.getLogger(__name__)

FEATURE_STRIDE = 4
"""The network works at 1/4 of the input resolution."""
DEPTH_SAMPLE_OFFSET = 1
"""A 1/4-resolution pixel ``u`` takes the ground-truth depth of input pixel ``4 u + 1``."""
KEYFRAME_DROP_OFFSET = 4
"""A keyframe drop removes the edges of frame ``n - 4`` (the frontend's removal candidate)."""


def dense_edges(patch_ids: Tensor, frames: Tensor, frame_index: Tensor) -> tuple[Tensor, ...]:
    """Return ``(ii, jj, kk)`` connecting every patch in ``patch_ids`` to every frame in ``frames``."""
    kk, jj = torch.meshgrid(patch_ids, frames, indexing="ij")
    kk, jj = kk.reshape(-1), jj.reshape(-1)
    return frame_index[kk], jj, kk


def ground_truth_patches(patches: Tensor, frame_index: Tensor, depths: Tensor) -> Tensor:
    """Return ``patches`` (K, 3, P, P) with each pixel's ground-truth inverse depth (0 if unknown).

    Args:
        patches: (K, 3, P, P) integer 1/4-resolution pixel grids (third channel ignored).
        frame_index: (K,) frame of each patch.
        depths: (N, H, W) ground-truth depth at input resolution, 0 where unknown.
    """
    inverse = torch.where(depths > 0, 1.0 / depths.clamp(min=1e-6), torch.zeros_like(depths))
    quarter = inverse[:, DEPTH_SAMPLE_OFFSET::FEATURE_STRIDE, DEPTH_SAMPLE_OFFSET::FEATURE_STRIDE]
    u = patches[:, 0].round().long().clamp(0, quarter.shape[2] - 1)
    v = patches[:, 1].round().long().clamp(0, quarter.shape[1] - 1)
    gt_inverse = quarter[frame_index[:, None, None], v, u]
    return torch.cat([patches[:, :2], gt_inverse[:, None].to(patches.dtype)], dim=1)


TargetTransform = Callable[[Tensor], Tensor]
"""Map of the BA targets ``(E, 2)`` (1/4-resolution pixels) to the targets the BA solves for."""


class UnrolledModel(nn.Module):
    """The network plus the unrolled graph and losses, as one module (so DDP can wrap it).

    ``target_transform``, when set, is applied to each iteration's BA targets (reprojected patch
    centres plus the predicted ``delta``, ``(E, 2)`` in 1/4-resolution pixels) just before the BA
    call, e.g. to add noise of known size. It must return a tensor of the same shape. Only the
    BA receives the transformed targets, and the losses compare the post-BA reprojections as usual.
    The attribute may be replaced between calls.
    """

    def __init__(
        self,
        network: VONetwork,
        unroll: UnrollConfig,
        ba: BAConfig,
        loss: LossConfig,
        selection: str = "random",
        target_transform: TargetTransform | None = None,
    ):
        super().__init__()
        self.network = network
        self.unroll = unroll
        self.ba = ba
        self.loss = loss
        self.selection = selection
        self.target_transform = target_transform

    def forward(
        self,
        images: Tensor,
        depths: Tensor,
        poses_cw: Tensor,
        intrinsics: Tensor,
        generator: torch.Generator,
    ) -> dict[str, Tensor]:
        """Unroll one clip and return its losses and metrics.

        Args:
            images: (N, 3, H, W) uint8 or float images (values 0..255).
            depths: (N, H, W) ground-truth depth (scene units, 0 where unknown).
            poses_cw: (N, 7) ground-truth world-to-camera poses.
            intrinsics: (4,) ``[fx, fy, cx, cy]`` in pixels of the input images.
            generator: CPU generator for patch centres, initial depths and keyframe drops.
        Returns a dict with the loss sums ``flow``, ``translation``, ``rotation`` (attached) and
        the detached metrics ``flow_epe`` (1/4-resolution pixels, last iteration, adjacent edges),
        ``pose_translation`` and ``pose_rotation`` (last iteration).
        """
        records = self.unroll_records(images, depths, poses_cw, intrinsics, generator)
        terms = compute_losses(records, self.loss)
        last = records[-1]
        with torch.no_grad():
            epe = flow_epe(last.coords, last.coords_gt, last.valid, last.ii, last.jj)
            translation, rotation = pose_loss(
                last.poses_cw, last.poses_gt_cw, self.loss.max_umeyama_scale
            )
        return {
            "flow": terms.flow_sum,
            "translation": terms.translation_sum,
            "rotation": terms.rotation_sum,
            "flow_epe": epe,
            "pose_translation": translation,
            "pose_rotation": rotation,
        }

    def unroll_records(
        self,
        images: Tensor,
        depths: Tensor,
        poses_cw: Tensor,
        intrinsics: Tensor,
        generator: torch.Generator,
    ) -> list[IterationRecord]:
        """Run the unrolled graph and return one :class:`IterationRecord` per iteration."""
        config = self.unroll
        device = images.device
        num_frames = images.shape[0]
        if num_frames < config.init_frames:
            raise ValueError(
                f"clip has {num_frames} frames but unroll.init_frames is {config.init_frames}"
            )
        per_frame = config.patches_per_frame
        intrinsics = intrinsics.float() / FEATURE_STRIDE
        batch = self.network.patchify(images.float(), per_frame, generator, self.selection)
        pyramid = self.network.pyramid(batch.fmap)
        frame_index = batch.frame_index
        centre = batch.patches.shape[-1] // 2

        patches_gt = ground_truth_patches(batch.patches, frame_index, depths.float())
        patch_valid = (patches_gt[:, 2] > 0).flatten(1).all(dim=1)
        initial = torch.rand(frame_index.shape[0], generator=generator).to(device)
        patches = batch.patches.clone()
        patches[:, 2] = initial[:, None, None]
        poses = se3.identity((num_frames,), dtype=torch.float32, device=device)
        poses_gt = poses_cw.float()
        image_size = (images.shape[-2] // FEATURE_STRIDE, images.shape[-1] // FEATURE_STRIDE)

        chunk_size = config.correlation_chunk or None
        count = config.init_frames
        all_patches = torch.arange(frame_index.shape[0], device=device)
        ii, jj, kk = dense_edges(
            all_patches[frame_index < count], torch.arange(count, device=device), frame_index
        )
        hidden = batch.context.new_zeros((ii.shape[0], batch.context.shape[1]))
        records = []
        for iteration in range(config.iterations):
            poses, patches = poses.detach(), patches.detach()
            if iteration >= config.init_iterations and count < num_frames:
                poses, patches, (ii, jj, kk), hidden = self._add_frame(
                    count, poses, patches, (ii, jj, kk), hidden, frame_index, generator
                )
                count += 1

            coords = reproject(poses, patches, intrinsics, ii, jj, kk).coords
            corr = correlate(batch.gmap, pyramid, coords, kk, jj, chunk_size)
            hidden, delta, weight = self.network.update(hidden, batch.context, corr, ii, jj, kk)
            target = self._transform_target(coords[:, :, centre, centre] + delta)
            poses, patches = self._bundle_adjust(
                poses, patches, intrinsics, target, weight, (ii, jj, kk), count, per_frame,
                image_size,
            )

            predicted = reproject(poses, patches, intrinsics, ii, jj, kk).coords
            ground_truth = reproject(poses_gt, patches_gt, intrinsics, ii, jj, kk)
            valid = ground_truth.valid.flatten(1).all(dim=1) & patch_valid[kk]
            records.append(
                IterationRecord(
                    predicted, ground_truth.coords, valid, weight, ii, jj, poses[:count],
                    poses_gt[:count],
                )
            )
        return records

    def _transform_target(self, target: Tensor) -> Tensor:
        """Apply :attr:`target_transform` to the ``(E, 2)`` targets and check its output shape."""
        if self.target_transform is None:
            return target
        transformed = self.target_transform(target)
        if not isinstance(transformed, Tensor) or transformed.shape != target.shape:
            shape = tuple(transformed.shape) if isinstance(transformed, Tensor) else transformed
            raise ValueError(
                f"target_transform must return a tensor of shape {tuple(target.shape)}, got "
                f"{shape!r}"
            )
        return transformed

    def _add_frame(
        self,
        new: int,
        poses: Tensor,
        patches: Tensor,
        edges: tuple[Tensor, Tensor, Tensor],
        hidden: Tensor,
        frame_index: Tensor,
        generator: torch.Generator,
    ) -> tuple[Tensor, Tensor, tuple[Tensor, Tensor, Tensor], Tensor]:
        """Add frame ``new``: initial pose and depths, new edges with zero hidden state."""
        device = poses.device
        ii, jj, kk = edges
        poses = poses.clone()
        poses[new] = poses[new - 1]
        all_patches = torch.arange(frame_index.shape[0], device=device)
        old_i, old_j, old_k = dense_edges(
            all_patches[frame_index < new], torch.tensor([new], device=device), frame_index
        )
        new_i, new_j, new_k = dense_edges(
            all_patches[frame_index == new], torch.arange(new + 1, device=device), frame_index
        )
        ii = torch.cat([old_i, new_i, ii])
        jj = torch.cat([old_j, new_j, jj])
        kk = torch.cat([old_k, new_k, kk])
        added = old_i.shape[0] + new_i.shape[0]
        hidden = torch.cat([hidden.new_zeros((added, hidden.shape[1])), hidden])

        dropped = new - KEYFRAME_DROP_OFFSET
        if dropped >= 0 and float(torch.rand((), generator=generator)) < self.unroll.keyframe_drop_p:
            keep = (ii != dropped) & (jj != dropped)
            ii, jj, kk, hidden = ii[keep], jj[keep], kk[keep], hidden[keep]

        previous = (frame_index == new - 1) | (frame_index == new - 2)
        patches = patches.clone()
        patches[frame_index == new, 2] = patches[previous, 2].median()
        return poses, patches, (ii, jj, kk), hidden

    def _bundle_adjust(
        self,
        poses: Tensor,
        patches: Tensor,
        intrinsics: Tensor,
        target: Tensor,
        weight: Tensor,
        edges: tuple[Tensor, Tensor, Tensor],
        count: int,
        per_frame: int,
        image_size: tuple[int, int],
    ) -> tuple[Tensor, Tensor]:
        """Run the BA on the first ``count`` frames (the graph so far); pose 0 stays fixed."""
        ii, jj, kk = edges
        active = count * per_frame
        result = bundle_adjust(
            poses[:count],
            patches[:active],
            intrinsics,
            target,
            weight,
            ii,
            jj,
            kk,
            first_free_pose=1,
            config=self.ba,
            image_size=image_size,
        )
        poses = torch.cat([result.poses_cw, poses[count:]])
        patches = torch.cat([result.patches, patches[active:]])
        return poses, patches
