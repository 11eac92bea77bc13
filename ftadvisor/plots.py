"""Pictures for the command line, written as PNG or SVG files with matplotlib (an optional extra).

    ftadvisor estimate -m llama-3.1-8b -g rtx4090 -t lora,qlora --plot memory.svg
    ftadvisor calibrate report --hardware cpu --plot calibration.png
    ftadvisor data-stats examples/data/chat.jsonl -m ./my-model --plot lengths.png

    pip install 'ftadvisor[plot]'     # matplotlib

Each drawing function takes plain data (estimates, points, lengths), so the faces stay thin and
the figures are testable without a terminal. matplotlib is imported inside the functions with the
non-interactive Agg backend, so importing this module loads nothing; without matplotlib a
command with ``--plot`` stops with one line that names the extra to install. The format comes
from the file's suffix, and the file is written atomically (a temporary file in the same folder,
then renamed), so a failed or interrupted draw never leaves half a picture behind.
"""

from __future__ import annotations

import math
import os
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ftadvisor.errors import FtAdvisorError, shown

GIB = 2**30
PLOT_SUFFIXES = (".png", ".svg")
"""The file types ``--plot`` writes, chosen by the file name's suffix."""

NEEDS_MATPLOTLIB = "needs matplotlib: pip install 'ftadvisor[plot]'"

# Short legend names for the memory components (schema.MEMORY_COMPONENTS) and the parts above the
# allocator's peak that nvidia-smi also shows (schema.MemoryBreakdown's field docstrings).
PART_LABELS = {
    "weights": "weights",
    "gradients": "gradients",
    "optimizer_state": "optimizer state",
    "master_weights": "master weights",
    "activations": "activations",
    "logits": "logits + loss",
    "extra_models": "extra models (ref/reward/value)",
    "generation_cache": "generation KV cache",
    "quantization_workspace": "dequant workspace",
    "communication": "communication buffers",
    "framework_overhead": "framework overhead",
    "allocator_slack": "allocator slack (reserved - allocated)",
    "runtime_overhead": "CUDA context + workspaces",
    "paged_resident": "paged optimizer state (resident)",
}

MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*", "h", "<", ">", "p")
"""One marker per technique (cycled with the colours of matplotlib's tab10/tab20 palettes)."""

LOG_SPAN = 10.0
"""Axes turn logarithmic when the values of a panel span more than this factor."""


# --------------------------------------------------------------------------------------------
# The output file
# --------------------------------------------------------------------------------------------


def check_plot_path(path: str | os.PathLike, option: str = "--plot") -> Path:
    """``path`` if it names a .png or .svg file in an existing folder; else the user's mistake,
    naming ``option`` and the valid suffixes. Called before any work, so a typo costs nothing."""
    p = Path(path).expanduser()
    suffix = p.suffix.lower()
    if suffix not in PLOT_SUFFIXES:
        got = f"suffix {shown(p.suffix)}" if p.suffix else "no suffix"
        raise FtAdvisorError(option, f"{shown(str(path), 200)} has {got}; the picture's format comes from it",
                             [f"FILE{s}" for s in PLOT_SUFFIXES])
    if p.is_dir():
        raise FtAdvisorError(option, f"{shown(str(path), 200)} is a folder; give a file name ending in .png or .svg")
    if not p.parent.is_dir():
        raise FtAdvisorError(option, f"folder {shown(str(p.parent), 200)} does not exist")
    if not have_matplotlib():
        raise FtAdvisorError(option, NEEDS_MATPLOTLIB)
    return p


def _pyplot():
    """matplotlib.pyplot on the Agg backend (files only, no display), with text kept as text in SVG
    files (``svg.fonttype = none``: labels stay searchable and selectable)."""
    try:
        import matplotlib
    except ImportError:
        raise FtAdvisorError("--plot", NEEDS_MATPLOTLIB) from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams["svg.fonttype"] = "none"
    plt.rcParams["svg.hashsalt"] = "ftadvisor"  # stable ids: the same data gives the same SVG
    return plt


