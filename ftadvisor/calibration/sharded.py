"""The direct path for sharded CPU cases: DeepSpeed ZeRO-1/2/3 and torch FSDP2 with several
processes over gloo, measured per rank with the live-tensor meter (``measure.LiveTensorMeter``).

The runner starts it for a ``cpu`` case whose plan shards (``zero1``/``zero2``/``zero3``/``fsdp``)
and that has ``num_processes > 1``:

    python -m torch.distributed.run --nproc_per_node 2 --master_addr 127.0.0.1 --master_port P \\
        -m ftadvisor.calibration.runner --case CASE.json --out RESULT.json

Each rank writes ``RESULT.json.rank<r>`` and the runner merges them (``runner._collect``).

Why not ``accelerate launch`` + the HF Trainer (the path of the single-process and DDP cases):
accelerate turns FSDP on only for accelerator distributed types, never MULTI_CPU
(accelerate/state.py ``AcceleratorState.__init__``), so an FSDP case would silently train as DDP;
and its DeepSpeed path on CPU misreports the ranks. This module therefore sets up what the
launcher's run would set up, by hand:

- ZeRO: the launcher's ``ds_config.json`` (``ftadvisor.launch.deepspeed_config``) with its "auto"
  values filled the way transformers fills them (integrations/deepspeed.py
  ``HfTrainerDeepSpeedConfig.trainer_config_process`` / ``trainer_config_finalize``:
  reduce_bucket_size = h^2, stage3_prefetch_bucket_size = int(0.9 h^2),
  stage3_param_persistence_threshold = 10 h), ``deepspeed.init_distributed(dist_backend="gloo")``,
  the model built inside ``deepspeed.zero.Init`` for stage 3 (transformers' from_config under an
  active ZeRO-3 config, which the launcher's ``zero3_init_flag`` asks for), a torch AdamW handed to
  ``deepspeed.initialize`` (what the Trainer hands it), ``engine.backward`` / ``engine.step``.
- FSDP2: ``fully_shard`` on every decoder layer, then on the root (accelerate's
  TRANSFORMER_BASED_WRAP over ``_no_split_modules`` + ``fsdp_reshard_after_forward: True``, the
  launcher's ``accelerate_config``), accelerate's mixed-precision policy (param, reduce and output
  dtype bf16) and its autocast around the forward for bf16-mixed (see ``_fsdp_loop``), then the
  Trainer's fused torch AdamW over the sharded (DTensor) parameters.

Steps: ``warmup`` untimed steps, ``steps`` timed steps with the meter off the dispatch stack, then
``steps`` measured steps with it on, after a ``gc`` scan of everything alive (parameters, shards,
optimizer state, DeepSpeed's flat buffers). Phases as in ``measure``: ``forward_backward`` up to
the optimizer step, ``optimizer_step`` for the step itself.

Only the ``full`` technique runs here (the sharding rules are about model states; a PEFT model
under ZeRO-3 goes through peft's own wrappers, which this path does not reproduce).

The per-rank table of a results file (case, rank, measured MiB, predicted MiB, error):

    python -m ftadvisor.calibration.sharded calibration/results/cpu/cpu-sharded.jsonl
"""

from __future__ import annotations

import statistics
import time
from typing import Any

DIRECT_SHARDINGS = ("zero1", "zero2", "zero3", "fsdp")


def is_direct(case, backend: str) -> bool:
    """Whether the runner measures this case through this module (torchrun, no accelerate)."""
    return backend == "cpu" and case.num_processes > 1 and case.plan.get("sharding") in DIRECT_SHARDINGS


def launch_command(case, python: str, port: int) -> list[str]:
    """torchrun (``torch.distributed.run``) of the runner's child entry, one process per rank."""
    return [python, "-m", "torch.distributed.run", "--nproc_per_node", str(case.num_processes), "--nnodes", "1",
            "--master_addr", "127.0.0.1", "--master_port", str(port), "-m", "ftadvisor.calibration.runner"]


def filled_deepspeed_config(plan, hidden_size: int, world: int) -> dict[str, Any]:
    """The launcher's DeepSpeed config with its "auto" values as transformers fills them
    (integrations/deepspeed.py: trainer_config_process for batch sizes, clipping and precision,
    trainer_config_finalize for the hidden-size based bucket sizes)."""
    from ftadvisor.launch import deepspeed_config

    cfg = deepspeed_config(plan)
    mbs, gas = plan.micro_batch_size, plan.gradient_accumulation_steps
    cfg.update(train_micro_batch_size_per_gpu=mbs, gradient_accumulation_steps=gas,
               train_batch_size=mbs * gas * world, gradient_clipping=1.0)  # TrainingArguments.max_grad_norm = 1.0
    cfg["bf16"] = {"enabled": plan.precision in ("bf16-mixed", "bf16-true")}
    cfg["fp16"] = {"enabled": plan.precision == "fp16-mixed"}
    z = cfg["zero_optimization"]
    h = int(hidden_size)
    if z.get("reduce_bucket_size") == "auto":
        z["reduce_bucket_size"] = h * h
    if z.get("stage3_prefetch_bucket_size") == "auto":
        z["stage3_prefetch_bucket_size"] = int(0.9 * h * h)
    if z.get("stage3_param_persistence_threshold") == "auto":
        z["stage3_param_persistence_threshold"] = 10 * h
    # the Trainer hands DeepSpeed its own torch optimizer (transformers deepspeed_init)
    cfg["zero_allow_untested_optimizer"] = True
    return cfg


