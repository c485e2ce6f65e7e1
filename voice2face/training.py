"""Training behind ``voice2face train``: the run folder (its name, lock and the checkpoint
to resume, the config a resume keeps), the DataModule, the Trainer and its callbacks, fit,
then the evaluation after training. ``voice2face/train.py`` is the command line; its help
describes the run folder, resuming and DDP as a user sees them.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import time
import warnings
from pathlib import Path

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint, Timer
from lightning.pytorch.loggers import CSVLogger, WandbLogger
from omegaconf import DictConfig, OmegaConf

from datamodules import VoiceFaceDataModule
from voice2face.atomic import AtomicCheckpointIO, copy_file
from voice2face.config import ConfigError, leaves, save_config
from voice2face.errors import Interrupted
from voice2face.evaluation import post_fit_evaluation
from voice2face.methods import Evaluation, get_method
from voice2face.methods.base import CheckpointError, data_info, read_checkpoint_meta
from voice2face.requeue import SlurmRequeue, cluster_plugins


# Each launcher says which process is which in its own variables: torchrun RANK, Lightning's
# re-launch LOCAL_RANK and NODE_RANK, srun SLURM_PROCID, jsrun JSM_NAMESPACE_RANK. A process is
# rank zero when every one that is set says 0: under sbatch with one task, the processes
# Lightning starts inherit SLURM_PROCID=0 but carry their own LOCAL_RANK.
RANK_VARIABLES = ("RANK", "LOCAL_RANK", "NODE_RANK", "SLURM_PROCID", "JSM_NAMESPACE_RANK")
# "<pid>:<name>": the run a process started, for the processes it starts (Lightning's DDP
# re-runs the command once per extra device); ignored by the process that set it.
RUN_NAME_VARIABLE = "VOICE2FACE_RUN_NAME"


def is_rank_zero(env=os.environ) -> bool:
    return all(int(env[v]) == 0 for v in RANK_VARIABLES if env.get(v, "").strip().isdigit())


def _inherited_name(env) -> tuple[str | None, bool]:
    """The run name a parent process chose, and whether this process chose it itself."""
    pid, _, name = env.get(RUN_NAME_VARIABLE, "").partition(":")
    if not name:
        return None, False
    return (None, True) if pid == str(os.getpid()) else (name, False)


def run_name(cfg: DictConfig, env=os.environ) -> str:
    """The run folder's name, the same in every process of the run.

    ``run.name`` if set; else the name the parent process chose (Lightning's re-launch);
    else one derived from the launcher's job id (srun: ``SLURM_JOB_ID`` and
    ``SLURM_STEP_ID``; torchrun: ``TORCHELASTIC_RUN_ID``), since processes started side by
    side cannot share a timestamp; else ``<method>-<data>-<time>``. Under another launcher
    of several processes, ``run.name`` is required.
    """
    if cfg.run.name:
        return str(cfg.run.name)
    prefix = f"{cfg.method}-{Path(cfg.data.root).name}"
    inherited, ours = _inherited_name(env)
    if inherited:
        return inherited
    if not ours:  # this process did not start the others itself: an external launcher?
        if "SLURM_JOB_ID" in env and int(env.get("SLURM_NTASKS", "1") or 1) > 1:
            step = env.get("SLURM_STEP_ID", "")
            return f"{prefix}-slurm{env['SLURM_JOB_ID']}" + (f".{step}" if step else "")
        if env.get("TORCHELASTIC_RUN_ID", "none") not in ("", "none"):
            return f"{prefix}-{env['TORCHELASTIC_RUN_ID']}"
        if int(env.get("WORLD_SIZE", "1") or 1) > 1:
            raise ConfigError(f"run.name: {env['WORLD_SIZE']} processes were started by a "
                              f"launcher that gives no job id (WORLD_SIZE={env['WORLD_SIZE']}); "
                              f"set run.name so that they all use one run folder")
    name = f"{prefix}-{time.strftime('%Y%m%d-%H%M%S')}"
    root, n = Path(cfg.run.root), 1
    while (root / name).exists():  # two runs started in one second
        n += 1
        name = f"{prefix}-{time.strftime('%Y%m%d-%H%M%S')}-{n}"
    return name


def _is_run_folder(folder: Path) -> bool:
    return (folder / "config.yaml").is_file() and (folder / "checkpoints").is_dir()


def newest_checkpoint(folder: Path) -> tuple[Path | None, int, list[str]]:
    """The checkpoint of ``folder`` (a run's ``checkpoints/``) with the highest step among
    those that load, whatever their names (``last.ckpt`` first among equals), its step, and
    the names of those that do not load (cut short by a full disk, say)."""
    found, broken = [], []
    for path in sorted(folder.glob("*.ckpt")):
        try:  # mmap: only what is read is read; a truncated file has no zip directory
            step = int(torch.load(path, map_location="cpu", weights_only=False,
                                  mmap=True)["global_step"])
        except Exception:
            broken.append(path.name)
            continue
        found.append((step, path.name == "last.ckpt", path))
    if not found:
        return None, 0, broken
    step, _, path = max(found, key=lambda f: (f[0], f[1]))
    return path, step, broken


def _resume_in(folder: Path, what: str) -> Path | None:
    """The newest intact checkpoint of a run folder, said on rank zero; a folder whose
    checkpoints are all broken is refused rather than started over."""
    ckpt, step, broken = newest_checkpoint(folder / "checkpoints")
    if ckpt is None and broken:
        raise ConfigError(f"{what}: no checkpoint of {folder / 'checkpoints'} loads "
                          f"({', '.join(broken)}); remove them to start afresh")
    if ckpt is not None and is_rank_zero():
        skipped = f"; skipped {', '.join(broken)}: they do not load" if broken else ""
        print(f"voice2face: resuming {folder} from {ckpt.name} (optimizer step {step}){skipped}")
    return ckpt


def run_folder(cfg: DictConfig, env=os.environ) -> tuple[Path, str | None]:
    """The run folder and the checkpoint to resume from (None for a fresh run).

    Nothing is written here. ``run.resume`` names a run folder (its newest intact
    checkpoint is resumed, in that folder) or a ``.ckpt``: one in a run's ``checkpoints/``
    continues that run; any other continues in a new run folder, so that nothing is written
    beside it.
    """
    resume, folder, ckpt = cfg.run.resume, None, None
    if resume and resume != "auto":
        resume = Path(resume)
        if resume.is_file():
            ckpt = resume
            if resume.parent.name == "checkpoints" and _is_run_folder(resume.parent.parent):
                folder = resume.parent.parent
        elif resume.is_dir():
            if not _is_run_folder(resume):
                raise ConfigError(f"run.resume={resume}: not the folder of a `voice2face train` "
                                  f"run (no config.yaml and checkpoints/); expected one or a .ckpt")
            folder, ckpt = resume, _resume_in(resume, f"run.resume={resume}")
            if ckpt is None:
                raise ConfigError(f"run.resume={resume}: {resume / 'checkpoints'} holds no "
                                  f"checkpoint yet; start the run afresh")
        else:
            raise ConfigError(f"run.resume={resume}: does not exist; expected a run folder or "
                              f"a .ckpt file")
    if folder is None:
        name = run_name(cfg, env)
        os.environ[RUN_NAME_VARIABLE] = f"{os.getpid()}:{name}"
        folder = Path(cfg.run.root) / name
        if resume == "auto" and _is_run_folder(folder):
            ckpt = _resume_in(folder, "run.resume=auto")
        elif resume != "auto" and is_rank_zero(env) and folder.is_dir() and any(folder.iterdir()):
            raise ConfigError(f"run.name={name}: the run folder {folder} already exists; pass "
                              f"run.resume=auto to continue that run, or choose another run.name")
    return folder, (str(ckpt) if ckpt else None)


# What a resumed run may change: how long and how often, on what hardware, what measures it
# and where it logs; besides, a method's replaceable parts (``model.decoder`` of the
# regression: nets of other methods, frozen). Everything else is the run's: its config.yaml,
# as the checkpoints were trained with it.
RESUMABLE = ("trainer.max_steps", "trainer.max_epochs", "trainer.val_check_interval",
             "trainer.log_every_n_steps", "trainer.accelerator", "trainer.devices",
             "trainer.num_nodes", "trainer.strategy", "data.num_workers", "run.root",
             "run.name", "run.resume", "run.checkpoint_every", "run.evaluate", "logger", "eval")


def _resumable(key: str, parts: tuple[str, ...] = ()) -> bool:
    return any(key == k or key.startswith(k + ".")
               for k in (*RESUMABLE, *(f"model.{p}" for p in parts)))


def resume_config(cfg: DictConfig, folder: Path, ckpt: str,
                  overrides: list[str] | None = None, parts: tuple[str, ...] = ()) -> DictConfig:
    """The config a resumed run trains with: its own ``config.yaml``, with the overrides of
    the command line that a resume may change (``RESUMABLE``). Any other override that
    differs from the run's value, and a ``config.yaml`` edited by hand since the checkpoint
    was saved, is refused, naming the key. ``overrides`` None: every key of ``cfg`` counts
    as given (a config built in Python)."""
    saved_path = folder / "config.yaml"
    saved = OmegaConf.load(saved_path)
    given = leaves(OmegaConf.to_container(cfg, resolve=True))
    if overrides is not None:
        typed = {o.split("=", 1)[0].lstrip("+~") for o in overrides if "=" in o}
        given = {k: v for k, v in given.items() if any(k == t or k.startswith(t + ".")
                                                       for t in typed)}
    ours = leaves(OmegaConf.to_container(saved, resolve=True))
    for key, value in given.items():
        if key in ("run.root", "run.name"):  # where the run is: the folder, below
            continue
        if _resumable(key, parts):
            OmegaConf.update(saved, key, value, merge=False)
        elif key in ours and ours[key] != value:
            raise ConfigError(f"{key}={value}: the run {folder} was trained with {key}="
                              f"{ours[key]} ({saved_path}); a resumed run keeps its config "
                              f"(it may change {', '.join(RESUMABLE)}): start a new run instead")
    trained = torch.load(ckpt, map_location="cpu", weights_only=False, mmap=True)
    trained = leaves(trained.get("hyper_parameters", {}).get("cfg") or {})
    for key, value in ours.items():
        if not _resumable(key, parts) and key in trained and trained[key] != value:
            raise ConfigError(f"{saved_path}: {key} is {value}, but {ckpt} was trained with "
                              f"{trained[key]}: the run's config.yaml was changed by hand; "
                              f"restore it, or start a new run")
    saved.run.root, saved.run.name = str(folder.parent), folder.name  # copied or moved: here
    return saved


def check_resumable(ckpt: str | Path, method: str, data: dict | None = None) -> None:
    """A checkpoint to resume must be of this method and (``data`` given) of this data (its
    identity table)."""
    meta = read_checkpoint_meta(ckpt)
    if meta["method"] != method:
        raise CheckpointError(f"run.resume: {ckpt} is a checkpoint of method {meta['method']!r}; "
                              f"this run trains {method!r}: resume a {method} run, or start "
                              f"afresh without run.resume")
    if data is None:
        return
    trained_on = meta.get("data", {})
    if trained_on.get("fingerprint") != data["fingerprint"]:
        raise CheckpointError(
            f"run.resume: {ckpt} was trained on other data (identity table "
            f"{trained_on.get('fingerprint')} of {trained_on.get('root')}); data.root="
            f"{data['root']} has {data['fingerprint']}: resume with the data it was trained on")


# W&B's own folders (its debug logs, artifact cache and staging, settings), unless the user
# chose them: in the run folder, so that a run writes nothing under the home directory
_WANDB_FOLDERS = {var: sub for var, sub in (("WANDB_CACHE_DIR", "cache"), ("WANDB_DATA_DIR", "data"),
                                           ("WANDB_CONFIG_DIR", "config"))
                  if var not in os.environ}


def make_loggers(cfg: DictConfig, folder: Path, name: str) -> list:
    # a new csv/version_N per (re)start: CSVLogger would overwrite an existing metrics.csv
    loggers = [CSVLogger(folder, name="csv")]
    if cfg.logger.wandb:
        os.environ.setdefault("WANDB_SILENT", "true")
        for var, sub in _WANDB_FOLDERS.items():
            os.environ[var] = str(folder / "wandb" / sub)
        loggers.append(WandbLogger(
            project=cfg.logger.project, entity=cfg.logger.entity, name=name, save_dir=str(folder),
            offline=cfg.logger.mode != "online", tags=list(cfg.logger.tags),
            config=OmegaConf.to_container(cfg, resolve=True)))
    return loggers


def make_datamodule(cfg: DictConfig, method_cls=None) -> VoiceFaceDataModule:
    d = cfg.data
    if not d.root:
        raise ConfigError("data.root is empty: expected a dataset folder (docs/data.md)")
    return VoiceFaceDataModule(
        d.root, batch_size=d.batch_size, eval_batch_size=d.eval_batch_size,
        num_workers=d.num_workers, crop_seconds=d.crop_seconds, spectrogram=d.spectrogram,
        skip_corrupt=d.skip_corrupt, shuffle_buffer=d.shuffle_buffer, audio=d.audio,
        features=d.features, persistent_workers=d.persistent_workers, seed=cfg.seed,
        train_audio=method_cls.reads_training_audio(cfg) if method_cls else True,
        val_gallery=bool(method_cls and method_cls.val_gallery))


def check_every_rank_validates(dm: VoiceFaceDataModule, method_cls, ranks: int) -> None:
    """Validation slices the val split (and its gallery) across the ranks, sample by sample;
    a rank left without a sample skips validation, and the others then wait for it in their
    metrics' all-gather until the process group's timeout. Said before anything starts."""
    if ranks <= 1:
        return
    parts = [("splits", "val")] + ([("gallery", "val")] if method_cls.val_gallery else [])
    for kind, split in parts:
        n = int(dm.manifest[kind][split]["samples"])
        if n < ranks:
            what = "val gallery images" if kind == "gallery" else "val samples"
            raise ConfigError(f"{dm.root / 'manifest.json'}: {n} {what} for {ranks} training "
                              f"processes (trainer.devices x trainer.num_nodes): every process "
                              f"validates on a share of at least one; use fewer devices or a "
                              f"larger val split")


def start_run(cfg: DictConfig, folder: Path, env=os.environ) -> None:
    """Rank zero makes the run folder and writes the config into it; the other processes
    write nothing."""
    if not is_rank_zero(env):
        return
    (folder / "checkpoints").mkdir(parents=True, exist_ok=True)
    save_config(cfg, folder / "config.yaml")


class RunLock:
    """One writer per run folder: rank zero holds an exclusive ``flock`` on ``<run>/.lock``
    for the run's lifetime, with its host and process id written in it. The kernel drops the
    lock when the holder ends, however it ends, so no lock outlives its process; a second
    trainer, a duplicated SLURM job or a requeue that overlaps the old job's tail stops
    with one line naming the holder."""

    def __init__(self, folder: Path):
        self.path = folder / ".lock"
        self.file = None

    def __enter__(self) -> "RunLock":
        import fcntl
        import socket
        self.path.parent.mkdir(parents=True, exist_ok=True)
        f = open(self.path, "a+")
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "another process"
            f.close()
            raise ConfigError(f"run folder {self.path.parent} is in use by {holder}; wait for it "
                              f"to end, or train in another run folder (run.name=...)") from None
        f.seek(0)
        f.truncate()
        f.write(f"host {socket.gethostname()} pid {os.getpid()} since "
                f"{time.strftime('%Y-%m-%d %H:%M:%S')}\n")
        f.flush()
        self.file = f
        return self

    def __exit__(self, *exc) -> None:
        import fcntl
        if self.file is not None:
            fcntl.flock(self.file, fcntl.LOCK_UN)
            self.file.close()
            self.file = None


class StepCheckpoint(ModelCheckpoint):
    """Checkpoints named by the method's steps (training batches, as ``trainer.max_steps``
    counts them), where Lightning's ``step`` counts optimizer steps (two per GAN batch)."""

    def __init__(self, steps_per_batch: int, **kwargs):
        # no "-v1" versions: a run resumed in a copied or moved folder restores the old
        # folder's last_model_path, and a versioned last-v1.ckpt would leave last.ckpt stale
        super().__init__(filename="step{step:06d}", auto_insert_metric_name=False,
                         enable_version_counter=False, **kwargs)
        self.steps_per_batch = steps_per_batch

    def _monitor_candidates(self, trainer):
        candidates = super()._monitor_candidates(trainer)
        candidates["step"] = torch.tensor(trainer.global_step // self.steps_per_batch)
        return candidates


def train(cfg: DictConfig, overrides: list[str] | None = None) -> Path:
    """Train ``cfg.method``; returns the final checkpoint.

    Everything that can be checked is checked before the run folder is written: the data,
    the checkpoint to resume (its method and data), the pretrained nets the method loads.
    A resumed run trains with its own ``config.yaml`` and the ``overrides`` (the command
    line's ``key=value``) that a resume may change (``resume_config``). Rank zero holds the
    run folder's lock for the whole run. A fresh run that fails or is interrupted before
    its first checkpoint removes its folder.
    """
    method_cls = get_method(cfg.method)
    if not cfg.data.root:
        raise ConfigError("data.root is empty: expected a dataset folder (docs/data.md)")
    folder, ckpt_path = run_folder(cfg)
    if ckpt_path:
        check_resumable(ckpt_path, cfg.method)  # before its run's config is read
    if ckpt_path and _is_run_folder(folder):
        cfg = resume_config(cfg, folder, ckpt_path, overrides, method_cls.replaceable_parts)
    L.seed_everything(cfg.seed, workers=True)
    dm = make_datamodule(cfg, method_cls)
    check_every_rank_validates(dm, method_cls, processes(cfg.trainer))
    info = data_info(dm)
    if ckpt_path:
        check_resumable(ckpt_path, cfg.method, info)
    module = method_cls(OmegaConf.to_container(cfg, resolve=True), info)

    # rank zero makes (and may remove) the folder; under srun the others start beside it
    created = is_rank_zero() and not folder.exists()
    with RunLock(folder) if is_rank_zero() else contextlib.nullcontext():
        start_run(cfg, folder)
        return _fit_and_report(cfg, method_cls, module, dm, folder, ckpt_path, created)


def _fit_and_report(cfg, method_cls, module, dm, folder: Path, ckpt_path, created: bool) -> Path:
    try:
        trainer = fit(cfg, method_cls, module, dm, folder, ckpt_path)
    except BaseException as e:
        kept = sorted(p.name for p in (folder / "checkpoints").glob("*.ckpt"))
        if cfg.logger.wandb:  # W&B's writer ends before its files are kept or removed
            import wandb
            wandb.finish(exit_code=1)
        if created and not kept:  # nothing to resume: leave no folder that looks like a run
            shutil.rmtree(folder, ignore_errors=True)
        if isinstance(e, KeyboardInterrupt) or (isinstance(e, SystemExit) and _interrupted(e)):
            raise Interrupted(
                f"interrupted; kept {folder} ({', '.join(kept)}): continue with `voice2face "
                f"train {cfg.method} run.resume={folder}`" if kept else
                f"interrupted before the first checkpoint; nothing kept"
                + (f" ({folder} removed)" if created else "")) from None
        raise
    final = folder / "checkpoints" / "final.ckpt"
    if trainer.is_global_zero:
        print(f"voice2face: trained {cfg.method}; checkpoint {final}")
        if cfg.run.evaluate and module.evaluation is not Evaluation.PRETRAINING:
            print(post_fit_evaluation(module, folder, final, dm, trainer.loggers))
    if cfg.logger.wandb:  # close the run, or the next WandbLogger in this process reuses it
        import wandb
        wandb.finish()
    return final


def _interrupted(e: SystemExit) -> bool:
    # Lightning answers a KeyboardInterrupt inside fit with a graceful shutdown and
    # sys.exit(1); the traceback it leaves is the interrupt's
    return isinstance(e.__context__, KeyboardInterrupt)


def fit(cfg: DictConfig, method_cls, module, dm, folder: Path, ckpt_path: str | None):
    t = cfg.trainer
    # global_step counts optimizer steps; max_steps in the config counts the method's
    # main-network steps, i.e. training batches.
    k = method_cls.steps_per_batch
    checkpoints = StepCheckpoint(k, dirpath=folder / "checkpoints",
                                 every_n_train_steps=cfg.run.checkpoint_every * k,
                                 save_last=True, save_top_k=1)
    on_gpu = torch.cuda.is_available() and t.accelerator in ("auto", "gpu", "cuda")
    if on_gpu and str(t.precision).startswith("bf16") and not torch.cuda.is_bf16_supported():
        raise ConfigError(f"trainer.precision={t.precision}: {torch.cuda.get_device_name()} has "
                          f"no bfloat16 (before Ampere); use trainer.precision=32-true (or "
                          f"16-mixed, untested here)")
    if on_gpu:
        # TF32 for the float32 matrix products that remain (all of them in 32-true, the
        # losses and norms under bf16-mixed): ~8x the FP32 rate of an Ampere/Hopper GPU
        torch.set_float32_matmul_precision("high")
    # every method turns device-side waveforms into features in its own hook (methods/base.py)
    warnings.filterwarnings("ignore", message=".*overridden `on_(before|after)_batch_transfer`")
    trainer = L.Trainer(
        max_steps=t.max_steps * k, max_epochs=t.max_epochs, accelerator=t.accelerator,
        devices=t.devices, num_nodes=t.num_nodes, strategy=ddp_strategy(t, method_cls),
        precision=t.precision,
        val_check_interval=t.val_check_interval, check_val_every_n_epoch=None,
        log_every_n_steps=t.log_every_n_steps, gradient_clip_val=t.gradient_clip_val,
        logger=make_loggers(cfg, folder, folder.name),
        # under srun: SIGUSR1 -> last.ckpt at a batch boundary, scontrol requeue, Requeued
        callbacks=[checkpoints, SlurmRequeue(folder / "checkpoints" / "last.ckpt"),
                   RankSeed(cfg.seed),
                   # training time, kept in every checkpoint and added up across resumes
                   Timer(duration=None, verbose=False)],
        default_root_dir=folder, use_distributed_sampler=False, enable_model_summary=True,
        plugins=[AtomicCheckpointIO(), *cluster_plugins()])
    trainer.fit(module, datamodule=dm, ckpt_path=ckpt_path)
    trainer.save_checkpoint(folder / "checkpoints" / "final.ckpt")
    return trainer


def processes(t: DictConfig) -> int:
    """How many training processes ``trainer.devices`` x ``trainer.num_nodes`` start."""
    devices = t.devices
    if isinstance(devices, str) and devices.strip().lstrip("-").isdigit():
        devices = int(devices)
    if isinstance(devices, str):  # "auto": every GPU there is, one process on a CPU
        cuda = torch.cuda.is_available() and t.accelerator in ("auto", "gpu", "cuda")
        devices = torch.cuda.device_count() if cuda else 1
    elif isinstance(devices, int) and devices < 0:  # -1: every GPU
        devices = max(1, torch.cuda.device_count())
    elif not isinstance(devices, int):  # a list of device indices
        devices = len(devices)
    return devices * t.num_nodes


def ddp_strategy(t: DictConfig, method_cls) -> str:
    """The strategy Lightning gets. A method whose backward passes each leave some nets
    without gradients (the GAN's two optimizer steps) declares it, and plain DDP would
    reject it at the second backward: whenever the run is distributed, with ``ddp`` typed
    or chosen by Lightning itself (``auto`` with several devices), it runs
    ``ddp_find_unused_parameters_true``."""
    wants = getattr(method_cls, "ddp_find_unused_parameters", False)
    if wants and t.strategy in ("ddp", "auto") and processes(t) > 1:
        return "ddp_find_unused_parameters_true"
    return t.strategy


class RankSeed(Callback):
    """Under DDP every rank draws its own random stream (embedding noise, z, dropout): the
    run's seed and the rank, through numpy's SeedSequence. ``seed_everything`` gave every rank
    the same one, so N GPUs drew N copies of the same noise. Set when training starts, after
    the weights are built (alike on every rank) and a checkpoint is restored; a run of one
    process keeps the stream of ``seed``."""

    def __init__(self, seed: int):
        self.seed = seed

    def on_train_start(self, trainer, pl_module) -> None:
        if trainer.world_size > 1:
            rank_seed = int(np.random.SeedSequence([self.seed, trainer.global_rank])
                            .generate_state(1)[0])
            L.seed_everything(rank_seed, workers=True, verbose=False)


def training_seconds(checkpoint: str | Path) -> float | None:
    """The training time a checkpoint records, every invocation of its run added up
    (Lightning's ``Timer`` state); None for a checkpoint made without it."""
    ckpt = torch.load(checkpoint, map_location="cpu", weights_only=False, mmap=True)
    state = ckpt.get("callbacks", {}).get("Timer")
    return None if state is None else float(state["time_elapsed"]["train"])


def export(checkpoint: Path, target: str | Path) -> None:
    """Copy a finished checkpoint to a stable path (temp file beside it, then rename)."""
    copy_file(checkpoint, target)
