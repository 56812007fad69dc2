"""Gradient signal-to-noise ratio of the flow loss, and per-clip gradient collection.

For ``N`` per-clip gradients ``g_i`` of one parameter (flattened to ``D`` values),

    SNR = || mean_i g_i || / mean_i || g_i - mean_j g_j ||,      SNR_dB = 20 log10(SNR).

A high SNR means the clips agree on a descent direction; a low one means a single clip's
gradient is mostly noise around it. The SNR does not change when every gradient is scaled by the
same factor, so losses of different size (Sigma-weighted or not) compare directly.

Gradients come from the trainer's unrolled forward (``UnrolledModel.unroll_records``) on a fixed
set of clips. The patch draws of clip ``i`` are seeded by ``i`` alone, so every checkpoint and
every loss variant is measured on the same clips and patches. One forward serves both loss variants:
the forward does not depend on the flow weighting, only the loss does.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Mapping, Sequence

import torch
from torch import Tensor

from vo_node.config import EngineConfig, from_dict
from vo_node.model.network import VONetwork
from vo_node.train.config import LossConfig, TrainBAConfig, TrainConfig
from vo_node.train.data import ClipDataset
from vo_node.train.losses import IterationRecord, compute_losses, flow_term
from vo_node.train.unroll import UnrolledModel

logger = logging.getLogger(__name__)

LOSS_VARIANTS = ("sigma", "none")
"""Flow weightings compared: BA-weight (Sigma) weighted and plain."""
DEFAULT_PARAMETERS = {
    "delta_head": "update_operator.delta_head.1.weight",
    "weight_head": "update_operator.weight_head.1.weight",
}
"""Short names of the parameters measured by default: the linear layers of the two heads."""
STUDY_CLIP_SEED = 424_242
"""Seed of the study's clip set (training-distribution clips, drawn apart from the runs' seeds)."""
PATCH_SEED_BASE = 7_000_003
"""Patch draws of study clip ``i`` use seed ``PATCH_SEED_BASE + i``."""
NOISE_SEED_BASE = 9_000_011
"""Default ``StudyModel.noise_seed``: target-noise draws of clip ``i`` use ``noise_seed + i``."""
BOOTSTRAP_SAMPLES = 500
BOOTSTRAP_LEVEL = 0.9
BOOTSTRAP_CHUNK_ELEMENTS = 20_000_000
"""Resamples are processed in chunks of about this many float64 values (160 MB)."""
MIN_SNR_FOR_DB = 1e-300
"""SNR values below this are clamped before the logarithm, so a zero SNR gives a finite dB value."""

Objective = Callable[[list[IterationRecord]], Tensor]
"""A scalar loss computed from the unrolled iterations of one clip."""


# -------------------------------------------------------------------------------------------
# The estimator
# -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SNRResult:
    """Gradient SNR of ``N`` samples and the two norms it is the ratio of."""

    snr: float
    snr_db: float
    """``20 log10(snr)`` in decibels."""
    mean_norm: float
    """``|| mean_i g_i ||``: the norm of the average gradient."""
    mean_deviation: float
    """``mean_i || g_i - mean g ||``: the average distance of one gradient from the mean."""


def gradient_snr(gradients: Tensor) -> SNRResult:
    """Return the SNR of per-sample gradients ``(N, D)`` (computed in float64).

    Raises ValueError for fewer than two samples, a non-2-D tensor or non-finite values. When all
    gradients are equal (zero deviation), the SNR is ``inf`` (``nan`` if they are all zero).
    """
    if gradients.dim() != 2:
        raise ValueError(
            f"gradients must be (N, D), got shape {tuple(gradients.shape)}; flatten each sample"
        )
    if gradients.shape[0] < 2:
        raise ValueError(f"the SNR needs at least 2 gradients, got {gradients.shape[0]}")
    if not bool(torch.isfinite(gradients).all()):
        raise ValueError("gradients contain NaN or inf; check the loss for non-finite values")
    values = gradients.detach().double()
    mean = values.mean(dim=0)
    mean_norm = float(mean.norm())
    mean_deviation = float((values - mean).norm(dim=1).mean())
    if mean_deviation > 0.0:
        snr = mean_norm / mean_deviation
    else:
        snr = math.inf if mean_norm > 0.0 else math.nan
    return SNRResult(snr, snr_to_db(snr), mean_norm, mean_deviation)


def bootstrap_snr_db(
    gradients: Tensor, samples: int = BOOTSTRAP_SAMPLES, level: float = BOOTSTRAP_LEVEL,
    seed: int = 0,
) -> tuple[float, float]:
    """Return a percentile-bootstrap interval ``(low, high)`` of the SNR in dB.

    Clips are resampled with replacement ``samples`` times; ``level`` is the central coverage
    (0.9 gives the 5th and 95th percentiles). The interval shows how much the SNR of N clips
    would move with another draw of N clips. Resamples whose SNR is not finite are dropped.
    NOTE: for small N (about 8 or fewer) the interval sits too high, because a resample repeats
    clips and repeated clips shrink the deviation; read it as a rough spread only.
    """
    if not 0.0 < level < 1.0:
        raise ValueError(f"bootstrap level must lie in (0, 1), got {level}")
    values = gradients.detach().double()
    count = values.shape[0]
    generator = torch.Generator().manual_seed(seed)
    indices = torch.randint(0, count, (samples, count), generator=generator)
    chunk = max(1, BOOTSTRAP_CHUNK_ELEMENTS // values.numel())
    snr_parts = []
    for start in range(0, samples, chunk):
        resampled = values[indices[start:start + chunk]]  # (chunk, N, D)
        mean = resampled.mean(dim=1, keepdim=True)
        deviation = (resampled - mean).norm(dim=2).mean(dim=1)
        snr_parts.append(mean.squeeze(1).norm(dim=1) / deviation)
    snr = torch.cat(snr_parts)
    decibels = 20.0 * torch.log10(snr[torch.isfinite(snr) & (snr > 0)])
    if decibels.numel() == 0:
        return math.nan, math.nan
    tail = (1.0 - level) / 2.0
    low, high = torch.quantile(decibels, torch.tensor([tail, 1.0 - tail], dtype=torch.float64))
    return float(low), float(high)


def snr_to_db(snr: float) -> float:
    """Return ``20 log10(snr)``; inf and nan pass through, and 0 maps to a finite value."""
    if math.isnan(snr) or math.isinf(snr):
        return snr
    return 20.0 * math.log10(max(snr, MIN_SNR_FOR_DB))


def gradient_variance(gradients: Tensor) -> float:
    """Return the total variance ``mean_i || g_i - mean g ||^2`` of gradients ``(N, D)``."""
    values = gradients.detach().double()
    return float(((values - values.mean(dim=0)) ** 2).sum(dim=1).mean())


# -------------------------------------------------------------------------------------------
# Networks, clips and the unrolled model
# -------------------------------------------------------------------------------------------


@dataclass
class LoadedNetwork:
    """A network read from a training checkpoint or model file, with what is known about it."""

    network: VONetwork
    engine: EngineConfig
    step: int
    train_config: TrainConfig | None


def load_network(path: str | Path) -> LoadedNetwork:
    """Read a training checkpoint (``checkpoints/*.pt``) or an exported model file onto the CPU.

    The step is the checkpoint's optimiser step, or the ``step`` stored in a model file's
    metadata (0 when absent).
    """
    from vo_node.train import checkpoint as ckpt

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} not found; pass a checkpoints/*.pt file")
    try:
        state = ckpt.load_checkpoint(path)
    except ValueError:
        from vo_node.model.network import load_model

        network, engine = load_model(path)
        metadata = torch.load(path, map_location="cpu", weights_only=True).get("metadata", {})
        stored = metadata.get("train_config")
        config = from_dict(TrainConfig, stored) if isinstance(stored, dict) else None
        return LoadedNetwork(network, engine, int(metadata.get("step", 0)), config)
    engine = from_dict(EngineConfig, state["engine"]).validate()
    network = VONetwork(engine.network)
    network.load_state_dict(state["model"])
    stored = state.get("config")
    config = from_dict(TrainConfig, stored) if isinstance(stored, dict) else None
    return LoadedNetwork(network, engine, int(state["step"]), config)


def study_clips(config: TrainConfig, count: int, seed: int = STUDY_CLIP_SEED) -> list[dict]:
    """Return ``count`` training-distribution clips (with augmentation), fixed by ``seed``."""
    if count < 2:
        raise ValueError(f"the study needs at least 2 clips to measure a spread, got {count}")
    dataset = ClipDataset(config.data, seed, rank=0, validation_seed=config.validation.seed)
    return [dataset[index] for index in range(count)]


class StudyModel(UnrolledModel):
    """The trainer's unrolled model with optional Gaussian noise added to every BA target.

    ``target_noise`` is the standard deviation in 1/4-resolution pixels of noise added to each
    edge's target (reprojected patch centre + predicted delta) before the BA call, so the BA
    solves against a residual of known extra size.
    """

    def __init__(self, *args, target_noise: float = 0.0, **kwargs):
        super().__init__(*args, **kwargs)
        if target_noise < 0.0:
            raise ValueError(f"target_noise must be 0 or more (1/4-res pixels), got {target_noise}")
        self.target_noise = target_noise
        self.noise_generator: torch.Generator | None = None
        self.noise_seed = NOISE_SEED_BASE
        """Base seed of the per-clip noise generators; change it to draw another noise trial."""
        self.target_transform = self.add_target_noise

    def add_target_noise(self, target: Tensor) -> Tensor:
        """Return the BA targets ``(E, 2)`` plus Gaussian noise of std ``target_noise``."""
        if self.target_noise <= 0.0:
            return target
        if self.noise_generator is None:
            raise RuntimeError("StudyModel.noise_generator must be set when target_noise > 0")
        noise = torch.randn(target.shape, generator=self.noise_generator, dtype=target.dtype)
        return target + self.target_noise * noise.to(target.device)


def build_model(
    network: VONetwork,
    config: TrainConfig,
    selection: str = "random",
    ba: TrainBAConfig | None = None,
    target_noise: float = 0.0,
) -> StudyModel:
    """Wrap ``network`` in the unrolled model of ``config`` (BA settings replaceable)."""
    return StudyModel(
        network, config.unroll, ba or config.ba, config.loss, selection, target_noise=target_noise
    )


def resolve_parameters(
    network: torch.nn.Module, names: Sequence[str] | None = None
) -> dict[str, torch.nn.Parameter]:
    """Map each requested name to a parameter of ``network``.

    A name is a short name of :data:`DEFAULT_PARAMETERS`, a full name from
    ``network.named_parameters()``, or a unique suffix of one (``transition.1.residual.0.weight``).
    """
    names = list(names) if names else list(DEFAULT_PARAMETERS)
    parameters = dict(network.named_parameters())
    resolved = {}
    for name in names:
        full = DEFAULT_PARAMETERS.get(name, name)
        if full not in parameters:
            matches = [key for key in parameters if key.endswith("." + full)]
            if len(matches) != 1:
                hint = ", ".join(matches) if matches else ", ".join(list(parameters)[-12:])
                raise ValueError(
                    f"parameter {name!r} is {'ambiguous' if matches else 'not found'}; pass a full "
                    f"name from network.named_parameters(), e.g. {hint}"
                )
            full = matches[0]
        resolved[name] = parameters[full]
    return resolved


# -------------------------------------------------------------------------------------------
# Objectives and per-clip gradients
# -------------------------------------------------------------------------------------------


def flow_objective(loss: LossConfig, variant: str) -> Objective:
    """Return the flow loss ``flow_weight * sum over iterations`` under weighting ``variant``."""
    if variant not in LOSS_VARIANTS:
        raise ValueError(f"loss variant must be one of {', '.join(LOSS_VARIANTS)}, got {variant!r}")
    config = replace(loss, flow_weighting=variant)

    def objective(records: list[IterationRecord]) -> Tensor:
        return flow_term(compute_losses(records, config), config)

    return objective


def clip_generator(index: int, base: int = PATCH_SEED_BASE) -> torch.Generator:
    """Return the CPU generator of study clip ``index`` (the same for every checkpoint)."""
    return torch.Generator().manual_seed(base + index)


def per_clip_gradients(
    model: StudyModel,
    clips: Sequence[Mapping[str, Tensor]],
    parameters: Mapping[str, torch.nn.Parameter],
    objectives: Mapping[str, Objective],
) -> dict[str, dict[str, Tensor]]:
    """Return ``{objective: {parameter: (N, D) gradients}}``, one row per clip.

    Each clip is unrolled once; every objective is differentiated on that one graph. A parameter
    that an objective does not reach gets a zero row.
    """
    rows: dict[str, dict[str, list[Tensor]]] = {
        objective: {name: [] for name in parameters} for objective in objectives
    }
    device = next(iter(parameters.values())).device
    model.train()
    for index, clip in enumerate(clips):
        if model.target_noise > 0.0:
            model.noise_generator = clip_generator(index, model.noise_seed)
        records = model.unroll_records(
            clip["images"].to(device), clip["depths"].to(device), clip["poses_cw"].to(device),
            clip["intrinsics"].to(device), clip_generator(index),
        )
        for objective_name, objective in objectives.items():
            loss = objective(records)
            gradients = torch.autograd.grad(
                loss, list(parameters.values()), retain_graph=True, allow_unused=True
            )
            for name, parameter, gradient in zip(parameters, parameters.values(), gradients):
                flat = torch.zeros_like(parameter) if gradient is None else gradient
                rows[objective_name][name].append(flat.detach().reshape(-1).cpu())
        del records
    return {
        objective: {name: torch.stack(values) for name, values in by_name.items()}
        for objective, by_name in rows.items()
    }


def collect_gradients(
    network: VONetwork,
    clips: Sequence[Mapping[str, Tensor]],
    parameter_names: Sequence[str] | None = None,
    loss_variant: str = "sigma",
    config: TrainConfig | None = None,
    selection: str = "random",
) -> dict[str, Tensor]:
    """Return ``{parameter name: (N, D)}`` flow-loss gradients of ``network`` on ``clips``.

    Args:
        network: the patch network (its device is used).
        clips: N clips as produced by the trainer's data (``images``, ``depths``, ``poses_cw``,
            ``intrinsics``).
        parameter_names: see :func:`resolve_parameters`; default: both head weights.
        loss_variant: ``sigma`` (BA-weight weighted) or ``none``.
        config: training recipe whose unroll, BA and loss settings are used (default recipe if
            None).
        selection: patch-centre selection of the patchifier.
    """
    config = config or TrainConfig()
    model = build_model(network, config, selection)
    parameters = resolve_parameters(network, parameter_names)
    objectives = {loss_variant: flow_objective(config.loss, loss_variant)}
    return per_clip_gradients(model, clips, parameters, objectives)[loss_variant]


# -------------------------------------------------------------------------------------------
# The ``snr`` command
# -------------------------------------------------------------------------------------------

SNR_COLUMNS = (
    "checkpoint", "step", "variant", "parameter", "clips", "snr", "snr_db", "snr_db_low",
    "snr_db_high", "mean_norm", "mean_deviation", "variance",
)


def snr_rows(
    gradients: Mapping[str, Mapping[str, Tensor]], extra: Mapping[str, object]
) -> list[dict[str, object]]:
    """Return one table row per (variant, parameter) of ``{variant: {parameter: (N, D)}}``."""
    rows = []
    for variant, by_name in gradients.items():
        for name, values in by_name.items():
            result = gradient_snr(values)
            low, high = bootstrap_snr_db(values)
            rows.append({
                **extra, "variant": variant, "parameter": name, "clips": values.shape[0],
                "snr": result.snr, "snr_db": result.snr_db, "snr_db_low": low,
                "snr_db_high": high, "mean_norm": result.mean_norm,
                "mean_deviation": result.mean_deviation, "variance": gradient_variance(values),
            })
    return rows


def run_snr_study(
    checkpoints: Sequence[str | Path],
    config: TrainConfig,
    num_clips: int,
    output: str | Path,
    parameter_names: Sequence[str] | None = None,
    device: str = "cpu",
) -> list[dict[str, object]]:
    """Measure the flow-loss gradient SNR of each checkpoint for both variants; write the outputs.

    Writes ``snr.csv``, ``snr.md`` and ``snr.png`` (SNR in dB over training steps, one panel per
    parameter) into ``output`` and returns the table rows, sorted by step.
    """
    from vo_node.study.plots import Panel, Series, plot_panels, write_table

    if not checkpoints:
        raise ValueError("no checkpoints given; pass --checkpoints A.pt B.pt ...")
    output = Path(output)
    clips = study_clips(config, num_clips)
    objectives = {variant: flow_objective(config.loss, variant) for variant in LOSS_VARIANTS}
    rows: list[dict[str, object]] = []
    for path in checkpoints:
        loaded = load_network(path)
        loaded.network.to(device)
        model = build_model(loaded.network, config, loaded.engine.frontend.centroid_selection)
        parameters = resolve_parameters(loaded.network, parameter_names)
        gradients = per_clip_gradients(model, clips, parameters, objectives)
        new_rows = snr_rows(gradients, {"checkpoint": str(path), "step": loaded.step})
        rows.extend(new_rows)
        logger.info(
            "%s (step %d): %s", path, loaded.step,
            ", ".join(f"{r['variant']}/{r['parameter']} {r['snr_db']:.2f} dB" for r in new_rows),
        )
    rows.sort(key=lambda row: (row["step"], row["checkpoint"], row["variant"], row["parameter"]))
    write_table(rows, output / "snr", SNR_COLUMNS)

    names = list(dict.fromkeys(str(row["parameter"]) for row in rows))
    panels = []
    for name in names:
        series = []
        for variant in LOSS_VARIANTS:
            selected = [r for r in rows if r["parameter"] == name and r["variant"] == variant]
            series.append(Series([r["step"] for r in selected], [r["snr_db"] for r in selected],
                                 f"flow_weighting={variant}"))
        panels.append(Panel(series, name, "training step", "gradient SNR (dB)"))
    plot_panels(panels, output / "snr.png", f"flow-loss gradient SNR over {num_clips} clips")
    return rows
