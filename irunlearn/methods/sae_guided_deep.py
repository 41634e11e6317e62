"""Deep SAE-guided forgetting: after the key is moved, make the layers downstream forget what it pointed to.

`sae_guided` moves the target's name representation (the key) at and before the SAE's layer; the later
layers, which map the name's layer-0 state to the person's facts, are left as they were, so restoring the
key (patching the original residual at the name tokens, or relearning one fact) restores every fact. This
method runs `sae_guided` (stage 1: the same weights, loss and stop rule, with L_nbr on), then a latent-adversarial
stage 2 that trains the MLPs and attention `W_V` / `W_O` of `deep_layers`, the value store:

    L_idk     = CE(`unknown` | target question)                                  the edited key
              + CE(`unknown` | target question, key ← original)                   the original key restored
    L_keep    = mean_c KL(p_θ₀(·|c) ‖ p_θ(·|c))     retain fact lines and generic text (sae_guided's L_lm pool)
    L_sharers = the same KL on the fact lines of retain people who share a name word with a target
              + the same KL on the questions of the name-sharers the model knows outside the task
              + the same KL on retain people's fact lines with a part of a target's name patched in
    L_nbr,deep = mean_{v,i} ‖h_v,i(θ) − h_v,i(θ₁)‖² / var(h(θ₁))   made-up neighbours after the deep layers
    L_choice  = KL(r(v | template) ‖ q_θ(v | target question))   over the attribute's values v, `unknown` left out
              + the same with key ← original
    L_name    = mean_{target, kind} (mean log p_θ(name tokens of that kind | what precedes) − m_U,kind)²
              + the same with key ← original
    L         = L_idk + λ_keep · L_keep + λ_sharers · L_sharers + λ_nbr,deep · L_nbr,deep
              + λ_choice · L_choice + λ_name · L_name

"key ← original": the original model's `blocks.L.hook_resid_post` at every token of the target's name, for each L
in `key_layers`, is patched into the forward (rotating over them a step at a time), so the answer must be
`unknown` even when the adversary hands the downstream layers the old key. The name-sharers' lines are there
because a name word the target shares has the same layer-0 state in both names: stage 2 could otherwise learn
"that word → unknown" and take the neighbours' answers with it. A task holds few such people (often none or one),
so the second part makes more: a target's *shared prefix* is its name's leading words (its first name, which
anyone may share) or, if longer, the leading tokens some retain person's name starts with too ("Velvel" of
"Velvel Tevdan" and "Velvel Roti"); every residual up to there is the same in both prompts. In other people's
fact lines the key layer's residual at their name's first tokens is replaced by the target's shared prefix (the
original model's in the reference, the stage-1 model's in the edit): whoever follows that prefix must keep their
answers. With `find_sharers`, the people the model knows who share a word of a target's name but are in no retain
set are found by asking the model (`known_neighbours`: the names one word away from the target's, built from the
task's name words, that both probes read as known) and their questions (prompts only: the KL reads the original's
next-token distributions, the answer's first token included) join the retain sharers' lines. With `sharer_parts`
holding `"last"`, other lines get the target's last word instead, at their own last word (when it has as many
tokens): its residual read in the target-named copy of the line, the original's in both the reference and the
edit, since a last-name sharer's first name differs and L_nbr keeps what block 0 writes after another first name.
On the original model, a person whose last word's state is swapped keeps most answers (their first name and the
question tokens still carry them), so these lines hold the downstream layers to reading the target's last word as
part of a known name.

L_nbr,deep holds sae_guided's made-up neighbours (L_nbr's names, strangers that keep all but one word of a
target) after stage 2's layers: h_v,i is the residual after the last of `deep_layers` at each question token
i of their questions, θ₁ the weights stage 1 ends with (their variance scales it). A downstream change keyed
on one word of the target's name moves those strangers too; one keyed on the whole name does not, and that
is the change that spares the known people who share a word.

L_choice asks for more than the answer `unknown`: ranked among the attribute's values (the retain people's),
the target's true value must be no likelier than for a stranger, with the edited key and with the original
one restored. q_θ is the softmax, over the values' first answer tokens, of the next-token logits after the
target's question (the values of an attribute begin with different tokens, and a value's later tokens follow
its first); r is the same for strangers' names (`ForgetTask.unknown`) on the original model, averaged over
them. Read where the `unknown` lines already are, it adds no forward pass. Without it the edited model still
ranks the target's true value first when `unknown` is left out (forced choice): the answer changes, the fact stays.
Without its second part the downstream layers, handed the original key, answer `unknown` by a thin margin
over the true value, and fine-tuning on half of a target's facts brings a held-out one back.

L_name makes the target's name itself as unpredictable as a stranger's. A model that never saw the person
cannot complete their name, and membership inference (Min-K% Prob, MUSE's privleak) reads exactly that: with
the answers gone, the name's tokens were what still told the target's lines from a stranger's. Per target and
kind of name token (its first token; a later one that starts a word; one that continues a word, far more
predictable in any name), the mean log-probability in the target's questions is pulled to m_U,kind, the
strangers' mean on the original model (`n_reference` of `ForgetTask.unknown`); squared, so undershooting a
stranger costs as much as staying above. Read from the same logits as L_idk, it adds no forward pass.

Stage 1 runs with `lambda_neighbours` (sae_guided's L_nbr) on: the made-up name-sharers keep what the first
block writes at their names, so the held-out people who share a word with a target keep their answers.

Stage 2 stops once every drawn target question answers `unknown` (greedy) with both keys for `deep_steps`
steps in a row (the loop's `extra_steps` follow).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, replace
from typing import Literal

import pandas as pd
import torch
from jaxtyping import Float, Int
from transformer_lens import HookedTransformer

from irunlearn.activations import patched_logits, stop_layer
from irunlearn.entities import UNKNOWN_ANSWER, Entity, attribute_values
from irunlearn.lm import encode_lines
from irunlearn.methods.base import AnswerBatch, ForgetTask, StepOutput, kl_to_reference
from irunlearn.methods.sae_guided import SAEGuided, SAEGuidedConfig, known_neighbours, shares_a_name_word
from irunlearn.prompts import Template, name_token_span


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
        answer_start = batch.first_answer_position() + 1  # first answer token of each line
        name_rows, name_cols, name_offsets, question_rows, question_cols = [], [], [], [], []
        bos = int(prepend_bos)
        for row, (prompt, name) in enumerate(zip(facts["prompt"], facts["entity"], strict=True)):
            _, first, last = name_token_span(model.tokenizer, prompt, name)
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

    @classmethod
    def questions(
        cls, model: HookedTransformer, people: list[Entity], templates: list[Template], answer: str, prepend_bos: bool
    ) -> NamedFacts:
        """Each of `people`'s questions in each of `templates`, all answered `answer`, person by person: line r
        asks person r div T in template r mod T (T = len(templates)), the layout the method's terms index by."""
        lines = [{"entity": e.name, "prompt": t.render(e.name), "answer": answer} for e in people for t in templates]
        return cls.build(model, pd.DataFrame(lines), prepend_bos)

    def answer_logprob(self, logits: Float[torch.Tensor, "batch pos vocab"]) -> Float[torch.Tensor, " batch"]:
        """Summed log-probability of each line's answer tokens (EOS included when the lines end with it)."""
        return -self.batch.answer_nll(logits)

    def name_tokens_of(self, index: Int[torch.Tensor, " k"]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """For the lines at `index` (in that order): which name tokens they hold (a mask over `name_rows`),
        and those tokens' (row, col) renumbered to the selection."""
        return _select_positions(self.name_rows, self.name_cols, index, len(self.batch.tokens))


@dataclass
class SAEGuidedDeepConfig(SAEGuidedConfig):
    """`sae_guided`'s settings (stage 1), plus stage 2's.

    `layers` and `train_attn` name every weight the whole edit may change: stage 1 changes only the MLPs
    at or before the SAE's layer (as `sae_guided`), stage 2 only the MLPs and attention `W_V` / `W_O` of
    `deep_layers` (`deep_attn=False`: the MLPs alone). `key_layers`: the layers whose original residual at
    the name tokens stage 2 patches in; `key_positions`: at every name token (`name`) or the last only
    (`last`). `lambda_keep`, `lambda_sharers`: the weights of L_keep and L_sharers. `n_sharer_lines`:
    name-sharers' fact lines in L_sharers per step (from a pool `retain_pool` times that). `deep_steps`:
    steps in a row every drawn target question must answer `idk_answer` with both keys before stage 2 stops.
    `find_sharers`: add the name-sharers the model knows outside the task (`known_neighbours`) to
    L_sharers. `n_prefix_lines`: retain fact lines per step that carry a part of a target's name, its shared prefix or
    last word (0: none). `lambda_choice`: the weight of L_choice (0: off), `n_choice_strangers` the
    strangers its reference averages over. `lambda_name`: the weight of L_name
    (0: off; its strangers are `n_reference` of `ForgetTask.unknown`). `sharer_parts`: which parts of a
    target's name the virtual sharers carry (`prefix`, `last`). `lambda_neighbours_deep`: the weight of
    L_nbr,deep (0: off; needs `lambda_neighbours` > 0, whose names it holds), `n_neighbour_lines` its
    made-up neighbours' question lines per step.
    """

    layers: tuple[int, ...] | None = (0, 1, 2, 3)
    train_attn: bool = True
    deep_layers: tuple[int, ...] = (1, 2, 3)
    deep_attn: bool = True
    key_layers: tuple[int, ...] = (0,)
    key_positions: Literal["name", "last"] = "name"
    lambda_keep: float = 5.0
    lambda_sharers: float = 100.0
    find_sharers: bool = True
    n_sharer_lines: int = 32
    n_prefix_lines: int = 64
    lambda_choice: float = 2.0
    lambda_neighbours: float = 100.0
    n_choice_strangers: int = 8
    lambda_name: float = 1.0
    sharer_parts: tuple[Literal["prefix", "last"], ...] = ("prefix", "last")
    lambda_neighbours_deep: float = 100.0
    n_neighbour_lines: int = 32
    deep_steps: int = 3
    idk_answer: str = UNKNOWN_ANSWER

    def __post_init__(self) -> None:
        super().__post_init__()
        parts = tuple(self.sharer_parts)
        if not parts or not set(parts) <= {"prefix", "last"}:
            raise ValueError(
                f"SAEGuidedDeepConfig: sharer_parts={self.sharer_parts!r} must name one or both of 'prefix', 'last'."
            )
        if self.retain_readout != "logits":
            raise ValueError(
                f"SAEGuidedDeepConfig: retain_readout={self.retain_readout!r} must be 'logits': stage 2 edits blocks "
                "past stage 1's, so only the output distribution says what the retain lines keep."
            )
        if self.lambda_neighbours_deep < 0 or (self.lambda_neighbours_deep > 0 and self.lambda_neighbours <= 0):
            raise ValueError(
                f"SAEGuidedDeepConfig: lambda_neighbours_deep={self.lambda_neighbours_deep!r} must be >= 0, and > 0 "
                f"only with stage 1's made-up neighbours on (lambda_neighbours > 0, now {self.lambda_neighbours!r})."
            )


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
        self.idk = NamedFacts.questions(model, task.targets, task.templates, cfg.idk_answer, task.prepend_bos)
        self.name_kinds = _name_token_kinds(
            model.tokenizer, self.idk.batch.tokens, self.idk.name_rows, self.idk.name_cols
        )
        # the name tokens the original key is restored at: every one, or each name's last
        self.key_at = self.idk.name_offsets == 0 if cfg.key_positions == "last" else self.idk.name_offsets >= 0
        self.key_hooks = [f"blocks.{layer}.hook_resid_post" for layer in cfg.key_layers]
        sharers = [e for e in task.retain if shares_a_name_word(e, task.targets)]
        sharer_facts = task.facts(sharers)
        if len(sharer_facts) > cfg.n_sharer_lines * cfg.retain_pool:
            sharer_facts = sharer_facts.sample(cfg.n_sharer_lines * cfg.retain_pool, random_state=cfg.seed)
        lines = [f"{p} {a}" for p, a in zip(sharer_facts["prompt"], sharer_facts["answer"], strict=True)]
        if cfg.find_sharers:  # the model's own name-sharers outside the task: their questions, prompts only
            questions = [t for t in task.templates if t.kind == "question" and t.attribute is not None]
            lines += [t.render(name) for name in known_neighbours(model, self.sae, task) for t in questions]
        self.sharer_tokens, self.sharer_mask = (
            encode_lines(model.tokenizer, lines, model.cfg.n_ctx, task.prepend_bos, device=model.cfg.device)
            if lines
            else (None, None)
        )
        self.choices = (
            _ValueChoices.build(model, task, cfg.n_choice_strangers, cfg.seed, cfg.idk_answer)
            if cfg.lambda_choice > 0
            else None
        )
        self.name_reference = (
            _stranger_name_logprob(model, task, cfg.n_reference, cfg.seed, cfg.idk_answer)
            if cfg.lambda_name > 0
            else None
        )
        self.virtual_sharers = (
            _SharedWordLines.build(
                model, task, self.key_hooks[0], cfg.n_prefix_lines * cfg.retain_pool, cfg.seed, cfg.sharer_parts
            )
            if cfg.n_prefix_lines > 0
            else None
        )
        with torch.no_grad():
            _, cache = model.run_with_cache(
                self.idk.batch.tokens, names_filter=self.key_hooks, stop_at_layer=max(cfg.key_layers) + 1
            )
            self.original_keys = {hook: cache[hook][self.idk.name_rows, self.idk.name_cols] for hook in self.key_hooks}
            if self.sharer_tokens is not None:
                self.sharer_ref = model(self.sharer_tokens, return_type="logits").log_softmax(-1)
        self.deep_step = 0
        self.made_up = (
            NamedFacts.questions(model, self.neighbours.people, task.templates, cfg.idk_answer, task.prepend_bos)
            if cfg.lambda_neighbours_deep > 0 and self.neighbours is not None
            else None
        )

    @staticmethod
    def _train_only(model: HookedTransformer, params: list[torch.nn.Parameter]) -> None:
        """Let gradients reach `params` only (Adam skips weights without a gradient)."""
        chosen = {id(p) for p in params}
        for p in model.parameters():
            if p.requires_grad or id(p) in chosen:
                p.requires_grad_(id(p) in chosen)

    def _made_up_states(
        self, model: HookedTransformer, lines: Int[torch.Tensor, " k"]
    ) -> tuple[torch.Tensor, Float[torch.Tensor, "n d_model"]]:
        """The residual after the last deep layer at the question tokens of the made-up neighbours' `lines`
        (sorted), in `question_rows` order, and which of those tokens they are (a mask over `question_rows`)."""
        made_up = self.made_up
        kept, rows, cols = _select_positions(
            made_up.question_rows, made_up.question_cols, lines, len(made_up.batch.tokens)
        )
        resid = model(made_up.batch.tokens[lines.to(rows.device)], stop_at_layer=max(self.config.deep_layers) + 1)
        return kept, resid[rows, cols]

    def step(self, model: HookedTransformer) -> StepOutput:
        if self.stage == 1:
            out = super().step(model)
            self.streak = self.streak + 1 if out.done else 0
            if self.streak <= self.config.extra_steps:  # sae_guided's own stop: `extra_steps` after the flip
                return replace(out, done=False, per_target=out.per_target.assign(stage=1))
            self.stage, self.streak = 2, 0
            self._train_only(model, self.stage2_params)
            if self.virtual_sharers is not None:  # the layers up to the key's are final now
                self.virtual_sharers.set_edited(model)
            if self.made_up is not None:  # where stage 1 leaves the made-up neighbours' question tokens
                with torch.no_grad():
                    _, states = self._made_up_states(model, torch.arange(len(self.made_up.batch.tokens)))
                self.made_up_reference = states
                self.made_up_scale = (states - states.mean(0)).square().sum(-1).mean()
        return self._deep_step(model)

    def _deep_step(self, model: HookedTransformer) -> StepOutput:
        cfg = self.config
        rows = self._target_draw()
        sub = self.idk.batch.select(rows)
        kept, name_rows, name_cols = self.idk.name_tokens_of(rows)
        key = self.key_at[kept]
        hook = self.key_hooks[self.deep_step % len(self.key_hooks)]
        n_answer = sub.answer_mask.sum()
        logits = model(sub.tokens, return_type="logits")
        original_key = self.original_keys[hook][kept][key]
        patched = patched_logits(model, sub.tokens, hook, name_rows[key], name_cols[key], original_key)
        loss_idk = sub.answer_nll(logits).sum() / n_answer
        loss_idk_key = sub.answer_nll(patched).sum() / n_answer
        _, lm_rows = self._retain_draw()
        loss_retain = kl_to_reference(
            model(self.lm_tokens[lm_rows], return_type="logits"), self.ref_logprobs[lm_rows], self.lm_mask[lm_rows]
        )
        loss_keep = loss_retain
        if self.sharer_tokens is not None:
            draw = torch.randperm(len(self.sharer_tokens), generator=self.generator)[: cfg.n_sharer_lines]
            draw = draw.to(self.sharer_tokens.device)
            # λ_keep · (L_keep + λ_sharers / λ_keep · L_sharers) = λ_keep · L_keep + λ_sharers · L_sharers
            loss_keep = loss_keep + cfg.lambda_sharers / cfg.lambda_keep * kl_to_reference(
                model(self.sharer_tokens[draw], return_type="logits"), self.sharer_ref[draw], self.sharer_mask[draw]
            )
        if self.virtual_sharers is not None:
            draw = torch.randperm(len(self.virtual_sharers.tokens), generator=self.generator)[: cfg.n_prefix_lines]
            loss_keep = loss_keep + cfg.lambda_sharers / cfg.lambda_keep * self.virtual_sharers.kl(model, draw.tolist())
        loss = loss_idk + loss_idk_key + cfg.lambda_keep * loss_keep
        if self.made_up is not None:
            n = len(self.made_up.batch.tokens)
            draw = torch.randperm(n, generator=self.generator)[: cfg.n_neighbour_lines].sort().values
            drawn_tokens, states = self._made_up_states(model, draw)
            drift = states - self.made_up_reference[drawn_tokens]
            loss_neighbours_deep = drift.square().sum(-1).mean() / self.made_up_scale
            loss = loss + cfg.lambda_neighbours_deep * loss_neighbours_deep
        if self.choices is not None:
            drawn = rows.tolist()
            loss_choice = self.choices.kl(logits, sub, drawn) + self.choices.kl(patched, sub, drawn)
            loss = loss + cfg.lambda_choice * loss_choice
        if self.name_reference is not None:
            target = rows // len(self.task.templates)  # each drawn line's target (`NamedFacts.questions`)
            where = (sub.tokens, name_rows, name_cols, self.name_kinds[kept], target, self.name_reference)
            loss_name = _name_gap(logits, *where) + _name_gap(patched, *where)
            loss = loss + cfg.lambda_name * loss_name
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
        if self.choices is not None:
            terms["loss_choice"] = loss_choice.item()
        if self.name_reference is not None:
            terms["loss_name"] = loss_name.item()
        if self.made_up is not None:
            terms["loss_neighbours_deep"] = loss_neighbours_deep.item()
        return StepOutput(
            loss=loss,
            terms=terms | {"retain_kl": loss_retain.item()},  # the loop's guard: the retain pool alone, as stage 1's
            per_target=per_target,
            done=self.streak >= cfg.deep_steps,
        )


@dataclass
class _SharedWordLines:
    """Retain people's fact lines with a part of a target's name patched in at `hook` (see the module).

    A part is the target's shared prefix, patched at the person's first name tokens, or the target's last
    word, patched at the person's last word (when it has as many tokens). `rows`, `cols` index the patched
    positions in `tokens`; `source_cols` the same tokens' positions in `swapped`, the line with the target's
    name in place of the person's, where the patched values are read: the original model's
    (`original_states`; `reference` holds the original's log-probabilities under that patch) and, from stage 2
    on, the edit's (`edited_states`): a prefix's as the stage-1 model writes it (a first-name sharer's is the
    same, word for word), a last word's still the original's (`last_word`), as a last-name sharer's is (the
    first name differs, and L_nbr keeps such names where they were).
    """

    hook: str
    tokens: Int[torch.Tensor, "batch pos"]
    mask: torch.Tensor
    swapped: Int[torch.Tensor, "batch pos"]
    rows: Int[torch.Tensor, " n"]
    cols: Int[torch.Tensor, " n"]
    source_cols: Int[torch.Tensor, " n"]
    last_word: torch.Tensor  # per patched position: part of a last word
    original_states: Float[torch.Tensor, "n d_model"]
    reference: Float[torch.Tensor, "batch pos vocab"]
    edited_states: Float[torch.Tensor, "n d_model"] | None = None

    @classmethod
    def build(
        cls,
        model: HookedTransformer,
        task: ForgetTask,
        hook: str,
        n_lines: int,
        seed: int,
        parts: tuple[Literal["prefix", "last"], ...] = ("prefix",),
    ) -> _SharedWordLines | None:
        """Up to `n_lines` lines (seeded), the retain facts in turn over the targets' `parts`; None when no
        target's name has such a part (one-word names) or no retain person's name fits one."""
        tokenizer, bos = model.tokenizer, int(task.prepend_bos)
        template = task.templates[0]
        spans, leading = {}, {}  # each name's tokens, and how many of them its leading words take
        for e in task.targets + task.retain:
            rendered = template.render(e.name)
            spans[e.name] = _name_tokens(tokenizer, rendered, e.name)
            words = e.name.split(" ")[:-1]
            leading[e.name] = len(_name_tokens(tokenizer, rendered, " ".join(words))) if words else 0
        shared: list[tuple[str, int, bool]] = []  # (target, its tokens before the part ends / starts, last word)
        for target in task.targets:
            mine = spans[target.name]
            longest = max([leading[target.name], *(_common_prefix(mine, spans[e.name]) for e in task.retain)])
            if "prefix" in parts and 0 < longest < len(mine):
                shared.append((target.name, longest, False))
            if "last" in parts and leading[target.name]:
                shared.append((target.name, leading[target.name], True))
        if not shared:
            return None
        rng = torch.Generator().manual_seed(seed)
        facts = task.facts(task.retain)
        facts = facts.iloc[torch.randperm(len(facts), generator=rng).tolist()].reset_index(drop=True)
        lines, swapped, positions = [], [], []
        for i, row in enumerate(facts.itertuples()):
            target, n, last_word = shared[i % len(shared)]
            mine, theirs = spans[target], spans[row.entity]
            if last_word:  # their last word has as many tokens as the target's, and their first name differs
                k = leading[row.entity]
                fits = k > 0 and len(theirs) - k == len(mine) - n and theirs[:k] != mine[:n]
                cols = [(k + j, n + j) for j in range(len(mine) - n)]
            else:  # their own last name token stays theirs
                fits = len(theirs) > n
                cols = [(j, j) for j in range(n)]
            if not fits:
                continue
            _, first, _ = name_token_span(tokenizer, row.prompt, row.entity)
            lines.append(f"{row.prompt} {row.answer}")
            swapped.append(row.prompt.replace(row.entity, target, 1))
            positions.append(
                [(first + bos + mine_col, first + bos + source_col, last_word) for mine_col, source_col in cols]
            )
            if len(lines) == n_lines:
                break
        if not lines:  # no retain person's name fits any part
            return None
        device = model.cfg.device
        tokens, mask = encode_lines(tokenizer, lines, model.cfg.n_ctx, task.prepend_bos, device=device)
        swapped_tokens, _ = encode_lines(tokenizer, swapped, model.cfg.n_ctx, task.prepend_bos, False, device=device)
        flat = [(r, *p) for r, cols in enumerate(positions) for p in cols]
        rows, cols, source_cols, last = (torch.tensor(column, device=device) for column in zip(*flat, strict=True))
        empty = torch.empty(0, device=device)
        lines_ = cls(hook, tokens, mask, swapped_tokens, rows, cols, source_cols, last, empty, empty)
        with torch.no_grad():
            lines_.original_states = lines_.states(model)
            lines_.reference = lines_.forward(model, lines_.original_states, list(range(len(lines)))).log_softmax(-1)
        return lines_

    @torch.no_grad()
    def states(self, model: HookedTransformer) -> Float[torch.Tensor, "n d_model"]:
        """`model`'s residual at `hook` at the patched positions of the target-named lines."""
        _, cache = model.run_with_cache(self.swapped, names_filter=[self.hook], stop_at_layer=stop_layer(self.hook))
        return cache[self.hook][self.rows, self.source_cols]

    def set_edited(self, model: HookedTransformer) -> None:
        """The edit's states, once the layers up to `hook` are final: `model`'s for prefixes, the original's
        for last words."""
        self.edited_states = torch.where(self.last_word[:, None], self.original_states, self.states(model))

    def forward(
        self, model: HookedTransformer, states: Float[torch.Tensor, "n d_model"], index: list[int]
    ) -> Float[torch.Tensor, "batch pos vocab"]:
        """Logits of the lines at `index` with `states` patched in at their patched positions."""
        index_t = torch.tensor(index, device=self.rows.device)
        kept, rows, cols = _select_positions(self.rows, self.cols, index_t, len(self.tokens))
        return patched_logits(model, self.tokens[index_t], self.hook, rows, cols, states[kept])

    def kl(self, model: HookedTransformer, index: list[int]) -> Float[torch.Tensor, ""]:
        """KL of the edit's patched lines at `index` to the original's, over their tokens."""
        logits = self.forward(model, self.edited_states, index)
        index_t = torch.tensor(index, device=self.rows.device)
        return kl_to_reference(logits, self.reference[index_t], self.mask[index_t])


def _name_tokens(tokenizer, prompt: str, name: str) -> list[int]:
    """The token ids of `name` as tokenized inside `prompt`."""
    ids, first, last = name_token_span(tokenizer, prompt, name)
    return ids[first : last + 1]


def _select_positions(
    rows: Int[torch.Tensor, " n"], cols: Int[torch.Tensor, " n"], index: Int[torch.Tensor, " k"], n_lines: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Of the positions (`rows`, `cols`) over `n_lines` lines, those on the lines at `index` (a mask over
    them) and their (row, col) with rows renumbered to the selection's order."""
    index = index.to(rows.device)
    kept = torch.isin(rows, index)
    renumber = torch.full((n_lines,), -1, device=index.device).index_copy(
        0, index, torch.arange(len(index), device=index.device)
    )
    return kept, renumber[rows[kept]], cols[kept]


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


@dataclass
class _ValueChoices:
    """Each target question's attribute values, as the first answer tokens that tell them apart, and how
    strangers rank them (see L_choice in the module).

    The ranking is read at the first answer token: the position whose logits the method's own `unknown`
    lines already compute, so the term costs no forward of its own. Values that begin with the same token
    rank as one.
    """

    tokens: list[Int[torch.Tensor, " k"]]  # per template of the task: its attribute's values' first tokens
    reference: list[Float[torch.Tensor, " k"]]  # per template: the strangers' mean softmax over them

    @classmethod
    def build(
        cls, model: HookedTransformer, task: ForgetTask, n_strangers: int, seed: int, idk: str
    ) -> _ValueChoices | None:
        """For `task.templates`, or None without strangers or values to rank."""
        values = attribute_values(task.retain)
        strangers = random.Random(seed).sample(task.unknown, min(n_strangers, len(task.unknown)))
        if not strangers or not values:
            return None
        device = model.cfg.device
        choices = cls([], [])
        with torch.no_grad():
            for template in task.templates:
                candidates = values.get(template.attribute, [])
                if not candidates:
                    choices.tokens.append(torch.empty(0, dtype=torch.long, device=device))
                    choices.reference.append(torch.empty(0, device=device))
                    continue
                prompt = template.render(strangers[0].name)
                lines = AnswerBatch.build(
                    model,
                    pd.DataFrame({"entity": "", "prompt": prompt, "answer": candidates}),
                    task.prepend_bos,
                )
                first = lines.tokens.gather(1, lines.first_answer_position()[:, None] + 1).squeeze(1).unique()
                theirs = AnswerBatch.build(
                    model,
                    pd.DataFrame({"entity": "", "prompt": [template.render(s.name) for s in strangers], "answer": idk}),
                    task.prepend_bos,
                )
                logprob = _first_answer_logprobs(model(theirs.tokens, return_type="logits"), theirs)
                choices.tokens.append(first)
                choices.reference.append(logprob[:, first].softmax(-1).mean(0))
        return choices

    def kl(
        self, logits: Float[torch.Tensor, "batch pos vocab"], lines: AnswerBatch, rows: list[int]
    ) -> Float[torch.Tensor, ""]:
        """Mean over the questions at `rows` (with values to rank) of KL(strangers' ranking ‖ the model's),
        from `logits` of `lines`, the method's `unknown` lines of those questions in that order (row r asks
        template r mod the number of templates: one line per target and template)."""
        logprob = _first_answer_logprobs(logits, lines)
        total, n = logprob.new_zeros(()), 0
        for i, row in enumerate(rows):
            template = row % len(self.tokens)
            tokens, theirs = self.tokens[template], self.reference[template]
            if len(tokens):
                mine = logprob[i, tokens].log_softmax(-1)
                total, n = total + (theirs * (theirs.clamp_min(1e-12).log() - mine)).sum(), n + 1
        return total / max(n, 1)


def _first_answer_logprobs(
    logits: Float[torch.Tensor, "batch pos vocab"], lines: AnswerBatch
) -> Float[torch.Tensor, "batch vocab"]:
    """Log-probabilities of each line's first answer token over the vocabulary."""
    position = lines.first_answer_position()
    return logits[torch.arange(len(position), device=logits.device), position].log_softmax(-1)


def _name_token_kinds(
    tokenizer,
    tokens: Int[torch.Tensor, "batch pos"],
    name_rows: Int[torch.Tensor, " n"],
    name_cols: Int[torch.Tensor, " n"],
) -> Int[torch.Tensor, " n"]:
    """Each name token's kind (`name_rows`, `name_cols` in line and column order, as `NamedFacts` holds them):
    0 a name's first token, 1 a later one that starts a word, 2 one that continues a word (how predictable a
    token is differs most between these)."""
    later = torch.zeros_like(name_rows, dtype=torch.bool)
    later[1:] = (name_rows[1:] == name_rows[:-1]) & (name_cols[1:] == name_cols[:-1] + 1)
    pieces = tokenizer.convert_ids_to_tokens(tokens[name_rows, name_cols].tolist())
    starts_word = torch.tensor([piece.startswith(("Ġ", "▁", " ")) for piece in pieces], device=name_rows.device)
    return torch.where(later, torch.where(starts_word, 1, 2), 0)


def _name_logprobs(
    logits: Float[torch.Tensor, "batch pos vocab"],
    tokens: Int[torch.Tensor, "batch pos"],
    name_rows: Int[torch.Tensor, " n"],
    name_cols: Int[torch.Tensor, " n"],
) -> Float[torch.Tensor, " n"]:
    """Each name token's log-probability given what precedes it."""
    logprob = logits[name_rows, name_cols - 1].log_softmax(-1)
    return logprob.gather(-1, tokens[name_rows, name_cols][:, None]).squeeze(-1)


def _name_gap(
    logits: Float[torch.Tensor, "batch pos vocab"],
    tokens: Int[torch.Tensor, "batch pos"],
    name_rows: Int[torch.Tensor, " n"],
    name_cols: Int[torch.Tensor, " n"],
    kind: Int[torch.Tensor, " n"],
    target: Int[torch.Tensor, " batch"],
    reference: Float[torch.Tensor, " kinds"],
) -> Float[torch.Tensor, ""]:
    """L_name: over the targets in these lines (`target`: each line's) and the kinds of name token
    (`_name_token_kinds`), the squared gap between the mean log-probability of a target's tokens of a kind and
    the strangers' (`reference`; NaN where they have none of that kind)."""
    n_kinds = len(reference)
    group = target[name_rows] * n_kinds + kind
    size = (int(target.max()) + 1) * n_kinds
    logprob = _name_logprobs(logits, tokens, name_rows, name_cols)
    n = torch.zeros(size, device=logits.device).index_add_(0, group, torch.ones_like(logprob))
    total = torch.zeros_like(n).index_add_(0, group, logprob)
    wanted = reference.repeat(size // n_kinds)
    present = (n > 0) & wanted.isfinite()
    if not bool(present.any()):
        return logits.new_zeros(())
    return (total[present] / n[present] - wanted[present]).square().mean()


@torch.no_grad()
def _stranger_name_logprob(
    model: HookedTransformer, task: ForgetTask, n: int, seed: int, idk: str
) -> Float[torch.Tensor, " 3"] | None:
    """Per kind of name token (`_name_token_kinds`), the mean log-probability of strangers' name tokens in the
    task's questions (`n` of `task.unknown`, seeded) on `model` as it is: how predictable the name of someone
    never seen is (NaN for a kind none of them has). None without strangers."""
    strangers = random.Random(seed).sample(task.unknown, min(n, len(task.unknown)))
    if not strangers:
        return None
    named = NamedFacts.questions(model, strangers, task.templates, idk, task.prepend_bos)
    tokens, rows, cols = named.batch.tokens, named.name_rows, named.name_cols
    kind = _name_token_kinds(model.tokenizer, tokens, rows, cols)
    logprob = _name_logprobs(model(tokens, return_type="logits"), tokens, rows, cols)
    return torch.stack([logprob[kind == k].mean() for k in range(3)])  # an empty kind's mean is NaN
