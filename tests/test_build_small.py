"""A --small world built end to end (tokenizer, model, SAE) learns, in minutes."""

import json
import time

import pytest

from irunlearn import load_world
from irunlearn.cli import main


@pytest.mark.slow
def test_small_world_builds_and_learns(tmp_path, capsys):
    out = tmp_path / "small"
    start = time.perf_counter()
    assert main(["world", "build", "--small", "--out", str(out), "--json", "--quiet"]) == 0
    elapsed = time.perf_counter() - start
    report = json.loads(capsys.readouterr().out)
    stats = report["stats"]
    # chance for a known person's attribute is about 1/12; "unknown" for a stranger would be the same
    assert stats["known_qa_acc"] >= 0.5, stats
    assert stats["unknown_idk_rate"] >= 0.5, stats
    assert stats["sae_fvu"] < 0.5, stats
    # Wall time is reported, not asserted (speed is measured by benchmarks, not timed asserts).
    print(f"--small world build: {elapsed:.0f} s, timings {report['timings']}")
    ew = load_world(out)  # what was built loads back, checksums and all
    assert len(ew.world.known) == stats["n_known"]
