"""The engine's one configuration carrier: typed dataclasses with named presets in YAML.

Presets live in ``config/<name>.yaml`` at the repository root (installed to
``share/vo_node/config`` by ``setup.py``). A preset file may set any subset of fields; fields it
leaves out keep the dataclass defaults, which are the reference DPVO sizes (the ``full`` preset).
Command-line flags and ROS parameters override fields through :func:`apply_overrides`, never by
redefining defaults. Unknown keys raise :class:`ConfigError` naming the key and the valid ones.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import yaml

logger = logging.getLogger(__name__)

CONFIG_DIR = Path(__file__).resolve().parent.parent / "config"
"""Preset folder in a source checkout; :func:`find_preset` also looks in the installed share."""

CENTROID_SELECTIONS = ("random", "gradient_bias")
INITIAL_DEPTHS = ("constant", "random")
MOTION_MODELS = ("damped_linear", "constant")
DEVICES = ("auto", "cpu", "cuda")
MIN_CONFIDENCE_HISTORY = 5
"""Confident frames needed before a frame's position variance is compared with their median."""
MIN_IMAGE_WIDTH = 32
"""Smallest ``max_image_width`` in pixels: the tracker crops frames to multiples of 16 pixels
and needs at least 32 (``MIN_PREPARED_SIZE`` in ``vo_node.odometry.image``)."""
MIN_SEED = -(2**63)
MAX_SEED = 2**63 - 1
"""Seeds must fit a signed 64-bit integer, the range of ``torch.Generator.manual_seed``."""


class ConfigError(ValueError):
    """A configuration file, key or value is invalid; the message names it and the fix."""


@dataclass
class NetworkConfig:
    """Sizes of the patch network (encoders, correlation, update operator)."""

    matching_dim: int = 128
    """Channels of the matching-feature map (``fnet``) at 1/4 resolution."""
    context_dim: int = 384
    """Channels of the context vectors and of the per-edge hidden state."""
    encoder_dim: int = 32
    """Channels of the first encoder stage; the second stage has twice as many."""
    patch_size: int = 3
    """Side of the square patch, in 1/4-resolution pixels."""
    correlation_radius: int = 3
    """Half-width of the correlation window; the window is ``2r+1`` pixels wide."""
    correlation_levels: int = 2
    """Pyramid levels of the matching map (full, then 4x4 average-pooled)."""


