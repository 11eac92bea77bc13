"""Bottleneck adapters (Houlsby et al. 2019, "Parameter-Efficient Transfer Learning for NLP",
arXiv 1902.00751): two small MLPs per decoder layer, after attention and after the MLP, each a
down projection h -> m, a nonlinearity and an up projection m -> h with biases, added to the
residual stream; the layer norms train too (section 2.1). Our module: ftadvisor/train/modules.py."""

from __future__ import annotations

from ftadvisor.techniques.base import Added, Method, Op

PER_LAYER = 2  # after attention and after the MLP (Houlsby et al. 2019, Fig. 2)


class Adapter(Method):
    name = "adapter"
    summary = "Houlsby bottleneck adapters after attention and MLP, plus layer norms"
    source = "Houlsby et al. 2019, Parameter-Efficient Transfer Learning for NLP (arXiv 1902.00751)"
    evidence = ("adapter.vs_lora", "adapter.encoder_bound")
    train_hook = "ftadvisor.train.techniques:apply_adapter"
    peft = True
    own_modules = True
    norm_training = "all"
    retention_note = "adapter retention: frozen base like LoRA, not measured"

    def recommend_reasons(self, r) -> list[str]:
        return ["bottleneck adapters: modular, not mergeable into the weights (adds inference latency)"]

    def added_layers(self, arch, plan) -> int:
        return arch.num_layers

    def added(self, lay, plan) -> Added:
        h, L, c = lay.arch.hidden_size, lay.arch.num_layers, lay.c
        m = plan.adapter_bottleneck
        return Added(
            params=PER_LAYER * L * (2 * h * m + m + h),  # down h x m + m bias, up m x h + h bias
            matmul_params=PER_LAYER * L * 2 * h * m,
            rows_cols=PER_LAYER * L * 2 * (h + m),
            tensors=PER_LAYER * L * 4,
            layers=self.added_layers(lay.arch, plan),
            # per adapter: its input copy (c h) kept for the down projection's weight gradient, the
            # activation's input and the up projection's input (c m each)
            saved_per_token=PER_LAYER * (c * h + 2 * c * m),
            flops_per_token=PER_LAYER * L * 4.0 * h * m,
        )

    def layer_traffic_bytes(self, lay, plan, resid_bytes) -> float:
        h, c = lay.arch.hidden_size, lay.c
        return PER_LAYER * (2.0 * c * plan.adapter_bottleneck + 3.0 * resid_bytes * h)

    def layer_ops(self, lay, plan, tokens, resid_bytes) -> list[tuple[Op, float]]:
        h, c, T = lay.arch.hidden_size, lay.c, tokens
        m = plan.adapter_bottleneck
        ops: list[tuple[Op, float]] = []
        for _ in range(PER_LAYER):  # down, act, up, add
            ops.append((Op(2, flops_mm=2.0 * T * 2 * h * m, weight_bytes=c * 2 * h * m, mm_tokens=T, kind="gemm"), 1.0))
            ops.append((Op(2, mem_bytes=(2.0 * c * m + 3.0 * resid_bytes * h) * T), 0.0))
        return ops

    def quality_terms(self, q) -> None:
        base = q.lora_base(32)
        base.label += " [LoRA r=32 as the comparison point]"
        q.term("adapter.vs_lora", "bottleneck adapter vs LoRA r=32")
        if q.method_task == "chat":
            # Houlsby et al.: within 0.4% of full FT on GLUE (an encoder); only as the high end on NLU-like tasks.
            q.final_high("adapter.encoder_bound")
        q.weak("bottleneck adapters on decoder LLMs: one comparison (LLM-Adapters), no full-FT baseline")
        q.note("Adapters stay in the forward pass (not mergeable), adding inference latency.")
        q.base = base


METHOD = Adapter()
