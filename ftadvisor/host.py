"""Nodes and host memory: the machine around the GPUs.

Two parts, both pure apart from reading ``profiles/nodes.yaml`` once (cached):

1. :func:`node_for` -- the node a card sits in (GPUs per node, host RAM, links, NVMe): defaults of
   the card's form factor (:func:`form_factor`), then the profile's own ``node:`` fields, then the
   plan's ``gpus_per_node`` / ``host_ram_gib``. :func:`resolve_nodes` fills a plan's ``num_nodes``
   (ceil(num_gpus / gpus_per_node)) and warns when a given one contradicts the node.
2. :func:`host_memory` -- host RAM per node at the plan's peak, term by term, each with its source.

Run ``python -m pytest tests/test_host_memory.py tests/test_nodes.py -q`` to check both.
"""

from __future__ import annotations

import math
import re
from functools import lru_cache
from typing import Any

from ftadvisor.errors import FtAdvisorError
from ftadvisor.schema import HardwareProfile, HostMemory, NodeSpec, TrainingPlan

GIB = 2**30

# Per-process host RSS of the training stack before any model is loaded: python + torch 2.13 +
# transformers 5.24 + peft + trl imported, measured here (resource.getrusage ru_maxrss, CPU build):
# 390 MiB. The CUDA build maps its libraries on top (not measured here).
PROCESS_BASELINE_BYTES = 390 * 2**20

# transformers PreTrainedModel.save_pretrained(max_shard_size="5GB"): checkpoints come in 5 GB
# safetensors shards, and from_pretrained materialises one shard on the CPU at a time before moving it
# to the device (modeling_utils.py, load_state_dict per shard).
LOAD_SHARD_BYTES = 5e9

# DeepSpeed ZeRO-Infinity swap buffers (deepspeed/runtime/zero/offload_config.py defaults):
# offload_optimizer.buffer_count = 4 pinned fp32 buffers of one optimizer sub-group
# (sub_group_size 1e9 elements, zero/config.py); offload_param.buffer_count = 5 buffers of
# buffer_size = 1e8 elements in the compute dtype.
NVME_OPT_BUFFERS = 4
NVME_PARAM_BUFFERS = 5
NVME_PARAM_BUFFER_ELEMS = 1e8
ZERO_SUB_GROUP = 1e9

NODE_FIELDS = tuple(NodeSpec.model_fields)


@lru_cache(maxsize=1)
def node_table() -> dict[str, dict[str, dict[str, Any]]]:
    """profiles/nodes.yaml: ``form_factors`` and per-card ``cards`` rows, each validated as a NodeSpec."""
    from ftadvisor.errors import from_validation
    from ftadvisor.profiles import profiles_dir
    from ftadvisor.validate import load_yaml_file
    from pydantic import ValidationError

    data = load_yaml_file(profiles_dir() / "nodes.yaml", "profiles/nodes.yaml")
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for part in ("form_factors", "cards"):
        rows = {}
        for key, row in (data.get(part) or {}).items():
            try:
                rows[key] = NodeSpec(**row).model_dump(exclude_none=True)
            except ValidationError as err:
                raise from_validation(err, default_field=f"nodes.yaml {part}.{key}") from None
        out[part] = rows
    return out


def form_factor(hw: HardwareProfile) -> str:
    """The form factor (key of profiles/nodes.yaml) a card is usually built into, by rule so that
    cards without node fields get one: CPU; AMD Instinct (OAM); Grace Hopper (superchip); SXM
    baseboards by generation (an NVSwitch/SXM link or id); GeForce (consumer); professional RTX /
    A-series (workstation); every other NVIDIA card a PCIe cloud server."""
    if hw.node is not None and hw.node.form_factor:
        return hw.node.form_factor
    if hw.vendor == "cpu":
        return "cpu"
    if hw.vendor == "amd":
        return "oam-amd"
    text = f"{hw.id} {hw.name} {hw.intra_node_link}".lower()
    if "gh200" in text or "grace" in text:
        return "superchip"
    sxm = ("sxm" in text or "nvswitch" in text or "hgx" in text) and "pcie" not in hw.id
    if sxm or hw.id in ("h200", "b200"):
        cc = hw.compute_capability or ""
        if cc.startswith("7"):
            return "hgx-volta"
        if cc.startswith("8"):
            return "hgx-a100"
        return "hgx-hopper"
    # professional RTX (A6000, RTX 6000 Ada, RTX PRO 6000): round thousands; GeForce: xx50-xx90
    if "a6000" in text or "a5000" in text or re.search(r"rtx[ -]?(pro[ -]?)?[2-8]000", text) or "quadro" in text:
        return "workstation"
    if "geforce" in text or re.match(r"rtx[ -]?\d0[5-9]0", hw.id):
        return "consumer"
    return "pcie-cloud"


