"""The shipped embedded world on disk: tokenizer, model, SAE and world data, checked on load."""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

from sae_lens import SAE
from safetensors.torch import load_file, save_file
from transformer_lens import HookedTransformer
from transformers import PreTrainedTokenizerFast

from irunlearn.entities import Entity, EntitySet
from irunlearn.io import CorruptArtifactError, atomic_dir, recover
from irunlearn.prompts import Template
from irunlearn.recognition import Recognizer
from irunlearn.world.generator import World
from irunlearn.world.tokenizer import load_tokenizer
from irunlearn.world.train_model import ModelTrainConfig, make_model

DEFAULT_ARTIFACTS = Path(__file__).parent / "artifacts"
MANIFEST = "manifest.json"
RECOGNIZER_DIR = "recognizer"
ORACLE_DIR = "oracles"  # the world's oracles, one sealed folder per forget set
MANIFEST_DIGEST = "manifest.sha256"  # sha256 of manifest.json's bytes: the manifest checks itself
RESTORE_HINT = (
    "Restore it from git (`git checkout -- irunlearn/world/artifacts`) or rebuild with `irunlearn world build --force`."
)

__all__ = ["CorruptArtifactError", "EmbeddedWorld", "load_world", "save_world", "verify_artifacts", "write_manifest"]


@dataclass
class EmbeddedWorld:
    """What `irunlearn.load_world()` returns: the trained model, its tokenizer and SAE, the world, and the
    recognizer fit at build (None for a world being built or one written before recognizers shipped)."""

    model: HookedTransformer
    tokenizer: PreTrainedTokenizerFast
    sae: SAE
    world: World
    build_info: dict
    path: Path
    recognizer: Recognizer | None = None

    @property
    def hook_name(self) -> str:
        return self.sae.cfg.metadata.hook_name


def world_to_json(world: World) -> dict:
    return {
        "seed": world.seed,
        "known": [asdict(e) for e in world.known],
        "unknown_eval": [asdict(e) for e in world.unknown_eval],
        "first_names": world.first_names,
        "last_names": world.last_names,
        "templates": [asdict(t) for t in world.templates],
        "generic_train": world.generic_train,
        "generic_heldout": world.generic_heldout,
        "forget_sets": world.forget_sets,
    }


def world_from_json(data: dict) -> World:
    return World(
        seed=data["seed"],
        entities=EntitySet([Entity(**e) for e in data["known"]], [Entity(**e) for e in data["unknown_eval"]]),
        first_names=data["first_names"],
        last_names=data["last_names"],
        templates=[Template(**t) for t in data["templates"]],
        generic_train=data["generic_train"],
        generic_heldout=data["generic_heldout"],
        forget_sets=data.get("forget_sets", {}),  # absent in worlds written before forget sets existed
    )


def save_world(
    out: Path,
    world: World,
    tokenizer_dir: Path,
    model: HookedTransformer,
    model_cfg: ModelTrainConfig,
    sae: SAE,
    build_info: dict,
    recognizer: Recognizer,
    overwrite: bool = False,
    keep_oracles: bool = False,
) -> None:
    """Write all artifacts into `out` atomically, with a sha256 manifest that `load_world` checks.

    With `keep_oracles`, the oracles already under `out` (each sealed by its own manifest, tied to the
    world data and tokenizer) are carried into the new folder: for rewrites that keep both (a new SAE or
    recognizer); a new world drops them."""
    with atomic_dir(out, overwrite=overwrite) as tmp:
        if keep_oracles and (Path(out) / ORACLE_DIR).is_dir():
            shutil.copytree(Path(out) / ORACLE_DIR, tmp / ORACLE_DIR)
        (tmp / "tokenizer").mkdir()
        for file in tokenizer_dir.iterdir():
            (tmp / "tokenizer" / file.name).write_bytes(file.read_bytes())
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, tmp / "model.safetensors")
        (tmp / "model_config.json").write_text(json.dumps(asdict(model_cfg), indent=2))
        sae.save_model(tmp / "sae")
        recognizer.save(tmp / RECOGNIZER_DIR)
        (tmp / "world.json").write_text(json.dumps(world_to_json(world)))
        (tmp / "build.json").write_text(json.dumps(build_info, indent=2))
        write_manifest(tmp)


def reseal_recognizer(path: Path, recognizer: Recognizer, info: dict, info_file: str = "build.json") -> None:
    """Replace the recognizer and the build record (`info_file`) of the world or oracle folder at `path`,
    atomically; every other file (model, SAE, world data, oracles) is carried over byte for byte, and the
    manifest is rewritten."""
    path = Path(path)
    skipped = {MANIFEST, MANIFEST_DIGEST, RECOGNIZER_DIR, info_file}
    with atomic_dir(path, overwrite=True) as tmp:
        shutil.copytree(
            path,
            tmp,
            dirs_exist_ok=True,
            ignore=lambda folder, names: skipped & set(names) if Path(folder) == path else set(),
        )
        recognizer.save(tmp / RECOGNIZER_DIR)
        (tmp / info_file).write_text(json.dumps(info, indent=2))
        write_manifest(tmp)


