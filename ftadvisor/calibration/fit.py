"""Fit corrections from calibration results: ``ftadvisor calibrate fit [--hardware H]``.

Reads ``calibration/results/<hardware>/*.jsonl`` (status ``ok`` records with a prediction and a
measured peak), fits, and writes ``calibration/corrections/<hardware>.yaml`` (schema:
:class:`ftadvisor.calibration.corrections.Corrections`).

The fitted model, per sample i (its predicted breakdown at the predicted peak phase):

    measured_peak_i = static_i + a_t * A_i + b * O_i + g

- ``static``: weights, gradients, optimizer state, master weights, extra models (exact counts,
  not corrected);
- ``A``: activations + logits + generation cache; ``a_t`` per technique t;
- ``O``: quantization workspace + communication + framework overhead; ``b`` pooled;
- ``g``: a pooled residual constant (bytes).

One least-squares problem on relative errors (each row divided by the measured peak, so small
and large cases weigh alike) gives every a_t and the pooled b and g; a coefficient whose column
is all zero (no overhead measured on the CPU, say) stays at its neutral value. The default
entry (for techniques without samples of their own) takes the median of the per-technique a_t:
a typical technique, not one dragged by the worst-modelled ones.
Coefficients are clipped to [0.1, 10]. Each entry's ``mdape_before`` / ``mdape_after`` are
in-sample median absolute percentage errors (MdAPE) of the peak; ``mdape_loo`` is leave-one-out
(each sample corrected by what the other samples fitted; a technique's only sample gets the
pooled default), the honest figure for a new measurement. The file's ``summary`` (what ``fit``
prints and ``report``'s ``all`` row shows, both through :func:`score` / :func:`error_summary`)
takes, per sample, the leave-one-out error where its technique has fewer than ``MIN_IN_SAMPLE``
(3) samples - one sample is fitted exactly, so its in-sample 0% means nothing - and the in-sample
error otherwise. All figures are of the coefficients as written (rounded).

Allocator slack = median over CUDA samples of reserved/allocated - 1. Achieved MFU (model FLOPs
utilisation, Chowdhery et al. 2022, PaLM, appendix B: model FLOPs exclude recomputation) =
model FLOPs per step (:func:`model_flops_per_token`, the speed model's count) / step time / the
hardware's dense peak for the plan's precision, median per technique, for objectives without a
generation phase (sft, dpo, orpo). On the ``cpu`` profile the peak is a placeholder, so CPU MFU
is only comparable with itself.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from ftadvisor.calibration.corrections import ACTIVATION_TERMS, MIN_IN_SAMPLE, OVERHEAD_TERMS, SCHEMA_VERSION
from ftadvisor.errors import FtAdvisorError

STATIC_TERMS = ("weights", "gradients", "optimizer_state", "master_weights", "extra_models")
CLIP = (0.1, 10.0)


# --- model FLOPs (for MFU) ----------------------------------------------------------------------


def model_flops_per_token(arch, technique, plan, hardware) -> float | None:
    """Model FLOPs (forward + backward, recomputation excluded: Chowdhery et al. 2022, PaLM,
    appendix B) per trained token on one process; None for objectives with a generation phase
    (their step time is mostly decoding). Taken from the speed model
    (``ftadvisor.speed.training_flops_per_token``) so that measured MFU and predicted MFU count
    the same FLOPs."""
    from ftadvisor import memory
    from ftadvisor.speed import training_flops_per_token

    if technique.objective.generation:
        return None
    lay = memory.build_layout(arch, technique, hardware, plan)
    return float(training_flops_per_token(lay, plan).model)


def peak_flops(hw, precision: str) -> float | None:
    """Dense peak FLOP/s for the plan's compute precision (the speed model's choice of datasheet
    figure: bf16 / fp16 tensor, else plain fp32)."""
    from ftadvisor.speed import peak_flops as speed_peak

    return float(speed_peak(hw, precision)[0])


# --- loading -----------------------------------------------------------------------------------


def _rows(results_root: Path, hardware: str | None) -> list[dict[str, Any]]:
    from ftadvisor.calibration import store

    rows = []
    for path in store.all_result_files(results_root, hardware):
        hw = path.parent.name
        for rec in store.iter_results(path):
            rows.append(_row(rec, hw, path))
    return rows


def _current_prediction(rec: dict, hw: str) -> dict | None:
    """The current analytic model's memory prediction for a record's model and plan (uncorrected),
    so a fit corrects the model as it is now, not as it was when the case ran; None if the record
    does not carry enough to re-estimate."""
    from ftadvisor.errors import FtAdvisorError
    from ftadvisor.estimator import estimate

    model = rec.get("model") or {}
    config = model.get("config")
    plan = rec.get("plan")
    if not isinstance(config, dict) or not isinstance(plan, dict):
        return None
    backend = rec.get("backend") or (rec.get("measurement") or {}).get("backend")
    layers = model.get("num_layers")
    if layers and backend != "trace":  # trace records are extrapolated to the full depth
        config = {**config, "num_hidden_layers": layers}
        if isinstance(config.get("text_config"), dict):
            config["text_config"] = {**config["text_config"], "num_hidden_layers": layers}
    try:
        return estimate(config, hw, plan=plan, calibrated=False).memory.model_dump(mode="json")
    except (FtAdvisorError, ValueError, TypeError):
        return None


def _row(rec: dict, hw: str, path: Path) -> dict[str, Any]:
    pred = _current_prediction(rec, hw) or (rec.get("prediction") or {}).get("memory") or {}
    meas = rec.get("measurement") or {}
    plan = rec.get("plan") or {}
    row: dict[str, Any] = {
        "hardware": hw,
        "file": str(path),
        "sweep": rec.get("sweep"),
        "case_id": rec.get("case_id"),
        "label": rec.get("label", ""),
        "status": rec.get("status"),
        "backend": rec.get("backend") or meas.get("backend"),
        "technique": plan.get("technique"),
        "measured": meas.get("peak_allocated_bytes"),
        "measured_reserved": meas.get("peak_reserved_bytes"),
        "measured_phase": meas.get("peak_phase"),
        "predicted": pred.get("peak_allocated_bytes"),
        "predicted_phase": pred.get("peak_phase"),
        "step_time_s": meas.get("step_time_s"),
        "tokens_per_step": meas.get("tokens_per_step"),
        "source": rec.get("source", "calibrate"),
        "machine": rec.get("machine") or "",
    }
    comps = {k[: -len("_bytes")]: v for k, v in pred.items() if k.endswith("_bytes") and isinstance(v, (int, float))}
    row["static"] = sum(comps.get(k, 0) for k in STATIC_TERMS)
    row["A"] = sum(comps.get(k, 0) for k in ACTIVATION_TERMS)
    row["O"] = sum(comps.get(k, 0) for k in OVERHEAD_TERMS)
    row["mfu"] = _mfu(rec, meas, plan, hw)
    row["mfu_predicted"] = ((rec.get("prediction") or {}).get("speed") or {}).get("mfu")
    # throughput, for `calibrate report --plot`: measured as the runner (tokens_per_s) or the launcher
    # (tokens_per_second) wrote it, else tokens per step / step time; predicted as recorded at run time
    tps = meas.get("tokens_per_s") or meas.get("tokens_per_second")
    if not tps and meas.get("step_time_s") and meas.get("tokens_per_step"):
        tps = meas["tokens_per_step"] / meas["step_time_s"]
    row["tokens_per_s"] = tps
    row["tokens_per_s_predicted"] = ((rec.get("prediction") or {}).get("speed") or {}).get("tokens_per_second_total")
    return row


def _mfu(rec: dict, meas: dict, plan: dict, hw_id: str) -> float | None:
    """Achieved MFU of one record: model FLOPs per step / step time / peak."""
    if not meas.get("step_time_s") or not meas.get("tokens_per_step") or not plan:
        return None
    from ftadvisor.calibration.sweep import with_layers
    from ftadvisor.estimator import make_plan
    from ftadvisor.profiles import resolve_hardware, resolve_model
    from ftadvisor.techniques import parse_technique

    try:
        hw = resolve_hardware(hw_id)
        model = rec.get("model") or {}
        cfg = model.get("config")
        if not cfg:
            return None
        arch = resolve_model(with_layers(cfg, meas.get("num_layers") or model.get("num_layers"))).arch
        tp = make_plan(plan=dict(plan))
        per_tok = model_flops_per_token(arch, parse_technique(tp.technique), tp, hw)
    except FtAdvisorError:
        return None
    peak = peak_flops(hw, tp.precision)
    if per_tok is None or not peak:
        return None
    return per_tok * meas["tokens_per_step"] / meas["step_time_s"] / peak


def load_frame(results_root: str | Path | None = None, hardware: str | None = None):
    """Every result row (one per record) as a pandas DataFrame."""
    import pandas as pd

    from ftadvisor.calibration import store

    root = Path(results_root) if results_root is not None else store.results_root()
    rows = _rows(root, hardware)
    if results_root is None:
        # `ftadvisor launch` records its runs in the user's runs folder, never the checkout (ftadvisor.runs)
        from ftadvisor.runs import launch_results_root

        launches = launch_results_root()
        if launches.resolve() != root.resolve():
            rows += _rows(launches, hardware)
    cols = ["hardware", "file", "sweep", "case_id", "label", "status", "backend", "technique", "measured",
            "measured_reserved", "measured_phase", "predicted", "predicted_phase", "step_time_s",
            "tokens_per_step", "source", "machine", "static", "A", "O", "mfu", "mfu_predicted", "tokens_per_s",
            "tokens_per_s_predicted"]
    return pd.DataFrame(rows, columns=cols)


def usable(df):
    """Rows a fit can use: ok, with a measured and a predicted peak."""
    ok = (df["status"] == "ok") & df["measured"].notna() & df["predicted"].notna() & (df["measured"] > 0)
    return df[ok].copy()


# --- fitting -----------------------------------------------------------------------------------


def _clip(x: float) -> float:
    return float(min(CLIP[1], max(CLIP[0], x)))


def _joint(d) -> tuple[dict[str, float], float, float]:
    """Per-technique a_t with pooled b and g, jointly, by least squares on relative errors.
    Columns that are all zero (no overhead measured on the CPU, say) stay at their neutral value;
    the constant is fitted only with at least two samples to spare."""
    import numpy as np

    y = d["measured"].to_numpy(float) - d["static"].to_numpy(float)
    w = 1.0 / d["measured"].to_numpy(float)
    techs = sorted(d["technique"].unique())
    cols, names = [], []
    A = d["A"].to_numpy(float)
    for t in techs:
        v = np.where(d["technique"].to_numpy() == t, A, 0.0)
        if np.any(v > 0):
            cols.append(v)
            names.append(("a", t))
    O = d["O"].to_numpy(float)
    if np.any(O > 0):
        cols.append(O)
        names.append(("b", None))
    if len(d) >= len(cols) + 2:
        cols.append(np.ones(len(d)))
        names.append(("g", None))
    sol: dict = {}
    if cols:
        X = np.stack(cols, axis=1) * w[:, None]
        coef, *_ = np.linalg.lstsq(X, y * w, rcond=None)
        sol = dict(zip(names, coef.tolist()))
    per = {t: _clip(sol.get(("a", t), 1.0)) for t in techs}
    b = max(0.0, min(CLIP[1], sol.get(("b", None), 1.0)))
    g = float(sol.get(("g", None), 0.0))
    return per, b, g


def _technique_scale(d, b: float, g: float, default: float) -> float:
    """a_t with b and g fixed: weighted least squares in closed form."""
    import numpy as np

    A = d["A"].to_numpy(float)
    r = d["measured"].to_numpy(float) - d["static"].to_numpy(float) - b * d["O"].to_numpy(float) - g
    w = 1.0 / d["measured"].to_numpy(float) ** 2
    den = float(np.sum(w * A * A))
    if den <= 0:
        return default
    return _clip(float(np.sum(w * A * r)) / den)


def _ape(pred, meas):
    import numpy as np

    return np.abs(np.asarray(pred, float) - np.asarray(meas, float)) / np.asarray(meas, float) * 100.0


def corrected_peak(d, a, b: float, g: float):
    return d["static"] + a * d["A"] + b * d["O"] + g


Coef = tuple[float, float, float]  # (activations_scale, overhead_scale, residual_bytes)


def score(d, coef: dict[str, Coef], default: Coef):
    """Per-row errors of a set of corrections on rows ``d`` (:func:`usable` rows): ``ape_before``
    (uncorrected), ``ape_after`` (in-sample: the row's technique entry, else ``default``),
    ``ape_loo`` (leave-one-out: the row's activations scale refitted on the other rows of its
    technique with its overhead scale and residual fixed, ``default``'s scale when it is the only
    one) and ``ape_reported`` (``ape_loo`` where the technique has fewer than ``MIN_IN_SAMPLE``
    rows, else ``ape_after``). ``fit`` and ``report`` both score with this, on the coefficients
    as written to the file, so they print the same figures."""
    import numpy as np

    d = d.copy()
    trip = [coef.get(t, default) for t in d["technique"]]
    d["a"] = [x[0] for x in trip]
    d["b"] = [x[1] for x in trip]
    d["g"] = [x[2] for x in trip]
    d["corrected"] = d["static"] + d["a"] * d["A"] + d["b"] * d["O"] + d["g"]
    d["ape_before"] = _ape(d["predicted"], d["measured"])
    d["ape_after"] = _ape(d["corrected"], d["measured"])
    loo = []
    for idx, row in d.iterrows():
        others = d[(d["technique"] == row["technique"]) & (d.index != idx)]
        a = _technique_scale(others, row["b"], row["g"], default[0]) if len(others) else default[0]
        loo.append(float(row["static"] + a * row["A"] + row["b"] * row["O"] + row["g"]))
    d["ape_loo"] = _ape(loo, d["measured"])
    d["n_technique"] = d.groupby("technique")["technique"].transform("size")
    d["ape_reported"] = np.where(d["n_technique"] < MIN_IN_SAMPLE, d["ape_loo"], d["ape_after"])
    return d


def error_summary(scored) -> dict[str, Any]:
    """The overall figures of :func:`score`'s rows (the corrections file's ``summary``)."""
    def med(col: str) -> float:
        return round(float(scored[col].median()), 3)

    return {"samples": len(scored), "mdape_before": med("ape_before"), "mdape_after": med("ape_reported"),
            "mdape_in_sample": med("ape_after"), "mdape_loo": med("ape_loo"),
            "loo_samples": int((scored["n_technique"] < MIN_IN_SAMPLE).sum())}


def headline(summary) -> str:
    """One line of the overall error (an ``ErrorSummary`` or its dict), as ``fit`` prints it."""
    if summary is None:
        return "peak MdAPE after correction unknown (corrections from before summaries: refit)"
    s = summary if isinstance(summary, dict) else summary.model_dump()
    how = (f"leave-one-out for the {s['loo_samples']} samples of techniques with < {MIN_IN_SAMPLE}"
           if s["loo_samples"] else "in-sample")
    return f"peak MdAPE {s['mdape_before']:.1f}% -> {s['mdape_after']:.1f}% after correction ({how})"


def coefficients(corr) -> tuple[dict[str, Coef], Coef]:
    """A corrections file's coefficients as :func:`score` takes them."""
    def trip(tc) -> Coef:
        return (tc.activations_scale, tc.overhead_scale, tc.residual_bytes)

    return {t: trip(tc) for t, tc in corr.techniques.items()}, trip(corr.default)


