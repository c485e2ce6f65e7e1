"""``GeneratorModule``: the base of methods that generate faces from voices, and their
judged validation, written once.

A subclass implements ``generate_faces`` (and its training); validation is this class's:
each validation utterance gets a generated face, which the judge (``eval.judge``, a
``face`` checkpoint) embeds and classifies, against the judge embeddings of the validation
gallery: ``val/match_1to2``, ``val/match_1to2_gender``, ``val/recall@K``, ``val/gender_acc``
and ``val/cosine`` (to the speaker's mean real face). A grid of real and generated faces of
the first ``eval.grid_identities`` identities is saved to ``<run>/grids/`` and logged to
W&B after every validation. Without a judge file, validation logs the grid only.

The judge is kept out of the module's submodules, so it is in no optimizer, no DDP bucket
and no checkpoint of the method: it measures, it never trains what it judges.
"""

from __future__ import annotations

from pathlib import Path

import torch
from lightning.pytorch.utilities import rank_zero_only, rank_zero_warn
from tqdm.auto import tqdm

from voice2face.grid import GridCollector, log_grid
from voice2face.methods.base import Evaluation, MethodModule, Voices, proposal_faces
from voice2face.methods.common import adam
from voice2face.methods.pretrained import load_judge, voice_embedder_for
from voice2face.metrics import compute_each, make_metrics


class GeneratorModule(MethodModule, abstract=True):
    """Face-generating methods: ``generate_faces`` measured by the judge."""

    evaluation = Evaluation.GENERATED_FACES
    generates = True
    val_gallery = True

    def __init__(self, cfg, data):
        super().__init__(cfg, data)
        self.val_metrics = make_metrics("val", top_k=(1, 5, 10), recall_similarities=("cosine",),
                                        recall_image_gallery=False, recall_block_size=None)
        self._judge = None  # loaded in setup(); a plain attribute, not a submodule
        self._grid: GridCollector | None = None

    def setup(self, stage: str) -> None:
        path = self.cfg["eval"]["judge"]
        if stage == "fit" and path and self._judge is None:
            if Path(path).is_file():
                # object.__setattr__: nn.Module would register it as a submodule
                object.__setattr__(self, "_judge", load_judge(path, self.data_info))
            else:
                rank_zero_warn(f"{self.method}: no judge at eval.judge={path}; validation logs "
                               f"the grid only (train one with `voice2face train face --export "
                               f"{path}`)")

    def _judge_on(self, device: torch.device):
        if self._judge is not None and next(self._judge.parameters()).device != device:
            self._judge.to(device)
        return self._judge

    def on_validation_epoch_start(self) -> None:
        e = self.cfg["eval"]
        dm = getattr(self.trainer, "datamodule", None)
        names = {i["index"]: i["name"] for i in dm.identities} if dm is not None else None
        self._grid = GridCollector(e["grid_identities"], e["grid_utterances"], names=names)

    @torch.no_grad()
    def validation_faces(self, batch: dict) -> torch.Tensor:
        """The faces validation judges: one per utterance, as evaluation makes them."""
        proposal = (proposal_faces(batch["face"], batch["identity"])
                    if self.needs_proposal else None)
        return self.generate_faces(Voices.of(batch), proposal)

    def validation_step(self, batch, batch_idx, dataloader_idx=0):
        judge = self._judge_on(self.device)
        metrics = self.val_metrics
        if dataloader_idx == 0:  # utterances -> generated faces (probes)
            fake = self.validation_faces(batch)
            self._grid.add(batch, fake)
            if judge is None:
                return
            out = judge(fake)
            metrics["embedding"].update(out["embedding"], batch["identity"], batch["gender"],
                                        batch["index"], role="probe")
            metrics["gender"].update(out["gender"].sigmoid(), batch["gender"])
            k = batch["faces"].shape[1]
            real = judge.embed(batch["faces"].flatten(0, 1)).unflatten(0, (-1, k))
            metrics["cosine"].update(out["embedding"], torch.nn.functional.normalize(
                real.mean(1), dim=-1))
        elif judge is not None:  # gallery faces
            metrics["embedding"].update(judge.embed(batch["face"]), batch["identity"],
                                        batch["gender"], batch["index"], role="gallery")

    def on_validation_epoch_end(self) -> None:
        metrics = self.val_metrics
        if self.trainer.sanity_checking or self._judge is None:
            for group in metrics.values():
                group.reset()
        else:
            values, errors = compute_each(metrics["embedding"], "val/")
            self.log_dict(values)
            for name, why in errors.items():
                rank_zero_warn(f"{self.method}: no {name} ({why})")
            metrics["embedding"].reset()
            self.log_dict(metrics["gender"])
            self.log_dict(metrics["cosine"])
        if not self.trainer.sanity_checking:
            self._log_grid()

    @rank_zero_only
    def _log_grid(self) -> None:
        step = self.global_step // self.steps_per_batch
        folder = Path(self.trainer.default_root_dir) / "grids"
        log_grid(self._grid.image(), self.loggers, "val/grid", step,
                 folder / f"val-step{step:06d}.png")


