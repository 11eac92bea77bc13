"""Measure on CPU the peak tensor memory of one training step (fwd + bwd + AdamW step, the
second step so optimizer state exists) of a tiny llama and compare with ftadvisor.estimate.

Usage: .venv/bin/python scripts/check_memory_cpu.py [case ...]
Cases: full-bf16-true, full-bf16-mixed, lora, qlora, each with suffix -ckpt for checkpointing.
"""

from __future__ import annotations

import contextlib
import gc
import json
import sys
import tempfile

import torch
from torch.distributed._tools.mem_tracker import MemTracker

import weakref

from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

import ftadvisor
from ftadvisor import memory as fmem
from ftadvisor.estimator import make_plan
from ftadvisor.profiles import resolve_hardware, resolve_model
from ftadvisor.techniques import parse_technique

CFG = dict(model_type="llama", vocab_size=8192, hidden_size=512, intermediate_size=1408, num_hidden_layers=4,
           num_attention_heads=8, num_key_value_heads=2, tie_word_embeddings=False, max_position_embeddings=4096)
B, S = 2, 512
MB = 1e6


class StorageTracker(TorchDispatchMode):
    """Tracks live tensor storages (each untyped storage once, freed via weakref finalizers) and
    records the peak of their total bytes, with a split by category at the peak."""

    def __init__(self, model, opt, vocab):
        super().__init__()
        self.live = {}  # id(storage) -> (nbytes, tag)
        self.cur = 0
        self.peak = 0
        self.peak_op = None
        self.phase = "?"
        self.peak_phase = None
        self.peak_split = {}
        self.phase_peak = {}
        self.model, self.opt, self.vocab = model, opt, vocab
        self.marks = []

    def add(self, t, tag=None):
        if not isinstance(t, torch.Tensor) or t.device.type == "meta":
            return
        try:
            st = t.untyped_storage()
        except Exception:
            return
        k = id(st)
        if k in self.live:
            return
        if tag is None:
            tag = "logits-shaped" if (t.dim() >= 1 and t.shape[-1] == self.vocab and t.numel() > self.vocab * 64) else "other"
        n = st.nbytes()
        self.live[k] = (n, tag)
        self.cur += n
        weakref.finalize(st, self._free, k)

    def _free(self, k):
        n, _ = self.live.pop(k, (0, None))
        self.cur -= n

    def split(self):
        grad_ids = {id(p.grad.untyped_storage()) for p in self.model.parameters() if p.grad is not None}
        out = {}
        for k, (n, tag) in self.live.items():
            tag = "gradients" if k in grad_ids else tag
            out[tag] = out.get(tag, 0) + n
        return out

    def mark(self, label):
        self.marks.append((label, self.cur))

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            self.add(t)
        if self.cur > self.peak:
            self.peak = self.cur
            self.peak_op = str(func)
            self.peak_phase = self.phase
            self.peak_split = self.split()
        self.phase_peak[self.phase] = max(self.phase_peak.get(self.phase, 0), self.cur)
        return out


def build(technique: str, precision: str, ckpt: bool):
    import transformers
    cfg = {k: v for k, v in CFG.items() if k != "model_type"}
    conf = transformers.LlamaConfig(**cfg)
    torch.manual_seed(0)
    if technique == "qlora":
        from transformers import BitsAndBytesConfig
        from peft import prepare_model_for_kbit_training
        m0 = transformers.AutoModelForCausalLM.from_config(conf, attn_implementation="sdpa", dtype=torch.bfloat16)
        d = tempfile.mkdtemp()
        m0.save_pretrained(d)
        del m0
        q = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                               bnb_4bit_compute_dtype=torch.bfloat16)
        model = transformers.AutoModelForCausalLM.from_pretrained(d, quantization_config=q, attn_implementation="sdpa",
                                                                  dtype=torch.bfloat16, device_map="cpu")
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=ckpt,
                                                gradient_checkpointing_kwargs={"use_reentrant": False})
    else:
        dtype = torch.bfloat16 if (precision == "bf16-true" or technique == "lora") else torch.float32
        model = transformers.AutoModelForCausalLM.from_config(conf, attn_implementation="sdpa", dtype=dtype)
        if ckpt:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if technique in ("lora", "qlora"):
        from peft import LoraConfig, get_peft_model
        lc = LoraConfig(r=8, lora_alpha=16, target_modules="all-linear", lora_dropout=0.0, task_type="CAUSAL_LM")
        model = get_peft_model(model, lc)  # adapters fp32 (autocast_adapter_dtype=True)
        if ckpt and technique == "lora":
            model.enable_input_require_grads()
    model.train()
    return model


