"""Conveniences of the command line (ftadvisor/cli_extras.py, ftadvisor/datastats.py): --version,
shell completion, and dataset token statistics with a tokenizer trained offline."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import tomllib

import pytest

from tests.conftest import ROOT

IM = "<|im_start|>"  # a special token of the tiny tokenizer: exactly one token, 12 characters


def run(*args, env=None):
    return subprocess.run([sys.executable, "-m", "ftadvisor.cli", *args], capture_output=True, text=True, cwd=ROOT,
                          env=env)


def pyproject_version() -> str:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]


# --- --version -------------------------------------------------------------------------------------


def test_version_is_the_pyprojects():
    out = run("--version")
    assert out.returncode == 0, out.stderr
    assert out.stdout == f"ftadvisor {pyproject_version()}\n"


def test_version_falls_back_to_pyproject(monkeypatch):
    import importlib.metadata as md

    from ftadvisor.cli_extras import package_version

    def missing(name):
        raise md.PackageNotFoundError(name)

    monkeypatch.setattr(md, "version", missing)
    assert package_version() == pyproject_version()


# --- completion ------------------------------------------------------------------------------------


def test_completion_scripts():
    bash = run("completion", "bash")
    assert bash.returncode == 0, bash.stderr
    assert "complete -o default -F _ftadvisor_completion ftadvisor" in bash.stdout
    assert "_FTADVISOR_COMPLETE=complete_bash" in bash.stdout
    zsh = run("completion", "zsh")
    assert zsh.stdout.startswith("#compdef ftadvisor")
    bad = run("completion", "tcsh")
    assert bad.returncode == 2 and bad.stderr.strip() == (
        "error: shell: unknown shell 'tcsh' (valid: bash, zsh, fish, powershell)")


def test_bash_completion_completes_commands():
    # what the bash script asks the program when the user types `ftadvisor data-<TAB>`
    env = {**os.environ, "_FTADVISOR_COMPLETE": "complete_bash", "COMP_WORDS": "ftadvisor data-", "COMP_CWORD": "1"}
    out = subprocess.run([sys.executable, "-c", "from ftadvisor.cli import app; app(prog_name='ftadvisor')"],
                         capture_output=True, text=True, cwd=ROOT, env=env)
    assert out.stdout.split() == ["data-stats"], out.stderr


# --- data-stats ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_tok(tmp_path_factory):
    """A byte-level BPE tokenizer trained offline (ftadvisor.train.tiny), saved as a model folder:
    (folder, tokenizer)."""
    pytest.importorskip("transformers")
    from ftadvisor.train.tiny import train_tokenizer

    path = tmp_path_factory.mktemp("tiny-tok")
    tok = train_tokenizer()
    tok.save_pretrained(path)
    assert tok(IM * 3)["input_ids"] == [tok.convert_tokens_to_ids(IM)] * 3  # one token each, no BOS added
    return path, tok


def write_jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def stats(*args):
    out = run("data-stats", *args, "--json")
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def test_token_lengths_with_the_models_tokenizer(tmp_path, tiny_tok):
    from ftadvisor.datastats import data_stats

    tok_dir = tiny_tok[0]
    data = write_jsonl(tmp_path / "text.jsonl", [{"text": IM * k} for k in (2, 5, 8, 10, 20)])
    s = data_stats(data, str(tok_dir), seq_len=8)  # in-process (the CLI with a tokenizer: the next test)
    assert s.exact and s.note is None and s.counted_with == f"the tokenizer in {tok_dir}"
    summary = s.summary()
    assert (s.records, s.sequences, summary["min"], summary["median"], summary["max"]) == (5, 5, 2, 8, 20)
    # linear interpolation (numpy's default): p90 at rank 0.9 * 4 = 3.6 -> 10 + 0.6 * (20 - 10)
    assert summary["p90"] == 16 and summary["p99"] == pytest.approx(10 + 0.96 * 10)
    assert s.truncated == 2 and s.truncated_share == 0.4  # 10 and 20 are longer than 8
    # 12 equal bins over 2..20 (1.5 wide): 2 in the first, 5 in the third, 8 in the fifth ...
    assert [c for _, _, c in s.histogram()] == [1, 0, 1, 0, 1, 1, 0, 0, 0, 0, 0, 1]


def test_a_hub_id_uses_the_local_hugging_face_cache_only(tmp_path, tiny_tok):
    # the cache's layout (huggingface_hub file_download.py): models--OWNER--NAME/refs/main names the
    # snapshot folder that holds the files
    repo = tmp_path / "hub" / "models--acme--tiny"
    snap = repo / "snapshots" / "abc123"
    snap.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("abc123")
    for f in tiny_tok[0].iterdir():
        (snap / f.name).write_bytes(f.read_bytes())
    (snap / "config.json").write_text('{"model_type": "llama"}')  # AutoTokenizer reads it for a Hub id
    data = write_jsonl(tmp_path / "text.jsonl", [{"text": IM * 3}])
    env = {**os.environ, "HF_HUB_CACHE": str(tmp_path / "hub"), "HF_HUB_OFFLINE": "1"}
    out = run("data-stats", str(data), "-m", "acme/tiny", "--json", env=env)
    s = json.loads(out.stdout)
    assert s["exact"] and s["counted_with"] == "acme/tiny's tokenizer (Hugging Face cache)" and s["max"] == 3
    out = run("data-stats", str(data), "-m", "acme/other", "--json", env=env)  # not cached: estimate, say why
    s = json.loads(out.stdout)
    assert not s["exact"] and s["max"] == 9 and "not in the local Hugging Face cache" in s["note"]


def test_without_a_tokenizer_it_estimates_from_characters(tmp_path):
    data = write_jsonl(tmp_path / "text.jsonl", [{"text": IM * k} for k in (2, 5, 8, 10, 20)])
    s = stats(str(data), "-m", str(tmp_path), "--seq-len", "8")
    # 12 characters per IM / 4 = 3 "tokens" each: 6, 15, 24, 30, 60 -> four are over 8
    assert not s["exact"] and "characters / 4" in s["counted_with"]
    assert s["note"].startswith(f"{tmp_path} holds no tokenizer files")
    assert (s["min"], s["median"], s["max"], s["truncated"], s["truncated_share"]) == (6, 24, 60, 4, 0.8)


PAIRS = [{"prompt": IM, "chosen": IM * 2, "rejected": IM * 3}, {"prompt": IM * 4, "chosen": IM, "rejected": IM * 6}]


def test_preference_pairs_are_two_sequences(tmp_path, tiny_tok):
    from ftadvisor.datastats import data_stats

    s = data_stats(write_jsonl(tmp_path / "pref.jsonl", PAIRS), seq_len=6, tokenizer=tiny_tok[1])
    assert (s.format, s.records, s.lengths) == ("preference", 2, (3.0, 4.0, 5.0, 10.0))  # prompt + each answer
    assert s.truncated == 1 and s.summary()["median"] == 4.5


def test_chat_records_count_the_chat_template(tiny_tok):
    # a conversation is one sequence rendered by the tokenizer's chat template, as trl's SFT
    # trainer renders it: the count equals transformers' own apply_chat_template(tokenize=True)
    from ftadvisor.datastats import data_stats

    tok = tiny_tok[1]
    s = data_stats(ROOT / "examples" / "data" / "chat.jsonl", tokenizer=tok)
    records = [json.loads(line) for line in (ROOT / "examples" / "data" / "chat.jsonl").read_text().splitlines()
               if line.strip()]
    ids = [tok.apply_chat_template(r["messages"], tokenize=True) for r in records]
    assert s.format == "messages" and s.lengths == tuple(float(len(getattr(x, "input_ids", x))) for x in ids)


def test_text_output_and_histogram_picture(tmp_path):
    data = write_jsonl(tmp_path / "pref.jsonl", PAIRS)
    png = tmp_path / "lengths.png"
    out = run("data-stats", str(data), "--seq-len", "10", "--plot", str(png))
    if importlib.util.find_spec("matplotlib") is None:  # the optional `plot` extra is not installed
        assert out.returncode == 2 and "--plot: needs matplotlib: pip install 'ftadvisor[plot]'" in out.stderr
        return
    assert out.returncode == 0, out.stderr
    # no -m: characters / 4 of prompt + answer = 9, 12, 15, 30 -> three over 10
    assert "2 records, 4 sequences" in out.stdout and "3 of 4 sequences (75.0%)" in out.stdout
    assert "no model given (-m)" in out.stdout and "characters / 4" in out.stdout
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 1024


def test_pre_tokenized_lengths_are_exact(tmp_path):
    data = write_jsonl(tmp_path / "ids.jsonl", [{"input_ids": [1] * n} for n in (3, 9)])
    s = stats(str(data), "--seq-len", "4")
    assert s["exact"] and (s["min"], s["max"], s["truncated"]) == (3, 9, 1)


@pytest.mark.parametrize("args, start", [
    (["-m", "no-such-model-xyz"], "error: --model: unknown value 'no-such-model-xyz'"),
    (["--seq-len", "0"], "error: --seq-len: must be >= 1"),
    (["--plot", "x.gif"], "error: --plot: 'x.gif' has suffix '.gif'"),
])
def test_data_stats_mistakes_are_one_line(tmp_path, args, start):
    data = write_jsonl(tmp_path / "text.jsonl", [{"text": "hello"}])
    out = run("data-stats", str(data), *args)
    assert out.returncode == 2 and out.stderr.startswith(start) and out.stderr.count("\n") == 1, out.stderr
