"""Training throughput of every method through Lightning, the share of each step that Lightning
takes, and the GAN beside a plain PyTorch loop of the same nets and losses.

    python benchmarks/train_step.py --data data/synth-default [--methods gan cae ...] [--paper]
        [--steps 20] [--warmup 3] [--threads N] [--device cpu|cuda]
        [--precision 32-true|bf16-mixed] [--channels-last] [--pretrained DIR] [--repeats R]

For each method, at its ``cpu`` profile (and with ``--paper`` also its ``paper`` profile), one
real training batch of ``--data`` is read through the method's own DataModule settings, moved
to the device once, and repeated from memory, so data loading is not timed (``--data-batches
N`` times the DataModule's training stream separately: decoding, features, collation). The
method's module is fitted on it by a ``Trainer`` as ``voice2face train`` builds one (CSV
logger, the profile's ``log_every_n_steps``, progress bar; no validation, no checkpoints), and
``StepTimer`` splits each step's wall time (from the end of one batch to the end of the next)
into the time in the method's own code and the rest, Lightning's: its loop, hooks, logger and
progress bar. The method's code is its ``training_step``, its batch-transfer hooks (the voice
cache's rows, features on the device) and, under automatic optimization, the optimizer's step,
which runs Lightning's closure (``training_step``, ``zero_grad``, backward) inside it. What
``training_step`` calls of Lightning (``self.log``, ``manual_backward``) counts as the method's,
so the share is of the loop around the step; the plain GAN loop below, which logs nothing,
gives the whole difference for the method where it matters most.

``gan`` and ``cgan`` are also run as ``PlainGan``: Wen et al.'s Algorithm 1 written with the
nets of ``voice2face.nets`` and the losses of ``voice2face.losses``, from the same initial
weights (``tests/test_train_step_bench.py`` checks that both compute the same losses and make
the same update). The other methods have no second implementation: Lightning's share is
measured inside their one.

Samples per second exclude ``--warmup`` batches (allocations, Adam state, autotuning). With
``--repeats R`` each side is timed R times, alternating, and the best rate is kept (other jobs
on the machine only slow a run down).

``model.cache_voice`` (the ``cpu`` profiles of gan and cae): batches carry no audio and the
frozen voice embedder's outputs come from a cache, which the module makes at the start of fit
from the DataModule's training split. Here that split is this batch's crops (the whole split
would be embedded first, on both sides); the lookup per step is the same. Without the cache
(the ``paper`` profiles), both sides run the frozen embedder on the batch's crops every step.

Pretrained nets (the frozen voice embedder, regression's target and decoder) are read from
``--pretrained`` (default ``<data>/pretrained``); ``--make-pretrained`` makes the missing ones
there with 2-step runs (their weights do not change the timing; their widths are the ``cpu``
profiles'), linking those that ``<data>/pretrained`` has. The judge is not loaded (no
validation).

``--device cuda`` runs on the first GPU and synchronises it at every reading of the clock, so
each region's time is the device's too; the host then never runs ahead of the device, so the
rates are those of a loop that waits for its device at every step, and Lightning's share is
its host time with nothing overlapping it: an upper bound for an unsynchronised run.
``--precision bf16-mixed`` is Lightning's autocast and ``torch.autocast(dtype=torch.bfloat16)``
around the plain step; ``--channels-last`` puts the nets' 4-D weights and the batch's faces in
channels-last memory format on both sides (the method's ``model.channels_last``, which is
otherwise false, also at the ``paper`` profile that turns it on: the precision and the layout
are the command line's). So the paper profile in fp32 and in bf16 with channels-last:

    python benchmarks/train_step.py --profiles paper --methods gan cae --device cuda
    python benchmarks/train_step.py --profiles paper --methods gan cae --device cuda \
        --precision bf16-mixed --channels-last

The ``MiB`` columns are each side's peak of allocated GPU memory
(``torch.cuda.max_memory_allocated`` over its warm-up and timed batches; ``-`` on a CPU).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import functools
import itertools
import os
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import lightning as L  # noqa: E402
from lightning.pytorch.callbacks import Callback  # noqa: E402
from lightning.pytorch.loggers import CSVLogger  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch.utils.data import DataLoader, IterableDataset  # noqa: E402

from datamodules.features import device_features  # noqa: E402
from voice2face.config import load_config  # noqa: E402
from voice2face.constants import pretrained_dir  # noqa: E402
from voice2face.losses import (discriminator_loss, gender_loss, generator_loss,  # noqa: E402
                               identity_loss, image_l1_loss)
from voice2face.methods import METHODS, PRETRAINED  # noqa: E402
from voice2face.methods.base import data_info  # noqa: E402
from voice2face.methods.common import adam  # noqa: E402
from voice2face.methods.generator import VoiceCache, embed_utterances  # noqa: E402
from voice2face.nets import faces_channels_last, perturb_embedding  # noqa: E402
from voice2face.training import export, make_datamodule, train  # noqa: E402

# the methods that also run as PlainGan
PLAIN = ("gan", "cgan")
# what the benchmark sets in every method's config: one in-memory batch, no judge, no W&B
BENCH = ["logger.wandb=false", "data.num_workers=0", "data.shuffle_buffer=1",
         "eval.judge=null", "run.evaluate=false"]
# a batch's utterances, which a cached-voice method's training batches do not carry
AUDIO_KEYS = ("mel", "mel_lengths", "spec", "wave", "wave_lengths")
# the module's own code in a training batch, besides the optimizers' steps (StepTimer)
METHOD_HOOKS = ("on_before_batch_transfer", "on_after_batch_transfer", "training_step")


def loadavg() -> str:
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# --- set-up -------------------------------------------------------------------------------

def ensure_pretrained(data: Path, folder: Path) -> Path:
    """Every net of ``PRETRAINED`` in ``folder``: linked from ``data/pretrained`` when it is
    there, else made by a 2-step run (for timing only)."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, (method, overrides) in PRETRAINED.items():
        target, source = folder / f"{name}.ckpt", pretrained_dir(data) / f"{name}.ckpt"
        if target.is_file():
            continue
        if source.is_file() and source.resolve() != target.resolve():
            target.symlink_to(source.resolve())
            continue
        cfg = load_config(method, [f"data.root={data}", f"paths.pretrained={folder}",
                                   f"run.root={folder / 'runs'}", f"run.name={name}",
                                   "profile=cpu", "trainer.max_steps=2",
                                   "trainer.val_check_interval=1000", *BENCH, *overrides])
        export(train(cfg), target)
    return folder


