"""Model and hardware profiles: YAML data in ``profiles/``, loaded on request and cached.

``resolve_model`` accepts a profile id, an alias, a Hugging Face id that a
profile carries, a path to a ``config.json`` (or a directory holding one), a
dict of config fields, or a ready ``ModelProfile``. ``resolve_hardware``
accepts an id, an alias or a ``HardwareProfile``.
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from ftadvisor.errors import FtAdvisorError, closest, from_validation, shown, unknown
from ftadvisor.schema import HardwareProfile, ModelProfile


def profiles_dir() -> Path:
    """The profiles folder: $FTADVISOR_PROFILES, the repo's ``profiles/``, or the copy packaged in the wheel."""
    env = os.environ.get("FTADVISOR_PROFILES")
    if env:
        return Path(env)
    here = Path(__file__).resolve().parent
    for cand in (here.parent / "profiles", here / "_profiles"):
        if cand.is_dir():
            return cand
    raise FtAdvisorError("profiles", f"no profiles folder found next to {here}")


def calibration_dir() -> Path:
    """The calibration folder (sweeps, results, corrections): ``$FTADVISOR_CALIBRATION`` or the
    repository's ``calibration/``."""
    env = os.environ.get("FTADVISOR_CALIBRATION")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[1] / "calibration"


def _load_yaml_dir(kind: str, cls: type) -> dict[str, Any]:
    folder = profiles_dir() / kind
    out: dict[str, Any] = {}
    from ftadvisor.validate import load_yaml_file

    for path in sorted(folder.glob("*.yaml")):
        data = load_yaml_file(path, f"profiles/{kind}/{path.name}")
        try:
            if cls is ModelProfile and isinstance(data, dict) and isinstance(data.get("config"), dict):
                from ftadvisor.architecture import arch_from_config

                data = dict(data, arch=arch_from_config(data["config"]))
            prof = cls.model_validate(data)
        except FtAdvisorError as err:
            raise FtAdvisorError(f"profiles/{kind}/{path.name}", str(err)) from None
        except ValidationError as err:
            raise FtAdvisorError(f"profiles/{kind}/{path.name}", str(from_validation(err))) from None
        out[prof.id] = prof
    return out


@lru_cache(maxsize=1)
def model_profiles() -> dict[str, ModelProfile]:
    return _load_yaml_dir("models", ModelProfile)


@lru_cache(maxsize=1)
def hardware_profiles() -> dict[str, HardwareProfile]:
    return _load_yaml_dir("hardware", HardwareProfile)


def _norm(name: str) -> str:
    return name.strip().lower()


@lru_cache(maxsize=1)
def _model_index() -> dict[str, str]:
    idx: dict[str, str] = {}
    for pid, p in model_profiles().items():
        idx[pid] = pid
        for a in (p.hf_id, *p.aliases):
            if a:
                idx.setdefault(_norm(a), pid)
    return idx


@lru_cache(maxsize=1)
def _hardware_index() -> dict[str, str]:
    idx: dict[str, str] = {}
    for hid, h in hardware_profiles().items():
        idx[hid] = hid
        for a in h.aliases:
            idx.setdefault(_norm(a), hid)
    return idx


def _profile_from_config(config: dict[str, Any], source: str, name: str) -> ModelProfile:
    if not isinstance(config, dict):
        raise FtAdvisorError("model", f"{source}: config must be a JSON object of config.json fields")
    from ftadvisor.architecture import arch_from_config

    try:
        arch = arch_from_config(dict(config))
    except FtAdvisorError as err:
        raise FtAdvisorError(f"model ({source})", str(err)) from None
    try:
        return ModelProfile(id=f"config:{name}", name=name, source=source, config=dict(config), arch=arch)
    except ValidationError as err:
        raise FtAdvisorError("model", f"{source}: {str(from_validation(err))}") from None


