"""``gan``: voice-to-face GAN of Wen, Singh & Raj (NeurIPS 2019), and its conditional variant.

A frozen, pretrained voice embedder (``model.voice``: a ``voice`` or ``dimnet`` checkpoint)
gives a unit 64-d embedding; Gaussian noise (std ``model.embedding_noise``, 0.05 in the
paper) is added and the result renormalised; ``FaceGenerator`` maps it to a face.
``FaceCritic`` holds the discriminator and the identity classifier on one shared trunk.
Algorithm 1, per batch: the critic step (discriminator: real faces vs generated ones;
classifier: identity of real faces), then the generator step on the sum of its adversarial
loss and the classifier's identity loss on generated faces (weight ``model.identity_weight``).

``model.gender_weight > 0`` adds an auxiliary gender head to the critic (AC-GAN, Odena et
al. 2017; not in the paper): it learns the gender of real faces in the critic step, and the
generator is also trained to make faces of the speaker's gender. A voice reveals gender long
before the 924-way identity classifier has learnt anything, so this is what lets the short
``cpu`` profile make speaker-dependent faces; the ``paper`` profile keeps it at 0.

``model.face_weight > 0`` adds an L1 term between each generated face and a real face of its
speaker (the batch's own face; not in the paper: a pix2pix-style reconstruction term, as
the CAE's λ2). Its minimiser is the typical face of the speakers a voice embedding cannot
tell apart, which is what 1:2 matching rewards; the adversarial term keeps it from being
only a blur. In 1,200 CPU steps the critic's 924-way classifier teaches nothing (its loss
stays at ln 924), and without this term the generator draws noise; with it (weight 100,
pix2pix's) faces of the speaker's gender appear within 400 steps. The ``paper`` profile
keeps it at 0.

``model.feature_weight > 0`` adds a term in a face network's feature space: the cosine
distance between the features of the generated face and of the speaker's real face under a
frozen face network (``model.target``: the face embedder of a ``dimnet`` checkpoint, as in
the ``cpu`` profile, or a ``face`` one such as the regression's ``face-target.ckpt``, never
the judge: ``load_target`` refuses the judge's weights). Pixels are mostly per-photo
nuisance (pose, light, background); a face network's feature keeps what stays the same
across an identity's photos, and DIMNet's, trained with the voice embedder on the same
covariates, keeps what a voice can tell.

``model.conditional: true`` is the conditional GAN (Mirza & Osindero 2014, as in "Deep Face
Gen"): noise z (``model.noise_dim``) is concatenated to the embedding and the discriminator
is a projection discriminator on the embedding. ``experiments/cgan.yaml`` sets it.

``model.encode_noise: true`` (conditional only) trains z to carry what the voice does not
tell: the cVAE-GAN half of BicycleGAN (Zhu et al., NeurIPS 2017). An encoder (a
``FaceTrunk``) maps the batch's real face to a Gaussian q(z | face); the generator draws
from the voice embedding and a z sampled from it, so its reconstruction terms (L1,
feature) no longer pull every face toward the speaker's average, and a KL term (weight
``model.kl_weight``) keeps q near N(0, I), from which evaluation and generation draw z. A
face generated this way can look like one real person with the speaker's attributes rather
than like the average of many (``benchmarks/instrument.py``'s private-trait rows measure
what that can score). The encoder trains with the generator's optimizer and is not needed
to generate. ``model.prior_share`` of each batch (the cLR-GAN half of BicycleGAN, in the
same batch rather than a second pass) draws z from N(0, I) instead: those faces, the ones
evaluation makes, meet the critic, the identity and the gender terms but no reconstruction
term, which only an encoded z can satisfy.

``model.ema_decay > 0`` makes faces (validation, evaluation, generation) with an
exponential moving average of the generator's weights and BatchNorm statistics
(``torch.optim.swa_utils.AveragedModel``, updated after every generator step; the
checkpoint keeps it), a common way to steady a GAN's generator between steps.

Validation (judge metrics and the sample grid) is ``GeneratorModule``'s. The contract's
code of an utterance is its unit voice embedding; several utterances of one speaker are
fused by their mean, renormalised (``voice2face generate a.wav b.wav``).

Traps of manual optimization, and what this module does about them:

* ``global_step`` counts every optimizer step, two per batch here (critic, generator):
  ``steps_per_batch = 2``, and ``voice2face train`` multiplies ``trainer.max_steps`` by it, so
  the config's ``max_steps`` counts generator steps. ``val_check_interval`` and
  ``run.checkpoint_every`` count batches.
* Trainer-level gradient clipping or accumulation raises under manual optimization: keep
  ``trainer.gradient_clip_val`` null and use ``optim.clip_grad`` (``self.clip_gradients``).
* DDP: the critic step backpropagates from ``fake.detach()`` (no generator gradients) and
  ``toggled_optimizer`` turns off the critic's ``requires_grad`` during the generator step,
  so each backward leaves the other net without gradients, which plain DDP rejects ("It looks
  like your LightningModule has parameters that were not used"). The class declares
  ``ddp_find_unused_parameters = True``; ``voice2face train`` then runs
  ``trainer.strategy=ddp`` as ``ddp_find_unused_parameters_true``. With a Trainer of your
  own, pass that strategy.
* The frozen voice embedder stays in eval mode (its BatchNorm statistics are pretrained),
  whatever ``train()`` the loops call.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from voice2face.losses import (discriminator_loss, gender_loss, generator_loss, identity_loss,
                               image_l1_loss, top1_accuracy)
from voice2face.methods.base import Voices
from voice2face.methods.generator import AdversarialModule
from voice2face.nets import FaceCritic, FaceGenerator, FaceTrunk, perturb_embedding


class GanModule(AdversarialModule):
    """Voice embedder (frozen) -> ``FaceGenerator``; ``FaceCritic`` = discriminator + classifier.

    ``voice_net`` is filled in from the voice checkpoint on the first construction and saved
    with the hyperparameters, so a GAN checkpoint rebuilds without the voice checkpoint;
    ``target_net`` likewise for the feature term's frozen ``FaceTrunk`` (``self.target``,
    None without the term).
    """

    def __init__(self, cfg: dict[str, Any], data: dict[str, Any],
                 voice_net: dict[str, Any] | None = None,
                 target_net: dict[str, Any] | None = None):
        super().__init__(cfg, data, voice_net)
        m = cfg["model"]
        self.attach_target(m["feature_weight"], target_net, "model.feature_weight")
        self.conditional = bool(m["conditional"])
        dim = self.voice.config["dim"]
        self.generator = FaceGenerator(dim, data["face_size"], m["width"],
                                       noise_dim=m["noise_dim"] if self.conditional else 0,
                                       norm=m["generator_norm"])
        # model.encode_noise: q(z | real face) in training (cVAE-GAN); a checkpoint without
        # the key trained without one
        self.encoder: FaceTrunk | None = None
        if m.get("encode_noise"):
            if not self.conditional:
                raise ValueError(f"{self.method}: model.encode_noise encodes the noise z of the "
                                 f"conditional variant; set model.conditional=true (cgan)")
            self.encoder = FaceTrunk(data["face_size"], 2 * m["noise_dim"], m["width"])
        self.gender_weight = float(m["gender_weight"])
        self.critic = FaceCritic(data["face_size"], data["num_train_identities"],
                                 width=m["width"], cond_dim=dim if self.conditional else 0,
                                 gender=self.gender_weight > 0)
        # model.ema_decay > 0: the faces come from an exponential moving average of the
        # generator's weights and BatchNorm statistics, updated after every generator step
        # (a checkpoint without the key trained without one)
        decay = float(m.get("ema_decay", 0.0))
        self.generator_ema: AveragedModel | None = None
        if decay > 0:
            self.generator_ema = AveragedModel(self.generator, use_buffers=True,
                                               multi_avg_fn=get_ema_multi_avg_fn(decay))
            self.generator_ema.requires_grad_(False)

    # --- the nets' use -------------------------------------------------------------------

    @property
    def variant(self) -> str | None:
        return "conditional" if self.conditional else None

    @property
    def face_generator(self) -> torch.nn.Module:
        """The generator whose faces are shown: the moving average where there is one."""
        return self.generator if self.generator_ema is None else self.generator_ema.module

    @torch.no_grad()
    def encode_voices(self, voices: Voices) -> torch.Tensor:
        """The frozen embedder's unit voice embeddings (``fuse_codes``: their mean,
        renormalised)."""
        return self.voice(voices.mel, voices.lengths)

    @torch.no_grad()
    def faces_from_codes(self, codes: torch.Tensor, proposal: torch.Tensor | None = None
                         ) -> torch.Tensor:
        """Faces from voice embeddings, without embedding noise (the conditional variant
        draws z from the global RNG), by the averaged generator where there is one."""
        return self.face_generator(codes)

    # --- training ------------------------------------------------------------------------

    def generator_parameters(self):
        nets = [self.generator] + ([self.encoder] if self.encoder is not None else [])
        return [p for net in nets for p in net.parameters()]

    def encode_noise(self, real: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(z [B, noise_dim], KL [])``: z sampled from the encoder's q(z | real face) by
        the reparameterisation trick, and the batch mean of KL(q || N(0, I))."""
        mu, logvar = self.encoder(real).float().chunk(2, dim=1)
        z = mu + torch.randn_like(mu) * (0.5 * logvar).exp()
        kl = 0.5 * (mu.square() + logvar.exp() - 1 - logvar).sum(1).mean()
        return z, kl

    def training_step(self, batch, batch_idx):
        opt_g, opt_d = self.optimizers()
        m = self.cfg["model"]
        real, labels, gender = batch["face"], batch["label"], batch["gender"]
        emb = perturb_embedding(self.training_voices(batch), m["embedding_noise"])
        cond = emb if self.conditional else None
        logs = {}
        n = len(real)
        noise, drawn = None, 0  # with an encoder: the first `drawn` rows' z from N(0, I)
        if self.encoder is not None:
            drawn = min(n - 1, int(round(m["prior_share"] * n)))
            noise, logs["train/loss_kl"] = self.encode_noise(real[drawn:])
            noise = torch.cat([torch.randn(drawn, noise.shape[1], device=noise.device,
                                           dtype=noise.dtype), noise])
        fake = self.generator(emb, noise)  # generated once, used by both steps

        # critic step: discriminator on real vs generated, classifier on real (Algorithm 1)
        with self.toggled_optimizer(opt_d):
            out = self.critic(torch.cat([real, fake.detach()]),
                              None if cond is None else torch.cat([cond, cond]))
            loss_d = discriminator_loss(out["adversarial"][:n], out["adversarial"][n:])
            loss_c = identity_loss(out["identity"][:n], labels)
            loss = loss_d + loss_c + self._gender_term(out, gender, n, "real", logs)
            self._update(opt_d, loss)

        # generator step: fool the discriminator, be recognised as the speaker by the classifier
        with self.toggled_optimizer(opt_g):
            out_fake = self.critic(fake, cond)
            loss_adv = generator_loss(out_fake["adversarial"])
            loss_id = identity_loss(out_fake["identity"], labels)
            loss = (loss_adv + m["identity_weight"] * loss_id
                    + self._gender_term(out_fake, gender, n, "fake", logs))
            if m["face_weight"]:
                logs["train/loss_face"] = image_l1_loss(fake[drawn:], real[drawn:])
                loss = loss + m["face_weight"] * logs["train/loss_face"]
            if self.target is not None:
                logs["train/loss_feature"] = self.feature_loss(fake[drawn:], real[drawn:])
                loss = loss + m["feature_weight"] * logs["train/loss_feature"]
            if noise is not None:
                loss = loss + m["kl_weight"] * logs["train/loss_kl"]
            self._update(opt_g, loss)
        if self.generator_ema is not None:
            self.generator_ema.update_parameters(self.generator)

        # only the generator's loss on the progress bar, which reads its values every step
        self.log("train/loss_g", loss_adv, prog_bar=True, batch_size=n)
        self.log_dict({"train/loss_d": loss_d, "train/loss_c": loss_c,
                       "train/loss_id": loss_id, **logs,
                       "train/acc_real": top1_accuracy(out["identity"][:n].detach(), labels),
                       "train/acc_fake": top1_accuracy(out_fake["identity"].detach(), labels)},
                      batch_size=n)

    def _gender_term(self, out: dict, gender: torch.Tensor, n: int, which: str,
                     logs: dict) -> torch.Tensor | float:
        """Weighted auxiliary gender loss on the first ``n`` rows (0 without the head)."""
        if not self.gender_weight:
            return 0.0
        logs[f"train/loss_gender_{which}"] = gender_loss(out["gender"][:n], gender)
        return self.gender_weight * logs[f"train/loss_gender_{which}"]