def _hf_config(case):
    from transformers import AutoConfig

    cfg = dict(case.config_at())
    mt = cfg.pop("model_type")
    for k in ("transformers_version", "architectures", "_name_or_path"):
        cfg.pop(k, None)
    hf = AutoConfig.for_model(mt, **cfg)
    hf._attn_implementation = case.plan.get("attention") if case.plan.get("attention") in ("sdpa", "eager") else "sdpa"
    hf.use_cache = False
    return hf


def _build_model(case, hf, dtype, zero_init_config: dict | None):
    import contextlib

    import torch
    from transformers import AutoModelForCausalLM

    torch.manual_seed(case.seed)
    ctx = contextlib.nullcontext()
    if zero_init_config is not None:
        import deepspeed

        # zero.Init replaces torch.Tensor.__new__ while active; the first import of the model's
        # module (transformers imports it lazily) pulls in torch._dynamo, whose polyfill check
        # rejects the patched signature. Import the model class before entering the context.
        AutoModelForCausalLM._model_mapping[type(hf)]  # noqa: B018 - imports modeling_<type>

        ctx = deepspeed.zero.Init(config_dict_or_path=zero_init_config)
    with ctx:
        model = AutoModelForCausalLM.from_config(hf, dtype=dtype)
    if case.plan.get("gradient_checkpointing"):
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    return model


def _adamw(params, plan: dict):
    """The optimizer the Trainer would build: plan optimizer ``adamw`` is transformers'
    ``adamw_torch_fused`` (ftadvisor/train/engine.py), i.e. ``torch.optim.AdamW(fused=True)``, which
    updates in place (no per-step temporaries); weight decay 0 and lr 5e-5 are TrainingArguments'
    defaults."""
    import torch

    from ftadvisor.calibration.measure import Unsupported

    if plan.get("optimizer", "adamw") != "adamw":
        raise Unsupported(f"the direct sharded path builds optimizer 'adamw' only (got {plan.get('optimizer')!r})")
    return torch.optim.AdamW(params, lr=5e-5, weight_decay=0.0, fused=True)


class _Loop:
    """One sharded training setup: ``step()`` runs forward, backward and the optimizer step with the
    phase callbacks around the optimizer step."""

    def __init__(self, forward_backward, optimizer_step, module, optimizer, notes):
        self.forward_backward, self.optimizer_step = forward_backward, optimizer_step
        self.module, self.optimizer, self.notes = module, optimizer, notes


def _zero_loop(case, world: int) -> _Loop:
    import deepspeed
    import torch

    from ftadvisor.schema import TrainingPlan

    plan = TrainingPlan(**case.plan)
    hf = _hf_config(case)
    cfg = filled_deepspeed_config(plan, hf.hidden_size, world)
    stage = cfg["zero_optimization"]["stage"]
    model = _build_model(case, hf, torch.float32, cfg if stage == 3 else None)
    opt = _adamw(model.parameters(), case.plan)
    engine, optimizer, _, _ = deepspeed.initialize(model=model, optimizer=opt, config=cfg)
    z = cfg["zero_optimization"]
    notes = [f"deepspeed {deepspeed.__version__} ZeRO-{stage} over gloo, bf16={cfg['bf16']['enabled']}, "
             f"reduce_bucket_size={z['reduce_bucket_size']}"
             + (f", stage3_prefetch_bucket_size={z['stage3_prefetch_bucket_size']}, "
                f"stage3_param_persistence_threshold={z['stage3_param_persistence_threshold']}" if stage == 3 else "")]

    def fb(ids):
        loss = engine(input_ids=ids, labels=ids).loss
        engine.backward(loss)
        return loss

    def step():
        engine.step()

    return _Loop(fb, step, engine.module, optimizer, notes)


