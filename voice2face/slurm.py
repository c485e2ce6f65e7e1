"""``python -m voice2face.slurm <method> --nodes N --gpus G [-- key=value ...]`` (``make slurm``):
an sbatch script from ``experiments/slurm/train.sbatch``, submitted or printed.

The script runs ``srun .venv/bin/voice2face train <method>`` with one task per GPU (or, with
``--gpus 0``, ``--tasks`` CPU processes per node), ``--cpus-per-task`` cores for each
(``data.num_workers`` one fewer, unless the overrides set it), ``trainer.devices``/
``trainer.num_nodes`` matching the allocation, the config profile written out (``paper`` on
GPUs, ``cpu`` without, unless the overrides name one: the node never resolves
``profile=auto`` itself), a fixed ``run.name`` and ``run.resume=auto``. On ``SIGUSR1``, sent
90 s before the time limit, the ranks save ``checkpoints/last.ckpt`` at a batch boundary and
rank zero runs ``scontrol requeue`` (``voice2face/requeue.py``; Lightning's own auto-requeue
is off); the requeued job runs the same command again and continues in the same run folder
from that checkpoint.

Before anything is submitted, the job's overrides are checked against the config of the
profile it will run, and the pretrained nets that config loads must exist; a missing one is
refused with the command that builds it, so that neither fails after a wait in the queue.
"""

from __future__ import annotations

import argparse
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from voice2face.config import ConfigError, experiments_dir, load_config
from voice2face.errors import report

# Keys the script sets from the allocation; an override of one would contradict it.
MANAGED_KEYS = ("trainer.accelerator", "trainer.devices", "trainer.num_nodes", "trainer.strategy",
                "run.name", "run.resume")
# Lightning ignores SLURM in jobs named so (SLURMEnvironment.detect()).
RESERVED_JOB_NAMES = ("bash", "interactive")
_PLACEHOLDER = re.compile(r"\{\{([A-Z_]+)\}\}")
# Cores per task when --cpus-per-task is not given: a GPU rank's data workers decode and
# transform the audio and faces (one core stays with the training process); a CPU rank
# computes on its core and loads its data in-process.
DEFAULT_CPUS_PER_TASK = {"gpu": 8, "cpu": 1}


def template_path() -> Path:
    return experiments_dir() / "slurm" / "train.sbatch"


def render(template: str, values: dict[str, str]) -> str:
    """The template with ``{{KEY}}`` replaced; a line whose placeholder is empty is dropped
    (``--gres`` of a CPU job, an unset ``--time``). Every placeholder must have a value."""
    missing = sorted(set(_PLACEHOLDER.findall(template)) - set(values))
    if missing:
        raise ConfigError(f"{template_path()}: no value for {', '.join(missing)}")
    lines = []
    for line in template.splitlines():
        keys = _PLACEHOLDER.findall(line)
        if keys and any(values[k] == "" for k in keys):
            continue
        lines.append(_PLACEHOLDER.sub(lambda m: values[m.group(1)], line))
    return "\n".join(lines) + "\n"


def _key(override: str) -> str:
    return override.lstrip("-").split("=", 1)[0]


def _given(overrides: list[str], key: str) -> list[str]:
    """The values ``overrides`` give ``key``, in order."""
    return [o.split("=", 1)[1] for o in overrides if _key(o) == key]


def job_profile(gpus: int, overrides: list[str]) -> str:
    """The config profile the job runs: the overrides' (but ``auto``, which the node would
    resolve by itself), else ``paper`` on GPUs and ``cpu`` without, as ``profile=auto``
    would resolve it there."""
    given = [p for p in _given(overrides, "profile") if p != "auto"]
    return given[-1] if given else ("paper" if gpus else "cpu")


