"""Find the GPUs on this machine and the hardware profile each one matches.

Detection tries, in order, NVML through ``pynvml`` (nvidia-ml-py), the ``nvidia-smi`` command
(the same NVML figures), and ``torch.cuda`` (which also covers ROCm builds) asked in a child
process. Each is imported or run only here, only when called, and the TUI calls this from a
worker thread after the first screen is drawn, so start-up never waits on it. Nothing found means host-only training: the ``cpu`` profile is suggested.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field

MIB = 2**20


def host_memory_bytes() -> int | None:
    """Physical RAM of this machine (POSIX sysconf), or None where unavailable."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # pragma: no cover - non-POSIX
        return None


@dataclass(frozen=True)
class DetectedGPU:
    name: str
    """Device name as the driver reports it (``NVIDIA H200``)."""
    memory_bytes: int
    """Total device memory as the driver reports it."""


@dataclass
class Detection:
    gpus: list[DetectedGPU] = field(default_factory=list)
    """One entry per visible device."""
    source: str = "none"
    """Which backend answered: nvml, nvidia-smi, torch or none."""
    profile_id: str = "cpu"
    """Hardware profile suggested for the first device (``cpu`` when there is none)."""
    host_memory_bytes: int | None = None
    """Physical RAM of this machine (what host-only training is limited by)."""
    note: str = ""
    """One line for the user (what was found, or why nothing was)."""

    @property
    def count(self) -> int:
        return len(self.gpus)


def _from_nvml() -> list[DetectedGPU] | None:
    if importlib.util.find_spec("pynvml") is None:
        return None
    import pynvml  # nvidia-ml-py: nvmlInit / nvmlDeviceGetName / nvmlDeviceGetMemoryInfo

    try:
        pynvml.nvmlInit()
    except Exception:  # noqa: BLE001 - no driver: fall through to the next backend
        return None
    try:
        out = []
        for i in range(pynvml.nvmlDeviceGetCount()):
            h = pynvml.nvmlDeviceGetHandleByIndex(i)
            name = pynvml.nvmlDeviceGetName(h)
            if isinstance(name, bytes):
                name = name.decode()
            out.append(DetectedGPU(str(name), int(pynvml.nvmlDeviceGetMemoryInfo(h).total)))
        return out
    finally:
        pynvml.nvmlShutdown()


def parse_nvidia_smi(text: str) -> list[DetectedGPU]:
    """Parse ``nvidia-smi --query-gpu=name,memory.total --format=csv,noheader,nounits`` (MiB)."""
    out = []
    for line in text.splitlines():
        if "," not in line:
            continue
        name, mem = line.rsplit(",", 1)
        try:
            out.append(DetectedGPU(name.strip(), int(float(mem.strip())) * MIB))
        except ValueError:
            continue
    return out


def _from_nvidia_smi() -> list[DetectedGPU] | None:
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return None
    try:
        res = subprocess.run([exe, "--query-gpu=name,memory.total", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if res.returncode != 0:
        return None
    return parse_nvidia_smi(res.stdout)


_TORCH_PROBE = (
    "import json, torch\n"
    "n = torch.cuda.device_count() if torch.cuda.is_available() else 0\n"
    "print(json.dumps([[torch.cuda.get_device_properties(i).name, torch.cuda.get_device_properties(i).total_memory]"
    " for i in range(n)]))\n"
)


def _from_torch() -> list[DetectedGPU] | None:
    """Ask torch.cuda in a child interpreter: importing torch takes seconds and a lot of memory, and
    in a thread of the TUI it would hold the GIL while the first screen is being drawn."""
    if importlib.util.find_spec("torch") is None:
        return None
    try:
        res = subprocess.run([sys.executable, "-c", _TORCH_PROBE], capture_output=True, text=True, timeout=120)
        if res.returncode != 0:
            return None
        return [DetectedGPU(str(name), int(mem)) for name, mem in json.loads(res.stdout.strip().splitlines()[-1])]
    except (OSError, subprocess.TimeoutExpired, ValueError, IndexError, TypeError):
        return None


BACKENDS = {"nvml": _from_nvml, "nvidia-smi": _from_nvidia_smi, "torch": _from_torch}


def detect(backends: Iterable[str] = ("nvml", "nvidia-smi", "torch")) -> Detection:
    """Look for GPUs (first backend that answers wins) and suggest a profile."""
    from ftadvisor.profiles import match_device

    host = host_memory_bytes()
    for name in backends:
        gpus = BACKENDS[name]()
        if gpus is None:
            continue
        if not gpus:
            break
        match = match_device(gpus[0].name, gpus[0].memory_bytes)
        pid = match.id if match else None
        desc = f"{len(gpus)}× {gpus[0].name} ({gpus[0].memory_bytes / 2**30:.0f} GiB) via {name}"
        if pid is None:
            note = f"found {desc}; no profile matches it: pick the closest card below"
            return Detection(gpus, name, "cpu", host, note)
        return Detection(gpus, name, pid, host, f"found {desc} → {pid}")
    ram = f"; host RAM {host / 2**30:.0f} GiB" if host else ""
    return Detection([], "none", "cpu", host, f"no GPU found → cpu (host-only training){ram}")
