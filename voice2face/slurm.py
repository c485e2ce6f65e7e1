"""``python -m voice2face.slurm <method> --nodes N --gpus G [-- key=value ...]`` (``make slurm``):
an sbatch script from ``experiments/slurm/train.sbatch``, submitted or printed.

The script runs ``srun .venv/bin/voice2face train <method>`` with one task per GPU (or, with
``--gpus 0``, ``--tasks`` CPU processes per node), ``trainer.devices``/``trainer.num_nodes``
matching the allocation, a fixed ``run.name`` and ``run.resume=auto``: a job that SLURM
requeues (Lightning's auto-requeue on ``SIGUSR1``, sent 90 s before the time limit) runs the
same command again and continues in the same run folder from its newest checkpoint.

The overrides are checked against the method's config before anything is submitted, so
that a typo fails here rather than after a wait in the queue.
"""

from __future__ import annotations

import argparse
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

from voice2face.config import ConfigError, experiments_dir, load_config
from voice2face.errors import report

# Keys the script sets from the allocation; an override of one would contradict it.
MANAGED_KEYS = ("trainer.accelerator", "trainer.devices", "trainer.num_nodes", "trainer.strategy",
                "run.name", "run.resume")
# Lightning ignores SLURM in jobs named so (SLURMEnvironment.detect()).
RESERVED_JOB_NAMES = ("bash", "interactive")
_PLACEHOLDER = re.compile(r"\{\{([A-Z_]+)\}\}")


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


def train_overrides(nodes: int, gpus: int, tasks: int, name: str,
                    overrides: list[str]) -> list[str]:
    """The ``key=value`` list of the ``voice2face train`` command the job runs."""
    clash = [o for o in overrides if o.split("=", 1)[0].lstrip("-") in MANAGED_KEYS]
    if clash:
        raise ConfigError(f"{' '.join(clash)}: set by the SLURM script from the allocation "
                          f"(NODES, GPUS, TASKS, RUN_NAME); leave {', '.join(MANAGED_KEYS)} out of ARGS")
    per_node = gpus or tasks
    ours = [f"trainer.accelerator={'gpu' if gpus else 'cpu'}", f"trainer.devices={per_node}",
            f"trainer.num_nodes={nodes}"]
    if nodes * per_node > 1:
        ours.append("trainer.strategy=ddp")
    return [*overrides, *ours, f"run.name={name}", "run.resume=auto"]


def make_script(method: str, *, nodes: int, gpus: int, tasks: int, name: str, job_name: str,
                root: Path, log: str, overrides: list[str], cpus_per_task: int | None = None,
                time_limit: str = "", sbatch: list[str] = ()) -> str:
    if nodes < 1 or gpus < 0 or (gpus == 0 and tasks < 1):
        raise ConfigError(f"nodes={nodes}, gpus={gpus}, tasks={tasks}: expected at least one node "
                          f"and GPUS >= 1, or GPUS=0 with TASKS >= 1 CPU processes per node")
    if job_name in RESERVED_JOB_NAMES:
        raise ConfigError(f"job name {job_name!r}: Lightning does not detect SLURM in jobs named "
                          f"{' or '.join(RESERVED_JOB_NAMES)}; choose another")
    args = train_overrides(nodes, gpus, tasks, name, overrides)
    values = {
        "JOB_NAME": job_name, "NODES": str(nodes), "TASKS_PER_NODE": str(gpus or tasks),
        "GPUS_PER_NODE": str(gpus) if gpus else "", "CPUS_PER_TASK": str(cpus_per_task or ""),
        "TIME": time_limit, "ROOT": str(root), "LOG": log, "RUN_NAME": name,
        "SBATCH_EXTRA": "\n".join(f"#SBATCH {a}" for a in sbatch),
        "METHOD": shlex.quote(method), "OVERRIDES": " ".join(shlex.quote(a) for a in args),
    }
    return render(template_path().read_text(), values)


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
    p.add_argument("--cpus-per-task", type=int, default=None)
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
        # a typo fails now, not after a wait in the queue; `profile=auto` is resolved on the
        # job's node, so the check here takes the cpu profile (no torch import, same keys)
        given = any(o.lstrip("-").startswith("profile=") for o in args.overrides)
        cfg = load_config(args.method, [*args.overrides, *([] if given else ["profile=cpu"])])
        name = args.name or default_run_name(args.method, cfg.data.root)
        root = Path.cwd().resolve()
        folder = Path(args.dir)
        script = make_script(
            args.method, nodes=args.nodes, gpus=args.gpus, tasks=args.tasks, name=name,
            job_name=args.job_name or f"v2f-{args.method}", root=root,
            log=str((root / folder / f"{name}-%j.out")), overrides=args.overrides,
            cpus_per_task=args.cpus_per_task, time_limit=args.time,
            sbatch=shlex.split(args.sbatch))
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