def have_matplotlib() -> bool:
    """Whether ``--plot`` can draw here (without importing matplotlib)."""
    import importlib.util
    import sys

    try:
        return importlib.util.find_spec("matplotlib") is not None
    except ValueError:  # in sys.modules without a spec (None: imports of it are blocked)
        return sys.modules.get("matplotlib") is not None


def _save(fig, path: Path) -> Path:
    """Write ``fig`` to ``path`` atomically in the format its suffix names."""
    plt = _pyplot()
    fmt = path.suffix.lower().lstrip(".")
    # no creation date in the file: the same data gives the same bytes
    metadata = {"Date": None} if fmt == "svg" else {"Software": "ftadvisor"}
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        with os.fdopen(fd, "wb") as fh:
            fig.savefig(fh, format=fmt, dpi=120, bbox_inches="tight", metadata=metadata)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes the file private; a picture gets the usual mode
        os.replace(tmp, path)
    except OSError as err:
        raise FtAdvisorError("--plot", f"cannot write {path} ({err.strerror or type(err).__name__})") from None
    finally:
        plt.close(fig)
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)
    return path


def _style(i: int, n: int) -> tuple[Any, str]:
    """(colour, marker) of the i-th of n series."""
    plt = _pyplot()
    cmap = plt.get_cmap("tab10" if n <= 10 else "tab20")
    return cmap(i % cmap.N), MARKERS[i % len(MARKERS)]


# --------------------------------------------------------------------------------------------
# Memory breakdown per technique (ftadvisor estimate --plot)
# --------------------------------------------------------------------------------------------


def memory_parts(memory) -> dict[str, int]:
    """The stacked parts of one estimate's device memory per GPU, bottom to top, in bytes; they
    sum to ``device_total_bytes`` (what nvidia-smi shows, the figure compared with the card).

    1. the components of the allocator's peak (``MemoryBreakdown.components``, summing to
       ``peak_allocated_bytes``);
    2. the caching allocator's slack: ``peak_reserved_bytes - peak_allocated_bytes``;
    3. the CUDA context and library workspaces: ``runtime_overhead_bytes``;
    4. what remains of ``device_total_bytes`` (= reserved + runtime overhead + resident paged
       optimizer state, per the field's docstring in ftadvisor/schema.py): the resident paged state.
    """
    parts = dict(memory.components())
    parts["allocator_slack"] = max(0, memory.peak_reserved_bytes - memory.peak_allocated_bytes)
    parts["runtime_overhead"] = memory.runtime_overhead_bytes
    parts["paged_resident"] = max(0, memory.device_total_bytes - sum(parts.values()))
    return parts


