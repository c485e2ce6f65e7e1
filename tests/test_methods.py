"""Every registered method trains a few steps on a tiny world; the GAN's wiring."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from torch.optim.swa_utils import AveragedModel
from torch.utils.data import DataLoader

from datamodules import VoiceFaceDataModule
from helpers import (Repeat, changed_parameters, fixed_batch, parameters_of, quick_config,
                     train_quick)
from voice2face.config import load_config
from voice2face.losses import identity_loss
from voice2face.methods import METHODS, Voices, load_method
from voice2face.methods.base import CheckpointError, data_info


@pytest.fixture
def initial_parameters(monkeypatch) -> dict[str, torch.Tensor]:
    """Filled with the parameters of the module that ``voice2face.training.train`` fits, as
    they are when the fit starts."""
    import voice2face.training as training
    initial: dict[str, torch.Tensor] = {}
    original = training.fit

    def fit(cfg, method_cls, module, *args):
        initial.update(parameters_of(module))
        return original(cfg, method_cls, module, *args)
    monkeypatch.setattr(training, "fit", fit)
    return initial


def trained(module: torch.nn.Module) -> set[str]:
    """The parameters that training moves: those with a gradient, and those of the moving
    averages (``AveragedModel``, the GAN's ``model.ema_decay``) that follow them."""
    averaged = {f"{name}.{k}" for name, m in module.named_modules()
                if isinstance(m, AveragedModel) for k, _ in m.named_parameters()}
    return {k for k, p in module.named_parameters() if p.requires_grad} | averaged


@pytest.mark.parametrize("method", sorted(METHODS))
def test_every_method_trains_a_few_steps(method, world, pretrained, tmp_path,
                                         initial_parameters):
    final = train_quick(method, world, tmp_path, "trainer.max_steps=4", "run.name=r")
    ckpt = torch.load(final, weights_only=False, map_location="cpu")
    assert ckpt["global_step"] == 4 * METHODS[method].steps_per_batch
    module = load_method(final)
    assert isinstance(module, METHODS[method]) and not module.training
    for name, p in module.state_dict().items():
        assert torch.isfinite(p.float()).all(), name
    # every trained parameter (and every average of them) moved; the frozen nets' stayed as
    # they were loaded
    assert changed_parameters(module, initial_parameters) == trained(module)
    (log,) = (tmp_path / "r").glob("csv/version_*/metrics.csv")
    header = log.read_text().splitlines()[0]
    assert "train/" in header and "val/" in header


@pytest.mark.parametrize("method", ["gan", "cae", "regression"])
def test_a_profile_s_settings_reach_the_optimizers_and_nets(method, world, pretrained):
    """A module trains with what its profile says: Adam with the config's learning rate and
    betas for every optimizer, and nets at the config's width (their sizes at width 1 are
    checked against the papers in test_nets, test_cae_nets and test_speech2face), so the
    paper profile's nets are the wider ones."""
    from voice2face.training import make_datamodule
    trained = {}
    # the world's decoder renders the cpu profile's target (DIMNet's), not the paper one's;
    # the regression trains without one (it is frozen: no parameter counted here)
    extra = [f"model.decoder={world / 'no-decoder.ckpt'}"] if method == "regression" else []
    for profile in ("cpu", "paper"):
        cfg = load_config(method, [f"data.root={world}", f"profile={profile}", *extra])
        module = METHODS[method](OmegaConf.to_container(cfg, resolve=True),
                                 data_info(make_datamodule(cfg, METHODS[method])))
        optimizers = module.configure_optimizers()
        for opt in optimizers if isinstance(optimizers, list) else [optimizers]:
            assert isinstance(opt, torch.optim.Adam)
            assert [(g["lr"], g["betas"]) for g in opt.param_groups] == [
                (cfg.optim.lr, tuple(cfg.optim.betas))] * len(opt.param_groups)
        trained[profile] = sum(p.numel() for p in module.parameters() if p.requires_grad)
    assert trained["paper"] > 4 * trained["cpu"], trained


class KnownVoices(torch.nn.Module):
    """A frozen voice embedder that hears what the speakers of one fixed batch are: a unit code
    per identity (seeded), its first axis the speaker's gender. Tests of what a method learns
    from voices stand on it rather than on a briefly trained embedder, how far apart a few
    steps of training put two speakers being luck of one processor's arithmetic."""

    def __init__(self, batch: dict, dim: int = 64):
        super().__init__()
        self.mel = batch["mel"]
        rest = torch.randn(int(batch["label"].max()) + 1, dim - 1,
                           generator=torch.Generator().manual_seed(0))
        sign = 2.0 * batch["gender"].float() - 1
        codes = torch.cat([2 * sign[:, None], rest[batch["label"]]], 1)
        self.codes = torch.nn.functional.normalize(codes, dim=-1)

    def forward(self, mel: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        assert torch.equal(mel, self.mel), "KnownVoices knows the voices of its batch only"
        return self.codes


def test_gan_steps_reduce_the_classifier_loss_and_keep_the_voice_frozen(world, pretrained,
                                                                        tmp_path):
    import lightning as L
    cfg = quick_config("gan", world, tmp_path, "model.width=0.25", "eval.judge=null",
                       "optim.lr=1e-3", "model.cache_voice=false")  # fits a plain DataLoader
    dm = VoiceFaceDataModule(world, batch_size=6, num_workers=0, crop_seconds=0.3)
    gan = METHODS["gan"](OmegaConf.to_container(cfg, resolve=True), data_info(dm))
    batch = fixed_batch(world)
    voice_before = {k: v.clone() for k, v in gan.voice.state_dict().items()}

    def classifier_loss():
        with torch.no_grad():
            return float(identity_loss(gan.critic(batch["face"])["identity"], batch["label"]))

    before = classifier_loss()
    trainer = L.Trainer(max_steps=2 * 15, accelerator="cpu", logger=False,
                        enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, limit_val_batches=0)
    trainer.fit(gan, DataLoader(Repeat(batch, 15), batch_size=None))
    assert trainer.global_step == 30  # two optimizer steps per batch
    assert classifier_loss() < 0.7 * before
    for k, v in gan.voice.state_dict().items():  # weights and BatchNorm statistics
        assert torch.equal(v, voice_before[k]), k
    assert not gan.voice.training and not any(p.requires_grad for p in gan.voice.parameters())


def test_gan_moving_average_of_the_generator(world, pretrained, tmp_path):
    """model.ema_decay: after every generator step the averaged generator moves toward the
    trained one by (1 - decay), its first value the weights after the first step (computed
    here in a loop from the generator's weights and BatchNorm statistics after each step);
    faces come from the average, which the checkpoint keeps."""
    import lightning as L
    decay = 0.6
    cfg = quick_config("gan", world, tmp_path, "model.width=0.25", "eval.judge=null",
                       "optim.lr=1e-3", "model.cache_voice=false", f"model.ema_decay={decay}")
    dm = VoiceFaceDataModule(world, batch_size=6, num_workers=0, crop_seconds=0.3)
    gan = METHODS["gan"](OmegaConf.to_container(cfg, resolve=True), data_info(dm))
    seen = []

    class Record(L.Callback):
        def on_train_batch_end(self, trainer, module, *args):
            seen.append({k: v.detach().clone() for k, v in module.generator.state_dict().items()})
    trainer = L.Trainer(max_steps=2 * 4, accelerator="cpu", logger=False, callbacks=[Record()],
                        enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, limit_val_batches=0)
    trainer.fit(gan, DataLoader(Repeat(fixed_batch(world), 4), batch_size=None))
    assert len(seen) == 4
    average = dict(seen[0])
    for weights in seen[1:]:
        for k, v in weights.items():
            if v.is_floating_point():
                average[k] = decay * average[k] + (1 - decay) * v
    ema = gan.generator_ema.module.state_dict()
    for k, v in average.items():
        if v.is_floating_point():
            torch.testing.assert_close(ema[k], v, rtol=1e-5, atol=1e-6, msg=k)
    assert int(gan.generator_ema.n_averaged) == 4
    assert not any(p.requires_grad for p in gan.generator_ema.parameters())

    gan.eval()
    codes = torch.nn.functional.normalize(torch.randn(3, gan.voice.dim), dim=-1)
    with torch.no_grad():
        faces = gan.faces_from_codes(codes)
        assert torch.equal(faces, gan.generator_ema.module(codes))
        assert not torch.allclose(faces, gan.generator(codes))
    final = train_quick("gan", world, tmp_path, "trainer.max_steps=2", "run.name=ema",
                        f"model.ema_decay={decay}")
    loaded = load_method(final)
    state = torch.load(final, weights_only=False, map_location="cpu")["state_dict"]
    for k, v in loaded.generator_ema.state_dict().items():
        assert torch.equal(v, state[f"generator_ema.{k}"]), k


def test_gan_gender_head_learns_gender_and_trains_the_generator(world, pretrained, tmp_path):
    import lightning as L
    from voice2face.losses import gender_loss
    base = quick_config("gan", world, tmp_path, "model.width=0.25", "eval.judge=null",
                        "model.gender_weight=0")
    dm = VoiceFaceDataModule(world, batch_size=6, num_workers=0, crop_seconds=0.3)
    assert METHODS["gan"](OmegaConf.to_container(base, resolve=True),
                          data_info(dm)).critic.gender is None  # the paper's critic
    cfg = quick_config("gan", world, tmp_path, "model.width=0.25", "eval.judge=null",
                       "optim.lr=1e-3", "model.gender_weight=1", "model.identity_weight=0",
                       "model.cache_voice=false", "model.face_weight=0")
    gan = METHODS["gan"](OmegaConf.to_container(cfg, resolve=True), data_info(dm))
    batch = fixed_batch(world)
    gan.voice = KnownVoices(batch)  # voices that say the speaker's gender

    def losses():
        with torch.no_grad():
            fake = gan.generator(gan.voice(batch["mel"], batch["mel_lengths"]))
            return [float(gender_loss(gan.critic(x)["gender"], batch["gender"]))
                    for x in (batch["face"], fake)]

    real_before, _ = losses()
    trainer = L.Trainer(max_steps=2 * 30, accelerator="cpu", logger=False,
                        enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, limit_val_batches=0)
    trainer.fit(gan, DataLoader(Repeat(batch, 30), batch_size=None))
    real_after, fake_after = losses()
    assert real_after < 0.5 * real_before  # the critic learns the gender of real faces
    assert fake_after < 0.3  # and the generator makes faces of the speaker's gender
    assert {"train/loss_gender_real", "train/loss_gender_fake"} <= set(trainer.logged_metrics)


@pytest.mark.parametrize("method", ["gan", "cae", "regression"])  # regression: the cpu profile's
def test_cached_voices_are_the_embeddings_of_whole_utterances(method, world, pretrained,
                                                              tmp_path):
    """model.cache_voice: training batches carry no audio, and what the method trains on is
    the frozen embedder's output for the whole utterance, computed here sample by sample."""
    from voice2face.training import make_datamodule
    cfg = quick_config(method, world, tmp_path, "model.cache_voice=true", "eval.judge=null")
    dm = make_datamodule(cfg, METHODS[method])
    module = METHODS[method](OmegaConf.to_container(cfg, resolve=True), data_info(dm))
    batch = next(iter(dm.train_dataloader()))
    assert "mel" not in batch and "mel_lengths" not in batch
    assert "mel" in next(iter(dm.eval_dataloader("val")))  # evaluation still hears them
    with pytest.raises(KeyError, match="mel"):  # no cache before fit starts, no audio to embed
        module.training_voices(batch)

    class Fit:  # what on_fit_start reads of its trainer
        datamodule = dm
        global_rank, world_size = 0, 1
    module._trainer = Fit()
    module.on_fit_start()
    whole = {s["key"]: s for s in dm.eval_dataset("train")}
    for key, emb in zip(batch["key"], module.training_voices(batch)):
        mel = whole[key]["mel"]
        expected = module.voice(mel[None], torch.tensor([mel.shape[-1]]))[0]
        torch.testing.assert_close(emb, expected, rtol=1e-5, atol=1e-5)
    assert len(module._voice_cache) == len(dm.eval_dataset("train"))


def test_gan_face_term_pulls_generated_faces_to_the_speakers(world, pretrained, tmp_path):
    import lightning as L
    from voice2face.losses import image_l1_loss
    cfg = quick_config("gan", world, tmp_path, "model.width=0.25", "eval.judge=null",
                       "optim.lr=1e-3", "model.cache_voice=false", "model.face_weight=100",
                       "model.identity_weight=0", "model.gender_weight=0")
    dm = VoiceFaceDataModule(world, batch_size=6, num_workers=0, crop_seconds=0.3)
    gan = METHODS["gan"](OmegaConf.to_container(cfg, resolve=True), data_info(dm))
    batch = fixed_batch(world)
    gan.voice = KnownVoices(batch)  # voices that tell the speakers apart

    def face_l1():
        with torch.no_grad():
            fake = gan.generator(gan.voice(batch["mel"], batch["mel_lengths"]))
            return float(image_l1_loss(fake, batch["face"]))

    before = face_l1()
    # the best a generator can do with voices that say nothing: the batch's pixel-wise median
    blind = float(image_l1_loss(batch["face"].median(0).values.expand_as(batch["face"]),
                                batch["face"]))
    trainer = L.Trainer(max_steps=2 * 60, accelerator="cpu", logger=False,
                        enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, limit_val_batches=0)
    trainer.fit(gan, DataLoader(Repeat(batch, 60), batch_size=None))
    after = face_l1()
    assert after < 0.5 * before and after < 0.5 * blind  # it draws each speaker's face
    assert "train/loss_face" in trainer.logged_metrics
    assert load_config("gan", ["profile=paper"]).model.face_weight == 0  # not in the paper


def test_gan_feature_term_pulls_the_targets_features_to_the_speakers(world, pretrained,
                                                                    tmp_path):
    """The feature term: the cosine distance of the frozen target network's features of the
    generated and the real face (against a hand computation), which training lowers while the
    target stays as loaded; the judge is refused as the target; a checkpoint rebuilds its
    target without the target's file."""
    import lightning as L
    import torch.nn.functional as F
    target = tmp_path / "target-copy.ckpt"
    shutil.copy(pretrained / "face-target.ckpt", target)
    cfg = quick_config("gan", world, tmp_path, "model.width=0.25", "optim.lr=1e-3",
                       "model.cache_voice=false", "model.face_weight=0", "model.feature_weight=1",
                       f"model.target={target}", "model.identity_weight=0",
                       "model.gender_weight=0", f"eval.judge={pretrained / 'face.ckpt'}")
    dm = VoiceFaceDataModule(world, batch_size=6, num_workers=0, crop_seconds=0.3)
    gan = METHODS["gan"](OmegaConf.to_container(cfg, resolve=True), data_info(dm))
    batch = fixed_batch(world)
    gan.voice = KnownVoices(batch)
    frozen = {k: v.clone() for k, v in gan.target.state_dict().items()}

    def feature_distance():
        with torch.no_grad():
            fake = gan.generator(gan.voice(batch["mel"], batch["mel_lengths"]))
            loss = float(gan.feature_loss(fake, batch["face"]))
            a, b = gan.target(fake), gan.target(batch["face"])
            by_hand = np.mean([1 - float(F.cosine_similarity(a[i], b[i], dim=0))
                               for i in range(len(a))])
        assert loss == pytest.approx(by_hand, abs=1e-5)
        return loss

    before = feature_distance()
    trainer = L.Trainer(max_steps=2 * 40, accelerator="cpu", logger=False,
                        enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, limit_val_batches=0)
    trainer.fit(gan, DataLoader(Repeat(batch, 40), batch_size=None))
    assert feature_distance() < 0.5 * before
    assert "train/loss_feature" in trainer.logged_metrics
    assert all(torch.equal(v, frozen[k]) for k, v in gan.target.state_dict().items())
    assert not gan.target.training

    with pytest.raises(CheckpointError, match="judge"):
        METHODS["gan"](OmegaConf.to_container(quick_config(
            "gan", world, tmp_path, "model.feature_weight=1",
            f"model.target={pretrained / 'face.ckpt'}", f"eval.judge={pretrained / 'face.ckpt'}"),
            resolve=True), data_info(dm))
    final = train_quick("gan", world, tmp_path, "trainer.max_steps=2", "model.feature_weight=1",
                        f"model.target={target}", "trainer.val_check_interval=100")
    target.unlink()
    loaded = load_method(final, expect="gan")
    assert loaded.target is not None and torch.equal(
        loaded.target.state_dict()["net.0.weight"], frozen["net.0.weight"])


def test_gan_checkpoint_needs_no_voice_checkpoint(world, pretrained, tmp_path):
    voice = tmp_path / "voice-copy.ckpt"
    shutil.copy(pretrained / "voice.ckpt", voice)
    final = train_quick("cgan", world, tmp_path, "trainer.max_steps=2", f"model.voice={voice}",
                        "trainer.val_check_interval=100")
    from voice2face.methods.pretrained import load_voice_embedder, same_weights
    embedder = load_voice_embedder(voice)
    voice.unlink()
    gan = load_method(final, expect="cgan")
    assert gan.conditional and gan.critic.projection is not None
    assert same_weights(gan.voice, embedder)  # the frozen net it trained with, kept in it
    voices = Voices(torch.randn(2, 64, 50), torch.tensor([50, 30]))
    torch.manual_seed(0)
    faces = gan.generate_faces(voices)
    torch.manual_seed(0)  # the same z
    with torch.no_grad():
        assert torch.equal(faces, gan.face_generator(embedder(voices.mel, voices.lengths)))


def test_cgan_with_encoded_noise_trains_its_encoder_and_generates_without_it(
        world, pretrained, tmp_path, initial_parameters):
    """``model.encode_noise``: the encoder trains with the generator (every one of its
    parameters moves, with the rest of the trained ones); evaluation and generation draw z
    from N(0, I) and never call it."""
    final = train_quick("cgan", world, tmp_path, "trainer.max_steps=3", "run.name=r",
                        "model.encode_noise=true", "model.noise_dim=4")
    gan = load_method(final, expect="cgan")
    moved = changed_parameters(gan, initial_parameters)
    assert moved == trained(gan)
    encoder = {k for k, _ in gan.named_parameters() if k.startswith("encoder.")}
    assert encoder and encoder <= moved
    assert gan.encoder.net[-1].out_channels == 2 * 4

    def refuse(*args):
        raise AssertionError("the encoder was called to generate")
    gan.encoder.forward = refuse
    voices = Voices(torch.randn(3, 64, 50), torch.tensor([50, 40, 30]))
    torch.manual_seed(1)
    faces = gan.generate_faces(voices)
    assert faces.shape[:2] == (3, 3) and torch.isfinite(faces).all()
    torch.manual_seed(2)
    assert not torch.equal(gan.generate_faces(voices), faces)  # another z, another face


def test_encoded_noise_is_a_reparameterised_gaussian_with_its_kl():
    """``GanModule.encode_noise`` against torch.distributions: the KL to N(0, I) summed over
    z's dimensions and averaged over the batch, and samples with the encoder's mean and
    standard deviation (within four standard errors)."""
    from types import SimpleNamespace

    from torch.distributions import Normal, kl_divergence

    from voice2face.methods.gan import GanModule
    mu, logvar = torch.tensor([[0.5, -1.0, 0.0]]), torch.tensor([[0.0, -2.0, 1.0]])
    stats = torch.cat([mu, logvar], 1).repeat(20_000, 1)
    torch.manual_seed(0)
    z, kl = GanModule.encode_noise(SimpleNamespace(encoder=lambda real: stats), None)
    std = (0.5 * logvar).exp()
    want = kl_divergence(Normal(mu, std), Normal(0.0, 1.0)).sum(1).mean()
    assert kl.item() == pytest.approx(want.item(), rel=1e-5)
    se = std / 20_000 ** 0.5
    assert torch.all((z.mean(0) - mu[0]).abs() < 4 * se[0])
    assert torch.allclose(z.std(0), std[0], rtol=0.03)


def test_prior_share_keeps_drawn_rows_out_of_the_reconstruction_terms(world, pretrained,
                                                                      tmp_path, monkeypatch):
    """``model.prior_share=0.5`` of a batch of 4: the encoder sees the last 2 real faces,
    and the L1 and feature terms compare only those 2 rows' faces with their real ones (the
    first 2 rows' z are drawn); every batch's faces meet the critic."""
    import voice2face.methods.gan as gan_module
    from voice2face.methods.generator import AdversarialModule
    seen = {"l1": [], "feature": [], "encoder": [], "critic": []}
    l1, feature = gan_module.image_l1_loss, AdversarialModule.feature_loss
    encode, critic = gan_module.GanModule.encode_noise, gan_module.FaceCritic.forward

    def record(key, n, value):
        seen[key].append(n)
        return value
    monkeypatch.setattr(gan_module, "image_l1_loss",
                        lambda fake, real: record("l1", (len(fake), len(real)), l1(fake, real)))
    monkeypatch.setattr(AdversarialModule, "feature_loss", lambda self, fake, real: record(
        "feature", (len(fake), len(real)), feature(self, fake, real)))
    monkeypatch.setattr(gan_module.GanModule, "encode_noise", lambda self, real: record(
        "encoder", len(real), encode(self, real)))
    monkeypatch.setattr(gan_module.FaceCritic, "forward", lambda self, face, cond=None: record(
        "critic", len(face), critic(self, face, cond)))
    train_quick("cgan", world, tmp_path, "trainer.max_steps=2", "trainer.val_check_interval=100",
                "model.encode_noise=true", "model.noise_dim=4", "model.prior_share=0.5",
                "model.face_weight=1", "model.feature_weight=1",
                f"model.target={pretrained / 'dimnet.ckpt'}")
    assert seen["l1"] == seen["feature"] == [(2, 2)] * 2
    assert seen["encoder"] == [2] * 2
    assert seen["critic"][:2] == [8, 4]   # the critic step: real and generated; then generated


def test_encoded_noise_needs_the_conditional_variant(world, pretrained, tmp_path):
    with pytest.raises(ValueError, match="model.conditional=true"):
        train_quick("gan", world, tmp_path, "trainer.max_steps=1", "model.encode_noise=true")


def test_gan_without_voice_checkpoint_says_how_to_make_one(world, tmp_path):
    with pytest.raises(CheckpointError, match="voice2face train voice --export"):
        train_quick("gan", world, tmp_path, f"model.voice={tmp_path / 'none.ckpt'}")


def test_voice_cache_of_two_ranks_shares_is_the_one_process_cache(world, pretrained, tmp_path):
    """Under DDP each rank embeds every second training utterance and the shares are
    gathered: the cache they make is the one a single process makes, row for row."""
    from voice2face.methods.generator import VoiceCache, embed_utterances
    from voice2face.training import make_datamodule
    cfg = quick_config("gan", world, tmp_path, "model.cache_voice=true", "eval.judge=null")
    dm = make_datamodule(cfg, METHODS["gan"])
    gan = METHODS["gan"](OmegaConf.to_container(cfg, resolve=True), data_info(dm))
    whole = VoiceCache.from_shares([embed_utterances(gan.voice, dm, "train", "cpu")], "cpu")
    shares = [embed_utterances(gan.voice, dm, "train", "cpu", rank, 2) for rank in (0, 1)]
    assert not set(shares[0][1]) & set(shares[1][1])  # each utterance embedded once
    assert abs(len(shares[0][1]) - len(shares[1][1])) <= 1
    merged = VoiceCache.from_shares(shares, "cpu")
    assert merged.rows == whole.rows and len(merged) == len(dm.eval_dataset("train"))
    torch.testing.assert_close(merged.table, whole.table, rtol=1e-5, atol=1e-6)
    keys = list(whole.rows)[3:7]
    torch.testing.assert_close(merged.embeddings(keys), whole.table[3:7], rtol=0, atol=0)


# the one value each method shows on the progress bar (which reads it back every step)
MAIN_LOSS = {"gan": "train/loss_g", "cgan": "train/loss_g", "cae": "train/loss_g",
             "cae-concat": "train/loss_g"}


@pytest.mark.parametrize("method", sorted(METHODS))
def test_every_method_trains_in_bf16_with_channels_last(method, world, pretrained, tmp_path):
    """The paper profiles' precision and layout (bf16 autocast, model.channels_last) on a
    CPU: two batches train to finite weights, the 4-D weights and the faces are NHWC, and
    only the main loss is on the progress bar."""
    import lightning as L
    from voice2face.training import make_datamodule
    cfg = quick_config(method, world, tmp_path, "eval.judge=null", "model.channels_last=true")
    dm = make_datamodule(cfg, METHODS[method])
    module = METHODS[method](OmegaConf.to_container(cfg, resolve=True), data_info(dm))
    initial = parameters_of(module)
    trainer = L.Trainer(max_steps=2 * module.steps_per_batch, accelerator="cpu",
                        precision="bf16-mixed", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False,
                        limit_val_batches=0)
    trainer.fit(module, datamodule=dm)
    assert trainer.global_step == 2 * module.steps_per_batch
    assert set(trainer.progress_bar_metrics) == {MAIN_LOSS.get(method, "train/loss")}
    for name, p in module.named_parameters():
        assert p.dtype == torch.float32 and torch.isfinite(p).all(), name
    assert changed_parameters(module, initial) == trained(module)
    four_d = [p for p in module.parameters() if p.dim() == 4 and p.shape[-1] > 1]
    assert all(p.is_contiguous(memory_format=torch.channels_last) for p in four_d)
    if four_d:  # a method with face nets (not voice's 1-D one) gets NHWC faces
        faces = module.on_after_batch_transfer({"faces": torch.randn(2, 3, 3, 8, 8)}, 0)["faces"]
        assert faces.flatten(0, 1).is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("method,overrides", [
    ("gan", ["model.cache_voice=false"]),   # the voice embedder hears the batch's crops
    ("regression", ["model.encoder=spectrogram", "data.spectrogram=true"]),  # log-mel and the STFT
    ("regression", ["model.cache_voice=false"]),  # the frozen embedder hears the crops
    ("voice", [])])
def test_features_computed_on_the_device_train_a_method(method, overrides, world, pretrained,
                                                        tmp_path, monkeypatch,
                                                        initial_parameters):
    """data.features=device: the training batches carry waveform crops, and the method turns
    them into the features it reads in on_after_batch_transfer (datamodules.features)."""
    import datamodules.features as features
    seen = []
    original = features.device_features

    def spy(batch, **kw):
        seen.append("wave" in batch)
        out = original(batch, **kw)
        assert "wave" not in out and ("mel" in out or "mel" not in batch)
        return out
    monkeypatch.setattr(features, "device_features", spy)
    final = train_quick(method, world, tmp_path, "trainer.max_steps=2", "run.name=r",
                        "data.features=device", *overrides)
    assert any(seen), "no training batch carried waveforms"
    assert torch.load(final, weights_only=False, map_location="cpu")["global_step"] == (
        2 * METHODS[method].steps_per_batch)
    module = load_method(final)
    assert changed_parameters(module, initial_parameters) == trained(module)


def test_train_mode_leaves_a_methods_frozen_nets_in_eval_mode():
    """``MethodModule.frozen_nets``: ``train()`` keeps the named pretrained nets in eval mode
    (their BatchNorm statistics are not updated by training batches), skips one a run does
    not have (None), and trains the rest; every method that loads pretrained nets names them."""
    from voice2face.methods.base import Evaluation, MethodModule
    from voice2face.methods.cae import CaeModule
    from voice2face.methods.face_decoder import FaceDecoderModule
    from voice2face.methods.gan import GanModule
    from voice2face.methods.regression import RegressionModule

    class Toy(MethodModule):
        evaluation = Evaluation.PRETRAINING
        frozen_nets = ("pretrained", "absent")

        def __init__(self):
            super().__init__({}, {})
            self.pretrained, self.absent = torch.nn.BatchNorm1d(2), None
            self.trained = torch.nn.BatchNorm1d(2)

    toy = Toy().train()
    assert toy.training and toy.trained.training and not toy.pretrained.training
    before = toy.pretrained.running_mean.clone()
    toy.pretrained(torch.randn(8, 2) + 5)
    assert torch.equal(toy.pretrained.running_mean, before)
    assert not toy.eval().trained.training

    assert set(GanModule.frozen_nets) == {"voice", "target"}
    assert set(CaeModule.frozen_nets) == {"voice", "target"}
    assert set(RegressionModule.frozen_nets) == {"voice", "target", "decoder"}
    assert set(FaceDecoderModule.frozen_nets) == {"target"}
