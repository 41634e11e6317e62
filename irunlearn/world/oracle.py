"""Oracles: the embedded world's model retrained from scratch without a forget set (TOFU's retain model).

An oracle is what exact unlearning would produce: the same seed, corpus stream, schedule, tokenizer and
SAE recipe as the world it belongs to, with every training line about the forget set's people taken out
(`training_lines(exclude=...)`), so those names are new to it and answered `unknown`. It ships with its
own SAE (trained by the same runner config on the same filtered stream) and its own recognizer (fitted
on the world's splits without the forget set), next to the world in `artifacts/oracles/<forget set>/`.
The tokenizer is the world's own (shared, so token-level metrics compare the two models on the same ids).
"""

from __future__ import annotations

import json
import time
from collections.abc import Collection
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from sae_lens import SAE
from safetensors.torch import load_file, save_file
from transformer_lens import HookedTransformer

from irunlearn.entities import UNKNOWN_ANSWER, Entity
from irunlearn.evaluation import Evaluator
from irunlearn.io import atomic_dir
from irunlearn.lm import perplexity
from irunlearn.qa import greedy_matches
from irunlearn.recognition import Recognizer
from irunlearn.world.artifacts import (
    MANIFEST,
    ORACLE_DIR,
    CorruptArtifactError,
    EmbeddedWorld,
    load_world,
    reseal_recognizer,
    sha256_file,
    verify_artifacts,
    write_manifest,
)
from irunlearn.world.generator import ATTRIBUTE_VALUES
from irunlearn.world.recognition import recognize_world
from irunlearn.world.stats import qa_accuracy, sae_quality
from irunlearn.world.train_model import ModelTrainConfig, make_model, train_model
from irunlearn.world.train_sae import SAETrainConfig, train_sae

ORACLE_INFO = "oracle.json"


@dataclass
class Oracle:
    """A world model that never saw `forget`: its model, SAE and recognizer, and its build record."""

    name: str
    model: HookedTransformer
    sae: SAE
    recognizer: Recognizer
    forget: list[Entity]
    info: dict
    path: Path

    @property
    def hook_name(self) -> str:
        return self.sae.cfg.metadata.hook_name


def oracle_stats(model: HookedTransformer, sae: SAE, ew: EmbeddedWorld, forget: list[Entity]) -> dict:
    """The oracle's headline figures: the world's `world_stats` measured on the people it did learn, plus
    how often it answers `unknown` about the forget set (every question template, both splits)."""
    world = ew.world
    names = {e.name for e in forget}
    others = [e for e in world.known if e.name not in names]
    forget_q = world.questions(forget, "all")
    idk = greedy_matches(model, forget_q["prompt"].tolist(), [UNKNOWN_ANSWER] * len(forget_q))
    unknown_q = world.questions(world.unknown_eval, "all")
    unknown_idk = greedy_matches(model, unknown_q["prompt"].tolist(), unknown_q["answer"].tolist())
    return {
        "forget_idk_rate": float(idk.float().mean()),
        "known_qa_acc": qa_accuracy(model, world, others, "train"),
        "known_qa_acc_heldout_templates": qa_accuracy(model, world, others, "heldout"),
        "unknown_idk_rate": float(unknown_idk.float().mean()),
        "generic_ppl": perplexity(model, world.generic_heldout),
        **sae_quality(model, sae, world),
        "n_forget": len(forget),
    }


def retrain_model(
    ew: EmbeddedWorld, exclude: Collection[str] = (), progress: bool = True
) -> tuple[HookedTransformer, list[float]]:
    """The world's model trained anew from its own `build.json` config and seed, as `build_world` trains it,
    without the lines about the known people in `exclude`; returns the model and its loss per step."""
    config = ew.build_info["config"]
    model_cfg = ModelTrainConfig(**config["model"])
    torch.manual_seed(config["seed"])
    model = make_model(model_cfg, ew.tokenizer)
    return model, train_model(model, ew.world, model_cfg, progress=progress, exclude=exclude)


