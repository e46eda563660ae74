"""Optional packages: one helper imports them and says what to install.

    pytest -q tests/test_deps.py
"""

import ast
import importlib.metadata
import re
import sys
from pathlib import Path

import pytest

from localpeer import deps
from localpeer.deps import available, install_command, need, package_of, require
from localpeer.errors import InputError

ROOT = Path(__file__).resolve().parents[1]
# files that may still import optional packages directly; empty once every module converts
ALLOWED: set[str] = set()


def _imports(path: Path):
    """(line, module) of every absolute import in `path`."""
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            yield from ((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield node.lineno, node.module


def test_optional_packages_are_imported_only_through_deps():
    hits = []
    for path in sorted((ROOT / "localpeer").rglob("*.py")):
        rel = path.relative_to(ROOT).as_posix()
        if rel == "localpeer/deps.py" or rel in ALLOWED:
            continue
        hits += [f"{rel}:{line}: import {module}" for line, module in sorted(_imports(path))
                 if package_of(module) in deps.PACKAGES]
    assert not hits, ("import these with localpeer.deps.require(...) instead:\n"
                      + "\n".join(hits))


def _name(requirement: str) -> str:
    """'llama-cpp-python==0.3.36' -> 'llama-cpp-python' (PEP 503 normalised)."""
    return re.sub(r"[-_.]+", "-", re.match(r"[A-Za-z0-9._-]+", requirement)[0]).lower()


def _requires(dist: str) -> set[str]:
    try:
        return {_name(r) for r in importlib.metadata.requires(dist) or () if "extra ==" not in r}
    except importlib.metadata.PackageNotFoundError:
        return set()


def test_the_package_map_agrees_with_pyproject():
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"]
    listed = {extra: {_name(r) for r in reqs} for extra, reqs in extras.items()}
    mapped = {extra: {_name(dist) for dist, e in deps.PACKAGES.values() if e == extra}
              for extra in listed}
    for extra in deps.USER_EXTRAS:  # every package a user extra installs has its module
        assert listed[extra] <= mapped[extra], (extra, listed[extra] - mapped[extra])
    for module, (dist, extra) in deps.PACKAGES.items():
        if extra is None:
            assert all(_name(dist) not in names for names in listed.values()), module
            continue
        assert extra in listed, (module, extra)
        # listed in the extra, or installed by a package that is (jinja2 by llama-cpp-python)
        assert _name(dist) in listed[extra] or any(
            _name(dist) in _requires(parent) for parent in listed[extra]), (module, dist, extra)


@pytest.mark.parametrize("module, package", [
    ("torch.nn.functional", "torch"), ("safetensors.torch", "safetensors"),
    ("pyarrow.parquet", "pyarrow"), ("transformers.masking_utils", "transformers"),
    ("google.protobuf.message", "google.protobuf"), ("llama_cpp", "llama_cpp"),
    ("numpy.linalg", "numpy")])
def test_a_dotted_module_maps_by_its_package(module, package):
    assert package_of(module) == package


def test_install_commands_name_the_extra_or_the_package():
    assert install_command(["torch", "peft"]) == "pip install 'localpeer[train]'"
    assert install_command(["torch", "llama_cpp", "gguf"]) == "pip install 'localpeer[train,gguf]'"
    assert install_command(["pyarrow"]) == "pip install pyarrow"  # not all of the dev extra
    assert install_command(["datasets"]) == "pip install datasets"


def test_a_missing_package_names_its_distribution_extra_and_command(monkeypatch):
    monkeypatch.setitem(sys.modules, "llama_cpp", None)  # import llama_cpp -> not found
    with pytest.raises(InputError) as err:
        require("llama_cpp", why="export converts to GGUF")
    assert str(err.value) == ("export converts to GGUF, which needs llama-cpp-python: "
                              "pip install 'localpeer[gguf]'")
    with pytest.raises(InputError) as err:
        require("llama_cpp")
    assert str(err.value) == "llama-cpp-python is not installed: pip install 'localpeer[gguf]'"
    assert err.value.exit_code == 2 and err.value.__cause__ is None


def test_a_dotted_module_of_a_missing_package_names_the_package(monkeypatch):
    monkeypatch.setitem(deps.PACKAGES, "lp_absent_pkg", ("lp-absent-pkg", "train"))
    with pytest.raises(InputError) as err:
        require("lp_absent_pkg.nn.functional", why="training")
    assert str(err.value) == "training, which needs lp-absent-pkg: pip install 'localpeer[train]'"


def _package(tmp_path, monkeypatch, name: str, init: str) -> None:
    (tmp_path / name).mkdir()
    (tmp_path / name / "__init__.py").write_text(init)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setitem(deps.PACKAGES, name, (name.replace("_", "-"), "train"))


@pytest.mark.parametrize("name, init, original", [
    ("lp_broken_dep", "import lp_dependency_that_is_gone\n",
     "No module named 'lp_dependency_that_is_gone'"),  # one of ITS dependencies is missing
    ("lp_broken_own", "from ._native import run\n",
     "No module named 'lp_broken_own._native'"),  # a part of itself is missing
    ("lp_broken_lib", "raise ImportError('libfoo.so: cannot open shared object file')\n",
     "libfoo.so: cannot open shared object file")])
def test_an_installed_package_that_fails_to_import_says_so_with_its_error(
        tmp_path, monkeypatch, name, init, original):
    _package(tmp_path, monkeypatch, name, init)
    with pytest.raises(InputError) as err:
        require(f"{name}.sub")
    assert str(err.value) == (f"{name.replace('_', '-')} is installed but failed to import: "
                              f"{original}; reinstall with pip install 'localpeer[train]'")
    assert isinstance(err.value.__cause__, ImportError)  # the traceback under --debug


def test_need_lists_every_missing_package_at_once_and_imports_nothing(tmp_path, monkeypatch):
    monkeypatch.setitem(deps.PACKAGES, "lp_absent_a", ("lp-absent-a", "train"))
    monkeypatch.setitem(deps.PACKAGES, "lp_absent_b", ("lp-absent-b", "gguf"))
    with pytest.raises(InputError) as err:
        need("numpy", "lp_absent_a.x", "lp_absent_b", why="export converts")
    assert str(err.value) == ("export converts, which needs lp-absent-a and lp-absent-b: "
                              "pip install 'localpeer[train,gguf]'")
    _package(tmp_path, monkeypatch, "lp_never_imported", "raise ImportError('imported')\n")
    need("lp_never_imported", "numpy")  # found, not imported: a broken install is require's
    assert "lp_never_imported" not in sys.modules


def test_available_looks_without_importing(monkeypatch):
    assert available("numpy.linalg")
    assert not available("lp_absent_pkg.sub")
    monkeypatch.setitem(sys.modules, "torch", None)
    assert not available("torch.nn")
