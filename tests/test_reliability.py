"""Reliability (issue 23): no silent failure, every bad input refused before any work, nothing lost.

One test (or a few) per numbered case of the issue, on the shipped world, asserting the message, the exit
code and that nothing was lost or half-written.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import math
import os
import re
import shutil
import stat
from pathlib import Path

import pandas as pd
import pytest
import torch
from sae_lens import StandardSAE, StandardSAEConfig
from sae_lens.saes.sae import SAEMetadata
from safetensors.torch import load_file, save_file

import irunlearn.io
from irunlearn.cli import build_parser, main
from irunlearn.edits import load_edit, save_edit
from irunlearn.entities import UnknownEntityError
from irunlearn.io import atomic_dir, check_output_dir
from irunlearn.methods import METHODS, ForgetConfig, forget
from irunlearn.methods.base import ForgetTask, RollbackWarning, run
from irunlearn.methods.grad_ascent import GradAscent, GradAscentConfig
from irunlearn.world.artifacts import (
    DEFAULT_ARTIFACTS,
    MANIFEST,
    MANIFEST_DIGEST,
    CorruptArtifactError,
    load_world,
    verify_artifacts,
)
from irunlearn.world.tasks import resolve_targets, world_task

WEIGHT_EDITING = sorted(name for name, cls in METHODS.items() if not cls.inference_only)
ROLLBACKS = ("collapsed", "nan", "retain_blowup")


@pytest.fixture(scope="module")
def task(ew, recognizer):
    return world_task(ew, resolve_targets(ew, n_random=1, seed=0), recognizer)


@pytest.fixture(scope="module")
def edit(ew, task):
    """A small real edit (2 sae_guided steps) to save and load."""
    return forget(ew.model, ew.sae, task, max_steps=2, progress=False)


def same_weights(a, b) -> bool:
    return all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values(), strict=True))


def run_cli(capsys, *argv: str) -> tuple[int, dict]:
    """Run the CLI with --json; its exit code and the one JSON object it printed."""
    code = main([*argv, "--json", "--quiet"])
    return code, json.loads(capsys.readouterr().out)


@pytest.fixture
def no_world_load(monkeypatch):
    """Loading a world fails the test: the command must stop before any model is loaded."""

    def refuse(*args, **kwargs):
        raise AssertionError("a world was loaded before the bad input was reported")

    monkeypatch.setattr("irunlearn.world.artifacts.load_world", refuse)


# 1. A destroyed model is never reported as success --------------------------------------------------


@pytest.mark.parametrize("method", WEIGHT_EDITING)
def test_huge_lr_rolls_back_to_the_original_weights_with_a_warning(ew, task, method):
    with pytest.warns(RollbackWarning, match=rf"{method}: .*rolled back to the weights after 0 update"):
        result = forget(ew.model, ew.sae, task, method=method, lr=1e6, progress=False)
    assert result.stop_reason in ROLLBACKS and not result.converged
    assert result.steps == 0
    assert same_weights(result.model, ew.model)  # so its retain accuracy is the original's, exactly


def test_collapse_is_named_with_its_numbers_even_between_guard_checks(ew, task):
    """grad_ascent at lr=1e6 'suppresses' after one step by wiping the model; the guard runs at every step
    that would stop the run, so guard_every=5 still catches it at step 1."""
    with pytest.warns(RollbackWarning, match=r"held retain accuracy 0\.\d+ \(original 1\.000.*perplexity ratio"):
        result = forget(ew.model, ew.sae, task, method="grad_ascent", lr=1e6, guard_every=5, progress=False)
    assert result.stop_reason == "collapsed" and not result.converged and result.steps == 0
    assert same_weights(result.model, ew.model)


def test_the_final_weights_of_a_max_steps_run_are_checked_too(ew, task):
    with pytest.warns(RollbackWarning, match="on the final weights"):
        result = forget(ew.model, ew.sae, task, method="grad_ascent", lr=1e6, max_steps=1, progress=False)
    assert result.stop_reason == "collapsed" and result.steps == 0 and same_weights(result.model, ew.model)


def test_the_guard_does_not_change_a_healthy_run(ew, task):
    guarded = forget(ew.model, ew.sae, task, max_steps=4, progress=False)
    unguarded = forget(ew.model, ew.sae, task, max_steps=4, guard_every=0, progress=False)
    assert guarded.stop_reason == unguarded.stop_reason and guarded.steps == unguarded.steps
    guard_columns = ["guard_retain_acc", "guard_ppl_ratio"]
    assert guarded.history[guard_columns].notna().all().all() and guard_columns[0] not in unguarded.history
    pd.testing.assert_frame_equal(
        guarded.history.drop(columns=[*guard_columns, "seconds"]), unguarded.history.drop(columns="seconds")
    )
    assert same_weights(guarded.model, unguarded.model)
    first = guarded.history.iloc[0]
    assert first["guard_retain_acc"] == 1.0 and first["guard_ppl_ratio"] == 1.0


@pytest.mark.parametrize(
    ("field", "value"),
    [("lr", -1.0), ("lr", math.nan), ("seed", -1), ("max_steps", 0), ("guard_min_retain", 2.0), ("guard_every", -1)],
)
def test_bad_config_values_are_named_before_any_work(field, value):
    with pytest.raises(ValueError, match=rf"invalid {field}="):
        ForgetConfig(**{field: value})


# 2. Empty or whitespace target names ----------------------------------------------------------------


@pytest.mark.parametrize("name", ["", "   "])
def test_empty_target_name_is_a_clear_error(ew, capsys, no_world_load, name):
    code, out = run_cli(capsys, "forget", "--target", name)
    assert code == 2 and out["type"] == "UsageError" and "empty name" in out["error"]
    with pytest.raises(UnknownEntityError, match="non-empty string"):
        ew.world.entities.get(name)


def test_unknown_name_suggests_names_sharing_a_word_and_is_not_double_quoted(ew, capsys):
    first, last = ew.world.known[0].name.split()
    code, out = run_cli(capsys, "forget", "--target", f"Zzz {last}")
    assert code == 2 and out["type"] == "UnknownEntityError"
    assert out["error"].startswith(f"No entity named 'Zzz {last}'") and ew.world.known[0].name in out["error"]


# 3. Model/SAE pairing is checked before the probe reads anything -----------------------------------


def test_sae_of_another_width_is_refused_before_the_probe_runs(ew, task):
    width = ew.model.cfg.d_model + 8
    metadata = SAEMetadata(model_name="other", hook_name=ew.hook_name, prepend_bos=True)
    other = StandardSAE(StandardSAEConfig(d_in=width, d_sae=64, metadata=metadata))
    with pytest.raises(ValueError, match=rf"SAE d_in={width} but model hook"):
        forget(ew.model, other, task, progress=False)


# 4. The manifest protects itself ---------------------------------------------------------------------


@pytest.fixture
def world_copy(tmp_path):
    copy = tmp_path / "world"
    shutil.copytree(DEFAULT_ARTIFACTS, copy)
    return copy


def reseal(world) -> None:
    """Write the manifest's digest to match its current bytes (what a careless hand edit would do)."""
    digest = hashlib.sha256((world / MANIFEST).read_bytes()).hexdigest()
    (world / MANIFEST_DIGEST).write_text(digest + "\n")


