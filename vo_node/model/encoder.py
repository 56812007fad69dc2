"""Residual CNN encoders that map images to feature maps at 1/4 of the input resolution.

The layout follows the DPVO ``BasicEncoder4``: a 7x7 stride-2 convolution, two residual stages
(the second one strided and twice as wide) and a 1x1 projection. The matching encoder uses
instance normalisation without affine parameters, the context encoder uses no normalisation.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

FEATURE_STRIDE = 4
"""Input pixels per feature-map pixel along each axis."""
IMAGE_MULTIPLE = 16
"""Image height and width must be multiples of this: the 1/4-resolution map is pooled by 4 again
for the coarse correlation level."""
OUTPUT_SCALE = 0.25
"""Both encoder outputs are multiplied by this, as in DPVO."""
PIXEL_MAX = 255.0
BLOCKS_PER_STAGE = 2
STEM_KERNEL = 7


def normalize_images(images: Tensor) -> Tensor:
    """Map images ``(N, 3, H, W)`` with values 0..255 to [-0.5, 1.5] by ``2 x / 255 - 0.5``."""
    return 2.0 * images / PIXEL_MAX - 0.5


def check_images(images: Tensor) -> None:
    """Raise ``ValueError`` unless ``images`` is float ``(N, 3, H, W)``, H and W multiples of 16."""
    if images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(
            f"images must have shape (N, 3, H, W), got {tuple(images.shape)}; "
            "add a batch dimension or convert grey images to 3 channels"
        )
    if not images.is_floating_point():
        raise ValueError(
            f"images must be a floating-point tensor with values 0..255, got dtype {images.dtype}; "
            "convert with images.float()"
        )
    height, width = images.shape[-2:]
    if height % IMAGE_MULTIPLE or width % IMAGE_MULTIPLE:
        raise ValueError(
            f"image size {height}x{width} (height x width) is not a multiple of {IMAGE_MULTIPLE}; "
            f"crop or pad the images to {height // IMAGE_MULTIPLE * IMAGE_MULTIPLE}x"
            f"{width // IMAGE_MULTIPLE * IMAGE_MULTIPLE} or a larger multiple"
        )


FULL_PRECISION = (torch.float32, torch.float64)
"""Dtypes that take :func:`channels_last_instance_norm`. Its sums run in the input's dtype, and
in float16 a sum over a map overflows."""


class InstanceNorm(nn.GroupNorm):
    """Instance normalisation without affine parameters, as group normalisation with one channel
    per group.

    This computes the same statistics as ``nn.InstanceNorm2d`` and has no parameters either, but
    its contiguous CPU kernel is several times faster (torch 2.13, measured on a 1x16x120x184
    map). Channels-last inputs at inference take :func:`channels_last_instance_norm` instead.
    """

    def __init__(self, channels: int):
        super().__init__(channels, channels, affine=False)

    def forward(self, x: Tensor) -> Tensor:
        if not torch.is_grad_enabled() and _is_channels_last(x) and x.dtype in FULL_PRECISION:
            return channels_last_instance_norm(x, self.eps)
        return super().forward(x)


def channels_last_instance_norm(x: Tensor, eps: float) -> Tensor:
    """Normalise each channel of a channels-last map ``(N, C, H, W)`` over its ``H x W`` values.

    Returns a channels-last map. Both passes read the ``(H*W, C)`` rows of each map, a layout
    torch reduces quickly: a sum for the mean, then the diagonal of ``rows^T rows`` of the
    centred map for the variance. On a 1x12x120x184 map this took 0.2 ms, and torch 2.13's group
    normalisation of the channels-last map took 0.6-0.8 ms (2 threads, Xeon with AVX-512).
    Centring first keeps float32 accurate when a channel's mean is large against its spread: at
    20 standard deviations the error is about 3e-6, against 2e-4 for ``E[x^2] - E[x]^2``
    (``scripts/profile_kernels.py``).
    """
    if x.dim() != 4 or x.shape[0] == 0:
        raise ValueError(f"x must be a non-empty (N, C, H, W) map, got shape {tuple(x.shape)}")
    batch, channels, height, width = x.shape
    count = height * width
    rows = x.permute(0, 2, 3, 1).reshape(batch, count, channels)
    mean = torch.stack([image.sum(0) for image in rows]) / count  # (N, C)
    centred = x - mean[:, :, None, None]
    centred_rows = centred.permute(0, 2, 3, 1).reshape(batch, count, channels)
    squares = [torch.mm(image.T, image).diagonal() for image in centred_rows]
    variance = torch.stack(squares) / count
    return centred.mul_(torch.rsqrt(variance + eps)[:, :, None, None])


def _is_channels_last(x: Tensor) -> bool:
    """Return True for a 4-D map stored channels-last that is not also contiguous."""
    return (
        x.dim() == 4
        and x.is_contiguous(memory_format=torch.channels_last)
        and not x.is_contiguous()
    )


def _norm_layer(channels: int, normalize: bool) -> nn.Module:
    """Return instance normalisation without affine parameters, or the identity."""
    if not normalize:
        return nn.Identity()
    return InstanceNorm(channels)


class ResidualBlock(nn.Module):
    """Two 3x3 convolutions with a skip connection; a 1x1 projection when the shape changes."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, normalize: bool):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.norm1 = _norm_layer(out_channels, normalize)
        self.norm2 = _norm_layer(out_channels, normalize)
        self.relu = nn.ReLU(inplace=True)
        self.downsample: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride),
                _norm_layer(out_channels, normalize),
            )

    def forward(self, x: Tensor) -> Tensor:
        y = self.relu(self.norm1(self.conv1(x)))
        y = self.relu(self.norm2(self.conv2(y)))
        return self.relu(self.downsample(x) + y)


