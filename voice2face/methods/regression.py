"""``regression``: Speech2Face-style feature regression (Oh et al., "Speech2Face: Learning the
Face Behind a Voice", CVPR 2019, Sec. 3 and Eq. 1).

A voice encoder predicts, from a few seconds of speech, the feature that a frozen
face-identity network gives the speaker's face; a face decoder trained on its own
(``face_decoder``) renders the prediction, frozen. So evaluation sees faces like any
generating method's, and this family's own measures come on top (``extra_metrics``).

* **Targets** (``model.target``): a ``face`` checkpoint other than the judge's (another
  seed; ``load_target`` refuses the judge's weights), or a ``dimnet`` checkpoint's face
  embedder (the ``cpu`` profile's: its shared head regresses a synthetic world's attributes,
  so its embedding carries them; trained without the judge). The feature is its unit embedding,
  the L2-normalised trunk output, rather than the raw trunk output: the network was trained
  through a cosine classifier, which ignores the trunk's norm, so the norm carries no
  identity and only adds scale noise to L1/L2 distances; every loss here and the decoder
  normalise anyway. The paper's target is VGG-Face's 4096-d fc7; a user who supplies such an
  extractor as a ``face`` checkpoint (``model.dim=4096``) gets that setting. Per sample, the
  target is the normalised mean feature of its K faces: the speaker's identity rather than
  one photo's pose and light.
* **Voice encoder** (``model.encoder``): ``spectrogram`` (default), Speech2Face's
  ``SpectrogramEncoder`` on the power-law compressed real and imaginary STFT (the data must
  carry it: ``data.spectrogram=true``); ``mel``, Wen et al.'s 1-D ``VoiceEmbedder`` on
  log-mel, trained from scratch here; ``embedder``, a frozen pretrained voice embedder
  (``model.voice``, a ``voice`` or ``dimnet`` checkpoint, as the GAN and the CAE read voices;
  ``model.cache_voice`` as theirs) and a trained ``FeatureHead`` (``model.hidden`` units, 512
  if null). The ``cpu`` profile's: in its few hundred steps an encoder trained from scratch
  learns the speaker's gender and little else (docs/methods.md), while the pretrained
  embedder already carries age and size.
* **Loss** (``model.loss``, the run's ``variant``): ``l1`` between normalised features (the
  default, best in the reproductions), ``l2`` (Eq. 1's feature term), ``l1_l2``
  (L1 + ``model.l2_weight`` L2) or ``infonce`` (``model.temperature``; other utterances of
  the same identity are not negatives); ``voice2face.losses``.
* **Decoder** (``model.decoder``): a ``face_decoder`` checkpoint trained on the same target
  network's features (checked). Regression and decoder train in either order: without the
  decoder, training works and validation logs the feature measures only; evaluation and
  generation need it (``voice2face evaluate --decoder PATH``, the contract's
  ``replace_part``) and say so.

Utterance length: training sees crops (``data.crop_seconds``); validation and evaluation
see whole utterances, but the encoder does not: its first blocks keep 64 channels × 257 bins
of every frame (x ``model.width``), so a 30 s utterance in a batch of 64 would need over
10 GB per activation, and VoxCeleb has utterances over 100 s. An utterance longer than
``model.eval_max_seconds`` (6 s: the length of the speech sections Speech2Face reconstructs
faces from) is split into equal windows of at most that length; their predicted unit
features are averaged, weighted by the windows' frames, and renormalised (as ``fuse_codes``
fuses utterances). An utterance within one window is predicted exactly as before, and no
encoder call takes more windows than the batch has utterances, so an evaluation batch
costs at most what the same number of window-long crops would (``null``: whole utterances).

Validation: ``val/loss``, ``val/feature_{l1,l2,cosine}`` between the predicted and the true
feature of the validation speakers, ``val/feature_recall@K`` of the speaker among the
validation identities' true features (cosine); with a decoder also ``GeneratorModule``'s judged
metrics, and a grid real | decoded from the true feature | decoded from the voice.

Generation: the contract's code of an utterance is its predicted feature, normalised;
several utterances of one speaker are fused by their mean, renormalised, which the decoder
renders (``voice2face generate --ckpt REG.ckpt a.wav b.wav``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from lightning.pytorch.utilities import rank_zero_warn
from torchmetrics import MeanMetric

from datamodules.features import N_FFT, AudioFeatures, compress_spectrogram
from voice2face.constants import SAMPLE_RATE
from voice2face.grid import GridCollector
from voice2face.losses import feature_l1_l2_loss, get_feature_loss, info_nce_loss
from voice2face.methods.base import CheckpointError, Voices
from voice2face.methods.common import adam, unit_features
from voice2face.methods.generator import VoiceFedModule
from voice2face.methods.pretrained import freeze, load_face_decoder, load_target, same_weights
from voice2face.metrics import RecallAtK, applicable
from voice2face.nets import FaceTrunk, FeatureHead, SpectrogramEncoder, VoiceEmbedder
from voice2face.nets.speech2face import FaceDecoder
from voice2face.synth.audit import ATTRIBUTES, LinearProbe, hidden_attributes, r_squared

ENCODERS = ("spectrogram", "mel", "embedder")
# the embedder head's hidden units when model.hidden is null
HEAD_HIDDEN = 512
EXTRA_TOP_K = (1, 5, 10, 20, 50)
SIMILARITIES = ("cosine", "l1", "l2")
PROBE_RIDGE = 1e-2  # of the attribute probe on predicted features (the instrument's voice probe's)
# model.eval_max_seconds of checkpoints saved before the key existed (experiments/regression.yaml)
EVAL_MAX_SECONDS = 6.0


def _no_sync() -> bool:
    # evaluation is one process, also when it runs on rank 0 after a DDP fit
    return False


def feature_distances(pred: torch.Tensor, true: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per row: L1 and L2 distance and cosine between the L2-normalised features."""
    p, t = F.normalize(pred, dim=-1), F.normalize(true, dim=-1)
    d = p - t
    return {"l1": d.abs().sum(-1), "l2": d.norm(dim=-1), "cosine": (p * t).sum(-1)}


