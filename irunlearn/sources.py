"""What the command line's `--model`, `--sae`, `--questions` and `--kind` name, checked before any loading.

`Source.parse` reads the four strings into a checked description: which model (the embedded world, a
built world folder, an offline fixture, a local HF folder, a GGUF file, a TransformerLens registry name),
which SAE (the world's own, a shipped one, a folder, or `RELEASE/SAE_ID` of SAELens's registry), the
user's question table (CSV or JSONL rows `entity,question,answer[,split]`) and the records kind. Every
mistake that can be seen without a model (a missing file, wrong columns, an unknown SAE form, a target
that is in neither the world nor the table) is raised there. `Source.load` then loads the SAE first (the
cheap half), the model, and builds the bench every command runs on:

- the world: `EntityBench.from_world`; with `--questions`, `EntityBench.from_frame(rows)` against the
  world's held-out strangers (the user's table on the world's model, as the README's own-questions path);
- a real model: `EntityBench.from_records(kind, model)` (known / unknown from the model's own answers),
  plus the table's rows as extra known entities (`with_rows`).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd
from sae_lens import SAE
from transformer_lens import HookedTransformer

from irunlearn.bench import FRAME_COLUMNS, EntityBench
from irunlearn.entities import Entity, EntitySet

if TYPE_CHECKING:
    from irunlearn.world.oracle import Oracle

WORLD = "world"
RECORD_KINDS = ("person", "city", "player", "song", "movie")
DEFAULT_KIND = "person"
QUESTION_SUFFIXES = (".csv", ".jsonl")


def shipped_saes() -> dict[str, Path]:
    """The SAEs shipped in the package for the offline fixtures, by fixture name."""
    from irunlearn.real.sae import GEMMA3_SAE, SMOLLM2_SAE

    return {"smollm2": SMOLLM2_SAE, "gemma3-270m": GEMMA3_SAE}


def world_folder(model: str) -> Path | None:
    """The embedded world's folder when `model` names one (`world`: the shipped one; a folder holding a
    built world's `manifest.json` and `world.json`), else None."""
    from irunlearn.world.artifacts import DEFAULT_ARTIFACTS, MANIFEST

    if model == WORLD:
        return DEFAULT_ARTIFACTS
    path = Path(model).expanduser()
    if path.is_dir() and (path / MANIFEST).is_file() and (path / "world.json").is_file():
        return path
    return None


@dataclass(frozen=True)
class SaeSpec:
    """A checked `--sae`: the world's own SAE (`kind="world"`), a folder (`path`), or a registry SAE."""

    kind: str  # "world", "folder" or "registry"
    path: Path | None = None
    release: str | None = None
    sae_id: str | None = None

    @classmethod
    def parse(cls, text: str | None, model: str, is_world: bool) -> SaeSpec:
        """Read `--sae` for `--model`: None → the world's SAE or the shipped SAE of a fixture; a shipped
        name; an existing folder with `cfg.json`; `RELEASE/SAE_ID` of SAELens's pretrained directory."""
        shipped = shipped_saes()
        if text is None:
            if is_world:
                return cls("world")
            if model in shipped:
                return cls("folder", path=shipped[model])
            raise ValueError(
                f"--model {model} has no default SAE: give --sae (a shipped name {sorted(shipped)}, a folder "
                "written by sae.save_model, or RELEASE/SAE_ID of SAELens's registry)."
            )
        if text in shipped:
            return cls("folder", path=shipped[text])
        path = Path(text).expanduser()
        if path.is_dir():
            if not (path / "cfg.json").is_file():
                raise FileNotFoundError(
                    f"--sae {text}: no SAE in that folder (no cfg.json; write one with save_model)."
                )
            return cls("folder", path=path)
        if text.startswith(("/", ".", "~")) or path.exists():
            raise FileNotFoundError(f"--sae {text}: no SAE folder there.")
        release, _, sae_id = text.partition("/")
        if not sae_id:
            raise ValueError(
                f"--sae {text!r} is not a shipped SAE ({sorted(shipped)}), an SAE folder, or RELEASE/SAE_ID "
                "(e.g. gemma-scope-2b-pt-res-canonical/layer_12/width_16k/canonical)."
            )
        from sae_lens.loading.pretrained_saes_directory import get_pretrained_saes_directory

        directory = get_pretrained_saes_directory()
        if release not in directory:
            raise ValueError(f"--sae {text}: {release!r} is not a release in SAELens's pretrained SAE directory.")
        if sae_id not in directory[release].saes_map:
            known = sorted(directory[release].saes_map)[:5]
            raise ValueError(f"--sae {text}: release {release!r} has no SAE {sae_id!r} (some it has: {known}).")
        return cls("registry", release=release, sae_id=sae_id)


