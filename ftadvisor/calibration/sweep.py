"""Sweep files: what to measure. A YAML file in ``calibration/sweeps/`` validated by :class:`Sweep`
and expanded by :func:`expand` into :class:`Case` objects, each with a stable ``case_id``.

A sweep names one or more models (a profile id, or an inline ``config.json`` dict), the
hardware (a profile id, or ``auto``), the measurement backend, the number of warm-up and
measured optimizer steps, a per-case timeout, plan ``defaults``, and then ``cases`` (a list)
and/or a ``grid`` (the cartesian product of plan-field values). Keys of a case that are not
plan fields:

- ``model``: a key of ``models`` or a profile id (default: the sweep's ``model``);
- ``num_layers``: build the model with this many decoder layers (the prediction uses the same);
- ``num_processes``: processes launched with ``accelerate launch`` (DDP/FSDP); the plan's
  ``num_gpus`` is set to it;
- ``label``, ``backend``, ``steps``, ``warmup``, ``timeout_s``: per-case overrides.

Pure module: pydantic and pyyaml only.
"""

from __future__ import annotations

import hashlib
import itertools
import json
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from ftadvisor.errors import FtAdvisorError, from_validation

Backend = Literal["auto", "cpu", "cuda", "trace"]
BACKENDS = ("auto", "cpu", "cuda", "trace")
# Keys of a case (or grid axis) that are not TrainingPlan fields.
CASE_KEYS = ("model", "num_layers", "num_processes", "label", "backend", "steps", "warmup", "timeout_s")


class Sweep(BaseModel):
    """A sweep file (``calibration/sweeps/<name>.yaml``)."""

    model_config = ConfigDict(frozen=True, extra="forbid", use_attribute_docstrings=True)

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    """Sweep name; results go to ``calibration/results/<hardware>/<name>.jsonl``."""
    description: str = ""
    """What the sweep is for and how to run it."""
    hardware: str = "auto"
    """Hardware profile id the predictions use and results are filed under; ``auto`` detects it
    (the first GPU's name via nvidia-smi, else ``cpu``)."""
    backend: Backend = "auto"
    """Measurement backend: ``cuda``, ``cpu`` (tensor-level peak on the host), ``trace`` (fake
    tensors, no data), or ``auto`` (cuda when a GPU is visible, else cpu)."""
    steps: int = Field(default=3, ge=1, le=1000)
    """Optimizer steps measured (after the warm-up)."""
    warmup: int = Field(default=1, ge=1, le=1000)
    """Optimizer steps run before measuring; at least one, so optimizer state exists."""
    timeout_s: float = Field(default=600, gt=0)
    """Wall-clock limit of one case (the subprocess is killed and the case recorded as ``timeout``)."""
    seed: int = 0
    """Seed of the random weights and the synthetic data."""
    models: dict[str, str | dict[str, Any]] = {}
    """Named models: a profile id or an inline ``config.json`` dict."""
    model: str | dict[str, Any] | None = None
    """Default model of the cases: a key of ``models``, a profile id, or an inline config."""
    num_layers: int | None = Field(default=None, ge=1)
    """Default decoder-layer count to build (``None``: the config's own)."""
    defaults: dict[str, Any] = {}
    """Plan fields applied to every case."""
    cases: list[dict[str, Any]] = []
    """Explicit cases: plan fields plus the case keys listed in the module docstring."""
    grid: dict[str, list[Any]] = {}
    """Cartesian product of values (plan fields or case keys), appended after ``cases``."""

    @model_validator(mode="after")
    def _non_empty(self) -> "Sweep":
        if not self.cases and not self.grid:
            raise ValueError("a sweep needs 'cases' or a 'grid'")
        for k, v in self.grid.items():
            if not v:
                raise ValueError(f"grid axis {k!r} has no values")
        return self


class Case(BaseModel):
    """One measurement to run: a model, a plan and how to measure it."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    case_id: str
    """Stable hash of the model config, layer count, plan, backend and process count."""
    index: int
    """Position in the expanded sweep."""
    sweep: str
    label: str
    model_ref: str
    """What the sweep called the model (a ``models`` key or a profile id)."""
    config: dict[str, Any]
    """The model's ``config.json`` fields (before any layer override)."""
    num_layers: int | None
    """Decoder layers to build (None: the config's own)."""
    plan: dict[str, Any]
    """The fully resolved TrainingPlan as JSON (``TrainingPlan(**plan)`` rebuilds it)."""
    backend: Backend
    steps: int
    warmup: int
    timeout_s: float
    num_processes: int
    seed: int

    @property
    def technique(self) -> str:
        return self.plan["technique"]

    def config_at(self, num_layers: int | None = None) -> dict[str, Any]:
        """The config with ``num_layers`` (default: the case's) decoder layers."""
        return with_layers(self.config, num_layers if num_layers is not None else self.num_layers)

    def full_layers(self) -> int:
        cfg = self.config.get("text_config", self.config)
        return int(cfg.get("num_hidden_layers") or cfg.get("n_layer") or cfg.get("num_layers"))


