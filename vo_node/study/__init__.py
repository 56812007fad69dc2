"""Gradient-variance study of the Sigma-weighted flow loss (see docs/variance.md).

Command line::

    python -m vo_node.study snr --checkpoints A.pt B.pt ... --clips N --config CFG --output DIR
    python -m vo_node.study sources --checkpoint X.pt --clips N --output DIR
    python -m vo_node.study speedup --config CFG --seeds 0 1 2 --steps S --output DIR

``snr`` measures the flow-loss gradient SNR per checkpoint, ``sources`` the three sources of
gradient variance on one checkpoint, and ``speedup`` trains both recipes and compares how many
steps each needs to reach the baseline's final validation error.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

logger = logging.getLogger(__name__)

EXIT_USAGE = 2
EXIT_FAILURE = 1


def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--output", type=Path, required=True, help="folder for tables and PNGs")
    parser.add_argument(
        "--threads", type=int,
        help="torch CPU threads of this process (default: torch's choice); 1 avoids thread "
        "contention on cores shared with other jobs",
    )
    parser.add_argument(
        "--set", dest="overrides", nargs="*", default=[], metavar="key=value",
        help="training-recipe overrides (dotted keys, e.g. unroll.iterations=8)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m vo_node.study",
        description="Measure gradient variance of the Sigma-weighted and plain flow losses.",
    )
    commands = parser.add_subparsers(dest="command", required=True)

    snr = commands.add_parser("snr", help="flow-loss gradient SNR per checkpoint and variant")
    snr.add_argument("--checkpoints", type=Path, nargs="+", required=True,
                     help="training checkpoints (or model files) to measure, any order")
    snr.add_argument("--clips", type=int, default=32, help="number of fixed clips (default 32)")
    snr.add_argument("--config", type=Path,
                     help="training recipe for clips, unroll and BA (default: the first "
                     "checkpoint's stored recipe)")
    snr.add_argument("--parameters", nargs="+",
                     help="parameters to measure: delta_head, weight_head, or any name (suffix) "
                     "from network.named_parameters() (default: both heads)")
    snr.add_argument("--device", default="cpu", help="cpu, cuda or auto (default cpu)")
    _add_common(snr)

    sources = commands.add_parser("sources", help="the three sources of gradient variance")
    sources.add_argument("--checkpoint", type=Path, required=True,
                         help="training checkpoint (or model file) to measure")
    sources.add_argument("--clips", type=int, default=16, help="number of fixed clips (default 16)")
    sources.add_argument("--config", type=Path, help="training recipe (default: the checkpoint's)")
    sources.add_argument("--ba-iterations", type=int, nargs="+", default=[1, 2, 4],
                         help="BA Gauss-Newton iteration counts of the grid (default 1 2 4)")
    sources.add_argument("--pose-damping", type=float, nargs="+", default=[1.0, 10.0, 100.0],
                         help="BA pose damping values of the grid (default 1 10 100)")
    sources.add_argument("--noise-levels", type=float, nargs="+",
                         default=[0.0, 0.25, 0.5, 1.0, 2.0],
                         help="std of the Gaussian noise added to the BA targets, in 1/4-res "
                         "pixels (default 0 0.25 0.5 1 2)")
    sources.add_argument("--noise-trials", type=int, default=1,
                         help="independent noise draws per clip and noise level (default 1)")
    sources.add_argument("--beta", type=float, default=1.0,
                         help="flow-loss factor beta of the pose + flow objective in the "
                         "interference study (default 1; the trainer logs its current beta)")
    sources.add_argument("--device", default="cpu", help="cpu, cuda or auto (default cpu)")
    _add_common(sources)

    speedup = commands.add_parser("speedup", help="train both recipes and compare step counts")
    speedup.add_argument("--config", type=Path, required=True, help="training recipe YAML")
    speedup.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2],
                         help="training seeds; both variants train once per seed "
                         "(default 0 1 2)")
    speedup.add_argument("--steps", type=int, required=True, help="step budget of every run")
    speedup.add_argument("--metric", default="pose_translation",
                         help="validation column compared (default pose_translation)")
    speedup.add_argument("--validation-points", type=int, default=10,
                         help="about how many validations each run logs (default 10)")
    speedup.add_argument("--report-only", action="store_true",
                         help="read existing runs without training any")
    speedup.add_argument("--ablations", action="store_true",
                         help="also train and compare the sigma_only (Sigma weighting, no beta "
                         "rule) and balance_only (beta rule, no weighting) arms")
    _add_common(speedup)
    return parser


def _overrides(texts: list[str]) -> dict:
    from vo_node.config import parse_override

    return dict(parse_override(text) for text in texts)


def _recipe(config_path: Path | None, stored, overrides: dict):
    """Return the training recipe from ``config_path``, else the checkpoint's stored one."""
    from vo_node.config import apply_overrides
    from vo_node.train.config import load_train_config

    if config_path is not None:
        return load_train_config(config_path, overrides)
    if stored is None:
        raise ValueError("the checkpoint stores no training recipe; pass --config CFG")
    return apply_overrides(stored, overrides).validate() if overrides else stored.validate()


