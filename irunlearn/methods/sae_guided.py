"""SAE-guided forgetting (ours, arXiv 2509.15631): make the target's latents look like an unknown's.

    L_forget  = mean⁺_{t,τ} max(0, d(z_t, μ_U) − d(z_t, μ_K) + δ_name)        at the name's last token
    L_context = mean⁺_{t,τ} max(0, d_τ(q_t, Q_U) − d_τ(q_t, Q_K) + δ_q)       at the question's tokens
    L_act     = mean_{r,τ} ‖z_r(θ) − z_r(θ₀)‖² / ‖μ_U − μ_K‖²
              + mean_{h,i} ‖q_h,i(θ) − q_h,i(θ₀)‖² / ‖μ_U − μ_K‖²   (held neighbours' question tokens, below)
    L_lm      = mean_c KL(p_θ₀(·|c) ‖ p_θ(·|c))          (retain facts and generic text; or, below,
              = mean_{c,i,d} (h_c,i,d(θ) − h_c,i,d(θ₀))² / var_d(h(θ₀))   the residual after the edited blocks)
    L_resid   = mean⁺_{t,τ} max(0, ‖x_t − X_U,τ‖² − r_U,τ) / ‖X_U,τ − X_K,τ‖²         at the name's last token
    L_nbr     = mean_{v,τ} ‖y_v(θ) − y_v(θ₀)‖² / mean_{t,τ} ‖y_t(θ₀) − Y_U,τ‖²   made-up name-sharers (below)
    L         = L_forget + L_context + λ_act · L_act + λ_lm · L_lm + λ_resid · L_resid + λ_nbr · L_nbr

mean⁺ averages over the (target, template) rows still pushing, so the last rows to flip get the same push
as the first (a plain mean shrinks it as rows flip, and Adam's step with it). A row that is past δ_name but
still read as known by either probe pulls on toward μ_U (d(z_t, μ_U)), so the stop rule never waits on a
row that has no gradient.

`objective="pull_push"` gives DESIGN §4's first L_forget, d(z_t, μ_U) − β · min(d(z_t, μ_K), m), which keeps
pulling every target after it has flipped; the margin (hinge) form stops pulling a (target, template) once
it is δ past the midpoint, so the remaining ones get the gradient and the flipped ones stop drifting the model.

Why the context term: in the embedded world the question tokens after the name have already read the
person's facts from the name at layer 1 (attention reads the name's layer-0 state), so moving only the name
token's latents at the SAE's hook can leave the answers intact. `q_t` are the latents at every question
token after the name; `Q_U`, `Q_K` their per-template means over unknown and known people; `d_τ` the squared
distance summed over those tokens, divided by ‖Q_U − Q_K‖². Its gradient reaches the weights only through
the name's own tokens (MLP outputs at the question tokens are detached), so the shared question words are not
edited. With `train_attn=True` (README "Design notes") it also reaches attention, i.e. what the question
tokens read from the name. Retain entities that share a name word with a target come first in the retain
sample.

L_act also holds the latents at the question tokens after the name of up to `hold_questions` (32) retain
people who share a name word with a target (`hold_question_rows` of their whole questions a step, from a
pool `retain_pool` times that): the tokens their answers are read from, which the name token's latents alone
do not pin down. With many targets at once the edit moves those tokens and these neighbours lose answers;
one target has few such neighbours, so this costs it little (`hold_questions=0` turns it off).

The retain terms (L_act, L_lm) see a fresh draw each step from a pool `retain_pool` times their per-step
size, computed once with the original weights: coverage of the other people grows at the same cost per
step, which is what keeps their answers when many targets are forgotten together.

With more than `target_rows` (target, template) rows, a step reads each target's questions in a share of
its templates, in turns: every row once per cycle of shuffled shares, so a step of 10 targets costs about
what a step of two does.

Why L_resid (`lambda_resid`, off by default): the SAE reconstructs what its latents carry; the rest of
the hook's residual, the SAE error, is out of L_forget's reach. On a real model with an SAE of modest
fidelity the error carries as much of what the answers read as the latents do (README "Real models"), so
the latents move and the answers stay. L_resid pulls the whole residual `x_t` at the name's last token
toward `X_U,τ`, the mean residual of `n_resid_reference` unknown people (`ForgetTask.unknown`) in the same
template, until it lies no farther from it than a stranger does on average (`r_U,τ`); `X_K,τ` (known retain
people) scales it. With it, a row counts as flipped only once inside that radius too.

Why the second L_lm (`retain_readout="window"`): the loop edits only the blocks of `layers`, so a retain
line whose residual after the last of them (`h`, at every token) is where it was gets the original's output
distribution exactly: holding `h` holds what the KL asks for, without the unembedding. With a large
vocabulary that matters: on Gemma 3 (262,144 words) the logits of 16 short lines cost more than the 18
blocks, and backward through them more again. It is stricter than the KL (it also holds directions the
output ignores) and is what a model's recipe picks when its vocabulary is large.

Why L_nbr (`lambda_neighbours`, off by default): people outside the task who share a word of a target's
name lose answers, though no term pushes on them. The edit moves what the first trained block writes at the
name's last token, and a name that ends the same way ("Xasol Kanes" next to "Orha Kanes") or starts the
same way reaches nearly the same state there; L_act holds only the retain people, and a task has few who
share a word, often none of a given neighbour's. So L_nbr makes its own: `n_neighbours` names per target,
each the target's name with one word swapped for the same word of another person of the task (retain or
unknown), keeping only those both probes read as strangers (no person the model knows, held out or not, is
among them). `y_v` is a made-up name's residual at its last token after the first trained block
(`blocks.L.hook_resid_post`, L the lowest of `layers`), held where it was; the scale is how far the
targets' own states there lie from strangers' (Y_U, the mean over `n_reference` unknown people).

Stops once, for every target and training template (at the row's latest reading), both probes (SAE and
residual) read unknown (p < 0.5) at the name token, the name token sits closer to μ_U than to μ_K and the
question tokens closer to Q_U than to Q_K; then runs `extra_steps` more (DESIGN §4): 2 by default.
Pushing on overshoots: the target's probe reading falls below the strangers' (which the edit nudges up),
so the probe tells them apart again, from the other side.
"""