def memory_breakdown(estimates: Sequence[Any], card_bytes: float, card_name: str, path: str | os.PathLike,
                     title: str | None = None) -> Path:
    """A stacked bar per estimate (one per technique row of ``ftadvisor estimate``): the parts of
    its device memory per GPU in GiB (:func:`memory_parts`), the total above each bar (red when
    the plan does not fit), and the card's memory as a dashed horizontal line with its label."""
    if not estimates:
        raise FtAdvisorError("--plot", "no estimates to draw")
    path = check_plot_path(path)
    plt = _pyplot()
    parts = [memory_parts(e.memory) for e in estimates]
    names = [n for n in PART_LABELS if any(p.get(n, 0) > 0 for p in parts)]
    labels = [e.technique for e in estimates]
    card_gib = card_bytes / GIB
    fig, ax = plt.subplots(figsize=(max(6.0, 0.9 * len(labels) + 3.5), 5.2))
    x = list(range(len(labels)))
    bottom = [0.0] * len(labels)
    cmap = plt.get_cmap("tab20")
    for i, name in enumerate(names):
        heights = [p.get(name, 0) / GIB for p in parts]
        ax.bar(x, heights, 0.65, bottom=bottom, label=PART_LABELS[name], color=cmap(i % cmap.N),
               edgecolor="white", linewidth=0.5)
        bottom = [b + h for b, h in zip(bottom, heights)]
    for xi, e, top in zip(x, estimates, bottom):
        ax.annotate(f"{top:.1f}", (xi, top), xytext=(0, 3), textcoords="offset points", ha="center",
                    va="bottom", fontsize=8, color="black" if e.fits else "tab:red", zorder=5,
                    bbox={"boxstyle": "square,pad=0.1", "facecolor": "white", "edgecolor": "none", "alpha": 0.8})
    ax.axhline(card_gib, color="black", linestyle="--", linewidth=1.2)
    # the card's label in the right margin, level with its line (the legend goes below the axes)
    ax.annotate(f"{card_name}\n{card_gib:.1f} GiB", (1.0, card_gib), xycoords=("axes fraction", "data"),
                xytext=(5, 0), textcoords="offset points", ha="left", va="center", fontsize=9)
    rotate = len(labels) > 4 or max(len(t) for t in labels) > 10
    ax.set_xticks(x)
    ax.set_xticklabels(labels, rotation=30 if rotate else 0, ha="right" if rotate else "center")
    for tick, e in zip(ax.get_xticklabels(), estimates):
        if not e.fits:
            tick.set_color("tab:red")
    ax.set_ylabel("GiB per GPU (device total, as nvidia-smi shows)")
    ax.set_ylim(0, max(max(bottom), card_gib) * 1.15)
    ax.set_title(title or "Memory per GPU by technique", fontsize=10, loc="left")
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.2 if rotate else -0.1), ncol=min(4, len(names)),
              fontsize=8, frameon=False)
    ax.grid(axis="y", alpha=0.3)
    ax.set_axisbelow(True)
    return _save(fig, path)


# --------------------------------------------------------------------------------------------
# Predicted against measured (ftadvisor calibrate report --plot)
# --------------------------------------------------------------------------------------------


@dataclass
class ScatterPanel:
    """One panel of predicted (x) against measured (y) values, a series per technique."""

    title: str
    unit: str
    points: dict[str, list[tuple[float, float]]] = field(default_factory=dict)
    """technique -> [(predicted, measured), ...]"""
    after: dict[str, list[tuple[float, float]]] = field(default_factory=dict)
    """technique -> [(corrected prediction, measured), ...] (drawn hollow), if any."""

    def values(self) -> list[float]:
        return [v for series in (self.points, self.after) for pts in series.values() for xy in pts for v in xy
                if v > 0 and math.isfinite(v)]


def log_axes(values: Iterable[float]) -> bool:
    """Whether a panel's values span more than :data:`LOG_SPAN` (then both axes are logarithmic)."""
    vals = [v for v in values if v > 0 and math.isfinite(v)]
    return bool(vals) and max(vals) / min(vals) > LOG_SPAN