def train_overrides(nodes: int, gpus: int, tasks: int, name: str, overrides: list[str], *,
                    cpus_per_task: int | None = None) -> list[str]:
    """The ``key=value`` list of the ``voice2face train`` command the job runs."""
    clash = [o for o in overrides if o.split("=", 1)[0].lstrip("-") in MANAGED_KEYS]
    if clash:
        raise ConfigError(f"{' '.join(clash)}: set by the SLURM script from the allocation "
                          f"(NODES, GPUS, TASKS, RUN_NAME); leave {', '.join(MANAGED_KEYS)} out of ARGS")
    profile = job_profile(gpus, overrides)
    cpus = cpus_per_task or DEFAULT_CPUS_PER_TASK["gpu" if gpus else "cpu"]
    per_node = gpus or tasks
    ours = [f"profile={profile}"]
    if not _given(overrides, "data.num_workers"):  # the task's cores but the trainer's
        ours.append(f"data.num_workers={cpus - 1}")
    ours += [f"trainer.accelerator={'gpu' if gpus else 'cpu'}", f"trainer.devices={per_node}",
             f"trainer.num_nodes={nodes}"]
    if nodes * per_node > 1:
        ours.append("trainer.strategy=ddp")
    mine = [o for o in overrides if _key(o) != "profile"]  # ours is the one that counts
    return [*mine, *ours, f"run.name={name}", "run.resume=auto"]


def make_script(method: str, *, nodes: int, gpus: int, tasks: int, name: str, job_name: str,
                root: Path, log: str, overrides: list[str], cpus_per_task: int | None = None,
                time_limit: str = "", sbatch: list[str] = ()) -> str:
    if nodes < 1 or gpus < 0 or (gpus == 0 and tasks < 1):
        raise ConfigError(f"nodes={nodes}, gpus={gpus}, tasks={tasks}: expected at least one node "
                          f"and GPUS >= 1, or GPUS=0 with TASKS >= 1 CPU processes per node")
    if cpus_per_task is not None and cpus_per_task < 1:
        raise ConfigError(f"cpus per task {cpus_per_task}: expected CPUS >= 1")
    cpus_per_task = cpus_per_task or DEFAULT_CPUS_PER_TASK["gpu" if gpus else "cpu"]
    if job_name in RESERVED_JOB_NAMES:
        raise ConfigError(f"job name {job_name!r}: Lightning does not detect SLURM in jobs named "
                          f"{' or '.join(RESERVED_JOB_NAMES)}; choose another")
    args = train_overrides(nodes, gpus, tasks, name, overrides, cpus_per_task=cpus_per_task)
    values = {
        "JOB_NAME": job_name, "NODES": str(nodes), "TASKS_PER_NODE": str(gpus or tasks),
        "GPUS_PER_NODE": str(gpus) if gpus else "", "CPUS_PER_TASK": str(cpus_per_task),
        "TIME": time_limit, "ROOT": str(root), "LOG": log, "RUN_NAME": name,
        "SBATCH_EXTRA": "\n".join(f"#SBATCH {a}" for a in sbatch),
        "METHOD": shlex.quote(method), "OVERRIDES": " ".join(shlex.quote(a) for a in args),
    }
    return render(template_path().read_text(), values)


def needs_judge(method: str, cfg: DictConfig) -> bool:
    """Whether the job loads ``eval.judge``: a method that evaluation measures validates
    and evaluates with it, and a method regressing onto a ``model.target`` is checked not to
    have the judge as its target. Asked only when the judge is missing (the registry
    imports torch)."""
    from voice2face.methods import Evaluation, get_method

    if get_method(method).evaluation is not Evaluation.PRETRAINING:
        return True
    return "target" in cfg.get("model", {})


def _checkpoints(tree, prefix: str = "") -> list[tuple[str, str]]:
    if isinstance(tree, dict):
        return [kv for k, v in tree.items() for kv in _checkpoints(v, f"{prefix}{k}.")]
    return [(prefix[:-1], tree)] if isinstance(tree, str) and tree.endswith(".ckpt") else []


def missing_nets(method: str, cfg: DictConfig) -> list[str]:
    """One line per pretrained net the job would load and that does not exist: the file,
    its config keys (one file may serve several, e.g. DIMNet's voice and face embedders), and
    the command that builds it (the Makefile's rule for a file in the data's pretrained
    folder, with the job's profile), or what to do with a file elsewhere."""
    tree = OmegaConf.to_container(cfg, resolve=True)
    # run.resume names the run's own checkpoint (train checks it); paths are folders
    found = [(k, p) for k, p in _checkpoints(tree) if not k.startswith(("run.", "paths."))]
    keys: dict[str, list[str]] = {}  # missing file -> the keys that name it, in config order
    for key, path in found:
        if Path(path).is_file() or (key == "eval.judge" and not needs_judge(method, cfg)):
            continue
        keys.setdefault(path, []).append(key)
    lines = []
    data = str(cfg.data.root)
    for path, named in keys.items():
        if Path(path).parent == Path(data, "pretrained"):
            how = f"build it with `make {path} DATA={data} PROFILE={cfg.profile}`"
        else:
            how = f"not in {data}/pretrained: give {' and '.join(named)} an existing checkpoint"
        lines.append(f"  {path} ({', '.join(named)}): {how}")
    return lines


