"""How each method and objective of ``ftadvisor.techniques`` is applied to a real model.

The training hooks the technique declarations in ``ftadvisor.techniques`` name:

- ``apply_*``: which parameters train, which modules are added, how the base is stored (the
  methods' ``train_hook``s);
- ``train_*``: which trl trainer runs, with which extra models (the objectives' ``train_hook``s).

The semantics mirror the memory model (``ftadvisor/memory.py`` ``build_layout`` and
``count_params``) so that a session's trainable-parameter count equals
``ftadvisor.estimate(...).trainable_params`` for the same config and plan.
"""

from __future__ import annotations

import copy
import os
import re
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import nn

from ftadvisor.errors import FtAdvisorError
from ftadvisor.train import modules as mods

# --- parameter groups -----------------------------------------------------------------------

# Decoder layer index in a parameter path: model.layers.N (Llama family, Phi), gpt_neox.layers.N,
# transformer.h.N (Falcon).
_LAYER_RE = re.compile(r"\.(?:layers|h)\.(\d+)\.")


def _is_norm(mod: nn.Module) -> bool:
    return isinstance(mod, nn.LayerNorm) or "norm" in type(mod).__name__.lower()


def module_group(path: str, mod: nn.Module, out_emb: nn.Module | None, head_names=("lm_head", "score")) -> str:
    """The group of a module's own parameters, by its position in a HF decoder (the same groups as
    ``ftadvisor.schema.LinearSpec.group`` plus embed / lm_head / norm / other).

    Transformers 5 keeps routed experts as fused 3-D parameters under ``...mlp.experts`` and the
    router under ``...mlp.gate`` (a TopKRouter); Qwen2-MoE's ``shared_expert_gate`` counts as a
    router, as in ``ftadvisor/architecture.py``.
    """
    if mods.PREFIX in path:
        return "ours"
    leaf = path.rsplit(".", 1)[-1]
    if _is_norm(mod):
        return "norm"
    if isinstance(mod, nn.Embedding):
        return "embed"
    if mod is out_emb or leaf in head_names:
        return "lm_head"
    if not _LAYER_RE.search("." + path + "."):
        return "other"
    if "shared_expert_gate" in path:
        return "router"
    if ".shared_expert" in path:
        return "shared_expert"
    if ".experts" in path:
        return "expert"
    if leaf in ("gate", "router") or "router" in type(mod).__name__.lower():
        return "router"
    if "attn" in path or "attention" in path:
        return "attention"
    return "mlp"


def named_param_groups(model: nn.Module) -> list[tuple[str, nn.Parameter, str, int | None]]:
    """(name, parameter, group, decoder-layer index or None) for every parameter, each once."""
    out_emb = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    seen: set[int] = set()
    rows = []
    for path, mod in model.named_modules():
        for pname, p in mod.named_parameters(recurse=False):
            if id(p) in seen:
                continue
            seen.add(id(p))
            m = _LAYER_RE.search("." + path + ".")
            rows.append((f"{path}.{pname}" if path else pname, p, module_group(path, mod, out_emb), int(m.group(1)) if m else None))
    return rows


MOE_SELECTION: dict[str, tuple[str, ...] | None] = {
    # plan.moe_train -> groups trained (None: everything). Same split as memory.build_layout.
    "all": None,
    "attention": ("attention",),
    "experts": ("expert", "shared_expert"),
    "router": ("router",),
}