from __future__ import annotations

import math
import random
import warnings
from dataclasses import dataclass
from typing import Literal

import pandas as pd
import torch
from jaxtyping import Bool, Float, Int
from sae_lens import SAE
from transformer_lens import HookedTransformer

from irunlearn.activations import EntityBatch, forward_to_hook, sae_hook_name, stop_layer
from irunlearn.entities import Entity
from irunlearn.lm import encode_lines, pad_id
from irunlearn.methods.base import (
    ForgetConfig,
    ForgetTask,
    Method,
    StepOutput,
    edited_layers,
    kl_to_reference,
    latent_readings,
    standardized_drift,
)
from irunlearn.prompts import entity_token_positions


@dataclass
class SAEGuidedConfig(ForgetConfig):
    lr: float = 5e-4
    beta: float = 0.5  # pull_push only
    margin: float = 1.0  # pull_push only: m
    lambda_act: float = 1.0
    lambda_lm: float = 5.0
    latents: Literal["all", "selected"] = "all"
    n_retain_entities: int = 16  # per step, as is n_retain_text (fact lines and as many generic lines)
    retain_templates_per_entity: int = 3
    n_retain_text: int = 16
    objective: Literal["margin", "pull_push"] = "margin"  # L_forget: hinge with `name_margin`, or β / m
    name_margin: float = 0.5  # δ_name: a name token stops being pushed once this much closer to μ_U than μ_K
    context: bool = True  # L_context on the question tokens after the name (needs ForgetTask.unknown)
    question_margin: float = 0.2  # δ_q, the same for the question tokens (Q_U, Q_K)
    n_reference: int = 8  # unknown and known people whose questions give Q_U and Q_K
    retain_pool: int = 10  # retain entities and lines are drawn afresh each step from this many times the sample
    extra_steps: int = 2  # steps after the flip; more overshoot the strangers (see the module docstring)
    target_rows: int = 64  # most target questions per step (at least one per target); more are read in turns
    hold_questions: int = 32  # most retain people sharing a name word whose question tokens L_act holds; 0: off
    hold_question_rows: int = 32  # of their whole questions per step
    lambda_resid: float = 0.0  # L_resid, the whole residual at the name's last token (latents and SAE error); 0: off
    n_resid_reference: int = 32  # unknown people whose residuals give X_U and a stranger's radius r_U
    lambda_neighbours: float = 0.0  # L_nbr, made-up name-sharers' states after the first trained block; 0: off
    n_neighbours: int = 32  # made-up names per target, split evenly over the words they keep
    neighbour_rows: int = 32  # of their (name, template) rows per step
    retain_readout: Literal["logits", "window"] = "logits"  # L_lm on the output, or on the edited blocks' output

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.retain_readout not in ("logits", "window"):
            raise ValueError(
                f"{type(self).__name__}: retain_readout={self.retain_readout!r} must be 'logits' (L_lm as the KL "
                "of the output) or 'window' (the residual after the last edited block)."
            )