def node_for(hw: HardwareProfile, plan: TrainingPlan | None = None) -> NodeSpec:
    """The node used for ``hw``: form-factor defaults < per-card row < the profile's ``node:`` fields
    < the plan's ``gpus_per_node`` / ``host_ram_gib``."""
    table = node_table()
    ff = form_factor(hw)
    if ff not in table["form_factors"]:
        raise FtAdvisorError("node.form_factor", f"unknown form factor {ff!r}", sorted(table["form_factors"]))
    merged: dict[str, Any] = {**table["form_factors"][ff], "form_factor": ff}
    merged.update(table["cards"].get(hw.id, {}))
    if hw.node is not None:
        merged.update(hw.node.model_dump(exclude_none=True))
    if hw.vendor == "cpu" and "host_ram_gib" not in (hw.node.model_fields_set if hw.node else ()):
        merged["host_ram_gib"] = hw.memory_gib  # the cpu profile's memory is host RAM
    if plan is not None:
        if plan.gpus_per_node is not None:
            merged["gpus_per_node"] = plan.gpus_per_node
        if plan.host_ram_gib is not None:
            merged["host_ram_gib"] = plan.host_ram_gib
    return NodeSpec(**merged)


def resolve_nodes(hw: HardwareProfile, plan: TrainingPlan) -> tuple[TrainingPlan, tuple[str, ...]]:
    """The plan with ``num_nodes`` filled in (ceil(num_gpus / gpus_per_node) when not given), and
    warnings: a given count that puts more GPUs on a node than it has, and a plan spanning nodes
    (which network figure the speed model uses)."""
    node = node_for(hw, plan)
    per = node.gpus_per_node
    need = math.ceil(plan.num_gpus / per)
    warnings = []
    if plan.num_nodes is None:
        if plan.num_gpus % need:
            raise FtAdvisorError("num_gpus", f"{plan.num_gpus} GPUs do not split evenly over the {need} nodes of "
                                 f"{per} GPUs ({hw.id}, {node.form_factor}) they need; give num_nodes or a multiple")
        plan = plan.model_copy(update={"num_nodes": need})
    elif plan.num_nodes < need:
        warnings.append(f"num_nodes={plan.num_nodes} puts {plan.num_gpus // plan.num_nodes} GPUs on a node, but a "
                        f"{node.form_factor} node of {hw.id} has {per}: {need} nodes are needed "
                        f"(set gpus_per_node if your nodes are larger)")
    if plan.num_nodes > 1:
        warnings.append(f"spans {plan.num_nodes} nodes: collectives between nodes at {inter_node_gbps(hw, plan):g} "
                        f"GB/s per GPU (node default; set it in the hardware profile's node: inter_node_gbps)")
    return plan, tuple(warnings)


def inter_node_gbps(hw: HardwareProfile, plan: TrainingPlan | None = None) -> float:
    """Network bandwidth between nodes per GPU (GB/s): the profile's node field when given, else its
    inter_node_bandwidth_gbps (the card's datasheet-level default)."""
    if hw.node is not None and hw.node.inter_node_gbps is not None:
        return hw.node.inter_node_gbps
    return hw.inter_node_bandwidth_gbps


def _terms(hw: HardwareProfile, plan, node: NodeSpec, *, host_parts: dict, trainable_params, total_params,
           trainable_bytes: int, compute_bytes: int, device_total_bytes=0.0):
    """The host terms as numbers or numpy arrays (grids): (GPUs on the node, per-GPU terms, node terms,
    bytes needed per node, NVMe bytes per node). Steps as in :func:`host_memory`."""
    from ftadvisor import _num

    nodes = plan.num_nodes or math.ceil(plan.num_gpus / node.gpus_per_node)
    on_node = math.ceil(plan.num_gpus / nodes)
    params = host_parts.get("params", 0.0)
    opt = host_parts.get("optimizer", 0.0)
    grads = host_parts.get("grads", 0.0)
    nvme_each = 0.0
    swap = 0.0
    if plan.cpu_offload and plan.offload_device == "nvme":
        nvme_each = params + opt
        local = trainable_params / plan.num_gpus
        swap = (NVME_OPT_BUFFERS * _num.minimum(local, ZERO_SUB_GROUP) * 4
                + NVME_PARAM_BUFFERS * NVME_PARAM_BUFFER_ELEMS * compute_bytes)
        params = opt = 0.0
    per_gpu = {"offloaded_params": params, "offloaded_optimizer": opt, "offloaded_grads": grads,
               "swap_buffers": swap, "process_baseline": float(PROCESS_BASELINE_BYTES)}
    if "activations" in host_parts:
        # checkpointed layer inputs a framework keeps on the host (ftadvisor.memory.offloaded_checkpoint_bytes)
        per_gpu["offloaded_activations"] = host_parts["activations"]
    # The final save gathers a CPU copy of the checkpoint on rank 0 while the offloaded state is still
    # resident. ZeRO-3: stage3_gather_16bit_weights_on_model_save, compute-dtype weights to rank 0's
    # CPU (deepspeed/runtime/engine.py _zero3_consolidated_16bit_state_dict). FSDP: FULL_STATE_DICT
    # with offload_to_cpu, rank0_only (torch/distributed/fsdp), in the FlatParameter's dtype. Both are
    # what ftadvisor/launch.py configures. PEFT saves the adapter only (peft save_pretrained);
    # full/HFT save the whole model.
    if plan.sharding in ("zero3", "fsdp"):
        saved = _num.where(trainable_params < 0.5 * total_params, trainable_params, total_params)
        gather = saved * (compute_bytes if plan.sharding == "zero3" else trainable_bytes)
    else:
        gather = 0.0
    node_terms = {"checkpoint_gather": gather}
    if hw.vendor == "cpu":
        # host-only training: the "device" is host RAM, so the model states count here too
        node_terms["training_state"] = device_total_bytes * on_node
    training = sum(per_gpu.values()) * on_node + sum(node_terms.values())
    loading = (PROCESS_BASELINE_BYTES + LOAD_SHARD_BYTES) * on_node
    per_gpu["loading_shard"] = _num.where(loading > training, LOAD_SHARD_BYTES, 0.0)
    return on_node, per_gpu, node_terms, _num.maximum(training, loading), nvme_each * on_node


