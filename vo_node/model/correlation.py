"""Correlation features between patches and the matching maps of their target frames.

Take an edge (patch ``kk[e]``, target frame ``jj[e]``) and one of its ``P * P`` patch pixels. The
matching map of frame ``jj[e]`` is sampled bilinearly on a ``(2r+1) x (2r+1)`` window centred on
the reprojected pixel, and each sample is dotted with the patch's matching feature at that pixel.
This runs at every pyramid level (the 1/4-resolution map, then that map average-pooled by 4),
with coordinates divided by the level's scale. Samples outside the image are zero, as with
``grid_sample(..., padding_mode="zeros", align_corners=True)``.

Implementation: bilinear sampling is linear, so each window is a bilinear blend of dot products
on the ``G x G`` integer grid around it (``G = 2r + 2``). The ``P x P`` pixels of an edge usually
land close together, so the dot products of all its pixels come from one shared ``U x U`` window
(one gather and one batched matrix product per chunk of edges). Edges whose pixels spread wider
than that take a per-pixel path, and edges whose windows all miss a level's map are skipped there
(their products are zero). Maps are stored channels-last with a zero border of ``U`` pixels, so
every gather stays in bounds and a window beyond the image reads only zeros. Each window row is
one contiguous block of ``U * C`` values, copied in one piece. Chunks are kept
small: on the CPU, large temporary buffers cost more in page faults than the copy itself.

Reuse at inference: an edge's patch features and target map do not change while it lives, so its
integer-grid products depend only on the grid corners of its pixels. :func:`correlate_reusing`
keeps them in a :class:`GridProducts` store aligned with the edges and recomputes only the edges
whose corners moved at a level. Every edge is blended again, because the fractional part of its
coordinates changes with each BA step.

Backward: when gradients are recorded, the forward pass keeps no per-chunk tensors. The backward
pass recomputes each chunk from leaf copies of the map rows and patch features it read, and adds
their gradients into one gradient buffer per input with ``index_add_``. A call therefore
zero-fills each matching-map gradient once, whatever the number of chunks.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Iterator, NamedTuple, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable

PYRAMID_POOL = 4
"""Each pyramid level is the previous one average-pooled by this factor."""
SPREAD_PIXELS = 3
"""Largest spread (finest-level pixels) of a patch's integer grid positions that fits the shared
window. A spread of 3 fits a 3x3 patch scaled by up to 1.5. Wider edges take the per-pixel path,
unless none of their samples lies inside the map: those read only zeros and are skipped."""
CHUNK_ELEMENTS = 1 << 20
"""Default gathered feature values per chunk on the CPU (4 MiB in float32), small enough to stay
in cache and to reuse freed memory instead of page-faulting a fresh buffer."""
CHUNK_ELEMENTS_CUDA = 1 << 24
"""Default gathered feature values per chunk on a GPU, where kernel launches cost more."""
COORDINATE_LIMIT = 1.0e6
"""Coordinates are clamped to this magnitude (1/4-resolution pixels) before rounding. NaN becomes
the negative limit, so it reads zeros."""
MISSING_CORNER = -(1 << 40)
"""Grid corner stored for products not computed yet; no clamped coordinate floors to it."""


def correlation_dim(radius: int, levels: int, patch_size: int) -> int:
    """Return the length of one edge's correlation vector: ``levels * (2r+1)^2 * P^2``."""
    return levels * (2 * radius + 1) ** 2 * patch_size**2


def shared_window_size(radius: int, scale: int) -> int:
    """Return the side ``U`` of an edge's shared window at a level of the given scale."""
    return 2 * radius + 2 + max(1, math.ceil(SPREAD_PIXELS / scale))


