"""The step-time regimes of issue 11 part 4 (speed side), checked against numbers written out by hand:
CPU offload (host link, CPU optimizer), consumer GPUs without peer-to-peer, collectives across nodes,
and the AMD CDNA2 / GH200 hardware data (ftadvisor/links.py, ftadvisor/speed.py).

Run: .venv/bin/python -m pytest -q tests/test_speed_regimes.py
"""

from __future__ import annotations

import pytest

import ftadvisor as fa
from ftadvisor import links, speed
from ftadvisor.estimator import make_plan
from ftadvisor.host import node_for
from ftadvisor.schema import NodeSpec
from ftadvisor.speed import estimate_speed
from tests.conftest import LLAMA31_8B

P_8B = 8_030_261_248  # Llama-3.1-8B parameters (tests/test_speed.py counts them by hand)


def _hw(card: str, **node):
    hw = fa.resolve_hardware(card)
    if not node:
        return hw
    base = hw.node.model_dump(exclude_none=True) if hw.node else {}
    return hw.model_copy(update={"node": NodeSpec(**{**base, **node})})


# --- host link: from the node data, not the card's name -------------------------------------------

def test_gh200_reaches_its_cpu_over_nvlink_c2c_not_pcie():
    # GH200 datasheet: NVLink-C2C 900 GB/s bidirectional = 450 per direction (profiles/nodes.yaml
    # superchip.host_link_gbps); an HGX H100 keeps PCIe 5.0 x16 = 64 GB/s per direction.
    assert links.host_link(fa.resolve_hardware("gh200"), node_for(fa.resolve_hardware("gh200")))[0] == 450
    assert speed.host_link_gbps(fa.resolve_hardware("h100"))[0] == 64
    assert speed.host_link_gbps(fa.resolve_hardware("rtx4090"))[0] == 32  # its PCIe 4.0 x16 figure
    # Frontier MI250X: Infinity Fabric 36 GB/s per GCD to the CPU (the profile's node fields)
    assert speed.host_link_gbps(fa.resolve_hardware("mi250x"))[0] == 36
    # pinned copies reach 24.8 of 32 GB/s (nvbandwidth, A100 host): 78%; pageable half of that
    assert links.copy_gbps(32) == pytest.approx(24.96)
    assert links.copy_gbps(32, pinned=False) == pytest.approx(12.48)


# --- CPU offload ----------------------------------------------------------------------------------

def test_cpu_adam_time_is_bytes_over_the_shared_host_bandwidth():
    # 1e9 parameters x 28 B (Adam on fp32: read param, grad, m, v; write param, m, v) on each of the
    # 8 ranks of a DGX H100 (2 x 8 channels DDR5-4800 = 614.4 GB/s peak, 80% sustained = 491.52):
    # 8 x 28e9 / 491.52e9 = 0.4557 s -- eight times what one rank alone would take.
    host = links.host_mem_gbps(fa.resolve_hardware("h100"), node_for(fa.resolve_hardware("h100")))
    assert host == pytest.approx(491.52)
    assert links.cpu_optimizer_seconds(28e9, 8, host, threads_per_rank=64) == pytest.approx(0.45573, rel=1e-4)
    # one process alone uses every core: DRAM-bound, 28e9 / 491.52e9 = 0.05697 s
    assert links.cpu_optimizer_seconds(28e9, 1, host) == pytest.approx(0.45573 / 8, rel=1e-4)
    # 8 processes under torchrun/accelerate get OMP_NUM_THREADS=1 each: one thread streams ~10.1 GB/s
    # (measured here), 28e9 / 10.1e9 = 2.772 s -- the cores, not DRAM, bound the step
    assert links.cpu_optimizer_seconds(28e9, 8, host) == pytest.approx(2.7723, rel=1e-4)
    assert speed.optimizer_bytes_per_param("adamw", 4, 4) == 28