@dataclass
class FrontendConfig:
    """Patch graph and keyframe policy of the incremental frontend."""

    patches_per_frame: int = 96
    patch_lifetime: int = 13
    """A patch gains edges to frames within this many keyframes of its source frame."""
    removal_window: int = 22
    """Edges whose source frame is older than this many keyframes are retired."""
    optimization_window: int = 10
    """Only the newest this-many keyframe poses are optimised by the BA."""
    keyframe_index: int = 4
    """The keyframe candidate for removal is the ``keyframe_index``-th newest frame."""
    keyframe_threshold: float = 15.0
    """Mean flow (1/4-resolution pixels) below which a keyframe candidate is removed."""
    motion_model: str = "damped_linear"
    motion_damping: float = 0.5
    init_frames: int = 8
    """Accepted frames collected before the first joint optimisation."""
    init_iterations: int = 12
    initial_depth: str = "constant"
    """Inverse depth of new patches before initialisation: ``constant`` (1.0, all equal) or
    ``random`` (uniform in (0, 1), as in DPVO). Random depths make the first joint optimisation
    start from an incoherent scene and often leave it in a local minimum."""
    multi_start_init: bool = True
    """Start the first optimisation from estimated poses and depths: refine a rotation-only and
    a two-view (essential matrix) start, each with a depth-reversal check, and keep the one with
    the lowest BA cost (``vo_node.odometry.initialization``). False starts from the motion
    model's poses (identity) like DPVO, which often ends in a local minimum."""
    hypothesis_frames: int = 30
    """Frames over which the initialised window and its depth-mirrored alternative are both
    tracked before one is kept. The two explain the initial window's flow almost equally well,
    and the BA's weighted mean squared residual separates them only as parallax accumulates
    (``docs/benchmarks.md``). Meanwhile the frames report the leading hypothesis with
    ``TrackResult.on_trial`` set. 0 keeps the lower-cost one at once."""
    hypothesis_margin: float = 1.1
    """Ratio of the two hypotheses' weighted mean squared residuals that decides the trial after
    ``hypothesis_frames``. Closer than this, the trial goes on, because the one ahead is then often
    the wrong one. On EuRoC MH_05 a ratio of 1.024 after 30 frames kept a trajectory with 26 % ATE,
    and after 45 frames the other one led (5.5 %)."""
    hypothesis_extra_frames: int = 30
    """Frames that a trial still closer than ``hypothesis_margin`` may go on after
    ``hypothesis_frames`` before it keeps the lower-cost hypothesis anyway. Each trial frame is
    tracked in both hypotheses, at twice the cost."""
    final_iterations: int = 12
    motion_probe_threshold: float = 2.0
    """Median flow (1/4-resolution pixels) below which a frame is too static to initialise on."""
    threshold_reference_width: float = 0.0
    """Width of the 1/4-resolution image (pixels) at which ``keyframe_threshold`` and
    ``motion_probe_threshold`` apply as given. At another width both scale with it, so they
    measure flow as a share of the image width and a clip behaves the same at any resolution.
    0 keeps them in absolute 1/4-resolution pixels, as DPVO does."""
    centroid_selection: str = "random"
    low_confidence_ratio: float = 20.0
    """Ratio of a frame's position variance (trace of its BA covariance's translation block) to
    the median over the last ``confidence_window`` confident frames above which the frame is
    reported as low confidence. On the three real sequences (three seeds each, ``small``) the
    ratio stayed at or below 7.5, and ten black frames raised it to 160-1500 (``docs/benchmarks.md``,
    "The position-variance ratio on the real sequences"). 0 turns the check off."""
    confidence_window: int = 20
    """Confident frames whose position variances form the reference median."""
    reuse_correlation: bool = True
    """Keep each edge's integer-grid correlation products from frame to frame and compute only
    those of edges whose grid corners moved (``vo_node.model.correlation.correlate_reusing``).
    The correlation features are the same either way, and False recomputes every edge."""
    frame_memory: int = 36
    """Frames whose dense matching maps stay in the ring buffer."""
    max_keyframes: int = 4096
    """Capacity of the keyframe store; older keyframes are folded into the trajectory."""


@dataclass
class BAConfig:
    """Gauss-Newton bundle adjustment over poses and patch inverse depths."""

    iterations: int = 2
    pose_damping: float = 1.0
    """Constant added to the diagonal of the reduced pose system (training uses 10)."""
    pose_damping_relative: float = 1e-4
    """Multiple of the reduced system's own diagonal added to it."""
    depth_damping: float = 1e-4
    min_depth: float = 0.2
    """Depth ratio below which a residual is masked out: the target-frame depth of a patch
    divided by its source-frame depth, so the test does not depend on the monocular scale."""
    max_residual: float = 128.0
    """Residual norm (1/4-resolution pixels) above which a residual is masked out."""
    image_margin: float = 64.0
    """Projections farther than this outside the image (1/4-resolution pixels) are masked."""
    min_inverse_depth: float = 1e-4
    max_inverse_depth: float = 20.0
    trust_region: bool = False
    """Levenberg-Marquardt steps: a step is kept only if it lowers the cost, and the Marquardt
    damping ``lm_damping * diag`` of the normal equations adapts to the outcome. DPVO and the
    trainer take every Gauss-Newton step (False); the inference presets turn this on."""
    lm_damping: float = 1e-6
    """Initial Marquardt damping, a multiple of the normal equations' own diagonal. It is small,
    so a step that lowers the cost is nearly the Gauss-Newton step. Every BA call starts afresh
    from it, and a start of 1e-3 left oracle tracking measurably less accurate."""
    lm_damping_factor: float = 10.0
    """A rejected step multiplies the damping by this factor; an accepted one divides it."""
    lm_max_trials: int = 6
    """Damped re-solves per iteration before the iteration gives up and keeps the estimate."""
    reset_bound_depths: bool = False
    """After each step, set inverse depths that reached ``min_inverse_depth`` or
    ``max_inverse_depth`` to the median inverse depth of their source frame's other patches.
    A patch on a bound has lost its parallax and otherwise rarely leaves it. Off by default and
    in the presets: with the frontend's estimated initial window, patches of translating oracle
    clips stay off the bounds, and from poor starts the resets often raised the cost."""


