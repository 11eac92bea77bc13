"""Nodes (ftadvisor.host.node_for): every card gets one, num_nodes is derived from the node size,
a contradicting count warns, and -g accepts a YAML file with card and node fields."""

import subprocess
import sys

import pytest

from ftadvisor import FtAdvisorError, estimate
from ftadvisor.host import form_factor, node_for, node_table
from ftadvisor.plans import make_plan
from ftadvisor.profiles import hardware_profiles, resolve_hardware
from tests.conftest import ROOT

GIB = 2**30


@pytest.mark.parametrize("hid", sorted(hardware_profiles()))
def test_every_card_gets_a_complete_node(hid):
    hw = hardware_profiles()[hid]
    node = node_for(hw)
    assert node.form_factor in node_table()["form_factors"]
    for field in ("gpus_per_node", "host_ram_gib", "intra_node_link", "p2p", "inter_node_gbps", "nvme_gib",
                  "nvme_read_gbps", "nvme_write_gbps"):
        assert getattr(node, field) is not None, (hid, field)
    assert 1 <= node.gpus_per_node <= 8 and node.host_ram_gib >= 64


@pytest.mark.parametrize("card, ff, gpus, ram, p2p", [
    ("h100", "hgx-hopper", 8, 2048, True),          # DGX H100: 8 GPUs, 2 TB
    ("h200", "hgx-hopper", 8, 2048, True),
    ("b200", "hgx-hopper", 8, 2048, True),
    ("a100-80gb", "hgx-a100", 8, 1152, True),       # p4de.24xlarge
    ("l40s", "pcie-cloud", 8, 1536, True),          # g6e.48xlarge
    ("a10g", "pcie-cloud", 8, 768, True),           # g5.48xlarge
    ("l4", "pcie-cloud", 8, 768, True),             # g6.48xlarge
    ("t4", "pcie-cloud", 4, 192, True),             # g4dn.12xlarge
    ("rtx4090", "consumer", 2, 128, False),         # GeForce 40-series: no peer-to-peer
    ("rtx3090", "consumer", 2, 128, False),
    ("mi300x", "oam-amd", 8, 1850, True),           # Azure ND MI300X v5
])
def test_form_factor_defaults(card, ff, gpus, ram, p2p):
    node = node_for(resolve_hardware(card))
    assert (node.form_factor, node.gpus_per_node, node.host_ram_gib, node.p2p) == (ff, gpus, ram, p2p)


def test_form_factor_rule_covers_cards_without_rows():
    base = resolve_hardware("l40s")
    for hid, name, link, want in [("rtx-a6000", "NVIDIA RTX A6000", "PCIe 4.0 x16", "workstation"),
                                  ("rtx6000-ada", "NVIDIA RTX 6000 Ada Generation", "PCIe 4.0 x16", "workstation"),
                                  ("gh200", "NVIDIA GH200 Grace Hopper", "NVLink 4", "superchip"),
                                  ("a100-pcie-80gb", "NVIDIA A100 PCIe 80GB", "PCIe 4.0 x16", "pcie-cloud")]:
        hw = base.model_copy(update={"id": hid, "name": name, "intra_node_link": link})
        assert form_factor(hw) == want, hid
    cpu = resolve_hardware("cpu")
    assert node_for(cpu).host_ram_gib == cpu.memory_gib


def test_16_h100_are_two_nodes_and_use_the_inter_node_path():
    kw = dict(num_gpus=16, sharding="fsdp", with_speed=True)
    derived = estimate("llama-3.1-8b", "h100", "full", **kw)
    assert derived.plan.num_nodes == 2
    explicit = estimate("llama-3.1-8b", "h100", "full", num_nodes=2, **kw)
    assert derived.speed.tokens_per_second_total == explicit.speed.tokens_per_second_total
    assert any("inter-node" in a or "inter" in a for a in derived.speed.assumptions)
    assert any("spans 2 nodes" in w and "50 GB/s" in w for w in derived.warnings)
    # one 16-GPU node (declared so) takes the NVLink path: collectives no slower. (Task W3: two DGX
    # H100 nodes have 8 x 400 Gb/s NICs = 368 GB/s of ring bandwidth, above NVLink's 360, so the ring is
    # NVLink-bound either way and FSDP hides both behind compute; tests/test_speed_regimes.py checks
    # the network-bound cases.)
    one = estimate("llama-3.1-8b", "h100", "full", gpus_per_node=16, **kw)
    assert one.plan.num_nodes == 1 and one.speed.communication_seconds <= derived.speed.communication_seconds
    assert not any("GPUs on a node" in w for w in one.warnings)


def test_contradicting_num_nodes_warns():
    est = estimate("llama-3.1-8b", "h100", "lora", num_gpus=16, num_nodes=1)
    assert est.plan.num_nodes == 1
    assert any("puts 16 GPUs on a node" in w and "has 8" in w and "2 nodes" in w for w in est.warnings)


def test_uneven_split_is_an_error():
    with pytest.raises(FtAdvisorError) as err:
        estimate("llama-3.1-8b", "h100", "lora", num_gpus=9)
    assert err.value.field == "num_gpus"
    assert make_plan(num_gpus=9).num_nodes is None  # "not given" until the hardware is known


def run(*args):
    return subprocess.run([sys.executable, "-m", "ftadvisor.cli", *args], capture_output=True, text=True, cwd=ROOT)


CARD = """\
id: my-card
name: My 48GB card
vendor: nvidia
memory_gib: 47.5
bf16_dense_tflops: 180
fp32_tflops: 90
hbm_bandwidth_gbps: 960
intra_node_bandwidth_gbps: 32
intra_node_link: PCIe 4.0 x16
inter_node_bandwidth_gbps: 3.125
compute_capability: "8.9"
supports_bnb_4bit: true
supports_flash_attention: true
runtime_overhead_gib: 0.5
price_note: none
source: my datasheet
node:
  gpus_per_node: 4
  host_ram_gib: 384
"""


def test_cli_accepts_a_card_yaml(tmp_path):
    path = tmp_path / "my-card.yaml"
    path.write_text(CARD)
    out = run("estimate", "-m", "llama-3.1-8b", "-g", str(path), "-t", "lora")
    assert out.returncode == 0, out.stderr
    text = " ".join(out.stdout.split())
    assert "My 48GB card" in text and "host RAM GiB per node (of 384)" in text and "4 GPUs" in text
    out = run("recommend", "-m", "llama-3.1-8b", "-g", str(path), "-n", "4", "--top", "1")
    assert out.returncode == 0, out.stderr
    assert "My 48GB card" in out.stdout and "/384GiB" in out.stdout.replace("\n", "").replace(" ", "")
    hw = resolve_hardware(str(path))
    node = node_for(hw)  # the file's node fields over the pcie-cloud form factor's
    assert (node.form_factor, node.gpus_per_node, node.host_ram_gib, node.nvme_gib) == ("pcie-cloud", 4, 384, 7152)


@pytest.mark.parametrize("extra, key", [("bogus_tflops: 3\n", "bogus_tflops"), ("  ram_gb: 64\n", "node.ram_gb")])
def test_cli_card_yaml_unknown_key_is_one_line(tmp_path, extra, key):
    path = tmp_path / "bad.yaml"
    path.write_text(CARD + extra if extra.startswith(" ") else extra + CARD)
    out = run("estimate", "-g", str(path))
    assert out.returncode != 0
    assert "Traceback" not in out.stderr
    err = out.stderr.strip()
    assert len(err.splitlines()) == 1 and key in err and "valid:" in err
    assert ("host_ram_gib" in err) if key.startswith("node.") else ("memory_gib" in err)