@dataclass
class QuestionBatch:
    """Whole questions (every template) about some entities, with the tokens after the name located.

    One row per (entity, template). `rows`, `cols` index every question token after the name; `keys` say
    which (template, distance from the end) it is, so the same token of the same question lines up
    across entities.
    """

    names: EntityBatch  # whole questions, right-padded; positions: the name's last token
    rows: Int[torch.Tensor, " n"]
    cols: Int[torch.Tensor, " n"]
    keys: Int[torch.Tensor, " n"]

    @classmethod
    def build(cls, model: HookedTransformer, task: ForgetTask, entities: list[Entity]) -> QuestionBatch:
        prompts = [t.render(e.name) for e in entities for t in task.templates]
        names = [e.name for e in entities for _ in task.templates]
        located = entity_token_positions(model.tokenizer, prompts, names, task.prepend_bos)
        width = max(len(ids) for ids, _ in located)
        device = model.cfg.device
        tokens = torch.tensor(
            [ids + [pad_id(model.tokenizer)] * (width - len(ids)) for ids, _ in located], device=device
        )
        rows, cols, keys = torch.tensor(
            [
                (row, col, (row % len(task.templates)) * model.cfg.n_ctx + len(ids) - col)
                for row, (ids, name_pos) in enumerate(located)
                for col in range(name_pos + 1, len(ids))
            ],
            device=device,
        ).T
        return cls(EntityBatch(tokens, torch.tensor([pos for _, pos in located], device=device)), rows, cols, keys)

    def select(self, index: Int[torch.Tensor, " m"]) -> tuple[QuestionBatch, Bool[torch.Tensor, " n"]]:
        """The questions at `index` (in that order), and which of the question tokens they keep."""
        index = index.to(self.rows.device)
        kept = torch.isin(self.rows, index)
        renumber = torch.full((len(self.names.positions),), -1, device=index.device).index_copy(
            0, index, torch.arange(len(index), device=index.device)
        )
        names = EntityBatch(self.names.tokens[index], self.names.positions[index])
        return QuestionBatch(names, renumber[self.rows[kept]], self.cols[kept], self.keys[kept]), kept

    def token_mask(self) -> Bool[torch.Tensor, "batch pos"]:
        """True at every question token after the name."""
        mask = torch.zeros_like(self.names.tokens, dtype=torch.bool)
        mask[self.rows, self.cols] = True
        return mask