def build_oracle(
    forget_set: str,
    world_path: str | Path | None = None,
    out: str | Path | None = None,
    force: bool = False,
    progress: bool = True,
) -> dict:
    """Train the oracle of `forget_set` for the world at `world_path` (default: the shipped one) and save it.

    The model, training and SAE configs are read from the world's own `build.json`, so the oracle differs
    from the world's model only by the forget set's missing lines. Saved to `out` (default
    `<world>/oracles/<forget_set>/`) atomically with a sha256 manifest; returns the record saved as
    `oracle.json` (configs, wall times, `oracle_stats`, the recognizer's metrics).
    """
    ew = load_world(world_path)
    forget = ew.world.forget_set(forget_set)  # a clear error for an unknown name, before any work
    out = Path(out) if out is not None else ew.path / ORACLE_DIR / forget_set
    if out.exists() and any(out.iterdir()) and not force:
        raise FileExistsError(f"{out} exists and is not empty; pass --force to replace it.")
    config = ew.build_info["config"]
    model_cfg, sae_cfg = ModelTrainConfig(**config["model"]), SAETrainConfig(**config["sae"])
    names = [e.name for e in forget]
    timings: dict[str, float] = {}

    start = time.perf_counter()
    model, losses = retrain_model(ew, exclude=names, progress=progress)
    timings["model_s"] = time.perf_counter() - start

    start = time.perf_counter()
    sae = train_sae(model, ew.world, sae_cfg, progress=progress, exclude=names)
    timings["sae_s"] = time.perf_counter() - start

    start = time.perf_counter()
    oracle_world = EmbeddedWorld(model, ew.tokenizer, sae, ew.world, {}, out)
    recognizer, _ = recognize_world(oracle_world, progress=progress, exclude=names)
    timings["recognizer_s"] = time.perf_counter() - start

    start = time.perf_counter()
    stats = oracle_stats(model, sae, ew, forget)
    timings["stats_s"] = time.perf_counter() - start
    timings["total_s"] = sum(timings.values())
    info = {
        "forget_set": forget_set,
        "forget": names,
        "world_digests": {f: sha256_file(ew.path / f) for f in ("world.json", "tokenizer/tokenizer.json")},
        "config": {"seed": config["seed"], "model": asdict(model_cfg), "sae": asdict(sae_cfg)},
        "timings": timings,
        "final_train_loss": sum(losses[-50:]) / min(50, len(losses)),
        "stats": stats,
        "recognizer_metrics": recognizer.metrics,
    }
    with atomic_dir(out, overwrite=force) as tmp:
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, tmp / "model.safetensors")
        (tmp / "model_config.json").write_text(json.dumps(asdict(model_cfg), indent=2))
        sae.save_model(tmp / "sae")
        recognizer.save(tmp / "recognizer")
        (tmp / ORACLE_INFO).write_text(json.dumps(info, indent=2))
        write_manifest(tmp)
    return info


def load_oracle(
    forget_set: str, world: EmbeddedWorld | None = None, path: str | Path | None = None, verify: bool = True
) -> Oracle:
    """Load the oracle of `forget_set` for `world` (default: the shipped world) from `path` (default: the
    world's `oracles/<forget_set>/`).

    With `verify`, every file is checked against the oracle's manifest, and the world's `world.json` and
    tokenizer against the digests recorded at build time: an oracle built for another world (other
    people, other token ids) fails with `CorruptArtifactError` instead of giving meaningless comparisons.
    """
    ew = world if world is not None else load_world()
    forget = ew.world.forget_set(forget_set)
    path = Path(path) if path is not None else ew.path / ORACLE_DIR / forget_set
    if not (path / MANIFEST).exists():
        raise FileNotFoundError(
            f"No oracle for {forget_set!r} at {path}. Build it with `irunlearn world build --forget-set {forget_set}`"
            f"{'' if world is None else f' --path {ew.path}'} (about 30 min of CPU for the full world)."
        )
    info = json.loads((path / ORACLE_INFO).read_text())
    if verify:
        verify_artifacts(path)
        for name, digest in info["world_digests"].items():
            if sha256_file(ew.path / name) != digest:
                raise CorruptArtifactError(
                    f"The oracle at {path} was built for another {name} than the world at {ew.path}; "
                    f"rebuild it with `irunlearn world build --forget-set {forget_set} --force`."
                )
    if info["forget"] != [e.name for e in forget]:
        raise CorruptArtifactError(
            f"The oracle at {path} forgot {info['forget']}, but the world's {forget_set} is "
            f"{[e.name for e in forget]}; rebuild it with `irunlearn world build --forget-set {forget_set} --force`."
        )
    model = make_model(ModelTrainConfig(**json.loads((path / "model_config.json").read_text())), ew.tokenizer)
    model.load_state_dict(load_file(path / "model.safetensors"))
    model.eval()
    sae = SAE.load_from_disk(str(path / "sae"), device="cpu")
    sae.eval()
    return Oracle(forget_set, model, sae, Recognizer.load(path / "recognizer"), forget, info, path)


