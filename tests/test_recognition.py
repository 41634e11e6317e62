"""Recognition on the embedded world: separation scores, probes, and the acceptance figures."""

import json

import pytest
import torch

from irunlearn.cli import main
from irunlearn.entities import EntitySet
from irunlearn.probes import LinearProbe, auroc
from irunlearn.recognition import Recognizer, fit_recognizer, separation_scores


def test_separation_scores_by_hand():
    latents = torch.tensor([[1.0, 0.0, 2.0], [1.0, 0.0, 0.0], [0.0, 3.0, 0.0], [0.0, 1.0, 1.0]])
    labels = torch.tensor([1, 1, 0, 0])
    scores = separation_scores(latents, labels)
    assert scores["freq_known"].tolist() == [1.0, 0.0, 0.5]
    assert scores["s_known"].tolist() == [1.0, -1.0, 0.0]
    assert scores["s_unknown"].tolist() == [-1.0, 1.0, 0.0]
    with pytest.raises(ValueError, match="both known"):
        separation_scores(latents, torch.ones(4, dtype=torch.long))


def test_auroc_and_calibrated_probe():
    assert auroc(torch.tensor([0.9, 0.8, 0.1, 0.2]), torch.tensor([1, 1, 0, 0])) == 1.0
    assert auroc(torch.tensor([0.5, 0.5]), torch.tensor([1, 0])) == 0.5
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(400, 5, generator=gen)
    y = (x[:, 0] + 0.3 * torch.randn(400, generator=gen) > 0).long()
    probe = LinearProbe.fit(x[:300], y[:300], x[300:], y[300:])
    p = probe.predict_proba(x[300:])
    assert auroc(p, y[300:]) > 0.9
    assert ((p > 0.5).long() == y[300:]).float().mean() > 0.85


def test_probe_leaves_out_rare_features_and_refuses_to_invert():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(200, 3, generator=gen)
    y = (x[:, 0] > 0).long()
    x[:, 2] = 0.0
    x[0, 2] = 5.0  # fires once, on a known row: standardised it would be a √n-sized memoriser
    probe = LinearProbe.fit(x, y, min_support=2)
    assert probe.std[2] == float("inf") and probe.weight[2] == 0 and torch.isfinite(probe.logit(x)).all()
    assert LinearProbe.fit(x, y).weight[2] != 0  # without the floor it enters
    # calibration rows on which the probe ranks backwards: no signal, every reading the base rate
    backwards = probe.calibrated(x[:100], 1 - y[:100])
    assert not backwards.signal and probe.calibrated(x[:100], y[:100]).signal
    assert torch.allclose(backwards.predict_proba(x), (1 - y[:100]).float().mean().expand(len(x)))


def test_a_recognizer_without_signal_warns(ew):
    from irunlearn.recognition import NoProbeSignalWarning

    people = ew.world.known[:40]
    shuffled = EntitySet(people[::2], people[1::2])  # "known" and "unknown" both known: nothing to tell apart
    with pytest.warns(NoProbeSignalWarning):
        for seed in range(4):  # on some split, calibration ranks one probe backwards
            fit_recognizer(ew.model, ew.sae, shuffled, ew.world.templates[:2], ew.world.templates[2:4], seed=seed,
                           progress=False)  # fmt: skip


