"""``voice2face train <method> [key=value ...]``: parse, config, seed, data, method, fit.

The run folder ``runs/<method>-<data>-<time>/`` receives the resolved ``config.yaml``,
checkpoints (``checkpoints/last.ckpt`` every ``run.checkpoint_every`` batches, and
``checkpoints/final.ckpt``), ``metrics.csv`` and the offline W&B run. ``run.resume=<folder>``
(or a ``.ckpt``) continues a run from its last checkpoint; ``run.resume=auto`` does so when
the folder named by ``run.name`` already holds one, and starts afresh otherwise. A resumed
run restarts the interrupted epoch of the training stream (shards are not seekable), so a
few samples of that epoch are seen twice; optimizer state and step counts carry on exactly.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from pathlib import Path

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger, WandbLogger
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf

from datamodules import VoiceFaceDataModule
from voice2face.config import ConfigError, load_config, save_config
from voice2face.evaluate import post_fit_evaluation
from voice2face.methods import METHODS, Evaluation, get_method
from voice2face.methods.base import data_info


def run_folder(cfg: DictConfig) -> tuple[Path, str | None]:
    """The run folder and the checkpoint to resume from (None for a fresh run)."""
    resume = cfg.run.resume
    if resume and resume != "auto":
        resume = Path(resume)
        if resume.suffix == ".ckpt":
            if not resume.is_file():
                raise FileNotFoundError(f"run.resume: checkpoint {resume} does not exist")
            return resume.parent.parent, str(resume)
        last = resume / "checkpoints" / "last.ckpt"
        if not last.is_file():
            raise FileNotFoundError(f"run.resume: {resume} has no checkpoints/last.ckpt")
        return resume, str(last)
    data_name = Path(cfg.data.root).name
    # DDP re-executes this script per rank: the name is chosen once and passed on in the
    # environment, so every rank writes to one folder.
    name = (cfg.run.name or os.environ.get("VOICE2FACE_RUN_NAME")
            or f"{cfg.method}-{data_name}-{time.strftime('%Y%m%d-%H%M%S')}")
    os.environ["VOICE2FACE_RUN_NAME"] = name
    folder = Path(cfg.run.root) / name
    last = folder / "checkpoints" / "last.ckpt"
    if resume == "auto" and last.is_file():
        return folder, str(last)
    return folder, None


def make_loggers(cfg: DictConfig, folder: Path, name: str) -> list:
    # a new csv/version_N per (re)start: CSVLogger would overwrite an existing metrics.csv
    loggers = [CSVLogger(folder, name="csv")]
    if cfg.logger.wandb:
        os.environ.setdefault("WANDB_SILENT", "true")
        loggers.append(WandbLogger(
            project=cfg.logger.project, entity=cfg.logger.entity, name=name, save_dir=str(folder),
            offline=cfg.logger.mode != "online", tags=list(cfg.logger.tags),
            config=OmegaConf.to_container(cfg, resolve=True)))
    return loggers


def make_datamodule(cfg: DictConfig, method_cls=None) -> VoiceFaceDataModule:
    d = cfg.data
    return VoiceFaceDataModule(
        d.root, batch_size=d.batch_size, eval_batch_size=d.eval_batch_size,
        num_workers=d.num_workers, crop_seconds=d.crop_seconds, spectrogram=d.spectrogram,
        skip_corrupt=d.skip_corrupt, shuffle_buffer=d.shuffle_buffer, audio=d.audio,
        val_gallery=bool(method_cls and method_cls.val_gallery))


def train(cfg: DictConfig) -> Path:
    """Train ``cfg.method``; returns the final checkpoint."""
    method_cls = get_method(cfg.method)
    L.seed_everything(cfg.seed, workers=True)
    folder, ckpt_path = run_folder(cfg)
    (folder / "checkpoints").mkdir(parents=True, exist_ok=True)
    save_config(cfg, folder / "config.yaml")

    dm = make_datamodule(cfg, method_cls)
    module = method_cls(OmegaConf.to_container(cfg, resolve=True), data_info(dm))

    t = cfg.trainer
    # global_step counts optimizer steps; max_steps in the config counts the method's
    # main-network steps, i.e. training batches.
    k = method_cls.steps_per_batch
    checkpoints = ModelCheckpoint(dirpath=folder / "checkpoints", filename="step{step}",
                                  every_n_train_steps=cfg.run.checkpoint_every * k,
                                  save_last=True, save_top_k=1)
    # A method whose backward passes each leave some nets without gradients (the GAN's two
    # optimizer steps) declares it; plain DDP would reject it.
    strategy = t.strategy
    if strategy == "ddp" and getattr(method_cls, "ddp_find_unused_parameters", False):
        strategy = "ddp_find_unused_parameters_true"
    trainer = L.Trainer(
        max_steps=t.max_steps * k, max_epochs=t.max_epochs, accelerator=t.accelerator,
        devices=t.devices, num_nodes=t.num_nodes, strategy=strategy, precision=t.precision,
        val_check_interval=t.val_check_interval, check_val_every_n_epoch=None,
        log_every_n_steps=t.log_every_n_steps, gradient_clip_val=t.gradient_clip_val,
        logger=make_loggers(cfg, folder, folder.name), callbacks=[checkpoints],
        default_root_dir=folder, use_distributed_sampler=False, enable_model_summary=True)
    trainer.fit(module, datamodule=dm, ckpt_path=ckpt_path)
    final = folder / "checkpoints" / "final.ckpt"
    trainer.save_checkpoint(final)
    if trainer.is_global_zero:
        print(f"voice2face: trained {cfg.method}; checkpoint {final}")
        if cfg.run.evaluate and module.evaluation is not Evaluation.PRETRAINING:
            print(post_fit_evaluation(module, folder, final, dm))
    if cfg.logger.wandb:  # close the run, or the next WandbLogger in this process reuses it
        import wandb
        wandb.finish()
    return final


def export(checkpoint: Path, target: str | Path) -> None:
    """Copy a finished checkpoint to a stable path (temp file, then rename)."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(target.name + ".tmp")
    shutil.copyfile(checkpoint, tmp)
    os.replace(tmp, target)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="voice2face train", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("method", help=f"one of: {', '.join(sorted(METHODS)) or '(none)'}")
    parser.add_argument("overrides", nargs="*", help="config overrides, key=value")
    parser.add_argument("--print-config", action="store_true",
                        help="print the merged config and exit")
    parser.add_argument("--export", metavar="PATH",
                        help="also copy the final checkpoint to PATH (e.g. a pretrained net)")
    args = parser.parse_intermixed_args(argv)
    try:
        get_method(args.method)
        cfg = load_config(args.method, args.overrides)
    except (KeyError, ConfigError) as e:
        print(f"voice2face train: {e.args[0]}", file=sys.stderr)
        return 2
    if args.print_config:
        print(OmegaConf.to_yaml(cfg), end="")
        return 0
    final = train(cfg)
    if args.export and rank_zero_only.rank == 0:
        export(final, args.export)
        print(f"voice2face: exported {args.export}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
