"""``cae``: the Controlled AutoEncoder of Liang, Yu, Xu, Raj & Singh, "Controlled AutoEncoders
to Generate Faces from Voices" (ISVC 2020, arXiv:2107.07988).

Instead of drawing a face from nothing, the CAE morphs a *proposal* face toward the speaker
of a voice: ``GatedUNet(f_A, e_B)``, a U-Net whose decoder filters are gated per sample by the
frozen voice embedding ``e_B`` (``voice2face/nets/cae.py``). ``model.gating`` picks the gating
granularity: ``full`` (the paper: one gate per filter parameter), ``channel``, ``lowrank``, or
``concat`` (the ablation: no gates, the embedding concatenated at the bottleneck;
``experiments/cae-concat.yaml``).

Training is the paper's Algorithm 1 on batches (the paper used batch size 1 because every
sample needs its own decoder; the batched gated convolutions make that unnecessary). A
batch holds face f and voice v of each sample; ``other_identity_pairing`` pairs sample A with
a sample B of another identity, so each row has f_A, v_A and f_B, v_B. Per batch:

1. critic step: the discriminator learns real faces vs ``G(f_A, e_B)``, the identity
   classifier (sharing the discriminator's trunk, the paper's Table 1) the identity of real
   faces;
2. generator step, on the weighted sum (``model.weights``, the paper's λ1..λ5):

   ========================  ======  ====================================================
   ``proposal``    (λ1 = 1)  L1(G(f_A, e_B), f_A)          stay close to the proposal
   ``speaker``     (λ2 = 10) L1(G(f_A, e_B), f_B)          move toward the speaker's face
   ``identity``    (λ3 = 1)  CE(C(G(f_A, e_B)), B)         be recognised as speaker B
   ``adversarial`` (λ4 = 1)  -log D(G(f_A, e_B))           look real
   ``cycle``       (λ5 = 10) L1(G(G(f_A, e_B), e_A), f_A)  A's voice brings A's face back
   ``feature``     (0)       1 - cos(T(G(f_A, e_B)), T(f_B)) look like the speaker to T
   ========================  ======  ====================================================

   A term of weight 0 is not computed (nor logged). ``feature`` is not the paper's: the
   cosine distance between the features of the morphed face and of the speaker's real face
   under a frozen face network T (``model.target``: the face embedder of a ``dimnet``
   checkpoint, or a ``face`` one other than the judge; ``methods.pretrained.load_target``).
   L1 to one photo of the speaker is mostly that photo's pose, light and background, which
   no voice predicts; a face network's feature keeps what an identity's photos share, and
   DIMNet's face embedder, trained with the voice embedder on the same covariates, keeps
   what a voice can tell. The ``cpu`` profile weighs it 10 with DIMNet's.

The voice embedder is a ``voice`` or ``dimnet`` checkpoint (``model.voice``), frozen. In
validation and evaluation the proposal of each utterance is the real face of another
identity (``methods.base.proposal_faces``); ``voice2face generate`` takes one from
``--proposal`` or the training gallery. The contract's code of an utterance is ``e_B``, its
unit voice embedding; several utterances of one speaker are fused by their mean,
renormalised, and morph the proposal together.

Traps of manual optimization (as in ``methods/gan.py``): ``global_step`` counts two optimizer
steps per batch (``steps_per_batch = 2``; ``trainer.max_steps`` in the config counts
batches); Trainer-level gradient clipping raises, use ``optim.clip_grad``; each backward
leaves one of the two nets without gradients, so DDP runs with
``ddp_find_unused_parameters = True``; the frozen voice embedder stays in eval mode.

The pairing is drawn on the device by tensor operations (``pairing_generator``: seeded by the
run's seed, the step and the global rank, so every DDP rank pairs its batch its own way and
a resumed run pairs as the uninterrupted one); whether a batch has two identities, which
decides the terms below, is read off the CPU batch before it moves (``training_batch_facts``),
so the step never waits for the device.

A training batch of a single identity has no pairing (``training_pairing``). It is not
skipped: under DDP a rank that skips its backward passes leaves the other ranks waiting in
their gradient all-reduce forever, and a rank that skips an optimizer step counts fewer
``global_step`` and runs one batch more than the others. So every batch runs both steps,
each with one backward, on every rank. An unpaired batch pairs each sample with a random
sample of the batch (its own identity) and keeps what needs no other identity:

* the critic step as usual: ``G(f_A, e_B)`` is a generated face whoever B is, and the
  classifier learns real faces;
* of the generator's terms, ``proposal`` and ``adversarial``, which ask the same of
  ``G(f_A, e_B)`` whoever B is. ``PAIRED_TERMS`` (``speaker``, ``identity``, ``cycle``) are
  masked: with B of A's identity each is (nearly) satisfied by copying the proposal, so
  they would reward a generator that ignores the voice. Without the speaker term's pull the
  step leans toward the proposal; such batches are rare on real data (any shuffle of
  VoxCeleb mixes identities) and ``train/paired`` (1 or 0 per batch) shows how often they
  occur. With ``proposal`` and ``adversarial`` both of weight 0 nothing is left: the
  generator's loss is a zero that still reaches its parameters, so the backward and the
  all-reduce happen, but Adam's step is not void: with zero gradients it still moves the
  weights along its momentum (and decays its moments).
"""

