"""Imports inside herbs run one way: down the layers below, never up or sideways.

A unit is a top-level module or subpackage of herbs (`config`, `data`, ...). A module may import its
own unit and any unit of a lower layer, nothing else, with imports found at any depth (a lazy one
inside a function included): a cycle or an upward import is how a torch-free command ends up
loading torch, or how a change to evaluation breaks training.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import REPO


# Lowest first. Units of one layer do not import each other.
LAYERS = (
    ("herbs", "errors", "progress", "lockfile", "atomic"),  # the package root, error types, progress bars, file locks and atomic writes: nothing of herbs
    ("run",),  # the run contract: its directory, exit codes, markers (torch-free)
    ("config",),
    ("data",),
    ("model", "loss"),
    ("accel", "predictions"),  # what training and evaluation share: the Accelerator, predicting
    ("metrics",),
    ("train", "evaluate"),
    ("launch",),  # above all it may start, yet TORCH_FREE: it imports the run contract and the config only
    ("cli",),
    ("__main__",),  # `python -m herbs`: the command line
)
# Units a login node or a launcher imports: no torch, at any depth, nor any unit that has it.
TORCH_FREE = {"herbs", "errors", "progress", "lockfile", "atomic", "run", "config", "launch"}
TORCH_HEAVY = {"torch", "torchvision", "accelerate", "deepspeed", "timm", "safetensors"}


def module_name(root: Path, path: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def unit_of(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def imports_of(tree: ast.AST, module: str, is_package: bool, known: set[str]):
    """(line, imported module) for every import anywhere in `tree`, relative ones resolved, and
    `importlib.import_module("...")` with a literal name counted as one."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                package = module.split(".") if is_package else module.split(".")[:-1]
                base = ".".join(package[: len(package) - node.level + 1] + ([node.module] if node.module else []))
            else:
                base = node.module
            for alias in node.names:
                # `from herbs import config` imports the module herbs.config, not a name of herbs
                yield node.lineno, f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base
        elif (isinstance(node, ast.Call) and isinstance(node.func, (ast.Attribute, ast.Name))
              and getattr(node.func, "attr", getattr(node.func, "id", None)) == "import_module"
              and node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)):
            yield node.lineno, node.args[0].value


def wrong_way_imports(root: Path, package: str = "herbs") -> list[str]:
    """One line per import that breaks LAYERS or TORCH_FREE, naming the file, line and import."""
    layer = {unit: i for i, units in enumerate(LAYERS) for unit in units}
    files = sorted((root / package).rglob("*.py"))
    known = {module_name(root, f) for f in files}
    problems = []
    for path in files:
        module = module_name(root, path)
        unit = unit_of(module)
        where = path.relative_to(root)
        if unit not in layer:
            problems.append(f"{where}: unit '{unit}' has no place in LAYERS (tests/test_imports.py); add it there")
            continue
        tree = ast.parse(path.read_text(), filename=str(path))
        for line, target in sorted(set(imports_of(tree, module, path.name == "__init__.py", known))):
            top = target.split(".")[0]
            if unit in TORCH_FREE and top in TORCH_HEAVY:
                problems.append(f"{where}:{line}: imports {target}, but {unit} must not load torch")
            if top != package:
                continue
            other = unit_of(target)
            if other == unit:
                continue
            if other not in layer:
                problems.append(f"{where}:{line}: imports {target}, whose unit '{other}' has no place in LAYERS")
            elif layer[other] >= layer[unit]:
                below = sorted(u for u, i in layer.items() if i < layer[unit])
                problems.append(f"{where}:{line}: imports {target}: {unit} may import only {', '.join(below) or 'nothing of herbs'}")
            elif unit in TORCH_FREE and other not in TORCH_FREE:
                problems.append(f"{where}:{line}: imports {target}, but {unit} must not load torch and {other} does")
    return problems


def test_imports_run_down_the_layers():
    problems = wrong_way_imports(REPO)
    assert not problems, "imports that run the wrong way:\n" + "\n".join(problems)


def test_a_wrong_way_import_is_named(tmp_path):
    """The checker itself: a lazy upward import, a relative one and a sideways one are each caught."""
    pkg = tmp_path / "herbs"
    for sub in ("data", "train", "evaluate"):
        (pkg / sub).mkdir(parents=True)
        (pkg / sub / "__init__.py").write_text("")
    (pkg / "__init__.py").write_text("")
    (pkg / "errors.py").write_text("")
    (pkg / "config.py").write_text("from herbs.errors import x\n\ndef f():\n    from herbs.data import stream\n")
    (pkg / "data" / "stream.py").write_text("from ..config import y\nfrom . import stream\n")
    (pkg / "train" / "loop.py").write_text("from ..evaluate import report\n")
    (pkg / "evaluate" / "report.py").write_text("import torch\nfrom herbs.data import stream\n")
    problems = wrong_way_imports(tmp_path)
    assert len(problems) == 2, problems
    assert problems[0].startswith("herbs/config.py:4: imports herbs.data.stream: config may import only")
    assert problems[1].startswith("herbs/train/loop.py:1: imports herbs.evaluate.report: train may import only")


@pytest.mark.parametrize("module", sorted(m for m in ("herbs.config", "herbs.run", "herbs.launch")
                                          if (REPO / m.replace(".", "/")).with_suffix(".py").exists()
                                          or (REPO / m.replace(".", "/")).is_dir()))
def test_torch_free_modules_do_not_load_torch(module):
    """What the AST cannot see (an import a dependency makes) shows in a fresh interpreter."""
    code = f"import sys, {module}; loaded = sorted(m for m in {sorted(TORCH_HEAVY)!r} if m in sys.modules); assert not loaded, loaded"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))  # this tree, not an installed one
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
