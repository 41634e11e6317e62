"""Training an SAE for a real model with SAELens's own runner, offline, on local text.

The text (`sae_documents`) mixes fact sentences and few-shot questions rendered from the Wikidata records
of every entity kind with generic English prose (`irunlearn.real.corpus`). Documents are tokenized without
special tokens, joined by blank lines and packed into rows of `context_size` tokens (the first a BOS for a
model that prepends one, as Gemma does), handed to `LanguageModelSAETrainingRunner` as a
`datasets.Dataset` with a `tokens` column (DESIGN §8: a local `dataset_path` would call the hub). The
first position of every row is left out of training (`seqpos_slice=(1, None)`): it is an attention sink
(the BOS, or without one the first token) whose residual norm is ~100× the others' (SmolLM2 layer 12:
~25,000 against ~140), and no entity token ever sits there.

`train_real_sae` saves the SAE with `sae.save_model` (atomically) plus `training.json` with its figures:
FVU, L0 and the dead-latent fraction on held-out text, FVU at the entity token of held-out-template
questions, training tokens and wall time.
"""

from __future__ import annotations

import json
import os
import random
import time
from collections.abc import Sequence
from pathlib import Path

import torch
from datasets import Dataset
from jaxtyping import Float
from sae_lens import (
    SAE,
    LanguageModelSAERunnerConfig,
    LanguageModelSAETrainingRunner,
    LoggingConfig,
    TopKTrainingSAEConfig,
)
from tqdm.auto import tqdm
from transformer_lens import HookedTransformer
from transformers import PreTrainedTokenizerBase

from irunlearn.activations import extract_activations, forward_to_hook
from irunlearn.entities import Entity
from irunlearn.io import atomic_dir
from irunlearn.prompts import Template, bos_id
from irunlearn.real.corpus import fact_documents, generic_paragraphs, question_documents
from irunlearn.real.wikidata import KINDS, load_entities, question_templates

DOCUMENT_SEPARATOR = "\n\n"
# The SAEs irunlearn ships (SmolLM2-135M-Instruct `blocks.10.hook_resid_post`, Gemma 3 270M at the layer where
# the people probe peaks); each folder's `training.json` has its recipe and figures.
SMOLLM2_SAE = Path(__file__).parent / "artifacts" / "smollm2_sae"
GEMMA3_SAE = Path(__file__).parent / "artifacts" / "gemma3_270m_sae"


def sae_documents(
    n_tokens: int,
    tokenizer: PreTrainedTokenizerBase,
    *,
    kinds: Sequence[str] = KINDS,
    generic_share: float = 0.2,
    question_share: float = 0.3,
    seed: int = 0,
    data_dir: str | Path | None = None,
    extra_entities: Sequence[Entity] = (),
    extra_repeats: int = 1,
) -> list[str]:
    """About `n_tokens` tokens of training documents, shuffled (seeded).

    `generic_share` of the tokens are generic prose (the `"train"` part, repeated when the budget asks for
    more than it holds), `question_share` few-shot attribute questions ("train" templates only, so that
    held-out templates stay unseen by the SAE too) and the rest fact sentences, about the entities of
    `kinds` plus `extra_entities` (e.g. the famous people, each `extra_repeats` times), in a seeded order.
    """
    if not 0 <= generic_share + question_share <= 1:
        raise ValueError("generic_share + question_share must lie in [0, 1].")
    if extra_repeats < 1:
        raise ValueError(f"extra_repeats must be at least 1, not {extra_repeats}.")
    rng = random.Random(seed)
    entities = [e for kind in kinds for e in load_entities(kind, data_dir=data_dir)]
    entities += list(extra_entities) * extra_repeats
    rng.shuffle(entities)
    generic = generic_paragraphs("train")
    budgets = {
        "generic": generic_share * n_tokens,
        "questions": question_share * n_tokens,
        "facts": (1 - generic_share - question_share) * n_tokens,
    }
    sources = {
        "generic": (generic[i % len(generic)] for i in range(10**9)),
        "questions": (doc for e in entities for doc in question_documents([e], "train")),
        "facts": (doc for doc in fact_documents(entities, seed=seed)),
    }
    docs: list[str] = []
    for name, budget in budgets.items():
        taken = 0
        for doc in sources[name]:
            if taken >= budget:
                break
            docs.append(doc)
            taken += len(tokenizer(doc, add_special_tokens=False)["input_ids"])
    rng.shuffle(docs)
    return docs