@dataclass
class CorrelationPyramid:
    """Matching maps prepared for correlation: one tensor per pyramid level.

    Attributes:
        levels: ``(F, h_l + 2 U_l, w_l + 2 U_l, C)`` channels-last maps with a zero border of
            ``U_l`` pixels; level ``l`` is ``h / 4^l x w / 4^l``.
        windows: shared window side ``U_l`` of each level, also its border width.
        radius: correlation radius ``r``.
    """

    levels: list[Tensor]
    windows: list[int]
    radius: int

    @classmethod
    def from_fmap(
        cls, fmap: Tensor, num_levels: int, radius: int, dtype: torch.dtype | None = None
    ) -> "CorrelationPyramid":
        """Build the pyramid of matching maps ``(F, C, h, w)``, differentiable w.r.t. ``fmap``.

        ``dtype`` stores the maps in another precision: ``torch.bfloat16`` halves the memory
        traffic. The dot products then run in that precision and are returned in the dtype of
        ``coords``.
        """
        levels: list[Tensor] = []
        windows: list[int] = []
        current = fmap
        for level in range(num_levels):
            if level > 0:
                current = F.avg_pool2d(current, PYRAMID_POOL, PYRAMID_POOL)
            size = shared_window_size(radius, PYRAMID_POOL**level)
            padded = F.pad(current, (size, size, size, size)).permute(0, 2, 3, 1)
            levels.append(padded.to(dtype or padded.dtype).contiguous())
            windows.append(size)
        return cls(levels, windows, radius)

    @property
    def num_frames(self) -> int:
        return self.levels[0].shape[0]

    def level_size(self, level: int) -> tuple[int, int]:
        """Return ``(height, width)`` of level ``level`` without its border."""
        border = self.windows[level]
        return self.levels[level].shape[1] - 2 * border, self.levels[level].shape[2] - 2 * border

    def write(self, slot: int, fmap: Tensor) -> None:
        """Overwrite frame ``slot`` with the pyramid of one matching map ``(C, h, w)``, in place."""
        single = CorrelationPyramid.from_fmap(
            fmap[None], len(self.levels), self.radius, self.levels[0].dtype
        )
        with torch.no_grad():
            for target, source in zip(self.levels, single.levels):
                target[slot] = source[0]


GROWTH_FACTOR = 1.5
"""A full :class:`GridProducts` store grows to this multiple of the rows it must hold."""


class GridProducts:
    """Integer-grid dot products of a list of edges, kept for :func:`correlate_reusing`.

    Row ``e`` belongs to edge ``e``: the caller keeps the rows aligned with its edges
    (:meth:`keep` when edges go, :meth:`append` when edges come). The rows live at the start of
    buffers with spare capacity, so appending copies nothing and removing copies the kept rows
    once, into a second set of buffers that is reused.

    Attributes (``corners`` and ``products`` are views of the first ``len(self)`` rows):
        corners: ``(E, L, P*P, 2)`` int64 top-left grid position ``(u, v)`` of each pixel at
            each level when its products were computed, or :data:`MISSING_CORNER`.
        products: ``(E, L, P*P, G, G)`` dot products on those grids, in float32 (float64 for
            float64 maps).
        reused, computed: per level, the edges inside the map whose products were reused or
            computed, summed over the calls of :func:`correlate_reusing` on this store.
    """

    def __init__(self, corner_buffer: Tensor, product_buffer: Tensor, count: int) -> None:
        self._corners = corner_buffer
        self._products = product_buffer
        self._spare = (torch.empty_like(corner_buffer), torch.empty_like(product_buffer))
        self._count = count
        levels = corner_buffer.shape[1]
        self.reused = [0] * levels
        self.computed = [0] * levels

    @classmethod
    def empty(
        cls,
        num_edges: int,
        pyramid: CorrelationPyramid,
        patch_size: int,
        device: torch.device | str | None = None,
    ) -> "GridProducts":
        """Return a store of ``num_edges`` rows with nothing computed, sized for ``pyramid``."""
        device = pyramid.levels[0].device if device is None else device
        levels, pixels = len(pyramid.levels), patch_size**2
        grid_size = 2 * pyramid.radius + 2
        capacity = math.ceil(num_edges * GROWTH_FACTOR)
        corners = torch.full(
            (capacity, levels, pixels, 2), MISSING_CORNER, dtype=torch.long, device=device
        )
        # float32 represents every product exactly, also the float16 products of bfloat16 maps
        # under float16 autocast, which a store in the maps' dtype would round again.
        products = torch.empty(
            (capacity, levels, pixels, grid_size, grid_size),
            dtype=torch.promote_types(pyramid.levels[0].dtype, torch.float32),
            device=device,
        )
        return cls(corners, products, num_edges)

    def __len__(self) -> int:
        return self._count

    @property
    def capacity(self) -> int:
        return self._corners.shape[0]

    @property
    def corners(self) -> Tensor:
        return self._corners[: self._count]

    @property
    def products(self) -> Tensor:
        return self._products[: self._count]

    def keep(self, mask: Tensor) -> None:
        """Keep only the rows where the ``(E,)`` bool ``mask`` is True, in order."""
        rows = mask.nonzero().squeeze(1)
        corners, products = self._spare
        # The kept rows go to the spare buffers, which then swap roles, so no fresh memory has
        # to page-fault. For the 3,600 rows of a 64-patch graph, index_select into a buffer took
        # 0.53-0.54 ms and boolean indexing 0.76-0.83 ms (two threads, Intel Xeon,
        # scripts/profile_kernels.py --steps store).
        torch.index_select(self.corners, 0, rows, out=corners[: rows.numel()])
        torch.index_select(self.products, 0, rows, out=products[: rows.numel()])
        self._spare = (self._corners, self._products)
        self._corners, self._products, self._count = corners, products, rows.numel()

    def append(self, count: int) -> None:
        """Append ``count`` rows with nothing computed."""
        needed = self._count + count
        if needed > self.capacity:
            capacity = math.ceil(needed * GROWTH_FACTOR)
            corners = self._corners.new_empty((capacity,) + self._corners.shape[1:])
            products = self._products.new_empty((capacity,) + self._products.shape[1:])
            corners[: self._count] = self.corners
            products[: self._count] = self.products
            self._corners, self._products = corners, products
            self._spare = (torch.empty_like(corners), torch.empty_like(products))
        self._corners[self._count : needed] = MISSING_CORNER
        self._count = needed


