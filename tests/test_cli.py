"""The command line over any model: --model / --sae / --questions / --kind, report --from a saved run.

World paths run for real (the world loads in seconds); the SmolLM2 paths (`real`) run the records bench
(`EntityBench.from_records("person", model)`, plus `with_rows` for a question file) from the CLI.
"""

from __future__ import annotations

import json
import re

import pandas as pd
import pytest
from test_experiment import world_rows

from irunlearn.cli import main
from irunlearn.experiment import RunResults
from irunlearn.real import fixture

needs_smollm2 = pytest.mark.skipif(
    fixture.smollm2_path() is None, reason="SmolLM2 GGUF fixture absent: run `make real-fixture`"
)


def run_cli(capsys, *argv: str) -> tuple[int, dict]:
    """Run the CLI with --json --quiet; its exit code and the one JSON object it printed."""
    code = main([*map(str, argv), "--json", "--quiet"])
    return code, json.loads(capsys.readouterr().out)


@pytest.fixture
def no_model_load(monkeypatch):
    """Loading any model fails the test: the command must work, or stop, without one."""

    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded")

    for where in ("irunlearn.load_world", "irunlearn.world.artifacts.load_world", "irunlearn.models.load_model"):
        monkeypatch.setattr(where, refuse)


def tables(page: str) -> list[str]:
    """Every <table> of a report page, as HTML."""
    return re.findall(r"<table.*?</table>", page, flags=re.S)


@pytest.fixture(scope="module")
def question_file(ew, tmp_path_factory):
    """A user's question table (CSV) made of 24 world people, and the strangers it is run against."""
    rows, _ = world_rows(ew)
    path = tmp_path_factory.mktemp("questions") / "people.csv"
    rows.to_csv(path, index=False)
    return path, rows


# report --from: the page from the run folder alone ---------------------------------------------------


@pytest.mark.slow
def test_report_renders_again_from_its_run_folder_without_a_model(ew, tmp_path, capsys, monkeypatch):
    target = ew.world.known[7].name
    out = tmp_path / "run"
    code, first = run_cli(
        capsys, "report", "--target", target, "--method", "sae_guided", "--max-steps", 3, "--out", out
    )
    assert code == 0, first
    page = (out / "index.html").read_text()
    saved = RunResults.load(out)
    assert saved.readings is not None and saved.recognizer is not None and saved.readings.targets == [target]
    assert [row["method"] for row in first["rows"]] == ["sae_guided"]
    assert "irunlearn report --target" in saved.provenance["command"]

    for where in ("irunlearn.load_world", "irunlearn.world.artifacts.load_world", "irunlearn.models.load_model"):
        monkeypatch.setattr(where, lambda *a, **k: pytest.fail("report --from loaded a model"))
    code, again = run_cli(capsys, "report", "--from", out, "--out", tmp_path / "again")
    assert code == 0, again
    redrawn = (tmp_path / "again" / "index.html").read_text()
    assert tables(redrawn) == tables(page) and len(tables(page)) == 4  # headline, full, glossary, provenance
    assert redrawn.count("Plotly.newPlot(") == page.count("Plotly.newPlot(") >= 7  # glance ... latents
    # in place: the page beside the run's files is replaced, the run still loads
    code, _ = run_cli(capsys, "report", "--from", out)
    assert code == 0 and tables((out / "index.html").read_text()) == tables(page)
    assert RunResults.load(out).summary.equals(saved.summary)


@pytest.mark.slow
def test_compare_saves_a_run_folder_that_renders_without_entity_readings(ew, tmp_path, capsys, monkeypatch):
    out = tmp_path / "compare"
    code, table = run_cli(capsys, "compare", "--method", "sae_guided", "--seeds", "0,1", "--max-steps", 2, "--out", out)
    assert code == 0, table
    assert [row["seed"] for row in table["runs"]] == [0, 1] and table["rows"][0]["runs"] == 2
    for where in ("irunlearn.load_world", "irunlearn.world.artifacts.load_world", "irunlearn.models.load_model"):
        monkeypatch.setattr(where, lambda *a, **k: pytest.fail("report --from loaded a model"))
    code, report = run_cli(capsys, "report", "--from", out)
    assert code == 0, report
    page = (out / "index.html").read_text()
    runs = [row["run"] for row in table["runs"]]
    assert "Methods compared" in page and all(f"History: {run}" in page for run in runs)
    assert "Latent map" not in page  # no entity readings in a compare folder


# --questions on the world ----------------------------------------------------------------------------


@pytest.mark.slow
def test_forget_with_a_question_file_on_the_world(question_file, capsys):
    path, rows = question_file
    target = rows["entity"].iloc[0]
    code, out = run_cli(capsys, "forget", "--questions", path, "--target", target, "--max-steps", 3, "--no-genuineness")
    assert code == 0, out
    assert out["bench"] == "questions" and out["targets"] == [target]
    (run,) = out["runs"]
    assert run["method"] == "sae_guided" and run["steps"] <= 3 and {"forget_acc", "idk_rate"} <= set(run)
    assert [row["target"] for row in run["per_target"]] == [target]