def _stage(in_channels: int, out_channels: int, stride: int, normalize: bool) -> nn.Sequential:
    """Residual blocks of which only the first changes the channel count and the stride."""
    blocks = [ResidualBlock(in_channels, out_channels, stride, normalize)]
    for _ in range(BLOCKS_PER_STAGE - 1):
        blocks.append(ResidualBlock(out_channels, out_channels, 1, normalize))
    return nn.Sequential(*blocks)


class Encoder(nn.Module):
    """Residual encoder from normalised images ``(N, 3, H, W)`` to ``(N, output_dim, H/4, W/4)``.

    Args:
        output_dim: channels of the output map.
        encoder_dim: channels of the first stage; the second stage has ``2 * encoder_dim``.
        normalize: apply instance normalisation (no affine parameters) after each convolution.
    """

    def __init__(self, output_dim: int, encoder_dim: int, normalize: bool):
        super().__init__()
        wide_dim = 2 * encoder_dim
        self.stem = nn.Sequential(
            nn.Conv2d(3, encoder_dim, STEM_KERNEL, stride=2, padding=STEM_KERNEL // 2),
            _norm_layer(encoder_dim, normalize),
            nn.ReLU(inplace=True),
        )
        self.stage1 = _stage(encoder_dim, encoder_dim, 1, normalize)
        self.stage2 = _stage(encoder_dim, wide_dim, 2, normalize)
        self.projection = nn.Conv2d(wide_dim, output_dim, 1)

    def forward(self, images: Tensor) -> Tensor:
        """Encode normalised images ``(N, 3, H, W)`` to ``(N, output_dim, H/4, W/4)``.

        At inference on the CPU the maps are computed channels-last: oneDNN's convolutions then
        run about a fifth faster (torch 2.13, one thread, 240x368 input), and the output is
        channels-last too. Results match the contiguous layout to float32 rounding, not bit for
        bit. Training keeps the contiguous layout: the channels-last backward pass corrupted the
        heap (glibc "double free or corruption") on the training recipe's 192x256 clips.
        """
        if images.device.type == "cpu" and not torch.is_grad_enabled():
            images = images.contiguous(memory_format=torch.channels_last)
        x = self.stage2(self.stage1(self.stem(images)))
        return self.projection(x) * OUTPUT_SCALE


def count_parameters(module: nn.Module) -> int:
    """Return the number of trainable parameters of ``module``."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)