def correlate(
    gmap: Tensor,
    pyramid: CorrelationPyramid,
    coords: Tensor,
    kk: Tensor,
    jj: Tensor,
    chunk_size: int | None = None,
) -> Tensor:
    """Compute the correlation features of edges ``(kk, jj)``.

    Args:
        gmap: ``(K, C, P, P)`` matching features of the patches.
        pyramid: matching maps of the target frames (``F`` frames).
        coords: ``(E, 2, P, P)`` reprojected ``(u, v)`` of each edge's patch pixels in its target
            frame, 1/4-resolution pixels.
        kk: ``(E,)`` patch of each edge, an index into ``gmap``.
        jj: ``(E,)`` target frame of each edge, an index into ``pyramid``.
        chunk_size: edges per chunk; ``None`` sizes chunks to about 1 M gathered values on the
            CPU and 16 M on a GPU.

    Returns:
        ``(E, levels * P * P * (2r+1)^2)`` correlations ordered as ``(level, patch row, patch
        column, window row, window column)``; window row ``a`` samples ``v / 4^level - r + a``.

    Differentiable with respect to ``gmap``, the pyramid (so the matching maps) and ``coords``
    (through the bilinear weights), once: the backward pass itself records no graph. When
    gradients are recorded, each chunk is recomputed in the backward pass, so memory stays
    bounded for large ``E``.
    """
    # TODO: on the CPU this still costs about 15 us of CPU time per edge (matching_dim 32,
    # 240x368 input, one thread on a shared, loaded 2-core machine), mostly the window copies and
    # the small batched products. A fused gather-and-dot kernel would avoid the copies.
    _check_inputs(gmap, pyramid, coords, kk, jj)
    coords, chunk_size = _prepare(gmap, pyramid, coords, chunk_size)
    record = torch.is_grad_enabled() and (
        gmap.requires_grad
        or coords.requires_grad
        or any(level.requires_grad for level in pyramid.levels)
    )
    # Edges sorted by target frame gather from one frame's map at a time, which stays in cache.
    order = torch.argsort(jj, stable=True)
    if record:
        layout = (pyramid.windows, pyramid.radius, chunk_size)
        return _Correlation.apply(coords, gmap, kk, jj, order, layout, *pyramid.levels)
    return _correlate_levels(gmap, pyramid, coords, kk, jj, order, chunk_size)


def correlate_reusing(
    gmap: Tensor,
    pyramid: CorrelationPyramid,
    coords: Tensor,
    kk: Tensor,
    jj: Tensor,
    store: GridProducts,
    chunk_size: int | None = None,
) -> Tensor:
    """Compute :func:`correlate`'s output for edges ``(kk, jj)``, reusing ``store``'s products.

    An edge whose grid corners at a level equal those in ``store`` takes that level's products
    from ``store``. The products of the other edges are computed and written into ``store`` in
    place, with their corners. The edge features and maps must be those the stored products came
    from: the patch of row ``e`` and its target frame's map may not change between calls.
    Records no gradients (inference only).

    Args:
        gmap, pyramid, coords, kk, jj, chunk_size: as for :func:`correlate`.
        store: one row per edge, ``len(store) == E``, from :meth:`GridProducts.empty` and
            earlier calls.

    Returns:
        ``(E, levels * P * P * (2r+1)^2)`` correlations, equal to :func:`correlate`'s up to
        float rounding.
    """
    _check_inputs(gmap, pyramid, coords, kk, jj)
    if len(store) != kk.shape[0]:
        raise ValueError(
            f"the grid-product store has {len(store)} rows for {kk.shape[0]} edges. Keep it "
            "aligned with the edges (GridProducts.keep and .append)"
        )
    coords, chunk_size = _prepare(gmap, pyramid, coords, chunk_size)
    order = torch.argsort(jj, stable=True)
    with torch.no_grad():
        return _correlate_levels(gmap, pyramid, coords, kk, jj, order, chunk_size, store)


