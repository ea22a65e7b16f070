"""Small matplotlib helpers for the claim figures: line plots with confidence bands and bar charts, saved as PNG.

No pyplot state is used (figures are ``matplotlib.figure.Figure`` with an Agg canvas), so the helpers work the
same in scripts, tests and notebooks; every PNG is written atomically (``easytune_lab.io.atomic_path``).
Confidence intervals over seeds are Student-t intervals of the mean: ``mean +- t_{(1+level)/2, n-1} * s / sqrt(n)``.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..errors import UserError
from ..io import atomic_path, write_csv
from ..runs import MANIFEST, describe_run, resolve_run, training_series


@dataclass
class Series:
    """One line: ``y`` over ``x`` with an optional band ``[lo, hi]`` (e.g. a 95% CI), or seeds to summarise."""

    label: str
    x: Sequence[float]
    y: Sequence[float]
    lo: Sequence[float] | None = None
    hi: Sequence[float] | None = None

    @classmethod
    def from_samples(cls, label: str, x: Sequence[float], samples: Any, level: float = 0.95) -> "Series":
        """Mean over the first axis of ``samples`` (seeds, len(x)) with its Student-t confidence band."""
        mean, lo, hi = mean_ci(samples, level=level)
        return cls(label, list(x), mean.tolist(), lo.tolist(), hi.tolist())


def mean_ci(samples: Any, level: float = 0.95, axis: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean and Student-t confidence interval of the mean along ``axis`` (a single sample gives a zero-width band)."""
    from scipy import stats

    arr = np.asarray(samples, dtype=np.float64)
    if not 0 < level < 1:
        raise UserError(f"level: must be in (0, 1) (got {level})")
    n = arr.shape[axis]
    mean = arr.mean(axis=axis)
    if n < 2:
        return mean, mean.copy(), mean.copy()
    half = stats.t.ppf((1 + level) / 2, n - 1) * arr.std(axis=axis, ddof=1) / np.sqrt(n)
    return mean, mean - half, mean + half


