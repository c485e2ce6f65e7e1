"""``voice``: speaker-recognition pretraining of the voice embedder (Wen, Singh & Raj,
NeurIPS 2019, Sec. 4 and Table 2).

The embedder is trained with identity cross-entropy over the training identities'
utterances (random crops); a cosine classifier on the unit embedding keeps what it learns on
the sphere, where the GAN reads it. Validation: identification of the unseen validation
identities by their own utterances (``val/recall@K``, see ``SplitHalfRecall``).
"""

from __future__ import annotations

import warnings

from voice2face.losses import identity_loss, top1_accuracy
from voice2face.methods.base import Evaluation, MethodModule
from voice2face.methods.common import SplitHalfRecall, adam
from voice2face.nets import CosineClassifier, VoiceEmbedder


class VoiceModule(MethodModule):
    """Voice embedder + cosine identity classifier."""

    evaluation = Evaluation.PRETRAINING  # a part of others: the paper profiles' frozen voice net

    def __init__(self, cfg, data):
        super().__init__(cfg, data)
        m = cfg["model"]
        self.voice = VoiceEmbedder(dim=m["dim"], width=m["width"], pooling=m["pooling"],
                                   norm=m.get("norm", "bin"))  # older checkpoints: bin
        self.classifier = CosineClassifier(m["dim"], data["num_train_identities"], m["scale"])
        self.val_recall = SplitHalfRecall("val")

    def exported_nets(self):
        return {"voice": ("voice", self.voice.config)}  # load_voice_embedder

    def training_step(self, batch, batch_idx):
        logits = self.classifier(self.voice(batch["mel"], batch["mel_lengths"]))
        loss = identity_loss(logits, batch["label"])
        # only the loss on the progress bar, which reads its values every step
        self.log("train/loss", loss, prog_bar=True, batch_size=len(logits))
        self.log("train/acc", top1_accuracy(logits, batch["label"]), batch_size=len(logits))
        return loss

    def validation_step(self, batch, batch_idx):
        emb = self.voice(batch["mel"], batch["mel_lengths"])
        self.val_recall.update(emb, batch["identity"], batch["index"])

    def on_validation_epoch_end(self):
        if self.trainer.sanity_checking:  # two batches: identities without a gallery half
            self.val_recall.reset()
            return
        try:
            self.log_dict(self.val_recall.compute())
        except ValueError as e:
            warnings.warn(f"voice: no validation recall ({e})")

    def configure_optimizers(self):
        return adam(self.parameters(), self.cfg["optim"])
