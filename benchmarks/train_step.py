"""Training throughput of every method: the suite (Lightning) beside a plain PyTorch loop of the
same nets and the same updates.

    python benchmarks/train_step.py --data data/synth-default [--methods gan cae ...] [--paper]
        [--steps 20] [--warmup 3] [--threads N] [--device cpu|cuda]
        [--precision 32-true|bf16-mixed] [--channels-last] [--pretrained DIR] [--repeats R]

For each method, at its ``cpu`` profile (and with ``--paper`` also its ``paper`` profile), one
real training batch of ``--data`` is read through the method's own DataModule settings, moved
to the device once, and repeated from memory, so data loading is not timed (``--data-batches
N`` times the DataModule's training stream separately: decoding, features, collation). Then,
from the same initial weights:

- ``suite``: the method's ``training_step`` driven by a Lightning ``Trainer`` as
  ``voice2face train`` builds it (CSV logger, ``log_every_n_steps`` of the profile, progress
  bar; no validation, no checkpoints);
- ``plain``: a plain PyTorch loop of the method's nets (its generator, critic, encoders,
  frozen voice embedder or target network) and the losses of ``voice2face/losses.py``, with
  ``torch.optim.Adam`` on the same parameters: the same updates written without Lightning,
  the reference. It is built here from the nets, never by calling ``training_step``;
  ``tests/test_train_step_bench.py`` checks that both make the same update.

Samples per second exclude ``--warmup`` batches (allocations, Adam state, autotuning); the
ratio is suite / plain (below 1: the suite costs that much). With ``--repeats R`` each side
is timed R times, alternating, and the best rate is kept (other jobs on the machine only
slow a run down).

What a method reads from ``model.cache_voice`` (the ``cpu`` profiles of gan and cae): batches
carry no audio and the frozen voice embedder's outputs come from a cache. Here the cache holds
the embeddings of this batch's crops (the whole-utterance cache of ``on_fit_start`` would
embed the whole training split first); the lookup is the same. Without the cache (the
``paper`` profiles), both sides run the frozen embedder on the batch's crops every step.

Pretrained nets (the frozen voice embedder, regression's target and decoder) are read from
``--pretrained`` (default ``<data>/pretrained``); ``--make-pretrained`` makes the missing ones
there with 2-step runs (their weights do not change the timing; their widths are the ``cpu``
profiles'), linking those that ``<data>/pretrained`` has. The judge is not loaded (no
validation).

``--device cuda`` runs both sides on the first GPU (``torch.cuda.synchronize`` at the clock's
ticks); ``--precision bf16-mixed`` is Lightning's autocast on the suite side and
``torch.autocast(dtype=torch.bfloat16)`` around the plain step; ``--channels-last`` puts the
nets' 4-D weights and the batch's faces in channels-last memory format on both sides (the
method's ``model.channels_last``, which is otherwise false, also at the ``paper`` profile that
turns it on: the precision and the layout are the command line's). So the paper profile in
fp32 and in bf16 with channels-last:

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
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import lightning as L  # noqa: E402
from lightning.pytorch.callbacks import Callback  # noqa: E402
from lightning.pytorch.loggers import CSVLogger  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402
from torch.utils.data import DataLoader, IterableDataset  # noqa: E402

from datamodules.features import compress_spectrogram  # noqa: E402
from voice2face.config import load_config  # noqa: E402
from voice2face.losses import (covariate_loss, discriminator_loss, feature_l1_l2_loss,  # noqa: E402
                               gender_loss, generator_loss, get_feature_loss, identity_loss,
                               image_l1_loss, info_nce_loss)
from voice2face.methods import METHODS  # noqa: E402
from voice2face.methods.base import data_info  # noqa: E402
from voice2face.methods.cae import several_identities, training_pairing  # noqa: E402
from voice2face.methods.generator import AdversarialModule, VoiceCache  # noqa: E402
from voice2face.nets import faces_channels_last, perturb_embedding  # noqa: E402
from voice2face.train import export, make_datamodule, train  # noqa: E402

ORDER = ("gan", "cgan", "cae", "cae-concat", "regression", "dimnet", "voice", "face",
         "face_decoder")
# the pretrained nets the methods load, as the Makefile makes them: file -> (method, overrides)
PRETRAINED = {"voice": ("voice", ()), "face": ("face", ()), "dimnet": ("dimnet", ()),
              "face-target": ("face", ("seed=1",)), "decoder": ("face_decoder", ())}
# what the benchmark sets in every method's config: one in-memory batch, no judge, no W&B
BENCH = ["logger.wandb=false", "data.num_workers=0", "data.shuffle_buffer=1",
         "eval.judge=null", "run.evaluate=false"]


def loadavg() -> str:
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


# --- set-up -------------------------------------------------------------------------------

def ensure_pretrained(data: Path, folder: Path) -> Path:
    """Every net of ``PRETRAINED`` in ``folder``: linked from ``data/pretrained`` when it is
    there, else made by a 2-step run (for timing only)."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, (method, overrides) in PRETRAINED.items():
        target, source = folder / f"{name}.ckpt", data / "pretrained" / f"{name}.ckpt"
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