def new_figure(size: tuple[float, float]):
    """A matplotlib Figure with an Agg canvas and constrained layout, outside pyplot (no global state). It shows
    itself as a PNG when it is a notebook cell's value (``_repr_png_``), instead of ``<Figure size ...>``."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    class ReportFigure(Figure):
        def _repr_png_(self) -> bytes:
            buf = io.BytesIO()
            self.savefig(buf, format="png", dpi=100)
            return buf.getvalue()

    fig = ReportFigure(figsize=size, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def save_png(fig: Any, out_path: str | Path, dpi: int = 120) -> Path:
    """Save a matplotlib figure as PNG atomically; returns the path."""
    out_path = Path(out_path)
    if out_path.suffix.lower() != ".png":
        raise UserError(f"{out_path}: must end in .png")
    with atomic_path(out_path) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi)
    return out_path


def run_label(profile: str, seed: int | str, notebook: str = "") -> str:
    """How every figure and table names where it comes from: ``"03_memory · profile quick · seed 0"``."""
    return " · ".join(p for p in (notebook, f"profile {profile}", f"seed {seed}") if p)


def show_figure(fig: Any, out_path: str | Path, label: str, dpi: int = 120) -> None:
    """Name the figure's profile and seed (``label``, see :func:`run_label`) above it, save it as PNG
    (:func:`save_png`) and display that PNG inline when running in IPython/Jupyter, so an executed notebook shows
    every figure it writes."""
    old = fig._suptitle.get_text() if getattr(fig, "_suptitle", None) is not None else ""
    fig.suptitle(f"{old}\n{label}" if old and label not in old else (old or label), fontsize=8, color="0.35")
    display_png(save_png(fig, out_path, dpi=dpi))


def display_png(path: str | Path) -> None:
    """Display a PNG file inline (an ``image/png`` output) when IPython is running; otherwise do nothing."""
    try:
        from IPython import get_ipython
        from IPython.display import Image, display
    except ImportError:
        return
    if get_ipython() is not None:
        display(Image(filename=str(path)))


def write_table(table: Any, out_path: str | Path, profile: str, seed: int, index: bool = False,
                allow_nonfinite: bool = False) -> Path:
    """Write a pandas table as CSV (atomically, :func:`easytune_lab.io.write_csv`) with ``profile`` and ``seed``
    columns in front, so the file names where its numbers come from; the table passed in is not changed. A NaN or
    Inf number is refused (:class:`~easytune_lab.errors.NonFiniteError`, nothing written) unless
    ``allow_nonfinite``: a table whose empty cells mean "not applicable" (e.g. the base model's reward gain) says
    so. Returns the path."""
    out_path = Path(out_path)
    named = table.copy()
    for pos, (col, value) in enumerate((("profile", profile), ("seed", seed))):
        if col in named.columns:
            named = named.drop(columns=col)
        named.insert(pos, col, value)
    write_csv(out_path, named, allow_nonfinite=allow_nonfinite, index=index)
    return out_path


def line_plot(
    series: Sequence[Series],
    out_path: str | Path | None = None,
    title: str = "",
    xlabel: str = "",
    ylabel: str = "",
    logx: bool = False,
    logy: bool = False,
    size: tuple[float, float] = (5.0, 3.5),
):
    """Lines with shaded bands (where ``lo``/``hi`` are given); saved to ``out_path`` if given. Returns the Figure."""
    if not series:
        raise UserError("series: nothing to plot")
    fig = new_figure(size)
    ax = fig.add_subplot()
    for s in series:
        x, y = np.asarray(s.x, dtype=float), np.asarray(s.y, dtype=float)
        if x.shape != y.shape:
            raise UserError(f"series '{s.label}': x has {x.size} points, y has {y.size}")
        (line,) = ax.plot(x, y, marker="o", ms=3, label=s.label)
        if s.lo is not None and s.hi is not None:
            ax.fill_between(x, np.asarray(s.lo, float), np.asarray(s.hi, float), color=line.get_color(), alpha=0.2,
                            linewidth=0)
    ax.set(title=title, xlabel=xlabel, ylabel=ylabel)
    if logx:
        ax.set_xscale("log")
    if logy:
        ax.set_yscale("log")
    ax.grid(alpha=0.3)
    if any(s.label for s in series):
        ax.legend(fontsize=8)
    if out_path is not None:
        save_png(fig, out_path)
    return fig


def bar_chart(
    labels: Sequence[str],
    values: Sequence[float],
    out_path: str | Path | None = None,
    errors: Any = None,
    title: str = "",
    ylabel: str = "",
    highlight: Sequence[str] = (),
    size: tuple[float, float] = (5.0, 3.5),
    annotate: bool = True,
):
    """Bars with optional error bars (``errors``: symmetric (n,) or (2, n) lower/upper distances).

    Bars named in ``highlight`` are drawn in a second colour (e.g. the paper's method). Returns the Figure.
    """
    values = np.asarray(values, dtype=float)
    if len(labels) != len(values) or len(values) == 0:
        raise UserError(f"bar_chart: {len(labels)} labels for {len(values)} values")
    fig = new_figure(size)
    ax = fig.add_subplot()
    colours = ["#d62728" if label in highlight else "#1f77b4" for label in labels]
    bars = ax.bar(range(len(values)), values, color=colours, yerr=errors, capsize=3 if errors is not None else 0)
    ax.set_xticks(range(len(values)), labels, rotation=30 if max(len(x) for x in labels) > 8 else 0, ha="right"
                  if max(len(x) for x in labels) > 8 else "center")
    ax.set(title=title, ylabel=ylabel)
    ax.grid(axis="y", alpha=0.3)
    if annotate:
        ax.bar_label(bars, fmt="%.3g", fontsize=7)
    if out_path is not None:
        save_png(fig, out_path)
    return fig


def waterfall(rows: Sequence[dict], out_path: str | Path | None = None, title: str = "",
              ylabel: str = "gap A − B", size: tuple[float, float] = (7.0, 3.6)):
    """A waterfall of stages (rows of :func:`easytune_lab.analysis.forensics.waterfall_steps`): the first stage's
    gap as a bar from 0, then each factor's change as a floating bar from the previous gap to the new one (green up,
    red down), with the 95 % interval of each stage's gap as an error bar at its end; a dashed line at 0. Bars whose
    change interval contains 0 are hatched ("no difference measured"). Returns the Figure."""
    if not rows:
        raise UserError("waterfall: no stages")
    fig = new_figure(size)
    ax = fig.add_subplot()
    previous = 0.0
    for i, row in enumerate(rows):
        gap = row["gap"]["mean"]
        bottom, height = min(previous, gap), abs(gap - previous)
        colour = "#7f7f7f" if i == 0 else ("#2ca02c" if gap >= previous else "#d62728")
        unclear = i > 0 and row.get("change_verdict") == "no difference measured"
        ax.bar(i, height if height > 0 else 1e-9, bottom=bottom, color=colour, alpha=0.5 if unclear else 0.9,
               hatch="//" if unclear else None, edgecolor="k", linewidth=0.5)
        if row["gap"].get("ci95") is not None:
            ax.errorbar(i, gap, yerr=row["gap"]["ci95"], color="k", capsize=3, lw=1)
        ax.annotate(f"{gap:+.3g}", (i, gap), textcoords="offset points", xytext=(0, 6), ha="center", fontsize=7)
        previous = gap
    ax.axhline(0, color="k", lw=0.8, ls="--")
    labels = [row["stage"] for row in rows]
    ax.set_xticks(range(len(rows)), labels, rotation=30, ha="right", fontsize=7)
    ax.set(title=title, ylabel=ylabel)
    ax.grid(axis="y", alpha=0.3)
    if out_path is not None:
        save_png(fig, out_path)
    return fig


def training_curves(run: str | Path, out_path: str | Path | None = None, columns: int = 3):
    """Every curve a run logged (loss, reward, lr, gradient norm, ... per step, iteration or epoch; see
    :func:`easytune_lab.runs.training_series`) in one figure, one panel each, titled with the run's name or folder,
    stage, profile and seed. ``run``: a run directory or a name (``easytune runs``). Saved as PNG when ``out_path``
    is given; shown inline as a notebook cell's value. Returns the Figure."""
    run_dir = resolve_run(run)
    metrics_path = Path(run_dir) / "metrics.json"
    try:
        metrics = json.loads(metrics_path.read_text())
    except (OSError, ValueError) as exc:
        raise UserError(f"{run}: no readable metrics.json ({exc})") from None
    series = training_series(metrics)
    if not series:
        raise UserError(f"{metrics_path}: no logged curves")
    row = describe_run(run_dir) if (Path(run_dir) / MANIFEST).is_file() else {}
    cols = min(columns, len(series))
    rows = -(-len(series) // cols)
    fig = new_figure((3.6 * cols, 2.6 * rows))
    axes = np.atleast_1d(fig.subplots(rows, cols, squeeze=False)).ravel()
    for ax, (name, (xlabel, xs, ys)) in zip(axes, series.items()):
        ax.plot(xs, ys, marker="o" if len(xs) < 30 else None, ms=3)
        ax.set(title=name, xlabel=xlabel)
        if name.endswith("/lr") and min(ys) > 0:
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
    for ax in axes[len(series):]:
        ax.set_visible(False)
    what = " ".join(str(row.get(k, "")) for k in ("stage", "what") if row.get(k))
    label = run_label(row.get("profile") or "?", row.get("seed") or "?", row.get("name") or Path(run_dir).name)
    fig.suptitle(f"{label} · {what}" if what else label, fontsize=9)
    if out_path is not None:
        save_png(fig, out_path)
    return fig