class SAEGuided(Method):
    name = "sae_guided"
    config_class = SAEGuidedConfig
    done_reason = "flipped"
    config: SAEGuidedConfig

    def setup(self, model: HookedTransformer) -> None:
        task, cfg = self.task, self.config
        self.hook_name = sae_hook_name(self.sae)
        self.subset = task.recognizer.selected_latents if cfg.latents == "selected" else None
        self.gap = task.recognizer.centroid_gap
        rng = random.Random(cfg.seed)
        retain = _retain_sample(task, cfg.n_retain_entities * cfg.retain_pool, rng)
        self.target_names = [e.name for e in task.targets for _ in task.templates]
        self.questions = QuestionBatch.build(model, task, task.targets)
        self.retain_batch, _ = task.entity_batch(model, retain, cfg.retain_templates_per_entity, cfg.seed)
        self.n_target_rows = len(self.questions.names.positions)
        # every (target, template) row is read once per cycle of `n_turns` steps; `flipped` keeps its last reading
        self.n_turns = min(math.ceil(self.n_target_rows / cfg.target_rows), len(task.templates))
        self.turn, self.order = 0, torch.empty(0, dtype=torch.long, device=model.cfg.device)
        self.flipped = torch.zeros(self.n_target_rows, dtype=torch.bool, device=model.cfg.device)
        self.use_context = cfg.context and bool(task.unknown)
        if cfg.context and not task.unknown:
            warnings.warn("ForgetTask.unknown is empty: sae_guided runs without its context term.", stacklevel=2)
        lines = task.retain_lines(retain, cfg.n_retain_text * cfg.retain_pool, rng)
        self.lm_tokens, self.lm_mask = encode_lines(
            model.tokenizer, lines, model.cfg.n_ctx, task.prepend_bos, device=model.cfg.device
        )
        # each step draws afresh (see `_retain_draw`) n_retain_entities people's rows and 2·n_retain_text lines
        self.n_retain_rows = min(
            len(self.retain_batch.positions), cfg.n_retain_entities * cfg.retain_templates_per_entity
        )
        self.n_lm_rows = min(len(self.lm_tokens), 2 * cfg.n_retain_text)
        self.generator = torch.Generator().manual_seed(cfg.seed)
        sharers = [e for e in retain[: cfg.hold_questions] if shares_a_name_word(e, task.targets)]
        self.held = self._held_pool(model, sharers) if sharers else None
        self.neighbours = self._neighbour_pool(model, rng) if cfg.lambda_neighbours > 0 else None
        with torch.no_grad():
            self.retain_latents = self.sae.encode(self.retain_batch.read(model, self.hook_name))
            if self.held is not None:
                self.held_latents = self._question_latents(model, self.held)
            if cfg.retain_readout == "logits":
                self.ref_logprobs = model(self.lm_tokens, return_type="logits").log_softmax(-1)
            else:
                self.window_end = max(edited_layers(cfg, self.hook_name, model.cfg.n_layers)) + 1
                self.ref_states = model(self.lm_tokens, stop_at_layer=self.window_end)
                self.state_variance = self.ref_states[self.lm_mask].var(0).clamp(min=1e-12)
            if self.use_context:
                self._setup_context(model, rng)
            self.use_resid = cfg.lambda_resid > 0
            if self.use_resid:
                self._setup_resid(model, rng)

    def _setup_resid(self, model: HookedTransformer, rng: random.Random) -> None:
        """X_U, r_U and the scale ‖X_U − X_K‖² per training template, for L_resid (see the module docstring)."""
        task, n = self.task, self.config.n_resid_reference
        if not task.unknown:
            raise ValueError("lambda_resid > 0 needs ForgetTask.unknown (the strangers whose residuals it aims at).")
        unknown = self._name_residuals(model, rng.sample(task.unknown, min(n, len(task.unknown))))
        known = self._name_residuals(model, rng.sample(task.retain, min(n, len(task.retain))))
        self.x_unknown = unknown.mean(0)
        self.r_unknown = (unknown - self.x_unknown).square().sum(-1).mean(0)
        self.resid_gap = (self.x_unknown - known.mean(0)).square().sum(-1)

    def _name_residuals(
        self, model: HookedTransformer, people: list[Entity]
    ) -> Float[torch.Tensor, "people templates d_model"]:
        """The hook's residual at the name's last token of each of `people` in each training template."""
        resid = QuestionBatch.build(model, self.task, people).names.read(model, self.hook_name)
        return resid.reshape(len(people), len(self.task.templates), -1)

    def _neighbour_pool(self, model: HookedTransformer, rng: random.Random) -> _Neighbours | None:
        """L_nbr's made-up names, their states where they were and the scale (see the module docstring); None
        when no target has a name of two or more words with strangers to make."""
        task, cfg = self.task, self.config
        people = made_up_neighbours(model, self.sae, task, cfg.n_neighbours, rng)
        if not people:
            warnings.warn(
                "lambda_neighbours > 0 but no made-up neighbour was found (every target's name has one word, or "
                "each made-up name reads as known): sae_guided runs without L_nbr.",
                stacklevel=2,
            )
            return None
        hook = f"blocks.{min(cfg.layers) if cfg.layers else 0}.hook_resid_post"
        batch, _ = task.entity_batch(model, people, cfg.retain_templates_per_entity, cfg.seed)
        strangers = rng.sample(task.unknown, min(cfg.n_reference, len(task.unknown)))
        with torch.no_grad():
            targets = task.entity_batch(model, task.targets)[0].read(model, hook)
            unknown = task.entity_batch(model, strangers)[0].read(model, hook).mean(0) if strangers else 0.0
            scale = (targets - unknown).square().sum(-1).mean()
            return _Neighbours(hook, batch, batch.read(model, hook), scale, people)

    def _neighbour_drift(self, model: HookedTransformer) -> Float[torch.Tensor, ""]:
        """L_nbr on a fresh draw of `neighbour_rows` of the made-up names' rows."""
        nbr = self.neighbours
        draw = torch.randperm(len(nbr.reference), generator=self.generator)[: self.config.neighbour_rows]
        draw = draw.to(nbr.reference.device)
        drift = nbr.batch.rows(draw).read(model, nbr.hook) - nbr.reference[draw]
        return drift.square().sum(-1).mean() / nbr.scale

    def _setup_context(self, model: HookedTransformer, rng: random.Random) -> None:
        """Q_U and Q_K per target question token, and hooks confining the context term to the name tokens."""
        task, n = self.task, self.config.n_reference
        keys, q_unknown = self._question_means(model, rng.sample(task.unknown, min(n, len(task.unknown))))
        known_keys, q_known = self._question_means(model, rng.sample(task.retain, min(n, len(task.retain))))
        if not torch.equal(keys, known_keys):
            raise ValueError("Unknown and known people's questions do not line up token by token.")
        slot = torch.searchsorted(keys, self.questions.keys.contiguous())
        self.q_unknown, self.q_known = q_unknown[slot], q_known[slot]
        self.question_gap = _per_row(self.questions.rows, (self.q_unknown - self.q_known).square().sum(-1))
        # the context term may change the MLPs only through the name's tokens, not the shared question words
        self.detach_at = [
            f"blocks.{layer}.hook_mlp_out" for layer in range(stop_layer(self.hook_name) or model.cfg.n_layers)
        ]

    def _held_pool(self, model: HookedTransformer, people: list[Entity]) -> QuestionBatch:
        """A seeded draw of `hold_question_rows × retain_pool` of `people`'s questions (all of them if fewer),
        which L_act's question-token part draws from each step, as the other retain terms do from theirs."""
        questions = QuestionBatch.build(model, self.task, people)
        n_pool = self.config.hold_question_rows * self.config.retain_pool
        pool = torch.randperm(len(questions.names.positions), generator=self.generator)[:n_pool]
        return questions.select(pool.sort().values)[0]

    def _question_means(
        self, model: HookedTransformer, people: list[Entity]
    ) -> tuple[Int[torch.Tensor, " k"], Float[torch.Tensor, "k d_sae"]]:
        """Mean latents per (template, question token) over `people`'s questions, and those keys."""
        batch = QuestionBatch.build(model, self.task, people)
        latents = self._question_latents(model, batch)
        keys, slot = batch.keys.unique(return_inverse=True)
        sums = torch.zeros(len(keys), latents.shape[1], device=latents.device).index_add_(0, slot, latents)
        return keys, sums / torch.bincount(slot)[:, None]

    def step(self, model: HookedTransformer) -> StepOutput:
        cfg, recognizer = self.config, self.task.recognizer
        target_rows = self._target_draw()
        retain_rows, lm_rows = self._retain_draw()
        questions, kept = self.questions.select(target_rows)
        detach = _detached_at(questions.token_mask())
        with model.hooks(fwd_hooks=[(name, detach) for name in self.detach_at] if self.use_context else []):
            acts = forward_to_hook(model, questions.names.tokens, self.hook_name)
        resid = acts[torch.arange(len(target_rows), device=acts.device), questions.names.positions]
        latents = self.sae.encode(resid)
        retain_latents = self.sae.encode(self.retain_batch.rows(retain_rows).read(model, self.hook_name))
        dist_unknown, dist_known = recognizer.distances(latents, self.subset)
        p_known = recognizer.sae_probe.predict_proba(latents.detach())
        p_known_resid = recognizer.resid_probe.predict_proba(resid.detach())
        read_known = (p_known >= 0.5) | (p_known_resid >= 0.5)
        if cfg.objective == "margin":
            loss_forget = _hinge(dist_unknown, dist_known, cfg.name_margin, keep_pulling=read_known)
        else:
            loss_forget = (dist_unknown - cfg.beta * dist_known.clamp(max=cfg.margin)).mean()
        loss_act = (retain_latents - self.retain_latents[retain_rows]).square().sum(-1).mean() / self.gap
        if self.held is not None:
            loss_act = loss_act + self._held_question_drift(model)
        loss_lm = self._retain_drift(model, lm_rows)
        loss = loss_forget + cfg.lambda_act * loss_act + cfg.lambda_lm * loss_lm
        terms = {"loss_forget": loss_forget.item(), "loss_act": loss_act.item(), "loss_lm": loss_lm.item()}
        if self.neighbours is not None:
            loss_neighbours = self._neighbour_drift(model)
            loss = loss + cfg.lambda_neighbours * loss_neighbours
            terms["loss_neighbours"] = loss_neighbours.item()
        names = [self.target_names[row] for row in target_rows]
        per_target = latent_readings(recognizer, latents, resid, names)
        with torch.no_grad():
            flipped = ~read_known & (dist_unknown < dist_known)
        if self.use_context:
            q_latents = self.sae.encode(acts[questions.rows, questions.cols])
            q_dist_unknown, q_dist_known = self._question_distances(q_latents, questions.rows, kept, target_rows)
            loss_context = _hinge(q_dist_unknown, q_dist_known, cfg.question_margin)
            loss = loss + loss_context
            terms["loss_context"] = loss_context.item()
            with torch.no_grad():
                question_flipped = q_dist_unknown < q_dist_known
            per_target["question_flipped"] = (
                pd.Series(question_flipped.float().cpu().numpy()).groupby(names, sort=False).mean().to_numpy()
            )
            flipped &= question_flipped
        if self.use_resid:
            template = target_rows % len(self.task.templates)
            excess = ((resid - self.x_unknown[template]).square().sum(-1) - self.r_unknown[template]).clamp(min=0)
            excess = excess / self.resid_gap[template]
            loss_resid = excess.sum() / (excess.detach() > 0).sum().clamp(min=1)
            loss = loss + cfg.lambda_resid * loss_resid
            terms["loss_resid"] = loss_resid.item()
            flipped &= excess.detach() == 0
        self.flipped[target_rows] = flipped
        return StepOutput(
            loss=loss,
            terms=terms | ({"retain_kl": loss_lm.item()} if cfg.retain_readout == "logits" else {}),
            per_target=per_target,
            done=bool(self.flipped.all()),
        )

    def _retain_drift(self, model: HookedTransformer, rows: Int[torch.Tensor, " n"]) -> Float[torch.Tensor, ""]:
        """L_lm on the retain lines at `rows`: the KL of the output, or the standardized drift of the residual
        after the last edited block."""
        tokens, mask = self.lm_tokens[rows], self.lm_mask[rows]
        if self.config.retain_readout == "logits":
            return kl_to_reference(model(tokens, return_type="logits"), self.ref_logprobs[rows], mask)
        states = model(tokens, stop_at_layer=self.window_end)
        return standardized_drift(states, self.ref_states[rows], mask, self.state_variance)

    def _question_latents(self, model: HookedTransformer, batch: QuestionBatch) -> Float[torch.Tensor, "n d_sae"]:
        """SAE latents at every question token after the name."""
        return self.sae.encode(forward_to_hook(model, batch.names.tokens, self.hook_name)[batch.rows, batch.cols])

    def _held_question_drift(self, model: HookedTransformer) -> Float[torch.Tensor, ""]:
        """L_act's question-token part: mean ‖q_r(θ) − q_r(θ₀)‖² / ‖μ_U − μ_K‖² over the question tokens of a
        fresh draw of `hold_question_rows` of the held people's questions (what their answers are read from)."""
        draw = torch.randperm(len(self.held.names.positions), generator=self.generator)
        questions, kept = self.held.select(draw[: self.config.hold_question_rows].sort().values.to(self.gap.device))
        drift = self._question_latents(model, questions) - self.held_latents[kept]
        return drift.square().sum(-1).mean() / self.gap

    def _target_draw(self) -> Int[torch.Tensor, " n"]:
        """This step's (target, template) rows, target by target: every row, or with more than `target_rows`
        of them, the next share of a per-cycle shuffle of each target's templates (seeded)."""
        n_targets, n_templates = len(self.task.targets), len(self.task.templates)
        if self.turn == 0:
            self.order = (
                torch.rand(n_targets, n_templates, generator=self.generator).argsort(-1).to(self.flipped.device)
            )
        share = math.ceil(n_templates / self.n_turns)
        templates = self.order[:, self.turn * share : (self.turn + 1) * share]
        self.turn = (self.turn + 1) % self.n_turns
        rows = torch.arange(n_targets, device=templates.device)[:, None] * n_templates + templates
        return rows.flatten().sort().values

    def _retain_draw(self) -> tuple[Int[torch.Tensor, " n_retain"], Int[torch.Tensor, " n_lines"]]:
        """This step's retain entity rows and retain lines: a fresh random share of the pool (seeded)."""
        device = self.lm_tokens.device
        retain_rows = torch.randperm(len(self.retain_latents), generator=self.generator)[: self.n_retain_rows]
        lm_rows = torch.randperm(len(self.lm_tokens), generator=self.generator)[: self.n_lm_rows]
        return retain_rows.to(device), lm_rows.to(device)

    def _question_distances(
        self,
        q: Float[torch.Tensor, "n d_sae"],
        rows: Int[torch.Tensor, " n"],
        kept: Bool[torch.Tensor, " n_all"],
        target_rows: Int[torch.Tensor, " m"],
    ) -> tuple[Float[torch.Tensor, " m"], Float[torch.Tensor, " m"]]:
        """Per drawn question: `(d_τ(q, Q_U), d_τ(q, Q_K))` over its tokens after the name (`rows` number them,
        `kept` picks their references)."""
        gap = self.question_gap[target_rows]
        return (
            _per_row(rows, (q - self.q_unknown[kept]).square().sum(-1)) / gap,
            _per_row(rows, (q - self.q_known[kept]).square().sum(-1)) / gap,
        )