@dataclass
class EngineConfig:
    """Everything the engine needs: network sizes, frontend policy, BA and runtime settings."""

    name: str = "full"
    network: NetworkConfig = field(default_factory=NetworkConfig)
    frontend: FrontendConfig = field(default_factory=FrontendConfig)
    ba: BAConfig = field(default_factory=BAConfig)
    device: str = "auto"
    """``auto`` picks CUDA when available and the CPU otherwise."""
    max_image_width: int = 0
    """Input frames wider than this (pixels) are downscaled before tracking; 0 keeps them."""
    mixed_precision: bool = False
    """Run the network under fp16 autocast on CUDA; the BA always runs in fp32."""
    seed: int = 0
    """Seed of the patch-centre draws, so a run is repeatable."""

    def validate(self) -> "EngineConfig":
        """Check value ranges and choices; raise :class:`ConfigError` on the first invalid one.

        Every number must be finite. Each message names the key, the value and the valid range.
        """
        check_choice("device", self.device, DEVICES)
        check_choice("frontend.motion_model", self.frontend.motion_model, MOTION_MODELS)
        check_choice(
            "frontend.centroid_selection", self.frontend.centroid_selection, CENTROID_SELECTIONS
        )
        check_choice("frontend.initial_depth", self.frontend.initial_depth, INITIAL_DEPTHS)
        check_positive({
            "network.matching_dim": self.network.matching_dim,
            "network.context_dim": self.network.context_dim,
            "network.encoder_dim": self.network.encoder_dim,
            "network.patch_size": self.network.patch_size,
            "network.correlation_levels": self.network.correlation_levels,
            "frontend.patches_per_frame": self.frontend.patches_per_frame,
            "frontend.patch_lifetime": self.frontend.patch_lifetime,
            "frontend.optimization_window": self.frontend.optimization_window,
            "frontend.init_frames": self.frontend.init_frames,
            "frontend.init_iterations": self.frontend.init_iterations,
            "ba.iterations": self.ba.iterations,
            "ba.lm_max_trials": self.ba.lm_max_trials,
            "ba.max_residual": self.ba.max_residual,
            "ba.lm_damping": self.ba.lm_damping,
        })
        if self.network.patch_size % 2 != 1:
            raise ConfigError(f"network.patch_size must be odd, got {self.network.patch_size}")
        check_range("network.correlation_radius", self.network.correlation_radius, at_least=0)
        self._validate_frontend()
        self._validate_ba()
        if self.max_image_width != 0:
            check_range(
                "max_image_width", self.max_image_width, at_least=MIN_IMAGE_WIDTH,
                meaning="pixels, or 0 to keep the input width",
            )
        check_range("seed", self.seed, at_least=MIN_SEED, at_most=MAX_SEED)
        return self

    def _validate_frontend(self) -> None:
        """Check the ``frontend`` values: keyframes, motion, depth-hypothesis trial, confidence
        and graph windows."""
        frontend = self.frontend
        check_range(
            "frontend.keyframe_index", frontend.keyframe_index, at_least=1,
            at_most=frontend.optimization_window - 1,
            meaning="it must be smaller than frontend.optimization_window "
            f"({frontend.optimization_window})",
        )
        check_range(
            "frontend.keyframe_threshold", frontend.keyframe_threshold, at_least=0.0,
            meaning="mean flow in 1/4-resolution pixels, and 0 never removes a keyframe",
        )

        check_range(
            "frontend.motion_damping", frontend.motion_damping, at_least=0.0, at_most=1.0,
            meaning="0 copies the last pose, 1 repeats the last motion in full",
        )
        check_range("frontend.final_iterations", frontend.final_iterations, at_least=0)
        check_range(
            "frontend.motion_probe_threshold", frontend.motion_probe_threshold, at_least=0.0,
            meaning="median flow in 1/4-resolution pixels",
        )
        check_range(
            "frontend.threshold_reference_width", frontend.threshold_reference_width,
            at_least=0.0, meaning="0 keeps absolute thresholds, else a width in pixels",
        )

        check_range(
            "frontend.hypothesis_frames", frontend.hypothesis_frames, at_least=0,
            meaning="0 chooses at initialisation, else a number of frames",
        )
        check_range(
            "frontend.hypothesis_margin", frontend.hypothesis_margin, at_least=1.0,
            meaning="1 decides at hypothesis_frames",
        )
        check_range(
            "frontend.hypothesis_extra_frames", frontend.hypothesis_extra_frames, at_least=0,
            meaning="0 ends every trial at hypothesis_frames, else a number of frames",
        )

        check_range(
            "frontend.low_confidence_ratio", frontend.low_confidence_ratio, at_least=0.0,
            meaning="0 turns the check off, else a positive ratio",
        )
        check_range(
            "frontend.confidence_window", frontend.confidence_window,
            at_least=MIN_CONFIDENCE_HISTORY, meaning="a number of frames",
        )

        check_range(
            "frontend.removal_window", frontend.removal_window, at_least=frontend.patch_lifetime,
            meaning=f"frontend.patch_lifetime is {frontend.patch_lifetime}",
        )
        # The patch graph keeps the matching maps of the frames that edges can reach.
        reach = frontend.removal_window + frontend.patch_lifetime
        check_range(
            "frontend.frame_memory", frontend.frame_memory, at_least=reach,
            meaning=f"frontend.removal_window + frontend.patch_lifetime = {reach}, because "
            "edges reach that many frames back",
        )
        check_range(
            "frontend.max_keyframes", frontend.max_keyframes, at_least=reach + 1,
            meaning=f"above frontend.removal_window + frontend.patch_lifetime = {reach}",
        )

    def _validate_ba(self) -> None:
        ba = self.ba
        for key, value in (
            ("ba.pose_damping", ba.pose_damping),
            ("ba.pose_damping_relative", ba.pose_damping_relative),
            ("ba.depth_damping", ba.depth_damping),
            ("ba.min_depth", ba.min_depth),
            ("ba.image_margin", ba.image_margin),
            ("ba.min_inverse_depth", ba.min_inverse_depth),
        ):
            check_range(key, value, at_least=0.0)
        check_range(
            "ba.max_inverse_depth", ba.max_inverse_depth, above=ba.min_inverse_depth,
            meaning=f"ba.min_inverse_depth is {ba.min_inverse_depth}",
        )
        check_range(
            "ba.lm_damping_factor", ba.lm_damping_factor, above=1.0,
            meaning="rejected steps must get more damping",
        )


