"""Typed configuration of the trainer: data, unrolled graph, losses, optimiser, checkpoints.

A training recipe is a YAML file (``config/train_*.yaml``) that may set any subset of the fields
below. Command-line ``key=value`` overrides use dotted keys, as for the engine configuration
(``optim.lr=4e-4``). Unknown keys raise :class:`vo_node.config.ConfigError` naming the key.
The engine (network sizes) comes from a preset named by ``engine`` and is resolved separately,
so a trained model carries an ordinary :class:`vo_node.config.EngineConfig`.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Mapping

import yaml

from vo_node.config import (
    BAConfig,
    ConfigError,
    EngineConfig,
    apply_overrides,
    check_choice,
    check_positive,
    from_dict,
    is_engine_config,
    load_engine_config,
    read_config_yaml,
    to_dict,
)

DATA_SOURCES = ("synthetic", "tartanair", "tum")
FLOW_WEIGHTINGS = ("sigma", "none")
FLOW_EDGE_SETS = ("adjacent", "all")
BEST_MODES = ("min", "max")
IMAGE_MULTIPLE = 16
"""The network needs image sides divisible by 16."""


@dataclass
class AugmentConfig:
    """Photometric and scale augmentation, drawn once per clip and applied to every frame."""

    enabled: bool = True
    color_p: float = 0.5
    """Probability of the colour block (jitter, grayscale, invert) for a clip."""
    brightness: float = 0.4
    contrast: float = 0.4
    saturation: float = 0.4
    hue: float = 0.064
    """Maximum hue shift as a fraction of the full hue circle."""
    grayscale_p: float = 0.1
    invert_p: float = 0.1
    scale_p: float = 0.8
    """Probability of a random upscale by ``2 ** U(0, max_scale_log2)`` before the centre crop."""
    max_scale_log2: float = 0.5


@dataclass
class DataConfig:
    """Clip source, sampling and normalisation."""

    source: str = "synthetic"
    """``synthetic`` (built-in generator), ``tartanair`` or ``tum``."""
    roots: list = field(default_factory=list)
    """Dataset folders for ``tartanair`` / ``tum``; each is searched for sequences."""
    n_frames: int = 15
    height: int = 480
    """Training image height in pixels (after the centre crop)."""
    width: int = 640
    min_flow: float = 10.0
    """Lower bound of the mean flow between consecutive clip frames, in pixels of a
    ``flow_reference_width``-wide image; scaled linearly to the training width."""
    max_flow: float = 75.0
    flow_reference_width: int = 640
    source_frames: int = 0
    """Length of each generated synthetic sequence the clip is picked from; 0 means
    ``2 * n_frames``."""
    synthetic_frame_steps: list = field(default_factory=lambda: [1, 3])
    """Inclusive range of generator time steps (20 Hz periods) between consecutive generated
    frames. One value is drawn per sequence, so clips cover slow and fast motion."""
    low_texture: float = 0.0
    """Probability that a synthetic surface gets a low-texture material (plain or panelled
    walls, ``vo_node.synthetic.textures``). 0 keeps the standard, fully textured scenes."""
    reverse_p: float = 0.0
    """Probability that a clip is played backwards: its frames are taken in reverse order, so
    forward motion becomes backward motion (the static scene makes this exact). The generator's
    forward paths always look along the motion, so without it no clip moves backwards. The
    held-out validation clips are reversed with the same probability. 0 draws nothing, so the
    clips are the same as before the option existed."""
    depth_percentile: float = 98.0
    depth_percentile_scale: float = 0.7
    """Inverse depth is divided by ``depth_percentile_scale * percentile(inverse depth)``, and
    translations are multiplied by the same factor, so the scene scale is comparable across
    clips."""
    num_workers: int = 0
    """DataLoader worker processes; 0 loads in the training process."""
    prefetch_factor: int = 2
    augment: AugmentConfig = field(default_factory=AugmentConfig)


@dataclass
class UnrollConfig:
    """The unrolled training graph (one clip, streaming frames into a dense patch graph)."""

    iterations: int = 18
    """Update-operator + BA iterations per clip."""
    init_frames: int = 8
    """Frames connected densely from the first iteration on."""
    init_iterations: int = 8
    """Iterations before the first new frame joins; then one frame joins per iteration."""
    patches_per_frame: int = 80
    keyframe_drop_p: float = 0.1
    """Probability, per added frame, of dropping every edge that touches frame ``n - 4``."""
    correlation_chunk: int = 0
    """Edges per correlation chunk; 0 keeps the correlation's own default (about 1 M gathered
    values per chunk on the CPU, 16 M on a GPU). Larger chunks cost more memory in the forward
    and backward passes."""


@dataclass
class LossConfig:
    """Flow and pose losses and their weights."""

    flow_weighting: str = "sigma"
    """``sigma``: scale each flow residual component by the detached BA weight; ``none``: plain."""
    flow_edges: str = "all"
    """``adjacent``: edges with 1 <= |i-j| <= 2 (DPVO); ``all``: every edge (V2V)."""
    flow_weight: float = 0.1
    pose_weight: float = 10.0
    pose_start_iteration: int = 2
    """The pose loss counts from this iteration index on."""
    max_umeyama_scale: float = 10.0
    """Upper clamp of the detached scale aligning the predicted trajectory to the ground truth."""


@dataclass
class BalanceConfig:
    """The beta/rho rule that balances flow and pose gradients on one probe parameter."""

    enabled: bool = True
    interval: int = 20
    """Steps between updates (an update runs at steps that are positive multiples)."""
    window: int = 51
    """Number of most recent samples averaged into beta and rho."""
    clip_factor: float = 10.0
    """A new sample is clipped to [beta / clip_factor, beta * clip_factor]."""
    norm_floor: float = 1e-6
    probe_parameter: str = "update_operator.transition.1.residual.0.weight"
    """Name (as in ``network.named_parameters()``) of the parameter the gradient norms are taken
    on: the first linear layer of the residual branch of the update operator's first gated
    residual unit."""


@dataclass
class TrainBAConfig(BAConfig):
    """Bundle adjustment inside the unrolled graph, with DPVO's training values."""

    pose_damping: float = 10.0
    max_residual: float = 250.0
    min_inverse_depth: float = 1e-3
    max_inverse_depth: float = 10.0


