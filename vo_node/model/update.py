"""Update operator: refine each edge's hidden state and predict a flow correction and a weight.

One call, for ``E`` edges with ``D``-channel hidden states:

1. add the source patch's context vector and an MLP of the correlation features, then LayerNorm;
2. add an MLP of the hidden state of the edge with the same patch and the previous target frame,
   then one of the edge with the next target frame (zero when that edge does not exist);
3. soft aggregation (residual) over edges that share a patch, then over edges that share a
   (source frame, target frame) pair;
4. transition block: LayerNorm, gated residual unit, LayerNorm, gated residual unit;
5. heads: ``delta`` (1/4-resolution pixels) and ``weight`` (sigmoid) from ReLU(state), both behind
   a gradient clamp.

The layout follows DPVO's ``Update`` module.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from vo_node.config import NetworkConfig
from vo_node.model.correlation import correlation_dim

LAYER_NORM_EPS = 1e-3
GRADIENT_CLIP = 0.01
"""Largest gradient magnitude per element that passes back through the output heads."""
HEAD_DIM = 2


class _ClampGradient(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:  # noqa: D102
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:  # noqa: D102
        grad = torch.where(torch.isnan(grad), torch.zeros_like(grad), grad)
        return grad.clamp(-GRADIENT_CLIP, GRADIENT_CLIP)


class GradientClamp(nn.Module):
    """Identity whose backward pass zeroes NaN gradients and clips each element to +/-0.01."""

    def forward(self, x: Tensor) -> Tensor:
        return _ClampGradient.apply(x)


def _mlp(in_dim: int, dim: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(in_dim, dim), nn.ReLU(inplace=True), nn.Linear(dim, dim))


class GatedResidual(nn.Module):
    """``x + sigmoid(gate(x)) * res(x)`` with ``res`` a Linear-ReLU-Linear block."""

    def __init__(self, dim: int):
        super().__init__()
        self.gate = nn.Sequential(nn.Linear(dim, dim), nn.Sigmoid())
        self.residual = _mlp(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.gate(x) * self.residual(x)


def group_ids(keys: Tensor) -> tuple[Tensor, int]:
    """Map integer ``keys`` ``(E,)`` to dense group ids in ``[0, G)``; returns the ids and G."""
    unique, inverse = torch.unique(keys, return_inverse=True)
    return inverse, unique.numel()


def scatter_softmax(x: Tensor, groups: Tensor, num_groups: int) -> Tensor:
    """Channel-wise softmax of ``x`` ``(E, D)`` over the edges of each group ``(E,)``."""
    index = groups[:, None].expand_as(x)
    group_max = x.new_full((num_groups, x.shape[1]), float("-inf"))
    group_max = group_max.scatter_reduce(0, index, x.detach(), reduce="amax", include_self=True)
    exponent = torch.exp(x - group_max[groups])
    total = exponent.new_zeros((num_groups, x.shape[1])).index_add(0, groups, exponent)
    return exponent / total[groups]


class SoftAggregation(nn.Module):
    """Channel-wise softmax-weighted sum over groups of edges, broadcast back to the edges.

    ``out[e] = h(sum_{e' in group(e)} softmax_g(e') * f(x[e']))`` where the softmax runs over the
    edges of the group, separately per channel.
    """

    def __init__(self, dim: int):
        super().__init__()
        self.f = nn.Linear(dim, dim)
        self.g = nn.Linear(dim, dim)
        self.h = nn.Linear(dim, dim)

    def forward(self, x: Tensor, keys: Tensor) -> Tensor:
        """Aggregate ``x`` ``(E, D)`` over edges with equal integer ``keys`` ``(E,)``."""
        groups, num_groups = group_ids(keys)
        weights = scatter_softmax(self.g(x), groups, num_groups)
        # Under autocast f(x) and the weights come in half precision; the sum runs in x's dtype.
        pooled = x.new_zeros((num_groups, x.shape[1])).index_add(
            0, groups, (self.f(x) * weights).to(x.dtype)
        )
        return self.h(pooled)[groups]


def temporal_neighbors(kk: Tensor, jj: Tensor) -> tuple[Tensor, Tensor]:
    """Find, for each edge, the edge with the same patch and target frame ``jj - 1`` / ``jj + 1``.

    Args:
        kk: ``(E,)`` patch indices (non-negative).
        jj: ``(E,)`` target frame indices (non-negative).

    Returns:
        ``(previous, next)``, each ``(E,)`` edge indices, -1 where no such edge exists. When an
        edge occurs twice, either copy may be returned.
    """
    if kk.numel() == 0:
        empty = torch.empty_like(kk)
        return empty, empty
    stride = int(jj.max()) + 2  # keys of different patches never meet, even at jj - 1 = -1
    keys = kk * stride + jj
    sorted_keys, order = torch.sort(keys)

    def find(targets: Tensor) -> Tensor:
        position = torch.searchsorted(sorted_keys, targets).clamp(max=keys.numel() - 1)
        found = sorted_keys[position] == targets
        return torch.where(found, order[position], torch.full_like(order, -1))

    return find(keys - 1), find(keys + 1)


class UpdateOperator(nn.Module):
    """Recurrent edge update of DPVO: ``(hidden, context, corr) -> (hidden, delta, weight)``."""

    def __init__(self, config: NetworkConfig):
        super().__init__()
        dim = config.context_dim
        corr_dim = correlation_dim(
            config.correlation_radius, config.correlation_levels, config.patch_size
        )
        self.corr = nn.Sequential(
            nn.Linear(corr_dim, dim),
            nn.ReLU(inplace=True),
            nn.Linear(dim, dim),
            nn.LayerNorm(dim, eps=LAYER_NORM_EPS),
            nn.ReLU(inplace=True),
            nn.Linear(dim, dim),
        )
        self.norm = nn.LayerNorm(dim, eps=LAYER_NORM_EPS)
        self.previous_mlp = _mlp(dim, dim)
        self.next_mlp = _mlp(dim, dim)
        self.aggregate_patch = SoftAggregation(dim)
        self.aggregate_frames = SoftAggregation(dim)
        self.transition = nn.Sequential(
            nn.LayerNorm(dim, eps=LAYER_NORM_EPS),
            GatedResidual(dim),
            nn.LayerNorm(dim, eps=LAYER_NORM_EPS),
            GatedResidual(dim),
        )
        self.delta_head = nn.Sequential(nn.ReLU(), nn.Linear(dim, HEAD_DIM), GradientClamp())
        self.weight_head = nn.Sequential(
            nn.ReLU(), nn.Linear(dim, HEAD_DIM), GradientClamp(), nn.Sigmoid()
        )

    def forward(
        self, hidden: Tensor, context: Tensor, corr: Tensor, ii: Tensor, jj: Tensor, kk: Tensor
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Run one update.

        Args:
            hidden: ``(E, D)`` hidden state of each edge (zeros for new edges).
            context: ``(K, D)`` context vector of each patch. Edge ``e`` uses ``context[kk[e]]``.
            corr: ``(E, levels * (2r+1)^2 * P^2)`` correlation features.
            ii, jj, kk: ``(E,)`` source frame, target frame and patch of each edge.

        Returns:
            ``(hidden (E, D), delta (E, 2), weight (E, 2))``: the new state, the correction to
            the reprojected patch centre in 1/4-resolution pixels, and confidences in (0, 1).
        """
        self._check_inputs(hidden, context, corr, ii, jj, kk)
        x = hidden + context[kk] + self.corr(corr)
        x = self.norm(x)

        previous, following = temporal_neighbors(kk, jj)
        x = x + self._neighbor_term(self.previous_mlp, x, previous)
        x = x + self._neighbor_term(self.next_mlp, x, following)

        x = x + self.aggregate_patch(x, kk)
        frame_pairs = ii * (int(jj.max()) + 1 if jj.numel() else 1) + jj
        x = x + self.aggregate_frames(x, frame_pairs)
        x = self.transition(x)
        return x, self.delta_head(x), self.weight_head(x)

    @staticmethod
    def _neighbor_term(mlp: nn.Module, x: Tensor, neighbor: Tensor) -> Tensor:
        exists = (neighbor >= 0).to(x.dtype)[:, None]
        return mlp(x[neighbor.clamp(min=0)]) * exists

    @staticmethod
    def _check_inputs(
        hidden: Tensor, context: Tensor, corr: Tensor, ii: Tensor, jj: Tensor, kk: Tensor
    ) -> None:
        num_edges = hidden.shape[0]
        for name, value in (("corr", corr), ("ii", ii), ("jj", jj), ("kk", kk)):
            if value.shape[0] != num_edges:
                raise ValueError(
                    f"{name} has {value.shape[0]} rows but hidden has {num_edges}; "
                    "pass one row per edge"
                )
        if num_edges and int(kk.max()) >= context.shape[0]:
            raise IndexError(
                f"kk reaches {int(kk.max())} but context has {context.shape[0]} rows; pass the "
                "per-patch context (K, D) that kk indexes"
            )
