"""Command line of the trainer: ``python -m vo_node.train --config config/train_small.yaml``."""

from vo_node.train import main

if __name__ == "__main__":
    raise SystemExit(main())