@dataclass
class OptimConfig:
    """AdamW with a one-cycle schedule (linear anneal, no momentum cycling)."""

    steps: int = 240000
    lr: float = 8e-5
    weight_decay: float = 1e-6
    pct_start: float = 0.01
    grad_clip: float = 10.0
    max_nonfinite: int = 10
    """A run stops after more than this many consecutive steps with a non-finite loss."""


@dataclass
class ValidationConfig:
    """Held-out synthetic clips (and optional real sequences) evaluated every ``every`` steps."""

    every: int = 1000
    clips: int = 8
    seed: int = 1_000_000_007
    """Seed base of the held-out clips; training seeds are drawn below it, so they never meet."""
    sequences: list = field(default_factory=list)
    """Optional real sequences (paths for ``vo_node.io.open_sequence``) for an ATE check.

    They are only measured and logged: training never fits to them, and the best checkpoint is
    chosen by ``best_metric`` (held-out synthetic clips by default)."""
    sequence_stride: int = 2
    """Frame stride of the real-sequence check."""
    sequence_max_frames: int = 100
    """Frames of each real sequence tracked in the check (after the stride); 0 tracks all."""
    best_metric: str = "val/loss"
    best_mode: str = "min"


@dataclass
class CheckpointConfig:
    """When checkpoints are written (the latest one is overwritten, periodic ones are kept)."""

    every_steps: int = 1000
    every_minutes: float = 15.0
    keep_every_steps: int = 10000
    """A copy named ``step_<N>.pt`` is kept at multiples of this; 0 keeps none."""
    save_initial: bool = False
    """Write ``step_00000000.pt`` before the first update of a new run (not on resume), so
    studies over checkpoints can start at the initial weights."""


