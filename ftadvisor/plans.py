"""Training plans from user values: the one place a plan is built and validated.

Sits between the technique registry and the cost models (memory, speed, quality), which take a
built :class:`~ftadvisor.schema.TrainingPlan`; ``ftadvisor.make_plan`` is this module's.
"""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from ftadvisor.errors import FtAdvisorError, from_validation
from ftadvisor.schema import TrainingPlan, check_prompt_room, default_rl_max_new_tokens
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
        from ftadvisor.errors import closest, shown

        key = unknown[0]
        if not isinstance(key, str):
            raise FtAdvisorError("plan", f"field names must be strings, got {shown(key)}")
        near = closest(key, PLAN_FIELDS) if len(key) <= 200 else []
        hint = f"; did you mean {', '.join(near)}" if near else ""
        raise FtAdvisorError(shown(key, 60).strip("'"), f"is not a plan field{hint}", None)
    tech = parse_technique(data.get("technique", "lora"))
    data["technique"] = tech.name
    if "micro_batch_size" not in data and tech.objective.min_micro_batch > TrainingPlan.model_fields["micro_batch_size"].default:
        # a technique's default micro-batch is the smallest its trainer accepts (KTO: 2)
        data["micro_batch_size"] = tech.objective.min_micro_batch
    if isinstance(data.get("lora_targets"), list):
        data["lora_targets"] = tuple(data["lora_targets"])
    if "framework" in data:
        from ftadvisor.frameworks import canonical_framework

        data["framework"] = canonical_framework(data["framework"])
    try:
        plan = TrainingPlan(**data)
    except ValidationError as err:
        raise from_validation(err, default_field="plan") from None
    if tech.objective.generation:
        if "rl_max_new_tokens" not in data:
            # the default completion leaves room for a prompt (512, or half of a shorter seq_len)
            object.__setattr__(plan, "rl_max_new_tokens", int(default_rl_max_new_tokens(plan.seq_len)))
        check_prompt_room(plan, tech.name, True)
    return plan


def read_plan_file(path, field: str = "--plan") -> dict[str, Any]:
    """A YAML (or JSON) file of plan fields as a dict: the one reader for ``--plan`` files, shipped
    example plans and run directories' ``plan.yaml``. Every way the file can be unreadable (missing,
    a directory, a name the OS refuses, not UTF-8, not YAML, nested too deeply, numbers too long to
    read, not a mapping, keys that are not names) is one :class:`FtAdvisorError` naming ``field``
    and the file."""
    from ftadvisor import validate

    data = validate.load_yaml_file(path, field)
    if data is None:
        return {}
    return validate.mapping(data, field, f"a mapping of plan fields ({validate.shown(str(path), 200)})")


PLAN_FILE_KEYS = ("model", "gpu", "hardware", "data", "plan", "run")
"""Keys a plan file may hold besides plan fields and run settings (``hardware`` = ``gpu``;
``plan:`` and ``run:`` are nested mappings, as in a run directory's plan.yaml)."""


def refuse_remote_code(fields: dict[str, Any], where: str) -> None:
    """``trust_remote_code`` is never taken from a file or ``--set`` (see launch.REMOTE_CODE_FLAG)."""
    if "trust_remote_code" in fields:
        raise FtAdvisorError(
            f"{where}trust_remote_code",
            "is never read from a plan file or --set; pass --trust-remote-code on the command line "
            "to let the model repository run its own code",
        )


def split_plan_file(raw: dict[str, Any], field: str = "--plan", run_fields_known: tuple[str, ...] = ()
                    ) -> dict[str, Any]:
    """The parts of a plan file, checked: ``{"model", "gpu", "data"}`` (a name or None),
    ``"plan"`` (plan fields, ``technique`` included) and ``"run"`` (run settings, by name; the
    caller validates them: launch.RUN_FIELDS and launch.RunSettings live a layer above).

    The one reading of a plan file for every command that takes one (estimate, launch): the flat
    form (plan fields, ``model``/``gpu``/``data`` and a ``run:`` mapping, as in examples/plans/) and
    the nested form (``plan:`` and ``run:``, as in a run directory's plan.yaml) are both accepted;
    any other key is an error naming it, and ``trust_remote_code`` is refused anywhere."""
    from ftadvisor import validate

    RUN_FIELDS = run_fields_known
    raw = validate.mapping(raw, field, "a mapping of plan fields")
    refuse_remote_code(raw, f"{field}: ")
    plan_fields = validate.mapping(raw.pop("plan", None) or {}, f"{field}: plan", "a mapping of plan fields")
    run_fields = validate.mapping(raw.pop("run", None) or {}, f"{field}: run", "a mapping of run settings")
    refuse_remote_code(plan_fields, f"{field}: plan.")
    refuse_remote_code(run_fields, f"{field}: run.")
    hardware = raw.pop("hardware", None)
    parts: dict[str, Any] = {}
    for key in ("model", "gpu", "data"):
        val = raw.pop(key, None)
        if key == "gpu" and val is None:
            val = hardware
        parts[key] = validate.name(f"{field}: {key}", val, none_ok=True)
    for k, v in raw.items():  # flat form: the rest are plan or run fields
        if k in RUN_FIELDS:
            run_fields[k] = v
        elif k in PLAN_FIELDS:
            plan_fields[k] = v
        else:
            from ftadvisor.errors import closest

            near = closest(k, [*PLAN_FIELDS, *RUN_FIELDS, *PLAN_FILE_KEYS]) if len(k) <= 200 else []
            raise FtAdvisorError(f"{field}: {validate.shown(k, 60).strip(chr(39))}",
                                 "is neither a plan field, a run setting nor one of " + ", ".join(PLAN_FILE_KEYS)
                                 + (f"; did you mean {', '.join(near)}" if near else ""))
    parts["plan"] = plan_fields
    parts["run"] = run_fields
    return parts