def resolve_model(model: str | os.PathLike | dict | ModelProfile, *, trust_remote_code: bool = False) -> ModelProfile:
    """Find a model profile by id, alias, HF id, config path or config dict; any other
    ``org/name[@revision]`` is fetched from the Hugging Face Hub (its config.json only: ftadvisor.hub).
    ``trust_remote_code`` only lets a Hub config that asks for repository code through; none is run."""
    if isinstance(model, ModelProfile):
        if model.arch is None:
            from ftadvisor.architecture import arch_from_config

            return model.model_copy(update={"arch": arch_from_config(dict(model.config))})
        return model
    if isinstance(model, dict):
        return _profile_from_config(model, "config dict", str(model.get("_name_or_path") or model.get("model_type", "custom")))
    if not isinstance(model, (str, os.PathLike)):
        raise FtAdvisorError("model", f"expected a name, a path or a dict, got {type(model).__name__}")
    from ftadvisor import validate

    try:
        text = os.fspath(model)
    except TypeError:
        raise FtAdvisorError("model", f"expected a name, a path or a dict, got {type(model).__name__}") from None
    if isinstance(text, bytes):
        raise FtAdvisorError("model", "expected a name or a path as text, got bytes")
    text = validate.name("model", text)
    pid = _model_index().get(_norm(text))
    if pid:
        return model_profiles()[pid]
    path = Path(text).expanduser() if validate.exists(text) else Path(text)
    if validate.is_dir(path):
        path = path / "config.json"
        if not validate.is_file(path):
            raise FtAdvisorError("model", f"directory {shown(text, 200)} holds no config.json")
    if validate.is_file(path):
        config = validate.load_json_file(path, "model")
        return _profile_from_config(config, str(path), path.parent.name or path.stem)
    if text.endswith(".json") or os.sep in text and not text.count("/") == 1:
        raise FtAdvisorError("model", f"no such file {shown(text, 200)}")
    from ftadvisor import hub

    if hub.parse_hub_id(text) is not None:
        try:
            return hub.hub_profile(text, trust_remote_code=trust_remote_code)
        except FtAdvisorError as err:  # a missing or gated repo: a shipped profile may be what was meant
            missing = "was not found" in err.message
            near = closest(_norm(text.split("@")[0]), _model_index()) if missing or "gated" in err.message else []
            extra = "; nor is it a local file or folder" if missing else ""
            if near:
                extra += f"; closest profiles: {', '.join(near)}"
            if not extra:
                raise
            raise FtAdvisorError(err.field, err.message + extra) from None
    raise unknown("model", text, list(model_profiles()) + [p.hf_id for p in model_profiles().values() if p.hf_id])


def resolve_hardware(hardware: str | HardwareProfile) -> HardwareProfile:
    """Find a hardware profile by id or alias (``h100``, ``rtx4090``, ``a10g``)."""
    if isinstance(hardware, HardwareProfile):
        return hardware
    if not isinstance(hardware, str):
        raise FtAdvisorError("gpu", f"expected a name, got {type(hardware).__name__}")
    from ftadvisor.validate import name as check_name

    check_name("gpu", hardware, max_chars=1024)
    if hardware.lower().endswith((".yaml", ".yml")):
        return hardware_from_file(hardware)
    hid = _hardware_index().get(_norm(hardware).replace(" ", "-"))
    if hid is None:
        hid = _hardware_index().get(_norm(hardware).replace(" ", "").replace("-", ""))
    if hid is None:
        raise unknown("gpu", hardware, hardware_profiles())
    return hardware_profiles()[hid]


def hardware_from_file(path: str) -> HardwareProfile:
    """A hardware profile from a YAML file (``-g my-card.yaml``): the fields of profiles/hardware/*.yaml,
    optionally a ``node:`` mapping (ftadvisor.schema.NodeSpec). An unknown key is an error naming it
    and the valid keys."""
    from ftadvisor.schema import NodeSpec
    from ftadvisor.validate import load_yaml_file

    if not Path(path).is_file():
        raise FtAdvisorError("gpu", f"no such hardware file: {path}")
    data = load_yaml_file(Path(path), "gpu")
    if not isinstance(data, dict):
        raise FtAdvisorError("gpu", f"{path} must hold a mapping of hardware fields")
    for where, mapping, cls in (("", data, HardwareProfile), ("node.", data.get("node"), NodeSpec)):
        if isinstance(mapping, dict):
            for key in mapping:
                if key not in cls.model_fields:
                    raise FtAdvisorError(f"{where}{key}", f"is not a hardware {'node ' if where else ''}field "
                                         f"(in {path})", list(cls.model_fields))
    try:
        return HardwareProfile.model_validate(data)
    except FtAdvisorError as err:
        raise FtAdvisorError(err.field, f"{err.message} (in {path})", err.choices) from None
    except ValidationError as err:
        raise from_validation(err) from None


def _device_words(text: str) -> set[str]:
    import re

    words = [w for w in re.split(r"[^a-z0-9]+", text.lower()) if w]
    # adjacent pairs joined as well, so "GeForce RTX 4090" also yields "rtx4090"
    return set(words + [a + b for a, b in zip(words, words[1:])])


def match_device(device_name: str, memory_bytes: float) -> HardwareProfile | None:
    """The hardware profile for a device name as nvidia-smi, NVML or torch.cuda report it, or None.

    A profile's family is the first part of its id (``a100`` of ``a100-80gb``) and must appear as a
    word of the device name; among several (A100 40/80 GB, H100 SXM/PCIe) the one whose memory is
    closest wins, and a "PCIe" in the name picks the PCIe card (nvidia-smi names PCIe parts
    explicitly and SXM parts not at all). The one matcher behind launch, calibrate and the TUI.
    """
    words = _device_words(device_name)
    best: tuple[float, HardwareProfile] | None = None
    for p in hardware_profiles().values():
        if p.vendor == "cpu" or p.id.split("-")[0] not in words:
            continue
        pcie_mismatch = ("pcie" in words) != ("pcie" in p.id)
        score = abs(p.memory_bytes - memory_bytes) / 2**30 + (1000 if pcie_mismatch else 0)
        if best is None or score < best[0]:
            best = (score, p)
    return best[1] if best else None