@dataclass
class _Neighbours:
    """L_nbr's made-up names: their (name, template) rows, each row's residual at `hook` at the name's last
    token on the original weights, and the scale (see the module docstring)."""

    hook: str
    batch: EntityBatch
    reference: Float[torch.Tensor, "n d_model"]
    scale: Float[torch.Tensor, ""]
    people: list[Entity]


def _hinge(
    dist_unknown: torch.Tensor, dist_known: torch.Tensor, margin: float, keep_pulling: torch.Tensor | None = None
) -> Float[torch.Tensor, ""]:
    """mean max(0, d_U − d_K + δ): only rows not yet `margin` closer to the unknown centroid pull.

    Rows in `keep_pulling` (those a probe still reads as known) that are past the margin pull on
    toward the unknown centroid (d_U), so no row sits without gradient while the stop rule waits on its probe.
    """
    gap = dist_unknown - dist_known + margin
    per_row = gap.clamp(min=0)
    if keep_pulling is not None:
        per_row = per_row + torch.where(keep_pulling & (gap <= 0), dist_unknown, torch.zeros_like(dist_unknown))
    return per_row.sum() / (per_row.detach() > 0).sum().clamp(min=1)


def _per_row(rows: Int[torch.Tensor, " n"], values: Float[torch.Tensor, " n"]) -> Float[torch.Tensor, " rows"]:
    """Sum of `values` per row index."""
    return torch.zeros(int(rows.max()) + 1, device=values.device).index_add(0, rows, values)


