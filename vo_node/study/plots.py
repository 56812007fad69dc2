"""Output writers of the gradient-variance study: tables (CSV + markdown) and PNG line plots.

Every file is written atomically (temporary file in the same folder, then rename), so an
interrupted study never leaves a half-written table or image behind. Figures use matplotlib's
Agg backend and need no display.
"""

from __future__ import annotations

import csv
import io
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)

from vo_node.io.atomic import atomic_write  # noqa: E402

logger = logging.getLogger(__name__)

DPI = 120
PANEL_SIZE_INCHES = (5.5, 4.0)
SIGNIFICANT_DIGITS = 4


def format_value(value: Any) -> str:
    """Format one table cell: floats with 4 significant digits, everything else with ``str``."""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        return f"{value:.{SIGNIFICANT_DIGITS}g}"
    return str(value)


def _columns(rows: Sequence[Mapping[str, Any]], columns: Sequence[str] | None) -> list[str]:
    if columns is not None:
        return list(columns)
    names: list[str] = []
    for row in rows:
        names.extend(name for name in row if name not in names)
    return names


def markdown_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str] | None = None) -> str:
    """Return ``rows`` as a GitHub markdown table (missing cells are left empty)."""
    names = _columns(rows, columns)
    lines = ["| " + " | ".join(names) + " |", "|" + "|".join("---" for _ in names) + "|"]
    for row in rows:
        cells = [format_value(row[name]) if name in row else "" for name in names]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_table(
    rows: Sequence[Mapping[str, Any]], stem: str | Path, columns: Sequence[str] | None = None
) -> tuple[Path, Path]:
    """Write ``rows`` to ``<stem>.csv`` (full precision) and ``<stem>.md``; return both paths."""
    stem = Path(stem)
    names = _columns(rows, columns)
    csv_path = stem.with_suffix(".csv")
    markdown_path = stem.with_suffix(".md")
    with atomic_write(csv_path) as handle:
        writer = csv.DictWriter(handle, fieldnames=names, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    with atomic_write(markdown_path) as handle:
        handle.write(markdown_table(rows, names))
    logger.info("table written: %s (%d rows)", csv_path, len(rows))
    return csv_path, markdown_path


def read_table(path: str | Path) -> list[dict[str, str]]:
    """Read a CSV table written by :func:`write_table` (cells stay strings)."""
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


@dataclass
class Series:
    """One line of a panel: x and y values, a legend label and optional matplotlib style."""

    x: Sequence[float]
    y: Sequence[float]
    label: str
    style: dict[str, Any] = field(default_factory=dict)


@dataclass
class Panel:
    """One subplot: its lines, axis labels and scales (``linear`` or ``log``)."""

    series: list[Series]
    title: str = ""
    xlabel: str = ""
    ylabel: str = ""
    xscale: str = "linear"
    yscale: str = "linear"


def save_figure(figure: plt.Figure, path: str | Path) -> Path:
    """Render ``figure`` to PNG bytes, write them atomically to ``path`` and close the figure."""
    path = Path(path)
    buffer = io.BytesIO()
    try:
        figure.savefig(buffer, format="png", dpi=DPI)
    finally:
        plt.close(figure)
    with atomic_write(path, "wb") as handle:
        handle.write(buffer.getvalue())
    logger.info("figure written: %s", path)
    return path


def plot_panels(panels: Sequence[Panel], path: str | Path, title: str = "") -> Path:
    """Draw ``panels`` side by side as line plots with markers and write the PNG to ``path``."""
    if not panels:
        raise ValueError(f"no panels to plot into {path}; pass at least one Panel")
    width, height = PANEL_SIZE_INCHES
    size = (width * len(panels), height)
    figure, axes = plt.subplots(1, len(panels), figsize=size, squeeze=False)
    for axis, panel in zip(axes[0], panels):
        for line in panel.series:
            style = {"marker": "o", "markersize": 3, **line.style}
            axis.plot(list(line.x), list(line.y), label=line.label, **style)
        axis.set_title(panel.title)
        axis.set_xlabel(panel.xlabel)
        axis.set_ylabel(panel.ylabel)
        axis.set_xscale(panel.xscale)
        axis.set_yscale(panel.yscale)
        axis.grid(True, alpha=0.3)
        if any(line.label for line in panel.series):
            axis.legend(fontsize="small")
    if title:
        figure.suptitle(title)
    figure.tight_layout()
    return save_figure(figure, path)