def _prepare(
    gmap: Tensor, pyramid: CorrelationPyramid, coords: Tensor, chunk_size: int | None
) -> tuple[Tensor, int]:
    """Return ``coords`` as clamped floats, NaN mapped to the negative limit, and the chunk size
    (the default for the device when ``chunk_size`` is None)."""
    if chunk_size is None:
        budget = CHUNK_ELEMENTS_CUDA if gmap.is_cuda else CHUNK_ELEMENTS
        chunk_size = max(1, budget // (max(pyramid.windows) ** 2 * gmap.shape[1]))
    if not coords.is_floating_point():
        coords = coords.float()
    # float16 cannot hold the limit, so its largest finite value takes the limit's place.
    limit = min(COORDINATE_LIMIT, torch.finfo(coords.dtype).max)
    return coords.clamp(-limit, limit).nan_to_num(-limit), chunk_size


def _correlate_levels(
    gmap: Tensor,
    pyramid: CorrelationPyramid,
    coords: Tensor,
    kk: Tensor,
    jj: Tensor,
    order: Tensor,
    chunk_size: int,
    store: GridProducts | None = None,
) -> Tensor:
    """Correlate without recording gradients; return ``(E, out_dim)`` in edge order.

    Computes what :func:`_correlate_chunks` computes, with the same operations per edge, but
    sorts the edges of each level into shared-window, per-pixel and skipped ones once for all
    edges. Without ``store`` each chunk's products are blended straight into the output. With
    ``store`` only the edges whose corners changed are computed, into the store, and the whole
    level is blended from it.
    """
    num_edges, patch_pixels = kk.shape[0], gmap.shape[-1] ** 2
    grid_size = 2 * pyramid.radius + 2
    window_area = (grid_size - 1) ** 2
    output = coords.new_zeros((num_edges, len(pyramid.levels), patch_pixels, window_area))
    reader = _LevelReader(pyramid.levels)
    pixel_coords = coords.flatten(2).transpose(1, 2)  # (E, P*P, 2) as (u, v)
    for index in range(len(pyramid.levels)):
        level = _Level(pyramid.levels[index], index, reader)
        level_coords = pixel_coords / PYRAMID_POOL**index
        plan = _plan_level(pyramid, index, level_coords)
        target = output[:, index]  # (E, P*P, (2r+1)^2) view
        pending = ~plan.outside
        grid = None if store is None else store.products[:, index]  # (E, P*P, G, G) view
        if store is not None:
            stale = (plan.corner != store.corners[:, index]).flatten(1).any(dim=1)
            # An edge whose grids all miss the map has zero products, as correlate() gives.
            grid.index_fill_(0, (stale & plan.outside).nonzero().squeeze(1), 0.0)
            store.corners[:, index] = plan.corner
            inside = int(pending.sum())
            pending &= stale
            computed = int(pending.sum())
            store.computed[index] += computed
            store.reused[index] += inside - computed
        for rows, products in _path_products(gmap, kk, jj, pyramid, level, plan, pending, order,
                                             chunk_size):
            if grid is None:
                blended = _bilinear_blend(products.to(coords.dtype), level_coords[rows])
                target.index_copy_(0, rows, blended.flatten(2))
            else:
                grid.index_copy_(0, rows, products.to(grid.dtype))
        if grid is not None:
            blended = target.view(num_edges, patch_pixels, grid_size - 1, grid_size - 1)
            _bilinear_blend(grid.to(coords.dtype), level_coords, out=blended)
    return output.flatten(1)


def _path_products(
    gmap: Tensor,
    kk: Tensor,
    jj: Tensor,
    pyramid: CorrelationPyramid,
    level: _Level,
    plan: _LevelPlan,
    pending: Tensor,
    order: Tensor,
    chunk_size: int,
) -> Iterator[tuple[Tensor, Tensor]]:
    """Yield ``(rows (n,), products (n, P*P, G, G))`` chunk by chunk for the ``pending`` edges.

    Each edge takes the cheapest path its pixels' spread allows: a shared window one pixel
    smaller than the border, the full shared window, or one window per pixel.
    """
    grid_size = 2 * pyramid.radius + 2
    height, width = pyramid.level_size(level.index)
    border = pyramid.windows[level.index]
    for window in _path_windows(plan, border, grid_size):
        if window:
            chosen = plan.fits & (plan.spread <= window - grid_size)
            if window == border:
                chosen &= plan.spread > window - 1 - grid_size
        else:
            chosen = ~plan.fits
        selected = order[(chosen & pending)[order]]
        if not selected.numel():
            continue
        # Gathering each path's per-edge inputs once leaves only views to take per chunk.
        # The features take (E, P*P, C) values, about the size of the output.
        path_features = _pixel_features(gmap[kk[selected]], pyramid)
        path_frames = jj[selected]
        path_corner = plan.corner[selected]
        path_anchor = plan.anchor[selected]
        for start in range(0, selected.shape[0], chunk_size):
            chunk = slice(start, start + chunk_size)
            if window:
                anchor = path_anchor[chunk]
                offset = path_corner[chunk] - anchor[:, None]
                geometry = (
                    path_frames[chunk], anchor, offset, window, grid_size, height, width, border
                )
                products = _shared_products(path_features[chunk], level, *geometry)
            else:
                geometry = (path_frames[chunk], path_corner[chunk], grid_size, height, width)
                products = _pixel_products(path_features[chunk], level, *geometry)
            yield selected[chunk], products


class _LevelPlan(NamedTuple):
    """The correlation path of each edge at one pyramid level."""

    corner: Tensor
    """``(E, P*P, 2)`` top-left integer grid position of each pixel."""
    anchor: Tensor
    """``(E, 2)`` top-left corner of the edge's shared window."""
    fits: Tensor
    """``(E,)`` bool: the pixels' grids fit the shared window."""
    outside: Tensor
    """``(E,)`` bool: every grid position lies outside the map, so the products are zero."""
    spread: Tensor
    """``(E,)`` largest distance between two pixels' grid positions along either axis."""


def _path_windows(plan: _LevelPlan, border: int, grid_size: int) -> list[int]:
    """Return the window sides of the shared-window paths, then 0 for the per-pixel path.

    Edges whose pixels spread less than the level's window allows use a window one pixel
    smaller, which cuts the gathered values and products by about a fifth.
    """
    windows = [border - 1, border] if border - 1 >= grid_size else [border]
    return windows + [0]


def _plan_level(pyramid: CorrelationPyramid, index: int, coords: Tensor) -> _LevelPlan:
    """Classify the edges at level ``index`` from their pixel coordinates ``(E, P*P, 2)``."""
    grid_size = 2 * pyramid.radius + 2
    height, width = pyramid.level_size(index)
    corner, anchor, last = _grid_corners(coords, pyramid.radius)
    fits = (last - anchor <= pyramid.windows[index] - grid_size).all(dim=1)
    outside = _outside_map(anchor, last, grid_size, height, width)
    spread = (last - anchor).amax(dim=1)
    return _LevelPlan(corner, anchor, fits, outside, spread)


def _grid_corners(coords: Tensor, radius: int) -> tuple[Tensor, Tensor, Tensor]:
    """Return the top-left integer grid positions of pixels ``coords`` ``(n, P*P, 2)``.

    Returns ``corner`` ``(n, P*P, 2)``, and its smallest and largest values over the pixels,
    ``anchor`` and ``last`` ``(n, 2)``. The reductions run on the floored float coordinates,
    which hold integers exactly up to the clamp limit. On the CPU, torch 2.13's ``amin`` over
    int64 took 1.2-1.4 ms for 3600 edges, against 0.02-0.05 ms for ``amax``
    (``scripts/profile_kernels.py``).
    """
    floored = torch.floor(coords)
    corner = floored.long() - radius
    anchor = floored.amin(dim=1).long() - radius
    last = floored.amax(dim=1).long() - radius
    return corner, anchor, last


def _pixel_features(patch_features: Tensor, pyramid: CorrelationPyramid) -> Tensor:
    """Return patch features ``(n, C, P, P)`` as ``(n, P*P, C)`` in the maps' dtype."""
    return patch_features.flatten(2).transpose(1, 2).to(pyramid.levels[0].dtype)


def _correlate_chunks(
    gmap: Tensor,
    pyramid: CorrelationPyramid,
    coords: Tensor,
    kk: Tensor,
    jj: Tensor,
    order: Tensor,
    chunk_size: int,
) -> Tensor:
    """Correlate the edges chunk by chunk in ``order``; return ``(E, out_dim)`` in edge order."""
    out_dim = correlation_dim(pyramid.radius, len(pyramid.levels), gmap.shape[-1])
    # Writing each chunk into one buffer avoids a second full-size copy by torch.cat.
    output = coords.new_empty((kk.shape[0], out_dim))
    reader = _LevelReader(pyramid.levels)
    for start in range(0, kk.shape[0], chunk_size):
        edges = order[start : start + chunk_size]
        output[edges] = _correlate_chunk(gmap[kk[edges]], pyramid, coords[edges], jj[edges], reader)
    return output


class _LevelReader:
    """Reads rows of the pyramid levels flattened to ``(F * H_l * W_l, C)``."""

    def __init__(self, levels: Sequence[Tensor]):
        self.flat = [level.reshape(-1, level.shape[-1]) for level in levels]

    def rows(self, level_index: int, flat_index: Tensor) -> Tensor:
        """Return rows ``flat_index`` ``(n,)`` of level ``level_index`` as ``(n, C)``."""
        return self.flat[level_index].index_select(0, flat_index)

    def segments(self, level_index: int, starts: Tensor, length: int) -> Tensor:
        """Return ``length`` consecutive rows from each of ``starts`` ``(n,)`` as
        ``(n, length * C)``.

        The rows are read through an overlapping strided view, one contiguous block per start,
        which copies faster than ``length`` separate rows.
        """
        flat = self.flat[level_index]
        if not flat.is_contiguous():
            flat = flat.contiguous()
            self.flat[level_index] = flat
        count, channels = flat.shape
        blocks = flat.as_strided((count - length + 1, length * channels), (channels, 1))
        return blocks.index_select(0, starts)


class _Level(NamedTuple):
    """One padded pyramid level ``(F, H_l + 2 U_l, W_l + 2 U_l, C)`` and how its rows are read."""

    tensor: Tensor
    index: int
    reader: _LevelReader

    def rows(self, flat_index: Tensor) -> Tensor:
        """Return rows ``flat_index`` ``(n,)`` of the flattened level as ``(n, C)``."""
        return self.reader.rows(self.index, flat_index)

    def segments(self, starts: Tensor, length: int) -> Tensor:
        """Return ``length`` consecutive rows from each of ``starts`` ``(n,)`` as
        ``(n, length * C)``."""
        return self.reader.segments(self.index, starts, length)


class _RecordingReader(_LevelReader):
    """Reads detached levels, returns leaf rows that require a gradient and records each read.

    The backward pass differentiates a chunk with respect to these leaves and adds the result
    into the level gradients at the recorded rows.
    """

    def __init__(self, levels: Sequence[Tensor], needs_grad: Sequence[bool]):
        super().__init__([level.detach() for level in levels])
        self.needs_grad = list(needs_grad)
        self.reads: list[tuple[int, Tensor, Tensor]] = []

    def rows(self, level_index: int, flat_index: Tensor) -> Tensor:
        values = super().rows(level_index, flat_index)
        if self.needs_grad[level_index]:
            values.requires_grad_()
            self.reads.append((level_index, flat_index, values))
        return values

    def segments(self, level_index: int, starts: Tensor, length: int) -> Tensor:
        # Read row by row, so that each recorded read is a plain list of rows for index_add_.
        steps = torch.arange(length, device=starts.device)
        flat_index = (starts[:, None] + steps).flatten()
        return self.rows(level_index, flat_index).view(starts.shape[0], -1)


class _Correlation(torch.autograd.Function):
    """The chunked correlation with a backward pass that accumulates into one buffer per input.

    Differentiating each chunk through autograd's own ``index_select`` backward would zero-fill
    a gradient as large as all matching maps per chunk, and then add those up. Here each chunk's
    gradient is local (the rows it read), and ``index_add_`` places it into a buffer allocated
    once per call.
    """

    @staticmethod
    def forward(
        ctx: Any,
        coords: Tensor,
        gmap: Tensor,
        kk: Tensor,
        jj: Tensor,
        order: Tensor,
        layout: tuple[list[int], int, int],
        *levels: Tensor,
    ) -> Tensor:
        windows, radius, chunk_size = layout
        pyramid = CorrelationPyramid(list(levels), windows, radius)
        ctx.layout = layout
        ctx.save_for_backward(coords, gmap, kk, jj, order, *levels)
        return _correlate_chunks(gmap, pyramid, coords, kk, jj, order, chunk_size)

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_output: Tensor) -> tuple[Tensor | None, ...]:
        coords, gmap, kk, jj, order, *levels = ctx.saved_tensors
        windows, radius, chunk_size = ctx.layout
        need_coords, need_gmap = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        need_levels = ctx.needs_input_grad[6:]
        grad_coords = torch.zeros_like(coords) if need_coords else None
        grad_gmap = torch.zeros_like(gmap) if need_gmap else None
        grad_levels = [
            level.new_zeros(level.shape) if need else None
            for level, need in zip(levels, need_levels)
        ]
        pyramid = CorrelationPyramid([level.detach() for level in levels], windows, radius)
        for start in range(0, kk.shape[0], chunk_size):
            edges = order[start : start + chunk_size]
            reader = _RecordingReader(levels, need_levels)
            with torch.enable_grad():
                chunk_coords = coords[edges].detach().requires_grad_(need_coords)
                features = gmap.detach()[kk[edges]].requires_grad_(need_gmap)
                result = _correlate_chunk(features, pyramid, chunk_coords, jj[edges], reader)
                inputs = [tensor for tensor in (chunk_coords, features) if tensor.requires_grad]
                inputs += [values for _, _, values in reader.reads]
                grads = torch.autograd.grad(
                    result, inputs, grad_output[edges], allow_unused=True
                )
            grads = list(grads)
            if need_coords:
                gradient = grads.pop(0)
                if gradient is not None:
                    grad_coords[edges] = gradient
            if need_gmap:
                gradient = grads.pop(0)
                if gradient is not None:
                    grad_gmap.index_add_(0, kk[edges], gradient)
            for (level_index, flat_index, _), gradient in zip(reader.reads, grads):
                if gradient is not None:
                    target = grad_levels[level_index]
                    target.view(-1, target.shape[-1]).index_add_(0, flat_index, gradient)
        return (grad_coords, grad_gmap, None, None, None, None, *grad_levels)


