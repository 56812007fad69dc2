"""The patch network (patchifier, correlation, update operator) and its model files.

A model file is a ``torch.save`` dict with ``format_version``, ``state_dict``, ``config`` (the
engine configuration as nested dicts) and ``metadata``, written atomically.
"""

from __future__ import annotations

import copy
import logging
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from vo_node.config import ConfigError, EngineConfig, NetworkConfig, from_dict, to_dict
from vo_node.io.atomic import atomic_write
from vo_node.model.correlation import (
    CorrelationPyramid,
    GridProducts,
    correlate,
    correlate_reusing,
)
from vo_node.model.patchifier import PatchBatch, Patchifier
from vo_node.model.update import UpdateOperator

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
MODEL_KEYS = ("format_version", "state_dict", "config", "metadata")
DEFAULT_MODEL_NAME = "vo_small.pt"
MODELS_DIR = Path(__file__).resolve().parents[2] / "models"
"""Model folder of a source checkout."""
WEIGHTS_ONLY_MARKER = "WeightsUnpickler error:"
"""Text before the cause in the error of a weights-only ``torch.load`` (torch 2.13)."""
MAX_LOAD_ERROR_CHARS = 200
MODEL_FILE_HELP = (
    "A model file (network weights and engine configuration) is made from a training "
    "checkpoint with `python -m vo_node.train --export CHECKPOINT --output MODEL.pt`"
)
"""Closing sentence of every error about an unreadable model file: what a model file is and how
to make one."""


class ModelFileError(ValueError):
    """A model file is not a vo_node model or does not match its stored configuration."""


