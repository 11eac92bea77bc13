"""Training plans from user values: the one place a plan is built and validated.

Sits between the technique registry and the cost models (memory, speed, quality), which take a
built :class:`~ftadvisor.schema.TrainingPlan`; ``ftadvisor.make_plan`` is this module's.
"""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from ftadvisor.errors import FtAdvisorError, from_validation
from ftadvisor.schema import TrainingPlan
from ftadvisor.techniques import parse_technique

PLAN_FIELDS = tuple(TrainingPlan.model_fields)
# Knobs evaluated as numbers (vectorised in grids); everything else is categorical.
NUMERIC_FIELDS = (
    "micro_batch_size",
    "seq_len",
    "gradient_accumulation_steps",
    "lora_r",
    "adapter_bottleneck",
    "lamini_num_experts",
    "lamini_top_k",
    "rl_max_new_tokens",
)


def make_plan(technique: str | None = None, plan: TrainingPlan | dict | None = None, **fields: Any) -> TrainingPlan:
    """Build a validated plan; errors name the field and its valid values."""
    data: dict[str, Any] = {}
    if isinstance(plan, TrainingPlan):
        data.update(plan.model_dump(exclude_unset=True))
    elif isinstance(plan, dict):
        data.update(plan)
    elif plan is not None:
        raise FtAdvisorError("plan", f"expected a TrainingPlan or dict, got {type(plan).__name__}")
    data.update(fields)
    if technique is not None:
        data["technique"] = technique
    unknown = [k for k in data if k not in PLAN_FIELDS]
    if unknown:
        from ftadvisor.errors import closest

        near = closest(unknown[0], PLAN_FIELDS)
        hint = f"; did you mean {', '.join(near)}" if near else ""
        raise FtAdvisorError(unknown[0], f"is not a plan field{hint}", None)
    tech = parse_technique(data.get("technique", "lora"))
    data["technique"] = tech.name
    if isinstance(data.get("lora_targets"), list):
        data["lora_targets"] = tuple(data["lora_targets"])
    try:
        return TrainingPlan(**data)
    except ValidationError as err:
        raise from_validation(err, default_field="plan") from None


def read_plan_file(path, field: str = "--plan") -> dict[str, Any]:
    """A YAML (or JSON) file of plan fields as a dict: the one reader for ``--plan`` files, shipped
    example plans and run directories' ``plan.yaml``. Every way the file can be unreadable (missing,
    a directory, a name the OS refuses, not UTF-8, not YAML, nested too deeply, not a mapping)
    is one :class:`FtAdvisorError` naming ``field`` and the file."""
    from pathlib import Path

    import yaml

    p = Path(path)
    try:
        if not p.is_file():
            raise FtAdvisorError(field, f"no such file {str(p)[:200]!r}")
        text = p.read_text(encoding="utf-8")
    except OSError as err:
        raise FtAdvisorError(field, f"cannot read {str(p)[:200]!r} ({err.strerror or type(err).__name__})") from None
    except UnicodeDecodeError:
        raise FtAdvisorError(field, f"{p} is not UTF-8 text") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise FtAdvisorError(field, f"{p} is not valid YAML ({str(err).splitlines()[0]})") from None
    except RecursionError:
        raise FtAdvisorError(field, f"{p} is nested too deeply") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise FtAdvisorError(field, f"{p} must hold a mapping of plan fields")
    return data