def _check_inputs(
    gmap: Tensor, pyramid: CorrelationPyramid, coords: Tensor, kk: Tensor, jj: Tensor
) -> None:
    patch_size = gmap.shape[-1]
    if gmap.dim() != 4 or gmap.shape[-2] != patch_size:
        raise ValueError(f"gmap must have shape (K, C, P, P), got {tuple(gmap.shape)}")
    if kk.dim() != 1 or kk.shape != jj.shape:
        raise ValueError(
            f"kk and jj must be 1-D and of equal length, got {tuple(kk.shape)}, {tuple(jj.shape)}"
        )
    if tuple(coords.shape) != (kk.shape[0], 2, patch_size, patch_size):
        raise ValueError(
            f"coords must have shape (E, 2, P, P) = ({kk.shape[0]}, 2, {patch_size}, "
            f"{patch_size}), got {tuple(coords.shape)}"
        )
    if pyramid.levels[0].shape[-1] != gmap.shape[1]:
        raise ValueError(
            f"gmap has {gmap.shape[1]} channels but the matching maps have "
            f"{pyramid.levels[0].shape[-1]}; build both with the same network"
        )
    if kk.numel() and (int(kk.min()) < 0 or int(kk.max()) >= gmap.shape[0]):
        raise IndexError(f"kk must lie in [0, {gmap.shape[0]}), the patches of gmap")
    if jj.numel() and (int(jj.min()) < 0 or int(jj.max()) >= pyramid.num_frames):
        raise IndexError(f"jj must lie in [0, {pyramid.num_frames}), the frames of the pyramid")


