"""Score a model file on the held-out synthetic clips of another model file's training recipe.

``python -m vo_node.train --validate FILE`` scores a model on the clips of its own recipe. This
script copies FILE with the recipe recorded in RECIPE_FILE (a model file or a training
checkpoint), then validates the copy::

    .venv/bin/python scripts/validate_with_recipe.py FILE RECIPE_FILE [--clips 64]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch

from vo_node.train.trainer import validate_checkpoint


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path, help="model file whose weights are scored")
    parser.add_argument("recipe_model", type=Path,
                        help="model file or training checkpoint whose recipe gives the clips")
    parser.add_argument("--clips", type=int, default=64, help="held-out clips (default 64)")
    args = parser.parse_args()
    payload = torch.load(args.model, map_location="cpu", weights_only=True)
    recipe = torch.load(args.recipe_model, map_location="cpu", weights_only=True)
    # A model file records its recipe in its metadata, a training checkpoint under "config".
    recipe_config = recipe["metadata"]["train_config"] if "metadata" in recipe else recipe["config"]
    payload["metadata"] = {**payload["metadata"], "train_config": recipe_config}
    with tempfile.TemporaryDirectory() as folder:
        copy = Path(folder) / "model.pt"
        torch.save(payload, copy)
        metrics = validate_checkpoint(copy, args.clips)
    print(f"{args.model} on the clips of {args.recipe_model}: " + ", ".join(
        f"{name} {value:.4g}" for name, value in metrics.items()))


if __name__ == "__main__":
    main()