def pack_documents(
    tokenizer: PreTrainedTokenizerBase, documents: Sequence[str], context_size: int, bos: bool = False
) -> Dataset:
    """Documents joined by blank lines and cut into rows of exactly `context_size` tokens (`tokens` column).

    With `bos`, every row starts with the tokenizer's BOS token followed by `context_size - 1` text tokens.
    The last, incomplete row is dropped. Raises ValueError when the documents do not fill one row.
    """
    separator = tokenizer(DOCUMENT_SEPARATOR, add_special_tokens=False)["input_ids"]
    stream: list[int] = []
    for ids in tokenizer(list(documents), add_special_tokens=False)["input_ids"]:
        stream += ids + separator
    head = [bos_id(tokenizer)] if bos else []
    width = context_size - len(head)
    n_rows = len(stream) // width
    if n_rows == 0:
        raise ValueError(f"{len(stream)} tokens of documents do not fill one row of {context_size} tokens.")
    rows = [head + stream[i * width : (i + 1) * width] for i in range(n_rows)]
    return Dataset.from_dict({"tokens": rows})


def train_real_sae(
    model: HookedTransformer,
    hook_name: str,
    out_dir: str | Path,
    training_tokens: int = 1_000_000,
    d_sae: int = 4096,
    k: int = 32,
    *,
    context_size: int = 128,
    batch_size_tokens: int = 512,
    lr: float = 2e-3,
    normalize_activations: str = "none",
    autocast: bool = True,
    seed: int = 0,
    documents: Sequence[str] | None = None,
    data_dir: str | Path | None = None,
    figure_entities: Sequence[Entity] | None = None,
    figure_templates: Sequence[Template] | None = None,
    save_dtype: torch.dtype = torch.float32,
    overwrite: bool = False,
    progress: bool = True,
) -> tuple[SAE, dict]:
    """Train a TopK SAE on `hook_name` of `model` with SAELens's runner; save it to `out_dir`.

    `normalize_activations="expected_average_only_in"` trains on activations scaled to an average norm of
    √d_model (estimated on 20 batches) and folds the scale into the saved weights: for a model whose
    residual norms are in the hundreds (Gemma), the learning rate then means the same as on SmolLM2.

    `wall_seconds` and `cpu_seconds` (this process's CPU time, which other load on the machine does not
    inflate) cover the runner alone: the model's forward passes and the SAE's training steps.

    `documents` default to `sae_documents(training_tokens, ...)` (Wikidata records from `data_dir`, see
    `irunlearn.real.wikidata.wikidata_dir`). With `autocast`, the model's forward
    and the SAE's training step run in bfloat16 autocast (about twice as fast on a CPU with AMX/AVX-512;
    the SAE's weights stay float32). `save_dtype=torch.float16` halves the saved file; the SAE still loads
    as float32, and its figures are measured on what was saved. The run is offline: wandb off, no hub, no
    checkpoints. The folder appears atomically and a non-empty `out_dir` is replaced only with `overwrite`.
    Returns the SAE as loaded back from `out_dir` and its figures (see `sae_figures`, which `figure_entities` and
    `figure_templates` go to), also written to `out_dir/training.json`.

    >>> sae, figures = train_real_sae(model, "blocks.10.hook_resid_post", "smollm2_sae", 600_000)
    """
    if hook_name not in model.hook_dict:
        raise ValueError(f"Hook {hook_name!r} does not exist in {model.cfg.model_name}.")
    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()) and not overwrite:
        raise FileExistsError(f"{out_dir} exists and is not empty; pass overwrite=True (CLI: --force) to replace it.")
    os.environ.setdefault("WANDB_MODE", "disabled")
    tokenizer = model.tokenizer
    if documents is None:
        documents = sae_documents(int(1.1 * training_tokens), tokenizer, seed=seed, data_dir=data_dir)
    dataset = pack_documents(tokenizer, documents, context_size, bos=bool(model.cfg.default_prepend_bos))
    n_steps = training_tokens // batch_size_tokens
    special = sorted(
        {i for i in (tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id) if i is not None}
    )
    runner_cfg = LanguageModelSAERunnerConfig(
        sae=TopKTrainingSAEConfig(
            d_in=model.cfg.d_model, d_sae=d_sae, k=k, normalize_activations=normalize_activations
        ),
        n_batches_for_norm_estimate=20,
        model_name=model.cfg.model_name,
        hook_name=hook_name,
        dataset_path="",
        is_dataset_tokenized=True,
        streaming=False,
        context_size=context_size,
        prepend_bos=False,  # rows are packed and carry their own BOS where the model wants one
        seqpos_slice=(1, None),
        exclude_special_tokens=special,
        training_tokens=training_tokens,
        train_batch_size_tokens=batch_size_tokens,
        n_batches_in_buffer=16,
        store_batch_size_prompts=16,
        lr=lr,
        lr_warm_up_steps=n_steps // 20,
        lr_decay_steps=n_steps // 5,
        # A latent silent for a tenth of the run counts as dead and gets TopK's auxiliary loss.
        dead_feature_window=max(1, n_steps // 10),
        feature_sampling_window=max(1, n_steps // 10),
        autocast=autocast,
        autocast_lm=autocast,
        device=str(model.cfg.device),
        seed=seed,
        logger=LoggingConfig(log_to_wandb=False),
        n_checkpoints=0,
        checkpoint_path=None,
        output_path=None,
        verbose=progress,
    )
    runner = LanguageModelSAETrainingRunner(runner_cfg, override_model=model, override_dataset=dataset)
    start, cpu_start = time.perf_counter(), time.process_time()
    trained = runner.run()
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    metadata = trained.cfg.metadata
    metadata.hook_name = hook_name
    metadata.model_name = model.cfg.model_name
    metadata.prepend_bos = bool(model.cfg.default_prepend_bos)
    trained = trained.to(save_dtype)
    trained.cfg.dtype = "float32"  # the dtype it loads as, whatever the file holds

    with atomic_dir(out_dir, overwrite=overwrite) as tmp:
        trained.save_model(tmp)
        sae = SAE.load_from_disk(tmp, device=str(model.cfg.device))
        figures = {
            "hook_name": hook_name,
            "d_sae": d_sae,
            "k": k,
            "training_tokens": training_tokens,
            "context_size": context_size,
            "batch_size_tokens": batch_size_tokens,
            "lr": lr,
            "normalize_activations": normalize_activations,
            "autocast": autocast,
            "save_dtype": str(save_dtype).removeprefix("torch."),
            "seed": seed,
            "n_documents": len(documents),
            "wall_seconds": wall,
            "cpu_seconds": cpu,
            **sae_figures(
                model,
                sae,
                entities=figure_entities,
                templates=figure_templates,
                data_dir=data_dir,
                progress=progress,
            ),
        }
        (tmp / "training.json").write_text(json.dumps(figures, indent=2))
    sae.eval()
    return sae, figures


@torch.no_grad()
def sae_figures(
    model: HookedTransformer,
    sae: SAE,
    *,
    n_texts: int = 96,
    n_entities: int = 60,
    seed: int = 1,
    entities: Sequence[Entity] | None = None,
    templates: Sequence[Template] | None = None,
    data_dir: str | Path | None = None,
    progress: bool = True,
) -> dict:
    """Reconstruction and sparsity of `sae` on text it was not trained on.

    - `fvu`, `l0`, `dead_fraction`: on every token but the first (and the BOS, for a model that prepends
      one) of `n_texts` held-out generic paragraphs plus as many fact documents about `entities` (default:
      the Wikidata cities; fact documents are drawn afresh, so they may overlap training text); dead =
      never active on these tokens.
    - `fvu_entity_tokens`, `l0_entity_tokens`: at the entity token of `templates` (default: the cities'
      held-out questions) about `n_entities` of `entities`, the activations recognition reads.
    - `n_eval_tokens`.
    """
    hook_name = sae.cfg.metadata.hook_name
    rng = random.Random(seed)
    generic = generic_paragraphs("heldout")
    texts = rng.sample(generic, min(n_texts, len(generic)))
    pool = list(entities) if entities is not None else load_entities("city", data_dir=data_dir)
    texts += fact_documents(rng.sample(pool, min(n_texts, len(pool))), seed=seed)
    head = [bos_id(model.tokenizer)] if model.cfg.default_prepend_bos else []
    resid = []
    for text in tqdm(texts, desc="SAE figures", disable=not progress, leave=False):
        ids = (head + model.tokenizer(text, add_special_tokens=False)["input_ids"])[: model.cfg.n_ctx]
        resid.append(forward_to_hook(model, torch.tensor([ids], device=model.cfg.device), hook_name)[0, 1:])
    resid = torch.cat(resid)
    asked = rng.sample(pool, min(n_entities, len(pool)))
    entity_resid = extract_activations(
        model, hook_name, asked, templates or question_templates("city", "heldout"), progress=False
    ).resid
    latents = sae.encode(resid)
    entity_latents = sae.encode(entity_resid)
    return {
        "fvu": fvu(resid, sae.decode(latents)),
        "l0": float((latents > 0).sum(-1).float().mean()),
        "dead_fraction": float(((latents > 0).sum(0) == 0).float().mean()),
        "fvu_entity_tokens": fvu(entity_resid, sae.decode(entity_latents)),
        "l0_entity_tokens": float((entity_latents > 0).sum(-1).float().mean()),
        "n_eval_tokens": len(resid),
    }


def fvu(x: Float[torch.Tensor, "n d"], reconstruction: Float[torch.Tensor, "n d"]) -> float:
    """Fraction of variance unexplained: `Σ‖x − x̂‖² / Σ‖x − mean(x)‖²`."""
    return float((x - reconstruction).square().sum() / (x - x.mean(0)).square().sum())
