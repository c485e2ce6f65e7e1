"""``face``: the face-identity encoder, trained on the training identities' real faces.

Identity (cosine) and gender heads on a unit embedding (``FaceEncoder``). Its checkpoint is
the **judge** of evaluation: the embedding for matching and recall, the identity head for
top-k on known speakers, the gender head for the gender of generated faces. A judge is never
a training signal of what it judges (the GAN trains its own critic).

On a synthetic world, whose manifest regenerates every identity's hidden attributes
``z = (gender, age, size)``, ``model.attribute_weight > 0`` adds a linear head regressing z
from the embedding (mean squared error), so that the embedding carries what a voice can
reveal and the evaluation's attribute read-outs see it; on other data (no z) the head is
absent. ``val/attribute_r2_<name>`` is its R² on the validation faces.

Every face of a training sample is used (``faces``: K per utterance), mirrored at random and
moved by up to ``model.augment`` of its side (``augment``): the judge sees each identity's
few photos in many positions, so what it learns of an identity generalises to unseen
photos and identities instead of memorising the training ones. Validation:
identification of the unseen validation identities by their own gallery images
(``val/recall@K``) and the gender accuracy on them (``val/gender_acc``).
"""

from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F
from torchmetrics.classification import BinaryAccuracy
from torchmetrics.regression import R2Score

from voice2face.losses import covariate_loss, top1_accuracy
from voice2face.methods.base import Evaluation, MethodModule
from voice2face.methods.common import SplitHalfRecall, adam, world_attributes
from voice2face.nets import FaceEncoder
from voice2face.synth.audit import ATTRIBUTES


def augment(faces: torch.Tensor, shift: float) -> torch.Tensor:
    """Every face mirrored with probability 1/2 and moved by up to ``shift`` of its side in
    each direction (bilinear, border pixels repeated): what changes from photo to photo, so
    that the judge's embedding cannot hold a training photo's position or handedness.
    Never scaled: a head's size against the frame is what the world's size shows."""
    n = len(faces)
    flip = torch.rand(n, device=faces.device) < 0.5
    faces = torch.where(flip[:, None, None, None], faces.flip(-1), faces)
    theta = torch.zeros(n, 2, 3, device=faces.device, dtype=faces.dtype)
    theta[:, 0, 0] = theta[:, 1, 1] = 1.0
    theta[:, :, 2] = (torch.rand(n, 2, device=faces.device) * 2 - 1) * 2 * shift  # [-1, 1] grid
    grid = F.affine_grid(theta, list(faces.shape), align_corners=False)
    return F.grid_sample(faces, grid, mode="bilinear", padding_mode="border",
                         align_corners=False)


class FaceModule(MethodModule):
    """Trains a ``FaceEncoder`` (``self.encoder``)."""

    evaluation = Evaluation.PRETRAINING  # the judge of evaluation
    val_gallery = True

    def __init__(self, cfg, data):
        super().__init__(cfg, data)
        m = cfg["model"]
        z = world_attributes(data) if m.get("attribute_weight", 0) > 0 else None
        self.encoder_config = {"face_size": data["face_size"],
                               "num_classes": data["num_train_identities"], "dim": m["dim"],
                               "width": m["width"], "norm": "batch", "scale": m["scale"],
                               "attributes": 0 if z is None else z.shape[1]}
        self.encoder = FaceEncoder(**self.encoder_config)
        # not in the checkpoint: regenerated from the data on every construction
        self.register_buffer("world_z", z, persistent=False)
        self.val_recall = SplitHalfRecall("val")
        self.val_gender = BinaryAccuracy()
        self.val_attributes = R2Score(multioutput="raw_values") if z is not None else None

    def exported_nets(self):
        """``encoder``: the judge (``load_judge``); ``trunk``: its trunk alone, the target
        network of the Speech2Face family (``load_target``)."""
        c = self.encoder_config
        trunk = {k: c[k] for k in ("face_size", "dim", "width", "norm")}
        return {"encoder": ("encoder", c), "trunk": ("encoder.trunk", trunk)}

    def training_step(self, batch, batch_idx):
        faces = batch["faces"].flatten(0, 1)  # [B*K, 3, S, S]
        if self.cfg["model"]["augment"] > 0:
            faces = augment(faces, self.cfg["model"]["augment"])
        k = batch["faces"].shape[1]
        labels, gender = batch["label"].repeat_interleave(k), batch["gender"].repeat_interleave(k)
        out = self.encoder(faces)
        loss = covariate_loss(out, labels, gender, self.cfg["model"]["gender_weight"])
        if self.world_z is not None:
            z = self.world_z[batch["identity"].repeat_interleave(k)]
            attribute_loss = F.mse_loss(out["attributes"].float(), z)
            loss = loss + self.cfg["model"]["attribute_weight"] * attribute_loss
            self.log("train/attribute_loss", attribute_loss, batch_size=len(labels))
        # only the loss on the progress bar, which reads its values every step
        self.log("train/loss", loss, prog_bar=True, batch_size=len(labels))
        self.log("train/acc", top1_accuracy(out["identity"], labels), batch_size=len(labels))
        return loss

    def validation_step(self, batch, batch_idx, dataloader_idx=0):
        if dataloader_idx == 0:  # utterances: nothing for a face net
            return
        out = self.encoder(batch["face"])
        self.val_recall.update(out["embedding"], batch["identity"], batch["index"])
        self.val_gender.update(out["gender"].sigmoid(), batch["gender"])
        if self.val_attributes is not None:
            self.val_attributes.update(out["attributes"].float(),
                                       self.world_z[batch["identity"]])

    def on_validation_epoch_end(self):
        if self.trainer.sanity_checking:
            for metric in (self.val_recall, self.val_gender, self.val_attributes):
                if metric is not None:
                    metric.reset()
            return
        self.log("val/gender_acc", self.val_gender)
        if self.val_attributes is not None:
            r2 = self.val_attributes.compute()
            self.val_attributes.reset()
            self.log_dict({f"val/attribute_r2_{n}": v for n, v in zip(ATTRIBUTES, r2)})
        try:
            self.log_dict(self.val_recall.compute())
        except ValueError as e:
            warnings.warn(f"face: no validation recall ({e})")

    def configure_optimizers(self):
        return adam(self.parameters(), self.cfg["optim"])
