"""(IA)^3, "Infused Adapter by Inhibiting and Amplifying Inner Activations" (Liu et al. 2022,
T-Few, arXiv 2205.05638, section 3.3): learned vectors that rescale the keys, the values and the
input of the feed-forward output projection; the base stays frozen. The cheapest PEFT method:
Llama-3.1-8B has 0.6M such parameters, against 42M for LoRA r=16.

As peft implements it (peft/tuners/ia3/layer.py ``Linear.forward``):
- on a key/value projection, the output is multiplied by a vector of ``out_features``
  (``ia3_l`` of shape (out, 1)): the multiply keeps the projection's output for the vector's
  gradient;
- on the feed-forward projection (``feedforward_modules``), the *input* is cast to the vector's
  dtype and multiplied by a vector of ``in_features`` before the frozen linear: the multiply
  keeps that cast copy.
The targets are peft's defaults for Llama-style models (peft/utils/constants.py
TRANSFORMERS_MODELS_TO_IA3_TARGET_MODULES_MAPPING: k_proj, v_proj, down_proj), found here by role
so that every architecture the estimator knows gets the same rule: the key/value projections
(a fused qkv projection as a whole, as peft does for Falcon) and each dense MLP's output
projection. Routed experts are fused parameters in transformers 5, which peft does not wrap.
"""

from __future__ import annotations

from ftadvisor.errors import FtAdvisorError
from ftadvisor.techniques.base import Added, Method, Op

# Attribute names of key/value projections (separate or fused with the query) across the
# transformers families: Llama/Mistral/Qwen/Gemma/Phi-3 k_proj/v_proj, GPT-NeoX and Falcon
# query_key_value, Phi-3 qkv_proj, MPT Wqkv, GPT-2-style c_attn, Baichuan W_pack.
KEY_VALUE_NAMES = ("k_proj", "v_proj", "key", "value", "query_key_value", "qkv_proj", "Wqkv", "c_attn", "W_pack")
FEEDFORWARD_SOURCES = ("mlp_mid", "shared_mid")  # the MLP's inner activation (ftadvisor.architecture)


def targets(arch) -> tuple[list, list]:
    """(linears whose output is rescaled, linears whose input is rescaled) of one architecture."""
    outs = [lin for lin in arch.linears if lin.group == "attention" and lin.name in KEY_VALUE_NAMES]
    ins = [lin for lin in arch.linears
           if lin.group in ("mlp", "shared_expert") and lin.input_source in FEEDFORWARD_SOURCES]
    if not outs:
        raise FtAdvisorError("technique", f"ia3 finds no key/value projection in {arch.model_type} "
                             f"(its attention linears: {', '.join(lin.name for lin in arch.linears if lin.group == 'attention')})")
    return outs, ins


def _out_bytes(lay) -> int:
    """Bytes per element of a frozen linear's output: the compute dtype, or fp32 next to a
    bitsandbytes base, whose linears return their (upcast, fp32) input's dtype (see memory._Saved)."""
    return 4 if (lay.quantization != "none" and lay.precision != "bf16-true") else lay.c


