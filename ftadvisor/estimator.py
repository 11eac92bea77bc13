"""Public estimation API: one plan (:func:`estimate`) or a grid of plans (:func:`estimate_grid`)."""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any


from ftadvisor import allocator, host, memory
from ftadvisor.errors import FtAdvisorError
from ftadvisor.profiles import resolve_hardware, resolve_model
from ftadvisor.schema import (Estimate, HardwareProfile, MemoryBreakdown, ModelProfile, TrainingPlan,
                              default_rl_max_new_tokens)
from ftadvisor.plans import NUMERIC_FIELDS, PLAN_FIELDS, make_plan  # noqa: F401 - re-exported (API)
from ftadvisor.techniques import parse_technique

def _corrected(hw: HardwareProfile, lay: memory.Layout, ev: memory.Evaluation) -> tuple[float | None, tuple[str, ...]]:
    """Apply the hardware's calibration corrections (calibration/corrections/<hw>.yaml) to every
    phase in place; returns the fitted allocator slack (or None) and the notes to report."""
    from ftadvisor.calibration.corrections import apply_corrections, load_corrections

    corr = load_corrections(hw.id)
    if corr is None:
        return None, ()
    notes = set()
    for phase, comps in ev.phases.items():
        ev.phases[phase], note = apply_corrections(comps, lay.technique.name, corr)
        if note:
            notes.add(note)
    return corr.allocator_slack, tuple(sorted(notes))


def _fitted_slack(hw: HardwareProfile) -> float | None:
    from ftadvisor.calibration.corrections import load_corrections

    corr = load_corrections(hw.id)
    return corr.allocator_slack if corr is not None else None


def _pack(model: ModelProfile, hw: HardwareProfile, plan: TrainingPlan, lay: memory.Layout, ev: memory.Evaluation,
          calibrated: bool = True, node_warnings: tuple[str, ...] = ()) -> Estimate:
    fitted_slack, notes = _corrected(hw, lay, ev) if calibrated else (None, ())
    totals = {name: sum(comp.values()) for name, comp in ev.phases.items()}
    phase = max(totals, key=totals.get)
    comps = {k: int(round(v)) for k, v in ev.phases[phase].items()}
    allocated = sum(comps.values())
    cpu = hw.vendor == "cpu"
    # reserved = allocated x (1 + slack): the fixed-length slack (fitted, else the default) moved to the
    # plan's allocator regime (ftadvisor.allocator.reserved_slack)
    slack = 0.0 if cpu else allocator.reserved_slack(
        fitted_slack if fitted_slack is not None else memory.DEFAULT_ALLOCATOR_SLACK,
        lay.framework.allocator.expandable(plan), plan.varying_lengths, lay.technique.method.base_training != "none")
    reserved = int(round(allocated * (1 + slack)))
    runtime = 0 if cpu else int(hw.runtime_overhead_gib * 2**30)
    paged = int(round(ev.paged_bytes))
    device_total = reserved + runtime + paged
    cap = hw.memory_bytes
    warnings = list(lay.warnings) + list(node_warnings)
    fits = device_total <= cap
    if not fits and paged and reserved + runtime <= cap:
        fits = True
        warnings.append("fits only because the paged optimizer state spills to host memory (slower steps)")
    host_mem = host.host_memory(hw, plan, host_parts=ev.host_parts, trainable_params=float(ev.trainable_params),
                                total_params=float(ev.params.total), trainable_bytes=lay.trainable_bytes,
                                compute_bytes=lay.c, device_total_bytes=device_total)
    if not host_mem.fits:
        fits = False
        warnings.append("does not fit the node: " + host.host_limit_words(host_mem))
    breakdown = MemoryBreakdown(
        **{f"{k}_bytes": v for k, v in comps.items()},
        peak_allocated_bytes=allocated,
        peak_reserved_bytes=reserved,
        runtime_overhead_bytes=runtime,
        paged_bytes=paged,
        device_total_bytes=device_total,
        host_bytes=int(round(ev.host_bytes)),
        peak_phase=phase,
        phases_bytes={k: int(round(v)) for k, v in totals.items()},
        weights_by_dtype_bytes={k: int(round(v)) for k, v in ev.params.by_dtype.items() if v},
    )
    return Estimate(
        model_id=model.id,
        hardware_id=hw.id,
        plan=plan,
        technique=lay.technique.name,
        total_params=int(ev.params.total),
        trainable_params=int(round(ev.trainable_params)),
        memory=breakdown,
        fits=fits,
        host=host_mem,
        headroom_bytes=cap - device_total,
        warnings=tuple(warnings),
        corrections=notes,
        architecture_source=model.arch.derived_by if model.arch is not None else "analytic family",
    )