class Repeat(IterableDataset):
    """One batch, ``n`` times, from memory; a shallow copy each time, as a loader makes a new
    batch (so what a hook adds to one is not in the next)."""

    def __init__(self, batch: dict, n: int):
        self.batch, self.n = batch, n

    def __iter__(self):
        return (dict(self.batch) for _ in range(self.n))


class OneBatch(L.LightningDataModule):
    """The training stream of a case: its batch ``n`` times. ``eval_dataloader`` is what
    ``model.cache_voice`` embeds at the start of fit as the training split (``embed_utterances``
    calls it); here it is the same batch's utterances."""

    def __init__(self, batch: dict, n: int, utterances: dict | None):
        super().__init__()
        self.batch, self.n, self.utterances = batch, n, utterances

    def train_dataloader(self) -> DataLoader:
        return DataLoader(Repeat(self.batch, self.n), batch_size=None)

    def eval_dataloader(self, split: str, rank: int = 0, world_size: int = 1) -> list[dict]:
        if self.utterances is None:
            raise ValueError("this case's batch carries its utterances: it has no voice cache")
        return [self.utterances]


@dataclass
class Case:
    """One method at one profile: its config, a module, one real training batch on the device
    and, for ``model.cache_voice``, the same batch's utterances (CPU) to fill the cache from."""

    method: str
    profile: str
    cfg: dict[str, Any]
    module: L.LightningModule
    batch: dict[str, Any]
    utterances: dict[str, Any] | None = None

    @property
    def batch_size(self) -> int:
        return len(self.batch["label"])

    @property
    def steps_per_batch(self) -> int:
        return self.module.steps_per_batch

    def data(self, batches: int) -> OneBatch:
        return OneBatch(self.batch, batches, self.utterances)