def feature_attribute_r2(datamodule, predicted: dict[str, tuple[list, list]]
                         ) -> dict[str, float]:
    """``RegressionModule.extra_metrics``' attribute probe: ``predicted`` holds, per split
    (``known``, ``test``), the batches' predicted unit features and speaker identities; empty
    for data that is no synthetic world or a split without utterances."""
    if not all(predicted[s][0] for s in ("known", "test")):
        return {}
    world = hidden_attributes(datamodule.root, datamodule.identities)
    if world is None:
        return {}
    (x_fit, id_fit), (x_test, id_test) = (
        (torch.cat(predicted[s][0]).double().numpy(), torch.cat(predicted[s][1]).numpy())
        for s in ("known", "test"))
    probe = LinearProbe(PROBE_RIDGE).fit(x_fit, world.z[id_fit])
    r2 = r_squared(probe.predict(x_test), world.z[id_test])
    return {f"test/feature_attribute_r2_{k}": float(v) for k, v in zip(ATTRIBUTES, r2)}


class RegressionModule(VoiceFedModule):
    """``encoder``: voice -> feature (with ``model.encoder=embedder``, the head on the frozen
    ``voice``); ``target``: FaceTrunk (frozen); ``decoder``: FaceDecoder (frozen, None until one
    is given). Only the encoder trains."""

    replaceable_parts = ("decoder",)
    frozen_nets = ("voice", "target", "decoder")

    def __init__(self, cfg: dict[str, Any], data: dict[str, Any],
                 target_net: dict[str, Any] | None = None,
                 decoder_net: dict[str, Any] | None = None,
                 voice_net: dict[str, Any] | None = None):
        super().__init__(cfg, data, voice_net)
        m = cfg["model"]
        rebuilding = target_net is not None  # from this module's own checkpoint
        if rebuilding:
            self.target = freeze(FaceTrunk(**target_net))
        else:
            self.target, target_net = load_target(m["target"], data, cfg["eval"]["judge"])
        self.hparams["target_net"] = target_net
        dim = target_net["dim"]
        self.encoder_kind = m["encoder"]
        if self.encoder_kind == "spectrogram":
            if not cfg["data"]["spectrogram"]:
                raise ValueError("regression: model.encoder=spectrogram reads the complex STFT; "
                                 "set data.spectrogram=true (or model.encoder=mel)")
            self.encoder = SpectrogramEncoder(dim, m["width"], freq_bins=N_FFT // 2 + 1,
                                              hidden=m["hidden"],
                                              time_pools=tuple(m["time_pools"]))
        elif self.encoder_kind == "mel":
            self.encoder = VoiceEmbedder(dim=dim, width=m["width"], norm="utterance")
        elif self.encoder_kind == "embedder":
            hidden = HEAD_HIDDEN if m["hidden"] is None else int(m["hidden"])
            self.encoder = FeatureHead(self.voice.dim, dim, hidden)
        else:
            raise ValueError(f"regression: unknown model.encoder {self.encoder_kind!r}; valid: "
                             f"{', '.join(ENCODERS)}")
        get_feature_loss(m["loss"])  # an unknown name fails here, listing the valid ones
        self.decoder: FaceDecoder | None = None
        if decoder_net is not None:
            self.decoder = freeze(FaceDecoder(**decoder_net))
        elif not rebuilding and m["decoder"] and Path(m["decoder"]).is_file():
            self._attach_decoder(m["decoder"])
        elif not rebuilding:
            rank_zero_warn(f"regression: no face decoder at model.decoder={m['decoder']}; "
                           f"training regresses features and validation logs feature metrics "
                           f"only. Evaluation and generation need one: `voice2face train "
                           f"face_decoder --export {m['decoder']}`")
        self.hparams.setdefault("decoder_net", None)

        self._predicted: dict[str, torch.Tensor] | None = None  # by key, after cache_utterances
        self.val_loss = MeanMetric()
        self.val_distance = torch.nn.ModuleDict({k: MeanMetric() for k in SIMILARITIES})
        self.val_feature_recall = RecallAtK((1, 5), similarity="cosine")

    # --- the nets' use -------------------------------------------------------------------

    @classmethod
    def uses_voice(cls, cfg) -> bool:
        return cfg["model"]["encoder"] == "embedder"

    @property
    def variant(self) -> str | None:
        m = self.cfg["model"]
        return m["loss"] + ("" if m["encoder"] == "spectrogram" else f", {m['encoder']}")

    @property
    def needs_spectrogram(self) -> bool:
        return self.encoder_kind == "spectrogram"

    def cache_utterances(self) -> None:
        """Keep each utterance's predicted feature: the judged passes and ``extra_metrics``
        read the same utterances, and the encoder is most of an evaluation's time."""
        self._predicted = {}

    def predict(self, voices: Voices) -> torch.Tensor:
        """The predicted feature ``[B, dim]`` (not normalised) of utterances; after
        ``cache_utterances``, a batch whose every utterance was predicted before is not
        encoded again."""
        kept = self._predicted
        # training reads crops; validation and evaluation whole utterances, in windows
        encode = self._encode if self.training else self.encode_windows
        if kept is None or voices.keys is None:
            return encode(voices)
        if all(k in kept for k in voices.keys):
            return torch.stack([kept[k] for k in voices.keys]).to(voices.mel.device)
        pred = encode(voices)
        kept.update(zip(voices.keys, pred.detach().cpu()))
        return pred

    def _encode(self, voices: Voices) -> torch.Tensor:
        if self.encoder_kind == "embedder":
            with torch.no_grad():
                embedding = self.voice(voices.mel, voices.lengths)
            return self.encoder(embedding)
        if self.encoder_kind == "mel":
            return self.encoder(voices.mel, voices.lengths)
        if voices.spec is None:
            raise ValueError("regression: this encoder reads Voices.spec (the complex STFT); "
                             "load the data with spectrogram=True")
        return self.encoder(compress_spectrogram(voices.spec), voices.lengths)

    def window_frames(self) -> int | None:
        """The most frames the encoder sees of one utterance outside training (those of a
        ``model.eval_max_seconds`` crop); None: whole utterances (always for the frozen
        embedder, which reads whole utterances as the GAN's does)."""
        if self.encoder_kind == "embedder":
            return None
        seconds = self.cfg["model"].get("eval_max_seconds", EVAL_MAX_SECONDS)
        if seconds is None:
            return None
        return max(1, AudioFeatures.num_frames(round(float(seconds) * SAMPLE_RATE)))

    def encode_windows(self, voices: Voices) -> torch.Tensor:
        """``_encode`` with at most ``window_frames()`` frames of an utterance and at most
        as many windows as the batch has utterances per encoder call (module docstring)."""
        window = self.window_frames()
        n_utt, frames = voices.mel.shape[0], voices.mel.shape[-1]
        lengths = ([frames] * n_utt if voices.lengths is None
                   else [max(int(n), 1) for n in voices.lengths.tolist()])
        if window is None or max(lengths, default=0) <= window:
            return self._encode(voices)  # the batch as it is: exactly the whole-utterance path
        # (utterance, first frame, frames) of each window: ceil(L / window) equal parts
        pieces = []
        for i, n in enumerate(lengths):
            k = -(-n // window)
            bounds = [j * n // k for j in range(k + 1)]
            pieces += [(i, a, b - a) for a, b in zip(bounds, bounds[1:])]
        feats = []
        for c in range(0, len(pieces), n_utt):
            chunk = pieces[c:c + n_utt]
            width = max(n for _, _, n in chunk)

            def cut(x: torch.Tensor) -> torch.Tensor:  # [B, ..., T] -> [chunk, ..., width]
                out = x.new_zeros((len(chunk), *x.shape[1:-1], width))
                for row, (i, a, n) in enumerate(chunk):
                    out[row, ..., :n] = x[i, ..., a:a + n]
                return out

            part = Voices(cut(voices.mel),
                          torch.tensor([n for _, _, n in chunk], device=voices.mel.device),
                          None if voices.spec is None else cut(voices.spec))
            feats.append(self._encode(part))
        feats = torch.cat(feats)
        out = []
        for i in range(n_utt):
            rows = [r for r, (j, _, _) in enumerate(pieces) if j == i]
            if len(rows) == 1:  # within one window: its prediction as it is
                out.append(feats[rows[0]])
                continue
            weight = torch.tensor([float(pieces[r][2]) for r in rows], device=feats.device)
            unit = F.normalize(feats[rows].float(), dim=-1)  # fp32 also under autocast
            mean = (weight[:, None] * unit).sum(0) / weight.sum()
            out.append(F.normalize(mean, dim=-1).to(feats.dtype))
        return torch.stack(out)

    @torch.no_grad()
    def face_features(self, faces: torch.Tensor) -> torch.Tensor:
        """Targets: the normalised mean unit feature of each sample's faces ``[B, K, 3, S, S]``
        (or of single faces ``[B, 3, S, S]``)."""
        if faces.dim() == 4:
            return unit_features(self.target, faces)
        k = faces.shape[1]
        feats = unit_features(self.target, faces.flatten(0, 1)).unflatten(0, (-1, k))
        return F.normalize(feats.mean(1), dim=-1)

    def feature_loss(self, pred: torch.Tensor, true: torch.Tensor,
                     identity: torch.Tensor) -> torch.Tensor:
        m = self.cfg["model"]
        if m["loss"] == "infonce":
            return info_nce_loss(pred, true, float(m["temperature"]), labels=identity)
        if m["loss"] == "l1_l2":
            return feature_l1_l2_loss(pred, true, float(m["l2_weight"]))
        return get_feature_loss(m["loss"])(pred, true)

    # --- the contract ----------------------------------------------------------------------

    def _attach_decoder(self, path: str | Path) -> None:
        decoder, target = load_face_decoder(path)
        # a decoder renders the features of the network it was trained on, and no other
        if not same_weights(target, self.target):
            raise CheckpointError(f"{path}: this face decoder was trained on the features of "
                                  f"another target network than this regression's; train one "
                                  f"with `voice2face train face_decoder model.target=<the "
                                  f"regression's model.target>`")
        self.decoder = decoder.to(self.device)
        self.hparams["decoder_net"] = decoder.config

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """A run trained without a decoder and resumed with one (the decoder came later):
        the checkpoint lacks the decoder's weights, which are the attached decoder's."""
        state = checkpoint["state_dict"]
        if self.decoder is not None and not any(k.startswith("decoder.") for k in state):
            state.update({f"decoder.{k}": v for k, v in self.decoder.state_dict().items()})

    def replace_part(self, name: str, path: str | Path) -> None:
        if name != "decoder":
            super().replace_part(name, path)
        self._attach_decoder(path)

    def check_ready(self) -> None:
        if self.decoder is not None:
            return
        path = self.cfg["model"]["decoder"]
        if path and Path(path).is_file():  # trained before its decoder was: take it now
            self._attach_decoder(path)
            return
        raise CheckpointError(f"regression: no face decoder to render the predicted features: "
                              f"this checkpoint was trained without one and model.decoder={path} "
                              f"does not exist; train one with `voice2face train face_decoder "
                              f"--export {path}` or pass --decoder PATH (a face_decoder checkpoint)")

    @torch.no_grad()
    def encode_voices(self, voices: Voices) -> torch.Tensor:
        """The predicted feature, L2-normalised as every loss and the decoder normalise it
        (so ``fuse_codes``, the mean renormalised, is the mean predicted unit feature)."""
        return F.normalize(self.predict(voices), dim=-1)

    @torch.no_grad()
    def faces_from_codes(self, codes: torch.Tensor, proposal: torch.Tensor | None = None
                         ) -> torch.Tensor:
        """The decoder's rendering of (predicted) features."""
        self.check_ready()
        return self.decoder(codes)

    @torch.no_grad()
    def reference_faces(self, faces: torch.Tensor) -> torch.Tensor | None:
        """The decoder's rendering of the faces' own (true) features: the grid's middle
        column, what a perfect regression would render."""
        return None if self.decoder is None else self.decoder(self.face_features(faces))

    @torch.no_grad()
    def extra_metrics(self, datamodule, device) -> dict[str, float]:
        """This family's measures (Speech2Face, Sec. 4.3): L1, L2 and cosine between predicted
        and true features on the training speakers' held-out utterances (``known/``) and on the
        test speakers (``test/``); recall@K of the test speaker's true feature with each of
        the three similarities, the gallery being one mean feature per test identity (its
        size is stated as ``test/feature_gallery_identities``; a K at or above it is left out).
        On a synthetic world, ``test/feature_attribute_r2_{gender,age,size}``: how much of the
        speakers' hidden attributes the predicted features carry, before any decoder renders
        them (R² of a ridge probe fitted from the ``known/`` utterances' predicted unit
        features to their speakers' attributes, scored on the ``test/`` utterances'; the
        instrument's voice probe does the same with a voice embedding)."""
        loader = dict(rank=0, world_size=1)
        out: dict[str, float] = {}
        predicted: dict[str, tuple[list, list]] = {"known": ([], []), "test": ([], [])}
        recalls = {s: RecallAtK(EXTRA_TOP_K, similarity=s, distributed_available_fn=_no_sync)
                   for s in SIMILARITIES}
        for split in ("known", "test"):
            if split not in datamodule.manifest["splits"]:
                continue
            sums, n = dict.fromkeys(SIMILARITIES, 0.0), 0
            for batch in datamodule.eval_dataloader(split, **loader):
                pred = self.predict(Voices.of(batch).to(device))
                true = self.face_features(batch["faces"].to(device))
                for k, v in feature_distances(pred, true).items():
                    sums[k] += float(v.sum())
                n += len(pred)
                unit = F.normalize(pred, dim=-1).cpu()
                predicted[split][0].append(unit)
                predicted[split][1].append(batch["identity"])
                if split == "test":
                    for r in recalls.values():
                        r.update(unit, batch["identity"], index=batch["index"], role="probe")
            out.update({f"{split}/feature_{k}": v / max(n, 1) for k, v in sums.items()})
        ids, images = set(), 0
        for batch in datamodule.gallery_dataloader("test", **loader):
            g = self.face_features(batch["face"].to(device)).cpu()
            for r in recalls.values():
                r.update(g, batch["identity"], index=batch["index"], role="gallery")
            ids.update(batch["identity"].tolist())
            images += len(g)
        for r in recalls.values():  # a K at or above the gallery size is left out (warned)
            out.update({f"test/feature_{k}": float(v)
                        for k, v in applicable(r, r.compute()).items()})
        out["test/feature_gallery_identities"] = float(len(ids))
        out["test/feature_gallery_images"] = float(images)
        out.update(feature_attribute_r2(datamodule, predicted))
        return out

    # --- training ------------------------------------------------------------------------

    def training_step(self, batch, batch_idx):
        pred = (self.encoder(self.training_voices(batch)) if self.encoder_kind == "embedder"
                else self.predict(Voices.of(batch)))
        true = self.face_features(batch["faces"])
        loss = self.feature_loss(pred, true, batch["identity"])
        cosine = feature_distances(pred.detach(), true)["cosine"].mean()
        # only the loss on the progress bar, which reads its values every step
        self.log("train/loss", loss, prog_bar=True, batch_size=len(pred))
        self.log("train/feature_cosine", cosine, batch_size=len(pred))
        return loss

    def setup(self, stage: str) -> None:
        if self.decoder is not None:  # without faces to judge, the judge is not needed
            super().setup(stage)

    def on_validation_epoch_start(self) -> None:
        super().on_validation_epoch_start()
        e = self.cfg["eval"]
        dm = getattr(self.trainer, "datamodule", None)
        names = {i["index"]: i["name"] for i in dm.identities} if dm is not None else None
        self._grid = GridCollector(e["grid_identities"], e["grid_utterances"], n_real=1,
                                   names=names, middle="from face", n_middle=1)

    def validation_step(self, batch, batch_idx, dataloader_idx=0):
        if dataloader_idx == 0:  # utterances: predicted against true features
            with torch.no_grad():
                pred = self.predict(Voices.of(batch))
                true = self.face_features(batch["faces"])
                self.val_loss.update(self.feature_loss(pred, true, batch["identity"]))
            for k, v in feature_distances(pred, true).items():
                self.val_distance[k].update(v)
            self.val_feature_recall.update(F.normalize(pred, dim=-1), batch["identity"],
                                           index=batch["index"], role="probe")
            if self.decoder is not None:
                decoded = self.reference_faces(batch["face"])
                for i, identity in enumerate(batch["identity"].tolist()):
                    self._grid.add_middle(identity, decoded[i])
        else:  # the validation gallery: true features of every image
            self.val_feature_recall.update(self.face_features(batch["face"]), batch["identity"],
                                           index=batch["index"], role="gallery")
        if self.decoder is not None:
            super().validation_step(batch, batch_idx, dataloader_idx)

    def on_validation_epoch_end(self) -> None:
        if not self.trainer.sanity_checking:
            self.log("val/loss", self.val_loss)
            for k, metric in self.val_distance.items():
                self.log(f"val/feature_{k}", metric)
            try:
                r = self.val_feature_recall
                self.log_dict({f"val/feature_{k}": v for k, v in applicable(r, r.compute()).items()})
            except ValueError as e:
                rank_zero_warn(f"regression: no feature recall ({e})")
        else:
            self.val_loss.reset()
            for metric in self.val_distance.values():
                metric.reset()
        self.val_feature_recall.reset()
        super().on_validation_epoch_end()

    def configure_optimizers(self):
        return adam(self.encoder.parameters(), self.cfg["optim"])
