"""Training speed-up of the Sigma-weighted, beta-balanced recipe over the unweighted baseline.

For every seed, two runs of ``python -m vo_node.train`` with equal step budgets go into
``OUTPUT/<variant>/seed<k>``:

- ``baseline``: ``loss.flow_weighting=none``, ``balance.enabled=false``;
- ``sigma``: ``loss.flow_weighting=sigma``, ``balance.enabled=true``.

All other settings come from the same recipe. The target of seed ``k`` is the baseline's final
validation value of the chosen metric (default ``pose_translation``, the scale-aligned relative
translation error of the last unrolled iteration). For each variant, the steps (and training
wall time) to reach the target are those of the first validation at or below it. The speed-up is
``baseline steps / sigma steps``, and above 1 means the Sigma recipe got there sooner. Because a
first crossing of a noisy curve can come early by chance, the mean of each validation curve is
reported next to it, and so is the sustained crossing: the first validation from which the curve
stays at or below the target to the end. The same is reported for ``ate`` when the runs logged
ATE on real sequences.

Wall time is the trainer's ``wall_s`` column: training seconds, including the beta rule's extra
backward passes and excluding validation passes. For logs written before ``wall_s`` existed it
is summed from the logged ``steps_per_s`` windows, which then included the validation passes.
A run whose ``model.pt`` exists is skipped; one with only ``checkpoints/latest.pt`` is resumed.
"""

from __future__ import annotations

import logging
import math
import os
import statistics
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

from vo_node.study.plots import Panel, Series, plot_panels, read_table, write_table

logger = logging.getLogger(__name__)

VARIANT_OVERRIDES: dict[str, dict[str, str]] = {
    "baseline": {"loss.flow_weighting": "none", "balance.enabled": "false"},
    "sigma": {"loss.flow_weighting": "sigma", "balance.enabled": "true"},
}
ABLATION_OVERRIDES: dict[str, dict[str, str]] = {
    "sigma_only": {"loss.flow_weighting": "sigma", "balance.enabled": "false"},
    "balance_only": {"loss.flow_weighting": "none", "balance.enabled": "true"},
}
"""The two ablation arms (``--ablations``). The sigma arm changes the weighting and the beta rule
at once. Each ablation arm changes one of them, so the comparison can tell them apart."""
BASELINE, SIGMA = "baseline", "sigma"
SIGMA_ONLY, BALANCE_ONLY = "sigma_only", "balance_only"
DEFAULT_METRIC = "pose_translation"
ATE_METRIC = "ate"
DEFAULT_VALIDATION_POINTS = 10
MODEL_FILE = "model.pt"
REPOSITORY_ROOT = Path(__file__).resolve().parents[2]
"""Working folder of the training subprocesses, so ``-m vo_node.train`` imports this checkout."""
LATEST_CHECKPOINT = Path("checkpoints") / "latest.pt"
VARIANT_COLOURS = {
    BASELINE: "tab:blue", SIGMA: "tab:orange", SIGMA_ONLY: "tab:green", BALANCE_ONLY: "tab:red",
}


@dataclass
class RunSpec:
    """One training run of the comparison."""

    variant: str
    seed: int
    folder: Path
    overrides: dict[str, str]

    def command(self, config: Path, python: str = sys.executable) -> list[str]:
        """Return the ``python -m vo_node.train`` command line (with ``--resume`` if started)."""
        command = [python, "-m", "vo_node.train", "--config", str(Path(config).resolve()),
                   "--output", str(self.folder.resolve())]
        if (self.folder / LATEST_CHECKPOINT).is_file():
            command.append("--resume")
        return command + [f"{key}={value}" for key, value in self.overrides.items()]

    @property
    def complete(self) -> bool:
        """Whether the run finished (the trainer writes ``model.pt`` only at the last step)."""
        return (self.folder / MODEL_FILE).is_file()


