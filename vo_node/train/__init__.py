"""Trainer of the patch network: unrolled DPVO-style graph, Sigma-weighted flow loss, beta rule.

Command line (see docs/training.md)::

    python -m vo_node.train --config config/train_small.yaml [--output DIR] [--resume [CKPT]]
        [--max-steps N] [key=value ...]
    python -m vo_node.train --export CHECKPOINT --output models/NAME.pt
    torchrun --nproc_per_node=N -m vo_node.train --config config/train_full.yaml
"""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path

logger = logging.getLogger(__name__)

EXIT_ERROR = 1
EXIT_USAGE = 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m vo_node.train",
        description="Train the vo_node patch network on synthetic, TartanAir or TUM RGB-D clips.",
    )
    parser.add_argument(
        "--config", type=Path,
        help="training recipe YAML: config/train_small.yaml for a CPU, config/train_full.yaml for "
        "a GPU (default: the checkpoint's recipe with --resume, else the built-in defaults, which "
        "match the full recipe and need a GPU)",
    )
    parser.add_argument(
        "--output", type=Path,
        help="run folder (default: the recipe's output key); with --export, the model file",
    )
    parser.add_argument(
        "--resume", nargs="?", const="", default=None, metavar="CKPT",
        help="continue from CKPT (a .pt file or a run folder); without CKPT, from "
        "OUTPUT/checkpoints/latest.pt",
    )
    parser.add_argument("--max-steps", type=_positive_int,
                        help="stop after this many more steps (default: train to optim.steps)")
    parser.add_argument("--export", type=Path, metavar="CKPT",
                        help="write a compact model file from a checkpoint and exit")
    parser.add_argument("overrides", nargs="*", metavar="key=value",
                        help="dotted configuration overrides, e.g. optim.lr=4e-4")
    return parser


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _configure_logging() -> None:
    rank = int(os.environ.get("RANK", "0"))
    logging.basicConfig(
        level=logging.INFO if rank == 0 else logging.WARNING,
        format=f"%(asctime)s [rank {rank}] %(levelname)s %(name)s: %(message)s",
    )


def _resolve(args: argparse.Namespace):
    """Return ``(config, output, resume_path)`` from the command-line arguments.

    Without ``--config``, a resumed run takes the configuration stored in its checkpoint.
    """
    from vo_node.config import apply_overrides, from_dict, parse_override
    from vo_node.train import checkpoint as ckpt
    from vo_node.train.config import TrainConfig, load_train_config

    overrides = dict(parse_override(text) for text in args.overrides)
    config = load_train_config(args.config, overrides) if args.config is not None else None
    resume_path = None
    if args.resume is not None:
        target = args.resume or args.output or (config.output if config else None)
        if not target:
            raise ValueError("--resume without CKPT needs --output RUN_FOLDER or --config")
        resume_path = ckpt.resolve_resume_path(target)
    if config is None and resume_path is not None:
        stored = ckpt.load_checkpoint(resume_path)["config"]
        config = apply_overrides(from_dict(TrainConfig, stored), overrides).validate()
    elif config is None:
        logger.warning(
            "no --config given: training with the built-in defaults (the full recipe: engine "
            "full, 480x640 clips, 240,000 steps), which need a GPU; pass --config "
            "config/train_small.yaml to train on a CPU"
        )
        config = load_train_config(None, overrides)
    output = args.output if args.output else Path(config.output)
    return config, output, resume_path


def main(argv: list[str] | None = None) -> int:
    """Run the trainer command; return the process exit code."""
    args = build_parser().parse_args(argv)
    _configure_logging()
    from vo_node.config import ConfigError
    from vo_node.train.trainer import Trainer, TrainingError, export_checkpoint

    if args.export is not None:
        if args.output is None:
            logger.error("--export needs --output FILE.pt for the model file")
            return EXIT_USAGE
        try:
            export_checkpoint(args.export, args.output)
        except (ConfigError, FileNotFoundError, ValueError) as error:
            logger.error("cannot export %s: %s", args.export, error)
            return EXIT_USAGE
        logger.info("exported %s to %s", args.export, args.output)
        return 0
    try:
        config, output, resume_path = _resolve(args)
        trainer = Trainer(config, output, resume_path)
        logger.info("training into %s (device %s, %d rank(s))", output, trainer.device,
                    trainer.context.world_size)
        return trainer.train(args.max_steps)
    except (ConfigError, FileNotFoundError, ValueError) as error:
        logger.error("%s", error)
        return EXIT_USAGE
    except TrainingError as error:
        logger.error("training stopped: %s", error)
        return EXIT_ERROR
    finally:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
