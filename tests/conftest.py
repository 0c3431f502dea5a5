"""Shared fixture: a generator seeded per test (reproducible, different for every test)."""

import zlib

import pytest
import torch


@pytest.fixture
def rng(request) -> torch.Generator:
    return torch.Generator().manual_seed(zlib.crc32(request.node.nodeid.encode()))