def _correlate_chunk(
    patch_features: Tensor,
    pyramid: CorrelationPyramid,
    coords: Tensor,
    jj: Tensor,
    reader: _LevelReader,
) -> Tensor:
    """Correlate a chunk of ``n`` edges at every level; return ``(n, levels * P*P * (2r+1)^2)``.

    ``patch_features`` ``(n, C, P, P)`` are the matching features of each edge's patch, and
    ``reader`` reads the rows of ``pyramid``'s levels.
    """
    features = patch_features.flatten(2).transpose(1, 2).to(pyramid.levels[0].dtype)
    pixel_coords = coords.flatten(2).transpose(1, 2)  # (n, P*P, 2) as (u, v)
    results = []
    for index in range(len(pyramid.levels)):
        level_coords = pixel_coords / PYRAMID_POOL**index
        products = _level_products(features, pyramid, index, level_coords, jj, reader)
        results.append(_bilinear_blend(products.to(coords.dtype), level_coords))
    return torch.cat(results, dim=1).flatten(1)


def _level_products(
    features: Tensor,
    pyramid: CorrelationPyramid,
    index: int,
    coords: Tensor,
    jj: Tensor,
    reader: _LevelReader,
) -> Tensor:
    """Return the integer-grid dot products ``(n, P*P, G, G)`` at one pyramid level.

    Grid row ``a`` of pixel ``p`` is map row ``floor(v_p) - r + a`` (columns alike).
    """
    grid_size = 2 * pyramid.radius + 2
    window = pyramid.windows[index]
    level = _Level(pyramid.levels[index], index, reader)
    height, width = pyramid.level_size(index)
    corner, anchor, last = _grid_corners(coords, pyramid.radius)
    offset = corner - anchor[:, None]
    fits = (offset <= window - grid_size).flatten(1).all(dim=1)
    outside = _outside_map(anchor, last, grid_size, height, width)
    computed = fits & ~outside
    if bool(computed.all()):
        geometry = (jj, anchor, offset, window, grid_size, height, width)
        return _shared_products(features, level, *geometry)

    # Edges whose every grid position lies outside the map only read zeros: they are skipped.
    products = features.new_zeros(features.shape[:2] + (grid_size, grid_size))
    shared = computed.nonzero().squeeze(1)
    if shared.numel():
        geometry = (jj[shared], anchor[shared], offset[shared], window, grid_size, height, width)
        shared_products = _shared_products(features[shared], level, *geometry)
        products = products.index_put((shared,), shared_products)
    single = (~fits & ~outside).nonzero().squeeze(1)
    if single.numel():
        geometry = (jj[single], corner[single], grid_size, height, width)
        products = products.index_put(
            (single,), _pixel_products(features[single], level, *geometry)
        )
    return products


