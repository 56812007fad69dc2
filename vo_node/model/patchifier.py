"""Patchifier: run both encoders and pick the patches of each frame.

A patch is a ``P x P`` square of 1/4-resolution pixels around an integer centre. It carries the
matching features under its pixels, the context vector at its centre and a grid of
``(u, v, inverse_depth)`` with one inverse depth for all ``P * P`` pixels.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vo_node.config import CENTROID_SELECTIONS, NetworkConfig
from vo_node.model.encoder import FEATURE_STRIDE, Encoder, check_images, normalize_images

GRADIENT_CANDIDATE_FACTOR = 3
"""``gradient_bias`` draws this many random candidates per kept patch."""
INITIAL_INVERSE_DEPTH = 1.0


@dataclass
class PatchBatch:
    """Features and patches of ``N`` frames with ``M`` patches each (``K = N * M``).

    Attributes:
        fmap: ``(N, matching_dim, h, w)`` matching-feature maps at 1/4 resolution.
        gmap: ``(K, matching_dim, P, P)`` matching features under each patch.
        context: ``(K, context_dim)`` context vectors at the patch centres.
        patches: ``(K, 3, P, P)`` grids of ``(u, v, inverse_depth)`` in 1/4-resolution pixels;
            the inverse depth starts at 1 and callers may overwrite it.
        frame_index: ``(K,)`` index of each patch's frame in the input batch (int64).
    """

    fmap: Tensor
    gmap: Tensor
    context: Tensor
    patches: Tensor
    frame_index: Tensor


class Patchifier(nn.Module):
    """Matching and context encoders plus patch-centre selection."""

    def __init__(self, config: NetworkConfig):
        super().__init__()
        self.patch_size = config.patch_size
        self.matching_encoder = Encoder(config.matching_dim, config.encoder_dim, normalize=True)
        self.context_encoder = Encoder(config.context_dim, config.encoder_dim, normalize=False)

    def forward(
        self,
        images: Tensor,
        patches_per_frame: int,
        generator: torch.Generator | None = None,
        selection: str = "random",
    ) -> PatchBatch:
        """Encode images and cut ``patches_per_frame`` patches from each frame.

        Args:
            images: ``(N, 3, H, W)`` float images with values 0..255, H and W multiples of 16.
            patches_per_frame: patches per frame ``M``.
            generator: random source of the centres; ``None`` uses torch's global generator.
            selection: ``random`` (uniform centres) or ``gradient_bias`` (the ``M`` highest
                image-gradient centres out of ``3 M`` uniform candidates).
        """
        check_images(images)
        if selection not in CENTROID_SELECTIONS:
            raise ValueError(
                f"selection must be one of {', '.join(CENTROID_SELECTIONS)}, got {selection!r}"
            )
        if patches_per_frame <= 0:
            raise ValueError(f"patches_per_frame must be positive, got {patches_per_frame}")
        normalized = normalize_images(images)
        fmap = self.matching_encoder(normalized)
        context_map = self.context_encoder(normalized)
        if selection == "random":
            centres = self.random_centres(fmap, patches_per_frame, generator)
        else:
            centres = self.gradient_centres(images, fmap, patches_per_frame, generator)
        return self.cut_patches(fmap, context_map, centres)

    def random_centres(
        self, fmap: Tensor, count: int, generator: torch.Generator | None
    ) -> Tensor:
        """Draw ``(N, count, 2)`` integer ``(x, y)`` centres uniformly, keeping the patch inside."""
        num_frames, _, height, width = fmap.shape
        border = self.patch_size // 2
        if height <= 2 * border or width <= 2 * border:
            raise ValueError(
                f"feature map {height}x{width} is too small for patches of size {self.patch_size}"
            )
        rng_device = generator.device if generator is not None else torch.device("cpu")
        shape = (num_frames, count)
        x = torch.randint(border, width - border, shape, generator=generator, device=rng_device)
        y = torch.randint(border, height - border, shape, generator=generator, device=rng_device)
        return torch.stack([x, y], dim=-1).to(fmap.device)

    def gradient_centres(
        self, images: Tensor, fmap: Tensor, count: int, generator: torch.Generator | None
    ) -> Tensor:
        """Keep the ``count`` of ``3 count`` random centres with the largest image gradient."""
        candidates = self.random_centres(fmap, GRADIENT_CANDIDATE_FACTOR * count, generator)
        score_map = image_gradient_score(images)
        x, y = candidates[..., 0], candidates[..., 1]
        frames = torch.arange(fmap.shape[0], device=fmap.device)[:, None]
        scores = score_map[frames, y, x]
        best = scores.topk(count, dim=1).indices
        return torch.gather(candidates, 1, best[..., None].expand(-1, -1, 2))

    def cut_patches(self, fmap: Tensor, context_map: Tensor, centres: Tensor) -> PatchBatch:
        """Gather features and coordinate grids around integer ``centres`` ``(N, M, 2)``."""
        num_frames, count = centres.shape[:2]
        radius = self.patch_size // 2
        offsets = torch.arange(-radius, radius + 1, device=fmap.device)
        x = centres[..., 0].reshape(-1)
        y = centres[..., 1].reshape(-1)
        frame_index = torch.arange(num_frames, device=fmap.device).repeat_interleave(count)

        rows = y[:, None, None] + offsets[None, :, None]  # (K, P, 1)
        cols = x[:, None, None] + offsets[None, None, :]  # (K, 1, P)
        frames = frame_index[:, None, None]
        gmap = fmap.permute(0, 2, 3, 1)[frames, rows, cols].permute(0, 3, 1, 2)
        context = context_map[frame_index, :, y, x]

        grid_u = cols.expand(-1, self.patch_size, -1).to(fmap.dtype)
        grid_v = rows.expand(-1, -1, self.patch_size).to(fmap.dtype)
        inverse_depth = torch.full_like(grid_u, INITIAL_INVERSE_DEPTH)
        patches = torch.stack([grid_u, grid_v, inverse_depth], dim=1)
        return PatchBatch(fmap, gmap.contiguous(), context, patches, frame_index)


def image_gradient_score(images: Tensor) -> Tensor:
    """Return the ``(N, H/4, W/4)`` mean image-gradient magnitude over each 4x4 pixel block.

    The gradient is the forward difference of the channel sum of the normalised image.
    """
    grey = normalize_images(images).sum(dim=1)
    dx = grey[:, :-1, 1:] - grey[:, :-1, :-1]
    dy = grey[:, 1:, :-1] - grey[:, :-1, :-1]
    magnitude = torch.sqrt(dx**2 + dy**2)
    magnitude = F.pad(magnitude, (0, 1, 0, 1))
    return F.avg_pool2d(magnitude[:, None], FEATURE_STRIDE, FEATURE_STRIDE)[:, 0]
