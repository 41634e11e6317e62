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
