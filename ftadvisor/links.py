"""Links around the GPUs: collectives inside and between nodes, and host<->device traffic.

Pure functions the speed model (:mod:`ftadvisor.speed`) composes into a step time; every
constant names its source in :data:`SOURCES`. Check them with
``.venv/bin/python -m pytest -q tests/test_speed_regimes.py`` and see them at work with
``.venv/bin/python calibration/benchmarks/regimes.py``.

    from ftadvisor.links import collective_path, host_link, cpu_optimizer_seconds
    path = collective_path(hw, plan)          # the ring this plan's GPUs form
    path.allreduce_seconds(4e9, calls=160)     # 4 GB of gradients in 160 buckets

1. **Collectives** (:func:`collective_path`): NCCL runs ring collectives over several channels,
   each crossing every link of the ring once, so the bus bandwidth is set by the slowest link:
   - one node with peer-to-peer (NVLink, PCIe P2P): the intra-node link at :data:`LINK_FRACTION`;
   - one node without peer-to-peer (GeForce): NCCL's SHM transport stages every hop through
     host memory: each GPU's PCIe link carries the ring both ways at once (the bidirectional
     rate, :data:`PCIE_BIDIR_FRACTION`), and every byte is written to and read from host DRAM,
     which all GPUs of the node share (:func:`shm_busbw_gbps`);
   - several nodes: one ring channel per NIC, so the network part of the ring runs at the
     node's aggregate NIC bandwidth (GPUs per node x per-GPU NIC) at :data:`NIC_FRACTION`,
     bounded by the intra-node part.
   Time = NCCL's latency model (base + per-step latency, ``tuning.cc``) + bytes moved / bus
   bandwidth: 2(n-1)/n of the buffer for an all-reduce, (n-1)/n for reduce-scatter/all-gather.
2. **Host link** (:func:`host_link`): GPU<->host per direction from the node (NVLink-C2C on
   GH200) or the card's PCIe generation, at the pinned-copy rate (:data:`PINNED_FRACTION`) or the
   pageable one (:data:`PAGEABLE_FRACTION`).
3. **CPU optimizer** (:func:`cpu_optimizer_seconds`): DeepSpeed CPUAdam and torch's fused CPU
   AdamW are memory-bound: bytes touched per parameter / the node's host DRAM bandwidth, shared
   by every GPU process of the node (each runs its own optimizer at the same moment), and no
   faster than the threads a rank gets (one per rank under torchrun/accelerate) can stream.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ftadvisor.schema import HardwareProfile, NodeSpec, TrainingPlan

SOURCES: dict[str, str] = {
    "nccl_tuning": "NVIDIA/nccl src/graph/tuning.cc ncclTopoTuneModel: ring latency = baseLat (Ring/Simple "
                   "8.4 us) + (nsteps - nInterSteps) x intra hwLat (NVLink 3.4, PCI 5.7 us) + nInterSteps x NET "
                   "9.6 us; all-reduce nsteps 2(n-1), reduce-scatter/all-gather n-1; busBw = nChannels x "
                   "per-channel speed; multi-node ring all-reduce latency x1.9 (ncclTopoGetAlgoTime)",
    "nccl_env": "NCCL docs, Environment Variables: NCCL_P2P_DISABLE (the P2P transport uses CUDA direct access "
                "between GPUs over NVLink or PCI) and NCCL_SHM_DISABLE (SHM is used between devices when peer-to-"
                "peer cannot happen, therefore host memory is used)",
    "nccl_tests_p2p": "tinygrad/open-gpu-kernel-modules issue #36: 4x RTX 4090 with P2P enabled, nccl-tests "
                      "all_reduce_perf busbw 25.7-26.0 GB/s at 256 MB-2 GB over PCIe 4.0 x16 (32 GB/s): 80%",
    "nccl_tests_nic": "NVIDIA/nccl-tests issue #290 (NCCL maintainer): 46-48 GB/s bus bandwidth per NDR 400 Gb/s "
                      "NIC on two H100 nodes (ring); issue #119: 3 nodes of 8 A100 with 4 HDR NICs each "
                      "(100 GB/s per node) measured 84.8 GB/s busbw on average, 96 at best",
    "pcie_measured": "NVIDIA developer forum 352186 (nvbandwidth 0.8 on an 8x A100-SXM4 host, PCIe 4.0 x16): "
                     "host_to_device_memcpy_ce 24.8 GB/s of 32 unidirectional; run both ways at once, H2D "
                     "drops to ~11 GB/s while D2H keeps ~24",
    "pageable": "CUDA C++ Best Practices Guide, 'Pinned Memory' / NVIDIA blog 'How to Optimize Data Transfers "
                "in CUDA C/C++' (M. Harris): pageable copies are staged through a pinned driver buffer; measured "
                "pageable rates are about half the pinned ones on current hosts (our assumption: 0.5)",
    "ds_pinned": "deepspeed runtime/zero/offload_config.py (0.19.8): offload_param/offload_optimizer pin_memory "
                 "defaults to True; ftadvisor/launch.py sets it too. torch FSDP2 CPUOffloadPolicy(pin_memory=True) "
                 "and FSDP1 _flat_param.py pin the CPU shard",
    "zero_offload_step": "Ren et al. 2021, ZeRO-Offload (arXiv 2101.06840), section 4 and Fig. 5: per step fp16 "
                    "gradients go to the host, CPU-Adam updates fp32 master weights, fp16 parameters come back; "
                    "the one-step delayed parameter update (DPU, section 4.2) is optional, so by default the CPU "
                    "step does not overlap the next forward. DeepSpeed docs: DeepSpeedCPUAdam is 5x-7x faster "
                    "than PyTorch's (non-fused) CPU Adam",
    "ds_grad_accum": "deepspeed runtime/zero/stage_1_and_2.py copy_grads_in_partition / "
                     "async_accumulate_grad_in_cpu_via_gpu: with cpu_offload every micro-batch after the first "
                     "copies the CPU-accumulated gradient up, adds and copies it back down",
    "fsdp_offload": "torch distributed/fsdp _flat_param.py (FSDP1 pre_unshard copies the CPU local shard, in its "
                    "fp32 dtype, to the device on every unshard: forward and backward) and _fully_shard "
                    "CPUOffloadPolicy (FSDP2: sharded params and grads on the CPU, grads copied down per backward)",
    "cpu_adam_measured": "this project's measurement, calibration/benchmarks/cpu_adam.py (torch 2.13 CPU build, fused "
                         "torch.optim.AdamW.step on 4e7 fp32 parameters, best of 5, an Intel Xeon VM shared with "
                         "other jobs, load ~5 on 2 cores): one thread moved the 28 B/parameter at 10.1, 8.9, 21.1, "
                         "10.2, 10.4 and 10.0 GB/s in six runs (median 10.1; a plain copy 4-6 GB/s); the non-fused "
                         "loop took 5.8x and 10.8x longer (DeepSpeed's 5-7x claim for CPUAdam over PyTorch's)",
    "omp_threads": "torch/distributed/run.py sets OMP_NUM_THREADS=1 per process when nproc_per_node > 1, and "
                   "accelerate/commands/launch.py defaults num_cpu_threads_per_process to OMP_NUM_THREADS or 1 "
                   "(what ftadvisor launch runs); DeepSpeed CPUAdam parallelises with OpenMP and torch's fused "
                   "CPU AdamW with at::parallel_for, so each rank's CPU step runs on that one thread",
    "ddr_peak": "DDR peak = sockets x channels x MT/s x 8 B (JEDEC DDR4/DDR5 64-bit channels); per-node figures "
                "in profiles/nodes.yaml name the CPU and memory configuration",
    "stream": "McCalpin STREAM benchmark (Triad): two-socket servers sustain about 80% of the DDR peak "
              "(assumption applied to every host)",
}

# NCCL bus bandwidth reaches about 80% of the NVLink/PCIe per-direction rate in large all-reduces:
# 25.7-26.0 of 32 GB/s for 4 RTX 4090s with P2P [nccl_tests_p2p]; ~360 of 450 for H100 NVLink rings.
LINK_FRACTION = 0.80
# Per NIC across nodes: 46-48 GB/s bus bandwidth per 400 Gb/s (50 GB/s) NIC [nccl_tests_nic].
NIC_FRACTION = 0.92
# Pinned host<->device copies: 24.8 of 32 GB/s on PCIe 4.0 x16 [pcie_measured].
PINNED_FRACTION = 0.78
# Pageable copies: about half the pinned rate [pageable].
PAGEABLE_FRACTION = 0.5 * PINNED_FRACTION
# Both directions at once (what a ring staged through host memory does on every GPU's link): the
# slower direction kept 11 of 24.8 GB/s [pcie_measured].
PCIE_BIDIR_FRACTION = 11.0 / 24.8
# Host DRAM: sustained (STREAM Triad) share of the DDR peak [stream].
HOST_STREAM_FRACTION = 0.80
# One CPU thread streams a fused Adam step at ~10.1 GB/s (median of six runs) [cpu_adam_measured].
CPU_OPT_THREAD_GBPS = 10.1
# Threads each rank's CPU optimizer gets when several processes share a node [omp_threads].
LAUNCHER_THREADS_PER_RANK = 1

# NCCL ring latency model, microseconds [nccl_tuning] (Ring / Simple protocol).
RING_BASE_US = 8.4
RING_STEP_US = {"nvlink": 3.4, "pci": 5.7, "net": 9.6}
MULTINODE_ALLREDUCE_LAT_FACTOR = 1.9

# Host-link rates by PCIe generation, GB/s per direction for x16 (PCI-SIG: 2.5/5/8/16/32 GT/s per lane,
# 128b/130b from Gen3): Gen3 16, Gen4 32, Gen5 64.
PCIE_X16_GBPS = {3: 16.0, 4: 32.0, 5: 64.0}


def host_link(hw: HardwareProfile, node: NodeSpec | None = None) -> tuple[float, str]:
    """GPU<->host bandwidth per direction (datasheet rate, GB/s) and what it is.

    The node's ``host_link_gbps`` first (profiles/nodes.yaml: NVLink-C2C 450 GB/s on a GH200
    superchip, Infinity Fabric 36 GB/s on Frontier's MI250X); else a PCIe card's own link figure;
    else the PCIe generation of the card's era (Hopper/Blackwell Gen5, Volta/Turing Gen3, others Gen4)."""
    if hw.vendor == "cpu":
        return hw.hbm_bandwidth_gbps, "host memory (no link)"
    if node is not None and node.host_link_gbps:
        return node.host_link_gbps, f"{node.form_factor or 'node'} host link {node.host_link_gbps:g} GB/s"
    if "pcie" in hw.intra_node_link.lower():
        return hw.intra_node_bandwidth_gbps, f"the profile's {hw.intra_node_link}"
    cc = hw.compute_capability or ""
    if cc.startswith(("9", "10")):
        return PCIE_X16_GBPS[5], "PCIe 5.0 x16 (assumed for a Hopper/Blackwell host)"
    if cc.startswith("7"):
        return PCIE_X16_GBPS[3], "PCIe 3.0 x16 (assumed for a Volta/Turing host)"
    return PCIE_X16_GBPS[4], "PCIe 4.0 x16 (assumed)"


