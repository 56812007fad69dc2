"""Score a model file on the held-out synthetic clips of another model file's training recipe.

``python -m vo_node.train --validate FILE`` scores a model on the clips of its own recipe. This
script copies FILE with the recipe recorded in RECIPE_FILE (a model file or a training
checkpoint), then validates the copy::

    .venv/bin/python scripts/validate_with_recipe.py FILE RECIPE_FILE [--clips 64] \
        [--compare OTHER_FILE ...]

Each ``--compare`` model file is scored on the same clips and paired with FILE clip by clip:
the mean loss difference (OTHER - FILE), its standard error and the clips where OTHER is lower.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch

from vo_node.train.trainer import CheckpointValidation, paired_difference, validate_checkpoint_clips


def score_with_recipe(model: Path, recipe_config: dict, clips: int) -> CheckpointValidation:
    """Validate the weights of ``model`` on the clips of ``recipe_config``."""
    payload = torch.load(model, map_location="cpu", weights_only=True)
    payload["metadata"] = {**payload["metadata"], "train_config": recipe_config}
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
    args = parser.parse_args()
    recipe = torch.load(args.recipe_model, map_location="cpu", weights_only=True)
    # A model file records its recipe in its metadata, a training checkpoint under "config".
    recipe_config = recipe["metadata"]["train_config"] if "metadata" in recipe else recipe["config"]
    reference = score_with_recipe(args.model, recipe_config, args.clips)
    for model in [args.model, *args.compare]:
        result = reference if model == args.model else score_with_recipe(
            model, recipe_config, args.clips)
        print(f"{model} on the clips of {args.recipe_model}: step {result.step}, " + ", ".join(
            f"{name} {value:.4g}" for name, value in result.metrics.items()), flush=True)
        if model != args.model:
            mean, error, lower = paired_difference(result.clip_losses, reference.clip_losses)
            print(f"  loss minus {args.model}'s: {mean:+.3f} +- {error:.3f} "
                  f"(lower on {lower} of {len(result.clip_losses)} clips)")


if __name__ == "__main__":
    main()