class VONetwork(nn.Module):
    """Patchifier and update operator of the DPVO-style network, sized by ``NetworkConfig``."""

    def __init__(self, config: NetworkConfig):
        super().__init__()
        self.config = config
        self.patchifier = Patchifier(config)
        self.update_operator = UpdateOperator(config)

    def for_inference(self, device: torch.device) -> "VONetwork":
        """Return the network for tracking on ``device``, in eval mode.

        On the CPU this is a copy whose encoder weights are stored channels-last, like the maps
        the encoders compute there at inference: oneDNN then skips reordering the weights on
        every call. In ``python -m vo_node.bench --configs small --threads 1`` (torch 2.13,
        240x368) the encoders stage fell from about 20.6 to 18.5 ms. The copy leaves this
        network, which a trainer may still be training in the contiguous layout, untouched.
        Elsewhere it returns ``self``.
        """
        network = self.to(device).eval()
        if torch.device(device).type != "cpu":
            return network
        network = copy.deepcopy(network)
        for encoder in (network.patchifier.matching_encoder, network.patchifier.context_encoder):
            encoder.to(memory_format=torch.channels_last)
        return network

    def patchify(
        self,
        images: Tensor,
        patches_per_frame: int,
        generator: torch.Generator | None = None,
        selection: str = "random",
    ) -> PatchBatch:
        """Encode ``(N, 3, H, W)`` images (values 0..255) and cut ``patches_per_frame`` patches."""
        return self.patchifier(images, patches_per_frame, generator, selection)

    def pyramid(self, fmap: Tensor) -> CorrelationPyramid:
        """Prepare matching maps ``(F, C, h, w)`` for :meth:`correlate`."""
        return CorrelationPyramid.from_fmap(
            fmap, self.config.correlation_levels, self.config.correlation_radius
        )

    def correlate(
        self,
        gmap: Tensor,
        maps: Tensor | CorrelationPyramid,
        coords: Tensor,
        kk: Tensor,
        jj: Tensor,
        store: GridProducts | None = None,
    ) -> Tensor:
        """Correlation features ``(E, 882)`` (default sizes) of edges ``(kk, jj)``.

        ``maps`` is either the ``(F, C, h, w)`` matching maps or a prepared pyramid; pass a
        pyramid when the same maps serve many calls. ``coords`` is ``(E, 2, P, P)`` in
        1/4-resolution pixels; see :func:`vo_node.model.correlation.correlate`. With ``store``
        (inference only) the products of edges whose grid corners did not move are reused
        from it and the others written into it (:func:`~vo_node.model.correlation.correlate_reusing`).
        """
        if isinstance(maps, Tensor):
            maps = self.pyramid(maps)
        if store is not None:
            return correlate_reusing(gmap, maps, coords, kk, jj, store)
        return correlate(gmap, maps, coords, kk, jj)

    def update(
        self, hidden: Tensor, context: Tensor, corr: Tensor, ii: Tensor, jj: Tensor, kk: Tensor
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Run the update operator; returns ``(hidden (E, D), delta (E, 2), weight (E, 2))``.

        ``context`` is the per-patch ``(K, D)`` context that ``kk`` indexes.
        """
        return self.update_operator(hidden, context, corr, ii, jj, kk)


def save_model(
    path: str | Path, network: VONetwork, engine_config: EngineConfig, metadata: dict[str, Any]
) -> None:
    """Write ``network``'s weights, ``engine_config`` and ``metadata`` to ``path`` atomically."""
    if engine_config.network != network.config:
        raise ConfigError(
            f"engine_config.network {engine_config.network} does not match the network's sizes "
            f"{network.config}; pass the configuration the network was built with"
        )
    payload = {
        "format_version": FORMAT_VERSION,
        "state_dict": {key: value.detach().cpu() for key, value in network.state_dict().items()},
        "config": to_dict(engine_config),
        "metadata": dict(metadata),
    }
    with atomic_write(path, mode="wb") as handle:
        torch.save(payload, handle)
    logger.info("saved model %s", path)


def load_model(
    path: str | Path, device: str | torch.device = "cpu"
) -> tuple[VONetwork, EngineConfig]:
    """Load a model file written by :func:`save_model`; returns the network (eval mode) and config.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ModelFileError: the file is not a vo_node model, or its weights do not fit its config.
        ConfigError: the stored configuration is invalid.
    """
    path = Path(path)
    if path.is_dir():
        raise ModelFileError(f"model file {path} is a folder; pass the model's .pt file")
    if not path.is_file():
        raise FileNotFoundError(
            f"model file {path} not found; train one with the trainer or pass --model PATH"
        )
    payload = _read_payload(path)
    engine_config = from_dict(EngineConfig, payload["config"]).validate()
    network = VONetwork(engine_config.network)
    check_state_dict(path, network, payload["state_dict"])
    network.load_state_dict(payload["state_dict"])
    return network.to(device).eval(), engine_config


def _read_payload(path: Path) -> dict[str, Any]:
    if path.stat().st_size == 0:
        raise ModelFileError(f"model file {path} is empty. {MODEL_FILE_HELP}")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except OSError as error:
        raise ModelFileError(
            f"model file {path} could not be read ({error}); check that it is a readable file"
        ) from None
    except Exception as error:
        # torch's weights-only unpickler runs on arbitrary bytes and fails with whatever its
        # opcode handlers hit: UnpicklingError, EOFError, RuntimeError, but also KeyError
        # ("hello") or IndexError ("this is not a model file") in torch 2.13. Any failure here
        # means the file is not a readable model file.
        raise ModelFileError(
            f"{path} is not a vo_node model file or is truncated (torch.load failed: "
            f"{summarize_load_error(error)}). {MODEL_FILE_HELP}"
        ) from None
    missing = [key for key in MODEL_KEYS if not isinstance(payload, dict) or key not in payload]
    if missing:
        raise ModelFileError(
            f"{path} is not a vo_node model file: missing {', '.join(missing)}. {MODEL_FILE_HELP}"
        )
    version = payload["format_version"]
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise ModelFileError(
            f"{path} has model format version {version!r}, newer than the supported "
            f"{FORMAT_VERSION}; update vo_node"
        )
    return payload


def summarize_load_error(error: Exception) -> str:
    """Return the cause of a ``torch.load`` failure in one short line.

    torch's weights-only message spans several paragraphs and suggests ``weights_only=False``,
    which would run arbitrary code from the file, so only its cause is kept.
    """
    text = str(error)
    if WEIGHTS_ONLY_MARKER in text:
        text = text.split(WEIGHTS_ONLY_MARKER, 1)[1]
    elif isinstance(error, LookupError) or not text.strip():
        # A bare KeyError or IndexError message ("101") means nothing without its type.
        text = f"{type(error).__name__}: {text}" if text.strip() else type(error).__name__
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    summary = lines[0].split(". ")[0] if lines else type(error).__name__
    return summary[:MAX_LOAD_ERROR_CHARS]


STORED_CONFIG_FIX = (
    "the stored config does not describe these weights; save the model again with the engine "
    "configuration the network was built with"
)


def check_state_dict(
    path: Path, network: VONetwork, state_dict: dict[str, Tensor], fix: str = STORED_CONFIG_FIX
) -> None:
    """Raise :class:`ModelFileError` naming the first key of ``state_dict`` (read from
    ``path``) that does not fit ``network``; ``fix`` ends the message."""
    expected = network.state_dict()
    for key, value in expected.items():
        if key not in state_dict:
            raise ModelFileError(f"{path}: weight {key!r} is missing; {fix}")
        if tuple(state_dict[key].shape) != tuple(value.shape):
            raise ModelFileError(
                f"{path}: weight {key!r} has shape {tuple(state_dict[key].shape)} but the stored "
                f"network config {network.config} needs {tuple(value.shape)}; {fix}"
            )
    unexpected = sorted(set(state_dict) - set(expected))
    if unexpected:
        raise ModelFileError(f"{path}: unexpected weight {unexpected[0]!r}; {fix}")


def default_model_path() -> Path:
    """Find ``vo_small.pt`` in the checkout's ``models`` folder or the installed share folder."""
    candidates = [MODELS_DIR / DEFAULT_MODEL_NAME]
    # Installed with colcon, models sit in the package's share folder. The ament index raises
    # OSError when no ROS prefix is set up, which just means there is no share folder.
    try:
        from ament_index_python.packages import get_package_share_directory

        share = Path(get_package_share_directory("vo_node"))
        candidates.append(share / "models" / DEFAULT_MODEL_NAME)
    except (ImportError, LookupError, ValueError, OSError):
        pass
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(
        f"default model {DEFAULT_MODEL_NAME} not found (looked in "
        f"{', '.join(map(str, candidates))}); train one or pass a model path"
    )
