"""Building the embedded world from a seed: tokenizer → model → SAE → checks → artifacts."""

from __future__ import annotations

import json
import tempfile
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch

from irunlearn.recognition import Recognizer
from irunlearn.world.artifacts import DEFAULT_ARTIFACTS, EmbeddedWorld, load_world, reseal_recognizer, save_world
from irunlearn.world.corpus import tokenizer_lines
from irunlearn.world.generator import generate_world
from irunlearn.world.recognition import recognize_world
from irunlearn.world.stats import sae_quality, world_stats
from irunlearn.world.tokenizer import train_tokenizer
from irunlearn.world.train_model import ModelTrainConfig, make_model, train_model
from irunlearn.world.train_sae import SAETrainConfig, train_sae


@dataclass
class BuildConfig:
    """Everything a world build depends on. `small()` is a minutes-scale version for tests."""

    seed: int = 0
    n_known: int = 400
    n_unknown_eval: int = 400
    vocab_size: int = 1024
    model: ModelTrainConfig = field(default_factory=ModelTrainConfig)
    sae: SAETrainConfig = field(default_factory=SAETrainConfig)

    @classmethod
    def small(cls, seed: int = 0) -> BuildConfig:
        return cls(
            seed=seed,
            n_known=40,
            n_unknown_eval=60,
            vocab_size=512,
            model=ModelTrainConfig(
                d_model=64, d_mlp=256, n_heads=4, n_layers=2, steps=700, batch_size=64, lr=3e-3, seed=seed
            ),
            sae=SAETrainConfig(
                hook_name="blocks.0.hook_resid_post",
                d_sae=256,
                k=16,
                training_tokens=150_000,
                batch_size_tokens=1024,
                seed=seed,
            ),
        )


def build_world(
    out: Path | None = None, cfg: BuildConfig | None = None, force: bool = False, progress: bool = True
) -> dict:
    """Generate, train and save a world into `out` (default: the package's shipped artifacts).

    Returns the build report (config, wall times, `world_stats`, the recognizer's metrics), also saved as
    `build.json`; the recognizer (`recognize_world`, seed 0) ships with the world.
    """
    cfg = cfg or BuildConfig()
    out = Path(out) if out is not None else DEFAULT_ARTIFACTS
    if out.exists() and any(out.iterdir()) and not force:
        raise FileExistsError(f"{out} exists and is not empty; pass --force to replace it.")
    torch.manual_seed(cfg.seed)
    timings: dict[str, float] = {}
    world = generate_world(cfg.seed, n_known=cfg.n_known, n_unknown_eval=cfg.n_unknown_eval)
    with tempfile.TemporaryDirectory() as scratch:
        start = time.perf_counter()
        tokenizer = train_tokenizer(tokenizer_lines(world, 30_000, cfg.seed), Path(scratch), cfg.vocab_size)
        timings["tokenizer_s"] = time.perf_counter() - start

        start = time.perf_counter()
        model = make_model(cfg.model, tokenizer)
        losses = train_model(model, world, cfg.model, progress=progress)
        timings["model_s"] = time.perf_counter() - start

        start = time.perf_counter()
        sae = train_sae(model, world, cfg.sae, progress=progress)
        timings["sae_s"] = time.perf_counter() - start

        built = EmbeddedWorld(model, tokenizer, sae, world, {}, out)
        start = time.perf_counter()
        stats = world_stats(built, progress=progress)
        timings["stats_s"] = time.perf_counter() - start
        start = time.perf_counter()
        recognizer, _ = recognize_world(built, progress=progress)
        timings["recognizer_s"] = time.perf_counter() - start
        timings["total_s"] = sum(timings.values())
        info = {
            "config": asdict(cfg),
            "timings": timings,
            "final_train_loss": sum(losses[-50:]) / min(50, len(losses)),
            "stats": stats,
            "recognizer_metrics": recognizer.metrics,
        }
        save_world(out, world, Path(scratch), model, cfg.model, sae, info, recognizer, overwrite=force)
    return info


def rebuild_sae(path: Path | None = None, cfg: SAETrainConfig | None = None, progress: bool = True) -> dict:
    """Retrain only the SAE of the world at `path` (default: the shipped one) and replace it there, atomically.

    Tokenizer, model and world data stay byte for byte; the recognizer is refit for the new SAE; `build.json`
    gets the new SAE config, training time, SAE figures and recognizer metrics (the model's own figures do
    not change). Returns the updated build report.
    """
    ew = load_world(path)
    cfg = cfg or SAETrainConfig()
    info = ew.build_info
    start = time.perf_counter()
    sae = train_sae(ew.model, ew.world, cfg, progress=progress)
    info["timings"]["sae_s"] = time.perf_counter() - start
    info["stats"] |= sae_quality(ew.model, sae, ew.world)
    recognizer = refit_recognizer(replace(ew, sae=sae), progress=progress)
    info["recognizer_metrics"] = recognizer.metrics
    info["timings"]["total_s"] = sum(v for k, v in info["timings"].items() if k != "total_s")
    info["config"]["sae"] = asdict(cfg)
    model_cfg = ModelTrainConfig(**json.loads((ew.path / "model_config.json").read_text()))
    save_world(
        ew.path,
        ew.world,
        ew.path / "tokenizer",
        ew.model,
        model_cfg,
        sae,
        info,
        recognizer,
        overwrite=True,
        keep_oracles=True,
    )
    return info


def refit_recognizer(ew: EmbeddedWorld, progress: bool = True) -> Recognizer:
    """Fit the world's recognizer anew (`recognize_world` with nothing shipped), e.g. after its SAE or the
    probe's definition changed; `reship_recognizer` writes it into the world's folder."""
    recognizer, _ = recognize_world(replace(ew, recognizer=None), progress=progress)
    return recognizer


def reship_recognizer(path: Path | None = None, progress: bool = True) -> dict:
    """Refit the recognizer of the world at `path` (default: the shipped one) and replace it there with
    `build.json`'s `recognizer_metrics`, atomically (model, SAE and world data stay byte for byte)."""
    ew = load_world(path)
    recognizer = refit_recognizer(ew, progress=progress)
    info = ew.build_info | {"recognizer_metrics": recognizer.metrics}
    reseal_recognizer(ew.path, recognizer, info)
    return info
