"""Record the allocation trace of real training steps and replay it through the allocator simulator.

The CPU storage tracker of :mod:`ftadvisor.calibration.measure` (``LiveTensorMeter``: every storage an
aten op returns, freed through a ``weakref.finalize``) is extended to log each new storage's bytes and
the moment it dies, as a compact event list (:func:`ftadvisor.allocator.replay`: ``n > 0`` allocates
``n`` bytes, ``-(k + 1)`` frees allocation ``k``). Parameters and buffers are logged first, in module
order, as ``model.to("cuda")`` would allocate them. The steps are a plain loop with what the Hugging
Face Trainer does per step: a fresh batch, forward under bf16 autocast (the loss kept, the model output
dropped), backward, fused AdamW (transformers' default optimizer with torch >= 2.8,
``training_args.py``), ``zero_grad(set_to_none=True)``.

Two batch regimes: ``fixed`` (every batch ``seq_len`` tokens long) and ``varying`` (each sequence's length
drawn from a log-normal, clipped to ``[16, seq_len]``, the batch padded to its longest one, as
``DataCollatorWithPadding`` does).

With ``--fake`` the model is built and trained under ``FakeTensorMode`` (``measure.trace_mode``): exact
storage sizes of a full-width model without its compute.

Run (writes ``calibration/results/allocator/<name>.json.gz`` and the replay table ``replays.jsonl``)::

    python -m ftadvisor.calibration.alloc_trace --name tiny-full --technique full
"""

from __future__ import annotations

import argparse
import gzip
import json
import math
import random
import shlex
import sys
import time
from pathlib import Path

from ftadvisor.calibration.measure import _meter_class, trace_mode

OUT_DIR = Path(__file__).resolve().parents[2] / "calibration" / "results" / "allocator"

# Tiny Llama-style configuration (CPU-trainable); the fake-mode config is Llama-3.2-1B's
# (hidden 2048, intermediate 8192, 16 layers, 32/8 heads, vocab 128256, tied embeddings;
# meta-llama/Llama-3.2-1B config.json, as profiles/models carries it).
TINY = dict(hidden_size=512, intermediate_size=1536, num_hidden_layers=4, num_attention_heads=8,
            num_key_value_heads=4, vocab_size=8192, max_position_embeddings=4096)
WIDE = dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
            num_key_value_heads=8, vocab_size=128256, max_position_embeddings=8192, tie_word_embeddings=True)


def batch_lengths(regime: str, steps: int, batch: int, seq_len: int, seed: int = 0) -> list[int]:
    """Padded length of each step's batch. ``varying``: log-normal lengths with a median of
    seq_len / 3 and sigma 0.8 (a chat-SFT-like spread), clipped to [16, seq_len], max over the batch."""
    if regime == "fixed":
        return [seq_len] * steps
    rng = random.Random(seed)
    mu = math.log(seq_len / 3)
    return [max(min(seq_len, max(16, int(rng.lognormvariate(mu, 0.8)))) for _ in range(batch))
            for _ in range(steps)]


def _recorder_class():
    base = _meter_class()

    class AllocRecorder(base):
        """LiveTensorMeter that also logs (alloc bytes | free index) events."""

        def __init__(self, fake: bool = False):
            super().__init__(fake)
            self.events: list[int] = []
            self.index: dict[int, int] = {}
            self.n_alloc = 0

        def add(self, t, tag: str = "other") -> None:
            st = self._storage(t)
            if st is None or id(st) in self.live:
                return
            super().add(t, tag)
            n = int(st.nbytes())
            if n:
                self.index[id(st)] = self.n_alloc
                self.n_alloc += 1
                self.events.append(n)

        def _free(self, k: int) -> None:
            super()._free(k)
            i = self.index.pop(k, None)
            if i is not None:
                self.events.append(-(i + 1))

    return AllocRecorder


def _chunked_loss(model, ids, mask, labels, chunk: int = 256):
    """trl's SFT ``chunked_nll`` loss as ftadvisor.memory.loss_logits_bytes describes it
    (trl/trainer/sft_trainer.py, _CHUNKED_LM_HEAD_CHUNK_SIZE = 256): the decoder's last hidden
    states, then lm_head + cross-entropy per 256-token chunk under non-reentrant checkpointing, each
    chunk in fp32 (``h.float() @ w.float().t()``)."""
    import torch
    import torch.nn.functional as F
    from torch.utils.checkpoint import checkpoint

    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    hidden = inner.model(input_ids=ids, attention_mask=mask).last_hidden_state[:, :-1]
    target = labels[:, 1:].reshape(-1)
    flat = hidden.reshape(-1, hidden.shape[-1])
    w = inner.get_output_embeddings().weight

    def piece(h, y):
        return F.cross_entropy(h.float() @ w.float().t(), y, reduction="sum")

    total = None
    for h, y in zip(flat.split(chunk), target.split(chunk)):
        part = checkpoint(piece, h, y, use_reentrant=False)
        total = part if total is None else total + part
    return total / target.numel()


