"""Three sources of gradient variance in the unrolled VO objective, each for both flow weightings.

1. Flow-loss interference: on the same clips, the gradient of the pose loss alone is compared
   with that of pose + flow loss (and of the flow loss alone). A cosine near 1 between pose and
   pose + flow means the flow term does not pull the update away from what the pose loss wants.
2. BA linearisation error: the gradient variance and SNR of the flow loss (and, for reference,
   of the pose loss) while the number of Gauss-Newton iterations and the pose damping of the
   training BA change. Fewer iterations or more damping leave the BA further from its minimum,
   so the implicit linearisation the gradient passes through is less accurate.
3. Weight-gradient dependence on the BA residual: Gaussian noise of known standard deviation
   (1/4-resolution pixels) is added to every BA target, and the weight-head gradient of the flow
   loss is compared with the noise-free one on the same clip and patches.

All gradients are per clip (see :mod:`vo_node.study.snr`); "variance" is the total variance
``mean_i || g_i - mean g ||^2`` over clips.
"""

from __future__ import annotations

import logging
import math
import statistics
from dataclasses import replace
from pathlib import Path
from typing import Mapping, Sequence

import torch
from torch import Tensor

from vo_node.model.network import VONetwork
from vo_node.study.plots import Panel, Series, plot_panels, write_table
from vo_node.study.snr import (
    LOSS_VARIANTS,
    NOISE_SEED_BASE,
    Objective,
    bootstrap_snr_db,
    build_model,
    flow_objective,
    gradient_snr,
    gradient_variance,
    per_clip_gradients,
    resolve_parameters,
)
from vo_node.train.config import LossConfig, TrainConfig
from vo_node.train.losses import IterationRecord, compute_losses, pose_term

logger = logging.getLogger(__name__)

INTERFERENCE_PARAMETERS = ("delta_head", "weight_head", "transition.1.residual.0.weight")
"""Default parameters of the interference study: both heads and the beta-rule probe layer."""
DEFAULT_BA_ITERATIONS = (1, 2, 4)
DEFAULT_POSE_DAMPINGS = (1.0, 10.0, 100.0)
DEFAULT_NOISE_LEVELS = (0.0, 0.25, 0.5, 1.0, 2.0)
"""Standard deviations of the injected BA-target noise, in 1/4-resolution pixels."""
NOISE_PARAMETERS = ("weight_head",)
NOISE_TRIAL_STRIDE = 100_003
"""Seed distance between noise trials (larger than any clip count, so no two draws share a seed)."""
COSINE_EPS = 1e-12
POSE_REFERENCE = "pose"
"""Name of the pose-loss rows shown next to the flow variants in the BA table."""


def pose_objective(loss: LossConfig) -> Objective:
    """Return the pose loss ``pose_weight * sum (translation + rotation)`` (rho = 1)."""

    def objective(records: list[IterationRecord]) -> Tensor:
        return pose_term(compute_losses(records, loss), loss)

    return objective


def total_objective(loss: LossConfig, variant: str, beta: float = 1.0) -> Objective:
    """Return ``beta * flow (variant) + pose``, the trainer's objective with rho = 1."""
    flow = flow_objective(loss, variant)
    pose = pose_objective(loss)

    def objective(records: list[IterationRecord]) -> Tensor:
        return beta * flow(records) + pose(records)

    return objective


def row_cosines(first: Tensor, second: Tensor) -> Tensor:
    """Return the cosine similarity of matching rows of two ``(N, D)`` tensors (0 for zero rows)."""
    first, second = first.double(), second.double()
    dot = (first * second).sum(dim=1)
    return dot / (first.norm(dim=1) * second.norm(dim=1)).clamp(min=COSINE_EPS)


def _mean_and_spread(values: Tensor) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    items = [float(v) for v in values]
    spread = statistics.stdev(items) if len(items) > 1 else 0.0
    return statistics.fmean(items), spread


# -------------------------------------------------------------------------------------------
# 1. Flow-loss interference
# -------------------------------------------------------------------------------------------