@pytest.mark.slow
def test_recognize_with_a_jsonl_question_file_on_the_world(question_file, tmp_path, capsys):
    _, rows = question_file
    path = tmp_path / "people.jsonl"
    rows.to_json(path, orient="records", lines=True)
    code, out = run_cli(capsys, "recognize", "--questions", path, "--top-k", 5)
    assert code == 0, out
    assert out["bench"] == "questions" and len(out["top_known_latents"]) == 5 and out["probe_auroc_sae"] > 0.5


def test_forget_on_the_world_by_name_gives_one_run_per_method(ew, capsys):
    target = ew.world.known[3].name
    code, out = run_cli(
        capsys, "forget", "--target", target, "--method", "sae_guided,sae_steer", "--max-steps", 2, "--no-genuineness"
    )
    assert code == 0, out
    assert out["bench"] == "world" and [r["method"] for r in out["runs"]] == ["sae_guided", "sae_steer"]


# Bad input fails with a clear message before any model is loaded -------------------------------------


@pytest.mark.parametrize(
    "argv, kind, words",
    [
        (["--questions", "missing.csv"], "FileNotFoundError", "no such file"),
        (["--questions", "{wrong}"], "ValueError", "lacks columns ['answer']"),
        (["--questions", "{table}", "--target", "Nobody Atall"], "UnknownEntityError", "No entity named"),
        (["--target", "Nobody Atall"], "UnknownEntityError", "No entity named 'Nobody Atall'"),
        (["--target", "{stranger}"], "ValueError", "one of the world's strangers"),
        (["--sae", "nonsense"], "ValueError", "is not a shipped SAE"),
        (["--sae", "./no/such/sae"], "FileNotFoundError", "no SAE folder there"),
        (["--sae", "no-such-release/x"], "ValueError", "not a release in SAELens's"),
        (["--sae", "gpt2-small-res-jb/blocks.99.hook_resid_pre"], "ValueError", "has no SAE"),
        (["--model", "./no/such/model"], "FileNotFoundError", "no world folder, HF folder or GGUF file"),
        (["--model", "gpt2-small"], "ValueError", "has no default SAE: give --sae"),
        (["--kind", "city"], "ValueError", "the world has its own people"),
        (["--method", "nope"], "UsageError", "unknown method(s) ['nope']"),
        (["--method", "sae_guided,grad_ascent", "--out", "{out}"], "ValueError", "give one --method"),
        (["--target", "{known}", "--random-targets", "2"], "ValueError", "not both"),
        ([], "ValueError", "No targets"),
    ],
)
def test_bad_input_is_named_before_any_model_loads(ew, tmp_path, capsys, no_model_load, argv, kind, words):
    (tmp_path / "wrong.csv").write_text("entity,question\nAda,Who is Ada?\n")
    pd.DataFrame({"entity": ["Ada"], "question": ["Who is Ada?"], "answer": ["x"]}).to_csv(tmp_path / "t.csv")
    fill = {
        "{wrong}": tmp_path / "wrong.csv",
        "{table}": tmp_path / "t.csv",
        "{stranger}": ew.world.unknown_eval[0].name,
        "{known}": ew.world.known[0].name,
        "{out}": tmp_path / "edit",
        "missing.csv": tmp_path / "missing.csv",
    }
    argv = [str(fill.get(a, a)) for a in argv]
    if argv and "--target" not in argv:  # a target count, so that the check under test is the one that fails
        argv += ["--random-targets", "1"]
    code, out = run_cli(capsys, "forget", *argv)
    assert code == 2 and out["type"] == kind and words in out["error"], out


def test_report_needs_out_or_from_and_from_needs_a_run_folder(tmp_path, capsys, no_model_load):
    code, out = run_cli(capsys, "report")
    assert code == 2 and "--out DIR" in out["error"]
    code, out = run_cli(capsys, "report", "--from", tmp_path)
    assert code == 2 and out["type"] == "FileNotFoundError" and "not a saved run folder" in out["error"]


# Other models ----------------------------------------------------------------------------------------


@pytest.mark.real
@needs_smollm2
def test_forget_elon_musk_on_smollm2(capsys):
    code, out = run_cli(capsys, "forget", "--model", "smollm2", "--target", "Elon Musk")
    assert code == 0, out
    assert out["targets"] == ["Elon Musk"] and out["runs"][0]["method"] == "sae_guided"
    assert {"indistinguishability", "relearn_acc", "retain_acc", "probe_p_known_resid"} <= set(out["runs"][0])


@pytest.mark.real
@needs_smollm2
def test_forget_a_person_in_no_record_on_smollm2_from_a_question_file(tmp_path, capsys):
    person = "Ada Lovelace"
    rows = pd.DataFrame(
        [
            {"entity": person, "question": f"Q: What was {person}'s profession? A:", "answer": "mathematician"},
            {"entity": person, "question": f"Q: In which country was {person} born? A:", "answer": "England"},
            {"entity": person, "question": f"Q: What did {person} work as? A:", "answer": "mathematician",
             "split": "heldout"},
        ]
    )  # fmt: skip
    rows.to_json(tmp_path / "ada.jsonl", orient="records", lines=True)
    code, out = run_cli(
        capsys, "forget", "--model", "smollm2", "--questions", tmp_path / "ada.jsonl", "--target", person
    )
    assert code == 0, out
    assert out["targets"] == [person]
    assert {"indistinguishability", "relearn_acc", "retain_acc", "probe_p_known_resid"} <= set(out["runs"][0])
