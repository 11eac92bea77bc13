"""The LoRA family, as peft has it: LoRA (Hu et al. 2021), with options for a quantized base
(QLoRA, Dettmers et al. 2023) and for DoRA's magnitude vector (Liu et al. 2024). The three names a
user types are presets of one method: the memory, speed and quality models read ``lora``, ``dora``
and ``default_quantization`` instead of the name. How the matrices start is the plan's
``lora_init``, as peft's ``init_lora_weights`` (PiSSA, Meng et al. 2024: A and B from the top-r
singular vectors of each weight, the base keeps the residual -- same shapes, same cost per step).

What trains: LoRA matrices A (r x in) and B (out x r) on each targeted base linear (DoRA adds a
magnitude vector of out_features); the base is frozen, stored in the compute dtype or in
NF4/int8. The per-linear cost terms live with the linears in memory.py and speed.py, since they
apply to every adapted linear alike.
"""

from __future__ import annotations

from ftadvisor.techniques.base import Method


class LoRA(Method):
    name = "lora"
    summary = "low-rank adapters on a frozen base"
    source = "Hu et al. 2021, LoRA (arXiv 2106.09685)"
    evidence = ("lora.chat", "lora.small_data", "lora.low_rank.r4", "lora.low_rank.r8", "targets.attention_only",
                "pissa.vs_lora")
    train_hook = "ftadvisor.train.techniques:apply_lora"
    peft = True
    lora = True
    uses_rank = True
    offered_for_preference = True

    def recommend_reasons(self, r) -> list[str]:
        m = r.est.memory
        return [f"LoRA trains {r.est.trainable_params / 1e6:.0f}M parameters on a frozen base "
                f"({r.gib(m.device_total_bytes)} per GPU)"]

    def quality_terms(self, q) -> None:
        base = q.lora_base(q.rank)
        q.low_rank(base, self.dora)
        if self.dora:
            q.term("dora.gain", "DoRA vs LoRA at the same rank")
        if q.lora_init.startswith("pissa"):
            q.term("pissa.vs_lora", "PiSSA vs default LoRA initialisation at the same rank")
            q.note("PiSSA's best learning rate is about 10x below LoRA's (Lee et al. 2026); at one shared rate "
                   "it led LoRA by 5-23% on GSM8K (PiSSA Table 2), tuned the two land within 1-2%.")
        if q.targets == "attention":
            q.term("targets.attention_only", "attention-only vs all-linear LoRA")
            q.note("Adapting only the attention projections learns less than adapting all linear layers "
                   "(QLoRA §4; Biderman et al.: all > MLP > attention).")
        elif q.targets == "mlp":
            q.weak("MLP-only targets: ranked between attention-only and all-linear, not measured as a ratio")
        elif q.targets == "router":
            q.weak("router-only targets: no evidence")
        q.base = base


class QLoRA(LoRA):
    name = "qlora"
    summary = "LoRA over a 4-bit NF4 base with double quantization"
    source = "Dettmers et al. 2023, QLoRA (arXiv 2305.14314)"
    evidence = LoRA.evidence + ("quant.nf4", "quant.nf4.math_risk", "quant.int8")
    default_quantization = "nf4"
    quantized_base = True
    unquantized = "lora"

    def recommend_reasons(self, r) -> list[str]:
        m = r.est.memory
        plain = r.unquantized_estimate()
        if not r.unquantized_fits:
            return [f"QLoRA because LoRA needs {r.gib(plain.memory.device_total_bytes)} even at these settings "
                    f"on a {r.hw.memory_gib:.0f} GiB card; the 4-bit base needs {r.gib(m.weights_bytes)} of weights"]
        return [f"QLoRA stores the base in 4-bit NF4: {r.gib(m.weights_bytes)} of weights instead of "
                f"{r.gib(plain.memory.weights_bytes)} (QLoRA paper: near-equal quality on chat, flag for math)"]


class DoRA(LoRA):
    name = "dora"
    summary = "weight-decomposed LoRA (magnitude vector + low-rank direction)"
    source = "Liu et al. 2024, DoRA (arXiv 2402.09353)"
    evidence = LoRA.evidence + ("dora.gain", "dora.low_rank.r4", "dora.low_rank.r8")
    dora = True
    offered_for_preference = False

    def recommend_reasons(self, r) -> list[str]:
        return ["DoRA: LoRA with a learned magnitude, more robust at low rank (DoRA paper, Table 1)"]


METHODS = (LoRA(), QLoRA(), DoRA())