def read_questions(path: str | Path) -> pd.DataFrame:
    """A user's question table from a CSV or JSONL file (rows `entity,question,answer[,split]`), with its
    columns checked; the rows themselves are checked by `EntityBench.from_frame` / `with_rows`."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"--questions {path}: no such file.")
    if path.suffix.lower() not in QUESTION_SUFFIXES:
        raise ValueError(f"--questions {path}: give a .csv or .jsonl file (rows entity,question,answer[,split]).")
    try:
        if path.suffix.lower() == ".csv":
            rows = pd.read_csv(path, dtype=str, keep_default_na=False)
        else:
            rows = pd.read_json(path, lines=True, dtype=str)
    except (ValueError, pd.errors.ParserError) as err:
        raise ValueError(f"--questions {path}: cannot read it ({err}).") from None
    missing = [column for column in FRAME_COLUMNS if column not in rows]
    if missing:
        raise ValueError(
            f"--questions {path} lacks columns {missing}; it needs {list(FRAME_COLUMNS)} (+ split: train / heldout)"
            f", and has {list(rows.columns)}."
        )
    if rows.empty:
        raise ValueError(f"--questions {path} has no rows.")
    return rows


@dataclass(frozen=True)
class Source:
    """A checked description of the model, SAE, question table and records kind a command runs on."""

    model: str
    world: Path | None
    sae: SaeSpec
    questions: pd.DataFrame | None
    kind: str

    @classmethod
    def parse(cls, model: str, sae: str | None, questions: Path | None, kind: str | None) -> Source:
        """Check the four options before any model is loaded (see the module docstring)."""
        world = world_folder(model)
        if world is None:
            path = Path(model).expanduser()
            if model.startswith(("/", ".", "~")) and not path.exists():
                raise FileNotFoundError(f"--model {model}: no world folder, HF folder or GGUF file there.")
        if world is not None and kind is not None:
            raise ValueError("--kind chooses a real model's records; the world has its own people (drop --kind).")
        rows = read_questions(questions) if questions is not None else None
        return cls(model, world, SaeSpec.parse(sae, model, world is not None), rows, kind or DEFAULT_KIND)

    def check_targets(self, names: list[str]) -> None:
        """Targets that can be refused without a model: on the world, names in neither its people nor the
        question table (with a table, only the table's people). A real model's known entities come from its
        own answers, so its records' targets are checked once the bench is built."""
        if not names:
            return
        if self.questions is not None:
            table = EntitySet([Entity(str(n).strip()) for n in dict.fromkeys(self.questions["entity"])], [])
            if self.world is not None:
                for name in names:
                    table.get(name)  # UnknownEntityError, naming the table's similar names
            return
        if self.world is not None:
            from irunlearn.world.artifacts import world_from_json

            people = world_from_json(json.loads((self.world / "world.json").read_text(encoding="utf-8"))).entities
            for name in names:
                if not people.is_known(name):  # `get` raises for a name it has never heard of
                    raise ValueError(f"{name!r} is one of the world's strangers, not a known person.")

    def load_sae(self, world_sae: SAE | None = None) -> SAE:
        """The SAE this source names (`world_sae`: the loaded world's own)."""
        from irunlearn.models import load_sae

        if self.sae.kind == "world":
            return world_sae
        if self.sae.kind == "folder":
            return load_sae(path=self.sae.path)
        return load_sae(self.sae.release, self.sae.sae_id)

    def oracle(self, targets: Sequence[str]) -> Oracle | None:
        """The world's oracle whose forget set is exactly `targets` (the report's reference row), or None: a
        real model, a question table, or targets that are no standard forget set with a built oracle."""
        if self.world is None or self.questions is not None or not targets:
            return None
        from irunlearn.report import matching_oracle
        from irunlearn.world.artifacts import DEFAULT_ARTIFACTS, load_world

        return matching_oracle(load_world(None if self.world == DEFAULT_ARTIFACTS else self.world), targets)

    def load(self, progress: bool = True) -> tuple[EntityBench, HookedTransformer, SAE]:
        """The bench, model and SAE; the SAE's pairing with the model is checked before anything runs."""
        from irunlearn.activations import check_pairing

        if self.world is not None:
            from irunlearn.world.artifacts import DEFAULT_ARTIFACTS, load_world

            ew = load_world(None if self.world == DEFAULT_ARTIFACTS else self.world)
            sae = self.load_sae(ew.sae)
            check_pairing(ew.model, sae)
            if self.questions is None:
                return EntityBench.from_world(ew), ew.model, sae
            strangers = [e.name for e in ew.world.unknown_eval]
            return EntityBench.from_frame(self.questions, unknown_names=strangers, name="questions"), ew.model, sae
        from irunlearn.models import load_model, model_load_kwargs_for_sae

        sae = self.load_sae()
        # A registry SAE records how its model must be loaded (BOS, weight processing); a shipped or local
        # SAE was trained on the model as `load_model` loads it.
        kwargs = model_load_kwargs_for_sae(sae) if self.sae.kind == "registry" else {}
        model = load_model(self.model, **kwargs)
        check_pairing(model, sae)
        bench = EntityBench.from_records(self.kind, model, progress=progress)
        if self.questions is not None:
            bench = bench.with_rows(self.questions)
        return bench, model, sae