@torch.no_grad()
def embed_utterances(voice, datamodule, split: str, device) -> dict[str, torch.Tensor]:
    """``{sample key: unit embedding}`` of every utterance of ``split``, each whole, by the
    frozen ``voice`` embedder (every rank embeds the whole split)."""
    cache = {}
    loader = datamodule.eval_dataloader(split, rank=0, world_size=1)
    for batch in tqdm(loader, desc=f"voice cache ({split})", leave=False,
                      disable=rank_zero_only.rank != 0):
        emb = voice(batch["mel"].to(device), batch["mel_lengths"].to(device)).cpu()
        cache.update(zip(batch["key"], emb))
    return cache


class AdversarialModule(GeneratorModule, abstract=True):
    """A generator trained against a critic from a frozen voice embedder (the GAN, the CAE).

    Manual optimization with two optimizer steps per batch, critic then generator
    (``steps_per_batch = 2``: ``voice2face train`` scales ``trainer.max_steps`` by it); each
    backward leaves the other net without gradients, so DDP needs
    ``find_unused_parameters`` (``ddp_find_unused_parameters``). ``self.voice`` comes from
    ``model.voice`` (a ``voice`` or ``dimnet`` checkpoint) on the first construction, or is
    rebuilt from ``voice_net`` (saved in the hyperparameters) when a checkpoint is loaded; it
    stays in eval mode, whatever ``train()`` the loops call. A subclass builds
    ``self.generator`` and ``self.critic`` and writes ``training_step`` with ``_update`` and
    ``training_voices``.

    ``model.cache_voice``: the frozen embedder's outputs are computed once, at the start of
    training, for every training utterance as a whole (as evaluation sees utterances), and
    training batches then carry no audio (``reads_training_audio``): decoding and embedding
    random crops in every batch is most of a narrow GAN's step on a CPU. The embedder is
    frozen, so the cache is exact for whole utterances; it trades the crops' variety for
    speed (the embedding noise of the GAN stays).
    """

    steps_per_batch = 2
    ddp_find_unused_parameters = True

    def __init__(self, cfg, data, voice_net=None):
        super().__init__(cfg, data)
        self.automatic_optimization = False
        self.voice = voice_embedder_for(self.method, cfg["model"]["voice"], voice_net)
        self.hparams["voice_net"] = self.voice.config
        self._voice_cache: dict[str, torch.Tensor] | None = None

    @classmethod
    def reads_training_audio(cls, cfg) -> bool:
        return not cfg["model"]["cache_voice"]

    def on_fit_start(self) -> None:
        if self.cfg["model"]["cache_voice"] and self._voice_cache is None:
            dm = self.trainer.datamodule
            if dm is None:
                raise ValueError(f"{self.method}: model.cache_voice embeds the training split "
                                 f"of the trainer's VoiceFaceDataModule, and this fit has "
                                 f"none; fit with datamodule=..., or model.cache_voice=false")
            self._voice_cache = embed_utterances(self.voice, dm, "train", self.device)

    @torch.no_grad()
    def training_voices(self, batch: dict) -> torch.Tensor:
        """The frozen unit voice embeddings of a training batch: from the cache (whole
        utterances) with ``model.cache_voice``, else of the batch's crops."""
        if self._voice_cache is None:
            return self.voice(batch["mel"], batch["mel_lengths"])
        try:
            return torch.stack([self._voice_cache[k] for k in batch["key"]]).to(self.device)
        except KeyError as e:
            raise KeyError(f"{self.method}: training sample {e} is not in the voice cache "
                           f"made from the training split at the start of fit") from None

    def train(self, mode: bool = True):
        super().train(mode)
        self.voice.eval()  # pretrained BatchNorm statistics stay as they are
        return self

    def _update(self, opt, loss: torch.Tensor) -> None:
        clip = self.cfg["optim"]["clip_grad"]
        opt.zero_grad()
        self.manual_backward(loss)
        if clip:
            self.clip_gradients(opt, gradient_clip_val=clip)
        opt.step()

    def configure_optimizers(self):
        o = self.cfg["optim"]
        return [adam(self.generator.parameters(), o), adam(self.critic.parameters(), o)]