def _detached_at(mask: torch.Tensor):
    """A hook that keeps an activation's value but cuts its gradient where `mask` [batch, pos] is set."""

    def hook(activation: torch.Tensor, hook) -> torch.Tensor:
        return torch.where(mask[..., None], activation.detach(), activation)

    return hook


def shares_a_name_word(entity: Entity, targets: list[Entity]) -> bool:
    """Whether `entity`'s name has a word in common with a target's name (its nearest neighbours)."""
    return bool({word for target in targets for word in target.name.split()} & set(entity.name.split()))


def swapped_word_names(task: ForgetTask) -> list[list[str]]:
    """Per target of two or more words and per word of its name, the names one word away: every other word
    kept, that one swapped for the same word of another name of as many words among the task's retain and
    unknown people; none a name of the task, sorted. The names a target's edit reaches most easily."""
    taken = {e.name for e in [*task.targets, *task.retain, *task.unknown]}
    others = [e.name.split() for e in [*task.retain, *task.unknown]]
    pools = []
    for target in task.targets:
        words = target.name.split()
        if len(words) < 2:
            continue
        for i in range(len(words)):
            swapped = {" ".join(words[:i] + [o[i]] + words[i + 1 :]) for o in others if len(o) == len(words)}
            pools.append(sorted(swapped - taken))
    return pools