def fit_hardware(df, hardware: str) -> dict[str, Any]:
    """The corrections mapping (Corrections schema) for one hardware's rows."""
    import datetime as dt

    import numpy as np

    d = usable(df[df["hardware"] == hardware])
    if d.empty:
        raise FtAdvisorError("hardware", f"no usable results for {hardware!r} (need status ok with a prediction)")
    per, b, g = _joint(d)
    a0 = float(np.median(list(per.values())))  # the default for techniques without samples
    # The coefficients as the file stores them; every error below is of these (what report recomputes).
    per = {t: round(float(a), 4) for t, a in per.items()}
    a0, b, g = round(a0, 4), round(float(b), 4), round(float(g), 1)
    # Leave-one-out: each sample corrected with the scale fitted on the other samples of its
    # technique (the pooled default when it is the only one) - what a new measurement would see.
    d = score(d, {t: (a, b, g) for t, a in per.items()}, (a0, b, g))

    def entry(rows, a) -> dict[str, Any]:
        mfu = rows["mfu"].dropna()
        return {
            "activations_scale": round(float(a), 4),
            "overhead_scale": round(float(b), 4),
            "residual_bytes": round(float(g), 1),
            "mfu": round(float(mfu.median()), 4) if len(mfu) else None,
            "mfu_samples": int(len(mfu)),
            "samples": int(len(rows)),
            "mdape_before": round(float(rows["ape_before"].median()), 3),
            "mdape_after": round(float(rows["ape_after"].median()), 3),
            "max_ape_after": round(float(rows["ape_after"].max()), 3),
            "mdape_loo": round(float(rows["ape_loo"].median()), 3),
        }

    pooled = d.assign(ape_after=_ape(corrected_peak(d, a0, b, g), d["measured"]))
    res = d[d["measured_reserved"].notna() & (d["backend"] == "cuda")]
    slack = None
    if len(res):
        slack = float(np.median(res["measured_reserved"] / res["measured"] - 1.0))
    return {
        "schema_version": SCHEMA_VERSION,
        "hardware": hardware,
        "created_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "sources": sorted({str(Path(f).name) for f in d["file"]}),
        "backends": sorted({str(x) for x in d["backend"].dropna()}),
        "allocator_slack": round(max(0.0, slack), 4) if slack is not None else None,
        "allocator_slack_samples": int(len(res)),
        "default": entry(pooled, a0),
        "techniques": {t: entry(rows, per[t]) for t, rows in d.groupby("technique")},
        "summary": error_summary(d),
        "notes": (
            "measured_peak = static + activations_scale*(activations+logits+generation_cache) + "
            "overhead_scale*(quantization_workspace+communication+framework_overhead) + residual_bytes; "
            "pooled least squares on relative errors, then activations_scale per technique; per entry, "
            "mdape_* are median absolute % errors of the peak allocated bytes, in-sample except mdape_loo "
            f"(leave-one-out); summary.mdape_after takes leave-one-out where a technique has < {MIN_IN_SAMPLE} samples."
        ),
    }


