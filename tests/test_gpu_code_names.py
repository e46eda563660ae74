"""The CUDA-only code (tests/gpu, bench/gpu_*.py) and the benchmarks never run in the suite,
so a renamed localpeer function would first fail on a lent GPU or in a benchmark. This
checks, without running them, that every localpeer name they import or read as
`module.attribute` exists."""

import ast
import importlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FILES = sorted([*ROOT.glob("tests/gpu/*.py"), *ROOT.glob("bench/*.py")])


def localpeer_names(tree: ast.AST):
    """(line, module, attribute) for every `from localpeer... import x` and every
    `alias.attr` where alias is a localpeer module imported in the file."""
    modules: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("localpeer"):
            for a in node.names:
                try:  # a submodule (from localpeer.train import lagdpo)?
                    importlib.import_module(f"{node.module}.{a.name}")
                    modules[a.asname or a.name] = f"{node.module}.{a.name}"
                except ImportError:
                    yield node.lineno, node.module, a.name
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.name.startswith("localpeer") and a.asname:
                    modules[a.asname] = a.name
    for node in ast.walk(tree):
        if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
                and node.value.id in modules):
            yield node.lineno, modules[node.value.id], node.attr


@pytest.mark.parametrize("path", FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_localpeer_name_the_gpu_code_uses_exists(path):
    missing = [f"{path.name}:{line} {module}.{name}"
               for line, module, name in localpeer_names(ast.parse(path.read_text()))
               if not hasattr(importlib.import_module(module), name)]
    assert not missing, missing