@dataclass
class Case:
    """One method at one profile: its config, a module and one real batch on the device."""

    method: str
    profile: str
    cfg: dict[str, Any]
    module: L.LightningModule
    batch: dict[str, Any]

    @property
    def batch_size(self) -> int:
        return len(self.batch["label"])

    @property
    def steps_per_batch(self) -> int:
        return self.module.steps_per_batch


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
    memory here, for the plain loop's copy too."""
    cfg = method_config(method, data, profile, pretrained,
                        [*overrides, f"model.channels_last={str(channels_last).lower()}"])
    cls = METHODS[method]
    # every batch with audio, so that a cached-voice method's cache can be filled from it
    dm = make_datamodule(OmegaConf.create(cfg))
    batch = next(iter(dm.train_dataloader()))
    torch.manual_seed(cfg["seed"])
    module = cls(cfg, data_info(dm))
    dev = torch.device(device)
    if cfg["model"].get("cache_voice"):
        # the embeddings of this batch's crops stand in for the whole-utterance cache that
        # on_fit_start makes (same lookup, without embedding the whole training split)
        with torch.no_grad():
            emb = module.voice(batch["mel"], batch["mel_lengths"])
        module._voice_cache = VoiceCache(list(batch["key"]), emb.to(dev))
        for k in ("mel", "mel_lengths", "spec"):
            batch.pop(k, None)
    if isinstance(module, AdversarialModule):
        # what Lightning's on_before_batch_transfer reads off the CPU batch in training
        batch = module.training_batch_facts(batch)
    if channels_last:
        module.to(memory_format=torch.channels_last)
    return Case(method, profile, cfg, module, to_device(batch, dev, channels_last))


# --- the suite ----------------------------------------------------------------------------

class Repeat(IterableDataset):
    """One batch, ``n`` times, from memory."""

    def __init__(self, batch: dict, n: int):
        self.batch, self.n = batch, n

    def __iter__(self):
        return itertools.repeat(self.batch, self.n)


class Clock(Callback):
    """The time at the end of every training batch (after the device has finished it)."""

    def __init__(self, device: torch.device):
        self.device, self.ticks = device, []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        sync(self.device)
        self.ticks.append(time.perf_counter())


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


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