def interference_study(
    network: VONetwork, config: TrainConfig, clips: Sequence[Mapping[str, Tensor]],
    parameter_names: Sequence[str], selection: str = "random", beta: float = 1.0,
) -> tuple[list[dict[str, object]], dict[str, dict[str, Tensor]]]:
    """Compare pose-only and pose + flow gradients per clip; return rows and per-clip cosines.

    The cosines are ``{variant: {parameter: (N,)}}`` of cos(pose, pose + flow).
    """
    model = build_model(network, config, selection)
    parameters = resolve_parameters(network, parameter_names)
    objectives: dict[str, Objective] = {"pose": pose_objective(config.loss)}
    for variant in LOSS_VARIANTS:
        objectives[f"flow_{variant}"] = flow_objective(config.loss, variant)
        objectives[f"total_{variant}"] = total_objective(config.loss, variant, beta)
    gradients = per_clip_gradients(model, clips, parameters, objectives)

    rows, cosines = [], {}
    for variant in LOSS_VARIANTS:
        cosines[variant] = {}
        for name in parameters:
            pose = gradients["pose"][name]
            flow = gradients[f"flow_{variant}"][name]
            total = gradients[f"total_{variant}"][name]
            with_total = row_cosines(pose, total)
            with_flow = row_cosines(pose, flow)
            cosines[variant][name] = with_total
            mean_total, spread_total = _mean_and_spread(with_total)
            mean_flow, spread_flow = _mean_and_spread(with_flow)
            rows.append({
                "variant": variant, "parameter": name, "clips": pose.shape[0],
                "cos_pose_total_mean": mean_total, "cos_pose_total_std": spread_total,
                "cos_pose_flow_mean": mean_flow, "cos_pose_flow_std": spread_flow,
                "variance_pose": gradient_variance(pose),
                "variance_total": gradient_variance(total),
                "snr_db_pose": gradient_snr(pose).snr_db,
                "snr_db_total": gradient_snr(total).snr_db,
            })
    return rows, cosines


def plot_interference(cosines: Mapping[str, Mapping[str, Tensor]], path: Path) -> Path:
    """Plot the sorted per-clip cos(pose, pose + flow), one panel per parameter."""
    names = list(next(iter(cosines.values())))
    panels = []
    for name in names:
        series = []
        for variant, by_name in cosines.items():
            values = sorted(float(v) for v in by_name[name])
            series.append(Series(list(range(len(values))), values, f"flow_weighting={variant}"))
        panels.append(Panel(series, name, "clip (sorted by cosine)", "cos(pose, pose + flow)"))
    return plot_panels(panels, path, "flow-loss interference with the pose gradient")


# -------------------------------------------------------------------------------------------
# 2. BA linearisation error
# -------------------------------------------------------------------------------------------


def ba_study(
    network: VONetwork, config: TrainConfig, clips: Sequence[Mapping[str, Tensor]],
    parameter_names: Sequence[str], iterations: Sequence[int], dampings: Sequence[float],
    selection: str = "random",
) -> list[dict[str, object]]:
    """Return variance/SNR rows of the flow (both variants) and pose gradients per BA setting."""
    parameters = resolve_parameters(network, parameter_names)
    objectives: dict[str, Objective] = {
        variant: flow_objective(config.loss, variant) for variant in LOSS_VARIANTS
    }
    objectives[POSE_REFERENCE] = pose_objective(config.loss)
    rows = []
    for count in iterations:
        for damping in dampings:
            if count < 1 or damping < 0.0:
                raise ValueError(
                    f"BA grid point iterations={count}, pose_damping={damping} is invalid; "
                    "iterations must be 1 or more and pose_damping 0 or more"
                )
            ba = replace(config.ba, iterations=int(count), pose_damping=float(damping))
            model = build_model(network, config, selection, ba=ba)
            gradients = per_clip_gradients(model, clips, parameters, objectives)
            for variant, by_name in gradients.items():
                for name, values in by_name.items():
                    result = gradient_snr(values)
                    low, high = bootstrap_snr_db(values)
                    rows.append({
                        "ba_iterations": int(count), "pose_damping": float(damping),
                        "variant": variant, "parameter": name, "clips": values.shape[0],
                        "variance": gradient_variance(values), "snr": result.snr,
                        "snr_db": result.snr_db, "snr_db_low": low, "snr_db_high": high,
                        "mean_norm": result.mean_norm,
                    })
            logger.info("BA grid point iterations=%d pose_damping=%g done", count, damping)
    return rows