def method_config(method: str, data: Path, profile: str, pretrained: Path,
                  overrides: list[str] = ()) -> dict[str, Any]:
    cfg = load_config(method, [f"data.root={data}", f"profile={profile}",
                               f"paths.pretrained={pretrained}", *BENCH, *overrides])
    return OmegaConf.to_container(cfg, resolve=True)


def to_device(batch: dict, device: torch.device, channels_last: bool) -> dict:
    out = {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}
    return faces_channels_last(out) if channels_last else out


def make_case(method: str, data: Path, profile: str, pretrained: Path,
              overrides: list[str] = (), device: str = "cpu",
              channels_last: bool = False) -> Case:
    """The module (seeded by the config's seed) and one training batch as it trains on it.

    ``channels_last`` sets the method's ``model.channels_last`` (either way: the ``paper``
    profiles turn it on) and puts the module's 4-D weights and the batch's faces in NHWC
    memory here, where ``PlainGan`` copies them from."""
    cfg = method_config(method, data, profile, pretrained,
                        [*overrides, f"model.channels_last={str(channels_last).lower()}"])
    # every batch with audio, so that a cached-voice method's cache can be filled from it
    dm = make_datamodule(OmegaConf.create(cfg))
    batch = next(iter(dm.train_dataloader()))
    torch.manual_seed(cfg["seed"])
    module = METHODS[method](cfg, data_info(dm))
    utterances = None
    if cfg["model"].get("cache_voice"):
        # as an evaluation batch: log-mel, and the index that orders the cache's rows
        utterances = {**device_features(batch), "index": torch.arange(len(batch["key"]))}
        batch = {k: v for k, v in batch.items() if k not in AUDIO_KEYS}
    if channels_last:
        module.to(memory_format=torch.channels_last)
    return Case(method, profile, cfg, module, to_device(batch, torch.device(device), channels_last),
                utterances)


# --- Lightning ----------------------------------------------------------------------------

class StepTimer(Callback):
    """Per training batch, its wall time (``walls``: from the end of the previous batch, or
    the start of training, to the end of this one) and the time of it spent in the method's
    own code (``inside``): ``METHOD_HOOKS`` of the module and the optimizers' ``step``, each
    wrapped for the fit. Regions nest (an optimizer step inside ``training_step`` under manual
    optimization, ``training_step`` inside the optimizer's closure under automatic), and only
    the outermost is counted. On a GPU every reading of the clock waits for the device."""

    def __init__(self, device: torch.device | str = "cpu",
                 clock: Callable[[], float] = time.perf_counter):
        self.device, self.clock = torch.device(device), clock
        self.walls: list[float] = []
        self.inside: list[float] = []
        self._depth, self._in_batch, self._tick = 0, 0.0, 0.0
        self._wrapped: list[tuple[Any, str, Any]] = []  # (object, name, its own attribute)

    def _now(self) -> float:
        sync(self.device)
        return self.clock()

    def _wrap(self, obj, name: str) -> None:
        fn = getattr(obj, name)

        @functools.wraps(fn)
        def timed(*args, **kwargs):
            outermost = self._depth == 0
            start = self._now() if outermost else 0.0
            self._depth += 1
            try:
                return fn(*args, **kwargs)
            finally:
                self._depth -= 1
                if outermost:
                    self._in_batch += self._now() - start

        self._wrapped.append((obj, name, vars(obj).get(name)))
        setattr(obj, name, timed)

    def on_train_start(self, trainer, pl_module) -> None:
        for name in METHOD_HOOKS:
            self._wrap(pl_module, name)
        for opt in trainer.optimizers:  # the torch optimizers, which Lightning's wrappers call
            self._wrap(opt, "step")
        self._tick = self._now()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        now = self._now()
        self.walls.append(now - self._tick)
        self.inside.append(self._in_batch)
        self._tick, self._in_batch = now, 0.0

    def teardown(self, trainer, pl_module, stage: str) -> None:
        for obj, name, own in reversed(self._wrapped):
            if own is None:
                delattr(obj, name)
            else:
                setattr(obj, name, own)
        self._wrapped.clear()