def _outside_map(
    first: Tensor, last: Tensor, grid_size: int, height: int, width: int
) -> Tensor:
    """Return ``(n,)`` True for edges whose integer grids all lie outside the map.

    ``first`` and ``last`` ``(n, 2)`` are the smallest and largest top-left grid positions
    ``(x, y)`` over an edge's pixels; each grid spans ``grid_size`` map pixels from there.
    """
    before = last + grid_size - 1 < 0  # (n, 2) every grid ends left of / above the map
    beyond = first > torch.tensor([width - 1, height - 1], device=first.device)
    return (before | beyond).any(dim=1)


def _shared_products(
    features: Tensor,
    level: _Level,
    frames: Tensor,
    anchor: Tensor,
    offset: Tensor,
    window: int,
    grid_size: int,
    height: int,
    width: int,
    border: int | None = None,
) -> Tensor:
    """Dot products ``(n, P*P, G, G)`` from one ``U x U`` window per edge.

    ``border`` is the zero border of the level, ``window`` when None; a window smaller than the
    border serves edges whose pixels spread less.
    """
    border = window if border is None else border
    values = _gather_windows(level, border, frames, anchor, window, height, width)
    dense = torch.bmm(features, values.flatten(1, 2).transpose(1, 2))  # (n, P*P, U*U)
    start = offset[..., 1] * window + offset[..., 0]  # (n, P*P) top-left of each pixel's grid
    index = start[..., None] + _window_offsets(grid_size, window, start.device)  # (n, P*P, G*G)
    cropped = torch.gather(dense, 2, index)
    return cropped.view(features.shape[:2] + (grid_size, grid_size))