def fit_suite(case: Case, batches: int, device: str = "cpu", precision: str = "32-true",
              callbacks: list = (), progress_bar: bool = True) -> L.Trainer:
    """``batches`` training batches of the case's module, as ``voice2face train`` runs them
    (CSV logger, the profile's ``log_every_n_steps``, progress bar), without validation or
    checkpoints."""
    t = case.cfg["trainer"]
    k = case.steps_per_batch
    folder = Path(tempfile.mkdtemp(prefix=f"bench-{case.method}-"))
    trainer = L.Trainer(
        max_steps=batches * k, max_epochs=-1, accelerator="gpu" if device == "cuda" else "cpu",
        devices=1, precision=precision, log_every_n_steps=t["log_every_n_steps"],
        gradient_clip_val=t["gradient_clip_val"], logger=CSVLogger(folder, name="csv"),
        callbacks=list(callbacks), default_root_dir=folder, enable_checkpointing=False,
        enable_model_summary=False, enable_progress_bar=progress_bar, limit_val_batches=0,
        num_sanity_val_steps=0, use_distributed_sampler=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # no validation, few workers: said above
        trainer.fit(case.module, DataLoader(Repeat(case.batch, batches), batch_size=None))
    return trainer


def time_suite(case: Case, warmup: int, steps: int, device: str, precision: str,
               progress_bar: bool = True) -> float:
    clock = Clock(torch.device(device))
    fit_suite(case, warmup + steps, device, precision, [clock], progress_bar)
    return steps * case.batch_size / (clock.ticks[-1] - clock.ticks[warmup - 1])


# --- the plain loop -----------------------------------------------------------------------

def adam(params, optim: dict) -> torch.optim.Adam:
    return torch.optim.Adam(params, lr=float(optim["lr"]),
                            betas=tuple(optim.get("betas", (0.9, 0.999))),
                            weight_decay=float(optim.get("weight_decay", 0.0)))


def update(opt: torch.optim.Optimizer, loss: torch.Tensor, clip: float | None) -> None:
    opt.zero_grad(set_to_none=True)
    loss.backward()
    if clip:
        torch.nn.utils.clip_grad_norm_([p for g in opt.param_groups for p in g["params"]], clip)
    opt.step()


@contextlib.contextmanager
def frozen(net: torch.nn.Module):
    """No weight gradients for ``net`` in this backward (what Lightning's
    ``toggled_optimizer`` does for the nets of the other optimizer)."""
    flags = [p.requires_grad for p in net.parameters()]
    net.requires_grad_(False)
    try:
        yield
    finally:
        for p, f in zip(net.parameters(), flags):
            p.requires_grad_(f)


class PlainLoop:
    """The method's training update in plain PyTorch, on a copy of the case's nets.

    ``step(i)`` runs the ``i``-th update (0-based) on the case's batch and returns its losses.
    Trainable nets are put in train mode, frozen ones (voice embedder, target network) in
    eval mode, as the methods keep them.
    """

    def __init__(self, case: Case, device: str = "cpu", precision: str = "32-true"):
        self.case, self.device = case, torch.device(device)
        self.m = copy.deepcopy(case.module).to(self.device)
        self.cfg, self.batch = case.cfg, case.batch
        self.clip = case.cfg["optim"].get("clip_grad")
        self.autocast = (torch.autocast(self.device.type, dtype=torch.bfloat16)
                         if precision == "bf16-mixed" else contextlib.nullcontext())
        build = {"gan": self._gan, "cgan": self._gan, "cae": self._cae, "cae-concat": self._cae,
                 "regression": self._regression, "dimnet": self._dimnet, "voice": self._voice,
                 "face": self._face, "face_decoder": self._face_decoder}[case.method]
        self._step: Callable[[int], dict[str, torch.Tensor]] = build()

    def step(self, i: int) -> dict[str, torch.Tensor]:
        with self.autocast:
            return self._step(i)

    def _modes(self, trainable: list, frozen_nets: list) -> None:
        for net in trainable:
            net.train()
        for net in frozen_nets:
            net.eval()

    def _voice_embeddings(self) -> Callable[[], torch.Tensor]:
        """The frozen embedder's output: from the cache (a fixed tensor) or of the crops."""
        m, b = self.m, self.batch
        if m._voice_cache is not None:
            cached = m._voice_cache.embeddings(b["key"]).to(self.device)
            return lambda: cached

        def embed():
            with torch.no_grad():
                return m.voice(b["mel"], b["mel_lengths"])
        return embed

    # Wen et al., Algorithm 1 (voice2face/methods/gan.py)
    def _gan(self):
        m, b, mc = self.m, self.batch, self.cfg["model"]
        G, D = m.generator, m.critic
        self._modes([G, D], [m.voice])
        opt_g, opt_d = adam(G.parameters(), self.cfg["optim"]), adam(D.parameters(), self.cfg["optim"])
        voices = self._voice_embeddings()
        real, labels, gender = b["face"], b["label"], b["gender"]
        gw, fw, n = float(mc["gender_weight"]), float(mc["face_weight"]), len(real)

        def step(i):
            emb = perturb_embedding(voices(), mc["embedding_noise"])
            cond = emb if mc["conditional"] else None
            fake = G(emb)
            out = D(torch.cat([real, fake.detach()]), None if cond is None else torch.cat([cond, cond]))
            loss_d = (discriminator_loss(out["adversarial"][:n], out["adversarial"][n:])
                      + identity_loss(out["identity"][:n], labels))
            if gw:
                loss_d = loss_d + gw * gender_loss(out["gender"][:n], gender)
            update(opt_d, loss_d, self.clip)
            with frozen(D):
                out = D(fake, cond)
                loss_g = (generator_loss(out["adversarial"])
                          + mc["identity_weight"] * identity_loss(out["identity"], labels))
                if gw:
                    loss_g = loss_g + gw * gender_loss(out["gender"], gender)
                if fw:
                    loss_g = loss_g + fw * image_l1_loss(fake, real)
                update(opt_g, loss_g, self.clip)
            return {"loss_d": loss_d.detach(), "loss_g": loss_g.detach()}
        return step

    # Liang et al., Algorithm 1 (voice2face/methods/cae.py)
    def _cae(self):
        m, b, mc = self.m, self.batch, self.cfg["model"]
        G, D = m.generator, m.critic
        self._modes([G, D], [m.voice])
        opt_g, opt_d = adam(G.parameters(), self.cfg["optim"]), adam(D.parameters(), self.cfg["optim"])
        voices = self._voice_embeddings()
        face, labels, n = b["face"], b["label"], len(b["face"])
        w = {k: float(v) for k, v in mc["weights"].items()}
        seed = int(self.cfg["seed"])

        if not several_identities(b["identity"]):  # read once, as training reads it off the CPU
            raise ValueError("cae: the benchmark's batch has one identity: no pairing")

        def step(i):
            # the method's pairing RNG, on the device: a function of the seed and the optimizer
            # step (2 per batch), rank 0's
            g = torch.Generator(device=self.device).manual_seed(seed * 1_000_003 + 2 * i)
            pairs, _ = training_pairing(b["identity"], g, paired=True)
            emb = voices()
            face_b, emb_b, label_b = face[pairs], emb[pairs], labels[pairs]
            fake = G(face, emb_b)
            out = D(torch.cat([face, fake.detach()]))
            loss_d = (discriminator_loss(out["adversarial"][:n], out["adversarial"][n:])
                      + identity_loss(out["identity"][:n], labels))
            update(opt_d, loss_d, self.clip)
            with frozen(D):
                loss_g = 0.0
                if w["proposal"]:
                    loss_g = loss_g + w["proposal"] * image_l1_loss(fake, face)
                if w["speaker"]:
                    loss_g = loss_g + w["speaker"] * image_l1_loss(fake, face_b)
                if w["identity"] or w["adversarial"]:
                    out_fake = D(fake)
                    if w["identity"]:
                        loss_g = loss_g + w["identity"] * identity_loss(out_fake["identity"], label_b)
                    if w["adversarial"]:
                        loss_g = loss_g + w["adversarial"] * generator_loss(out_fake["adversarial"])
                if w["cycle"]:
                    loss_g = loss_g + w["cycle"] * image_l1_loss(G(fake, emb), face)
                update(opt_g, loss_g, self.clip)
            return {"loss_d": loss_d.detach(), "loss_g": loss_g.detach()}
        return step

    # Oh et al., Eq. 1's feature term or its variants (voice2face/methods/regression.py)
    def _regression(self):
        m, b, mc = self.m, self.batch, self.cfg["model"]
        enc, target = m.encoder, m.target
        self._modes([enc], [target] + ([m.decoder] if m.decoder is not None else []))
        opt = adam(enc.parameters(), self.cfg["optim"])
        faces = b["faces"]
        k = faces.shape[1]
        if mc["loss"] == "infonce":
            def loss_fn(p, t):
                return info_nce_loss(p, t, float(mc["temperature"]), labels=b["identity"])
        elif mc["loss"] == "l1_l2":
            def loss_fn(p, t):
                return feature_l1_l2_loss(p, t, float(mc["l2_weight"]))
        else:
            loss_fn = get_feature_loss(mc["loss"])

        def step(i):
            if mc["encoder"] == "mel":
                pred = enc(b["mel"], b["mel_lengths"])
            else:
                pred = enc(compress_spectrogram(b["spec"]), b["mel_lengths"])
            with torch.no_grad():
                feats = F.normalize(target(faces.flatten(0, 1)), dim=-1).unflatten(0, (-1, k))
                true = F.normalize(feats.mean(1), dim=-1)
            loss = loss_fn(pred, true)
            update(opt, loss, self.clip)
            return {"loss": loss.detach()}
        return step

    # Wen et al., ICLR 2019 (voice2face/methods/dimnet.py)
    def _dimnet(self):
        m, b, mc = self.m, self.batch, self.cfg["model"]
        nets = [m.voice, m.face, m.heads]
        self._modes(nets, [])
        opt = adam(itertools.chain(*(n.parameters() for n in nets)), self.cfg["optim"])
        k, w = b["faces"].shape[1], mc["gender_weight"]
        labels_f, gender_f = b["label"].repeat_interleave(k), b["gender"].repeat_interleave(k)

        def step(i):
            ev = m.voice(b["mel"], b["mel_lengths"])
            ef = F.normalize(m.face(b["faces"].flatten(0, 1)), dim=-1)
            loss = (covariate_loss(m.heads(ev), b["label"], b["gender"], w)
                    + covariate_loss(m.heads(ef), labels_f, gender_f, w))
            update(opt, loss, self.clip)
            return {"loss": loss.detach()}
        return step

    def _voice(self):
        m, b = self.m, self.batch
        self._modes([m.voice, m.classifier], [])
        opt = adam(itertools.chain(m.voice.parameters(), m.classifier.parameters()),
                   self.cfg["optim"])

        def step(i):
            loss = identity_loss(m.classifier(m.voice(b["mel"], b["mel_lengths"])), b["label"])
            update(opt, loss, self.clip)
            return {"loss": loss.detach()}
        return step

    def _face(self):
        m, b = self.m, self.batch
        self._modes([m.encoder], [])
        opt = adam(m.encoder.parameters(), self.cfg["optim"])
        k = b["faces"].shape[1]
        labels, gender = b["label"].repeat_interleave(k), b["gender"].repeat_interleave(k)

        def step(i):
            out = m.encoder(b["faces"].flatten(0, 1))
            loss = covariate_loss(out, labels, gender, self.cfg["model"]["gender_weight"])
            update(opt, loss, self.clip)
            return {"loss": loss.detach()}
        return step

    def _face_decoder(self):
        m, b = self.m, self.batch
        dec, target = m.decoder, m.target
        self._modes([dec], [target])
        opt = adam(dec.parameters(), self.cfg["optim"])
        faces = b["faces"].flatten(0, 1)
        fw = float(self.cfg["model"]["feature_weight"])

        def step(i):
            with torch.no_grad():
                feature = F.normalize(target(faces), dim=-1)
            recon = dec(feature)
            loss = (recon - faces).abs().mean()
            if fw:
                loss = loss + fw * (F.normalize(target(recon), dim=-1) - feature).abs().sum(-1).mean()
            update(opt, loss, self.clip)
            return {"loss": loss.detach()}
        return step


def time_plain(case: Case, warmup: int, steps: int, device: str, precision: str) -> float:
    loop, dev = PlainLoop(case, device, precision), torch.device(device)
    for i in range(warmup):
        loop.step(i)
    sync(dev)
    start = time.perf_counter()
    for i in range(warmup, warmup + steps):
        loop.step(i)
    sync(dev)
    return steps * case.batch_size / (time.perf_counter() - start)


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


# --- the table ----------------------------------------------------------------------------

def mib(peaks: list[float | None]) -> str:
    """The largest peak in MiB, or "-" where none was measured (a CPU run)."""
    known = [m for m in peaks if m is not None]
    return f"{max(known):.0f}" if known else "-"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=Path("data/synth-default"))
    p.add_argument("--methods", nargs="+", default=list(ORDER), choices=ORDER)
    p.add_argument("--paper", action="store_true", help="also the paper profile's sizes")
    p.add_argument("--profiles", nargs="+", default=None, choices=["cpu", "paper"],
                   help="instead of --paper: exactly these profiles")
    p.add_argument("--steps", type=int, default=20, help="timed batches per side")
    p.add_argument("--warmup", type=int, default=3, help="untimed batches first (>= 1)")
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
                   help="suite without its progress bar (voice2face train has one)")
    p.add_argument("--data-batches", type=int, default=0,
                   help="also time N batches of each method's training stream (N well above "
                        "2 x data.num_workers: the workers prefetch while the first batch is read)")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                   help="config overrides for every method (e.g. data.batch_size=64)")
    args = p.parse_args(argv)
    if args.warmup < 1:
        p.error("--warmup must be at least 1 (the clock starts at the end of a batch)")
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: no GPU visible to torch")
    if args.threads:
        torch.set_num_threads(args.threads)
    os.environ.setdefault("WANDB_MODE", "offline")
    pretrained = args.pretrained or args.data / "pretrained"
    if args.make_pretrained:
        ensure_pretrained(args.data, pretrained)
    profiles = args.profiles or (["cpu", "paper"] if args.paper else ["cpu"])

    dev = torch.cuda.get_device_name() if args.device == "cuda" else "CPU"
    print(f"torch {torch.__version__}, lightning {L.__version__}, {dev}, "
          f"{torch.get_num_threads()} threads, precision {args.precision}"
          f"{', channels-last' if args.channels_last else ''}; data {args.data}; "
          f"{args.warmup} warm-up + {args.steps} timed batches, best of {args.repeats}; "
          f"load average before: {loadavg()}", flush=True)
    head = (f"{'method':<13} {'profile':<7} {'batch':>5} | {'suite':>8} {'plain':>8} "
            f"{'suite/plain':>11} | {'MiB suite':>9} {'MiB plain':>9}"
            + (f" | {'data':>7}" if args.data_batches else ""))
    rows = []
    for profile in profiles:
        for method in args.methods:
            case = make_case(method, args.data, profile, pretrained, args.set, args.device,
                             args.channels_last)
            suite, plain, mem_suite, mem_plain = [], [], [], []
            for _ in range(args.repeats):
                with peak_memory(args.device, mem_plain):
                    plain.append(time_plain(case, args.warmup, args.steps, args.device,
                                            args.precision))
                fresh = copy.deepcopy(case)  # the same initial weights each time
                with peak_memory(args.device, mem_suite):
                    suite.append(time_suite(fresh, args.warmup, args.steps, args.device,
                                            args.precision, not args.no_progress_bar))
                del fresh
            s, pl = max(suite), max(plain)
            row = (f"{method:<13} {profile:<7} {case.batch_size:>5} | {s:8.1f} {pl:8.1f} "
                   f"{s / pl:11.2f} | {mib(mem_suite):>9} {mib(mem_plain):>9}")
            if args.data_batches:
                row += f" | {time_data(method, args.data, profile, pretrained, args.data_batches):7.1f}"
            if args.repeats > 1:
                row += (f"   (suite {statistics.median(suite):.1f}, plain "
                        f"{statistics.median(plain):.1f} median)")
            rows.append(row)
            print(f"  done: {row}", file=sys.stderr, flush=True)
    print("training samples/s (suite: Lightning training_step; plain: the same update in "
          "plain PyTorch); MiB: peak allocated GPU memory of each side's run ('-': on a CPU)"
          + ("; data: the DataModule's training stream" if args.data_batches else ""))
    print(head)
    print("\n".join(rows))
    print(f"load average after: {loadavg()}")


if __name__ == "__main__":
    main()
