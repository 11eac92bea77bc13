"""Fine-tuning a mixture-of-experts model (Shen et al. 2023, "Mixture-of-Experts Meets Instruction
Tuning", arXiv 2305.14705): all parameters, or only the attention, the experts or the router
(``plan.moe_train``)."""

from __future__ import annotations

from ftadvisor.techniques.base import Method


class MoE(Method):
    name = "moe"
    summary = "fine-tuning of a mixture-of-experts model; plan.moe_train picks all, attention, experts or router"
    source = "Shen et al. 2023, Mixture-of-Experts Meets Instruction Tuning (arXiv 2305.14705)"
    evidence = ("moe.full",)
    train_hook = "ftadvisor.train.techniques:apply_full"
    requires_moe = True
    base_training = "all"
    retention = "full"
    retention_note = "MoE retention: not measured, full-FT figures used"
    recommend_optimizers = ("adamw", "adamw_8bit", "paged_adamw_8bit")

    def recommend_reasons(self, r) -> list[str]:
        return [f"MoE fine-tuning of all {r.est.total_params / 1e9:.0f}B parameters (router included)"]

    def quality_terms(self, q) -> None:
        q.term("moe.full", "all parameters of the MoE model trained")
        q.note("Instruction-tune a MoE on large, diverse data (FLAN-MoE); avoid small single-task sets.")
        if q.regime == "small":
            q.weak("MoE on small data: sparse models overfit small fine-tuning sets (ST-MoE)")


METHOD = MoE()
