"""Trainer of the patch network: unrolled DPVO-style graph, Sigma-weighted flow loss, beta rule.

Command line (see docs/training.md)::

    python -m vo_node.train --config config/train_small.yaml [--output DIR] [--resume [CKPT]]
        [--max-steps N] [key=value ...]
    python -m vo_node.train --export CHECKPOINT --output models/NAME.pt [--engine small]
    python -m vo_node.train --validate CHECKPOINT [CHECKPOINT ...] [--clips 64]
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
EXIT_INTERRUPTED = 128 + 2
"""Exit code after SIGINT (signal 2), as shells report a process stopped by Ctrl-C."""
DEFAULT_RECIPE = "train_small"
"""Preset trained when neither --config nor --resume names a recipe: the CPU recipe."""
DEFAULT_VALIDATE_CLIPS = 64
"""Held-out clips per checkpoint for ``--validate``: eight times the CPU recipe's 8."""
GPU_RECIPE_PIXELS = 480 * 640
"""Clip area (pixels) of the GPU recipe. Recipes with clips at least this large warn on the CPU."""
FULL_RECIPE_CPU_MEMORY_GB = 20
"""Resident memory (GB) that a CPU run of the full engine on 480x640 clips of 15 frames was
observed to grow to (one observation, not a bound)."""


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser of ``python -m vo_node.train``."""
    from vo_node.run import positive_int

    parser = argparse.ArgumentParser(
        prog="python -m vo_node.train",
        description="Train the vo_node patch network on synthetic, TartanAir or TUM RGB-D clips.",
    )
    parser.add_argument(
        "--config", type=Path,
        help="training recipe YAML: config/train_small.yaml for a CPU, config/train_full.yaml for "
        "a GPU (default: the checkpoint's recipe with --resume, else config/train_small.yaml)",
    )
    parser.add_argument(
        "--output", type=Path,
        help="run folder (default: the recipe's output key); with --export, the model file",
    )
    parser.add_argument(
        "--resume", nargs="?", const="", default=None, metavar="CKPT",
        help="continue from CKPT: a checkpoint file, a run folder (its checkpoints/latest.pt) "
        "or 'latest' (OUTPUT/checkpoints/latest.pt, as without CKPT); without --output, a "
        "checkpoint inside a run folder continues writing into that folder",
    )
    parser.add_argument("--max-steps", type=positive_int,
                        help="stop after this many more steps (default: train to optim.steps)")
    parser.add_argument("--export", type=Path, metavar="CKPT",
                        help="write a compact model file from a checkpoint and exit")
    parser.add_argument("--engine", metavar="PRESET",
                        help="with --export: engine preset (name or YAML) whose frontend and BA "
                        "settings the model file carries; its network sizes must match the "
                        "checkpoint (default: the settings the checkpoint was trained with)")
    parser.add_argument("--validate", type=Path, nargs="+", metavar="CKPT",
                        help="print the held-out synthetic validation loss of each checkpoint "
                        "on --clips clips and exit")
    parser.add_argument("--clips", type=positive_int, default=DEFAULT_VALIDATE_CLIPS,
                        help="with --validate: held-out synthetic clips per checkpoint "
                        f"(default {DEFAULT_VALIDATE_CLIPS})")
    parser.add_argument("overrides", nargs="*", metavar="key=value",
                        help="dotted configuration overrides, e.g. optim.lr=4e-4")
    return parser


def _configure_logging() -> None:
    rank = int(os.environ.get("RANK", "0"))
    logging.basicConfig(
        level=logging.INFO if rank == 0 else logging.WARNING,
        format=f"%(asctime)s [rank {rank}] %(levelname)s %(name)s: %(message)s",
    )


RESUME_LATEST = "latest"
"""``--resume`` keyword (like ``--resume`` without a value): the run folder's latest checkpoint."""


def _resolve(args: argparse.Namespace):
    """Return ``(config, output, resume_path)`` from the command-line arguments.

    Without ``--config``, a resumed run takes the configuration stored in its checkpoint.
    Without ``--output``, a resumed checkpoint inside a run folder (``RUN/checkpoints/NAME.pt``)
    continues writing into that run folder.
    """
    from vo_node.config import apply_overrides, find_preset, from_dict, parse_override
    from vo_node.train import checkpoint as ckpt
    from vo_node.train.config import TrainConfig, load_train_config

    resume, override_texts = _split_resume_argument(args.resume, args.overrides)
    overrides = dict(parse_override(text) for text in override_texts)
    config = load_train_config(args.config, overrides) if args.config is not None else None
    resume_path = None
    if resume is not None:
        target = resume or args.output or (config.output if config else None)
        if not target:
            raise ValueError(
                f"--resume {resume or RESUME_LATEST} needs --output RUN_FOLDER or --config to "
                "find the run's latest checkpoint; or pass --resume RUN_FOLDER or a checkpoint file"
            )
        resume_path = ckpt.resolve_resume_path(target)
    if config is None and resume_path is not None:
        stored = ckpt.load_checkpoint(resume_path, mmap=True)["config"]
        config = apply_overrides(from_dict(TrainConfig, stored), overrides).validate()
    elif config is None:
        default_recipe = find_preset(DEFAULT_RECIPE)
        logger.info(
            "no --config given: training with the CPU recipe %s; pass --config "
            "config/train_full.yaml for the GPU recipe", default_recipe,
        )
        config = load_train_config(default_recipe, overrides)
    warn_if_too_large_for_cpu(config)
    output = _resolve_output(args.output, config, resume_path)
    return config, output, resume_path