class IA3(Method):
    name = "ia3"
    summary = "(IA)^3: learned rescaling of keys, values and feed-forward activations"
    source = "Liu et al. 2022, Few-Shot Parameter-Efficient Fine-Tuning ((IA)^3, arXiv 2205.05638); peft IA3"
    evidence = ("ia3.vs_lora",)
    train_hook = "ftadvisor.techniques.ia3:apply"
    peft = True
    retention_note = "(IA)^3 retention: frozen base like LoRA, not measured"

    def recommend_reasons(self, r) -> list[str]:
        return [f"(IA)^3 trains only {r.est.trainable_params / 1e6:.2f}M scaling parameters: the smallest "
                "optimizer state and checkpoint of any method, below LoRA in quality (peft benchmark)"]

    def added_layers(self, arch, plan) -> int:
        return arch.num_layers

    def added(self, lay, plan) -> Added:
        arch = lay.arch
        L = arch.num_layers
        outs, ins = targets(arch)
        vec = [(lin, lin.out_features) for lin in outs] + [(lin, lin.in_features) for lin in ins]
        return Added(
            params=sum(lin.count * n for lin, n in vec),
            matmul_params=0.0,  # elementwise multiplies: autocast casts nothing
            rows_cols=sum(lin.count * (n + 1) for lin, n in vec),  # 2-D (n, 1) / (1, n) tensors
            largest=max(n for _, n in vec),
            tensors=sum(lin.count for lin, _ in vec),
            layers=L,
            # per layer: each rescaled output (kept by the multiply for the vector's gradient) and
            # each feed-forward input cast to the vector's dtype (kept likewise)
            saved_per_token=sum(lin.count / L * _out_bytes(lay) * lin.out_features for lin in outs)
            + sum(lin.count / L * lay.trainable_bytes * lin.in_features for lin in ins),
            flops_per_token=sum(lin.count * n for lin, n in vec),  # one multiply per element
        )

    def _kernels(self, lay) -> list[tuple[float, float]]:
        """(kernels, bytes moved per token) of each rescaling in one layer. peft starts the product
        from the integer 1 (one tiny multiply), casts where the vector's dtype differs from the
        activation's, and multiplies: read + write of each elementwise pass."""
        arch = lay.arch
        L = arch.num_layers
        outs, ins = targets(arch)
        tb, ob = lay.trainable_bytes, _out_bytes(lay)
        out = []
        for lin in outs:
            n = lin.out_features * lin.count / L
            cast = tb != ob  # the product promotes to the vector's dtype, cast back
            out.append((2 + cast, n * ((ob + max(ob, tb)) + (max(ob, tb) + ob if cast else 0))))
        for lin in ins:
            n = lin.in_features * lin.count / L
            cast = tb != lay.c
            out.append((2 + 2 * cast, n * (2 * tb + ((lay.c + tb) * 2 if cast else 0))))
        return out

    def layer_ops(self, lay, plan, tokens, resid_bytes) -> list[tuple[Op, float]]:
        return [(Op(units, mem_bytes=b * tokens), 0.0) for units, b in self._kernels(lay)]

    def layer_traffic_bytes(self, lay, plan, resid_bytes) -> float:
        return sum(b for _, b in self._kernels(lay))

    def quality_terms(self, q) -> None:
        base = q.lora_base(32)
        base.label += " [LoRA r=32 as the comparison point]"
        q.term("ia3.vs_lora", "(IA)^3 vs LoRA r=32")
        q.weak("(IA)^3 on decoder LLMs: one benchmark (peft MetaMathQA, Llama-3.2-3B), one run per setting")
        q.note("(IA)^3 needs a far higher learning rate than LoRA: peft's benchmark went from 0.31 to 0.40 "
               "GSM8K at 10x its default (1e-3).")
        q.base = base


METHOD = IA3()


def apply(model, ctx, wrap: bool = True):
    """peft IA3 on the targets above (the engine calls this hook; peft imported here). Over a
    bitsandbytes base the model is prepared for k-bit training first, as for QLoRA."""
    from peft import IA3Config, get_peft_model, inject_adapter_in_model, prepare_model_for_kbit_training

    outs, ins = targets(ctx.arch)
    if ctx.quantization != "none":
        model = prepare_model_for_kbit_training(
            model,
            use_gradient_checkpointing=ctx.plan.gradient_checkpointing,
            gradient_checkpointing_kwargs={"use_reentrant": False},
        )
    names = sorted({lin.name for lin in outs + ins})
    cfg = IA3Config(
        target_modules=names,
        feedforward_modules=sorted({lin.name for lin in ins}),
        task_type="CAUSAL_LM" if wrap else None,
    )
    if wrap:
        return get_peft_model(model, cfg)
    for p in model.parameters():
        p.requires_grad_(False)
    return inject_adapter_in_model(cfg, model)