def prediction_scatter(rows: Sequence[tuple[str, Sequence[ScatterPanel]]], path: str | os.PathLike) -> Path:
    """Predicted against measured, one row of panels per ``(row title, panels)`` (a hardware: its
    memory and, where both exist, throughput panel), a colour and marker per technique, the
    ``y = x`` line where prediction and measurement agree, log axes when the values span > 10x."""
    rows = [(name, [p for p in panels if p.values()]) for name, panels in rows]
    rows = [(name, panels) for name, panels in rows if panels]
    if not rows:
        raise FtAdvisorError("--plot", "no calibration results with both a prediction and a measurement to draw")
    path = check_plot_path(path)
    plt = _pyplot()
    ncols = max(len(p) for _, p in rows)
    fig, axes = plt.subplots(len(rows), ncols, figsize=(5.6 * ncols + 2.2, 4.8 * len(rows)), squeeze=False)
    techniques = sorted({t for _, panels in rows for p in panels for t in (*p.points, *p.after)})
    style = {t: _style(i, len(techniques)) for i, t in enumerate(techniques)}
    for r, (name, panels) in enumerate(rows):
        for c in range(ncols):
            ax = axes[r][c]
            if c >= len(panels):
                ax.set_visible(False)
                continue
            _scatter_panel(ax, panels[c], style, f"{name}: {panels[c].title}")
    handles = [plt.Line2D([], [], linestyle="", marker=style[t][1], color=style[t][0], label=t) for t in techniques]
    if any(p.after for _, panels in rows for p in panels):
        handles.append(plt.Line2D([], [], linestyle="", marker="o", markerfacecolor="none", color="grey",
                                  label="hollow: after correction"))
    handles.append(plt.Line2D([], [], linestyle=":", color="black", label="y = x (exact)"))
    fig.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.0, 0.95), fontsize=8, frameon=False)
    fig.tight_layout()
    return _save(fig, path)


def _scatter_panel(ax, panel: ScatterPanel, style: Mapping[str, tuple[Any, str]], title: str) -> None:
    vals = panel.values()
    lo, hi = min(vals), max(vals)
    log = log_axes(vals)
    if log:
        ax.set_xscale("log")
        ax.set_yscale("log")
        lo, hi = lo / 1.3, hi * 1.3
    else:
        pad = (hi - lo) * 0.08 or max(abs(hi) * 0.1, 1e-9)
        lo, hi = max(0.0, lo - pad), hi + pad
    ax.plot([lo, hi], [lo, hi], linestyle=":", color="black", linewidth=1)
    for tech, pts in panel.points.items():
        color, marker = style[tech]
        ax.scatter([x for x, _ in pts], [y for _, y in pts], color=color, marker=marker, s=36, zorder=3)
    for tech, pts in panel.after.items():
        color, marker = style[tech]
        ax.scatter([x for x, _ in pts], [y for _, y in pts], facecolors="none", edgecolors=[color], marker=marker,
                   s=36, zorder=3)
    ax.set_xlim(lo, hi)
    ax.set_ylim(lo, hi)
    ax.set_xlabel(f"predicted ({panel.unit})")
    ax.set_ylabel(f"measured ({panel.unit})")
    ax.set_title(title + (" (log axes)" if log else ""), fontsize=10, loc="left")
    ax.grid(alpha=0.3, which="both" if log else "major")


# --------------------------------------------------------------------------------------------
# Token lengths of a dataset (ftadvisor data-stats --plot)
# --------------------------------------------------------------------------------------------


def length_histogram(lengths: Sequence[float], seq_len: int, path: str | os.PathLike, title: str,
                     unit: str = "tokens") -> Path:
    """A histogram of sequence lengths with the truncation length as a vertical line (the share
    of sequences longer than it in the label)."""
    if not lengths:
        raise FtAdvisorError("--plot", "no sequences to draw")
    path = check_plot_path(path)
    plt = _pyplot()
    over = sum(1 for n in lengths if n > seq_len) / len(lengths)
    fig, ax = plt.subplots(figsize=(7.5, 4.2))
    ax.hist(lengths, bins=min(40, max(5, len(set(lengths)))), color="tab:blue", alpha=0.85)
    ax.axvline(seq_len, color="tab:red", linestyle="--", linewidth=1.2)
    ax.annotate(f"seq_len {seq_len}: {over:.1%} truncated", (seq_len, 1.0), xycoords=("data", "axes fraction"),
                xytext=(4, -12), textcoords="offset points", color="tab:red", fontsize=9)
    ax.set_xlabel(f"sequence length ({unit})")
    ax.set_ylabel("sequences")
    ax.set_title(title, fontsize=10, loc="left")
    ax.grid(axis="y", alpha=0.3)
    return _save(fig, path)
