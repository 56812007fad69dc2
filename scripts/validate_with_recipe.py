"""Score a model file on the held-out synthetic clips of another model file's training recipe.

``python -m vo_node.train --validate FILE`` scores a model on the clips of its own recipe. This
script copies FILE with the recipe recorded in RECIPE_FILE (a model file or a training
checkpoint), then validates the copy::

    .venv/bin/python scripts/validate_with_recipe.py FILE RECIPE_FILE [--clips 64] \
        [--compare OTHER_FILE ...]

Each ``--compare`` model file is scored on the same clips and paired with FILE clip by clip:
the mean loss difference (OTHER - FILE), its standard error and the clips where OTHER is lower.
``--set KEY=VALUE`` (repeatable) changes the recipe before the clips are drawn, for example
``--set data.reverse_p=1.0`` to score the same clips played backwards.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch

from vo_node.config import ConfigError, apply_overrides, from_dict, parse_override, to_dict
from vo_node.train.config import TrainConfig
from vo_node.train.trainer import (
    CheckpointValidation,
    format_standard_error,
    paired_difference,
    validate_checkpoint_clips,
)


class InputError(Exception):
    """An argument file that cannot be used; the message names the file and the fix."""


def read_payload(path: Path, role: str) -> dict:
    """Load ``path`` as a torch file holding a dictionary, or raise :class:`InputError`."""
    if not path.is_file():
        raise InputError(f"{role} {path} not found or not a file; pass an existing .pt file")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises many types for files that are not its own
        raise InputError(f"{role} {path} is not a torch .pt file ({type(error).__name__}); "
                         "pass a model file from --export or a training checkpoint") from None
    if not isinstance(payload, dict):
        raise InputError(f"{role} {path} is invalid: it contains no model or checkpoint "
                         "dictionary; pass a model file from --export or a training checkpoint")
    return payload


def recipe_of(path: Path) -> dict:
    """Return the training recipe recorded in a model file or a training checkpoint."""
    recipe = read_payload(path, "recipe file")
    # A model file records its recipe in its metadata, a training checkpoint under "config".
    if "train_config" in recipe.get("metadata", {}):
        return recipe["metadata"]["train_config"]
    if "config" in recipe and "model" in recipe:
        return recipe["config"]
    raise InputError(f"recipe file {path} records no training recipe; pass a model file exported "
                     "by this trainer or a training checkpoint")


def with_overrides(recipe: dict, settings: list[str]) -> dict:
    """Return ``recipe`` with the dotted ``KEY=VALUE`` settings applied and checked."""
    if not settings:
        return recipe
    try:
        overrides = dict(parse_override(text) for text in settings)
        config = apply_overrides(from_dict(TrainConfig, recipe), overrides).validate()
    except (ConfigError, ValueError) as error:
        raise InputError(f"--set: {error}") from None
    return to_dict(config)


def read_model(path: Path) -> dict:
    """Load an exported model file, or raise :class:`InputError`."""
    payload = read_payload(path, "model file")
    if "state_dict" not in payload or "metadata" not in payload:
        raise InputError(f"model file {path} is not an exported model file; export a training "
                         "checkpoint first with python -m vo_node.train --export CKPT --output FILE")
    return payload


def score_with_recipe(payload: dict, recipe_config: dict, clips: int) -> CheckpointValidation:
    """Validate the weights of a loaded model file on the clips of ``recipe_config``."""
    payload = {**payload, "metadata": {**payload["metadata"], "train_config": recipe_config}}
    with tempfile.TemporaryDirectory() as folder:
        copy = Path(folder) / "model.pt"
        torch.save(payload, copy)
        return validate_checkpoint_clips(copy, clips)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path, help="model file whose weights are scored")
    parser.add_argument("recipe_model", type=Path,
                        help="model file or training checkpoint whose recipe gives the clips")
    parser.add_argument("--clips", type=int, default=64, help="held-out clips (default 64)")
    parser.add_argument("--compare", type=Path, nargs="+", default=[], metavar="FILE",
                        help="more model files to score on the same clips and pair with MODEL")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="recipe setting to change before drawing the clips, repeatable "
                             "(e.g. data.reverse_p=1.0)")
    args = parser.parse_args()
    if args.clips < 1:
        parser.error(f"--clips must be a positive number of clips, got {args.clips}")
    try:
        # Every file is read before the slow scoring, so a bad one fails at once.
        recipe_config = with_overrides(recipe_of(args.recipe_model), args.set)
        models = [(path, read_model(path)) for path in [args.model, *args.compare]]
    except InputError as error:
        raise SystemExit(f"validate_with_recipe: {error}") from None
    compare(models, recipe_config, args)


def compare(models: list[tuple[Path, dict]], recipe_config: dict, args: argparse.Namespace) -> None:
    """Print the first model's scores, then each other model's scores and paired difference."""
    reference = None
    for path, payload in models:
        result = score_with_recipe(payload, recipe_config, args.clips)
        settings = f" with {', '.join(args.set)}" if args.set else ""
        print(f"{path} on the clips of {args.recipe_model}{settings}: step {result.step}, " + ", ".join(
            f"{name} {value:.4g}" for name, value in result.metrics.items()), flush=True)
        if reference is None:
            reference = result
            continue
        mean, error, lower = paired_difference(result.clip_losses, reference.clip_losses)
        print(f"  loss minus {args.model}'s: {mean:+.3f} +- {format_standard_error(error)} "
              f"(lower on {lower} of {len(result.clip_losses)} clips)")


if __name__ == "__main__":
    main()