def run_case(name: str):
    ckpt = name.endswith("-ckpt")
    base = name[:-5] if ckpt else name
    technique, precision = {
        "full-bf16-true": ("full", "bf16-true"),
        "full-bf16-mixed": ("full", "bf16-mixed"),
        "lora": ("lora", "bf16-mixed"),
        "qlora": ("qlora", "bf16-mixed"),
    }[base]
    est = ftadvisor.estimate(dict(CFG), "cpu", technique, precision=precision, micro_batch_size=B, seq_len=S,
                             gradient_checkpointing=ckpt, attention="sdpa", lora_r=8, optimizer="adamw",
                             sft_chunked_loss=False)  # this script runs the plain HF loss
    model = build(technique, precision, ckpt)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4, foreach=False)
    ids = torch.randint(0, CFG["vocab_size"], (B, S))
    use_autocast = precision == "bf16-mixed"

    tr = StorageTracker(model, opt, CFG["vocab_size"])

    def step(track=False):
        ctx = torch.autocast(device_type="cpu", dtype=torch.bfloat16) if use_autocast else contextlib.nullcontext()
        tr.phase = "forward"
        with ctx:
            loss = model(input_ids=ids, labels=ids).loss
        if track:
            tr.mark("after forward+loss")
        tr.phase = "backward"
        loss.backward()
        if track:
            tr.mark("after backward")
        tr.phase = "optimizer"
        opt.step()
        if track:
            tr.mark("after optimizer step")
        opt.zero_grad(set_to_none=True)
        return loss.detach()

    step()  # creates optimizer state
    gc.collect()
    # 1. MemTracker (torch.distributed._tools); it cannot handle frozen parameters (registers
    #    grad hooks on every parameter), so it only works for full fine-tuning.
    meas_mt = None
    try:
        mt = MemTracker()
        mt.track_external(model, opt, ids)
        with mt:
            step()
        snap = mt.get_tracker_snapshot("peak")
        dev = next(iter(snap))
        meas_mt = {str(k).split(".")[-1]: int(v) for k, v in snap[dev].items()}
        del mt
    except Exception as e:
        meas_mt = {"error": f"{type(e).__name__}: {e}"[:120]}
    gc.collect()
    # 2. Own dispatch-mode storage tracker, all cases.
    for p in model.parameters():
        tr.add(p, "parameters")
    for b in model.buffers():
        tr.add(b, "buffers")
    for st_ in opt.state.values():
        for v in st_.values():
            tr.add(v, "optimizer_state")
    tr.add(ids, "inputs")
    static = tr.cur
    tr.peak = tr.cur
    layers = [m for n, m in model.named_modules() if type(m).__name__ == "LlamaDecoderLayer"]
    hooks = []
    for i, lyr in enumerate(layers):
        hooks.append(lyr.register_forward_pre_hook(lambda m, a, i=i: tr.mark(f"pre L{i}") if tr.phase == "forward" else None))
        hooks.append(lyr.register_forward_hook(lambda m, a, o, i=i: tr.mark(f"post L{i}") if tr.phase == "forward" else None))
    with tr:
        step(track=True)
    for h_ in hooks:
        h_.remove()
    marks = tr.marks
    # per-layer growth during forward (what each layer leaves alive: its saved tensors + output)
    per_layer = [post - pre for (a, pre), (b, post) in zip(marks[0::2], marks[1::2]) if a.startswith("pre") and b.startswith("post")]
    meas = dict(tr.peak_split, Total=tr.peak)
    lay = fmem.build_layout(resolve_model(dict(CFG)).arch, parse_technique(technique), resolve_hardware("cpu"),
                            make_plan(technique, None, precision=precision, micro_batch_size=B, seq_len=S,
                                      gradient_checkpointing=ckpt, attention="sdpa", lora_r=8, optimizer="adamw",
                             sft_chunked_loss=False)  # this script runs the plain HF loss)
    k = fmem.activation_coefficients(lay)
    T = B * S
    pred_layer = T * (k.checkpoint_per_layer if ckpt else k.per_layer_dense + k.per_layer_r * 8)
    pred = est.memory.peak_allocated_bytes
    stored = sum(p.numel() * p.element_size() for p in model.parameters()) + sum(
        b.numel() * b.element_size() for b in model.buffers())
    ntrain = sum(p.numel() for p in params)
    out = dict(case=name, technique=technique, precision=precision, ckpt=ckpt, measured=tr.peak, memtracker_total=meas_mt.get("Total"), memtracker_split=meas_mt,
               peak_op=tr.peak_op, peak_in=tr.peak_phase, phase_peaks=tr.phase_peak, static=static,
               per_layer_measured=per_layer, per_layer_predicted=pred_layer, top_predicted=T * k.top,
               marks=[(a, b) for a, b in marks if not a.startswith(('pre', 'post'))],
               predicted=int(pred), err_pct=100 * (pred - tr.peak) / tr.peak, measured_split=meas,
               predicted_split={k: v for k, v in est.memory.model_dump().items()
                                if isinstance(v, int) and v},
               phases=est.memory.model_dump().get("phases_bytes"), peak_phase=est.memory.peak_phase,
               model_param_bytes=stored, trainable_params=ntrain, predicted_trainable=est.trainable_params)
    del model, opt, tr
    gc.collect()
    return out


def main(argv):
    cases = argv or ["full-bf16-true", "full-bf16-true-ckpt", "full-bf16-mixed", "full-bf16-mixed-ckpt",
                     "lora", "lora-ckpt", "qlora", "qlora-ckpt"]
    rows = []
    for c in cases:
        try:
            r = run_case(c)
        except Exception as e:  # keep going
            import traceback
            traceback.print_exc()
            print(f"{c}: FAILED {type(e).__name__}: {e}", flush=True)
            continue
        rows.append(r)
        print(json.dumps(r), flush=True)
    print(f"\n{'case':24s} {'measured MB':>12s} {'predicted MB':>13s} {'err %':>7s}")
    for r in rows:
        print(f"{r['case']:24s} {r['measured']/MB:12.2f} {r['predicted']/MB:13.2f} {r['err_pct']:7.1f}")
    for r in rows:
        print(f"\n== {r['case']}  measured split (MB): "
              + ", ".join(f"{str(k).split('.')[-1]}={v/MB:.2f}" for k, v in r["measured_split"].items()))
        print("   predicted split (MB): " + ", ".join(
            f"{k.replace('_bytes','')}={v/MB:.2f}" for k, v in r["predicted_split"].items()
            if k not in ("peak_reserved_bytes", "device_total_bytes")))


if __name__ == "__main__":
    main(sys.argv[1:])