def record(technique: str, regime: str, steps: int, batch: int, seq_len: int, fake: bool, seed: int = 0,
           checkpointing: bool = True, loss: str = "full"):
    """The event list of ``steps`` training steps, and the batch lengths used."""
    import contextlib

    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    lengths = batch_lengths(regime, steps, batch, seq_len, seed)
    cfg = LlamaConfig(**(WIDE if fake else TINY))
    ctx = trace_mode() if fake else contextlib.nullcontext()
    with ctx:
        model = LlamaForCausalLM(cfg)
        if technique == "lora":
            from peft import LoraConfig, get_peft_model

            model = model.to(torch.bfloat16)
            model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, target_modules="all-linear"))
            for p in model.parameters():
                if p.requires_grad:
                    p.data = p.data.float()
        model.config.use_cache = False
        if checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        if technique == "lora" and checkpointing:
            model.enable_input_require_grads()
        model.train()
        params = [p for p in model.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=1e-4, fused=not fake)
        rec = _recorder_class()(fake)
        with rec:
            for p in model.parameters():  # model.to("cuda"): one block per parameter, in order
                rec.add(p, "weights")
            for b in model.buffers():
                rec.add(b, "weights")
            for T in lengths:
                ids = torch.randint(0, cfg.vocab_size, (batch, T))
                mask = torch.ones(batch, T, dtype=torch.long)
                labels = ids.clone()
                with torch.autocast("cpu", dtype=torch.bfloat16):
                    if loss == "chunked":
                        value = _chunked_loss(model, ids, mask, labels)
                    else:
                        value = model(input_ids=ids, attention_mask=mask, labels=labels).loss
                value.backward()
                opt.step()
                opt.zero_grad(set_to_none=True)
                del ids, mask, labels, value
    return rec.events, lengths


def replay_all(events: list[int]) -> dict:
    """Peaks with and without expandable segments, and the reserved/requested ratios."""
    from ftadvisor.allocator import replay

    out = {}
    for exp in (False, True):
        r = replay(events, expandable_segments=exp)
        key = "expandable" if exp else "native"
        out[key] = {"peak_requested_bytes": r.peak_requested_bytes, "peak_allocated_bytes": r.peak_allocated_bytes,
                    "peak_reserved_bytes": r.peak_reserved_bytes, "segments": r.segments,
                    "reserved_over_requested": round(r.reserved_over_requested, 4)}
    return out


def summarize() -> list[dict]:
    """Every stored trace replayed: reserved/requested with native and expandable segments, and the
    least capacity the native allocator needs with its out-of-memory retry (``required_capacity``)."""
    from ftadvisor.allocator import replay, required_capacity

    rows = []
    for path in sorted(OUT_DIR.glob("*.json.gz")):
        with gzip.open(path, "rt") as f:
            tr = json.load(f)
        ev = tr["events"]
        nat, exp = replay(ev), replay(ev, expandable_segments=True)
        req = nat.peak_requested_bytes
        rows.append({"name": tr["name"], "technique": tr["technique"], "regime": tr["regime"], "loss": tr.get("loss", "full"),
                     "fake": tr["fake"], "peak_requested_bytes": req,
                     "native_reserved_over_requested": round(nat.peak_reserved_bytes / req, 4),
                     "expandable_reserved_over_requested": round(exp.peak_reserved_bytes / req, 4),
                     "native_required_capacity_over_requested": round(required_capacity(ev) / req, 4)})
    return rows


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--summarize", action="store_true", help="replay every stored trace into summary.jsonl")
    ap.add_argument("--name")
    ap.add_argument("--technique", choices=("full", "lora"), default="full")
    ap.add_argument("--regime", choices=("fixed", "varying"), default="fixed")
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq-len", type=int, default=1024)
    ap.add_argument("--fake", action="store_true")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-checkpointing", action="store_true")
    ap.add_argument("--loss", choices=("full", "chunked"), default="full",
                    help="full: transformers' ForCausalLMLoss over all logits; chunked: trl's chunked_nll")
    args = ap.parse_args(argv)
    if args.summarize:
        rows = summarize()
        (OUT_DIR / "summary.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        for r in rows:
            print(r)
        return
    if not args.name:
        ap.error("--name is required")
    import torch

    t0 = time.perf_counter()
    events, lengths = record(args.technique, args.regime, args.steps, args.batch, args.seq_len, args.fake,
                             seed=args.seed, checkpointing=not args.no_checkpointing, loss=args.loss)
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    cmd = "python -m ftadvisor.calibration.alloc_trace " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:]))
    header = {"name": args.name, "command": cmd, "technique": args.technique, "regime": args.regime,
              "steps": args.steps, "batch": args.batch, "seq_len": args.seq_len, "fake": args.fake, "seed": args.seed,
              "gradient_checkpointing": not args.no_checkpointing, "loss": args.loss,
              "model": WIDE if args.fake else TINY, "batch_lengths": lengths, "torch": torch.__version__,
              "precision": "fp32 weights, bf16 autocast" + (" (base bf16, LoRA fp32)" if args.technique == "lora" else ""),
              "events_format": "n > 0: allocate n bytes (allocation k = k-th positive); -(k+1): free allocation k"}
    with gzip.open(OUT_DIR / f"{args.name}.json.gz", "wt") as f:
        json.dump({**header, "events": events}, f, separators=(",", ":"))
    row = {k: header[k] for k in ("name", "command", "technique", "regime", "steps", "batch", "seq_len", "fake",
                                  "gradient_checkpointing", "loss", "batch_lengths")}
    row["events"] = len(events)
    row["replay"] = replay_all(events)
    with open(OUT_DIR / "replays.jsonl", "a") as f:
        f.write(json.dumps(row) + "\n")
    print(json.dumps(row, indent=1), f"\n{time.perf_counter() - t0:.1f} s")


if __name__ == "__main__":
    main()