def host_fits(hw: HardwareProfile, plan, **kw):
    """Whether the node holds the plan (bool, or a bool array for grids): host RAM and NVMe."""
    node = node_for(hw, plan)
    _, _, _, need, nvme = _terms(hw, plan, node, **kw)
    return (need <= node.host_ram_gib * GIB) & (nvme <= (node.nvme_gib or 0) * GIB), need


def host_memory(hw: HardwareProfile, plan: TrainingPlan, *, host_parts: dict[str, float], trainable_params: float,
                total_params: float, trainable_bytes: int, compute_bytes: int, device_total_bytes: float = 0.0
                ) -> HostMemory:
    """Host RAM (and NVMe) of the busiest node at the training peak.

    Per GPU process:
      1. offloaded parameters, optimizer state (fp32 master + moments) and fp32 gradients
         (memory.py's offload terms: ZeRO-Offload, Ren et al. 2021 section 4; FSDP CPUOffload);
         under ``offload_device: nvme`` the parameters and optimizer state go to NVMe instead
         (ZeRO-Infinity, Rajbhandari et al. 2021 section 5) and pinned swap buffers stay in RAM;
      2. the process baseline (PROCESS_BASELINE_BYTES, measured);
      3. loading: one checkpoint shard on the CPU (LOAD_SHARD_BYTES) -- a phase before the offloaded
         state exists, so the node's peak is the larger of loading and training.
    Node terms: the checkpoint gathered on rank 0's CPU during a save (first node only, _saved_bytes).
    """
    node = node_for(hw, plan)
    on_node, per_gpu, node_terms, need, nvme_node = _terms(
        hw, plan, node, host_parts=host_parts, trainable_params=trainable_params, total_params=total_params,
        trainable_bytes=trainable_bytes, compute_bytes=compute_bytes, device_total_bytes=device_total_bytes)
    cap = int(node.host_ram_gib * GIB)
    nvme_cap = int((node.nvme_gib or 0) * GIB)
    return HostMemory(
        node=node, gpus_on_node=on_node,
        per_gpu_bytes={k: int(round(float(v))) for k, v in per_gpu.items()},
        node_bytes={k: int(round(float(v))) for k, v in node_terms.items()},
        bytes_per_node=int(round(float(need))), capacity_bytes=cap,
        nvme_bytes_per_node=int(round(float(nvme_node))), nvme_capacity_bytes=nvme_cap,
        fits=bool(need <= cap and nvme_node <= nvme_cap),
    )


def host_limit_words(host: HostMemory) -> str:
    """Plain words for a plan whose node runs out of host RAM or NVMe, with the next step."""
    gib = host.bytes_per_node / GIB
    cap = host.capacity_bytes / GIB
    if host.nvme_bytes_per_node > host.nvme_capacity_bytes:
        return (f"NVMe: {host.nvme_bytes_per_node / GIB:,.0f} GiB offloaded per node, over the node's "
                f"{host.nvme_capacity_bytes / GIB:,.0f} GiB; use more nodes")
    gather = host.node_bytes.get("checkpoint_gather", 0)
    if gather > 0.25 * host.bytes_per_node:
        return (f"host RAM: {gib:,.0f} GiB needed per node, over the node's {cap:,.0f} GiB, of which "
                f"{gather / GIB:,.0f} GiB is the final save gathering the whole model on rank 0's CPU "
                "(FSDP FULL_STATE_DICT / ZeRO-3 gather_16bit, as ftadvisor launch configures it); "
                "save sharded checkpoints, or use a node with more RAM")
    step = ("offload to NVMe instead (sharding zero3 with --set offload_device=nvme: ZeRO-Infinity) "
            "or use more nodes"
            if host.per_gpu_bytes.get("offloaded_optimizer", 0) else "use more nodes or a node with more RAM")
    return f"host RAM: {gib:,.0f} GiB needed per node, over the node's {cap:,.0f} GiB; {step}"
