"""Models straight from the Hugging Face Hub: ``org/name[@revision]`` -> a ModelProfile.

Only ``config.json`` is ever fetched (no weights, no code), through huggingface_hub's own cache,
so ``HF_TOKEN``, ``HF_ENDPOINT``, ``HF_HOME``/``HF_HUB_CACHE`` and ``HF_HUB_OFFLINE`` apply as they
do for transformers. Every failure (gated, private, not found, offline, unreachable) is one
``FtAdvisorError`` line within a few seconds: one metadata request with a short timeout and no
retries decides, instead of ``hf_hub_download``'s fallback retry loop (huggingface_hub 2.4
file_download.py ``_hf_hub_download_to_cache_dir`` retries a failed HEAD with a 60 s timeout and
``http_backoff``'s 5 retries, about a minute when the network is down).

Run it: ``ftadvisor estimate -m Qwen/Qwen3-8B@main -g h100 -t lora``; tests: tests/test_hub.py.
huggingface_hub is imported inside the functions only, so ``import ftadvisor`` stays light.
"""

from __future__ import annotations

import os
import re
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from typing import Any

from ftadvisor.errors import FtAdvisorError, shown

CONFIG_FILE = "config.json"
DEFAULT_REVISION = "main"  # huggingface_hub.constants.DEFAULT_REVISION

DEFAULT_TIMEOUT_S = 3.0
"""Seconds one Hub metadata request may take before the Hub counts as unreachable. huggingface_hub's
own default is 10 s (constants.DEFAULT_ETAG_TIMEOUT); 3 s keeps every failure under 5 s. An explicit
``HF_HUB_ETAG_TIMEOUT`` wins, as it does in huggingface_hub."""

# A repo id as huggingface_hub.utils._validators.validate_repo_id accepts it: "namespace/name", each
# part of [\w.-], at most 96 characters in all, neither "--" nor "..", not starting or ending with
# "-" or "."; then an optional "@revision" (a branch, tag, commit or refs/pr/N).
_REPO_PART = r"[A-Za-z0-9_](?:[\w.-]*[A-Za-z0-9_])?"
_HUB_ID = re.compile(rf"^(?P<repo>{_REPO_PART}/{_REPO_PART})(?:@(?P<rev>[\w.\-/]{{1,200}}))?$")


def parse_hub_id(text: str) -> tuple[str, str | None] | None:
    """``(repo_id, revision or None)`` when ``text`` reads as ``org/name[@revision]``, else None."""
    m = _HUB_ID.match(text.strip()) if isinstance(text, str) else None
    if m is None:
        return None
    repo = m.group("repo")
    if len(repo) > 96 or "--" in repo or ".." in repo:
        return None
    return repo, m.group("rev")


def _offline() -> bool:
    """HF_HUB_OFFLINE (or TRANSFORMERS_OFFLINE) read now, not at huggingface_hub's import
    (constants.HF_HUB_OFFLINE uses the same truthy values: 1, ON, YES, TRUE)."""
    val = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or ""
    return val.strip().upper() in {"1", "ON", "YES", "TRUE"}


def _endpoint() -> str:
    """HF_ENDPOINT read now (huggingface_hub reads it once at import: constants.ENDPOINT)."""
    return (os.environ.get("HF_ENDPOINT") or "https://huggingface.co").rstrip("/")


