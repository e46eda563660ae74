"""Tests under tests/gpu/ need CUDA; everywhere else they are skipped, not failed."""

import pytest


def pytest_collection_modifyitems(config, items):
    try:
        import torch

        has_cuda = torch.cuda.is_available()
    except ImportError:
        has_cuda = False
    if has_cuda:
        return
    skip = pytest.mark.skip(reason="needs CUDA (tests/gpu runs on a GPU machine)")
    for item in items:
        if "tests/gpu" in str(item.fspath):
            item.add_marker(skip)
