"""The README's examples run: every ```python block, and every `ftadvisor estimate|recommend|profiles`
command line it shows (in ```bash blocks, and the `$ ftadvisor ...` lines of its example output)."""

import re
import shlex

import pytest
from typer.testing import CliRunner

from ftadvisor.cli import app
from tests.conftest import ROOT

README = (ROOT / "README.md").read_text(encoding="utf-8")
BLOCKS = re.findall(r"^```([\w-]*)\n(.*?)^```", README, re.S | re.M)
PYTHON = [body for lang, body in BLOCKS if lang == "python"]
RUNNABLE = ("estimate", "recommend", "profiles")


def _commands() -> list[list[str]]:
    out = []
    for lang, body in BLOCKS:
        for line in body.splitlines():
            line = line.strip()
            if lang == "bash" and re.match(r"^(scripts/)?ftadvisor\s", line):
                cmd = line
            elif line.startswith("$ ftadvisor "):
                cmd = line[2:]
            else:
                continue
            args = shlex.split(cmd, comments=True)[1:]
            if args and args[0] in RUNNABLE:
                out.append(args)
    return out


COMMANDS = _commands()


def test_readme_has_examples():
    assert len(PYTHON) >= 2 and len(COMMANDS) >= 3
    # the quick start: exactly two commands
    quick = README.split("## Quick start", 1)[1].split("##", 1)[0]
    block = re.search(r"```bash\n(.*?)```", quick, re.S).group(1)
    assert [ln.split()[0] for ln in block.strip().splitlines()] == ["scripts/ftadvisor", "scripts/test.sh"]


@pytest.mark.parametrize("code", PYTHON, ids=[f"python-{i}" for i in range(len(PYTHON))])
def test_python_block_runs(code):
    exec(compile(code, "README.md", "exec"), {"__name__": "readme"})


@pytest.mark.parametrize("args", COMMANDS, ids=[" ".join(a) for a in COMMANDS])
def test_command_runs(args):
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, (res.output, res.exception)