def test_the_world_ships_the_recognizer_a_fresh_fit_gives(ew, recognizer):
    from irunlearn.bench import EntityBench
    from irunlearn.world.build import refit_recognizer

    assert recognizer is ew.recognizer  # recognize_world returns the shipped one for its own weights
    fresh = refit_recognizer(ew, progress=False)
    assert fresh is not ew.recognizer and fresh.fit_for == ew.recognizer.fit_for
    # The residual probe's L-BFGS fit is ill-conditioned: last-bit differences in the activations (another
    # BLAS, another library build) move its weights by ~1e-4 of their scale. A changed probe moves them by O(1).
    for probe in ("sae_probe", "resid_probe"):
        for key, value in getattr(fresh, probe).state_dict().items():
            shipped = getattr(ew.recognizer, probe).state_dict()[key]
            scale = shipped[shipped.isfinite()].abs().max().clamp_min(1e-6)
            assert torch.allclose(value, shipped, rtol=0, atol=1e-3 * scale.item()), (probe, key)
    assert fresh.metrics == pytest.approx(ew.recognizer.metrics, abs=1e-4)
    bench = EntityBench.from_world(ew)
    assert bench.recognizer(ew.model, ew.sae, progress=False) is ew.recognizer
    assert not ew.recognizer.fits(ew.model, ew.sae, seed=1)  # another seed is fit anew
    from irunlearn.recognition import inputs_digest

    world, bos = ew.world, ew.model.cfg.default_prepend_bos
    train, heldout = world.question_templates("train"), world.question_templates("heldout")
    fewer = EntitySet(world.known[:100], world.unknown_eval)  # other populations: fit anew
    assert ew.recognizer.fits(
        ew.model, ew.sae, inputs=inputs_digest(bench.entities, train, heldout, world.generic_train, bos)
    )
    assert not ew.recognizer.fits(
        ew.model, ew.sae, inputs=inputs_digest(fewer, train, heldout, world.generic_train, bos)
    )
    assert not ew.recognizer.fits(ew.model, ew.sae, inputs=inputs_digest(bench.entities, train, train, [], bos))


def test_recognition_meets_acceptance(recognizer):
    metrics = recognizer.metrics
    assert metrics["top_known_score"] >= 0.4
    assert metrics["top_unknown_score"] >= 0.8
    assert metrics["probe_auroc_sae"] >= 0.95
    assert metrics["probe_auroc_resid"] >= 0.95


def test_p_known_separates_known_from_unknown(ew, recognizer):
    known = [e.name for e in ew.world.known[-10:]]
    unknown = [e.name for e in ew.world.unknown_eval[-10:]]
    readings = recognizer.p_known(ew.model, ew.sae, known + unknown).set_index("entity")
    assert (readings.loc[known, "p_known_sae"] > 0.5).mean() >= 0.8
    assert (readings.loc[unknown, "p_known_sae"] < 0.5).mean() >= 0.8
    assert (readings.loc[unknown, "dist_to_unknown"] < readings.loc[unknown, "dist_to_known"]).mean() >= 0.8
    assert (readings["dist_ratio"] == readings["dist_to_unknown"] / readings["dist_to_known"]).all()


def test_save_load_round_trip(ew, recognizer, tmp_path):
    recognizer.save(tmp_path / "rec")
    loaded = Recognizer.load(tmp_path / "rec")
    names = [ew.world.known[0].name, ew.world.unknown_eval[0].name]
    before = recognizer.p_known(ew.model, ew.sae, names)
    after = loaded.p_known(ew.model, ew.sae, names)
    assert before.equals(after)
    assert loaded.top_latents("unknown")["latent"].tolist() == recognizer.top_latents("unknown")["latent"].tolist()
    with pytest.raises(FileExistsError, match="overwrite"):
        recognizer.save(tmp_path / "rec")
    recognizer.save(tmp_path / "rec", overwrite=True)


def test_empty_entity_set_is_an_error(ew):
    with pytest.raises(ValueError, match="needs known and unknown"):
        fit_recognizer(
            ew.model,
            ew.sae,
            EntitySet(ew.world.known[:5], []),
            ew.world.templates[:2],
            ew.world.templates[:2],
            progress=False,
        )


@pytest.mark.slow
def test_recognize_cli_json(capsys):
    assert main(["recognize", "--json", "--quiet"]) == 0
    out = json.loads(capsys.readouterr().out)
    for key in (
        "top_known_latents",
        "top_unknown_latents",
        "top_known_score",
        "top_unknown_score",
        "probe_auroc_sae",
        "probe_auroc_resid",
        "extract_tokens_per_s",
    ):
        assert key in out
    assert out["top_unknown_latents"][0]["score"] == out["top_unknown_score"]