def test_fsdp_offload_step_on_8_h100():
    # llama-3.1-8b full, FSDP + CPUOffload on 8 H100, one micro-batch of 2,048 tokens, bf16-mixed.
    # CPU optimizer: 1,003,782,656 params per rank x (28 Adam + 12 clipping: norm read 4, scale r/w 8)
    # = 40 B. All 8 ranks through 491.52 GB/s would take 40 x 8,030,261,248 / 491.52e9 = 0.6535 s, but
    # each rank has one thread (10.1 GB/s): 40 x 1,003,782,656 / 10.1e9 = 3.9754 s (exposed).
    plan = make_plan("full", num_gpus=8, sharding="fsdp", cpu_offload=True, seq_len=2048,
                     gradient_checkpointing=True)
    sp = estimate_speed(LLAMA31_8B, "h100", plan)
    assert sp.optimizer_seconds == pytest.approx(40 * P_8B / 8 / 10.1e9, rel=1e-6)
    assert sp.optimizer_seconds == pytest.approx(3.9754, abs=1e-4)
    # Host link per micro-batch: the rank's fp32 shard up in forward, twice in backward (re-gathered
    # for the recomputation), fp32 gradients down: 4 x 1.004e9 B each at 64 x 0.78 = 49.92 GB/s
    # = 0.0804 s per transfer. Forward hides min(0.0804, c/3); backward min(3 x 0.0804, 2c/3).
    c = (sp.compute_seconds + sp.memory_bound_seconds)
    t = 4 * P_8B / 8 / 49.92e9
    assert t == pytest.approx(0.0804, abs=1e-4)
    assert sp.offload_seconds == pytest.approx(max(0, t - c / 3) + max(0, 3 * t - 2 * c / 3), rel=1e-6)
    assert sp.offload_seconds > 0  # at 2,048 tokens the backward cannot hide three transfers
    # without offload the same step is far faster
    base = estimate_speed(LLAMA31_8B, "h100", make_plan(plan=plan, cpu_offload=False))
    assert base.tokens_per_second_per_gpu > 2.5 * sp.tokens_per_second_per_gpu


def test_zero_offload_on_gh200_and_h100():
    # ZeRO-Offload (zero2 + cpu_offload), llama-3.1-8b full on one GPU, one micro-batch, bf16-mixed:
    # - upload after the step: 2 B x 8.03e9 over the host link at the pinned 78%:
    #   GH200 NVLink-C2C 450 GB/s -> 16.06e9 / 351e9 = 0.0458 s; H100 PCIe 5.0 64 -> 0.3217 s
    # - CPU optimizer: 28 (Adam) + 6 (bf16 gradient widened: read 2, write 4) + 6 (fp32 masters
    #   narrowed to bf16: read 4, write 2) + 12 (clipping) = 52 B x 8.03e9 through the Grace CPU's
    #   LPDDR5X 512 GB/s x 80% = 409.6: 1.0194 s
    plan = make_plan("full", sharding="zero2", cpu_offload=True, seq_len=2048, gradient_checkpointing=True)
    gh = estimate_speed(LLAMA31_8B, "gh200", plan)
    assert gh.optimizer_seconds == pytest.approx(52 * P_8B / 409.6e9, rel=1e-6)
    assert gh.optimizer_seconds == pytest.approx(1.0194, abs=1e-4)
    # the gradient copy (0.0458 s) hides behind backward; the upload does not
    assert gh.offload_seconds == pytest.approx(2 * P_8B / (450e9 * 0.78), rel=1e-6)
    h1 = estimate_speed(LLAMA31_8B, "h100", plan)
    assert h1.offload_seconds >= 2 * P_8B / (64e9 * 0.78) == pytest.approx(0.3217, abs=1e-4)


# --- consumer GPUs without peer-to-peer -----------------------------------------------------------