from __future__ import annotations

import warnings
from typing import Any

import torch

from voice2face.losses import (discriminator_loss, generator_loss, identity_loss,
                               image_l1_loss, top1_accuracy, weighted_sum)
from voice2face.methods.base import Voices
from voice2face.methods.generator import AdversarialModule
from voice2face.nets import CAECritic, GatedUNet

# the generator's loss terms, in the order of the paper's λ1..λ5, then this suite's feature term
TERMS = ("proposal", "speaker", "identity", "adversarial", "cycle", "feature")
# the terms that need the speaker B to be another identity than the proposal's A (masked on
# a batch of a single identity; see the module docstring)
PAIRED_TERMS = ("speaker", "identity", "cycle", "feature")
# the training batch's key for whether it has two identities (``CaeModule.training_batch_facts``)
PAIRED_KEY = "_paired"


def several_identities(identity: torch.Tensor) -> bool:
    """Whether a batch holds two identities or more (a host decision: on a device tensor it
    waits for the device, so training takes it from the CPU batch, ``training_batch_facts``)."""
    return bool((identity != identity[:1]).any())


def _uniform(shape: tuple[int, ...], generator: torch.Generator | None,
             device: torch.device) -> torch.Tensor:
    """Uniform draws from ``generator`` (on its own device), on ``device``."""
    where = generator.device if generator is not None else device
    return torch.rand(shape, generator=generator, device=where).to(device)


def _other_identity_partner(identity: torch.Tensor,
                            generator: torch.Generator | None) -> torch.Tensor:
    """``other_identity_pairing`` without its check: tensor operations on ``identity``'s
    device, the same draws whatever the batch (so the step never waits for the device)."""
    ids = identity.detach()
    n, device = len(ids), ids.device
    same = ids[:, None] == ids[None, :]                       # [n, n]: same identity
    first = same.int().argmax(1)                              # each group's first sample
    group_key = _uniform((n,), generator, device)[first]      # a random rank per group
    within = _uniform((n,), generator, device)                # a random order within groups
    order = within.argsort(stable=True)
    # a stable sort by the random group rank keeps the random order within each group
    order = order[group_key[order].argsort(stable=True)]
    place = order.argsort()                                   # each sample's place in order
    partner = order[(place + same.sum(1).max()) % n]          # m places further, cyclically
    # when one identity holds more than half the batch (2m > B) the shift leaves some samples
    # in their own group: a random sample of another identity instead
    fallback = torch.where(same, -1.0, _uniform((n, n), generator, device)).argmax(1)
    return torch.where(ids[partner] == ids, fallback, partner)


def other_identity_pairing(identity: torch.Tensor,
                           generator: torch.Generator | None = None) -> torch.Tensor:
    """``partner [B]``: for every sample ``i``, a sample ``partner[i]`` of another identity
    (Algorithm 1's speaker B of proposal A).

    A permutation of the batch whenever one exists, i.e. no identity holds more than half of
    it: the samples are put in a random order, grouped by identity (groups in a random
    order, a random order within each), and each is paired with the sample ``m`` places
    further on, cyclically, ``m`` being the size of the largest group. A group fills at most
    ``m`` consecutive places, so the partner lies beyond it, and as ``2m <= B`` the shift
    does not wrap round into it either. With distinct identities this is a uniformly random
    ``B``-cycle. When one identity holds more than half the batch no permutation can avoid
    it: its samples that the shift leaves inside their own group get a random sample of
    another identity instead (so some samples are B for two As).

    Tensor operations on ``identity``'s device (``generator`` may be on another). Deterministic
    for a seeded ``generator`` on a given device; ``ValueError`` for a batch of one identity
    (a check that reads the identities back: ``training_pairing`` takes that fact instead).
    """
    if not several_identities(identity):
        raise ValueError(f"pairing samples with other identities needs a batch of at least two "
                         f"identities, got {len(identity)} sample(s) of "
                         f"{len(torch.unique(identity))}")
    return _other_identity_partner(identity, generator)