def examples_for_regime(examples: float | None, dataset_tokens: float | None, avg_tokens: float | None,
                        seq_len: int) -> int | None:
    """The example count the quality model's data regime reads: ``examples`` when given, else the
    sequences ``dataset_tokens`` make (tokens / avg_tokens, else tokens / seq_len: sequences filled
    to seq_len, as the time model assumes without an example count); None without a data size."""
    if examples:
        return int(examples)
    if dataset_tokens:
        return max(1, round(dataset_tokens / (avg_tokens or seq_len)))
    return None


def estimate(
    model: str | dict | ModelProfile,
    hardware: str | HardwareProfile = "a100-80gb",
    technique: str | None = None,
    plan: TrainingPlan | dict | None = None,
    *,
    calibrated: bool = True,
    with_speed: bool = False,
    goal: str | None = None,
    examples: float | None = None,
    avg_tokens: float | None = None,
    dataset_tokens: float | None = None,
    epochs: float = 1.0,
    hourly_price_usd: float | None = None,
    trust_remote_code: bool = False,
    **plan_fields: Any,
) -> Estimate:
    """Estimate per-GPU memory for fine-tuning ``model`` on ``hardware``; optionally speed, time,
    cost (given a dataset size) and expected quality (given a goal: chat, domain, code, math,
    preference, rl, facts). ``calibrated=False`` skips the hardware's calibration corrections
    (``calibration/corrections/<hardware>.yaml``) and returns the purely analytic figures.
    ``trust_remote_code`` accepts a Hub config that asks for its repository's code (ftadvisor.hub; none is run).

    >>> est = estimate("llama-3.1-8b", "rtx4090-24gb", "qlora", seq_len=2048)
    >>> est.fits, est.memory.device_total_bytes / 2**30   # doctest: +SKIP
    >>> est = estimate("llama-3.1-8b", "h100", "lora", with_speed=True, goal="code", examples=50_000)
    >>> est.speed.tokens_per_second_total, est.time_cost.wall_clock_hours, est.quality.relative_to_full  # doctest: +SKIP
    """
    from ftadvisor import validate

    validate.flag("calibrated", calibrated)
    validate.flag("with_speed", with_speed)
    validate.flag("trust_remote_code", trust_remote_code)
    validate.job_options(goal=goal, examples=examples, avg_tokens=avg_tokens, dataset_tokens=dataset_tokens,
                         epochs=epochs, hourly_price_usd=hourly_price_usd)
    mp = resolve_model(model, trust_remote_code=trust_remote_code)
    hw = resolve_hardware(hardware)
    tp = make_plan(technique, plan, **plan_fields)
    tp, node_warnings = host.resolve_nodes(hw, tp)
    tech = parse_technique(tp.technique)
    lay = memory.build_layout(mp.arch, tech, hw, tp)
    ev = memory.evaluate(lay, tp)
    est = _pack(mp, hw, tp, lay, ev, calibrated=calibrated, node_warnings=node_warnings)
    sized = dataset_tokens is not None or examples is not None
    if not (with_speed or sized or goal):
        return est
    from ftadvisor.quality import estimate_quality
    from ftadvisor.speed import estimate_speed, estimate_time_cost

    update: dict[str, Any] = {}
    if with_speed or sized:
        update["speed"] = estimate_speed(mp, hw, tp)
    if sized:
        update["time_cost"] = estimate_time_cost(
            update["speed"], hw, tp, dataset_tokens=dataset_tokens, examples=examples,
            avg_tokens_per_example=avg_tokens if dataset_tokens is None else None, epochs=epochs,
            hourly_price_usd=hourly_price_usd,
        )
    if goal:
        quant = tp.quantization if tp.quantization is not None else tech.method.default_quantization
        update["quality"] = estimate_quality(
            tech.name, goal, examples=examples_for_regime(examples, dataset_tokens, avg_tokens, tp.seq_len),
            lora_r=tp.lora_r if tech.method.lora else None, total_params=est.total_params,
            quantization=None if quant == "none" else quant, lora_targets=tp.lora_targets, lora_init=tp.lora_init,
        )
    return est.model_copy(update=update)


# --- grids ----------------------------------------------------------------------------------


@dataclass
class GridResult:
    """Column-oriented results of :func:`estimate_grid` (numpy arrays, one entry per plan)."""

    model: ModelProfile
    hardware: HardwareProfile
    columns: dict[str, Any]

    def __len__(self) -> int:
        return len(self.columns["peak_allocated_bytes"])

    def row(self, i: int) -> dict[str, Any]:
        return {k: (v[i].item() if hasattr(v[i], "item") else v[i]) for k, v in self.columns.items()}

    def rows(self) -> list[dict[str, Any]]:
        return [self.row(i) for i in range(len(self))]

    def estimate(self, i: int) -> Estimate:
        """The full :class:`Estimate` (with breakdown) for row ``i``."""
        row = self.row(i)
        fields = {k: row[k] for k in PLAN_FIELDS if k in row}
        return estimate(self.model, self.hardware, **fields)


