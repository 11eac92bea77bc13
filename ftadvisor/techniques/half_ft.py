"""Half fine-tuning (Hui et al. 2024, HFT, arXiv 2404.18466): the base weights of half of the
decoder layers train (every other layer, ``plan.half_ft_fraction``), the rest stay frozen; norms
train inside the trained layers only, the final norm and the embeddings do not."""

from __future__ import annotations

from ftadvisor.errors import FtAdvisorError
from ftadvisor.techniques.base import Method


class HalfFT(Method):
    name = "half_ft"
    summary = "half of the decoder layers trained, the rest frozen"
    source = "Hui et al. 2024, HFT: Half Fine-Tuning for LLMs (arXiv 2404.18466)"
    evidence = ("half_ft.vs_full",)
    train_hook = "ftadvisor.train.techniques:apply_half_ft"
    base_training = "half_layers"
    norm_training = "trained_layers"
    retention = "between"
    retention_note = "half fine-tuning retention: placed between full FT and LoRA"
    recommend_optimizers = ("adamw", "adamw_8bit", "paged_adamw_8bit")

    def recommend_reasons(self, r) -> list[str]:
        return ["half fine-tuning trains half the layers and keeps more of the base model's skills (HFT paper)"]

    def trained_layers(self, arch, plan) -> int:
        n = round(arch.num_layers * plan.half_ft_fraction)
        if n == 0:
            raise FtAdvisorError("half_ft_fraction", f"trains no layer of {arch.num_layers}")
        return n

    def quality_terms(self, q) -> None:
        q.term("half_ft.vs_full", "half fine-tuning vs full FT")
        q.weak("half fine-tuning: a single group's evidence")


METHOD = HalfFT()