def validation_interval(steps: int, points: int) -> int:
    """Return the largest divisor of ``steps`` not above ``steps / points`` (at least 1).

    A divisor makes the last validation fall on the final step, where the target is read.
    """
    if steps < 1 or points < 1:
        raise ValueError(f"steps and validation points must be positive, got {steps}, {points}")
    for interval in range(max(1, steps // points), 0, -1):
        if steps % interval == 0:
            return interval
    return 1


def plan_runs(
    seeds: Sequence[int],
    steps: int,
    output: str | Path,
    validation_points: int = DEFAULT_VALIDATION_POINTS,
    extra_overrides: Mapping[str, str] | None = None,
    ablations: bool = False,
) -> list[RunSpec]:
    """Return the runs of both variants for every seed (baseline first), and with
    ``ablations`` the two ablation arms after them."""
    if not seeds:
        raise ValueError("no seeds given; pass --seeds 0 1 2")
    interval = validation_interval(steps, validation_points)
    common = {
        "optim.steps": str(steps),
        "validation.every": str(interval),
        "checkpoint.every_steps": str(steps),
        "checkpoint.keep_every_steps": "0",
        **dict(extra_overrides or {}),
    }
    variants = {**VARIANT_OVERRIDES, **(ABLATION_OVERRIDES if ablations else {})}
    runs = []
    for seed in seeds:
        for variant, overrides in variants.items():
            folder = Path(output) / variant / f"seed{seed}"
            runs.append(RunSpec(variant, seed, folder, {**common, "seed": str(seed), **overrides}))
    return runs


def execute_runs(runs: Sequence[RunSpec], config: str | Path, threads: int | None = None) -> None:
    """Train every incomplete run in turn; raise RuntimeError naming the first one that fails.

    ``threads`` sets ``OMP_NUM_THREADS`` (torch's CPU thread count) of the training processes.
    """
    env = dict(os.environ)
    if threads is not None:
        env["OMP_NUM_THREADS"] = str(threads)
    for run in runs:
        if run.complete:
            logger.info("skipping %s seed %d: %s exists", run.variant, run.seed,
                        run.folder / MODEL_FILE)
            continue
        command = run.command(Path(config))
        logger.info("training %s seed %d: %s", run.variant, run.seed, " ".join(command))
        run.folder.mkdir(parents=True, exist_ok=True)
        with open(run.folder / "study_train.log", "a") as log:
            result = subprocess.run(
                command, stdout=log, stderr=subprocess.STDOUT, cwd=REPOSITORY_ROOT, env=env,
                check=False,
            )
        if result.returncode != 0:
            raise RuntimeError(
                f"training {run.variant} seed {run.seed} failed with exit code "
                f"{result.returncode}; see {run.folder / 'study_train.log'}, then rerun the "
                "command to resume"
            )


# -------------------------------------------------------------------------------------------
# Curves and the comparison
# -------------------------------------------------------------------------------------------


@dataclass
class Curve:
    """Validation curve of one run: steps, training wall time at those steps, metric values."""

    steps: list[int] = field(default_factory=list)
    times_s: list[float] = field(default_factory=list)
    values: dict[str, list[float]] = field(default_factory=dict)

    def metric(self, name: str) -> list[float]:
        return self.values.get(name, [])


def _float(text: str) -> float:
    return float(text) if text not in ("", None) else math.nan


def read_curve(folder: str | Path) -> Curve:
    """Read ``metrics.csv`` of a run into its validation curve with cumulative wall time.

    The wall time of a validation is its ``wall_s``; without that column it is estimated from
    the ``steps_per_s`` of the train rows up to its step.
    """
    path = Path(folder) / "metrics.csv"
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} not found; train the run first (rerun without --report-only)"
        )
    rows = read_table(path)
    elapsed, previous_step, clock = {}, 0, 0.0
    for row in rows:
        if row["split"] != "train":
            continue
        step, rate = int(row["step"]), _float(row["steps_per_s"])
        if math.isfinite(rate) and rate > 0.0:
            clock += (step - previous_step) / rate
        previous_step = step
        elapsed[step] = clock
    curve = Curve()
    for row in rows:
        if row["split"] != "val":
            continue
        step = int(row["step"])
        curve.steps.append(step)
        curve.times_s.append(_wall_seconds(row, elapsed, step))
        for name, text in row.items():
            if name not in ("step", "split"):
                curve.values.setdefault(name, []).append(_float(text))
    if not curve.steps:
        raise ValueError(f"{path} has no validation rows; set validation.every below optim.steps")
    return curve