def _split_resume_argument(
    resume: str | None, overrides: list[str]
) -> tuple[str | None, list[str]]:
    """Return ``(resume, overrides)`` with the ``--resume`` value normalised.

    ``latest`` becomes ``""`` (the run folder's latest checkpoint). A ``key=value`` value that
    is not an existing path is an override that argparse took as the optional CKPT, as in
    ``--resume optim.lr=1e-4``.
    """
    if resume == RESUME_LATEST:
        return "", overrides
    if resume and "=" in resume and not Path(resume).exists():
        return "", [resume, *overrides]
    return resume, overrides


def run_folder_of(checkpoint: Path) -> Path | None:
    """Return the run folder of a checkpoint at ``RUN/checkpoints/NAME.pt``, else None."""
    from vo_node.train import checkpoint as ckpt

    if checkpoint.parent.name == ckpt.CHECKPOINT_DIR:
        return checkpoint.parent.parent
    return None


def _resolve_output(output: Path | None, config, resume_path: Path | None) -> Path:
    """Return the run folder to write: ``--output``, else the resumed run's folder, else the
    recipe's ``output`` key. Log where a resumed run writes when that is not its own folder."""
    if resume_path is None:
        return output if output else Path(config.output)
    run_folder = run_folder_of(resume_path)
    if output is None and run_folder is not None:
        return run_folder
    if output is None:
        output = Path(config.output)
        logger.info(
            "resuming %s, which is not inside a run folder (RUN/checkpoints/): writing "
            "checkpoints and metrics into %s, the recipe's output; pass --output to choose "
            "another folder", resume_path, output,
        )
    elif run_folder is not None and run_folder.resolve() != output.resolve():
        logger.info(
            "resuming %s into --output %s: new checkpoints and metrics go there, and the "
            "resumed run folder %s stays unchanged", resume_path, output, run_folder,
        )
    return output


def check_run_folder(output: Path, resume_path: Path | None) -> None:
    """Raise ValueError when ``output`` cannot take this run without losing an earlier one.

    Three cases are rejected. ``output`` is a file. A fresh run (no ``resume_path``) targets a
    folder with checkpoints or logged metrics, which it would overwrite or append to. A resume
    from another file targets a folder whose own ``latest.pt`` is at a later step, so the
    checkpoints and metrics after the resumed step would be overwritten.
    """
    from vo_node.train import checkpoint as ckpt

    if output.exists() and not output.is_dir():
        raise ValueError(f"--output {output} is a file; give a folder for the run")
    latest = output / "checkpoints" / ckpt.LATEST_NAME
    if resume_path is None:
        earlier = sorted((output / "checkpoints").glob("*.pt")) + _logged_metrics(output)
        if earlier:
            raise ValueError(
                f"{output} already contains a training run ({earlier[0]}); pass --resume to "
                "continue it, or give another --output for a new run"
            )
        return
    if latest.is_file() and latest.resolve() != Path(resume_path).resolve():
        existing = ckpt.load_checkpoint(latest, mmap=True)["step"]
        resumed = ckpt.load_checkpoint(resume_path, mmap=True)["step"]
        if existing > resumed:
            raise ValueError(
                f"{output} contains a run at step {existing} ({latest}), later than step {resumed} "
                f"of {resume_path}; resuming there would overwrite it. Pass --resume {latest} "
                "to continue that run, or give another --output"
            )


def _logged_metrics(output: Path) -> list[Path]:
    """Return ``[output/metrics.csv]`` when it has rows beyond the header, else ``[]``."""
    metrics = output / "metrics.csv"
    if not metrics.is_file():
        return []
    with open(metrics) as handle:
        rows = sum(1 for line in handle if line.strip())
    return [metrics] if rows > 1 else []


def warn_if_too_large_for_cpu(config) -> bool:
    """Warn when a GPU-sized recipe is about to train on the CPU; return whether it warned.

    GPU-sized means the ``full`` engine or clips of at least 480x640 pixels, as in
    ``config/train_full.yaml``.
    """
    from vo_node.config import resolve_device

    large_clips = config.data.height * config.data.width >= GPU_RECIPE_PIXELS
    if resolve_device(config.device) != "cpu" or not (config.engine == "full" or large_clips):
        return False
    logger.warning(
        "training a GPU-sized recipe (engine %s, %dx%d clips of %d frames) on the CPU: expect "
        "about %d GB of memory and minutes per step; pass --config config/train_small.yaml "
        "for the CPU recipe",
        config.engine, config.data.height, config.data.width, config.data.n_frames,
        FULL_RECIPE_CPU_MEMORY_GB,
    )
    return True


