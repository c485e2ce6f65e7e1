"""``face_decoder``: the face decoder of the Speech2Face family (Oh et al., "Speech2Face:
Learning the Face Behind a Voice", CVPR 2019, Sec. 3.2), trained on its own.

A frozen face-identity network (``model.target``: a ``face`` checkpoint other than the judge)
gives each training face its feature, the unit embedding (see ``regression``'s docstring for
why that layer); ``FaceDecoder`` is trained to reconstruct the face from it, with an L1 loss in
pixels and, optionally (``model.feature_weight``), an L1 between the target network's
features of the reconstruction and of the face, as Speech2Face's decoder is trained to keep
the face recogniser's features (Cole et al., CVPR 2017). The target network, not the judge:
the judge never trains anything it measures. ``regression`` then renders the features it
predicts from voices with this decoder, frozen.

Validation: ``val/recon_l1`` on the validation identities' faces (unseen people: the decoder
has to generalise over the feature space) and a grid real | decoded. ``voice2face evaluate``
does not measure it (a part of ``regression``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torchmetrics import MeanMetric

from voice2face.grid import GridCollector, log_grid
from voice2face.methods.base import Evaluation, MethodModule
from voice2face.methods.common import adam, unit_features
from voice2face.methods.pretrained import freeze, load_target
from voice2face.nets import FaceTrunk
from voice2face.nets.speech2face import FaceDecoder


class FaceDecoderModule(MethodModule):
    """``target``: FaceTrunk (frozen, kept in the checkpoint), ``decoder``: FaceDecoder."""

    evaluation = Evaluation.PRETRAINING  # a part of `regression`
    frozen_nets = ("target",)

    def __init__(self, cfg: dict[str, Any], data: dict[str, Any],
                 target_net: dict[str, Any] | None = None):
        super().__init__(cfg, data)
        m = cfg["model"]
        if target_net is None:  # first construction: from the target checkpoint
            self.target, target_net = load_target(m["target"], data, cfg["eval"]["judge"])
        else:  # from this module's checkpoint: the weights come with the state dict
            self.target = freeze(FaceTrunk(**target_net))
        self.hparams["target_net"] = target_net
        self.decoder = FaceDecoder(target_net["dim"], data["face_size"], m["width"], m["norm"])
        self.val_l1 = MeanMetric()
        self._grid: GridCollector | None = None

    def exported_nets(self):
        """``decoder`` and the ``target`` it renders the features of (``load_face_decoder``:
        the regression checks that its own target is that one)."""
        return {"decoder": ("decoder", self.decoder.config),
                "target": ("target", self.hparams["target_net"])}

    def reconstruction_loss(self, faces: torch.Tensor) -> tuple[torch.Tensor, dict]:
        with torch.no_grad():
            feature = unit_features(self.target, faces)
        recon = self.decoder(feature)
        pixels = (recon - faces).abs().mean()
        logs = {"loss_pixels": pixels}
        loss = pixels
        w = float(self.cfg["model"]["feature_weight"])
        if w:  # gradients flow through the frozen target network into the decoder
            logs["loss_feature"] = (unit_features(self.target, recon) - feature).abs().sum(-1).mean()
            loss = loss + w * logs["loss_feature"]
        return loss, {"recon": recon, **logs}

    def training_step(self, batch, batch_idx):
        faces = batch["faces"].flatten(0, 1)  # every face of the sample
        loss, out = self.reconstruction_loss(faces)
        # only the loss on the progress bar, which reads its values every step
        self.log("train/loss", loss, prog_bar=True, batch_size=len(faces))
        self.log_dict({f"train/{k}": v for k, v in out.items() if k.startswith("loss_")},
                      batch_size=len(faces))
        return loss

    def on_validation_epoch_start(self) -> None:
        e = self.cfg["eval"]
        self._grid = GridCollector(e["grid_identities"], e["grid_utterances"], n_real=1)

    def validation_step(self, batch, batch_idx):
        with torch.no_grad():
            recon = self.decoder(unit_features(self.target, batch["face"]))
        self.val_l1.update((recon - batch["face"]).abs().flatten(1).mean(1))
        self._grid.add(batch, recon)

    def on_validation_epoch_end(self) -> None:
        if self.trainer.sanity_checking:
            self.val_l1.reset()
            return
        self.log("val/recon_l1", self.val_l1)
        self._log_grid()

    def _log_grid(self) -> None:
        if self.trainer.is_global_zero:
            step = self.global_step
            log_grid(self._grid.image(), self.loggers, "val/grid", step,
                     Path(self.trainer.default_root_dir) / "grids" / f"val-step{step:06d}.png")

    def configure_optimizers(self):
        return adam(self.decoder.parameters(), self.cfg["optim"])
