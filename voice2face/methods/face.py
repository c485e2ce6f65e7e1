"""``face``: the face-identity encoder, trained on the training identities' real faces.

Identity (cosine) and gender heads on a unit embedding (``FaceEncoder``). Its checkpoint is
the **judge** of evaluation: the embedding for matching and recall, the identity head for
top-k on known speakers, the gender head for the gender of generated faces. A judge is never
a training signal of what it judges (the GAN trains its own critic).

Every face of a training sample is used (``faces``: K per utterance). Validation:
identification of the unseen validation identities by their own gallery images
(``val/recall@K``) and the gender accuracy on them (``val/gender_acc``).
"""

from __future__ import annotations

import warnings

from torchmetrics.classification import BinaryAccuracy

from voice2face.losses import covariate_loss, top1_accuracy
from voice2face.methods.base import Evaluation, MethodModule
from voice2face.methods.common import SplitHalfRecall, adam
from voice2face.nets import FaceEncoder


class FaceModule(MethodModule):
    """Trains a ``FaceEncoder`` (``self.encoder``)."""

    evaluation = Evaluation.PRETRAINING  # the judge of evaluation
    val_gallery = True

    def __init__(self, cfg, data):
        super().__init__(cfg, data)
        m = cfg["model"]
        self.encoder_config = {"face_size": data["face_size"],
                               "num_classes": data["num_train_identities"], "dim": m["dim"],
                               "width": m["width"], "norm": "batch", "scale": m["scale"]}
        self.encoder = FaceEncoder(**self.encoder_config)
        self.val_recall = SplitHalfRecall("val")
        self.val_gender = BinaryAccuracy()

    def exported_nets(self):
        """``encoder``: the judge (``load_judge``); ``trunk``: its trunk alone, the target
        network of the Speech2Face family (``load_target``)."""
        c = self.encoder_config
        trunk = {k: c[k] for k in ("face_size", "dim", "width", "norm")}
        return {"encoder": ("encoder", c), "trunk": ("encoder.trunk", trunk)}

    def training_step(self, batch, batch_idx):
        faces = batch["faces"].flatten(0, 1)  # [B*K, 3, S, S]
        k = batch["faces"].shape[1]
        labels, gender = batch["label"].repeat_interleave(k), batch["gender"].repeat_interleave(k)
        out = self.encoder(faces)
        loss = covariate_loss(out, labels, gender, self.cfg["model"]["gender_weight"])
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

    def on_validation_epoch_end(self):
        if self.trainer.sanity_checking:
            self.val_recall.reset()
            self.val_gender.reset()
            return
        self.log("val/gender_acc", self.val_gender)
        try:
            self.log_dict(self.val_recall.compute())
        except ValueError as e:
            warnings.warn(f"face: no validation recall ({e})")

    def configure_optimizers(self):
        return adam(self.parameters(), self.cfg["optim"])