def _validate(paths: list[Path], clips: int) -> int:
    """Print the validation metrics of each checkpoint; return the exit code.

    A checkpoint that cannot be scored is reported and skipped, and the command exits with 2
    after scoring the others. With several checkpoints scored on the same clips, each one after
    the first also gets its mean per-clip loss difference to the first, with its standard error.
    """
    from vo_node.config import ConfigError
    from vo_node.train.checkpoint import resolve_resume_path
    from vo_node.train.trainer import validate_checkpoint_clips

    print(f"held-out synthetic validation on {clips} clips, lower is better: loss (unweighted), "
          "flow_epe (1/4-resolution px), pose translation (scene units) and rotation (rad) "
          "errors of the last iteration")
    print("checkpoint  step  loss  flow_epe  pose_translation  pose_rotation")
    failed = False
    checkpoints = []
    # Resolve every path first, so a missing one is reported before the slow scoring of others.
    for path in paths:
        try:
            # A run folder means its latest checkpoint, as with --resume.
            checkpoints.append((path, resolve_resume_path(path)))
        except FileNotFoundError:
            problem = ("the folder has no checkpoints/latest.pt or latest.pt" if path.is_dir()
                       else f"checkpoint {path} not found")
            logger.error("cannot validate %s: %s; pass an existing checkpoint file (.pt) or a "
                         "training run folder", path, problem)
            failed = True
    scored = []
    for path, checkpoint in checkpoints:
        try:
            result = validate_checkpoint_clips(checkpoint, clips)
        except (ConfigError, FileNotFoundError, ValueError, KeyError) as error:
            logger.error("cannot validate %s: %s", path, error)
            failed = True
            continue
        metrics = result.metrics
        print(f"{checkpoint}  {result.step}  {metrics['loss']:.3f}  "
              f"{metrics['flow_epe']:.3f}  {metrics['pose_translation']:.4f}  "
              f"{metrics['pose_rotation']:.4f}", flush=True)
        scored.append((checkpoint, result))
    _print_paired_differences(scored)
    return EXIT_USAGE if failed else 0


def _print_paired_differences(scored: list) -> None:
    """Print each checkpoint's paired loss difference to the first one scored on its clips."""
    from vo_node.train.trainer import format_standard_error, paired_difference

    if len(scored) < 2:
        return
    reference_path, reference = scored[0]
    print(f"paired loss difference to {reference_path} on the same clips "
          "(mean over clips +- standard error; negative: lower loss than the reference)")
    for path, result in scored[1:]:
        if result.clip_set != reference.clip_set:
            print(f"{path}  not paired: its recipe's validation clips differ from the reference's")
            continue
        mean, error, lower = paired_difference(result.clip_losses, reference.clip_losses)
        print(f"{path}  {mean:+.3f} +- {format_standard_error(error)}  (lower on {lower} of "
              f"{len(result.clip_losses)} clips)")


def main(argv: list[str] | None = None) -> int:
    """Run the trainer command; return the process exit code.

    Ctrl-C (SIGINT) outside the training loop, as during ``--validate``, stops the command with
    a one-line message and exit code 130. Inside the loop, the trainer's own handler saves a
    checkpoint first.
    """
    args = build_parser().parse_args(argv)
    _configure_logging()
    try:
        return _run_command(args)
    except KeyboardInterrupt:
        logger.error("%s", _interrupted_message(args))
        return EXIT_INTERRUPTED


def _interrupted_message(args: argparse.Namespace) -> str:
    """Return the one-line message for a command stopped by KeyboardInterrupt."""
    if args.validate:
        return (f"validation interrupted by SIGINT (Ctrl-C); the lines printed above are "
                f"complete, the other checkpoints were not scored (exit status {EXIT_INTERRUPTED})")
    if args.export is not None:
        return (f"export interrupted by SIGINT (Ctrl-C); run it again, because {args.output} "
                f"may not have been written (exit status {EXIT_INTERRUPTED})")
    # The training loop raises KeyboardInterrupt itself on a second SIGINT or SIGTERM.
    return (f"training interrupted by SIGINT (Ctrl-C) or a second stop signal before a "
            f"checkpoint was saved; continue from the last saved checkpoint with --resume "
            f"(exit status {EXIT_INTERRUPTED})")


def _run_command(args: argparse.Namespace) -> int:
    """Run validation, export or training as ``args`` select; return the exit code."""
    from vo_node.config import ConfigError
    from vo_node.train.trainer import Trainer, TrainingError, export_checkpoint

    if args.validate:
        return _validate(args.validate, args.clips)
    if args.export is not None:
        if args.output is None:
            logger.error("--export needs --output FILE.pt for the model file")
            return EXIT_USAGE
        try:
            export_checkpoint(args.export, args.output, engine_preset=args.engine)
        except (ConfigError, FileNotFoundError, ValueError) as error:
            logger.error("cannot export %s: %s", args.export, error)
            return EXIT_USAGE
        logger.info("exported %s to %s", args.export, args.output)
        return 0
    try:
        config, output, resume_path = _resolve(args)
        check_run_folder(output, resume_path)
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