def _fsdp_loop(case, world: int) -> _Loop:
    import torch
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    from ftadvisor.schema import TrainingPlan

    plan = TrainingPlan(**case.plan)
    hf = _hf_config(case)
    true_dtype = {"bf16-true": torch.bfloat16, "fp16-mixed": torch.float32}.get(plan.precision, torch.float32)
    model = _build_model(case, hf, true_dtype, None)
    # accelerate's FSDP2 policy for mixed precision: param, reduce and output dtype all the compute
    # dtype (accelerate/utils/dataclasses.py FullyShardedDataParallelPlugin.set_mixed_precision), and
    # the forward under torch.autocast with outputs converted to fp32 (accelerate/accelerator.py
    # prepare_model: native_amp is on for bf16 on every distributed type but DeepSpeed).
    mp, amp = None, None
    if plan.precision in ("bf16-mixed", "fp16-mixed"):
        amp = torch.bfloat16 if plan.precision == "bf16-mixed" else torch.float16
        mp = MixedPrecisionPolicy(param_dtype=amp, reduce_dtype=amp, output_dtype=amp)
    kw = {"reshard_after_forward": True}
    if mp is not None:
        kw["mp_policy"] = mp
    layer_names = set(getattr(model, "_no_split_modules", None) or ())
    units = 0
    for m in model.modules():
        if type(m).__name__ in layer_names:
            fully_shard(m, **kw)
            units += 1
    fully_shard(model, **kw)
    opt = _adamw(model.parameters(), case.plan)
    if amp is not None:  # replaced as accelerate does, so FSDP's module hooks still run around it
        from accelerate.utils import convert_outputs_to_fp32

        model.forward = convert_outputs_to_fp32(torch.autocast("cpu", dtype=amp)(model.forward))
    notes = [f"torch {torch.__version__} FSDP2 fully_shard over gloo: {units} layer units + root, "
             f"reshard_after_forward=True, mp_policy={mp}, autocast={amp}"]

    def fb(ids):
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        return loss

    def step():
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)  # TrainingArguments.max_grad_norm
        opt.step()
        opt.zero_grad(set_to_none=True)

    return _Loop(fb, step, model, opt, notes)


def _sharded_meter():
    """The cpu live-tensor meter with two additions sharded training needs:

    1. a DTensor (FSDP2's sharded parameters, their gradients and Adam state) counts as its local
       shard (``DTensor._local_tensor``): the wrapper has no storage of its own;
    2. storages that change size in place: FSDP2 frees and re-allocates the unsharded parameters by
       ``UntypedStorage.resize_`` (torch/distributed/fsdp/_fully_shard/_fsdp_param.py
       ``free_storage`` / ``alloc_storage``), a C++ call no dispatch mode sees; ``track_resizes``
       wraps ``torch.UntypedStorage.resize_`` while measuring so the running sum follows it."""
    import contextlib
    import weakref

    import torch

    base = _meter_class_cached()

    class ShardedMeter(base):
        def _storage(self, t):
            local = getattr(t, "_local_tensor", None)
            return super()._storage(local if isinstance(local, torch.Tensor) else t)

        def _note(self) -> None:
            before = self.top_at_peak
            super()._note()
            if self.top_at_peak is not before:  # a new snapshot: copy the entries, resizes mutate them
                self.top_at_peak = [list(e) for e in self.top_at_peak]

        def _resized(self, st) -> None:
            k, n = id(st), int(st.nbytes())
            entry = self.live.get(k)
            if entry is None:
                if n == 0:
                    return
                self.live[k] = [n, "other", self._op, (n,), "bytes"]
                self.by_tag["other"] += n
                self.cur += n
                weakref.finalize(st, self._free, k)
            else:
                delta = n - entry[0]
                entry[0] = n
                self.by_tag[entry[1]] += delta
                self.cur += delta
            self._note()

        @contextlib.contextmanager
        def track_resizes(self):
            original = torch.UntypedStorage.resize_
            meter = self

            def resize_(storage, size):
                out = original(storage, size)
                meter._resized(storage)
                return out

            torch.UntypedStorage.resize_ = resize_
            try:
                yield
            finally:
                torch.UntypedStorage.resize_ = original

    return ShardedMeter(fake=False)


def _meter_class_cached():
    from ftadvisor.calibration.measure import _meter_class

    return _meter_class()


