"""Training losses: the (optionally Sigma-weighted) flow loss and the scale-aligned pose loss.

Flow loss of one iteration, per edge ``e`` and patch pixel ``p``: the residual
``r_p = predicted_p - ground_truth_p`` (1/4-resolution pixels) of the post-BA reprojection.
Under ``sigma`` weighting each component is multiplied by that iteration's BA weight of the edge,
detached, before the norm: ``error_e = min_p || sg(w_e) * r_p ||``. The loss is the mean of
``error_e`` over valid edges of the chosen edge set.

Pose loss: after scaling the predicted trajectory by a detached Umeyama (Sim(3)) scale, the
relative-pose error ``log(dP * dG^-1)`` over all ordered frame pairs, split into the mean
translation norm and the mean rotation norm (radians).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from vo_node.geometry import se3
from vo_node.train.config import LossConfig

MIN_POSITION_VARIANCE = 1e-12
"""A trajectory whose positions vary less than this (squared units) has no defined scale."""


@dataclass
class IterationRecord:
    """Outputs of one unrolled iteration for the losses (``E`` edges, ``n`` frames so far)."""

    coords: Tensor
    """(E, 2, P, P) post-BA reprojections of the edges' patches (1/4-resolution pixels)."""
    coords_gt: Tensor
    """(E, 2, P, P) reprojections with ground-truth poses and patch inverse depths."""
    valid: Tensor
    """(E,) bool: the ground-truth reprojection is in front of both cameras."""
    weight: Tensor
    """(E, 2) the BA weight this iteration's update operator produced."""
    ii: Tensor
    """(E,) source frame of each edge."""
    jj: Tensor
    """(E,) target frame of each edge."""
    poses_cw: Tensor
    """(n, 7) post-BA world-to-camera poses of the frames in the graph."""
    poses_gt_cw: Tensor
    """(n, 7) ground-truth world-to-camera poses of the same frames."""


@dataclass
class LossTerms:
    """Per-iteration losses and their sums (sums keep the autograd graph)."""

    flow: list[Tensor] = field(default_factory=list)
    translation: list[Tensor] = field(default_factory=list)
    rotation: list[Tensor] = field(default_factory=list)
    flow_sum: Tensor | None = None
    translation_sum: Tensor | None = None
    rotation_sum: Tensor | None = None


def edge_mask(ii: Tensor, jj: Tensor, edges: str) -> Tensor:
    """Return the (E,) bool mask of edges counted by the flow loss.

    ``adjacent`` keeps edges with ``1 <= |i - j| <= 2`` (DPVO). ``all`` keeps every edge (V2V),
    including the edge from a patch to its own frame, whose error is always zero.
    """
    if edges == "all":
        return torch.ones_like(ii, dtype=torch.bool)
    if edges == "adjacent":
        distance = (ii - jj).abs()
        return (distance >= 1) & (distance <= 2)
    raise ValueError(f"flow edge set must be 'adjacent' or 'all', got {edges!r}")


def flow_loss(
    coords: Tensor,
    coords_gt: Tensor,
    valid: Tensor,
    ii: Tensor,
    jj: Tensor,
    weight: Tensor | None = None,
    edges: str = "adjacent",
) -> Tensor:
    """Return the mean over selected valid edges of the min-over-pixels flow error.

    Args:
        coords, coords_gt: (E, 2, P, P) predicted and ground-truth reprojections.
        valid: (E,) bool; ii, jj: (E,) source and target frames.
        weight: (E, 2) per-axis BA weights for ``sigma`` weighting (detached here), or None.
        edges: ``adjacent`` or ``all`` (see :func:`edge_mask`).
    Returns a scalar; 0 (still attached to ``coords``) when no edge is selected.
    """
    selected = edge_mask(ii, jj, edges) & valid
    residual = coords - coords_gt
    if weight is not None:
        residual = residual * weight.detach()[:, :, None, None]
    error = residual.norm(dim=1).flatten(1).min(dim=1).values  # (E,)
    if not bool(selected.any()):
        return coords.sum() * 0.0
    return error[selected].mean()


def flow_epe(coords: Tensor, coords_gt: Tensor, valid: Tensor, ii: Tensor, jj: Tensor) -> Tensor:
    """Mean end-point error (1/4-resolution pixels) over all pixels of valid adjacent edges."""
    selected = edge_mask(ii, jj, "adjacent") & valid
    if not bool(selected.any()):
        return coords.new_tensor(float("nan"))
    return (coords - coords_gt)[selected].norm(dim=1).mean()