def copy_gbps(link_gbps: float, pinned: bool = True) -> float:
    """Achieved host<->device copy rate over a link of ``link_gbps`` [pcie_measured, pageable]."""
    return link_gbps * (PINNED_FRACTION if pinned else PAGEABLE_FRACTION)


def host_mem_gbps(hw: HardwareProfile, node: NodeSpec | None) -> float | None:
    """Sustained host DRAM bandwidth of one node (GB/s): the node's DDR peak x STREAM share; the cpu
    profile's memory bandwidth is already an achieved figure. None where the node gives none."""
    if hw.vendor == "cpu":
        return hw.hbm_bandwidth_gbps
    if node is None or not node.host_mem_gbps:
        return None
    return node.host_mem_gbps * HOST_STREAM_FRACTION


def cpu_optimizer_seconds(bytes_per_rank: float, ranks_on_node: int, host_gbps: float,
                          threads_per_rank: int | None = None) -> float:
    """Seconds of one CPU optimizer step, the slower of two memory-bound limits:
    1. DRAM: every GPU process of the node streams ``bytes_per_rank`` through the node's host DRAM
       at the same time, so they share ``host_gbps`` (sustained) [zero_offload_step];
    2. cores: a rank streams at CPU_OPT_THREAD_GBPS per thread [cpu_adam_measured]; launchers give
       each of several ranks one thread (LAUNCHER_THREADS_PER_RANK) [omp_threads]; a single process
       uses all cores (``threads_per_rank`` None and one rank: no core limit)."""
    ranks = max(ranks_on_node, 1)
    dram = bytes_per_rank * ranks / (host_gbps * 1e9)
    threads = threads_per_rank if threads_per_rank is not None else (None if ranks == 1 else LAUNCHER_THREADS_PER_RANK)
    if threads is None:
        return dram
    return max(dram, bytes_per_rank / (threads * CPU_OPT_THREAD_GBPS * 1e9))