def plot_ba(rows: Sequence[Mapping[str, object]], path: Path) -> Path:
    """Plot variance and SNR over BA iterations per parameter, one line per (variant, damping)."""
    panels = []
    for name in dict.fromkeys(str(row["parameter"]) for row in rows):
        selected = [row for row in rows if row["parameter"] == name]
        variants = list(dict.fromkeys(str(row["variant"]) for row in selected))
        dampings = list(dict.fromkeys(float(row["pose_damping"]) for row in selected))
        variance_lines, snr_lines = [], []
        for variant in variants:
            for damping in dampings:
                line = [r for r in selected
                        if r["variant"] == variant and r["pose_damping"] == damping]
                label = f"{variant}, damping {damping:g}"
                counts = [r["ba_iterations"] for r in line]
                variance_lines.append(Series(counts, [r["variance"] for r in line], label))
                snr_lines.append(Series(counts, [r["snr_db"] for r in line], label))
        panels.append(Panel(variance_lines, f"{name}: gradient variance", "BA iterations",
                            "variance", yscale=_scale_for([s.y for s in variance_lines])))
        panels.append(Panel(snr_lines, f"{name}: gradient SNR", "BA iterations", "SNR (dB)"))
    return plot_panels(panels, path, "BA linearisation: flow (sigma / none) and pose gradients")


def _scale_for(values: Sequence[Sequence[float]]) -> str:
    """``log`` when every value is positive and finite, else ``linear``."""
    flat = [v for line in values for v in line]
    return "log" if flat and all(math.isfinite(v) and v > 0.0 for v in flat) else "linear"


# -------------------------------------------------------------------------------------------
# 3. Weight gradient under injected BA-residual noise
# -------------------------------------------------------------------------------------------