def flip_a_byte(file, offset: int = -10) -> None:
    data = bytearray(file.read_bytes())
    data[offset] ^= 0xFF
    file.write_bytes(bytes(data))


def test_shipped_manifest_lists_every_file_and_is_sealed():
    """Every file of the world is listed, but those of a subfolder sealed by its own manifest (the oracles),
    which verify on their own."""
    sealed = [DEFAULT_ARTIFACTS, *(p.parent for p in DEFAULT_ARTIFACTS.glob(f"*/*/{MANIFEST}"))]
    for folder in sealed:
        manifest = json.loads((folder / MANIFEST).read_text())
        nested = [other for other in sealed if folder in other.parents]
        on_disk = {
            str(p.relative_to(folder))
            for p in folder.rglob("*")
            if p.is_file() and not any(n in p.parents for n in nested)
        }
        assert set(manifest) == on_disk - {MANIFEST, MANIFEST_DIGEST}, folder
        verify_artifacts(folder)
    assert len(sealed) == 4  # the world and its three oracles
    load_world(verify=True)


@pytest.mark.parametrize(
    ("manifest_text", "match"),
    [("{}", "lists no files"), ("{not json", "is not valid JSON"), ("[1, 2]", "lists no files")],
)
def test_an_empty_or_unparseable_manifest_is_named(world_copy, manifest_text, match):
    (world_copy / MANIFEST).write_text(manifest_text)
    with pytest.raises(CorruptArtifactError, match="does not match its digest"):
        load_world(world_copy)
    reseal(world_copy)
    with pytest.raises(CorruptArtifactError, match=rf"{MANIFEST} {match}"):
        load_world(world_copy)