def shm_busbw_gbps(link_gbps: float, host_gbps: float | None, ranks_on_node: int) -> float:
    """Ring bus bandwidth without peer-to-peer (NCCL's SHM transport through host memory) [nccl_env]:
    1. every GPU's PCIe link carries the ring in both directions at once: the slower direction of a
       bidirectional copy, link x PINNED_FRACTION x PCIE_BIDIR_FRACTION [pcie_measured];
    2. every byte a rank forwards is written to host DRAM and read back: 2 bytes of DRAM traffic per
       byte of ring traffic per rank, all ranks of the node at once: host_gbps / (2 x ranks)."""
    pcie = link_gbps * PINNED_FRACTION * PCIE_BIDIR_FRACTION
    if host_gbps is None:
        return pcie
    return min(pcie, host_gbps / (2.0 * max(ranks_on_node, 1)))


@dataclass(frozen=True)
class CollectivePath:
    """The ring a plan's GPUs form: bus bandwidth per rank and NCCL's latency terms."""

    ranks: int
    nodes: int
    busbw_gbps: float
    """Achievable bus bandwidth (nccl-tests ``busbw``), GB/s."""
    intra_step_us: float
    """Latency of one ring step inside a node (NVLink or PCI) [nccl_tuning]."""
    limit: str
    """Which link bounds the ring, in words."""
    sources: tuple[str, ...]

    def _latency_s(self, steps: int, inter_steps: int, allreduce: bool) -> float:
        lat = RING_BASE_US + (steps - inter_steps) * self.intra_step_us + inter_steps * RING_STEP_US["net"]
        if allreduce and self.nodes > 1:
            lat *= MULTINODE_ALLREDUCE_LAT_FACTOR
        return lat * 1e-6

    def allreduce_seconds(self, nbytes: float, calls: int = 1) -> float:
        """``calls`` all-reduces moving ``nbytes`` in total: 2(n-1)/n of it per rank at the bus
        bandwidth, plus NCCL's latency per call (2(n-1) steps, 2(m-1) of them between nodes)."""
        n = self.ranks
        if n <= 1 or nbytes <= 0:
            return 0.0
        lat = self._latency_s(2 * (n - 1), 2 * (self.nodes - 1), True)
        return max(calls, 1) * lat + 2.0 * (n - 1) / n * nbytes / (self.busbw_gbps * 1e9)

    def gather_seconds(self, nbytes: float, calls: int = 1) -> float:
        """``calls`` reduce-scatters or all-gathers of buffers totalling ``nbytes`` (full size):
        (n-1)/n of it per rank, plus the latency of n-1 steps per call."""
        n = self.ranks
        if n <= 1 or nbytes <= 0:
            return 0.0
        lat = self._latency_s(n - 1, self.nodes - 1, False)
        return max(calls, 1) * lat + (n - 1) / n * nbytes / (self.busbw_gbps * 1e9)