def reship_oracle_recognizer(forget_set: str, world: EmbeddedWorld | None = None, progress: bool = True) -> dict:
    """Refit the recognizer of `forget_set`'s oracle (as its build fits it) and replace it in the oracle's
    folder with `oracle.json`'s `recognizer_metrics`, atomically (model and SAE stay byte for byte); for a
    change of the probe's definition. Returns the updated build record."""
    ew = world if world is not None else load_world()
    oracle = load_oracle(forget_set, ew)
    names = [e.name for e in oracle.forget]
    oracle_world = EmbeddedWorld(oracle.model, ew.tokenizer, oracle.sae, ew.world, {}, oracle.path)
    recognizer, _ = recognize_world(oracle_world, progress=progress, exclude=names)
    info = oracle.info | {"recognizer_metrics": recognizer.metrics}
    reseal_recognizer(oracle.path, recognizer, info, ORACLE_INFO)
    return info


# What a shipped oracle must meet (the oracle issue's acceptance): it answers `unknown` about its forget set,
# and elsewhere it is the world's model: the same accuracy on the other people, the same perplexity.
MIN_FORGET_IDK_RATE = 0.95
MAX_KNOWN_QA_GAP = 0.01
MAX_PPL_REL_GAP = 0.02


def oracle_acceptance(ew: EmbeddedWorld, oracle: Oracle) -> dict:
    """The oracle's acceptance figures next to the world model's on the same people and text.

    `forget_quality_self` is TOFU's forget quality of the oracle against itself, through the registered
    metric (1 by construction; checked so the metric's pipeline is). `passed` is whether every threshold
    (`MIN_FORGET_IDK_RATE`, `MAX_KNOWN_QA_GAP`, `MAX_PPL_REL_GAP`, forget quality 1) holds.
    """
    names = {e.name for e in oracle.forget}
    others = [e for e in ew.world.known if e.name not in names]
    forget_q = ew.world.questions(oracle.forget, "all")
    idk = greedy_matches(oracle.model, forget_q["prompt"].tolist(), [UNKNOWN_ANSWER] * len(forget_q))
    world_ppl, oracle_ppl = (
        perplexity(ew.model, ew.world.generic_heldout),
        perplexity(oracle.model, ew.world.generic_heldout),
    )
    evaluator = Evaluator(
        model=oracle.model,
        sae=oracle.sae,
        recognizer=oracle.recognizer,
        targets=oracle.forget,
        retain_eval=others,
        train_templates=ew.world.question_templates("train"),
        heldout_templates=ew.world.question_templates("heldout"),
        generic_text=ew.world.generic_heldout,
        oracle=oracle.model,
        attribute_values={attribute: list(values) for attribute, values in ATTRIBUTE_VALUES.items()},
    )
    figures = {
        "forget_idk_rate": float(idk.float().mean()),
        "known_qa_acc": qa_accuracy(oracle.model, ew.world, others, "train"),
        "world_known_qa_acc": qa_accuracy(ew.model, ew.world, others, "train"),
        "generic_ppl": oracle_ppl,
        "world_generic_ppl": world_ppl,
        "forget_quality_self": evaluator.metrics(oracle.model, ["forget_quality"])["forget_quality"],
    }
    figures["passed"] = (
        figures["forget_idk_rate"] >= MIN_FORGET_IDK_RATE
        and abs(figures["known_qa_acc"] - figures["world_known_qa_acc"]) <= MAX_KNOWN_QA_GAP
        and abs(oracle_ppl / world_ppl - 1) <= MAX_PPL_REL_GAP
        and figures["forget_quality_self"] == 1.0
    )
    return figures