@dataclass
class TrainConfig:
    """Everything one training run needs."""

    engine: str = "full"
    """Engine preset name (``small``, ``full``) or YAML path giving the network sizes."""
    engine_overrides: dict = field(default_factory=dict)
    """Dotted engine-configuration overrides applied to the preset (``network.context_dim: 32``)."""
    output: str = "outputs/train"
    init_weights: str = ""
    """Model file (``models/*.pt``) or training checkpoint whose network weights start the run,
    for fine-tuning; empty starts from random weights. Optimiser, schedule and step start
    afresh. A resumed run takes the weights of its checkpoint instead."""
    device: str = "auto"
    seed: int = 0
    threads: int = 0
    """CPU threads of torch's intra-op pool; 0 keeps torch's default (under DDP on the CPU, the
    cores are split between the ranks). Small models run fastest with 1 on a busy machine."""
    deterministic: bool = False
    """Use deterministic torch kernels (slower; needed for bit-exact resume on CUDA)."""
    log_every: int = 10
    data: DataConfig = field(default_factory=DataConfig)
    unroll: UnrollConfig = field(default_factory=UnrollConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    balance: BalanceConfig = field(default_factory=BalanceConfig)
    ba: TrainBAConfig = field(default_factory=TrainBAConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    validation: ValidationConfig = field(default_factory=ValidationConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)

    def validate(self) -> "TrainConfig":
        """Check choices and ranges; raise :class:`ConfigError` naming the first invalid key."""
        check_choice("data.source", self.data.source, DATA_SOURCES)
        check_choice("loss.flow_weighting", self.loss.flow_weighting, FLOW_WEIGHTINGS)
        check_choice("loss.flow_edges", self.loss.flow_edges, FLOW_EDGE_SETS)
        check_choice("validation.best_mode", self.validation.best_mode, BEST_MODES)
        _check_positive(self)
        _check_probabilities(self)
        _check_data(self.data)
        if not isinstance(self.engine_overrides, dict):
            raise ConfigError(
                f"engine_overrides must be a mapping of dotted keys, got {self.engine_overrides!r}"
            )
        if not 2 <= self.unroll.init_frames <= self.data.n_frames:
            raise ConfigError(
                f"unroll.init_frames ({self.unroll.init_frames}) must lie between 2 and "
                f"data.n_frames ({self.data.n_frames})"
            )
        return self


def _check_data(data: DataConfig) -> None:
    if data.source != "synthetic" and not data.roots:
        raise ConfigError(
            f"data.source is {data.source!r} but data.roots is empty; "
            "set data.roots=[/path/to/dataset] or use data.source=synthetic"
        )
    if not all(isinstance(root, str) for root in data.roots):
        raise ConfigError(f"data.roots must be a list of folder paths, got {data.roots!r}")
    steps = data.synthetic_frame_steps
    if (
        len(steps) != 2
        or not all(isinstance(value, int) for value in steps)
        or not 1 <= steps[0] <= steps[1]
    ):
        raise ConfigError(
            f"data.synthetic_frame_steps must be two whole numbers [low, high] with "
            f"1 <= low <= high, got {steps!r}"
        )
    if not 0.0 <= data.low_texture <= 1.0:
        raise ConfigError(
            f"data.low_texture must lie in [0, 1] (a probability per surface), got "
            f"{data.low_texture}; set a value such as 0.35, or 0 for fully textured scenes"
        )
    if not 0.0 <= data.reverse_p <= 1.0:
        raise ConfigError(
            f"data.reverse_p must lie in [0, 1] (a probability per clip), got {data.reverse_p}; "
            "set a value such as 0.5, or 0 to keep every clip in recorded order"
        )
    if data.min_flow >= data.max_flow:
        raise ConfigError(
            f"data.min_flow ({data.min_flow}) must be below data.max_flow ({data.max_flow})"
        )
    if data.height % IMAGE_MULTIPLE or data.width % IMAGE_MULTIPLE:
        raise ConfigError(
            f"data.height and data.width must be multiples of {IMAGE_MULTIPLE}, got "
            f"{data.height}x{data.width}"
        )


def _check_positive(config: TrainConfig) -> None:
    check_positive({
        "data.n_frames": config.data.n_frames,
        "data.height": config.data.height,
        "data.width": config.data.width,
        "unroll.iterations": config.unroll.iterations,
        "unroll.patches_per_frame": config.unroll.patches_per_frame,
        "optim.steps": config.optim.steps,
        "optim.lr": config.optim.lr,
        "optim.grad_clip": config.optim.grad_clip,
        "balance.interval": config.balance.interval,
        "balance.window": config.balance.window,
        "balance.clip_factor": config.balance.clip_factor,
        "validation.every": config.validation.every,
        "checkpoint.every_steps": config.checkpoint.every_steps,
        "checkpoint.every_minutes": config.checkpoint.every_minutes,
        "log_every": config.log_every,
        "ba.iterations": config.ba.iterations,
    })
    if config.threads < 0:
        raise ConfigError(f"threads must be 0 (torch default) or more, got {config.threads}")
    if config.data.num_workers < 0:
        raise ConfigError(f"data.num_workers must be 0 or more, got {config.data.num_workers}")


def _check_probabilities(config: TrainConfig) -> None:
    augment = config.data.augment
    probabilities = {
        "data.augment.color_p": augment.color_p,
        "data.augment.grayscale_p": augment.grayscale_p,
        "data.augment.invert_p": augment.invert_p,
        "data.augment.scale_p": augment.scale_p,
        "unroll.keyframe_drop_p": config.unroll.keyframe_drop_p,
        "optim.pct_start": config.optim.pct_start,
    }
    for key, value in probabilities.items():
        if not 0.0 <= value <= 1.0:
            raise ConfigError(f"{key} must lie in [0, 1], got {value}")


def load_train_config(
    path: str | Path | None = None, overrides: Mapping[str, Any] | None = None
) -> TrainConfig:
    """Load a training recipe from YAML (or the defaults when ``path`` is None) plus overrides."""
    values: dict[str, Any] = {}
    if path is not None:
        values = read_config_yaml(
            Path(path), "training configuration", "pass e.g. config/train_small.yaml"
        )
        check_not_engine_preset(Path(path), values)
    config = from_dict(TrainConfig, values)
    if overrides:
        config = apply_overrides(config, overrides)
    return config.validate()


def check_not_engine_preset(path: Path, values: Any) -> None:
    """Raise :class:`ConfigError` when the YAML ``values`` of ``path`` are an engine preset.

    An engine preset (``config/small.yaml``) sets keys such as ``name`` or ``network`` that no
    training recipe has; a recipe names its preset with ``engine``.
    """
    recipe_keys = {f.name for f in fields(TrainConfig)}
    if not is_engine_config(values) or set(values) <= recipe_keys:
        return
    raise ConfigError(
        f"{path} is an engine preset, not a training recipe; pass a recipe "
        "(config/train_*.yaml, such as config/train_small.yaml for the CPU or "
        f"config/train_full.yaml for a GPU) and set its 'engine: {path.stem}' to train this "
        "preset's network"
    )


def resolve_engine_config(config: TrainConfig) -> EngineConfig:
    """Return the engine configuration of ``config.engine`` with ``config.engine_overrides``."""
    engine = load_engine_config(config.engine)
    return apply_overrides(engine, config.engine_overrides) if config.engine_overrides else engine


def train_config_to_yaml(config: TrainConfig) -> str:
    """Return ``config`` as YAML text that :func:`load_train_config` reads back unchanged."""
    return yaml.safe_dump(to_dict(config), sort_keys=False)