def test_a_dropped_manifest_entry_cannot_hide_a_corrupt_file(world_copy):
    manifest = json.loads((world_copy / MANIFEST).read_text())
    del manifest["model.safetensors"]
    (world_copy / MANIFEST).write_text(json.dumps(manifest, indent=2))
    flip_a_byte(world_copy / "model.safetensors")
    with pytest.raises(CorruptArtifactError, match="does not match its digest"):
        load_world(world_copy)
    reseal(world_copy)
    with pytest.raises(CorruptArtifactError, match=r"model\.safetensors is not listed"):
        load_world(world_copy)


def test_a_missing_manifest_digest_is_named(world_copy):
    (world_copy / MANIFEST_DIGEST).unlink()
    with pytest.raises(CorruptArtifactError, match=rf"{MANIFEST_DIGEST} is missing"):
        load_world(world_copy)


# 5. --out is checked before any work ----------------------------------------------------------------


def test_out_that_is_a_file_is_refused_before_loading_anything(capsys, no_world_load, tmp_path):
    blocker = tmp_path / "results.txt"
    blocker.write_text("keep me")
    code, out = run_cli(capsys, "forget", "--random-targets", "1", "--out", str(blocker))
    assert code == 2 and out["type"] == "NotADirectoryError" and str(blocker) in out["error"]
    code, out = run_cli(capsys, "forget", "--random-targets", "1", "--out", str(blocker / "edit"))
    assert code == 2 and f"{blocker} is a file" in out["error"]
    assert blocker.read_text() == "keep me"


def unwritable_folder(tmp_path):
    """A folder this process cannot create anything in (as root, chmod is ignored: /sys is read-only)."""
    if os.geteuid() != 0:
        folder = tmp_path / "read-only"
        folder.mkdir(mode=0o500)
        return folder
    try:
        check_output_dir("/sys/irunlearn-probe")
    except PermissionError:
        return Path("/sys")
    pytest.skip("running as root with no read-only folder to write into")


def test_unwritable_out_names_the_out_path_not_a_temporary_one(capsys, no_world_load, tmp_path):
    out_path = unwritable_folder(tmp_path) / "edit"
    code, out = run_cli(capsys, "forget", "--random-targets", "1", "--out", str(out_path))
    assert code == 2 and out["type"] == "PermissionError"
    assert f"Cannot create output {out_path}" in out["error"] and ".partial" not in out["error"]


def test_non_empty_out_without_force_is_refused_first_for_every_command(capsys, no_world_load, tmp_path):
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "old.txt").write_text("old")
    for argv in (["forget", "--random-targets", "1"], ["recognize"], ["report"]):
        code, out = run_cli(capsys, *argv, "--out", str(taken))
        assert code == 2 and out["type"] == "FileExistsError" and "--force" in out["error"], argv
    code, out = run_cli(capsys, "compare", "--csv", str(taken))
    assert code == 2 and out["type"] == "IsADirectoryError"
    assert (taken / "old.txt").read_text() == "old"


def test_recognize_has_the_force_its_message_names(ew, recognizer, tmp_path):
    assert build_parser().parse_args(["recognize", "--force"]).force is True
    recognizer.save(tmp_path / "rec")
    with pytest.raises(FileExistsError, match="--force"):
        recognizer.save(tmp_path / "rec")
    recognizer.save(tmp_path / "rec", overwrite=True)


def test_save_edit_onto_a_file_names_it(ew, edit, tmp_path):
    blocker = tmp_path / "edit"
    blocker.write_text("keep me")
    with pytest.raises(NotADirectoryError, match=rf"{blocker} is a file"):
        save_edit(edit, ew.model, blocker)
    assert blocker.read_text() == "keep me"