def with_backend(case: Case, backend: str) -> Case:
    """The same case measured by another backend (``auto`` resolved on this machine): new id."""
    from ftadvisor.schema import TrainingPlan

    plan = TrainingPlan(**case.plan)
    plan_key = {**plan.model_dump(mode="json", exclude_defaults=True), "technique": plan.technique}
    cid = case_id_of(case.config, case.num_layers, plan_key, backend, case.num_processes)
    return case.model_copy(update={"backend": backend, "case_id": cid})


def with_layers(config: dict[str, Any], num_layers: int | None) -> dict[str, Any]:
    """A copy of ``config`` with ``num_hidden_layers`` set (inside ``text_config`` for gemma3)."""
    out = json.loads(json.dumps(config))
    if num_layers is None:
        return out
    target = out["text_config"] if isinstance(out.get("text_config"), dict) else out
    target["num_hidden_layers"] = int(num_layers)
    # Per-layer lists (Gemma-2/3 layer_types, sliding-window patterns) must match the depth.
    if isinstance(target.get("layer_types"), list):
        target["layer_types"] = target["layer_types"][: int(num_layers)]
    return out


def case_id_of(model_config: dict, num_layers: int | None, plan: dict, backend: str, num_processes: int) -> str:
    """First 16 hex digits of the SHA-256 of the canonical JSON of what defines a measurement.

    The plan enters with its technique and its non-default fields only, so adding a plan field
    with a default to ``TrainingPlan`` later does not change existing ids (resume keeps working)."""
    key = {
        "model": model_config,
        "num_layers": num_layers,
        "plan": plan,
        "backend": backend,
        "num_processes": num_processes,
    }
    text = json.dumps(key, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def sweeps_dir() -> Path:
    from ftadvisor.profiles import calibration_dir

    return calibration_dir() / "sweeps"


def available_sweeps() -> list[str]:
    d = sweeps_dir()
    return sorted(p.stem for p in d.glob("*.yaml")) if d.is_dir() else []


def sweep_path(name_or_path: str | Path) -> Path:
    """A sweep file by path, or by name under ``calibration/sweeps/``."""
    p = Path(name_or_path).expanduser()
    if p.is_file():
        return p
    cand = sweeps_dir() / f"{name_or_path}.yaml"
    if cand.is_file():
        return cand
    raise FtAdvisorError("sweep", f"no sweep file {str(name_or_path)!r}", available_sweeps())


def parse_sweep(data: Any, source: str = "sweep") -> Sweep:
    """Validate a sweep mapping (as read from YAML)."""
    if not isinstance(data, dict):
        raise FtAdvisorError(source, "must hold a mapping (name, model, cases ...)")
    try:
        sw = Sweep.model_validate(data)
    except ValidationError as err:
        raise FtAdvisorError(source, str(from_validation(err, default_field="sweep"))) from None
    expand(sw, source=source)  # every case must resolve
    return sw


def load_sweep(name_or_path: str | Path) -> Sweep:
    """Read and validate a sweep file (by path or by name under ``calibration/sweeps/``)."""
    path = sweep_path(name_or_path)
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise FtAdvisorError(str(path), f"is not valid YAML ({err})") from None
    if isinstance(data, dict) and "name" not in data:
        data = dict(data, name=path.stem)
    return parse_sweep(data, source=str(path))


def _resolve_model(sw: Sweep, ref: Any, where: str) -> tuple[str, dict[str, Any]]:
    from ftadvisor.profiles import resolve_model

    if ref is None:
        raise FtAdvisorError(f"{where}.model", "no model: set the sweep's 'model' or the case's")
    if isinstance(ref, dict):
        name, spec = "inline", ref
    elif isinstance(ref, str) and ref in sw.models:
        name, spec = ref, sw.models[ref]
    else:
        name, spec = str(ref), ref
    try:
        prof = resolve_model(spec)
    except FtAdvisorError as err:
        raise FtAdvisorError(f"{where}.model", str(err)) from None
    if isinstance(spec, str) and name == spec and prof.id and not prof.id.startswith("config:"):
        name = prof.id
    return name, dict(prof.config)


def expand(sw: Sweep, source: str = "sweep", backend: str | None = None) -> list[Case]:
    """The sweep's cases in order (explicit ``cases`` first, then the ``grid``), validated.

    ``backend`` overrides the sweep's backend for every case (the CLI's ``--backend``)."""
    from ftadvisor.estimator import make_plan
    from ftadvisor.profiles import resolve_model

    raw: list[tuple[str, dict[str, Any]]] = [(f"cases[{i}]", dict(c)) for i, c in enumerate(sw.cases)]
    if sw.grid:
        keys = list(sw.grid)
        for j, combo in enumerate(itertools.product(*[sw.grid[k] for k in keys])):
            raw.append((f"grid[{j}]", dict(zip(keys, combo))))

    out: list[Case] = []
    seen: dict[str, str] = {}
    for where, entry in raw:
        where = f"{source}: {where}"
        if not isinstance(entry, dict):
            raise FtAdvisorError(where, "a case must be a mapping of fields")
        fields = {**sw.defaults, **entry}
        case_keys = {k: fields.pop(k) for k in CASE_KEYS if k in fields}
        model_name, cfg = _resolve_model(sw, case_keys.get("model", sw.model), where)
        num_layers = case_keys.get("num_layers", sw.num_layers)
        if num_layers is not None and (not isinstance(num_layers, int) or num_layers < 1):
            raise FtAdvisorError(f"{where}.num_layers", f"must be a positive integer (got {num_layers!r})")
        nproc = case_keys.get("num_processes", 1)
        if not isinstance(nproc, int) or nproc < 1:
            raise FtAdvisorError(f"{where}.num_processes", f"must be a positive integer (got {nproc!r})")
        if nproc > 1:
            fields.setdefault("num_gpus", nproc)
            if fields["num_gpus"] != nproc:
                raise FtAdvisorError(f"{where}.num_gpus", f"must equal num_processes ({nproc})")
        bk = backend or case_keys.get("backend", sw.backend)
        if bk not in BACKENDS:
            raise FtAdvisorError(f"{where}.backend", f"unknown {bk!r}", list(BACKENDS))
        if bk == "trace" and nproc > 1:
            raise FtAdvisorError(f"{where}.backend", "trace measures one process; use cpu or cuda for DDP/FSDP")
        technique = fields.pop("technique", None)
        if technique is None:
            raise FtAdvisorError(f"{where}.technique", "missing")
        try:
            plan = make_plan(technique, None, **fields)
            # The plan must also make sense for this model (MoE-only techniques, LoRA targets ...).
            from ftadvisor.memory import build_layout
            from ftadvisor.profiles import resolve_hardware
            from ftadvisor.techniques import parse_technique

            arch = resolve_model(with_layers(cfg, num_layers)).arch
            build_layout(arch, parse_technique(plan.technique), resolve_hardware("cpu"), plan)
        except FtAdvisorError as err:
            raise FtAdvisorError(f"{where}.{err.field}", str(err).split(": ", 1)[-1], err.choices) from None
        plan_json = plan.model_dump(mode="json")
        plan_key = {**plan.model_dump(mode="json", exclude_defaults=True), "technique": plan.technique}
        cid = case_id_of(cfg, num_layers, plan_key, bk, nproc)
        if cid in seen:
            raise FtAdvisorError(where, f"duplicates {seen[cid]} (same model, plan and backend)")
        seen[cid] = where
        steps = case_keys.get("steps", sw.steps)
        warmup = case_keys.get("warmup", sw.warmup)
        timeout_s = case_keys.get("timeout_s", sw.timeout_s)
        for name, val, lo in (("steps", steps, 1), ("warmup", warmup, 1)):
            if not isinstance(val, int) or val < lo:
                raise FtAdvisorError(f"{where}.{name}", f"must be an integer >= {lo} (got {val!r})")
        if not isinstance(timeout_s, (int, float)) or timeout_s <= 0:
            raise FtAdvisorError(f"{where}.timeout_s", f"must be a positive number (got {timeout_s!r})")
        own = {k: v for k, v in entry.items() if k not in CASE_KEYS and k != "technique"}
        label = case_keys.get("label") or _default_label(plan.technique, model_name, num_layers, own, nproc)
        out.append(
            Case(
                case_id=cid,
                index=len(out),
                sweep=sw.name,
                label=str(label),
                model_ref=model_name,
                config=cfg,
                num_layers=num_layers,
                plan=plan_json,
                backend=bk,
                steps=steps,
                warmup=warmup,
                timeout_s=float(timeout_s),
                num_processes=nproc,
                seed=sw.seed,
            )
        )
    return out


def _default_label(technique: str, model: str, num_layers: int | None, fields: dict, nproc: int) -> str:
    parts = [technique, model + (f"@{num_layers}L" if num_layers else "")]
    parts += [f"{k}={v}" for k, v in sorted(fields.items()) if k not in ("num_gpus", "sharding") or nproc == 1]
    if nproc > 1 and fields.get("sharding"):
        parts.append(str(fields["sharding"]))
    if nproc > 1:
        parts.append(f"x{nproc}proc")
    return " ".join(parts)