def _wall_seconds(row: dict[str, str], estimated: dict[int, float], step: int) -> float:
    """Return the row's logged ``wall_s``, else the ``steps_per_s`` estimate at ``step``."""
    logged = _float(row.get("wall_s", ""))
    if math.isfinite(logged):
        return logged
    known = [s for s in estimated if s <= step]
    return estimated[max(known)] if known else 0.0


def first_reaching(curve: Curve, metric: str, target: float) -> tuple[int, float] | None:
    """Return ``(step, wall time s)`` of the first validation with ``metric <= target``."""
    for step, time_s, value in zip(curve.steps, curve.times_s, curve.metric(metric)):
        if math.isfinite(value) and value <= target:
            return step, time_s
    return None


def first_sustained(curve: Curve, metric: str, target: float) -> int | None:
    """Return the first validation step from which every later value is ``<= target``.

    Unlike :func:`first_reaching`, one low validation followed by higher ones does not count,
    so a noisy curve cannot reach the target early by chance. A non-finite value counts as
    above the target.
    """
    start = None
    for step, value in zip(curve.steps, curve.metric(metric)):
        if math.isfinite(value) and value <= target:
            start = step if start is None else start
        else:
            start = None
    return start


def final_value(curve: Curve, metric: str) -> float:
    """Return the metric at the last validation (``nan`` when it was not logged)."""
    values = curve.metric(metric)
    return values[-1] if values else math.nan


def compare_seed(baseline: Curve, sigma: Curve, metric: str) -> dict[str, object]:
    """Return one table row: the target, steps and time of both variants and their ratios."""
    target = final_value(baseline, metric)
    row: dict[str, object] = {
        "metric": metric, "target": target, "baseline_final": target,
        "sigma_final": final_value(sigma, metric),
    }
    reached = {}
    for name, curve in ((BASELINE, baseline), (SIGMA, sigma)):
        hit = first_reaching(curve, metric, target) if math.isfinite(target) else None
        reached[name] = hit
        row[f"{name}_steps"] = hit[0] if hit else math.nan
        row[f"{name}_time_s"] = hit[1] if hit else math.nan
    sustained = {}
    for name, curve in ((BASELINE, baseline), (SIGMA, sigma)):
        step = first_sustained(curve, metric, target) if math.isfinite(target) else None
        sustained[name] = step
        row[f"{name}_steps_sustained"] = step if step is not None else math.nan
    if sustained[BASELINE] is not None and sustained[SIGMA] is not None:
        row["step_ratio_sustained"] = sustained[BASELINE] / sustained[SIGMA]
    else:
        row["step_ratio_sustained"] = math.nan
    row["baseline_mean"] = _finite_mean(baseline.metric(metric))
    row["sigma_mean"] = _finite_mean(sigma.metric(metric))
    row["sigma_reached"] = reached[SIGMA] is not None
    if reached[BASELINE] and reached[SIGMA]:
        row["step_ratio"] = reached[BASELINE][0] / reached[SIGMA][0]
        row["time_ratio"] = reached[BASELINE][1] / max(reached[SIGMA][1], 1e-9)
        row["step_ratio_bound"] = row["step_ratio"]
    else:
        row["step_ratio"] = row["time_ratio"] = math.nan
        # Sigma would need more than its last validated step, so the ratio is below this bound.
        last = sigma.steps[-1] if sigma.steps else math.nan
        row["step_ratio_bound"] = row["baseline_steps"] / last if reached[BASELINE] else math.nan
    return row


def _finite_mean(values: Sequence[float]) -> float:
    """Mean of the finite values (``nan`` when there are none)."""
    finite = [value for value in values if math.isfinite(value)]
    return statistics.fmean(finite) if finite else math.nan


