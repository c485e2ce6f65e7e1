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
import torch.nn.functional as F
from lightning.pytorch.utilities import rank_zero_only, rank_zero_warn
from tqdm.auto import tqdm

from voice2face.grid import GridCollector, log_grid
from voice2face.methods.base import Evaluation, MethodModule, Voices, proposal_faces
from voice2face.methods.common import adam
from voice2face.methods.pretrained import freeze, load_judge, load_target, voice_embedder_for
from voice2face.metrics import compute_each, make_metrics
from voice2face.nets import FaceTrunk

# a training batch's key for its rows in the voice cache (``training_batch_facts``)
VOICE_ROWS_KEY = "_voice_rows"


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
def embed_utterances(voice, datamodule, split: str, device, rank: int = 0,
                     world_size: int = 1) -> tuple[list[int], list[str], torch.Tensor]:
    """``(indices, keys, embeddings [n, D])`` of a rank's share of ``split``'s utterances (every
    ``world_size``-th from ``rank``, ``datamodule.eval_dataloader``'s slice), each whole,
    embedded by the frozen ``voice`` embedder on ``device``."""
    indices, keys, embeddings = [], [], []
    loader = datamodule.eval_dataloader(split, rank=rank, world_size=world_size)
    for batch in tqdm(loader, desc=f"voice cache ({split})", leave=False,
                      disable=rank_zero_only.rank != 0):
        if batch is None:  # data.skip_corrupt: a batch of corrupt samples only
            continue
        embeddings.append(voice(batch["mel"].to(device), batch["mel_lengths"].to(device)))
        indices += batch["index"].tolist()
        keys += list(batch["key"])
    table = torch.cat(embeddings) if embeddings else torch.zeros(0, voice.dim, device=device)
    return indices, keys, table


class VoiceCache:
    """The frozen embedder's unit embedding of every training utterance, whole: one tensor
    ``table [N, D]`` on the module's device, and each sample key's row in it.

    A training batch is looked up by its rows (``row_index`` of its keys, made on the CPU
    before the batch moves: ``AdversarialModule.training_batch_facts``), so a step gathers on
    the device and copies nothing per sample.
    """

    def __init__(self, keys: list[str], table: torch.Tensor):
        if len(keys) != len(table):
            raise ValueError(f"{len(keys)} keys for {len(table)} embeddings")
        self.rows = {k: i for i, k in enumerate(keys)}
        self.table = table

    @classmethod
    def from_shares(cls, shares: list[tuple[list[int], list[str], torch.Tensor]],
                    device) -> VoiceCache:
        """The cache of every rank's ``embed_utterances`` share, rows in the split's order."""
        indices = [i for share in shares for i in share[0]]
        keys = [k for share in shares for k in share[1]]
        table = torch.cat([share[2].to(device) for share in shares])
        order = sorted(range(len(indices)), key=indices.__getitem__)
        return cls([keys[i] for i in order], table[torch.tensor(order, dtype=torch.long,
                                                                device=table.device)])

    def __len__(self) -> int:
        return len(self.rows)

    def row_index(self, keys) -> torch.Tensor:
        """The rows ``[B]`` (CPU, long) of sample keys."""
        try:
            return torch.tensor([self.rows[k] for k in keys], dtype=torch.long)
        except KeyError as e:
            raise KeyError(f"training sample {e} is not in the voice cache made from the "
                           f"training split at the start of fit") from None

    def lookup(self, rows: torch.Tensor) -> torch.Tensor:
        """The embeddings ``[B, D]`` of rows, on the table's device."""
        if self.table.device != rows.device:
            rows = rows.to(self.table.device)
        return self.table[rows]

    def embeddings(self, keys) -> torch.Tensor:
        return self.lookup(self.row_index(keys))


def gather_shares(share: tuple[list[int], list[str], torch.Tensor], world_size: int
                  ) -> list[tuple[list[int], list[str], torch.Tensor]]:
    """Every rank's share, in rank order (``torch.distributed.all_gather_object``: the keys are
    strings; once per fit)."""
    shares = [None] * world_size
    indices, keys, table = share
    torch.distributed.all_gather_object(shares, (indices, keys, table.cpu()))
    return shares