MAX_GRID_ROWS = 5_000_000
"""Most plans one estimate_grid call evaluates (a few hundred MiB of columns)."""


def _check_grid_rows(axes: dict[str, list], num_axes: dict[str, list]) -> None:
    """The rules between numeric fields, over every combination of the axes: the extreme values
    decide (lamini_top_k <= lamini_num_experts; rl_max_new_tokens < seq_len for PPO/GRPO)."""
    def lo(k):
        return min(num_axes[k]) if k in num_axes else None

    def hi(k):
        return max(num_axes[k]) if k in num_axes else None

    if "lamini_top_k" in num_axes or "lamini_num_experts" in num_axes:
        make_plan(**{k: v for k, v in (("lamini_top_k", hi("lamini_top_k")),
                                        ("lamini_num_experts", lo("lamini_num_experts"))) if v is not None})
    if "rl_max_new_tokens" in num_axes or "seq_len" in num_axes:
        for t in axes.get("technique", ["lora"]):
            fields = {k: v for k, v in (("rl_max_new_tokens", hi("rl_max_new_tokens")), ("seq_len", lo("seq_len")))
                      if v is not None}
            make_plan(t, **fields)


def _grid_axes(axes: dict[str, Any]) -> dict[str, list]:
    """Check the axis names, make every axis a list and bound the number of combinations."""
    for k in axes:
        if k not in PLAN_FIELDS:
            make_plan(**{k: None})  # names the unknown field (and the closest ones)
    axes = {k: (list(v) if isinstance(v, (list, tuple, range)) and k != "lora_targets" else [v]) for k, v in axes.items()}
    if "lora_targets" in axes and isinstance(axes["lora_targets"][0], (list, tuple)) and len(axes["lora_targets"]) == 1:
        axes["lora_targets"] = [tuple(axes["lora_targets"][0])]
    rows = 1
    for k, vals in axes.items():
        if not vals:
            raise FtAdvisorError(k, "is an empty axis: give at least one value")
        rows *= len(vals)
    if rows > MAX_GRID_ROWS:
        raise FtAdvisorError("grid", f"{rows:,} combinations; at most {MAX_GRID_ROWS:,} per call")
    return axes


def _validate_numeric_axes(axes: dict[str, list], num_axes: dict[str, list]) -> None:
    """Validate every numeric value, and the cross-field bounds over the whole product."""
    # Validate the numeric values once each (ranges come from TrainingPlan's constraints), as
    # whole numbers: the grid evaluates them as float arrays.
    from ftadvisor.validate import integer

    for k, vals in num_axes.items():
        for v in vals:
            make_plan(**{k: v})
            integer(k, v)
    # Cross-field bounds over the whole product: every row is a plan that make_plan accepts.
    _check_grid_rows(axes, num_axes)


class _Num:
    """The plan fields of one categorical combination, numeric ones as arrays over the rows."""


def _grid_namespace(tp: TrainingPlan, tech: Any, axes: dict[str, list], flat: dict[str, Any]) -> _Num:
    """The plan of one categorical combination with its numeric fields replaced by the row arrays."""
    import numpy as np

    ns = _Num()
    for f in PLAN_FIELDS:
        setattr(ns, f, getattr(tp, f))
    for k, arr in flat.items():
        setattr(ns, k, arr)
    if tech.objective.generation and "rl_max_new_tokens" not in axes and "seq_len" in flat and len(flat["seq_len"]):
        # each row's own default (as make_plan gives it for that row's seq_len)
        ns.rl_max_new_tokens = np.asarray(default_rl_max_new_tokens(flat["seq_len"]), dtype=np.float64)
    return ns