def measure_sharded(case) -> dict[str, Any]:
    """This rank's measurement of one sharded case (called in every torchrun process)."""
    import contextlib
    import gc

    import torch

    from ftadvisor.calibration.measure import METHODS_TEXT, Unsupported

    sharding = case.plan.get("sharding")
    if case.plan["technique"] != "full":
        raise Unsupported(f"the direct sharded path runs technique 'full' only (got {case.plan['technique']!r})")
    if case.plan.get("cpu_offload"):
        raise Unsupported("cpu_offload on the CPU backend: host and device are the same memory")
    if sharding != "fsdp":
        import deepspeed
        import deepspeed.ops

        # deepspeed/comm/torch.py build_shm_op JIT-compiles a shared-memory all-reduce for CPU runs
        # (about a minute with a C++ compiler); marked unavailable, the collectives use gloo.
        deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
        deepspeed.init_distributed(dist_backend="gloo")
    else:
        torch.distributed.init_process_group("gloo")
    try:
        world, rank = torch.distributed.get_world_size(), torch.distributed.get_rank()
        loop = _zero_loop(case, world) if sharding != "fsdp" else _fsdp_loop(case, world)
        plan = case.plan
        gen = torch.Generator().manual_seed(case.seed * 1000 + rank)  # each rank its own batch
        vocab = int(case.config.get("vocab_size", 32000))
        gas = int(plan["gradient_accumulation_steps"])

        def batch():
            return torch.randint(3, vocab, (plan["micro_batch_size"], plan["seq_len"]), generator=gen)

        meter = _sharded_meter()
        losses: list[float] = []
        secs: list[float] = []

        def one_step(measured: bool):
            if measured:
                meter.set_phase("forward_backward")
            for _ in range(gas):
                losses.append(float(loop.forward_backward(batch()).detach()))
            if measured:
                meter.set_phase("optimizer_step")
            loop.optimizer_step()

        stack = contextlib.ExitStack()
        stack.enter_context(meter.track_resizes())  # from the start: sizes at registration must be current
        for _ in range(case.warmup):
            one_step(False)
        for _ in range(case.steps):  # timed, meter off the dispatch stack
            torch.distributed.barrier()
            t0 = time.perf_counter()
            one_step(False)
            secs.append(time.perf_counter() - t0)
        gc.collect()
        torch.distributed.barrier()
        meter.resume()
        meter.scan([loop.module], loop.optimizer)
        hooks = [p.register_post_accumulate_grad_hook(lambda q: meter.retag(q.grad, "gradients") if q.grad is not None
                                                      else None) for p in loop.module.parameters() if p.requires_grad]
        meter.open_window("forward_backward")
        try:
            for _ in range(case.steps):
                one_step(True)
        finally:
            meter.close_window()
            meter.suspend()
            for h in hooks:
                h.remove()
            stack.close()
        med = statistics.median(secs) if secs else None
        tps = plan["micro_batch_size"] * gas * plan["seq_len"]
        out = {
            "backend": "cpu",
            "method": METHODS_TEXT["cpu"] + f"; one meter per rank (torchrun, gloo, {sharding}, no accelerate)",
            "warmup": case.warmup,
            "steps": case.steps,
            "steps_run": case.warmup + 2 * case.steps,
            "steps_measured": case.steps,
            "rank": rank,
            "world_size": world,
            "phases_bytes": dict(meter.phase_peak),
            "peak_allocated_bytes": int(meter.peak),
            "peak_phase": meter.peak_phase,
            "peak_split_bytes": {k: int(v) for k, v in meter.peak_by_tag.items()},
            "peak_op": meter.peak_op,
            "largest_at_peak": [{"bytes": e[0], "kind": e[1], "op": e[2], "shape": list(e[3]), "dtype": e[4]}
                                for e in meter.top_at_peak],
            "ops_tracked": meter.ops,
            "losses": losses,
            "engine_notes": loop.notes,
            "step_seconds": secs,
            "step_time_s": med,
            "tokens_per_step": tps,
            "tokens_per_s": tps / med if med else None,
            "torch_threads": torch.get_num_threads(),
            "num_layers": case.num_layers or case.full_layers(),
        }
        torch.distributed.barrier()
        return out
    finally:
        torch.distributed.destroy_process_group()


def rank_rows(records: list[dict]) -> list[tuple[str, int, float, float, float]]:
    """(label, rank, measured MiB, predicted MiB, error %) for every rank of every ok multi-rank record;
    the prediction is the estimator's per-GPU peak for the record's plan (the same for every rank)."""
    rows = []
    for r in records:
        m = r.get("measurement") or {}
        if r.get("status") != "ok" or not m.get("ranks"):
            continue
        pred = r["prediction"]["memory"]["peak_allocated_bytes"]
        for i, rk in enumerate(m["ranks"]):
            meas = rk["peak_allocated_bytes"]
            rows.append((r["label"], i, meas / 2**20, pred / 2**20, 100.0 * (pred - meas) / meas))
    return rows


def format_rank_table(records: list[dict]) -> str:
    lines = [f"{'case':<32} {'rank':>4} {'measured MiB':>13} {'predicted MiB':>14} {'error':>7}"]
    for label, rank, meas, pred, err in rank_rows(records):
        lines.append(f"{label[:32]:<32} {rank:>4} {meas:>13.3f} {pred:>14.3f} {err:>+6.1f}%")
    return "\n".join(lines)


if __name__ == "__main__":
    import sys

    from ftadvisor.calibration.store import load_results

    for path in sys.argv[1:]:
        print(format_rank_table(load_results(path)))