def _pixel_products(
    features: Tensor,
    level: _Level,
    frames: Tensor,
    corner: Tensor,
    grid_size: int,
    height: int,
    width: int,
) -> Tensor:
    """Dot products ``(n, P*P, G, G)`` from one ``G x G`` window per pixel."""
    num_edges, num_pixels = corner.shape[:2]
    border = (level.tensor.shape[1] - height) // 2
    frames = frames.repeat_interleave(num_pixels)
    values = _gather_windows(level, border, frames, corner.flatten(0, 1), grid_size, height, width)
    values = values.view(num_edges, num_pixels, grid_size * grid_size, -1)
    dots = torch.matmul(values, features[..., None]).squeeze(-1)
    return dots.view(num_edges, num_pixels, grid_size, grid_size)


def _gather_windows(
    level: _Level,
    border: int,
    frames: Tensor,
    corner: Tensor,
    size: int,
    height: int,
    width: int,
) -> Tensor:
    """Gather ``(n, size, size, C)`` windows with top-left ``corner`` ``(n, 2)`` as ``(u, v)``.

    Corners are clamped so that a window that misses the image reads only the zero border.
    """
    x = corner[:, 0].clamp(-border, width + border - size) + border
    y = corner[:, 1].clamp(-border, height + border - size) + border
    padded_height, padded_width = level.tensor.shape[1], level.tensor.shape[2]
    start = (frames * padded_height + y) * padded_width + x  # (n,) flat index of the corner
    row_starts = start[:, None] + torch.arange(size, device=start.device) * padded_width
    values = level.segments(row_starts.flatten(), size)  # (n * size, size * C)
    return values.view(corner.shape[0], size, size, -1)


def _window_offsets(size: int, row_stride: int, device: torch.device) -> Tensor:
    """Return the ``(size * size,)`` flat offsets of a square window, rows ``row_stride`` apart."""
    steps = torch.arange(size, device=device)
    return (steps[:, None] * row_stride + steps).flatten()


def _bilinear_blend(products: Tensor, coords: Tensor, out: Tensor | None = None) -> Tensor:
    """Blend integer-grid products ``(E, P*P, G, G)`` into ``(E, P*P, G-1, G-1)`` samples.

    ``out``, when given, receives the samples and may be a strided view (a level of the
    correlation output): writing there saves a copy of every sample, about 0.3 ms per level for
    3,600 edges on two threads (``scripts/profile_kernels.py --steps overhead``).
    """
    fraction = coords - torch.floor(coords)
    fx = fraction[..., 0, None, None]
    fy = fraction[..., 1, None, None]
    columns = torch.lerp(products[..., :-1], products[..., 1:], fx)  # (E, P*P, G, G-1)
    return torch.lerp(columns[..., :-1, :], columns[..., 1:, :], fy, out=out)