def check_choice(key: str, value: str, choices: tuple[str, ...]) -> None:
    """Raise :class:`ConfigError` naming ``key`` unless ``value`` is one of ``choices``."""
    if value not in choices:
        raise ConfigError(f"{key} must be one of {', '.join(choices)}; got {value!r}")


def check_positive(values: Mapping[str, float]) -> None:
    """Raise :class:`ConfigError` naming the first key of ``values`` whose value is not a finite
    number above 0."""
    for key, value in values.items():
        if not (math.isfinite(value) and value > 0):
            raise ConfigError(f"{key} must be positive (a finite number above 0), got {value}")


def check_range(
    key: str,
    value: float,
    *,
    at_least: float | None = None,
    above: float | None = None,
    at_most: float | None = None,
    meaning: str = "",
) -> None:
    """Raise :class:`ConfigError` unless ``value`` is finite and within the given bounds.

    The message names ``key``, ``value`` and the valid range, followed by ``meaning`` (what the
    bounds stand for) in brackets.
    """
    valid = math.isfinite(value)
    valid = valid and (at_least is None or value >= at_least)
    valid = valid and (above is None or value > above)
    valid = valid and (at_most is None or value <= at_most)
    if valid:
        return
    bounds = []
    if at_least is not None:
        bounds.append("0 or more" if at_least == 0 else f"at least {_format_bound(at_least)}")
    if above is not None:
        bounds.append(f"above {_format_bound(above)}")
    if at_most is not None:
        bounds.append(f"at most {_format_bound(at_most)}")
    kind = "" if math.isfinite(value) else "a finite number "
    detail = f" ({meaning})" if meaning else ""
    raise ConfigError(
        f"{key} must be {kind}{' and '.join(bounds)}{detail}, got {value}; set a valid value in "
        f"the configuration file or with --override {key}=VALUE"
    )


def _format_bound(bound: float) -> str:
    return f"{bound:g}" if isinstance(bound, float) else str(bound)


