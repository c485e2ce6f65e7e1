"""Checkpoint and requeue a SLURM job when it is signalled (``--signal=SIGUSR1@90``).

Lightning's own auto-requeue (``SLURMEnvironment(auto_requeue=True)``) saves the checkpoint
inside the signal handler, at whatever bytecode each rank happens to be running. Under DDP
the ranks receive the signal at different points, and ``Trainer.save_checkpoint`` ends with
a barrier: one rank's barrier meets another's gradient all-reduce and both hang until SLURM
kills the job (seen here with 2 CPU ranks: `make test-slurm`; Lightning issue #21406 reports
the same intermittently). So the handler here only sets a flag; every ``check_every``
training batches the ranks agree (one all-reduce of a bool) on whether any was signalled,
and then, all at the same batch boundary, save ``checkpoints/last.ckpt``, rank zero runs
``scontrol requeue`` and says so, and training stops with ``Requeued``; SIGTERM, which SLURM
sends as it requeues, is ignored from that batch on. The requeued job runs the same
command (same ``run.name``, ``run.resume=auto``) and continues from that checkpoint.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from lightning.pytorch.callbacks import Callback
from lightning.pytorch.plugins.environments import SLURMEnvironment
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn


class Requeued(Exception):
    """Training stopped because the SLURM job was requeued; the checkpoint to resume is saved."""


def slurm_job_id(env=os.environ) -> str | None:
    if env.get("SLURM_ARRAY_JOB_ID") and env.get("SLURM_ARRAY_TASK_ID"):
        return f"{env['SLURM_ARRAY_JOB_ID']}_{env['SLURM_ARRAY_TASK_ID']}"
    return env.get("SLURM_JOB_ID")


def cluster_plugins() -> list:
    """Under srun (Lightning's ``SLURMEnvironment.detect()``: ``SLURM_NTASKS`` set, the job
    not named bash or interactive), the SLURM environment with Lightning's in-handler
    auto-requeue off: ``SlurmRequeue`` does it at a batch boundary."""
    return [SLURMEnvironment(auto_requeue=False)] if SLURMEnvironment.detect() else []


class SlurmRequeue(Callback):
    """On ``signum`` (SIGUSR1), checkpoint to ``checkpoint`` at a batch boundary common to
    all ranks, requeue the job and stop. Active only in a SLURM job step."""

    def __init__(self, checkpoint: Path, check_every: int = 10, signum: int = signal.SIGUSR1):
        self.checkpoint, self.check_every, self.signum = Path(checkpoint), check_every, signum
        self.signalled = False
        self._batches = 0
        self._previous = None

    def _handler(self, signum, frame) -> None:  # nothing else is safe here
        self.signalled = True

    def on_fit_start(self, trainer, pl_module) -> None:
        if SLURMEnvironment.detect() and slurm_job_id():
            self._previous = signal.signal(self.signum, self._handler)

    def on_fit_end(self, trainer, pl_module) -> None:
        self._restore()

    def on_exception(self, trainer, pl_module, exception) -> None:
        self._restore()

    def _restore(self) -> None:
        if self._previous is not None:
            signal.signal(self.signum, self._previous)
            self._previous = None

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self._previous is None:
            return
        self._batches += 1  # the same on every rank: each rank trains the same batches
        if self._batches % self.check_every:
            return
        if not trainer.strategy.reduce_boolean_decision(self.signalled, all=False):
            return
        # Once requeued, SLURM sends SIGTERM to every rank at once. Lightning's SIGTERM handler
        # runs a collective (a broadcast) inside the handler, which would meet the save's
        # barrier or the broadcast below on another rank; so the ranks ignore SIGTERM until
        # they have stopped on their own (SLURM's KillWait bounds it with SIGKILL).
        sigterm = signal.signal(signal.SIGTERM, signal.SIG_IGN)
        rank_zero_info(f"voice2face: signal {self.signum} received; saving {self.checkpoint} "
                       f"at step {trainer.global_step} and requeueing")
        trainer.save_checkpoint(self.checkpoint)
        if trainer.is_global_zero:  # SLURM stops every process of the job once it requeues
            self._close_loggers(trainer)
        requeued = trainer.is_global_zero and self._requeue()
        said = (f"SLURM job {slurm_job_id()} requeued; saved {self.checkpoint} at step "
                f"{trainer.global_step}, which the requeued job resumes")
        if requeued:  # said now: the process may be killed any time after the requeue
            print(f"voice2face: {said}", flush=True)
        if trainer.strategy.broadcast(requeued, src=0):
            raise Requeued(said)
        signal.signal(signal.SIGTERM, sigterm)
        self.signalled = False  # not requeued: keep training until SLURM ends the job

    @staticmethod
    def _close_loggers(trainer) -> None:
        for logger in trainer.loggers:
            logger.finalize("success")
        if "wandb" in sys.modules and sys.modules["wandb"].run is not None:
            sys.modules["wandb"].finish()  # the offline run's files complete before SIGTERM

    @staticmethod
    def _requeue() -> bool:
        job = slurm_job_id()
        try:
            result = subprocess.run(["scontrol", "requeue", job], capture_output=True, text=True,
                                    timeout=60)
        except (OSError, subprocess.TimeoutExpired) as e:
            rank_zero_warn(f"voice2face: scontrol requeue {job} failed ({e}); training goes on")
            return False
        if result.returncode != 0:
            rank_zero_warn(f"voice2face: scontrol requeue {job} failed: "
                           f"{(result.stderr or result.stdout).strip()}; training goes on")
        return result.returncode == 0
