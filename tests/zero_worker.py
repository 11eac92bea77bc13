"""One process of tests/test_multinode.py's DeepSpeed check; run two of them under torchrun:

    python -m torch.distributed.run --nproc_per_node 2 tests/zero_worker.py OUT MODEL RUN_DIR [RUN_DIR ...]

For each run directory (written by ``ftadvisor launch --dry-run`` with sharding=zero2 or zero3), its
``ds_config.json`` gets its "auto" values filled the way the HF Trainer fills them
(transformers/integrations/deepspeed.py HfTrainerDeepSpeedConfig.trainer_config_process and
trainer_config_finalize), then ``deepspeed.initialize`` wraps the tiny model over gloo and trains 2
steps. Each rank writes ``OUT/<run name>-rank<r>.json``: the sizes it holds per parameter (ZeRO-3:
``ds_tensor``, its parameter shard) or per optimizer group (ZeRO-2: its fp32 partition), the full
sizes, the losses and a fingerprint of the whole model after training.
"""

from __future__ import annotations

import json
import os
import sys
import time

import torch


def _fingerprint(engine, stage: int) -> list[float]:
    """(sum, sum of squares) in float64 over every parameter, gathered whole under ZeRO-3."""
    import deepspeed

    params = list(engine.module.parameters())
    ctx = deepspeed.zero.GatheredParameters(params) if stage == 3 else _null()
    with ctx:
        s = sum(float(p.detach().double().sum()) for p in params)
        q = sum(float(p.detach().double().pow(2).sum()) for p in params)
    return [s, q]


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *a):
        return False


def run_one(run_dir: str, model_dir: str, out: str) -> None:
    import deepspeed
    from transformers import AutoModelForCausalLM, TrainingArguments
    from transformers.integrations.deepspeed import HfTrainerDeepSpeedConfig

    t0 = time.perf_counter()
    rank = torch.distributed.get_rank()
    with open(os.path.join(run_dir, "ds_config.json")) as fh:
        raw = json.load(fh)
    args = TrainingArguments(output_dir=os.path.join(out, "args"), per_device_train_batch_size=2,
                             gradient_accumulation_steps=1, max_grad_norm=1.0, learning_rate=1e-2, use_cpu=True,
                             report_to="none")
    hf = HfTrainerDeepSpeedConfig(raw)
    hf.trainer_config_process(args)
    # With a ZeRO-3 config alive, from_pretrained builds the model already partitioned (deepspeed.zero.Init,
    # transformers' is_deepspeed_zero3_enabled), as the launcher's zero3_init_flag asks.
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    hf.trainer_config_finalize(args, model, 2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    engine, optimizer, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, config=hf.config)
    stage = hf.config["zero_optimization"]["stage"]
    start = _fingerprint(engine, stage)
    if stage == 3:
        local = [int(p.ds_tensor.numel()) for p in engine.module.parameters()]
        full = [int(p.ds_numel) for p in engine.module.parameters()]
    else:
        local = [int(t.numel()) for t in optimizer.single_partition_of_fp32_groups]
        full = [sum(int(p.numel()) for p in group) for group in optimizer.bit16_groups]
    ids = torch.randint(3, 500, (2, 16), generator=torch.Generator().manual_seed(rank))  # each rank its own batch
    losses = []
    for _ in range(2):
        loss = engine(input_ids=ids, labels=ids).loss
        engine.backward(loss)
        engine.step()
        losses.append(float(loss))
    rec = {"rank": rank, "world": torch.distributed.get_world_size(), "stage": stage, "local": local, "full": full,
           "losses": losses, "start": start, "end": _fingerprint(engine, stage), "config": hf.config,
           "seconds": time.perf_counter() - t0}
    with open(os.path.join(out, f"{os.path.basename(run_dir)}-rank{rank}.json"), "w") as fh:
        json.dump(rec, fh)
    engine.destroy()
    torch.distributed.barrier()


def main() -> None:
    import deepspeed
    import deepspeed.ops

    # deepspeed/comm/torch.py (build_shm_op) JIT-compiles a shared-memory all-reduce for CPU runs,
    # about a minute with a C++ compiler; marked unavailable, the same collectives go through gloo.
    deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
    out, model_dir, *run_dirs = sys.argv[1:]
    deepspeed.init_distributed(dist_backend="gloo")
    try:
        for run_dir in run_dirs:
            run_one(run_dir, model_dir, out)
    finally:
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
