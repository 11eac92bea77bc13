"""Predicted vs measured: ``ftadvisor calibrate report [--hardware H] [--cases] [--details]``.

Prints, per hardware, a table per technique (samples, median measured and predicted peak,
median absolute % error before and after the hardware's corrections file, and achieved MFU).
"After" is in-sample for a technique with at least 3 samples and leave-one-out (marked ``*``)
below that, where an in-sample error is ~0 by construction; the ``all`` row and the line under
the table are the figures ``calibrate fit`` printed (both come from ``fit.score`` /
``fit.error_summary`` on the file's coefficients). Optionally one row
per case and, with ``--details``, the measured phases and the largest tensors alive at each
case's measured peak (what to look at when a technique is off), then a text scatter plot of
predicted against measured peak on log axes (``o`` before correction, ``+`` after, ``.`` the
diagonal where they agree).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

MIB = 2**20


def build_tables(results_root=None, hardware: str | None = None, corrections_dir=None) -> dict[str, Any]:
    """Per hardware: the usable rows (scored against the corrections file), the per-technique
    summary and ``overall`` (:func:`ftadvisor.calibration.fit.error_summary`, what ``fit`` printed
    for the same results)."""
    from ftadvisor.calibration import corrections as C
    from ftadvisor.calibration import fit as F

    df = F.load_frame(results_root, hardware)
    out: dict[str, Any] = {}
    for hw in sorted(df["hardware"].unique()) if len(df) else []:
        rows = df[df["hardware"] == hw]
        d = F.usable(rows)
        path = Path(corrections_dir) / f"{hw}.yaml" if corrections_dir else C.corrections_path(hw)
        corr = C.read_corrections(path) if path.is_file() else None
        d["err_before"] = (d["predicted"] - d["measured"]) / d["measured"] * 100
        d["ape_before"] = F._ape(d["predicted"], d["measured"])
        scored = corr is not None and len(d) > 0
        if scored:
            coef, default = F.coefficients(corr)
            d = F.score(d, coef, default)
        summary = []
        for tech, g in d.groupby("technique", sort=False):
            summary.append({
                "technique": tech,
                "n": len(g),
                "measured_mib": float(g["measured"].median()) / MIB,
                "predicted_mib": float(g["predicted"].median()) / MIB,
                "mdape_before": float(g["ape_before"].median()),
                # the honest figure: leave-one-out below MIN_IN_SAMPLE samples (in-sample would be ~0)
                "mdape_after": float(g["ape_reported"].median()) if scored else None,
                "after_kind": "in-sample" if len(g) >= C.MIN_IN_SAMPLE else "leave-one-out",
                "mdape_in_sample": float(g["ape_after"].median()) if scored else None,
                "mdape_loo": float(g["ape_loo"].median()) if scored else None,
                "mfu": float(g["mfu"].dropna().median()) if g["mfu"].notna().any() else None,
                "mfu_predicted": (float(g["mfu_predicted"].dropna().median())
                                  if g["mfu_predicted"].notna().any() else None),
            })
        status_counts = rows["status"].value_counts().to_dict()
        out[hw] = {"rows": d, "all": rows, "summary": summary, "corrections": corr, "corrections_path": path,
                   "status_counts": status_counts, "overall": F.error_summary(d) if scored else None,
                   "machines": int(rows["machine"].nunique())}
    return out


def scatter(points: list[tuple[float, float, str]], width: int = 60, height: int = 20) -> list[str]:
    """A text scatter plot of (predicted, measured, mark) on log10 axes with the y = x diagonal."""
    pts = [(x, y, m) for x, y, m in points if x and y and x > 0 and y > 0]
    if not pts:
        return ["(no points)"]
    lo = math.log10(min(min(x, y) for x, y, _ in pts))
    hi = math.log10(max(max(x, y) for x, y, _ in pts))
    if hi - lo < 1e-9:
        lo, hi = lo - 0.5, hi + 0.5
    pad = (hi - lo) * 0.05
    lo, hi = lo - pad, hi + pad
    grid = [[" "] * width for _ in range(height)]

    def cell(v: float, n: int) -> int:
        return min(n - 1, max(0, int(round((math.log10(v) - lo) / (hi - lo) * (n - 1)))))

    for i in range(width):  # the diagonal: measured == predicted
        v = 10 ** (lo + (hi - lo) * i / (width - 1))
        grid[height - 1 - cell(v, height)][i] = "."
    for x, y, m in pts:
        r, c = height - 1 - cell(y, height), cell(x, width)
        grid[r][c] = "*" if grid[r][c] not in (" ", ".", m) else m
    top = f"{10 ** hi / MIB:10.1f} MiB"
    bottom = f"{10 ** lo / MIB:10.1f} MiB"
    lines = []
    for i, row in enumerate(grid):
        label = top if i == 0 else (bottom if i == height - 1 else "")
        lines.append(f"{label:>14} |" + "".join(row))
    lines.append(" " * 15 + "+" + "-" * width)
    lines.append(" " * 16 + f"{10 ** lo / MIB:.1f} MiB" + " " * max(1, width - 24) + f"{10 ** hi / MIB:.1f} MiB")
    lines.append(" " * 16 + "x: predicted peak allocated   y: measured   . : equal   o before  + after correction")
    return lines


def render(results_root=None, hardware: str | None = None, cases: bool = False, details: bool = False,
           corrections_dir=None, console=None) -> dict[str, Any]:
    """Print the report with rich; returns the tables (for tests and callers)."""
    from rich.console import Console
    from rich.table import Table

    from ftadvisor.calibration.corrections import MIN_IN_SAMPLE

    console = console or Console()
    tables = build_tables(results_root, hardware, corrections_dir)
    if not tables:
        console.print("No calibration results yet: run `ftadvisor calibrate SWEEP` (sweeps in calibration/sweeps/).")
        return tables
    for hw, t in tables.items():
        corr = t["corrections"]
        counts = ", ".join(f"{k} {v}" for k, v in sorted(t["status_counts"].items()))
        machines = f" (from {t['machines']} machines)" if t["machines"] > 1 else ""
        console.print(f"\n[bold]{hw}[/]  results: {counts}{machines}; corrections: "
                      + (f"{t['corrections_path']}" if corr else "none (run `ftadvisor calibrate fit`)"))
        tab = Table(title="peak allocated memory per technique: median absolute % error before / after correction "
                          f"(after: in-sample, or * leave-one-out below {MIN_IN_SAMPLE} samples; LOO: leave-one-out)",
                    title_justify="left")
        for col in ("technique", "n", "meas MiB", "pred MiB", "before", "after", "LOO", "MFU meas/pred"):
            tab.add_column(col, no_wrap=True, justify="left" if col == "technique" else "right",
                           min_width=7 if col == "after" else None)
        for s in t["summary"]:
            star = "*" if s["after_kind"] == "leave-one-out" else ""
            tab.add_row(s["technique"], str(s["n"]), f"{s['measured_mib']:.1f}", f"{s['predicted_mib']:.1f}",
                        f"{s['mdape_before']:.1f}%",
                        f"{s['mdape_after']:.1f}%{star}" if s["mdape_after"] is not None else "-",
                        f"{s['mdape_loo']:.1f}%" if s["mdape_loo"] is not None else "-",
                        _pair(s["mfu"], s["mfu_predicted"]))
        d = t["rows"]
        overall = t["overall"]
        if len(d):
            before = overall["mdape_before"] if overall else float(d["ape_before"].median())
            tab.add_row("[bold]all[/]", str(len(d)), "", "", f"[bold]{before:.1f}%[/]",
                        f"[bold]{overall['mdape_after']:.1f}%[/]" if overall else "-",
                        f"[bold]{overall['mdape_loo']:.1f}%[/]" if overall else "-", "")
        console.print(tab)
        if overall:
            from ftadvisor.calibration.fit import headline

            console.print(f"{overall['samples']} samples: {headline(overall)}", markup=False, highlight=False)
            fitted = corr.summary.samples if corr.summary is not None else corr.default.samples
            if fitted != overall["samples"]:
                console.print(f"(the corrections were fitted on {fitted} samples, the results now hold "
                              f"{overall['samples']}: run `ftadvisor calibrate fit` to refit)")
        if cases and len(d):
            ct = Table(title="cases (peak phase: fb forward/backward, step optimizer step, gen generation)",
                       title_justify="left")
            ct.add_column("case", overflow="fold", min_width=28, ratio=1)
            for col in ("backend", "meas MiB", "pred MiB", "error", "phase m/p"):
                ct.add_column(col, no_wrap=True, justify="left" if col in ("backend", "phase m/p") else "right")
            for _, r in d.iterrows():
                ct.add_row(r["label"], str(r["backend"]), f"{r['measured'] / MIB:.2f}", f"{r['predicted'] / MIB:.2f}",
                           f"{r['err_before']:+.1f}%", f"{_short(r['measured_phase'])}/{_short(r['predicted_phase'])}")
            console.print(ct)
        if details and len(d):
            _details(t["all"], console)
        pts = [(r["predicted"], r["measured"], "o") for _, r in d.iterrows()]
        if "corrected" in d:
            pts += [(r["corrected"], r["measured"], "+") for _, r in d.iterrows()]
        console.print("\n".join(scatter(pts)), markup=False, highlight=False)
    return tables


def plot_rows(tables: dict[str, Any]) -> list[tuple[str, list]]:
    """The panels of ``calibrate report --plot`` (ftadvisor.plots.prediction_scatter), per hardware
    of :func:`build_tables`: peak allocated memory in MiB, predicted (and, hollow, corrected by the
    hardware's corrections file) against measured, for the usable rows; and throughput in tokens/s,
    predicted as recorded at run time against measured, for the ok records that carry both."""
    from ftadvisor.plots import ScatterPanel

    def finite(*xs) -> bool:
        return all(x is not None and x == x and x > 0 for x in xs)  # x == x: not NaN

    rows = []
    for hw, t in tables.items():
        memory = ScatterPanel("peak allocated memory", "MiB")
        for _, r in t["rows"].iterrows():
            tech = str(r["technique"])
            if finite(r["predicted"], r["measured"]):
                memory.points.setdefault(tech, []).append((r["predicted"] / MIB, r["measured"] / MIB))
            if "corrected" in r and finite(r["corrected"], r["measured"]):
                memory.after.setdefault(tech, []).append((r["corrected"] / MIB, r["measured"] / MIB))
        speed = ScatterPanel("throughput", "tokens/s")
        every = t["all"]
        for _, r in every[every["status"] == "ok"].iterrows():
            if finite(r["tokens_per_s_predicted"], r["tokens_per_s"]):
                speed.points.setdefault(str(r["technique"]), []).append(
                    (float(r["tokens_per_s_predicted"]), float(r["tokens_per_s"])))
        rows.append((hw, [memory, speed]))
    return rows


def _pair(a, b) -> str:
    if a is None and b is None:
        return "-"
    return f"{'-' if a is None else f'{a:.3f}'}/{'-' if b is None else f'{b:.3f}'}"


def _short(phase) -> str:
    return {"forward_backward": "fb", "optimizer_step": "step", "generation": "gen"}.get(phase, str(phase))


def _details(rows, console) -> None:
    """Measured phases and the largest tensors at the measured peak, per case (from the records)."""
    from ftadvisor.calibration import store

    seen = set()
    for f in sorted(set(rows["file"])):
        for rec in store.iter_results(f):
            if rec.get("status") != "ok" or rec.get("case_id") in seen:
                continue
            seen.add(rec.get("case_id"))
            m = rec.get("measurement") or {}
            p = (rec.get("prediction") or {}).get("memory") or {}
            console.print(f"\n[bold]{rec.get('label')}[/]")
            console.print("  measured phases MiB: " + ", ".join(f"{k} {v / MIB:.2f}" for k, v in (m.get("phases_bytes") or {}).items())
                          + f"  (peak in {m.get('peak_phase')})")
            console.print("  predicted phases MiB: " + ", ".join(f"{k} {v / MIB:.2f}" for k, v in (p.get("phases_bytes") or {}).items())
                          + f"  (peak in {p.get('peak_phase')})")
            if m.get("peak_split_bytes"):
                console.print("  measured at peak MiB: " + ", ".join(f"{k} {v / MIB:.2f}" for k, v in m["peak_split_bytes"].items()))
            comps = {k[:-6]: v for k, v in p.items() if k.endswith("_bytes") and isinstance(v, int) and v
                     and k not in ("peak_allocated_bytes", "peak_reserved_bytes", "device_total_bytes", "runtime_overhead_bytes")}
            console.print("  predicted at peak MiB: " + ", ".join(f"{k} {v / MIB:.2f}" for k, v in comps.items()))
            for e in (m.get("largest_at_peak") or [])[:8]:
                console.print(f"    {e['bytes'] / MIB:8.3f} MiB  {e['kind']:<9} {e['op']:<24} {e['dtype']:<9} {e['shape']}",
                              markup=False, highlight=False)