@dataclass
class Timing:
    """Timed batches (after the warm-up) of one run: seconds of wall time and in the method."""

    walls: list[float]
    inside: list[float]
    batch_size: int

    @property
    def steps_per_s(self) -> float:
        return len(self.walls) / sum(self.walls)

    @property
    def samples_per_s(self) -> float:
        return self.steps_per_s * self.batch_size

    @property
    def inside_ms(self) -> float:
        return 1000 * statistics.fmean(self.inside)

    @property
    def lightning_share(self) -> float:
        """The fraction of the wall time outside the method's code."""
        return 1 - sum(self.inside) / sum(self.walls)


def fit_suite(case: Case, batches: int, device: str = "cpu", precision: str = "32-true",
              callbacks: list = (), progress_bar: bool = True) -> L.Trainer:
    """``batches`` training batches of the case's module, as ``voice2face train`` runs them
    (CSV logger, the profile's ``log_every_n_steps``, progress bar), without validation or
    checkpoints, its logs in a scratch folder removed afterwards."""
    t = case.cfg["trainer"]
    with tempfile.TemporaryDirectory(prefix=f"bench-{case.method}-") as folder:
        trainer = L.Trainer(
            max_steps=batches * case.steps_per_batch, max_epochs=-1,
            accelerator="gpu" if device == "cuda" else "cpu", devices=1, precision=precision,
            log_every_n_steps=t["log_every_n_steps"], gradient_clip_val=t["gradient_clip_val"],
            logger=CSVLogger(folder, name="csv"), callbacks=list(callbacks),
            default_root_dir=folder, enable_checkpointing=False, enable_model_summary=False,
            enable_progress_bar=progress_bar, limit_val_batches=0, num_sanity_val_steps=0,
            use_distributed_sampler=False)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # no validation, few workers: said above
            trainer.fit(case.module, datamodule=case.data(batches))
    return trainer


def time_suite(case: Case, warmup: int, steps: int, device: str, precision: str,
               progress_bar: bool = True) -> Timing:
    timer = StepTimer(device)
    fit_suite(case, warmup + steps, device, precision, [timer], progress_bar)
    return Timing(timer.walls[warmup:], timer.inside[warmup:], case.batch_size)


# --- the plain GAN ------------------------------------------------------------------------

