"""Hardware profiles in ``profiles/hardware/``: schema, naming, aliases and datasheet sanity.

The figure checks exist to catch typos (a sparse figure entered as dense, a GB/GiB mix-up,
a digit dropped); each names the document the figure comes from.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from ftadvisor.schema import HardwareProfile

HW_DIR = Path(__file__).resolve().parent.parent / "profiles" / "hardware"
YAML_FILES = sorted(HW_DIR.glob("*.yaml"))

REQUIRED_IDS = {
    "t4",
    "v100-16gb",
    "v100-32gb",
    "a10g",
    "l4",
    "l40s",
    "a100-40gb",
    "a100-80gb",
    "h100-sxm",
    "h100-pcie",
    "h200",
    "b200",
    "rtx3090-24gb",
    "rtx4090-24gb",
    "rtx5090-32gb",
    "mi300x",
    "cpu",
}

# Marketed memory in GB (the number on the box); the driver figure must be within 10% of it.
MARKETED_GB = {
    "t4": 16,  # T4 datasheet: 16 GB GDDR6
    "v100-16gb": 16,  # V100 datasheet: 16 GB HBM2
    "v100-32gb": 32,  # V100 datasheet: 32 GB HBM2
    "a10g": 24,  # AWS G5 page: 24 GB
    "l4": 24,  # L4 datasheet: 24 GB GDDR6
    "l40s": 48,  # L40S datasheet: 48 GB GDDR6 with ECC
    "a100-40gb": 40,  # A100 datasheet: 40 GB HBM2
    "a100-80gb": 80,  # A100 datasheet: 80 GB HBM2e
    "h100-sxm": 80,  # H100 datasheet: 80 GB
    "h100-pcie": 80,  # H100 datasheet: 80 GB
    "h200": 141,  # H200 datasheet: 141 GB HBM3e
    "b200": 180,  # GB200 NVL72 page, HGX B200 column: 180 GB HBM3e
    "rtx3090-24gb": 24,  # GA102 whitepaper: 24 GB GDDR6X
    "rtx4090-24gb": 24,  # Ada whitepaper: 24 GB GDDR6X
    "rtx5090-32gb": 32,  # RTX Blackwell whitepaper: 32 GB GDDR7
    "mi300x": 192,  # MI300X data sheet: 192 GB HBM3
    "cpu": 64,  # placeholder host RAM
    # issue 10 cards
    "rtxa6000-48gb": 48,  # RTX A6000 datasheet: 48 GB GDDR6 with ECC
    "rtx6000-ada": 48,  # RTX 6000 Ada datasheet: 48 GB GDDR6 with ECC
    "l40": 48,  # L40 datasheet: 48 GB GDDR6 with ECC
    "a100-pcie-40gb": 40,  # A100 datasheet: 40 GB HBM2 (PCIe)
    "a100-pcie-80gb": 80,  # A100 datasheet: 80 GB HBM2e (PCIe)
    "h100-nvl": 94,  # H100 datasheet, NVL column: 94 GB
    "gh200": 96,  # GH200 datasheet: 96 GB HBM3 (GPU side)
    "mi250x": 64,  # Frontier guide: each GCD 64 GB (MI250X data sheet: 128 GB per package of 2 GCDs)
}

# What the driver reports (nvidia-smi "MiB" total, rocm-smi bytes), as copied into the profiles.
DRIVER_MIB = {
    "t4": 15360,
    "v100-16gb": 16384,
    "v100-32gb": 32768,
    "a10g": 23028,
    "l4": 23034,
    "l40s": 46068,
    "a100-40gb": 40960,
    "a100-80gb": 81920,
    "h100-sxm": 81559,
    "h100-pcie": 81559,
    "h200": 143771,
    "b200": 183359,
    "rtx3090-24gb": 24576,
    "rtx4090-24gb": 24564,
    "rtx5090-32gb": 32607,
    "mi300x": 206141652992 / 2**20,  # rocm-smi "VRAM Total Memory (B): 206141652992"
    # issue 10 cards: nvidia-smi totals as printed in public logs (ECC off for the workstation cards)
    "rtxa6000-48gb": 49140,
    "rtx6000-ada": 49140,
    "l40": 46068,
    "a100-pcie-40gb": 40960,
    "a100-pcie-80gb": 81920,
    "h100-nvl": 95830,
    "gh200": 97871,  # "NVIDIA GH200 480GB ... 97871MiB"
    "mi250x": 68702699520 / 2**20,  # gfx90a runtime: "Total GPU memory 68702699520" (one GCD)
}


def _load(path: Path) -> HardwareProfile:
    with open(path) as fh:
        return HardwareProfile.model_validate(yaml.safe_load(fh))


@pytest.fixture(scope="module")
def profiles() -> dict[str, HardwareProfile]:
    return {p.id: p for p in map(_load, YAML_FILES)}


# ---------------------------------------------------------------------------
# Schema, naming, aliases
# ---------------------------------------------------------------------------


def test_there_are_profiles():
    assert YAML_FILES, f"no YAML in {HW_DIR}"


@pytest.mark.parametrize("path", YAML_FILES, ids=lambda p: p.name)
def test_yaml_validates_and_keys_are_exactly_the_schema_fields(path: Path):
    with open(path) as fh:
        data = yaml.safe_load(fh)
    HardwareProfile.model_validate(data)  # extra="forbid" rejects unknown keys
    # node: is optional (the form factor's defaults, profiles/nodes.yaml; tests/test_nodes.py)
    assert set(data) - {"node"} == set(HardwareProfile.model_fields) - {"node"}, (
        f"{path.name}: missing {set(HardwareProfile.model_fields) - set(data) - {'node'}}"
    )


@pytest.mark.parametrize("path", YAML_FILES, ids=lambda p: p.name)
def test_file_name_is_id_and_lower_case(path: Path):
    prof = _load(path)
    assert path.stem == prof.id
    assert prof.id == prof.id.lower()
    assert " " not in prof.id


def test_required_ids_exist(profiles):
    assert REQUIRED_IDS <= set(profiles), f"missing: {sorted(REQUIRED_IDS - set(profiles))}"


def test_aliases_lower_case_unique_and_never_an_id(profiles):
    seen: dict[str, str] = {}
    for pid, prof in profiles.items():
        for alias in prof.aliases:
            assert isinstance(alias, str) and alias, f"{pid}: empty or non-string alias {alias!r}"
            assert alias == alias.lower().strip(), f"{pid}: alias {alias!r} not lower-case"
            assert alias not in profiles, f"{pid}: alias {alias!r} is a profile id"
            assert alias not in seen, f"alias {alias!r} in both {seen[alias]} and {pid}"
            seen[alias] = pid


def test_names_stay_unambiguous_without_hyphens(profiles):
    # resolve_hardware retries a name with spaces and hyphens removed ("RTX-4090" -> "rtx4090");
    # two profiles must not collapse to the same squashed name.
    owner: dict[str, str] = {}
    for pid, prof in profiles.items():
        for name in (pid, *prof.aliases):
            key = name.replace("-", "").replace(" ", "")
            assert owner.setdefault(key, pid) == pid, f"{name!r} ({pid}) squashes like a name of {owner[key]}"


@pytest.mark.parametrize(
    "alias, pid",
    [
        ("h100", "h100-sxm"),
        ("a100", "a100-80gb"),
        ("v100", "v100-16gb"),  # most-rented variant (AWS p3, GCP, Azure NCv3), conservative for fit
        ("rtx4090", "rtx4090-24gb"),
        ("4090", "rtx4090-24gb"),
        ("rtx-4090", "rtx4090-24gb"),
        ("a10", "a10g"),
        ("3090", "rtx3090-24gb"),
        ("5090", "rtx5090-32gb"),
    ],
)
def test_common_short_forms(profiles, alias, pid):
    assert alias in profiles[pid].aliases


def test_no_gh200_alias(profiles):
    # GH200 (Grace Hopper, 96/144 GB, unified memory) is not an H100/H200 and must not resolve to one.
    # Only its own profile (gh200, issue 10) may carry the name.
    for prof in profiles.values():
        if prof.id != "gh200":
            assert not any("gh200" in a for a in prof.aliases), prof.id


# ---------------------------------------------------------------------------
# Memory
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("pid", sorted(MARKETED_GB))
def test_memory_within_10pct_of_marketed(profiles, pid):
    gib = profiles[pid].memory_gib
    marketed = MARKETED_GB[pid]
    assert abs(gib - marketed) / marketed <= 0.10, f"{pid}: {gib} GiB vs marketed {marketed} GB"


@pytest.mark.parametrize("pid", sorted(DRIVER_MIB))
def test_memory_is_the_driver_total(profiles, pid):
    assert profiles[pid].memory_gib == pytest.approx(DRIVER_MIB[pid] / 1024, abs=0.01)


# ---------------------------------------------------------------------------
# Precision support and relations between figures
# ---------------------------------------------------------------------------


def _cc(prof: HardwareProfile) -> tuple[int, int] | None:
    if prof.compute_capability is None:
        return None
    major, minor = prof.compute_capability.split(".")
    return int(major), int(minor)


def test_compute_capability_only_for_nvidia(profiles):
    for prof in profiles.values():
        if prof.vendor == "nvidia":
            assert _cc(prof) is not None, prof.id
        else:
            assert prof.compute_capability is None, prof.id


def test_fp8_only_where_the_architecture_has_it(profiles):
    # FP8 tensor cores: Ada (8.9), Hopper (9.0), Blackwell (10.x, 12.x); AMD CDNA 3 (MI300X).
    for prof in profiles.values():
        cc = _cc(prof)
        has_fp8 = (cc is not None and cc >= (8, 9)) or prof.id == "mi300x"
        assert (prof.fp8_dense_tflops is not None) == has_fp8, prof.id


def test_bf16_and_tf32_only_from_ampere_on(profiles):
    # BF16 and TF32 tensor cores arrived with Ampere (8.0); T4 (7.5) and V100 (7.0) have neither.
    for prof in profiles.values():
        cc = _cc(prof)
        if cc is None:
            continue
        assert (prof.bf16_dense_tflops is not None) == (cc >= (8, 0)), prof.id
        assert (prof.tf32_dense_tflops is not None) == (cc >= (8, 0)), prof.id


def test_every_gpu_has_fp16_tensor(profiles):
    for prof in profiles.values():
        if prof.vendor != "cpu":
            assert prof.fp16_dense_tflops is not None, prof.id


def test_precision_ordering(profiles):
    for prof in profiles.values():
        fp32 = prof.fp32_tflops
        bf16, fp16, tf32, fp8 = (
            prof.bf16_dense_tflops,
            prof.fp16_dense_tflops,
            prof.tf32_dense_tflops,
            prof.fp8_dense_tflops,
        )
        if bf16 is not None:
            assert bf16 >= fp32, prof.id
            assert fp16 == bf16, f"{prof.id}: fp16 {fp16} != bf16 {bf16}"
        if fp16 is not None:
            assert fp16 >= fp32, prof.id
        if tf32 is not None:
            assert fp32 <= tf32 <= (bf16 or fp16), prof.id
        if fp8 is not None:
            # 2% slack: the L40S datasheet prints BF16 362.05 dense but FP8 733 dense (2x would be 724.1).
            assert fp8 == pytest.approx(2 * bf16, rel=0.02), f"{prof.id}: fp8 should be 2x bf16"


def test_flash_attention_and_bnb_flags(profiles):
    for prof in profiles.values():
        cc = _cc(prof)
        if cc is not None:
            # FlashAttention-2: Ampere and newer only.
            assert prof.supports_flash_attention == (cc >= (8, 0)), prof.id
            # bitsandbytes 4-bit: every NVIDIA card here (CC >= 7.0).
            assert prof.supports_bnb_4bit == (cc >= (7, 0)), prof.id
    assert profiles["cpu"].supports_flash_attention is False
    assert profiles["cpu"].runtime_overhead_gib == 0


def test_runtime_overhead_is_plausible(profiles):
    for prof in profiles.values():
        if prof.vendor != "cpu":
            assert 0.3 <= prof.runtime_overhead_gib <= 1.5, prof.id


def test_bandwidth_ordering(profiles):
    for prof in profiles.values():
        assert prof.inter_node_bandwidth_gbps <= prof.intra_node_bandwidth_gbps, prof.id
        if prof.vendor != "cpu":
            assert prof.intra_node_bandwidth_gbps < prof.hbm_bandwidth_gbps, prof.id


def test_prices_are_marked_as_defaults(profiles):
    for prof in profiles.values():
        if prof.hourly_price_usd is not None:
            assert prof.hourly_price_usd > 0, prof.id
            assert "DEFAULT" in prof.price_note, prof.id
        assert prof.source.strip(), prof.id
    for pid in REQUIRED_IDS - {"cpu"}:
        assert profiles[pid].hourly_price_usd is not None, pid


# ---------------------------------------------------------------------------
# Datasheet figures (dense = half the "with sparsity" number NVIDIA prints)
# ---------------------------------------------------------------------------


def test_h100_sxm(profiles):
    h = profiles["h100-sxm"]
    assert 900 <= h.bf16_dense_tflops <= 1000  # H100 datasheet: BF16 1,979* with sparsity -> ~989 dense
    assert h.fp8_dense_tflops == pytest.approx(1979, abs=1)  # H100 datasheet: FP8 3,958* with sparsity
    assert h.tf32_dense_tflops == pytest.approx(494.7, abs=1)  # H100 datasheet: TF32 989* with sparsity
    assert h.hbm_bandwidth_gbps == 3350  # H100 datasheet: 3.35 TB/s
    assert h.intra_node_bandwidth_gbps == 450  # H100 datasheet: NVLink 900 GB/s (bidirectional)


def test_h100_pcie(profiles):
    h = profiles["h100-pcie"]
    assert h.bf16_dense_tflops == pytest.approx(756, abs=1)  # H100 datasheet (PCIe): BF16 1,513* with sparsity
    assert h.hbm_bandwidth_gbps == 2000  # H100 datasheet (PCIe): 2 TB/s


def test_h200(profiles):
    h = profiles["h200"]
    assert h.bf16_dense_tflops == profiles["h100-sxm"].bf16_dense_tflops  # H200 datasheet: same 1,979* as H100 SXM
    assert h.hbm_bandwidth_gbps == 4800  # H200 datasheet: 4.8 TB/s


@pytest.mark.parametrize("pid", ["a100-40gb", "a100-80gb"])
def test_a100(profiles, pid):
    a = profiles[pid]
    assert a.bf16_dense_tflops == 312  # A100 datasheet: BFLOAT16 Tensor Core 312 | 624*
    assert a.tf32_dense_tflops == 156  # A100 datasheet: TF32 Tensor Core 156 | 312*
    assert a.fp32_tflops == 19.5  # A100 datasheet: FP32 19.5 TFLOPS
    assert a.intra_node_bandwidth_gbps == 300  # A100 datasheet: NVLink 600 GB/s (bidirectional)


def test_a100_bandwidths(profiles):
    assert profiles["a100-40gb"].hbm_bandwidth_gbps == 1555  # A100 datasheet: 40GB HBM2 1,555 GB/s
    assert profiles["a100-80gb"].hbm_bandwidth_gbps == 2039  # A100 datasheet: 80GB HBM2e SXM 2,039 GB/s


def test_b200(profiles):
    b = profiles["b200"]
    assert b.bf16_dense_tflops == 2250  # GB200 NVL72 page, HGX B200: FP16/BF16 4.5 PFLOPS with sparsity
    assert b.fp8_dense_tflops == 4500  # same page: FP8 9 PFLOPS with sparsity
    assert b.intra_node_bandwidth_gbps == 900  # same page: NVLink 5 1.8 TB/s (bidirectional)


def test_l4_and_l40s(profiles):
    assert profiles["l4"].bf16_dense_tflops == 121  # L4 datasheet: BF16 242* with sparsity
    assert profiles["l4"].hbm_bandwidth_gbps == 300  # L4 datasheet: 300 GB/s
    assert profiles["l40s"].bf16_dense_tflops == pytest.approx(362.05)  # L40S datasheet: BF16 362.05 | 733*
    assert profiles["l40s"].fp8_dense_tflops == 733  # L40S datasheet: FP8 733 | 1,466*
    assert profiles["l40s"].hbm_bandwidth_gbps == 864  # L40S datasheet: 864 GB/s


def test_a10g(profiles):
    assert profiles["a10g"].bf16_dense_tflops == 70  # Baseten A10 vs A10G spec table (A10: 125)
    assert profiles["a10g"].hbm_bandwidth_gbps == 600  # AWS G5 / Baseten: 600 GB/s


def test_turing_volta(profiles):
    assert profiles["t4"].fp16_dense_tflops == 65  # T4 datasheet: Mixed Precision (FP16/FP32) 65 TFLOPS
    assert profiles["t4"].fp32_tflops == 8.1  # T4 datasheet: Single Precision 8.1 TFLOPS
    for pid in ("v100-16gb", "v100-32gb"):
        assert profiles[pid].fp16_dense_tflops == 125  # V100 datasheet: Tensor Performance 125 TFLOPS (SXM2)
        assert profiles[pid].hbm_bandwidth_gbps == 900  # V100 datasheet: 900 GB/s


def test_geforce_uses_fp32_accumulate(profiles):
    # GeForce tensor cores run FP16/BF16 with FP32 accumulate at half the FP16-accumulate rate.
    assert profiles["rtx3090-24gb"].bf16_dense_tflops == 71  # GA102 whitepaper: BF16 w/ FP32 acc 71 | 142*
    assert profiles["rtx4090-24gb"].bf16_dense_tflops == 165.2  # Ada whitepaper: FP16/BF16 w/ FP32 acc 165.2 | 330.4*
    assert profiles["rtx5090-32gb"].bf16_dense_tflops == 209.5  # RTX Blackwell whitepaper: w/ FP32 acc 209.5 | 419*
    assert profiles["rtx4090-24gb"].fp32_tflops == 82.6  # Ada whitepaper: FP32 82.6 TFLOPS
    assert profiles["rtx5090-32gb"].hbm_bandwidth_gbps == 1792  # RTX Blackwell whitepaper: 1,792 GB/s


def test_mi300x(profiles):
    m = profiles["mi300x"]
    assert m.vendor == "amd"
    assert m.bf16_dense_tflops == pytest.approx(1307.4)  # MI300X data sheet: Peak BF16 1,307.4 TFLOPS
    assert m.fp8_dense_tflops == pytest.approx(2614.9)  # MI300X data sheet: Peak FP8 2,614.9 TFLOPS
    assert m.hbm_bandwidth_gbps == 5300  # MI300X data sheet: 5.3 TB/s


def test_cpu_profile(profiles):
    c = profiles["cpu"]
    assert c.vendor == "cpu"
    assert c.compute_capability is None
    assert c.bf16_dense_tflops is None and c.fp8_dense_tflops is None
    assert c.hourly_price_usd is None
    assert c.inter_node_bandwidth_gbps == pytest.approx(3.125)  # 25 GbE


# ---------------------------------------------------------------------------
# Issue 10 cards: datasheet figures, node form factors and device-name matching
# ---------------------------------------------------------------------------

ISSUE10_IDS = {"rtxa6000-48gb", "rtx6000-ada", "l40", "a100-pcie-40gb", "a100-pcie-80gb", "h100-nvl", "gh200", "mi250x"}


def test_issue10_cards_exist(profiles):
    assert ISSUE10_IDS <= set(profiles)
    for pid in ISSUE10_IDS:  # every card names its datasheet and says where its default price stands
        assert profiles[pid].source.strip() and profiles[pid].price_note.strip(), pid


def test_issue10_datasheet_figures(profiles):
    a6000, ada, l40 = profiles["rtxa6000-48gb"], profiles["rtx6000-ada"], profiles["l40"]
    assert a6000.bf16_dense_tflops == 154.8 and a6000.fp32_tflops == 38.7  # Microway table; A6000 datasheet
    assert a6000.hbm_bandwidth_gbps == 768  # RTX A6000 datasheet: 768 GB/s
    assert ada.fp8_dense_tflops == pytest.approx(1457 / 2, abs=0.1)  # RTX 6000 Ada datasheet: 1,457 TFLOPS FP8 sparse
    assert ada.hbm_bandwidth_gbps == 960 and ada.fp32_tflops == 91.1  # RTX 6000 Ada datasheet
    assert l40.bf16_dense_tflops == pytest.approx(181.05) and l40.fp8_dense_tflops == 362  # L40 datasheet: 181.05 | 362.1*, 362 | 724*
    assert l40.hbm_bandwidth_gbps == 864  # L40 datasheet: 864 GB/s
    for pid, bw in (("a100-pcie-40gb", 1555), ("a100-pcie-80gb", 1935)):  # A100 datasheet PCIe columns
        assert profiles[pid].bf16_dense_tflops == 312 and profiles[pid].hbm_bandwidth_gbps == bw, pid
    nvl = profiles["h100-nvl"]
    assert nvl.bf16_dense_tflops == pytest.approx(1671 / 2)  # H100 datasheet, NVL column: BF16 1,671* (sparsity)
    assert nvl.fp8_dense_tflops == pytest.approx(3341 / 2) and nvl.tf32_dense_tflops == pytest.approx(835 / 2)
    assert nvl.hbm_bandwidth_gbps == 3900 and nvl.intra_node_bandwidth_gbps == 600 / 2  # 3.9 TB/s; NVLink 600 GB/s bidir
    gh = profiles["gh200"]
    assert gh.bf16_dense_tflops == profiles["h100-sxm"].bf16_dense_tflops  # GH200 datasheet: same 1,979* as H100 SXM
    assert gh.hbm_bandwidth_gbps == 4000  # GH200 datasheet: 96 GB HBM3, 4 TB/s


def test_mi250x_is_one_gcd(profiles):
    # MI250X data sheet (per package of two GCDs): FP16/BF16 383.0 TFLOPS, FP32 vector 47.9, 3.2768 TB/s, 128 GB.
    m = profiles["mi250x"]
    assert m.vendor == "amd" and m.compute_capability is None
    assert 2 * m.bf16_dense_tflops == pytest.approx(383.0)
    assert 2 * m.fp32_tflops == pytest.approx(47.9)
    assert 2 * m.hbm_bandwidth_gbps == pytest.approx(3276.8)
    assert m.tf32_dense_tflops is None and m.fp8_dense_tflops is None  # CDNA 2: no TF32 matrix format, no FP8


@pytest.mark.parametrize(
    "pid, form_factor, gpus, host_gib, p2p",
    [
        ("rtxa6000-48gb", "workstation", 4, 256, True),
        ("rtx6000-ada", "workstation", 4, 256, True),
        ("l40", "pcie-cloud", 8, 1536, True),  # nodes.yaml card row l40
        ("a100-pcie-80gb", "pcie-cloud", 4, 880, True),  # Azure NC96ads A100 v4
        ("a100-pcie-40gb", "pcie-cloud", 8, 768, True),  # generic pcie-cloud default
        ("h100-nvl", "pcie-cloud", 2, 640, True),  # nodes.yaml card row h100-nvl (Azure NC80adis H100 v5)
        ("gh200", "superchip", 1, 480, True),  # GH200: Grace's 480 GB LPDDR5X
        ("mi250x", "oam-amd", 8, 512, True),  # Frontier node: 8 GCDs, 512 GB DDR4
    ],
)
def test_issue10_node_defaults(profiles, pid, form_factor, gpus, host_gib, p2p):
    from ftadvisor.host import node_for

    node = node_for(profiles[pid])
    assert (node.form_factor, node.gpus_per_node, node.host_ram_gib, node.p2p) == (form_factor, gpus, host_gib, p2p)


@pytest.mark.parametrize(
    "device, mib, pid",
    [
        ("NVIDIA RTX A6000", 49140, "rtxa6000-48gb"),
        ("NVIDIA RTX 6000 Ada Generation", 49140, "rtx6000-ada"),
        ("NVIDIA L40", 46068, "l40"),
        ("NVIDIA L40S", 46068, "l40s"),
        ("NVIDIA A100-PCIE-40GB", 40960, "a100-pcie-40gb"),
        ("NVIDIA A100 80GB PCIe", 81920, "a100-pcie-80gb"),
        ("NVIDIA A100-SXM4-80GB", 81920, "a100-80gb"),
        ("NVIDIA H100 NVL", 95830, "h100-nvl"),
        ("NVIDIA GH200 480GB", 97871, "gh200"),
        ("AMD Instinct MI250X", 65520, "mi250x"),
    ],
)
def test_issue10_device_names_match(device, mib, pid):
    from ftadvisor.profiles import match_device

    hw = match_device(device, mib * 2**20)
    assert hw is not None and hw.id == pid