def known_neighbours(model: HookedTransformer, sae: SAE, task: ForgetTask) -> list[str]:
    """The names one word away from a target's (`swapped_word_names`) that both probes of the task's
    recognizer read as known (p ≥ 0.5): people outside the task whom the model knows and who share a word
    of a target's name, found by asking the model rather than a list. An edit of the target's name reaches
    them first, and no retain set names them."""
    names = sorted({name for pool in swapped_word_names(task) for name in pool})
    if not names:
        return []
    read = task.recognizer.p_known(model, sae, names, task.templates)
    return list(read.loc[(read["p_known_sae"] >= 0.5) & (read["p_known_resid"] >= 0.5), "entity"])


def made_up_neighbours(
    model: HookedTransformer, sae: SAE, task: ForgetTask, n: int, rng: random.Random
) -> list[Entity]:
    """Up to `n` made-up names per target among `swapped_word_names`, `n` split evenly over the words kept,
    only those both probes of the task's recognizer read as strangers (p < 0.5).

    Each word's candidates are read in a seeded order, twice as many as are still missing at a time, so a
    target costs about `2 n` probe readings however many names the task holds."""
    pools = swapped_word_names(task)
    for pool in pools:
        rng.shuffle(pool)
    if not pools:
        return []
    per_pool = max(1, n // max(1, len(pools) // len(task.targets)))
    picked: list[list[str]] = [[] for _ in pools]
    cursor = [0] * len(pools)
    stranger: dict[str, bool] = {}  # name -> both probes read it as a stranger
    while True:
        chunks = []
        for k, pool in enumerate(pools):
            chunks.append(pool[cursor[k] : cursor[k] + 2 * (per_pool - len(picked[k]))])
            cursor[k] += len(chunks[-1])
        if not any(chunks):
            break
        fresh = sorted({name for chunk in chunks for name in chunk} - stranger.keys())
        if fresh:
            read = task.recognizer.p_known(model, sae, fresh, task.templates)
            is_stranger = (read["p_known_sae"] < 0.5) & (read["p_known_resid"] < 0.5)
            stranger.update(zip(read["entity"], is_stranger, strict=True))
        for chunk, mine in zip(chunks, picked, strict=True):
            mine += [name for name in chunk if stranger[name]][: per_pool - len(mine)]
    return [Entity(name) for name in dict.fromkeys(name for mine in picked for name in mine)]


def _retain_sample(task: ForgetTask, n: int, rng: random.Random) -> list[Entity]:
    """`n` retain entities: those sharing a name word with a target first (an edit of the target's name
    tokens reaches them most easily), then others at random."""
    near, far = [], []
    for entity in task.retain:
        (near if shares_a_name_word(entity, task.targets) else far).append(entity)
    rng.shuffle(near)
    return near[:n] + rng.sample(far, max(0, min(n - len(near), len(far))))