def from_dict(cls: type, values: Mapping[str, Any], prefix: str = "") -> Any:
    """Build dataclass ``cls`` from a nested mapping, rejecting unknown keys by name."""
    if not isinstance(values, Mapping):
        section = prefix.rstrip(".") or "configuration"
        raise ConfigError(
            f"{section} must be a section of key: value lines (a mapping), got {values!r}; "
            "set its keys one per line below it"
        )
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs: dict[str, Any] = {}
    for key, value in values.items():
        if key not in fields:
            raise ConfigError(
                f"unknown configuration key {prefix + key!r}; valid keys here: "
                f"{', '.join(sorted(fields))}"
            )
        default = getattr(cls(), key)
        if dataclasses.is_dataclass(default):
            kwargs[key] = from_dict(type(default), value, prefix=f"{prefix}{key}.")
        else:
            kwargs[key] = _coerce(prefix + key, value, default)
    return cls(**kwargs)


def _coerce(key: str, value: Any, default: Any) -> Any:
    """Convert ``value`` to the type of ``default`` (int, float, bool, str) or raise."""
    target = type(default)
    if target is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
        raise ConfigError(f"{key} must be true or false, got {value!r}")
    if target in (int, float):
        if isinstance(value, bool):
            raise ConfigError(f"{key} must be a number, got {value!r}")
        try:
            number = target(value)
        except (TypeError, ValueError, OverflowError):
            kind = "an integer" if target is int else "a number"
            raise ConfigError(f"{key} must be {kind}, got {value!r}") from None
        if target is int and isinstance(value, float) and not value.is_integer():
            raise ConfigError(f"{key} must be a whole number, got {value!r}")
        return number
    if target is str:
        return str(value)
    return value


def to_dict(config: Any) -> dict[str, Any]:
    """Return a dataclass configuration as nested plain dicts (for YAML and checkpoints)."""
    return dataclasses.asdict(config)


def is_engine_config(values: Any) -> bool:
    """Check whether parsed YAML ``values`` is a non-empty mapping of engine configuration keys."""
    engine_keys = {f.name for f in dataclasses.fields(EngineConfig)}
    return isinstance(values, Mapping) and bool(values) and set(values) <= engine_keys


def engine_preset_names(folder: Path) -> list[str]:
    """Return the sorted names of the YAML files in ``folder`` that are engine configurations.

    Training recipes (``train_*.yaml``) and node parameter files are left out, and so are files
    that are not valid YAML.
    """
    names = []
    for path in sorted(folder.glob("*.yaml")):
        try:
            values = yaml.safe_load(path.read_text())
        except (OSError, yaml.YAMLError):
            continue
        if is_engine_config(values):
            names.append(path.stem)
    return names


def find_preset(name: str) -> Path:
    """Return the YAML file of preset ``name`` from the checkout or the installed share folder."""
    candidates = [CONFIG_DIR / f"{name}.yaml"]
    # Installed with colcon, the presets sit in the package's share folder. The ament index
    # raises OSError when no ROS prefix is set up, which just means there is no share folder.
    try:
        from ament_index_python.packages import get_package_share_directory

        candidates.append(Path(get_package_share_directory("vo_node")) / "config" / f"{name}.yaml")
    except (ImportError, LookupError, ValueError, OSError):
        pass
    for path in candidates:
        if path.is_file():
            return path
    available = engine_preset_names(CONFIG_DIR) if CONFIG_DIR.is_dir() else []
    raise ConfigError(
        f"configuration preset {name!r} not found (looked in {', '.join(map(str, candidates))}); "
        f"available presets: {', '.join(available) or 'none'}"
    )


def load_engine_config(name_or_path: str | Path) -> EngineConfig:
    """Load an engine configuration from a preset name (``small``, ``full``) or a YAML path."""
    path = Path(name_or_path)
    if path.suffix not in (".yaml", ".yml"):
        path = find_preset(str(name_or_path))
    values = read_config_yaml(path, "configuration file", "pass a preset name or a YAML path")
    if not isinstance(values, dict):
        raise ConfigError(
            f"configuration file {path} must contain a mapping of sections (network:, frontend:, "
            f"...), got a {type(values).__name__}"
        )
    values.setdefault("name", path.stem)
    return from_dict(EngineConfig, values).validate()