def summarise(rows: Sequence[Mapping[str, object]]) -> list[dict[str, object]]:
    """Return per metric the mean and sample spread of the step and time ratios over seeds.

    Means, spreads and minima cover only the seeds where the Sigma run reached the target.
    ``step_ratio_median_bounded`` covers every seed, taking for a seed that missed the target
    the upper bound ``baseline steps / last validated step`` (which favours the baseline).
    ``sigma_sustained`` counts the seeds whose Sigma curve stays at or below the target through
    its last validation, and ``step_ratio_sustained_mean`` averages their ratios of
    :func:`first_sustained` steps.
    """
    summary = []
    groups = dict.fromkeys((str(row["metric"]), str(row.get("arm", SIGMA))) for row in rows)
    for metric, arm in groups:
        selected = [row for row in rows
                    if row["metric"] == metric and str(row.get("arm", SIGMA)) == arm]
        reached = [row for row in selected if row["sigma_reached"]]
        entry: dict[str, object] = {"metric": metric, "arm": arm, "seeds": len(selected),
                                    "sigma_reached": len(reached)}
        bounds = [float(row["step_ratio_bound"]) for row in selected]
        bounds = [value for value in bounds if math.isfinite(value)]
        entry["step_ratio_median_bounded"] = statistics.median(bounds) if bounds else math.nan
        sustained = [float(row["step_ratio_sustained"]) for row in selected]
        sustained = [value for value in sustained if math.isfinite(value)]
        entry["sigma_sustained"] = len(sustained)
        entry["step_ratio_sustained_mean"] = statistics.fmean(sustained) if sustained else math.nan
        for ratio in ("step_ratio", "time_ratio"):
            values = [float(row[ratio]) for row in reached]
            entry[f"{ratio}_mean"] = statistics.fmean(values) if values else math.nan
            entry[f"{ratio}_std"] = statistics.stdev(values) if len(values) > 1 else math.nan
            entry[f"{ratio}_min"] = min(values) if values else math.nan
        summary.append(entry)
    return summary


def plot_curves(curves: Mapping[tuple[str, int], Curve], metric: str, path: Path) -> Path:
    """Plot the validation metric over steps and over wall time for every run.

    Each run is a thin line without a legend entry. Each variant's mean over its seeds is a
    thick line with one, so the legend stays readable with many seeds.
    """
    by_step, by_time = [], []
    for (variant, seed), curve in sorted(curves.items()):
        style = {"color": VARIANT_COLOURS.get(variant), "linewidth": 0.7, "alpha": 0.35,
                 "marker": ""}
        # matplotlib leaves labels that start with an underscore out of the legend.
        label = f"_{variant} seed {seed}"
        by_step.append(Series(curve.steps, curve.metric(metric), label, style))
        by_time.append(Series(curve.times_s, curve.metric(metric), label, style))
    for variant in (BASELINE, SIGMA, SIGMA_ONLY, BALANCE_ONLY):
        runs = [curve for (name, _), curve in sorted(curves.items()) if name == variant]
        mean = mean_curve(runs, metric)
        if mean is None:
            continue
        label = f"{variant}, mean of {len(runs)} seeds" if len(runs) > 1 else variant
        style = {"color": VARIANT_COLOURS.get(variant), "linewidth": 2.0}
        by_step.append(Series(mean.steps, mean.metric(metric), label, style))
        by_time.append(Series(mean.times_s, mean.metric(metric), label, style))
    panels = [
        Panel(by_step, f"validation {metric}", "training step", metric),
        Panel(by_time, f"validation {metric}", "training wall time (s)", metric),
    ]
    return plot_panels(panels, path, "baseline (none, no balance) vs sigma (+ balance)")


def mean_curve(runs: Sequence[Curve], metric: str) -> Curve | None:
    """Return the mean of ``runs`` at the steps where every run has a finite ``metric`` value,
    with the mean wall time at those steps; None when no step is shared."""
    shared = None
    for run in runs:
        steps = {step for step, value in zip(run.steps, run.metric(metric)) if math.isfinite(value)}
        shared = steps if shared is None else shared & steps
    if not shared:
        return None
    steps = sorted(shared)
    values, times = [], []
    for step in steps:
        positions = [run.steps.index(step) for run in runs]
        values.append(statistics.fmean(run.metric(metric)[i] for run, i in zip(runs, positions)))
        times.append(statistics.fmean(run.times_s[i] for run, i in zip(runs, positions)))
    return Curve(steps, times, {metric: values})