def collective_path(hw: HardwareProfile, plan: TrainingPlan, node: NodeSpec | None = None) -> CollectivePath:
    """The ring of ``plan.num_gpus`` GPUs over ``plan.num_nodes`` nodes of ``hw``.

    Steps: the intra-node bus bandwidth (P2P link x LINK_FRACTION, or the SHM path without P2P);
    across nodes the network part: GPUs per node x per-GPU NIC (host.inter_node_gbps) x
    NIC_FRACTION; the ring runs at the smaller [nccl_tuning, nccl_tests_nic]."""
    from ftadvisor.host import inter_node_gbps, node_for

    node = node or node_for(hw, plan)
    N = plan.num_gpus
    nodes = max(plan.num_nodes or 1, 1)
    on_node = max(N // nodes, 1)
    intra_link = hw.intra_node_bandwidth_gbps
    srcs = ["nccl_tuning"]
    p2p = node.p2p if node.p2p is not None else True
    nvlink = hw.vendor != "cpu" and "pcie" not in hw.intra_node_link.lower()
    if on_node <= 1:
        intra, limit = float("inf"), ""
    elif p2p or nvlink:
        intra = intra_link * LINK_FRACTION
        limit = f"intra-node {hw.intra_node_link} {intra_link:g} GB/s x {LINK_FRACTION:.0%}"
        srcs.append("nccl_tests_p2p")
    else:
        link, _ = host_link(hw, node)
        hm = host_mem_gbps(hw, node)
        intra = shm_busbw_gbps(link, hm, on_node)
        limit = (f"no peer-to-peer: NCCL SHM through host memory (PCIe {link:g} GB/s both ways at once"
                 + (f", host DRAM {hm:.0f} GB/s shared by {on_node} GPUs" if hm else "") + ")")
        srcs += ["nccl_env", "pcie_measured"] + (["ddr_peak", "stream"] if hm else [])
    bus, words = intra, limit
    if nodes > 1:
        nic = inter_node_gbps(hw, plan)
        net = on_node * nic * NIC_FRACTION
        srcs.append("nccl_tests_nic")
        net_words = f"inter-node network: {on_node} GPUs x {nic:g} GB/s NIC per node x {NIC_FRACTION:.0%}"
        if net < intra:
            bus, words = net, net_words
        else:
            words = f"{limit} (the {net_words} = {net:.0f} GB/s is faster)"
    if bus == float("inf"):  # one GPU per node and one node: nothing to reduce
        bus, words = intra_link, "no collective"
    step = RING_STEP_US["nvlink"] if nvlink and hw.vendor != "cpu" else RING_STEP_US["pci"]
    return CollectivePath(ranks=N, nodes=nodes, busbw_gbps=bus, intra_step_us=step, limit=words,
                          sources=tuple(dict.fromkeys(srcs)))


def describe(path: CollectivePath) -> str:
    """One line for an estimate's assumptions."""
    return (f"collectives over {path.ranks} GPUs on {path.nodes} node(s) at {path.busbw_gbps:.1f} GB/s bus bandwidth, "
            f"bounded by {path.limit}; NCCL ring latency per call")


def ranks_on_node(plan: TrainingPlan) -> int:
    """GPU processes sharing one node's host (CPU cores, DRAM)."""
    return max(plan.num_gpus // max(plan.num_nodes or 1, 1), 1)


def citation(keys: Any) -> tuple[str, ...]:
    """``key: text`` lines for the given :data:`SOURCES` keys."""
    return tuple(f"{k}: {SOURCES[k]}" for k in dict.fromkeys(keys))


__all__ = [
    "CollectivePath",
    "HOST_STREAM_FRACTION",
    "LINK_FRACTION",
    "NIC_FRACTION",
    "PAGEABLE_FRACTION",
    "PCIE_BIDIR_FRACTION",
    "PINNED_FRACTION",
    "SOURCES",
    "collective_path",
    "copy_gbps",
    "cpu_optimizer_seconds",
    "host_link",
    "host_mem_gbps",
    "shm_busbw_gbps",
]