def read_config_yaml(path: Path, description: str, fix: str) -> Any:
    """Read the YAML document of ``path``, with None (an empty file) read as ``{}``.

    Raises:
        ConfigError: the file is missing (the message ends with ``fix``) or is not valid YAML;
            the message starts with ``description`` and ``path``.
    """
    if not path.is_file():
        raise ConfigError(f"{description} {path} not found; {fix}")
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except UnicodeDecodeError:
        raise ConfigError(f"{description} {path} is not UTF-8 text; save it as UTF-8") from None
    except yaml.YAMLError as error:
        raise ConfigError(f"{description} {path} is not valid YAML: {error}") from None


def apply_overrides(config: Any, overrides: Mapping[str, Any]) -> Any:
    """Return a copy of ``config`` with dotted-key overrides (``frontend.patches_per_frame``)."""
    nested = to_dict(config)
    for dotted, value in overrides.items():
        node = nested
        owner = config
        parts = dotted.split(".")
        for index, part in enumerate(parts[:-1]):
            if part in node and _is_mapping_field(owner, part):
                field_name = ".".join(parts[: index + 1])
                raise ConfigError(
                    f"unknown configuration key {dotted!r}: {field_name} is a mapping whose keys "
                    "may contain dots, so its entries cannot be set one by one. "
                    f"{_mapping_override_hint(field_name, node[part])}"
                )
            if part not in node or not isinstance(node[part], dict):
                sections = sorted(key for key, entry in node.items() if isinstance(entry, dict))
                raise ConfigError(
                    f"unknown configuration key {dotted!r}: {part!r} is not a section; valid "
                    f"sections here: {', '.join(sections)}"
                )
            node = node[part]
            owner = getattr(owner, part)
        if parts[-1] not in node:
            raise ConfigError(
                f"unknown configuration key {dotted!r}; valid keys here: {', '.join(sorted(node))}"
            )
        section = node[parts[-1]]
        if isinstance(section, dict) and not isinstance(value, Mapping):
            if _is_mapping_field(owner, parts[-1]):
                raise ConfigError(
                    f"override {dotted}={value!r} is invalid: {dotted} is a mapping, not a "
                    f"single value. {_mapping_override_hint(dotted, section)}"
                )
            example = next(iter(section))
            raise ConfigError(
                f"override {dotted}={value!r} is invalid: {dotted} is a section, not a value; "
                f"set one of its keys with {dotted}.KEY=VALUE, such as {dotted}.{example}="
                f"{section[example]!r}"
            )
        node[parts[-1]] = value
    result = from_dict(type(config), nested)
    return result.validate() if hasattr(result, "validate") else result


def _is_mapping_field(owner: Any, name: str) -> bool:
    """Check whether field ``name`` of dataclass ``owner`` is a free-form mapping (such as a
    training recipe's ``engine_overrides``) rather than a configuration section."""
    value = getattr(owner, name, None)
    return isinstance(value, Mapping) and not dataclasses.is_dataclass(value)


def _mapping_override_hint(dotted: str, current: Mapping[str, Any]) -> str:
    """Return how to override the mapping field ``dotted`` from the command line."""
    if current:
        # A flow mapping on one line; infinite width keeps PyYAML from wrapping it.
        example = yaml.safe_dump(
            dict(current), default_flow_style=True, sort_keys=False, width=float("inf")
        ).strip()
        return (
            f"Pass a YAML mapping, quoted for the shell, which replaces the whole mapping, such as "
            f"'{dotted}={example}' (its current entries); drop or change entries there"
        )
    return (
        f"Pass a YAML mapping, quoted for the shell, which replaces the whole mapping, such as "
        f"'{dotted}={{KEY: VALUE}}' (it is empty now)"
    )


def parse_override(text: str) -> tuple[str, Any]:
    """Parse one ``key=value`` command-line override; the value is read as YAML."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like key=value, e.g. ba.iterations=4")
    key, raw = text.split("=", 1)
    try:
        return key.strip(), yaml.safe_load(raw)
    except yaml.YAMLError:
        raise ConfigError(
            f"override {text!r} has a value that is not valid YAML; quote strings and close "
            "brackets, e.g. frontend.motion_model=constant"
        ) from None


def resolve_device(device: str) -> str:
    """Map ``auto`` to ``cuda`` when a GPU is visible, else ``cpu``; reject unknown names."""
    import torch

    check_choice("device", device, DEVICES)
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device 'cuda' requested but no CUDA device is visible; use 'cpu' or 'auto'")
    return device