class PlainGan:
    """Wen et al.'s Algorithm 1 (``voice2face/methods/gan.py``, the conditional variant with
    ``model.conditional``) in plain PyTorch: ``FaceGenerator``, ``FaceCritic`` and the frozen
    ``VoiceEmbedder``, the losses of ``voice2face.losses``, and Adam on each net.

    ``step(batch)`` runs one batch, the critic step then the generator step, from the batch
    the loader gives (features on the device where it carries waveforms) and returns its loss
    terms by the names the module logs them under (without ``train/``). Random draws (the
    embedding noise, z) come from the global RNG in the module's order. With
    ``model.encode_noise``, z comes from ``encoder`` (trained with the generator) as the
    module draws it, the first ``model.prior_share`` of the batch from N(0, I).
    """

    def __init__(self, generator: torch.nn.Module, critic: torch.nn.Module,
                 voice: torch.nn.Module, cfg: dict[str, Any], cache: VoiceCache | None = None,
                 precision: str = "32-true", target: torch.nn.Module | None = None,
                 encoder: torch.nn.Module | None = None):
        self.generator, self.critic, self.voice, self.cache = generator, critic, voice, cache
        self.target = target  # the feature term's frozen face network, or None
        self.encoder = encoder  # q(z | real face) with model.encode_noise, or None
        self.model, self.clip = cfg["model"], cfg["optim"]["clip_grad"]
        self.channels_last = bool(self.model.get("channels_last"))
        trained_with_g = [*generator.parameters(), *(encoder.parameters() if encoder else ())]
        self.opt_g = adam(trained_with_g, cfg["optim"])
        self.opt_d = adam(critic.parameters(), cfg["optim"])
        generator.train()
        critic.train()
        voice.eval()  # pretrained BatchNorm statistics, as the module keeps them
        device = next(generator.parameters()).device
        self.autocast = (torch.autocast(device.type, dtype=torch.bfloat16)
                         if precision == "bf16-mixed" else contextlib.nullcontext())

    @classmethod
    def of(cls, case: Case, device: str = "cpu", precision: str = "32-true") -> PlainGan:
        """On copies of the case's nets (its initial weights) on ``device``, with the voice
        cache made as the module makes it at the start of fit."""
        m, dev = case.module, torch.device(device)
        generator, critic, voice = (copy.deepcopy(net).to(dev)
                                    for net in (m.generator, m.critic, m.voice))
        target = None if m.target is None else copy.deepcopy(m.target).to(dev).eval()
        encoder = None if m.encoder is None else copy.deepcopy(m.encoder).to(dev)
        loop = cls(generator, critic, voice, case.cfg, precision=precision, target=target,
                   encoder=encoder)
        if case.cfg["model"]["cache_voice"]:
            loop.cache = VoiceCache.from_shares(
                [embed_utterances(voice, case.data(0), "train", dev)], dev)
        return loop

    def _update(self, opt: torch.optim.Optimizer, loss: torch.Tensor) -> None:
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if self.clip:
            torch.nn.utils.clip_grad_norm_([p for g in opt.param_groups for p in g["params"]],
                                           self.clip)
        opt.step()

    def step(self, batch: dict) -> dict[str, torch.Tensor]:
        batch = device_features(batch)
        if self.channels_last:
            batch = faces_channels_last(batch)
        with self.autocast:
            return self._step(batch)

    def _step(self, batch: dict) -> dict[str, torch.Tensor]:
        m, G, D = self.model, self.generator, self.critic
        real, labels, gender = batch["face"], batch["label"], batch["gender"]
        gender_weight, n = float(m["gender_weight"]), len(real)
        with torch.no_grad():
            voices = (self.cache.embeddings(batch["key"]) if self.cache is not None
                      else self.voice(batch["mel"], batch["mel_lengths"]))
        emb = perturb_embedding(voices, m["embedding_noise"])
        cond = emb if m["conditional"] else None
        losses, noise, drawn = {}, None, 0
        if self.encoder is not None:  # z ~ q(z | face), the first `drawn` rows' ~ N(0, I)
            drawn = min(n - 1, int(round(m["prior_share"] * n)))
            mu, logvar = self.encoder(real[drawn:]).float().chunk(2, dim=1)
            noise = mu + torch.randn_like(mu) * (0.5 * logvar).exp()
            losses["loss_kl"] = 0.5 * (mu.square() + logvar.exp() - 1 - logvar).sum(1).mean()
            noise = torch.cat([torch.randn(drawn, noise.shape[1], device=noise.device), noise])
        fake = G(emb, noise)  # generated once, used by both steps

        # critic: real vs generated faces, identity of the real ones
        out = D(torch.cat([real, fake.detach()]), None if cond is None else torch.cat([cond, cond]))
        losses.update(loss_d=discriminator_loss(out["adversarial"][:n], out["adversarial"][n:]),
                      loss_c=identity_loss(out["identity"][:n], labels))
        loss = losses["loss_d"] + losses["loss_c"]
        if gender_weight:
            losses["loss_gender_real"] = gender_loss(out["gender"][:n], gender)
            loss = loss + gender_weight * losses["loss_gender_real"]
        self._update(self.opt_d, loss)

        # generator: fool the critic and be recognised; the critic's weights get no gradient
        D.requires_grad_(False)
        out = D(fake, cond)
        losses["loss_g"] = generator_loss(out["adversarial"])
        losses["loss_id"] = identity_loss(out["identity"], labels)
        loss = losses["loss_g"] + m["identity_weight"] * losses["loss_id"]
        if gender_weight:
            losses["loss_gender_fake"] = gender_loss(out["gender"], gender)
            loss = loss + gender_weight * losses["loss_gender_fake"]
        if m["face_weight"]:
            losses["loss_face"] = image_l1_loss(fake[drawn:], real[drawn:])
            loss = loss + m["face_weight"] * losses["loss_face"]
        if self.target is not None:
            with torch.no_grad():
                wanted = self.target(real[drawn:]).float()
            losses["loss_feature"] = (1 - F.cosine_similarity(self.target(fake[drawn:]).float(),
                                                              wanted, dim=-1)).mean()
            loss = loss + m["feature_weight"] * losses["loss_feature"]
        if self.encoder is not None:
            loss = loss + m["kl_weight"] * losses["loss_kl"]
        self._update(self.opt_g, loss)
        D.requires_grad_(True)
        return {k: v.detach() for k, v in losses.items()}


