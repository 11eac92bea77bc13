"""Techniques as compositions of a *method* and an *objective*, each one module of this package.

A technique name is ``objective+method`` (``dpo+qlora``), or just one part: a method alone trains
with the SFT objective (``lora`` = ``sft+lora``), an objective alone trains the whole model
(``dpo`` = ``dpo+full``).

- A **method** (``full``, ``lora``/``qlora``/``dora``, ``ia3``, ``adapter``, ``half_ft``,
  ``lamini``, ``moe``) says what is trained, what it adds and how the frozen base is stored.
- An **objective** (``sft``, ``dpo``, ``orpo``, ``kto``, ``ppo``, ``grpo``) says which models are resident,
  how many sequences one example becomes, whether there is a generation phase and the run shape.

The protocol is in :mod:`ftadvisor.techniques.base`. This module is the single registry:
``METHODS`` and ``OBJECTIVES`` list the declarations in order; a new technique is one module
listed in ``_METHOD_MODULES`` or ``_OBJECTIVE_MODULES`` plus its data (evidence entries, a sweep
line), and ``tests/test_techniques.py`` checks every registered part is complete.
"""

from __future__ import annotations

from dataclasses import dataclass

from ftadvisor.errors import FtAdvisorError
from ftadvisor.techniques import adapter, dpo, full, grpo, half_ft, ia3, kto, lamini, lora, moe, orpo, ppo, sft
from ftadvisor.techniques.base import Added, Method, Objective, Op

_METHOD_MODULES = (full, lora, ia3, adapter, half_ft, lamini, moe)
_OBJECTIVE_MODULES = (sft, dpo, orpo, kto, ppo, grpo)


def _declared(modules, one: str, many: str) -> list:
    out = []
    for mod in modules:
        out.extend(getattr(mod, many, None) or (getattr(mod, one),))
    return out


METHODS: dict[str, Method] = {m.name: m for m in _declared(_METHOD_MODULES, "METHOD", "METHODS")}
OBJECTIVES: dict[str, Objective] = {o.name: o for o in _declared(_OBJECTIVE_MODULES, "OBJECTIVE", "OBJECTIVES")}

# Short forms a user may type for a part.
ALIASES = {"half": "half_ft", "hft": "half_ft"}

# Names a user may type for a technique and their canonical form.
TECHNIQUE_NAMES = list(METHODS) + [o for o in OBJECTIVES if o != "sft"]


@dataclass(frozen=True)
class Technique:
    objective: Objective
    method: Method

    @property
    def name(self) -> str:
        if self.objective.name == "sft":
            return self.method.name
        if self.method.name == "full":
            return self.objective.name
        return f"{self.objective.name}+{self.method.name}"


def parse_technique(name: str) -> Technique:
    """``'dpo+qlora'`` -> Technique(dpo, qlora). Order of the parts does not matter."""
    if not isinstance(name, str) or not name.strip():
        raise FtAdvisorError("technique", "must be a non-empty name", TECHNIQUE_NAMES)
    if len(name) > 200:
        raise FtAdvisorError("technique", f"name too long ({len(name)} characters)", TECHNIQUE_NAMES)
    parts = [p.strip().lower().replace("-", "_") for p in name.split("+")]
    objective = method = None
    for p in parts:
        p = ALIASES.get(p, p)
        if p in OBJECTIVES:
            if objective is not None:
                raise FtAdvisorError("technique", f"{name!r} names two objectives")
            objective = OBJECTIVES[p]
        elif p in METHODS:
            if method is not None:
                raise FtAdvisorError("technique", f"{name!r} names two methods")
            method = METHODS[p]
        else:
            raise FtAdvisorError(
                "technique",
                f"unknown part {p!r} in {name!r}; combine an objective ({', '.join(OBJECTIVES)}) "
                f"with a method ({', '.join(METHODS)}), e.g. dpo+qlora",
            )
    return Technique(objective or OBJECTIVES["sft"], method or METHODS["full"])


def all_techniques() -> list[str]:
    """The techniques ``--technique all`` compares (every method with SFT, every objective in full and LoRA form)."""
    names = list(METHODS)
    for o in OBJECTIVES:
        if o != "sft":
            names += [o, f"{o}+lora"]
    return names


def techniques_for(arch) -> list[str]:
    """``all_techniques()`` less those the architecture cannot run (MoE-only methods on a dense model)."""
    return [n for n in all_techniques() if arch.is_moe or not parse_technique(n).method.requires_moe]


__all__ = ["Added", "METHODS", "Method", "OBJECTIVES", "Objective", "Op", "TECHNIQUE_NAMES", "Technique",
           "all_techniques", "parse_technique", "techniques_for"]
