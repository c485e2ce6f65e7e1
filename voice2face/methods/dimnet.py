"""``dimnet``: Disjoint Mapping Network (Wen, Ismail, Singh & Raj, ICLR 2019).

A voice embedder and a face embedder are trained without paired comparisons: both feed
the same covariate classifiers (identity and gender), so each modality learns to predict
the covariates from one shared space, and voices and faces of one person land close to each
other. Its voice embedder can replace the ``voice`` pretraining (the CAE paper pretrained
its voice encoder this way; ``load_voice_embedder`` takes either checkpoint), and its two
embedders give a direct voice–face matching baseline: ``voice2face evaluate`` measures it in
its own space (voice embedding as probe, face embeddings as gallery).

Validation: 1:2 voice–face matching of the validation identities in that space.

The paper's covariates are categorical (identity, gender, nationality). On a synthetic world,
whose manifest regenerates every identity's hidden ``z = (gender, age, size)``,
``model.attribute_weight > 0`` adds a continuous covariate: one linear head, shared like the
others, regressing z from either embedding (mean squared error). Age and size are what
separate speakers of one gender, and identity classification alone teaches them slowly; the
head makes both embedders carry them, the voice's for the methods that read it, the face's
for the CAE's feature term (``load_target`` reads it from this checkpoint). On other data
there is no z and no head.
"""

from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F

from voice2face.losses import covariate_loss, top1_accuracy
from voice2face.methods.base import Embeddings, Evaluation, MethodModule, Voices
from voice2face.methods.common import adam, world_attributes
from voice2face.metrics import CrossModalMatching
from voice2face.nets import CovariateHeads, FaceTrunk, VoiceEmbedder


class DimnetModule(MethodModule):
    """``voice``: VoiceEmbedder, ``face``: FaceTrunk, ``heads``: CovariateHeads (shared)."""

    evaluation = Evaluation.OWN_SPACE
    val_gallery = True

    def __init__(self, cfg, data):
        super().__init__(cfg, data)
        m = cfg["model"]
        self.voice = VoiceEmbedder(dim=m["dim"], width=m["voice_width"],
                                   pooling=m.get("voice_pooling", "mean"),
                                   norm=m.get("voice_norm", "bin"))  # older checkpoints
        self.face_config = {"face_size": data["face_size"], "dim": m["dim"],
                            "width": m["face_width"], "norm": "batch"}
        self.face = FaceTrunk(**self.face_config)
        z = world_attributes(data) if m.get("attribute_weight", 0) > 0 else None
        self.heads = CovariateHeads(m["dim"], data["num_train_identities"], m["scale"],
                                    attributes=0 if z is None else z.shape[1])
        # not in the checkpoint: regenerated from the data on every construction
        self.register_buffer("world_z", z, persistent=False)
        self.val_match = CrossModalMatching(n_way=2, exhaustive=True)

    def exported_nets(self):
        """``voice``: ``load_voice_embedder``; ``face``: ``load_target`` (a feature term's
        face network; its embedding unnormalised, as the trunk gives it)."""
        return {"voice": ("voice", self.voice.config), "face": ("face", self.face_config)}

    # either modality in the shared space, with the shared heads' predictions
    def voice_outputs(self, mel: torch.Tensor, lengths: torch.Tensor | None = None):
        emb = self.voice(mel, lengths)
        return {"embedding": emb, **self.heads(emb)}

    def face_outputs(self, face: torch.Tensor):
        emb = torch.nn.functional.normalize(self.face(face), dim=-1)
        return {"embedding": emb, **self.heads(emb)}

    # the contract: evaluation measures DIMNet in its own space
    def embed_voices(self, voices: Voices) -> Embeddings:
        return Embeddings.of(self.voice_outputs(voices.mel, voices.lengths))

    def embed_faces(self, faces: torch.Tensor) -> Embeddings:
        return Embeddings.of(self.face_outputs(faces))

    def training_step(self, batch, batch_idx):
        w = self.cfg["model"]["gender_weight"]
        faces = batch["faces"][:, :self.cfg["model"].get("face_views", 0) or None]
        k = faces.shape[1]
        voice = self.voice_outputs(batch["mel"], batch["mel_lengths"])
        face = self.face_outputs(faces.flatten(0, 1))
        loss_v = covariate_loss(voice, batch["label"], batch["gender"], w)
        loss_f = covariate_loss(face, batch["label"].repeat_interleave(k),
                                batch["gender"].repeat_interleave(k), w)
        loss = loss_v + loss_f
        if self.world_z is not None:
            z = self.world_z[batch["identity"]]
            loss_a = (F.mse_loss(voice["attributes"].float(), z)
                      + F.mse_loss(face["attributes"].float(), z.repeat_interleave(k, 0)))
            loss = loss + self.cfg["model"]["attribute_weight"] * loss_a
            self.log("train/attribute_loss", loss_a, batch_size=len(batch["label"]))
        # only the loss on the progress bar, which reads its values every step
        self.log("train/loss", loss, prog_bar=True, batch_size=len(batch["label"]))
        self.log_dict({"train/loss_voice": loss_v, "train/loss_face": loss_f,
                       "train/acc_voice": top1_accuracy(voice["identity"], batch["label"])},
                      batch_size=len(batch["label"]))
        return loss

    def validation_step(self, batch, batch_idx, dataloader_idx=0):
        if dataloader_idx == 0:
            emb, role = self.voice(batch["mel"], batch["mel_lengths"]), "probe"
        else:
            emb, role = self.face_outputs(batch["face"])["embedding"], "gallery"
        self.val_match.update(emb, batch["identity"], batch["gender"], batch["index"], role=role)

    def on_validation_epoch_end(self):
        if self.trainer.sanity_checking:
            self.val_match.reset()
            return
        try:
            self.log("val/match_1to2", self.val_match.compute())
        except ValueError as e:
            warnings.warn(f"dimnet: no validation matching ({e})")
        self.val_match.reset()

    def configure_optimizers(self):
        return adam(self.parameters(), self.cfg["optim"])