def time_plain(case: Case, warmup: int, steps: int, device: str, precision: str) -> float:
    """Samples per second of the plain loop, its batches timed as ``StepTimer`` times the
    suite's: the clock read at the end of every batch, after the device."""
    loop, dev = PlainGan.of(case, device, precision), torch.device(device)
    walls = []
    sync(dev)
    tick = time.perf_counter()
    for _ in range(warmup + steps):
        loop.step(dict(case.batch))
        sync(dev)
        now = time.perf_counter()
        walls.append(now - tick)
        tick = now
    return steps * case.batch_size / sum(walls[warmup:])


# --- the rest of the table ----------------------------------------------------------------

@contextlib.contextmanager
def peak_memory(device: str, out: list):
    """Appends the peak of allocated device memory in MiB within the block to ``out``
    (``torch.cuda.max_memory_allocated``; on a CPU, None: the process's RSS counts the data,
    the other side's nets and the allocator's cache)."""
    if device != "cuda":
        yield
        out.append(None)
        return
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    yield
    torch.cuda.synchronize()
    out.append(torch.cuda.max_memory_allocated() / 2 ** 20)


def mib(peaks: list[float | None]) -> str:
    """The largest peak in MiB, or "-" where none was measured (a CPU run, no plain loop)."""
    known = [m for m in peaks if m is not None]
    return f"{max(known):.0f}" if known else "-"


