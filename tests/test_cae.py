"""The Controlled AutoEncoder method (Liang et al., Algorithm 1): the pairing of proposals with
speakers of other identities, the wiring of each generator loss term, training through
``voice2face train`` with the real config, reloading, and ``voice2face generate`` with and
without a proposal face."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image
from torch.utils.data import DataLoader

from datamodules import VoiceFaceDataModule
from helpers import (Repeat, changed_parameters, fixed_batch, one_identity, parameters_of,
                     quick_config, speechlike, train_quick)
from voice2face.generate import main as generate_main
from voice2face.losses import identity_loss
from voice2face.methods import METHODS, Voices, load_method
from voice2face.methods.base import CheckpointError, data_info, proposal_faces
from voice2face.methods.cae import (PAIRED_TERMS, TERMS, CaeModule, other_identity_pairing,
                                   training_pairing)


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny nets: a second OpenMP thread only waits on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# --- the pairing ---------------------------------------------------------------------------

def seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("identity", [
    list(range(8)),                      # distinct identities
    [0, 0, 1, 1, 2, 2, 3, 3],            # pairs
    [5, 5, 5, 5, 1, 2, 3, 4],            # the largest identity holds exactly half
    [7, 7, 7, 3, 3, 9, 9, 9, 9, 2],      # mixed repeats
])
def test_pairing_is_a_permutation_onto_other_identities(identity):
    ids = torch.tensor(identity)
    for seed in range(20):
        partner = other_identity_pairing(ids, seeded(seed))
        assert sorted(partner.tolist()) == list(range(len(ids)))  # every sample is B once
        assert (ids[partner] != ids).all()  # never the proposal's own identity


def test_pairing_is_deterministic_under_a_seed_and_varies_with_it():
    ids = torch.tensor([0, 1, 2, 3, 4, 5, 0, 1, 2, 3])
    a = other_identity_pairing(ids, seeded(3))
    assert torch.equal(a, other_identity_pairing(ids, seeded(3)))
    draws = {tuple(other_identity_pairing(ids, seeded(s)).tolist()) for s in range(10)}
    assert len(draws) > 5  # not one fixed pairing


def test_pairing_of_distinct_identities_is_one_cycle():
    """With no repeats the shift by one of a random order: a single cycle through the batch."""
    partner = other_identity_pairing(torch.arange(7), seeded(0)).tolist()
    seen, i = set(), 0
    while i not in seen:
        seen.add(i)
        i = partner[i]
    assert len(seen) == 7


def test_pairing_when_one_identity_holds_more_than_half():
    """No permutation exists; still every sample gets a partner of another identity."""
    ids = torch.tensor([4, 4, 4, 4, 4, 1, 2])
    for seed in range(20):
        partner = other_identity_pairing(ids, seeded(seed))
        assert (ids[partner] != ids).all()


def test_pairing_needs_two_identities():
    with pytest.raises(ValueError, match="at least two identities"):
        other_identity_pairing(torch.tensor([3, 3, 3]), seeded(0))
    with pytest.raises(ValueError, match="at least two identities"):
        other_identity_pairing(torch.tensor([3]), seeded(0))


def test_training_pairing_falls_back_to_the_batch_itself_for_one_identity():
    """Two identities or more: ``other_identity_pairing``; one: a seeded permutation of the
    batch, flagged unpaired, so that the batch still trains (under DDP, every rank steps)."""
    ids = torch.tensor([0, 1, 1, 2, 0, 3])
    partner, paired = training_pairing(ids, seeded(4))
    assert paired and torch.equal(partner, other_identity_pairing(ids, seeded(4)))
    one = torch.tensor([5] * 6)
    partner, paired = training_pairing(one, seeded(4))
    assert not paired and sorted(partner.tolist()) == list(range(6))
    assert torch.equal(partner, training_pairing(one, seeded(4))[0])
    assert training_pairing(torch.tensor([5]), seeded(0)) == (torch.tensor([0]), False)


def test_a_profile_never_overrides_the_ablation_s_conditioning():
    from voice2face.config import load_config
    for profile in ("cpu", "paper"):
        ablation = load_config("cae-concat", [f"profile={profile}"])
        assert ablation.model.gating == "concat" and ablation.model.width == load_config(
            "cae", [f"profile={profile}"]).model.width  # the same scaffold otherwise


# --- the module ----------------------------------------------------------------------------

def make_cae(world, tmp_path, *overrides) -> CaeModule:
    cfg = quick_config("cae", world, tmp_path, "model.width=0.25", "model.critic_width=0.25",
                       "eval.judge=null", "model.cache_voice=false", *overrides)
    dm = VoiceFaceDataModule(world, num_workers=0)
    return CaeModule(OmegaConf.to_container(cfg, resolve=True), data_info(dm))


def only(term: str) -> list[str]:
    return [f"model.weights.{t}={1.0 if t == term else 0.0}" for t in TERMS]


@pytest.mark.parametrize("term", TERMS)
def test_each_generator_term_is_wired(term, world, pretrained, tmp_path):
    """With every weight 0 but one, that term alone is computed, gives the generator a
    gradient, and a few generator steps on a fixed batch reduce it."""
    torch.manual_seed(0)
    # the feature term's face network: DIMNet's face embedder
    target = [f"model.target={pretrained / 'dimnet.ckpt'}"] if term == "feature" else []
    cae = make_cae(world, tmp_path, *only(term), *target)
    if term == "feature":
        assert not any(p.requires_grad for p in cae.target.parameters())
    batch = fixed_batch(world, n=6)
    partner = other_identity_pairing(batch["identity"], seeded(0))
    with torch.no_grad():
        emb = cae.voice(batch["mel"], batch["mel_lengths"])
    opt = torch.optim.Adam(cae.generator.parameters(), lr=1e-3)

    def terms():
        fake = cae.generator(batch["face"], emb[partner])
        return cae.generator_terms(fake, batch["face"], batch["face"][partner], emb,
                                   batch["label"][partner])

    first = terms()
    assert set(first) == {term}
    opt.zero_grad()
    first[term].backward()
    grad = sum(float(p.grad.abs().sum()) for p in cae.generator.parameters() if p.grad is not None)
    assert grad > 0
    opt.step()
    for _ in range(7):
        opt.zero_grad()
        terms()[term].backward()
        opt.step()
    # train mode both times: BatchNorm on the same fixed batch is deterministic
    with torch.no_grad():
        after = float(terms()[term])
    assert after < float(first[term].detach())


def test_weights_must_name_the_terms(world, pretrained, tmp_path):
    with pytest.raises(ValueError, match="not all 0"):
        make_cae(world, tmp_path, *[f"model.weights.{t}=0" for t in TERMS])
    with pytest.raises(ValueError, match=">= 0"):
        make_cae(world, tmp_path, "model.weights.cycle=-1")
    with pytest.raises(ValueError, match="model.target"):  # the feature term needs its net
        make_cae(world, tmp_path, "model.weights.feature=1", "model.target=null")
    with pytest.raises(CheckpointError, match="judge"):  # which is never the judge
        make_cae(world, tmp_path, "model.weights.feature=1",
                 f"model.target={pretrained / 'face.ckpt'}", f"eval.judge={pretrained / 'face.ckpt'}")


def test_training_steps_train_the_critic_and_keep_the_voice_frozen(world, pretrained, tmp_path):
    """Algorithm 1 through Lightning on a repeated batch: two optimizer steps per batch, the
    identity classifier learns real faces, the generator trains on the λ-weighted sum of the
    logged terms (the feature term's too), the voice net and the feature term's face network
    are untouched."""
    import lightning as L
    cae = make_cae(world, tmp_path, "optim.lr=1e-3", "model.weights.feature=3",
                   f"model.target={pretrained / 'dimnet.ckpt'}")
    batch = fixed_batch(world)
    voice_before = {k: v.clone() for k, v in cae.voice.state_dict().items()}
    target_before = {k: v.clone() for k, v in cae.target.state_dict().items()}
    generator_before = parameters_of(cae.generator)

    def classifier_loss():
        with torch.no_grad():
            return float(identity_loss(cae.critic(batch["face"])["identity"], batch["label"]))

    before = classifier_loss()
    trainer = L.Trainer(max_steps=2 * 15, accelerator="cpu", logger=False,
                        enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, limit_val_batches=0)
    trainer.fit(cae, DataLoader(Repeat(batch, 15), batch_size=None))
    assert trainer.global_step == 30
    assert classifier_loss() < 0.7 * before
    assert changed_parameters(cae.generator, generator_before) == set(generator_before)
    logged = {k: float(v) for k, v in trainer.logged_metrics.items()}
    assert len(set(cae.weights.values())) > 1  # unequal weights, so a dropped λ shows
    assert logged["train/loss_g"] == pytest.approx(
        sum(cae.weights[t] * logged[f"train/{t}"] for t in TERMS), rel=1e-5)
    for k, v in cae.voice.state_dict().items():
        assert torch.equal(v, voice_before[k]), k
    for k, v in cae.target.state_dict().items():  # BatchNorm's running statistics included
        assert torch.equal(v, target_before[k]), k
    assert not cae.voice.training and not cae.target.training


def fit_one_batch(cae: CaeModule, batch: dict):
    """Train ``cae`` on ``batch`` once (both optimizer steps); the trainer and the nets'
    parameters before it."""
    import lightning as L
    before = {name: [p.detach().clone() for p in getattr(cae, name).parameters()]
              for name in ("generator", "critic")}
    trainer = L.Trainer(max_steps=2, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False,
                        limit_val_batches=0)
    trainer.fit(cae, DataLoader(Repeat(batch, 1), batch_size=None))
    return trainer, before


def changed(net: torch.nn.Module, before: list[torch.Tensor]) -> bool:
    return any(not torch.equal(p, b) for p, b in zip(net.parameters(), before))


def test_a_batch_of_one_identity_trains_without_the_paired_terms(world, pretrained, tmp_path):
    """No pairing exists, yet both optimizer steps run (a skipped step hangs DDP): the critic
    as usual, the generator on the terms that need no other identity."""
    torch.manual_seed(0)
    cae = make_cae(world, tmp_path, "optim.lr=1e-3", "model.weights.feature=1",
                   f"model.target={pretrained / 'dimnet.ckpt'}")
    batch = one_identity(fixed_batch(world))
    with pytest.warns(UserWarning, match="one identity"):
        trainer, before = fit_one_batch(cae, batch)
    assert trainer.global_step == 2  # both optimizers stepped
    assert changed(cae.generator, before["generator"]) and changed(cae.critic, before["critic"])
    logged = set(trainer.logged_metrics)
    assert float(trainer.logged_metrics["train/paired"]) == 0.0
    assert {"train/proposal", "train/adversarial", "train/loss_d", "train/loss_c"} <= logged
    assert not {f"train/{t}" for t in PAIRED_TERMS} & logged  # masked: neither computed nor logged

    # the generator's loss is exactly λ1·proposal + λ4·adversarial on such a batch
    partner, paired = training_pairing(batch["identity"], seeded(0))
    with torch.no_grad():
        emb = cae.voice(batch["mel"], batch["mel_lengths"])
        fake = cae.generator(batch["face"], emb[partner])
    terms = cae.generator_terms(fake, batch["face"], batch["face"][partner], emb,
                                batch["label"][partner], paired)
    assert set(terms) == {"proposal", "adversarial"}
    assert set(cae.generator_terms(fake, batch["face"], batch["face"][partner], emb,
                                   batch["label"][partner])) == set(TERMS)  # paired: all six


def test_a_batch_of_one_identity_with_only_paired_terms_still_steps(world, pretrained, tmp_path):
    """With the weights on masked terms only, the generator's loss is a zero that reaches it:
    the backward runs with all-zero gradients and the optimizer steps (Adam's first step from
    zero gradients leaves the weights as they are; later ones follow the momentum)."""
    torch.manual_seed(0)
    cae = make_cae(world, tmp_path, *only("speaker"))
    with pytest.warns(UserWarning, match="one identity"):
        trainer, before = fit_one_batch(cae, one_identity(fixed_batch(world)))
    assert trainer.global_step == 2
    assert float(trainer.logged_metrics["train/loss_g"]) == 0.0
    assert "train/speaker" not in trainer.logged_metrics
    # the generator's step comes last: its backward left gradients, all zero
    assert all(p.grad is not None and not p.grad.any() for p in cae.generator.parameters())
    assert not changed(cae.generator, before["generator"])
    assert changed(cae.critic, before["critic"])


def test_variant_names_the_gating(world, pretrained, tmp_path):
    assert make_cae(world, tmp_path).label == "cae (full)"
    assert make_cae(world, tmp_path, "model.gating=channel").label == "cae (channel)"
    assert make_cae(world, tmp_path, "model.gating=lowrank", "model.rank=2").variant == "lowrank, rank 2"


# --- a trained checkpoint: reload, evaluation faces, generate --------------------------------

@pytest.fixture(scope="module")
def cae_ckpt(world, pretrained, tmp_path_factory):
    runs = tmp_path_factory.mktemp("cae-runs")
    return train_quick("cae", world, runs, "trainer.max_steps=3", "run.name=c",
                       "trainer.val_check_interval=100")


def test_reloaded_checkpoint_gives_the_same_faces(cae_ckpt, world):
    dm = VoiceFaceDataModule(world, eval_batch_size=6, num_workers=0)
    batch = next(iter(dm.eval_dataloader("test", rank=0, world_size=1)))
    proposal = proposal_faces(batch["face"], batch["identity"])
    a = load_method(cae_ckpt, expect="cae")
    b = load_method(cae_ckpt, expect="cae")
    assert isinstance(a, METHODS["cae"]) and a.label == "cae (full)"
    fa = a.generate_faces(Voices.of(batch), proposal)
    # G(proposal, e(voice)); that the gated U-Net's face follows its voice input is checked
    # in test_cae_nets, on a fresh net: 3 steps of training leave it moving the face by little
    # more than rounding
    with torch.no_grad():
        assert torch.equal(fa, a.generator(proposal, a.voice(batch["mel"], batch["mel_lengths"])))
    assert torch.equal(fa, b.generate_faces(Voices.of(batch), proposal))
    with pytest.raises(ValueError, match="proposal"):
        a.generate_faces(Voices.of(batch))


def write_wav(path, seconds=1.6):
    """Speech-like audio: generate keeps only what voice activity detection hears."""
    import soundfile as sf
    sf.write(str(path), speechlike(seconds, 150), 16_000)
    return path


def test_generate_with_a_proposal_image_of_another_size(cae_ckpt, tmp_path, capsys):
    wav = write_wav(tmp_path / "clip.wav")
    face = tmp_path / "face.png"
    Image.fromarray(np.full((40, 50, 3), 120, np.uint8)).save(face)  # not square, not 16 px
    out = tmp_path / "out.png"
    assert generate_main([str(wav), "--ckpt", str(cae_ckpt), "--proposal", str(face),
                          "--out", str(out)]) == 0
    assert Image.open(out).size == (16, 16)
    assert f"proposal {face}" in capsys.readouterr().out


def test_generate_without_a_proposal_takes_one_from_the_training_gallery(cae_ckpt, tmp_path,
                                                                         capsys):
    wav = write_wav(tmp_path / "clip.wav")
    outs = []
    for name in ("a.png", "b.png"):
        assert generate_main([str(wav), "--ckpt", str(cae_ckpt), "--out",
                              str(tmp_path / name)]) == 0
        outs.append(np.asarray(Image.open(tmp_path / name)))
        assert "proposal training gallery image" in capsys.readouterr().out
    assert np.array_equal(*outs)  # the same seed, the same proposal, the same face


def test_generate_rejects_a_bad_proposal_image(cae_ckpt, tmp_path, capsys):
    wav = write_wav(tmp_path / "clip.wav")
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image")
    assert generate_main([str(wav), "--ckpt", str(cae_ckpt), "--proposal", str(bad)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("voice2face generate: cannot read proposal image") and "\n" not in err
    assert generate_main([str(wav), "--ckpt", str(cae_ckpt), "--proposal",
                          str(tmp_path / "none.png")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_evaluation_adds_the_unchanged_proposals_and_table_3(cae_ckpt, tmp_path):
    """``evaluate`` measures a method with proposals also on the proposals themselves (the
    score of ignoring the voice), and reports Liang et al.'s cosine similarities."""
    from voice2face.evaluation import evaluate
    r = evaluate(cae_ckpt, tmp_path / "eval")
    assert list(r["rows"])[:3] == ["method", "proposal_faces", "real_faces"]
    assert {"match_1to2", "gender_acc", "cosine", "identity_top1"} <= set(r["rows"]["proposal_faces"])
    s = r["proposal_similarity"]
    assert set(s) == {"to_proposal", "to_speaker", "random_pairs"}
    # Table 3 recomputed from the contract's calls on the test split, one utterance at a time:
    # the cosine of each generated face (judge embedding) to its proposal's, to its speaker's
    # mean gallery face, and the mean of its cosines to the mean faces of the identities that
    # are neither its speaker nor the one its proposal shows
    from voice2face.methods.pretrained import load_judge
    judge = load_judge(r["judge"])
    dm = VoiceFaceDataModule(r["data"], eval_batch_size=64, num_workers=0)
    gallery = [(judge.embed(b["face"]), b["identity"])
               for b in dm.gallery_dataloader("test", rank=0, world_size=1)]
    gallery_emb, gallery_ids = torch.cat([e for e, _ in gallery]), torch.cat([i for _, i in gallery])
    mean_face = {i: torch.nn.functional.normalize(gallery_emb[gallery_ids == i].mean(0), dim=0)
                 for i in set(gallery_ids.tolist())}
    table3 = {k: [] for k in s}
    queries, speakers = {"method": [], "proposal_faces": []}, []
    for batch in dm.eval_dataloader("test", rank=0, world_size=1):
        proposal = proposal_faces(batch["face"], batch["identity"])
        generated = judge.embed(load_method(cae_ckpt).generate_faces(Voices.of(batch), proposal))
        queries["method"].append(generated)
        queries["proposal_faces"].append(judge.embed(proposal))
        speakers.append(batch["identity"])
        for g, p, speaker, face in zip(generated, queries["proposal_faces"][-1],
                                       batch["identity"].tolist(), proposal):
            shown = next(int(i) for f, i in zip(batch["face"], batch["identity"])
                         if torch.equal(f, face))
            others = [float(g @ c) for i, c in mean_face.items() if i not in (speaker, shown)]
            table3["to_proposal"].append(float(g @ p))
            table3["to_speaker"].append(float(g @ mean_face[speaker]))
            table3["random_pairs"].append(sum(others) / len(others))
    # a tolerance of float32 rounding: a judge of 6 steps puts every face near every mean face
    # (cosines about 0.9), so averaging over the wrong identities moves these means by little
    for k, values in table3.items():
        assert s[k] == pytest.approx(sum(values) / len(values), abs=1e-6), k
    # Liang et al.'s retrieval of the generated faces and of the unchanged proposals, on the
    # same galleries, recomputed from the metric's functions
    from voice2face.metrics import gallery_hits, sampled_galleries
    speakers = torch.cat(speakers)
    galleries = sampled_galleries(speakers, gallery_ids, 500, seed=r["seed"])
    for row, q in queries.items():
        hits = gallery_hits(torch.cat(q), speakers, gallery_emb, gallery_ids, galleries, 5)
        assert r["rows"][row]["retrieval_top5"] == pytest.approx(float(hits.double().mean()))
    table = (tmp_path / "eval" / "metrics.md").read_text()
    # the grid: a row per test identity (4 in this world) and the sweep row, 2 real faces and
    # 4 proposal/generated pairs per row (evaluate's defaults)
    size, pad = 16, 2
    grid = Image.open(r["files"]["grid"])
    assert grid.size == (96 + (2 + 8) * (size + pad) + 8, 14 + 5 * (size + pad))
    assert "| proposal faces, unchanged (the voice ignored) |" in table and "Table 3" in table
    assert "Face retrieval (Liang et al.)" in table and "(the unchanged proposals as queries: " in table


def test_grid_pairs_each_face_with_its_proposal_and_adds_a_sweep_row():
    from voice2face.grid import GridCollector
    size, pad = 8, 2

    def grid(with_proposals: bool):
        g = GridCollector(2, 3, n_real=2)
        for identity in (0, 1):
            g.add_real(identity, torch.zeros(2, 3, size, size))
            for u in range(3):
                g.add_fake(identity, torch.full((3, size, size), 0.5),
                           torch.full((3, size, size), -0.5) if with_proposals else None)
        return g

    plain, paired = grid(False).image(), grid(True).image()
    assert paired.width - plain.width == 3 * (size + pad)  # a proposal before each face
    g = grid(True)
    g.set_sweep("same proposal", torch.zeros(3, size, size), [torch.ones(3, size, size)] * 2)
    assert g.image().height - paired.height == size + pad
    # the proposal's pixels sit left of each generated face: column 2k is a proposal (dark)
    x0 = g.image().width - 6 * (size + pad)
    row = np.asarray(g.image())[14 + size // 2]
    assert row[x0 + size // 2].mean() < row[x0 + size + pad + size // 2].mean()


def test_pairing_needs_no_read_back_of_the_identities():
    """Training's pairing is tensor operations only (on the meta device, with no values to
    read back, it runs), so a step on a GPU never waits for it."""
    ids = torch.tensor([0, 1, 1, 2, 0, 3, 3, 3]).to("meta")
    for paired in (True, False):
        partner, flag = training_pairing(ids, None, paired=paired)
        assert partner.device.type == "meta" and partner.shape == ids.shape and flag is paired


def test_each_rank_draws_its_own_pairings_and_rank_zero_those_of_one_process(
        world, pretrained, tmp_path):
    """The pairing's seed includes the global rank: two DDP ranks pair the same batch
    differently at the same step, and each rank's pairing is reproducible."""
    from types import SimpleNamespace
    cae = make_cae(world, tmp_path)
    ids = torch.tensor([0, 1, 2, 3, 4, 5, 6, 7, 0, 1, 2, 3])

    def pairing(rank: int, step: int = 4) -> torch.Tensor:
        cae._trainer = SimpleNamespace(global_rank=rank, global_step=step)
        try:
            return training_pairing(ids, cae.pairing_generator())[0]
        finally:
            cae._trainer = None

    assert torch.equal(pairing(1), pairing(1)) and torch.equal(pairing(0), pairing(0))
    assert not torch.equal(pairing(0), pairing(1))
    assert len({tuple(pairing(r).tolist()) for r in range(4)}) == 4
    assert not torch.equal(pairing(1, step=4), pairing(1, step=6))
    # rank 0 (and a single process) keeps the seed formula a resumed run relies on
    single = training_pairing(ids, torch.Generator().manual_seed(0 * 1_000_003 + 4))[0]
    assert torch.equal(pairing(0), single)
