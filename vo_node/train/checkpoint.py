"""Training checkpoints: atomic writes, RNG capture and restore, and the code version.

A checkpoint is a plain dict saved with ``torch.save``; it holds only tensors, numbers, strings,
lists and dicts, so :func:`load_checkpoint` reads it with ``weights_only=True``. Keys:

- ``step``: optimiser steps done; the next step to run;
- ``model``, ``optimizer``, ``scheduler``, ``balance``: state dicts;
- ``rng``: python, numpy, torch (and CUDA) generator states, see :func:`capture_rng_state`;
- ``config``: the training configuration as a dict; ``engine``: the engine configuration;
- ``best``: the best validation value so far; ``nonfinite``: consecutive skipped steps;
- ``code_version``: see :func:`code_version`;
- ``wall_s``: training wall-clock seconds so far, validation passes excluded (absent in
  checkpoints of older versions, which the trainer then estimates from metrics.csv).

New keys are only added, never renamed or dropped, and readers take a default when one is absent,
so older checkpoints keep loading.
"""

from __future__ import annotations

import logging
import random
import subprocess
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vo_node.io.atomic import atomic_write
from vo_node.model.network import summarize_load_error

logger = logging.getLogger(__name__)

CHECKPOINT_FORMAT = 1
CHECKPOINT_DIR = "checkpoints"
LATEST_NAME = "latest.pt"
BEST_NAME = "best.pt"
REPOSITORY_ROOT = Path(__file__).resolve().parents[2]
GIT_TIMEOUT_S = 10.0


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> Path:
    """Write ``state`` to ``path`` atomically (temporary file, fsync, rename) and return it."""
    path = Path(path)
    payload = dict(state, format=CHECKPOINT_FORMAT)
    with atomic_write(path, "wb") as handle:
        torch.save(payload, handle)
    logger.info("checkpoint written: %s (step %s)", path, state.get("step"))
    return path


def load_checkpoint(
    path: str | Path, map_location: str | torch.device = "cpu", mmap: bool = False
) -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint`; raise a clear error if unusable.

    With ``mmap`` the tensors stay memory-mapped from the file and are read only when used,
    which makes reading the step or the configuration cheap.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"checkpoint {path} not found; pass an existing checkpoint file (.pt), such as "
            "RUN/checkpoints/latest.pt"
        )
    try:
        # torch maps only the zip format that torch.save writes by default; others load whole.
        mapped = mmap and zipfile.is_zipfile(path)
        state = torch.load(path, map_location=map_location, weights_only=True, mmap=mapped)
    except Exception as error:
        # The weights-only unpickler fails on foreign bytes with any error type (a text file
        # gives KeyError or IndexError), so every failure means an unreadable checkpoint.
        raise ValueError(
            f"checkpoint {path} could not be read ({summarize_load_error(error)}); it is not a "
            "training checkpoint or it is truncated"
        ) from None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(
            f"{path} is not a vo_node training checkpoint of format {CHECKPOINT_FORMAT}; "
            "model files from export are loaded with vo_node.model.network.load_model instead"
        )
    return state


def resolve_resume_path(resume: str | Path) -> Path:
    """Map a ``--resume`` argument (a checkpoint file or a run folder) to a checkpoint file.

    A folder resolves to ``<folder>/checkpoints/latest.pt`` or, failing that,
    ``<folder>/latest.pt``.
    """
    path = Path(resume)
    if path.is_dir():
        candidates = [path / CHECKPOINT_DIR / LATEST_NAME, path / LATEST_NAME]
        path = next((c for c in candidates if c.is_file()), candidates[0])
    if not path.is_file():
        raise FileNotFoundError(
            f"cannot resume: checkpoint {path} not found; pass --resume with a checkpoint "
            "file, a run folder that contains checkpoints/latest.pt, or latest with --output "
            "RUN_FOLDER"
        )
    return path


def capture_rng_state() -> dict[str, Any]:
    """Return the global python, numpy and torch RNG states as checkpoint-safe values."""
    version, internal, gauss = random.getstate()
    name, keys, position, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "python": [version, list(internal), gauss],
        "numpy": [name, torch.from_numpy(np.asarray(keys, dtype=np.int64)), position, has_gauss,
                  cached],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    """Restore the states captured by :func:`capture_rng_state`."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, position, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), position, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def code_version() -> str:
    """Return ``git describe`` of the source checkout, else the installed package version."""
    try:
        result = subprocess.run(
            ["git", "describe", "--always", "--dirty", "--tags"],
            cwd=REPOSITORY_ROOT,
            capture_output=True,
            text=True,
            timeout=GIT_TIMEOUT_S,
            check=True,
        )
        return f"git {result.stdout.strip()}"
    except (OSError, subprocess.SubprocessError):
        pass
    try:
        from importlib.metadata import PackageNotFoundError, version

        return f"package {version('vo_node')}"
    except (ImportError, PackageNotFoundError):
        return "unknown"
