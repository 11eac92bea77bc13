"""Throughput predictions for the regimes where the step is bound by links, not by the GPU.

Run from the repository root (about a second, no GPU, no network):

    .venv/bin/python calibration/benchmarks/regimes.py

For each case it prints the predicted tokens/s per GPU, the step time split into compute (GPU
kernels and host dispatch), exposed communication, exposed host-link traffic (CPU offload) and the
CPU optimizer step, the link that bounds the collectives, and the source key each term rests on
(the legend at the end gives the full citation). Cases: FSDP / ZeRO-3 with CPU offload on 8 H100,
4 RTX 4090 without peer-to-peer against a hypothetical P2P driver, 2 and 4 nodes of 8 H100 over
400 and 100 Gb/s per GPU, ZeRO-Offload on a GH200 (NVLink-C2C) against an H100 (PCIe 5.0), and
one published offload slow-down used only as a final sanity check (never fitted).

Only the public API is used: ftadvisor.make_plan, ftadvisor.resolve_hardware, ftadvisor.estimate_speed
and the fields of the SpeedEstimate it returns. Nothing here is timed or asserted.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import ftadvisor as fa  # noqa: E402
from ftadvisor.schema import NodeSpec  # noqa: E402

# Which source keys (SpeedEstimate.sources) each printed term rests on.
TERM_KEYS = {
    "compute": ("kaplan", "mamf", "mamf_v1", "fa2", "fa3", "hf_llama", "device_h200", "korthikanti"),
    "comm": ("ring", "ddp", "zero", "fsdp", "nccl_tuning", "nccl_tests_p2p", "nccl_tests_nic", "nccl_env",
             "pcie_measured", "ddr_peak", "stream"),
    "offload": ("zero_offload", "zero_offload_step", "ds_pinned", "pcie_measured", "fsdp_offload", "ds_grad_accum"),
    "cpu_opt": ("zero_offload_step", "cpu_adam_measured", "omp_threads", "ddr_peak", "stream"),
}


def card(card_id: str, **node) -> object:
    """A hardware profile, with node fields replaced (p2p, inter_node_gbps ...) when given."""
    hw = fa.resolve_hardware(card_id)
    if not node:
        return hw
    base = hw.node.model_dump(exclude_none=True) if hw.node else {}
    return hw.model_copy(update={"node": NodeSpec(**{**base, **node})})


CKPT = dict(gradient_checkpointing=True, seq_len=2048, micro_batch_size=1)

CASES: list[tuple[str, str, object, dict]] = [
    ("8B full FSDP, 8xH100", "llama-3.1-8b", card("h100"),
     dict(technique="full", num_gpus=8, sharding="fsdp", gradient_accumulation_steps=4, **CKPT)),
    ("8B full FSDP+CPUOffload, 8xH100", "llama-3.1-8b", card("h100"),
     dict(technique="full", num_gpus=8, sharding="fsdp", cpu_offload=True, gradient_accumulation_steps=4, **CKPT)),
    ("70B full ZeRO-3, 8xH100", "llama-3.1-70b", card("h100"),
     dict(technique="full", num_gpus=8, sharding="zero3", gradient_accumulation_steps=4, **CKPT)),
    ("70B full ZeRO-3+offload, 8xH100", "llama-3.1-70b", card("h100"),
     dict(technique="full", num_gpus=8, sharding="zero3", cpu_offload=True, gradient_accumulation_steps=4, **CKPT)),
    ("8B LoRA DDP, 4xRTX4090 no P2P", "llama-3.1-8b", card("rtx4090"),
     dict(technique="lora", num_gpus=4, gpus_per_node=4, sharding="ddp", gradient_accumulation_steps=1,
          gradient_checkpointing=True, seq_len=1024, micro_batch_size=1)),
    ("8B LoRA DDP, 4xRTX4090 P2P (hyp.)", "llama-3.1-8b", card("rtx4090", p2p=True),
     dict(technique="lora", num_gpus=4, gpus_per_node=4, sharding="ddp", gradient_accumulation_steps=1,
          gradient_checkpointing=True, seq_len=1024, micro_batch_size=1)),
    ("1B full DDP, 4xRTX4090 no P2P", "llama-3.2-1b", card("rtx4090"),
     dict(technique="full", num_gpus=4, gpus_per_node=4, sharding="ddp", **CKPT)),
    ("1B full DDP, 4xRTX4090 P2P (hyp.)", "llama-3.2-1b", card("rtx4090", p2p=True),
     dict(technique="full", num_gpus=4, gpus_per_node=4, sharding="ddp", **CKPT)),
]
for nodes in (2, 4):
    for gbits in (400, 100):
        CASES.append((f"8B full FSDP, {nodes}x8 H100, {gbits} Gb/s/GPU", "llama-3.1-8b",
                      card("h100", inter_node_gbps=gbits / 8),
                      dict(technique="full", num_gpus=8 * nodes, num_nodes=nodes, sharding="fsdp",
                           gradient_accumulation_steps=1, **CKPT)))
    CASES.append((f"8B full DDP, {nodes}x8 H100, 100 Gb/s/node", "llama-3.1-8b",
                  card("h100", inter_node_gbps=100 / 8 / 8),
                  dict(technique="full", num_gpus=8 * nodes, num_nodes=nodes, sharding="ddp",
                       optimizer="adamw_8bit", gradient_accumulation_steps=1, **CKPT)))
CASES += [
    ("8B full ZeRO-Offload, 1xGH200 (C2C)", "llama-3.1-8b", card("gh200"),
     dict(technique="full", num_gpus=1, sharding="zero2", cpu_offload=True, gradient_accumulation_steps=4, **CKPT)),
    ("8B full ZeRO-Offload, 1xH100 (PCIe5)", "llama-3.1-8b", card("h100"),
     dict(technique="full", num_gpus=1, sharding="zero2", cpu_offload=True, gradient_accumulation_steps=4, **CKPT)),
]

# Final sanity check only (never fitted): chenyaofo's gist "LLaMA-7B deepspeed benchmark" (8 A800,
# DeepSpeed 0.14.2, seq 4096, ZeRO-3 + HF checkpointing, 2 per device x 4 accumulation): 4.45 without
# and 2.05 with offload_optimizer -- offload 2.2x slower. A800 = A100 with 400 GB/s NVLink; run on a100.
SANITY = [
    ("7B ZeRO-3 ckpt, 8xA100 (gist)", "llama-2-7b", card("a100-80gb"),
     dict(technique="full", num_gpus=8, sharding="zero3", gradient_checkpointing=True, seq_len=4096,
          micro_batch_size=2, gradient_accumulation_steps=4)),
    ("7B ZeRO-3 ckpt+offload (gist)", "llama-2-7b", card("a100-80gb"),
     dict(technique="full", num_gpus=8, sharding="zero3", cpu_offload=True, gradient_checkpointing=True,
          seq_len=4096, micro_batch_size=2, gradient_accumulation_steps=4)),
]


def keys_for(sp, term: str) -> str:
    have = [s.split(":", 1)[0] for s in sp.sources]
    return ",".join(k for k in have if k in TERM_KEYS[term]) or "-"


def row(name: str, model: str, hw, fields: dict) -> tuple[str, object]:
    fields = dict(fields)
    plan = fa.make_plan(fields.pop("technique"), **fields)
    sp = fa.estimate_speed(model, hw, plan)
    compute = sp.compute_seconds + sp.memory_bound_seconds + sp.launch_overhead_seconds
    bound = next((a for a in sp.assumptions if a.startswith("collectives over")), "")
    bound = bound.split("bounded by ", 1)[1].split(";")[0] if bound else "-"
    line = (f"{name:<38} {sp.tokens_per_second_per_gpu:>8,.0f} {sp.seconds_per_optimizer_step:>7.3f} "
            f"{compute:>7.3f} {sp.communication_seconds:>7.3f} {sp.offload_seconds:>7.3f} {sp.optimizer_seconds:>7.3f}"
            f"  {sp.bottleneck}")
    detail = (f"{'':<38} compute[{keys_for(sp, 'compute')}] comm[{keys_for(sp, 'comm')}] "
              f"offload[{keys_for(sp, 'offload')}] cpu_opt[{keys_for(sp, 'cpu_opt')}]\n{'':<38} link: {bound}")
    return line + "\n" + detail, sp


def main() -> None:
    head = (f"{'case':<38} {'tok/s/GPU':>8} {'step s':>7} {'compute':>7} {'comm':>7} {'offload':>7} {'cpu_opt':>7}"
            "  bottleneck")
    print("Predicted step time per GPU (seconds per optimizer step; comm and offload are the parts not hidden "
          "behind compute)\n")
    print(head)
    print("-" * len(head))
    used: dict[str, str] = {}
    for case in CASES:
        text, sp = row(*case)
        print(text)
        used.update(s.split(": ", 1) for s in sp.sources)
    print("\nFinal sanity check (published measurement, not fitted):")
    out = [row(*case) for case in SANITY]
    for text, sp in out:
        print(text)
        used.update(s.split(": ", 1) for s in sp.sources)
    ratio = out[0][1].tokens_per_second_per_gpu / out[1][1].tokens_per_second_per_gpu
    print(f"{'':<38} predicted offload slow-down {ratio:.2f}x; the gist measured 4.45 / 2.05 = 2.17x")
    print("\nSources:")
    for key in sorted(used):
        print(f"  {key}: {used[key]}")


if __name__ == "__main__":
    main()