def write_manifest(path: Path) -> None:
    """Record the sha256 of every file under `path` in `manifest.json`, and the manifest's own in
    `manifest.sha256`. (Run it on a world folder after editing a file by hand, to re-seal it.)"""
    manifest = json.dumps({name: sha256_file(path / name) for name in sorted(_sealed_files(Path(path)))}, indent=2)
    (path / MANIFEST).write_text(manifest)
    (path / MANIFEST_DIGEST).write_text(hashlib.sha256(manifest.encode()).hexdigest() + "\n")


def load_world(path: str | Path | None = None, verify: bool = True) -> EmbeddedWorld:
    """Load the embedded world (the shipped one by default): model, tokenizer, SAE, world data, recognizer.

    With `verify`, every file is checked against the build's sha256 manifest first, so a truncated or
    edited artifact fails with `CorruptArtifactError` naming the file, not with a confusing shape error.

    >>> ew = irunlearn.load_world()
    >>> ew.model, ew.sae, ew.world.known[0]
    """
    path = Path(path) if path is not None else DEFAULT_ARTIFACTS
    recover(path)
    if not (path / MANIFEST).exists():
        raise FileNotFoundError(
            f"No embedded world at {path} (no {MANIFEST}). Build one with `irunlearn world build --out {path}`."
        )
    if verify:
        verify_artifacts(path)
    tokenizer = load_tokenizer(path / "tokenizer")
    model_cfg = ModelTrainConfig(**json.loads((path / "model_config.json").read_text()))
    model = make_model(model_cfg, tokenizer)
    model.load_state_dict(load_file(path / "model.safetensors"))
    model.eval()
    sae = SAE.load_from_disk(str(path / "sae"), device="cpu")
    sae.eval()
    world = world_from_json(json.loads((path / "world.json").read_text()))
    build_info = json.loads((path / "build.json").read_text())
    recognizer = Recognizer.load(path / RECOGNIZER_DIR) if (path / RECOGNIZER_DIR).is_dir() else None
    return EmbeddedWorld(model, tokenizer, sae, world, build_info, path, recognizer)


def verify_artifacts(path: Path) -> None:
    """Raise `CorruptArtifactError` naming the file if the manifest is missing, unsealed (its digest in
    `manifest.sha256` differs), unparseable or incomplete, or if any file is missing, unlisted or altered."""
    manifest_file, digest_file = path / MANIFEST, path / MANIFEST_DIGEST
    if not digest_file.exists():
        raise CorruptArtifactError(f"{digest_file} is missing, so {manifest_file} cannot be checked. {RESTORE_HINT}")
    raw = manifest_file.read_bytes()
    if hashlib.sha256(raw).hexdigest() != digest_file.read_text().strip():
        raise CorruptArtifactError(f"{manifest_file} does not match its digest in {digest_file}. {RESTORE_HINT}")
    try:
        manifest = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CorruptArtifactError(f"{manifest_file} is not valid JSON ({err}). {RESTORE_HINT}") from None
    if not isinstance(manifest, dict) or not manifest:
        raise CorruptArtifactError(f"{manifest_file} lists no files (expected a file → sha256 mapping). {RESTORE_HINT}")
    on_disk = _sealed_files(path)
    unlisted = sorted(on_disk - set(manifest))
    if unlisted:
        raise CorruptArtifactError(f"Artifact {path / unlisted[0]} is not listed in {manifest_file}. {RESTORE_HINT}")
    for name, digest in manifest.items():
        file = path / name
        if not file.is_file():
            raise CorruptArtifactError(f"Artifact {file} is missing. {RESTORE_HINT}")
        if sha256_file(file) != digest:
            raise CorruptArtifactError(
                f"Artifact {file} does not match its checksum (corrupted or edited). {RESTORE_HINT}"
            )


def _sealed_files(path: Path) -> set[str]:
    """The files a folder's manifest covers: every file under it but the manifest's own two, and but those
    inside a subfolder with a manifest of its own (an oracle's folder inside the world's seals itself)."""
    nested = {p.parent for p in path.rglob(MANIFEST) if p.parent != path}
    return {
        str(p.relative_to(path))
        for p in path.rglob("*")
        if p.is_file()
        and p.name not in (MANIFEST, MANIFEST_DIGEST)
        and not any(parent in nested for parent in p.parents)
    }


def sha256_file(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()
