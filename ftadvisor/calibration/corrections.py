"""Corrections fitted from calibration results (``calibration/corrections/<hardware>.yaml``):
load, validate, apply. Pure: pydantic and pyyaml only, no file access at import.

What a correction changes (``ftadvisor calibrate fit`` writes the numbers):

- ``activations_scale`` multiplies the token-proportional terms the model counts tensor by
  tensor but cannot see exactly (``activations``, ``logits``, ``generation_cache``);
- ``overhead_scale`` multiplies the transient/framework terms (``quantization_workspace``,
  ``communication``, ``framework_overhead``);
- ``residual_bytes`` is a constant added to ``framework_overhead`` (allocations of no modelled
  component: RNG state, small buffers, the loss scaler ...);
- weights, gradients, optimizer state, master weights and extra models are exact counts and are
  never scaled;
- ``allocator_slack`` (reserved / allocated - 1, measured on CUDA) replaces the estimator's
  default slack when present.

How the estimator uses it (``ftadvisor/estimator.py``)::

    from ftadvisor.calibration.corrections import apply_corrections, load_corrections
    corr = load_corrections(hw.id)                       # None when no file: nothing changes
    if corr is not None:
        notes = set()
        for phase, comps in ev.phases.items():           # correct every phase, then take the peak
            ev.phases[phase], note = apply_corrections(comps, lay.technique.name, corr)
            notes.add(note)
        slack = corr.allocator_slack if corr.allocator_slack is not None else DEFAULT_ALLOCATOR_SLACK
        # ... Estimate(corrections=tuple(sorted(notes)), ...)
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ftadvisor.errors import FtAdvisorError, from_validation

SCHEMA_VERSION = 1
# Component groups (names as in ftadvisor.memory.COMPONENTS; a trailing "_bytes" is accepted).
ACTIVATION_TERMS = ("activations", "logits", "generation_cache")
OVERHEAD_TERMS = ("quantization_workspace", "communication", "framework_overhead")
RESIDUAL_TERM = "framework_overhead"
# Below this many samples a technique's in-sample error says nothing (one sample is fitted
# exactly: 0%), so the error reported "after correction" is its leave-one-out error instead.
MIN_IN_SAMPLE = 3


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", use_attribute_docstrings=True)


class TechniqueCorrection(_Model):
    """Coefficients for one technique (or the pooled default)."""

    activations_scale: float = Field(gt=0, le=100)
    """Multiplies activations, logits and generation cache."""
    overhead_scale: float = Field(ge=0, le=100)
    """Multiplies quantization workspace, communication and framework overhead."""
    residual_bytes: float = Field(ge=-(2**40), le=2**40)
    """Added to the framework overhead (bytes; may be negative)."""
    mfu: float | None = Field(default=None, ge=0, le=1)
    """Achieved model-FLOPs utilisation (median over timed samples); None without timings."""
    mfu_samples: int = Field(default=0, ge=0)
    """Samples behind ``mfu``."""
    samples: int = Field(ge=0)
    """Measured cases behind the memory coefficients."""
    mdape_before: float | None = Field(default=None, ge=0)
    """Median absolute % error of peak allocated memory, uncorrected (in-sample)."""
    mdape_after: float | None = Field(default=None, ge=0)
    """The same after correction (in-sample)."""
    max_ape_after: float | None = Field(default=None, ge=0)
    """Largest absolute % error after correction (in-sample)."""
    mdape_loo: float | None = Field(default=None, ge=0)
    """Median absolute % error leave-one-out (each sample corrected by a fit without it)."""


class ErrorSummary(_Model):
    """Peak-memory error over every sample of a fit: the figures ``calibrate fit`` prints and
    ``calibrate report`` shows in its ``all`` row (both from ``ftadvisor.calibration.fit.error_summary``)."""

    samples: int = Field(ge=0)
    """Samples (status ok, measured and predicted)."""
    mdape_before: float = Field(ge=0)
    """Median absolute % error of the peak, uncorrected."""
    mdape_after: float = Field(ge=0)
    """After correction, per sample: in-sample where its technique has at least ``MIN_IN_SAMPLE``
    samples, else leave-one-out (an in-sample error there is near 0 by construction)."""
    mdape_in_sample: float = Field(ge=0)
    """After correction, in-sample for every sample (optimistic)."""
    mdape_loo: float = Field(ge=0)
    """After correction, leave-one-out for every sample."""
    loo_samples: int = Field(ge=0)
    """Samples whose ``mdape_after`` figure is leave-one-out."""


def reported_after(tc: TechniqueCorrection) -> tuple[float | None, str]:
    """The honest "after correction" figure of one entry and what it is: ``(mdape_after,
    "in-sample")`` with at least ``MIN_IN_SAMPLE`` samples, else ``(mdape_loo, "leave-one-out")``
    (None when the file has no leave-one-out figure)."""
    if tc.samples >= MIN_IN_SAMPLE:
        return tc.mdape_after, "in-sample"
    return tc.mdape_loo, "leave-one-out"


class Corrections(_Model):
    """A corrections file for one hardware profile."""

    schema_version: int = SCHEMA_VERSION
    """Format version."""
    hardware: str
    """Hardware profile id the results were measured on."""
    created_at: str
    """UTC time of the fit (ISO 8601)."""
    sources: tuple[str, ...]
    """Results files the fit read."""
    backends: tuple[str, ...]
    """Measurement backends of the samples (cuda, cpu, trace)."""
    allocator_slack: float | None = Field(default=None, ge=0, le=10)
    """Median of reserved/allocated - 1 over CUDA samples; None without CUDA samples."""
    allocator_slack_samples: int = Field(default=0, ge=0)
    """Samples behind ``allocator_slack``."""
    default: TechniqueCorrection
    """Pooled over every technique; used for techniques without their own entry."""
    techniques: dict[str, TechniqueCorrection] = {}
    """Per canonical technique name (``lora``, ``dpo+lora`` ...)."""
    summary: ErrorSummary | None = None
    """Error over every sample (what ``fit`` prints); None in files from before it was recorded."""
    notes: str = ""
    """How the fit was made."""


def corrections_dir() -> Path:
    from ftadvisor.profiles import calibration_dir

    return calibration_dir() / "corrections"


def corrections_path(hardware_id: str) -> Path:
    if not hardware_id or "/" in hardware_id or hardware_id.startswith("."):
        raise FtAdvisorError("hardware", f"{hardware_id!r} cannot name a corrections file")
    return corrections_dir() / f"{hardware_id}.yaml"


def parse_corrections(data: Any, source: str = "corrections") -> Corrections:
    """Validate a corrections mapping (as read from YAML)."""
    if not isinstance(data, dict):
        raise FtAdvisorError(source, "must hold a mapping")
    try:
        return Corrections.model_validate(data)
    except ValidationError as err:
        raise from_validation(err, f"{source}: ", default_field="corrections") from None


def read_corrections(path: str | os.PathLike) -> Corrections:
    import yaml

    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise FtAdvisorError(str(path), f"is not valid YAML ({err})") from None
    return parse_corrections(data, str(path))


@lru_cache(maxsize=64)
def _load_cached(path: str, mtime_ns: int) -> Corrections:
    return read_corrections(path)


def load_corrections(hardware_id: str) -> Corrections | None:
    """The corrections for a hardware profile, or None when ``calibration/corrections/<id>.yaml``
    does not exist. Cached per file version (a refit is picked up without a restart)."""
    path = corrections_path(hardware_id)
    try:
        mtime = path.stat().st_mtime_ns
    except FileNotFoundError:
        return None
    return _load_cached(str(path), mtime)


def correction_for(technique: str, corr: Corrections) -> tuple[str, TechniqueCorrection]:
    """The entry used for ``technique``: its own when fitted, else the pooled default."""
    if technique in corr.techniques:
        return technique, corr.techniques[technique]
    return "default", corr.default


def _group(name: str) -> str | None:
    base = name[:-6] if name.endswith("_bytes") else name
    if base in ACTIVATION_TERMS:
        return "act"
    if base in OVERHEAD_TERMS:
        return "ovh"
    return None


def apply_corrections(
    components: dict[str, float], technique: str, corr: Corrections
) -> tuple[dict[str, float], str]:
    """Return corrected components (same keys) and a one-line note saying what was applied.

    ``components`` maps component names (``weights``, ``activations`` ..., with or without a
    ``_bytes`` suffix) to bytes; values may be numbers or numpy arrays. Unknown keys pass
    through unchanged."""
    key, tc = correction_for(technique, corr)
    out: dict[str, float] = {}
    residual_key = None
    for name, val in components.items():
        g = _group(name)
        if g == "act":
            out[name] = val * tc.activations_scale
        elif g == "ovh":
            out[name] = val * tc.overhead_scale
        else:
            out[name] = val
        if (name[:-6] if name.endswith("_bytes") else name) == RESIDUAL_TERM:
            residual_key = name
    if residual_key is None:
        residual_key = RESIDUAL_TERM
        out[residual_key] = 0.0
    out[residual_key] = out[residual_key] + tc.residual_bytes
    quality = ""
    after, kind = reported_after(tc)
    if tc.mdape_before is not None and after is not None:
        quality = f", peak MdAPE {tc.mdape_before:.1f}% -> {after:.1f}%"
        if kind == "leave-one-out":
            quality += " leave-one-out"
        elif tc.mdape_loo is not None:
            quality += f" ({tc.mdape_loo:.1f}% leave-one-out)"
    note = (
        f"calibration/corrections/{corr.hardware}.yaml [{key}]: activations x{tc.activations_scale:.3f}, "
        f"overhead x{tc.overhead_scale:.3f}, {tc.residual_bytes / 2**20:+.1f} MiB "
        f"(n={tc.samples}{quality})"
    )
    return out, note