def default_run_name(method: str, data_root: str) -> str:
    return f"{method}-{Path(data_root).name}-slurm-{time.strftime('%Y%m%d-%H%M%S')}"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m voice2face.slurm", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("method")
    p.add_argument("overrides", nargs="*", help="config overrides, key=value (after --)")
    p.add_argument("--nodes", type=int, default=1)
    p.add_argument("--gpus", type=int, default=1, help="GPUs per node, one task each; 0: CPU")
    p.add_argument("--tasks", type=int, default=2, help="CPU processes per node when --gpus 0")
    p.add_argument("--cpus-per-task", type=int, default=None,
                   help=f"cores per task, data.num_workers one fewer (default "
                        f"{DEFAULT_CPUS_PER_TASK['gpu']} with GPUs, {DEFAULT_CPUS_PER_TASK['cpu']} without)")
    p.add_argument("--time", default="", help="sbatch --time (default: the partition's)")
    p.add_argument("--name", default="", help="run.name (default <method>-<data>-slurm-<time>)")
    p.add_argument("--job-name", default="", help="SLURM job name (default v2f-<method>)")
    p.add_argument("--sbatch", default="", help="more sbatch options, e.g. '--partition=gpu'")
    p.add_argument("--dir", default="slurm", help="folder for the script and the job's log")
    p.add_argument("--dry-run", action="store_true", help="print the script; write and submit nothing")
    return p.parse_intermixed_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)

    def run() -> int:
        # a typo fails now, not after a wait in the queue, and under the profile the job
        # runs, which it is told (a GPU node would resolve profile=auto to paper by itself)
        profile = job_profile(args.gpus, args.overrides)
        mine = [o for o in args.overrides if _key(o) != "profile"]
        cfg = load_config(args.method, [*mine, f"profile={profile}"])
        name = args.name or default_run_name(args.method, cfg.data.root)
        root = Path.cwd().resolve()
        folder = Path(args.dir)
        script = make_script(
            args.method, nodes=args.nodes, gpus=args.gpus, tasks=args.tasks, name=name,
            job_name=args.job_name or f"v2f-{args.method}", root=root,
            log=str((root / folder / f"{name}-%j.out")), overrides=args.overrides,
            cpus_per_task=args.cpus_per_task, time_limit=args.time,
            sbatch=shlex.split(args.sbatch))
        # the exact command line of the job, data.num_workers and the rest included
        cfg = load_config(args.method, train_overrides(
            args.nodes, args.gpus, args.tasks, name, args.overrides,
            cpus_per_task=args.cpus_per_task))
        missing = missing_nets(args.method, cfg)
        if missing:
            raise ConfigError(f"{args.method} with profile={profile} loads pretrained nets that "
                              f"do not exist; nothing submitted:\n" + "\n".join(missing))
        if args.dry_run:
            print(script, end="")
            return 0
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{name}.sbatch"
        path.write_text(script)
        try:
            out = subprocess.run(["sbatch", "--parsable", str(path)], capture_output=True,
                                 text=True, check=False)
        except FileNotFoundError:
            raise ConfigError(f"sbatch not found: run `make slurm` on a SLURM login node, or "
                              f"DRY=1 to print the script (written to {path})") from None
        if out.returncode != 0:
            raise ConfigError(f"sbatch {path} failed: {out.stderr.strip() or out.stdout.strip()}")
        job = out.stdout.strip().split(";")[0]
        print(f"voice2face: submitted job {job}: script {path}, log "
              f"{folder / f'{name}-{job}.out'}, run folder {Path(cfg.run.root) / name}")
        return 0

    return report("voice2face slurm", run)


if __name__ == "__main__":
    sys.exit(main())
