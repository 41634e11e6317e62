"""Deep SAE-guided forgetting: after the key is moved, make the layers downstream forget what it pointed to.

`sae_guided` moves the target's name representation (the key) at and before the SAE's layer; the later
layers, which map the name's layer-0 state to the person's facts, are left as they were, so restoring the
key (patching the original residual at the name tokens, or relearning one fact) restores every fact. This
method runs `sae_guided` unchanged (stage 1, the same weights, loss and stop rule), then a latent-adversarial
stage 2 that trains the MLPs and attention `W_V` / `W_O` of `deep_layers`, the value store:

    L_idk     = CE(`unknown` | target question)                                  the edited key
              + CE(`unknown` | target question, key ← original)                   the original key restored
    L_keep    = mean_c KL(p_θ₀(·|c) ‖ p_θ(·|c))     retain fact lines and generic text (sae_guided's L_lm pool)
    L_sharers = the same KL on the fact lines of retain people who share a name word with a target
    L         = L_idk + λ_keep · L_keep + λ_sharers · L_sharers

"key ← original": the original model's `blocks.L.hook_resid_post` at every token of the target's name, for
each L in `key_layers`, is patched into the forward (rotating over them a step at a time), so the answer
must be `unknown` even when the adversary hands the downstream layers the old key. The name-sharers' lines
are there because a name word the target shares has the same layer-0 state in both names: stage 2 could
otherwise learn "that word → unknown" and take the neighbours' answers with it.

Stage 2 stops once every drawn target question answers `unknown` (greedy) with both keys for `deep_steps`
steps in a row (the loop's `extra_steps` follow).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

import pandas as pd
import torch
from jaxtyping import Float, Int
from transformer_lens import HookedTransformer

from irunlearn.activations import stop_layer
from irunlearn.entities import UNKNOWN_ANSWER
from irunlearn.lm import encode_lines
from irunlearn.methods.base import AnswerBatch, StepOutput, kl_to_reference
from irunlearn.methods.sae_guided import SAEGuided, SAEGuidedConfig, shares_a_name_word
from irunlearn.prompts import _last_token_covering


@dataclass
class NamedFacts:
    """Fact lines (`prompt answer`, EOS-terminated) with the name's tokens located in each line.

    `name_rows`, `name_cols` index every token of the name; `name_offsets` says how far each sits from the
    name's last token (0: the last); `question_rows`, `question_cols` index the prompt tokens after the
    name (what the answer is read at).
    """

    batch: AnswerBatch
    facts: pd.DataFrame  # entity, prompt, answer (and attribute, template when given)
    name_rows: Int[torch.Tensor, " n"]
    name_cols: Int[torch.Tensor, " n"]
    name_offsets: Int[torch.Tensor, " n"]
    question_rows: Int[torch.Tensor, " m"]
    question_cols: Int[torch.Tensor, " m"]

    @classmethod
    def build(
        cls, model: HookedTransformer, facts: pd.DataFrame, prepend_bos: bool = True, append_eos: bool = True
    ) -> NamedFacts:
        """Locate the name of `facts["entity"]` in each `facts["prompt"]` (its first occurrence); the lines end
        with EOS unless `append_eos` is False (a few-shot answer's own tokens)."""
        if facts.empty:
            raise ValueError("NamedFacts needs at least one fact line.")
        batch = AnswerBatch.build(model, facts, prepend_bos, append_eos)
        answer_start = batch.answer_mask.float().argmax(-1) + 1  # first answer token of each line
        name_rows, name_cols, name_offsets, question_rows, question_cols = [], [], [], [], []
        bos = int(prepend_bos)
        for row, (prompt, name) in enumerate(zip(facts["prompt"], facts["entity"], strict=True)):
            start = prompt.find(name)
            if start < 0:
                raise ValueError(f"Entity {name!r} does not occur in prompt {prompt!r}.")
            _, first = _last_token_covering(model.tokenizer, prompt, start + 1)
            _, last = _last_token_covering(model.tokenizer, prompt, start + len(name))
            for col in range(first, last + 1):
                name_rows.append(row)
                name_cols.append(col + bos)
                name_offsets.append(last - col)
            for col in range(last + 1 + bos, int(answer_start[row])):
                question_rows.append(row)
                question_cols.append(col)

        def index(values: list[int]) -> Int[torch.Tensor, " n"]:
            return torch.tensor(values, dtype=torch.long, device=batch.tokens.device)

        return cls(
            batch,
            facts.reset_index(drop=True),
            index(name_rows),
            index(name_cols),
            index(name_offsets),
            index(question_rows),
            index(question_cols),
        )

    def answer_logprob(self, logits: Float[torch.Tensor, "batch pos vocab"]) -> Float[torch.Tensor, " batch"]:
        """Summed log-probability of each line's answer tokens (EOS included when the lines end with it)."""
        return -self.batch.answer_nll(logits)

    def name_tokens_of(self, index: Int[torch.Tensor, " k"]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """For the lines at `index` (in that order): which name tokens they hold (a mask over `name_rows`),
        and those tokens' (row, col) renumbered to the selection."""
        index = index.to(self.name_rows.device)
        kept = torch.isin(self.name_rows, index)
        renumber = torch.full((len(self.batch.tokens),), -1, device=index.device).index_copy(
            0, index, torch.arange(len(index), device=index.device)
        )
        return kept, renumber[self.name_rows[kept]], self.name_cols[kept]


@dataclass
class SAEGuidedDeepConfig(SAEGuidedConfig):
    """`sae_guided`'s settings (stage 1), plus stage 2's.

    `layers` and `train_attn` name every weight the whole edit may change: stage 1 changes only the MLPs
    at or before the SAE's layer (as `sae_guided`), stage 2 only the MLPs and attention `W_V` / `W_O` of
    `deep_layers` (`deep_attn=False`: the MLPs alone). `key_layers`: the layers whose original residual at
    the name tokens stage 2 patches in; `key_positions`: at every name token (`name`) or the last only
    (`last`). `lambda_keep`, `lambda_sharers`: the weights of L_keep and L_sharers. `n_sharer_lines`:
    name-sharers' fact lines in L_sharers per step (from a pool `retain_pool` times that). `deep_steps`:
    steps in a row every drawn target question must answer
    `idk_answer` with both keys before stage 2 stops.
    """

    layers: tuple[int, ...] | None = (0, 1, 2, 3)
    train_attn: bool = True
    deep_layers: tuple[int, ...] = (1, 2, 3)
    deep_attn: bool = True
    key_layers: tuple[int, ...] = (0,)
    key_positions: Literal["name", "last"] = "name"
    lambda_keep: float = 5.0
    lambda_sharers: float = 20.0
    n_sharer_lines: int = 32
    deep_steps: int = 3
    idk_answer: str = UNKNOWN_ANSWER


class SAEGuidedDeep(SAEGuided):
    name = "sae_guided_deep"
    config_class = SAEGuidedDeepConfig
    config: SAEGuidedDeepConfig

    def setup(self, model: HookedTransformer) -> None:
        cfg = self.config
        super().setup(model)
        sae_block = (stop_layer(self.hook_name) or model.cfg.n_layers) - 1
        stage1 = [model.blocks[layer].mlp for layer in range(sae_block + 1)]
        stage2 = [model.blocks[layer].mlp for layer in cfg.deep_layers]
        attn_layers = cfg.deep_layers if cfg.deep_attn else ()
        attn = [(model.blocks[layer].attn.W_V, model.blocks[layer].attn.W_O) for layer in attn_layers]
        self.stage1_params = [p for mlp in stage1 for p in mlp.parameters()]
        self.stage2_params = [p for mlp in stage2 for p in mlp.parameters()] + [w for pair in attn for w in pair]
        missing = [p for p in self.stage1_params + self.stage2_params if not p.requires_grad]
        if cfg.lora_rank is not None or missing:
            raise ValueError(
                f"sae_guided_deep trains the MLPs of blocks 0..{sae_block} and the MLPs and W_V/W_O of "
                f"deep_layers={cfg.deep_layers}: give layers covering both (now {cfg.layers}), train_attn=True "
                f"(now {cfg.train_attn}) and no lora_rank (now {cfg.lora_rank})."
            )
        bad = [layer for layer in cfg.key_layers if not 0 <= layer <= sae_block]
        if bad or not cfg.key_layers:
            raise ValueError(f"key_layers must be layers 0..{sae_block} (at or before the SAE's); got {cfg.key_layers}")
        self._train_only(model, self.stage1_params)
        self.stage, self.streak = 1, 0
        task = self.task
        idk = pd.DataFrame(
            [
                {"entity": e.name, "prompt": t.render(e.name), "answer": cfg.idk_answer}
                for e in task.targets
                for t in task.templates
            ]
        )
        self.idk = NamedFacts.build(model, idk, task.prepend_bos)
        if cfg.key_positions == "last":
            last = self.idk.name_offsets == 0
            self.idk = replace(
                self.idk,
                name_rows=self.idk.name_rows[last],
                name_cols=self.idk.name_cols[last],
                name_offsets=self.idk.name_offsets[last],
            )
        self.key_hooks = [f"blocks.{layer}.hook_resid_post" for layer in cfg.key_layers]
        sharers = [e for e in task.retain if shares_a_name_word(e, task.targets)]
        sharer_facts = task.facts(sharers)
        if len(sharer_facts) > cfg.n_sharer_lines * cfg.retain_pool:
            sharer_facts = sharer_facts.sample(cfg.n_sharer_lines * cfg.retain_pool, random_state=cfg.seed)
        lines = [f"{p} {a}" for p, a in zip(sharer_facts["prompt"], sharer_facts["answer"], strict=True)]
        self.sharer_tokens, self.sharer_mask = (
            encode_lines(model.tokenizer, lines, model.cfg.n_ctx, task.prepend_bos, device=model.cfg.device)
            if lines
            else (None, None)
        )
        with torch.no_grad():
            _, cache = model.run_with_cache(self.idk.batch.tokens, names_filter=self.key_hooks)
            self.original_keys = {hook: cache[hook][self.idk.name_rows, self.idk.name_cols] for hook in self.key_hooks}
            if self.sharer_tokens is not None:
                self.sharer_ref = model(self.sharer_tokens, return_type="logits").log_softmax(-1)
        self.deep_step = 0

    @staticmethod
    def _train_only(model: HookedTransformer, params: list[torch.nn.Parameter]) -> None:
        """Let gradients reach `params` only (Adam skips weights without a gradient)."""
        chosen = {id(p) for p in params}
        for p in model.parameters():
            if p.requires_grad or id(p) in chosen:
                p.requires_grad_(id(p) in chosen)

    def step(self, model: HookedTransformer) -> StepOutput:
        if self.stage == 1:
            out = super().step(model)
            self.streak = self.streak + 1 if out.done else 0
            if self.streak <= self.config.extra_steps:  # sae_guided's own stop: `extra_steps` after the flip
                return replace(out, done=False, per_target=out.per_target.assign(stage=1))
            self.stage, self.streak = 2, 0
            self._train_only(model, self.stage2_params)
        return self._deep_step(model)

    def _deep_step(self, model: HookedTransformer) -> StepOutput:
        cfg = self.config
        rows = self._target_draw()
        tokens = self.idk.batch.tokens[rows]
        answer_mask = self.idk.batch.answer_mask[rows]
        kept, name_rows, name_cols = self.idk.name_tokens_of(rows)
        hook = self.key_hooks[self.deep_step % len(self.key_hooks)]
        original_key = self.original_keys[hook][kept]

        def restore_key(activation: torch.Tensor, hook) -> torch.Tensor:
            activation = activation.clone()
            activation[name_rows, name_cols] = original_key
            return activation

        sub = AnswerBatch(tokens, self.idk.batch.mask[rows], answer_mask, [self.idk.batch.entity[r] for r in rows])
        n_answer = answer_mask.sum()
        logits = model(tokens, return_type="logits")
        patched = model.run_with_hooks(tokens, fwd_hooks=[(hook, restore_key)], return_type="logits")
        loss_idk = sub.answer_nll(logits).sum() / n_answer
        loss_idk_key = sub.answer_nll(patched).sum() / n_answer
        _, lm_rows = self._retain_draw()
        loss_keep = kl_to_reference(
            model(self.lm_tokens[lm_rows], return_type="logits"), self.ref_logprobs[lm_rows], self.lm_mask[lm_rows]
        )
        if self.sharer_tokens is not None:
            draw = torch.randperm(len(self.sharer_tokens), generator=self.generator)[: cfg.n_sharer_lines]
            draw = draw.to(self.sharer_tokens.device)
            # λ_keep · (L_keep + λ_sharers / λ_keep · L_sharers) = λ_keep · L_keep + λ_sharers · L_sharers
            loss_keep = loss_keep + cfg.lambda_sharers / cfg.lambda_keep * kl_to_reference(
                model(self.sharer_tokens[draw], return_type="logits"), self.sharer_ref[draw], self.sharer_mask[draw]
            )
        loss = loss_idk + loss_idk_key + cfg.lambda_keep * loss_keep
        with torch.no_grad():
            idk, idk_key = sub.greedy_hits(logits), sub.greedy_hits(patched)
        self.streak = self.streak + 1 if bool((idk & idk_key).all()) else 0
        self.deep_step += 1
        per_target = (
            pd.DataFrame({"target": sub.entity, "idk_train": idk.float(), "idk_key_restored": idk_key.float()})
            .groupby("target", sort=False)
            .mean()
            .reset_index()
            .assign(stage=2)
        )
        terms = {"loss_idk": loss_idk.item(), "loss_idk_key": loss_idk_key.item(), "loss_keep": loss_keep.item()}
        return StepOutput(
            loss=loss,
            terms=terms | {"retain_kl": loss_keep.item()},
            per_target=per_target,
            done=self.streak >= cfg.deep_steps,
        )