def _cache_dir() -> str:
    """The Hub cache as huggingface_hub.constants computes it, but read now: HF_HUB_CACHE, else
    $HF_HOME/hub, else $XDG_CACHE_HOME/huggingface/hub, else ~/.cache/huggingface/hub."""
    if os.environ.get("HF_HUB_CACHE"):
        return os.path.expanduser(os.environ["HF_HUB_CACHE"])
    home = os.environ.get("HF_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "huggingface")
    return os.path.join(os.path.expanduser(home), "hub")


def _timeout() -> float:
    raw = os.environ.get("HF_HUB_ETAG_TIMEOUT")
    try:
        return float(raw) if raw else DEFAULT_TIMEOUT_S
    except ValueError:
        raise FtAdvisorError("HF_HUB_ETAG_TIMEOUT", f"must be a number of seconds, got {shown(raw)}") from None


def _cached(repo_id: str, revision: str) -> str | None:
    """The cached config.json of ``repo_id`` at ``revision`` (a branch, tag or commit), or None."""
    from huggingface_hub import try_to_load_from_cache

    path = try_to_load_from_cache(repo_id, CONFIG_FILE, cache_dir=_cache_dir(), revision=revision)
    return path if isinstance(path, str) else None


def _where(repo_id: str, revision: str) -> str:
    return f"{repo_id}@{revision}"


def _http_error(err: Exception, repo_id: str, revision: str) -> FtAdvisorError:
    """One line for an answer from the Hub that says no (huggingface_hub.utils._http.hf_raise_for_status
    turns X-Error-Code into these classes; the Hub answers 401 to an anonymous request for a private
    or missing repo, 403 to a token without access to a gated one)."""
    from huggingface_hub.errors import (
        GatedRepoError,
        RemoteEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    status = getattr(getattr(err, "response", None), "status_code", None)
    token = bool(os.environ.get("HF_TOKEN") or os.environ.get("HUGGING_FACE_HUB_TOKEN"))
    page = f"{_endpoint()}/{repo_id}"
    if isinstance(err, GatedRepoError):
        how = ("your HF_TOKEN has no access yet" if status == 403 or token
               else "set HF_TOKEN (or run `hf auth login`) after accepting")
        return FtAdvisorError("model", f"{repo_id} is gated (HTTP {status}): {how}; request access on {page}")
    if isinstance(err, RevisionNotFoundError):
        return FtAdvisorError("model", f"revision {revision!r} does not exist in {repo_id} (HTTP {status}); "
                                       f"use a branch, tag or commit of the repository, or drop '@{revision}'")
    if isinstance(err, RemoteEntryNotFoundError):
        return FtAdvisorError("model", f"{_where(repo_id, revision)} has no config.json (HTTP {status}), so it is "
                                       "not a transformers model ftadvisor can read")
    if isinstance(err, RepositoryNotFoundError):
        auth = "" if token else "; if it is private, set HF_TOKEN to a token that can read it"
        return FtAdvisorError("model", f"{repo_id} was not found on the Hub at {_endpoint()} (HTTP {status}){auth}")
    if status == 401:
        return FtAdvisorError("model", f"the Hub refused the token in HF_TOKEN for {repo_id} (HTTP 401); "
                                       "fix or unset HF_TOKEN")
    return FtAdvisorError("model", f"the Hub answered HTTP {status} for {_where(repo_id, revision)}; try again later "
                                   "or give a local config.json")


def _unreachable(repo_id: str, revision: str, why: str) -> FtAdvisorError:
    return FtAdvisorError("model", f"cannot reach the Hub at {_endpoint()} ({why}) and {_where(repo_id, revision)} "
                                   f"has no cached config.json in {_cache_dir()}; connect, set HF_ENDPOINT, or give "
                                   "a local config.json")


@contextmanager
def _no_side_requests():
    """Only ftadvisor's own request goes out. Unless telemetry is off, huggingface_hub names the
    detected AI-agent harness in its User-Agent, and to detect it first GETs
    ``{ENDPOINT}/api/agent-harnesses`` with its own 3 s timeout, once a day (huggingface_hub 2.4
    utils/_headers.py ``build_hf_headers`` -> utils/_detect_agent.py ``_fetch_registry``): on a dead
    network that doubles the time to fail. So these requests go out as with
    HF_HUB_DISABLE_TELEMETRY=1 (the User-Agent then names no torch version and no agent)."""
    from huggingface_hub import constants

    before = constants.HF_HUB_DISABLE_TELEMETRY
    constants.HF_HUB_DISABLE_TELEMETRY = True
    try:
        yield
    finally:
        constants.HF_HUB_DISABLE_TELEMETRY = before


def _metadata(repo_id: str, revision: str):
    """One HEAD request for config.json: short timeout, no retry (``retry_on_errors=False``).
    Returns huggingface_hub's HfFileMetadata, or raises the exception the request raised."""
    from huggingface_hub import get_hf_file_metadata, hf_hub_url

    url = hf_hub_url(repo_id, CONFIG_FILE, revision=revision, endpoint=_endpoint())
    with _no_side_requests():
        return get_hf_file_metadata(url, timeout=_timeout(), endpoint=_endpoint(), retry_on_errors=False)


def _transport_errors() -> tuple[type[BaseException], ...]:
    """What a request raises when the Hub cannot be reached: httpx2's connect/read/timeout/proxy
    errors, and huggingface_hub's refusal while constants.HF_HUB_OFFLINE is set."""
    import httpx2
    from huggingface_hub.errors import OfflineModeIsEnabled

    return httpx2.TransportError, OfflineModeIsEnabled


def fetch_config(repo_id: str, revision: str | None = None) -> tuple[str, str | None, str]:
    """``(path of config.json in the Hub cache, commit or None, how it was found)``.

    Offline (HF_HUB_OFFLINE): the cache only, no request. Online: one metadata request; when the
    Hub cannot be reached, a cached copy of that revision is used; when it says no (gated, private,
    missing), that is the answer. The file is then read from the cache or downloaded once."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import FileMetadataError, HfHubHTTPError, LocalEntryNotFoundError

    rev = revision or DEFAULT_REVISION
    if _offline():
        path = _cached(repo_id, rev)
        if path is None:
            raise FtAdvisorError("model", f"HF_HUB_OFFLINE is set and {_where(repo_id, rev)} has no cached config.json "
                                          f"in {_cache_dir()}; fetch it once online, or give a local config.json")
        return path, _commit_of(path), "from the Hub cache (HF_HUB_OFFLINE)"
    try:
        meta = _metadata(repo_id, rev)
    except HfHubHTTPError as err:
        status = getattr(getattr(err, "response", None), "status_code", None)
        if status is not None and status >= 500 and (path := _cached(repo_id, rev)):
            return path, _commit_of(path), f"from the Hub cache (the Hub answered HTTP {status})"
        raise _http_error(err, repo_id, rev) from None
    except FileMetadataError:
        raise FtAdvisorError("model", f"{_endpoint()} does not answer like a Hugging Face Hub (no X-Repo-Commit or "
                                      "ETag header); check HF_ENDPOINT") from None
    except _transport_errors() as err:
        if path := _cached(repo_id, rev):
            return path, _commit_of(path), f"from the Hub cache (Hub unreachable: {type(err).__name__})"
        raise _unreachable(repo_id, rev, _reason(err)) from None
    commit = meta.commit_hash
    path = _cached(repo_id, commit) if commit else None
    if path is not None:
        return path, commit, "from the Hub cache (current)"
    try:
        with _no_side_requests():
            path = hf_hub_download(repo_id, CONFIG_FILE, revision=rev, cache_dir=_cache_dir(), endpoint=_endpoint(),
                                   etag_timeout=_timeout())
    except HfHubHTTPError as err:
        raise _http_error(err, repo_id, rev) from None
    except (*_transport_errors(), LocalEntryNotFoundError) as err:  # the Hub went away after the first answer
        raise _unreachable(repo_id, rev, _reason(err)) from None
    except OSError as err:  # the cache folder cannot be written (permissions, disk full)
        raise FtAdvisorError("model", f"cannot store config.json of {repo_id} in the Hub cache {_cache_dir()} "
                                      f"({_reason(err)}); set HF_HUB_CACHE to a writable folder") from None
    return path, commit, f"downloaded from {_endpoint()}"


def _reason(err: BaseException) -> str:
    import httpx2

    if isinstance(err, httpx2.TimeoutException):
        return f"no answer within {_timeout():g} s"
    first = str(err).splitlines()[0].strip(" '\"") if str(err) else ""
    first = first if len(first) <= 120 else first[:117] + "..."
    return f"{type(err).__name__}: {first}" if first else type(err).__name__


def _commit_of(path: str) -> str | None:
    """A cached file lives at <cache>/models--org--name/snapshots/<commit>/config.json."""
    parent = Path(path).parent.name
    return parent if re.fullmatch(r"[0-9a-f]{40}", parent) else None


@lru_cache(maxsize=1)
def transformers_model_types() -> frozenset[str] | None:
    """The model_types transformers registers (``CONFIG_MAPPING_NAMES`` in
    transformers/models/auto/auto_mappings.py and configuration_auto.py), read from the source text
    so that transformers is not imported; None when transformers is not installed."""
    import ast
    import importlib.util

    spec = importlib.util.find_spec("transformers")  # a top-level package: found, not imported
    if spec is None or not spec.submodule_search_locations:
        return None
    auto = Path(next(iter(spec.submodule_search_locations))) / "models" / "auto"
    names: set[str] = set()
    for file in ("auto_mappings.py", "configuration_auto.py"):
        try:
            tree = ast.parse((auto / file).read_text(encoding="utf-8"))
        except (OSError, SyntaxError, ValueError):
            continue
        for node in ast.walk(tree):
            pairs = []
            if isinstance(node, ast.Tuple) and len(node.elts) == 2:
                pairs = [(node.elts[0], node.elts[1])]
            elif isinstance(node, ast.Dict):
                pairs = [(k, v) for k, v in zip(node.keys, node.values) if k is not None]
            for k, v in pairs:
                if (isinstance(k, ast.Constant) and isinstance(k.value, str) and isinstance(v, ast.Constant)
                        and isinstance(v.value, str) and v.value.endswith("Config")):
                    names.add(k.value)
    return frozenset(names) or None


def remote_code_reason(config: dict[str, Any]) -> str | None:
    """Why building this config would need the repository's own code, or None.

    transformers runs repository code only when ``auto_map`` names a class and the ``model_type``
    has no built-in class (transformers/models/auto/configuration_auto.py
    ``AutoConfig.from_pretrained``: ``has_remote_code`` and not ``has_local_code``). ftadvisor's
    analytic families read config fields only, so they never need it."""
    from ftadvisor.architecture import SUPPORTED_MODEL_TYPES

    auto_map = config.get("auto_map")
    if not auto_map:
        return None
    model_type = config.get("model_type")
    if model_type in SUPPORTED_MODEL_TYPES:
        return None
    known = transformers_model_types()
    if known is not None and model_type in known:
        return None
    classes = ", ".join(sorted(str(k) for k in auto_map))[:80] if isinstance(auto_map, dict) else "auto_map"
    return (f"model_type {shown(model_type)} has no built-in transformers class and its auto_map ({classes}) "
            "points at Python code in the repository")


def _require_hub_client() -> None:
    """huggingface_hub is a core dependency (requirements/core.txt); an install without it gets one line."""
    import importlib.util

    if importlib.util.find_spec("huggingface_hub") is None:
        raise FtAdvisorError("model", "a Hub id needs the huggingface_hub package: "
                                      "pip install 'huggingface_hub>=2.4,<3'")


def hub_profile(text: str, trust_remote_code: bool = False):
    """The ModelProfile of the Hub model ``org/name[@revision]`` (config.json only). Cached per
    process and per Hub setting, so the many resolve_model calls of one command ask the Hub once."""
    parsed = parse_hub_id(text)
    if parsed is None:
        raise FtAdvisorError("model", f"{shown(text)} is not a Hub id of the form org/name[@revision]")
    _require_hub_client()
    return _hub_profile(parsed[0], parsed[1], bool(trust_remote_code), _endpoint(), _cache_dir(), _offline(),
                        os.environ.get("HF_TOKEN"))


@lru_cache(maxsize=64)
def _hub_profile(repo_id: str, revision: str | None, trust_remote_code: bool, endpoint: str, cache_dir: str,
                 offline: bool, token: str | None):
    """hub_profile's work; the Hub settings are arguments only so that the cache keys on them."""
    from ftadvisor import validate

    path, commit, how = fetch_config(repo_id, revision)
    config = validate.load_json_file(path, "model")
    if not isinstance(config, dict):
        raise FtAdvisorError("model", f"{_where(repo_id, revision or DEFAULT_REVISION)}: config.json is not a JSON "
                                      "object")
    reason = remote_code_reason(config)
    if reason and not trust_remote_code:
        raise FtAdvisorError("model", f"{repo_id} needs remote code: {reason}; pass --trust-remote-code to allow it "
                                      "(ftadvisor itself only reads config.json and never runs that code)")
    rev = revision or DEFAULT_REVISION
    host = re.sub(r"^https?://", "", endpoint)
    short = f" ({commit[:7]})" if commit and commit != rev else ""
    notes = f"config.json of {repo_id} at revision {rev}" + (f", commit {commit}" if commit else "") + f"; {how}"
    if reason:
        notes += f"; asks for remote code ({reason}), allowed by --trust-remote-code, not run by ftadvisor"
    return _profile(config, id=f"hub:{repo_id}@{rev}", name=f"{repo_id}@{rev}{short}",
                    source=f"{host}/{repo_id}@{commit or rev}", hf_id=repo_id, notes=notes)


def _profile(config: dict[str, Any], **fields: Any):
    """A ModelProfile of a fetched config, its architecture derived as for every other profile."""
    from pydantic import ValidationError

    from ftadvisor.architecture import arch_from_config
    from ftadvisor.errors import from_validation
    from ftadvisor.schema import ModelProfile

    try:
        arch = arch_from_config(dict(config))
    except FtAdvisorError as err:
        raise FtAdvisorError(f"model ({fields['source']})", str(err)) from None
    try:
        return ModelProfile(config=dict(config), arch=arch, **fields)
    except ValidationError as err:
        raise FtAdvisorError("model", f"{fields['source']}: {from_validation(err)}") from None


def check_available(repo_id: str, revision: str | None = None) -> str | None:
    """Fail fast, in one line, when the Hub model ``repo_id`` cannot be fetched now: one metadata
    request with a short timeout and no retry (or, with HF_HUB_OFFLINE, a look at the cache only).
    Returns the commit the revision points at (None offline). For ``launch``'s preflight, before
    transformers' own downloads, whose retries take about a minute when the network is down."""
    _require_hub_client()
    from huggingface_hub.errors import FileMetadataError, HfHubHTTPError

    rev = revision or DEFAULT_REVISION
    if _offline():
        if _cached(repo_id, rev) is None:
            raise FtAdvisorError("model", f"HF_HUB_OFFLINE is set and {_where(repo_id, rev)} is not in the Hub cache "
                                          f"{_cache_dir()}; download it once online, or give a local model directory")
        return None
    try:
        return _metadata(repo_id, rev).commit_hash
    except HfHubHTTPError as err:
        raise _http_error(err, repo_id, rev) from None
    except FileMetadataError:
        raise FtAdvisorError("model", f"{_endpoint()} does not answer like a Hugging Face Hub; "
                                      "check HF_ENDPOINT") from None
    except _transport_errors() as err:
        raise FtAdvisorError("model", f"cannot reach the Hub at {_endpoint()} ({_reason(err)}) to download "
                                      f"{_where(repo_id, rev)}; connect, set HF_ENDPOINT, or set HF_HUB_OFFLINE=1 to "
                                      "train from the local Hub cache") from None
