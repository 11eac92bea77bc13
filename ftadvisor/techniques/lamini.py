"""Lamini-style memory tuning (Li et al. 2024, "Banishing LLM Hallucinations Requires Rethinking
Generalization", arXiv 2406.17642, section 4: a mixture of memory experts): in the top
``plan.lamini_layers`` decoder layers a bank of E low-rank experts (A: h x r, B: r x h) with E
routing keys of width h; each token selects the top-k experts by key similarity. The base is
frozen. Our module: ftadvisor/train/modules.py (MemoryExperts)."""

from __future__ import annotations

from ftadvisor.techniques.base import Added, Method, Op


class Lamini(Method):
    name = "lamini"
    summary = "bank of low-rank memory experts chosen per token by key similarity, on a frozen base"
    source = "Li et al. 2024, Banishing LLM Hallucinations Requires Rethinking Generalization (arXiv 2406.17642)"
    evidence = ("lamini.facts",)
    train_hook = "ftadvisor.train.techniques:apply_lamini"
    peft = True
    own_modules = True
    uses_rank = True
    preferred_format = "qa"
    retention_note = "lamini retention: frozen base like LoRA, not measured"
    offered_data_kinds = ("facts",)

    def recommend_reasons(self, r) -> list[str]:
        return ["memory experts add a bank of low-rank experts for exact recall of a fixed fact set "
                "(evidence: vendor only)"]

    def added_layers(self, arch, plan) -> int:
        return min(plan.lamini_layers, arch.num_layers)

    def added(self, lay, plan) -> Added:
        h, c, r = lay.arch.hidden_size, lay.c, plan.lora_r
        E, k = plan.lamini_num_experts, plan.lamini_top_k
        n = self.added_layers(lay.arch, plan)
        return Added(
            # the bank is a dense parameter, so its gradient and optimizer state are dense
            params=n * E * (2 * h * r + h),
            matmul_params=n * E * (2 * h * r + h),
            rows_cols=n * (E * (h + r) * 2 + E + h),
            largest=E * h * r,
            tensors=n * 3,
            layers=n,
            # the input kept for the key matmul (c h); per selected expert the gathered input and
            # output (2 c h), its fp32 gate (4) and the rank-r code (c r)
            saved_per_token=c * h + k * (2 * c * h + 4 + c * r),
            flops_per_token=n * (2.0 * h * E + k * 4.0 * h * r),
            top_only=True,
        )

    def block_ops(self, lay, plan, tokens) -> list[tuple[Op, float]]:
        """A memory-expert layer: key scores over E experts, the top-k selected experts' rank-r
        down/up projections, weighted sum."""
        h, c, r = lay.arch.hidden_size, lay.c, plan.lora_r
        E, k = plan.lamini_num_experts, plan.lamini_top_k
        T = tokens
        return [
            (Op(2, flops_mm=2.0 * T * h * E, weight_bytes=c * h * E, mm_tokens=T, kind="gemm"), 1.0),
            (Op(4, mem_bytes=12.0 * E * T), 0.0),
            (Op(4, flops_mm=T * k * 4.0 * h * r, weight_bytes=c * k * T * 2 * h * r, mem_bytes=T * k * c * (2 * h + 2 * r),
                mm_tokens=1.0, kind="adapter"), 1.0),
        ]

    def backward_depth_fraction(self, lay) -> float:
        # the memory experts sit in the top layers only: gradients need not go further down
        return lay.added_layers / lay.arch.num_layers

    def rank_matters(self, task: str) -> bool:
        return task != "facts"  # on facts the evidence is the memory-tuning claim, not a rank curve

    def quality_terms(self, q) -> None:
        if q.task == "facts":
            q.term("lamini.facts", "memory experts vs full FT on a fixed fact set")
            q.weak("memory tuning: the paper's design claim and a vendor's figure, no independent comparison")
            q.note("For facts that change, retrieval is the safer first choice.")
        else:
            base = q.lora_base(q.rank)
            base.label += " [memory experts treated as low-rank adapters]"
            q.weak("memory experts outside fact recall: no evidence, treated as low-rank adapters on a few layers")
            q.base = base


METHOD = Lamini()