class VoiceFedModule(GeneratorModule, abstract=True):
    """A generator that hears voices through a frozen pretrained voice embedder: ``self.voice``
    from ``model.voice`` (a ``voice`` or ``dimnet`` checkpoint) on the first construction, or
    rebuilt from ``voice_net`` (saved in the hyperparameters) when a checkpoint is loaded; it
    stays in eval mode, whatever ``train()`` the loops call. A subclass whose config needs no
    embedder (``uses_voice`` false) has ``self.voice = None``.

    ``model.cache_voice``: the frozen embedder's outputs are computed once, at the start of
    training, for every training utterance as a whole (as evaluation sees utterances), and
    training batches then carry no audio (``reads_training_audio``): decoding and embedding
    random crops in every batch is most of a narrow net's step on a CPU. The embedder is
    frozen, so the cache is exact for whole utterances; it trades the crops' variety for
    speed. The cache is one tensor on the module's device (``VoiceCache``); under DDP each rank
    embeds its slice of the utterances and the slices are gathered, so every rank holds the
    whole cache.

    A training step waits for the device nowhere: what it must know on the host about its
    batch (the cache rows of its keys; the CAE's whether it has two identities) is read off
    the CPU batch before it moves (``training_batch_facts``, from
    ``on_before_batch_transfer``), and only tensors are logged.
    """

    def __init__(self, cfg, data, voice_net=None):
        super().__init__(cfg, data)
        self.voice = None
        if self.uses_voice(cfg):
            self.voice = voice_embedder_for(self.method, cfg["model"]["voice"], voice_net)
            self.hparams["voice_net"] = self.voice.config
        self._voice_cache: VoiceCache | None = None

    @classmethod
    def uses_voice(cls, cfg) -> bool:
        """Whether the config's nets read the frozen embedder of ``model.voice``."""
        return True

    @classmethod
    def caches_voice(cls, cfg) -> bool:
        return cls.uses_voice(cfg) and bool(cfg["model"]["cache_voice"])

    @classmethod
    def reads_training_audio(cls, cfg) -> bool:
        return not cls.caches_voice(cfg)

    def on_fit_start(self) -> None:
        if self.caches_voice(self.cfg) and self._voice_cache is None:
            dm = self.trainer.datamodule
            if dm is None:
                raise ValueError(f"{self.method}: model.cache_voice embeds the training split "
                                 f"of the trainer's VoiceFaceDataModule, and this fit has "
                                 f"none; fit with datamodule=..., or model.cache_voice=false")
            world = self.trainer.world_size
            share = embed_utterances(self.voice, dm, "train", self.device, self.global_rank,
                                     world)
            shares = gather_shares(share, world) if world > 1 else [share]
            self._voice_cache = VoiceCache.from_shares(shares, self.device)

    def on_before_batch_transfer(self, batch, dataloader_idx: int):
        batch = super().on_before_batch_transfer(batch, dataloader_idx)
        if self._trainer is not None and self.trainer.training and isinstance(batch, dict):
            batch = self.training_batch_facts(batch)
        return batch

    def training_batch_facts(self, batch: dict) -> dict:
        """The batch with what its training step must know on the host, read off the CPU
        batch before it moves to the device (so the step never waits for the device to copy
        it back): the voice cache's rows of its keys (``VOICE_ROWS_KEY``). Lightning calls it
        on training batches; a batch without these facts costs its step a copy."""
        if self._voice_cache is not None and VOICE_ROWS_KEY not in batch:
            batch[VOICE_ROWS_KEY] = self._voice_cache.row_index(batch["key"])
        return batch

    @torch.no_grad()
    def training_voices(self, batch: dict) -> torch.Tensor:
        """The frozen unit voice embeddings of a training batch: from the cache (whole
        utterances) with ``model.cache_voice``, else of the batch's crops."""
        if self._voice_cache is None:
            return self.voice(batch["mel"], batch["mel_lengths"])
        if self._voice_cache.table.device != self.device:  # the module moved since fit start
            self._voice_cache.table = self._voice_cache.table.to(self.device)
        rows = batch.get(VOICE_ROWS_KEY)
        if rows is None:
            try:
                rows = self._voice_cache.row_index(batch["key"])
            except KeyError as e:
                raise KeyError(f"{self.method}: {e.args[0]}") from None
        return self._voice_cache.lookup(rows)


class AdversarialModule(VoiceFedModule, abstract=True):
    """A generator trained against a critic from a frozen voice embedder (the GAN, the CAE;
    ``VoiceFedModule``: the embedder and its cache).

    Manual optimization with two optimizer steps per batch, critic then generator
    (``steps_per_batch = 2``: ``voice2face train`` scales ``trainer.max_steps`` by it); each
    backward leaves the other net without gradients, so DDP needs
    ``find_unused_parameters`` (``ddp_find_unused_parameters``). A subclass builds
    ``self.generator`` and ``self.critic`` and writes ``training_step`` with ``_update`` and
    ``training_voices``.
    """

    steps_per_batch = 2
    ddp_find_unused_parameters = True
    frozen_nets = ("voice", "target")

    def __init__(self, cfg, data, voice_net=None):
        super().__init__(cfg, data, voice_net)
        self.automatic_optimization = False
        self.target: FaceTrunk | None = None  # the feature term's network (attach_target)

    def attach_target(self, weight: float, target_net: dict | None, weight_key: str) -> None:
        """``self.target``, the feature term's frozen face network: rebuilt from
        ``target_net`` (the hyperparameters of this module's own checkpoint), else loaded
        from ``model.target`` when the term's ``weight`` (config key ``weight_key``) is > 0
        (``load_target``: a ``dimnet`` checkpoint's face embedder or a ``face`` network
        other than the judge); None otherwise. Its config is saved with the
        hyperparameters, so a checkpoint rebuilds without the target's file."""
        m = self.cfg["model"]
        if target_net is not None:
            self.target = freeze(FaceTrunk(**target_net))
        elif weight > 0:
            if not m.get("target"):
                raise ValueError(f"{self.method}: {weight_key} > 0 needs model.target, a face "
                                 f"network: a `dimnet` checkpoint, or a `face` one other than "
                                 f"the judge (face-target.ckpt)")
            self.target, target_net = load_target(m["target"], self.data_info,
                                                  self.cfg["eval"]["judge"])
        self.hparams["target_net"] = target_net

    def feature_loss(self, fake: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
        """Mean cosine distance between the target network's features of the generated faces
        and of the real faces they should look like (constants: the target is frozen)."""
        with torch.no_grad():
            wanted = self.target(real).float()
        return (1 - F.cosine_similarity(self.target(fake).float(), wanted, dim=-1)).mean()

    def _update(self, opt, loss: torch.Tensor) -> None:
        clip = self.cfg["optim"]["clip_grad"]
        opt.zero_grad()
        self.manual_backward(loss)
        if clip:
            self.clip_gradients(opt, gradient_clip_val=clip)
        opt.step()

    def generator_parameters(self):
        """What the generator's optimizer trains (a subclass adds nets trained with it)."""
        return self.generator.parameters()

    def configure_optimizers(self):
        o = self.cfg["optim"]
        return [adam(self.generator_parameters(), o), adam(self.critic.parameters(), o)]