def half_ft_layers(num_layers: int, fraction: float) -> list[int]:
    """Layers half fine-tuning trains: round(L·f) of them spread evenly from layer 0 (every other
    layer at f = 0.5). A layer-level simplification of HFT (Hui et al. 2024), which freezes half
    of the parameters chosen per category; the count of trained layers is what the memory model uses."""
    n = round(num_layers * fraction)
    if n < 1:
        raise FtAdvisorError("half_ft_fraction", f"trains no layer of {num_layers}")
    return sorted({(i * num_layers) // n for i in range(n)})


# --- context --------------------------------------------------------------------------------


@dataclass
class Context:
    """What a method needs to know about the session it applies to."""

    plan: Any  # TrainingPlan
    arch: Any  # ArchSpec
    technique: Any  # ftadvisor.techniques.Technique
    quantization: str  # none / nf4 / int8 after the method default
    num_layers: int
    notes: list[str] = field(default_factory=list)


def lora_target_names(ctx: Context) -> list[str]:
    """peft ``target_modules`` for the plan: the estimator's own resolution (one rule for both:
    'all-linear' = every decoder nn.Linear except routed experts and routers, which are fused
    parameters in transformers 5; explicit names checked against the model)."""
    from ftadvisor.memory import resolve_lora_targets

    return sorted(resolve_lora_targets(ctx.arch, ctx.plan.lora_targets))


def _freeze_all(model: nn.Module) -> None:
    for p in model.parameters():
        p.requires_grad_(False)


def _train_where(model: nn.Module, pred: Callable[[str, int | None], bool]) -> None:
    for _name, p, group, layer in named_param_groups(model):
        p.requires_grad_(bool(pred(group, layer)) and p.is_floating_point())


# --- methods --------------------------------------------------------------------------------


def hook(path: str) -> Callable:
    """The training hook a technique declares (``"module:function"``), imported now."""
    import importlib

    module, _, attr = path.partition(":")
    return getattr(importlib.import_module(module), attr)


def apply_method(method, model: nn.Module, ctx: "Context", wrap: bool = True) -> nn.Module:
    """Apply ``method`` (a declaration from ftadvisor.techniques) to ``model``. ``wrap=False``
    modifies in place without a PeftModel wrapper (used for PPO's value model, whose backbone trl
    reaches through ``base_model_prefix``)."""
    return hook(method.train_hook)(model, ctx, wrap)


def peft_wrapped(method) -> bool:
    """The method's result is a peft ``PeftModel`` (trl disables its adapters for the reference)."""
    return method.peft and not method.own_modules


def apply_full(model: nn.Module, ctx: Context, wrap: bool = True) -> nn.Module:
    # Full fine-tuning; on an MoE model plan.moe_train restricts it (memory.build_layout:
    # 'all' trains everything incl. embeddings/norms, otherwise only the selected linears).
    sel = MOE_SELECTION[ctx.plan.moe_train if ctx.arch.is_moe else "all"]
    _train_where(model, lambda g, _l: sel is None or g in sel)
    return model


def apply_lora(model: nn.Module, ctx: Context, wrap: bool = True) -> nn.Module:
    # Hu et al. 2021 (LoRA) via peft LoraConfig; DoRA (Liu et al. 2024) = use_dora=True;
    # QLoRA (Dettmers et al. 2023) = the same over a bitsandbytes base prepared with
    # peft.prepare_model_for_kbit_training.
    from peft import LoraConfig, get_peft_model, inject_adapter_in_model, prepare_model_for_kbit_training

    plan = ctx.plan
    if ctx.quantization != "none":
        model = prepare_model_for_kbit_training(
            model,
            use_gradient_checkpointing=plan.gradient_checkpointing,
            gradient_checkpointing_kwargs={"use_reentrant": False},
        )
    cfg = LoraConfig(
        r=plan.lora_r,
        lora_alpha=plan.lora_alpha,
        lora_dropout=plan.lora_dropout,
        target_modules=lora_target_names(ctx),
        use_dora=ctx.technique.method.dora,
        # plan.lora_init -> peft init_lora_weights: True (Kaiming A, zero B), "gaussian", "pissa",
        # "pissa_niter_N" (PiSSA, Meng et al. 2024: the base keeps W - A0 B0)
        init_lora_weights=True if plan.lora_init == "default" else plan.lora_init,
        bias="none",
        task_type="CAUSAL_LM" if wrap else None,
    )
    if wrap:
        model = get_peft_model(model, cfg)
        if plan.lora_init.startswith("pissa"):
            keep_initial_adapter(model)
        return model
    _freeze_all(model)
    return inject_adapter_in_model(cfg, model)


def keep_initial_adapter(model) -> None:
    """PiSSA rewrites each adapted base weight as its residual W - A0 B0. An adapter trained from
    there only fits that residual, so save() converts it into a plain LoRA adapter of the original
    base (rank 2r: B A - B0 A0), peft's documented route ("path_initial_model_for_weight_conversion"),
    which needs the initial adapter: written now, before any step, to a temp dir."""
    import tempfile

    path = tempfile.mkdtemp(prefix="ftadvisor-pissa-init-")
    model.save_pretrained(path)
    model._ftadvisor_pissa_init = path


def apply_adapter(model: nn.Module, ctx: Context, wrap: bool = True) -> nn.Module:
    # Houlsby et al. 2019: adapters after attention and MLP of every layer; base frozen except
    # every normalisation layer (section 2.1).
    _freeze_all(model)
    mods.attach_adapters(model, ctx.plan.adapter_bottleneck)
    _train_where(model, lambda g, _l: g in ("ours", "norm"))
    return model


def apply_half_ft(model: nn.Module, ctx: Context, wrap: bool = True) -> nn.Module:
    # HFT (Hui et al. 2024), layer-level: the linears and norms of the chosen decoder layers train;
    # embeddings, lm_head and the final norm stay frozen. On MoE models plan.moe_train restricts the
    # linears as in memory.build_layout (the chosen layers' norms train in every case).
    layers = set(half_ft_layers(ctx.num_layers, ctx.plan.half_ft_fraction))
    sel = MOE_SELECTION[ctx.plan.moe_train if ctx.arch.is_moe else "all"]

    def pred(g, layer):
        if layer is None or layer not in layers:
            return False
        if g == "norm":
            return True
        return sel is None or g in sel

    _train_where(model, pred)
    ctx.notes.append(f"half_ft trains decoder layers {sorted(layers)}")
    return model


def apply_lamini(model: nn.Module, ctx: Context, wrap: bool = True) -> nn.Module:
    # Lamini-1 (Li et al. 2024) section 4: memory experts on the top layers, base frozen.
    _freeze_all(model)
    plan = ctx.plan
    idx = mods.attach_memory_experts(
        model, min(plan.lamini_layers, ctx.num_layers), plan.lamini_num_experts, plan.lora_r, plan.lamini_top_k
    )
    _train_where(model, lambda g, _l: g == "ours")
    ctx.notes.append(f"memory experts on decoder layers {idx}")
    return model


# --- reference models -----------------------------------------------------------------------


class DisabledModulesView(nn.Module):
    """A reference model that is the policy with our adapters / memory experts switched off.

    The memory model counts no reference copy for parameter-efficient methods (the reference is
    the frozen base); peft gives that for LoRA through ``disable_adapter``, this view gives it for
    our own modules. The policy is held outside the module tree so nothing is copied or moved.
    """

    def __init__(self, policy: nn.Module):
        super().__init__()
        self._policy = [policy]

    @property
    def config(self):
        return self._policy[0].config

    @property
    def base_model_prefix(self):
        return self._policy[0].base_model_prefix

    def forward(self, *args, **kwargs):
        policy = self._policy[0]
        with torch.no_grad(), mods.modules_disabled(policy):
            return policy(*args, **kwargs)

    def __getattr__(self, name):
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self._policy[0], name)


def frozen_copy(model: nn.Module, dtype: torch.dtype) -> nn.Module:
    """A frozen copy of the (not yet trained) model in the compute dtype, as a full-weight
    method's reference (memory.py ``frozen_copy_bytes``)."""
    ref = copy.deepcopy(model)
    for p in ref.parameters():
        p.requires_grad_(False)
        if p.is_floating_point():
            p.data = p.data.to(dtype)
    return ref.eval()


def reference_model(session, needed: bool, precomputed: bool = False) -> nn.Module | None:
    """The ``ref_model`` a preference trainer (DPO, KTO) gets. With precomputed reference log-probs
    trl computes them once with the policy when no reference is given: ours must be switched off
    for that pass, so our own modules get a view without them."""
    ref = reference_for(session, needed)
    if ref is None and precomputed and session.technique.method.own_modules:
        ref = DisabledModulesView(session.model)
    return ref


def reference_for(session, needed: bool) -> nn.Module | None:
    """The reference model an objective gets: None (not needed, or a peft policy whose adapters trl
    disables), a view of the policy without our modules, or a frozen copy (full-weight methods)."""
    if not needed:
        return None
    method = session.technique.method
    if peft_wrapped(method):
        return None
    if method.own_modules:
        return DisabledModulesView(session.model)
    return frozen_copy(session.model, session.compute_dtype)


# --- rewards (GRPO) -------------------------------------------------------------------------
# trl reward functions take the completions (strings, or message lists for chat prompts) plus
# every dataset column as keyword lists, and return one float per completion.


def _completion_text(c) -> str:
    if isinstance(c, list):  # conversational: [{"role": "assistant", "content": ...}]
        return "".join(m.get("content", "") for m in c if isinstance(m, dict))
    return str(c)


def reward_length(completions, target_chars: int = 64, **_kw) -> list[float]:
    """1 at ``target_chars`` characters, falling linearly to 0 at 0 or twice the target
    (a length-control reward in the spirit of the length penalties used for RLHF)."""
    out = []
    for c in completions:
        n = len(_completion_text(c))
        out.append(max(0.0, 1.0 - abs(n - target_chars) / target_chars))
    return out


_FORMAT_RE = re.compile(r"^\s*<think>.*?</think>\s*<answer>.*?</answer>\s*$", re.DOTALL)


def reward_format(completions, **_kw) -> list[float]:
    """1 when the completion is ``<think>...</think><answer>...</answer>`` (the DeepSeek-R1
    format reward, Guo et al. 2025 section 2.2.2), else 0."""
    return [1.0 if _FORMAT_RE.match(_completion_text(c)) else 0.0 for c in completions]


def reward_exact_match(completions, answer=None, **_kw) -> list[float]:
    """1 when the record's ``answer`` occurs in the completion (case- and space-insensitive), else 0;
    0 for records without an answer (an accuracy reward as in DeepSeekMath, Shao et al. 2024)."""
    answers = answer or [""] * len(completions)
    out = []
    for c, a in zip(completions, answers):
        a = " ".join(str(a or "").lower().split())
        t = " ".join(_completion_text(c).lower().split())
        out.append(1.0 if a and a in t else 0.0)
    return out


REWARDS: dict[str, Callable[..., list[float]]] = {
    "length": reward_length,
    "format": reward_format,
    "exact_match": reward_exact_match,
}


def resolve_rewards(spec, session) -> list:
    """GRPO rewards from ``job.reward``: a built-in name, several joined by ',', a reward-model
    directory, or None (exact_match when the data has answers, else length)."""
    from pathlib import Path

    if spec is None:
        has_answer = any(r.get("answer") for r in session.records)
        return [reward_exact_match if has_answer else reward_length]
    if callable(spec):
        return [spec]
    if isinstance(spec, str) and Path(spec).expanduser().is_dir():
        from transformers import AutoModelForSequenceClassification

        rm = AutoModelForSequenceClassification.from_pretrained(str(Path(spec).expanduser()), num_labels=1)
        if rm.config.pad_token_id is None:
            rm.config.pad_token_id = session.tokenizer.pad_token_id
        for p in rm.parameters():
            p.requires_grad_(False)
        return [rm.to(session.compute_dtype).eval()]
    names = [s.strip() for s in str(spec).split(",") if s.strip()]
    bad = [n for n in names if n not in REWARDS]
    if bad or not names:
        raise FtAdvisorError("reward", f"unknown reward {spec!r} (a built-in name or a reward-model directory)", list(REWARDS))
    return [REWARDS[n] for n in names]


# --- objectives -----------------------------------------------------------------------------


def train_sft(session, records, common):
    from trl import SFTConfig, SFTTrainer

    plan = session.plan
    args = SFTConfig(
        **common,
        max_length=plan.seq_len,
        packing=plan.packing,
        dataset_text_field="text",
        # the memory model's logits term follows this choice (ftadvisor/memory.py loss_logits_bytes)
        loss_type="chunked_nll" if plan.sft_chunked_loss else "nll",
    )
    return SFTTrainer(
        model=session.model,
        args=args,
        train_dataset=session.dataset(records),
        processing_class=session.tokenizer,
    )


def train_dpo(session, records, common):
    from trl import DPOConfig, DPOTrainer

    plan = session.plan
    args = DPOConfig(**common, max_length=plan.seq_len, precompute_ref_log_probs=plan.dpo_precompute_ref)
    ref = session.reference_model(needed=not plan.dpo_precompute_ref, precomputed=plan.dpo_precompute_ref)
    session.extra_models["reference"] = ref
    return DPOTrainer(
        model=session.model,
        ref_model=ref,
        args=args,
        train_dataset=session.dataset(records),
        processing_class=session.tokenizer,
    )


def train_orpo(session, records, common):
    from trl.experimental.orpo import ORPOConfig, ORPOTrainer

    plan = session.plan
    args = ORPOConfig(**common, max_length=plan.seq_len, max_completion_length=plan.seq_len - plan.seq_len // 2)
    return ORPOTrainer(
        model=session.model,
        args=args,
        train_dataset=session.dataset(records),
        processing_class=session.tokenizer,
    )


def train_grpo(session, records, common):
    from trl import GRPOConfig, GRPOTrainer

    plan = session.plan
    G = plan.grpo_num_generations
    gen_batch = common["per_device_train_batch_size"] * common["gradient_accumulation_steps"]
    if gen_batch % G:
        raise FtAdvisorError(
            "grpo_num_generations",
            f"the generation batch (micro_batch_size x gradient_accumulation_steps = {gen_batch}) must be a "
            f"multiple of the group size {G} (trl GRPOTrainer)",
        )
    args = GRPOConfig(
        **common,
        num_generations=G,
        max_completion_length=plan.rl_max_new_tokens,
        beta=0.0,  # set below once the reference model is in place (trl would load one from a path)
    )
    funcs = resolve_rewards(session.job.reward, session)
    trainer = GRPOTrainer(
        model=session.model,
        reward_funcs=funcs,
        args=args,
        train_dataset=session.dataset(records),
        processing_class=session.tokenizer,
    )
    if plan.grpo_beta > 0:
        trainer.beta = plan.grpo_beta
        trainer.args.beta = plan.grpo_beta
        ref = reference_for(session, needed=True)
        if isinstance(ref, DisabledModulesView):
            trainer.ref_model = ref
        elif ref is not None:
            # As GRPOTrainer.__init__ prepares its own reference (trl/trainer/grpo_trainer.py).
            from trl.models import prepare_deepspeed, prepare_fsdp

            if trainer.is_deepspeed_enabled:
                ref = prepare_deepspeed(ref, trainer.accelerator)
            elif trainer.is_fsdp_enabled:
                ref = prepare_fsdp(ref, trainer.accelerator)
            else:
                ref = trainer.accelerator.prepare_model(ref, evaluation_mode=True)
            trainer.ref_model = ref
        session.extra_models["reference"] = ref
    return trainer


def train_ppo(session, records, common):
    from trl.experimental.ppo import PPOConfig, PPOTrainer

    plan = session.plan
    objective = session.technique.objective
    batch = common["per_device_train_batch_size"] * common["gradient_accumulation_steps"]
    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if len(records) < batch * world:
        # trl's PPOTrainer draws whole rollout batches (drop_last) from an endless loop over its
        # dataloader: with fewer prompts than one batch it would wait forever for the first one.
        raise FtAdvisorError(
            "data",
            f"ppo needs at least one rollout batch of prompts (micro_batch_size x gradient_accumulation_steps"
            f"{' x processes' if world > 1 else ''} = {batch * world}); got {len(records)}",
        )
    value = session.build_value_model()
    reward = session.build_reward_model()
    ref = reference_for(session, needed=True)
    session.extra_models.update(value=value, reward=reward, reference=ref)
    steps = session.job.max_steps or 1
    c = dict(common)
    c.pop("max_steps", None)
    c.pop("num_train_epochs", None)
    args = PPOConfig(
        **c,
        response_length=plan.rl_max_new_tokens,
        total_episodes=steps * batch,
        # the objective's run shape (ftadvisor/techniques/ppo.py), which the speed and memory models read too
        num_ppo_epochs=objective.updates_per_rollout,
        num_mini_batches=1,
        local_rollout_forward_batch_size=objective.rollout_chunk,
        stop_token="eos",
        missing_eos_penalty=None,
        num_sample_generations=0,
    )
    tok = session.tokenizer
    tokenized = []
    for r in records:
        p = r["prompt"]
        if isinstance(p, list):
            ids = tok.apply_chat_template(p, add_generation_prompt=True, tokenize=True)
            if isinstance(ids, dict):
                ids = ids["input_ids"]
        else:
            ids = tok(p, add_special_tokens=False)["input_ids"]
        tokenized.append({"input_ids": list(ids)})
    ds = session.dataset(tokenized)
    if plan.gradient_checkpointing:
        # trl's PPOTrainer runs its own loop, so the Trainer never switches checkpointing on; the
        # memory model assumes the plan's setting for the policy and the value model alike.
        for m in (session.model, value):
            m.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            if hasattr(m, "enable_input_require_grads"):
                m.enable_input_require_grads()
    return PPOTrainer(
        args=args,
        processing_class=tok,
        model=session.model,
        ref_model=ref,
        reward_model=reward,
        train_dataset=ds,
        value_model=value,
        eval_dataset=ds,
    )
