"""The shape of the package: layers that import only downwards, no import cycles, entry points
that stay light, and every registered technique complete.

Layers, each importing only from itself and the layers before it (imports inside functions count:
a lazy import is still a dependency):

    errors/validate/_num -> schema -> architecture -> profiles -> techniques/plans
      -> cost (memory, speed, quality, calibration corrections) -> api (estimator, the package)
      -> recommend -> data/detect -> train -> launch/calibration -> cli/tui
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT

PKG = ROOT / "ftadvisor"

LAYERS: list[tuple[str, tuple[str, ...]]] = [
    # one-line user errors, the validation of user input (numbers, names, files), numpy-or-float helpers
    ("errors", ("ftadvisor.errors", "ftadvisor.validate", "ftadvisor._num")),
    ("schema", ("ftadvisor.schema",)),  # plans and results, pure data
    ("architecture", ("ftadvisor.architecture", "ftadvisor.derive")),  # config.json -> parameter shapes
    ("profiles", ("ftadvisor.profiles", "ftadvisor.hub")),  # YAML data -> profiles; Hub config.json -> a profile
    ("techniques", ("ftadvisor.techniques", "ftadvisor.frameworks", "ftadvisor.plans")),  # what each technique
    # and training framework declares; plans
    ("cost", ("ftadvisor.allocator", "ftadvisor.host", "ftadvisor.links", "ftadvisor.memory", "ftadvisor.speed", "ftadvisor.quality", "ftadvisor.calibration.corrections")),
    ("api", ("ftadvisor.estimator",)),  # the only place user strings become profiles and plans
    ("recommend", ("ftadvisor.recommend",)),
    ("facade", ("ftadvisor",)),  # ``import ftadvisor``: the public names of the layers above
    ("data", ("ftadvisor.datasets", "ftadvisor.datastats", "ftadvisor.detect", "ftadvisor.stack")),
    ("train", ("ftadvisor.train",)),  # torch, transformers, peft, trl (imported lazily)
    ("run", ("ftadvisor.launch", "ftadvisor.calibration", "ftadvisor.plots", "ftadvisor.multinode", "ftadvisor.runs",
             "ftadvisor.export", "ftadvisor.planfile")),  # plots: matplotlib, lazily
    ("faces", ("ftadvisor.cli", "ftadvisor.cli_common", "ftadvisor.cli_launch", "ftadvisor.cli_calibrate", "ftadvisor.cli_extras", "ftadvisor.cli_export",
               "ftadvisor.tui", "ftadvisor.__main__")),
]


def _modules() -> dict[str, Path]:
    out = {}
    for p in PKG.rglob("*.py"):
        parts = p.relative_to(ROOT).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = p
    return out


def _layer(module: str) -> int:
    best = None
    for i, (_, prefixes) in enumerate(LAYERS):
        for pre in prefixes:
            if module == pre or (pre != "ftadvisor" and module.startswith(pre + ".")):
                if best is None or len(pre) > best[1]:
                    best = (i, len(pre))
    if best is None:
        raise AssertionError(f"{module} is in no layer: add it to LAYERS in tests/test_layers.py")
    return best[0]


def _imports(mods: dict[str, Path]) -> dict[str, set[str]]:
    """Every ftadvisor module each module imports, at any depth of its code (lazy imports included)."""
    edges: dict[str, set[str]] = {}
    for name, path in mods.items():
        is_pkg = path.name == "__init__.py"
        deps: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                deps.update(a.name for a in node.names if a.name.split(".")[0] == "ftadvisor")
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = name.split(".") if is_pkg else name.split(".")[:-1]
                    anchor = anchor[: len(anchor) - (node.level - 1)]
                    base = ".".join(anchor + ([base] if base else []))
                if base.split(".")[0] != "ftadvisor":
                    continue
                for a in node.names:
                    sub = f"{base}.{a.name}"
                    deps.add(sub if sub in mods else base)
        edges[name] = {d for d in deps if d in mods and d != name}
    return edges


def test_every_import_goes_down_the_layers():
    mods = _modules()
    edges = _imports(mods)
    upward = [f"{m} ({LAYERS[_layer(m)][0]}) imports {d} ({LAYERS[_layer(d)][0]})"
              for m in sorted(edges) for d in sorted(edges[m]) if _layer(d) > _layer(m)]
    assert upward == []


def test_no_import_cycles():
    edges = _imports(_modules())
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                cycles.append(sorted(comp))

    for v in edges:
        if v not in index:
            visit(v)
    assert cycles == []


def test_the_walk_sees_lazy_imports():
    # the check must fail on the kind of edge it exists for: an import inside a function
    mods = _modules()
    edges = _imports(mods)
    assert "ftadvisor.recommend" in edges["ftadvisor.cli"]  # imported inside the recommend command only


# --- entry points stay light ----------------------------------------------------------------------

HEAVY = ("torch", "transformers", "peft", "bitsandbytes", "trl", "accelerate", "datasets", "pandas", "textual",
         "numpy", "matplotlib")
"""What the light paths must not load (the training stack, dataframes, the TUI toolkit, numpy)."""

ENTRY_POINTS = {
    # name: (code run in a fresh interpreter, modules of HEAVY it may load)
    "import ftadvisor + estimate": (
        "import ftadvisor; ftadvisor.estimate('llama-3.1-8b', 'rtx4090', 'qlora'); "
        "ftadvisor.estimate_quality('dpo+qlora', 'preference'); "
        "ftadvisor.estimate_speed('llama-3.1-8b', 'h100', 'qlora'); import ftadvisor.architecture", ()),
    "ftadvisor estimate -t all": (
        "from ftadvisor.cli import app\n"
        "try:\n    app(['estimate', '-t', 'all', '--json'], standalone_mode=False)\nexcept SystemExit:\n    pass", ()),
    "calibration modules": (
        "import ftadvisor.calibration, ftadvisor.calibration.sweep, ftadvisor.calibration.store, "
        "ftadvisor.calibration.corrections, ftadvisor.calibration.runner, ftadvisor.cli_calibrate", ()),
    "ftadvisor calibrate --dry-run": (
        "import sys, tempfile\nfrom ftadvisor.cli import app\n"
        "try:\n    app(['calibrate', 'cpu-tiny', '--dry-run', '--results', tempfile.mkdtemp()], standalone_mode=False)\n"
        "except SystemExit:\n    pass", ()),
    "training engine modules (before a run)": ("import ftadvisor.train, ftadvisor.train.data, ftadvisor.train.signals, "
                                                "ftadvisor.launch", ()),
    "the wizard's modules": ("import ftadvisor.tui, ftadvisor.tui.app", ("textual",)),
    "the wizard's package alone": ("import ftadvisor.tui", ()),
    "ftadvisor --version": (
        "from ftadvisor.cli import app\n"
        "try:\n    app(['--version'], standalone_mode=False)\nexcept SystemExit:\n    pass", ()),
    "ftadvisor completion bash": (
        "from ftadvisor.cli import app\n"
        "try:\n    app(['completion', 'bash'], standalone_mode=False)\nexcept SystemExit:\n    pass", ()),
    "the plots module (before drawing)": ("import ftadvisor.plots, ftadvisor.datastats, ftadvisor.cli_extras", ()),
}


@pytest.mark.parametrize("name", list(ENTRY_POINTS))
def test_entry_points_stay_light(name):
    code, allowed = ENTRY_POINTS[name]
    probe = f"\nimport sys\nprint('LOADED:' + ','.join(m for m in {HEAVY!r} if m in sys.modules))\n"
    out = subprocess.run([sys.executable, "-c", code + probe], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    loaded = set(filter(None, out.stdout.strip().splitlines()[-1].removeprefix("LOADED:").split(",")))
    assert loaded <= set(allowed), f"{name} loaded {sorted(loaded - set(allowed))}"
    if name == "the wizard's modules":
        assert loaded == {"textual"}  # and the check really sees an import