def write_corrections(data: dict[str, Any], path: Path | None = None) -> Path:
    """Validate and write one corrections file; returns its path."""
    import yaml

    from ftadvisor.calibration.corrections import corrections_path, parse_corrections

    corr = parse_corrections(data, "fitted corrections")
    path = path or corrections_path(corr.hardware)
    path.parent.mkdir(parents=True, exist_ok=True)
    header = (
        f"# Calibration corrections for hardware '{corr.hardware}', written by `ftadvisor calibrate fit`.\n"
        f"# Sources: calibration/results/{corr.hardware}/ ({', '.join(corr.sources)}). Do not edit by hand: refit.\n"
    )
    body = yaml.safe_dump(corr.model_dump(mode="json"), sort_keys=False, default_flow_style=False)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(header + body)
    tmp.replace(path)
    return path


def fit(results_root: str | Path | None = None, hardware: str | None = None,
        corrections_dir: str | Path | None = None) -> list[Path]:
    """Fit every hardware with results (or the one named); returns the written files."""
    df = load_frame(results_root, hardware)
    if df.empty:
        where = f"calibration/results/{hardware}/" if hardware else "calibration/results/"
        raise FtAdvisorError("hardware", f"no results under {where}; run `ftadvisor calibrate SWEEP` first")
    out = []
    for hw in sorted(df["hardware"].unique()):
        if not len(usable(df[df["hardware"] == hw])):
            continue
        data = fit_hardware(df, hw)
        path = Path(corrections_dir) / f"{hw}.yaml" if corrections_dir else None
        out.append(write_corrections(data, path))
    if not out:
        raise FtAdvisorError("hardware", "no usable results (status ok with a prediction) to fit")
    return out


def nan_to_none(x):
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else x