def test_no_p2p_all_reduce_goes_through_host_memory():
    # 4 RTX 4090 in one desktop (gpus_per_node 4), GeForce: no P2P, so NCCL's SHM path:
    # 1. PCIe 4.0 x16 both ways at once: 32 x 0.78 x 11/24.8 = 11.07 GB/s
    # 2. dual-channel DDR5-5600 = 89.6 GB/s peak x 80% = 71.68, each byte written and read by each of
    #    4 ranks: 71.68 / 8 = 8.96 GB/s  <- binds
    plan = make_plan("lora", num_gpus=4, gpus_per_node=4, sharding="ddp")
    hw = fa.resolve_hardware("rtx4090")
    path = links.collective_path(hw, plan)
    assert path.busbw_gbps == pytest.approx(8.96)
    # all-reduce of 1 GB: 2 x 3/4 x 1e9 / 8.96e9 = 0.1674 s + NCCL latency 8.4 + 6 PCI steps x 5.7 us
    assert path.allreduce_seconds(1e9) == pytest.approx(1.5e9 / 8.96e9 + 42.6e-6, rel=1e-9)
    # with P2P (a patched driver or a professional card): 32 x 0.8 = 25.6 GB/s, 2.9x faster
    p2p = links.collective_path(_hw("rtx4090", p2p=True), plan)
    assert p2p.busbw_gbps == pytest.approx(25.6)
    # two cards (the consumer default node): the PCIe term binds, 71.68 / 4 = 17.9 > 11.07
    two = links.collective_path(hw, make_plan("lora", num_gpus=2, sharding="ddp"))
    assert two.busbw_gbps == pytest.approx(32 * 0.78 * 11 / 24.8)
    # the estimate exposes more communication without P2P
    full = dict(seq_len=1024, num_gpus=4, gpus_per_node=4, sharding="ddp")
    a = estimate_speed(LLAMA31_8B, "rtx4090", make_plan("lora", **full))
    b = estimate_speed(LLAMA31_8B, _hw("rtx4090", p2p=True), make_plan("lora", **full))
    assert a.communication_seconds > b.communication_seconds


# --- across nodes -----------------------------------------------------------------------------------

@pytest.mark.parametrize("nic_gbps, per_node_bus, binds", [
    (50.0, 360.0, "intra"),      # 400 Gb/s per GPU: 8 x 50 x 0.92 = 368 > NVLink 450 x 0.8 = 360
    (12.5, 92.0, "network"),     # 100 Gb/s per GPU: 8 x 12.5 x 0.92 = 92
    (1.5625, 11.5, "network"),   # one 100 Gb/s NIC shared by 8 GPUs: 8 x 1.5625 x 0.92 = 11.5
])
def test_ring_across_nodes_is_bounded_by_the_slowest_link(nic_gbps, per_node_bus, binds):
    hw = _hw("h100", inter_node_gbps=nic_gbps)
    for nodes in (2, 4):
        n = 8 * nodes
        path = links.collective_path(hw, make_plan("full", num_gpus=n, num_nodes=nodes, sharding="ddp"))
        assert path.busbw_gbps == pytest.approx(per_node_bus)
        assert path.limit.startswith("inter-node network") == (binds == "network")
        # all-reduce of 16 GB (fp32 gradients of 4e9 parameters) in one call: 2(n-1)/n x 16e9 / bus
        # + NCCL latency (8.4 + (2(n-1) - 2(m-1)) x 3.4 + 2(m-1) x 9.6) us x 1.9
        lat = (8.4 + (2 * (n - 1) - 2 * (nodes - 1)) * 3.4 + 2 * (nodes - 1) * 9.6) * 1.9e-6
        assert path.allreduce_seconds(16e9) == pytest.approx(2 * (n - 1) / n * 16e9 / (per_node_bus * 1e9) + lat)


def test_latency_counts_per_call():
    # 2 H100s: an all-reduce call costs 8.4 + 2 x 3.4 = 15.2 us before any byte moves
    path = links.collective_path(fa.resolve_hardware("h100"), make_plan("lora", num_gpus=2, sharding="ddp"))
    assert path.allreduce_seconds(1.0, calls=1000) == pytest.approx(1000 * 15.2e-6 + 1.0 / 360e9)
    assert path.gather_seconds(0.0) == 0.0


# --- AMD: CDNA2 gets its own matmul efficiency ------------------------------------------------------

def test_mi250x_is_cdna2_and_mi300x_cdna3():
    assert speed.hardware_class(fa.resolve_hardware("mi250x")) == "amd_cdna2"
    assert speed.hardware_class(fa.resolve_hardware("mi300x")) == "amd_cdna3"
    # MAMF v1 table: MI250X 147.0 of 191.5 TFLOP/s per GCD; MI300X (v2) 668.4 of 1300
    assert speed.EFFICIENCY["amd_cdna2"].matmul == pytest.approx(147.0 / 191.5, abs=1e-3)
    assert speed.EFFICIENCY["amd_cdna3"].matmul == pytest.approx(668.4 / 1300, abs=1e-3)
    sp = estimate_speed(LLAMA31_8B, "mi250x", make_plan("lora", seq_len=2048))
    assert sp.efficiency_class == "amd_cdna2" and any(s.startswith("mamf_v1") for s in sp.sources)