def _run_snr(args: argparse.Namespace) -> int:
    from vo_node.config import resolve_device
    from vo_node.study.snr import load_network, run_snr_study

    stored = None if args.config else load_network(args.checkpoints[0]).train_config
    config = _recipe(args.config, stored, _overrides(args.overrides))
    rows = run_snr_study(args.checkpoints, config, args.clips, args.output, args.parameters,
                         device=resolve_device(args.device))
    logger.info("snr: %d rows written to %s", len(rows), args.output)
    return 0


def _run_sources(args: argparse.Namespace) -> int:
    from vo_node.config import resolve_device
    from vo_node.study.snr import load_network, study_clips
    from vo_node.study.sources import run_sources_study

    loaded = load_network(args.checkpoint)
    config = _recipe(args.config, loaded.train_config, _overrides(args.overrides))
    network = loaded.network.to(resolve_device(args.device))
    run_sources_study(
        network, config, study_clips(config, args.clips), args.output,
        selection=loaded.engine.frontend.centroid_selection,
        ba_iterations=args.ba_iterations, pose_dampings=args.pose_damping,
        noise_levels=args.noise_levels, beta=args.beta, noise_trials=args.noise_trials,
    )
    logger.info("sources: tables and figures written to %s", args.output)
    return 0


def _run_speedup(args: argparse.Namespace) -> int:
    from vo_node.study.speedup import run_speedup_study

    extra = {text.split("=", 1)[0]: text.split("=", 1)[1] for text in args.overrides}
    _overrides(args.overrides)  # reject malformed overrides before any training starts
    rows, summary = run_speedup_study(
        args.config, args.seeds, args.steps, args.output, args.metric, args.validation_points,
        extra, train=not args.report_only, threads=args.threads, ablations=args.ablations,
    )
    for entry in summary:
        logger.info(
            "%s: %s reached the baseline's final value in %d of %d seeds; step ratio %.3g "
            "(std %.3g)", entry["metric"], entry["arm"], entry["sigma_reached"], entry["seeds"],
            entry["step_ratio_mean"], entry["step_ratio_std"],
        )
    return 0


def main(argv: list[str] | None = None) -> int:
    """Run one study command; return the process exit code."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    from vo_node.config import ConfigError

    handlers = {"snr": _run_snr, "sources": _run_sources, "speedup": _run_speedup}
    if args.threads is not None:
        import torch

        if args.threads < 1:
            logger.error("--threads must be 1 or more, got %d", args.threads)
            return EXIT_USAGE
        torch.set_num_threads(args.threads)
    try:
        return handlers[args.command](args)
    except (ConfigError, FileNotFoundError, ValueError) as error:
        logger.error("%s", error)
        return EXIT_USAGE
    except RuntimeError as error:
        logger.error("%s", error)
        return EXIT_FAILURE
