"""Our own trainable modules: Houlsby bottleneck adapters and a Lamini-style bank of memory experts.

Both attach to a Hugging Face decoder without changing any existing module name: the new module is
registered as a child of the decoder layer (``model.layers.N.ftadvisor_attn_adapter`` ...) and a
forward hook on the block it follows adds its output. So peft, gradient checkpointing (the hooks run
inside the checkpointed decoder layer) and ``save_pretrained`` keep working.

Saving: :func:`save_modules` writes ``ftadvisor_modules.json`` (which modules, their sizes, which
layers) and ``ftadvisor_modules.safetensors`` (their weights) next to a normal HF checkpoint;
``ftadvisor.train.load_trained(dir)`` rebuilds them on the loaded base.

Parameter counts (what the memory model in ``ftadvisor/memory.py`` ``count_params`` assumes):
- adapter: per decoder layer two adapters of 2hm + m + h (Houlsby et al. 2019, Fig. 2);
- memory experts: per adapted layer E routing keys of width h plus E low-rank pairs
  A (h x r), B (r x h): E(2hr + h) (Li et al. 2024, Lamini-1, section 4).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

MODULES_JSON = "ftadvisor_modules.json"
MODULES_WEIGHTS = "ftadvisor_modules.safetensors"
PREFIX = "ftadvisor_"


def _first(out):
    return out[0] if isinstance(out, tuple) else out


def _replace_first(out, new):
    if isinstance(out, tuple):
        return (new, *out[1:])
    return new


class BottleneckAdapter(nn.Module):
    """Houlsby et al. 2019 (arXiv 1902.00751), section 2.1 and Fig. 2: a down projection h -> m
    with bias, a nonlinearity, an up projection m -> h with bias, added to its input (the block
    output). The up projection starts at zero so the adapted model starts as the base model
    (the paper initialises near identity)."""

    def __init__(self, hidden: int, bottleneck: int):
        super().__init__()
        self.down = nn.Linear(hidden, bottleneck, bias=True)
        self.up = nn.Linear(bottleneck, hidden, bias=True)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)
        self.enabled = True

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        if not self.enabled:
            return y
        # Outside autocast the block output may be bf16 while our weights are fp32 masters.
        x = y if torch.is_autocast_enabled(y.device.type) else y.to(self.down.weight.dtype)
        return y + self.up(F.gelu(self.down(x))).to(y.dtype)


class MemoryExperts(nn.Module):
    """A bank of E low-rank memory experts selected per token by key similarity.

    Li et al. 2024 (Lamini-1, arXiv 2406.17642), section 4 "mixture of memory experts": each token's
    hidden state x is scored against E routing keys (x·Kᵀ), the top-k experts are selected and
    weighted by a softmax over their scores, and each selected expert adds a low-rank update
    (x A_e) B_e. B starts at zero (as LoRA's B, Hu et al. 2021 section 4.1) so training starts at
    the base model. The bank is stored as dense parameters (K: E x h, A: E x h x r, B: E x r x h).

    Only the selected experts are computed: token/expert assignments are sorted by expert and each
    expert with tokens runs two small matmuls on its gathered rows (no dense E x tokens product
    with the A/B bank).
    """

    def __init__(self, hidden: int, num_experts: int, rank: int, top_k: int):
        super().__init__()
        self.hidden, self.num_experts, self.rank, self.top_k = hidden, num_experts, rank, top_k
        self.keys = nn.Parameter(torch.empty(num_experts, hidden))
        self.A = nn.Parameter(torch.empty(num_experts, hidden, rank))
        self.B = nn.Parameter(torch.zeros(num_experts, rank, hidden))
        # Keys ~ N(0, 1/h) so scores x·k have unit scale for unit-RMS x (RMSNorm output).
        nn.init.normal_(self.keys, std=1 / math.sqrt(hidden))
        # A like LoRA's A (peft lora/layer.py: kaiming_uniform_ with a=sqrt(5)) -> U(-1/sqrt(h), 1/sqrt(h)).
        bound = 1 / math.sqrt(hidden)
        nn.init.uniform_(self.A, -bound, bound)
        self.enabled = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The memory-expert output for hidden states ``x`` (..., h); same shape and dtype as x."""
        shape = x.shape
        flat = x.reshape(-1, self.hidden)
        if flat.shape[0] == 0:
            return torch.zeros_like(x)
        if not torch.is_autocast_enabled(x.device.type):
            flat = flat.to(self.keys.dtype)
        scores = flat @ self.keys.t()  # (T, E): routing scores
        top_vals, top_idx = scores.topk(self.top_k, dim=-1)  # (T, k)
        gates = torch.softmax(top_vals.float(), dim=-1)  # (T, k), softmax over the selected scores
        expert_of = top_idx.reshape(-1)  # (T*k,)
        token_of = torch.arange(flat.shape[0], device=x.device).repeat_interleave(self.top_k)
        order = torch.argsort(expert_of, stable=True)
        expert_sorted = expert_of[order]
        token_sorted = token_of[order]
        gate_sorted = gates.reshape(-1)[order]
        gathered = flat[token_sorted]  # (T*k, h): each token once per selected expert
        experts, counts = torch.unique_consecutive(expert_sorted, return_counts=True)
        pieces = []
        start = 0
        for e, n in zip(experts.tolist(), counts.tolist()):
            seg = gathered[start : start + n]
            pieces.append((seg @ self.A[e]) @ self.B[e])
            start += n
        out_sorted = torch.cat(pieces, dim=0) * gate_sorted.unsqueeze(-1).to(pieces[0].dtype)
        out = torch.zeros(flat.shape[0], self.hidden, dtype=out_sorted.dtype, device=x.device)
        out = out.index_add(0, token_sorted, out_sorted)
        return out.reshape(shape).to(x.dtype)


# --- attaching ------------------------------------------------------------------------------


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The decoder layer list of a causal LM or sequence classifier (peft-wrapped or not):
    ``model.layers`` (Llama family, Phi), ``gpt_neox.layers``, ``transformer.h`` (Falcon)."""
    n = getattr(model.config.get_text_config(), "num_hidden_layers", None)
    for _name, mod in model.named_modules():
        if isinstance(mod, nn.ModuleList) and len(mod) == n and _name.rsplit(".", 1)[-1] in ("layers", "h"):
            return mod
    from ftadvisor.errors import FtAdvisorError

    raise FtAdvisorError("model", f"cannot find the decoder layers of {type(model).__name__}")


def _attn_and_mlp(layer: nn.Module) -> tuple[nn.Module, nn.Module]:
    attn = getattr(layer, "self_attn", None) or getattr(layer, "attention", None) or getattr(layer, "self_attention", None)
    mlp = getattr(layer, "mlp", None) or getattr(layer, "block_sparse_moe", None)
    if attn is None or mlp is None:
        from ftadvisor.errors import FtAdvisorError

        raise FtAdvisorError("model", f"decoder layer {type(layer).__name__} has no attention/MLP block to adapt")
    return attn, mlp


def _output_adder(child_name: str):
    def hook(module, args, output):
        layer_mod = hook.owner
        mod = getattr(layer_mod, child_name)
        return _replace_first(output, mod(_first(output)))

    return hook


def _input_adder(child_name: str):
    def hook(module, args, kwargs, output):
        layer_mod = hook.owner
        mod = getattr(layer_mod, child_name)
        if not mod.enabled:
            return output
        x = args[0] if args else kwargs["hidden_states"]
        y = _first(output)
        return _replace_first(output, y + mod(x))

    return hook


def attach_adapters(model: nn.Module, bottleneck: int) -> list[str]:
    """Add two bottleneck adapters to every decoder layer (after attention, after the MLP)."""
    layers = decoder_layers(model)
    h = model.config.get_text_config().hidden_size
    names = []
    for i, layer in enumerate(layers):
        attn, mlp = _attn_and_mlp(layer)
        for child, block in (("ftadvisor_attn_adapter", attn), ("ftadvisor_mlp_adapter", mlp)):
            dev = next(block.parameters()).device
            setattr(layer, child, BottleneckAdapter(h, bottleneck).to(dev))
            hook = _output_adder(child)
            hook.owner = layer
            block.register_forward_hook(hook)
            names.append(f"{i}.{child}")
    return names


def attach_memory_experts(model: nn.Module, num_layers: int, num_experts: int, rank: int, top_k: int) -> list[int]:
    """Add a memory-expert bank to the MLP output of the top ``num_layers`` decoder layers."""
    layers = decoder_layers(model)
    h = model.config.get_text_config().hidden_size
    idx = list(range(max(0, len(layers) - num_layers), len(layers)))
    for i in idx:
        layer = layers[i]
        _, mlp = _attn_and_mlp(layer)
        dev = next(mlp.parameters()).device
        layer.ftadvisor_memory = MemoryExperts(h, num_experts, rank, top_k).to(dev)
        hook = _input_adder("ftadvisor_memory")
        hook.owner = layer
        mlp.register_forward_hook(hook, with_kwargs=True)
    return idx


def our_modules(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if isinstance(m, (BottleneckAdapter, MemoryExperts))]


class modules_disabled:
    """Context manager: run the model with our adapters / memory experts switched off (the
    frozen base), as peft's ``disable_adapter`` does for LoRA."""

    def __init__(self, model: nn.Module):
        self.mods = our_modules(model)

    def __enter__(self):
        for m in self.mods:
            m.enabled = False
        return self

    def __exit__(self, *exc):
        for m in self.mods:
            m.enabled = True
        return False


# --- saving and loading ---------------------------------------------------------------------


def module_spec(model: nn.Module) -> dict[str, Any] | None:
    """What :func:`rebuild_modules` needs to recreate our modules on a fresh base."""
    layers = decoder_layers(model)
    spec: dict[str, Any] = {"format": 1}
    for i, layer in enumerate(layers):
        ad = getattr(layer, "ftadvisor_attn_adapter", None)
        if isinstance(ad, BottleneckAdapter):
            spec["adapter"] = {"bottleneck": ad.down.out_features}
        me = getattr(layer, "ftadvisor_memory", None)
        if isinstance(me, MemoryExperts):
            d = spec.setdefault("memory_experts", {"layers": [], "num_experts": me.num_experts, "rank": me.rank,
                                                   "top_k": me.top_k})
            d["layers"].append(i)
    return spec if len(spec) > 1 else None


def rebuild_modules(model: nn.Module, spec: dict[str, Any]) -> None:
    if "adapter" in spec:
        attach_adapters(model, spec["adapter"]["bottleneck"])
    if "memory_experts" in spec:
        me = spec["memory_experts"]
        n = len(decoder_layers(model))
        if me["layers"] != list(range(n - len(me["layers"]), n)):
            raise ValueError(f"memory experts saved on layers {me['layers']}, expected the top layers of {n}")
        attach_memory_experts(model, len(me["layers"]), me["num_experts"], me["rank"], me["top_k"])


def save_modules(model: nn.Module, out_dir: str | Path) -> bool:
    """Write our modules' spec and weights into ``out_dir``; False when the model has none."""
    from safetensors.torch import save_file

    spec = module_spec(model)
    if spec is None:
        return False
    out_dir = Path(out_dir)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items() if PREFIX in k}
    save_file(state, str(out_dir / MODULES_WEIGHTS))
    (out_dir / MODULES_JSON).write_text(json.dumps(spec, indent=1))
    return True


def load_modules(model: nn.Module, in_dir: str | Path) -> bool:
    """Recreate and fill our modules from ``in_dir`` if it holds them."""
    from safetensors.torch import load_file

    in_dir = Path(in_dir)
    if not (in_dir / MODULES_JSON).is_file():
        return False
    spec = json.loads((in_dir / MODULES_JSON).read_text())
    rebuild_modules(model, spec)
    state = load_file(str(in_dir / MODULES_WEIGHTS))
    missing, unexpected = model.load_state_dict(state, strict=False)
    ours_missing = [k for k in missing if PREFIX in k]
    if ours_missing or unexpected:
        raise ValueError(f"{in_dir}: module weights do not match (missing {ours_missing[:3]}, unexpected {unexpected[:3]})")
    dtype = next(p for p in model.parameters() if p.is_floating_point()).dtype
    for m in our_modules(model):
        m.to(dtype)
    return True
