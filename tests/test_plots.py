"""Pictures (ftadvisor/plots.py): `estimate --plot` and `calibrate report --plot` write valid PNG and
SVG files whose labels and numbers are the estimate's and the records', bad file names and a missing
matplotlib are one-line errors."""

from __future__ import annotations

import json
import struct
import subprocess
import sys
import xml.etree.ElementTree as ET
from types import SimpleNamespace

import pytest

from tests.conftest import ROOT

pytest.importorskip("matplotlib")  # the optional `plot` extra (pinned in requirements/dev.txt)

GIB = 2**30
MIB = 2**20
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"  # PNG spec (ISO/IEC 15948) section 5.2: the signature


def run(*args):
    return subprocess.run([sys.executable, "-m", "ftadvisor.cli", *args], capture_output=True, text=True, cwd=ROOT)


def svg_texts(path) -> list[str]:
    """Every text of an SVG file (matplotlib keeps labels as <text> with svg.fonttype none)."""
    root = ET.parse(path).getroot()  # also proves the file is well-formed XML
    assert root.tag == "{http://www.w3.org/2000/svg}svg"
    return ["".join(el.itertext()).strip() for el in root.iter() if el.tag.endswith("}text")]


def png_size(path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC and data[12:16] == b"IHDR"  # the first chunk is the header
    return struct.unpack(">II", data[16:24])


# --- the memory breakdown ----------------------------------------------------------------------


def test_memory_parts_stack_up_to_the_device_total():
    from ftadvisor.plots import memory_parts
    from ftadvisor.schema import MEMORY_COMPONENTS

    comps = dict.fromkeys(MEMORY_COMPONENTS, 0) | {"weights": 100, "activations": 30, "logits": 20}
    # allocated 150, reserved 170 (slack 20), runtime 40, resident paged state 5: nvidia-smi shows 215
    mem = SimpleNamespace(components=lambda: comps, peak_allocated_bytes=150, peak_reserved_bytes=170,
                          runtime_overhead_bytes=40, device_total_bytes=215)
    parts = memory_parts(mem)
    assert {k: v for k, v in parts.items() if v} == {"weights": 100, "activations": 30, "logits": 20,
                                                     "allocator_slack": 20, "runtime_overhead": 40,
                                                     "paged_resident": 5}
    assert list(parts)[: len(MEMORY_COMPONENTS)] == list(MEMORY_COMPONENTS)  # bottom to top in schema order


def test_estimate_plot_svg_shows_every_technique_and_the_card(tmp_path):
    svg = tmp_path / "memory.svg"
    args = ("estimate", "-m", "llama-3.1-8b", "-g", "rtx4090", "-t", "lora,qlora,full")
    out = run(*args, "--plot", str(svg), "--json")
    assert out.returncode == 0, out.stderr
    assert f"picture: {svg}" in out.stderr  # stdout stays JSON
    data = json.loads(out.stdout)
    texts = svg_texts(svg)
    for tech in ("lora", "qlora", "full"):
        assert tech in texts
    # profiles/hardware: the RTX 4090 has 23.99 GiB -> the label reads 24.0 GiB
    assert "NVIDIA GeForce RTX 4090" in "\n".join(texts) and any("24.0 GiB" in t for t in texts)
    # the number above each bar is that technique's device total (full: 8B params x 16 bytes alone
    # is ~120 GiB, far over the card)
    totals = [f"{d['memory']['device_total_bytes'] / GIB:.1f}" for d in data]
    assert all(t in texts for t in totals) and float(totals[2]) > 120
    assert {"weights", "optimizer state", "activations"} <= set(texts)


def test_estimate_plot_png(tmp_path):
    png = tmp_path / "memory.PNG"  # the suffix is case-insensitive
    out = run("estimate", "-t", "qlora,dpo+qlora", "--plot", str(png))
    assert out.returncode == 0, out.stderr
    assert png.stat().st_size > 1024
    w, h = png_size(png)
    assert w > 300 and h > 200
    assert [p.name for p in tmp_path.iterdir()] == ["memory.PNG"]  # no temporary file left behind


@pytest.mark.parametrize("name, words", [
    ("memory.pdf", ["--plot", "'.pdf'", "FILE.png, FILE.svg"]),
    ("memory", ["--plot", "no suffix", "FILE.png, FILE.svg"]),
    ("no-such-folder/memory.png", ["--plot", "does not exist"]),
])
def test_bad_plot_file_is_one_line(tmp_path, name, words):
    out = run("estimate", "-t", "lora", "--plot", str(tmp_path / name))
    assert out.returncode == 2 and out.stdout == ""
    line = out.stderr.strip()
    assert "\n" not in line and line.startswith("error: --plot") and "Traceback" not in line
    for w in words:
        assert w in line
    assert list(tmp_path.iterdir()) == []


def test_without_matplotlib_names_the_extra(tmp_path, monkeypatch):
    from ftadvisor.errors import FtAdvisorError
    from ftadvisor.plots import check_plot_path, prediction_scatter

    monkeypatch.setitem(sys.modules, "matplotlib", None)  # `import matplotlib` now raises ImportError
    for call in (lambda: check_plot_path(tmp_path / "x.svg"),  # what the commands check before any work
                 lambda: prediction_scatter([("cpu", [_panel()])], tmp_path / "x.png")):
        with pytest.raises(FtAdvisorError) as err:
            call()
        assert str(err.value) == "--plot: needs matplotlib: pip install 'ftadvisor[plot]'"
    assert list(tmp_path.iterdir()) == []


# --- predicted against measured ------------------------------------------------------------------


def _panel():
    from ftadvisor.plots import ScatterPanel

    return ScatterPanel("peak allocated memory", "MiB", points={"lora": [(10.0, 12.0)]})


def test_log_axes_only_beyond_ten_times():
    from ftadvisor.plots import log_axes

    assert not log_axes([2.0, 20.0]) and log_axes([2.0, 20.5]) and not log_axes([])


def _record(store, root, case_id, tech, pred, meas, tps=None, tps_pred=None):
    """An ok cpu record: predicted and measured peak bytes, optionally tokens/s measured and predicted."""
    prediction = {"memory": {"weights_bytes": int(pred), "peak_allocated_bytes": int(pred),
                             "peak_phase": "forward_backward"}}
    if tps_pred is not None:
        prediction["speed"] = {"tokens_per_second_total": tps_pred}
    measurement = {"peak_allocated_bytes": int(meas)}
    if tps is not None:
        measurement["tokens_per_s"] = tps
    store.append_result(root, "cpu", {"case_id": case_id, "sweep": "syn", "status": "ok", "backend": "cpu",
                                      "plan": {"technique": tech}, "prediction": prediction,
                                      "measurement": measurement})


def test_calibration_plot_from_records(tmp_path):
    from ftadvisor.calibration import store
    from ftadvisor.calibration.report import build_tables, plot_rows

    root = tmp_path / "results"
    _record(store, root, "a", "lora", 10 * MIB, 12 * MIB, tps=900.0, tps_pred=1000.0)
    _record(store, root, "b", "lora", 400 * MIB, 380 * MIB)
    _record(store, root, "c", "full", 30 * MIB, 33 * MIB, tps=450.0, tps_pred=500.0)
    ((hw, (memory, speed)),) = plot_rows(build_tables(root, "cpu", corrections_dir=tmp_path / "none"))
    assert hw == "cpu"
    assert memory.points == {"lora": [(10.0, 12.0), (400.0, 380.0)], "full": [(30.0, 33.0)]}
    assert speed.points == {"lora": [(1000.0, 900.0)], "full": [(500.0, 450.0)]}
    assert memory.after == {}  # no corrections file: nothing corrected

    svg = tmp_path / "cal.svg"
    out = run("calibrate", "report", "--results", str(root), "--corrections", str(tmp_path / "none"),
              "--plot", str(svg))
    assert out.returncode == 0, out.stderr
    texts = svg_texts(svg)
    assert {"lora", "full", "y = x (exact)"} <= set(texts)
    # memory spans 10..400 MiB (> 10x): log axes; throughput 450..1000 tokens/s: linear
    assert "cpu: peak allocated memory (log axes)" in texts and "cpu: throughput" in texts
    assert "predicted (tokens/s)" in texts and "measured (MiB)" in texts
