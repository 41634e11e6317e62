"""Where Gemma 3 270M reads a famous person's facts, and whether the shipped SAE's latents can carry them.

    PYTHONPATH=. .venv/bin/python analysis/locate_gemma.py     # ~15 min on a 2-core CPU, one torch thread

Tuning people only: 3 known people of the people bench drawn with seed 100 (`TUNING_SEED`; no evaluation
draw may use it), asked the 2-shot nationality and occupation questions of both phrasing splits, each
answer scored by the log-probability of the model's own first answer token. Strangers: 20 of the bench's
unknown (obscure real) people, seeded. Runs `irunlearn.depth.locate` (the residual at each name token and at
the question tokens, every layer, replaced by the strangers' mean) and `sae_split` at the shipped SAE's
hook (reconstruction vs error, and the activation-level upper bound: latents set to μ_U, error kept).
Writes analysis/results/locate_gemma.{json,md,html}.
"""

from __future__ import annotations

import json
import random
import time
from pathlib import Path

import torch
from tables import markdown

from irunlearn.depth import locate, locate_figure, sae_split, suggest_window
from irunlearn.entities import Entity
from irunlearn.models import load_model, load_sae
from irunlearn.real.people import people_bench
from irunlearn.real.sae import GEMMA3_SAE
from irunlearn.real.wikidata import question_templates

RESULTS = Path(__file__).resolve().parent / "results"
TUNING_SEED = 100
N_TUNING = 3
N_STRANGERS = 20


def own_answers(person: Entity, answers) -> Entity:
    """`person` with the model's own answers (right by the bench's judge) as the gold values."""
    row = answers.set_index("name").loc[person.name]
    return Entity(person.name, {a: row[f"{a}_answer"] for a in person.attributes}, person.kind)


def tuning_people(bench, n: int = N_TUNING, seed: int = TUNING_SEED) -> list[Entity]:
    """`n` known people drawn with `seed`, valued by the model's own answers."""
    return [own_answers(p, bench.answers) for p in random.Random(seed).sample(bench.entities.known, n)]


def main() -> None:
    torch.set_num_threads(1)
    start = time.perf_counter()
    model = load_model("gemma3-270m")
    sae = load_sae(path=GEMMA3_SAE)
    bench = people_bench(model, progress=False)
    people = tuning_people(bench)
    strangers = random.Random(TUNING_SEED).sample(bench.entities.unknown, N_STRANGERS)
    templates = question_templates("person")
    kwargs = {"prepend_bos": bool(model.cfg.default_prepend_bos), "answer_eos": False}
    split = sae_split(model, sae, people, templates, strangers, **kwargs)
    print(split.round(3).to_string(), flush=True)
    heat = locate(model, people, templates, strangers, first_token=True, **kwargs)
    window = suggest_window(heat)
    record = {
        "people": [p.name for p in people],
        "answers": {p.name: p.attributes for p in people},
        "tuning_seed": TUNING_SEED,
        "strangers": [s.name for s in strangers],
        "sae_hook": sae.cfg.metadata.hook_name,
        "suggested_window": window,
        "heat": heat.to_dict(orient="records"),
        "sae_split": split.to_dict(orient="records"),
        "seconds": round(time.perf_counter() - start, 1),
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "locate_gemma.json").write_text(json.dumps(record, indent=1))
    grid = heat.pivot(index="layer", columns="position", values="logprob_drop")
    grid = grid[list(dict.fromkeys(heat["position"]))].round(2).reset_index()
    text = [
        "# locate on Gemma 3 270M (analysis/locate_gemma.py)",
        "",
        f"Tuning people (seed {TUNING_SEED}): {', '.join(record['people'])}; {N_STRANGERS} strangers; "
        f"{len(templates)} questions each; gold = the model's own first answer token; {record['seconds']} s.",
        "",
        "Drop of the gold first-token log-probability when the residual (hook_resid_post) at a position is",
        "replaced by the strangers' mean there:",
        "",
        markdown(grid),
        "",
        f"Suggested window (name-token drop ≥ half its largest): blocks {window[0]}–{window[1]}.",
        "",
        f"At the SAE's hook ({record['sae_hook']}): `kept` = fraction of greedy first answer tokens kept.",
        "",
        markdown(split.round(3)),
        "",
    ]
    (RESULTS / "locate_gemma.md").write_text("\n".join(text))
    locate_figure(heat, "Gemma 3 270M: where the answers are read from (3 tuning people)").write_html(
        RESULTS / "locate_gemma.html", include_plotlyjs="cdn"
    )
    print("\n".join(text))


if __name__ == "__main__":
    main()