def training_pairing(identity: torch.Tensor, generator: torch.Generator | None = None,
                     paired: bool | None = None) -> tuple[torch.Tensor, bool]:
    """``(partner [B], paired)``: ``other_identity_pairing`` and ``True`` when the batch has
    two identities or more; for a batch of one identity, a random permutation of the batch
    (each sample's B is of its own identity, and is itself only by chance or in a batch of
    one) and ``False``, so the batch still trains (module docstring).

    ``paired``: whether the batch has two identities, when the caller knows it (training
    reads it off the CPU batch); ``None`` decides here, reading ``identity`` back.
    Deterministic for a seeded ``generator``.
    """
    if paired is None:
        paired = several_identities(identity)
    if paired:
        return _other_identity_partner(identity, generator), True
    return _uniform((len(identity),), generator, identity.device).argsort(), False


class CaeModule(AdversarialModule):
    """Voice embedder (frozen) + ``GatedUNet`` (proposal face, voice -> face) + ``CAECritic``.

    ``voice_net`` is filled in from the voice checkpoint on the first construction and saved
    with the hyperparameters, so a CAE checkpoint rebuilds without the voice checkpoint;
    ``target_net`` likewise for the feature term's frozen face network (``self.target``,
    None without the term).
    """

    needs_proposal = True

    def __init__(self, cfg: dict[str, Any], data: dict[str, Any],
                 voice_net: dict[str, Any] | None = None,
                 target_net: dict[str, Any] | None = None):
        super().__init__(cfg, data, voice_net)
        m = cfg["model"]
        # a checkpoint from before the feature term: its weights name the paper's five
        self.weights = self._check_weights({"feature": 0.0, **m["weights"]})
        self.attach_target(self.weights["feature"], target_net, "model.weights.feature")
        self.gating = m["gating"]
        self.generator = GatedUNet(data["face_size"], self.voice.config["dim"], m["width"],
                                   gating=m["gating"], rank=m["rank"], up_kernel=m["up_kernel"])
        self.critic = CAECritic(data["face_size"], data["num_train_identities"],
                                width=m["critic_width"])
        self._warned_unpaired = False

    @staticmethod
    def _check_weights(weights: dict[str, float]) -> dict[str, float]:
        weights = {k: float(v) for k, v in weights.items()}
        if set(weights) != set(TERMS):
            raise ValueError(f"model.weights must give exactly the terms {TERMS}, got "
                             f"{sorted(weights)}")
        if any(v < 0 for v in weights.values()) or not any(weights.values()):
            raise ValueError(f"model.weights must be >= 0 and not all 0, got {weights}")
        return weights

    # --- the nets' use -------------------------------------------------------------------

    @property
    def variant(self) -> str | None:
        if self.gating == "lowrank":
            return f"lowrank, rank {self.cfg['model']['rank']}"
        return self.gating

    @torch.no_grad()
    def encode_voices(self, voices: Voices) -> torch.Tensor:
        """``e(voice)``: the frozen embedder's unit voice embeddings (``fuse_codes``: their
        mean, renormalised)."""
        return self.voice(voices.mel, voices.lengths)

    @torch.no_grad()
    def faces_from_codes(self, codes: torch.Tensor, proposal: torch.Tensor | None = None
                         ) -> torch.Tensor:
        """The proposal faces morphed toward the speakers of the voice embeddings:
        ``G(proposal, e)``."""
        if proposal is None:
            raise ValueError("the CAE morphs a proposal face toward the voice: give one per "
                             "utterance")
        return self.generator(proposal, codes)

    # --- training ------------------------------------------------------------------------

    def pairing_generator(self) -> torch.Generator:
        """The RNG of this batch's pairing, on the module's device: a function of the seed,
        the step and the global rank, so a resumed run pairs its batches as the uninterrupted
        one would, and under DDP every rank draws its own pairings (rank 0 those of a single
        process)."""
        # the ranks' offsets (golden-ratio multiples) differ in the low 32 bits, which is all
        # a CPU generator reads of its seed, by 1.9 million or more for up to 1,000 ranks:
        # more than the steps of any run, so no two (rank, step) share a seed
        seed = (int(self.cfg["seed"]) * 1_000_003 + self.global_step
                + self.global_rank * 2_654_435_761)
        return torch.Generator(device=self.device).manual_seed(seed)

    def training_batch_facts(self, batch: dict) -> dict:
        """Also whether the batch has two identities (``PAIRED_KEY``): it decides which terms
        are computed and logged, and is read here off the CPU batch."""
        batch = super().training_batch_facts(batch)
        if PAIRED_KEY not in batch:
            batch[PAIRED_KEY] = several_identities(batch["identity"])
        return batch

    def generator_terms(self, fake: torch.Tensor, face_a: torch.Tensor, face_b: torch.Tensor,
                        emb_a: torch.Tensor, label_b: torch.Tensor, paired: bool = True
                        ) -> dict[str, torch.Tensor]:
        """The generator's loss terms of nonzero weight (Algorithm 1, step 2; the table in the
        module docstring), for ``fake = G(f_A, e_B)``; without ``PAIRED_TERMS`` when B is
        not of another identity (``paired`` false)."""
        w = self.weights if paired else {k: (0.0 if k in PAIRED_TERMS else v)
                                         for k, v in self.weights.items()}
        terms = {}
        if w["proposal"]:
            terms["proposal"] = image_l1_loss(fake, face_a)
        if w["speaker"]:
            terms["speaker"] = image_l1_loss(fake, face_b)
        if w["identity"] or w["adversarial"]:
            out = self.critic(fake)
            if w["identity"]:
                terms["identity"] = identity_loss(out["identity"], label_b)
            if w["adversarial"]:
                terms["adversarial"] = generator_loss(out["adversarial"])
        if w["cycle"]:
            terms["cycle"] = image_l1_loss(self.generator(fake, emb_a), face_a)
        if w["feature"]:
            terms["feature"] = self.feature_loss(fake, face_b)
        return terms

    def training_step(self, batch, batch_idx):
        opt_g, opt_d = self.optimizers()
        face, labels = batch["face"], batch["label"]
        partner, paired = training_pairing(batch["identity"], self.pairing_generator(),
                                           batch.get(PAIRED_KEY))
        if not paired:
            self._warn_unpaired(batch["identity"])
        emb = self.training_voices(batch)
        face_b, emb_b, label_b = face[partner], emb[partner], labels[partner]
        fake = self.generator(face, emb_b)  # G(f_A, e_B), used by both steps
        n = len(face)

        # step 1: discriminator on real vs generated, classifier on real faces (shared trunk)
        with self.toggled_optimizer(opt_d):
            out = self.critic(torch.cat([face, fake.detach()]))
            loss_d = discriminator_loss(out["adversarial"][:n], out["adversarial"][n:])
            loss_c = identity_loss(out["identity"][:n], labels)
            self._update(opt_d, loss_d + loss_c)

        # step 2: the generator on λ1..λ5 (on an unpaired batch, the terms that need no pair)
        with self.toggled_optimizer(opt_g):
            terms = self.generator_terms(fake, face, face_b, emb, label_b, paired)
            # nothing left: a zero that reaches the generator, so the backward still happens
            loss_g = weighted_sum(terms, self.weights) if terms else fake.sum() * 0.0
            self._update(opt_g, loss_g)

        # tensors only (a Python number would be copied to the device, and wait for it), and
        # only the generator's loss on the progress bar (which reads its values every step)
        self.log("train/loss_g", loss_g, prog_bar=True, batch_size=n)
        self.log_dict({"train/loss_d": loss_d, "train/loss_c": loss_c,
                       **{f"train/{k}": v.detach() for k, v in terms.items()},
                       "train/paired": loss_d.detach().new_full((), float(paired)),
                       "train/acc_real": top1_accuracy(out["identity"][:n].detach(), labels)},
                      batch_size=n)

    def _warn_unpaired(self, identity: torch.Tensor) -> None:
        """Once per module, from whichever rank meets it (a DDP rank other than 0 may be
        the only one)."""
        if self._warned_unpaired:
            return
        self._warned_unpaired = True
        warnings.warn(f"cae: a training batch of {len(identity)} sample(s) of one identity: "
                      f"trained without the terms {PAIRED_TERMS}, which need a speaker of "
                      f"another identity (train/paired logs how often; warned once)",
                      stacklevel=2)
