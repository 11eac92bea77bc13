"""Writing a plan file: the YAML ``ftadvisor launch`` and ``ftadvisor export`` read.

    ftadvisor recommend -m llama-3.1-8b -g rtx4090 --save-plan plan.yaml [--pick 2] [--data chat.jsonl]
    ftadvisor launch plan.yaml --data chat.jsonl          # or: ftadvisor export plan.yaml --to axolotl ...

The file has the flat form of examples/plans/*.yaml (ftadvisor.plans.split_plan_file reads it):
``model``, ``gpu``, ``data`` (or a comment where the data is still to be named), the plan fields that
differ from their defaults, and a ``run:`` mapping. Only fields that change the plan are written,
and the writer checks that reading the file back gives the same plan, field for field.

Pure module: pydantic models in, text out; the only file access is :func:`write_plan_file`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ftadvisor.errors import FtAdvisorError
from ftadvisor.schema import TrainingPlan
from ftadvisor.validate import write_text_atomic

DATA_PLACEHOLDER = ("# data: your training data, a .jsonl/.json/.csv/.parquet file or a Hugging Face dataset id\n"
                    "#       (or pass --data to ftadvisor launch / ftadvisor export)\n")
"""What a plan file says instead of ``data:`` when no data was named yet (build_spec then asks for --data)."""


def plan_fields(plan: TrainingPlan) -> dict[str, Any]:
    """The fewest plan fields that rebuild ``plan`` through ``make_plan`` (the reader of every plan file):
    ``technique``, the fields set away from the TrainingPlan defaults, and any field whose default
    ``make_plan`` derives differently for this technique (KTO's micro-batch); values ``make_plan``
    derives by itself are left out."""
    from ftadvisor.plans import make_plan

    full = plan.model_dump(mode="json")
    defaults = TrainingPlan.model_fields
    out: dict[str, Any] = {"technique": full["technique"]}
    out.update({k: v for k, v in full.items() if k != "technique" and _json(defaults[k].get_default(call_default_factory=True)) != v})
    rebuilt = make_plan(plan=out).model_dump(mode="json")
    out.update({k: full[k] for k in full if rebuilt[k] != full[k]})
    for k in [k for k in out if k != "technique"]:
        # a value make_plan derives anyway (GRPO's completion length from seq_len) is left out, so an
        # edit of seq_len in the file moves it too
        trial = {j: v for j, v in out.items() if j != k}
        if make_plan(plan=trial).model_dump(mode="json") == full:
            out = trial
    if make_plan(plan=out).model_dump(mode="json") != full:  # cannot happen unless make_plan is not idempotent
        raise FtAdvisorError("plan", "the plan does not survive writing it as a file (make_plan changed a field)")
    return {k: out[k] for k in full if k in out}  # in the schema's field order


def _json(value: Any) -> Any:
    """A default value as model_dump(mode="json") writes it (tuples as lists)."""
    return list(value) if isinstance(value, tuple) else value


def plan_file_text(plan: TrainingPlan, *, model: str, gpu: str | None = None, data: str | None = None,
                   run: dict[str, Any] | None = None, header: list[str] | tuple[str, ...] = ()) -> str:
    """The plan file for ``plan``: ``header`` lines as comments, then model/gpu/data, the plan fields
    (:func:`plan_fields`) and ``run:`` settings."""
    import yaml

    head = "".join(f"# {line}\n" if line else "#\n" for line in header)
    top: dict[str, Any] = {"model": model}
    if gpu:
        top["gpu"] = gpu
    body = yaml.safe_dump(top, sort_keys=False)
    body += yaml.safe_dump({"data": data}, sort_keys=False) if data else DATA_PLACEHOLDER
    body += yaml.safe_dump(plan_fields(plan), sort_keys=False)
    if run:
        body += yaml.safe_dump({"run": dict(run)}, sort_keys=False)
    return head + body


def write_plan_file(path: str | os.PathLike, text: str, field: str = "--save-plan") -> Path:
    """Write ``text`` to ``path`` atomically (a temporary file in the same folder, fsynced, then renamed
    over it: a reader sees the old file or the new one, never half of one). Missing parent folders
    are created. Any OS refusal is one error naming ``field``."""
    out = Path(path).expanduser()
    if out.is_dir():
        raise FtAdvisorError(field, f"{out} is a directory; name a file, e.g. {out / 'plan.yaml'}")
    try:
        write_text_atomic(out, text)
    except OSError as err:
        raise FtAdvisorError(field, f"cannot write {out}: {err.strerror or err}") from None
    return out.absolute()