def umeyama_scale(source: Tensor, target: Tensor) -> Tensor:
    """Return the scale ``s`` of the Sim(3) alignment ``target ~ s R source + t``.

    Args:
        source, target: (N, 3) positions. Returns 1 when ``source`` has no spread and NaN when
        an input is not finite (so a broken step shows up as a non-finite loss).
    """
    source = source.double()
    target = target.double()
    if not bool(torch.isfinite(source).all() and torch.isfinite(target).all()):
        return source.new_tensor(float("nan"))
    centred_source = source - source.mean(dim=0)
    centred_target = target - target.mean(dim=0)
    variance = (centred_source**2).sum(dim=1).mean()
    if float(variance) < MIN_POSITION_VARIANCE:
        return source.new_tensor(1.0)
    covariance = centred_target.T @ centred_source / source.shape[0]
    u, singular, vh = torch.linalg.svd(covariance)
    sign = torch.ones_like(singular)
    sign[-1] = torch.sign(torch.linalg.det(u) * torch.linalg.det(vh))
    return (singular * sign).sum() / variance


def pose_loss(
    poses_cw: Tensor, poses_gt_cw: Tensor, max_scale: float = 10.0
) -> tuple[Tensor, Tensor]:
    """Return the mean translation and rotation norms of ``log(dP * dG^-1)`` over frame pairs.

    Args:
        poses_cw, poses_gt_cw: (n, 7) predicted and ground-truth world-to-camera poses.
        max_scale: upper clamp of the detached alignment scale of the predicted trajectory.
    """
    predicted_wc = se3.invert(poses_cw)
    gt_wc = se3.invert(poses_gt_cw)
    scale = umeyama_scale(predicted_wc[:, :3].detach(), gt_wc[:, :3]).clamp(max=max_scale)
    scale = scale.to(predicted_wc.dtype)
    predicted_wc = torch.cat([predicted_wc[:, :3] * scale, predicted_wc[:, 3:]], dim=1)

    count = poses_cw.shape[0]
    first, second = torch.meshgrid(
        torch.arange(count, device=poses_cw.device),
        torch.arange(count, device=poses_cw.device),
        indexing="ij",
    )
    pairs = first != second
    first, second = first[pairs], second[pairs]
    if first.numel() == 0:
        zero = poses_cw.sum() * 0.0
        return zero, zero
    relative_predicted = se3.compose(se3.invert(predicted_wc[first]), predicted_wc[second])
    relative_gt = se3.compose(se3.invert(gt_wc[first]), gt_wc[second])
    error = se3.log(se3.compose(relative_predicted, se3.invert(relative_gt)))
    return error[:, :3].norm(dim=-1).mean(), error[:, 3:].norm(dim=-1).mean()


def compute_losses(records: list[IterationRecord], config: LossConfig) -> LossTerms:
    """Evaluate the flow loss of every iteration and the pose loss from the start iteration on."""
    terms = LossTerms()
    weighted = config.flow_weighting == "sigma"
    for index, record in enumerate(records):
        weight = record.weight if weighted else None
        terms.flow.append(
            flow_loss(record.coords, record.coords_gt, record.valid, record.ii, record.jj, weight,
                      config.flow_edges)
        )
        if index >= config.pose_start_iteration:
            translation, rotation = pose_loss(
                record.poses_cw, record.poses_gt_cw, config.max_umeyama_scale
            )
            terms.translation.append(translation)
            terms.rotation.append(rotation)
    zero = records[0].coords.sum() * 0.0 if records else torch.zeros(())
    terms.flow_sum = torch.stack(terms.flow).sum() if terms.flow else zero
    terms.translation_sum = torch.stack(terms.translation).sum() if terms.translation else zero
    terms.rotation_sum = torch.stack(terms.rotation).sum() if terms.rotation else zero
    return terms


def flow_term(terms: LossTerms, config: LossConfig) -> Tensor:
    """Flow part of the objective before beta: ``flow_weight * sum over iterations``."""
    return config.flow_weight * terms.flow_sum


def pose_term(terms: LossTerms, config: LossConfig, rho: float = 1.0) -> Tensor:
    """Pose part of the objective: ``pose_weight * sum (translation + rho * rotation)``."""
    return config.pose_weight * (terms.translation_sum + rho * terms.rotation_sum)


def total_loss(terms: LossTerms, config: LossConfig, beta: float = 1.0, rho: float = 1.0) -> Tensor:
    """``beta * flow_weight * sum flow + pose_weight * sum (translation + rho * rotation)``."""
    return beta * flow_term(terms, config) + pose_term(terms, config, rho)