# 6. Saved edits carry their own checksums ------------------------------------------------------------


def test_a_bit_flip_in_a_saved_edit_is_named(ew, edit, tmp_path):
    out = save_edit(edit, ew.model, tmp_path / "edit")
    flip_a_byte(out / "edit.safetensors")
    with pytest.raises(CorruptArtifactError, match=r"edit\.safetensors: tensor .* does not match its sha256"):
        load_edit(ew.model, out)


def test_an_extra_tensor_in_a_saved_edit_is_named(ew, edit, tmp_path):
    out = save_edit(edit, ew.model, tmp_path / "edit")
    tensors = load_file(out / "edit.safetensors") | {"blocks.0.mlp.W_gate": torch.zeros(3)}
    save_file(tensors, out / "edit.safetensors")
    with pytest.raises(
        CorruptArtifactError, match=r"edit\.safetensors does not hold .*extra: \['blocks\.0\.mlp\.W_gate'"
    ):
        load_edit(ew.model, out)


def test_a_truncated_or_missing_edit_file_is_named(ew, edit, tmp_path):
    out = save_edit(edit, ew.model, tmp_path / "edit")
    data = (out / "edit.safetensors").read_bytes()
    (out / "edit.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CorruptArtifactError, match=rf"{out / 'edit.safetensors'} cannot be read"):
        load_edit(ew.model, out)
    (out / "edit.json").write_text("{")
    with pytest.raises(CorruptArtifactError, match=r"edit\.json is not a valid edit record"):
        load_edit(ew.model, out)
    (out / "edit.json").unlink()
    with pytest.raises(CorruptArtifactError, match=r"edit\.json is missing"):
        load_edit(ew.model, out)


# 7. --json errors are JSON, exit 2 for user errors and 1 for internal ones ---------------------------


def test_json_errors_for_usage_user_and_internal_errors(capsys, monkeypatch):
    code, out = run_cli(capsys, "forget", "--no-such-option")
    assert code == 2 and out["type"] == "UsageError" and "--no-such-option" in out["error"]
    code, out = run_cli(capsys, "forget", "--method", "nope")
    assert code == 2 and "unknown method(s) ['nope']" in out["error"]

    def broken(*args, **kwargs):
        raise ZeroDivisionError("a bug")

    monkeypatch.setattr("irunlearn.world.stats.world_stats", broken)
    code, out = run_cli(capsys, "world", "stats")
    assert code == 1 and out == {
        "error": "internal error (ZeroDivisionError: a bug); please report it",
        "type": "ZeroDivisionError",
    }
    assert "exit" in build_parser().epilog and '"error"' in build_parser().epilog


def test_every_option_has_help_showing_its_default_and_methods_have_choices():
    def walk(parser: argparse.ArgumentParser, path: str):
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, child in action.choices.items():
                    yield from walk(child, f"{path} {name}")
            elif action.option_strings and not isinstance(action, argparse._HelpAction | argparse._VersionAction):
                yield path, parser, action

    seen = 0
    for path, parser, action in walk(build_parser(), "irunlearn"):
        formatter = parser._get_formatter()
        shown = formatter._expand_help(action) if action.help else ""
        assert action.help and "default" in shown, f"{path} {action.option_strings[0]}: {shown!r}"
        seen += 1
    assert seen > 30
    commands = build_parser()._subparsers._group_actions[0].choices
    for name in ("forget", "compare", "report"):
        method = next(a for a in commands[name]._actions if a.dest == "method")
        assert all(m in method.help for m in METHODS), name  # the choices are listed in the help


def test_version(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0 and capsys.readouterr().out.startswith("irunlearn 0.")


# 8. A rolled-back run reports the updates it kept and warns -----------------------------------------


def test_rollback_after_a_retain_blowup_reports_zero_steps_and_warns(ew, task):
    with pytest.warns(RollbackWarning, match=r"retain KL .* exceeds max_retain_kl=1e-12 at step 1"):
        result = forget(ew.model, ew.sae, task, max_retain_kl=1e-12, progress=False)
    assert result.stop_reason == "retain_blowup" and result.steps == 0 and not result.converged
    assert same_weights(result.model, ew.model) and result.history["step"].max() == 0


class NaNFromStepTwo(GradAscent):
    """grad_ascent whose loss turns NaN from its third step on (a fault the loop must catch)."""

    def step(self, model):
        out = super().step(model)
        self.calls = getattr(self, "calls", 0) + 1
        return dataclasses.replace(out, loss=out.loss * math.nan) if self.calls > 2 else out


def test_rollback_after_a_nan_loss_reports_the_updates_kept_and_warns(ew, task):
    config = GradAscentConfig(progress=False, guard_every=0)
    with pytest.warns(
        RollbackWarning, match=r"loss is not finite \(nan\) at step 2; rolled back to the weights after 1"
    ):
        result = run(NaNFromStepTwo(task, ew.sae, config), ew.model)
    clean = run(GradAscent(task, ew.sae, dataclasses.replace(config, max_steps=1)), ew.model)
    assert result.stop_reason == "nan" and result.steps == 1 and same_weights(result.model, clean.model)


# 9. Replacement is recoverable; temporary folders of dead writers are removed -----------------------


def test_a_kill_between_the_renames_of_force_loses_nothing(ew, edit, tmp_path, monkeypatch):
    out = save_edit(edit, ew.model, tmp_path / "edit")
    real_replace, calls = os.replace, []

    def killed_on_second_rename(src, dst):
        calls.append(dst)
        if len(calls) == 2:
            raise KeyboardInterrupt("killed")
        real_replace(src, dst)

    monkeypatch.setattr(irunlearn.io.os, "replace", killed_on_second_rename)
    with pytest.raises(KeyboardInterrupt):
        save_edit(edit, ew.model, out, force=True)
    monkeypatch.setattr(irunlearn.io.os, "replace", real_replace)
    assert not out.exists()  # the old edit sits in its backup now
    loaded, meta = load_edit(ew.model, out)  # the next load restores it
    assert out.exists() and meta["steps"] == edit.steps and same_weights(loaded, edit.model)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["edit"]


def test_stale_temporary_folders_are_removed_by_the_next_write(tmp_path):
    dead = tmp_path / ".out.partial.999999999.abcd"
    live = tmp_path / f".out.partial.{os.getpid()}.abcd"
    dead.mkdir(), live.mkdir()
    with atomic_dir(tmp_path / "out") as tmp:
        (tmp / "file.txt").write_text("new")
    assert not dead.exists() and live.exists() and (tmp_path / "out" / "file.txt").read_text() == "new"


def test_outputs_get_the_users_umask_permissions(ew, edit, tmp_path):
    previous = os.umask(0o022)
    try:
        out = save_edit(edit, ew.model, tmp_path / "edit")
    finally:
        os.umask(previous)
    assert stat.S_IMODE(out.stat().st_mode) == 0o755
    assert {stat.S_IMODE(f.stat().st_mode) for f in out.iterdir()} == {0o644}


# 10. Smaller ones ------------------------------------------------------------------------------------


def test_a_negative_number_of_random_targets_is_named_in_the_api(ew):
    with pytest.raises(ValueError, match="whole number >= 0, got -1"):
        resolve_targets(ew, n_random=-1)


def test_a_task_without_retain_facts_is_refused(task):
    with pytest.raises(ValueError, match="ForgetTask.retain .* has no fact"):
        dataclasses.replace(task, retain=[])
    with pytest.raises(ValueError, match="retain_text is empty"):
        dataclasses.replace(task, retain_text=[])
    assert isinstance(task, ForgetTask)


@pytest.mark.parametrize(
    ("argv", "match"),
    [
        (["forget", "--random-targets", "-1"], "--random-targets: must be a whole number >= 0, got -1"),
        (["forget", "--seed", "x"], "--seed: expected a whole number >= 0, got 'x'"),
        (["forget", "--random-targets", "1", "--max-steps", "0"], "--max-steps: must be a whole number >= 1"),
        (["compare", "--seeds", "0,-2"], "--seeds: expected comma-separated whole numbers"),
        (["compare", "--method", "sae_guided,nope"], r"unknown method\(s\) \['nope'\]"),
    ],
)
def test_bad_counts_and_seeds_are_usage_errors(capsys, no_world_load, argv, match):
    code, out = run_cli(capsys, *argv)
    assert code == 2 and out["type"] == "UsageError"
    assert re.search(match, out["error"]), out["error"]
