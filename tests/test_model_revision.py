"""``ftadvisor launch -m org/name@revision``: the training engine gives transformers the repo id and
``revision=`` (ftadvisor.train.engine.pretrained_source), for the config, the tokenizer and the weights;
local paths go through unchanged. The Hub is not reachable here, so transformers' loaders are replaced
by recorders: what is checked is the call transformers would get."""

from __future__ import annotations

import pytest

import ftadvisor
from ftadvisor.train import engine


@pytest.mark.parametrize("text,want", [
    ("Qwen/Qwen3-0.6B@main", ("Qwen/Qwen3-0.6B", {"revision": "main"})),
    ("meta-llama/Llama-3.1-8B@refs/pr/12", ("meta-llama/Llama-3.1-8B", {"revision": "refs/pr/12"})),
    ("org/name@0123456789abcdef0123456789abcdef01234567",
     ("org/name", {"revision": "0123456789abcdef0123456789abcdef01234567"})),
    ("org/name", ("org/name", {})),  # no revision: transformers' default (main)
    ("llama-3.1-8b", ("llama-3.1-8b", {})),  # a profile id is no Hub id
])
def test_hub_ids_map_to_repo_and_revision(text, want):
    assert engine.pretrained_source(text) == want


def test_local_paths_are_unchanged(tmp_path, monkeypatch):
    odd = tmp_path / "org" / "name@v1"  # a folder whose name reads like a revision
    odd.mkdir(parents=True)
    assert engine.pretrained_source(str(odd)) == (str(odd), {})
    monkeypatch.chdir(tmp_path)
    assert engine.pretrained_source("org/name@v1") == ("org/name@v1", {})  # relative, and it exists
    assert engine.pretrained_source(tmp_path) == (str(tmp_path), {})  # a PathLike


class _Called(Exception):
    pass


def _recorder(calls: list, result=None):
    def fake(name, *args, **kw):
        calls.append((name, kw.get("revision")))
        if result is None:
            raise _Called(name)
        return result
    return fake


def test_config_tokenizer_and_weights_get_the_revision(monkeypatch):
    import transformers

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # ftadvisor.hub answers at once instead of trying the network
    calls: list = []
    monkeypatch.setattr(transformers.AutoConfig, "from_pretrained", _recorder(calls))
    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", _recorder(calls))
    plan = ftadvisor.make_plan("lora")
    job = engine.TrainJob(model="someorg/some-model@v2.0", plan=plan)
    with pytest.raises(ftadvisor.FtAdvisorError):  # the recorder's refusal, reported as the Hub's
        engine._resolve_source(job)
    with pytest.raises(ftadvisor.FtAdvisorError):
        engine._tokenizer("someorg/some-model@v2.0", {}, job)

    class FakeModel:
        def to(self, device):
            return self

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", _recorder(calls, FakeModel()))
    session = engine.Session(job=job, plan=plan, technique=None, model=None, tokenizer=None, compute_dtype=None)
    engine._load_model(session, "someorg/some-model@v2.0", "eager")
    assert calls == [("someorg/some-model", "v2.0")] * 3