def plot_curves_per_seed(
    curves: Mapping[tuple[str, int], Curve], metric: str, path: Path
) -> Path:
    """Plot the validation metric over steps, one panel per seed with both variants in it.

    A dashed line marks the seed's target (the baseline's final value), so the step at which
    each curve first reaches it can be read off the panel.
    """
    seeds = sorted({seed for _, seed in curves})
    panels = []
    for seed in seeds:
        series = []
        for variant in (BASELINE, SIGMA, SIGMA_ONLY, BALANCE_ONLY):
            curve = curves.get((variant, seed))
            if curve is None:
                continue
            style = {"color": VARIANT_COLOURS.get(variant)}
            series.append(Series(curve.steps, curve.metric(metric), variant, style))
        baseline = curves.get((BASELINE, seed))
        target = final_value(baseline, metric) if baseline is not None else math.nan
        if baseline is not None and baseline.steps and math.isfinite(target):
            ends = [baseline.steps[0], baseline.steps[-1]]
            series.append(Series(ends, [target, target], "target",
                                 {"color": "grey", "linestyle": "--", "marker": ""}))
        panels.append(Panel(series, f"seed {seed}", "training step", metric))
    return plot_panels(panels, path, f"validation {metric} per seed")


SEED_COLUMNS = (
    "seed", "arm", "metric", "target", "baseline_final", "sigma_final", "baseline_steps", "sigma_steps",
    "step_ratio", "baseline_time_s", "sigma_time_s", "time_ratio", "sigma_reached",
    "step_ratio_bound", "baseline_steps_sustained", "sigma_steps_sustained",
    "step_ratio_sustained", "baseline_mean", "sigma_mean",
)


def run_speedup_study(
    config: str | Path,
    seeds: Sequence[int],
    steps: int,
    output: str | Path,
    metric: str = DEFAULT_METRIC,
    validation_points: int = DEFAULT_VALIDATION_POINTS,
    extra_overrides: Mapping[str, str] | None = None,
    train: bool = True,
    threads: int | None = None,
    ablations: bool = False,
) -> tuple[list[dict[str, object]], list[dict[str, object]]]:
    """Train (unless ``train`` is False) and compare; write tables and PNGs into ``output``.

    Every arm is compared with the baseline: the sigma arm, and with ``ablations`` the
    ``sigma_only`` and ``balance_only`` arms too. A row's ``arm`` column names it, and its
    ``sigma_*`` columns describe that arm. Returns ``(per-seed rows, summary rows)``. Writes ``speedup.csv/.md`` (per seed) and
    ``speedup_summary.csv/.md``, named ``speedup_<metric>...`` for a metric other than
    ``pose_translation`` (see :func:`table_stem`). Draws ``validation_<metric>.png`` (all runs in
    one panel) and ``validation_<metric>_per_seed.png`` (one panel per seed), and the same for
    ``ate`` when the runs logged it.
    """
    output = Path(output)
    runs = plan_runs(seeds, steps, output, validation_points, extra_overrides, ablations)
    if train:
        execute_runs(runs, config, threads)
    curves = {(run.variant, run.seed): read_curve(run.folder) for run in runs}

    metrics = [metric]
    if metric != ATE_METRIC and any(
        any(math.isfinite(v) for v in curve.metric(ATE_METRIC)) for curve in curves.values()
    ):
        metrics.append(ATE_METRIC)
    arms = [SIGMA, *(ABLATION_OVERRIDES if ablations else {})]
    rows = []
    for name in metrics:
        for arm in arms:
            for seed in seeds:
                row = compare_seed(curves[(BASELINE, seed)], curves[(arm, seed)], name)
                rows.append({"seed": seed, "arm": arm, **row})
        plot_curves(curves, name, output / f"validation_{name}.png")
        plot_curves_per_seed(curves, name, output / f"validation_{name}_per_seed.png")
    summary = summarise(rows)
    stem = table_stem(metric)
    write_table(rows, output / stem, SEED_COLUMNS)
    write_table(summary, output / f"{stem}_summary")
    return rows, summary


def table_stem(metric: str) -> str:
    """Return the file stem of the tables compared on ``metric``.

    The default metric writes ``speedup``; any other writes ``speedup_<metric>``, so a
    ``--report-only`` pass on a second metric keeps the first metric's tables.
    """
    return "speedup" if metric == DEFAULT_METRIC else f"speedup_{metric}"
