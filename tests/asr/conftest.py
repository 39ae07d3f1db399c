"""Shared by the federated ASR tests."""

import pytest


@pytest.fixture
def options(asr_options):
    return asr_options