def noise_study(
    network: VONetwork, config: TrainConfig, clips: Sequence[Mapping[str, Tensor]],
    parameter_names: Sequence[str], levels: Sequence[float], selection: str = "random",
    trials: int = 1,
) -> list[dict[str, object]]:
    """Return rows of weight-gradient variance and deviation from the noise-free gradient.

    ``levels`` are standard deviations in 1/4-resolution pixels; 0 is added when absent, because
    it is the reference. Each level above 0 draws ``trials`` independent noise samples per clip,
    so its statistics cover ``trials * N`` gradients. ``snr_vs_clean_db`` is
    ``20 log10(mean ||g_i(0)|| / mean ||g_i(s) - g_i(0)||)`` over clips and trials, the SNR
    against the noise-free gradient of the same clip.
    """
    if trials < 1:
        raise ValueError(f"noise trials must be 1 or more, got {trials}")
    levels = sorted({0.0, *(float(level) for level in levels)})
    if levels[0] < 0.0:
        raise ValueError(f"noise levels must be 0 or more (1/4-res pixels), got {levels[0]}")
    parameters = resolve_parameters(network, parameter_names)
    objectives = {variant: flow_objective(config.loss, variant) for variant in LOSS_VARIANTS}
    by_level = {}
    for level in levels:
        model = build_model(network, config, selection, target_noise=level)
        runs = []
        for trial in range(trials if level > 0.0 else 1):
            model.noise_seed = NOISE_SEED_BASE + trial * NOISE_TRIAL_STRIDE
            runs.append(per_clip_gradients(model, clips, parameters, objectives))
        by_level[level] = {
            variant: {name: torch.cat([run[variant][name] for run in runs]) for name in parameters}
            for variant in LOSS_VARIANTS
        }
        logger.info("target noise %.3g px done (%d trial(s))", level, len(runs))

    rows = []
    for level in levels:
        for variant in LOSS_VARIANTS:
            for name in parameters:
                values = by_level[level][variant][name].double()
                clean = by_level[0.0][variant][name].double()
                clean = clean.repeat(values.shape[0] // clean.shape[0], 1)  # one copy per trial
                deviation = float((values - clean).norm(dim=1).mean())
                clean_norm = float(clean.norm(dim=1).mean())
                result = gradient_snr(values)
                rows.append({
                    "noise_px": level, "variant": variant, "parameter": name,
                    "samples": values.shape[0], "variance": gradient_variance(values),
                    "snr_db": result.snr_db, "mean_norm": result.mean_norm,
                    "relative_deviation": deviation / max(clean_norm, COSINE_EPS),
                    "snr_vs_clean_db": _ratio_db(clean_norm, deviation),
                })
    return rows


def _ratio_db(signal: float, noise: float) -> float:
    """``20 log10(signal / noise)``; ``inf`` when the noise is zero (the reference level)."""
    if noise <= 0.0:
        return math.inf
    return 20.0 * math.log10(max(signal, 1e-300) / noise)


def plot_noise(rows: Sequence[Mapping[str, object]], path: Path) -> Path:
    """Plot gradient variance and SNR against the clean gradient over the noise level."""
    variance_lines, deviation_lines = [], []
    names = list(dict.fromkeys(str(row["parameter"]) for row in rows))
    for name in names:
        for variant in LOSS_VARIANTS:
            line = [r for r in rows if r["variant"] == variant and r["parameter"] == name]
            label = f"{name}, {variant}"
            levels = [r["noise_px"] for r in line]
            variance_lines.append(Series(levels, [r["variance"] for r in line], label))
            noisy = [r for r in line if r["noise_px"] > 0.0]
            deviation_lines.append(
                Series([r["noise_px"] for r in noisy], [r["snr_vs_clean_db"] for r in noisy], label)
            )
    panels = [
        Panel(variance_lines, "weight gradient variance over clips",
              "target noise std (1/4-res px)", "variance",
              yscale=_scale_for([s.y for s in variance_lines])),
        Panel(deviation_lines, "SNR against the noise-free gradient",
              "target noise std (1/4-res px)", "SNR (dB)"),
    ]
    return plot_panels(panels, path, "weight gradient under injected BA-residual noise")


# -------------------------------------------------------------------------------------------
# The ``sources`` command
# -------------------------------------------------------------------------------------------


def run_sources_study(
    network: VONetwork,
    config: TrainConfig,
    clips: Sequence[Mapping[str, Tensor]],
    output: str | Path,
    selection: str = "random",
    interference_parameters: Sequence[str] = INTERFERENCE_PARAMETERS,
    ba_parameters: Sequence[str] = ("delta_head", "weight_head"),
    ba_iterations: Sequence[int] = DEFAULT_BA_ITERATIONS,
    pose_dampings: Sequence[float] = DEFAULT_POSE_DAMPINGS,
    noise_levels: Sequence[float] = DEFAULT_NOISE_LEVELS,
    noise_parameters: Sequence[str] = NOISE_PARAMETERS,
    beta: float = 1.0,
    noise_trials: int = 1,
) -> dict[str, list[dict[str, object]]]:
    """Run the three studies, write ``<name>.csv/.md/.png`` into ``output``; return the rows."""
    output = Path(output)
    interference, cosines = interference_study(
        network, config, clips, interference_parameters, selection, beta
    )
    write_table(interference, output / "interference")
    plot_interference(cosines, output / "interference.png")

    ba = ba_study(network, config, clips, ba_parameters, ba_iterations, pose_dampings, selection)
    write_table(ba, output / "ba_linearisation")
    plot_ba(ba, output / "ba_linearisation.png")

    noise = noise_study(network, config, clips, noise_parameters, noise_levels, selection,
                        noise_trials)
    write_table(noise, output / "residual_noise")
    plot_noise(noise, output / "residual_noise.png")
    return {"interference": interference, "ba_linearisation": ba, "residual_noise": noise}