def time_data(method: str, data: Path, profile: str, pretrained: Path, batches: int) -> float:
    """Samples per second of the method's training stream (its DataModule settings and
    ``data.num_workers`` of the config), the first batch excluded."""
    cfg = load_config(method, [f"data.root={data}", f"profile={profile}",
                               f"paths.pretrained={pretrained}", "logger.wandb=false"])
    it = iter(make_datamodule(cfg, METHODS[method]).train_dataloader())
    first = next(it)
    start = time.perf_counter()
    for _ in range(batches):
        next(it)
    return batches * len(first["label"]) / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=Path("data/synth-default"))
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    p.add_argument("--paper", action="store_true", help="also the paper profile's sizes")
    p.add_argument("--profiles", nargs="+", default=None, choices=["cpu", "paper"],
                   help="instead of --paper: exactly these profiles")
    p.add_argument("--steps", type=int, default=20, help="timed batches per side")
    p.add_argument("--warmup", type=int, default=3, help="untimed batches first")
    p.add_argument("--repeats", type=int, default=1, help="times each side, best kept")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                   choices=["cpu", "cuda"])
    p.add_argument("--precision", default="32-true", choices=["32-true", "bf16-mixed"])
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--pretrained", type=Path, default=None,
                   help="folder of the pretrained nets (default: <data>/pretrained)")
    p.add_argument("--make-pretrained", action="store_true",
                   help="make the missing pretrained nets in --pretrained (2-step runs)")
    p.add_argument("--no-progress-bar", action="store_true",
                   help="Lightning without its progress bar (voice2face train has one)")
    p.add_argument("--data-batches", type=int, default=0,
                   help="also time N batches of each method's training stream (N well above "
                        "2 x data.num_workers: the workers prefetch while the first batch is read)")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                   help="config overrides for every method (e.g. data.batch_size=64)")
    args = p.parse_args(argv)
    if args.steps < 1 or args.warmup < 0:
        p.error("--steps must be at least 1 and --warmup at least 0")
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: no GPU visible to torch")
    if args.threads:
        torch.set_num_threads(args.threads)
    os.environ.setdefault("WANDB_MODE", "offline")
    pretrained = args.pretrained or pretrained_dir(args.data)
    if args.make_pretrained:
        ensure_pretrained(args.data, pretrained)
    profiles = args.profiles or (["cpu", "paper"] if args.paper else ["cpu"])

    dev = torch.cuda.get_device_name() if args.device == "cuda" else "CPU"
    print(f"torch {torch.__version__}, lightning {L.__version__}, {dev}, "
          f"{torch.get_num_threads()} threads, precision {args.precision}"
          f"{', channels-last' if args.channels_last else ''}; data {args.data}; "
          f"{args.warmup} warm-up + {args.steps} timed batches, best of {args.repeats}; "
          f"load average before: {loadavg()}", flush=True)
    head = (f"{'method':<13} {'profile':<7} {'batch':>5} | {'steps/s':>7} {'suite':>8} | "
            f"{'in-step':>7} {'Lightning':>9} | {'plain':>8} {'suite/plain':>11} | "
            f"{'MiB suite':>9} {'MiB plain':>9}" + (f" | {'data':>7}" if args.data_batches else ""))
    rows = []
    for profile, method in itertools.product(profiles, args.methods):
        case = make_case(method, args.data, profile, pretrained, args.set, args.device,
                         args.channels_last)
        suite, plain, mem_suite, mem_plain = [], [], [], []
        for _ in range(args.repeats):
            if method in PLAIN:
                with peak_memory(args.device, mem_plain):
                    plain.append(time_plain(case, args.warmup, args.steps, args.device,
                                            args.precision))
            fresh = copy.deepcopy(case)  # the same initial weights each time
            with peak_memory(args.device, mem_suite):
                suite.append(time_suite(fresh, args.warmup, args.steps, args.device,
                                        args.precision, not args.no_progress_bar))
            del fresh
        s = max(suite, key=lambda t: t.samples_per_s)
        pl = (f"{max(plain):8.1f} {s.samples_per_s / max(plain):11.2f}" if plain
              else f"{'-':>8} {'-':>11}")
        row = (f"{method:<13} {profile:<7} {case.batch_size:>5} | {s.steps_per_s:7.2f} "
               f"{s.samples_per_s:8.1f} | {s.inside_ms:7.1f} {s.lightning_share:9.1%} | {pl} | "
               f"{mib(mem_suite):>9} {mib(mem_plain):>9}")
        if args.data_batches:
            row += f" | {time_data(method, args.data, profile, pretrained, args.data_batches):7.1f}"
        if args.repeats > 1:
            row += (f"   (suite {statistics.median(t.samples_per_s for t in suite):.1f}"
                    + (f", plain {statistics.median(plain):.1f}" if plain else "") + " median)")
        rows.append(row)
        print(f"  done: {row}", file=sys.stderr, flush=True)
    print("suite: training samples/s through Lightning, as voice2face train runs it; steps/s: "
          "its batches (training_step calls) per second; in-step: ms per batch in the "
          "method's own code; Lightning: the share of the wall time outside it; plain: "
          f"samples/s of the plain PyTorch loop ({', '.join(PLAIN)}); MiB: peak allocated GPU "
          "memory of each side's run ('-': on a CPU)"
          + ("; data: the DataModule's training stream" if args.data_batches else ""))
    print(head)
    print("\n".join(rows))
    print(f"load average after: {loadavg()}")


if __name__ == "__main__":
    main()
