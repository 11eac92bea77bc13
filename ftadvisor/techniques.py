"""Techniques as compositions of a *method* and an *objective*.

A technique name is ``objective+method`` (``dpo+qlora``), or just one part:
a method alone trains with the SFT objective (``lora`` = ``sft+lora``), an
objective alone trains the whole model (``dpo`` = ``dpo+full``).

- A **method** says what is trained and how the frozen base is stored.
- An **objective** says which models are resident, how many sequences one
  example becomes, and whether there is a generation phase.

This module is the single registry: the estimator, the calibration runner and
the launcher look techniques up here, and a test checks each registered part
is implemented everywhere it must be.
"""

from __future__ import annotations

from dataclasses import dataclass

from ftadvisor.errors import FtAdvisorError


@dataclass(frozen=True)
class Method:
    name: str
    summary: str
    peft: bool
    """Trains a small set of new parameters on a frozen base; the reference model is the base with adapters disabled."""
    default_quantization: str = "none"
    lora_like: bool = False
    """Adds LoRA matrices to the targeted linears (LoRA, QLoRA, DoRA)."""
    dora: bool = False
    requires_moe: bool = False
    source: str = ""


@dataclass(frozen=True)
class Objective:
    name: str
    summary: str
    sequences_per_example: int
    """Sequences one example becomes in a forward pass (2 for chosen+rejected)."""
    reference: str
    """'never', 'always' (unless precomputed) or 'if_kl' (GRPO with beta > 0)."""
    generation: bool
    """Has a sampling phase (PPO, GRPO)."""
    reward_model: bool = False
    value_model: bool = False
    source: str = ""
    data_formats: tuple[str, ...] = ()
    """Record formats (``ftadvisor.datasets.FORMATS``) the engine trains this objective on; the data
    checks of launch, the TUI and the engine all read this."""


METHODS: dict[str, Method] = {
    m.name: m
    for m in [
        Method("full", "all parameters trained", peft=False, source="standard fine-tuning"),
        Method(
            "lora",
            "low-rank adapters on a frozen base",
            peft=True,
            lora_like=True,
            source="Hu et al. 2021, LoRA (arXiv 2106.09685)",
        ),
        Method(
            "qlora",
            "LoRA over a 4-bit NF4 base with double quantization",
            peft=True,
            lora_like=True,
            default_quantization="nf4",
            source="Dettmers et al. 2023, QLoRA (arXiv 2305.14314)",
        ),
        Method(
            "dora",
            "weight-decomposed LoRA (magnitude vector + low-rank direction)",
            peft=True,
            lora_like=True,
            dora=True,
            source="Liu et al. 2024, DoRA (arXiv 2402.09353)",
        ),
        Method(
            "adapter",
            "Houlsby bottleneck adapters after attention and MLP, plus layer norms",
            peft=True,
            source="Houlsby et al. 2019, Parameter-Efficient Transfer Learning for NLP (arXiv 1902.00751)",
        ),
        Method(
            "half_ft",
            "half of the decoder layers trained, the rest frozen",
            peft=False,
            source="Hui et al. 2024, HFT: Half Fine-Tuning for LLMs (arXiv 2404.18466)",
        ),
        Method(
            "lamini",
            "bank of low-rank memory experts chosen per token by key similarity, on a frozen base",
            peft=True,
            source="Li et al. 2024, Banishing LLM Hallucinations Requires Rethinking Generalization (arXiv 2406.17642)",
        ),
        Method(
            "moe",
            "fine-tuning of a mixture-of-experts model; plan.moe_train picks all, attention, experts or router",
            peft=False,
            requires_moe=True,
            source="Shen et al. 2023, Mixture-of-Experts Meets Instruction Tuning (arXiv 2305.14705)",
        ),
    ]
}

OBJECTIVES: dict[str, Objective] = {
    o.name: o
    for o in [
        Objective("sft", "next-token cross-entropy", 1, "never", False, source="causal LM",
                  data_formats=("messages", "prompt_completion", "text", "tokens", "qa")),
        Objective(
            "dpo",
            "direct preference optimisation on chosen/rejected pairs",
            2,
            "always",
            False,
            source="Rafailov et al. 2023, DPO (arXiv 2305.18290); trl DPOTrainer",
            data_formats=("preference",),
        ),
        Objective(
            "orpo",
            "odds-ratio preference optimisation, no reference model",
            2,
            "never",
            False,
            source="Hong et al. 2024, ORPO (arXiv 2403.07691); trl ORPOTrainer",
            data_formats=("preference",),
        ),
        Objective(
            "ppo",
            "PPO with policy, value, reward and reference models",
            1,
            "always",
            True,
            reward_model=True,
            value_model=True,
            source="Ouyang et al. 2022 (InstructGPT); trl experimental PPOTrainer",
            data_formats=("prompt", "messages", "qa", "prompt_completion"),
        ),
        Objective(
            "grpo",
            "group-relative policy optimisation: groups of sampled completions per prompt",
            1,
            "if_kl",
            True,
            source="Shao et al. 2024, DeepSeekMath (arXiv 2402.03300); trl GRPOTrainer",
            data_formats=("prompt", "messages", "qa", "prompt_completion"),
        ),
    ]
}

# Names a user may type for a technique (the list) and their canonical form.
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
    parts = [p.strip().lower().replace("-", "_") for p in name.split("+")]
    objective = method = None
    for p in parts:
        if p in ("half", "hft"):
            p = "half_ft"
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