def _grid_memory_columns(hw: HardwareProfile, ev: memory.Evaluation, n_num: int, expandable: bool = False,
                         varying: bool = False, trains_base: bool = False) -> dict[str, Any]:
    """The memory columns (peaks, device total, fits, trainable params, peak phase) of one evaluation."""
    import numpy as np

    totals = {name: sum(np.broadcast_to(np.asarray(v, dtype=np.float64), (n_num,)) for v in comp.values())
              for name, comp in ev.phases.items()}
    stacked = np.stack(list(totals.values()))
    allocated = stacked.max(axis=0)
    cpu = hw.vendor == "cpu"
    fitted = _fitted_slack(hw)
    base = fitted if fitted is not None else memory.DEFAULT_ALLOCATOR_SLACK
    reserved = allocated * (1 + (0.0 if cpu else allocator.reserved_slack(base, expandable, varying, trains_base)))
    runtime = 0.0 if cpu else hw.runtime_overhead_gib * 2**30
    paged = np.broadcast_to(np.asarray(ev.paged_bytes, dtype=np.float64), (n_num,))
    total = reserved + runtime + paged
    fits = (total <= hw.memory_bytes) | ((paged > 0) & (reserved + runtime <= hw.memory_bytes))
    return {
        "peak_allocated_bytes": allocated,
        "peak_reserved_bytes": reserved,
        "device_total_bytes": total,
        "fits": fits,
        "trainable_params": np.broadcast_to(np.asarray(ev.trainable_params, dtype=np.float64), (n_num,)),
        "peak_phase": np.asarray(list(totals))[stacked.argmax(axis=0)],
    }


def _combo_columns(mp: ModelProfile, hw: HardwareProfile, axes: dict[str, list], num_axes: dict[str, list],
                   cat: dict[str, Any], flat: dict[str, Any], n_num: int) -> dict[str, Any]:
    """Evaluate one categorical combination over every numeric row; its plan and memory columns."""
    import numpy as np

    first = {k: v[0] for k, v in num_axes.items()}
    tp = make_plan(**cat, **first)
    tech = parse_technique(tp.technique)
    memory.check_micro_batch(tech, min(num_axes.get("micro_batch_size", [tp.micro_batch_size])))
    lay = memory.build_layout(mp.arch, tech, hw, tp)
    ev = memory.evaluate(lay, _grid_namespace(tp, tech, axes, flat))
    _corrected(hw, lay, ev)
    memory_columns = _grid_memory_columns(hw, ev, n_num, lay.framework.allocator.expandable(tp), tp.varying_lengths,
                                          lay.technique.method.base_training != "none")
    # the node's host RAM and NVMe, as estimate() checks them (ftadvisor.host)
    host_ok, host_need = host.host_fits(
        hw, tp, host_parts=ev.host_parts, trainable_params=ev.trainable_params, total_params=float(ev.params.total),
        trainable_bytes=lay.trainable_bytes, compute_bytes=lay.c, device_total_bytes=memory_columns["device_total_bytes"])
    memory_columns["host_bytes_per_node"] = np.broadcast_to(np.asarray(host_need, dtype=np.float64), (n_num,))
    memory_columns["fits"] = memory_columns["fits"] & np.broadcast_to(np.asarray(host_ok), (n_num,))
    cols: dict[str, Any] = {}
    for k in PLAN_FIELDS:
        if k in flat:
            cols[k] = flat[k]
        elif k in cat:
            cols[k] = np.full(n_num, getattr(tp, k), dtype=object)
    cols.update(memory_columns)
    return cols


def estimate_grid(
    model: str | dict | ModelProfile,
    hardware: str | HardwareProfile = "a100-80gb",
    **axes: Any,
) -> GridResult:
    """Estimate every combination of the given plan axes at once.

    Each keyword is a plan field (``technique=["lora", "qlora"], micro_batch_size=[1, 2, 4]``);
    a scalar is a one-value axis. Categorical combinations are resolved once and the numeric
    axes are evaluated as numpy arrays, so large grids run at hundreds of thousands of plans
    per second.
    """
    import numpy as np

    mp = resolve_model(model)
    hw = resolve_hardware(hardware)
    axes = _grid_axes(axes)
    num_axes = {k: v for k, v in axes.items() if k in NUMERIC_FIELDS}
    cat_axes = {k: v for k, v in axes.items() if k not in NUMERIC_FIELDS}
    cat_keys = list(cat_axes)
    num_keys = list(num_axes)
    _validate_numeric_axes(axes, num_axes)
    mesh = np.meshgrid(*[np.asarray(num_axes[k], dtype=np.float64) for k in num_keys], indexing="ij") if num_keys else []
    flat = {k: m.ravel() for k, m in zip(num_keys, mesh)}
    n_num = len(next(iter(flat.values()))) if flat else 1

    out: dict[str, list] = {}
    for combo in itertools.product(*[cat_axes[k] for k in cat_keys]):
        cat = dict(zip(cat_keys, combo))
        for name, arr in _combo_columns(mp, hw, axes, num_axes, cat, flat, n_num).items():
            out.setdefault(name, []).append(arr)
    columns = {k: np.concatenate(v) for k, v in out.items()}
    return GridResult(model=mp, hardware=hw, columns=columns)
