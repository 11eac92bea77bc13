"""Hub models (ftadvisor/hub.py) against a local stand-in for the Hub's file endpoint.

A small http.server in a thread answers ``HEAD``/``GET /{org}/{name}/resolve/{revision}/{file}`` the way
huggingface.co does for huggingface_hub 2.4 (file_download.get_hf_file_metadata reads X-Repo-Commit,
ETag and Content-Length; utils/_http.hf_raise_for_status maps X-Error-Code GatedRepo, RepoNotFound,
RevisionNotFound and EntryNotFound), and counts every request. HF_ENDPOINT points at it, HF_HUB_CACHE
at a temporary folder. Nothing here mocks ftadvisor's own functions.

Run: .venv/bin/python -m pytest -q tests/test_hub.py
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote

import pytest

from ftadvisor.errors import FtAdvisorError
from tests.conftest import ROOT

COMMIT_MAIN = "1" * 40
COMMIT_V1 = "2" * 40
COMMIT_NEW = "3" * 40

# A small Llama config. Parameters by hand (transformers LlamaForCausalLM, untied head):
#   embeddings 1000*64 = 64,000 and lm_head 64,000;
#   per layer: q 64*64 = 4,096, k and v 64*(2*16) = 2,048 each, o 4,096 -> 12,288;
#              MLP gate/up/down 3*64*256 = 49,152; two RMSNorms 2*64 = 128  -> 61,568;
#   final norm 64.
# 2 layers: 128,000 + 2*61,568 + 64 = 251,200; 3 layers: 312,768.
TINY = dict(model_type="llama", architectures=["LlamaForCausalLM"], vocab_size=1000, hidden_size=64,
            intermediate_size=256, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
            max_position_embeddings=2048, rms_norm_eps=1e-5, hidden_act="silu", tie_word_embeddings=False,
            attention_bias=False, mlp_bias=False)
TINY_PARAMS = 251_200
TINY_V1_PARAMS = 312_768
GOOD_TOKEN = "hf_goodtoken"

# A config that needs the repository's code: a model_type transformers does not know, with auto_map.
REMOTE = dict(TINY, model_type="acme_secret", architectures=["AcmeForCausalLM"],
              auto_map={"AutoConfig": "configuration_acme.AcmeConfig",
                        "AutoModelForCausalLM": "modeling_acme.AcmeForCausalLM"})


class FakeHub:
    """The repositories served: repo -> {ref: commit}, commit -> {file: bytes}."""

    def __init__(self):
        self.refs = {
            "acme/tiny-llama": {"main": COMMIT_MAIN, "v1": COMMIT_V1, COMMIT_MAIN: COMMIT_MAIN, COMMIT_V1: COMMIT_V1},
            "acme/private": {"main": COMMIT_MAIN},
            "acme/remote": {"main": COMMIT_MAIN},
            "acme/remote-llama": {"main": COMMIT_MAIN},
            "acme/no-config": {"main": COMMIT_MAIN},
        }
        tiny, v1 = json.dumps(TINY).encode(), json.dumps(dict(TINY, num_hidden_layers=3)).encode()
        self.files = {
            ("acme/tiny-llama", COMMIT_MAIN): {"config.json": tiny},
            ("acme/tiny-llama", COMMIT_V1): {"config.json": v1},
            ("acme/private", COMMIT_MAIN): {"config.json": tiny},
            ("acme/remote", COMMIT_MAIN): {"config.json": json.dumps(REMOTE).encode(),
                                           "configuration_acme.py": b"raise SystemExit('remote code ran')\n"},
            ("acme/remote-llama", COMMIT_MAIN): {"config.json": json.dumps(dict(TINY, auto_map=REMOTE["auto_map"]))
                                                 .encode()},
            ("acme/no-config", COMMIT_MAIN): {"README.md": b"hi"},
        }
        self.requests: list[tuple[str, str]] = []
        self.lock = threading.Lock()

    def answer(self, method: str, path: str, auth: str | None) -> tuple[int, dict[str, str], bytes]:
        parts = path.lstrip("/").split("/")
        if len(parts) < 5 or parts[2] != "resolve":
            return 404, {}, b""
        repo, rev, name = f"{parts[0]}/{parts[1]}", unquote(parts[3]), "/".join(parts[4:])
        if repo == "acme/slow":
            time.sleep(8)  # longer than ftadvisor's 3 s timeout
            return 500, {}, b""
        if repo == "acme/gated":  # the Hub: 401 anonymous, 403 with a token that has no access
            return (403 if auth else 401), {"X-Error-Code": "GatedRepo", "X-Error-Message": "Access restricted"}, b""
        if repo == "acme/private" and auth != f"Bearer {GOOD_TOKEN}" or repo not in self.refs:
            return 401, {"X-Error-Code": "RepoNotFound", "X-Error-Message": "Repository not found"}, b""
        commit = self.refs[repo].get(rev)
        if commit is None:
            return 404, {"X-Error-Code": "RevisionNotFound", "X-Error-Message": "Invalid rev id"}, b""
        body = self.files[(repo, commit)].get(name)
        if body is None:
            return 404, {"X-Error-Code": "EntryNotFound", "X-Repo-Commit": commit}, b""
        headers = {"X-Repo-Commit": commit, "ETag": f'"{hashlib.sha1(body).hexdigest()}"',
                   "Content-Type": "application/json"}
        return 200, headers, body

    def seen(self, repo: str | None = None) -> list[tuple[str, str]]:
        with self.lock:
            return [r for r in self.requests if repo is None or r[1].startswith(f"/{repo}/")]


def _serve(hub: FakeHub):
    class Handler(BaseHTTPRequestHandler):
        def _reply(self, send_body: bool):
            with hub.lock:
                hub.requests.append((self.command, self.path))
            status, headers, body = hub.answer(self.command, self.path, self.headers.get("authorization"))
            self.send_response(status)
            for k, v in headers.items():
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if send_body and body:
                self.wfile.write(body)

        def do_HEAD(self):  # noqa: N802 - http.server's naming
            self._reply(False)

        def do_GET(self):  # noqa: N802
            self._reply(True)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    return server


@pytest.fixture
def hub(tmp_path, monkeypatch):
    fake = FakeHub()
    server = _serve(fake)
    fake.endpoint = f"http://127.0.0.1:{server.server_address[1]}"
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_HUB_ETAG_TIMEOUT"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HF_ENDPOINT", fake.endpoint)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf_cache"))
    monkeypatch.delenv("HF_HUB_DISABLE_TELEMETRY", raising=False)  # its side request must not happen either
    yield fake
    server.shutdown()
    server.server_close()


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # nothing listens there once the socket is closed


def _resolve(text: str, **kw):
    from ftadvisor.profiles import resolve_model

    return resolve_model(text, **kw)


def _fails(text: str, **kw) -> tuple[str, float]:
    t0 = time.perf_counter()
    with pytest.raises(FtAdvisorError) as info:
        _resolve(text, **kw)
    elapsed = time.perf_counter() - t0
    msg = str(info.value)
    assert "\n" not in msg and msg.startswith("model")
    return msg, elapsed


def _cli(args: list[str], env_extra: dict[str, str], code: str | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "HF_TOKEN")}
    env.update(env_extra)
    cmd = [sys.executable, "-m", "ftadvisor", *args] if code is None else [sys.executable, "-c", code]
    return subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env, timeout=60)


# --------------------------------------------------------------------------------------------
# End to end: the real CLI in a fresh interpreter (huggingface_hub reads its settings at import)
# --------------------------------------------------------------------------------------------

def test_cli_fetches_config_only_then_reuses_the_cache_online_and_offline(hub):
    env = {k: os.environ[k] for k in ("HF_ENDPOINT", "HF_HOME", "HF_HUB_CACHE")}
    res = _cli(["estimate", "-m", "acme/tiny-llama", "-g", "h100", "-t", "lora", "--json"], env)
    assert res.returncode == 0, res.stderr
    est = json.loads(res.stdout)[0]
    assert est["model_id"] == "hub:acme/tiny-llama@main"
    assert est["total_params"] == TINY_PARAMS
    first = hub.seen()
    assert first and all(path == f"/acme/tiny-llama/resolve/main/config.json" for _, path in first), first
    assert [m for m, _ in first].count("GET") == 1  # config.json downloaded once, nothing else

    res = _cli(["estimate", "-m", "acme/tiny-llama", "-g", "h100", "-t", "lora"], env)  # online, cached: one HEAD
    assert res.returncode == 0, res.stderr
    assert f"acme/tiny-llama@main ({COMMIT_MAIN[:7]})" in res.stdout  # the table header names id and commit
    assert hub.seen()[len(first):] == [("HEAD", "/acme/tiny-llama/resolve/main/config.json")]

    # offline: from the cache, not one request, and no heavy module loaded on the way
    n = len(hub.seen())
    probe = ("import sys, json\nfrom ftadvisor.cli import app\n"
             "try:\n    app(['estimate', '-m', 'acme/tiny-llama', '-g', 'h100', '-t', 'lora', '--json'], "
             "standalone_mode=False)\nexcept SystemExit as e:\n    assert not e.code, e.code\n"
             "print('LOADED:' + ','.join(m for m in ('torch', 'transformers', 'peft', 'trl', 'numpy', 'pandas', "
             "'textual') if m in sys.modules))\n")
    res = _cli([], dict(env, HF_HUB_OFFLINE="1"), code=probe)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip().splitlines()[-1] == "LOADED:"
    assert json.loads(res.stdout[: res.stdout.rindex("LOADED:")])[0]["total_params"] == TINY_PARAMS
    assert len(hub.seen()) == n


def test_cli_unreachable_hub_fails_in_one_line_under_5_s(tmp_path):
    env = {"HF_ENDPOINT": f"http://127.0.0.1:{_closed_port()}", "HF_HUB_CACHE": str(tmp_path / "c"),
           "HF_HOME": str(tmp_path / "h")}
    t0 = time.perf_counter()
    res = _cli(["estimate", "-m", "acme/tiny-llama", "-g", "h100", "-t", "lora"], env)
    elapsed = time.perf_counter() - t0
    assert res.returncode == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "cannot reach the Hub" in lines[0] and "acme/tiny-llama@main" in lines[0], res.stderr
    assert elapsed < 5, elapsed  # including the interpreter's start


# --------------------------------------------------------------------------------------------
# In process: revisions, cache, every kind of refusal, and the time each takes
# --------------------------------------------------------------------------------------------

def test_revision_tag_and_commit_are_fetched_and_shown(hub):
    from ftadvisor import estimate

    v1 = _resolve("acme/tiny-llama@v1")
    assert (v1.id, v1.hf_id) == ("hub:acme/tiny-llama@v1", "acme/tiny-llama")
    assert v1.source.endswith(f"/acme/tiny-llama@{COMMIT_V1}") and COMMIT_V1[:7] in v1.name
    assert estimate(v1, "h100", "lora").total_params == TINY_V1_PARAMS
    assert estimate("acme/tiny-llama", "h100", "lora").total_params == TINY_PARAMS
    pinned = _resolve(f"acme/tiny-llama@{COMMIT_V1}")
    assert pinned.config["num_hidden_layers"] == 3
    assert ("GET", "/acme/tiny-llama/resolve/v1/config.json") in hub.seen()

    from typer.testing import CliRunner

    from ftadvisor.cli import app

    shown = CliRunner().invoke(app, ["profiles", "show", "acme/tiny-llama@v1"])
    assert shown.exit_code == 0, shown.output
    data = json.loads(shown.output)
    assert data["id"] == "hub:acme/tiny-llama@v1" and data["derived"]["total_params"] == TINY_V1_PARAMS


def test_offline_uses_the_cache_and_fails_fast_without_it(hub, monkeypatch):
    _resolve("acme/tiny-llama@v1")
    n = len(hub.seen())
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_ENDPOINT", hub.endpoint + "/other")  # a new cache key in this process
    assert _resolve("acme/tiny-llama@v1").config["num_hidden_layers"] == 3
    msg, elapsed = _fails("acme/tiny-llama@main")  # main was never fetched
    assert "HF_HUB_OFFLINE is set" in msg and "acme/tiny-llama@main" in msg and elapsed < 5
    assert len(hub.seen()) == n


def test_unreachable_hub_falls_back_to_the_cache_or_names_the_problem(hub, monkeypatch):
    _resolve("acme/tiny-llama")
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{_closed_port()}")
    prof = _resolve("acme/tiny-llama")
    assert prof.config["num_hidden_layers"] == 2 and "Hub unreachable" in prof.notes
    msg, elapsed = _fails("acme/tiny-llama@v1")
    assert "cannot reach the Hub" in msg and "ConnectError" in msg and elapsed < 5


def test_no_answer_within_the_timeout_fails_under_5_s(hub):
    msg, elapsed = _fails("acme/slow")
    assert "no answer within 3 s" in msg, msg
    assert elapsed < 5, elapsed
    assert len(hub.seen("acme/slow")) == 1  # no retry


@pytest.mark.parametrize("case, token, words", [
    ("acme/gated", None, ["acme/gated is gated (HTTP 401)", "set HF_TOKEN", "request access on http://127.0.0.1:"]),
    ("acme/gated", "hf_other", ["acme/gated is gated (HTTP 403)", "no access"]),
    ("acme/private", None, ["acme/private was not found", "HTTP 401", "private, set HF_TOKEN"]),
    ("acme/missing", "hf_other", ["acme/missing was not found", "HTTP 401"]),
    ("meta-llama/Llama-3.1-8B-Instrukt", None, ["was not found", "closest profiles: meta-llama/llama-3.1-8b-instruct"]),
    ("acme/tiny-llama@v9", None, ["revision 'v9' does not exist in acme/tiny-llama", "HTTP 404"]),
    ("acme/no-config", None, ["acme/no-config@main has no config.json", "HTTP 404"]),
])
def test_refusals_are_one_line_fast_and_never_retried(hub, monkeypatch, case, token, words):
    if token:
        monkeypatch.setenv("HF_TOKEN", token)
    msg, elapsed = _fails(case)
    for w in words:
        assert w in msg, msg
    assert elapsed < 5
    assert len(hub.seen(case.split("@")[0])) == 1  # one HEAD, no retry storm


def test_hf_token_is_sent(hub, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", GOOD_TOKEN)
    assert _resolve("acme/private").config["hidden_size"] == 64


def test_remote_code_is_refused_and_never_fetched_or_run(hub):
    msg, _ = _fails("acme/remote")
    assert "needs remote code" in msg and "--trust-remote-code" in msg and "acme_secret" in msg
    # allowed: the config goes on to the architecture step, which cannot model it without that code
    with pytest.raises(FtAdvisorError, match="acme_secret") as info:
        _resolve("acme/remote", trust_remote_code=True)
    assert "needs remote code" not in str(info.value)
    assert {p.rsplit("/", 1)[-1] for _, p in hub.seen()} == {"config.json"}
    # auto_map over a model_type transformers builds itself (llama) needs no remote code
    assert _resolve("acme/remote-llama").config["model_type"] == "llama"


def test_api_estimate_takes_trust_remote_code(hub):
    import ftadvisor

    with pytest.raises(FtAdvisorError, match="needs remote code"):  # refused by default, as in the CLI
        ftadvisor.estimate("acme/remote", "h100", "lora")
    with pytest.raises(FtAdvisorError) as info:  # let through: the architecture step names the missing code
        ftadvisor.estimate("acme/remote", "h100", "lora", trust_remote_code=True)
    assert "needs remote code" not in str(info.value) and "acme_secret" in str(info.value)
    with pytest.raises(FtAdvisorError, match="trust_remote_code"):
        ftadvisor.estimate("acme/remote", "h100", "lora", trust_remote_code="yes")


def test_cli_trust_remote_code_flag(hub):
    env = {k: os.environ[k] for k in ("HF_ENDPOINT", "HF_HOME", "HF_HUB_CACHE")}
    res = _cli(["estimate", "-m", "acme/remote", "-g", "h100", "-t", "lora"], env)
    assert res.returncode == 2 and "--trust-remote-code" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1
    # the flag reaches the Hub path (a config that needs no code goes through with it as without it;
    # acme/remote itself then goes on to the architecture step: test_remote_code_is_refused_...)
    res = _cli(["estimate", "-m", "acme/tiny-llama", "-g", "h100", "-t", "lora", "--json", "--trust-remote-code"], env)
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)[0]["model_id"] == "hub:acme/tiny-llama@main"


def test_profiles_and_paths_never_ask_the_hub(hub, tmp_path):
    from ftadvisor.hub import parse_hub_id

    assert _resolve("llama-3.1-8b").id == "llama-3.1-8b"
    assert _resolve("meta-llama/Llama-3.1-8B").id == "llama-3.1-8b"  # a profile's own HF id
    (tmp_path / "org" / "name").mkdir(parents=True)
    (tmp_path / "org" / "name" / "config.json").write_text(json.dumps(TINY))
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        assert _resolve("org/name").id == "config:name"  # a local folder wins over the Hub
    finally:
        os.chdir(cwd)
    assert hub.seen() == []
    assert parse_hub_id("org/name@refs/pr/1") == ("org/name", "refs/pr/1")
    for text in ("a/b/c", "org--x/name", "-org/name", "org/", "/abs", "x" * 50 + "/" + "y" * 50):
        assert parse_hub_id(text) is None, text


# --------------------------------------------------------------------------------------------
# launch: the preflight fails fast too
# --------------------------------------------------------------------------------------------

def test_launch_preflight_fails_fast_when_the_hub_is_unreachable(hub, monkeypatch, tmp_path):
    from ftadvisor import launch

    _resolve("acme/tiny-llama")  # config cached: the estimate alone would go on from the cache
    assert launch.check_hub_model("acme/tiny-llama") is None
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{_closed_port()}")
    t0 = time.perf_counter()
    with pytest.raises(FtAdvisorError, match="cannot reach the Hub .* to download acme/tiny-llama@main"):
        launch.check_hub_model("acme/tiny-llama")
    assert time.perf_counter() - t0 < 5
    with pytest.raises(FtAdvisorError, match="to download acme/tiny-llama@main"):  # launch's own preflight
        launch.prepare(None, data=str(ROOT / "examples/data/chat.jsonl"), model="acme/tiny-llama", gpu="cpu",
                       output=tmp_path / "run0", echo=lambda *a: None)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # offline: the cache decides, no request
    launch.check_hub_model("acme/tiny-llama")
    with pytest.raises(FtAdvisorError, match="HF_HUB_OFFLINE is set"):
        launch.check_hub_model("acme/tiny-llama@v1")

    # the whole dry run, never cached: one line, fast
    monkeypatch.delenv("HF_HUB_OFFLINE")
    t0 = time.perf_counter()
    with pytest.raises(FtAdvisorError, match="cannot reach the Hub"):
        launch.prepare(None, data=str(ROOT / "examples/data/chat.jsonl"), model="acme/other", gpu="rtx4090",
                       output=tmp_path / "run", dry_run=True, echo=lambda *a: None)
    assert time.perf_counter() - t0 < 5


def test_launch_passes_its_trust_remote_code_flag_to_the_hub_check(hub, tmp_path):
    from ftadvisor import launch

    kw = dict(data=str(ROOT / "examples/data/chat.jsonl"), model="acme/remote", gpu="rtx4090", dry_run=True,
              echo=lambda *a: None)
    with pytest.raises(FtAdvisorError, match="needs remote code.*--trust-remote-code"):
        launch.prepare(None, output=tmp_path / "a", **kw)
    with pytest.raises(FtAdvisorError, match="acme_secret") as info:  # the flag got through; the model is unknown
        launch.prepare(None, output=tmp_path / "b", trust_remote_code=True, **kw)
    assert "needs remote code" not in str(info.value)
